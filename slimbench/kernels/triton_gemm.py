"""Triton W4A16 / W8A16 kernels: decode (few rows), prefill (many rows) and dequantization.

``y[M, N] = x[M, K] · Ŵᵀ`` with ``Ŵ[n, k] = s[n, g] · (q[n, k] − z[n, g])``, ``g = k // gs``:
integer codes ``q`` in the canonical packed layout of ``slimbench.kernels.packing`` (4-bit:
two codes per byte, even column in the low nibble; 8-bit: one byte per code), fp32 scales
``s`` and uint8 zero points ``z`` per output row and group (``G = 1``: per row).

Every kernel walks K in tiles of ``BLOCK_K`` columns that never straddle a group (``BLOCK_K``
divides the group size, or there is one group per row), so a tile has one scale and zero per
row and the dequantization folds into the tile's partial sums:
``Σ_k x_k ŵ_nk = s_n · (Σ_k x_k q_nk − z_n · Σ_k x_k)``; codes become floats exactly (≤ 255).
A 4-bit tile is read as its low and high nibbles, which meet the even and odd columns of x.

* ``_decode_kernel`` (M ≤ 16): a program owns ``BLOCK_N`` output columns and one of
  ``SPLIT_K`` interleaved K ranges, for all M rows (``BLOCK_M`` = M rounded up to a power of
  two: no wasted tile rows at M = 1); GEMV-style multiply-and-reduce below 16 rows, ``tl.dot``
  at 16; partial sums ``atomic_add`` into a zeroed fp32 output (split-K).
* ``_prefill_kernel`` (M > 16): ``BLOCK_M × BLOCK_N`` output tiles on tensor cores
  (``tl.dot`` in the activations' dtype, fp32 accumulation; fp32 activations use IEEE fp32),
  grouped launch order for L2 reuse of the weight tiles.
* ``_dequant_kernel``: writes Ŵ [N, K] in the activations' dtype (for dequantize-then-cuBLAS,
  which may win at large M; ``slimbench.kernels.cuda_select`` times both).

On CUDA the kernels are autotuned (``triton.autotune`` over the small config sets below,
keyed on the M bucket, N, K and the group size; configs whose ``BLOCK_K`` would straddle a
group are pruned). The Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) cannot
autotune: there each launch takes one given config, and the tests run every config.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from slimbench.kernels.packing import effective_group, num_groups

DECODE_MAX_ROWS = 16  # up to this many rows the decode kernel runs; more take the prefill kernel


# -- kernels ---------------------------------------------------------------------------------------
@triton.jit
def _tile_codes(q_ptr, rn, n_mask, k0, K, row_bytes, BITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes of one K tile as floats: (low/even, high/odd) [BN, BK/2] for 4 bits, (all, unused) [BN, BK] for 8."""
    if BITS == 4:
        rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        byte = tl.load(q_ptr + rn[:, None] * row_bytes + rb[None, :], mask=n_mask[:, None] & (rb[None, :] < row_bytes), other=0).to(tl.int32)
        return (byte & 15).to(tl.float32), (byte >> 4).to(tl.float32)
    rk = k0 + tl.arange(0, BLOCK_K)
    q = tl.load(q_ptr + rn[:, None] * row_bytes + rk[None, :], mask=n_mask[:, None] & (rk[None, :] < K), other=0).to(tl.float32)
    return q, q


