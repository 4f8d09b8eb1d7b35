"""The fastest correct CUDA kernel for one quantized weight shape, chosen once and remembered.

``choose(bits, n, k, group_size, device)`` is what ``QuantLinear.from_codes`` calls on CUDA.
For a format (bits, N, K, group) not seen before in this process it

1. builds a ``QuantLinear`` with random codes of that shape in every candidate layout that can
   hold the format (``qlinear.cuda_candidates``: the Triton kernels of ``triton_gemm`` on the canonical
   packed codes; torch's tinygemm ``aten._weight_int4pack_mm`` on its own int4 layout; torch's
   ``aten._weight_int8pack_mm`` with the dequantize-then-cuBLAS prefill of the ``int8`` layout),
2. rejects a candidate that fails or computes a wrong result (relative error against
   ``x @ dequantize().T`` above ``MAX_REL_ERROR`` at M = 1 and M = 64, bf16 activations),
3. times each survivor at ``ROWS`` input rows with bf16 activations (CUDA events, median of
   ``REPEATS`` after warm-up, which also runs Triton's autotuning); for the Triton layout it also
   times, per large-M bucket, its tensor-core kernel against dequantize + cuBLAS and keeps the
   faster (``Choice.prefill``),
4. keeps the layout with the smallest geometric mean time over ``ROWS`` (one stored format has
   to serve decode and prefill).

The table (``TABLE``) lives for the process; ``Choice`` is attached to each layer and recorded
in its report (``QuantLinear.kernel_info``). ``SLIMBENCH_CUDA_LAYOUT=<layout>`` forces a layout
(when it can hold the format), e.g. to compare end-to-end speeds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from slimbench.kernels.packing import effective_group, num_groups

ROWS = (1, 16, 256, 2048)
REPEATS = 20
MAX_REL_ERROR = 2e-2  # bf16 activations (and bf16 scales in torch's int4 layout)


@dataclass
class Choice:
    layout: str
    prefill: dict = field(default_factory=dict)  # triton layout: {M bucket upper bound: "triton" | "cublas"}
    timings_us: dict = field(default_factory=dict)  # candidate -> {rows: µs}
    rejected: dict = field(default_factory=dict)  # candidate -> reason

    def prefill_path(self, rows: int) -> str:
        """The Triton layout's large-M path for an input of ``rows`` rows."""
        for bound in sorted(self.prefill):
            if rows <= bound:
                return self.prefill[bound]
        return self.prefill[max(self.prefill)] if self.prefill else "triton"

    def to_dict(self) -> dict:
        return {"layout": self.layout, "prefill": {str(k): v for k, v in self.prefill.items()},
                "timings_us": {c: {str(m): round(t, 2) for m, t in ts.items()} for c, ts in self.timings_us.items()},
                "rejected": dict(self.rejected)}


TABLE: dict[tuple, Choice] = {}


def cuda_time_us(fn: Callable[[], object], repeats: int = REPEATS, warmup: int = 3) -> float:
    """Median µs of ``fn`` on the current CUDA stream (events around each call, after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def random_format(bits: int, n: int, k: int, group_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(n * 131 + k)
    groups = num_groups(k, group_size)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, device=device, dtype=torch.int32)
    scales = torch.rand(n, groups, generator=g, device=device) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g, device=device).float()
    return codes, scales, zeros


def choose(bits: int, n: int, k: int, group_size: int, device, candidates: dict[str, str | None], make: Callable) -> Choice:
    """``candidates``: layout -> the reason it cannot hold this format (None: it can);
    ``make(codes, scales, zeros, layout)`` builds a ``QuantLinear`` (passed in: no import cycle)."""
    device = torch.device(device)
    key = (bits, n, k, effective_group(k, group_size), torch.cuda.get_device_name(device))
    if key not in TABLE:
        TABLE[key] = _measure(bits, n, k, group_size, device, candidates, make)
    return TABLE[key]


def _measure(bits: int, n: int, k: int, group_size: int, device: torch.device, candidates: dict, make: Callable,
             timer: Callable = None) -> Choice:
    timer = timer or cuda_time_us
    forced = os.environ.get("SLIMBENCH_CUDA_LAYOUT")
    choice = Choice(layout="packed")
    codes, scales, zeros = random_format(bits, n, k, group_size, device)
    reference = make(codes, scales, zeros, "packed").dequantize()  # [N, K] fp32
    for layout, why_not in candidates.items():
        reason = why_not or (None if forced in (None, layout) else f"SLIMBENCH_CUDA_LAYOUT={forced}")
        if reason:
            choice.rejected[layout] = reason
            continue
        try:
            layer = make(codes, scales, zeros, layout)
            layer.cuda_choice = Choice(layout, prefill={1 << 30: "triton"})
            error = _max_rel_error(layer, reference)
            if error > MAX_REL_ERROR:
                choice.rejected[layout] = f"relative error {error:.3g} > {MAX_REL_ERROR}"
                continue
            if layout == "triton":
                layer.cuda_choice.prefill = _triton_prefill_paths(layer, k, device, timer)
                choice.prefill = dict(layer.cuda_choice.prefill)
            choice.timings_us[layout] = {m: timer(lambda x=_x(m, k, device): layer(x)) for m in ROWS}
        except Exception as exc:  # a kernel this build or GPU cannot run is not a candidate
            choice.rejected[layout] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if choice.timings_us:
        choice.layout = min(choice.timings_us, key=lambda c: sum(math.log(t) for t in choice.timings_us[c].values()))
    return choice


def _x(m: int, k: int, device) -> torch.Tensor:
    return torch.randn(m, k, device=device, generator=torch.Generator(device=device).manual_seed(m)).to(torch.bfloat16)


def _max_rel_error(layer, reference: torch.Tensor) -> float:
    worst = 0.0
    for m in (1, 64):
        x = _x(m, reference.shape[1], reference.device)
        want = x.float() @ reference.t()
        got = layer(x).float()
        worst = max(worst, float((got - want).abs().max() / want.abs().max().clamp(min=1e-12)))
    return worst


def _triton_prefill_paths(layer, k: int, device, timer: Callable) -> dict:
    """Per large-M bucket (≤ 1024 rows: timed at 256; more: timed at 2048), the faster of the
    Triton tensor-core kernel and dequantize + cuBLAS."""
    paths = {}
    for bound, m in ((1024, 256), (1 << 30, 2048)):
        x = _x(m, k, device)
        times = {}
        for path in ("triton", "cublas"):
            layer.cuda_choice.prefill = {1 << 30: path}
            times[path] = timer(lambda: layer(x))
        paths[bound] = min(times, key=times.get)
    return paths
