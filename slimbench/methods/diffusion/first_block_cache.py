"""First Block Cache: input-difference thresholded reuse of the transformer's tail (the simple
dynamic cache baseline; ParaAttention's "First Block Cache", after TeaCache (Liu et al.,
arXiv 2411.19108); as diffusers implements it, ``diffusers.hooks.first_block_cache`` @ 0.42).

Per denoiser call:

  1. block 0 (the head) always runs; its residual r = out − in [B, N, D] is compared with the
     head residual r' of the last step at which the whole model ran:
     δ = mean|r − r'| / mean|r'| (means over the whole batch: one decision per call);
  2. δ > threshold, or no previous step: every block runs; the head residual is kept as r' and
     the tail residual R = out_L − out_head is cached;
  3. δ ≤ threshold: blocks 1..L-1 are skipped (not called) and the output is out_head + R.
  4. the state is cleared per sampling batch.

Counters: head and tail block calls computed / skipped per sample row; every block costs the
same, so the share of skipped block calls is the share of skipped attention and MLP calls.
Default threshold 0.05 (diffusers' default). Execution path: cached-steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.hooks import Hook
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.params import check_params, param


@dataclass(frozen=True)
class FirstBlockCacheConfig:
    threshold: float = param(0.05, "relative mean |Δ head residual| below which the tail blocks are skipped", ge=0)

    def __post_init__(self) -> None:
        check_params(self)


class _Shared:
    """State of one model's head and tail hooks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.head_residual: torch.Tensor | None = None  # [B, N, D] of the last full step
        self.head_out: torch.Tensor | None = None
        self.tail_residual: torch.Tensor | None = None  # out_L − out_head of the last full step
        self.compute_tail = True


class HeadHook(Hook):
    def __init__(self, shared: _Shared, threshold: float) -> None:
        super().__init__()
        self.shared, self.threshold = shared, threshold

    def reset_state(self) -> None:
        self.shared.reset()

    def forward(self, module, call, x, *args, **kwargs):
        s = self.shared
        out = call(x, *args, **kwargs)  # [B, N, D]
        self.count("computed", x.shape[0])
        residual = out - x
        s.compute_tail = not self._similar(residual)
        if s.compute_tail:
            s.head_residual, s.head_out = residual, out
            return out
        return out + s.tail_residual

    def _similar(self, residual: torch.Tensor) -> bool:
        s = self.shared
        if s.head_residual is None or s.tail_residual is None or s.head_residual.shape != residual.shape:
            return False
        delta = (residual - s.head_residual).abs().mean() / s.head_residual.abs().mean()
        return bool(delta <= self.threshold)


class TailHook(Hook):
    def __init__(self, shared: _Shared, last: bool) -> None:
        super().__init__()
        self.shared, self.last = shared, last

    def forward(self, module, call, x, *args, **kwargs):
        s = self.shared
        if not s.compute_tail:
            self.count("skipped", x.shape[0])
            return x  # the head already added the cached tail residual
        out = call(x, *args, **kwargs)
        self.count("computed", x.shape[0])
        if self.last:
            s.tail_residual = out - s.head_out
        return out


@register_method("first_block_cache", config=FirstBlockCacheConfig, family="diffusion", sort="runtime", kinds=("diffusion",))
class FirstBlockCache(MethodBase):
    def apply(self, bundle, calib) -> MethodResult:
        blocks = list(bundle.adapter.get_blocks(bundle.model))
        shared = _Shared()
        bundle.hooks.add("first_block_cache/0", blocks[0], HeadHook(shared, self.config.threshold))
        for i, block in enumerate(blocks[1:], start=1):
            bundle.hooks.add(f"first_block_cache/{i}", block, TailHook(shared, last=i == len(blocks) - 1))
        return MethodResult("cached-steps", details={"threshold": self.config.threshold},
                            notes=["blocks 1..L-1 skipped when the first block's residual barely changed (counted per sampling run)"])
