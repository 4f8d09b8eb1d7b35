"""Triton W4A16 / W8A16 kernels (decode split-K GEMV, prefill tensor-core tiles, dequantize),
run on CPU by the Triton interpreter, against ``x @ dequantize().T``.

Triton decides between its compiler and its interpreter when ``triton`` is first imported,
so ``TRITON_INTERPRET=1`` is set before that; if another test already imported Triton, each
check runs in a subprocess with the variable set. The interpreter cannot autotune: the checks
launch the kernels with every config of the autotuning sets that fits the format.
"""

import os
import subprocess
import sys

import pytest

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
_IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1"

pytest.importorskip("triton")
import torch  # noqa: E402

from slimbench.kernels.qlinear import QuantLinear, num_groups  # noqa: E402

# (bits, group, N, K): groups 32/64/128/per row, a last partial group (K=301, g128), odd K and odd N
FORMATS = [(4, 32, 40, 96), (4, 64, 33, 200), (4, 128, 17, 301), (4, -1, 24, 81),
           (8, 32, 40, 96), (8, 64, 19, 130), (8, 128, 48, 257), (8, -1, 33, 75)]


def _layer(bits, group, n, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    groups = num_groups(k, group)
    codes = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(n, groups, generator=g) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g).float()
    return QuantLinear.from_codes(codes, scales, zeros, bits, group, layout="triton"), g


def _close(got, want, tol=1e-5):
    err = float((got.float() - want).abs().max() / want.abs().max())
    assert err < tol, f"relative error {err:.3g}"


def check_module(bits, group, n, k):
    """The layer's forward (decode kernel for M ≤ 16, prefill kernel above) and dequantize kernel."""
    from slimbench.kernels import triton_gemm

    mod, g = _layer(bits, group, n, k)
    assert mod.execution_path == ("int4-kernel" if bits == 4 else "int8-kernel")
    w = mod.dequantize()
    for m in (1, 5, 16, 33):
        x = torch.randn(m, k, generator=g)
        _close(mod(x), x @ w.t())
    torch.testing.assert_close(triton_gemm.dequantize(mod.qweight, mod.scales, mod.zeros, bits, k, group), w)


def check_configs(bits, group, n, k):
    """Every autotuning config that fits the format, decode (M = 1, 3, 16) and prefill (M = 17, 40)."""
    from slimbench.kernels import triton_gemm

    mod, g = _layer(bits, group, n, k)
    w, args = mod.dequantize(), (mod.qweight, mod.scales, mod.zeros, bits, k, group)
    tried = 0
    for config in triton_gemm.DECODE_CONFIGS:
        if triton_gemm.tile_fits(config.kwargs["BLOCK_K"], k, group):
            for m in (1, 3, 16):
                x = torch.randn(m, k, generator=g)
                _close(triton_gemm.decode_matmul(x, *args, config=dict(config.kwargs)), x @ w.t())
                tried += 1
    for config in triton_gemm.PREFILL_CONFIGS:
        if triton_gemm.tile_fits(config.kwargs["BLOCK_K"], k, group):
            for m in (17, 40):
                x = torch.randn(m, k, generator=g)
                _close(triton_gemm.prefill_matmul(x, *args, config=dict(config.kwargs)), x @ w.t())
                tried += 1
    assert tried >= 6


def check_half(bits, group, n, k):
    """Half-precision activations (what GPUs run): the dot in the activations' dtype, fp32
    accumulation. fp16 here: the interpreter's bf16 ``tl.dot`` returns garbage (Triton 3.9);
    bf16 runs in the ``gpu`` tests."""
    mod, g = _layer(bits, group, n, k)
    w = mod.dequantize()
    for m in (1, 16, 40):
        x = torch.randn(m, k, generator=g).to(torch.float16)
        _close(mod(x), x.float() @ w.t(), tol=2e-3)


def _run(check: str, *args):
    if _IN_PROCESS:
        globals()[check](*args)
        return
    code = f"from tests.test_triton_kernels import {check}; {check}{args}"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("bits,group,n,k", FORMATS)
def test_triton_layer_matches_reference(bits, group, n, k):
    _run("check_module", bits, group, n, k)


@pytest.mark.parametrize("bits,group,n,k", [(4, 64, 33, 200), (8, -1, 33, 75)])
def test_every_autotune_config_is_correct(bits, group, n, k):
    _run("check_configs", bits, group, n, k)


@pytest.mark.slow
@pytest.mark.parametrize("bits,group,n,k", [f for f in FORMATS if f not in [(4, 64, 33, 200), (8, -1, 33, 75)]])
def test_every_autotune_config_is_correct_all_formats(bits, group, n, k):
    _run("check_configs", bits, group, n, k)


@pytest.mark.parametrize("bits,group,n,k", [(4, 64, 32, 128), (8, 32, 24, 96)])
def test_half_precision_activations(bits, group, n, k):
    _run("check_half", bits, group, n, k)


def test_formats_without_a_fitting_tile_are_not_triton():
    from slimbench.kernels import triton_gemm

    assert triton_gemm.supports(4, 576, 64) and triton_gemm.supports(4, 576, -1) and triton_gemm.supports(8, 100, 96)
    assert not triton_gemm.supports(4, 100, 48)  # 48-column groups: no 32-multiple K tile fits
    assert not triton_gemm.supports(3, 128, 32)
    # the autotuner's pruning keeps only group-fitting tiles and relies on tl.dot's 16-wide 4-bit half tiles
    assert all(c.kwargs["BLOCK_K"] >= 32 for c in triton_gemm.DECODE_CONFIGS + triton_gemm.PREFILL_CONFIGS)
