"""Packed integer formats and the CPU kernels of ``QuantLinear`` against dequantized references."""

import pytest
import torch

from slimbench.kernels import packing
from slimbench.kernels.qlinear import QuantLinear, choose_layout, int4_cpu_kernel_group, num_groups
from slimbench.methods.quant.common import rtn


def _random_quant(n, k, bits, group, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = num_groups(k, group)
    codes = torch.randint(0, 2**bits, (n, k), generator=g)
    scales = torch.rand(n, groups, generator=g) * 0.02 + 0.001
    zeros = torch.randint(0, 2**bits, (n, groups), generator=g).float()
    return codes, scales, zeros


def _sqnr_db(ref, out):
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("k", [64, 37])  # K % 8 == 0 reads whole words; other K, the bit stream
def test_pack_unpack_round_trip(bits, k):
    codes = torch.randint(0, 2**bits, (5, k))
    packed = packing.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (k * bits + 7) // 8)
    assert torch.equal(packing.unpack_bits(packed, bits, k), codes.int())


def test_3bit_stream_is_little_endian_lsb_first():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]])
    word = sum(c << (3 * j) for j, c in enumerate(codes[0].tolist()))  # 0x1F58D1
    assert packing.pack_bits(codes, 3).tolist() == [[word & 255, (word >> 8) & 255, word >> 16]]
    assert packing.unpack_bits(torch.tensor([[0xD1, 0x58, 0x1F]], dtype=torch.uint8), 3, 8).tolist() == codes.tolist()


def test_int4_nibble_order_is_low_nibble_first():
    packed = packing.pack_bits(torch.tensor([[3, 10]]), 4)
    assert packed.tolist() == [[3 + (10 << 4)]]


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        packing.pack_bits(torch.tensor([[16]]), 4)


