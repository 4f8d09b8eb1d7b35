"""Shared pieces of the weight-quantization methods: the format, min-max quantizer, packing.

Quantization grid (GPTQ's ``Quantizer.find_params``, IST-DASLab/gptq 2d65066 quant.py): for
the values ``x`` of one row (or one group of a row),

* asymmetric: ``xmin = min(min x, 0)``, ``xmax = max(max x, 0)``, ``s = (xmax − xmin)/maxq``,
  ``z = round(−xmin / s)``;
* symmetric: ``xmax = max|x|``, ``xmin = −xmax``, ``z = (maxq + 1)/2``;
* an all-zero row gets ``xmin, xmax = −1, +1``;
* ``q = clamp(round(x/s) + z, 0, maxq)``, ``x̂ = s·(q − z)``, ``maxq = 2^bits − 1``.

AWQ's quantizer (llm-awq d6e797a ``pseudo_quantize_tensor``) differs: the range is the plain
``[min x, max x]`` (not widened to include 0), ``s = max(xmax − xmin, 1e-5)/maxq`` and
``z = clamp(−round(xmin/s), 0, maxq)``: ``include_zero=False`` selects it.

Groups are ``group_size`` consecutive input columns; K not a multiple of the group size leaves
a last partial group (K = 576, g128: four groups of 128 and one of 64), quantized with its
own parameters as the GPTQ reference loop does.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from slimbench.kernels.qlinear import QuantLinear, num_groups
from slimbench.models.adapters import set_path
from slimbench.records import LayerReport
from slimbench.params import param

BITS = (2, 3, 4, 8)
# the model forms a weight quantizer can work on: plain float layers (pruned zeros stay exact zeros) and low-rank factors
QUANT_ACCEPTS = frozenset({"dense", "masked", "sliced", "dropped", "factored"})


def bits_param(default: int, doc: str = "weight bit width"):
    return param(default, doc, choices=BITS)


def group_param(default: int):
    return param(default, "consecutive input columns sharing a scale and zero point; -1 = one group per output row", also=(-1,), ge=8)


SYM_DOC = "symmetric grid (zero point fixed at the middle code); false: min-max with a zero point"


def minmax_params(x: torch.Tensor, bits: int, sym: bool, include_zero: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, zero) of ``x`` [N, C]; zero is integer-valued (float tensor)."""
    maxq = 2**bits - 1
    x = x.float()
    if not include_zero:  # AWQ
        xmax, xmin = x.amax(dim=1), x.amin(dim=1)
        scale = (xmax - xmin).clamp(min=1e-5) / maxq
        return scale, (-torch.round(xmin / scale)).clamp(0, maxq)
    zero = torch.zeros(x.shape[0], device=x.device)
    xmin, xmax = torch.minimum(x.amin(dim=1), zero), torch.maximum(x.amax(dim=1), zero)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(empty, -1.0, xmin), torch.where(empty, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def to_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """x [N, C] with per-row scale/zero [N] (or [N, 1]) -> integer codes [N, C] (int32)."""
    scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
    return torch.clamp(torch.round(x / scale) + zero, 0, 2**bits - 1).to(torch.int32)


def from_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, 1) * (q.float() - zero.reshape(-1, 1))


def group_slices(k: int, group_size: int) -> list[slice]:
    size = k if group_size <= 0 else group_size
    return [slice(i, min(i + size, k)) for i in range(0, k, size)]


@dataclass
class Quantized:
    """Integer codes with their per-group grid: what a ``QuantLinear`` is built from."""

    codes: torch.Tensor  # [N, K] int32
    scales: torch.Tensor  # [N, G]
    zeros: torch.Tensor  # [N, G]
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        k = self.codes.shape[1]
        cols = [s for s in group_slices(k, self.group_size)]
        return torch.cat([from_codes(self.codes[:, c], self.scales[:, g], self.zeros[:, g]) for g, c in enumerate(cols)], dim=1)


def rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool, include_zero: bool = True) -> Quantized:
    """Round-to-nearest with a min-max grid per row or per group. w [N, K]."""
    w = w.float()
    codes, scales, zeros = [], [], []
    for cols in group_slices(w.shape[1], group_size):
        scale, zero = minmax_params(w[:, cols], bits, sym, include_zero)
        codes.append(to_codes(w[:, cols], scale, zero, bits))
        scales.append(scale)
        zeros.append(zero)
    return Quantized(torch.cat(codes, 1), torch.stack(scales, 1), torch.stack(zeros, 1), bits, group_size)


