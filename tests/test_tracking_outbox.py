"""MLflow as an outbox (harness.tracking.RunLogger), against a real ``mlflow server``.

The fake plan (perplexity and fidelity on the tiny numpy model, a lenient policy: exit 0)
runs through the CLI while the server is

- down from the start: the run completes, keeps its files, exits 2 and prints one line with
  the command that logs it later; ``quantgate log RUN --uri`` then logs it, and a second
  ``quantgate log`` creates nothing new;
- up, then killed mid-run: each finished record's child run is on the server while the run
  is still going; after the kill the first failed request ends all logging (no further
  request), the run completes and exits 2; the parent is left RUNNING and not accepted, and
  ``quantgate log`` later completes that same parent instead of creating another;
- hung (a proxy that accepts and never answers): given up on after MLflow's timeout x (1 +
  one retry), measured.

``compare --accepted`` never picks a torn parent (RUNNING, or without its results.json),
even one tagged accepted as quantgate before the outbox left them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.results import load_results
from tests.conftest import ROOT, run_cli
from tests.mlflow_server import MlflowServer, free_port

pytest.importorskip("mlflow")

PLAN = "fake"
EXPERIMENT = "quantgate-outbox"
LENIENT = {"name": "lenient", "inconclusive_blocks": False,
           "gates": [{"name": "ppl-increase", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 50}]}
SLOW_DELAY_S = 15  # the slow candidate's quantization sleeps this long: time to look and to kill


def _plan(uri: str, slow: bool = False) -> dict:
    plan = yaml.safe_load((ROOT / "configs" / "fake.yaml").read_text())
    plan["suites"] = [s for s in plan["suites"] if s["suite"] in ("perplexity", "fidelity")]  # no lm-eval
    plan["candidates"] = [c for c in plan["candidates"] if c["name"] in ("q4", "noise-0.02")]
    if slow:  # noise-0.02 becomes "slow": produced after a sleep, so the run is still going
        plan["candidates"][1] = {"name": "slow", "runtime": {"name": "fake"}, "quantizer": {
            "method": "fake", "params": {"noise": 0.02, "seed": 7, "delay_seconds": SLOW_DELAY_S}}}
    plan["probes"] = {"size": {}}
    plan["gates"] = LENIENT
    plan["tracking"] = {"uri": uri, "experiment": EXPERIMENT}
    return plan


def _write_plan(folder: Path, plan: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _run_dir(reports: Path) -> Path:
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    return run_dir


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs_of(uri: str, run_id: str) -> list:
    """Every MLflow run (parent and children) tagged with this quantgate run id."""
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else list(client.search_runs([exp.experiment_id], f"tags.`quantgate.run_id` = '{run_id}'"))


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


class Servers:
    """One MLflow server, stopped and started again on the same store and port."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.live: MlflowServer | None = None
        self.startups: list[float] = []

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> MlflowServer:
        if self.live is None or self.live.proc.poll() is not None:
            self.live = MlflowServer(root=self.root, port=self.port).start()
            self.startups.append(self.live.startup_seconds)
        return self.live

    def kill(self) -> None:
        survivors = self.live.stop(grace_s=5)
        assert not survivors, survivors


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    s = Servers(tmp_path_factory.mktemp("outbox-server"))
    yield s
    if s.live is not None:
        survivors = s.live.stop()
        assert not survivors, f"mlflow processes outlived the server: {survivors}"
    print(f"mlflow server startups: {s.startups} s")


@pytest.fixture(scope="module")
def down_run(qg_home, tmp_path_factory):
    """The plan run with nothing listening at its tracking URI."""
    work = tmp_path_factory.mktemp("outbox-down")
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    proc = run_cli("run", str(_write_plan(work, _plan(uri))), "--reports-dir", str(work / "reports"),
                   env={"CI": "1"})
    return {"proc": proc, "uri": uri, "run_dir": _run_dir(work / "reports"), "seconds": time.monotonic() - t0}


