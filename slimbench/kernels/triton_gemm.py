"""Triton dequant-GEMM kernels: W4A16 and W8A16 (weight-only, group-wise zero point).

``y[M, N] = x[M, K] · Ŵᵀ`` with ``Ŵ[n, k] = s[n, k // gs] · (q[n, k] − z[n, k // gs])``,
``q`` read from the canonical packed layout of ``slimbench.kernels.packing`` (4-bit: two codes
per byte, even column in the low nibble; 8-bit: one byte per code). Each program computes a
``BLOCK_M × BLOCK_N`` tile: it walks K in ``BLOCK_K`` steps, loads the packed codes of the tile,
unpacks and dequantizes them in registers and accumulates ``x_tile · w_tile`` in fp32, so the
float weight never exists in memory.

Written for GPUs; the tests run it on CPU tensors with ``TRITON_INTERPRET=1`` (Triton decides
between compiling and interpreting when this module is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from slimbench.kernels.packing import effective_group, num_groups


@triton.jit
def _dequant_gemm(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, K, G, row_bytes, group_size,
                  BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x_mask = (rm[:, None] < M) & (rk[None, :] < K)
        x = tl.load(x_ptr + rm[:, None] * K + rk[None, :], mask=x_mask, other=0.0).to(tl.float32)  # [BM, BK]
        w_mask = (rk[:, None] < K) & (rn[None, :] < N)
        if BITS == 4:
            byte = tl.load(q_ptr + rn[None, :] * row_bytes + rk[:, None] // 2, mask=w_mask, other=0).to(tl.int32)
            q = (byte >> ((rk[:, None] % 2) * 4)) & 15  # [BK, BN]
        else:
            q = tl.load(q_ptr + rn[None, :] * row_bytes + rk[:, None], mask=w_mask, other=0).to(tl.int32)
        g = rk[:, None] // group_size
        s = tl.load(s_ptr + rn[None, :] * G + g, mask=w_mask, other=0.0)
        z = tl.load(z_ptr + rn[None, :] * G + g, mask=w_mask, other=0.0)
        w = (q.to(tl.float32) - z) * s  # [BK, BN]
        acc += tl.dot(x, w, input_precision="ieee")
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def dequant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, in_features: int, group_size: int,
                   block_m: int = 16, block_n: int = 32, block_k: int = 32) -> torch.Tensor:
    """x [M, K] · dequant(qweight)ᵀ -> [M, N] float32 (W4A16 for bits=4, W8A16 for bits=8)."""
    if bits not in (4, 8):
        raise ValueError(f"Triton dequant-GEMM supports 4 and 8 bits, got {bits}")
    m, k = x.shape
    n = qweight.shape[0]
    if k != in_features or scales.shape != (n, num_groups(k, group_size)):
        raise ValueError("shape mismatch between x, qweight and scales")
    x = x.contiguous()
    y = torch.empty((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _dequant_gemm[grid](x, qweight.contiguous(), scales.float().contiguous(), zeros.float().contiguous(), y, m, n, k, scales.shape[1],
                        qweight.shape[1], effective_group(k, group_size), BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y
