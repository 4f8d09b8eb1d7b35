"""Claims registry: papers' published numbers and relations, checked against the results store.

``results/claims/*.yaml`` hold one paper each (``paper``: id, title, venue, arXiv id, code at a
commit) and its ``claims``, validated at load (one-line errors naming the file and the field):

* a **published number**: ``source`` (table/figure), ``model``, ``setting`` (method and its
  parameters), ``metric`` (``<evaluator>.<metric>``), ``value``, optional ``op`` (``=`` within
  ``tolerance``, relative, default 2%; ``<=``; ``>=``), ``protocol`` (fields the measurement must
  share: ``perplexity.seqlen``, ``calibration.dataset``, ...) and ``provenance``;
* a **relation**, checkable on any model: ``statement``, ``metric``, ``relation``: terms
  (selectors: ``{method: wanda, sparsity: 0.5}``; a list value matches any of its items)
  alternating with operators ``<``, ``<=``, ``>``, ``>=``, ``<<`` (``a << b``: a <= ``factor`` · b,
  factor 0.5 by default), optional ``match`` (parameters the terms must share, e.g. ``drop_n``:
  each shared value is a case), ``compare: value | increase`` (the metric minus the group's
  dense run) and ``model`` (default: any).

``check`` joins claims to the leaderboard's configs (seeds pooled: means, n) and returns per claim
``confirmed`` / ``contradicted`` (with the measured numbers and the delta) / ``not checkable
here`` with the reason: the model is not in the store, the method is not implemented here, the
protocol differs (naming the field), or no record holds the setting.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimbench.errors import ConfigError

CLAIMS_DIR = Path(__file__).resolve().parents[1] / "results" / "claims"
OPS = ("<", "<=", ">", ">=", "<<")
VALUE_OPS = ("=", "<=", ">=")
COMPARES = ("value", "increase")
CONFIRMED, CONTRADICTED, NOT_CHECKABLE = "confirmed", "contradicted", "not checkable here"
PAPER_KEYS = {"id", "title", "authors", "venue", "arxiv", "code", "note"}
PUBLISHED_KEYS = {"id", "source", "model", "setting", "metric", "value", "op", "tolerance", "protocol", "provenance", "note",
                  "checked_by"}
RELATION_KEYS = {"id", "source", "statement", "metric", "relation", "match", "compare", "factor", "model", "protocol",
                 "provenance", "note", "checked_by"}


# -- the schema -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Paper:
    id: str
    title: str
    authors: str = ""
    venue: str = ""
    arxiv: str = ""
    code: str = ""
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """A published number (``value`` set) or a relation (``relation`` set)."""

    paper: Paper
    id: str
    source: str
    metric: str
    provenance: str
    model: str = "any"
    setting: dict = field(default_factory=dict)
    value: float | None = None
    op: str = "="
    tolerance: float = 0.02
    statement: str = ""
    relation: tuple = ()
    match: tuple = ()
    compare: str = "value"
    factor: float = 0.5
    protocol: dict = field(default_factory=dict)
    note: str = ""
    checked_by: str = ""  # a committed benchmark result that checks the claim where the store cannot (named when not checkable)

    @property
    def is_relation(self) -> bool:
        return bool(self.relation)

    @property
    def terms(self) -> list[dict]:
        return list(self.relation[0::2])

    @property
    def ops(self) -> list[str]:
        return list(self.relation[1::2])

    @property
    def text(self) -> str:
        if self.is_relation:
            return self.statement
        params = ", ".join(f"{k}={v}" for k, v in self.setting.items() if k != "method")
        return f"{self.setting.get('method')}({params}): {self.metric} {self.op} {self.value:g}"


class _Where:
    """Where a value sits in a claims file, for one-line errors."""

    def __init__(self, path: Path, at: str = "") -> None:
        self.path, self.at = path, at

    def __truediv__(self, key) -> "_Where":
        return _Where(self.path, f"{self.at}[{key}]" if isinstance(key, int) else f"{self.at}.{key}".lstrip("."))

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path.name}: {self.at + ': ' if self.at else ''}{message}")


def _keys(node: Any, allowed: set, required: set, where: _Where) -> dict:
    if not isinstance(node, dict):
        raise where.error(f"expected a mapping, got {type(node).__name__}")
    for key in node:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            raise where.error(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    missing = sorted(required - set(node))
    if missing:
        raise where.error(f"missing {', '.join(repr(m) for m in missing)}")
    return node


def _str(node: dict, key: str, where: _Where, default: str = "") -> str:
    value = node.get(key, default)
    if not isinstance(value, str) or (key in node and not value.strip()):
        raise (where / key).error(f"expected a non-empty string, got {value!r}")
    return value


def _number(node: dict, key: str, where: _Where, default: float | None = None) -> float | None:
    value = node.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise (where / key).error(f"expected a number, got {value!r}")
    return None if value is None else float(value)


def _metric(node: dict, where: _Where) -> str:
    metric = _str(node, "metric", where)
    if "." not in metric:
        raise (where / "metric").error(f"expected <evaluator>.<metric> (e.g. perplexity.perplexity), got {metric!r}")
    return metric


def _selector(node: Any, where: _Where) -> dict:
    if not isinstance(node, dict) or not isinstance(node.get("method"), str):
        raise where.error(f"expected a selector such as {{method: wanda, sparsity: 0.5}}, got {node!r}")
    return dict(node)


def _relation(node: dict, where: _Where) -> tuple:
    items = node.get("relation")
    if not isinstance(items, list) or len(items) < 3 or len(items) % 2 == 0:
        raise (where / "relation").error("expected [term, operator, term, ...] with at least two terms")
    for i, item in enumerate(items):
        if i % 2 and item not in OPS:
            raise (where / "relation" / i).error(f"unknown operator {item!r} (known: {', '.join(OPS)})")
        if not i % 2:
            _selector(item, where / "relation" / i)
    return tuple(items)


def parse_claim(node: Any, paper: Paper, where: _Where) -> Claim:
    relation = isinstance(node, dict) and "relation" in node
    allowed = RELATION_KEYS if relation else PUBLISHED_KEYS
    required = {"id", "source", "statement", "metric", "relation", "provenance"} if relation else \
        {"id", "source", "model", "setting", "metric", "value", "provenance"}
    node = _keys(node, allowed, required, where)
    common = dict(paper=paper, id=_str(node, "id", where), source=_str(node, "source", where), metric=_metric(node, where),
                  provenance=_str(node, "provenance", where), note=str(node.get("note", "")).strip(),
                  protocol=_protocol(node, where), checked_by=_str(node, "checked_by", where, ""))
    if relation:
        compare = node.get("compare", "value")
        if compare not in COMPARES:
            raise (where / "compare").error(f"expected one of {', '.join(COMPARES)}, got {compare!r}")
        match = node.get("match", [])
        if not isinstance(match, list) or not all(isinstance(m, str) for m in match):
            raise (where / "match").error(f"expected a list of parameter names, got {match!r}")
        return Claim(**common, statement=_str(node, "statement", where), relation=_relation(node, where), match=tuple(match),
                     compare=compare, factor=_number(node, "factor", where, 0.5), model=_str(node, "model", where, "any"))
    op = node.get("op", "=")
    if op not in VALUE_OPS:
        raise (where / "op").error(f"expected one of {', '.join(VALUE_OPS)}, got {op!r}")
    return Claim(**common, model=_str(node, "model", where), setting=_selector(node["setting"], where / "setting"),
                 value=_number(node, "value", where), op=op, tolerance=_number(node, "tolerance", where, 0.02))


def _protocol(node: dict, where: _Where) -> dict:
    protocol = node.get("protocol", {})
    if not isinstance(protocol, dict) or not all(isinstance(k, str) and "." in k for k in protocol):
        raise (where / "protocol").error("expected a mapping of <evaluator|calibration>.<field>: value")
    return dict(protocol)


def load_file(path: Path) -> list[Claim]:
    import yaml

    where = _Where(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise where.error(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    doc = _keys(doc, {"paper", "claims"}, {"paper", "claims"}, where)
    pnode = _keys(doc["paper"], PAPER_KEYS, {"id", "title"}, where / "paper")
    paper = Paper(**{k: str(v) for k, v in pnode.items()})
    if not isinstance(doc["claims"], list) or not doc["claims"]:
        raise (where / "claims").error("expected a non-empty list of claims")
    return [parse_claim(node, paper, where / "claims" / i) for i, node in enumerate(doc["claims"])]


def load_claims(directory: str | Path = CLAIMS_DIR) -> list[Claim]:
    """Every claim of every ``*.yaml`` in ``directory``; ids are unique across files."""
    claims, seen = [], {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for claim in load_file(path):
            if claim.id in seen:
                raise ConfigError(f"{path.name}: claim id {claim.id!r} is also used in {seen[claim.id]}")
            seen[claim.id] = path.name
            claims.append(claim)
    return claims


# -- checking -----------------------------------------------------------------------------------------
@dataclass
class Verdict:
    claim: Claim
    status: str
    measured: str = ""
    why: str = ""


def check(claims: list[Claim], records) -> list[Verdict]:
    """Each claim against the store's records (pooled over seeds, one protocol group at a time)."""
    from slimbench.leaderboard.board import build

    board = build([r for r in records if r.status == "ok"])
    by_id = {r.run_id: r for r in records}
    verdicts = [(check_relation if c.is_relation else check_published)(c, board, by_id) for c in claims]
    for v in verdicts:
        if v.status == NOT_CHECKABLE and v.claim.checked_by:
            v.why += f"; checked outside the store: {v.claim.checked_by}"
    return verdicts


