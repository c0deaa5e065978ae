"""Release sign-off bundles: ``quantgate release RUN --out DIR`` and ``quantgate verify DIR``.

The fake plan (configs/fake.yaml + gates/fake.yaml: q4 and noise-0.02 pass, noise-0.3 fails)
runs once per module without tracking; each test releases that stored run into a bundle of
its own, tampers with a copy where it needs to, and reads what ``verify`` says. MLflow: the
run folder is logged afterwards to its own sqlite store (``quantgate log``: real MLflow, no
server to start) and the bundle logged to that parent run; an unreachable server is a refused
port on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import release as rel
from harness import verify as ver
from harness.cli import main
from tests.conftest import ROOT, run_cli
from tests.mlflow_server import free_port

#: the tests on a bundle share one fake run per module (~30-70 s on 2 shared cores): slow
slow = pytest.mark.slow

PASSING = ["q4", "noise-0.02"]
FAILING = "noise-0.3"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def fake_run(qg_home, tmp_path_factory) -> Path:
    reports = tmp_path_factory.mktemp("release-reports")
    proc = run_cli("run", str(ROOT / "configs" / "fake.yaml"), "--no-tracking", "--reports-dir", str(reports))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # noise-0.3 is the planted failure
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    return run_dir


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def cli(capsys):
    """``quantgate ARGS`` in this process (the fake run and ``quantgate log`` run as subprocesses):
    (exit code, stdout, stderr) as a CompletedProcess."""

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return call


@pytest.fixture(scope="module")
def bundle(fake_run, tmp_path_factory) -> Path:
    """The approved candidates, artifacts included."""
    out = tmp_path_factory.mktemp("bundles") / "fake-release"
    proc = run_cli("release", str(fake_run), "--out", str(out), "--include-artifacts")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: tracking was off" in proc.stdout and "verify " in proc.stdout and ": ok:" in proc.stdout
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _rehash(folder: Path) -> None:
    """What a careless (or dishonest) editor would do: make every recorded hash match again."""
    man = json.loads((folder / rel.MANIFEST).read_text())
    for f in man["files"]:
        f["sha256"] = _sha(folder / f["path"])
        f["size"] = (folder / f["path"]).stat().st_size
    for rec in [man["baseline"], *man["candidates"]]:
        for entry in rec["suites"].values():
            entry["sha256"] = _sha(folder / entry["file"])
    (folder / rel.MANIFEST).write_text(json.dumps(man, indent=1))
    lines = [f"{_sha(p)}  {p.relative_to(folder).as_posix()}\n" for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != rel.SUMS]
    (folder / rel.SUMS).write_text("".join(lines))


# ------------------------------------------------------------------ release -> verify
@slow
def test_release_writes_a_bundle_that_verifies(fake_run, bundle, cli):
    res = _results(fake_run)
    man = json.loads((bundle / rel.MANIFEST).read_text())
    assert man["schema"] == "quantgate.release/1" and man["released"] == PASSING == res["approved"]
    assert man["run"]["run_id"] == res["run_id"] and man["run"]["policy"] == "fake"
    # every file of the bundle is in SHA256SUMS, which sha256sum itself accepts
    listed = {line.split("  ", 1)[1] for line in (bundle / rel.SUMS).read_text().splitlines()}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {rel.SUMS}
    assert listed == on_disk and {"manifest.json", "README.md", "policy.json", "plan.yaml", "summary.md",
                                  "report.html", ".eval_results/q4.yaml", "items/q4/wikitext2.json",
                                  "items/f32/wikitext2.json", "artifacts/q4/model-Q4.npz"} <= listed
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "--quiet", "-c", rel.SUMS], cwd=bundle, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # artifacts: the store's files, by their own hash; the run's sealed hashes agree
    for cand in man["candidates"]:
        art = cand["artifact"]
        store_folder = Path(art["store_path"]).parent
        sealed = json.loads((store_folder / "manifest.json").read_text())["integrity"]["files"]
        for f in art["files"]:
            assert f["sha256"] == _sha(store_folder / f["path"]) == _sha(bundle / "artifacts" / cand["name"] / f["path"])
            if f["path"] in sealed:
                assert sealed[f["path"]]["sha256"] == f["sha256"]
        assert art["included"] and art["rehashed"]
        assert cand["recipe"]["method"] == "fake" and cand["runtime"]["name"] == "fake"
    # the per-item records are the ones the gates decided from (results.json), each file hashed
    by_name = {c["name"]: c for c in [res["baseline"], *res["candidates"]]}
    for rec in [man["baseline"], *man["candidates"]]:
        assert set(rec["suites"]) == {"wikitext2", "fidelity", "mmlu", "gsm8k"}
        for sid, entry in rec["suites"].items():
            items = json.loads((bundle / entry["file"]).read_text())
            assert items["records"] == by_name[rec["name"]]["suites"][sid]["records"]
            assert entry["sha256"] == _sha(bundle / entry["file"]) and entry["n"] == len(items["records"])
        assert [v["verdict"] for v in rec["verdicts"]] == [v["verdict"] for v in by_name[rec["name"]]["verdicts"]]
    # the candidate not released is bundled for the re-decision only: its items, no artifact files
    (other,) = man["others"]
    assert other["name"] == FAILING and other["verdict"] == "FAIL" and "items/noise-0.3/wikitext2.json" in listed
    assert not other["artifact"]["included"] and not (bundle / "artifacts" / FAILING).exists()
    assert man["run"]["candidates"] == [c["name"] for c in res["candidates"]]
    # every verdict keeps its evidence
    ppl = next(v for v in man["candidates"][0]["verdicts"] if v["gate"] == "ppl-increase")
    assert ppl["n"] == 16 and ppl["lower"] < ppl["estimate"] < ppl["upper"] and ppl["threshold"] == 5.0
    # the policy as the run had it, and the environment it recorded
    assert json.loads((bundle / "policy.json").read_text()) == res["policy"]
    env = man["environment"]
    assert env["python"] == res["machine"]["python"] and env["cpu"] == res["machine"]["cpu"]
    assert env["distributions"] == res["machine"]["distributions"] and "numpy" in env["distributions"]
    assert (bundle / "summary.md").read_bytes() == (fake_run / "summary.md").read_bytes()

    proc = cli("verify", str(bundle))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISMATCH" not in proc.stdout and ": ok:" in proc.stdout
    assert "11 gates re-decided" in proc.stdout  # f32: kl, size; each of the 3 candidates: three


@slow
def test_bundled_plan_validates_and_stored_results_regate(bundle, cli):
    """The bundle's plan stands alone (its policy inline), and `quantgate gate` reads the bundle."""
    v = cli("validate", str(bundle / "plan.yaml"))
    assert v.returncode == 0, v.stdout + v.stderr
    g = cli("gate", str(bundle))
    assert g.returncode == 1 and "approved: q4, noise-0.02" in g.stdout  # noise-0.3 still fails in results.json


