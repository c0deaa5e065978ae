"""Item journals (harness/journal.py): finished items survive a kill and are never scored twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.journal import ItemJournal, journal_path

ROOT = Path(__file__).resolve().parents[1]


def _records(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"w{i:04d}", "nll": 1.0 + i / 7} for i in range(start, start + n)]


def test_journal_keeps_chunks_and_drops_torn_or_edited_lines(tmp_path):
    path = journal_path(tmp_path, "result-abc")
    j = ItemJournal(path)
    j.append(_records(3))
    j.append(_records(2, start=3))
    with open(path, "a") as f:  # a kill in the middle of writing the third chunk
        f.write('{"format": "quantgate.journal/1", "sha256": "0", "records": [{"id": "w00')
    again = ItemJournal(path)
    assert sorted(again.records) == [f"w{i:04d}" for i in range(5)] and again.dropped == 1
    # the next chunk starts on its own line after the torn one
    again.append(_records(1, start=5))
    third = ItemJournal(path)
    assert third.done("w0005") and third.dropped == 1
    assert third.ordered([{"id": f"w{i:04d}"} for i in (5, 0)]) == [_records(1, 5)[0], _records(1)[0]]
    # an edited line (its records no longer match their sha256) is dropped, not trusted
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace('"nll":1.0}', '"nll":0.5}')
    path.write_text("\n".join(lines) + "\n")
    edited = ItemJournal(path)
    assert not edited.done("w0000") and edited.done("w0003") and edited.dropped == 2


def test_evaluate_worker_skips_journaled_items_and_scores_the_rest(tmp_path, monkeypatch):
    """A first attempt dies after two chunks; the second scores only what is missing, and its
    records equal a run that was never interrupted."""
    from harness import stages
    from harness.runtimes import fake
    from harness.suites.perplexity import PerplexitySuite

    model = tmp_path / fake.BASELINE_ENTRY
    fake.write_baseline("fake:tiny", model)
    suite = PerplexitySuite()
    params = suite.Params(dataset="wikitext2", context_length=256, max_tokens=256 * 20)
    session = fake.FakeRuntime().load(model, fake.FakeParams(), 512)
    items = suite.prepare(params, session)["items"]
    assert len(items) == 20
    job = {"id": "wiki", "suite": suite.name, "params": params.model_dump(), "context_length": 256,
           "items": items, "items_key": "items-x", "result_key": "result-x"}
    calls: list[int] = []
    real_score = PerplexitySuite.score
    die_at = [3]

    def dying_score(self, session, chunk, p):
        calls.append(len(chunk))
        if len(calls) == die_at[0]:
            raise RuntimeError("killed")
        return real_score(self, session, chunk, p)

    monkeypatch.setattr(PerplexitySuite, "score", dying_score)
    with pytest.raises(RuntimeError, match="killed"):
        stages.evaluate_worker("fake", {}, str(model), [job], store_root=str(tmp_path / "home"))
    assert calls == [2, 2, 2]  # chunks of 20 / PROGRESS_CHUNKS items
    calls.clear()
    die_at[0] = 0
    out = stages.evaluate_worker("fake", {}, str(model), [job], store_root=str(tmp_path / "home"))["wiki"]
    assert out["resumed_items"] == 4 and sum(calls) == 16
    monkeypatch.setattr(PerplexitySuite, "score", real_score)
    fresh = stages.evaluate_worker("fake", {}, str(model), [dict(job, result_key="result-y")],
                                   store_root=str(tmp_path / "home2"))["wiki"]
    assert out["records"] == fresh["records"] and fresh["resumed_items"] == 0


PLAN = {
    "name": "journal-kill",
    "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake", "params": {"score_delay_ms": 150}}},
    "candidates": [{"name": "q4", "quantizer": {"method": "fake", "params": {"bits": 4}},
                    "runtime": {"name": "fake", "params": {"score_delay_ms": 150}}}],
    "suites": [{"suite": "perplexity", "name": "wiki",
                "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 256 * 40}}],
    "gates": {"gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wiki.ppl", "max_pct": 50}]},
    "tracking": {"enabled": False},
}


def _run(plan: Path, home: Path, reports: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "QUANTGATE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(plan), "--reports-dir", str(reports)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _results(reports: Path) -> dict:
    (run,) = [p for p in reports.iterdir() if p.is_dir()]
    return json.loads((run / "results.json").read_text())


@pytest.mark.slow
def test_kill_9_mid_suite_then_rerun_loses_at_most_one_chunk(tmp_path):
    """kill -9 of the CLI and its workers while the baseline scores 40 windows (chunks of 4);
    the rerun takes every journaled window back and the records equal an uninterrupted run's."""
    slow = tmp_path / "plan.yaml"
    slow.write_text(yaml.safe_dump(PLAN, sort_keys=False))
    home = tmp_path / "home"
    proc = _run(slow, home, tmp_path / "killed", start_new_session=True)
    deadline = time.monotonic() + 120
    done = 0
    while done < 20:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
        progress = list((tmp_path / "killed").glob("*/logs/f32-evaluate.progress.jsonl"))
        if progress:
            lines = [json.loads(x) for x in progress[0].read_text().splitlines() if x.endswith("}")]
            done = max([e["done"] for e in lines] + [0])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (journal,) = (home / "journals").glob("result-*.jsonl")
    journaled = len(ItemJournal(journal).records)
    assert done <= journaled < 40

    fast = dict(PLAN, baseline={**PLAN["baseline"], "runtime": {"name": "fake"}},
                candidates=[{**PLAN["candidates"][0], "runtime": {"name": "fake"}}])
    plan = tmp_path / "fast.yaml"
    plan.write_text(yaml.safe_dump(fast, sort_keys=False))
    rerun = _run(plan, home, tmp_path / "rerun")
    assert rerun.wait(timeout=300) == 0, rerun.stdout.read()
    resumed = _results(tmp_path / "rerun")
    wiki = resumed["baseline"]["suites"]["wiki"]
    # score_delay_ms is a speed-only param: the same result key, so the journal is this result's
    assert wiki["resumed_items"] == journaled and not list((home / "journals").glob("*.jsonl"))

    clean = _run(plan, tmp_path / "home2", tmp_path / "clean")
    assert clean.wait(timeout=300) == 0, clean.stdout.read()
    fresh = _results(tmp_path / "clean")
    for role in ("baseline",):
        assert resumed[role]["suites"]["wiki"]["records"] == fresh[role]["suites"]["wiki"]["records"]
    assert [c["suites"]["wiki"]["records"] for c in resumed["candidates"]] == \
        [c["suites"]["wiki"]["records"] for c in fresh["candidates"]]
    assert resumed["candidates"][0]["verdict"] == fresh["candidates"][0]["verdict"]


