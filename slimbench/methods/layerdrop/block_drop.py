"""Block Drop (He, Sun, Shen, Li, "What Matters in Transformers? Not All Attention is Needed",
arXiv 2406.15786; CASE-Lab-UMD/LLM-Drop @ 28b5dd1, ``block_drop.py``,
``discrete_block_dropping``).

Algorithm:
  1. one block-by-block pass of the calibration windows through the original model;
  2. per block: similarity = mean over all tokens of cos(block input, block output) in fp32;
  3. remove the ``drop_n`` most similar blocks from the block list (one-shot, the reference
     default); ``iterative`` removes one block per round and re-scores the shortened model.
Kept blocks are renumbered (attention ``layer_idx``, ``config.num_hidden_layers``,
``config.layer_types``) so the KV cache stays consistent. The reference's "consecutive
blocks" variant is not implemented.

Calibration: the reference uses C4, 256 × 2048 tokens; slimbench uses the run's calibration set.
"""

from __future__ import annotations

import torch

from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.layerdrop.common import DROP_ACCEPTS, DropConfig, block_drop, check_drop_count


@register_method("block_drop", config=DropConfig, family="layer dropping", produces="dropped", calibration=True, accepts=DROP_ACCEPTS)
class BlockDrop(MethodBase):
    def check_shape(self, shape) -> None:
        check_drop_count(self.config.drop_n, shape, ("block",))

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        return block_drop(bundle, calib, self.config)
