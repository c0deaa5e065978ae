"""Every infrastructure failure is exit 2 and one ``error:`` line naming the file and the
cause, never a traceback; only a gate failure exits 1 (issue 14, part 6).

Full disks and read-only folders are simulated (this runs as root, which writes anywhere, and
mounts nothing): ``os.write`` answers ENOSPC for files in a chosen folder, ``mkstemp`` EROFS."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from tests.conftest import ROOT, run_cli
from tests.test_cli import POLICY, _results

TINY_PLAN = {
    "name": "tiny",
    "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake"}},
    "candidates": [{"name": "q4", "quantizer": {"method": "fake", "params": {"bits": 4}}, "runtime": {"name": "fake"}}],
    "suites": [{"suite": "perplexity", "name": "wikitext2",
                "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 4096}}],
    "probes": {},
    "gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 50}],
}


def _write_plan(folder: Path, plan: dict, name: str = "plan.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _one_error(err: str) -> str:
    """The single ``error:`` line of a failed command (and that there is no traceback)."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One store for this module's runs: the second run reuses the first's artifacts."""
    return tmp_path_factory.mktemp("failures-home")


@pytest.fixture
def qg(monkeypatch, home, capsys):
    """``quantgate ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setenv("QUANTGATE_HOME", str(home))

    def call(*args: str) -> tuple[int, str, str]:
        code = main([*args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def _fail_writes_in(monkeypatch, folder: Path, deeper_only: bool = False) -> None:
    """``os.write`` to a file in ``folder`` (with ``deeper_only``: only in its subfolders)
    raises ENOSPC, as on a full disk; every other write goes through."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor writes")
    real = os.write
    folder = folder.resolve()

    def write(fd, data):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            rel = target.relative_to(folder)
        except (OSError, ValueError):
            return real(fd, data)
        if deeper_only and len(rel.parts) < 2:
            return real(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)


# ------------------------------------------------------------------ the reports folder

def test_reports_dir_that_is_a_file_fails_before_the_run(tmp_path):
    plan = _write_plan(tmp_path, TINY_PLAN)
    (tmp_path / "reports").write_text("not a folder")
    proc = run_cli("run", str(plan), "--no-tracking", "--reports-dir", str(tmp_path / "reports"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _one_error(proc.stderr)
    assert str(tmp_path / "reports") in line and "is a file" in line
    assert "run " not in proc.stdout  # nothing ran


def test_reports_dir_under_a_file(qg, tmp_path):
    plan = _write_plan(tmp_path, TINY_PLAN)
    (tmp_path / "afile").write_text("x")
    code, out, err = qg("run", str(plan), "--no-tracking", "--reports-dir", str(tmp_path / "afile" / "reports"))
    assert code == 2
    line = _one_error(err)
    assert str(tmp_path / "afile" / "reports") in line and "not a directory" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_reports_dir(qg, tmp_path):
    plan = _write_plan(tmp_path, TINY_PLAN)
    reports = tmp_path / "reports"
    reports.mkdir()
    reports.chmod(0o555)
    try:
        code, _, err = qg("run", str(plan), "--no-tracking", "--reports-dir", str(reports))
    finally:
        reports.chmod(0o755)
    assert code == 2
    line = _one_error(err)
    assert str(reports) in line and "permission denied" in line


def test_read_only_file_system_reports_dir(qg, tmp_path, monkeypatch):
    plan = _write_plan(tmp_path, TINY_PLAN)
    reports = tmp_path / "reports"
    reports.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if Path(kwargs.get("dir") or "").resolve() == reports.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(reports))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, out, err = qg("run", str(plan), "--no-tracking", "--reports-dir", str(reports))
    assert code == 2
    line = _one_error(err)
    assert str(reports) in line and "read-only file system" in line
    assert list(reports.iterdir()) == []  # failed before the run made its folder


def test_full_reports_disk_before_the_run(qg, tmp_path, monkeypatch):
    plan = _write_plan(tmp_path, TINY_PLAN)
    reports = tmp_path / "reports"
    reports.mkdir()
    _fail_writes_in(monkeypatch, reports)
    code, out, err = qg("run", str(plan), "--no-tracking", "--reports-dir", str(reports))
    assert code == 2
    line = _one_error(err)
    assert str(reports) in line and "no space left on device" in line
    assert list(reports.iterdir()) == []  # the probe file is gone, no run folder


def test_full_reports_disk_after_the_run_keeps_the_results(qg, tmp_path, home, monkeypatch):
    """The run finishes, its reports cannot be written: exit 2 (not the gates' 0), one line
    naming the file, the cause and where results.json went instead; no half-written file."""
    plan = _write_plan(tmp_path, TINY_PLAN)
    reports = tmp_path / "reports"
    _fail_writes_in(monkeypatch, reports, deeper_only=True)  # the folder takes the probe, not the run's files
    code, out, err = qg("run", str(plan), "--no-tracking", "--reports-dir", str(reports))
    assert code == 2, out + err
    line = _one_error(err)
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    fallback = home / "runs" / run_dir.name / "results.json"
    assert str(run_dir / "results.json") in line and "no space left on device" in line
    assert f"the results are in {fallback}" in line
    data = json.loads(fallback.read_text())
    assert data["run_id"] == run_dir.name and data["candidates"][0]["verdict"] == "PASS"
    assert "q4" in out and "PASS" in out  # the verdicts were still shown
    left = sorted(p.name for p in run_dir.iterdir() if p.is_file())
    assert left == [], left  # no empty summary.md, no .tmp-* file


def test_unwritable_out_folder_and_fallback_say_the_results_are_lost(qg, tmp_path, monkeypatch):
    """``gate --out`` writes reports too: a folder under a file, and a store under a file."""
    run = tmp_path / "run-a"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results()))
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "afile" / "home"))
    code, out, err = qg("gate", str(run), "--out", str(tmp_path / "afile" / "out"))
    assert code == 2
    line = _one_error(err)
    assert str(tmp_path / "afile" / "out") in line and "not a directory" in line
    assert str(tmp_path / "afile" / "home" / "runs") in line and "the results are lost" in line


