"""The Ray executor (harness/executors/ray.py) on a real Ray cluster of this machine: the same
records and verdicts as the local executor, candidates placed by their runtime's resources, a
candidate no node can host is an ERROR record (not a hang), and a Ray worker killed mid-suite
is retried by Ray and resumes from the item journal."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

FAKE = {"name": "fake"}
PLAN = {
    "name": "ray-fake",
    "baseline": {"name": "f32", "model": "fake:tiny", "runtime": FAKE},
    "candidates": [
        {"name": "q4", "quantizer": {"method": "fake", "params": {"bits": 4}}, "runtime": FAKE},
        {"name": "noise-0.02", "quantizer": {"method": "fake", "params": {"noise": 0.02}}, "runtime": FAKE},
        {"name": "noise-0.3", "quantizer": {"method": "fake", "params": {"noise": 0.3}}, "runtime": FAKE},
    ],
    "suites": [
        {"suite": "perplexity", "name": "wiki", "params": {"dataset": "wikitext2", "context_length": 256,
                                                           "max_tokens": 4096}},
        {"suite": "fidelity", "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 2560}},
    ],
    "probes": {"size": {}, "decode": {"prompt_tokens": 16, "gen_tokens": 8, "repetitions": 1}},
    "gates": {"gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wiki.ppl", "max_pct": 5},
                        {"name": "size", "kind": "max_value", "metric": "size.gib", "max": 1}]},
    "tracking": {"enabled": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with 2 CPUs: the cluster a user starts, joined by address."""
    temp = tmp_path_factory.mktemp("ray")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env["RAY_AUTH_MODE"] = "token"
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    # this cluster's processes (their command lines name its temp dir), to stop it alone at the
    # end: `ray stop` would stop every Ray cluster of the machine
    ours = [q for q in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(q.info["cmdline"] or [])]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        tree = [c for q in ours if q.is_running() for c in [q, *q.children(recursive=True)]]
        for q in tree:
            with contextlib.suppress(psutil.Error):
                q.kill()
        psutil.wait_procs(tree, timeout=30)


