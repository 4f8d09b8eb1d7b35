"""Alignment with the reference implementations: Wanda, SparseGPT and GPTQ against slimbench (issue 23.6).

The references are the authors' code, fetched by the user at pinned commits into one directory
(``--reference DIR``; never vendored, imported at run time):

* ``DIR/wanda``     locuslab/wanda @ 8e8fc87: ``lib/layerwrapper.py`` ``WrappedGPT`` (the per-input
  ‖X_j‖² running mean); the driver ``lib/prune.py::prune_wanda`` (unstructured) is restated here;
* ``DIR/sparsegpt`` IST-DASLab/sparsegpt @ 147d215: ``sparsegpt.py`` ``SparseGPT`` (``add_batch``,
  ``fasterprune``); the driver is ``llama.py::llama_sequential`` without ``--true-sequential``;
* ``DIR/gptq``      IST-DASLab/gptq @ 2d65066: ``GPTQ`` + ``Quantizer`` through
  ``gptq_alignment.reference_gptq`` (llama.py without ``--true-sequential``).

Both sides get the same model (``--model``), the same calibration windows (slimbench's
``CalibrationSet``: ``--nsamples`` x ``--seqlen`` from WikiText-2 validation, ``--seed``), the same
first-block inputs and block arguments (``capture_block_inputs``, the reference's ``Catcher``
under transformers 5), and the same perplexity windows (the first ``--windows`` WikiText-2 test
windows of ``--seqlen``; 0 = the full split). The reference drivers run each block on every
calibration window with hooks on all its ``nn.Linear`` layers at once, compress them, and run the
compressed block again to give the next block its inputs; slimbench runs the method through its
calibration engine (``slimbench.run.compress``), with the same settings (Wanda and SparseGPT
50% unstructured, percdamp 0.01, block 128; GPTQ asymmetric min-max, ``--bits``/``--group-size``,
``true_sequential=false``, ``preserve_zeros=false``: the reference quantizes exact zeros like any weight).

Each pipeline runs in its own fresh process (one at a time), so that its wall time and peak
memory are measured alike: the compression (calibration capture included) is timed with
``perf_counter`` and its peak resident memory is the process's high-water mark (VmHWM, reset
before the compression; the loaded model is part of it) and its growth over the RSS before.
For the pruning methods the script also compares the masks layer by layer (fraction of weights
whose pruned/kept state differs; the first layer where the two differ).

    flock /work/bench.lock /work/main/.venv/bin/python benchmarks/alignment.py --reference /work/ref \\
        --data-dir /work/shared/data --methods wanda,sparsegpt --out results/alignment/smollm2-135m.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from slimbench._system import measure_peak_rss
from slimbench.calibration import capture_block_inputs
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.methods.pruning.sparsegpt import SparseGPT, SparseGPTConfig
from slimbench.methods.pruning.wanda import Wanda, WandaConfig
from slimbench.methods.quant.gptq import GPTQ, GPTQConfig
from slimbench.run import compress

from gptq_alignment import TestWindows, block_forward, import_reference, reference_gptq  # noqa: E402  (benchmarks/ on sys.path)
from quant_kernel_check import resolve_named_model  # noqa: E402

PINNED = {"wanda": "locuslab/wanda @ 8e8fc87", "sparsegpt": "IST-DASLab/sparsegpt @ 147d215", "gptq": "IST-DASLab/gptq @ 2d65066"}
SPARSITY, PERCDAMP, BLOCKSIZE = 0.5, 0.01, 128


# -- the references, imported from the user's checkouts ----------------------------------------------
def load_file(path: Path, name: str):
    """A module from one file of a checkout (its other imports resolved from the file's folder)."""
    if not path.is_file():
        raise SystemExit(f"--reference: {path} missing (a checkout of {PINNED[name.split('_')[0]]})")
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def no_cuda_sync() -> None:
    if not torch.cuda.is_available():  # the references call torch.cuda.synchronize()/empty_cache(); a CPU build raises
        torch.cuda.synchronize = lambda *a, **k: None


@torch.no_grad()
def reference_wanda(root: Path, bundle, calib, args) -> None:
    """prune_wanda (unstructured, no variant): WrappedGPT statistics of all linears of a block at once."""
    wrapper = load_file(root / "wanda" / "lib" / "layerwrapper.py", "wanda_layerwrapper")
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    hidden = inputs.hidden
    for i, layer in enumerate(bundle.adapter.get_blocks(bundle.model)):
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}  # find_layers
        wrapped = {name: wrapper.WrappedGPT(module) for name, module in subset.items()}
        handles = [subset[name].register_forward_hook(lambda _, inp, out, name=name: wrapped[name].add_batch(inp[0].data, out.data))
                   for name in subset]
        block_forward(layer, hidden, inputs.calls[i])
        for h in handles:
            h.remove()
        for name, module in subset.items():
            metric = torch.abs(module.weight.data) * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1)))  # [out, in]
            mask = torch.zeros_like(metric) == 1
            order = torch.sort(metric, dim=-1, stable=True)
            mask.scatter_(1, order[1][:, : int(metric.shape[1] * args.sparsity)], True)
            module.weight.data[mask] = 0
        hidden = block_forward(layer, hidden, inputs.calls[i])


