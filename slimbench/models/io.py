"""How to call a model of each kind: what a calibration sample is, example inputs, the output,
and the whole-model objective. The calibration engine, the evaluators and the methods stay
kind-neutral by going through ``bundle.io``.

* ``causal_lm``: a sample is a token window ``{"input_ids": [B, T]}``; the output is the logits;
  the objective is the mean next-token NLL of each window (the perplexity protocol's formula).
* ``slimbench_dit``: a sample is a denoiser call ``{"x": x_t [B, C, H, W], "t": [B], "y": [B]}``
  drawn along a DDIM sampling trajectory of the model itself; the output is the predicted noise.

Each IO also says how its models' architecture is written and rebuilt (``write_config`` /
``architecture``): a transformers config.json for causal LMs (so plain transformers loads a saved
model where the weights' format allows: ``standard_format``), slimbench's DiT config for the DiT.
Saved models (``slimbench.checkpoint``) use it.

An adapter names its IO (``Adapter.io``); ``MODEL_IO`` holds one instance per name.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.diffusion.schedule import NoiseSchedule
from slimbench.hooks import HookRegistry
from slimbench.registry import Registry


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class CausalLMIO:
    kind: ClassVar[str] = "causal_lm"
    calibration_sources: ClassVar[str] = "text corpora"

    def sample(self, ids: torch.Tensor) -> dict:
        """Model inputs for token windows ``ids`` [B, T] (no KV cache: calibration and scoring)."""
        return {"input_ids": ids, "use_cache": False}

    def forward(self, model: nn.Module, sample: dict) -> torch.Tensor:
        return model(**_to(sample, model_device(model))).logits  # [B, T, V]

    def example_inputs(self, model: nn.Module, batch: int, length: int, generator: torch.Generator) -> dict:
        vocab = model.get_input_embeddings().weight.shape[0]
        return self.sample(torch.randint(0, vocab, (batch, length), generator=generator, device="cpu"))  # host tensors: callers move them

    def objective(self, model: nn.Module, sample: dict) -> torch.Tensor:
        """Mean next-token NLL of each window [B] (float32; differentiable)."""
        ids = sample["input_ids"].to(model_device(model))
        logits = model(**{**sample, "input_ids": ids}).logits  # [B, T, V]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        return nll.view(ids.shape[0], -1).mean(dim=1)

    @staticmethod
    def head(model: nn.Module, adapter) -> tuple[nn.Module, nn.Module] | None:
        """(final norm, lm_head) when the logits are exactly ``lm_head(norm(last block's output))``
        (None otherwise, e.g. final-logit soft-capping): what ``head_objective`` needs."""
        from slimbench.models.adapters import get_path

        config = getattr(model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if adapter.final_norm is None or adapter.lm_head is None or getattr(text, "final_logit_softcapping", None) is not None:
            return None
        return get_path(model, adapter.final_norm), get_path(model, adapter.lm_head)

    def head_objective(self, head: tuple[nn.Module, nn.Module], hidden: torch.Tensor, sample: dict) -> torch.Tensor:
        """``objective`` from the last block's output ``hidden`` [B, T, D] (the same operations)."""
        norm, lm_head = head
        ids = sample["input_ids"].to(hidden.device)
        logits = lm_head(norm(hidden))
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        return nll.view(ids.shape[0], -1).mean(dim=1)

    def crop(self, sample: dict, length: int | None) -> dict:
        """The first ``length`` tokens of each window (None: unchanged)."""
        return sample if length is None else {**sample, "input_ids": sample["input_ids"][:, :length]}

    # -- architecture (saved models) -------------------------------------------------------------
    standard_format: ClassVar[bool] = True  # transformers loads the architecture from config.json

    def write_config(self, model: nn.Module, directory: Path) -> None:
        """config.json (the model's current config: fewer layers after block dropping, ...) and
        generation_config.json."""
        model.config.save_pretrained(directory)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(directory)

    def read_config(self, directory: Path) -> Any:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        if hasattr(config, "quantization_config"):  # compressed-tensors' description: slimbench builds its own modules
            del config.quantization_config
        return config

    def architecture(self, config: Any, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
        """A model of this architecture with initialised (meaningless) weights."""
        from transformers import AutoModelForCausalLM

        with torch.device(device):
            return AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=dtype)


class DiTIO:
    kind: ClassVar[str] = "diffusion"
    calibration_sources: ClassVar[str] = "sampling trajectories"
    schedule = NoiseSchedule()  # the MNIST DiT's training schedule (T = 1000, linear betas)

    def denoise(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, t, y)  # [B, C, H, W] predicted noise

    def sample(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> dict:
        return {"x": x, "t": t, "y": y}

    def forward(self, model: nn.Module, sample: dict) -> torch.Tensor:
        s = _to(sample, model_device(model))
        return self.denoise(model, s["x"], s["t"], s["y"])

    def example_inputs(self, model: nn.Module, batch: int, length: int | None, generator: torch.Generator) -> dict:
        """A denoiser call at the middle of the schedule (the cost does not depend on t)."""
        arch = model.config
        x = torch.randn(batch, arch.channels, arch.img_size, arch.img_size, generator=generator, device="cpu")  # host tensors
        t = torch.full((batch,), self.schedule.num_train_timesteps // 2, dtype=torch.long, device="cpu")
        y = torch.randint(0, arch.num_classes, (batch,), generator=generator, device="cpu")
        return self.sample(x, t, y)

    def objective(self, model: nn.Module, sample: dict) -> torch.Tensor:
        raise NotImplementedError("no whole-model objective is defined for diffusion models")

    # -- architecture (saved models) -------------------------------------------------------------
    standard_format: ClassVar[bool] = False  # slimbench's own class: always slimbench's weights format

    def write_config(self, model: nn.Module, directory: Path) -> None:
        (directory / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")

    def read_config(self, directory: Path) -> Any:
        from slimbench.models.dit import DiTConfig

        return DiTConfig(**json.loads((directory / "config.json").read_text()))

    def architecture(self, config: Any, dtype: torch.dtype, device: str | torch.device = "cpu") -> nn.Module:
        from slimbench.models.dit import DiT

        with torch.device(device):
            return DiT(config).to(dtype)

    def trajectory(self, model: nn.Module, images: int, steps: int, seed: int) -> Iterator[dict]:
        """The denoiser inputs along a deterministic DDIM run (η = 0, ADM respacing) of ``images``
        images with seeded noise and classes y_i = i mod K: one sample per step, batch = ``images``
        (``slimbench.diffusion.trajectory``, the run its ``sample`` makes)."""
        from slimbench.diffusion import SamplerConfig, trajectory

        arch = model.config
        config = SamplerConfig(name="ddim", steps=steps, schedule=self.schedule)
        labels = torch.arange(images, device="cpu") % arch.num_classes
        calls = trajectory(lambda x, t, y: self.denoise(model, x, t, y), config, labels,
                           (arch.channels, arch.img_size, arch.img_size), seed=seed, batch_size=images,
                           device=model_device(model), on_batch_start=HookRegistry.of(model).reset_state)
        for call in calls:
            yield self.sample(call.x.cpu(), call.t.cpu(), call.y.cpu())  # host tensors


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


MODEL_IO: Registry = Registry("model I/O")
MODEL_IO.register("causal_lm", CausalLMIO())
MODEL_IO.register("slimbench_dit", DiTIO())
