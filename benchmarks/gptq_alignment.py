"""GPTQ alignment: slimbench's GPTQ against the reference classes, block by block (issue 27).

The reference is IST-DASLab/gptq at 2d65066, fetched by the user (never vendored): its
``gptq.py`` (``GPTQ``) and ``quant.py`` (``Quantizer``) are imported at run time from
``--reference``. Its driver, llama.py ``llama_sequential`` without ``--true-sequential``, is
restated here: per block, a forward hook on every ``nn.Linear`` (``modelutils.find_layers``)
feeds ``GPTQ.add_batch``; the block runs on every calibration window; each linear is quantized
with ``fasterquant`` (weights written back as float); the block is run again to give the next
block its inputs. The first block's inputs and every block's extra arguments (rotary embeddings,
mask) are captured by slimbench's ``capture_block_inputs`` (llama.py's ``Catcher`` under
transformers 5, where blocks take rotary embeddings).

slimbench runs ``method=gptq method.true_sequential=false method.preserve_zeros=false`` (the reference
quantizes exact zeros like any weight; ``--preserve-zeros`` for slimbench's default) through its own engine on a second
copy of the model, with the same calibration windows (one ``CalibrationSet``, the GPTQ/Wanda
draw). Per layer (reference order) the script reports

* ``h_rel``: ‖H_slim − H_ref‖_F / ‖H_ref‖_F (both 2/nsamples·Σxxᵀ; slimbench's ``InputStats.hessian``
  accumulates it as the reference's running mean since issue 27, before it was one float32 Σxxᵀ
  over all windows times 2/tokens: the ``ref-sum`` variant below);
* ``q_moved``: the fraction of weights on a different grid point (|Q_slim − Q_ref| above half
  a step of slimbench's grid; last-bit differences of equal codes do not count), ``q_exact``:
  whether the two quantized weights are bitwise equal, and ``q_rel``:
  ‖Q_slim − Q_ref‖_F / ‖W − Q_ref‖_F (1 ≈ as different as the quantization error itself);
* ``err_ref`` / ``err_slim``: the relative layer error tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) of each
  pipeline under its own H (ΔW = W − Q);
* ``x_rel``: ‖x_slim − x_ref‖_F / ‖x_ref‖_F of the block input on calibration window 0;
* with ``--lockstep`` (first variant only): ``lock_moved``, the fraction of weights where
  slimbench's ``gptq_quantize`` on the reference's own (W, H) lands on another grid point than
  the reference's ``fasterquant``, and ``lock_exact``: whether the two are bitwise equal;

and the first layer with a weight on another grid point. Then the perplexity of both (and RTN) on
the first ``--windows`` WikiText-2 test windows of 2048 (``--seqlen``) (slimbench's perplexity evaluator;
``--windows 0`` = the full split). At w4, slimbench's layers run torch's int4 CPU kernel (bf16
activations, also while calibrating); its perplexity is given as installed (and with
``--fp32-too`` also with the same codes as fp32 linears).

``--variants`` adds diagnostic reference pipelines that differ from ``ref`` only in how H is
accumulated: ``ref-sum`` (slimbench's before issue 27: one float32 Σxxᵀ over all windows, then
2/tokens, i.e. ``InputStats.gram`` + ``hessian_from_gram``), ``ref-f64`` (the reference's running
mean in float64, rounded to float32 once at the end). They measure what rounding-level changes of H do.

Measured: see results/alignment/gptq-smollm2-135m.md (numbers and commands).

    flock /work/bench.lock /work/main/.venv/bin/python benchmarks/gptq_alignment.py \\
        --reference /work/ref/gptq --data-dir /work/shared/data --bits 3 --group-size 128 \\
        --out results/alignment/w3g128-seed0.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

import slimbench.methods.quant.gptq as gptq_module
from slimbench.calibration import InputStats, capture_block_inputs
from slimbench.data.corpora import load_corpus, resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set, tokenize_stream
from slimbench.evaluation.perplexity import window_nlls
from slimbench.methods.hessian import dampen, hessian_from_gram, inverse_cholesky_upper, mark_dead_inputs
from slimbench.kernels.qlinear import expand_groups
from slimbench.methods.quant.common import Quantized
from slimbench.methods.quant.gptq import GPTQ, GPTQConfig
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.run import compress

from gptq_vs_rtn import to_fp32_simulated  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from quant_kernel_check import resolve_named_model  # noqa: E402


# -- the reference, imported from the user's checkout ----------------------------------------------
def import_reference(path: Path):
    """(gptq, quant, modelutils) modules of the reference checkout at ``path``."""
    if not (path / "gptq.py").is_file():
        raise SystemExit(f"--reference {path}: no gptq.py (a checkout of IST-DASLab/gptq at 2d65066)")
    if not torch.cuda.is_available():  # fasterquant calls torch.cuda.synchronize() (a CPU build raises)
        torch.cuda.synchronize = lambda *a, **k: None
    sys.path.insert(0, str(path))
    with contextlib.redirect_stdout(io.StringIO()):  # quant.py prints that its CUDA extension is missing
        mods = tuple(importlib.import_module(m) for m in ("gptq", "quant", "modelutils"))
    sys.path.remove(str(path))
    return mods


class RunningMean64:
    """The reference's add_batch (H ← H·n/(n+b) + 2/(n+b)·Σxxᵀ) in float64, rounded once at the end."""

    def __init__(self) -> None:
        self.h, self.n = None, 0

    def add(self, x: torch.Tensor) -> None:
        b, x = x.shape[0], x.reshape(-1, x.shape[-1]).double()  # [B·T, D]
        h = x.t() @ x
        self.h = h * (2 / (self.n + b)) if self.h is None else self.h * (self.n / (self.n + b)) + h * (2 / (self.n + b))
        self.n += b

    def result(self) -> torch.Tensor:
        return self.h.float()


