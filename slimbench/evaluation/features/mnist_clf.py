"""``mnist_clf``: features of a small MNIST classifier that slimbench trains once and caches.

Offline there is no standard MNIST feature network (and only the 10,000 test images), so the
extractor is a classifier trained by slimbench, labelled as such in the metric name
(``fid_mnist_clf``) and never comparable with Inception FIDs:

  * data: the fixed training half of the MNIST test set (``slimbench.data.mnist``); the other
    half is held out for the FID reference statistics and for the accuracy reported here;
  * network: conv3x3(1→32)-ReLU-maxpool2, conv3x3(32→64)-ReLU-maxpool2,
    linear(3136→128)-ReLU (the **features**, the penultimate layer), linear(128→10);
  * recipe (``ClassifierRecipe``): Adam, cross-entropy, random translations of up to
    ``max_shift`` pixels (zero padded), seeded shuffling, a fixed number of epochs.

Cache: ``<cache_dir>/fid/mnist_clf-<key>.safetensors`` plus a JSON sidecar, where the key is the
sha256 of (data sha256, recipe, architecture version). The weights are safetensors (no pickle);
the sidecar holds the file's sha256, which is verified before every load: a file that does not
match is not used, the classifier is trained again and the cache rewritten. The features are
identified by the sha256 of the weights themselves (in the protocol fingerprint), with or
without a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from slimbench.data.mnist import MnistHalves
from slimbench.errors import ConfigError
from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.features.registry import FEATURES

log = logging.getLogger(__name__)

ARCHITECTURE = "mnist_clf/1: conv3x3(1-32) relu maxpool2, conv3x3(32-64) relu maxpool2, fc(3136-128) relu [features], fc(128-10)"
FEATURE_DIM = 128


@dataclass(frozen=True)
class ClassifierRecipe:
    seed: int = 0
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = 2  # random translation augmentation, pixels

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"classifier {key} must be >= 1, got {getattr(self, key)}")
        if self.max_shift < 0 or self.lr <= 0:
            raise ConfigError(f"classifier needs max_shift >= 0 and lr > 0, got {self.max_shift}, {self.lr}")


class MnistClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 1, 28, 28] in [-1, 1]
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # [B, 32, 14, 14]
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # [B, 64, 7, 7]
        return F.relu(self.fc1(h.flatten(1)))  # [B, 128]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))  # [B, 10] logits


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by (dy, dx) ∈ [-max_shift, max_shift]², zero (= -1) padded."""
    if max_shift == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)  # [B, 1, H+2s, W+2s]
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (b,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # [B, 1, W]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)  # [B, 1, H, W]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, recipe: ClassifierRecipe) -> MnistClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = MnistClassifier()
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(images.shape[0], generator=generator)
        for start in range(0, order.numel(), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            x = random_shift(images[idx], recipe.max_shift, generator)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    predictions = torch.cat([model(images[i : i + 1000]).argmax(-1) for i in range(0, images.shape[0], 1000)])
    return (predictions == labels).float().mean().item()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the state dict's names, shapes and bytes (identifies the features)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


@FEATURES.register("mnist_clf")
class MnistClassifierFeatures:
    name = "mnist_clf"
    recipe = ClassifierRecipe()

    def __init__(self, weights: str | None = None) -> None:
        if weights is not None:
            raise ConfigError("the mnist_clf extractor trains its own classifier; weights applies to inception only")
        self.model: MnistClassifier | None = None
        self.meta: dict = {}
        self.from_cache: str | None = None

    def check(self, ctx: EvalContext) -> dict:
        return {}

    def cache_key(self, data_fingerprint: dict) -> str:
        identity = {"architecture": ARCHITECTURE, "recipe": asdict(self.recipe), "data": data_fingerprint}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def prepare(self, data: MnistHalves, data_fingerprint: dict, ctx: EvalContext) -> None:
        key = self.cache_key({**data_fingerprint, "split_seed": data.split_seed})
        paths = _cache_paths(ctx.cache_dir, key)
        loaded = _load_cached(paths) if paths else None
        if loaded is not None:
            self.model, self.meta = loaded
            self.from_cache = str(paths[0])
            return
        start = time.perf_counter()
        self.model = train_classifier(data.train_images, data.train_labels, self.recipe)
        train_s = time.perf_counter() - start
        self.meta = {
            "cache_key": key,
            "architecture": ARCHITECTURE,
            "recipe": asdict(self.recipe),
            "data": data_fingerprint,
            "split_seed": data.split_seed,
            "train_images": int(data.train_images.shape[0]),
            "heldout_images": int(data.heldout_images.shape[0]),
            "heldout_accuracy": accuracy(self.model, data.heldout_images, data.heldout_labels),
            "train_accuracy": accuracy(self.model, data.train_images, data.train_labels),
            "train_time_s": round(train_s, 2),
            "torch": torch.__version__,
            "weights_sha256": weights_sha256(self.model),
        }
        if paths:
            _save(self.model, self.meta, paths)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        chunks = [self.model.features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks).double()  # [N, 128]

    def fingerprint(self) -> dict:
        keys = ("cache_key", "architecture", "recipe", "split_seed", "weights_sha256", "heldout_accuracy")
        return {"name": self.name, "feature_dim": FEATURE_DIM, **{k: self.meta.get(k) for k in keys}}

    def report(self) -> dict:
        keys = ("heldout_accuracy", "train_accuracy", "train_images", "heldout_images", "train_time_s", "torch")
        return {**{k: self.meta.get(k) for k in keys}, "loaded_from": self.from_cache or "trained in this run"}


# -- the cache ---------------------------------------------------------------------------------------
def _cache_paths(cache_dir: Path | None, key: str) -> tuple[Path, Path] | None:
    if cache_dir is None:
        return None
    stem = Path(cache_dir) / "fid" / f"mnist_clf-{key[:16]}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _load_cached(paths: tuple[Path, Path]) -> tuple[MnistClassifier, dict] | None:
    weights, sidecar = paths
    if not (weights.is_file() and sidecar.is_file()):
        return None
    meta = json.loads(sidecar.read_text())
    if meta.get("file_sha256") != _sha256(weights):
        log.warning("mnist_clf cache %s fails its sha256 check; training the classifier again", weights)
        return None
    model = MnistClassifier()
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), meta


def _save(model: MnistClassifier, meta: dict, paths: tuple[Path, Path]) -> None:
    """Write the weights, then the sidecar holding their file's sha256, each atomically."""
    weights, sidecar = paths
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata={"cache_key": meta["cache_key"]})
    file_sha = _sha256(tmp)
    os.replace(tmp, weights)
    tmp_meta = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps({**meta, "file_sha256": file_sha}, indent=1, sort_keys=True))
    os.replace(tmp_meta, sidecar)
