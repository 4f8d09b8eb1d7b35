"""The registry of FID feature extractors (its own module: the extractors import it)."""

from slimbench.registry import Registry

FEATURES: Registry[type] = Registry("feature extractor")