@slow
def test_verify_redecides_through_the_shared_gate_code(bundle, monkeypatch):
    """verify decides with harness.gates.decide (the run's code path), on the bundled policy."""
    from harness import gates

    seen = []
    real = gates.decide

    def spy(results, policy):
        seen.append((policy.name, [c.name for c in results.candidates],
                     len(results.candidates[0].suites["wikitext2"].records)))
        return real(results, policy)

    monkeypatch.setattr(gates, "decide", spy)
    report = ver.verify(bundle)
    assert report.ok, report.mismatches
    assert seen == [("fake", [*PASSING, FAILING], 16)]  # the run as it was decided, released or not
    assert report.gates == 11 and report.metrics > 0


# ------------------------------------------------------------------ tampering
@slow
def test_flipped_artifact_byte_is_named(bundle, tmp_path, cli):
    b = _copy(bundle, tmp_path)
    target = b / "artifacts" / "q4" / "model-Q4.npz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    proc = cli("verify", str(b))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("MISMATCH")]
    assert any("artifacts/q4/model-Q4.npz" in x and "SHA256SUMS says" in x for x in lines), lines
    assert any("artifacts/q4/model-Q4.npz" in x and "for q4's artifact" in x for x in lines), lines
    assert not any("gate " in x for x in lines)  # the gates still re-decide the same


