"""Gates on paired per-item records, the seed's example policy, and re-deciding stored runs."""

from __future__ import annotations

import numpy as np

from harness import gates
from harness.config import GatePolicy, load_policy
from harness.results import Record, RunResults
from tests.conftest import ROOT


def _record(name: str, acc_items: np.ndarray | None = None, window_nll: np.ndarray | None = None,
            role: str = "candidate", **values) -> Record:
    """A result record as the pipeline stores it: per-item records and aggregated metrics."""
    rec = {"name": name, "role": role, "status": "ok", "error": None, "suites": {}, "metrics": {}, "verdicts": []}
    if acc_items is not None:
        recs = [{"id": f"q{i:04d}", "prompt_hash": f"h{i}", "scores": {"acc": float(x)}} for i, x in enumerate(acc_items)]
        rec["suites"]["mmlu"] = {"records": recs, "result_key": "result-mmlu"}
        rec["metrics"]["mmlu.acc"] = {"value": float(np.mean(acc_items)), "stderr": None, "n": len(recs)}
    if window_nll is not None:
        recs = [{"id": f"w{i:04d}", "prompt_hash": f"w{i}", "logprob_sum": -float(x) * 511, "n_scored": 511,
                 "n_bytes": 2000} for i, x in enumerate(window_nll)]
        rec["suites"]["wikitext2"] = {"records": recs, "result_key": "result-wt"}
        rec["metrics"]["wikitext2.ppl"] = {"value": float(np.exp(np.mean(window_nll))), "stderr": None, "n": len(recs)}
    for k, v in values.items():
        rec["metrics"][k.replace("__", ".")] = {"value": v, "stderr": None, "n": 1}
    return Record.model_validate(rec)


def _run(base: Record, cands: list[Record]) -> RunResults:
    return RunResults(run_id="r", quantgate_version="0", plan={"name": "t"}, policy={}, started="", finished="",
                      wall_seconds=0.0, baseline=base, candidates=cands)


def _flip(items: np.ndarray, n_flip: int, rng, only_correct: bool = False) -> np.ndarray:
    out = items.copy()
    pool = np.flatnonzero(out == 1) if only_correct else np.arange(out.size)
    idx = rng.choice(pool, n_flip, replace=False)
    out[idx] = 1 - out[idx]
    return out


def test_seed_example_policy_gives_the_approved_list():
    """accuracy >= 0.90 and VRAM <= 8 GiB -> the approved list (gates/seed-example.yaml)."""
    policy = load_policy(ROOT / "gates" / "seed-example.yaml")
    rng = np.random.default_rng(0)
    n = 1000
    base = _record("bf16", (rng.random(n) < 0.93).astype(int), role="baseline", memory__peak_vram_gib=15.2)
    cands = [
        _record("fp8", (rng.random(n) < 0.93).astype(int), memory__peak_vram_gib=9.1),       # too big
        _record("awq-4bit", (rng.random(n) < 0.925).astype(int), memory__peak_vram_gib=5.4),  # fits, accurate
        _record("gptq-3bit", (rng.random(n) < 0.86).astype(int), memory__peak_vram_gib=4.1),  # fits, not accurate
    ]
    results = _run(base, cands)
    out = gates.decide(results, policy)
    assert out.approved == ["awq-4bit"]
    verdicts = {c.name: {v.gate: v.verdict for v in c.verdicts} for c in out.candidates}
    assert verdicts == {"fp8": {"accuracy": "PASS", "vram": "FAIL"},
                        "awq-4bit": {"accuracy": "PASS", "vram": "PASS"},
                        "gptq-3bit": {"accuracy": "FAIL", "vram": "PASS"}}
    acc = next(v for v in out.candidates[1].verdicts if v.gate == "accuracy")
    assert "Wilson" in acc.test and acc.n == n and acc.lower >= 0.90
    assert out.exit_code == 1