@triton.jit
def _tile_x(x_ptr, rm, m_mask, k0, K, stride_xm, BITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Activations of one K tile: (even, odd) columns [BM, BK/2] for 4 bits, (all, unused) [BM, BK] for 8."""
    if BITS == 4:
        ke = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        even = tl.load(x_ptr + rm[:, None] * stride_xm + ke[None, :], mask=m_mask[:, None] & (ke[None, :] < K), other=0.0)
        odd = tl.load(x_ptr + rm[:, None] * stride_xm + ke[None, :] + 1, mask=m_mask[:, None] & (ke[None, :] + 1 < K), other=0.0)
        return even, odd
    rk = k0 + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_mask[:, None] & (rk[None, :] < K), other=0.0)
    return x, x


@triton.jit
def _tile_dot(a, w, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
    """a [BM, BK'] · w [BN, BK']ᵀ -> [BM, BN] fp32."""
    if USE_DOT:
        if IEEE:
            return tl.dot(a.to(tl.float32), tl.trans(w), input_precision="ieee")
        return tl.dot(a, tl.trans(w.to(a.dtype)))
    return tl.sum(a.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)


@triton.jit
def _tile_partial(x_ptr, q_ptr, s_ptr, z_ptr, rm, rn, m_mask, n_mask, k0, K, G, row_bytes, group_size, stride_xm,
                  BITS: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
    """This tile's contribution s · (x·q − z · Σx) to the [BM, BN] output."""
    g = k0 // group_size
    s = tl.load(s_ptr + rn * G + g, mask=n_mask, other=0.0)  # [BN]
    z = tl.load(z_ptr + rn * G + g, mask=n_mask, other=0).to(tl.float32)  # [BN]
    xa, xb = _tile_x(x_ptr, rm, m_mask, k0, K, stride_xm, BITS, BLOCK_K)
    qa, qb = _tile_codes(q_ptr, rn, n_mask, k0, K, row_bytes, BITS, BLOCK_K)
    part = _tile_dot(xa, qa, USE_DOT, IEEE)
    xsum = tl.sum(xa.to(tl.float32), axis=1)
    if BITS == 4:
        part += _tile_dot(xb, qb, USE_DOT, IEEE)
        xsum += tl.sum(xb.to(tl.float32), axis=1)
    return s[None, :] * (part - z[None, :] * xsum[:, None])


@triton.jit
def _decode_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, K, G, row_bytes, group_size, stride_xm, m_bucket,
                   BITS: tl.constexpr, BLOCK_M: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        acc += _tile_partial(x_ptr, q_ptr, s_ptr, z_ptr, rm, rn, m_mask, n_mask, k0, K, G, row_bytes, group_size, stride_xm,
                             BITS, BLOCK_K, BLOCK_M >= 16, IEEE)
    tl.atomic_add(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _prefill_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, K, G, row_bytes, group_size, stride_xm, m_bucket,
                    BITS: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    band = GROUP_M * tiles_n  # programs of GROUP_M consecutive row tiles: they share weight tiles in L2
    first_m = (pid // band) * GROUP_M
    rows_in_band = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band) % rows_in_band
    pid_n = (pid % band) // rows_in_band
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask, n_mask = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        acc += _tile_partial(x_ptr, q_ptr, s_ptr, z_ptr, rm, rn, m_mask, n_mask, k0, K, G, row_bytes, group_size, stride_xm,
                             BITS, BLOCK_K, True, IEEE)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _dequant_kernel(q_ptr, s_ptr, z_ptr, w_ptr, N, K, G, row_bytes, group_size,
                    BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    n_mask = rn < N
    g = k0 // group_size
    s = tl.load(s_ptr + rn * G + g, mask=n_mask, other=0.0)[:, None]
    z = tl.load(z_ptr + rn * G + g, mask=n_mask, other=0).to(tl.float32)[:, None]
    qa, qb = _tile_codes(q_ptr, rn, n_mask, k0, K, row_bytes, BITS, BLOCK_K)
    out_ty = w_ptr.dtype.element_ty
    if BITS == 4:
        ke = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        tl.store(w_ptr + rn[:, None] * K + ke[None, :], (s * (qa - z)).to(out_ty), mask=n_mask[:, None] & (ke[None, :] < K))
        tl.store(w_ptr + rn[:, None] * K + ke[None, :] + 1, (s * (qb - z)).to(out_ty), mask=n_mask[:, None] & (ke[None, :] + 1 < K))
    else:
        rk = k0 + tl.arange(0, BLOCK_K)
        tl.store(w_ptr + rn[:, None] * K + rk[None, :], (s * (qa - z)).to(out_ty), mask=n_mask[:, None] & (rk[None, :] < K))


# -- configs and autotuning ---------------------------------------------------------------------------
def _cfg(num_warps: int, num_stages: int, **kw) -> triton.Config:
    return triton.Config(kw, num_warps=num_warps, num_stages=num_stages)


DECODE_CONFIGS = [
    _cfg(4, 2, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1), _cfg(4, 2, BLOCK_N=64, BLOCK_K=128, SPLIT_K=1),
    _cfg(4, 2, BLOCK_N=32, BLOCK_K=128, SPLIT_K=4), _cfg(4, 2, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4),
    _cfg(4, 2, BLOCK_N=16, BLOCK_K=256, SPLIT_K=2), _cfg(8, 2, BLOCK_N=128, BLOCK_K=128, SPLIT_K=8),
    _cfg(2, 2, BLOCK_N=32, BLOCK_K=64, SPLIT_K=8), _cfg(4, 2, BLOCK_N=64, BLOCK_K=64, SPLIT_K=4),
    _cfg(2, 2, BLOCK_N=32, BLOCK_K=32, SPLIT_K=8), _cfg(4, 2, BLOCK_N=64, BLOCK_K=32, SPLIT_K=4),
]
PREFILL_CONFIGS = [
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8), _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8), _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
    _cfg(8, 3, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8), _cfg(8, 3, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, GROUP_M=8), _cfg(4, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8),
]


def tile_fits(block_k: int, k: int, group_size: int) -> bool:
    """A K tile never straddles a group: one group per row, or BLOCK_K divides the group size."""
    return num_groups(k, group_size) == 1 or effective_group(k, group_size) % block_k == 0


def supports(bits: int, k: int, group_size: int) -> bool:
    """Whether the Triton layout can run this format (some config's K tile fits its groups)."""
    return bits in (4, 8) and any(tile_fits(c.kwargs["BLOCK_K"], k, group_size) for c in DECODE_CONFIGS + PREFILL_CONFIGS)


def _prune(configs, named_args, **kwargs):
    """Keep the configs whose K tile fits the groups (every config's BLOCK_K is >= 32: tl.dot's
    minimum of 16 per 4-bit half tile)."""
    kept = [c for c in configs if named_args["G"] == 1 or named_args["group_size"] % c.kwargs["BLOCK_K"] == 0]
    return kept or configs[:1]


_KEY = ["m_bucket", "N", "K", "group_size"]
_decode_tuned = triton.autotune(DECODE_CONFIGS, key=_KEY, reset_to_zero=["y_ptr"], prune_configs_by={"early_config_prune": _prune})(_decode_kernel)
_prefill_tuned = triton.autotune(PREFILL_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})(_prefill_kernel)