@pytest.fixture(scope="module")
def killed_run(qg_home, servers, tmp_path_factory):
    """The slow plan run against the server, which is killed once the first candidate is logged."""
    server = servers.up()
    work = tmp_path_factory.mktemp("outbox-killed")
    plan_file = _write_plan(work, _plan(server.uri, slow=True))
    out, err = work / "stdout.txt", work / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(plan_file), "--reports-dir",
                                 str(work / "reports")], cwd=ROOT, stdout=fo, stderr=fe,
                                env={**os.environ, "CI": "1"})
    seen: dict = {}
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            text = out.read_text()
            run_id = next((ln.split()[1].rstrip(":") for ln in text.splitlines() if ln.startswith("run ")), None)
            if run_id:
                runs = {r.data.tags.get("quantgate.record") or "(parent)": r for r in _runs_of(server.uri, run_id)}
                if runs.get("q4") is not None and runs["q4"].info.status == "FINISHED":
                    seen = {"run_id": run_id, "runs": runs, "running": proc.poll() is None,
                            "stdout": text, "at": time.monotonic()}
                    break
            time.sleep(0.5)
        t_kill = time.monotonic()
        servers.kill()
        killed_after = time.monotonic() - t_kill
        rc = proc.wait(timeout=600)
        ended_after_kill = time.monotonic() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"rc": rc, "stdout": out.read_text(), "stderr": err.read_text(), "seen": seen, "uri": server.uri,
            "run_dir": _run_dir(work / "reports"), "kill_seconds": killed_after,
            "ended_after_kill": ended_after_kill}


# ------------------------------------------------------------------ no server needed
def test_http_limits_and_a_refused_server(tmp_path, monkeypatch):
    """Our MLflow calls get short timeouts and one retry unless the user set them; a refused
    server is given up on at the first request (no MLflow retries with backoff)."""
    from harness.config import TrackingSpec
    from harness.tracking import HTTP_LIMITS, RunLogger, http_limits

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    with http_limits():
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"  # the user's wins
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"

    uri = f"http://127.0.0.1:{free_port()}"
    logger = RunLogger(TrackingSpec(uri=uri, experiment="x"), tmp_path / "run")
    t0 = time.monotonic()
    assert logger.start("20260101-000000-fake-0000", {"name": PLAN}) is False
    seconds = time.monotonic() - t0
    print(f"refused server given up on after {seconds:.3f} s, {logger.calls} request(s)")
    assert logger.failed and logger.calls == 1 and seconds < 5
    line = logger.failure_line()
    assert "\n" not in line and line.startswith(f"MLflow logging failed: TrackingUnreachable: cannot reach the "
                                                f"MLflow tracking server at {uri}")
    assert line.endswith(f"quantgate log {tmp_path / 'run'} --uri {uri}")
    logger.record_finished(None)  # stopped: nothing is attempted (not even reading the record)
    assert logger.calls == 1


# ------------------------------------------------------------------ server down from the start
@pytest.mark.slow
def test_server_down_from_the_start(down_run):
    proc, run_dir, uri = down_run["proc"], down_run["run_dir"], down_run["uri"]
    print(f"run with the server down: exit {proc.returncode} in {down_run['seconds']:.1f} s")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert f"log them later with: quantgate log {run_dir} --uri {uri}" in lines[0]
    assert sum("quantgate log" in ln for ln in (proc.stdout + proc.stderr).splitlines()) == 1
    assert "exit code 2" in proc.stdout
    for name in ("results.json", "summary.md", "report.html"):
        assert (run_dir / name).is_file(), name
    results, _ = load_results(run_dir)
    tr = results.tracking
    assert results.exit_code == 2 and tr["pending"] and tr["gate_exit_code"] == 0
    assert "cannot reach" in tr["error"] and tr["log_command"] == f"quantgate log {run_dir} --uri {uri}"
    assert tr["parent_run_id"] is None and tr["calls"] == 1 and tr["seconds"] < 5, tr
    assert [c.verdict for c in results.candidates] == ["PASS", "PASS"]  # measured and kept


