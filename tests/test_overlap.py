"""Calibration-evaluation overlap (``harness.overlap``): 13-grams shared between a candidate's
calibration text and a suite's items; ``validate`` warns, the policy can FAIL it."""

from __future__ import annotations

import pytest
import yaml

from harness import overlap
from harness.config import GatePolicy
from harness.gates import FAIL, INCONCLUSIVE, PASS, evaluate_policy
from harness.results import Record
from harness.validate import load_plan
from tests.conftest import ROOT, run_cli

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _text(offset: int, n: int) -> str:
    return " ".join(f"{WORDS[(offset + i) % len(WORDS)]}{(offset + i) // len(WORDS)}" for i in range(n))


def test_shared_13gram_is_found_and_12_words_are_not():
    cal = _text(0, 200)
    shared = _text(50, 13)  # 13 consecutive calibration words
    short = _text(100, 12)  # only 12
    items = [f"unrelated words here {shared} and more", f"unrelated {short} words", _text(1000, 40)]
    o = overlap.overlap(cal, items)
    assert o["items"] == 3 and o["items_overlapping"] == 1
    assert o["item_fraction"] == 1 / 3
    assert o["calibration_ngrams"] == 200 - 12
    assert o["calibration_ngrams_in_suite"] == 1


def test_normalization_ignores_case_punctuation_and_layout():
    cal = "The River, it flows North; and the farmers (who settled) dug channels to carry water to fields."
    item = "the river it flows\nnorth and THE farmers who settled dug channels to carry water to fields"
    assert overlap.overlap(cal, [item])["item_fraction"] == 1.0
    assert overlap.overlap(cal, ["a short item"])["item_fraction"] == 0.0


def test_hashes_are_linear_and_collision_free_on_distinct_ngrams():
    import numpy as np

    ids = np.arange(1, 50_001, dtype=np.uint64)
    h = overlap.ngram_hashes(ids)
    assert h.size == 50_000 - 12 and np.unique(h).size == h.size


def _calibration_domain(tmp_path, code_dataset: str | None = None):
    plan = yaml.safe_load((ROOT / "configs" / "calibration-domain.yaml").read_text())
    if code_dataset:
        plan["suites"][0]["params"]["dataset"] = code_dataset
    path = tmp_path / "calibration-domain.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_calibration_domain_code_on_the_same_problems_is_flagged(tmp_path, qg_home):
    """configs/calibration-domain.yaml keeps calibration (HumanEval 0-81) and evaluation (82-163)
    apart; evaluated on the problems it calibrated on, the code candidates are flagged."""
    same = overlap.plan_overlap(load_plan(_calibration_domain(tmp_path, "humaneval[0:82]"), check_names=False))
    for cand in ("iq3_m-cal-code", "gptq-cal-code"):
        assert same[cand]["code"]["item_fraction"] > 0.95, same[cand]["code"]
        # not 1: the calibration text joins the problems, and 13-grams across two problems are in no item
        assert same[cand]["code"]["calibration_fraction"] > 0.8
    assert same["iq3_m-cal-prose"]["code"]["item_fraction"] == 0.0
    shipped = overlap.plan_overlap(load_plan(_calibration_domain(tmp_path), check_names=False))
    for cand in ("iq3_m-cal-code", "gptq-cal-code"):
        # one problem of 82-163 shares a 13-gram with 0-81 (a near-duplicate docstring)
        assert shipped[cand]["code"]["item_fraction"] < 0.05, shipped[cand]["code"]
        assert shipped[cand]["code"]["calibration_fraction"] < 0.01
    # the prose candidates calibrate on WikiText-2, whose test file the wikitext2 suite reads
    assert shipped["iq3_m-cal-prose"]["wikitext2"]["item_fraction"] == 1.0
    lines = overlap.overlap_warnings(same)
    assert any(line.startswith("candidates.iq3_m-cal-code: calibration 'humaneval[0:82]' overlaps suite 'code': 82 of 82")
               for line in lines), lines


