"""A candidate that crashes is recorded as an error; the others still run."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from harness.isolate import WorkerDied, run_isolated
from tests.conftest import ROOT, run_cli


def test_worker_that_dies_is_reported_not_fatal(tmp_path):
    with pytest.raises(WorkerDied, match="worker process died"):
        run_isolated(os.abort, log_path=tmp_path / "abort.log")
    assert run_isolated(sum, [1, 2, 3]) == 6  # the parent is fine


@pytest.mark.slow
def test_broken_candidate_does_not_stop_the_others(qg_home, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    plan = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    plan["gates"] = str(ROOT / "gates" / "smoke.yaml")
    plan["candidates"] = [
        {"name": "broken", "quantizer": {"method": "prebuilt", "params": {"path": str(broken)}},
         "runtime": {"name": "llama-cpp"}},
        plan["candidates"][0],  # q8_0
    ]
    plan["probes"] = {"size": {}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    proc = run_cli("run", str(path), "--reports-dir", str(tmp_path / "reports"), "--no-tracking")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    run_dir = next((tmp_path / "reports").iterdir())
    res = json.loads((run_dir / "results.json").read_text())
    broken_rec, q8 = res["candidates"]
    assert broken_rec["status"] == "error" and broken_rec["verdict"] == "ERROR"
    # the GGUF header is unreadable, so importing the prebuilt artifact fails
    assert broken_rec["error"]["stage"] == "produce"
    assert "cannot handle" in broken_rec["error"]["message"]
    assert q8["status"] == "ok" and q8["verdict"] == "PASS"
    assert res["approved"] == ["q8_0"]
    assert "| broken |" in (run_dir / "summary.md").read_text()
    assert "ERROR" in proc.stdout
