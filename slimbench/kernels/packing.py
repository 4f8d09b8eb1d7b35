"""Packing integer codes into bytes, and the layout of torch's CPU int4 kernel.

* ``pack_bits`` / ``unpack_bits``: ``b``-bit codes (b in 1..8) of a ``[N, K]`` matrix packed
  along K into a little-endian bit stream per row, ``ceil(K·b/8)`` bytes per row. For b = 4
  this is two codes per byte with column ``2j`` in the low nibble of byte ``j`` (the
  canonical int4 layout, also read by the Triton kernels); b = 8 is one code per byte.
* ``to_int4pack_cpu`` / ``from_int4pack_cpu``: torch's ``_convert_weight_to_int4pack_for_cpu``
  reorders nibbles into a blocked layout for its kernel (it needs N % 16 == 0 and K even).
  The reorder is a permutation that depends only on (N, K) and the CPU build, so it is
  recovered once per shape by converting index tensors (4 bits of the flat index at a time)
  and inverted to read codes back out of a packed weight.
* ``unpack_int4pack_cpu_t``: the same codes read without a permutation gather. The layout is
  blocks of 64 rows (the kernel's BLOCK_N): for each column k, 32 bytes whose low nibble is
  row j and high nibble row j + 32 of the block; the N % 64 rows left over follow as one block
  whose byte i holds rows 2i (low) and 2i + 1 (high). Read through strided views, the nibbles
  land directly in a [K, N] (transposed) matrix. ``int4pack_cpu_is_blocked(n)`` checks once
  per N that this build's converter uses that layout.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def num_groups(k: int, group_size: int) -> int:
    """Groups of ``group_size`` consecutive columns in a row of K (the last one may be partial)."""
    return 1 if group_size <= 0 else math.ceil(k / group_size)


def effective_group(k: int, group_size: int) -> int:
    """The group width actually used: K for per-row grids (group_size <= 0 or >= K)."""
    return k if group_size <= 0 or group_size >= k else group_size


def packed_row_bytes(k: int, bits: int) -> int:
    return (k * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """[N, K] integer codes in [0, 2^bits) -> [N, ceil(K·bits/8)] uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    n, k = codes.shape
    codes = codes.to(torch.int32)
    if int(codes.min()) < 0 or int(codes.max()) >= 1 << bits:
        raise ValueError(f"codes out of range for {bits} bits")
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    shifts = torch.arange(bits, device=codes.device, dtype=torch.int32)
    stream = ((codes.unsqueeze(-1) >> shifts) & 1).reshape(n, k * bits)  # [N, K·b] bits, LSB first
    pad = packed_row_bytes(k, bits) * 8 - k * bits
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    weights = (1 << torch.arange(8, device=codes.device, dtype=torch.int32))
    return (stream.reshape(n, -1, 8) * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: [N, ceil(K·bits/8)] uint8 -> [N, K] int32 codes."""
    if bits == 8:
        return packed.to(torch.int32)
    n = packed.shape[0]
    if bits == 4 and k % 2 == 0:  # fast path for the common case
        p = packed.to(torch.int32)
        return torch.stack((p & 15, p >> 4), dim=-1).reshape(n, k)
    if k % 8 == 0:  # eight codes fill exactly `bits` bytes: read each run of bytes as one word
        words = packed.to(torch.int64).reshape(n, k // 8, bits) << (8 * torch.arange(bits, device=packed.device))
        word = words.sum(-1, keepdim=True)  # [N, K/8, 1], at most 56 bits
        shifts = bits * torch.arange(8, device=packed.device, dtype=torch.int64)
        return ((word >> shifts) & ((1 << bits) - 1)).reshape(n, k).to(torch.int32)
    shifts = torch.arange(8, device=packed.device, dtype=torch.int32)
    stream = ((packed.to(torch.int32).unsqueeze(-1) >> shifts) & 1).reshape(n, -1)[:, : k * bits]
    weights = (1 << torch.arange(bits, device=packed.device, dtype=torch.int32))
    return (stream.reshape(n, k, bits) * weights).sum(-1)


# -- torch's CPU int4 kernel layout ------------------------------------------------------------
def to_int4pack_cpu(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in [0, 16) -> the weight operand of ``_weight_int4pack_mm_for_cpu``."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 2)


def to_int4pack_cuda(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in [0, 16) on CUDA -> the weight operand of ``_weight_int4pack_mm`` (tinygemm):
    bytes with the even column in the high nibble, converted with the most inner K tiles K allows."""
    k = codes.shape[1]
    tiles = next(t for t in (8, 4, 2) if k % (16 * t) == 0)
    c = codes.to(torch.int32)
    return torch.ops.aten._convert_weight_to_int4pack((c[:, ::2] << 4 | c[:, 1::2]).to(torch.uint8).contiguous(), tiles)


def _int4pack_source(n: int, k: int, convert, device) -> torch.Tensor:
    """For each nibble of a packed layout (low then high of each byte), its flat index n·K+k:
    found by converting the index itself, 4 bits at a time (the layout is a permutation)."""
    index = torch.arange(n * k, dtype=torch.int64, device=device).reshape(n, k)
    source = torch.zeros(n * k, dtype=torch.int64, device=device)
    shift = 0
    while (1 << shift) < n * k:
        source |= _nibbles(convert((index >> shift) & 15)).to(torch.int64) << shift
        shift += 4
    if not torch.equal(torch.sort(source).values, torch.arange(n * k, device=device)):
        raise RuntimeError("the int4 pack layout is not a permutation of the codes")
    return source


@lru_cache(maxsize=64)
def _int4pack_cpu_source(n: int, k: int) -> torch.Tensor:
    return _int4pack_source(n, k, to_int4pack_cpu, "cpu")


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    p = packed.contiguous().view(torch.uint8).to(torch.int32).reshape(-1)  # int32 layouts: their bytes, little-endian
    return torch.stack((p & 15, p >> 4), dim=-1).reshape(-1)


def from_int4pack_cuda(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``to_int4pack_cuda``: the [N, K] int32 codes (found by the same index probing)."""
    codes = torch.empty(n * k, dtype=torch.int32, device=packed.device)
    codes[_int4pack_source(n, k, to_int4pack_cuda, packed.device)] = _nibbles(packed)
    return codes.reshape(n, k)


INT4PACK_CPU_BLOCK_N = 64


def unpack_int4pack_cpu_t(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The codes of a ``to_int4pack_cpu`` weight as a [K, N] uint8 matrix (transposed), read
    through strided views (valid where ``int4pack_cpu_is_blocked(n)``)."""
    flat = packed.reshape(-1)
    blocks, tail = divmod(n, INT4PACK_CPU_BLOCK_N)
    half = INT4PACK_CPU_BLOCK_N // 2
    # [K, NB, 32] bytes (a copy of the bytes: the nibble ops below then run on contiguous memory, much faster
    # than on the strided view): low nibble row j, high nibble row j + 32 of each 64-row block
    main = flat[: blocks * k * half].view(blocks, k, half).permute(1, 0, 2).contiguous()
    out = torch.stack((main & 15, main >> 4), dim=2).view(k, blocks * INT4PACK_CPU_BLOCK_N)  # [K, NB, 2, 32] -> [K, N]
    if not tail:
        return out
    rest = flat[blocks * k * half:].view(k, tail // 2)  # [K, T/2]: rows 2i (low), 2i + 1 (high)
    return torch.cat((out, torch.stack((rest & 15, rest >> 4), dim=-1).view(k, tail)), dim=1)


@lru_cache(maxsize=None)
def int4pack_cpu_is_blocked(n: int) -> bool:
    """Whether this build packs N rows in the blocked layout ``unpack_int4pack_cpu_t`` reads
    (checked on random codes with two columns: the layout does not depend on K)."""
    probe = torch.randint(0, 16, (n, 2), generator=torch.Generator().manual_seed(n), dtype=torch.int32, device="cpu")
    return bool(torch.equal(unpack_int4pack_cpu_t(to_int4pack_cpu(probe), n, 2).t().to(torch.int32), probe))


def from_int4pack_cpu(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of ``to_int4pack_cpu``: the [N, K] int32 codes."""
    if int4pack_cpu_is_blocked(n):
        return unpack_int4pack_cpu_t(packed, n, k).t().to(torch.int32)
    codes = torch.empty(n * k, dtype=torch.int32, device="cpu")
    codes[_int4pack_cpu_source(n, k)] = _nibbles(packed)
    return codes.reshape(n, k)
