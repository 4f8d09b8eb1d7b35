"""MNIST test set (the original LeCun idx files, gzipped) and its fixed split into two halves.

Only the 10,000 test images are available offline (``<data_dir>/mnist/t10k-*-idx?-ubyte.gz``).
The FID protocol splits them once with a fixed seed: one half trains slimbench's MNIST
feature classifier, the other (held out) gives the reference statistics. Pixels are mapped
from uint8 to [-1, 1] (x/127.5 - 1), the range the MNIST DiT samples in.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slimbench.errors import DataUnavailableError

FILES = {"images": "mnist/t10k-images-idx3-ubyte.gz", "labels": "mnist/t10k-labels-idx1-ubyte.gz"}
_MAGIC = {"images": 2051, "labels": 2049}  # idx3 uint8 / idx1 uint8
SPLIT_SEED = 0


@dataclass(frozen=True)
class MnistRef:
    """The resolved test files and their sha256 (checked before any weights load)."""

    images: Path
    labels: Path
    images_sha256: str
    labels_sha256: str

    def fingerprint(self) -> dict:
        return {"source": "local", "files": list(FILES.values()), "images_sha256": self.images_sha256,
                "labels_sha256": self.labels_sha256}


@dataclass(frozen=True)
class MnistHalves:
    """The two fixed halves of the test set: images [N, 1, 28, 28] in [-1, 1], labels [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    heldout_images: torch.Tensor
    heldout_labels: torch.Tensor
    split_seed: int


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_mnist_test(data_dir: Path | str | None) -> MnistRef:
    if data_dir is None:
        raise DataUnavailableError("FID on MNIST needs the MNIST test files in the data dir (set paths.data_dir)")
    paths = {k: Path(data_dir) / v for k, v in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataUnavailableError(f"MNIST test files missing: {', '.join(missing)}")
    return MnistRef(paths["images"], paths["labels"], _sha256(paths["images"]), _sha256(paths["labels"]))


def _read_idx(path: Path, kind: str) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    magic, count = int.from_bytes(raw[0:4], "big"), int.from_bytes(raw[4:8], "big")
    if magic != _MAGIC[kind]:
        raise DataUnavailableError(f"{path} is not an MNIST {kind} idx file (magic {magic})")
    if kind == "labels":
        return np.frombuffer(raw, dtype=np.uint8, count=count, offset=8)
    rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
    return np.frombuffer(raw, dtype=np.uint8, count=count * rows * cols, offset=16).reshape(count, rows, cols)


def load_mnist_test(ref: MnistRef) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [10000, 1, 28, 28] uint8, labels [10000] long)."""
    images = torch.from_numpy(_read_idx(ref.images, "images").copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(ref.labels, "labels").astype(np.int64))
    if images.shape[0] != labels.shape[0]:
        raise DataUnavailableError(f"MNIST: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float() / 127.5 - 1.0


def split_halves(ref: MnistRef, seed: int = SPLIT_SEED) -> MnistHalves:
    images, labels = load_mnist_test(ref)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    train, heldout = order[: images.shape[0] // 2], order[images.shape[0] // 2 :]
    x = to_unit_range(images)
    return MnistHalves(x[train], labels[train], x[heldout], labels[heldout], seed)
