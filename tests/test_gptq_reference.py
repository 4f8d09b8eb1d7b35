"""``gptq_quantize`` against an independent restatement of the reference's per-column update.

The restatement below is written from the algorithm (Frantar et al. 2023, Algorithm 1) and the
conventions of IST-DASLab/gptq 2d65066 ``fasterquant`` stated in METHODS.md, not from either
implementation: it works in float64, inverts H with ``torch.linalg.inv`` and applies every
column's error to all remaining columns at once (no lazy batches). The only blocking it keeps
is the reference's rule for *when* a group's grid is fitted: on the group's columns as they stood
when the 128-column block holding the group's first column began (the reference fits on its
outer W, which the lazy update brings up to date only at block ends). ``grid_on="current"``
fits on the fully updated columns instead, a plausible misreading the test must tell apart.
"""

import pytest
import torch

from slimbench.methods.quant.gptq import GPTQConfig, gptq_quantize


def _grid(x: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max grid of the rows of x [N, C]: range widened to include 0, an all-zero row -> [-1, 1]."""
    maxq = 2**bits - 1
    lo, hi = x.min(1).values.clamp(max=0), x.max(1).values.clamp(min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    empty = (lo == 0) & (hi == 0)
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)
    scale = (hi - lo) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def restated_gptq(w, h, bits, group_size, blocksize, percdamp=0.01, sym=False, grid_on="block_start"):
    """(codes [N, K], dequantized weights [N, K], loss) of GPTQ with immediate updates, float64."""
    w, h = w.double().clone(), h.double().clone()
    n, k = w.shape
    maxq = 2**bits - 1
    if group_size <= 0:
        scale, zero = _grid(w, bits, sym)  # one grid per row, fitted before dead inputs are zeroed
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += percdamp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)  # H⁻¹ = UᵀU
    codes, deq, loss = torch.zeros(n, k, dtype=torch.int64), torch.zeros(n, k, dtype=torch.float64), 0.0
    snapshot = w.clone()
    for i in range(k):
        if i % blocksize == 0:
            snapshot = w.clone()  # the weights as this column block begins
        if group_size > 0 and i % group_size == 0:
            src = snapshot if grid_on == "block_start" else w
            scale, zero = _grid(src[:, i : i + group_size], bits, sym)
        col = w[:, i]
        q = torch.clamp(torch.round(col / scale) + zero, 0, maxq)
        col_q = scale * (q - zero)
        codes[:, i], deq[:, i] = q.long(), col_q
        err = (col - col_q) / u[i, i]
        loss += float((err**2).sum()) / 2
        w[:, i:] -= err[:, None] * u[i, i:][None, :]  # the OBS update of every remaining column
    return codes, deq, loss


def _inputs(seed: int, n: int, k: int, tokens: int = 256):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    x = torch.randn(tokens, k, generator=g) @ (torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k))  # correlated inputs
    x[:, 3] = 0  # a dead input
    return w, 2 * x.t() @ x / tokens


CASES = [  # (bits, group_size, blocksize, K)
    (3, 32, 32, 96),  # groups aligned with blocks
    (3, 16, 32, 96),  # two groups per block: the second fitted on the block-start weights
    (4, 32, 64, 80),  # partial last group (16 columns) and a partial last block
    (4, -1, 32, 96),  # one grid per row
    (2, 16, 48, 96),  # blocks not a multiple of the group size
]


@pytest.mark.parametrize("bits,group_size,blocksize,k", CASES)
def test_gptq_quantize_matches_the_restated_reference_update(bits, group_size, blocksize, k):
    w, h = _inputs(seed=bits * 100 + k, n=24, k=k)
    q, loss = gptq_quantize(w, h, GPTQConfig(bits=bits, group_size=group_size, blocksize=blocksize))
    codes, deq, ref_loss = restated_gptq(w, h, bits, group_size, blocksize)
    differ = float((q.codes.long() != codes).float().mean())
    assert differ <= 0.002, f"{differ:.2%} of the codes differ from the restatement"
    assert torch.allclose(q.dequantize().double(), deq, rtol=0, atol=1e-5 * float(deq.abs().max()))
    assert loss == pytest.approx(ref_loss, rel=1e-4)
    assert torch.all(q.codes[:, 3] == q.zeros.repeat_interleave(group_size if group_size > 0 else k, 1)[:, 3])  # dead input -> 0


def test_the_restatement_tells_the_grid_timing_apart():
    """With two groups per block, fitting the second group's grid on fully updated weights is a different method."""
    w, h = _inputs(seed=7, n=24, k=96)
    q, _ = gptq_quantize(w, h, GPTQConfig(bits=3, group_size=16, blocksize=32))
    codes, _, _ = restated_gptq(w, h, 3, 16, 32, grid_on="current")
    assert float((q.codes.long() != codes).float().mean()) > 0.05