def _m_bucket(m: int) -> int:
    """Autotuning bucket of the row count: powers of two up to 16 (decode), then 32 .. 4096."""
    return min(triton.next_power_of_2(m), 4096)


def _check(x, qweight, scales, zeros, bits, in_features, group_size) -> None:
    if bits not in (4, 8):
        raise ValueError(f"Triton dequant-GEMM supports 4 and 8 bits, got {bits}")
    n = qweight.shape[0]
    if x.shape[1] != in_features or scales.shape != (n, num_groups(in_features, group_size)) or zeros.shape != scales.shape:
        raise ValueError("shape mismatch between x, qweight, scales and zeros")


def _common(x, qweight, scales, zeros, in_features, group_size):
    n, k = qweight.shape[0], in_features
    args = (qweight.contiguous(), scales.float().contiguous(), zeros.contiguous())
    return n, k, args, (scales.shape[1], qweight.shape[1], effective_group(k, group_size), x.stride(0))


# -- launchers -----------------------------------------------------------------------------------------
def decode_matmul(x, qweight, scales, zeros, bits, in_features, group_size, config: dict | None = None) -> torch.Tensor:
    """x [M ≤ 16, K] · Ŵᵀ -> [M, N] float32 (split-K GEMV). ``config``: one of DECODE_CONFIGS' kwargs
    (required off CUDA, where there is no autotuning)."""
    _check(x, qweight, scales, zeros, bits, in_features, group_size)
    m = x.shape[0]
    if m > DECODE_MAX_ROWS:
        raise ValueError(f"decode_matmul takes at most {DECODE_MAX_ROWS} rows, got {m}")
    x = x.contiguous()
    n, k, tensors, (groups, row_bytes, gs, stride) = _common(x, qweight, scales, zeros, in_features, group_size)
    y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    block_m = _m_bucket(m)
    fixed = dict(BITS=bits, BLOCK_M=block_m, IEEE=x.dtype == torch.float32)
    if config is None:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])  # noqa: E731
        _decode_tuned[grid](x, *tensors, y, m, n, k, groups, row_bytes, gs, stride, block_m, **fixed)
    else:
        _decode_kernel[(triton.cdiv(n, config["BLOCK_N"]), config["SPLIT_K"])](x, *tensors, y, m, n, k, groups, row_bytes, gs, stride, block_m, **fixed, **config)
    return y


