"""The smoke plan end to end on the real embedded model: real llama.cpp, real MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_runs(qg_home, tmp_path_factory):
    """The smoke plan cold (real llama.cpp, real MLflow; 10 windows), then a warm run that
    only checks reuse: the same plan with the size probe alone (the speed and memory probes
    load every model again and are measured afresh on every run) and no tracking, so it loads
    no model. Reuse in general is tested on the fake model (test_fake_adapters.py); this run
    checks that the real adapters' keys (embedded baseline, gguf quantizer, llama-cpp runtime)
    come out the same in a new process."""
    reports = tmp_path_factory.mktemp("reports")
    plan = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    # 10 of the plan's 16 windows (the fewest its paired bootstrap decides from): scoring is most of
    # the run's time, and the verdicts are the same (q4_k_m +5.8% against a 10% limit, q2_k +38%)
    plan["suites"][0]["params"]["max_tokens"] = 5120
    plan["gates"] = str(ROOT / "gates" / "smoke.yaml")
    cold_plan = reports / "smoke.yaml"
    cold_plan.write_text(yaml.safe_dump(plan, sort_keys=False))
    cold = run_cli("run", str(cold_plan), "--reports-dir", str(reports / "cold"))
    plan["probes"] = {"size": {}}  # the size gate still decides
    plan["gates"] = str(ROOT / "gates" / "smoke.yaml")
    warm_plan = reports / "smoke-warm.yaml"
    warm_plan.write_text(yaml.safe_dump(plan, sort_keys=False))
    warm = run_cli("run", str(warm_plan), "--reports-dir", str(reports / "warm"), "--no-tracking")
    runs = [next((reports / name).iterdir()) for name in ("cold", "warm")]
    return cold, warm, runs


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_smoke_exit_code_and_verdicts(smoke_runs):
    cold, _, runs = smoke_runs
    assert cold.returncode == 1, cold.stdout[-3000:] + cold.stderr[-3000:]
    res = _results(runs[0])
    verdicts = {c["name"]: c["verdict"] for c in res["candidates"]}
    assert verdicts == {"q8_0": "PASS", "q4_k_m": "PASS", "q2_k": "FAIL"}
    assert res["approved"] == ["q8_0", "q4_k_m"]
    assert res["exit_code"] == 1
    q2 = next(c for c in res["candidates"] if c["name"] == "q2_k")
    failed = [v for v in q2["verdicts"] if v["verdict"] == "FAIL"]
    assert [v["gate"] for v in failed] == ["ppl-increase"]
    assert "approved: q8_0, q4_k_m" in cold.stdout


def test_smoke_perplexity_order(smoke_runs):
    res = _results(smoke_runs[2][0])
    ppl = {c["name"]: c["metrics"]["wikitext2.ppl"]["value"] for c in [res["baseline"], *res["candidates"]]}
    assert abs(ppl["q8_0"] / ppl["f16"] - 1) < 0.01, ppl
    assert ppl["q8_0"] < ppl["q4_k_m"] < ppl["q2_k"], ppl
    assert 15 < ppl["f16"] < 60, ppl  # a sane model on WikiText-2, not a broken load


def test_every_candidate_scored_identical_windows(smoke_runs):
    res = _results(smoke_runs[2][0])
    recs = [res["baseline"], *res["candidates"]]
    keys = {r["suites"]["wikitext2"]["items_key"] for r in recs}
    assert len(keys) == 1
    hashes = [[x["prompt_hash"] for x in r["suites"]["wikitext2"]["records"]] for r in recs]
    assert all(h == hashes[0] for h in hashes) and len(hashes[0]) == 10
    assert res["baseline"]["suites"]["wikitext2"]["meta"]["newline"] == "lf"
    assert all(x["n_scored"] == 511 for x in res["baseline"]["suites"]["wikitext2"]["records"])


def test_probes_and_manifests_recorded(smoke_runs):
    res = _results(smoke_runs[2][0])
    for c in [res["baseline"], *res["candidates"]]:
        m = c["metrics"]
        assert m["size.bytes"]["value"] == Path(c["artifact"]["path"]).resolve().stat().st_size
        assert m["decode.tokens_per_s"]["value"] > 1
        assert m["decode.tokens_per_s_min"]["value"] <= m["decode.tokens_per_s"]["value"] <= m["decode.tokens_per_s_max"]["value"]
        assert 0.05 < m["memory.peak_rss_gib"]["value"] < 8
        assert 0 < m["load.seconds"]["value"] < 60
    bpw = {c["name"]: c["artifact"]["manifest"]["bits_per_weight"] for c in res["candidates"]}
    assert 8.0 < bpw["q8_0"] < 9.0 and bpw["q2_k"] < bpw["q4_k_m"] < bpw["q8_0"], bpw
    man = res["candidates"][0]["artifact"]["manifest"]
    assert man["key_inputs"]["versions"]["llama-cpp-python"]
    assert man["wall_seconds"] > 0 and man["peak_rss_gib"] > 0


def test_summary_and_results_agree(smoke_runs):
    run = smoke_runs[2][0]
    res = _results(run)
    summary = (run / "summary.md").read_text()
    approved_block = summary.split("## Approved list")[1].split("##")[0]
    assert [ln[2:] for ln in approved_block.strip().splitlines()] == res["approved"]
    for c in res["candidates"]:
        row = next(ln for ln in summary.splitlines() if ln.startswith(f"| {c['name']} |"))
        assert f"| {c['verdict']} |" in row
        assert f"{c['metrics']['wikitext2.ppl']['value']:.4g}" in row


def test_mlflow_runs_queried_back(smoke_runs):
    from mlflow.tracking import MlflowClient

    res = _results(smoke_runs[2][0])
    tr = res["tracking"]
    client = MlflowClient(tracking_uri=tr["uri"])
    exp = client.get_experiment_by_name("quantgate-smoke")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_id == tr["parent_run_id"])
    assert parent.data.tags["approved"] == "q8_0,q4_k_m"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"f16", "q8_0", "q4_k_m", "q2_k"}
    for c in res["candidates"]:
        run = children[c["name"]]
        assert run.data.tags["verdict"] == c["verdict"]
        for v in c["verdicts"]:
            assert run.data.tags[f"gate.{v['gate']}"] == v["verdict"]
        assert run.data.metrics["wikitext2.ppl"] == pytest.approx(c["metrics"]["wikitext2.ppl"]["value"])
        assert run.data.params["quantizer.params.type"] == c["quantizer"]["params"]["type"]
        assert run.data.params["artifact.key"] == c["artifact"]["key"]
    assert children["q2_k"].data.tags["gate.ppl-increase"] == "FAIL"


def test_second_run_reuses_artifacts_and_results(smoke_runs):
    cold, warm, runs = smoke_runs
    assert warm.returncode == 1, warm.stdout[-3000:] + warm.stderr[-3000:]
    assert warm.stdout.count("reused from the store") == 3
    assert "producing artifact" not in warm.stdout and "scoring" not in warm.stdout  # no model work
    a, b = _results(runs[0]), _results(runs[1])
    assert b["store_integrity"] == []
    assert b["baseline"]["artifact"]["key"] == a["baseline"]["artifact"]["key"]
    assert b["baseline"]["suites"]["wikitext2"]["reused"] is True
    for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
        assert cb["artifact"]["reused"] is True
        assert cb["suites"]["wikitext2"]["reused"] is True
        assert ca["artifact"]["key"] == cb["artifact"]["key"]
        assert ca["suites"]["wikitext2"]["result_key"] == cb["suites"]["wikitext2"]["result_key"]
        assert ca["metrics"]["wikitext2.ppl"] == cb["metrics"]["wikitext2.ppl"]
        assert ca["metrics"]["size.bytes"] == cb["metrics"]["size.bytes"]
        assert ca["verdict"] == cb["verdict"]
    assert b["approved"] == a["approved"] == ["q8_0", "q4_k_m"]


def test_gate_and_compare_commands_redecide_a_stored_run(smoke_runs, tmp_path):
    """`quantgate gate` and `compare` on a real run's results.json, without loading a model."""
    run_dir = smoke_runs[2][0]
    strict = tmp_path / "strict.yaml"
    strict.write_text("name: strict\ngates:\n  - {name: ppl, kind: max_increase_pct, metric: wikitext2.ppl, max_pct: 0.1}\n")
    env = {"QUANTGATE_HOME": str(tmp_path / "empty-home")}  # nothing to load: gate must not need it
    g = run_cli("gate", str(run_dir), "--policy", str(strict), "--out", str(tmp_path / "regated"), env=env)
    assert g.returncode == 1, g.stdout + g.stderr
    redecided = json.loads((tmp_path / "regated" / "results.json").read_text())
    assert redecided["approved"] == [] and redecided["policy"]["name"] == "strict"
    assert all(c["verdict"] == "FAIL" for c in redecided["candidates"])
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("gates:\n  - {name: ppl, kind: max_increase_pct, metric: wikitext2.ppl, max_pct: 50}\n")
    g2 = run_cli("gate", str(run_dir / "results.json"), "--policy", str(lenient), env=env)
    assert g2.returncode == 0 and "approved: q8_0, q4_k_m, q2_k" in g2.stdout
    c = run_cli("compare", str(run_dir), str(tmp_path / "regated"), env=env)
    assert c.returncode == 0 and "| q2_k | wikitext2.ppl ↓ |" in c.stdout  # lower is better
    bad = run_cli("gate", str(tmp_path / "nowhere"), env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_planner_prediction_beside_measurement(smoke_runs):
    res = _results(smoke_runs[2][0])
    for rec in [res["baseline"], *res["candidates"]]:
        plan = rec["planner"]
        assert plan["runtime"] == "llama-cpp" and plan["exact"] is True
        # tensor bytes predicted vs the file on disk (which adds metadata and the tokenizer)
        assert abs(plan["weights_error_pct"]) < 5, (rec["name"], plan)
        assert rec["metrics"]["planner.total_gib"]["value"] > plan["weights_gib"]
        # the probe process's model memory: predicted for its workload vs measured there
        assert plan["probe_measured_gib"] > 0 and plan["probe_predicted_gib"] > plan["weights_gib"]
        # RSS counts the model's pages as they are touched: on a quiet machine llama.cpp comes out
        # -20 to +42%, on a loaded one q4_k_m measured -67% once (3x the prediction): a ballpark
        # check, within a factor of four either way
        assert 1 / 4 < 1 + plan["probe_error_pct"] / 100 < 4, (rec["name"], plan)
        assert rec["metrics"]["planner.probe_error_pct"]["value"] == plan["probe_error_pct"]
        # the probe worker imported llama_cpp before harness's own modules (CUDA builds need it)
        assert rec["probe_notes"]["imports"] == {"preload": ["llama_cpp"], "numpy_loaded_before_preload": False}