def _unknown_methods(methods: list[str]) -> list[str]:
    from slimbench.methods import METHODS

    known = {name for name, _ in METHODS.items()}
    return sorted({m for m in methods for part in m.split("+") if part not in known})


def _not_implemented(methods: list[str]) -> str:
    return f"method{'s' if len(methods) > 1 else ''} {', '.join(methods)} {'are' if len(methods) > 1 else 'is'} not implemented in this slimbench"


def selects(config, selector: dict) -> bool:
    row = config.first
    if row["method"] != selector["method"]:
        return False
    return all(_same(row.get(f"param.{k}"), v) for k, v in selector.items() if k != "method")


def _same(value, wanted) -> bool:
    if isinstance(wanted, list):
        return any(_same(value, w) for w in wanted)
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)) and not isinstance(value, bool):
        return math.isclose(value, wanted, rel_tol=1e-9, abs_tol=1e-12)
    return value == wanted or str(value) == str(wanted)


_MISSING = object()


def protocol_value(record, key: str):
    """``perplexity.seqlen`` -> the record's perplexity protocol's seqlen; ``calibration.x`` -> its calibration."""
    where, name = key.split(".", 1)
    if where == "calibration":
        cal = (record.compression.calibration if record.compression is not None else None) or {}
        return cal.get(name, _MISSING) if cal else None
    return (record.protocols.get(where) or {}).get(name, _MISSING)


