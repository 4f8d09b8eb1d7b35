"""MLP Drop (He, Sun, Shen, Li, "What Matters in Transformers? Not All Attention is Needed",
arXiv 2406.15786; CASE-Lab-UMD/LLM-Drop @ 28b5dd1, ``layer_drop.py`` with
``target_layer=mlp``, ``layer_drop_norm=True``).

Algorithm:
  1. one block-by-block pass of the calibration windows through the original model;
  2. per MLP sublayer: X = residual stream after attention (the input of the MLP pre-norm),
     Y = X + MLP(Norm(X)) (Gemma-3: X + PostNorm(MLP(Norm(X)))); similarity = mean over all
     tokens of cos(X, Y) in fp32; importance = 1 − similarity;
  3. drop the ``drop_n`` most similar MLPs with their norms (``iterative``: one per round,
     re-scoring the dropped model). Dropped MLPs save weights and FLOPs, not KV cache.

Calibration: the reference uses C4, 256 × 2048 tokens; slimbench uses the run's calibration set.
"""

from __future__ import annotations

import torch

from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.layerdrop.common import DROP_ACCEPTS, DropConfig, check_drop_count, check_sublayer, sublayer_drop


@register_method("mlp_drop", config=DropConfig, family="layer dropping", produces="dropped", calibration=True, accepts=DROP_ACCEPTS)
class MlpDrop(MethodBase):
    def check(self, adapter) -> None:
        check_sublayer(adapter, "mlp")

    def check_shape(self, shape) -> None:
        check_drop_count(self.config.drop_n, shape, ("mlp",))

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        return sublayer_drop(bundle, calib, self.config, ("mlp",))
