"""Where the CPU quantized layouts should switch from torch's kernel to dequantize + bf16 GEMM.

For every linear shape of SmolLM2-135M (N x K) and every CPU format (int4 g64, int4 g128,
int4 per-row, int8 per-row), a ``QuantLinear`` with random codes runs an input of M rows
through its kernel path (``prefill_rows=None``) and through its prefill path (dequantize per
call to bf16, bf16 GEMM; ``prefill_rows=1``), side by side with the fp32 ``nn.Linear`` it
replaces; median of ``--repeats`` interleaved timings. The crossover of a (format, shape) is the
smallest measured M from which the prefill path is faster at that M and every larger one. A
threshold has to serve every linear of a block, so the one that matters is the crossover of a
whole block (the shapes' times summed with their count per block: q, o 576x576; k, v 192x576;
gate, up 1536x576; down 576x1536); a layout's threshold
(``slimbench.kernels.qlinear.CPU_PREFILL_ROWS``) is the largest block crossover over its formats.
Numbers compare only within one machine (run under the lock).

    flock /work/bench.lock /work/main/.venv/bin/python benchmarks/cpu_quant_crossover.py \
        --out results/benchmarks/cpu_quant_crossover.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from slimbench._system import cpu_name
from slimbench.kernels.qlinear import CPU_PREFILL_ROWS, QuantLinear, num_groups

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # (N, K): q/o, k/v, gate/up, down
PER_BLOCK = {(576, 576): 2, (192, 576): 2, (1536, 576): 2, (576, 1536): 1}  # linears of each shape in a SmolLM2 block
FORMATS = [("int4 g64", 4, 64), ("int4 g128", 4, 128), ("int4 per-row", 4, -1), ("int8 per-row", 8, -1)]
ROWS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 512]


def random_layer(n: int, k: int, bits: int, group: int) -> QuantLinear:
    g = torch.Generator().manual_seed(n * 7 + k)
    groups = num_groups(k, group)
    codes = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(n, groups, generator=g) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g).float()
    return QuantLinear.from_codes(codes, scales, zeros, bits, group)


def timings(fns: dict, repeats: int) -> dict[str, float]:
    """Median µs of each callable, the callables interleaved within each repeat."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(v)[len(v) // 2] * 1e6 for name, v in samples.items()}


def crossover(kernel: dict[int, float], prefill: dict[int, float]) -> int | None:
    """Smallest M from which the prefill path is faster at every measured M (None: never)."""
    best = None
    for m in sorted(kernel, reverse=True):
        if prefill[m] >= kernel[m]:
            break
        best = m
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = [f"# CPU quantized linears: kernel vs dequantize + bf16 GEMM, by input rows M",
             "",
             f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}; median of {args.repeats} interleaved calls, µs; `benchmarks/cpu_quant_crossover.py`.",
             "", "| format | N x K | M | fp32 linear | kernel | dequant + bf16 GEMM | best |", "|---|---|---|---|---|---|---|"]
    found: dict[str, list[int | None]] = {}
    blocks: dict[str, list[tuple[str, int | None]]] = {}
    with torch.inference_mode():
        for label, bits, group in FORMATS:
            block_kernel, block_prefill = dict.fromkeys(ROWS, 0.0), dict.fromkeys(ROWS, 0.0)
            for n, k in SHAPES:
                dense = torch.nn.Linear(k, n, bias=False)
                layer = random_layer(n, k, bits, group)
                kernel_us, prefill_us = {}, {}
                for m in ROWS:
                    x = torch.randn(m, k)

                    def kernel_path(x=x):
                        layer.prefill_rows = None
                        return layer(x)

                    def prefill_path(x=x):
                        layer.prefill_rows = 1
                        return layer(x)

                    t = timings({"fp32": lambda x=x: dense(x), "kernel": kernel_path, "prefill": prefill_path}, args.repeats)
                    kernel_us[m], prefill_us[m] = t["kernel"], t["prefill"]
                    best = min(t, key=t.get)
                    lines.append(f"| {label} | {n}x{k} | {m} | {t['fp32']:.0f} | {t['kernel']:.0f} | {t['prefill']:.0f} | {best} |")
                cross = crossover(kernel_us, prefill_us)
                found.setdefault(layer.layout, []).append(cross)
                for m in ROWS:
                    block_kernel[m] += PER_BLOCK[(n, k)] * kernel_us[m]
                    block_prefill[m] += PER_BLOCK[(n, k)] * prefill_us[m]
                print(f"{label} {n}x{k} ({layer.layout}): crossover M = {cross}", flush=True)
            blocks.setdefault(layer.layout, []).append((label, crossover(block_kernel, block_prefill)))
            lines.append(f"| {label} | whole block | " + ", ".join(f"M={m}: {block_kernel[m]:.0f} vs {block_prefill[m]:.0f}" for m in ROWS) + " | | | |")
    lines += ["", "| layout | crossover per (format, shape) | block crossover per format | threshold (max block crossover) | CPU_PREFILL_ROWS in the code |",
              "|---|---|---|---|---|"]
    for layout, values in found.items():
        per_block = blocks[layout]
        known = [v for _, v in per_block if v is not None]
        threshold = max(known) if len(known) == len(per_block) else None
        lines.append(f"| {layout} | {values} | {per_block} | {threshold} | {CPU_PREFILL_ROWS.get(layout)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
