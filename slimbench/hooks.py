"""Named, removable, stateful hooks that wrap a module's forward (in the spirit of diffusers'
``HookRegistry``).

A ``Hook`` sees every call of the module it is attached to and decides what happens:

    class Scale(Hook):
        def forward(self, module, call, *args, **kwargs):
            self.count("calls")
            return 2 * call(*args, **kwargs)      # not calling ``call`` skips the module entirely

Several hooks on one module form a chain in the order they were added (the first added is the
outermost). Hooks may keep state between calls (a cache of the previous diffusion step, say);
``reset_state()`` clears it and is called per sample batch / sampling run by whoever drives the
model. ``counters`` hold what a hook counted (skipped calls, tokens per expert): measured, never
estimated.

One ``HookRegistry`` per model (``HookRegistry.of(model)``) owns every hook installed in it, by
unique name: ``add``, ``remove``, ``remove_all``, ``reset_state``, ``counters``, and ``scope()``
(hooks added inside the ``with`` block are removed when it ends; the calibration engine's
observers use it). Removing the last hook of a module restores its original ``forward`` object, so
outputs after removal equal the unhooked model's bitwise. A runtime method is its config plus the
hooks it installs.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from torch import nn

_REGISTRY_ATTR = "_slimbench_hook_registry"
_MISSING = object()


class Hook:
    """Base class: override ``forward`` (or ``pre_forward``/``post_forward`` for the common cases)."""

    def __init__(self) -> None:
        self.counters: Counter = Counter()

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        return output

    def forward(self, module: nn.Module, call: Callable[..., Any], *args, **kwargs) -> Any:
        args, kwargs = self.pre_forward(module, args, kwargs)
        return self.post_forward(module, call(*args, **kwargs))

    def reset_state(self) -> None:
        """Forget per-run state (caches); counters are kept."""

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n


class FunctionHook(Hook):
    """A hook from plain callables: ``pre(module, args, kwargs)`` observes the inputs,
    ``post(module, args, kwargs, output)`` observes the output (neither changes anything)."""

    def __init__(self, pre: Callable | None = None, post: Callable | None = None) -> None:
        super().__init__()
        self.pre, self.post = pre, post

    def forward(self, module, call, *args, **kwargs):
        if self.pre is not None:
            self.pre(module, args, kwargs)
        output = call(*args, **kwargs)
        if self.post is not None:
            self.post(module, args, kwargs, output)
        return output


@dataclass
class _Installed:
    name: str
    module: nn.Module
    hook: Hook


class _Chain:
    """The hooks of one module and the forward they wrap."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.saved_forward = module.__dict__.get("forward", _MISSING)  # an instance-level forward, if any
        self.inner = module.forward  # what the innermost hook calls
        self.hooks: list[Hook] = []

    def dispatch(self, *args, **kwargs):
        return self._call(0, args, kwargs)

    def _call(self, index: int, args: tuple, kwargs: dict):
        if index == len(self.hooks):
            return self.inner(*args, **kwargs)
        return self.hooks[index].forward(self.module, lambda *a, **k: self._call(index + 1, a, k), *args, **kwargs)

    def restore(self) -> None:
        if self.saved_forward is _MISSING:
            del self.module.__dict__["forward"]
        else:
            self.module.__dict__["forward"] = self.saved_forward


class HookRegistry:
    """Every hook installed in one model, by unique name."""

    def __init__(self) -> None:
        self._installed: dict[str, _Installed] = {}
        self._chains: dict[int, _Chain] = {}

    @classmethod
    def of(cls, model: nn.Module) -> "HookRegistry":
        registry = model.__dict__.get(_REGISTRY_ATTR)
        if registry is None:
            registry = cls()
            model.__dict__[_REGISTRY_ATTR] = registry  # a plain attribute: not a submodule, not in the state dict
        return registry

    # -- installing ---------------------------------------------------------------------------
    def add(self, name: str, module: nn.Module, hook: Hook) -> Hook:
        if name in self._installed:
            raise ValueError(f"a hook named {name!r} is already installed")
        chain = self._chains.get(id(module))
        if chain is None:
            chain = self._chains[id(module)] = _Chain(module)
            module.__dict__["forward"] = chain.dispatch
        chain.hooks.append(hook)
        self._installed[name] = _Installed(name, module, hook)
        return hook

    def remove(self, name: str) -> None:
        entry = self._installed.pop(name, None)
        if entry is None:
            raise KeyError(f"no hook named {name!r} (installed: {', '.join(self._installed) or 'none'})")
        chain = self._chains[id(entry.module)]
        chain.hooks.remove(entry.hook)
        if not chain.hooks:
            chain.restore()
            del self._chains[id(entry.module)]

    def remove_all(self, prefix: str = "") -> None:
        """Remove every hook (or every hook whose name starts with ``prefix``), newest first."""
        for name in reversed([n for n in self._installed if n.startswith(prefix)]):
            self.remove(name)

    @contextlib.contextmanager
    def scope(self) -> Iterator["HookRegistry"]:
        """Hooks added inside the block are removed when it ends (also on errors)."""
        before = set(self._installed)
        try:
            yield self
        finally:
            for name in reversed([n for n in self._installed if n not in before]):
                self.remove(name)

    # -- state -------------------------------------------------------------------------------
    def reset_state(self) -> None:
        for entry in self._installed.values():
            entry.hook.reset_state()

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self._installed if n.startswith(prefix)]

    def get(self, name: str) -> Hook:
        return self._installed[name].hook

    def counters(self, prefix: str = "") -> dict[str, dict[str, int]]:
        return {n: dict(e.hook.counters) for n, e in self._installed.items() if n.startswith(prefix)}

    def __len__(self) -> int:
        return len(self._installed)

    def __contains__(self, name: object) -> bool:
        return name in self._installed