def protocol_mismatches(config, claim: Claim, by_id: dict) -> list[str]:
    """The claim's protocol fields that this config's record does not share (``field (claim x, store y)``)."""
    record = by_id[config.first["run_id"]]
    out = []
    for key, wanted in claim.protocol.items():
        got = protocol_value(record, key)
        if got is _MISSING or not _same(got, wanted):
            out.append(f"{key} (claim {wanted}, store {'not recorded' if got is _MISSING else got})")
    return out


def _stat(config, claim: Claim, group):
    from slimbench.leaderboard.aggregate import Stat
    from slimbench.leaderboard.board import speed_of, stat_of
    from slimbench.leaderboard.speed import SPEEDS

    if claim.metric in SPEEDS:  # a speed ratio against the group's dense run
        ratio = speed_of(config, claim.metric)
        return None if ratio is None else Stat(ratio.value, config.n)
    st = stat_of(config, claim.metric)
    if st is None or claim.compare == "value":
        return st
    base = next((c for c in group.configs if c.first.get("baseline") and c.runs), None)
    base_st = None if base is None else stat_of(base, claim.metric)
    return None if base_st is None else Stat(st.mean - base_st.mean, st.n, st.ci95, ())


def _fmt(st) -> str:
    return f"{st.mean:.4g}" + (f" ± {st.ci95:.2g} (n={st.n})" if st.ci95 else "")


