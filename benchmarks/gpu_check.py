"""The GPU check of issue 20, one part at a time (``benchmarks/gpu_check.sh`` runs them all).

Parts (each writes ``<out>/<part>.md`` and ``<out>/<part>.json``):

* ``kernels``: the kernel table. N×K in {576×576 g64, 4096×4096 g128, 11008×4096 g128,
  11008×4096 int8 per row}, M in {1, 16, 256, 2048}; for every kernel side by side its
  correctness (max relative error against ``x @ Ŵᵀ`` in fp32) and µs (``triton.testing.do_bench``:
  median, L2 flushed between calls): cuBLAS bf16 on the dequantized weight, slimbench's
  ``QuantLinear`` as chosen for the shape (``cuda_select``), the Triton decode / prefill kernels,
  Triton dequantize + cuBLAS, torch's tinygemm (``aten._weight_int4pack_mm``), torch's
  ``aten._weight_int8pack_mm``, and where they import, GemLite (same codes) and torchao's
  int4 weight-only (its own quantization of the weight). Then the issue's targets, PASS/FAIL.
* ``methods``: pass/fail table of every registered method with ``device=cuda`` on its tiny model
  (tiny-llama; tiny-gemma3 where the contract test says) in float32 and bfloat16, on the sparse-MoE
  tiny-moe, the diffusion-capable methods on tiny-dit, every pipeline preset, save + reload
  (``model=saved`` on the device), float16, and the zero-shot / FID evaluators where the data is;
  most important first, no new case after ``--budget-s``; the table is rewritten after every case.
* ``compress``: compression time and peak GPU memory of Wanda, SparseGPT, GPTQ and AWQ on a
  SmolLM2-shaped model (random weights from config: 30 blocks, 576/1536, GQA 9/3) at 128 × 2048
  calibration (random tokens).
* ``decode``: decode tokens/s of a Llama-2-7B-shaped model (random weights), bf16 against int4
  g128 (the chosen kernels): end to end (HF, static KV cache, one decode step replayed as a CUDA
  graph; eager if capture fails, labelled) and the 7B linear stack alone (CUDA graph).

``--dry-run`` runs each part's CPU-testable pieces on CPU with tiny shapes (no timings of
interest): the table and report code, the first case of every group of the method loop, the
compression loop, the decode loop.

    python benchmarks/gpu_check.py kernels --out results/benchmarks/gpu
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from slimbench.kernels.qlinear import QuantLinear, num_groups

SHAPES = [("576x576 int4 g64", 4, 64, 576, 576), ("4096x4096 int4 g128", 4, 128, 4096, 4096),
          ("11008x4096 int4 g128", 4, 128, 11008, 4096), ("11008x4096 int8 per-row", 8, -1, 11008, 4096)]
ROWS = [1, 16, 256, 2048]
TARGETS = [  # (shape label, M, slimbench / cuBLAS speed ratio at least)
    ("4096x4096 int4 g128", 1, 2.5), ("11008x4096 int4 g128", 1, 2.5), ("11008x4096 int8 per-row", 1, 1.6),
    ("4096x4096 int4 g128", 2048, 0.9), ("11008x4096 int4 g128", 2048, 0.9), ("11008x4096 int8 per-row", 2048, 0.9),
]
DRY_SHAPES = [("64x128 int4 g64", 4, 64, 64, 128), ("48x96 int8 per-row", 8, -1, 48, 96)]


# -- timing ----------------------------------------------------------------------------------------
def bench_us(fn, device: torch.device) -> float:
    """Median µs of ``fn``: triton.testing.do_bench on CUDA (L2 flushed between calls), wall clock on CPU."""
    fn()
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1e3
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[2] * 1e6


def write(out: Path, part: str, lines: list[str], data, show: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}.md").write_text("\n".join(lines) + "\n")
    (out / f"{part}.json").write_text(json.dumps(data, indent=1, default=str))
    if show:
        print("\n".join(lines), flush=True)


def environment_line(device: torch.device) -> str:
    from slimbench._system import gpu_info

    info = gpu_info() or {}
    import triton

    return (f"{info.get('name', 'CPU (dry run)')}, CUDA runtime {info.get('cuda_runtime')}, driver {info.get('driver')}, "
            f"torch {torch.__version__}, Triton {triton.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")


# -- kernels ---------------------------------------------------------------------------------------
def random_format(bits, group, n, k, device):
    g = torch.Generator(device=device).manual_seed(n + k)
    groups = num_groups(k, group)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, device=device)
    scales = torch.rand(n, groups, generator=g, device=device) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g, device=device).float()
    return codes, scales, zeros


def kernel_candidates(bits, group, n, k, codes, scales, zeros, device) -> dict:
    """name -> callable(x) for every kernel that can run this format here (or a string: why not)."""
    from slimbench.kernels import triton_gemm

    chosen = QuantLinear.from_codes(codes, scales, zeros, bits, group)  # layout "auto": cuda_select on CUDA
    packed = QuantLinear.from_codes(codes, scales, zeros, bits, group, layout="packed")
    w = packed.dequantize().to(torch.bfloat16)
    args = (packed.qweight, packed.scales, packed.zeros, bits, k, group)
    cands: dict = {"cuBLAS bf16": lambda x: x @ w.t(), f"slimbench chosen ({chosen.layout})": chosen}
    if device.type == "cuda":
        cands["triton decode (M<=16) / prefill"] = lambda x: (triton_gemm.decode_matmul(x, *args) if x.shape[0] <= triton_gemm.DECODE_MAX_ROWS
                                                              else triton_gemm.prefill_matmul(x, *args))
        cands["triton dequantize + cuBLAS"] = lambda x: x @ triton_gemm.dequantize(*args, dtype=x.dtype).t()
        for layout, label in (("int4-cuda", "aten tinygemm int4"), ("int8", "aten int8pack (+ cuBLAS prefill)")):
            try:
                cands[label] = QuantLinear.from_codes(codes, scales, zeros, bits, group, layout=layout)
            except Exception as exc:
                cands[label] = f"n/a: {str(exc).splitlines()[0][:120]}"
        cands["gemlite"] = _gemlite(bits, group, n, k, codes, scales, zeros)
        cands["torchao int4 weight-only (own codes)"] = _torchao(bits, group, w)
    return cands


def _gemlite(bits, group, n, k, codes, scales, zeros):
    try:
        from gemlite.core import DType, GemLiteLinear
    except Exception as exc:  # optional
        return f"n/a: gemlite not importable ({type(exc).__name__})"
    try:
        gs = k if group <= 0 else group
        layer = GemLiteLinear(bits, group_size=gs, in_features=k, out_features=n, input_dtype=DType.BF16, output_dtype=DType.BF16)
        layer.pack(codes.to(torch.uint8), scales.to(torch.bfloat16), zeros.to(torch.bfloat16), bias=None)
        return layer
    except Exception as exc:
        return f"n/a: gemlite failed ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"


def _torchao(bits, group, w):
    if bits != 4:
        return "n/a: int4 only"
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
    except Exception as exc:
        return f"n/a: torchao not importable ({type(exc).__name__})"
    try:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=torch.bfloat16)
        lin.weight.data.copy_(w)
        quantize_(lin, Int4WeightOnlyConfig(group_size=group if group > 0 else 128))
        lin.own_codes = True
        return lin
    except Exception as exc:
        return f"n/a: torchao failed ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})"


def part_kernels(out: Path, device: torch.device, dry: bool) -> None:
    rows, data = [], []
    for label, bits, group, n, k in (DRY_SHAPES if dry else SHAPES):
        codes, scales, zeros = random_format(bits, group, n, k, device)
        ref_w = QuantLinear.from_codes(codes, scales, zeros, bits, group, layout="packed").dequantize()
        cands = kernel_candidates(bits, group, n, k, codes, scales, zeros, device)
        for m in (ROWS[:2] if dry else ROWS):
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            ref = x.float() @ ref_w.t()
            base = None
            for name, fn in cands.items():
                if isinstance(fn, str):
                    data.append({"shape": label, "M": m, "kernel": name, "status": fn})
                    continue
                try:
                    y = fn(x).float()
                    tol_ref = (x.float() @ fn.weight.dequantize().float().t()) if getattr(fn, "own_codes", False) and hasattr(fn.weight, "dequantize") else ref
                    err = float((y - tol_ref).abs().max() / tol_ref.abs().max())
                    us = bench_us(lambda: fn(x), device)
                except Exception as exc:
                    data.append({"shape": label, "M": m, "kernel": name, "status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"})
                    continue
                base = us if name == "cuBLAS bf16" else base
                data.append({"shape": label, "M": m, "kernel": name, "status": "ok", "us": us, "rel_err": err, "x_cublas": base / us if base else None})
                rows.append(f"| {label} | {m} | {name} | {us:.1f} | {base / us if base else float('nan'):.2f} | {err:.1e} |")
    lines = [f"# Kernel table ({'dry run on CPU' if dry else 'GPU'})", "", environment_line(device), "",
             "µs: median of triton.testing.do_bench (L2 flushed between calls); x cuBLAS = cuBLAS bf16 µs / kernel µs (> 1 faster); "
             "rel err: max |y − x·Ŵᵀ| / max |x·Ŵᵀ| against the fp32 product with the same codes (torchao: its own codes).", "",
             "| shape | M | kernel | µs | x cuBLAS | rel err |", "|---|---|---|---|---|---|", *rows, ""]
    lines += ["| not run | M | kernel | why |", "|---|---|---|---|"]
    lines += [f"| {d['shape']} | {d['M']} | {d['kernel']} | {d['status']} |" for d in data if d["status"] != "ok"]
    lines += ["", "## Targets (slimbench's chosen kernel against cuBLAS bf16)", "", "| shape | M | target | measured | |", "|---|---|---|---|---|"]
    for shape, m, target in TARGETS:
        got = next((d["x_cublas"] for d in data if d["shape"] == shape and d["M"] == m and d["kernel"].startswith("slimbench chosen")
                    and d["status"] == "ok"), None)
        verdict = "n/a" if got is None else ("PASS" if got >= target else "FAIL")
        lines.append(f"| {shape} | {m} | >= {target}x | {'-' if got is None else f'{got:.2f}x'} | {verdict} |")
    write(out, "kernels", lines, data)


# -- methods on CUDA --------------------------------------------------------------------------------
def compose_config(overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


CONF = Path(__file__).resolve().parents[1] / "conf"
CAUSAL_RUN = ("calib.nsamples=4", "calib.seqlen=64", "eval=quick", "eval.evaluators.perplexity.max_windows=2",
              "eval.evaluators.perplexity.seqlen=256", "eval.evaluators.latency.repeats=2", "eval.evaluators.latency.new_tokens=4",
              "eval.evaluators.latency.prompt_len=16")
DIT_RUN = ("calib.nsamples=4", "calib.steps=4", "eval.evaluators.latency.repeats=2")  # tiny-dit's preset: dit-trajectory + dit-quick
SAVED = ("rtn", "gptq", "wanda", "svd", "flap", "smoothquant")  # save_dir, then model=saved on the device (each checkpoint format)


@dataclass(frozen=True)
class Case:
    group: str  # which question the run answers (the table's first column)
    label: str  # method, pipeline or evaluator
    overrides: tuple[str, ...]
    reload: bool = False  # save the compressed model, then evaluate model=saved on the device
    skip: str = ""  # why the case cannot run here (reported, not run)


def method_cases(data_dir: Path | None, cache_dir: Path) -> list[Case]:
    """Every run of the methods part, most important first (the part stops launching cases at its
    time budget): every registered method on its contract model in float32 and bfloat16; every
    method on the sparse-MoE tiny-moe; the diffusion-capable ones on tiny-dit; every pipeline
    preset; save + reload on the device; float16; last the evaluators that need real data."""
    from slimbench.methods import METHODS
    from tests.test_methods_contract import CONTRACT  # each method's settings for the tiny models

    names = sorted(name for name, _ in METHODS.items())

    def on(name: str, model: str | None = None) -> tuple[str, ...]:
        contract = CONTRACT.get(name)
        return (f"method={name}", f"model={model or (contract.model if contract else 'tiny-llama')}",
                *(contract.overrides if contract else ()), *CAUSAL_RUN)

    cases = [Case(dtype, n, (*on(n), f"model.dtype={dtype}")) for dtype in ("float32", "bfloat16") for n in names]
    # structured pruning refuses MoE blocks before loading (experts' channels are not pruned structurally)
    cases += [Case("tiny-moe (sparse MoE)", n, on(n, "tiny-moe")) for n in names
              if "causal_lm" in METHODS.get(n).kinds and n not in ("flap", "numerical_pruning")]
    cases += [Case("tiny-dit (diffusion)", n, (f"method={n}", "model=tiny-dit", *CONTRACT[n].overrides, *DIT_RUN))
              for n in names if "diffusion" in METHODS.get(n).kinds]
    cases += [Case("pipeline", p.stem, (f"pipeline={p.stem}", "model=tiny-llama", *CAUSAL_RUN)) for p in sorted((CONF / "pipeline").glob("*.yaml"))]
    cases += [Case("save + reload", n, on(n), reload=True) for n in SAVED if n in names]
    cases += [Case("float16", n, (*on(n), "model.dtype=float16")) for n in names]
    no_data = "" if data_dir else "n/a: no data dir (set SLIMBENCH_DATA_DIR to the shared datasets)"
    cases.append(Case("evaluator", "zeroshot-quick", ("method=dense", "model=tiny-llama", "eval=zeroshot-quick", "eval.evaluators.zeroshot.limit=2"),
                      skip=no_data))
    cached_clf = any((cache_dir / "fid").glob("mnist_clf-*.safetensors"))
    cases.append(Case("evaluator", "fid-quick", ("method=dense", "model=tiny-dit", "model.config.img_size=28", "eval=fid-quick",
                                                 "eval.evaluators.fid.num_samples=40", "eval.evaluators.fid.batch_size=20",
                                                 "eval.evaluators.fid.sampler.steps=3"),
                      skip=no_data or ("" if cached_clf else "n/a: the MNIST classifier is not cached (benchmarks/fid_mnist_dit.py trains it)")))
    return cases


def dry_cases(cases: list[Case], prefer: str = "rtn") -> list[Case]:
    """The dry run: one case of every group, ``prefer`` where the group has it, else its first
    (checks every kind of run the part makes; RTN is quick and goes through the quantized layers)."""
    groups = dict.fromkeys(c.group for c in cases)
    return [next((c for c in cases if c.group == g and c.label == prefer), next(c for c in cases if c.group == g)) for g in groups]


def run_case(case: Case, common: list[str], save_dir: Path) -> dict:
    from slimbench.run import run_experiment

    overrides = [*case.overrides, *common] + ([f"save_dir={save_dir}"] if case.reload else [])
    outcome = run_experiment(compose_config(overrides))
    rec = outcome.record
    row = {"path": rec.compression.execution_path if rec and rec.compression else "-",
           "compress_gpu": rec.compression.peak_gpu_bytes if rec and rec.compression else None,
           "eval_gpu": max([v for v in (rec.evaluator_peak_gpu_bytes or {}).values() if v] or [None]) if rec else None,
           "error": None}
    errors = (rec.evaluator_errors or []) if rec else []
    if errors:  # an evaluator that failed fails the case, whatever the run's status
        row["error"] = {"stage": "evaluate", "type": errors[0].get("type"), "message": f"{errors[0].get('evaluator')}: {errors[0].get('message')}"}
    if outcome.status != "ok" and not errors:
        row["error"] = (rec.error if rec and rec.error else {"message": outcome.reason or outcome.status})
    if case.reload and row["error"] is None:
        again = run_experiment(compose_config(["model=saved", f"model.path={save_dir / outcome.run_id}", "method=dense", *CAUSAL_RUN, *common]))
        row["path"] += " -> saved, reloaded"
        if again.status != "ok":
            row["error"] = {"stage": "reload", **(again.record.error or {})} if again.record else {"stage": "reload", "message": again.reason}
    return row


def part_methods(out: Path, device: torch.device, dry: bool, results_dir: Path, budget_s: float) -> None:
    import os

    data_dir = os.environ.get("SLIMBENCH_DATA_DIR")
    cache_dir = Path(os.environ.get("SLIMBENCH_CACHE_DIR", Path.home() / ".cache" / "slimbench"))
    fixtures = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "data"
    cases = method_cases(Path(data_dir) if data_dir else None, cache_dir)
    cases = dry_cases(cases) if dry else cases
    start_all = time.perf_counter()
    rows, data = [], []
    for case in cases:
        start = time.perf_counter()
        if case.skip or start - start_all > budget_s:
            why = case.skip or f"not run: the part's time budget ({budget_s:.0f} s) was spent"
            data.append({"group": case.group, "method": case.label, "status": "not run", "error": why})
            rows.append(f"| {case.group} | {case.label} | not run | - | - | - | - | {why} |")
            continue
        common = [f"device={device.type}", "tracker=none", "force=true", f"paths.results_dir={results_dir}",
                  f"paths.data_dir={data_dir if case.group == 'evaluator' else fixtures}"]
        try:
            row = run_case(case, common, results_dir / "saved")
        except Exception as exc:
            row = {"path": "-", "compress_gpu": None, "eval_gpu": None, "error": {"stage": "plan", "type": type(exc).__name__, "message": str(exc)[:200]}}
        err = row.pop("error")
        status = "pass" if err is None else "FAIL"
        msg = "" if err is None else f"{err.get('stage')}: {err.get('type')}: {str(err.get('message', ''))[:160]}"
        seconds = time.perf_counter() - start
        data.append({"group": case.group, "method": case.label, "status": status, **row, "seconds": seconds, "error": msg})
        mib = ["-" if v is None else f"{v / 2**20:.1f}" for v in (row["compress_gpu"], row["eval_gpu"])]
        rows.append(f"| {case.group} | {case.label} | {status} | {row['path']} | {mib[0]} | {mib[1]} | {seconds:.1f} | {msg} |")
        print(rows[-1], flush=True)
        write_methods(out, device, dry, rows, data, show=False)
    write_methods(out, device, dry, rows, data)


def write_methods(out: Path, device: torch.device, dry: bool, rows: list[str], data: list[dict], show: bool = True) -> None:
    """The table so far (written after every case: a part stopped by its time limit keeps what it ran)."""
    groups = list(dict.fromkeys(d["group"] for d in data))
    counts = "; ".join(f"{g}: {sum(d['status'] == 'pass' for d in data if d['group'] == g)} of "
                       f"{sum(d['status'] != 'not run' for d in data if d['group'] == g)} pass" for g in groups)
    lines = [f"# Every registered method, pipeline and evaluator with device={device.type}{' (dry run: the first case of each group)' if dry else ''}",
             "", environment_line(device), "",
             "Tiny models (tiny-llama; tiny-gemma3 where the contract test says; tiny-moe; tiny-dit), the contract test's settings, "
             "calibration 4 × 64 tokens of the test corpus (tiny-dit: 4 trajectories of 4 steps), quick suite (2 windows of 256 tokens; "
             "latency 16 + 4 tokens). Rows in float32 unless the group names a dtype.", "", counts, "",
             "| group | method | status | execution path | compress peak GPU MiB | eval peak GPU MiB | s | error |",
             "|---|---|---|---|---|---|---|---|", *rows]
    write(out, "methods", lines, data, show)


# -- compression timings on a SmolLM2-shaped model ------------------------------------------------------
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "max_position_embeddings": 8192, "tie_word_embeddings": True}


def shaped_bundle(shape: dict, device: torch.device, dtype: str = "float32", vocab: int | None = None):
    """tiny-llama's from-config loader with another shape, initialised on ``device`` (a 7B model in
    seconds on a GPU); ``vocab``: resize the (byte-tokenizer) embeddings and head to that size."""
    from slimbench.models.loaders import LoadContext, resolve_model

    cfg = compose_config(["model=tiny-llama"])["model"]
    cfg["config"] = {**cfg["config"], **shape}
    cfg["dtype"] = dtype
    ctx = LoadContext(cache_dir=Path("/nonexistent-cache"), device=str(device))
    source, loader, config = resolve_model(cfg, ctx)
    with torch.device(device):
        bundle = loader.load(source, config, ctx)
        if vocab:
            bundle.model.resize_token_embeddings(vocab)
    return bundle


def random_calibration(vocab: int, nsamples: int, seqlen: int):
    from slimbench.data.sampler import CalibrationSet
    from slimbench.models.io import CausalLMIO

    windows = torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(0), device="cpu")
    io = CausalLMIO()
    recipe = {"dataset": "random tokens", "nsamples": nsamples, "seqlen": seqlen, "seed": 0}
    return CalibrationSet(inputs=[io.sample(windows[i : i + 1]) for i in range(nsamples)], recipe=recipe, tokens=windows)


def part_compress(out: Path, device: torch.device, dry: bool) -> None:
    from slimbench.methods import METHODS
    from slimbench.run import compress

    shape = {**SMOLLM2_SHAPE, "hidden_size": 72, "intermediate_size": 128, "num_hidden_layers": 1} if dry else SMOLLM2_SHAPE  # 9 heads of 8
    nsamples, seqlen = (2, 32) if dry else (128, 2048)
    rows, data = [], []
    for name in ("wanda", "sparsegpt", "gptq", "awq"):
        bundle = shaped_bundle(shape, device)
        calib = random_calibration(256, nsamples, seqlen)
        cls = METHODS.get(name)
        try:
            report = compress(cls(cls.Config()), bundle, calib)
            row = {"method": name, "status": "ok", "wall_s": report.wall_time_s, "peak_gpu_bytes": report.peak_gpu_bytes,
                   "peak_rss_bytes": report.peak_rss_bytes, "path": report.execution_path}
        except Exception as exc:
            row = {"method": name, "status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                   "traceback": traceback.format_exc()[-3000:]}
        data.append(row)
        gpu = row.get("peak_gpu_bytes")
        rows.append(f"| {name} | {row['status']} | {row.get('wall_s', float('nan')):.1f} | {'-' if gpu is None else f'{gpu / 2**30:.2f}'} | {row.get('path', '-')} |")
        print(rows[-1], flush=True)
        del bundle
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines = [f"# Compression on a SmolLM2-shaped model ({shape['num_hidden_layers']} blocks, {shape['hidden_size']}/{shape['intermediate_size']}, "
             f"GQA {shape['num_attention_heads']}/{shape['num_key_value_heads']}; random weights), calibration {nsamples} × {seqlen} random tokens",
             "", environment_line(device), "", "Default configs of each method (conf/method/*.yaml).", "",
             "| method | status | compress s | peak GPU GiB | path |", "|---|---|---|---|---|", *rows]
    write(out, "compress", lines, data)


# -- decode of a Llama-2-7B-shaped model ------------------------------------------------------------
LLAMA2_7B_SHAPE = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32, "max_position_embeddings": 4096, "tie_word_embeddings": False}
LLAMA2_VOCAB = 32000


def quantize_int4(bundle, group_size: int = 128) -> None:
    """RTN int4 g128 of every block linear (the kernels chosen per shape by cuda_select)."""
    from slimbench.methods.quant.common import install, rtn

    adapter = bundle.adapter
    for block in adapter.get_blocks(bundle.model):
        for role, module in adapter.block_linears(block).items():
            install(block, adapter.role_path(role), module, rtn(adapter.weight_matrix(module), 4, group_size, sym=False))


@torch.inference_mode()
def decode_rate(model, prompt_len: int, new_tokens: int, device: torch.device, graph: bool) -> tuple[float, str]:
    """Tokens/s of greedy decode with a static KV cache (one step replayed as a CUDA graph when ``graph``)."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens + 4)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=device)
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True, cache_position=torch.arange(prompt_len, device=device))
    token = out.logits[:, -1:].argmax(-1)
    pos = torch.tensor([prompt_len], device=device)

    def step():
        return model(input_ids=token, past_key_values=cache, use_cache=True, cache_position=pos).logits[:, -1:].argmax(-1)

    mode = "eager"
    run = step
    if graph and device.type == "cuda":
        try:
            for _ in range(3):  # warm-up (autotuning, lazy allocations) outside the capture
                step()
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_next = step()

            def run():
                g.replay()
                return static_next
            mode = "cuda graph"
        except Exception as exc:
            mode = f"eager (graph capture failed: {type(exc).__name__})"
            run = step
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(new_tokens):
        nxt = run()
        token.copy_(nxt)
        pos.fill_(prompt_len + i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - start), mode


