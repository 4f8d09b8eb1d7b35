"""Sparsity patterns and masks shared by the unstructured/N:M pruning methods.

A mask is a bool tensor shaped like the weight [out, in]; True marks a weight to remove.
Scores follow the convention "lower score = pruned first".
"""

from __future__ import annotations

import re

import torch

from slimbench.errors import ConfigError

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """"unstructured" -> None; "2:4" -> (2, 4) meaning n zeros in every m consecutive inputs."""
    if pattern == "unstructured":
        return None
    match = _NM.match(str(pattern))
    if not match:
        raise ConfigError(f"pattern must be 'unstructured' or 'N:M' such as '2:4', got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern needs 0 < N < M, got {pattern!r}")
    return n, m


SPARSITY_DOC = "fraction of weights removed"
PATTERN_DOC = "'unstructured' or 'N:M' (N zeros in every M consecutive inputs, e.g. '2:4'; sparsity must then be N/M)"


def check_sparsity(sparsity: float, pattern: str) -> None:
    """Validate the pattern and its sparsity (the sparsity's range is declared on the config field); N:M fixes it at N/M."""
    nm = parse_pattern(pattern)
    if nm is not None and abs(float(sparsity) - nm[0] / nm[1]) > 1e-9:
        raise ConfigError(
            f"pattern {pattern} fixes the sparsity at {nm[0] / nm[1]:g}; got sparsity={sparsity} (set it to {nm[0] / nm[1]:g})"
        )


def lowest_fraction_mask(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Mask of the ``floor(sparsity · count)`` lowest scores, per row or over the whole matrix."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if per_row:
        k = int(score.shape[1] * sparsity)
        if k:
            idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
            mask.scatter_(1, idx, True)
    else:
        k = int(score.numel() * sparsity)
        if k:
            idx = torch.sort(score.flatten(), stable=True).indices[:k]
            mask.view(-1)[idx] = True
    return mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive inputs of each row, mask the ``n`` lowest scores."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {cols}")
    groups = score.reshape(rows, cols // m, m)
    idx = torch.topk(groups, n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def pattern_mask(score: torch.Tensor, sparsity: float, pattern: str, per_row: bool) -> torch.Tensor:
    nm = parse_pattern(pattern)
    return nm_mask(score, *nm) if nm else lowest_fraction_mask(score, sparsity, per_row)
