"""Attention Drop (He, Sun, Shen, Li, "What Matters in Transformers? Not All Attention is
Needed", arXiv 2406.15786; CASE-Lab-UMD/LLM-Drop @ 28b5dd1, ``layer_drop.py`` with
``target_layer=attn``, ``layer_drop_norm=True`` as in all the reference scripts).

Algorithm:
  1. one block-by-block pass of the calibration windows through the original model;
  2. per attention sublayer: X = residual stream entering it (the input of its pre-norm),
     Y = X + Attn(Norm(X)) (Gemma-3: X + PostNorm(Attn(Norm(X)))); similarity = mean over
     all tokens of cos(X, Y) in fp32; importance = 1 − similarity;
  3. drop the ``drop_n`` most similar attention sublayers with their norms and KV-cache slots
     (``iterative``: one per round, re-scoring the dropped model, dropped sublayers excluded,
     as the reference's ``layer_drop_iterative.sh``).

Calibration: the reference uses C4, 256 × 2048 tokens; slimbench uses the run's calibration set
(WikiText-2 validation by default), which the compression report records.
"""

from __future__ import annotations

import torch

from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.layerdrop.common import DROP_ACCEPTS, DropConfig, check_drop_count, check_sublayer, sublayer_drop


@register_method("attn_drop", config=DropConfig, family="layer dropping", produces="dropped", calibration=True, accepts=DROP_ACCEPTS)
class AttnDrop(MethodBase):
    def check(self, adapter) -> None:
        check_sublayer(adapter, "attn")

    def check_shape(self, shape) -> None:
        check_drop_count(self.config.drop_n, shape, ("attn",))

    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        return sublayer_drop(bundle, calib, self.config, ("attn",))
