"""``QuantLinear``: a linear layer that stores packed integer weights and runs a real kernel.

Weights are ``Ŵ[n, k] = s[n, g] · (q[n, k] − z[n, g])`` with integer codes ``q`` in
``[0, 2^bits)``, one scale ``s`` and integer zero point ``z`` per output row and group of
``group_size`` consecutive input columns (group g covers columns ``g·gs .. (g+1)·gs − 1``; a
last partial group, e.g. K = 576 with groups of 128, covers the remaining 64 columns).

The module holds one *layout*, chosen from what the hardware can run:

=============  ======================  ============================================================
layout         execution path          stored tensors and compute
=============  ======================  ============================================================
``int8``       ``int8-kernel``         codes−128 as int8 [N, K↑16] (K zero-padded to a multiple of 16,
                                       which the kernel needs), bf16 scale [N], fp32 offset [N];
                                       ``aten._weight_int8pack_mm`` (bf16 activations) plus
                                       ``rowsum(x) · s·(128 − z)`` for the zero point (exact)
``int4-cpu``   ``int4-kernel``         torch's packed int4 [N, K/2] and bf16 scale/zero
                                       [K/kg, N, 2]; ``aten._weight_int4pack_mm_for_cpu``
                                       (bf16 activations). The kernel takes groups kg in
                                       {32, 64, 128, 256} dividing K: a group (or per-row) size
                                       it does not take is stored with each scale repeated over
                                       kernel groups of kg | gcd(gs, K) (bytes counted as held)
``w8a8``       ``int8-kernel``         symmetric per-channel int8 [N, K] and fp32 scale [N];
                                       activations quantized per token (absmax, int8) and
                                       multiplied by ``torch._int_mm`` (int8×int8→int32)
``triton``     ``int4-kernel`` /       canonical packed codes [N, ceil(K·b/8)], fp32 scales and uint8
               ``int8-kernel``         zero points [N, G]; Triton W4A16 / W8A16 (``triton_gemm``:
                                       split-K GEMV for M ≤ 16, tensor-core tiles or dequantize +
                                       cuBLAS above; GPU, or CPU under ``TRITON_INTERPRET=1``)
``int4-cuda``  ``int4-kernel``         torch's CUDA int4 layout [N/8, K/(16·t), 32, t/2] int32 and
                                       bf16 scale/zero [K/kg, N, 2]; ``aten._weight_int4pack_mm``
                                       (tinygemm, bf16 activations)
``packed``     ``simulated``           the same canonical tensors; dequantized to float on every
                                       forward, then a dense matmul (no kernel: 2/3-bit, groups a
                                       kernel does not take, N % 16 ≠ 0 for int4)
=============  ======================  ============================================================

**On CUDA** ``from_codes(layout="auto")`` asks ``cuda_select.choose`` for the fastest correct
layout of the format's shape (timed once per shape and process: ``triton``, ``int4-cuda`` or
``int8``); the choice, with its timings, is kept on the layer (``cuda_choice``).

**Two paths per CPU layout (decode and prefill).** torch's CPU weight-only kernels are fast for
a few rows (decode) but slower than an fp32 GEMM for many (prefill). From
``CPU_PREFILL_ROWS[layout]`` input rows on, ``int8`` and ``int4-cpu`` dequantize their codes per
call into a bfloat16 weight and run a bf16 GEMM instead (oneDNN; the same bf16 activations and
bf16 output as the kernels). The dequantization reads the kernel's own tensors without a
permutation gather (``packing.unpack_int4pack_cpu_t``: strided nibble reads that land in
[K, N]; int8: one dtype conversion, the scale applied to the output), so no extra bytes are
stored. The threshold is the whole-model crossover measured per layout on SmolLM2 by
``benchmarks/quant_latency.py`` (results/benchmarks/quant_latency_smollm2.md: the smallest prompt
from which the dequantizing path is faster at every longer one; int8 32 tokens, int4 g128 256,
int4 g64 512 — the int4 layout takes 256, where g64 is even: 563 vs 575 ms) and recorded with
each layer (``kernel_info()``). Per layer with warm caches ``benchmarks/cpu_quant_crossover.py``.

``storage_stats()`` returns (logical parameters, bytes of the tensors held), so the size
evaluator counts what the module really stores. ``dequantize()`` gives the float weight the
kernel computes with (the reference for tests); ``export()`` / ``from_export()`` give a
portable form (torch's int4 CPU layout is machine-specific: it is exported as canonical codes).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slimbench.kernels import packing
from slimbench.kernels.packing import effective_group, num_groups  # noqa: F401  (re-exported)

INT4_CPU_GROUPS = (256, 128, 64, 32)
# aten._weight_int8pack_mm (CPU) returns garbage for K % 16 != 0 and segfaults for odd K (torch 2.13):
# the int8 layout stores K padded with zero columns to a multiple of 16 (e.g. low-rank factors of odd rank)
INT8_CPU_K_MULTIPLE = 16
LAYOUT_PATHS = {"int8": "int8-kernel", "int4-cpu": "int4-kernel", "int4-cuda": "int4-kernel", "w8a8": "int8-kernel", "packed": "simulated"}
KERNEL_ACT_DTYPE = torch.bfloat16  # the CPU weight-only kernels' vectorized path (fp32 is a scalar loop)
# input rows from which the CPU layouts dequantize to bf16 per call and run a bf16 GEMM (prefill) instead of the kernel
CPU_PREFILL_ROWS = {"int8": 32, "int4-cpu": 256}


def int4_cpu_kernel_group(k: int, group_size: int) -> int | None:
    """The largest group the CPU int4 kernel takes that tiles both K and the method's groups."""
    common = math.gcd(effective_group(k, group_size), k)
    return next((g for g in INT4_CPU_GROUPS if common % g == 0), None)


