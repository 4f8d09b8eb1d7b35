"""Speed ratios against the dense baseline, with their spread, shown only when they mean something.

A ratio is formed only against a baseline timed under the same latency protocol (device,
threads). Each latency record holds the median and the slow end of its repeats
(``prefill_ms_p90``, ``decode_tokens_per_s_p10``), so a ratio carries an interval: its low end
puts the method at its slow end against the baseline's median, its high end the baseline at its
slow end against the method's median. A ratio is shown as a speedup (or a slowdown) only when
that whole interval lies above (below) 1.0; when it covers 1.0 the difference is noise on this
machine. Where the execution path says no speedup is expected (masked-dense weights, simulated
quantization) no ratio is shown at all: a "prefill × dense" of 47.9 for a masked-dense model is a
noisy baseline, not a speedup.
"""

from __future__ import annotations

from dataclasses import dataclass

# (ratio column, metric, its slow end, True: lower is faster)
SPEEDS = {
    "vs_dense.prefill_speedup": ("latency.prefill_ms", "latency.prefill_ms_p90", True),
    "vs_dense.decode_speedup": ("latency.decode_tokens_per_s", "latency.decode_tokens_per_s_p10", False),
}


@dataclass(frozen=True)
class Ratio:
    """``value`` (>1 = faster than the baseline) and its interval; ``expected`` from the execution path."""

    value: float
    low: float | None
    high: float | None
    expected: bool

    @property
    def verdict(self) -> str:
        """not expected | no spread | noise | faster | slower."""
        if not self.expected:
            return "not expected"
        if self.low is None or self.high is None:
            return "no spread"
        if self.low <= 1.0 <= self.high:
            return "noise"
        return "faster" if self.low > 1.0 else "slower"

    def cell(self) -> str:
        verdict = self.verdict
        if verdict == "not expected":
            return "not expected"
        if verdict == "no spread":
            return f"{self.value:.2f} (no spread)"
        spread = f"{self.low:.2f}–{self.high:.2f}"
        return f"≈1 ({spread})" if verdict == "noise" else f"{self.value:.2f} ({spread})"


def _num(row: dict, key: str) -> float | None:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else None


def ratio(row: dict, base: dict, column: str) -> Ratio | None:
    """The speed ratio ``column`` of a flattened record against its baseline's, with its spread."""
    metric, slow, lower_is_faster = SPEEDS[column]
    m, b, m_slow, b_slow = _num(row, metric), _num(base, metric), _num(row, slow), _num(base, slow)
    if not m or not b:
        return None
    expected = bool(row.get("speedup_expected")) or bool(row.get("baseline"))
    if lower_is_faster:  # milliseconds
        value = b / m
        low, high = (b / m_slow, b_slow / m) if m_slow and b_slow else (None, None)
    else:  # tokens per second
        value = m / b
        low, high = (m_slow / b, m / b_slow) if m_slow and b_slow else (None, None)
    return Ratio(value, low, high, expected)


def pooled(ratios: list[Ratio]) -> Ratio | None:
    """Several runs of one config (seeds): the mean ratio, the union of their intervals."""
    if not ratios:
        return None
    lows, highs = [r.low for r in ratios], [r.high for r in ratios]
    spread = None not in lows and None not in highs
    return Ratio(sum(r.value for r in ratios) / len(ratios), min(lows) if spread else None, max(highs) if spread else None,
                 all(r.expected for r in ratios))