@torch.no_grad()
def reference_sparsegpt(root: Path, bundle, calib, args) -> None:
    """llama_sequential without --true-sequential: SparseGPT on all linears of a block at once."""
    no_cuda_sync()
    mod = load_file(root / "sparsegpt" / "sparsegpt.py", "sparsegpt_reference")
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    hidden = inputs.hidden
    for i, layer in enumerate(bundle.adapter.get_blocks(bundle.model)):
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        gpts = {name: mod.SparseGPT(module) for name, module in subset.items()}
        handles = [subset[name].register_forward_hook(lambda _, inp, out, name=name: gpts[name].add_batch(inp[0].data, out.data))
                   for name in subset]
        block_forward(layer, hidden, inputs.calls[i])
        for h in handles:
            h.remove()
        for name in subset:
            with contextlib.redirect_stdout(io.StringIO()):  # fasterprune prints its time and error
                gpts[name].fasterprune(args.sparsity, prunen=0, prunem=0, percdamp=PERCDAMP, blocksize=BLOCKSIZE)
            gpts[name].free()
        hidden = block_forward(layer, hidden, inputs.calls[i])


def run_reference_gptq(root: Path, bundle, calib, args) -> None:
    ref = import_reference(root / "gptq")
    reference_gptq(ref, bundle, calib, args, "ref", lambda *a: None)


def slimbench_method(name: str, args):
    return {
        "wanda": lambda: Wanda(WandaConfig(sparsity=args.sparsity)),
        "sparsegpt": lambda: SparseGPT(SparseGPTConfig(sparsity=args.sparsity, percdamp=PERCDAMP, blocksize=BLOCKSIZE)),
        "gptq": lambda: GPTQ(GPTQConfig(bits=args.bits, group_size=args.group_size, percdamp=args.percdamp, true_sequential=False,
                                            preserve_zeros=False)),
    }[name]()


REFERENCES = {"wanda": reference_wanda, "sparsegpt": reference_sparsegpt, "gptq": run_reference_gptq}


# -- one pipeline, in a child process --------------------------------------------------------------
def pruning_masks(bundle) -> dict[str, torch.Tensor]:
    """{layer name: pruned positions [out, in], bit-packed along the last dim as uint8}."""
    out = {}
    for i, block in enumerate(bundle.adapter.get_blocks(bundle.model)):
        for role, module in bundle.adapter.block_linears(block).items():
            if module.weight.shape[1] % 8:  # the packed masks are compared bit by bit, padding included
                raise SystemExit(f"mask comparison needs in_features % 8 == 0 ({bundle.adapter.layer_name(i, role)})")
            out[bundle.adapter.layer_name(i, role)] = torch.from_numpy(np.packbits((module.weight.data == 0).numpy(), axis=-1))
    return out


def child(args) -> None:
    source, loader, cfg, ctx = resolve_named_model(args.model)
    bundle = loader.load(source, cfg, ctx)
    corpus = resolve_corpus("wikitext2", "validation", str(args.data_dir))
    calib = build_calibration_set(CalibConfig(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed), corpus, bundle.tokenizer)
    ppl = TestWindows(bundle.tokenizer, args.data_dir, args.windows or None, args.seqlen)
    result = {"method": args.method, "pipeline": args.pipeline}
    with measure_peak_rss() as peak:
        start = time.perf_counter()
        if args.pipeline == "reference":
            REFERENCES[args.method](args.reference, bundle, calib, args)
        else:
            report = compress(slimbench_method(args.method, args), bundle, calib)
            result.update(execution_path=report.execution_path, engine_wall_time_s=report.wall_time_s, engine_peak_rss_bytes=report.peak_rss_bytes)
        result["compress_s"] = round(time.perf_counter() - start, 2)
    result.update(peak_rss_bytes=peak.peak_rss_bytes, rss_before_bytes=peak.start_rss_bytes, peak_rss_method=peak.method)
    if args.method != "gptq":
        masks = pruning_masks(bundle)
        torch.save(masks, args.masks)
        result["sparsity"] = sum(int(np.unpackbits(m.numpy()).sum()) for m in masks.values()) / sum(m.numel() * 8 for m in masks.values())
    result["ppl"] = ppl(bundle)
    Path(args.child_out).write_text(json.dumps(result))