def test_full_disk_while_writing_summary(qg, tmp_path, monkeypatch):
    """results.json made it; summary.md did not: the line says so, and no temp file is left."""
    run = tmp_path / "run-a"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results()))
    out_dir = tmp_path / "out"
    real = os.write

    def write(fd, data):
        if ".tmp-summary.md-" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc")
    monkeypatch.setattr(os, "write", write)
    code, _, err = qg("gate", str(run), "--out", str(out_dir))
    assert code == 2
    line = _one_error(err)
    assert str(out_dir / "summary.md") in line and "no space left on device" in line
    assert f"the results are in {out_dir / 'results.json'}" in line
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.json"]
    assert json.loads((out_dir / "results.json").read_text())["run_id"] == _results()["run_id"]


def test_full_disk_while_writing_report_html(qg, tmp_path, monkeypatch):
    """report.html is a report too: a full disk there is exit 2 naming it, with no temporary
    file left; an OSError about a library's own file (a font cache) stays a note."""
    import harness.report.html as H
    from harness.report import write_reports
    from harness.results import parse_results

    run = tmp_path / "run-a"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results()))
    out_dir = tmp_path / "out"

    def full(results, run_dir):
        (Path(run_dir) / "report.html.tmp").write_text("<html>half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(H, "write_html", full)
    code, _, err = qg("gate", str(run), "--out", str(out_dir))
    assert code == 2
    line = _one_error(err)
    assert str(out_dir / "report.html") in line and "no space left on device" in line
    assert f"the results are in {out_dir / 'results.json'}" in line
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.json", "summary.md"]

    def font_cache(results, run_dir):
        raise PermissionError(errno.EACCES, "Permission denied", "/nonexistent/fontlist.json")

    monkeypatch.setattr(H, "write_html", font_cache)
    paths = write_reports(parse_results(_results()), tmp_path / "out2")
    assert "fontlist.json" in paths["html_error"] and paths["results"].is_file()


# ------------------------------------------------------------------ quantgate gate on a bad file

def _stored(tmp_path: Path, data) -> Path:
    path = tmp_path / "results.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_gate_without_policy_suggests_policy_and_takes_one(qg, tmp_path):
    data = _results()
    del data["policy"]
    path = _stored(tmp_path, data)
    code, _, err = qg("gate", str(path))
    assert code == 2
    line = _one_error(err)
    assert str(path) in line and "no 'policy' key" in line and "--policy" in line
    policy = tmp_path / "tiny.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    code, out, err = qg("gate", str(path), "--policy", str(policy))
    assert code == 1, err  # q2_k's perplexity is over the policy's ceiling: a gate failure
    assert "q2_k" in out and "FAIL" in out and err == ""


@pytest.mark.parametrize("policy, words", [
    ({"gates": [{"kind": "zzz"}]}, ["policy.gates[0].kind", "unknown gate kind 'zzz'"]),
    ({"gates": [{"name": "x", "kind": "max_value", "metric": "m"}]}, ["policy.gates[0]", "max"]),
    (None, ["'policy' is null"]),
    ([1, 2], ["'policy' is a list"]),
])
def test_gate_with_a_broken_policy(qg, tmp_path, policy, words):
    path = _stored(tmp_path, {**_results(), "policy": policy})
    code, _, err = qg("gate", str(path))
    assert code == 2
    line = _one_error(err)
    assert str(path) in line and "--policy" in line
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("content, words", [
    (b"hello", ["not valid JSON"]),
    (b"", ["not valid JSON"]),
    (b"\x89\xff\x00" + bytes(range(256)) * 4, ["not valid JSON"]),  # random bytes
    (b"[1, 2]", ["not a quantgate results file", "a JSON list"]),
    (b'{"a": 1}', ["not a quantgate results file", "schema None"]),
    (b'{"schema": "quantgate.results/9"}', ["not a quantgate results file", "quantgate.results/9"]),
    (b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
])
def test_gate_on_a_file_that_is_not_results(qg, tmp_path, content, words):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    code, _, err = qg("gate", str(path))
    assert code == 2
    line = _one_error(err)
    assert str(path) in line
    for w in words:
        assert w in line, line


# ------------------------------------------------------------------ a full store disk during a stage

Usage = namedtuple("Usage", "total used free")


def test_describe_stage_failure(tmp_path, monkeypatch):
    from harness import failures

    plenty = Usage(10 << 30, 0, 10 << 30)
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda p: plenty)
    assert failures.describe_stage_failure(RuntimeError("boom"), tmp_path) == "RuntimeError: boom"
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    msg = failures.describe_stage_failure(enospc, tmp_path)
    assert msg.startswith(f"no space left on device: {tmp_path} (10.0 GiB free); OSError:"), msg
    # a worker's error that came back as text, caused by ENOSPC
    try:
        try:
            raise enospc
        except OSError as exc:
            raise RuntimeError("writing the GGUF failed") from exc
    except RuntimeError as wrapped:
        assert failures.describe_stage_failure(wrapped, tmp_path).startswith("no space left on device")
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda p: Usage(10 << 30, 10 << 30, 12 << 20))
    msg = failures.describe_stage_failure(RuntimeError("llama_model_quantize returned 1"), tmp_path / "not-yet")
    assert msg == (f"no space left on device: {tmp_path / 'not-yet'} (12.0 MiB free); "
                   "RuntimeError: llama_model_quantize returned 1")

    def broken(p):
        raise PermissionError(errno.EACCES, "no")

    monkeypatch.setattr(failures.shutil, "disk_usage", broken)
    assert failures.describe_stage_failure(RuntimeError("x"), tmp_path) == "RuntimeError: x"


