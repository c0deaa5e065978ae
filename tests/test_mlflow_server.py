"""MLflow logging against a real ``mlflow server``: the fake plan through the CLI, read back.

Three runs of the fake plan (configs/fake.yaml: the tiny numpy model of
harness/runtimes/fake.py and the fake quantizer's perturbations of it; real perplexity,
fidelity, probes and gates in seconds) log to one server: the plan as shipped (noise-0.3
fails its gates: exit 1, not accepted), then twice a copy without noise-0.3 under a lenient
inline policy (exit 0, accepted). What is read back through ``MlflowClient``: the parent and
its children, metrics with standard errors, params, gate tags, the per-item tables, figures
and report files; ``harness.history`` finds the last accepted run and each metric's trend;
the MLflow UI (headless Chromium) shows each candidate with its verdict. The server is killed
with its whole process group at the end, and no MLflow process may survive it. Each run's
results are read back as the typed models (``harness.results.load_results``).

The plan runs without its lm-eval suites (MMLU, GSM8K: their task setup costs seconds per
candidate and logs nothing these tests read beyond what the unit test of ``item_table``
covers). What only a real model shows (a GGUF quantizer's params, the memory-fit planner's
prediction beside the measured memory) is logged to MLflow by tests/test_smoke_e2e.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
import types
import urllib.parse
from pathlib import Path

import pytest
import yaml

from harness.results import SCHEMA, Record, RunResults, load_results
from tests.conftest import ROOT, run_cli
from tests.mlflow_server import (
    _processes,
    free_port,
    mlflow_server,  # noqa: F401  (the session fixture)
)

pytestmark = pytest.mark.slow
pytest.importorskip("mlflow")

PLAN = "fake"
EXPERIMENT = "quantgate-fake-server"
CHROMIUM = "/usr/bin/chromium"
FAILING = "noise-0.3"  # the plan's planted failure
LENIENT = {"name": "lenient", "inconclusive_blocks": False,
           "gates": [{"name": "ppl-increase", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 50}]}


def _plan(uri: str, accepted: bool) -> dict:
    plan = yaml.safe_load((ROOT / "configs" / "fake.yaml").read_text())
    assert plan["name"] == PLAN and FAILING in [c["name"] for c in plan["candidates"]]
    plan["suites"] = [s for s in plan["suites"] if s["suite"] in ("perplexity", "fidelity")]  # no lm-eval setup
    for rec in [plan["baseline"], *plan["candidates"]]:  # recorded only (speed-only): logged as runtime.threads
        rec["runtime"]["params"] = {"threads": 2}
    plan["tracking"] = {"uri": uri, "experiment": EXPERIMENT}
    if accepted:  # no planted failure, and no INCONCLUSIVE that could block
        plan["candidates"] = [c for c in plan["candidates"] if c["name"] != FAILING]
        plan["gates"] = LENIENT
    return plan


@pytest.fixture(scope="module")
def runs(qg_home, mlflow_server, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("mlflow-runs")
    out = []
    for label, accepted in (("shipped", False), ("accepted-1", True), ("accepted-2", True)):
        plan_file = work / f"{label}.yaml"
        plan_file.write_text(yaml.safe_dump(_plan(mlflow_server.uri, accepted), sort_keys=False))
        reports = work / label
        t0 = time.monotonic()
        proc = run_cli("run", str(plan_file), "--reports-dir", str(reports))
        seconds = round(time.monotonic() - t0, 1)
        (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
        results, _ = load_results(run_dir)
        print(f"{label}: exit {proc.returncode} in {seconds} s; tracking {results.tracking}")
        out.append({"label": label, "proc": proc, "seconds": seconds, "run_dir": run_dir, "results": results})
    return out


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _records(results: RunResults) -> list[Record]:
    return results.records()


def test_item_table_and_param_shapes():
    from harness.tracking import (
        MAX_PARAM_VALUE,
        RESPONSE_CHARS,
        _metric_key,
        candidate_params,
        item_table,
    )

    fidelity = [{"id": "w0000", "prompt_hash": "ab", "kl": [0.1, 0.3], "dp": [-0.02, 0.04], "same_top": 5, "n": 7,
                 "ref_tail_mass": 0.02}]
    t = item_table("q4", fidelity)
    assert t["id"] == ["w0000"] and t["kl_mean"] == [pytest.approx(0.2)] and t["dp_mean"] == [pytest.approx(0.01)]
    assert t["same_top"] == [5] and t["n"] == [7] and "kl" not in t
    lm = [{"id": "mmlu-1", "prompt_hash": "cd", "target": "2", "response": [[-1.5, False], [-0.5, True]],
           "scores": {"acc": 1.0}},
          {"id": "he-1", "prompt_hash": "ef", "target": "x", "response": "y" * 10_000, "scores": {"pass_at_1": 0.0},
           "filtered": {"strict-match": "3"}}]
    t = item_table("q4", lm)
    assert json.loads(t["response"][0]) == [[-1.5, False], [-0.5, True]]
    assert len(t["response"][1]) <= RESPONSE_CHARS
    assert t["acc"] == [1.0, None] and t["pass_at_1"] == [None, 0.0]
    assert json.loads(t["filtered"][1]) == {"strict-match": "3"}
    assert len({len(col) for col in t.values()}) == 1
    rec = Record(name="pre", role="candidate",
                 quantizer={"method": "prebuilt", "params": {"path": "/m" * 5000, "format": "gguf"}})
    params = candidate_params(rec)
    assert params["scheme"] == "gguf" and len(params["quantizer.params.path"]) <= MAX_PARAM_VALUE
    assert _metric_key("humaneval.pass@1") == "humaneval.pass_1" and not _metric_key("..x").startswith(".")


def test_server_started(mlflow_server):  # noqa: F811
    print(f"mlflow server {mlflow_server.uri} healthy after {mlflow_server.startup_seconds} s")
    assert mlflow_server.proc.poll() is None
    assert mlflow_server.ours(), "no process of the server found"


def test_cli_logs_to_the_server(runs, mlflow_server):  # noqa: F811
    codes = [r["proc"].returncode for r in runs]
    assert codes == [1, 0, 0], [r["proc"].stdout[-3000:] + r["proc"].stderr[-3000:] for r in runs]
    for r in runs:
        assert json.loads((r["run_dir"] / "results.json").read_text())["schema"] == SCHEMA
        tr = r["results"].tracking
        assert "error" not in tr, tr
        assert tr["uri"] == mlflow_server.uri
        assert tr["errors"] == [], tr["errors"]
        assert f"MLflow: {mlflow_server.uri}" in r["proc"].stdout
        assert tr["ui_url"] == f"{mlflow_server.uri}/#/experiments/{tr['experiment_id']}/runs/{tr['parent_run_id']}"
        assert set(tr["child_run_ids"]) == {rec.name for rec in _records(r["results"])}
        assert tr["accepted"] is (r["results"].exit_code == 0)


def test_parent_and_children(runs, mlflow_server):  # noqa: F811
    res = runs[0]["results"]
    tr = res.tracking
    client = _client(mlflow_server.uri)
    parent = client.get_run(tr["parent_run_id"])
    assert parent.info.run_name == res.run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["quantgate.plan"] == PLAN
    assert parent.data.tags["quantgate.accepted"] == "false"
    assert parent.data.tags["exit_code"] == "1"
    assert res.approved == ["q4", "noise-0.02"]
    assert parent.data.tags["approved"] == "q4,noise-0.02"
    assert parent.data.params["candidates"] == f"q4,noise-0.02,{FAILING}"
    assert parent.data.params["policy"] == "fake" and parent.data.params["gates"] == "ppl-increase,kl,size"
    assert parent.data.params["suites"] == "wikitext2,fidelity"
    assert parent.data.metrics["candidates"] == 3 and parent.data.metrics["approved"] == 2
    children = client.search_runs([tr["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {c.info.run_name for c in children} == {"f32", "q4", "noise-0.02", FAILING}
    assert {c.info.run_id for c in children} == set(tr["child_run_ids"].values())
    assert all(c.info.status == "FINISHED" for c in children)
    accepted = client.get_run(runs[1]["results"].tracking["parent_run_id"])
    assert accepted.data.tags["quantgate.accepted"] == "true" and accepted.data.tags["exit_code"] == "0"
    assert accepted.data.params["policy"] == "lenient" and accepted.data.params["candidates"] == "q4,noise-0.02"


def test_child_metrics_params_tags(runs, mlflow_server):  # noqa: F811
    from harness.tracking import _metric_key

    res = runs[0]["results"]
    tr = res.tracking
    client = _client(mlflow_server.uri)
    for rec in _records(res):
        run = client.get_run(tr["child_run_ids"][rec.name])
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        for name in ("wikitext2.ppl", "fidelity.kl_mean"):  # suite metrics with their standard errors
            v = rec.metrics[name]
            assert v.stderr is not None and v.stderr > 0 or rec.role == "baseline", name
            assert m[name] == pytest.approx(v.value) and m[f"{name}.stderr"] == pytest.approx(v.stderr), name
        for name in ("size.gib", "load.seconds", "decode.tokens_per_s"):  # probes: values, no stderr
            assert m[name] == pytest.approx(rec.metrics[name].value) and f"{name}.stderr" not in m, name
        for name, v in rec.metrics.items():  # every metric
            if v.value is not None:
                assert m[_metric_key(name)] == pytest.approx(v.value), name
        assert m["wikitext2.score_seconds"] >= 0 and m["fidelity.score_seconds"] >= 0 and "wall_seconds" in m
        assert t["verdict"] == rec.verdict and t["status"] == rec.status
        assert t["quantgate.role"] == rec.role and t["quantgate.run_id"] == res.run_id
        assert {k for k in t if k.startswith("gate.")} == {f"gate.{v.gate}" for v in rec.verdicts}
        for v in rec.verdicts:
            assert t[f"gate.{v.gate}"] == v.verdict
        assert p["runtime"] == "fake" and p["runtime.threads"] == "2"
        assert p["versions.runtime.numpy"] == rec.runtime.versions["numpy"]
        assert p["versions.runtime.quantgate-fake"] == rec.runtime.versions["quantgate-fake"]
        assert p["artifact.key"] == rec.artifact.key and p["artifact.format"] == "fake"
        if rec.role == "candidate":
            manifest = rec.artifact.manifest
            assert p["method"] == "fake"
            assert p["scheme"] == manifest["quant_type"]
            assert p["bits"] == f"{manifest['bits_per_weight']:.3f}"
            assert p["calibration"] == "none"
            for k, value in rec.quantizer["params"].items():  # the declared spec, as written
                assert p[f"quantizer.params.{k}"] == str(value), k
            for pkg, version in manifest["key_inputs"]["versions"].items():
                assert p[f"versions.quantizer.{pkg}"] == version
        else:
            assert p["method"] == "baseline" and p["model"] == "fake:tiny"
    q4 = client.get_run(tr["child_run_ids"]["q4"]).data.params
    assert (q4["scheme"], q4["bits"], q4["quantizer.params.bits"]) == ("Q4", "4.248", "4")
    assert client.get_run(tr["child_run_ids"]["noise-0.02"]).data.params["bits"] == "32.000"
    failing = client.get_run(tr["child_run_ids"][FAILING]).data.tags
    assert failing["verdict"] == "FAIL" and failing["status"] == "ok"
    assert (failing["gate.ppl-increase"], failing["gate.kl"], failing["gate.size"]) == ("FAIL", "FAIL", "PASS")
    # the probes' figures and notes, and the planner's prediction, as an artifact of each child
    # run (read with the client: mlflow.set_tracking_uri would export MLFLOW_TRACKING_URI to
    # later CLI runs). The planner reads no fake artifact: what it said (an error) is logged.
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(tr["child_run_ids"]["q4"], "probes.json", tmp)
        logged = json.loads(Path(path).read_text())
    rec = res.record("q4")
    assert logged["planner"] == json.loads(json.dumps(rec.planner))
    assert logged["figures"]["size"]["gib"] == pytest.approx(rec.probes["size"]["gib"])
    assert logged["figures"]["decode"]["tokens_per_s"] == pytest.approx(rec.probes["decode"]["tokens_per_s"])
    assert logged["notes"]["machine"]["cpu"]


def test_item_tables(runs, mlflow_server, monkeypatch):  # noqa: F811
    from mlflow.artifacts import download_artifacts

    res = runs[0]["results"]
    tr = res.tracking
    by_run = {}

    def rows(cid: str, name: str, suite: str) -> list[dict]:
        path = download_artifacts(run_id=cid, artifact_path=f"items/{suite}.json", tracking_uri=mlflow_server.uri,
                                  dst_path=str(runs[0]["run_dir"] / "dl" / name / suite))
        table = json.loads(Path(path).read_text())  # pandas "split" orientation
        return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]

    for rec in _records(res):
        cid = tr["child_run_ids"][rec.name]
        assert tr["tables"][rec.name] == ["items/wikitext2.json", "items/fidelity.json"]
        # perplexity: one row per window (16 windows of 256 bytes), identical for every record
        got, records = rows(cid, rec.name, "wikitext2"), rec.suites["wikitext2"].records
        assert len(got) == len(records) == 16
        assert [r["id"] for r in got] == [r["id"] for r in records]
        assert [r["prompt_hash"] for r in got] == [r["prompt_hash"] for r in records]
        for row, r in zip(got, records, strict=True):
            assert row["logprob_sum"] == pytest.approx(r["logprob_sum"])
            assert row["n_scored"] == r["n_scored"] and row["n_bytes"] == r["n_bytes"]
            assert row["token_nll"] == pytest.approx(-r["logprob_sum"] / r["n_scored"])
            assert row["candidate"] == rec.name
        by_run[cid] = [r["id"] for r in records]
        # fidelity: per window the means of its per-token KL and probability shift
        got, records = rows(cid, rec.name, "fidelity"), rec.suites["fidelity"].records
        assert len(got) == len(records) == 16
        assert [r["id"] for r in got] == [r["id"] for r in records]
        for row, r in zip(got, records, strict=True):  # (log_table writes JSON with 10 decimals)
            assert row["kl_mean"] == pytest.approx(sum(r["kl"]) / len(r["kl"]), rel=1e-6, abs=1e-9)
            assert row["dp_mean"] == pytest.approx(sum(r["dp"]) / len(r["dp"]), rel=1e-6, abs=1e-9)
            assert row["same_top"] == r["same_top"] and row["n"] == r["n"] and "kl" not in row
        kl_means = [row["kl_mean"] for row in got]
        if rec.name == FAILING:  # heavy noise: every window drifts from the baseline
            assert min(kl_means) > 0.02, kl_means
        elif rec.role == "baseline":  # the baseline against itself
            assert max(kl_means) < 1e-6, kl_means
    # MlflowClient.load_table resolves runs through the fluent API, i.e. the global tracking URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    df = _client(mlflow_server.uri).load_table(tr["experiment_id"], "items/wikitext2.json",
                                               run_ids=list(by_run), extra_columns=["run_id"])
    assert len(df) == sum(len(ids) for ids in by_run.values())
    for cid, ids in by_run.items():
        assert list(df[df["run_id"] == cid]["id"]) == ids


def test_report_files_and_figures(runs, mlflow_server):  # noqa: F811
    res, run_dir = runs[0]["results"], runs[0]["run_dir"]
    tr = res.tracking
    client = _client(mlflow_server.uri)
    logged = {f.path for f in client.list_artifacts(tr["parent_run_id"])}
    assert {"summary.md", "results.json"} <= logged
    for name in ("summary.md", "results.json", "report.html"):
        if (run_dir / name).is_file():  # report.html where the report writes one
            assert name in logged, name
    assert {"summary.md", "results.json"} <= set(tr["artifacts"])
    dst = run_dir / "dl-parent"
    got = json.loads(Path(client.download_artifacts(tr["parent_run_id"], "results.json", str(dst))).read_text())
    assert got["run_id"] == res.run_id and got["schema"] == SCHEMA
    assert client.get_run(tr["parent_run_id"]).data.tags["mlflow.note.content"].startswith(f"# quantgate: {PLAN}")
    if importlib.util.find_spec("harness.report.figures") is None:
        assert tr["figures"] == []
        pytest.skip("harness.report.figures is not installed: no figures to check")
    figures = {f.path for f in client.list_artifacts(tr["parent_run_id"], "figures")}
    assert {"figures/pareto.png", "figures/wikitext2.png", "figures/fidelity.png"} <= figures
    assert set(tr["figures"]) == figures
    png = Path(client.download_artifacts(tr["parent_run_id"], "figures/pareto.png", str(dst)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_history(runs, mlflow_server):  # noqa: F811
    from harness import history

    shipped, acc1, acc2 = (r["results"] for r in runs)
    last = history.last_accepted(mlflow_server.uri, EXPERIMENT, PLAN)
    assert last["run_id"] == acc2.tracking["parent_run_id"]
    assert last["quantgate_run_id"] == acc2.run_id and last["exit_code"] == 0
    assert last["approved"] == ["q4", "noise-0.02"]
    assert set(last["metrics"]) == {"f32", "q4", "noise-0.02"}
    for rec in _records(acc2):
        for name in ("wikitext2.ppl", "fidelity.kl_mean", "size.gib"):
            assert last["metrics"][rec.name][name] == pytest.approx(rec.value(name)), (rec.name, name)
        assert last["metrics"][rec.name]["wikitext2.ppl.stderr"] == pytest.approx(rec.metrics["wikitext2.ppl"].stderr)
        assert last["verdicts"][rec.name] == rec.verdict
    # the suites' results are reused from the store (identical in every run); the probes are
    # measured anew on every run, so their values tell the two accepted runs apart
    speed = "decode.tokens_per_s"
    assert acc1.record("q4").value(speed) != acc2.record("q4").value(speed)
    assert last["metrics"]["q4"][speed] == pytest.approx(acc2.record("q4").value(speed))
    logged = history.results_json(mlflow_server.uri, last["run_id"])
    assert isinstance(logged, RunResults) and logged.run_id == acc2.run_id
    # the artifact is the results.json written before logging: the same run, less its tracking
    assert logged.dump() == acc2.model_copy(update={"tracking": None}).dump()
    assert history.results_json(mlflow_server.uri, last["child_run_ids"]["q4"]) is None

    tr = history.trend(mlflow_server.uri, EXPERIMENT, PLAN, limit=30)
    runs_order = [shipped, acc1, acc2]
    assert [r["run_id"] for r in tr["runs"]] == [r.tracking["parent_run_id"] for r in runs_order]
    assert [r["accepted"] for r in tr["runs"]] == [False, True, True]
    assert [r["start_time"] for r in tr["runs"]] == sorted(r["start_time"] for r in tr["runs"])
    for name in ("wikitext2.ppl", "fidelity.kl_mean", speed):
        series = tr["series"]["q4"][name]
        assert [p["run_id"] for p in series] == [r.tracking["parent_run_id"] for r in runs_order], name
        assert [p["accepted"] for p in series] == [False, True, True]
        for point, res in zip(series, runs_order, strict=True):
            m = res.record("q4").metrics[name]
            assert point["value"] == pytest.approx(m.value), name
            assert point["stderr"] == (None if m.stderr is None else pytest.approx(m.stderr)), name
    assert len(tr["series"][FAILING]["wikitext2.ppl"]) == 1  # only the shipped plan had it
    assert "wikitext2.ppl.stderr" not in tr["series"]["q4"]
    assert len(history.trend(mlflow_server.uri, EXPERIMENT, PLAN, limit=2)["runs"]) == 2
    assert history.last_accepted(mlflow_server.uri, EXPERIMENT, "no-such-plan") is None
    assert history.last_accepted(mlflow_server.uri, "no-such-experiment", PLAN) is None


def test_trend_and_compare_accepted_commands(runs, mlflow_server):  # noqa: F811
    """The nightly commands: metric series from the server, and a run against the last accepted one."""
    shipped, _, acc2 = runs
    uri = mlflow_server.uri
    t = run_cli("trend", PLAN, "--uri", uri, "--experiment", EXPERIMENT, "--metric", "wikitext2.ppl")
    assert t.returncode == 0, t.stderr
    assert "| q4 | wikitext2.ppl |" in t.stdout and f"| {FAILING} | wikitext2.ppl |" in t.stdout
    assert "fidelity.kl_mean" not in t.stdout  # --metric: that one only
    header = next(ln for ln in t.stdout.splitlines() if ln.startswith("| candidate |"))
    assert header.count("*") == 2  # the two accepted runs are marked
    c = run_cli("compare", "--accepted", str(shipped["run_dir"]), "--uri", uri, "--experiment", EXPERIMENT)
    assert c.returncode == 0, c.stderr
    assert f"`{acc2['results'].run_id}` (A)" in c.stdout
    assert re.search(r"^\| q4 \| wikitext2\.ppl( [↑↓])? \|", c.stdout, flags=re.M), c.stdout  # arrow: its direction
    assert re.search(r"^\| q4 \| fidelity\.kl_mean( [↑↓])? \|", c.stdout, flags=re.M), c.stdout
    none = run_cli("compare", "--accepted", str(shipped["run_dir"]), "--uri", uri, "--experiment", "nothing-here")
    assert none.returncode == 2 and none.stderr.startswith(f"error: no run of plan '{PLAN}'")


def test_figure_failure_is_recorded_not_raised(runs, mlflow_server, monkeypatch):  # noqa: F811
    from harness.config import TrackingSpec
    from harness.tracking import log_run

    def broken(results):
        raise RuntimeError("planted figure failure")

    fake = types.ModuleType("harness.report.figures")
    fake.pareto = broken
    fake.suite_bars = lambda results: [("wikitext2", object())]  # not a figure: log_figure fails
    monkeypatch.setitem(sys.modules, "harness.report.figures", fake)
    import harness.report

    monkeypatch.setattr(harness.report, "figures", fake, raising=False)
    res = runs[0]["results"]
    out = log_run(res, TrackingSpec(uri=mlflow_server.uri, experiment=EXPERIMENT + "-figure-failure"), runs[0]["run_dir"])
    whats = [e["what"] for e in out["errors"]]
    assert "figure pareto" in whats and "figure figures/wikitext2.png" in whats, out["errors"]
    assert "planted figure failure" in out["errors"][whats.index("figure pareto")]["error"]
    assert set(out["child_run_ids"]) == {r.name for r in _records(res)}
    assert {"summary.md", "results.json"} <= set(out["artifacts"])
    parent = _client(mlflow_server.uri).get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["quantgate.logging_errors"] == str(len(whats))


def test_unreachable_server_raises(runs):
    from harness.config import TrackingSpec
    from harness.tracking import TrackingUnreachable, log_run

    t0 = time.monotonic()
    with pytest.raises(TrackingUnreachable, match="cannot reach the MLflow tracking server"):
        log_run(runs[0]["results"], TrackingSpec(uri=f"http://127.0.0.1:{free_port()}", experiment="x"),
                runs[0]["run_dir"])
    assert time.monotonic() - t0 < 30  # one request, not MLflow's retries with backoff


def test_cli_exit_2_when_the_server_is_unreachable(runs, tmp_path):
    """The run itself completes (artifacts and results reused from the store); logging fails: exit 2."""
    uri = f"http://127.0.0.1:{free_port()}"
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(_plan(uri, accepted=True), sort_keys=False))
    proc = run_cli("run", str(plan_file), "--reports-dir", str(tmp_path / "reports"))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"MLflow logging failed: TrackingUnreachable: cannot reach the MLflow tracking server at {uri}" in proc.stderr
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    results, _ = load_results(run_dir)
    assert results.exit_code == 2 and "cannot reach" in results.tracking["error"]
    assert [c.verdict for c in results.candidates] == ["PASS", "PASS"]  # measured and kept


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    return sync_playwright


def test_ui_shows_candidates_and_verdicts(runs, mlflow_server, tmp_path_factory):  # noqa: F811
    sync_playwright = _playwright()
    res = runs[0]["results"]
    tr = res.tracking
    # the experiment's runs table, filtered to this execution (parent + children)
    url = tr["experiment_url"] + "&searchFilter=" + urllib.parse.quote(f"tags.`quantgate.run_id` = '{res.run_id}'")
    shot = tmp_path_factory.mktemp("ui") / "mlflow-runs.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.get_by_text("matching runs").wait_for()
            assistant = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
            if assistant.count():
                assistant.first.click()
            # child runs are nested under the parent: expand it
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            page.get_by_text(FAILING, exact=True).wait_for()
            # add the verdict tag, the perplexity metric and the bits param as columns
            page.get_by_role("button", name="Columns", exact=True).click()
            selector = page.locator("[data-component-id='mlflow.experiment_page.runs_table.column_selector']")
            for col in ("verdict", "wikitext2.ppl", "bits"):
                page.get_by_placeholder("Search columns").fill(col)
                node = selector.locator(".du-bois-light-tree-treenode").filter(
                    has_text=re.compile(f"^{re.escape(col)}$"))  # not wikitext2.ppl.stderr
                node.locator(".du-bois-light-tree-checkbox").click()
            page.keyboard.press("Escape")
            page.locator(".ag-header-cell-text, [role=columnheader]", has_text="verdict").first.wait_for()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(shot), full_page=True)
            rows: dict[str, str] = {}  # ag-grid splits a row into pinned and scrolled parts
            parts = page.locator(".ag-pinned-left-cols-container .ag-row, .ag-center-cols-container .ag-row")
            for i in range(parts.count()):
                part = parts.nth(i)
                idx = part.get_attribute("row-index")
                rows[idx] = rows.get(idx, "") + " | " + part.inner_text().replace("\n", " | ")
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    for line in rows.values():
        print(line)
    cells = [[c.strip() for c in line.split("|")] for line in rows.values()]
    for rec in _records(res):
        row = [c for c in cells if rec.name in c]
        assert len(row) == 1, (rec.name, rows)
        assert rec.verdict in row[0], (rec.name, rec.verdict, row[0])
    keep = os.environ.get("QUANTGATE_UI_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_server_stops_without_survivors(mlflow_server):  # noqa: F811
    pgid = mlflow_server.proc.pid
    survivors = mlflow_server.stop()
    assert not survivors, survivors
    assert mlflow_server.proc.poll() is not None
    leftover = [p for p in _processes() if p[1] == pgid or mlflow_server.marker in p[2]]
    assert not leftover, leftover