def prefill_matmul(x, qweight, scales, zeros, bits, in_features, group_size, config: dict | None = None, out_dtype=None) -> torch.Tensor:
    """x [M, K] · Ŵᵀ -> [M, N] in ``out_dtype`` (default: x's dtype), tensor-core tiles."""
    _check(x, qweight, scales, zeros, bits, in_features, group_size)
    m = x.shape[0]
    x = x.contiguous()
    n, k, tensors, (groups, row_bytes, gs, stride) = _common(x, qweight, scales, zeros, in_features, group_size)
    y = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    fixed = dict(BITS=bits, IEEE=x.dtype == torch.float32)
    if config is None:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        _prefill_tuned[grid](x, *tensors, y, m, n, k, groups, row_bytes, gs, stride, _m_bucket(m), **fixed)
    else:
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
        _prefill_kernel[grid](x, *tensors, y, m, n, k, groups, row_bytes, gs, stride, _m_bucket(m), **fixed, **config)
    return y


def dequantize(qweight, scales, zeros, bits, in_features, group_size, dtype=torch.float32, block_n: int = 64, block_k: int | None = None) -> torch.Tensor:
    """Ŵ [N, K] in ``dtype``, written by one Triton kernel."""
    n, k = qweight.shape[0], in_features
    gs = effective_group(k, group_size)
    block_k = block_k or next(b for b in (128, 64, 32, 16) if tile_fits(b, k, group_size))
    w = torch.empty((n, k), dtype=dtype, device=qweight.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _dequant_kernel[grid](qweight.contiguous(), scales.float().contiguous(), zeros.contiguous(), w, n, k, scales.shape[1], qweight.shape[1], gs,
                          BITS=bits, BLOCK_N=block_n, BLOCK_K=block_k)
    return w


def dequant_matmul(x, qweight, scales, zeros, bits, in_features, group_size) -> torch.Tensor:
    """x [M, K] · Ŵᵀ -> [M, N] float32: the decode kernel for M ≤ 16, the prefill kernel above
    (autotuned on CUDA; off CUDA, under the interpreter, each with its first fitting config)."""
    m, k = x.shape[0], in_features
    tuned = x.is_cuda
    if m <= DECODE_MAX_ROWS:
        config = None if tuned else _first_fitting(DECODE_CONFIGS, k, group_size, _m_bucket(m) >= 16)
        return decode_matmul(x, qweight, scales, zeros, bits, in_features, group_size, config)
    config = None if tuned else _first_fitting(PREFILL_CONFIGS, k, group_size, True)
    return prefill_matmul(x, qweight, scales, zeros, bits, in_features, group_size, config, out_dtype=torch.float32)


def _first_fitting(configs, k: int, group_size: int, dot: bool) -> dict:
    for c in configs:
        if tile_fits(c.kwargs["BLOCK_K"], k, group_size) and (not dot or c.kwargs["BLOCK_K"] >= 32):
            return dict(c.kwargs)
    raise ValueError(f"no Triton config fits K={k} with group size {group_size}")