def test_a_stage_failing_on_a_full_store_says_so(qg, tmp_path, home, monkeypatch):
    from harness import failures

    plan = {**TINY_PLAN, "candidates": [
        {"name": "boom", "quantizer": {"method": "fake", "params": {"bits": 4, "fail": "quantize"}},
         "runtime": {"name": "fake"}}]}
    real = shutil.disk_usage

    def usage(path):  # the store's filesystem is full, every other one is not
        u = real(path)
        return Usage(u.total, u.total, 3 << 20) if Path(path).resolve() == home.resolve() else u

    monkeypatch.setattr(failures.shutil, "disk_usage", usage)
    code, out, err = qg("run", str(_write_plan(tmp_path, plan)), "--no-tracking", "--reports-dir",
                        str(tmp_path / "reports"))
    assert code == 2, out + err
    line = next(x for x in out.splitlines() if "results:" in x)
    res = json.loads(Path(line.split("results:")[1].split()[0]).read_text())
    rec = res["candidates"][0]
    assert rec["verdict"] == "ERROR" and rec["error"]["stage"] == "produce"
    assert rec["error"]["message"].startswith(f"no space left on device: {home} (3.0 MiB free); RuntimeError:")
    assert "failing on purpose" in rec["error"]["message"]
    assert res["baseline"]["status"] == "ok"