def _holds(a: float, op: str, b: float, factor: float) -> bool:
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "<<": a <= factor * b}[op]


def _overlap(a, b) -> bool:
    return bool(a.ci95 and b.ci95) and abs(a.mean - b.mean) <= a.ci95 + b.ci95


def _term_label(selector: dict, config, claim: Claim) -> str:
    """``method(match params)``; where two terms name the same method (SmoothQuant with and without
    smoothing), also the parameters that tell them apart."""
    keys = list(claim.match)
    if sum(t["method"] == selector["method"] for t in claim.terms) > 1:
        keys = [k for k in selector if k != "method" and k not in keys] + keys
    shared = ", ".join(f"{m}={config.first.get(f'param.{m}')}" for m in keys)
    return selector["method"] + (f"({shared})" if shared else "")


def _cases(claim: Claim, group, by_id: dict) -> tuple[list[tuple], list[str]]:
    """The term-config combinations of one group that agree on ``match``; and the terms it lacks."""
    options = []
    for term in claim.terms:
        found = [c for c in group.configs if c.runs and selects(c, term) and not protocol_mismatches(c, claim, by_id)]
        options.append(found)
    lacking = [t["method"] for t, found in zip(claim.terms, options) if not found]
    if lacking:
        return [], lacking
    cases = [case for case in itertools.product(*options)
             if all(len({repr(c.first.get(f"param.{m}")) for c in case}) == 1 for m in claim.match)]
    return cases, []


def _evaluate(claim: Claim, group, case: tuple) -> tuple[bool, str] | None:
    stats = [_stat(c, claim, group) for c in case]
    if any(s is None for s in stats):
        return None
    parts, ok, notes = [_term_label(claim.terms[0], case[0], claim) + " " + _fmt(stats[0])], True, []
    for i, op in enumerate(claim.ops):
        a, b = stats[i], stats[i + 1]
        holds = _holds(a.mean, op, b.mean, claim.factor)
        ok &= holds
        rhs = f"{claim.factor:g} × " if op == "<<" else ""
        parts.append(f"{op} {rhs}{_term_label(claim.terms[i + 1], case[i + 1], claim)} {_fmt(b)}")
        if not holds:
            notes.append(f"fails: {a.mean:.4g} {op} {rhs}{b.mean:.4g} (delta {a.mean - b.mean:+.4g})")
        elif op != "<<" and _overlap(a, b):
            notes.append("intervals overlap")
    return ok, " ".join(parts) + (f" [{'; '.join(notes)}]" if notes else "")


def check_relation(claim: Claim, board, by_id: dict) -> Verdict:
    unknown = _unknown_methods([t["method"] for t in claim.terms])
    if unknown:
        return Verdict(claim, NOT_CHECKABLE, why=_not_implemented(unknown))
    groups = [g for g in board.groups if claim.model in ("any", g.model)]
    if not groups:
        where = "the store holds no runs" if claim.model == "any" else f"model {claim.model} is not in the store"
        return Verdict(claim, NOT_CHECKABLE, why=where)
    results, lacking = [], None  # lacking: the terms missing from the most complete group
    for group in groups:
        cases, missing = _cases(claim, group, by_id)
        if lacking is None or len(set(missing)) < len(lacking):
            lacking = set(missing)
        for case in cases:
            outcome = _evaluate(claim, group, case)
            if outcome is not None:
                results.append((group, *outcome))
    if not results:
        if lacking:
            return Verdict(claim, NOT_CHECKABLE, why=f"no protocol group holds every term (missing: {', '.join(sorted(lacking))})")
        shared = f" in a shared setting of {', '.join(claim.match)}" if claim.match else ""
        return Verdict(claim, NOT_CHECKABLE, why=f"no protocol group holds every term with {claim.metric}{shared}")
    failed = [r for r in results if not r[1]]
    shown = failed or results
    measured = "; ".join(f"{g.model}/{g.suite}: {text}" for g, _, text in shown[:4])
    measured += f"; ... ({len(shown)} cases)" if len(shown) > 4 else ""
    return Verdict(claim, CONTRADICTED if failed else CONFIRMED, measured=measured,
                   why=f"{len(failed)} of {len(results)} case(s) fail" if failed else f"{len(results)} case(s)")


