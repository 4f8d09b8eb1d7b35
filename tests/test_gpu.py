"""GPU records and kernels. Tests marked ``gpu`` need CUDA and skip cleanly without it (CI is
CPU-only; ``benchmarks/gpu_check.sh`` runs ``pytest -m gpu`` on a GPU machine). The first test
runs everywhere: a CPU record keeps its GPU fields, and only them, null."""

import json

import pytest
import torch

from slimbench.kernels.qlinear import QuantLinear, num_groups
from slimbench.run import run_experiment
from tests.conftest import TINY_EVAL

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_cpu_record_has_null_gpu_fields(compose):
    outcome = run_experiment(compose("model=tiny-llama", "method=rtn", "method.group_size=32", *TINY_EVAL))
    record = json.loads(outcome.path.read_text())
    assert outcome.status == "ok"
    assert record["compression"]["peak_gpu_bytes"] is None
    assert all(stage["peak_gpu_bytes"] is None for stage in record["compression"]["stages"])
    assert record["evaluator_peak_gpu_bytes"] == {name: None for name in record["protocols"]}
    assert record["environment"]["gpu"] is None and record["compression"]["peak_rss_bytes"] > 0


def _codes(bits, group, n, k, device):
    g = torch.Generator(device=device).manual_seed(0)
    groups = num_groups(k, group)
    codes = torch.randint(0, 2**bits, (n, k), generator=g, device=device)
    scales = torch.rand(n, groups, generator=g, device=device) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g, device=device).float()
    return codes, scales, zeros


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("bits,group,n,k", [(4, 32, 256, 512), (4, 64, 576, 576), (4, 128, 1536, 576), (4, -1, 512, 768),
                                            (8, -1, 576, 1536), (8, 64, 264, 520), (4, 128, 200, 300)])
@pytest.mark.parametrize("layout", ["auto", "triton"])
def test_cuda_layer_matches_reference(bits, group, n, k, layout):
    codes, scales, zeros = _codes(bits, group, n, k, "cuda")
    mod = QuantLinear.from_codes(codes, scales, zeros, bits, group, layout=layout)
    w = mod.dequantize()
    assert torch.equal(mod.codes().cpu(), codes.int().cpu())
    for m in (1, 7, 16, 17, 256, 1100):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w.t()
        err = float((mod(x).float() - ref).abs().max() / ref.abs().max())
        assert err < 2e-2, (mod.layout, m, err)
    if layout == "auto":
        assert mod.cuda_choice is not None and mod.cuda_choice.layout == mod.layout
        assert mod.kernel_info()["cuda_selection"]["timings_us"]


@pytest.mark.gpu
@needs_cuda
def test_int4_cuda_layout_round_trips_codes_and_export():
    codes, scales, zeros = _codes(4, 128, 512, 1024, "cuda")
    mod = QuantLinear.from_codes(codes, scales, zeros, 4, 128, layout="int4-cuda")
    assert torch.equal(mod.codes(), codes.int())
    meta, tensors = mod.export()
    again = QuantLinear.from_export(meta, tensors)
    x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(again(x), mod(x))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("m", [1, 5, 17, 24, 100])
def test_w8a8_int_mm_pads_rows_on_cuda(m):
    w = torch.randn(256, 512, device="cuda")
    mod = QuantLinear.w8a8_from_float(w)
    x = torch.randn(m, 512, device="cuda")
    ref = x @ mod.dequantize().t()
    assert float((mod(x) - ref).abs().max() / ref.abs().max()) < 3e-2


