"""slimbench's Hydra sweeper: a sweep is the union of several grids.

A table rarely is one Cartesian product: the quantization table runs RTN/GPTQ at w4/w3 with
groups, AWQ with its own calibration length, SmoothQuant once, ... The ``slimbench`` sweeper
takes a list of grids (each a BasicSweeper ``params`` mapping) and runs the union of their
products, in order, duplicates once; ``params`` (if any) applies to every grid, and overrides
given on the command line apply to every job (they win over a grid's value of the same key).
Jobs go to whichever launcher is configured (basic, joblib, submitit, ray), in batches of
``max_batch_size`` (null: all at once)::

    # conf/experiment/<name>.yaml
    defaults:
      - override /hydra/sweeper: slimbench
    hydra:
      sweeper:
        grids:
          - {method: dense}
          - {method: "rtn,gptq", ++method.bits: "4,3"}

The expansion itself is ``slimbench.sweeps.expand_grids`` (the leaderboard uses it to find an
experiment's records). Hydra only instantiates sweepers that live in the ``hydra_plugins``
namespace package, hence this module.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.slimbench_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, Any]] = None  # swept in every grid
    grids: Optional[List[Dict[str, Any]]] = None  # the union of these grids' products


ConfigStore.instance().store(group="hydra/sweeper", name="slimbench", node=GridSweeperConf, provider="slimbench")


class GridSweeper(BasicSweeper):
    """BasicSweeper whose job list is the union of several grids (see the module docstring)."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, Any]] = None,
                 grids: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=None)
        self.common = dict(params or {})
        self.grids = [dict(g) for g in grids or []]
        self._arguments: List[str] = []

    def sweep(self, arguments: List[str]) -> Any:
        self._arguments = list(arguments)
        return super().sweep(arguments)

    def split_arguments(self, overrides, max_batch_size):  # called by BasicSweeper.sweep with the parsed arguments
        from slimbench.sweeps import expand_grids

        loader = self.hydra_context.config_loader if self.hydra_context is not None else None
        jobs = expand_grids(self.grids, self._arguments, common=self.common, config_loader=loader)
        size = len(jobs) if max_batch_size in (None, -1) else max_batch_size
        return [jobs[i:i + size] for i in range(0, len(jobs), size)]
