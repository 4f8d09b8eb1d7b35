"""Model size, measured from the tensors themselves (never from a method's claims).

* ``params``: parameters of the model (shared tensors counted once; packed modules count the
  logical weights they represent).
* ``bytes``: storage of everything in the state dict (parameters and persistent buffers,
  shared tensors once): what a saved checkpoint holds.
* ``linear_*``: the compressible linear layers of the blocks (the adapter's roles);
  ``bits_per_weight = 8 · linear_bytes / linear_params``.
* ``sparsity``: fraction of exact zeros among the weights of those linears (a packed linear's
  weights at their group's zero point are exact zeros of ``s·(q − z)``: pruning survives
  quantization in a pipeline, and quantization itself rounds small weights to zero).

A module that stores weights in a packed or factored form may define ``storage_stats()``
returning ``(logical_params, storage_bytes)``; everything else is counted tensor by tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from slimbench.evaluation.base import EVALUATORS, EvalContext, EvalResult, Metric
from slimbench.models.adapters import Adapter, get_path


@dataclass
class Footprint:
    params: int
    bytes: int
    linear_params: int
    linear_bytes: int
    linear_zeros: int  # exact zeros (packed linears: codes at their zero point)
    linear_weights: int  # weights of the linears, the sparsity denominator
    embedding_bytes: int  # input embedding table (read one row per token when decoding)
    tied_embeddings: bool

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.linear_bytes / self.linear_params if self.linear_params else float("nan")

    @property
    def sparsity(self) -> float:
        return self.linear_zeros / self.linear_weights if self.linear_weights else 0.0

    @property
    def weight_bytes_per_decode_step(self) -> int:
        """Bytes of weights a batch-1 decode step reads: all but an untied input embedding."""
        return self.bytes if self.tied_embeddings else self.bytes - self.embedding_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "bits_per_weight": self.bits_per_weight, "sparsity": self.sparsity}


def _unique_tensors(module: nn.Module) -> dict[tuple, torch.Tensor]:
    seen: dict[tuple, torch.Tensor] = {}
    for tensor in list(module.state_dict(keep_vars=True).values()):
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            seen.setdefault(key, tensor)
    return seen


def module_storage(module: nn.Module) -> tuple[int, int]:
    """(params, bytes) of one module, honouring ``storage_stats()`` where defined."""
    stats = getattr(module, "storage_stats", None)
    if callable(stats):
        return stats()
    params = sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
    nbytes = sum(t.numel() * t.element_size() for t in _unique_tensors(module).values())
    return params, nbytes


def module_params(model: nn.Module) -> dict[str, int]:
    """Parameters of every named module in one pass (packed modules count the weights they
    represent; a module's count includes its children's)."""
    out: dict[str, int] = {}

    def visit(name: str, module: nn.Module) -> int:
        stats = getattr(module, "storage_stats", None)
        if callable(stats):
            count = stats()[0]
        else:
            count = sum(p.numel() for p in module.parameters(recurse=False))
            count += sum(visit(f"{name}.{child}" if name else child, sub) for child, sub in module.named_children())
        out[name] = count
        return count

    visit("", model)
    return out


def footprint(model: nn.Module, adapter: Adapter) -> Footprint:
    tensors = _unique_tensors(model)
    total_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    packed = [m for m in model.modules() if callable(getattr(m, "storage_stats", None))]
    packed_ids = {id(t) for m in packed for t in m.state_dict(keep_vars=True).values()}
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if id(p) not in packed_ids)
    params += sum(m.storage_stats()[0] for m in packed)

    lin_params = lin_bytes = zeros = weights = 0
    for module in adapter.linear_paths(model).values():
        p, b = module_storage(module)
        lin_params, lin_bytes = lin_params + p, lin_bytes + b
        weight = getattr(module, "weight", None)
        if callable(getattr(module, "zero_count", None)):  # packed: weights at the zero point are exact zeros
            zeros += module.zero_count()
            weights += module.in_features * module.out_features
        elif isinstance(weight, torch.Tensor) and weight.is_floating_point():
            zeros += int((weight == 0).sum())
            weights += weight.numel()

    embed = get_path(model, adapter.embed)
    emb_w = getattr(embed, "weight", None)
    emb_bytes = emb_w.numel() * emb_w.element_size() if isinstance(emb_w, torch.Tensor) else 0
    return Footprint(
        params=params,
        bytes=total_bytes,
        linear_params=lin_params,
        linear_bytes=lin_bytes,
        linear_zeros=zeros,
        linear_weights=weights,
        embedding_bytes=emb_bytes,
        tied_embeddings=adapter.tied_embeddings(model),
    )


@dataclass(frozen=True)
class SizeConfig:
    pass


@EVALUATORS.register("size")
class Size:
    name = "size"
    version = "1"
    Config = SizeConfig
    kinds = ("causal_lm", "diffusion")

    def __init__(self, config: SizeConfig) -> None:
        self.config = config

    def check(self, ctx: EvalContext) -> dict:
        return {}

    def __call__(self, bundle, ctx: EvalContext) -> EvalResult:
        fp = footprint(bundle.model, bundle.adapter)
        metrics = [
            Metric("params", fp.params, higher_is_better=False, unit="count"),
            Metric("bytes", fp.bytes, higher_is_better=False, unit="bytes"),
            Metric("linear_params", fp.linear_params, higher_is_better=False, unit="count"),
            Metric("linear_bytes", fp.linear_bytes, higher_is_better=False, unit="bytes"),
            Metric("bits_per_weight", fp.bits_per_weight, higher_is_better=False, unit="bits"),
            Metric("sparsity", fp.sparsity, unit="fraction"),
        ]
        return EvalResult(metrics, {"counted": "state dict tensors, shared once; linears = adapter roles"})
