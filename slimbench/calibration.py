"""The layer-wise calibration engine shared by every calibration-based method.

Methods never walk the model. The engine

1. captures the inputs of the first block and the arguments of *every* block (attention
   masks and rotary embeddings differ between Gemma-3's sliding and global layers) by
   running the model once per calibration sample with a capture hook on every block (no block
   computes; the forward stops at the last one). Samples are whatever the model kind takes
   (``bundle.io``: token windows, denoiser calls), so the engine is kind-neutral;
2. for each block in order, and for each of the method's ``Step``s in that block: attaches
   the step's observers (hooks accumulating statistics on module inputs), runs the block on
   every calibration sample, detaches them, and hands the statistics to the step's
   ``compress`` callback;
3. re-runs the compressed block so that the next block sees compressed inputs
   (``propagate_error=True``, as SparseGPT/GPTQ do), or passes on the dense block's outputs.

Only one block's activations (inputs and outputs for all samples) are held at a time, and
each block is moved to the compute device only while it is processed, so peak memory grows
with one block's activations, not with depth.

``collect`` gathers statistics of every block of the *unmodified* model (for methods that
decide globally before changing anything: FLAP, Numerical Pruning, SVD-LLM, layer dropping).
Those statistics depend only on (model, calibration set, observers, block) and are cached
on disk under that key (``slimbench.statcache``: safetensors and a checksummed JSON sidecar,
never a pickle), so several methods and ratios share one calibration pass.

Observers install their hooks through the model's ``HookRegistry`` (``slimbench.hooks``) inside a
scope that removes them after each pass. ``objective`` is the one whole-model objective (the
model kind's, e.g. the mean next-token NLL of each window) for methods that score whole-model
quality (ASVD's sensitivity, mixed precision's budget) or need its gradients (FWSVD).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from slimbench import statcache
from slimbench.data.sampler import CalibrationSet
from slimbench.hooks import FunctionHook, Hook, HookRegistry
from slimbench.models.adapters import Adapter
from slimbench.models.bundle import ModelBundle, path_safe
from slimbench.records import stable_hash

log = logging.getLogger(__name__)

INPUT_STATS = ("gram", "hessian", "sq_sum", "abs_sum", "abs_max", "sum")


# -- statistics ----------------------------------------------------------------------------
@statcache.cacheable
@dataclass
class InputStats:
    """Statistics of a module input over all calibration tokens (x rows are tokens [N, D]).

    ``gram`` = Σ xᵀx [D, D]; ``sq_sum`` = Σ x² [D]; ``abs_sum`` = Σ |x| [D];
    ``abs_max`` = max |x| [D]; ``sum`` = Σ x [D]; ``tokens`` = N. Sums are float64 vectors
    and a float32 Gram matrix (as in the SparseGPT/GPTQ references).

    ``hessian`` = 2/n · Σ XᵀX over the n calibration *samples* seen (``samples``; X = one
    sample's tokens) in float32, accumulated as the SparseGPT/GPTQ references' ``add_batch`` does:
    a running mean (H ← H · n/(n+b), then H += (√(2/(n+b))·Xᵀ)(√(2/(n+b))·Xᵀ)ᵀ for a call with b
    samples), so that it equals theirs bitwise. The same quantity as 2/n·``gram`` up to float
    rounding, but GPTQ's rounding decisions are discontinuous in H: rounding-level differences of H
    move quantized weights, then through the next blocks' inputs the whole model (issue 27).
    """

    wanted: frozenset
    tokens: int = 0
    gram: torch.Tensor | None = None
    sq_sum: torch.Tensor | None = None
    abs_sum: torch.Tensor | None = None
    abs_max: torch.Tensor | None = None
    sum: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    samples: int = 0

    def update(self, x: torch.Tensor) -> None:
        batch = x.shape[0] if x.dim() > 2 else 1  # samples in this call ([B, T, D] or one sample's [T, D])
        x = x.reshape(-1, x.shape[-1]).float()  # [N, D]
        self.tokens += x.shape[0]
        if "gram" in self.wanted:
            xtx = x.t() @ x
            self.gram = xtx if self.gram is None else self.gram.add_(xtx)
        if "hessian" in self.wanted:
            self._add_to_hessian(x, batch)
        for name, value in (
            ("sq_sum", lambda: (x.double() ** 2).sum(0)),
            ("abs_sum", lambda: x.abs().double().sum(0)),
            ("sum", lambda: x.double().sum(0)),
        ):
            if name in self.wanted:
                cur = getattr(self, name)
                setattr(self, name, value() if cur is None else cur.add_(value()))
        if "abs_max" in self.wanted:
            m = x.abs().amax(0)
            self.abs_max = m if self.abs_max is None else torch.maximum(self.abs_max, m)

    def _add_to_hessian(self, x: torch.Tensor, batch: int) -> None:
        """The references' running-mean update (their float32 operation order) with x [N, D] of ``batch`` samples."""
        if self.hessian is None:
            self.hessian = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.hessian *= self.samples / (self.samples + batch)
        self.samples += batch
        xt = math.sqrt(2 / self.samples) * x.t()  # [D, N]
        self.hessian += xt.matmul(xt.t())

    # derived quantities used by several methods
    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.tokens

    @property
    def variance(self) -> torch.Tensor:
        """Population variance per feature (float64)."""
        mean = self.mean
        return (self.sq_sum / self.tokens - mean**2).clamp_min(0)

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / self.tokens

    @property
    def col_norm(self) -> torch.Tensor:
        """‖X_j‖₂ over all tokens (Wanda's activation norm)."""
        return self.sq_sum.sqrt()


class Observer(Protocol):
    """Accumulates statistics while a block runs on the calibration samples."""

    def attach(self, block: nn.Module, adapter: Adapter, hooks: HookRegistry) -> None:
        """Add hooks on modules of ``block`` to ``hooks`` (the engine removes them after the pass)."""

    def result(self) -> Any: ...


class LinearInputs:
    """Input statistics of linear layers by role; roles sharing an input share one hook.

    It needs only the inputs of its linears (``input_only``): when the block's output is not
    wanted, the engine stops the block's forward once every hooked linear has seen its input.
    """

    input_only = True

    def __init__(self, roles: tuple[str, ...] | list[str], stats: tuple[str, ...] | set[str]) -> None:
        unknown = set(stats) - set(INPUT_STATS)
        if unknown:
            raise ValueError(f"unknown input statistics {sorted(unknown)} (known: {', '.join(INPUT_STATS)})")
        self.roles, self.stats = tuple(roles), frozenset(stats)
        self._by_role: dict[str, InputStats] = {}

    def attach(self, block, adapter, hooks: HookRegistry) -> None:
        linears = adapter.block_linears(block)
        self.hooked: list[nn.Module] = []
        for role in self.roles:
            if role in self._by_role:
                continue
            if role not in linears:
                raise KeyError(f"{adapter.family} block has no linear role {role!r}")
            shared = InputStats(self.stats)
            group = [r for r in adapter.input_group(role) if r in linears]
            for r in group:
                self._by_role[r] = shared
            hooks.add(f"calibration/{id(self)}/{role}", linears[group[0]], FunctionHook(pre=_input_observer(shared)))
            self.hooked.append(linears[group[0]])

    def result(self) -> dict[str, InputStats]:
        return {r: s for r, s in self._by_role.items() if r in self.roles}


def _input_observer(acc: InputStats):
    def observe(module, args, kwargs):
        acc.update((args[0] if args else next(iter(kwargs.values()))).detach())

    return observe


@dataclass
class Step:
    """One observe-then-compress pass over a block.

    ``observers`` run while the block processes every calibration sample; ``compress``
    then receives ``{name: observer.result()}`` and may change the block in place
    (returning per-layer details for the record, or None).
    """

    observers: dict[str, Observer]
    compress: Callable[[dict[str, Any]], dict | None] | None = None


# -- capture -------------------------------------------------------------------------------
class _StopForward(Exception):
    pass


class _Capture(Hook):
    """On a block during capture: records its call and passes the input through (no compute)."""

    def __init__(self, index: int, sink: list, last: bool) -> None:
        super().__init__()
        self.index, self.sink, self.last = index, sink, last

    def forward(self, module, call, hidden, *args, **kwargs):
        self.sink.append((self.index, hidden, args, kwargs))
        if self.last:
            raise _StopForward
        return hidden


class _Dedup:
    """Keeps one copy of equal tensors (masks/rotary embeddings repeat for every sample)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, value):
        if isinstance(value, torch.Tensor):
            for t in self.seen:
                if t.shape == value.shape and t.dtype == value.dtype and t.device == value.device and torch.equal(t, value):
                    return t
            self.seen.append(value)
            return value
        if isinstance(value, tuple):
            return tuple(self(v) for v in value)
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        return value


@dataclass
class BlockInputs:
    hidden: list[torch.Tensor]  # per sample: the first block's input [1, T, D]
    calls: list[list[tuple[tuple, dict]]]  # per block, per sample: (extra args, kwargs)


def capture_block_inputs(bundle: ModelBundle, calib: CalibrationSet, model_device: torch.device,
                         device: torch.device | None = None) -> BlockInputs:
    """Every block's call (input of block 0, extra args and kwargs of each) on every sample: the
    model runs up to block 0 on ``model_device`` (where its weights are; blocks are not computed),
    and what is captured is kept on ``device`` (the engine's compute device; default the same)."""
    device = model_device if device is None else device
    blocks = bundle.adapter.get_blocks(bundle.model)
    sink: list = []
    hidden: list[torch.Tensor] = []
    calls: list[list] = [[] for _ in blocks]
    dedup = _Dedup()
    with bundle.hooks.scope() as hooks, torch.no_grad():
        for i, block in enumerate(blocks):
            hooks.add(f"calibration/capture/{i}", block, _Capture(i, sink, last=i == len(blocks) - 1))
        for sample in calib.samples():
            sink.clear()
            try:
                bundle.model(**_to(sample, model_device))
            except _StopForward:
                pass
            for index, h, args, kwargs in sink:
                if index == 0:
                    hidden.append(_to(h.detach(), device))
                calls[index].append((dedup(_to(args, device)), dedup(_to(kwargs, device))))
    if any(len(c) != len(hidden) for c in calls):
        raise RuntimeError("calibration capture: not every block was reached by every sample")
    return BlockInputs(hidden=hidden, calls=calls)


class _Samples:
    def __init__(self, samples: list[dict]) -> None:
        self.inputs = samples

    def samples(self, limit: int | None = None):
        yield from self.inputs[:limit]


class SuffixObjective:
    """The whole-model objective of fixed samples, computed from block ``b`` on.

    The dense inputs of block ``b`` are kept for every sample (captured once, then advanced one
    block at a time with ``advance``), so the objective after a change inside block ``b`` runs
    only blocks ``b..L-1`` and the head: the same calls in the same order as a whole-model
    forward (``CalibrationEngine.objective``), hence the same numbers, for (L − b)/L of the block
    work. Only for models whose head is known (``bundle.io.head``); ``available`` says so.
    """

    def __init__(self, bundle: ModelBundle, samples: list[dict]) -> None:
        self.bundle, self.samples = bundle, samples
        self.head = getattr(bundle.io, "head", lambda *a: None)(bundle.model, bundle.adapter)
        self.block = 0
        if self.head is not None:
            device = next(bundle.model.parameters()).device
            self.inputs = capture_block_inputs(bundle, _Samples(samples), device)
            self.hidden = self.inputs.hidden

    @property
    def available(self) -> bool:
        return self.head is not None

    @torch.no_grad()
    def score(self) -> torch.Tensor:
        """float64 [n]: each sample's objective with the model as it is now, from block ``self.block``."""
        blocks = self.bundle.adapter.get_blocks(self.bundle.model)
        out = torch.empty(len(self.samples), dtype=torch.float64, device="cpu")  # host-side results
        for i, (h, sample) in enumerate(zip(self.hidden, self.samples)):
            for j in range(self.block, len(blocks)):
                h = self._call(blocks[j], j, i, h)
            out[i] = self.bundle.io.head_objective(self.head, h, sample).double().mean().cpu()
        return out

    @torch.no_grad()
    def advance(self) -> None:
        """Move the kept inputs past block ``self.block`` (run with its current, dense, weights)."""
        block = self.bundle.adapter.get_blocks(self.bundle.model)[self.block]
        self.hidden = [self._call(block, self.block, i, h) for i, h in enumerate(self.hidden)]
        self.block += 1

    def _call(self, block: nn.Module, index: int, sample: int, hidden: torch.Tensor) -> torch.Tensor:
        """Block ``index`` on ``sample``'s captured call, with ``hidden`` as its input."""
        args, kwargs = self.inputs.calls[index][sample]
        out = block(hidden, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out


# -- the engine ------------------------------------------------------------------------------
@dataclass
class EngineReport:
    blocks: int
    samples: int
    tokens_per_sample: int
    propagate_error: bool
    details: list = field(default_factory=list)  # per block: merged details of its steps


class CalibrationEngine:
    def __init__(self, bundle: ModelBundle, calib: CalibrationSet, device: str | torch.device | None = None, progress: bool = True):
        if calib is None:
            raise ValueError("this method needs a calibration set")
        self.bundle, self.calib, self.progress = bundle, calib, progress
        self.model_device = next(bundle.model.parameters()).device
        device = device if device is not None else bundle.compute_device  # offload: one block at a time there
        self.device = torch.device(device) if device is not None else self.model_device

    # sequential compression ---------------------------------------------------------------
    def run(self, plan: Callable[[int, nn.Module], list[Step]], propagate_error: bool = True, desc: str = "calibrate") -> EngineReport:
        """For each block: run ``plan(i, block)``'s steps, then propagate to the next block."""
        inputs = capture_block_inputs(self.bundle, self.calib, self.model_device, self.device)
        blocks = self.bundle.adapter.get_blocks(self.bundle.model)
        report = EngineReport(len(blocks), len(inputs.hidden), inputs.hidden[0].shape[1], propagate_error)
        hidden = inputs.hidden
        for i in tqdm(range(len(blocks)), desc=desc, unit="block", disable=not self.progress):
            block = blocks[i].to(self.device)
            details: dict = {}
            dense_out = None
            for step in plan(i, block):
                keep = dense_out is None and not propagate_error  # the unmodified block's output
                out = self._forward(block, hidden, inputs.calls[i], step.observers, need_output=keep)
                dense_out = out if keep else dense_out
                stats = {name: obs.result() for name, obs in step.observers.items()}
                if step.compress is not None:
                    details.update(step.compress(stats) or {})
            if propagate_error or dense_out is None:
                hidden = self._forward(block, hidden, inputs.calls[i], {})
            else:
                hidden = dense_out
            blocks[i] = block.to(self.model_device)
            report.details.append(details)
        return report

    # statistics of the unmodified model ---------------------------------------------------
    def collect(self, observers: Callable[[int, nn.Module], dict[str, Observer]], cache_key: str | None = None, desc: str = "collect") -> list[dict]:
        """Statistics of every block of the unmodified model: ``[{name: result}, ...]``.

        With ``cache_key`` (a name for what the observers compute), results are cached on
        disk by (model identity, calibration fingerprint, cache_key) (``slimbench.statcache``:
        safetensors + a checked JSON sidecar, never a pickle).
        """
        n_blocks = len(self.bundle.adapter.get_blocks(self.bundle.model))
        cached = self._read_cache(cache_key)
        if isinstance(cached, list) and len(cached) == n_blocks:
            return cached
        results: list[dict] = []

        def plan(i, block):
            obs = observers(i, block)
            return [Step(obs, compress=lambda stats: results.append(stats))]

        self.run(plan, propagate_error=False, desc=desc)
        self._write_cache(cache_key, results)
        return results

    def cached(self, cache_key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (model identity, calibration fingerprint, ``cache_key``).

        For results of the *dense* model that runs share (e.g. ASVD's per-layer sensitivity
        table, reused by every target ratio); ``cache_key`` must name every parameter the
        result depends on besides the model and the calibration set.
        """
        result = self._read_cache(cache_key)
        if result is not None:
            return result
        result = compute()
        self._write_cache(cache_key, result)
        return result

    def _read_cache(self, cache_key: str | None) -> Any:
        """The verified cached value, or None (absent; or refused, with a warning saying why)."""
        entry = self._cache_dir(cache_key)
        value = None if entry is None else statcache.read(entry, cache_key, "calibration cache")
        if value is None:
            return None
        log.info("calibration statistics %r loaded from %s", cache_key, entry)
        self.calib.cache_reads.append(cache_key)
        return value

    def _write_cache(self, cache_key: str | None, value: Any) -> None:
        entry = self._cache_dir(cache_key)
        if entry is not None:
            statcache.write(entry, value, cache_key, "calibration statistics")

    # the whole-model objective --------------------------------------------------------------
    def objective(self, samples: Iterable[dict] | None = None, backward: Callable[[int], None] | None = None,
                  desc: str | None = None) -> torch.Tensor:
        """The model kind's objective of every sample (float64 [n]; LM: mean next-token NLL of
        each window). With ``backward``, each sample's objective is back-propagated and
        ``backward(i)`` is called while its gradients are in place (FWSVD's Fisher pass)."""
        samples = list(self.calib.samples() if samples is None else samples)
        out = torch.empty(len(samples), dtype=torch.float64, device="cpu")  # host-side results
        io = self.bundle.io
        with torch.set_grad_enabled(backward is not None):
            for i, sample in enumerate(tqdm(samples, desc=desc, unit="sample", mininterval=2.0, disable=desc is None or not self.progress)):
                loss = io.objective(self.bundle.model, sample)  # [B]
                if backward is not None:
                    loss.sum().backward()
                    backward(i)
                out[i] = loss.detach().double().mean().cpu()
        return out

    # internals ---------------------------------------------------------------------------
    def _forward(self, block: nn.Module, hidden: list[torch.Tensor], calls: list, observers: dict[str, Observer], need_output: bool = True) -> list[torch.Tensor]:
        """The block's outputs on every sample, with ``observers`` attached.

        With ``need_output=False`` and only input observers, each sample's forward stops as
        soon as every hooked linear has seen its input (the statistics are the same; GPTQ's
        q/k/v step then skips the whole block), and a stopped sample has no output in the list.
        """
        io_observers = [o for o in observers.values() if hasattr(o, "on_block_io")]
        seen: set[int] = set()
        outputs = []
        with self.bundle.hooks.scope() as hooks, torch.no_grad():
            for obs in observers.values():
                obs.attach(block, self.bundle.adapter, hooks)
            if not need_output and observers and all(getattr(o, "input_only", False) for o in observers.values()):
                targets = {id(m): m for o in observers.values() for m in o.hooked}

                def stop(module, args, kwargs):  # added after the statistics hooks: runs after them
                    seen.add(id(module))
                    if len(seen) == len(targets):
                        raise _StopForward

                for key, m in targets.items():
                    hooks.add(f"calibration/stop/{key}", m, FunctionHook(pre=stop))
            for x, (args, kwargs) in zip(hidden, calls):
                seen.clear()
                try:
                    out = block(_to(x, self.device), *_to(args, self.device), **_to(kwargs, self.device))
                except _StopForward:
                    continue
                out = out[0] if isinstance(out, tuple) else out
                for obs in io_observers:
                    obs.on_block_io(x, out)
                outputs.append(out)
        return outputs

    def _cache_dir(self, cache_key: str | None) -> Path | None:
        root = getattr(self.calib, "cache_dir", None)
        if cache_key is None or root is None:
            return None
        key = stable_hash({"model": self.bundle.source.to_dict(), "calibration": self.calib.fingerprint(), "stats": cache_key})
        return Path(root) / "calib_stats" / f"{path_safe(self.bundle.source.name)}-{key}"


def _to(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(v, device) for v in obj)
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


