"""RTN: round-to-nearest weight quantization (the baseline of GPTQ, Frantar et al. 2023,
arXiv 2210.17323; IST-DASLab/gptq 2d65066 ``--nearest``).

Algorithm, for every compressible linear of every block (no calibration):
  1. per output row, or per group of ``group_size`` consecutive input columns (a last partial
     group when K is not a multiple, e.g. K=576 with g128 -> 4×128 + 64), take the min-max grid
     of ``slimbench.methods.quant.common`` (asymmetric by default, range widened to include 0);
  2. q = clamp(round(w/s) + z, 0, 2^bits − 1); store q packed with s and z in a ``QuantLinear``.
Execution path: int4/int8 kernels where the format has one on this device, else ``simulated``.
In a pipeline RTN also quantizes pruned weights (a zero maps exactly to the zero point) and
the two factors of low-rank layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.quant.common import QUANT_ACCEPTS, SYM_DOC, bits_param, group_param, install, layer_report, rtn, summarize
from slimbench.params import check_params, param


@dataclass(frozen=True)
class RTNConfig:
    bits: int = bits_param(4)
    group_size: int = group_param(128)
    sym: bool = param(False, SYM_DOC, choices=(True, False))

    def __post_init__(self) -> None:
        check_params(self)


@register_method("rtn", config=RTNConfig, family="quantization", produces="quantized", kinds=("causal_lm", "diffusion"),
                 accepts=QUANT_ACCEPTS)
class RTN(MethodBase):
    @torch.no_grad()
    def apply(self, bundle, calib) -> MethodResult:
        cfg, adapter = self.config, bundle.adapter
        layers = []
        for i, block in enumerate(adapter.get_blocks(bundle.model)):
            for role, module in adapter.block_linears(block).items():
                q = rtn(adapter.weight_matrix(module), cfg.bits, cfg.group_size, cfg.sym)  # [out, in]
                layers.append(layer_report(adapter.layer_name(i, role), role, q, install(block, adapter.role_path(role), module, q)))
        path, details, notes = summarize(layers)
        return MethodResult(execution_path=path, details=details, notes=notes, layers=layers)