def int4_cuda_kernel_group(k: int, group_size: int) -> int | None:
    """torch's CUDA int4 kernel takes groups of 32/64/128/256 dividing K (scales repeated over finer groups)."""
    return int4_cpu_kernel_group(k, group_size)  # the same group set and rule as on CPU


def cuda_candidates(bits: int, n: int, k: int, group_size: int) -> dict[str, str | None]:
    """The CUDA layouts ``cuda_select`` times for a format: layout -> why it cannot hold it (None: it can)."""
    from slimbench.kernels import triton_gemm

    int4 = None if bits == 4 and n % 8 == 0 and k % 32 == 0 and int4_cuda_kernel_group(k, group_size) else \
        f"4-bit with N % 8 == 0, K % 32 == 0 and a kernel group in {INT4_CPU_GROUPS} (N={n}, K={k}, group {group_size})"
    return {
        "triton": None if triton_gemm.supports(bits, k, group_size) else f"no Triton K tile fits group {group_size} with K={k}",
        "int4-cuda": int4,
        "int8": None if bits == 8 and num_groups(k, group_size) == 1 else "8-bit per-row only",
    }


def expand_groups(t: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """[N, G] per-group values -> [N, K] per-column values."""
    return t.repeat_interleave(effective_group(k, group_size), dim=1)[:, :k]


def choose_layout(bits: int, out_features: int, in_features: int, group_size: int, device: torch.device) -> str:
    """The fastest layout this device can run for the format (``packed`` when none)."""
    if device.type == "cuda" and bits in (4, 8):
        return "triton"
    per_row = effective_group(in_features, group_size) == in_features
    if bits == 8 and per_row:
        return "int8"
    if bits == 4 and out_features % 16 == 0 and in_features % 2 == 0 and int4_cpu_kernel_group(in_features, group_size):
        return "int4-cpu"
    return "packed"


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, layout: str, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None = None, kernel_group: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.layout, self.kernel_group = bits, group_size, layout, kernel_group
        device = next(iter(tensors.values())).device
        self.prefill_rows = _prefill_rows(layout, out_features, device)  # rows from which forward takes the prefill path (None: never)
        self.cuda_choice = None  # CUDA: the cuda_select.Choice this layer was built from
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int, bias: torch.Tensor | None = None, layout: str = "auto") -> "QuantLinear":
        """codes [N, K] in [0, 2^bits); scales, zeros [N, G] (zeros integer-valued)."""
        n, k = codes.shape
        if scales.shape != (n, num_groups(k, group_size)) or zeros.shape != scales.shape:
            raise ValueError(f"scales/zeros must be [{n}, {num_groups(k, group_size)}], got {tuple(scales.shape)}/{tuple(zeros.shape)}")
        choice = None
        if layout == "auto" and codes.device.type == "cuda":
            from slimbench.kernels import cuda_select

            choice = cuda_select.choose(bits, n, k, group_size, codes.device, cuda_candidates(bits, n, k, group_size),
                                        lambda c, s, z, lay: cls.from_codes(c, s, z, bits, group_size, layout=lay))
            layout = choice.layout
        elif layout == "auto":
            layout = choose_layout(bits, n, k, group_size, codes.device)
        build = _BUILDERS.get(layout)
        if build is None:
            raise ValueError(f"unknown layout {layout!r} (known: {', '.join(_BUILDERS)})")
        tensors, kernel_group = build(codes, scales.float(), zeros.float(), bits, group_size)
        module = cls(k, n, bits, group_size, layout, tensors, bias, kernel_group)
        module.cuda_choice = choice
        return module

    @classmethod
    def w8a8_from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "QuantLinear":
        """SmoothQuant's W8A8: symmetric per-channel absmax int8 weights, per-token activations."""
        n, k = weight.shape
        scale = weight.abs().amax(dim=1).clamp(min=1e-5) / 127  # [N]
        q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(k, n, 8, -1, "w8a8", {"qweight": q.contiguous(), "wscale": scale.float()}, bias)

    # -- properties ------------------------------------------------------------------------------
    @property
    def execution_path(self) -> str:
        if self.layout == "triton":
            return "int4-kernel" if self.bits == 4 else "int8-kernel"
        return LAYOUT_PATHS[self.layout]

    def kernel_info(self) -> dict:
        """What computes this layer for few rows (decode) and many rows (prefill), and from which
        row count the prefill path is taken (recorded in the layer reports)."""
        decode, prefill = _KERNELS[self.layout]
        info = {"layout": self.layout, "decode": decode}
        if self.prefill_rows is not None:
            info.update(prefill=prefill, prefill_rows=self.prefill_rows)
        if self.cuda_choice is not None:
            info["cuda_selection"] = self.cuda_choice.to_dict()
            if self.layout == "triton":
                info["prefill"] = {f"M<={b}" if b < 1 << 30 else "larger M": _TRITON_PREFILL[p] for b, p in sorted(self.cuda_choice.prefill.items())}
        return info

    def storage_stats(self) -> tuple[int, int]:
        tensors = [t for t in self.state_dict().values() if isinstance(t, torch.Tensor)]
        params = self.in_features * self.out_features + (0 if self.bias is None else self.bias.numel())
        return params, sum(t.numel() * t.element_size() for t in tensors)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, layout={self.layout}"

    # -- compute ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = _FORWARD[self.layout](self, x2).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The [out, in] float32 weight this module computes with."""
        return _DEQUANT[self.layout](self)

    def codes(self) -> torch.Tensor:
        """The [out, in] integer codes (int32)."""
        return _CODES[self.layout](self)

    def column_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale [N, K] float32, zero point [N, K] int32) of every weight, whatever the layout:
        ``dequantize() ≈ s·(codes() − z)`` (exact up to the kernels' bfloat16 offsets). The
        portable grid behind the compressed-tensors export."""
        return _COLUMN_QPARAMS[self.layout](self)

    def zero_count(self) -> int:
        """Weights at their group's zero point: exact zeros of the weight ``s·(q − z)`` (pruned
        weights quantized in a pipeline land there). The CPU kernels' bfloat16 offsets may hold
        them as tiny non-zeros; the count is of the stored format, not of that rounding.
        The codes never change after construction: counted once."""
        if getattr(self, "_zero_count", None) is None:
            self._zero_count = int((self.codes() == _ZERO_POINTS[self.layout](self)).sum())
        return self._zero_count

    # -- portable form ---------------------------------------------------------------------------
    def export(self) -> tuple[dict, dict[str, torch.Tensor]]:
        meta = {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits, "group_size": self.group_size, "layout": self.layout, "kernel_group": self.kernel_group, "bias": self.bias is not None}
        tensors = {k: v for k, v in self.state_dict().items() if v is not None}
        if self.layout in ("int4-cpu", "int4-cuda"):  # machine-specific order -> canonical nibbles
            tensors["qweight"] = packing.pack_bits(self.codes(), 4)
        meta["tensors"] = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()}
        return meta, tensors

    @classmethod
    def from_export(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> "QuantLinear":
        """The module ``export`` described; ValueError (one line) when the description and the
        tensors disagree (bits, group size, shapes, layout)."""
        check_export(meta, tensors)
        tensors = dict(tensors)
        bias = tensors.pop("bias", None)
        if meta["layout"] in ("int4-cpu", "int4-cuda"):
            codes = packing.unpack_bits(tensors["qweight"], 4, meta["in_features"])
            tensors["qweight"] = packing.to_int4pack_cpu(codes) if meta["layout"] == "int4-cpu" else packing.to_int4pack_cuda(codes)
        return cls(meta["in_features"], meta["out_features"], meta["bits"], meta["group_size"], meta["layout"], tensors, bias, meta.get("kernel_group"))


def check_export(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """The tensors an exported module must hold for its layout, bits and group size."""
    expected = _EXPORT_SHAPES.get(meta.get("layout"))
    if expected is None:
        raise ValueError(f"unknown layout {meta.get('layout')!r} (known: {', '.join(_EXPORT_SHAPES)})")
    n, k, bits, gs = meta["out_features"], meta["in_features"], meta["bits"], meta["group_size"]
    shapes = expected(n, k, bits, gs)
    if meta["layout"] == "int4-cpu" and meta.get("kernel_group") != int4_cpu_kernel_group(k, gs):
        raise ValueError(f"kernel group {meta.get('kernel_group')} does not fit K={k} and group size {gs}")
    if meta.get("bias"):
        shapes["bias"] = (n,)
    if set(tensors) != set(shapes):
        raise ValueError(f"layout {meta['layout']} holds tensors {sorted(shapes)}, found {sorted(tensors)}")
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} has shape {list(tensors[name].shape)}, but {bits}-bit {meta['layout']} codes of "
                             f"[{n}, {k}] with group size {gs} need {list(shape)}")


def _shapes_packed(n, k, bits, gs):
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return {"qweight": (n, packing.packed_row_bytes(k, bits)), "scales": (n, num_groups(k, gs)), "zeros": (n, num_groups(k, gs))}


def _shapes_fixed_bits(want: int, shapes):
    def expected(n, k, bits, gs):
        if bits != want:
            raise ValueError(f"this layout stores {want}-bit codes, the description says {bits}")
        return shapes(n, k, gs)
    return expected


_EXPORT_SHAPES = {
    "int8": _shapes_fixed_bits(8, lambda n, k, gs: {"qweight": (n, k + (-k % INT8_CPU_K_MULTIPLE)), "scale": (n,), "offset": (n,)}),
    "int4-cpu": _shapes_fixed_bits(4, lambda n, k, gs: {"qweight": (n, packing.packed_row_bytes(k, 4)),
                                                        "scales_zeros": (k // (int4_cpu_kernel_group(k, gs) or k), n, 2)}),
    "w8a8": _shapes_fixed_bits(8, lambda n, k, gs: {"qweight": (n, k), "wscale": (n,)}),
    "packed": _shapes_packed,
    "triton": _shapes_packed,
}


# -- layouts ---------------------------------------------------------------------------------------
def _build_int8(codes, scales, zeros, bits, group_size):
    if bits != 8 or scales.shape[1] != 1:
        raise ValueError("layout int8 needs 8-bit per-row codes")
    scale = scales[:, 0].to(KERNEL_ACT_DTYPE)  # [N] the kernel's scale dtype = activation dtype
    offset = scale.float() * (128 - zeros[:, 0])  # [N] s·(128 − z): Ŵx = s·(q−128)x + rowsum(x)·offset
    q = codes.to(torch.int32) - 128  # [N, K]
    pad = -q.shape[1] % INT8_CPU_K_MULTIPLE
    q = torch.nn.functional.pad(q, (0, pad))  # zero columns up to a K the kernel computes correctly
    return {"qweight": q.to(torch.int8).contiguous(), "scale": scale, "offset": offset}, None


def _int4_scales_zeros(scales, zeros, k, group_size, kg):
    """torch's int4 kernels' [K/kg, N, 2] bf16 (scale, zf) per kernel group: they compute (q − 8)·s + zf."""
    cols = torch.arange(0, k, kg, device=scales.device)  # first column of each kernel group
    s16 = expand_groups(scales, k, group_size)[:, cols].to(KERNEL_ACT_DTYPE)  # [N, K/kg]
    zf = (s16.float() * (8 - expand_groups(zeros, k, group_size)[:, cols])).to(KERNEL_ACT_DTYPE)
    return torch.stack((s16.t(), zf.t()), dim=-1).contiguous()


def _build_int4_cpu(codes, scales, zeros, bits, group_size):
    n, k = codes.shape
    kg = int4_cpu_kernel_group(k, group_size)
    if bits != 4 or kg is None or n % 16:
        raise ValueError(f"layout int4-cpu needs 4-bit codes, N % 16 == 0 and a kernel group for K={k}, group {group_size}")
    return {"qweight": packing.to_int4pack_cpu(codes), "scales_zeros": _int4_scales_zeros(scales, zeros, k, group_size, kg)}, kg


def _build_int4_cuda(codes, scales, zeros, bits, group_size):
    n, k = codes.shape
    kg = int4_cuda_kernel_group(k, group_size)
    if bits != 4 or kg is None or n % 8 or k % 32:
        raise ValueError(f"layout int4-cuda needs 4-bit codes, N % 8 == 0, K % 32 == 0 and a kernel group for K={k}, group {group_size}")
    return {"qweight": packing.to_int4pack_cuda(codes), "scales_zeros": _int4_scales_zeros(scales, zeros, k, group_size, kg)}, kg


def _build_packed(codes, scales, zeros, bits, group_size):
    if not torch.equal(zeros, zeros.round()) or float(zeros.min()) < 0 or float(zeros.max()) > 2**bits - 1:
        raise ValueError(f"zero points must be integers in [0, {2**bits - 1}]")
    return {"qweight": packing.pack_bits(codes, bits), "scales": scales.contiguous(), "zeros": zeros.to(torch.uint8 if bits <= 8 else torch.int32)}, None


_BUILDERS = {"int8": _build_int8, "int4-cpu": _build_int4_cpu, "int4-cuda": _build_int4_cuda, "packed": _build_packed, "triton": _build_packed}
CUDA_PREFILL_ROWS = {"int8": 17, "triton": 17}  # decode kernels up to 16 rows (triton_gemm.DECODE_MAX_ROWS)


def _prefill_rows(layout: str, out_features: int, device: torch.device) -> int | None:
    if device.type == "cuda":
        return CUDA_PREFILL_ROWS.get(layout)
    if layout == "int4-cpu" and not packing.int4pack_cpu_is_blocked(out_features):
        return None  # another build's pack layout: the kernel computes every input size
    return CPU_PREFILL_ROWS.get(layout)


def _prefill(m, x) -> bool:
    return m.prefill_rows is not None and x.shape[0] >= m.prefill_rows


def _fwd_int8(m, x):
    xk = x.to(KERNEL_ACT_DTYPE)
    if _prefill(m, x):  # codes−128 are exact in bf16: bf16 GEMM, then the per-row scale
        y = torch.nn.functional.linear(xk, m.qweight[:, : m.in_features].to(KERNEL_ACT_DTYPE)).float() * m.scale.float()
    else:
        if m.qweight.shape[1] != m.in_features:  # padded K: zero activations meet the zero weight columns
            xk = torch.nn.functional.pad(xk, (0, m.qweight.shape[1] - m.in_features))
        y = torch.ops.aten._weight_int8pack_mm(xk.contiguous(), m.qweight, m.scale).float()
    return y + x.float().sum(-1, keepdim=True) * m.offset


def _fwd_int4_cpu(m, x):
    xk = x.to(KERNEL_ACT_DTYPE).contiguous()
    if _prefill(m, x):
        return xk @ _dq_int4_cpu_t(m, KERNEL_ACT_DTYPE)  # [M, K] @ [K, N], bf16 GEMM
    return torch.ops.aten._weight_int4pack_mm_for_cpu(xk, m.qweight, m.kernel_group, m.scales_zeros)


def _fwd_w8a8(m, x):
    xs = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-5) / 127  # [M, 1] per-token scale
    xq = torch.round(x.float() / xs).clamp(-127, 127).to(torch.int8)
    rows = xq.shape[0]
    if xq.is_cuda and (rows <= 16 or rows % 8):  # CUDA's _int_mm needs M > 16 and M % 8 == 0: pad with zero rows
        xq = torch.nn.functional.pad(xq, (0, 0, 0, max(24, -(-rows // 8) * 8) - rows))
    return torch._int_mm(xq.contiguous(), m.qweight.t())[:rows].float() * xs * m.wscale


def _fwd_packed(m, x):
    return x @ m.dequantize().to(x.dtype).t()


def _fwd_int4_cuda(m, x):
    return torch.ops.aten._weight_int4pack_mm(x.to(KERNEL_ACT_DTYPE).contiguous(), m.qweight, m.kernel_group, m.scales_zeros)


def _fwd_triton(m, x):
    from slimbench.kernels import triton_gemm

    args = (m.qweight, m.scales, m.zeros, m.bits, m.in_features, m.group_size)
    if m.cuda_choice is None or not x.is_cuda:  # chosen per size inside (interpreter: first fitting configs)
        return triton_gemm.dequant_matmul(x, *args)
    if not _prefill(m, x):
        return triton_gemm.decode_matmul(x, *args)
    return _TRITON_PREFILL_FNS[m.cuda_choice.prefill_path(x.shape[0])](x, args)


def _triton_dequant_cublas(x, args):
    from slimbench.kernels import triton_gemm

    return x @ triton_gemm.dequantize(*args, dtype=x.dtype).t()


def _triton_tensor_cores(x, args):
    from slimbench.kernels import triton_gemm

    return triton_gemm.prefill_matmul(x, *args)


_TRITON_PREFILL_FNS = {"triton": _triton_tensor_cores, "cublas": _triton_dequant_cublas}


_FORWARD = {"int8": _fwd_int8, "int4-cpu": _fwd_int4_cpu, "int4-cuda": _fwd_int4_cuda, "w8a8": _fwd_w8a8, "packed": _fwd_packed, "triton": _fwd_triton}


def _codes_packed(m):
    return packing.unpack_bits(m.qweight, m.bits, m.in_features)


_CODES = {
    "int8": lambda m: m.qweight[:, : m.in_features].to(torch.int32) + 128,
    "int4-cpu": lambda m: packing.from_int4pack_cpu(m.qweight, m.out_features, m.in_features),
    "int4-cuda": lambda m: packing.from_int4pack_cuda(m.qweight, m.out_features, m.in_features),
    "w8a8": lambda m: m.qweight.to(torch.int32),
    "packed": _codes_packed,
    "triton": _codes_packed,
}


def _zp_int4_cpu(m):
    sz = m.scales_zeros.float()  # [K/kg, N, 2]: zf = s·(8 − z)
    z = torch.where(sz[..., 0] == 0, 8.0, torch.round(8 - sz[..., 1] / sz[..., 0])).t()  # [N, K/kg] (s = 0: any z; 8)
    return z.repeat_interleave(m.kernel_group, dim=1).to(torch.int32)


_ZERO_POINTS = {
    "int8": lambda m: torch.round(128 - m.offset / m.scale.float()).to(torch.int32)[:, None],  # offset = s·(128 − z)
    "int4-cpu": _zp_int4_cpu,
    "int4-cuda": _zp_int4_cpu,
    "w8a8": lambda m: torch.zeros(1, 1, dtype=torch.int32, device=m.qweight.device),  # symmetric: code 0 is the zero
    "packed": lambda m: expand_groups(m.zeros.to(torch.int32), m.in_features, m.group_size),
    "triton": lambda m: expand_groups(m.zeros.to(torch.int32), m.in_features, m.group_size),
}


def _qp_int8(m):
    n, k = m.out_features, m.in_features
    return m.scale.float()[:, None].expand(n, k), _ZERO_POINTS["int8"](m).expand(n, k)


def _qp_int4_cpu(m):
    s = m.scales_zeros.float()[..., 0].t().repeat_interleave(m.kernel_group, dim=1)  # [N, K]
    return s, _zp_int4_cpu(m)


def _qp_w8a8(m):
    n, k = m.out_features, m.in_features
    return m.wscale.float()[:, None].expand(n, k), torch.zeros(n, k, dtype=torch.int32)


def _qp_packed(m):
    k = m.in_features
    return expand_groups(m.scales.float(), k, m.group_size), expand_groups(m.zeros.to(torch.int32), k, m.group_size)


_COLUMN_QPARAMS = {"int8": _qp_int8, "int4-cpu": _qp_int4_cpu, "w8a8": _qp_w8a8, "packed": _qp_packed, "triton": _qp_packed}


def _dq_int4_cpu_t(m, dtype: torch.dtype) -> torch.Tensor:
    """The [K, N] (transposed) weight the kernel computes with, ``(q − 8)·s + zf`` per kernel group,
    read from the kernel's own tensors: strided nibble reads, then one scale and offset per group."""
    k, n, kg = m.in_features, m.out_features, m.kernel_group
    q = packing.unpack_int4pack_cpu_t(m.qweight, n, k).view(k // kg, kg, n)  # [G, kg, N] uint8
    sz = m.scales_zeros.float()  # [G, N, 2]
    offset = (sz[..., 1] - 8 * sz[..., 0]).unsqueeze(1)  # [G, 1, N]: (q − 8)·s + zf = q·s + (zf − 8·s)
    return torch.addcmul(offset, q.float(), sz[..., 0].unsqueeze(1)).view(k, n).to(dtype)


def _dq_int4_cpu(m):
    return _dq_int4_cpu_t(m, torch.float32).t()


def _dq_int4_cuda(m):
    sz = m.scales_zeros.float()  # [K/kg, N, 2]
    s = sz[..., 0].t().repeat_interleave(m.kernel_group, dim=1)  # [N, K]
    zf = sz[..., 1].t().repeat_interleave(m.kernel_group, dim=1)
    return (m.codes() - 8).float() * s + zf


def _dq_packed(m):
    k = m.in_features
    s = expand_groups(m.scales.float(), k, m.group_size)
    z = expand_groups(m.zeros.float(), k, m.group_size)
    return s * (m.codes().float() - z)


# (decode kernel, prefill path) of each layout, for kernel_info()
_KERNELS = {
    "int8": ("aten._weight_int8pack_mm", "dequantize to bf16 + bf16 GEMM"),
    "int4-cpu": ("aten._weight_int4pack_mm_for_cpu", "dequantize to bf16 + bf16 GEMM"),
    "int4-cuda": ("aten._weight_int4pack_mm (tinygemm)", None),
    "w8a8": ("torch._int_mm", None),
    "packed": ("dequantize + float matmul", None),
    "triton": ("triton split-K GEMV", "triton tensor-core GEMM"),
}
_TRITON_PREFILL = {"triton": "triton tensor-core GEMM", "cublas": "triton dequantize + cuBLAS"}

_DEQUANT = {
    "int8": lambda m: m.scale.float()[:, None] * (m.qweight[:, : m.in_features].float()) + m.offset[:, None],
    "int4-cpu": _dq_int4_cpu,
    "int4-cuda": _dq_int4_cuda,
    "w8a8": lambda m: m.qweight.float() * m.wscale[:, None],
    "packed": _dq_packed,
    "triton": _dq_packed,
}
