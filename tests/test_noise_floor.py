"""The baseline's noise floor: ``baseline.repeats`` re-scores it, a change within its own
run-to-run spread cannot FAIL a gate."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from harness import stats
from harness.config import GatePolicy
from harness.gates import FAIL, INCONCLUSIVE, evaluate_policy
from harness.results import Metric, Record, SuiteResult


def test_noise_floor_is_the_largest_distance_from_the_first_run():
    assert stats.noise_floor([10.0, 10.2, 9.7]) == pytest.approx(0.3)
    assert stats.noise_floor([3.0, 3.0, 3.0]) == 0.0
    assert stats.noise_floor([3.0]) is None
    assert stats.noise_floor([3.0, None, float("nan")]) is None


def _pair(drop_items: int, n: int = 400) -> tuple[Record, Record]:
    rng = np.random.default_rng(5)
    b = (rng.uniform(size=n) < 0.6).astype(int)
    c = b.copy()
    c[np.flatnonzero(b == 1)[:drop_items]] = 0
    base, cand = Record(name="base", role="baseline"), Record(name="cand", role="candidate")
    for rec, x in ((base, b), (cand, c)):
        m = Metric(value=float(x.mean()), n=n, better="higher")
        rec.suites["s"] = SuiteResult(records=[{"id": f"i{j}", "scores": {"acc": float(v)}} for j, v in enumerate(x)],
                                      result_key="k", metrics={"acc": m})
        rec.metrics["s.acc"] = m
    return base, cand


POLICY = GatePolicy.model_validate({"gates": [{"name": "acc", "kind": "max_drop", "metric": "s.acc", "max": 0.0}]})


def test_a_fail_within_the_floor_is_inconclusive():
    base, cand = _pair(20)  # a 5-point drop: FAILs a 0-point gate
    assert evaluate_policy(POLICY, cand, base)[0].verdict == FAIL
    base.noise_floor = {"repeats": 3, "metrics": {"s.acc": {"values": [0.6, 0.66, 0.58], "floor": 0.06}}}
    v = evaluate_policy(POLICY, cand, base)[0]
    assert v.verdict == INCONCLUSIVE
    assert "within the baseline's own run-to-run spread ±0.06" in v.reason
    assert v.details["noise_floor"]["change"] == pytest.approx(-0.05)
    # beyond the floor the FAIL stands
    base.noise_floor["metrics"]["s.acc"]["floor"] = 0.04
    assert evaluate_policy(POLICY, cand, base)[0].verdict == FAIL
    # a zero floor (a bit-deterministic runtime) changes nothing
    base.noise_floor["metrics"]["s.acc"]["floor"] = 0.0
    assert evaluate_policy(POLICY, cand, base)[0].verdict == FAIL


def _plan(folder, noise: float) -> str:
    runtime = {"name": "fake", "params": {"score_noise": noise} if noise else {}}
    plan = {
        "name": "noise-floor",
        "baseline": {"name": "f32", "model": "fake:tiny", "runtime": runtime, "repeats": 3},
        "candidates": [{"name": "same", "quantizer": {"method": "fake", "params": {"noise": 0.0}}, "runtime": runtime}],
        "suites": [{"suite": "perplexity", "name": "wikitext2",
                    "params": {"dataset": "wikitext2", "context_length": 128, "max_tokens": 1280}}],
        "gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 5}],
        "tracking": {"enabled": False},
    }
    path = folder / f"noise-{noise}.yaml"
    path.write_text(yaml.safe_dump(plan))
    return str(path)


@pytest.mark.slow
def test_repeats_on_the_fake_runtime(tmp_path, monkeypatch):
    """Three scorings of the baseline: a noisy runtime has a floor > 0, a deterministic one 0;
    each repeat has its own result key (not a cache hit of the first)."""
    from harness.pipeline import Runner
    from harness.validate import load_plan

    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    floors = {}
    for noise in (0.0, 0.5):
        res = Runner(load_plan(_plan(tmp_path, noise)), reports_dir=tmp_path / "reports", log=lambda s: None).execute()
        nf = res.baseline.noise_floor
        assert nf is not None and nf["repeats"] == 3, res.baseline.error
        keys = [res.baseline.suites["wikitext2"].result_key] + [k["wikitext2"] for k in nf["result_keys"]]
        assert len(set(keys)) == 3
        ppl = nf["metrics"]["wikitext2.ppl"]
        assert len(ppl["values"]) == 3 and ppl["values"][0] == res.baseline.value("wikitext2.ppl")
        floors[noise] = ppl["floor"]
    assert floors[0.0] == 0.0
    assert floors[0.5] > 0.0
    print(f"\nnoise floor of wikitext2.ppl over 3 repeats: deterministic {floors[0.0]}, score_noise 0.5: {floors[0.5]:.4g}")
