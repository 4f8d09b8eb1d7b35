"""The claims registry: schema errors in one line, statuses against synthetic stores, and the
committed registry (every selector names real parameters of the methods slimbench implements)."""

import dataclasses

import pytest
import yaml

from slimbench.claims import (
    CONFIRMED, CONTRADICTED, NOT_CHECKABLE, CLAIMS_DIR, check, load_claims, load_file, to_markdown,
)
from slimbench.errors import ConfigError
from slimbench.methods import METHODS
from slimbench.records import CompressionReport, Metric, RunRecord

PAPER = {"id": "p", "title": "A paper"}
RELATION = {"id": "r", "source": "Table 1", "statement": "a < b", "metric": "perplexity.perplexity", "provenance": "[paper]",
            "relation": [{"method": "wanda", "sparsity": 0.5}, "<", {"method": "magnitude", "sparsity": 0.5}], "match": ["pattern"]}
PUBLISHED = {"id": "n", "source": "Table 2", "model": "m", "setting": {"method": "wanda", "sparsity": 0.5},
             "metric": "perplexity.perplexity", "value": 10.0, "protocol": {"perplexity.seqlen": 2048}, "provenance": "[paper]"}


def _write(tmp_path, claims, name="x.yaml", paper=PAPER):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"paper": paper, "claims": claims}))
    return path


