"""ModelBundle: a loaded model with everything a method or evaluator needs to know about it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimbench.models.adapters import Adapter

KINDS = ("causal_lm", "diffusion")


@dataclass(frozen=True)
class ModelShape:
    """Sizes the model's config states, known before its weights load (for pre-load checks;
    None where the loader cannot tell)."""

    blocks: int | None = None  # transformer blocks (num_hidden_layers)
    max_positions: int | None = None  # the context the model was built for (max_position_embeddings)
    num_experts: int | None = None  # experts per MoE layer (trained or MoEfied); None: no MoE layers or unknown


@dataclass(frozen=True)
class ModelSource:
    """Identity of a model, resolved before its weights load (part of the run_id)."""

    name: str
    kind: str
    loader: str
    model_type: str
    identity: dict = field(default_factory=dict)  # id/path, revision or sha256, ...
    dtype: str = "float32"
    shape: ModelShape = field(default_factory=ModelShape, compare=False)  # not part of the identity

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "loader": self.loader,
            "model_type": self.model_type,
            "dtype": self.dtype,
            **self.identity,
        }


@dataclass
class ModelBundle:
    model: nn.Module
    tokenizer: Any | None
    kind: str
    adapter: Adapter
    source: ModelSource
    # where the calibration engine computes (None: where the weights are); ``offload=true`` keeps
    # the weights in CPU memory and sets this to the device: one block at a time moves there
    compute_device: str | None = None
    # the run's cache directory (what methods learn without calibration data, e.g. LazyDiT's gates, is kept there)
    cache_dir: Any = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def io(self):
        """How to call this model: calibration samples, example inputs, output, objective."""
        from slimbench.models.io import MODEL_IO

        return MODEL_IO.get(self.adapter.io)

    @property
    def hooks(self):
        """The model's ``HookRegistry`` (runtime methods install their hooks there)."""
        from slimbench.hooks import HookRegistry

        return HookRegistry.of(self.model)


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def path_safe(name: str) -> str:
    """``name`` as one file-name component that stays inside its directory (``org/model`` ->
    ``org_model``, ``../../x`` -> ``_.._x``)."""
    return _UNSAFE.sub("_", name).lstrip(".") or "_"