def install(root: nn.Module, path: str, module: nn.Module, q: Quantized, layout: str = "auto") -> QuantLinear:
    """Replace the linear at ``root.<path>`` by a ``QuantLinear`` holding ``q``."""
    bias = getattr(module, "bias", None)
    qlinear = QuantLinear.from_codes(q.codes, q.scales, q.zeros, q.bits, q.group_size, bias=None if bias is None else bias.detach(), layout=layout)
    set_path(root, path, qlinear)
    return qlinear


def layer_report(name: str, role: str, q: Quantized, qlinear: QuantLinear, error: float | None = None, error_kind: str | None = None) -> LayerReport:
    """The typed per-layer report of one quantized linear."""
    k = q.codes.shape[1]
    groups = group_slices(k, q.group_size)
    extra: dict = {"groups": num_groups(k, q.group_size), **qlinear.kernel_info()}
    if q.group_size > 0 and k % q.group_size:
        extra["last_partial_group"] = groups[-1].stop - groups[-1].start
    if qlinear.kernel_group and qlinear.kernel_group != (k if q.group_size <= 0 else q.group_size):
        extra["kernel_group"] = qlinear.kernel_group
    return LayerReport(name, role, "quantized", bits=q.bits, group_size=q.group_size, path=qlinear.execution_path,
                       error=error, error_kind=error_kind if error is not None else None, extra=extra)


def summarize(layers: list[LayerReport]) -> tuple[str, dict, list[str]]:
    """(execution path of the model, details, notes) from the per-layer reports."""
    paths = Counter(r.path for r in layers)
    if "simulated" in paths:
        path = "simulated"
    else:
        path = "int4-kernel" if "int4-kernel" in paths else "int8-kernel"
    notes = []
    if len(paths) > 1:
        notes.append("layers run different paths: " + ", ".join(f"{n} {p}" for p, n in sorted(paths.items())) + f"; reported as {path}")
    if paths.get("simulated"):
        notes.append("simulated layers dequantize packed codes to float on every forward (no kernel for this format on this device)")
    if any(r.extra.get("layout") in ("int8", "int4-cpu") for r in layers):
        notes.append("CPU weight-only kernels compute with bfloat16 activations and bfloat16 scales (their vectorized path)")
    prefill = sorted({(r.extra["layout"], r.extra["prefill_rows"], r.extra["prefill"]) for r in layers
                      if r.extra.get("layout") in ("int8", "int4-cpu") and r.extra.get("prefill_rows")})
    for layout, rows, how in prefill:
        notes.append(f"{layout} layers: inputs of fewer than {rows} rows (decode) run torch's kernel; {rows} rows or more "
                     f"(prefill, perplexity windows) are computed by {how} (measured crossover, kernels.qlinear.CPU_PREFILL_ROWS)")
    chosen = Counter(r.extra["cuda_selection"]["layout"] for r in layers if "cuda_selection" in r.extra)
    if chosen:
        notes.append("CUDA kernels chosen per shape by timing (cuda_select): " + ", ".join(f"{n} {lay}" for lay, n in sorted(chosen.items())))
    partial = {r.extra["last_partial_group"] for r in layers if "last_partial_group" in r.extra}
    if partial:
        notes.append(f"K not a multiple of the group size: the last group of those rows has {sorted(partial)} columns, quantized with its own scale/zero")
    kg = {r.extra["kernel_group"] for r in layers if "kernel_group" in r.extra}
    if kg:
        notes.append(f"int4 kernel runs with kernel group(s) {sorted(kg)}: each method group's scale/zero is repeated over kernel groups (bytes counted as stored)")
    return path, {"paths": dict(paths), "quantized_linears": len(layers)}, notes


def mean_bits(bits: dict[str, int], sizes: dict[str, int]) -> float:
    """Weight-averaged bit width of the layers ``bits`` (name -> bits), weights ``sizes``."""
    total = sum(sizes.values())
    return sum(bits[n] * sizes[n] for n in bits) / total if total else math.nan