@slow
def test_artifacts_referenced_by_hash_are_checked_under_a_path(fake_run, tmp_path, cli):
    out = tmp_path / "by-hash"
    proc = cli("release", fake_run, "--out", out, "--candidates", "q4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / "artifacts").exists()
    plain = cli("verify", str(out))
    assert plain.returncode == 0 and "q4 referenced by hash, not checked" in plain.stdout
    # the store's own folder, found by candidate name under --artifacts
    man = json.loads((out / rel.MANIFEST).read_text())
    arts = tmp_path / "arts"
    shutil.copytree(Path(man["candidates"][0]["artifact"]["store_path"]).parent, arts / "q4")
    ok = cli("verify", str(out), "--artifacts", str(arts))
    assert ok.returncode == 0 and "q4 (--artifacts: 2/2 files match)" in ok.stdout, ok.stdout + ok.stderr
    target = arts / "q4" / "model-Q4.npz"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    bad = cli("verify", str(out), "--artifacts", str(arts))
    assert bad.returncode == 1 and f"MISMATCH {target}: sha256 is" in bad.stdout, bad.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = cli("verify", str(out), "--artifacts", str(empty))
    assert missing.returncode == 1 and "MISMATCH artifact of q4: none of its files" in missing.stdout


@slow
def test_edited_item_record_names_the_file_and_the_gate(fake_run, bundle, tmp_path, cli):
    b = _copy(bundle, tmp_path)
    items = b / "items" / "q4" / "wikitext2.json"
    data = json.loads(items.read_text())
    data["records"][3]["logprob_sum"] *= 2.0  # one window scored far worse: perplexity jumps
    items.write_text(json.dumps(data))
    proc = cli("verify", str(b))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("MISMATCH")]
    assert any(x.startswith("MISMATCH items/q4/wikitext2.json: sha256 is") for x in lines), lines
    gate = [x for x in lines if x.startswith("MISMATCH gate q4/ppl-increase: bundled PASS, re-decided ")]
    assert gate and "re-decided PASS" not in gate[0], lines

    # hashes made to match again: the hash check passes, the re-decided gate still says no
    _rehash(b)
    proc = cli("verify", str(b))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("MISMATCH")]
    assert not any("sha256" in x for x in lines), lines
    gate = [x for x in lines if x.startswith("MISMATCH gate q4/ppl-increase: bundled PASS, re-decided ")]
    assert len(gate) == 1 and "wikitext2.ppl" in gate[0], lines
    assert any(x.startswith("MISMATCH items/q4/wikitext2.json: wikitext2.ppl aggregates to ") for x in lines), lines
    assert "MISMATCH candidate q4: bundled PASS, re-decided" in proc.stdout
    # the other candidate and the baseline are untouched
    assert not any("noise-0.02" in x or "f32/" in x for x in lines), lines


@slow
def test_edited_metric_in_the_manifest_is_caught(bundle, tmp_path, cli):
    """A re-hashed bundle whose recorded metric was edited: aggregating the items again says so."""
    b = _copy(bundle, tmp_path)
    man = json.loads((b / rel.MANIFEST).read_text())
    man["candidates"][0]["suites"]["fidelity"]["metrics"]["kl_mean"]["value"] = 0.001
    (b / rel.MANIFEST).write_text(json.dumps(man, indent=1))
    _rehash(b)
    proc = cli("verify", str(b))
    assert proc.returncode == 1
    assert "MISMATCH items/q4/fidelity.json: fidelity.kl_mean aggregates to " in proc.stdout, proc.stdout


@slow
def test_bad_bundles_are_one_line_exit_2(bundle, tmp_path, cli):
    b = _copy(bundle, tmp_path)
    (b / rel.MANIFEST).unlink()
    cases = {"no manifest": (b, "no manifest.json")}
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    man = json.loads((other / rel.MANIFEST).read_text())
    man["schema"] = "quantgate.release/9"
    (other / rel.MANIFEST).write_text(json.dumps(man))
    cases["unknown schema"] = (other, "'quantgate.release/9'")
    cases["not a folder"] = (tmp_path / "nowhere", "not a folder")
    for what, (path, words) in cases.items():
        proc = cli("verify", str(path))
        assert proc.returncode == 2, (what, proc.stdout, proc.stderr)
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (what, proc.stderr)
        assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ choosing what to release
