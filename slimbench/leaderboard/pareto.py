"""Pareto plots: quality against stored bytes and against measured latency, one point per config.

* One panel per protocol group (groups never mix); on the latency plot only the configs timed
  under the group's most common latency protocol (device, threads), the others are counted in
  the panel's title.
* Quality is the group's first metric of ``QUALITY`` that its records hold (perplexity on a log
  axis; zero-shot mean accuracy; FID). A point's vertical bar is its 95% t-interval over seeds
  (n >= 2), else the metric's window-level stderr.
* x: the stored bytes of the block linears (``size.linear_bytes``), or the decode time per
  token (median, bar to its p90).
* The Pareto front, the configs no other config beats on both axes, is drawn as a step line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimbench.leaderboard.aggregate import ConfigRow
from slimbench.leaderboard.board import Board, Group, stat_of

# (column, higher is better, axis label)
QUALITY = [
    ("perplexity.perplexity", False, "perplexity (lower is better)"),
    ("zeroshot.mean.acc", True, "zero-shot mean accuracy"),
]
AXES = {
    "bytes": ("size.linear_bytes", None, 1e-6, "stored bytes of the block linears (MB)"),
    "latency": ("latency.decode_ms_per_token", "latency.decode_ms_per_token_p90", 1.0, "decode ms/token (median, bar to p90)"),
}


@dataclass
class Point:
    label: str
    x: float
    y: float
    x_hi: float | None  # the slow end (latency)
    y_lo: float | None
    y_hi: float | None
    on_front: bool = False


def quality_metric(group: Group) -> tuple[str, bool, str] | None:
    """The group's quality column: the first of QUALITY present, else an FID metric."""
    keys = {k for c in group.configs for r in c.runs for k in r}
    for column in QUALITY:
        if column[0] in keys:
            return column
    fid = sorted(k for k in keys if k.startswith("fid.fid_") and not k.endswith(".stderr"))
    return (fid[0], False, fid[0].split(".", 1)[1] + " (lower is better)") if fid else None


def label(config: ConfigRow) -> str:
    """The method and its non-default parameters: ``svd_llm ratio=0.5``, ``wanda(pattern=2:4)+rtn(bits=8)``."""
    from slimbench.configs import config_to_dict
    from slimbench.methods import METHODS

    row = config.first
    names = row["method"].split("+")
    parts = []
    for i, name in enumerate(names):
        prefix = "param." if len(names) == 1 else f"param.{i}."
        params = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
        try:
            defaults = config_to_dict(METHODS.get(name).Config())
        except KeyError:
            defaults = {}
        changed = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if defaults.get(k, object()) != v)
        parts.append(f"{name} {changed}".strip() if len(names) == 1 else f"{name}({changed})")
    return "+".join(parts)


def pareto_front(points: list[Point], higher_is_better: bool) -> None:
    """Mark the points that no other point beats on both axes (smaller x and better y)."""
    best = None
    for p in sorted(points, key=lambda p: (p.x, -p.y if higher_is_better else p.y)):
        better = best is None or (p.y > best if higher_is_better else p.y < best)
        if better:
            p.on_front, best = True, p.y


def points(group: Group, axis: str, quality: tuple[str, bool, str]) -> tuple[list[Point], int]:
    """The group's points on one axis, and how many configs were left out (no value, other latency protocol)."""
    x_key, x_slow, scale, _ = AXES[axis]
    fingerprints = [r.get("fingerprint.latency") for c in group.configs for r in c.runs if r.get(x_key) is not None]
    common = max(set(fingerprints), key=fingerprints.count) if fingerprints else None
    out, left = [], 0
    for config in group.configs:
        runs = [r for r in config.runs if axis == "bytes" or r.get("fingerprint.latency") == common]
        view = ConfigRow(config.key, runs)
        x, y = stat_of(view, x_key), stat_of(view, quality[0])
        if not runs or x is None or y is None:
            left += bool(config.runs)
            continue
        slow = stat_of(view, x_slow) if x_slow else None
        y_err = _y_error(view, quality[0], y)
        out.append(Point(label(config), x.mean * scale, y.mean, None if slow is None else slow.mean * scale,
                         None if y_err is None else y.mean - y_err, None if y_err is None else y.mean + y_err))
    pareto_front(out, quality[1])
    return out, left


def _y_error(view: ConfigRow, column: str, y) -> float | None:
    """The 95% t-interval half-width over seeds, else the window-level stderr, else None."""
    if y.ci95 is not None:
        return y.ci95
    se = stat_of(view, column + ".stderr")
    return None if se is None else se.mean


def plot(board: Board, axis: str, path: str | Path, title: str = "") -> Path | None:
    """One PNG with a panel per protocol group that has a quality metric; None if there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(g, q) for g in board.groups if (q := quality_metric(g)) is not None]
    panels = [(g, q, *points(g, axis, q)) for g, q in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 6.5 * len(panels)), squeeze=False)
    for ax, (group, quality, pts, left) in zip(axes[:, 0], panels):
        _panel(ax, group, quality, pts, left, axis)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(ax, group: Group, quality, pts: list[Point], left: int, axis: str) -> None:
    for p in pts:
        yerr = [[p.y - p.y_lo], [p.y_hi - p.y]] if p.y_lo is not None else None
        xerr = [[0.0], [p.x_hi - p.x]] if p.x_hi is not None and p.x_hi >= p.x else None
        ax.errorbar(p.x, p.y, yerr=yerr, xerr=xerr, fmt="o", color="tab:red" if p.on_front else "tab:blue", ms=5, capsize=3)
        ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = sorted((p for p in pts if p.on_front), key=lambda p: p.x)
    ax.step([p.x for p in front], [p.y for p in front], where="post", color="tab:red", lw=1.2, label="Pareto front")
    ys = [p.y for p in pts if p.y > 0]
    if quality[0] == "perplexity.perplexity" and ys and max(ys) > 4 * min(ys):  # broken configs reach 1e4
        ax.set_yscale("log")
    ax.set_xlabel(AXES[axis][3])
    ax.set_ylabel(quality[2])
    note = f" · {left} config(s) without a value on this axis or timed under another latency protocol" if left else ""
    ax.set_title(group.title + note, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
