"""The command line (typer) and the run's progress display: fast, no model is loaded."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

import pytest
import yaml

from harness import cli
from harness.cli import main, verdict_table
from harness.progress import PlainProgress, Progress, RichProgress, make_progress
from tests.conftest import ROOT, run_cli

COMMANDS = ["validate", "run", "gate", "compare", "trend", "plan-memory", "data"]


# ------------------------------------------------------------------ a stored run

def _metric(value, better):
    return {"value": value, "stderr": None, "n": 1, "better": better}


def _record(name, role, ppl, gib):
    return {"name": name, "role": role, "status": "ok", "error": None, "quantizer": None, "runtime": None,
            "artifact": None, "suites": {}, "probes": {}, "verdicts": [], "verdict": None, "seconds": 1.0,
            "metrics": {"wt.ppl": _metric(ppl, "lower"), "size.gib": _metric(gib, "lower")}}


POLICY = {"name": "tiny", "description": "", "inconclusive_blocks": True, "gates": [
    {"name": "ppl", "kind": "max_increase_pct", "metric": "wt.ppl", "max_pct": 10.0},
    {"name": "size", "kind": "max_value", "metric": "size.gib", "max": 0.2}]}


def _results(run_id="20260101-000000-tiny-abcd", q2_gib=0.09) -> dict:
    """A minimal stored run (schema quantgate.results/1, which every reader accepts): a
    baseline, a candidate within every gate (q8_0) and one over the size ceiling (q2_k)."""
    return {
        "schema": "quantgate.results/1", "run_id": run_id, "quantgate_version": "0.1.0",
        "plan": {"name": "tiny", "suites": [], "probes": {}, "gates": POLICY},
        "plan_file": None, "policy": POLICY, "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:01:00+00:00", "wall_seconds": 60.0, "environment": {},
        "machine": {"hostname": "vm", "os": "Linux", "python": "3.11", "cpu": "test cpu", "cpus_usable": 2,
                    "memory_gib": 8.0, "gpu": None, "packages": {}},
        "baseline": _record("f16", "baseline", 30.0, 0.25),
        "candidates": [_record("q8_0", "candidate", 30.3, 0.14), _record("q2_k", "candidate", 40.0, q2_gib)],
        "approved": [], "exit_code": None,
    }


@pytest.fixture
def stored(tmp_path) -> Path:
    run = tmp_path / "run-a"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results()))
    return run


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------ help

def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"\b{re.escape(name)}\b", out), name
    assert main(["data", "--help"]) == 0
    assert "fetch" in capsys.readouterr().out


def test_every_command_and_option_has_help():
    import typer

    def walk(cmd, path):
        yield path, cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {name}")

    root = typer.main.get_command(cli.app)
    seen = set()
    for path, cmd in walk(root, "quantgate"):
        seen.add(path.split(" ")[-1])
        if path != "quantgate":
            assert (cmd.help or cmd.short_help or "").strip(), f"{path}: no help"
        for param in cmd.params:
            assert (getattr(param, "help", None) or "").strip(), f"{path} {param.name}: no help"
    assert set(COMMANDS) | {"fetch"} <= seen


def test_plan_memory_options_match_the_planner():
    """`quantgate plan-memory` re-declares harness.planner's argparse options: none lost."""
    import typer

    from harness import planner

    wanted = {s for a in planner.build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    cmd = typer.main.get_command(cli.app).commands["plan-memory"]
    have = {s for p in cmd.params for s in [*p.opts, *getattr(p, "secondary_opts", [])]}
    assert wanted <= have, wanted - have


def test_usage_error_exit_2_one_error_line(capsys):
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == ["error: Missing argument 'PLAN'."]
    assert main(["run", str(ROOT / "configs" / "smoke.yaml"), "--no-such-flag"]) == 2
    assert "error: No such option: --no-such-flag" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2
    assert main([]) == 2  # no command: the help, on stderr


# ------------------------------------------------------------------ validate

def test_validate_good_plan(capsys):
    assert main(["validate", str(ROOT / "configs" / "smoke.yaml")]) == 0
    assert "valid plan 'smoke'" in capsys.readouterr().out


def test_validate_bad_plan_one_error_line(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data["gates"] = str(ROOT / "gates" / "smoke.yaml")
    data["candidatez"] = []
    plan = tmp_path / "bad.yaml"
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = run_cli("validate", str(plan))  # the real entry point, as a user runs it
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {plan}: ") and "unknown key 'candidatez'" in lines[0]


# ------------------------------------------------------------------ gate / compare

def test_gate_redecides_a_stored_run(stored, tmp_path, capsys):
    assert main(["gate", str(stored)]) == 1  # q2_k: perplexity +33% > +10%
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:4]}
    assert out.splitlines()[0].split() == ["candidate", "verdict", "reason"]
    assert rows == {"f16": "baseline", "q8_0": "PASS", "q2_k": "FAIL"}
    assert "approved: q8_0" in out and "exit code 1" in out

    lenient = tmp_path / "lenient.yaml"
    lenient.write_text(yaml.safe_dump({"gates": [{"name": "size", "kind": "max_value", "metric": "size.gib",
                                                   "max": 1.0}]}))
    out_dir = tmp_path / "regated"
    assert main(["gate", str(stored / "results.json"), "--policy", str(lenient), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "approved: q8_0, q2_k" in out and "exit code 0" in out
    assert (out_dir / "results.json").is_file() and (out_dir / "summary.md").is_file()


def test_gate_errors_exit_2(stored, tmp_path, capsys):
    assert main(["gate", str(tmp_path / "nowhere")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
    assert main(["gate", str(stored), "--policy", "no-such-policy"]) == 2
    assert _error_lines(capsys.readouterr().err) == ["error: no-such-policy: gate policy file not found (looked for the file, in gates/ and among the shipped policies)"]


def test_compare_two_stored_runs(stored, tmp_path, capsys):
    b = tmp_path / "run-b"
    b.mkdir()
    (b / "results.json").write_text(json.dumps(_results("20260102-000000-tiny-efgh", q2_gib=0.08)))
    out_file = tmp_path / "cmp.md"
    assert main(["compare", str(stored), str(b), "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "20260101-000000-tiny-abcd" in out and "20260102-000000-tiny-efgh" in out
    assert re.search(r"\| q2_k \| size\.gib[^|]* \| 0\.09 \| 0\.08 \|", out), out
    assert out_file.read_text().strip() == out.strip()

    assert main(["compare", str(stored)]) == 2  # one run and no --accepted
    assert _error_lines(capsys.readouterr().err) == [
        "error: compare needs RUN_A and RUN_B, or --accepted and one run"]


def test_verdict_table_of_a_decided_run():
    from harness import gates
    from harness.config import GatePolicy
    from harness.results import parse_results

    data = _results()
    data["candidates"][1]["status"] = "error"
    data["candidates"][1]["error"] = {"stage": "produce", "message": "boom", "log": None}
    decided = gates.decide(parse_results(data), GatePolicy.model_validate(POLICY))
    text = verdict_table(decided)
    lines = text.splitlines()
    assert lines[0].split() == ["candidate", "verdict", "reason"]
    assert lines[1].split()[:2] == ["f16", "baseline"]
    assert lines[2].split()[:2] == ["q8_0", "PASS"] and lines[2].endswith("all gates pass")
    assert lines[3].split()[:2] == ["q2_k", "ERROR"] and lines[3].endswith("produce: boom")


def test_rich_verdict_table_on_a_terminal():
    from rich.console import Console

    from harness.results import parse_results

    buf = io.StringIO()
    cli.print_verdicts(parse_results(_results()), console=Console(file=buf, force_terminal=True, width=100))
    out = buf.getvalue()
    assert "q8_0" in out and "q2_k" in out and "candidate" in out


# ------------------------------------------------------------------ progress

def _sequence(p: Progress) -> None:
    p.run_started("20260101-000000-tiny-abcd", "tiny", ["f16", "Q4_K_M"])
    p.log("run 20260101-000000-tiny-abcd: plan tiny, 1 candidates")
    p.step_started("f16", "derive")
    p.step_finished("f16", "derive", "reused")
    p.step_started("Q4_K_M", "produce")
    p.step_finished("Q4_K_M", "produce", "ok", "quantized in 3.1 s")
    p.step_started("Q4_K_M", "mmlu", total=100)
    for done in range(0, 101, 10):
        p.step_advanced("Q4_K_M", "mmlu", done)
    p.step_finished("Q4_K_M", "mmlu")
    p.step_started("Q4_K_M", "probe")
    p.step_advanced("Q4_K_M", "probe", 3, total=None)
    p.step_finished("Q4_K_M", "probe", "error", "RuntimeError: out of memory")
    p.close()


def test_base_progress_is_a_no_op():
    _sequence(Progress())  # nothing raised, nothing printed


def test_plain_progress_one_line_per_finished_step():
    buf = io.StringIO()
    p = PlainProgress(buf)
    p.step_started("Q4_K_M", "mmlu", total=100)
    for done in range(1, 101):
        p.step_advanced("Q4_K_M", "mmlu", done)
    assert buf.getvalue() == ""  # no line per item, none at the start
    p.step_finished("Q4_K_M", "mmlu", "ok")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\[Q4_K_M\] mmlu: ok, 100 items in \d+\.\d s( \(\d+\.\d items/s\))?", lines[0]), lines

    buf = io.StringIO()
    _sequence(PlainProgress(buf))
    assert buf.getvalue().splitlines() == [
        "run 20260101-000000-tiny-abcd: plan tiny, 1 candidates",
        "[f16] derive: reused, 0.0 s",
        "[Q4_K_M] produce: ok, quantized in 3.1 s",
        buf.getvalue().splitlines()[3],
        "[Q4_K_M] probe: error, RuntimeError: out of memory",
    ]
    assert buf.getvalue().splitlines()[3].startswith("[Q4_K_M] mmlu: ok, 100 items in ")


def _in_threads(work, n: int) -> None:
    """``work(i)`` for i in range(n), each in its own thread, all at once."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_plain_progress_from_threads():
    buf = io.StringIO()
    p = PlainProgress(buf)

    def work(i):
        p.step_started(f"c{i}", "mmlu", total=50)
        for d in range(50):
            p.step_advanced(f"c{i}", "mmlu", d + 1)
        p.step_finished(f"c{i}", "mmlu")

    _in_threads(work, 8)
    lines = buf.getvalue().splitlines()
    assert sorted(line.split("]")[0] for line in lines) == sorted(f"[c{i}" for i in range(8))
    assert all(": ok, 50 items in " in line for line in lines)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_make_progress_picks_plain_without_a_tty_or_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert type(make_progress(io.StringIO())) is PlainProgress
    assert type(make_progress(_Tty())) is RichProgress
    monkeypatch.setenv("CI", "1")
    assert type(make_progress(_Tty())) is PlainProgress
    assert type(make_progress(io.StringIO())) is PlainProgress


def test_rich_progress_full_sequence():
    from rich.console import Console

    buf = io.StringIO()
    p = RichProgress(Console(file=buf, force_terminal=True, width=120))
    _sequence(p)
    p.close()  # twice is fine
    out = buf.getvalue()
    for text in ("f16", "Q4_K_M", "derive", "mmlu", "RuntimeError: out of memory", "✓", "✗",
                 "run 20260101-000000-tiny-abcd: plan tiny"):
        assert text in out, text


def test_rich_progress_from_threads():
    from rich.console import Console

    buf = io.StringIO()
    p = RichProgress(Console(file=buf, force_terminal=True, width=120))
    p.run_started("r", "tiny", [f"c{i}" for i in range(4)])

    def work(i):
        p.step_started(f"c{i}", "evaluate", total=200)
        for d in range(200):
            p.step_advanced(f"c{i}", "evaluate", d + 1)
        p.step_finished(f"c{i}", "evaluate")

    _in_threads(work, 4)
    p.close()
    assert all(f"[c{i}] evaluate: ok, 200 items" in buf.getvalue() for i in range(4))
