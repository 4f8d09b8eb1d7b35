"""Latency: prefill time and KV-cached decode throughput (causal LMs), denoiser step time (DiT).

Each repeat runs the full workload; ``warmup`` repeats are run first and discarded. Reported:
median and p90 over repeats, peak resident memory during the measurement, the KV-cache
bytes per token read off the cache object, the model's bytes, and the decode's achieved
weight bandwidth as a fraction of this machine's measured copy bandwidth.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Callable

import torch

from slimbench._system import measure_peak_rss
from slimbench.errors import ConfigError
from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric
from slimbench.evaluation.size import Footprint, footprint
from slimbench.params import check_params, param


@dataclass(frozen=True)
class LatencyConfig:
    prompt_len: int = param(128, "tokens of the random prompt (prefill)", ge=1)
    new_tokens: int = param(32, "tokens decoded greedily with the KV cache", ge=1)
    batch_size: int = param(1, "sequences per call", ge=1)
    warmup: int = param(1, "repeats run first and discarded", ge=0)
    repeats: int = param(5, "measured repeats (median and p90 reported)", ge=1)
    denoise_steps: int = param(10, "diffusion models: denoiser forwards per repeat", ge=1)

    def __post_init__(self) -> None:
        check_params(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def quantiles(values: list[float]) -> tuple[float, float]:
    """(median, p90)."""
    return percentile(values, 50), percentile(values, 90)


_BANDWIDTH: dict[str, float] = {}


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Measured memory bandwidth (bytes/s) of a large tensor copy: read + write bytes / time."""
    key = str(device)
    if key not in _BANDWIDTH:
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        times = []
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            dst.copy_(src)
            _sync(device)
            times.append(time.perf_counter() - start)
        _BANDWIDTH[key] = 2 * nbytes / min(times[1:])
    return _BANDWIDTH[key]


