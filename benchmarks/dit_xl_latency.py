"""Wall-clock sampling latency of a DiT-XL/2-shaped model (random weights) under step caching:
DDIM-50 as is, LazyDiT-style skipping at 50% and FORA N = 2, measured side by side in one run.

The model is diffusers' ``DiTTransformer2DModel`` with DiT-XL/2's shape (28 blocks, 16 heads x
72, patch 2, 32x32x4 latents of a 256x256 image, 1000 classes, learned σ: 8 output channels),
randomly initialised: the speed of skipped computation does not depend on the weights. The
runtime hooks are slimbench's own (``ForaHook``, ``LazyGate``) on every block's ``attn1`` and
``ff`` (their outputs before the adaLN-Zero gate); the sampler is slimbench's DDIM-50
(linspace respacing, η = 0, no guidance, latents not clamped).

LazyDiT-style 50%: random weights cannot be trained meaningfully, so the gates of the trained
(even) chain indices are set from the dense run: w_i = −Σ_tokens Z of that branch at chain
index i in the dense run (recorded by a cheap observer during the dense run), so that the
score sigmoid(Σ Z·w) is far below 0.5 there and the branch skips; odd indices stay zero
(compute). The gate scores are computed at inference as LazyDiT does (their cost is in the
time); the skipped share is counted, not assumed.

``--steps K`` times the first K denoiser calls of the 50-step chain (i = 49 .. 50-K) for every
setting (K = 50: the whole run); every call's wall time is recorded. Under FORA N = 2 and the
LazyDiT-style gates both skip every other step after the first one.

    flock /work/bench.lock /work/main/.venv/bin/python benchmarks/dit_xl_latency.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from slimbench.diffusion import Sampler, SamplerConfig, current_step
from slimbench.hooks import FunctionHook, HookRegistry
from slimbench.methods.diffusion.fora import ForaHook
from slimbench.methods.diffusion.lazydit import LazyGate

REPO = Path(__file__).resolve().parents[1]
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")


def build_model(seed: int):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    return DiTTransformer2DModel(**DIT_XL_2).eval()


def branches(model) -> list[tuple[str, torch.nn.Module]]:
    return [(f"{i}.{kind}", getattr(block, name)) for i, block in enumerate(model.transformer_blocks)
            for kind, name in (("attn", "attn1"), ("mlp", "ff"))]


def timed_chain(model, config: SamplerConfig, x_T, labels, steps: int) -> list[float]:
    """Wall time of each of the first ``steps`` denoiser calls (and sampler steps) of one run."""
    sampler = Sampler(config)

    def denoise(x, t, y):
        return model(x, timestep=t, class_labels=y).sample[:, : x.shape[1]]  # ε (the learned-σ half dropped)

    HookRegistry.of(model).reset_state()
    times, start = [], time.perf_counter()
    for k, _ in enumerate(sampler.steps(denoise, x_T, labels, torch.Generator().manual_seed(0))):
        now = time.perf_counter()
        times.append(now - start)
        start = now
        if k + 1 == steps:
            break
    return times


def counted(registry: HookRegistry, prefix: str) -> dict:
    c = registry.counters(prefix).values()
    skipped, computed = sum(v.get("skipped", 0) for v in c), sum(v.get("computed", 0) for v in c)
    return {"skipped": skipped, "computed": computed, "skipped_pct": 100.0 * skipped / max(1, skipped + computed)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50, help="denoiser calls timed per setting (first K of the 50-step chain)")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(REPO / "results" / "benchmarks" / "dit_xl_latency"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(0)
    registry = HookRegistry.of(model)
    config = SamplerConfig(name="ddim", steps=50, clamp_sample=False)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(args.images, 4, 32, 32, generator=gen)
    labels = torch.arange(args.images) % 1000
    rows = {}

    # 1. dense DDIM-50; an observer records Σ_tokens Z of every branch at every chain index
    recorded: dict[tuple[str, int], torch.Tensor] = {}
    for name, module in branches(model):
        def observe(module, a, kw, name=name):
            recorded[(name, current_step().index)] = a[0].sum(dim=1).mean(dim=0)  # [D]
        registry.add(f"observe/{name}", module, FunctionHook(pre=observe))
    with torch.no_grad():
        rows["ddim50"] = {"times_s": timed_chain(model, config, x_T, labels, args.steps), "skipped_pct": 0.0}
    registry.remove_all("observe/")

    # 2. FORA N = 2
    for name, module in branches(model):
        registry.add(f"fora/{name}", module, ForaHook(2))
    with torch.no_grad():
        rows["fora_n2"] = {"times_s": timed_chain(model, config, x_T, labels, args.steps), **counted(registry, "fora/")}
    registry.remove_all("fora/")

    # 3. LazyDiT-style 50%: gates of the even chain indices set to skip, odd ones zero (compute)
    for name, module in branches(model):
        gate = registry.add(f"lazydit/{name}", module, LazyGate(50, 1152, 0.5))
        with torch.no_grad():
            for (branch, index), z_sum in recorded.items():
                if branch == name and index % 2 == 0:
                    gate.weight[index] = -z_sum
    with torch.no_grad():
        rows["lazydit_50"] = {"times_s": timed_chain(model, config, x_T, labels, args.steps), **counted(registry, "lazydit/")}
    registry.remove_all("lazydit/")

    base = sum(rows["ddim50"]["times_s"])
    for row in rows.values():
        row["total_s"] = sum(row["times_s"])
        row["speedup"] = base / row["total_s"]
        row["after_first_s"] = sum(row["times_s"][1:])
        row["speedup_after_first"] = sum(rows["ddim50"]["times_s"][1:]) / row["after_first_s"] if len(row["times_s"]) > 1 else None
    result = {"model": "DiTTransformer2DModel, DiT-XL/2 shape, random weights (seed 0)", "config": DIT_XL_2,
              "params": sum(p.numel() for p in model.parameters()), "images": args.images, "guidance": 1.0,
              "sampler": "DDIM-50 (linspace, eta 0)", "timed_calls_per_setting": args.steps, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": rows}
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# DiT-XL/2-shaped sampling latency (random weights, {args.images} image(s), first {args.steps} of 50 DDIM steps)", "",
             "| setting | skipped % (counted) | time s | speedup | time after step 1 s | speedup after step 1 |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['skipped_pct']:.1f} | {row['total_s']:.2f} | {row['speedup']:.2f}x | "
                     f"{row['after_first_s']:.2f} | {row['speedup_after_first'] or float('nan'):.2f}x |")
    lines += ["", "per-call times (s): " + "; ".join(f"{n}: " + ", ".join(f"{t:.2f}" for t in r["times_s"]) for n, r in rows.items())]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