# ------------------------------------------------------------------ GGUF files

def _tiny_gguf(path: Path) -> Path:
    """A small but real GGUF (two F32 tensors, one Q8_0) written with the gguf package."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.ones((8, 32), dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((4, 64), dtype=np.float32))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 34 * 2), dtype=np.uint8),  # 4 rows of 64 weights
                 raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _truncated(src: Path, dst: Path, keep: int) -> Path:
    with open(src, "rb") as a, open(dst, "wb") as b:
        b.write(a.read(keep))
    return dst


def test_check_gguf_reads_a_whole_file_and_names_what_is_missing(tmp_path):
    from gguf import GGUFReader

    from harness.gguf_check import GGUFError, check_gguf

    good = _tiny_gguf(tmp_path / "tiny.gguf")
    check_gguf(good)
    last = GGUFReader(str(good)).tensors[-1]  # the gguf package's own reading: where the data ends
    end = int(last.data_offset) + int(last.n_bytes)
    assert last.name == "blk.0.ffn_down.weight"
    check_gguf(_truncated(good, tmp_path / "unpadded.gguf", end))  # only the end's alignment padding is gone
    bad = _truncated(good, tmp_path / "cut.gguf", end - 1)
    with pytest.raises(GGUFError, match=rf"^{bad}: not a valid GGUF: truncated: tensor blk\.0\.ffn_down\.weight "
                                        rf"ends at byte {end}, file has {end - 1}$"):
        check_gguf(bad)
    for keep, why in ((0, "empty file"), (3, "magic b'GGU'"), (10, "truncated: the tensor count at byte 8"),
                      (60, "truncated: ")):
        with pytest.raises(GGUFError, match=why):
            check_gguf(_truncated(good, tmp_path / f"cut-{keep}.gguf", keep))
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(GGUFError, match=rf"^{noise}: not a valid GGUF: "):
        check_gguf(noise)


def _embedded_f16() -> Path | None:
    """The embedded model's derived F16 GGUF, in this store or the user's (as tests/test_planner.py)."""
    import platformdirs

    from harness.data import WHEEL_ASSETS
    from harness.store import quantgate_home

    key = WHEEL_ASSETS["smollm2-135m"].file_sha256[:24]
    for root in dict.fromkeys([quantgate_home(), Path(platformdirs.user_cache_dir("quantgate"))]):
        path = root / "baselines" / f"{key}-f16" / "model-F16.gguf"
        if path.is_file():
            return path
    return None


def _gguf_plan(tmp_path: Path, baseline_model: str, candidates: list | None = None) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data["gates"] = str(ROOT / "gates" / "smoke.yaml")
    data["baseline"]["model"] = baseline_model
    if candidates is not None:
        data["candidates"] = candidates
    return _write_plan(tmp_path, data)


def test_validate_names_a_truncated_embedded_f16(qg, tmp_path):
    f16 = _embedded_f16()
    if f16 is None:
        pytest.skip("the embedded model's F16 GGUF is not derived here: run `quantgate data fetch`")
    from harness.gguf_check import check_gguf

    check_gguf(f16)  # the whole file passes
    size = f16.stat().st_size
    cut = _truncated(f16, tmp_path / "model-F16.gguf", size // 3)
    code, out, err = qg("validate", str(_gguf_plan(tmp_path, str(cut))))
    assert code == 2
    line = _one_error(err)
    assert f"baseline.model: {cut}: not a valid GGUF: truncated: tensor " in line
    assert f"file has {size // 3}" in line and "more tensors past the end" in line


def test_validate_names_random_bytes_and_a_truncated_candidate_artifact(qg, tmp_path):
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(os.urandom(1 << 16))
    code, _, err = qg("validate", str(_gguf_plan(tmp_path, str(noise))))
    assert code == 2
    line = _one_error(err)
    assert f"baseline.model: {noise}: not a valid GGUF: magic " in line

    good = _tiny_gguf(tmp_path / "tiny.gguf")
    cut = _truncated(good, tmp_path / "prebuilt.gguf", good.stat().st_size - 100)
    cands = [{"name": "pre", "quantizer": {"method": "prebuilt", "params": {"path": str(cut)}},
              "runtime": {"name": "llama-cpp"}}]
    code, _, err = qg("validate", str(_gguf_plan(tmp_path, "embedded:smollm2-135m", cands)))
    assert code == 2
    line = _one_error(err)
    assert f"candidates[0].quantizer.params.path: {cut}: not a valid GGUF: truncated: tensor " in line


# ------------------------------------------------------------------ YAML and long lines

BOMB = """\
name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize("text, words", [
    (BOMB, ["plan refused", "aliases expand to more than 100,000 nodes"]),
    ("name: x\nbaseline: &a {runtime: [*a]}\n", ["plan refused", "recursive"]),
    ("[" * 20_000 + "]" * 20_000, ["plan refused", "nested too deeply"]),
    ("#" * (1 << 20) + "\nname: x\n", ["plan file is 1,048,585 bytes", "1 MiB"]),
])
def test_yaml_bombs_and_huge_plans_are_refused_in_one_short_line(qg, tmp_path, text, words):
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    code, _, err = qg("validate", str(plan))
    assert code == 2
    line = _one_error(err)
    assert str(plan) in line and len(line) < 300
    for w in words:
        assert w in line, line


