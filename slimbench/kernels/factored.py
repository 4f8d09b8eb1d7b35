"""A Linear replaced by two factors.

``FactoredLinear`` computes ``y = B (A x) + b`` with ``A = first`` ([rank, in], no bias) and
``B = second`` ([out, rank], carrying the original bias). Both factors are ordinary
``nn.Linear`` parameters, so the harness counts the real parameters: ``rank·(in+out)`` plus
the bias. Factoring saves parameters (and FLOPs: two matmuls of ``rank·in`` and
``rank·out`` multiply-adds per token instead of ``in·out``) only when
``rank < in·out / (in+out)``; ``saves_parameters`` says whether a rank does, and
``factorize`` refuses ranks that do not.

Models containing factored layers save and reload through ``slimbench.checkpoint``
(``FactoredLinear.export`` / ``from_export``), the one format for every compressed module type.
"""

from __future__ import annotations

import torch
from torch import nn

from slimbench.models.adapters import get_path, set_path


def saves_parameters(out_features: int, in_features: int, rank: int) -> bool:
    """True when two factors of ``rank`` hold fewer weights than the dense matrix."""
    return 0 < rank and rank * (in_features + out_features) < in_features * out_features


class FactoredLinear(nn.Module):
    """``second(first(x))``: in -> rank -> out; the bias lives on ``second``."""

    factor_parts = ("first", "second")  # adapters expose these as linears ``<role>.first`` / ``<role>.second``

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, dtype=None, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)  # [rank, in]
        self.second = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)  # [out, rank]

    @classmethod
    def from_factors(cls, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> "FactoredLinear":
        """``left`` [out, rank] @ ``right`` [rank, in] approximates the weight [out, in]."""
        (out_f, rank), (rank2, in_f) = left.shape, right.shape
        if rank != rank2:
            raise ValueError(f"factor shapes do not chain: {tuple(left.shape)} @ {tuple(right.shape)}")
        module = cls(in_f, out_f, rank, bias is not None, dtype=dtype, device=left.device)
        with torch.no_grad():
            module.first.weight.copy_(right)
            module.second.weight.copy_(left)
            if bias is not None:
                module.second.bias.copy_(bias)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> torch.Tensor:
        """The product ``B A`` as [out, in] (for tests and analysis)."""
        return self.second.weight @ self.first.weight

    def export(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(description, tensors) for ``slimbench.checkpoint``."""
        tensors = dict(self.state_dict())
        meta = {"in_features": self.in_features, "out_features": self.out_features, "rank": self.rank, "bias": self.second.bias is not None}
        meta["tensors"] = {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()}
        return meta, tensors

    @classmethod
    def from_export(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> "FactoredLinear":
        """The module ``export`` described; ValueError (one line) when the rank, the shapes and the tensors disagree."""
        n, k, r = meta["out_features"], meta["in_features"], meta["rank"]
        shapes = {"first.weight": (r, k), "second.weight": (n, r), **({"second.bias": (n,)} if meta["bias"] else {})}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if found != shapes:
            raise ValueError(f"rank-{r} factors of a [{n}, {k}] weight are {shapes}, found {found}")
        dtype = tensors["first.weight"].dtype
        module = cls(meta["in_features"], meta["out_features"], meta["rank"], meta["bias"], dtype=dtype)
        module.load_state_dict(tensors, strict=True)
        return module

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.second.bias is not None}"


def factorize(root: nn.Module, path: str, left: torch.Tensor, right: torch.Tensor, bias: torch.Tensor | None) -> FactoredLinear:
    """Replace the module at ``root.<path>`` by ``left @ right`` (+ bias); rank must save parameters."""
    old = get_path(root, path)
    if old is None:
        raise KeyError(f"no module at {path!r}")
    if not saves_parameters(left.shape[0], right.shape[1], left.shape[1]):
        raise ValueError(f"rank {left.shape[1]} does not save parameters for a {left.shape[0]}x{right.shape[1]} weight")
    dtype = next(old.parameters()).dtype
    new = FactoredLinear.from_factors(left.to(dtype), right.to(dtype), bias, dtype)
    set_path(root, path, new)
    return new
