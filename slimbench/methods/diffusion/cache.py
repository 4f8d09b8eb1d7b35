"""What the step-caching methods share: the branches they wrap and a counted branch cache.

A *branch* is a block's attention or MLP module (the adapter's ``attn`` / ``mlp`` roles). It is
called with the block's modulated input Z [B, N, D] and returns its output before the block's
adaLN gate; the block applies the current step's gate and adds the residual itself. A branch
cache holds that pre-gate output, per sample, from the last step at which the branch computed.

Counters (per hook, in sample rows): ``computed`` and ``skipped`` branch calls. The share of
skipped computations an evaluator reports is Σ skipped / Σ (computed + skipped) over all hooks.
A skipped call does not call the module: nothing of it executes.
"""

from __future__ import annotations

import torch
from torch import nn

from slimbench.errors import ConfigError
from slimbench.hooks import Hook

BRANCHES = ("attn", "mlp")


def branches(bundle) -> list[tuple[str, nn.Module]]:
    """(``"<block>.<attn|mlp>"``, module) for every block, attention first."""
    adapter = bundle.adapter
    out = []
    for i, block in enumerate(adapter.get_blocks(bundle.model)):
        modules = dict(block.named_modules())
        out.extend((f"{i}.{kind}", modules[getattr(adapter, kind)]) for kind in BRANCHES)
    return out


def check_branches(adapter, method: str) -> None:
    """Pre-load: the architecture names its attention and MLP modules."""
    missing = [kind for kind in BRANCHES if getattr(adapter, kind, None) is None]
    if missing:
        raise ConfigError(f"method {method} needs the blocks' {' and '.join(missing)} modules, which the {adapter.family} adapter does not name")


class BranchCache(Hook):
    """A branch's pre-gate output from the last step it computed; counts computed/skipped rows."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: torch.Tensor | None = None  # [B, N, D]

    def reset_state(self) -> None:
        self.cache = None

    def holds(self, z: torch.Tensor) -> bool:
        """A cached output for exactly these rows and tokens exists."""
        return self.cache is not None and self.cache.shape[:2] == z.shape[:2]

    def compute(self, call, z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = call(z, *args, **kwargs)  # [B, N, D]
        self.cache = out
        self.count("computed", z.shape[0])
        return out

    def reuse(self) -> torch.Tensor:
        self.count("skipped", self.cache.shape[0])
        return self.cache

    def mixed(self, call, z: torch.Tensor, compute: torch.Tensor) -> torch.Tensor:
        """Rows where ``compute`` [B] is true are computed, the others reuse the cache."""
        out = self.cache.clone()
        out[compute] = call(z[compute])  # only the computing rows run through the module
        self.cache = out
        self.count("computed", int(compute.sum()))
        self.count("skipped", int((~compute).sum()))
        return out