@pytest.mark.slow
def test_llama_cpp_scores_after_reset_as_in_a_fresh_session(qg_home):
    """A chunk of items scores the same whether the session scored other items before it (the
    uninterrupted run) or is fresh (the resumed one): the worker resets the session before each
    chunk. Without the reset, llama.cpp's reused prefix moved MMLU log-likelihoods by up to
    0.36 nats (benchmarks/README.md, executors)."""
    pytest.importorskip("llama_cpp")
    from harness.baseline import derive
    from harness.runtimes import REGISTRY

    runtime = REGISTRY.get("llama-cpp")()
    path = derive("embedded:smollm2-135m", "gguf")
    params = runtime.Params(n_threads=1)
    text = (Path(os.environ["QUANTGATE_DATA"]) / "wikitext2_test.txt").read_text()[:6000]
    first, second = runtime.load(path, params, 2048), runtime.load(path, params, 2048)
    try:
        ids = first.tokenize(text)
        shared = ids[:300]
        earlier = [(shared + ids[300 + i:310 + i], ids[310 + i:315 + i]) for i in range(0, 40, 10)]
        later = [(shared + ids[400 + i:405 + i], ids[405 + i:410 + i]) for i in range(0, 40, 10)]
        first.score_many(earlier)
        first.reset()
        assert first.score_many(later) == second.score_many(later)
    finally:
        first.close()
        second.close()
