"""Counted multiply-accumulates of a piece of work (``torch.utils.flop_counter``).

``FlopCounterMode`` counts the FLOPs of the matmuls, convolutions and attention kernels that
actually run (elementwise ops, norms and softmax are not counted); MACs = FLOPs / 2. Its
registry lacks the CPU flash-attention kernel that ``scaled_dot_product_attention`` picks on
CPU, which is added here with torch's own attention formula (QKᵀ and AV matmuls), so CPU and
GPU counts agree. Work that is skipped (a cached block, a step not taken) is not counted.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_aten = torch.ops.aten


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FORMULAS = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def count_macs(work: Callable[[], object]) -> int:
    """Run ``work()`` under a FLOP counter; the MACs it executed."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        work()
    return counter.get_total_flops() // 2