def kv_cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def cache_argument(model) -> str:
    """The KV cache's name in the forward call and its output: ``cache`` in current transformers
    (``past_key_values`` is deprecated there, removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _repeat(fn: Callable[[], dict], warmup: int, repeats: int) -> list[dict]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


@EVALUATORS.register("latency")
class Latency:
    name = "latency"
    version = "1"
    Config = LatencyConfig
    kinds = ("causal_lm", "diffusion")
    machine_dependent = True  # its protocol holds the device and thread count; tables compare it only within one

    def __init__(self, config: LatencyConfig) -> None:
        self.config = config

    def check(self, ctx: EvalContext) -> dict:
        tokens, limit = self.config.prompt_len + self.config.new_tokens, ctx.shape.max_positions
        if limit is not None and tokens > limit:
            raise ConfigError(f"latency prompt_len + new_tokens = {tokens} exceeds the model's context "
                              f"(max_position_embeddings {limit})")
        return {}

    def __call__(self, bundle, ctx: EvalContext) -> EvalResult:
        measure = self._causal_lm if bundle.kind == "causal_lm" else self._diffusion
        size = footprint(bundle.model, bundle.adapter)
        with measure_peak_rss() as peak:
            metrics, protocol, details = measure(bundle, size)
        metrics.append(Metric("peak_rss", peak.peak_rss_bytes / 2**20, higher_is_better=False, unit="MiB"))
        metrics.append(Metric("model_bytes", size.bytes / 2**20, higher_is_better=False, unit="MiB"))
        protocol.update(
            {
                "batch_size": self.config.batch_size,
                "warmup": self.config.warmup,
                "repeats": self.config.repeats,
                "threads": torch.get_num_threads(),
                "device": ctx.device,
                "peak_memory": peak.method,
            }
        )
        return EvalResult(metrics, protocol, details=details)

    # -- causal LM: prefill + greedy decode with a KV cache ---------------------------------------
    def _causal_lm(self, bundle, size: Footprint) -> tuple[list[Metric], dict, dict]:
        cfg, model = self.config, bundle.model
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, vocab, (cfg.batch_size, cfg.prompt_len), generator=gen).to(device)
        cache_bytes: list[int] = []

        cache_arg = cache_argument(model)

        def once() -> dict:
            bundle.hooks.reset_state()  # runtime hooks: one generation = one run
            with torch.inference_mode():
                _sync(device)
                t0 = time.perf_counter()
                out = model(input_ids=prompt, use_cache=True)
                _sync(device)
                t1 = time.perf_counter()
                cache, token = out[cache_arg], out.logits[:, -1:].argmax(-1)
                for _ in range(cfg.new_tokens):
                    out = model(input_ids=token, use_cache=True, **{cache_arg: cache})
                    cache, token = out[cache_arg], out.logits[:, -1:].argmax(-1)
                _sync(device)
                t2 = time.perf_counter()
            cache_bytes.append(kv_cache_bytes(cache))
            return {"prefill": t1 - t0, "decode": t2 - t1}

        runs = _repeat(once, cfg.warmup, cfg.repeats)
        prefill_med, prefill_p90 = quantiles([1e3 * r["prefill"] for r in runs])
        tok_s = [cfg.batch_size * cfg.new_tokens / r["decode"] for r in runs]
        tok_med, tok_p10 = percentile(tok_s, 50), percentile(tok_s, 10)  # p10: the slow end
        ms_per_token = [1e3 * r["decode"] / cfg.new_tokens for r in runs]
        ms_med, ms_p90 = quantiles(ms_per_token)
        tokens_in_cache = cfg.batch_size * (cfg.prompt_len + cfg.new_tokens)
        kv_per_token = cache_bytes[-1] / tokens_in_cache if cache_bytes[-1] else 0.0

        bandwidth = copy_bandwidth(device)
        achieved = size.weight_bytes_per_decode_step / (ms_med / 1e3)
        metrics = [
            Metric("prefill_ms", prefill_med, higher_is_better=False, unit="ms"),
            Metric("prefill_ms_p90", prefill_p90, higher_is_better=False, unit="ms"),
            Metric("decode_tokens_per_s", tok_med, higher_is_better=True, unit="tokens/s"),
            Metric("decode_tokens_per_s_p10", tok_p10, higher_is_better=True, unit="tokens/s"),
            Metric("decode_ms_per_token", ms_med, higher_is_better=False, unit="ms"),
            Metric("decode_ms_per_token_p90", ms_p90, higher_is_better=False, unit="ms"),
            Metric("kv_cache_bytes_per_token", kv_per_token, higher_is_better=False, unit="bytes"),
            Metric("bandwidth_fraction", achieved / bandwidth, higher_is_better=True, unit="fraction"),
        ]
        protocol = {
            "workload": "prefill random prompt, then greedy decode with KV cache",
            "prompt_len": cfg.prompt_len,
            "new_tokens": cfg.new_tokens,
        }
        return metrics, protocol, {"machine_copy_bandwidth_GBps": round(bandwidth / 1e9, 2)}

    # -- diffusion: one denoiser forward per step ---------------------------------------------------
    def _diffusion(self, bundle, size: Footprint) -> tuple[list[Metric], dict, dict]:
        cfg, model, io = self.config, bundle.model, bundle.io
        device = next(model.parameters()).device
        inputs = io.example_inputs(model, cfg.batch_size, None, torch.Generator().manual_seed(0))
        inputs = {k: v.to(device) for k, v in inputs.items()}

        def once() -> dict:
            bundle.hooks.reset_state()
            with torch.inference_mode():
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(cfg.denoise_steps):
                    io.forward(model, inputs)
                _sync(device)
                return {"step": (time.perf_counter() - t0) / cfg.denoise_steps}

        runs = _repeat(once, cfg.warmup, cfg.repeats)
        med, p90 = quantiles([1e3 * r["step"] for r in runs])
        metrics = [
            Metric("step_ms", med, higher_is_better=False, unit="ms"),
            Metric("step_ms_p90", p90, higher_is_better=False, unit="ms"),
        ]
        t = int(inputs["t"][0])
        return metrics, {"workload": f"denoiser call at t={t} (the model kind's example inputs)", "steps": cfg.denoise_steps}, {}
