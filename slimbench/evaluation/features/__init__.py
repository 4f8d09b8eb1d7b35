"""Feature extractors for FID: one module each, registered by the name the metric carries.

An extractor maps images [N, C, H, W] in [-1, 1] to features [N, D]; ``fid_<name>`` is the
Fréchet distance between the Gaussian statistics of those features. Interface:

* ``name``; ``__init__(weights)`` validates its settings (``ConfigError``);
* ``check(ctx) -> dict``: before any weights load, the files it will read (sha256);
* ``prepare(data, data_fingerprint, ctx)``: load or build the network (``data``: the MNIST
  halves, which ``mnist_clf`` trains on);
* ``features(images) -> Tensor [N, D]`` (float64);
* ``fingerprint() -> dict``: what identifies the features (weights sha256, recipe, ...);
* ``report() -> dict``: facts for the record's details (e.g. the classifier's training time).
"""

from slimbench.evaluation.features import inception, mnist_clf  # noqa: F401  (registration)
from slimbench.evaluation.features.registry import FEATURES

__all__ = ["FEATURES"]
