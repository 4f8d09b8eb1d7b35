"""Joint Layer Drop (He, Sun, Shen, Li, "What Matters in Transformers? Not All Attention is
Needed", arXiv 2406.15786; CASE-Lab-UMD/LLM-Drop @ 28b5dd1, ``layer_drop.py`` with
``target_layer=all``).

Algorithm:
  1. attention and MLP similarities exactly as in Attention Drop and MLP Drop (one pass over
     the original model; mean per-token cos(X, X + update) in fp32);
  2. concatenate them (2L entries) and drop the ``drop_n`` most similar overall, so the result
     mixes attention and MLP indices (``iterative``: one per round, re-scoring).
A block whose attention and MLP are both dropped is an identity (both sublayers skipped).

Calibration: the reference uses C4, 256 × 2048 tokens; slimbench uses the run's calibration set.
"""

from __future__ import annotations

import torch

from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.layerdrop.common import DROP_ACCEPTS, SUBLAYERS, DropConfig, check_drop_count, check_sublayer, sublayer_drop


@register_method("joint_drop", config=DropConfig, family="layer dropping", produces="dropped", calibration=True, accepts=DROP_ACCEPTS)
class JointDrop(MethodBase):
    def check(self, adapter) -> None:
        for sublayer in SUBLAYERS:
            check_sublayer(adapter, sublayer)

    def check_shape(self, shape) -> None:
        check_drop_count(self.config.drop_n, shape, SUBLAYERS)

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        return sublayer_drop(bundle, calib, self.config, SUBLAYERS)
