"""ModelBundle: a loaded model with everything a method or evaluator needs to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimbench.models.adapters import Adapter

KINDS = ("causal_lm", "diffusion")


@dataclass(frozen=True)
class ModelSource:
    """Identity of a model, resolved before its weights load (part of the run_id)."""

    name: str
    kind: str
    loader: str
    model_type: str
    identity: dict = field(default_factory=dict)  # id/path, revision or sha256, ...
    dtype: str = "float32"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "loader": self.loader,
            "model_type": self.model_type,
            "dtype": self.dtype,
            **self.identity,
        }


@dataclass
class ModelBundle:
    model: nn.Module
    tokenizer: Any | None
    kind: str
    adapter: Adapter
    source: ModelSource

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def io(self):
        """How to call this model: calibration samples, example inputs, output, objective."""
        from slimbench.models.io import MODEL_IO

        return MODEL_IO.get(self.adapter.io)

    @property
    def hooks(self):
        """The model's ``HookRegistry`` (runtime methods install their hooks there)."""
        from slimbench.hooks import HookRegistry

        return HookRegistry.of(self.model)
