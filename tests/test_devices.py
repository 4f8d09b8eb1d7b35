"""Device consistency of every method, without a GPU.

While a method runs, the default device is set to ``meta``: a tensor created without the device
of the data it belongs to (``torch.zeros(n)`` instead of ``torch.zeros(n, device=w.device)``)
becomes a meta tensor, and the first operation combining it with the model's tensors fails.
That is the class of bug that made 7 of 20 methods fail on CUDA ("Expected all tensors to be on
the same device, ... cuda:0 and cpu"); before the fixes that came with this test it failed for
sparsegpt, awq, flap, numerical_pruning, fwsvd, svd_llm, smoothquant, asvd, gptq,
mixed_precision and rtn. Tensors that belong on the host (results, inputs drawn from a CPU
generator) say ``device="cpu"`` explicitly.
"""

import pytest
import torch

from slimbench.run import compress
from tests.test_methods_contract import CONTRACT, _calibration, _method_from_preset


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_methods_create_tensors_on_the_device_of_their_data(name, tiny_bundle, text_dir):
    contract = CONTRACT[name]
    cls, method = _method_from_preset(name, contract.overrides)
    bundle = tiny_bundle(contract.model)
    calib = _calibration(bundle, text_dir) if cls.requires_calibration else None
    torch.set_default_device("meta")
    try:
        report = compress(method, bundle, calib)
    finally:
        torch.set_default_device(None)
    assert all(t.device.type == "cpu" for t in bundle.model.state_dict().values())
    assert report.params_after > 0


def test_the_check_catches_a_tensor_created_without_a_device():
    w = torch.randn(4, 4)
    torch.set_default_device("meta")
    try:
        with pytest.raises((RuntimeError, NotImplementedError)):
            (w + torch.zeros(4)).sum().item()  # what sparsegpt's loss accumulator did
        (w + torch.zeros(4, device=w.device)).sum().item()
    finally:
        torch.set_default_device(None)