@pytest.mark.gpu
@needs_cuda
def test_cuda_record_has_gpu_memory_and_versions(compose):
    outcome = run_experiment(compose("model=tiny-llama", "method=rtn", "method.group_size=32", "device=cuda", *TINY_EVAL))
    record = json.loads(outcome.path.read_text())
    assert outcome.status == "ok", record["error"]
    assert record["compression"]["peak_gpu_bytes"] > 0 and record["compression"]["stages"][0]["peak_gpu_bytes"] > 0
    assert all(v > 0 for v in record["evaluator_peak_gpu_bytes"].values())
    gpu = record["environment"]["gpu"]
    assert gpu["name"] and gpu["cuda_runtime"] and gpu["memory_bytes"] > 0


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "smoothquant", "wanda", "sparsegpt", "svd_llm", "flap"])
def test_methods_run_on_cuda(compose, method):
    """A sample of the registry on CUDA (gpu_check.sh runs every registered method)."""
    outcome = run_experiment(compose("model=tiny-llama", f"method={method}", "device=cuda", "calib.nsamples=4", "calib.seqlen=64", *TINY_EVAL))
    assert outcome.status == "ok", outcome.record.error


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", ["wanda", "gptq", "sparsegpt"])
def test_offload_compresses_like_the_model_on_the_device(compose, method):
    """offload=true: weights in CPU memory, one block at a time on the GPU; same result as the model on the GPU."""
    args = ("model=tiny-llama", f"method={method}", "device=cuda", "calib.nsamples=4", "calib.seqlen=64", "force=true", *TINY_EVAL)
    on_device, offloaded = run_experiment(compose(*args)), run_experiment(compose(*args, "offload=true"))
    assert on_device.status == offloaded.status == "ok", offloaded.record.error
    ppl = [o.record.metric("perplexity", "perplexity") for o in (on_device, offloaded)]
    assert ppl[1] == pytest.approx(ppl[0], rel=1e-4)
    assert any("offload=true" in n for n in offloaded.record.compression.notes)
    assert offloaded.record.compression.peak_gpu_bytes < on_device.record.compression.peak_gpu_bytes


def test_gpu_check_without_cuda_exits_cleanly(tmp_path):
    """benchmarks/gpu_check.sh on a machine without CUDA: a message, exit 0, nothing written."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: gpu_check.sh would measure")
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "OUT": str(tmp_path / "gpu")}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], capture_output=True, text=True, env=env, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout and not (tmp_path / "gpu").exists()


@pytest.mark.parametrize("part", ["kernels", "decode"])
def test_gpu_check_parts_run_dry_on_cpu(tmp_path, part):
    """The Python parts of the GPU check run their CPU-testable pieces (tiny shapes, CPU)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", part, "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, cwd=str(root), env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / f"{part}.json").read_text())
    if part == "kernels":
        ok = [d for d in data if d["status"] == "ok"]
        assert {d["kernel"] for d in ok} >= {"cuBLAS bf16"} and all(d["rel_err"] < 2e-2 for d in ok)
    else:
        assert data["int4 g128"]["layouts"] and data["int4 g128"]["tokens_per_s"] > 0


def test_gpu_check_methods_part_covers_the_registry(tmp_path):
    """The methods part of the GPU check runs every registered method in float32, bfloat16 and
    float16 and on tiny-moe, the diffusion-capable ones on tiny-dit, every pipeline preset, and
    says why an evaluator row cannot run (no data dir); the dry run keeps one case per group."""
    from pathlib import Path

    from benchmarks.gpu_check import dry_cases, method_cases
    from slimbench.methods import METHODS

    cases = method_cases(None, tmp_path)
    by_group: dict[str, set] = {}
    for case in cases:
        by_group.setdefault(case.group, set()).add(case.label)
    names = set(METHODS.names())
    assert by_group["float32"] == by_group["bfloat16"] == by_group["float16"] == names
    lm_methods = {n for n in names if "causal_lm" in METHODS.get(n).kinds}
    assert by_group["tiny-moe (sparse MoE)"] == lm_methods - {"flap", "numerical_pruning"}  # structured pruning refuses MoE
    assert by_group["tiny-dit (diffusion)"] == {n for n in names if "diffusion" in METHODS.get(n).kinds} >= {"dense", "magnitude", "svd"}
    pipelines = {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "pipeline").glob("*.yaml")}
    assert by_group["pipeline"] == pipelines and by_group["save + reload"] <= names and by_group["evaluator"] == {"zeroshot-quick", "fid-quick"}
    assert all(c.skip.startswith("n/a: no data dir") for c in cases if c.group == "evaluator")
    assert [c.group for c in cases].index("bfloat16") < [c.group for c in cases].index("tiny-moe (sparse MoE)")  # most important first
    dry = dry_cases(cases)
    assert [c.group for c in dry] == list(dict.fromkeys(c.group for c in cases)) and dry[0].label == "rtn"