def test_plans_with_ordinary_anchors_still_load(qg, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("""\
name: anchors
baseline: {name: f32, model: "fake:tiny", runtime: &rt {name: fake}}
candidates:
  - {name: q4, quantizer: &q4 {method: fake, params: {bits: 4}}, runtime: *rt}
  - {name: q4-again, quantizer: *q4, runtime: *rt}
suites:
  - {suite: perplexity, name: wikitext2, params: {dataset: wikitext2, context_length: 256, max_tokens: 4096}}
probes: {}
gates:
  - {name: ppl, kind: max_increase_pct, metric: wikitext2.ppl, max_pct: 50}
""")
    code, out, err = qg("validate", str(plan))
    assert code == 0, err
    assert "valid plan 'anchors'" in out and err == ""


def test_error_lines_are_capped(qg, tmp_path):
    plan = {**TINY_PLAN, "candidates": [{**TINY_PLAN["candidates"][0], "runtime": {"name": "y" * 5000}}]}
    code, _, err = qg("validate", str(_write_plan(tmp_path, plan)))
    assert code == 2
    line = _one_error(err)
    assert "unknown runtime 'yyy" in line and line.endswith(" chars cut)") and len(line) < 560


def test_many_problems_are_capped_too(capsys):
    from harness.cli import MAX_ERROR_LINES, _err

    _err("\n".join(f"problem {i}" for i in range(MAX_ERROR_LINES + 7)))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == MAX_ERROR_LINES + 1 and lines[-1] == "error: … and 7 more problems"


# ------------------------------------------------------------------ trust_remote_code

def test_validate_notes_trust_remote_code(qg, tmp_path):
    cands = [{"name": "bf16", "quantizer": {"method": "unquantized", "params": {"format": "hf"}},
              "runtime": {"name": "transformers", "params": {"trust_remote_code": True}}},
             {"name": "bf16-safe", "quantizer": {"method": "unquantized", "params": {"format": "hf"}},
              "runtime": {"name": "transformers", "params": {"trust_remote_code": False}}}]
    code, out, err = qg("validate", str(_gguf_plan(tmp_path, "embedded:smollm2-135m", cands)))
    assert code == 0, err
    notes = [x for x in out.splitlines() if "trust_remote_code" in x]
    assert notes == ["note: candidate 'bf16': runtime 'transformers' has trust_remote_code: true: it runs code "
                     "from the model repository (embedded:smollm2-135m) on this machine; review that code or "
                     "drop the option"]