def check_published(claim: Claim, board, by_id: dict) -> Verdict:
    groups = [g for g in board.groups if g.model == claim.model]
    if not groups:  # the first reason: a paper's model is what a user most often lacks
        held = ", ".join(sorted({g.model for g in board.groups})) or "nothing"
        return Verdict(claim, NOT_CHECKABLE, why=f"model {claim.model} is not available here (the store holds: {held})")
    unknown = _unknown_methods([claim.setting["method"]])
    if unknown:
        return Verdict(claim, NOT_CHECKABLE, why=_not_implemented(unknown))
    configs = [(g, c) for g in groups for c in g.configs if c.runs and selects(c, claim.setting)]
    measured = [(g, c) for g, c in configs if any(claim.metric in r for r in c.runs)]
    if not configs or not measured:
        what = "the setting" if not configs else f"metric {claim.metric}"
        return Verdict(claim, NOT_CHECKABLE, why=f"protocol differs: no record of {claim.model} measures {what}")
    checked = [(g, c) for g, c in measured if not protocol_mismatches(c, claim, by_id)]
    if not checked:
        closest = min((protocol_mismatches(c, claim, by_id) for _, c in measured), key=len)
        return Verdict(claim, NOT_CHECKABLE, why="protocol differs: " + "; ".join(closest))
    group, config = checked[0]
    st = _stat(config, claim, group)
    delta = st.mean - claim.value
    ok = {"=": abs(delta) <= claim.tolerance * abs(claim.value), "<=": st.mean <= claim.value, ">=": st.mean >= claim.value}[claim.op]
    rel = f" ({delta / claim.value:+.1%})" if claim.value else ""
    return Verdict(claim, CONFIRMED if ok else CONTRADICTED, measured=f"{_fmt(st)} vs published {claim.value:g}{rel}",
                   why=f"{claim.op} within {claim.tolerance:.0%}" if claim.op == "=" else f"published bound {claim.op} {claim.value:g}")


# -- output -------------------------------------------------------------------------------------------
def to_markdown(verdicts: list[Verdict]) -> str:
    from slimbench.leaderboard.render import markdown_table

    counts = {s: sum(v.status == s for v in verdicts) for s in (CONFIRMED, CONTRADICTED, NOT_CHECKABLE)}
    head = f"{len(verdicts)} claims: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    rows = [[v.claim.id, f"{v.claim.paper.id} · {v.claim.source}", v.claim.model, v.claim.text, v.status, v.measured or "-",
             v.why or "-"] for v in verdicts]
    return head + "\n\n" + markdown_table(["claim", "paper · source", "model", "claim", "status", "measured", "detail"], rows)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="slimbench claims", description="Papers' claims (results/claims/*.yaml) against the store.")
    p.add_argument("--results-dir", default=os.environ.get("SLIMBENCH_RESULTS_DIR", "results/runs"))
    p.add_argument("--claims-dir", default=str(CLAIMS_DIR))
    p.add_argument("--paper", help="only this paper's claims (its id)")
    p.add_argument("--status", help="only claims with this status (confirmed, contradicted, not checkable here)")
    p.add_argument("--out", help="also write the table to this Markdown file (e.g. results/claims/status.md)")
    args = p.parse_args(argv)
    from slimbench.store import ResultStore

    try:
        claims = load_claims(args.claims_dir)
    except ConfigError as exc:
        print(f"slimbench: error: {exc}", file=sys.stderr)
        return 2
    claims = [c for c in claims if not args.paper or c.paper.id == args.paper]
    verdicts = check(claims, ResultStore(args.results_dir).latest())
    verdicts = [v for v in verdicts if not args.status or v.status == args.status]
    table = to_markdown(verdicts)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    return 0
