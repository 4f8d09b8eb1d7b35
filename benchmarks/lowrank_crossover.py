"""Factored vs dense Linear latency on this CPU: where does a low-rank layer start to pay?

For SmolLM2-135M's linear shapes, times ``y = W x`` (dense nn.Linear) against
``y = B (A x)`` (slimbench's FactoredLinear) at ranks given as fractions of the break-even
rank k* = m·n/(m+n) (where the two factors hold as many weights as the dense matrix), for a
batch-1 decode step (1 token) and a prefill chunk (``--tokens``). Median of ``--repeats``
timed calls after warm-up; fp32; the torch thread count is printed. Not a test.

Measured 2026-11-24 (2 threads, torch 2.13 CPU, shared machine; factored/dense time):
  prefill 128 tokens: ~proportional to FLOPs: 0.14-0.37 at rank/k* = 0.1, 0.53-0.83 at 0.5,
    0.79-1.06 at 0.75, 1.00-1.32 at 0.9 (crossover near rank/k* ≈ 0.75-0.9; a 20% parameter
    cut is rank/k* = 0.8, i.e. no prefill gain).
  decode, 1 token: per-call overhead dominates small layers: 576x576 1.03-1.67 and 192x576
    1.5-2.0 (never faster); the MLP shapes 1536x576 0.35-0.64 and 576x1536 0.49-0.95 up to
    rank/k* = 0.75, ~1 at 0.9.

    flock /work/bench.lock .venv/bin/python benchmarks/lowrank_crossover.py [--tokens 128] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from slimbench.kernels.factored import FactoredLinear

SHAPES = [(576, 576), (1536, 576), (576, 1536), (192, 576)]  # (out, in): q/o, gate/up, down, k/v
FRACTIONS = [0.1, 0.25, 0.5, 0.75, 0.9]


def median_us(fn, x, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(5):
            fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return 1e6 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="prefill tokens")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, fp32")
    print("| out x in | tokens | rank | rank/k* | params kept | dense us | factored us | factored/dense |")
    print("|---|---|---|---|---|---|---|---|")
    for out_f, in_f in SHAPES:
        dense = torch.nn.Linear(in_f, out_f, bias=False)
        k_star = out_f * in_f / (out_f + in_f)
        for tokens in (1, args.tokens):
            x = torch.randn(1, tokens, in_f)
            t_dense = median_us(dense, x, args.repeats)
            for frac in FRACTIONS:
                rank = max(1, int(frac * k_star))
                fac = FactoredLinear(in_f, out_f, rank, bias=False)
                t_fac = median_us(fac, x, args.repeats)
                kept = rank * (in_f + out_f) / (in_f * out_f)
                print(f"| {out_f}x{in_f} | {tokens} | {rank} | {frac:.2f} | {kept:.2f} | {t_dense:.1f} | {t_fac:.1f} | {t_fac / t_dense:.2f} |")


if __name__ == "__main__":
    main()
