"""FORA: Fast-Forward Caching in Diffusion Transformer Acceleration (Selvaraju et al., arXiv
2407.01425, 2024; reference code github.com/prathebaselva/FORA, ``DiTBlock.forward``,
``boost_infer_static``).

Static caching of every block's attention and MLP outputs, without training:

  1. the branches (attention, MLP) run with their modulated inputs as usual; their outputs
     *before* the adaLN gate are cached;
  2. along the chain i = S-1 .. 0 a step recomputes every branch when i = S-1 (the first step)
     or i mod N = 0, and refreshes the cache; every other step skips every branch and uses
     the cached outputs, gated by the current step's adaLN gate (the block's own code);
  3. caches are cleared per sampling batch.

With S = 50: N = 2 computes 26 of 50 steps, N = 3 computes 18. The interval N is the only
setting (N = 1: nothing skipped). Execution path: cached-steps (skipped branches are not run).
"""

from __future__ import annotations

from dataclasses import dataclass

from slimbench.diffusion import current_step
from slimbench.methods.base import MethodBase, MethodResult, register_method
from slimbench.methods.diffusion.cache import BranchCache, branches, check_branches
from slimbench.params import check_params, param


@dataclass(frozen=True)
class ForaConfig:
    interval: int = param(2, "N: branches recompute at chain index S-1 and every i with i mod N = 0", ge=1)

    def __post_init__(self) -> None:
        check_params(self)


class ForaHook(BranchCache):
    def __init__(self, interval: int) -> None:
        super().__init__()
        self.interval = interval

    def forward(self, module, call, z, *args, **kwargs):
        step = current_step()
        if step is None or not self.holds(z) or step.index == step.steps - 1 or step.index % self.interval == 0:
            return self.compute(call, z, *args, **kwargs)
        return self.reuse()


@register_method("fora", config=ForaConfig, family="diffusion", sort="runtime", kinds=("diffusion",))
class Fora(MethodBase):
    def check(self, adapter) -> None:
        check_branches(adapter, self.name)

    def apply(self, bundle, calib) -> MethodResult:
        for name, module in branches(bundle):
            bundle.hooks.add(f"fora/{name}", module, ForaHook(self.config.interval))
        return MethodResult("cached-steps", details={"interval": self.config.interval},
                            notes=["branch outputs reused between recomputation steps (counted per sampling run)"])
