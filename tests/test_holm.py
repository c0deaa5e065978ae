"""Family-wise error across a candidate's gates: Holm-Bonferroni (policy ``multiple_testing``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import stats
from harness.config import GatePolicy
from harness.gates import FAIL, INCONCLUSIVE, PASS, decide, evaluate_policy
from harness.results import Metric, Record, RunResults, SuiteResult

ALPHA = 0.05


# ------------------------------------------------------------------ the procedure
def test_step_down_matches_textbook_holm_on_p_values():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        k = int(rng.integers(1, 7))
        p = list(rng.uniform(0, 0.08, size=k) ** rng.uniform(0.5, 2.0))
        got = [r["rejected"] for r in stats.holm_step_down([lambda a, x=x: x <= a for x in p], ALPHA)]
        assert got == stats.holm_pvalues(p, ALPHA)


def test_step_down_levels():
    # p-values 0.001 (rejected at 0.05/3), 0.02 (rejected at 0.05/2), 0.04 (at 0.05: rejected)
    out = stats.holm_step_down([lambda a, x=x: x <= a for x in (0.02, 0.001, 0.04)], ALPHA)
    assert [r["rejected"] for r in out] == [True, True, True]
    assert out[1]["level"] == pytest.approx(ALPHA / 3)
    assert out[0]["level"] == pytest.approx(ALPHA / 2)
    assert out[2]["level"] == pytest.approx(ALPHA)
    # 0.013 > 0.05/4: nothing is rejected, every test stops at 0.05/4
    out = stats.holm_step_down([lambda a, x=x: x <= a for x in (0.013, 0.3, 0.5, 0.9)], ALPHA)
    assert not any(r["rejected"] for r in out)
    assert {r["level"] for r in out} == {ALPHA / 4}


# ------------------------------------------------------------------ the simulation
def simulate(n_candidates: int = 3000, k: int = 5, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """k paired accuracy gates per candidate, each with its true drop exactly on its threshold
    (2 points; 60% accuracy, 15% discordant items, n items): the fraction of candidates with
    at least one (false) FAIL, each gate at alpha and under Holm."""
    max_drop = 0.02
    p_b, p_c = 0.085, 0.065  # base-only, cand-only: true drop p_b - p_c = max_drop
    probs = [0.6 - p_b, p_b, p_c, 1 - 0.6 - p_c]
    tab = np.random.default_rng(seed).multinomial(n, probs, size=(n_candidates, k))
    levels = {m: ALPHA / m for m in range(1, k + 1)}
    fails = {lvl: stats.paired_drop_bounds(tab[..., 1], tab[..., 2], n, lvl)[0] > max_drop for lvl in levels.values()}
    any_none = float(fails[ALPHA].any(axis=1).mean())
    holm = 0
    for c in range(n_candidates):
        tests = [lambda a, g=g, c=c: bool(fails[a][c, g]) for g in range(k)]
        holm += any(r["rejected"] for r in stats.holm_step_down(tests, ALPHA))
    return {"candidates": n_candidates, "gates": k, "items": n, "alpha": ALPHA,
            "any_false_fail_none": any_none, "any_false_fail_holm": holm / n_candidates}


def test_holm_keeps_family_wise_false_fail_under_alpha():
    r = simulate()
    print("\nholm simulation:", json.dumps(r))
    # each gate alone is at its nominal level (~0.046 at n=1000), so five of them FAIL some
    # gate of a candidate at no drop beyond the threshold about 1 - 0.954**5 = 0.21 of the time
    assert r["any_false_fail_none"] > 0.15
    # Holm: at most alpha (the binomial sd of the estimate over 3000 candidates is ~0.004)
    assert r["any_false_fail_holm"] <= ALPHA
    assert r["any_false_fail_holm"] < r["any_false_fail_none"] / 3


def test_holm_keeps_power_for_a_real_drop():
    """A 6-point drop against a 2-point gate still FAILs under Holm (n=1000)."""
    k, n, max_drop = 5, 1000, 0.02
    probs = [0.6 - 0.11, 0.11, 0.05, 0.35]  # true drop 6 points
    tab = np.random.default_rng(2).multinomial(n, probs, size=(500, k))
    fails = {ALPHA / m: stats.paired_drop_bounds(tab[..., 1], tab[..., 2], n, ALPHA / m)[0] > max_drop
             for m in range(1, k + 1)}
    rate = np.mean([any(r["rejected"] for r in stats.holm_step_down(
        [lambda a, g=g, c=c: bool(fails[a][c, g]) for g in range(k)], ALPHA)) for c in range(500)])
    assert rate > 0.95


# ------------------------------------------------------------------ through the policy
def _records(drops: list[int], n: int = 400, seed: int = 3) -> tuple[Record, Record]:
    """A baseline and a candidate with one 0/1 suite per gate; the candidate loses ``drop``
    items that the baseline got right (net of gains) on suite i."""
    rng = np.random.default_rng(seed)
    base = Record(name="base", role="baseline")
    cand = Record(name="cand", role="candidate")
    for i, drop in enumerate(drops):
        b = (rng.uniform(size=n) < 0.6).astype(int)
        c = b.copy()
        right = np.flatnonzero(b == 1)
        wrong = np.flatnonzero(b == 0)
        c[right[: 20 + drop]] = 0
        c[wrong[:20]] = 1
        for rec, x in ((base, b), (cand, c)):
            recs = [{"id": f"i{j}", "scores": {"acc": float(v)}} for j, v in enumerate(x)]
            m = Metric(value=float(x.mean()), stderr=None, n=n, better="higher")
            rec.suites[f"s{i}"] = SuiteResult(records=recs, result_key=f"k{i}", metrics={"acc": m})
            rec.metrics[f"s{i}.acc"] = m
    return base, cand


def _policy(k: int, holm: bool) -> GatePolicy:
    return GatePolicy.model_validate({
        "multiple_testing": "holm" if holm else "none",
        "gates": [{"name": f"g{i}", "kind": "max_drop", "metric": f"s{i}.acc", "max": 0.0} for i in range(k)]})


def test_policy_holm_turns_a_marginal_fail_inconclusive_and_records_levels():
    # suite 0: a marginal drop (FAILs at 0.05, not at 0.05/3); suite 1: a large one; suite 2: none
    base, cand = _records([14, 60, -20])
    plain = evaluate_policy(_policy(3, holm=False), cand, base)
    assert [v.verdict for v in plain] == [FAIL, FAIL, PASS]
    assert all(v.adjusted_alpha is None for v in plain)

    adjusted = evaluate_policy(_policy(3, holm=True), cand, base)
    by = {v.gate: v for v in adjusted}
    assert by["g1"].verdict == FAIL and by["g1"].adjusted_alpha == pytest.approx(ALPHA / 3)
    assert "Holm: FAIL at" in by["g1"].reason
    assert by["g0"].verdict == INCONCLUSIVE
    assert by["g0"].adjusted_alpha == pytest.approx(ALPHA / 2)
    assert "Holm over 3 paired gates" in by["g0"].reason
    assert by["g2"].verdict == PASS and by["g2"].details["multiple_testing"]["family"] == 3


def test_decide_with_holm_round_trips_through_results_json():
    base, cand = _records([14, 60, -20])
    results = RunResults(run_id="r", quantgate_version="0", plan={"name": "p"}, policy={}, started="s",
                         finished="f", wall_seconds=0.0, baseline=base, candidates=[cand])
    out = decide(results, _policy(3, holm=True))
    again = RunResults.model_validate_json(out.to_json())
    assert [v.adjusted_alpha for v in again.candidates[0].verdicts] == pytest.approx([ALPHA / 2, ALPHA / 3, ALPHA / 2])
    assert again.policy["multiple_testing"] == "holm"
    assert again.candidates[0].verdict == FAIL