def test_validate_warns_and_exits_0(tmp_path, qg_home):
    from harness import data

    data.fetch_asset("humaneval", log=lambda s: None)  # validate reads only what is already here
    r = run_cli("validate", str(_calibration_domain(tmp_path, "humaneval[0:82]")))
    assert r.returncode == 0, r.stdout + r.stderr
    warnings = [ln for ln in r.stdout.splitlines() if ln.startswith("warning: ")]
    assert any("iq3_m-cal-code: calibration 'humaneval[0:82]' overlaps suite 'code'" in w for w in warnings), r.stdout


def test_policy_rule_fails_blocks_or_passes():
    rec = Record(name="c", role="candidate")
    rec.calibration_overlap = {
        "code": {"checked": True, "calibration_source": "humaneval[0:82]", "items": 82, "items_overlapping": 82,
                 "item_fraction": 1.0, "calibration_fraction": 0.97, "ngram": 13},
        "other": {"checked": False, "why": "items not readable without a model"}}
    policy = {"gates": [], "calibration_overlap": {"max_item_fraction": 0.0}}
    # blocking (the default): the unchecked suite is INCONCLUSIVE, the overlapping one FAILs
    unchecked, v = evaluate_policy(GatePolicy.model_validate(policy), rec, None)
    assert v.verdict == FAIL and v.gate == "calibration-overlap" and "82 of 82 items" in v.reason
    assert unchecked.verdict == INCONCLUSIVE and "not checked (items not readable" in unchecked.reason
    policy["calibration_overlap"]["blocks"] = False  # reported: what could not be checked adds nothing
    assert [v.verdict for v in evaluate_policy(GatePolicy.model_validate(policy), rec, None)] == [INCONCLUSIVE]
    rec.calibration_overlap["code"].update(items_overlapping=0, item_fraction=0.0)
    assert [v.verdict for v in evaluate_policy(GatePolicy.model_validate(policy), rec, None)] == [PASS]
    # blocking, nothing overlaps but one suite was not checked: not a PASS
    policy["calibration_overlap"]["blocks"] = True
    assert [v.verdict for v in evaluate_policy(GatePolicy.model_validate(policy), rec, None)] == [INCONCLUSIVE]
    # without the policy option: reported, never a verdict
    assert evaluate_policy(GatePolicy.model_validate({"gates": []}), rec, None) == []


@pytest.mark.slow
def test_fake_run_records_overlap_and_fails_on_it(tmp_path, monkeypatch):
    """A fake candidate calibrated on WikiText-2 and scored on it: results carry the overlap,
    the policy option FAILs it, summary.md shows the table."""
    from harness.pipeline import Runner
    from harness.report.markdown import summary_markdown

    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    plan = {
        "name": "overlap",
        "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake"}},
        "candidates": [{"name": "cal-on-test", "runtime": {"name": "fake"},
                        "quantizer": {"method": "fake", "params": {"bits": 8},
                                      "calibration": {"source": "wikitext2", "samples": 4, "seq_len": 64}}},
                       {"name": "no-cal", "runtime": {"name": "fake"},
                        "quantizer": {"method": "fake", "params": {"bits": 8}}}],
        "suites": [{"suite": "perplexity", "name": "wikitext2",
                    "params": {"dataset": "wikitext2", "context_length": 128, "max_tokens": 1280}}],
        "gates": {"calibration_overlap": {"max_item_fraction": 0.0},
                  "gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 5}]},
        "tracking": {"enabled": False},
    }
    path = tmp_path / "overlap.yaml"
    path.write_text(yaml.safe_dump(plan))
    res = Runner(load_plan(path), reports_dir=tmp_path / "reports", log=lambda s: None).execute()
    cal, plain = res.candidates
    assert cal.calibration_overlap["wikitext2"]["item_fraction"] == 1.0
    assert plain.calibration_overlap is None
    assert cal.verdict == FAIL and any(v.gate == "calibration-overlap" and v.verdict == FAIL for v in cal.verdicts)
    assert plain.verdict == PASS
    assert "## Calibration overlap" in summary_markdown(res)
