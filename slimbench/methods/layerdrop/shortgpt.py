"""ShortGPT (Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You
Expect", arXiv 2403.03853; icip-cas/ShortGPT @ 9a2ee8d, ``shortgpt/shortgpt.py``, ``metrics.py``).

Algorithm:
  1. run the calibration windows through the original model and take the hidden states
     entering and leaving every block;
  2. Block Influence BI_i = 1 − cos(x_in, x_out) per token, accumulated over all tokens
     (the reference sums; the mean used here ranks identically for equal-length windows);
  3. remove the ``drop_n`` blocks of lowest BI from the block list (one shot), renumbering
     the kept blocks' ``layer_idx`` and the config as Block Drop does.

Where the code differs from the paper's formula, the code is followed: the reference reads
``output_hidden_states``, whose last entry is the output of the final norm, so the last
block's BI compares its input with the *normed* model output (``final_norm_last=True``).
``angular=True`` uses the reference's angular distance arccos(cos)/π instead. The reference
replaces NaN cosines (zero vectors) by 0.5; torch's cosine has an epsilon and never returns NaN.

Calibration: the reference streams PG19 validation in 256-token chunks; slimbench uses the
run's calibration set (WikiText-2 validation windows by default), recorded in the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.errors import ConfigError
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.layerdrop.common import DROP_ACCEPTS, DropConfig, block_drop, check_drop_count
from slimbench.params import check_params, param


@dataclass(frozen=True)
class ShortGPTConfig:
    drop_n: int = param(4, "blocks removed", ge=1)
    angular: bool = param(False, "reference option: angular distance instead of 1 − cos", choices=(True, False))
    final_norm_last: bool = param(True, "reference behaviour: the last block's output is taken after the final norm", choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)
        DropConfig(drop_n=self.drop_n)  # same validation of drop_n


@register_method("shortgpt", config=ShortGPTConfig, family="layer dropping", produces="dropped", calibration=True, accepts=DROP_ACCEPTS)
class ShortGPT(MethodBase):
    def check(self, adapter) -> None:
        if self.config.final_norm_last and adapter.final_norm is None:
            raise ConfigError(f"{adapter.family} models: final_norm_last needs a final norm; set method.final_norm_last=false")

    def check_shape(self, shape) -> None:
        check_drop_count(self.config.drop_n, shape, ("block",))

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg = self.config
        def variant(i: int, n_blocks: int) -> str:  # the shared block pass's value ShortGPT reads
            return ("angular" if cfg.angular else "cos") + ("+final_norm" if cfg.final_norm_last and i == n_blocks - 1 else "")

        note = "reference calibration: PG19 validation, 256-token chunks; this run: its configured calibration set"
        result = block_drop(bundle, calib, DropConfig(drop_n=cfg.drop_n), variant=variant, note=note)
        sims = result.details["similarity"]["block"]
        result.details["block_influence"] = [None if s is None else round(1 - s, 8) for s in sims]
        result.details["importance"] = "Block Influence BI = 1 - similarity; the lowest-BI blocks are removed"
        return result