# ------------------------------------------------------------------ a hung server
class FreezingProxy:
    """A TCP proxy to a server; ``freeze()``: connections are accepted and read, never answered."""

    METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ")

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.frozen = threading.Event()
        self.requests_while_frozen = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.frozen.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def _serve(self, conn: socket.socket) -> None:
        upstream = None
        try:
            while data := conn.recv(65536):
                if self.frozen.is_set():
                    self.requests_while_frozen += data.startswith(self.METHODS)
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.target)
                    self.conns.append(upstream)
                    threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()
                upstream.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self.sock, *self.conns]:
            try:
                s.close()
            except OSError:
                pass


@pytest.mark.slow
def test_a_hung_server_is_given_up_on_in_seconds(down_run, servers):
    from harness import history
    from harness.config import TrackingSpec
    from harness.tracking import HTTP_LIMITS, RunLogger

    server = servers.up()
    results, _ = load_results(down_run["run_dir"])
    proxy = FreezingProxy(server.port)
    experiment = EXPERIMENT + "-hung"
    try:
        logger = RunLogger(TrackingSpec(uri=proxy.uri, experiment=experiment), down_run["run_dir"])
        assert logger.start(results.run_id, results.plan, started=results.started), logger.failure
        logger.record_finished(results.baseline)
        assert not logger.failed and results.baseline.name in logger.done
        calls = logger.calls
        proxy.frozen.set()
        t0 = time.monotonic()
        logger.record_finished(results.candidates[0])
        gave_up = time.monotonic() - t0
        attempts = proxy.requests_while_frozen
        t1 = time.monotonic()
        logger.record_finished(results.candidates[1])
        tracking = logger.finish(results)
        after = time.monotonic() - t1
    finally:
        proxy.close()
    timeout = int(HTTP_LIMITS["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    print(f"hung server: given up on after {gave_up:.1f} s ({attempts} requests sent to it, MLflow timeout "
          f"{timeout} s, {HTTP_LIMITS['MLFLOW_HTTP_REQUEST_MAX_RETRIES']} retry); then {after:.3f} s and "
          f"{proxy.requests_while_frozen - attempts} requests for the rest of the run")
    assert logger.failed and "lost the MLflow tracking server" in str(logger.failure)
    assert logger.calls == calls + 1  # one call (MLflow's own retry inside it), then nothing
    assert attempts == 2, attempts  # the request and MLflow's one retry
    assert proxy.requests_while_frozen == attempts and after < 1
    assert gave_up < 3 * timeout, gave_up  # an upper bound only: (1 + 1 retry) x timeout, plus slack
    assert tracking["pending"] and tracking["gave_up"]["what"] == f"child run {results.candidates[0].name}"
    # the torn parent: RUNNING, not accepted, never picked
    parent = _client(server.uri).get_run(tracking["parent_run_id"])
    assert parent.info.status == "RUNNING" and parent.data.tags["quantgate.accepted"] == "false"
    assert history.last_accepted(server.uri, experiment, PLAN) is None


# ------------------------------------------------------------------ killed mid-run
@pytest.mark.slow
def test_children_are_logged_as_records_finish_and_a_killed_server_is_given_up(killed_run):
    seen = killed_run["seen"]
    assert seen, killed_run["stdout"][-3000:] + killed_run["stderr"][-3000:]
    # (a) while the run was still going (the slow candidate quantizing), the finished records were on the server
    assert seen["running"], "the run ended before its first candidate was seen on the server"
    assert "slow" not in seen["runs"] and {"f32", "q4", "(parent)"} <= set(seen["runs"])
    assert seen["runs"]["f32"].info.status == "FINISHED"
    parent = seen["runs"]["(parent)"]
    assert parent.info.status == "RUNNING" and parent.data.tags["quantgate.accepted"] == "false"
    assert seen["runs"]["q4"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert seen["runs"]["q4"].data.metrics["wikitext2.ppl"] > 0
    # (c) killed mid-run: the run completes, keeps its files, exits 2 with one line
    rc, stdout, stderr, run_dir = killed_run["rc"], killed_run["stdout"], killed_run["stderr"], killed_run["run_dir"]
    assert rc == 2, stdout[-3000:] + stderr[-3000:]
    lines = _error_lines(stderr)
    assert len(lines) == 1, stderr
    assert "lost the MLflow tracking server" in lines[0] and "chars cut" not in lines[0] and len(lines[0]) < 500
    assert lines[0].endswith(f"log them later with: quantgate log {run_dir} --uri {killed_run['uri']}")
    results, _ = load_results(run_dir)
    tr = results.tracking
    assert results.exit_code == 2 and tr["gate_exit_code"] == 0 and tr["pending"]
    assert [c.verdict for c in results.candidates] == ["PASS", "PASS"]
    assert (run_dir / "summary.md").is_file() and (run_dir / "report.html").is_file()
    assert tr["parent_run_id"] == parent.info.run_id and set(tr["child_run_ids"]) == {"f32", "q4"}
    # given up at the first failed request, and nothing was attempted after it
    assert tr["gave_up"]["what"] == "child run slow" and tr["gave_up"]["call"] == tr["calls"]
    print(f"killed server: the failed request took {tr['gave_up']['seconds']} s; MLflow time for the whole run "
          f"{tr['seconds']} s in {tr['calls']} requests; run ended {killed_run['ended_after_kill']:.1f} s after "
          f"the kill (the slow candidate's {SLOW_DELAY_S} s sleep included)")
    assert tr["gave_up"]["seconds"] < 5 and tr["seconds"] < 30  # upper bounds only


# ------------------------------------------------------------------ quantgate log
def _log(run_dir: Path, *uri: str):
    return run_cli("log", str(run_dir), *(("--uri", uri[0]) if uri else ()), env={"CI": "1"})


def _table_rows(uri: str, run_id: str, path: str) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = _client(uri).download_artifacts(run_id, path, tmp)
        data = json.loads(Path(local).read_text())
    return len(data["data"])


@pytest.mark.slow
def test_log_later_and_again_without_duplicates(down_run, servers):
    server = servers.up()
    run_dir = down_run["run_dir"]
    results, _ = load_results(run_dir)
    t0 = time.monotonic()
    first = _log(run_dir, server.uri)
    seconds = time.monotonic() - t0
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "(logged; accepted: yes)" in first.stdout, first.stdout
    runs = _runs_of(server.uri, results.run_id)
    (parent,) = [r for r in runs if r.data.tags.get("quantgate.role") == "comparison"]
    children = {r.data.tags["quantgate.record"]: r for r in runs if r is not parent}
    assert set(children) == {"f32", "q4", "noise-0.02"}
    assert parent.info.status == "FINISHED" and parent.data.tags["quantgate.accepted"] == "true"
    assert parent.data.tags["quantgate.complete"] == "true" and parent.data.tags["exit_code"] == "0"
    assert all(c.info.status == "FINISHED" and c.data.tags["verdict"] for c in children.values())
    client = _client(server.uri)
    assert {"results.json", "summary.md", "report.html"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
    started_ms = int(dt.datetime.fromisoformat(results.started).timestamp() * 1000)
    assert parent.info.start_time == started_ms  # logged later, the run keeps its own start time
    after, _ = load_results(run_dir)  # the run folder says where it was logged
    assert after.exit_code == 0 and "error" not in after.tracking and not after.tracking.get("pending")
    assert after.tracking["parent_run_id"] == parent.info.run_id and after.tracking["accepted"] is True
    assert parent.info.run_id in (run_dir / "summary.md").read_text() + (run_dir / "report.html").read_text()
    rows = _table_rows(server.uri, children["q4"].info.run_id, "items/wikitext2.json")

    second = _log(run_dir, server.uri)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "already complete, nothing logged" in second.stdout
    again = _runs_of(server.uri, results.run_id)
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)  # no new run
    assert _table_rows(server.uri, children["q4"].info.run_id, "items/wikitext2.json") == rows == 16
    print(f"quantgate log: {seconds:.1f} s; again: nothing new ({len(again)} runs)")


@pytest.mark.slow
def test_compare_accepted_never_picks_a_torn_run(down_run, killed_run, servers, tmp_path):
    """The torn parent of the killed run, tagged accepted as quantgate used to leave it, a
    FINISHED one without results.json, and a RUNNING one: none is picked."""
    server = servers.up()
    client = _client(server.uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    good, _ = load_results(down_run["run_dir"])
    if not (good.tracking or {}).get("parent_run_id") or good.tracking.get("pending"):
        assert _log(down_run["run_dir"], server.uri).returncode == 0
        good, _ = load_results(down_run["run_dir"])
    torn, _ = load_results(killed_run["run_dir"])
    torn_parent = torn.tracking["parent_run_id"]
    assert client.get_run(torn_parent).info.status == "RUNNING"
    client.set_tag(torn_parent, "quantgate.accepted", "true")  # the old bug's state
    tags = {"quantgate.plan": PLAN, "quantgate.role": "comparison", "quantgate.accepted": "true"}
    no_files = client.create_run(exp_id, run_name="no-results", tags={**tags, "quantgate.run_id": "no-results"})
    client.set_terminated(no_files.info.run_id, "FINISHED")
    client.create_run(exp_id, run_name="running", tags={**tags, "quantgate.run_id": "running"})  # left RUNNING
    proc = run_cli("compare", "--accepted", str(killed_run["run_dir"]), "--uri", server.uri,
                   "--experiment", EXPERIMENT)
    assert proc.returncode == 0, proc.stderr
    assert f"`{good.run_id}` (A)" in proc.stdout, proc.stdout[:2000]
    from harness import history

    assert history.last_accepted(server.uri, EXPERIMENT, PLAN)["run_id"] == good.tracking["parent_run_id"]


@pytest.mark.slow
def test_log_completes_the_parent_a_killed_run_left(killed_run, servers):
    server = servers.up()  # on the same store and port: the run's recorded URI is used
    run_dir = killed_run["run_dir"]
    before, _ = load_results(run_dir)
    proc = _log(run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "(completed; accepted: yes)" in proc.stdout, proc.stdout
    runs = _runs_of(server.uri, before.run_id)
    parents = [r for r in runs if r.data.tags.get("quantgate.role") == "comparison"]
    assert [p.info.run_id for p in parents] == [before.tracking["parent_run_id"]]  # the same parent, completed
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["quantgate.complete"] == "true"
    assert parent.data.tags["quantgate.accepted"] == "true"
    children = [r for r in runs if r is not parent]
    assert sorted(c.data.tags["quantgate.record"] for c in children) == ["f32", "q4", "slow"]
    by_name = {c.data.tags["quantgate.record"]: c.info.run_id for c in children}
    assert by_name["q4"] == before.tracking["child_run_ids"]["q4"]  # logged during the run: kept
    assert _table_rows(server.uri, by_name["q4"], "items/wikitext2.json") == 16  # not appended twice
    after, _ = load_results(run_dir)
    assert after.exit_code == 0 and not after.tracking.get("pending")
    again = _log(run_dir)
    assert again.returncode == 0 and "already complete" in again.stdout
    assert len(_runs_of(server.uri, before.run_id)) == 4


def test_credentials_in_the_tracking_uri_are_not_recorded(monkeypatch):
    """A tracking URI with user info (``https://user:token@host``) is recorded and printed
    without it; a later ``log``/``release`` takes the credentials from MLFLOW_TRACKING_URI
    when that names the same server."""
    from harness.tracking import credentialed_uri, redact_uri

    assert redact_uri("https://alice:s3cr3t@mlflow.corp:5443/path") == "https://mlflow.corp:5443/path"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert redact_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cr3t@mlflow.corp:5443/path")
    assert credentialed_uri("https://mlflow.corp:5443/path") == "https://alice:s3cr3t@mlflow.corp:5443/path"
    assert credentialed_uri("https://other.corp/path") == "https://other.corp/path"