# -- the parent: both pipelines per method, one at a time, then the comparison -----------------------
def compare_masks(a: dict, b: dict) -> dict:
    """Per layer: fraction of weights whose pruned/kept state differs (bits of the packed masks)."""
    rows = {}
    for name in a:
        diff = np.unpackbits(np.bitwise_xor(a[name].numpy(), b[name].numpy()), axis=-1)
        rows[name] = float(diff.sum()) / (a[name].numel() * 8)
    first = next((n for n, d in rows.items() if d > 0), None)
    return {"first_layer_differing": first, "layers_identical": sum(d == 0 for d in rows.values()), "layers": len(rows),
            "mean_mask_diff": sum(rows.values()) / len(rows), "max_mask_diff": max(rows.values()), "per_layer": rows}


def run_child(args, method: str, pipeline: str, tmp: Path) -> dict:
    out, masks = tmp / f"{method}-{pipeline}.json", tmp / f"{method}-{pipeline}.pt"
    cmd = [sys.executable, __file__, "--child", "--method", method, "--pipeline", pipeline, "--child-out", str(out), "--masks", str(masks),
           "--reference", str(args.reference), "--data-dir", str(args.data_dir), "--model", args.model, "--nsamples", str(args.nsamples),
           "--seqlen", str(args.seqlen), "--seed", str(args.seed), "--windows", str(args.windows), "--sparsity", str(args.sparsity),
           "--bits", str(args.bits), "--group-size", str(args.group_size), "--percdamp", str(args.percdamp)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["masks_path"] = str(masks) if masks.exists() else None
    mib = (result["peak_rss_bytes"] or 0) / 2**20
    print(f"{method:9s} {pipeline:9s} compress {result['compress_s']:8.1f} s | peak RSS {mib:7.0f} MiB | ppl "
          + " | ".join(f"{k} {v:.4f}" for k, v in result["ppl"].items()), flush=True)
    return result


def markdown(result: dict) -> str:
    lines = ["| method | perplexity reference | perplexity slimbench | rel. diff | compress s reference | compress s slimbench | "
             "peak RSS MiB reference | peak RSS MiB slimbench | mask difference (mean / max per layer) |", "|---" * 9 + "|"]
    for method, r in result["methods"].items():
        ref, slim = r["reference"], r["slimbench"]
        key = next(iter(ref["ppl"]))
        p_ref, p_slim = ref["ppl"][key], slim["ppl"][key]
        masks = r.get("masks")
        lines.append(f"| {method} | {p_ref:.4f} | {p_slim:.4f} | {(p_slim - p_ref) / p_ref:+.2%} | {ref['compress_s']:.1f} | {slim['compress_s']:.1f} | "
                     f"{ref['peak_rss_bytes'] / 2**20:.0f} | {slim['peak_rss_bytes'] / 2**20:.0f} | "
                     + (f"{masks['mean_mask_diff']:.4%} / {masks['max_mask_diff']:.4%} |" if masks else "– |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="folder holding the checkouts wanda/, sparsegpt/, gptq/")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="wanda,sparsegpt", help=f"comma-separated: {', '.join(REFERENCES)}")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=2048, help="calibration and test window length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=8, help="first test windows (0 = the full split)")
    parser.add_argument("--sparsity", type=float, default=SPARSITY)
    parser.add_argument("--bits", type=int, default=3, help="GPTQ")
    parser.add_argument("--group-size", type=int, default=128, help="GPTQ")
    parser.add_argument("--percdamp", type=float, default=PERCDAMP, help="GPTQ")
    parser.add_argument("--out", type=Path, help="JSON with both pipelines' numbers and the per-layer mask comparison")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", choices=("reference", "slimbench"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--masks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(REFERENCES):
        raise SystemExit(f"unknown methods {sorted(unknown)} (known: {', '.join(REFERENCES)})")
    for m in methods:  # fail before any model loads
        if not (args.reference / m).is_dir():
            raise SystemExit(f"--reference {args.reference}: no {m}/ (a checkout of {PINNED[m]})")
    print(f"{args.model}; calibration {args.nsamples} x {args.seqlen} (WikiText-2 validation) seed {args.seed}; perplexity on "
          f"{'the full test split' if not args.windows else f'the first {args.windows} test windows'} of {args.seqlen}", flush=True)
    result = {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed, "windows": args.windows or "all",
              "sparsity": args.sparsity, "gptq": {"bits": args.bits, "group_size": args.group_size, "percdamp": args.percdamp},
              "references": {m: PINNED[m] for m in methods}, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            entry = {p: run_child(args, method, p, Path(tmp)) for p in ("reference", "slimbench")}
            if entry["reference"]["masks_path"]:
                entry["masks"] = compare_masks(torch.load(entry["reference"]["masks_path"]), torch.load(entry["slimbench"]["masks_path"]))
                print(f"{method:9s} masks: {entry['masks']['layers_identical']}/{entry['masks']['layers']} layers identical, mean difference "
                      f"{entry['masks']['mean_mask_diff']:.4%}, first differing layer {entry['masks']['first_layer_differing']}", flush=True)
            for p in ("reference", "slimbench"):
                entry[p].pop("masks_path")
            result["methods"][method] = entry
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
