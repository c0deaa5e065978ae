"""Typed results (schema quantgate.results/2), reading /1 files, and gate directions."""

from __future__ import annotations

import json

import pytest

from harness import gates
from harness.config import GatePolicy
from harness.results import (
    SCHEMA,
    Metric,
    Record,
    ResultsError,
    RunResults,
    load_results,
    parse_results,
)
from tests.conftest import ROOT, run_cli


def _run(**kw) -> RunResults:
    plan = {"name": "t", "suites": [{"suite": "perplexity", "name": "wt", "params": {}},
                                    {"suite": "mmlu", "params": {}}],
            "probes": {"size": {}, "decode": {}}}
    base = Record(name="base", role="baseline", metrics={
        "wt.ppl": Metric(value=30.0, better="lower"), "mmlu.acc": Metric(value=0.6, better="higher"),
        "size.gib": Metric(value=1.0, better="lower")})
    cand = Record(name="q4", role="candidate", metrics={
        "wt.ppl": Metric(value=31.0, better="lower"), "mmlu.acc": Metric(value=0.59, better="higher"),
        "size.gib": Metric(value=0.3, better="lower")})
    return RunResults(run_id="r1", quantgate_version="0", plan=plan, policy={}, started="", finished="",
                      wall_seconds=1.0, baseline=base, candidates=[cand], **kw)


def _v1(results: RunResults) -> dict:
    """What a quantgate.results/1 writer stored: no directions, no source key."""
    data = results.dump()
    data["schema"] = "quantgate.results/1"
    for rec in [data["baseline"], *data["candidates"]]:
        for m in rec["metrics"].values():
            m.pop("better")
        for v in rec["verdicts"]:
            v.pop("better")
    return data


POLICY = {"gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wt.ppl", "max_pct": 5},
                    {"name": "acc", "kind": "max_drop", "metric": "mmlu.acc", "max": 0.05},
                    {"name": "size", "kind": "max_value", "metric": "size.gib", "max": 0.5}]}


def test_results_round_trip_through_json(tmp_path):
    results = gates.decide(_run(), GatePolicy.model_validate(POLICY))
    (tmp_path / "results.json").write_text(results.to_json())
    back, path = load_results(tmp_path)
    assert path == tmp_path / "results.json"
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert back == results
    assert [v.verdict for v in back.candidates[0].verdicts] == ["PASS", "PASS", "PASS"]
    # the direction travels with the metric and into each verdict
    assert back.candidates[0].metrics["wt.ppl"].better == "lower"
    assert [v.better for v in back.candidates[0].verdicts] == ["lower", "higher", "lower"]
    assert back.baseline.verdicts[0].gate == "size" and back.baseline.verdict == "FAIL"  # absolute gates only


def test_v1_files_are_upgraded_with_directions_from_the_registries():
    results = gates.decide(_run(), GatePolicy.model_validate(POLICY))
    up = parse_results(_v1(results), "old.json")
    assert up.upgraded_from == "quantgate.results/1"
    assert up.candidates[0].metrics["wt.ppl"].better == "lower"      # perplexity suite declares it
    assert up.candidates[0].metrics["mmlu.acc"].better == "higher"   # mmlu suite
    assert up.candidates[0].metrics["size.gib"].better == "lower"    # size probe
    assert up.candidates[0].verdicts[1].better == "higher"
    assert "upgraded_from" not in json.loads(up.to_json())


def test_gate_re_decides_a_v1_run(tmp_path):
    results = gates.decide(_run(), GatePolicy.model_validate(POLICY))
    (tmp_path / "results.json").write_text(json.dumps(_v1(results)))
    policy = tmp_path / "strict.yaml"
    policy.write_text("gates:\n  - {name: size, kind: max_value, metric: size.gib, max: 0.1}\n")
    out = run_cli("gate", str(tmp_path), "--policy", str(policy), "--out", str(tmp_path / "re"), timeout=120)
    assert out.returncode == 1, out.stderr
    assert "FAIL" in out.stdout
    redone, _ = load_results(tmp_path / "re")
    assert redone.candidates[0].verdicts[0].verdict == "FAIL" and redone.exit_code == 1


@pytest.mark.parametrize("data, message", [
    ({"schema": "quantgate.results/9"}, "schema 'quantgate.results/9'"),
    ({"schema": SCHEMA, "run_id": "x"}, "quantgate_version: Field required"),
    ([], "schema None"),
])
def test_unreadable_results_name_the_problem(data, message):
    with pytest.raises(ResultsError, match=message.replace("(", r"\(")):
        parse_results(data, "f.json")


def test_gate_without_policy_key_is_a_clear_error(tmp_path):
    data = _run().dump()
    del data["policy"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    out = run_cli("gate", str(tmp_path), timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and "policy" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("gate, words", [
    ("{name: g, kind: max_drop_pct, metric: wt.ppl, max_pct: 5}", "'max_drop_pct' bounds a metric where higher"),
    ("{name: g, kind: max_increase_pct, metric: mmlu.acc, max_pct: 5}", "'mmlu.acc' is declared higher-is-better"),
    ("{name: g, kind: min_value, metric: size.gib, min: 1}", "use 'max_increase_pct', 'max_value' for it"),
    ("{name: g, kind: max_value, metric: decode.tokens_per_s, max: 10}", "'decode.tokens_per_s'"),
])
def test_validate_refuses_a_gate_against_its_metrics_direction(tmp_path, gate, words):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"""name: t
baseline: {{model: fake:tiny, runtime: {{name: fake}}}}
candidates: [{{name: c, quantizer: {{method: fake, params: {{bits: 4}}}}, runtime: {{name: fake}}}}]
suites: [{{suite: perplexity, name: wt}}, {{suite: mmlu}}]
probes: {{size: {{}}, decode: {{}}}}
gates: [{gate}]
""")
    out = run_cli("validate", str(plan), timeout=120)
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "gates[0].kind" in lines[0] and words in lines[0], lines


@pytest.mark.slow  # validates every shipped plan, overlap guard included (~20 s on 2 cores)
def test_every_shipped_plan_agrees_with_its_metrics_directions():
    for plan in sorted((ROOT / "configs").glob("*.yaml")):
        out = run_cli("validate", str(plan), timeout=120)
        assert out.returncode == 0, (plan, out.stderr)
