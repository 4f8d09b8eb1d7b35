"""Triton W4A16 / W8A16 dequant-GEMM kernels, run on CPU by the Triton interpreter.

Triton decides between its compiler and its interpreter when ``triton`` is first imported,
so ``TRITON_INTERPRET=1`` is set before that; if another test already imported Triton, the
check runs in a subprocess with the variable set.
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

CASES = [(4, 32, 96), (4, -1, 80), (8, 64, 96), (4, 48, 100)]


def check(bits, group, k):
    from slimbench.kernels import triton_gemm

    g = torch.Generator().manual_seed(1)
    n, groups = 40, num_groups(k, group)
    codes = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(n, groups, generator=g) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g).float()
    mod = QuantLinear.from_codes(codes, scales, zeros, bits, group, layout="triton")
    assert mod.execution_path == ("int4-kernel" if bits == 4 else "int8-kernel")
    x = torch.randn(5, k, generator=g)
    torch.testing.assert_close(mod(x), x @ mod.dequantize().t(), rtol=1e-5, atol=1e-5)  # module path
    y = triton_gemm.dequant_matmul(x, mod.qweight, mod.scales, mod.zeros.float(), bits, k, group, block_m=16, block_n=16, block_k=16)
    torch.testing.assert_close(y, x @ mod.dequantize().t(), rtol=1e-5, atol=1e-5)  # other tile sizes


@pytest.mark.parametrize("bits,group,k", CASES)
def test_triton_dequant_gemm_matches_reference(bits, group, k):
    if _IN_PROCESS:
        check(bits, group, k)
        return
    code = f"from tests.test_triton_kernels import check; check({bits}, {group}, {k})"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
