"""Gate decisions on records a run, `quantgate gate` or a release verify can meet: items that
cannot be paired, thresholds a statistic cannot test, repeated gate names, and bundles of runs
that used the noise floor or the calibration-overlap rule. (Found in review, 2026-11-30.)"""

from __future__ import annotations

import numpy as np

from harness import gates, release, verify
from harness.config import GatePolicy, parse_policy
from harness.results import Metric, Record, RunResults, SuiteResult


def _scores(n: int = 400, drop: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    base = (np.random.default_rng(seed).random(n) < 0.7).astype(int)
    cand = base.copy()
    cand[np.where(base == 1)[0][:drop]] = 0  # an 8-point drop on 400 items
    return base, cand


def _record(name: str, role: str, scores, suite: str = "s", **kw) -> Record:
    recs = [{"id": f"i{i}", "scores": {"acc": float(s)}} for i, s in enumerate(scores)]
    m = Metric(value=float(np.mean(scores)), better="higher")
    return Record(name=name, role=role, suites={suite: SuiteResult(records=recs, result_key="k" + name,
                                                                   metrics={"acc": m})},
                  metrics={f"{suite}.acc": m}, **kw)


def _policy(**extra) -> GatePolicy:
    return GatePolicy.model_validate({"gates": [{"name": "drop", "kind": "max_drop", "metric": "s.acc", "max": 0.02}],
                                      **extra})


def test_a_paired_gate_is_not_decided_on_averages_when_items_do_not_pair():
    """One candidate record without its score: the gate is INCONCLUSIVE and says why, instead of
    a PASS or FAIL on the two averages (which ignored the item floor and the baseline's error)."""
    b, c = _scores()
    base, cand = _record("base", "baseline", b), _record("cand", "candidate", b)  # no real drop
    del cand.suites["s"].records[5]["scores"]["acc"]
    (v,) = gates.evaluate_policy(_policy(), cand, base)
    assert v.verdict == "INCONCLUSIVE" and "cannot be paired" in v.reason
    # a non-finite score, a missing id: the same
    cand = _record("cand", "candidate", c)
    cand.suites["s"].records[0]["scores"]["acc"] = float("nan")
    assert gates.evaluate_policy(_policy(), cand, base)[0].verdict == "INCONCLUSIVE"
    cand = _record("cand", "candidate", c)
    del cand.suites["s"].records[0]["id"]
    assert gates.evaluate_policy(_policy(), cand, base)[0].verdict == "INCONCLUSIVE"
    # intact records: the paired test decides (an 8-point drop against a 2-point gate)
    assert gates.evaluate_policy(_policy(), _record("cand", "candidate", c), base)[0].verdict == "FAIL"


def test_a_threshold_the_statistic_cannot_test_is_an_error_not_a_crash():
    b, c = _scores()
    base, cand = _record("base", "baseline", b), _record("cand", "candidate", c)
    pol = GatePolicy.model_validate({"gates": [{"name": "all", "kind": "max_drop", "metric": "s.acc", "max": 1.0}]})
    (v,) = gates.evaluate_policy(pol, cand, base)
    assert v.verdict == "ERROR" and "s.acc" in v.reason


def test_holm_with_repeated_gate_names_uses_each_gate():
    """Two gates named alike (a policy given to `quantgate gate` is not checked for that): Holm
    re-tests each FAIL with its own gate, not with the last of that name."""
    b, c = _scores()
    base = Record(name="base", role="baseline", suites={**_record("b", "baseline", b, "s0").suites,
                                                        **_record("b", "baseline", b, "s1").suites},
                  metrics={**_record("b", "baseline", b, "s0").metrics, **_record("b", "baseline", b, "s1").metrics})
    cand = Record(name="cand", role="candidate", suites={**_record("c", "candidate", c, "s0").suites,
                                                         **_record("c", "candidate", c, "s1").suites},
                  metrics={**_record("c", "candidate", c, "s0").metrics, **_record("c", "candidate", c, "s1").metrics})
    raw = {"gates": [{"name": "g", "kind": "max_drop", "metric": "s0.acc", "max": 0.0},
                     {"name": "g", "kind": "max_drop", "metric": "s1.acc", "max": 0.5}]}
    plain = [v.verdict for v in gates.evaluate_policy(parse_policy(raw, "x.yaml"), cand, base)]
    holm = [v.verdict for v in gates.evaluate_policy(parse_policy({**raw, "multiple_testing": "holm"}, "x.yaml"),
                                                     cand, base)]
    assert plain == ["FAIL", "PASS"] and holm == ["FAIL", "PASS"]


def _bundle(tmp_path, mode: str):
    b, c = _scores()
    base, good, bad = _record("base", "baseline", b), _record("good", "candidate", b), _record("bad", "candidate", c)
    pol = {"name": "p", "alpha": 0.05, "gates": [{"name": "drop", "kind": "max_drop", "metric": "s.acc", "max": 0.02}]}
    if mode == "noise":
        base.noise_floor = {"repeats": 3, "metrics": {"s.acc": {"values": [0.7, 0.6, 0.8], "floor": 0.1}}}
    else:
        pol["calibration_overlap"] = {"max_item_fraction": 0.0, "blocks": True}
        good.calibration_overlap = {"s": {"checked": True, "items": 400, "items_overlapping": 0,
                                          "item_fraction": 0.0, "calibration_fraction": 0.0}}
    plan = {"name": "p", "suites": [{"name": "s", "suite": "not-installed-here"}], "baseline": {"model": "x"}}
    res = RunResults(run_id="r1", quantgate_version="0", plan=plan, policy=pol, started="2026-01-01T00:00:00",
                     finished="2026-01-01T00:00:01", wall_seconds=1.0, baseline=base, candidates=[good, bad])
    res = gates.decide(res, GatePolicy.model_validate(pol))
    (tmp_path / "run").mkdir()
    release.build(res, tmp_path / "run", tmp_path / "bundle", names=["good"])
    return res, verify.verify(tmp_path / "bundle")


def test_a_bundle_of_a_run_with_a_noise_floor_verifies(tmp_path):
    res, report = _bundle(tmp_path, "noise")
    assert {r.name: r.verdict for r in res.candidates} == {"good": "PASS", "bad": "INCONCLUSIVE"}  # within ±0.1
    assert report.ok, report.mismatches


def test_a_bundle_of_a_run_with_the_overlap_rule_verifies(tmp_path):
    res, report = _bundle(tmp_path, "overlap")
    assert [v.gate for v in res.candidates[0].verdicts] == ["drop", "calibration-overlap"]
    assert report.ok, report.mismatches
