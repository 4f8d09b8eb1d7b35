"""The FID Inception-v3 network, offline: random weights of the same architecture."""

import pytest
import torch

from slimbench.errors import ConfigError
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.features.inception import FIDInceptionV3, InceptionFeatures, to_inception_input
from slimbench.evaluation.fid import feature_stats, frechet_distance

CTX = EvalContext(data_dir=None, device="cpu", seed=0, threads=1)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    for module in net.modules():  # non-trivial batch-norm statistics, as trained weights have
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return net


def test_architecture_is_inception_v3_without_aux_and_classifier(network):
    # torchvision's inception_v3 has 27,161,264 parameters; minus AuxLogits (3,326,696) and the
    # 1000-way fc (2,049,000) leaves the feature network: 21,785,568
    assert sum(p.numel() for p in network.parameters()) == 21_785_568
    names = network.state_dict()
    assert names["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert names["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert names["Conv2d_1a_3x3.bn.running_var"].shape == (32,)
    assert network.Conv2d_1a_3x3.bn.eps == 0.001


@pytest.mark.slow
def test_features_are_2048_d_deterministic_and_fid_of_a_set_with_itself_is_zero(network):
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = to_inception_input(images)
    assert x.shape == (3, 3, 299, 299) and torch.equal(x[:, 0], x[:, 2])
    with torch.no_grad():
        a, b = network(x), network(x)
    assert a.shape == (3, 2048) and torch.equal(a, b) and torch.isfinite(a).all()
    stats = feature_stats(a.double())
    assert abs(frechet_distance(stats, stats)) < 1e-9 * stats.cov.trace()


def test_the_three_fid_pooling_differences():
    x = torch.rand(1, 1, 5, 5)
    from slimbench.evaluation.features.inception import _avg_pool_no_pad

    corner = _avg_pool_no_pad(x)[0, 0, 0, 0]
    assert corner == pytest.approx(x[0, 0, :2, :2].mean().item())  # padding zeros not averaged
    net = FIDInceptionV3()
    assert net.Mixed_7b.pool is _avg_pool_no_pad and net.Mixed_7c.pool.__name__ == "_max_pool_same"


def test_weights_file_round_trip_and_bad_files(network, tmp_path):
    state = {**network.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as in the TF port
    path = tmp_path / "pt_inception-random.pth"
    torch.save(state, path)
    extractor = InceptionFeatures(weights=str(path))
    fingerprint = extractor.check(CTX)["fid_inception_weights"]
    assert len(fingerprint["sha256"]) == 64
    extractor.prepare(None, {}, CTX)
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = network(to_inception_input(images)).double()
    features = extractor.features(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float64
    torch.testing.assert_close(features, expected, rtol=0, atol=0)  # same weights, same features
    assert extractor.fingerprint()["standard_weights"] is False

    del state["Mixed_6b.branch1x1.conv.weight"]
    torch.save(state, path)
    broken = InceptionFeatures(weights=str(path))
    with pytest.raises(ConfigError, match="not an FID Inception weights file: 1 tensors missing"):
        broken.prepare(None, {}, CTX)