@slow
def test_unapproved_candidate_is_refused(fake_run, tmp_path, cli):
    out = tmp_path / "refused"
    proc = cli("release", fake_run, "--out", out, "--candidates", f"q4,{FAILING}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"'{FAILING}' is not approved" in err[0] and "--allow-unapproved" in err[0], err
    assert "FAIL" in err[0] and not out.exists()
    unknown = cli("release", fake_run, "--out", out, "--candidates", "q5")
    assert unknown.returncode == 2 and "'q5' is not a candidate" in unknown.stderr and not out.exists()
    forced = cli("release", fake_run, "--out", out, "--candidates", FAILING, "--allow-unapproved")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    man = json.loads((out / rel.MANIFEST).read_text())
    assert man["released"] == [FAILING] and man["allow_unapproved"] is True
    assert man["candidates"][0]["verdict"] == "FAIL"
    assert "--allow-unapproved" in (out / "README.md").read_text()
    assert cli("verify", str(out)).returncode == 0  # what was decided is faithfully bundled
    again = cli("release", fake_run, "--out", out)  # the folder now holds a bundle
    assert again.returncode == 2 and "not an empty folder" in again.stderr


@slow
def test_release_by_run_id_under_the_reports_dir(fake_run, tmp_path, cli):
    out = tmp_path / "by-id"
    proc = cli("release", fake_run.name, "--reports-dir", str(fake_run.parent), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / rel.MANIFEST).read_text())["run"]["run_id"] == fake_run.name
    nowhere = cli("release", "no-such-run", "--reports-dir", str(fake_run.parent), "--out", str(tmp_path / "x"))
    assert nowhere.returncode == 2 and nowhere.stderr.startswith("error: ") and "no-such-run" in nowhere.stderr


# ------------------------------------------------------------------ the model card, the hub's files
def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@slow
def test_model_card_front_matter_and_recovery_table(fake_run, bundle, tmp_path, cli):
    front, body = _front_matter((bundle / "README.md").read_text())
    assert front["tags"] == ["quantized", "quantgate"] and "base_model" not in front  # fake:tiny has no hub id
    index = {m["name"]: m for m in front["model-index"]}
    assert set(index) == set(PASSING)
    res = _results(fake_run)
    q4 = next(c for c in res["candidates"] if c["name"] == "q4")
    base = res["baseline"]
    ppl_metrics = [m for r in index["q4"]["results"] if r["dataset"]["type"] == "Salesforce/wikitext"
                   for m in r["metrics"]]
    assert ppl_metrics[0]["name"] == "wikitext2.ppl"
    assert math.isclose(ppl_metrics[0]["value"], q4["metrics"]["wikitext2.ppl"]["value"], rel_tol=1e-5)
    # recovery: baseline / candidate for perplexity (lower is better), candidate / baseline for accuracy
    b, c = base["metrics"]["wikitext2.ppl"]["value"], q4["metrics"]["wikitext2.ppl"]["value"]
    assert f"| wikitext2.ppl ↓ | q4 | {b:.4g} | {c:.4g} | {b / c:.4g} |" in body
    ba, ca = base["metrics"]["mmlu.acc"]["value"], q4["metrics"]["mmlu.acc"]["value"]
    assert f"| mmlu.acc ↑ | q4 | {ba:.4g} | {ca:.4g} | {ca / ba:.4g} |" in body
    assert "candidate / baseline where higher is better" in body and "baseline / candidate where lower" in body
    assert "| q4 | ppl-increase | wikitext2.ppl | PASS | wikitext2.ppl " in body  # the verdicts with evidence
    assert f"quantgate verify {bundle}" in body and f"quantgate run {bundle}/plan.yaml" in body
    # a hub id for the base model when given
    out = tmp_path / "with-base"
    proc = cli("release", fake_run, "--out", out, "--base-model", "example-org/tiny-base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _front_matter((out / "README.md").read_text())[0]["base_model"] == "example-org/tiny-base"


@slow
def test_eval_results_in_the_hubs_format(fake_run, bundle):
    res = _results(fake_run)
    for name in PASSING:
        entries = yaml.safe_load((bundle / ".eval_results" / f"{name}.yaml").read_text())
        cand = next(c for c in res["candidates"] if c["name"] == name)
        by_id = {e["dataset"]["id"]: e for e in entries}
        assert set(by_id) == {"Salesforce/wikitext", "cais/mmlu", "openai/gsm8k"}
        for e in entries:
            assert set(e) <= {"dataset", "value", "date", "notes", "source", "verifyToken"}
            assert isinstance(e["value"], float) and e["date"] == res["finished"][:10]
        assert by_id["Salesforce/wikitext"]["value"] == round(cand["metrics"]["wikitext2.ppl"]["value"], 4)
        assert by_id["cais/mmlu"]["value"] == round(cand["metrics"]["mmlu.acc"]["value"] * 100, 4)
        assert "percent" in by_id["cais/mmlu"]["notes"] and res["run_id"] in by_id["cais/mmlu"]["notes"]
    assert not (bundle / ".eval_results" / f"{FAILING}.yaml").exists()


# ------------------------------------------------------------------ MLflow
@slow
def test_bundle_is_logged_to_the_runs_mlflow_parent(fake_run, tmp_path, cli):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / fake_run.name
    shutil.copytree(fake_run, run_dir)
    logged = run_cli("log", str(run_dir))  # the run's own sqlite store, as a tracked run has it
    assert logged.returncode == 0, logged.stdout + logged.stderr
    out = tmp_path / "logged"
    proc = cli("release", run_dir, "--out", out, "--require-tracking")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    digest = _sha(out / rel.SUMS)
    tracking = _results(run_dir)["tracking"]
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = client.get_run(tracking["parent_run_id"])
    assert parent.data.tags["quantgate.release"] == digest
    assert parent.data.tags["quantgate.release.candidates"] == ",".join(PASSING)
    folder = f"release-{digest[:12]}"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, folder)} >= {
        f"{folder}/manifest.json", f"{folder}/SHA256SUMS", f"{folder}/README.md", f"{folder}/items"}
    assert f"tag quantgate.release={digest}" in proc.stdout

    # a server that cannot be reached: the bundle is the product (exit 0, a warning line) ...
    res = _results(run_dir)
    res["tracking"] = {**tracking, "uri": f"http://127.0.0.1:{free_port()}", "local": False}
    (run_dir / "results.json").write_text(json.dumps(res))
    down = cli("release", run_dir, "--out", tmp_path / "down")
    assert down.returncode == 0, down.stdout + down.stderr
    warn = [x for x in down.stdout.splitlines() if x.startswith("warning: ")]
    assert len(warn) == 1 and "127.0.0.1" in warn[0] and (tmp_path / "down" / rel.MANIFEST).is_file()
    # ... unless tracking is required
    required = cli("release", run_dir, "--out", tmp_path / "required", "--require-tracking")
    assert required.returncode == 2 and required.stderr.startswith("error: --require-tracking: ")
    assert len(required.stderr.strip().splitlines()) == 1 and (tmp_path / "required" / rel.MANIFEST).is_file()


