"""cuda_select's per-shape choice, on CPU with a fake timer (the real timings need a GPU:
tests/test_gpu.py and benchmarks/gpu_check.sh)."""

import torch

from slimbench.kernels import cuda_select
from slimbench.kernels.qlinear import QuantLinear, cuda_candidates


def test_fastest_correct_layout_is_chosen_and_recorded():
    called: list[str] = []
    fake_us = {"packed": 50.0, "int8": 10.0, "w-wrong": 1.0}

    def make(codes, scales, zeros, layout):
        layer = QuantLinear.from_codes(codes, scales, zeros, 8, -1, layout="int8" if layout == "w-wrong" else layout)
        layer.register_forward_pre_hook(lambda mod, args: called.append(layout))
        if layout == "w-wrong":  # a kernel that computes the wrong thing must never be chosen
            layer.register_forward_hook(lambda mod, args, out: out * 1.5)
        return layer

    def timer(fn):
        fn()
        return fake_us[called[-1]]

    candidates = {"packed": None, "int8": None, "w-wrong": None, "int4-cuda": "4-bit only"}
    choice = cuda_select._measure(8, 32, 64, -1, torch.device("cpu"), candidates, make, timer=timer)
    assert choice.layout == "int8"
    assert set(choice.timings_us) == {"packed", "int8"} and set(choice.timings_us["int8"]) == set(cuda_select.ROWS)
    assert choice.rejected["int4-cuda"] == "4-bit only" and choice.rejected["w-wrong"].startswith("relative error")
    record = choice.to_dict()  # what the layer reports carry
    assert record["layout"] == "int8" and record["timings_us"]["int8"]["1"] == 10.0 and "w-wrong" in record["rejected"]


def test_a_failing_candidate_is_rejected_with_its_error():
    def make(codes, scales, zeros, layout):
        if layout == "int8":
            raise RuntimeError("no kernel image is available for execution on the device")
        return QuantLinear.from_codes(codes, scales, zeros, 8, -1, layout=layout)

    choice = cuda_select._measure(8, 16, 32, -1, torch.device("cpu"), {"packed": None, "int8": None}, make, timer=lambda fn: (fn(), 1.0)[1])
    assert choice.layout == "packed" and "no kernel image" in choice.rejected["int8"]


def test_triton_prefill_path_choice_per_bucket():
    choice = cuda_select.Choice("triton", prefill={1024: "triton", 1 << 30: "cublas"})
    assert choice.prefill_path(17) == "triton" and choice.prefill_path(1024) == "triton" and choice.prefill_path(2048) == "cublas"


def test_candidates_follow_the_kernels_constraints():
    assert cuda_candidates(4, 4096, 4096, 128) == {"triton": None, "int4-cuda": None, "int8": "8-bit per-row only"}
    c = cuda_candidates(8, 11008, 4096, -1)
    assert c["triton"] is None and c["int8"] is None and c["int4-cuda"]
    assert cuda_candidates(4, 576, 576, 64)["int4-cuda"] is None
    assert cuda_candidates(4, 20, 100, 48)["triton"] and cuda_candidates(4, 20, 100, 48)["int4-cuda"]