@pytest.mark.parametrize("claim,message", [
    ({**PUBLISHED, "valu": 1.0}, "x.yaml: claims[0]: unknown key 'valu'; did you mean 'value'?"),
    ({k: v for k, v in PUBLISHED.items() if k != "model"}, "x.yaml: claims[0]: missing 'model'"),
    ({**PUBLISHED, "metric": "perplexity"}, "x.yaml: claims[0].metric: expected <evaluator>.<metric>"),
    ({**PUBLISHED, "value": "ten"}, "x.yaml: claims[0].value: expected a number, got 'ten'"),
    ({**PUBLISHED, "op": "~"}, "x.yaml: claims[0].op: expected one of =, <=, >="),
    ({**RELATION, "relation": [{"method": "wanda"}, "=<", {"method": "rtn"}]}, "x.yaml: claims[0].relation[1]: unknown operator '=<'"),
    ({**RELATION, "relation": [{"method": "wanda"}, "<"]}, "x.yaml: claims[0].relation: expected [term, operator, term, ...]"),
    ({**RELATION, "relation": ["wanda", "<", {"method": "rtn"}]}, "x.yaml: claims[0].relation[0]: expected a selector"),
    ({**RELATION, "compare": "ratio"}, "x.yaml: claims[0].compare: expected one of value, increase"),
])
def test_bad_claims_fail_at_load_in_one_line(tmp_path, claim, message):
    with pytest.raises(ConfigError) as err:
        load_file(_write(tmp_path, [claim]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_claim_ids_are_unique_across_files(tmp_path):
    _write(tmp_path, [PUBLISHED], "a.yaml")
    _write(tmp_path, [{**RELATION, "id": "n"}], "b.yaml", paper={"id": "q", "title": "B"})
    with pytest.raises(ConfigError, match="b.yaml: claim id 'n' is also used in a.yaml"):
        load_claims(tmp_path)


def _rec(run_id, method, ppl, config=None, seed=0, model="m", seqlen=2048, fp="p"):
    comp = CompressionReport(method=method, execution_path="dense" if method == "dense" else "masked-dense", baseline=method == "dense",
                             calibration={"dataset": "wikitext2", "split": "validation", "nsamples": 32, "seqlen": 2048, "seed": seed})
    return RunRecord(run_id=run_id, attempt_id="a", status="ok", model={"name": model}, config={"seed": seed},
                     method={"name": method, "stages": [{"name": method, "config": config or {}}]}, eval={"suite": "quick"},
                     protocol_fingerprint=fp, protocols={"perplexity": {"fingerprint": fp, "seqlen": seqlen}},
                     metrics=[Metric("perplexity", ppl, stderr=0.1, evaluator="perplexity")], compression=comp)


def _claim(**changes):
    """A claim parsed from YAML: the relation above or the published number above, with changes."""
    import tempfile
    from pathlib import Path

    base = RELATION if "relation" in changes else PUBLISHED
    return load_file(_write(Path(tempfile.mkdtemp()), [{**base, **changes}]))[0]


STORE = [_rec("d", "dense", 20.0), _rec("w0", "wanda", 30.0, {"sparsity": 0.5, "pattern": "unstructured"}, seed=0),
         _rec("w1", "wanda", 32.0, {"sparsity": 0.5, "pattern": "unstructured"}, seed=1),
         _rec("m", "magnitude", 500.0, {"sparsity": 0.5, "pattern": "unstructured"}),
         _rec("w24", "wanda", 90.0, {"sparsity": 0.5, "pattern": "2:4"}), _rec("m24", "magnitude", 60.0, {"sparsity": 0.5, "pattern": "2:4"})]


def test_a_relation_is_checked_per_matched_case_and_a_failing_case_contradicts_it():
    claim = _claim(relation=RELATION["relation"])
    verdict = check([claim], STORE[:4])[0]
    assert verdict.status == CONFIRMED and "wanda(pattern=unstructured) 31 ± " in verdict.measured and "(n=2)" in verdict.measured
    verdict = check([claim], STORE)[0]  # at 2:4 magnitude is better in this store: one case of two fails
    assert verdict.status == CONTRADICTED and verdict.why == "1 of 2 case(s) fail"
    assert "fails: 90 < 60 (delta +30)" in verdict.measured
    assert check([claim], [])[0].why == "the store holds no runs"  # a claim on any model, an empty store
    assert check([_claim(relation=RELATION["relation"], model="x")], STORE)[0].why == "model x is not in the store"


def test_increase_over_dense_and_the_much_less_operator():
    store = [_rec("d", "dense", 20.0), _rec("a4", "attn_drop", 21.0, {"drop_n": 4}), _rec("b4", "block_drop", 30.0, {"drop_n": 4}),
             _rec("a8", "attn_drop", 24.0, {"drop_n": 8}), _rec("b8", "block_drop", 26.0, {"drop_n": 8})]
    claim = _claim(relation=[{"method": "attn_drop"}, "<<", {"method": "block_drop"}], match=["drop_n"], compare="increase", factor=0.5)
    verdict = check([claim], store)[0]
    assert verdict.status == CONTRADICTED  # drop_n=8: +4 is not <= 0.5 * +6
    assert "fails: 4 << 0.5 × 6" in verdict.measured and verdict.why == "1 of 2 case(s) fail"


def test_published_numbers_say_why_they_cannot_be_checked_or_give_the_delta():
    store = STORE[:4]
    assert check([_claim(model="llama-7b")], store)[0].why == "model llama-7b is not available here (the store holds: m)"
    assert check([_claim(setting={"method": "learning_to_cache"})], store)[0].why == \
        "method learning_to_cache is not implemented in this slimbench"
    verdict = check([_claim(protocol={"perplexity.seqlen": 4096, "calibration.dataset": "c4"})], store)[0]
    assert verdict.status == NOT_CHECKABLE
    assert verdict.why == "protocol differs: calibration.dataset (claim c4, store wikitext2); perplexity.seqlen (claim 4096, store 2048)"
    assert check([_claim(metric="lm_eval.word_perplexity")], store)[0].why == \
        "protocol differs: no record of m measures metric lm_eval.word_perplexity"
    ok = check([_claim(value=31.5)], store)[0]
    assert ok.status == CONFIRMED and ok.measured.startswith("31 ± ") and "vs published 31.5 (-1.6%)" in ok.measured
    off = check([_claim(value=25.0)], store)[0]
    assert off.status == CONTRADICTED and "(+24.0%)" in off.measured
    assert check([_claim(value=40.0, op="<=")], store)[0].status == CONFIRMED


def test_a_claim_checked_by_a_benchmark_names_it_when_the_store_cannot():
    verdict = check([_claim(model="llama-7b", checked_by="benchmarks/x.py, results/benchmarks/x.md")], STORE[:4])[0]
    assert verdict.status == NOT_CHECKABLE
    assert verdict.why == "model llama-7b is not available here (the store holds: m); checked outside the store: benchmarks/x.py, results/benchmarks/x.md"
    assert check([_claim(value=31.5, checked_by="b")], STORE[:4])[0].why == "= within 2%"  # checkable: the store's verdict alone


def test_terms_of_one_method_are_told_apart_by_their_parameters():
    store = [_rec("s1", "smoothquant", 19.5, {"smooth": True, "alpha": 0.5}), _rec("s0", "smoothquant", 19.8, {"smooth": False, "alpha": 0.5})]
    claim = _claim(relation=[{"method": "smoothquant", "smooth": True}, "<", {"method": "smoothquant", "smooth": False}], match=[])
    verdict = check([claim], store)[0]
    assert verdict.status == CONFIRMED
    assert "smoothquant(smooth=True) 19.5 < smoothquant(smooth=False) 19.8" in verdict.measured


def test_the_status_table_counts_every_status():
    verdicts = check([_claim(relation=RELATION["relation"]), _claim(model="x")], STORE[:4])
    table = to_markdown(verdicts)
    assert table.startswith("2 claims: 1 confirmed, 0 contradicted, 1 not checkable here")
    assert "| r | p · Table 1 | any | a < b | confirmed |" in table


def test_the_committed_registry_loads_and_names_real_parameters():
    claims = load_claims(CLAIMS_DIR)
    assert len({c.paper.id for c in claims}) >= 15 and sum(c.is_relation for c in claims) >= 10
    for claim in claims:
        for selector in (claim.terms if claim.is_relation else [claim.setting]):
            try:
                cls = METHODS.get(selector["method"])
            except KeyError:
                continue  # a method slimbench does not implement: reported as not checkable
            fields = {f.name for f in dataclasses.fields(cls.Config)}
            assert set(selector) - {"method"} <= fields, (claim.id, selector)
        assert set(claim.match) <= {f.name for _, m in METHODS.items() for f in dataclasses.fields(m.Config)}, claim.id


def test_an_unchecked_relation_names_what_the_most_complete_group_lacks():
    wanda = {"sparsity": 0.5, "pattern": "unstructured"}
    other_group = [_rec("d2", "dense", 20.0, fp="q"), _rec("m2", "magnitude", 400.0, wanda, fp="q")]
    claim = _claim(relation=[{"method": "sparsegpt"}, "<", {"method": "wanda"}])
    # group p lacks sparsegpt; group q lacks both: the reason is the nearest group's gap, not the union
    assert check([claim], STORE[:4] + other_group)[0].why == "no protocol group holds every term (missing: sparsegpt)"
    every_term = [_rec("s", "sparsegpt", 28.0, wanda)] + STORE[:4]
    assert check([_claim(relation=[{"method": "sparsegpt"}, "<", {"method": "wanda"}], metric="zeroshot.piqa.acc")], every_term)[0].why == \
        "no protocol group holds every term with zeroshot.piqa.acc in a shared setting of pattern"