def _run(plan: dict, tmp: Path, name: str, *extra: str, home: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    env = {**os.environ, "QUANTGATE_HOME": str(home or tmp / f"home-{name}"), "RAY_USAGE_STATS_ENABLED": "0"}
    reports = tmp / f"reports-{name}"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--reports-dir", str(reports), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    runs = [p for p in reports.iterdir() if p.is_dir()] if reports.is_dir() else []
    return proc, (json.loads((runs[0] / "results.json").read_text()) if runs else {})


def _records(res: dict) -> dict:
    return {r["name"]: {s: v["records"] for s, v in r["suites"].items()} for r in [res["baseline"], *res["candidates"]]}


def test_ray_gives_the_local_executors_records_and_verdicts(cluster, tmp_path):
    local, lres = _run(PLAN, tmp_path, "local")
    assert local.returncode == 1, local.stdout[-3000:] + local.stderr[-3000:]
    ray_run, rres = _run(PLAN, tmp_path, "ray", "--executor", "ray", "--address", cluster)
    assert ray_run.returncode == 1, ray_run.stdout[-3000:] + ray_run.stderr[-3000:]
    assert {c["name"]: c["verdict"] for c in rres["candidates"]} == \
        {c["name"]: c["verdict"] for c in lres["candidates"]} == {"q4": "PASS", "noise-0.02": "PASS", "noise-0.3": "FAIL"}
    assert _records(rres) == _records(lres)
    assert rres["executor"]["name"] == "ray" and lres["executor"]["name"] == "local"
    assert sum(n["resources"]["CPU"] for n in rres["executor"]["nodes"]) == 2
    for rec in [rres["baseline"], *rres["candidates"]]:
        ev, pr = rec["placement"]["evaluate"], rec["placement"]["probe"]
        # each stage in its own Ray worker process; the probes pinned to the evaluation's node,
        # holding all its CPUs
        assert ev["executor"] == "ray" and ev["node_id"] and ev["pid"] != pr["pid"] != os.getpid()
        assert pr["node_id"] == ev["node_id"] and pr["cpus"] == 2 and ev["cpus"] == 1
    # the progress of every task reached the driver's display
    assert "[noise-0.3] wiki: ok" in ray_run.stdout and "[q4] probe: ok" in ray_run.stdout


def test_a_candidate_no_node_can_host_is_an_error_not_a_hang(cluster, tmp_path):
    plan = dict(PLAN, candidates=[PLAN["candidates"][0],
                                  {**PLAN["candidates"][1], "runtime": {"name": "fake", "params": {"threads": 64}}}])
    proc, res = _run(plan, tmp_path, "big", "--executor", "ray", "--address", cluster)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    big = res["candidates"][1]
    assert big["status"] == "error" and big["verdict"] == "ERROR"
    assert "no node of the cluster can run it: it needs 64 CPUs" in big["error"]["message"]
    assert res["candidates"][0]["verdict"] == "PASS"


def _ray_worker_of(task_name: str) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        if any(f"ray::{task_name}" in part for part in (p.info["cmdline"] or [])):
            return p
    return None


def test_a_killed_ray_worker_is_retried_and_resumes_from_the_journal(cluster, tmp_path):
    slow = {"name": "fake", "params": {"score_delay_ms": 120}}
    plan = dict(PLAN, baseline={**PLAN["baseline"], "runtime": slow},
                candidates=[{**PLAN["candidates"][0], "runtime": slow}],
                suites=[{"suite": "perplexity", "name": "wiki",
                         "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 256 * 40}}],
                probes={}, gates={"gates": [PLAN["gates"]["gates"][0]]})
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    reports = tmp_path / "reports-slow"
    env = {**os.environ, "QUANTGATE_HOME": str(tmp_path / "home-slow"), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--reports-dir", str(reports),
                             "--executor", "ray", "--address", cluster],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        progress = list(reports.glob("*/logs/q4-evaluate.progress.jsonl"))
        lines = [json.loads(x) for x in progress[0].read_text().splitlines() if x.endswith("}")] if progress else []
        if max([e["done"] for e in lines] + [0]) >= 16:
            worker = _ray_worker_of("quantgate:q4:candidate")
            if worker is not None:
                worker.kill()
                killed = worker.pid
    out, _ = proc.communicate(timeout=600)
    assert killed is not None, out[-3000:]
    assert proc.returncode == 0, out[-3000:]
    (run,) = [p for p in reports.iterdir() if p.is_dir()]
    res = json.loads((run / "results.json").read_text())
    q4 = res["candidates"][0]
    assert q4["status"] == "ok" and q4["placement"]["evaluate"]["pid"] != killed
    wiki = q4["suites"]["wiki"]
    assert 16 <= wiki["resumed_items"] < 40 and len(wiki["records"]) == 40


@pytest.mark.heavy  # the real model twice: ~2 min on 2 cores (nox -s heavy, in CI)
def test_embedded_model_on_ray_matches_the_local_executor(cluster, tmp_path):
    """The real embedded model end to end on the Ray cluster: llama.cpp F16 vs Q8_0, 1 thread each
    (bit-reproducible), the same windows, values and verdicts as the local executor."""
    pytest.importorskip("llama_cpp")
    llama = {"name": "llama-cpp", "params": {"n_threads": 1}}
    plan = {"name": "ray-embedded", "baseline": {"name": "f16", "model": "embedded:smollm2-135m", "runtime": llama},
            "candidates": [{"name": "q8_0", "quantizer": {"method": "gguf", "params": {"type": "Q8_0"}},
                            "runtime": llama}],
            "suites": [{"suite": "perplexity", "name": "wiki",
                        "params": {"dataset": "wikitext2", "context_length": 512, "max_tokens": 1024}}],
            "probes": {"size": {}},
            "gates": {"gates": [{"name": "ppl", "kind": "max_value", "metric": "wiki.ppl", "max": 60}]},
            "tracking": {"enabled": False}}
    local, lres = _run(plan, tmp_path, "emb-local")
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    ray_run, rres = _run(plan, tmp_path, "emb-ray", "--executor", "ray", "--address", cluster)
    assert ray_run.returncode == 0, ray_run.stdout[-3000:] + ray_run.stderr[-3000:]
    assert _records(rres) == _records(lres)
    assert rres["candidates"][0]["metrics"]["wiki.ppl"] == lres["candidates"][0]["metrics"]["wiki.ppl"]
    assert rres["candidates"][0]["verdict"] == lres["candidates"][0]["verdict"] == "PASS"
    q8 = rres["candidates"][0]
    assert q8["placement"]["evaluate"]["executor"] == "ray" and q8["metrics"]["size.gib"]["value"] > 0.1
