"""Seeds and intervals: one leaderboard row per config, pooled over its seeds.

Records that differ only in their seeds (the global ``seed`` and the calibration draw
``calib.seed``, e.g. ``slimbench -m experiment=seeds`` or ``seeds=[0,1,2]``) are one config.
Each numeric column becomes a ``Stat``: the mean over the config's successful runs, n, and the
half-width of the 95% Student-t confidence interval, t(0.975, n-1) · s / sqrt(n), where s is the
sample standard deviation (none for n = 1). Window-level stderrs that records hold (e.g.
``perplexity.perplexity.stderr``) are columns of their own, averaged over the seeds. Records
are pooled only within one protocol group: a seed that an evaluator's protocol holds (a
diffusion model's sampling seed) is left out of the group's fingerprint, every other field stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from slimbench.records import RunRecord, stable_hash
from slimbench.store import flatten_record

SEED_FIELDS = ("seed",)  # protocol fields that name a repetition, not a protocol


@dataclass(frozen=True)
class Stat:
    """A column over a config's runs: mean, n, and the 95% t-interval half-width (n >= 2)."""

    mean: float
    n: int
    ci95: float | None = None
    values: tuple = ()

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.mean + self.ci95


def t_interval(values: list[float], level: float = 0.95) -> Stat:
    """Mean and Student-t confidence half-width of ``values``."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Stat(mean, n, None, tuple(values))
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Stat(mean, n, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n), tuple(values))


def seeds_of(rec: RunRecord) -> tuple:
    """(global seed, calibration seed) of a record (None where it has none)."""
    cal = rec.compression.calibration if rec.compression is not None else None
    return rec.config.get("seed"), (cal or {}).get("seed")


def calibration_label(rec: RunRecord) -> str:
    """The calibration set without its seed, e.g. ``wikitext2/validation 32x2048``."""
    cal = (rec.compression.calibration if rec.compression is not None else None) or {}
    if not cal:
        return "-"
    draw = f"{cal.get('nsamples')}x{cal.get('seqlen')}" if "seqlen" in cal else f"{cal.get('nsamples')} images x {cal.get('steps')} steps"
    return f"{cal.get('dataset')}/{cal.get('split', '-')} {draw}"


def group_fingerprint(rec: RunRecord) -> str | None:
    """The record's protocol fingerprint, or, if a machine-independent protocol holds a seed,
    the hash of those protocols without it (so sampling seeds pool)."""
    quality = {n: p for n, p in rec.protocols.items() if not machine_dependent(n)}
    if not any(k in p for p in quality.values() for k in SEED_FIELDS):
        return rec.protocol_fingerprint
    stripped = {n: {k: v for k, v in p.items() if k not in SEED_FIELDS and k != "fingerprint"} for n, p in quality.items()}
    return "s" + stable_hash(stripped, 15)


def machine_dependent(evaluator: str) -> bool:
    """Whether an evaluator's numbers depend on the machine (latency); unknown ones do not."""
    from slimbench.evaluation import EVALUATORS

    try:
        return bool(getattr(EVALUATORS.get(evaluator), "machine_dependent", False))
    except KeyError:
        return False


def row_of(rec: RunRecord) -> dict:
    """A record's flattened row plus what pooling needs: seeds, seed-free calibration, group."""
    row = flatten_record(rec)
    row["seed"], row["calib_seed"] = seeds_of(rec)
    row["calibration_set"] = calibration_label(rec)
    row["group_fingerprint"] = group_fingerprint(rec)
    if _finite(row.get("size.linear_bytes")):
        row["size.linear_mb"] = row["size.linear_bytes"] / 1e6
    return row


def config_key(row: dict) -> tuple:
    return (row["model"], row["dtype"], row["suite"], row["group_fingerprint"], row["method"], row["method_config"], row["calibration_set"])


@dataclass
class ConfigRow:
    """One config of a protocol group: its runs (ok ones pooled, failed ones listed)."""

    key: tuple
    runs: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    @property
    def first(self) -> dict:
        return (self.runs or self.failed)[0]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> str:
        """The seeds pooled: calibration seeds where the config calibrates, else global seeds."""
        seeds = sorted({r["calib_seed"] if r["calib_seed"] is not None else r["seed"] for r in self.runs} - {None})
        return ",".join(str(s) for s in seeds) or "-"

    def stat(self, column: str) -> Stat | None:
        values = [float(r[column]) for r in self.runs if _finite(r.get(column))]
        return t_interval(values) if values else None

    def value(self, column: str):
        """A non-numeric column's value if the runs agree on it, else None."""
        values = {repr(r.get(column)) for r in self.runs or self.failed}
        return self.first.get(column) if len(values) == 1 else None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pool(rows: list[dict]) -> list[ConfigRow]:
    """Rows (one per record) -> one ConfigRow per config, in first-seen order."""
    configs: dict[tuple, ConfigRow] = {}
    for row in rows:
        config = configs.setdefault(config_key(row), ConfigRow(config_key(row)))
        (config.runs if row["status"] == "ok" else config.failed).append(row)
    return list(configs.values())