def test_int4_cpu_layout_round_trip():
    codes = torch.randint(0, 16, (48, 192))
    packed = packing.to_int4pack_cpu(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 48 * 192 // 2  # two codes per byte
    assert torch.equal(packing.from_int4pack_cpu(packed, 48, 192), codes.int())


def test_layout_choice_follows_kernel_constraints():
    cpu = torch.device("cpu")
    assert choose_layout(8, 64, 576, -1, cpu) == "int8"
    assert choose_layout(8, 64, 576, 128, cpu) == "packed"  # the int8 kernel is per-channel only
    assert choose_layout(4, 64, 576, 64, cpu) == "int4-cpu"
    assert choose_layout(4, 40, 576, 64, cpu) == "packed"  # N % 16 != 0
    assert choose_layout(3, 64, 576, 128, cpu) == "packed"
    assert int4_cpu_kernel_group(576, 128) == 64  # K=576 g128: groups repeated over kernel groups of 64
    assert int4_cpu_kernel_group(576, -1) == 64
    assert int4_cpu_kernel_group(1536, 128) == 128
    assert int4_cpu_kernel_group(96, 48) is None


@pytest.mark.parametrize(
    "bits,group,k,layout",
    [(4, 64, 192, "int4-cpu"), (4, 128, 192, "int4-cpu"), (4, -1, 192, "int4-cpu"), (8, -1, 192, "int8"), (3, 64, 192, "packed"), (8, 64, 100, "packed"), (2, 32, 96, "packed")],
)
def test_kernel_matches_dequantized_reference(bits, group, k, layout):
    n = 48
    codes, scales, zeros = _random_quant(n, k, bits, group)
    bias = torch.randn(n)
    mod = QuantLinear.from_codes(codes, scales, zeros, bits, group, bias=bias)
    assert mod.layout == layout
    assert torch.equal(mod.codes(), codes.int())
    x = torch.randn(2, 5, k)
    y = mod(x)
    assert y.shape == (2, 5, n) and y.dtype == torch.float32
    w = mod.dequantize()
    if layout == "packed":  # simulated: exactly the float computation
        torch.testing.assert_close(y, x @ w.t() + bias)
        # and the dequantized weights are s·(q − z) with the given (unrounded) scales
        s = scales.repeat_interleave(k if group < 0 else group, 1)[:, :k]
        z = zeros.repeat_interleave(k if group < 0 else group, 1)[:, :k]
        torch.testing.assert_close(w, s * (codes.float() - z))
    else:  # kernels: bf16 activations and scales
        xb = x.to(torch.bfloat16).float()
        assert _sqnr_db(xb @ w.t() + bias, y) > 45
        s = scales.to(torch.bfloat16).float().repeat_interleave(k if group < 0 else group, 1)[:, :k]
        z = zeros.repeat_interleave(k if group < 0 else group, 1)[:, :k]
        assert _sqnr_db(s * (codes.float() - z), w) > 40  # bf16 rounding of the folded zero point only


def test_storage_is_what_the_module_holds():
    codes, scales, zeros = _random_quant(64, 256, 4, 64)
    mod = QuantLinear.from_codes(codes, scales, zeros, 4, 64)
    params, nbytes = mod.storage_stats()
    assert params == 64 * 256
    assert nbytes == sum(t.numel() * t.element_size() for t in mod.state_dict().values())
    assert nbytes == 64 * 256 // 2 + (256 // 64) * 64 * 2 * 2  # nibbles + bf16 scale and zero per group
    sim = QuantLinear.from_codes(*_random_quant(64, 256, 3, 64), 3, 64)
    assert sim.execution_path == "simulated"
    assert sim.storage_stats()[1] == 64 * 96 + 64 * 4 * 4 + 64 * 4  # 3-bit stream, fp32 scales, uint8 zeros


def test_w8a8_int_mm_matches_float():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(32, 64, generator=g), torch.randn(7, 64, generator=g)
    mod = QuantLinear.w8a8_from_float(w)
    assert mod.execution_path == "int8-kernel" and mod.qweight.dtype == torch.int8
    # reference: fake-quantized weights and per-token fake-quantized activations
    ws = w.abs().amax(1, keepdim=True) / 127
    xs = x.abs().amax(1, keepdim=True) / 127
    ref = (torch.round(x / xs) * xs) @ (torch.round(w / ws) * ws).t()
    torch.testing.assert_close(mod(x), ref, rtol=1e-4, atol=1e-4)
    assert _sqnr_db(x @ w.t(), mod(x)) > 30


@pytest.mark.parametrize("bits,group", [(4, 64), (8, -1), (3, 32)])
def test_export_reload_is_identical(bits, group):
    codes, scales, zeros = _random_quant(32, 128, bits, group)
    mod = QuantLinear.from_codes(codes, scales, zeros, bits, group, bias=torch.randn(32))
    meta, tensors = mod.export()
    again = QuantLinear.from_export(meta, {k: v.clone() for k, v in tensors.items()})
    x = torch.randn(3, 128)
    assert again.layout == mod.layout and torch.equal(again(x), mod(x))


def test_non_integer_zero_points_are_rejected():
    codes, scales, zeros = _random_quant(16, 64, 3, 32)
    with pytest.raises(ValueError):
        QuantLinear.from_codes(codes, scales, zeros + 0.5, 3, 32)


@pytest.mark.parametrize("k", [25, 40, 48])
def test_int8_kernel_is_only_chosen_where_it_computes_correctly(k):
    """torch's CPU int8 weight-only kernel is wrong for K % 16 != 0 (and crashes for odd K): the
    layout pads K with zero columns, and the output matches the dequantized weight for any K."""
    torch.manual_seed(0)
    w = torch.randn(32, k)
    q = rtn(w, 8, -1, sym=False)
    layer = QuantLinear.from_codes(q.codes, q.scales, q.zeros, 8, -1)
    assert layer.layout == "int8" and layer.qweight.shape[1] % 16 == 0 and torch.equal(layer.codes(), q.codes)
    x = torch.randn(5, k)
    ref = x @ layer.dequantize().t()
    assert float((layer(x) - ref).abs().max() / ref.abs().max()) < 1e-2  # bfloat16 activations


@pytest.mark.parametrize("bits,group,n,k", [(4, 64, 80, 192), (4, 128, 64, 576), (4, -1, 48, 192), (8, -1, 32, 25), (8, -1, 40, 96)])
def test_prefill_path_matches_the_kernel(bits, group, n, k):
    """From CPU_PREFILL_ROWS rows on, the int4/int8 layouts dequantize to bf16 and run a bf16
    GEMM: the same weights as the kernel (N with a 16-row tail block, K padded for int8)."""
    codes, scales, zeros = _random_quant(n, k, bits, group)
    mod = QuantLinear.from_codes(codes, scales, zeros, bits, group, bias=torch.randn(n))
    assert mod.layout == ("int4-cpu" if bits == 4 else "int8") and mod.prefill_rows >= 2
    info = mod.kernel_info()
    assert info["prefill_rows"] == mod.prefill_rows and "bf16 GEMM" in info["prefill"] and info["decode"].startswith("aten.")
    x = torch.randn(mod.prefill_rows + 3, k)
    ref = x.to(torch.bfloat16).float() @ mod.dequantize().t() + mod.bias
    prefill = mod(x)
    mod.prefill_rows = None  # the kernel for every size
    kernel = mod(x)
    assert _sqnr_db(ref, prefill) > 40 and _sqnr_db(ref, kernel) > 40
    assert _sqnr_db(kernel, prefill) > 40


def test_prefill_dequantization_reads_the_pack_layout_without_a_gather():
    """unpack_int4pack_cpu_t reads torch's blocked pack layout (64-row blocks, then a tail
    block) through strided views; it agrees with the permutation found by index probing."""
    for n, k in [(16, 64), (80, 64), (128, 96), (1536, 64)]:
        codes = torch.randint(0, 16, (n, k))
        packed = packing.to_int4pack_cpu(codes)
        assert packing.int4pack_cpu_is_blocked(n)
        assert torch.equal(packing.unpack_int4pack_cpu_t(packed, n, k).t().int(), codes.int())
        source = packing._int4pack_cpu_source(n, k)
        probed = torch.empty(n * k, dtype=torch.int32)
        probed[source] = packing._nibbles(packed)
        assert torch.equal(probed.reshape(n, k), codes.int())


def test_quantized_layer_reports_name_both_paths():
    from slimbench.methods.quant.common import layer_report, rtn, summarize

    q = rtn(torch.randn(64, 128), 4, 64, sym=False)
    mod = QuantLinear.from_codes(q.codes, q.scales, q.zeros, 4, 64)
    report = layer_report("blocks.0.up", "up", q, mod)
    assert report.path == "int4-kernel" and report.extra["prefill_rows"] == mod.prefill_rows
    path, _, notes = summarize([report])
    assert path == "int4-kernel" and any(f"{mod.prefill_rows} rows or more" in n for n in notes)
