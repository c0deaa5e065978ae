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


def _modules_loaded(preload: tuple[str, ...] = ()) -> list[str]:
    import sys

    return list(sys.modules)  # in import order


def test_preload_comes_before_the_task_module():
    """``preload`` (the runtime's libraries) is imported in the worker before the task's own
    module is unpickled: this module imports yaml, so yaml must come after the preloaded one (a
    CUDA llama-cpp-python build crashes when loaded after numpy, which harness.stages imports)."""
    loaded = run_isolated(_modules_loaded, preload=("colorsys",))
    assert loaded.index("colorsys") < loaded.index("yaml") < loaded.index(_modules_loaded.__module__)
    assert "colorsys" not in run_isolated(_modules_loaded)  # nothing else imports it


def _preload_state(preload: tuple[str, ...] = ()) -> tuple[bool | None, str | None]:
    import os

    from harness.isolate import numpy_before_preload

    return numpy_before_preload(), os.environ.get("QUANTGATE_NUMPY_BEFORE_PRELOAD")


def test_preload_order_is_worker_state_not_environment():
    """The initializer notes whether numpy came before the preloaded libraries in the worker's
    own state (the probe worker records it), not in an environment variable that servers and
    other children would inherit; without a preload there is nothing to note."""
    assert run_isolated(_preload_state, preload=("colorsys",)) == (False, None)
    assert run_isolated(_preload_state) == (None, None)


def test_broken_candidate_does_not_stop_the_others(tmp_path):
    """On the fake model (configs/fake.yaml): one candidate's quantize worker dies (``fail: crash``,
    an abrupt exit as a segfault or the OOM killer), one raises (``fail: quantize``); the two
    after them are still produced, scored and gated, one PASS and one FAIL. (A prebuilt GGUF
    whose header is unreadable no longer gets this far: `validate` refuses the plan,
    tests/test_failures.py.)"""
    plan = yaml.safe_load((ROOT / "configs" / "fake.yaml").read_text())
    # perplexity and fidelity only (scored in one worker per record), no probes (a worker each)
    policy = yaml.safe_load((ROOT / "gates" / "fake.yaml").read_text())
    plan["gates"] = [g for g in policy["gates"] if not g["metric"].startswith("size.")]
    plan["suites"] = [s for s in plan["suites"] if s["suite"] in ("perplexity", "fidelity")]
    q4, noisy = (next(c for c in plan["candidates"] if c["name"] == n) for n in ("q4", "noise-0.3"))
    plan["candidates"] = [
        {"name": "crashed", "quantizer": {"method": "fake", "params": {"bits": 4, "fail": "crash"}},
         "runtime": {"name": "fake"}},
        {"name": "broken", "quantizer": {"method": "fake", "params": {"bits": 4, "fail": "quantize"}},
         "runtime": {"name": "fake"}},
        q4,
        noisy,
    ]
    plan["probes"] = {}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    proc = run_cli("run", str(path), "--reports-dir", str(tmp_path / "reports"), "--no-tracking",
                   env={"QUANTGATE_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    run_dir = next((tmp_path / "reports").iterdir())
    res = json.loads((run_dir / "results.json").read_text())
    assert res["exit_code"] == 2
    crashed, broken, q4_rec, noisy_rec = res["candidates"]
    for rec in (crashed, broken):
        assert rec["status"] == "error" and rec["verdict"] == "ERROR", rec["name"]
        # both fail while the artifact is produced: nothing after that stage ran for them
        assert rec["error"]["stage"] == "produce", rec["error"]
        assert rec["artifact"] is None and rec["suites"] == {} and rec["metrics"] == {}, rec["name"]
        assert {v["verdict"] for v in rec["verdicts"]} == {"ERROR"}, rec["verdicts"]
    assert "died" in crashed["error"]["message"], crashed["error"]  # the worker, not the run
    assert "on purpose" in broken["error"]["message"], broken["error"]
    # the candidates after them ran and were gated as usual
    assert q4_rec["status"] == "ok" and q4_rec["verdict"] == "PASS"
    assert noisy_rec["status"] == "ok" and noisy_rec["verdict"] == "FAIL"
    assert [v["gate"] for v in noisy_rec["verdicts"] if v["verdict"] == "FAIL"] == ["ppl-increase", "kl"]
    assert res["approved"] == ["q4"]
    summary = (run_dir / "summary.md").read_text()
    assert all(f"| {name} |" in summary for name in ("crashed", "broken"))
    assert "ERROR" in proc.stdout