def test_paired_accuracy_drop_pass_fail_inconclusive():
    rng = np.random.default_rng(1)
    policy = GatePolicy.model_validate({"gates": [
        {"name": "mmlu-drop", "kind": "max_drop", "metric": "mmlu.acc", "max": 0.02}]})
    base_items = (rng.random(3000) < 0.6).astype(int)
    base = _record("base", base_items, role="baseline")
    # same accuracy, 10% of items flipped, as many each way: paired -> PASS at n=3000
    same_items = _flip(_flip(base_items, 150, rng, only_correct=True), 0, rng)
    wrong = np.flatnonzero((base_items == 0) & (same_items == 0))
    same_items[rng.choice(wrong, 150, replace=False)] = 1
    same = _record("same", same_items)
    # a planted 6-point drop
    worse = _record("worse", _flip(base_items, 180, rng, only_correct=True))
    (v_same,), (v_worse,) = gates.evaluate_policy(policy, same, base), gates.evaluate_policy(policy, worse, base)
    assert v_worse.verdict == "FAIL" and v_worse.lower > 0.02 and v_worse.paired
    assert "McNemar" in v_worse.test and v_worse.discordant["cand_only"] == 0
    assert v_same.verdict == "PASS" and v_same.upper <= 0.02
    # the same candidates on 150 items: too few to say either way
    small_base = _record("base", base_items[:150], role="baseline")
    (v_small,) = gates.evaluate_policy(policy, _record("same", same_items[:150]), small_base)
    assert v_small.verdict == "INCONCLUSIVE" and v_small.needed_n > 150
    assert "n=150" in v_small.reason and "INCONCLUSIVE" in v_small.reason


def test_paired_perplexity_increase_uses_windows():
    rng = np.random.default_rng(2)
    base_nll = rng.normal(3.4, 0.3, 32)
    policy = GatePolicy.model_validate({"gates": [
        {"name": "ppl", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 10}]})
    base = _record("base", window_nll=base_nll, role="baseline")
    small = _record("q8", window_nll=base_nll + rng.normal(0.007, 0.01, 32))     # ~+0.7%
    big = _record("q2", window_nll=base_nll + rng.normal(0.29, 0.03, 32))        # ~+34%
    (vs,), (vb,) = gates.evaluate_policy(policy, small, base), gates.evaluate_policy(policy, big, base)
    assert vs.verdict == "PASS" and vb.verdict == "FAIL"
    assert "bootstrap" in vs.test and vs.n == 32
    assert vb.lower > 10 and vs.upper < 10


def test_measured_values_without_records_compare_directly():
    policy = GatePolicy.model_validate({"gates": [
        {"name": "speed", "kind": "min_value", "metric": "decode.tokens_per_s", "min": 20},
        {"name": "recovery", "kind": "min_ratio", "metric": "gsm8k.em", "min": 0.95}]})
    base = _record("base", role="baseline", gsm8k__em=0.40)
    ok, low = _record("a", decode__tokens_per_s=25, gsm8k__em=0.39), _record("b", decode__tokens_per_s=12, gsm8k__em=0.30)
    assert [v.verdict for v in gates.evaluate_policy(policy, ok, base)] == ["PASS", "PASS"]
    assert [v.verdict for v in gates.evaluate_policy(policy, low, base)] == ["FAIL", "FAIL"]
    assert gates.evaluate_policy(policy, ok, base)[0].test == "measured value"


def test_policy_min_items_lets_a_small_sample_decide():
    rng = np.random.default_rng(3)
    base_items = (rng.random(40) < 0.6).astype(int)
    cand_items = base_items.copy()
    cand_items[np.flatnonzero(base_items == 1)[:18]] = 0  # a collapse: 18 of 40 items lost
    base, cand = _record("base", base_items, role="baseline"), _record("cand", cand_items)
    gate = {"name": "d", "kind": "max_drop", "metric": "mmlu.acc", "max": 0.15}
    (default,) = gates.evaluate_policy(GatePolicy.model_validate({"gates": [gate]}), cand, base)
    (lowered,) = gates.evaluate_policy(GatePolicy.model_validate({"gates": [gate], "min_items": 30}), cand, base)
    assert default.verdict == "INCONCLUSIVE" and lowered.verdict == "FAIL"
    assert lowered.lower > 0.15 and lowered.p_value < 0.001


def test_a_baseline_scoring_zero_is_measured_not_missing():
    """A 135M model solves no GSM8K problem: a `max_drop` gate (a difference) still decides; a
    percentage gate cannot (a change in proportion to 0) and says so instead of 'not measured'."""
    policy = GatePolicy.model_validate({"gates": [
        {"name": "drop", "kind": "max_drop", "metric": "mmlu.acc", "max": 0.05},
        {"name": "pct", "kind": "max_drop_pct", "metric": "mmlu.acc", "max_pct": 5}]})
    base = _record("base", np.zeros(400, dtype=int), role="baseline")
    drop, pct = gates.evaluate_policy(policy, _record("cand", np.zeros(400, dtype=int)), base)
    assert drop.verdict == "PASS" and drop.baseline == 0, drop.reason
    assert pct.verdict == "ERROR" and "is 0" in pct.reason and "not measured" not in pct.reason