# ------------------------------------------------------------------ without a run (fast)
def test_recovery_follows_the_metrics_direction():
    assert rel.recovery(10.0, 12.5, "lower") == pytest.approx(0.8)  # perplexity up 25%: 0.8 of the baseline's
    assert rel.recovery(0.50, 0.45, "higher") == pytest.approx(0.9)  # accuracy 0.45 of 0.50
    assert rel.recovery(0.0, 0.3, "higher") is None and rel.recovery(1.0, 0.0, "lower") is None
    assert rel.recovery(1.0, 2.0, None) is None and rel.recovery(None, 2.0, "higher") is None


def test_sums_are_sha256sum_lines(tmp_path):
    (tmp_path / "a b.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.json").write_text("{}")
    entries = [(r, _sha(p)) for r, p in rel.bundle_files(tmp_path)]
    (tmp_path / rel.SUMS).write_text(rel.sums_text(entries))
    assert (tmp_path / rel.SUMS).read_text() == (f"{_sha(tmp_path / 'a b.txt')}  a b.txt\n"
                                                 f"{_sha(tmp_path / 'sub' / 'c.json')}  sub/c.json\n")
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "--quiet", "-c", rel.SUMS], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_not_a_bundle_is_a_bundle_error(tmp_path):
    with pytest.raises(ver.BundleError, match="no manifest.json"):
        ver.verify(tmp_path)
    (tmp_path / rel.MANIFEST).write_text("[1, 2]")
    with pytest.raises(ver.BundleError, match="schema None"):
        ver.verify(tmp_path)
    (tmp_path / rel.MANIFEST).write_text('{"schema": "quantgate.release/1", "created": "x"}')
    with pytest.raises(ver.BundleError, match="problem"):
        ver.verify(tmp_path)
