"""``inception``: the standard FID features, pool3 (2048-d) of the FID Inception-v3 network.

The network is the Inception-v3 graph of TensorFlow's 2015-12-05 release that TF FID and
pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``) use, written here without torchvision:
the usual Inception-v3 stem and Mixed_5b..Mixed_7c blocks (conv without bias, batch norm with
ε = 0.001, ReLU), with the three FID differences from torchvision's Inception-v3:

  * the 3×3 average pools of the A, C and E blocks exclude the zero padding from the average
    (TensorFlow's pooling);
  * the last E block (Mixed_7c) pools its branch with a 3×3 *max* pool instead;
  * features are the global average pool of Mixed_7c (2048-d); the 1008-way classifier of the
    weights file is not used.

Input as pytorch-fid: images in [-1, 1] (grayscale repeated to 3 channels) resized to 299×299
by bilinear interpolation (``align_corners=False``); pytorch-fid resizes images in [0, 1] then
maps them to [-1, 1], which is the same linear operation.

The weights file is the user's (config ``weights: /path``; nothing is downloaded). It is read
with ``torch.load(weights_only=True)``; its sha256 is in the fingerprint, and
``standard_weights`` says whether it is the pytorch-fid file (sha256 prefix ``6726825d``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.errors import ConfigError
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.features.registry import FEATURES

log = logging.getLogger(__name__)

STANDARD_SHA256_PREFIX = "6726825d"  # pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID weights)
FEATURE_DIM = 2048


class ConvBN(nn.Module):
    """conv (no bias) -> batch norm (ε = 1e-3) -> ReLU; named ``conv``/``bn`` as in the weights."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


class MixedA(nn.Module):  # 35×35: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | pool→1×1
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = ConvBN(cin, 48, 1), ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_no_pad(x)),
            ],
            dim=1,
        )


class ReductionB(nn.Module):  # 35×35 -> 17×17: 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, 3, stride=2)], dim=1)


class MixedC(nn.Module):  # 17×17 with factorised 7×7 convolutions
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding)
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        single = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = conv(double)
        return torch.cat([self.branch1x1(x), single, double, self.branch_pool(_avg_pool_no_pad(x))], dim=1)


class ReductionD(nn.Module):  # 17×17 -> 8×8
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = ConvBN(cin, 192, 1), ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            deep = conv(deep)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), deep, F.max_pool2d(x, 3, stride=2)], dim=1)


class MixedE(nn.Module):  # 8×8 with split 1×3 / 3×1 outputs; ``pool``: the branch_pool's pooling
    def __init__(self, cin: int, pool) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b),
                self.branch3x3dbl_3b(b),
                self.branch_pool(self.pool(x)),
            ],
            dim=1,
        )


class FIDInceptionV3(nn.Module):
    """Images [B, 3, 299, 299] in [-1, 1] -> pool3 features [B, 2048]."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)  # 149
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)  # 147
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)  # 147, then maxpool -> 73
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)  # 71, then maxpool -> 35
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = MixedA(192, 32), MixedA(256, 64), MixedA(288, 64)
        self.Mixed_6a = ReductionB(288)  # -> 17
        self.Mixed_6b, self.Mixed_6c = MixedC(768, 128), MixedC(768, 160)
        self.Mixed_6d, self.Mixed_6e = MixedC(768, 160), MixedC(768, 192)
        self.Mixed_7a = ReductionD(768)  # -> 8
        self.Mixed_7b, self.Mixed_7c = MixedE(1280, _avg_pool_no_pad), MixedE(2048, _max_pool_same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)  # [B, 64, 73, 73]
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)  # [B, 192, 35, 35]
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # [B, 2048]


def to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] (C = 1 or 3) -> [B, 3, 299, 299]."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)


def load_fid_weights(model: FIDInceptionV3, path: Path) -> None:
    """Load a pytorch-fid weights file: every feature tensor must be there; fc.* is not used."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"{path} is not an FID Inception weights file: {len(missing)} tensors missing (e.g. {missing[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )


@FEATURES.register("inception")
class InceptionFeatures:
    name = "inception"

    def __init__(self, weights: str | None = None) -> None:
        if not weights:
            raise ConfigError(
                "the inception extractor needs weights: /path/to/pt_inception-2015-12-05-6726825d.pth "
                "(pytorch-fid's FID Inception weights; not downloaded by slimbench)"
            )
        self.path = Path(weights).expanduser()
        self.model: FIDInceptionV3 | None = None
        self.sha256: str | None = None

    def check(self, ctx: EvalContext) -> dict:
        if not self.path.is_file():
            raise ConfigError(f"inception weights file {str(self.path)!r} does not exist")
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return {"fid_inception_weights": {"path": str(self.path), "sha256": self.sha256}}

    def prepare(self, data, data_fingerprint: dict, ctx: EvalContext) -> None:
        if self.sha256 is None:
            self.check(ctx)
        if not self.sha256.startswith(STANDARD_SHA256_PREFIX):
            log.warning("%s is not pytorch-fid's FID Inception file (sha256 %s...)", self.path, self.sha256[:8])
        self.model = FIDInceptionV3()
        load_fid_weights(self.model, self.path)
        self.model.eval().to(ctx.device)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
        device = next(self.model.parameters()).device
        chunks = [self.model(to_inception_input(images[i : i + batch_size].to(device))).cpu()
                  for i in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks).double()  # [N, 2048]

    def fingerprint(self) -> dict:
        return {
            "name": self.name,
            "feature_dim": FEATURE_DIM,
            "weights_sha256": self.sha256,
            "standard_weights": bool(self.sha256 and self.sha256.startswith(STANDARD_SHA256_PREFIX)),
            "input": "[-1,1], gray->3ch, bilinear resize to 299 (align_corners=False)",
        }

    def report(self) -> dict:
        return {"weights": str(self.path)}
