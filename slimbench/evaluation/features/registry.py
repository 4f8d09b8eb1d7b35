"""The registry of FID feature extractors (its own module, so that the extractors' modules register
into it without importing the package that imports them)."""

from slimbench.registry import Registry

FEATURES: Registry[type] = Registry("feature extractor")