def linear_stack_rate(bundle, device: torch.device) -> float:
    """Tokens/s of the model's block linears alone at M = 1 (what quantization speeds up), as one CUDA graph."""
    adapter = bundle.adapter
    layers = [m for block in adapter.get_blocks(bundle.model) for m in adapter.block_linears(block).values()]
    xs = {layer.in_features: torch.randn(1, layer.in_features, device=device, dtype=torch.bfloat16) for layer in layers}

    def step():
        for layer in layers:
            layer(xs[layer.in_features])

    step()
    if device.type != "cuda":
        return 1 / (bench_us(step, device) / 1e6)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    return 1 / (bench_us(g.replay, device) / 1e6)


def part_decode(out: Path, device: torch.device, dry: bool) -> None:
    shape = {**LLAMA2_7B_SHAPE, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4} if dry else LLAMA2_7B_SHAPE
    dtype = "float32" if dry else "bfloat16"
    bundle = shaped_bundle(shape, device, dtype=dtype, vocab=512 if dry else LLAMA2_VOCAB)
    prompt, new = (16, 4) if dry else (128, 128)
    data = {}
    for label in ("bf16" if not dry else "float", "int4 g128"):
        if label == "int4 g128":
            quantize_int4(bundle, 128 if not dry else 64)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tok_s, mode = decode_rate(bundle.model, prompt, new, device, graph=True)
        eager, _ = decode_rate(bundle.model, prompt, new, device, graph=False)
        stack = linear_stack_rate(bundle, device) if not dry else float("nan")
        layouts = sorted({m.layout for m in bundle.model.modules() if isinstance(m, QuantLinear)})
        data[label] = {"tokens_per_s": tok_s, "mode": mode, "eager_tokens_per_s": eager, "linear_stack_per_s": stack, "layouts": layouts}
        print(label, data[label], flush=True)
    q, b = data["int4 g128"], data["bf16" if not dry else "float"]
    lines = [f"# Decode of a Llama-2-7B-shaped model (random weights{', dry run: tiny shape' if dry else ''})", "", environment_line(device), "",
             f"Prompt {prompt} tokens, {new} greedy decode tokens, batch 1, static KV cache.", "",
             "| weights | tokens/s | mode | eager tokens/s | linear stack steps/s (CUDA graph) | int4 layouts |", "|---|---|---|---|---|---|"]
    for label, d in data.items():
        lines.append(f"| {label} | {d['tokens_per_s']:.1f} | {d['mode']} | {d['eager_tokens_per_s']:.1f} | {d['linear_stack_per_s']:.1f} | {', '.join(d['layouts']) or '-'} |")
    ratio = q["tokens_per_s"] / b["tokens_per_s"]
    lines += ["", f"int4 / bf16 decode: {ratio:.2f}x (target >= 1.8x: {'PASS' if ratio >= 1.8 else 'FAIL'}); "
              f"linear stack: {q['linear_stack_per_s'] / b['linear_stack_per_s']:.2f}x; eager: {q['eager_tokens_per_s'] / b['eager_tokens_per_s']:.2f}x"]
    write(out, "decode", lines, data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["kernels", "methods", "compress", "decode"])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/gpu"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: check that the part runs (no GPU needed)")
    parser.add_argument("--budget-s", type=float, default=150, help="methods: launch no new case after this many seconds")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the script on CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.part == "methods":
        part_methods(args.out, device, args.dry_run, args.out / "runs", args.budget_s)
    else:
        {"kernels": part_kernels, "compress": part_compress, "decode": part_decode}[args.part](args.out, device, args.dry_run)


if __name__ == "__main__":
    main()