class GramSum:
    """slimbench's accumulation before issue 27 (``InputStats`` gram, ``hessian_from_gram``), in the reference's 2/nsamples scale."""

    def __init__(self) -> None:
        self.stats, self.n = InputStats(frozenset({"gram"})), 0

    def add(self, x: torch.Tensor) -> None:
        self.stats.update(x)
        self.n += x.shape[0]

    def result(self) -> torch.Tensor:
        return hessian_from_gram(self.stats.gram, self.stats.tokens) * (self.stats.tokens / self.n)


ACCUMULATORS = {"ref": None, "ref-sum": GramSum, "ref-f64": RunningMean64}


def block_forward(layer, hidden, calls):
    outs = []
    for x, (args, kwargs) in zip(hidden, calls):
        out = layer(x, *args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


@torch.no_grad()
def reference_gptq(ref, bundle, calib, args, accumulate, observe):
    """llama.py's llama_sequential (all linears of a block at once) with the reference classes.

    ``observe(i, name, w, h, q, x0)`` is called after each layer is quantized with its dense
    weight, its H (reference scale), its quantized weight and the block's input on window 0.
    """
    gptq_mod, quant_mod, modelutils = ref
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    blocks, hidden = bundle.adapter.get_blocks(bundle.model), inputs.hidden
    for i, layer in enumerate(blocks):
        full = modelutils.find_layers(layer)
        gptq, acc = {}, {}
        for name, module in full.items():
            gptq[name] = gptq_mod.GPTQ(module)
            gptq[name].quantizer = quant_mod.Quantizer()
            gptq[name].quantizer.configure(args.bits, perchannel=True, sym=False, mse=False)
            acc[name] = ACCUMULATORS[accumulate]() if ACCUMULATORS[accumulate] else None

        def add_batch(name):
            def hook(_, inp, out):
                if acc[name] is None:
                    gptq[name].add_batch(inp[0].data, out.data)
                else:
                    acc[name].add(inp[0].data)
            return hook

        handles = [full[name].register_forward_hook(add_batch(name)) for name in full]
        block_forward(layer, hidden, inputs.calls[i])
        for h in handles:
            h.remove()
        for name, module in full.items():
            if acc[name] is not None:
                gptq[name].H = acc[name].result()
            w, h = module.weight.data.clone(), gptq[name].H.clone()  # fasterquant changes H in place
            with contextlib.redirect_stdout(io.StringIO()):
                gptq[name].fasterquant(blocksize=128, percdamp=args.percdamp, groupsize=args.group_size, actorder=False, static_groups=False)
            observe(i, name, w, h, module.weight.data, hidden[0])
            gptq[name].free()
        hidden = block_forward(layer, hidden, inputs.calls[i])


@torch.no_grad()
def hessian_accuracy(ref, bundle, calib, args) -> list[dict]:
    """On the dense model (same inputs for all): each accumulation's H and U (upper Cholesky factor of the
    damped H⁻¹, what GPTQ uses) against the float64 running mean, per block and shared input.

    On the first ``--max-blocks`` blocks also GPTQ's sensitivity to these rounding-level differences:
    every linear is quantized (``gptq_quantize``, bitwise the reference's ``fasterquant``) with the
    reference's H, slimbench's H and the float64 H rounded to float32; per pair the fraction of weights
    on another grid point, and each result's layer error under the float64 H."""
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    blocks, hidden, rows = bundle.adapter.get_blocks(bundle.model), inputs.hidden, []
    cfg = GPTQConfig(bits=args.bits, group_size=args.group_size, percdamp=args.percdamp, true_sequential=False, preserve_zeros=args.preserve_zeros)
    for i, layer in enumerate(blocks):
        if args.max_blocks and i >= args.max_blocks:
            break
        linears = bundle.adapter.block_linears(layer)
        leaders = list(dict.fromkeys(next(r for r in bundle.adapter.input_group(role) if r in linears) for role in linears))
        accs = {role: (ref[0].GPTQ(linears[role]), GramSum(), RunningMean64()) for role in leaders}

        def hook(role):
            def fn(_, inp, out):
                accs[role][0].add_batch(inp[0].data, out.data)
                accs[role][1].add(inp[0].data)
                accs[role][2].add(inp[0].data)
            return fn

        handles = [linears[role].register_forward_hook(hook(role)) for role in leaders]
        out = block_forward(layer, hidden, inputs.calls[i])
        for h in handles:
            h.remove()
        for role, (g, gram, exact) in accs.items():
            u_exact = inverse_cholesky_upper(dampen(mark_dead_inputs(exact.h)[0], args.percdamp))  # float64
            hs = {"ref": g.H, "slim": gram.result(), "f64": exact.result()}
            row = {"block": i, "input_of": role}
            for name in ("ref", "slim"):
                row[f"h_err_{name}"] = rel(hs[name].double(), exact.h)
                row[f"u_err_{name}"] = rel(inverse_cholesky_upper(dampen(mark_dead_inputs(hs[name])[0], args.percdamp)).double(), u_exact)
            rows.append(row)
            print(" | ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
            for member in (r for r in bundle.adapter.input_group(role) if r in linears and args.max_blocks):
                w = bundle.adapter.weight_matrix(linears[member]).float()
                qs = {name: gptq_quantize_fp(w, h, cfg) for name, h in hs.items()}
                grid = qs["f64"][1]
                q = {name: v[0] for name, v in qs.items()}
                row = {"block": i, "layer": member,
                       "moved_ref_vs_slim": moved(q["slim"], q["ref"], grid), "moved_ref_vs_f64": moved(q["ref"], q["f64"], grid),
                       "moved_slim_vs_f64": moved(q["slim"], q["f64"], grid),
                       **{f"err_{name}": layer_error(w, q[name], exact.h.float()) for name in q}}
                rows.append(row)
                print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        hidden = out
    return rows


def gptq_quantize_fp(w: torch.Tensor, h: torch.Tensor, cfg: GPTQConfig) -> tuple[torch.Tensor, Quantized]:
    q, _ = gptq_module.gptq_quantize(w, h, cfg)
    return q.dequantize(), q


# -- slimbench, through its engine, recording what gptq_quantize receives ------------------------------
def slimbench_gptq(bundle, calib, args):
    """(compress report, {layer name: (H, Quantized)}, {block index: input on window 0}).

    The Quantized is what ``gptq_quantize`` returned (codes as uint8): its fp32 weights, before
    installation (torch's int4 CPU layout keeps bf16 scales). H is shared between the layers of
    one input.
    """
    calls, original = [], gptq_module.gptq_quantize

    def recording(w, h, cfg):
        q, loss = original(w, h, cfg)
        same = calls and calls[-1][0].shape == h.shape and torch.equal(calls[-1][0], h)
        calls.append((calls[-1][0] if same else h.clone(), Quantized(q.codes.to(torch.uint8), q.scales, q.zeros, q.bits, q.group_size)))
        return q, loss

    block_inputs: dict[int, torch.Tensor] = {}
    blocks = bundle.adapter.get_blocks(bundle.model)

    seen = [0] * len(blocks)

    def first_input(i):
        def hook(_, hook_args):  # the engine's capture pass calls every block once per sample first (no compute)
            if seen[i] == len(calib):
                block_inputs[i] = hook_args[0].detach().clone()
            seen[i] += 1
        return hook

    handles = [b.register_forward_pre_hook(first_input(i)) for i, b in enumerate(blocks)]
    gptq_module.gptq_quantize = recording
    try:
        method = GPTQ(GPTQConfig(bits=args.bits, group_size=args.group_size, percdamp=args.percdamp, true_sequential=False, preserve_zeros=args.preserve_zeros))
        report = compress(method, bundle, calib)
    finally:
        gptq_module.gptq_quantize = original
        for h in handles:
            h.remove()
    names = [layer.name for layer in report.stages[0].layers]  # layer names in quantization order
    if len(names) != len(calls):
        raise RuntimeError(f"{len(calls)} gptq_quantize calls for {len(names)} layers")
    return report, dict(zip(names, calls)), block_inputs


# -- perplexity ---------------------------------------------------------------------------------------
class TestWindows:
    """The perplexity evaluator's windows (joined test rows, tokenized once, cut into seqlen) and its window NLLs.

    One pass gives the perplexity of the first ``first`` windows and of all evaluated windows
    (exp of the mean window NLL, as ``slimbench.evaluation.perplexity``).
    """

    def __init__(self, tokenizer, data_dir: Path, windows: int | None, seqlen: int, first: int = 8) -> None:
        ids = tokenize_stream(tokenizer, load_corpus(resolve_corpus("wikitext2", "test", str(data_dir))))
        n = ids.numel() // seqlen if windows is None else min(windows, ids.numel() // seqlen)
        self.windows, self.first = ids[: n * seqlen].view(n, seqlen), min(first, n)  # [n, seqlen]

    def __call__(self, bundle) -> dict:
        nlls = window_nlls(bundle, self.windows, 1, desc="perplexity wikitext2/test")
        out = {f"first{self.first}": math.exp(nlls[: self.first].mean().item())}
        if len(nlls) > self.first:
            out[f"all{len(nlls)}"] = math.exp(nlls.mean().item())
        return out


def show(ppl: dict) -> str:
    return " | ".join(f"{k} {v:.4f}" for k, v in ppl.items())


# -- comparison --------------------------------------------------------------------------------------
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def moved(q: torch.Tensor, q_ref: torch.Tensor, quant: Quantized) -> float:
    """Fraction of weights of q [N, K] more than half a grid step (of ``quant``'s grid) away from q_ref."""
    step = expand_groups(quant.scales, q.shape[1], quant.group_size)  # [N, K]
    return float(((q - q_ref).abs() > 0.5 * step).float().mean())


def layer_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """tr(ΔW H ΔWᵀ) / tr(W H Wᵀ): the layer's output error on the calibration inputs, relative."""
    d = w - q
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum())


class Comparator:
    """Per-layer rows: a reference pipeline's layer against slimbench's layer of the same name."""

    def __init__(self, prefix: str, slim: dict, slim_x: dict, scale: float, args, lockstep: bool) -> None:
        self.prefix, self.slim, self.slim_x, self.scale, self.args, self.lockstep = prefix, slim, slim_x, scale, args, lockstep
        self.rows: list[dict] = []

    def __call__(self, i, name, w, h_ref, q_ref, x0) -> None:
        h_slim, quant = self.slim[f"{self.prefix}.{i}.{name}"]
        h_slim, q_slim = h_slim * self.scale, quant.dequantize()  # exact: the scale is a power of two
        w, q_ref = w.float(), q_ref.float()
        row = {
            "block": i, "layer": name,
            "x_rel": rel(self.slim_x[i], x0),
            "h_rel": rel(h_slim, h_ref),
            "q_moved": moved(q_slim, q_ref, quant),
            "q_exact": bool(torch.equal(q_slim, q_ref)),
            "q_rel": rel(q_slim, q_ref) * float(q_ref.norm()) / float((w - q_ref).norm()),
            "err_ref": layer_error(w, q_ref, h_ref),
            "err_slim": layer_error(w, q_slim, h_slim),
        }
        if self.lockstep:
            cfg = GPTQConfig(bits=self.args.bits, group_size=self.args.group_size, percdamp=self.args.percdamp, true_sequential=False, preserve_zeros=self.args.preserve_zeros)
            q_lock, _ = gptq_module.gptq_quantize(w, h_ref, cfg)
            row["lock_moved"] = moved(q_lock.dequantize(), q_ref, q_lock)
            row["lock_exact"] = bool(torch.equal(q_lock.dequantize(), q_ref))
        self.rows.append(row)


def summary(rows: list[dict]) -> dict:
    first = next((r for r in rows if r["q_moved"] > 0), None)
    out = {
        "first_layer_with_moved_weights": None if first is None else f"{first['block']}.{first['layer']}",
        "layers_bitwise_equal": sum(r["q_exact"] for r in rows),
        "layers_with_moved_weights": sum(r["q_moved"] > 0 for r in rows),
        "mean_q_moved": sum(r["q_moved"] for r in rows) / len(rows),
        "sum_err_ref": sum(r["err_ref"] for r in rows),
        "sum_err_slim": sum(r["err_slim"] for r in rows),
    }
    if "lock_moved" in rows[0]:
        out.update(max_lock_moved=max(r["lock_moved"] for r in rows), lock_bitwise_equal=sum(r["lock_exact"] for r in rows))
    return out


def print_blocks(rows: list[dict]) -> None:
    lock = "lock_moved" in rows[0]
    print("| block | x_rel (window 0) | max h_rel | weights moved | max q_rel | Σ err ref | Σ err slim |" + (" lockstep moved |" if lock else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if lock else ""))
    for b in sorted({r["block"] for r in rows}):
        rs = [r for r in rows if r["block"] == b]
        line = (f"| {b} | {rs[0]['x_rel']:.2e} | {max(r['h_rel'] for r in rs):.2e} | {sum(r['q_moved'] for r in rs) / len(rs):.3%} | "
                f"{max(r['q_rel'] for r in rs):.3f} | {sum(r['err_ref'] for r in rs):.4f} | {sum(r['err_slim'] for r in rs):.4f} |")
        print(line + (f" {max(r['lock_moved'] for r in rs):.1e} |" if lock else ""), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of IST-DASLab/gptq at 2d65066")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--percdamp", type=float, default=0.01)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=2048, help="calibration and test window length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=8, help="first test windows of 2048 (0 = the full split)")
    parser.add_argument("--variants", default="ref", help=f"reference pipelines, comma-separated: {', '.join(ACCUMULATORS)}")
    parser.add_argument("--rtn", action="store_true", help="also RTN at the same format")
    parser.add_argument("--lockstep", action="store_true", help="also slimbench's gptq_quantize on the first variant's (W, H), per layer")
    parser.add_argument("--fp32-too", action="store_true", help="at w4 also evaluate slimbench's and RTN's codes as fp32 linears")
    parser.add_argument("--hessian-accuracy", action="store_true", help="only: H and U of both accumulations against float64 on the dense model")
    parser.add_argument("--max-blocks", type=int, default=0, help="--hessian-accuracy: only the first blocks, with GPTQ's sensitivity (0 = all blocks, H and U only)")
    parser.add_argument("--preserve-zeros", action="store_true", help="slimbench's default preserve_zeros=true (exact zeros stay zero; "
                        "the reference quantizes them: SmolLM2's dequantized GGUF weights hold 33,483 exact zeros); off = the reference's algorithm")
    parser.add_argument("--blocks", type=int, default=0, help="only the first blocks of the model (a truncated model, no perplexity): a quick layer-by-layer check")
    parser.add_argument("--out", type=Path, help="JSON with every per-layer row and the perplexities")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(ACCUMULATORS):
        raise SystemExit(f"unknown variants {sorted(unknown)} (known: {', '.join(ACCUMULATORS)})")
    ref = import_reference(args.reference)
    source, loader, cfg, ctx = resolve_named_model(args.model)
    corpus = resolve_corpus("wikitext2", "validation", str(args.data_dir))
    windows = args.windows or None
    fmt = f"w{args.bits} g{args.group_size}"
    print(f"{args.model} {fmt} asym percdamp {args.percdamp}; calibration {args.nsamples} x {args.seqlen} seed {args.seed}; "
          f"perplexity on {'the full test split' if windows is None else f'the first {windows} test windows'} of {args.seqlen}", flush=True)
    result: dict = {"model": args.model, "bits": args.bits, "group_size": args.group_size, "percdamp": args.percdamp,
                    "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed, "windows": windows or "all", "ppl": {}, "compress_s": {}}

    load = lambda: truncate(loader.load(source, cfg, ctx), args.blocks)  # noqa: E731
    slim = load()
    calib = build_calibration_set(CalibConfig(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed), corpus, slim.tokenizer)
    if args.hessian_accuracy:
        result["hessian_accuracy"] = hessian_accuracy(ref, slim, calib, args)
        return save(args.out, result)
    ppl = TestWindows(slim.tokenizer, args.data_dir, windows, args.seqlen) if not args.blocks else lambda bundle: {}
    t = time.perf_counter()
    report, slim_layers, slim_x = slimbench_gptq(slim, calib, args)
    result["compress_s"]["slimbench"] = round(time.perf_counter() - t, 1)
    result["ppl"]["slimbench"] = ppl(slim)
    result["slimbench_path"] = report.execution_path
    print(f"slimbench  compress {result['compress_s']['slimbench']:.1f} s | ppl ({report.execution_path}) {show(result['ppl']['slimbench'])}", flush=True)
    scale = 1.0  # slimbench's H is the reference's (2/nsamples Σxxᵀ, running mean) since issue 27; before, 2/tokens Σxxᵀ

    for variant in variants:
        bundle = load()
        compare = Comparator(slim.adapter.blocks, slim_layers, slim_x, scale, args, lockstep=args.lockstep and variant == variants[0])
        t = time.perf_counter()
        reference_gptq(ref, bundle, calib, args, variant, compare)
        result["compress_s"][variant] = round(time.perf_counter() - t, 1)
        result["ppl"][variant] = ppl(bundle)
        result[f"layers_{variant}"] = compare.rows
        result[f"summary_{variant}"] = summary(compare.rows)
        print(f"\n{variant}: compress {result['compress_s'][variant]:.1f} s | ppl (fp32) {show(result['ppl'][variant])} | {json.dumps(result[f'summary_{variant}'])}", flush=True)
        print_blocks(compare.rows)
        save(args.out, result)
        del bundle

    if args.fp32_too and report.execution_path != "simulated":  # the same codes in fp32 linears, like the reference's
        to_fp32_simulated(slim.model)
        result["ppl"]["slimbench-fp32"] = ppl(slim)
        print(f"slimbench  ppl (same codes, fp32 linears) {show(result['ppl']['slimbench-fp32'])}", flush=True)
    del slim
    if args.rtn:
        bundle = load()
        rtn_report = compress(RTN(RTNConfig(bits=args.bits, group_size=args.group_size)), bundle, None)
        result["ppl"]["rtn"] = ppl(bundle)
        if args.fp32_too and rtn_report.execution_path != "simulated":
            to_fp32_simulated(bundle.model)
            result["ppl"]["rtn-fp32"] = ppl(bundle)
        print(f"rtn        ppl ({rtn_report.execution_path}) {show(result['ppl']['rtn'])}" + (f" | fp32 {show(result['ppl']['rtn-fp32'])}" if "rtn-fp32" in result["ppl"] else ""), flush=True)

    print("\nperplexity: " + " || ".join(f"{k} {show(v)}" for k, v in result["ppl"].items()))
    save(args.out, result)


def truncate(bundle, blocks: int):
    """The model cut to its first ``blocks`` blocks (0: unchanged); both pipelines see the same blocks."""
    if blocks:
        layers = bundle.adapter.get_blocks(bundle.model)
        del layers[blocks:]
        bundle.model.config.num_hidden_layers = blocks
    return bundle


def save(path: Path | None, result: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
