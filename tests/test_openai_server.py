"""Runtime ``openai-server``: the real llama-cpp-python server on 127.0.0.1 (no stand-in for
it), started for the embedded model's F16 GGUF.

- launch, health, generation, stop; the self-check measures llama-cpp-python's one-token shift
  of echoed log-probs (SmolLM2 has no BOS) and refuses likelihoods with one line;
- ``python -m harness run`` with a served candidate end to end: its perplexity suite is an
  error of the record (the one line), its generation suite runs and matches in-process; a
  launch that exits is an ERROR candidate, exit 2;
- a server killed mid-suite: that candidate is ERROR, the next goes on, finished items stay in
  the journal; ``kill -9`` of the evaluate worker leaves no server behind;
- a URL that does not answer, a command that is not installed: ``validate`` exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.errors import SessionRefused
from harness.runtimes import REGISTRY
from harness.runtimes.openai_server import (
    OpenAIServerParams,
    compare_logprobs,
    free_port,
    probe_url,
)
from tests.conftest import ROOT, run_cli

pytest.importorskip("llama_cpp.server")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------ no model
def test_params_name_one_source():
    for raw, words in [({}, "exactly one of url"), ({"url": "http://127.0.0.1:1/v1", "launch": "llama-cpp"}, "got url, launch"),
                       ({"url": "127.0.0.1:8000"}, "http:// or https://"),
                       ({"command": ["server", "--port", "8000"]}, "must contain {port}")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            OpenAIServerParams.model_validate(raw)
    with pytest.raises(ValueError, match="extra"):
        OpenAIServerParams.model_validate({"launch": "llama-cpp", "bogus": 1})
    assert OpenAIServerParams.model_validate({"command": ["srv", "--port={port}", "{model}"]}).command


def test_compare_logprobs_says_what_was_measured():
    rng = np.random.default_rng(0)
    n, vocab = 40, 50
    logits = rng.normal(size=(n - 1, vocab)) * 3
    dist = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ids = [int(t) for t in rng.integers(0, vocab, n)]
    aligned = dist[np.arange(n - 1), ids[1:]]
    ok = compare_logprobs(aligned + 1e-4, dist, ids, 0.05, 0.01)
    assert ok["refusal"] is None and ok["max_abs"] < 0.05
    # llama-cpp-python's echo: token i's value read from the row that predicts token i + 1
    shifted = np.append(dist[np.arange(1, n - 1), ids[1:n - 1]], -1.0)
    out = compare_logprobs(shifted, dist, ids, 0.05, 0.01)
    assert out["refusal"].startswith("server log-probs are shifted by one token: mean |Δ| ")
    assert f"over {n - 1} tokens" in out["refusal"] and out["mean_abs"] > 0.5
    truncated = compare_logprobs(aligned[:20], dist, ids, 0.05, 0.01)
    assert truncated["refusal"].startswith("server log-probs are truncated: the server returned 20 of 39")
    rounded = compare_logprobs(np.round(aligned, 1), dist, ids, 0.05, 0.01)
    assert rounded["refusal"].startswith("server log-probs are rounded to 1 decimals: max |Δ| ")
    noisy = compare_logprobs(aligned + rng.normal(0, 0.3, n - 1), dist, ids, 0.05, 0.01)
    assert noisy["refusal"].startswith("server log-probs differ from in-process: max |Δ|")


def test_probe_url_names_a_url_that_does_not_answer():
    why = probe_url(f"http://127.0.0.1:{free_port()}/v1", timeout=2)
    assert why and "refused" in why.lower()


def _plan(tmp: Path, candidates: list[dict], suites: list[dict], name: str = "served") -> Path:
    plan = {"name": name, "baseline": {"name": "f16", "model": "embedded:smollm2-135m",
                                       "runtime": {"name": "llama-cpp", "params": {"n_threads": 2}}},
            "candidates": candidates, "suites": suites, "probes": {},
            "gates": [{"name": "gsm8k-drop", "kind": "max_drop", "metric": "gsm8k.exact_match_flexible", "max": 0.5}],
            "tracking": {"enabled": False}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _served(name: str, **params) -> dict:
    return {"name": name, "quantizer": {"method": "unquantized", "params": {"format": "gguf"}},
            "runtime": {"name": "openai-server", "params": {"launch": "llama-cpp", "n_threads": 2, **params}}}


GSM8K = {"suite": "gsm8k", "params": {"limit": 4, "num_fewshot": 0, "max_gen_toks": 32}}
PPL = {"suite": "perplexity", "name": "wikitext2", "params": {"context_length": 128, "max_tokens": 256}}


@pytest.mark.slow
def test_validate_refuses_a_url_that_does_not_answer_and_a_missing_command(tmp_path):
    port = free_port()
    cands = [{"name": "attached", "quantizer": {"method": "unquantized", "params": {"format": "gguf"}},
              "runtime": {"name": "openai-server", "params": {"url": f"http://127.0.0.1:{port}/v1"}}},
             {"name": "own", "quantizer": {"method": "unquantized", "params": {"format": "gguf"}},
              "runtime": {"name": "openai-server", "params": {"command": ["no-such-server-xyz", "--port", "{port}"]}}}]
    r = run_cli("validate", str(_plan(tmp_path, cands, [GSM8K])), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr
    assert any(f"candidates[0].runtime.params.url: http://127.0.0.1:{port}/v1 does not answer" in ln for ln in lines), lines
    assert any("candidates[1].runtime.params.command[0]: 'no-such-server-xyz' is not an executable" in ln for ln in lines), lines


@pytest.fixture(scope="module")
def f16(qg_home) -> Path:
    from harness import baseline
    from harness.config import EMBEDDED_MODEL

    return baseline.derive(EMBEDDED_MODEL, "gguf", log=lambda m: None)


@pytest.mark.slow
def test_launch_self_check_generate_and_stop(f16):
    runtime = REGISTRY.get("openai-server")()
    params = runtime.Params.model_validate({"launch": "llama-cpp", "n_threads": 2, "self_check_tokens": 64,
                                            "chat": True})
    session = runtime.load(f16, params, 512)
    pid = session.server.pid
    try:
        base = session.endpoint()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base) and probe_url(base) is None
        port = base.rsplit(":", 1)[1].split("/")[0]  # a name of this launch's own, listed by its server
        assert session.served_model_name == f"quantgate-candidate-{os.getpid()}-{port}"
        info = session.info()
        check = info["self_check"]
        # the known llama-cpp-python fault on a model without BOS, measured against in-process
        assert check["refusal"].startswith("server log-probs are shifted by one token") and check["tokens"] == 63
        assert check["mean_abs"] > 1.0 and check["shifted_mean_abs"] < 0.01
        assert "<|im_start|>" in info["chat_template"]["template"]
        ids = session.tokenize("The capital of France is")
        with pytest.raises(SessionRefused, match=r"shifted by one token: mean \|Δ\| .* over 63 tokens.*; likelihood "
                                                 r"suites refused, generation suites allowed$"):
            session.token_logprobs(ids)
        with pytest.raises(SessionRefused, match="full next-token distributions"):
            session.next_token_distribution(ids)
        served = session.generate(ids, 24, ["\n\n"])
        # chat: the rendered prompt goes to /v1/chat/completions as its messages
        chat = session.chat_prompt([{"role": "user", "content": "Say hello."}])
        assert chat.endswith("<|im_start|>assistant\n")
        assert session.generate(session.tokenize(chat), 16, []).strip()
    finally:
        session.close()
    assert not _alive(pid), "the server outlived close()"
    log = Path(info["server"]["log"]).read_text()
    assert f"# quantgate: server pid {pid}" in log
    assert log.count("POST /v1/chat/completions") == 1 and log.count("POST /v1/completions") == 2
    local = REGISTRY.get("llama-cpp")()
    ref = local.load(f16, local.Params.model_validate({"n_threads": 2}), 512)
    try:
        assert served == ref.generate(ids, 24, ["\n\n"]) and served.strip()
    finally:
        ref.close()


def _results(reports: Path) -> dict:
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_run_with_a_served_candidate(tmp_path, qg_home, f16):
    broken = {"name": "broken", "quantizer": {"method": "unquantized", "params": {"format": "gguf"}},
              "runtime": {"name": "openai-server", "params": {
                  "command": [sys.executable, "-c", "import sys; sys.exit(3)", "{port}"]}}}
    plan = _plan(tmp_path, [_served("served"), broken], [PPL, GSM8K])
    r = run_cli("run", str(plan), "--no-tracking", "--reports-dir", str(tmp_path / "reports"), timeout=900)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    res = _results(tmp_path / "reports")
    base, served, bad = res["baseline"], res["candidates"][0], res["candidates"][1]
    assert base["status"] == "ok"
    assert served["status"] == "error" and served["verdict"] == "ERROR"
    msg = served["error"]["message"]
    assert msg.startswith("SessionRefused: suite wikitext2: openai-server: server log-probs are shifted by one token")
    assert msg.endswith("likelihood suites refused, generation suites allowed") and "\n" not in msg
    # the generation suite ran on the server and greedy-decodes as in process
    got = {x["id"]: x["response"] for x in served["suites"]["gsm8k"]["records"]}
    want = {x["id"]: x["response"] for x in base["suites"]["gsm8k"]["records"]}
    assert len(got) == 4 and got == want
    assert "wikitext2" not in served["suites"] and "gsm8k.exact_match_flexible" in served["metrics"]
    info = served["suites"]["gsm8k"]["load_info"]
    assert info["server"]["url"].startswith("http://127.0.0.1:") and info["likelihood"].startswith("refused: ")
    assert Path(info["server"]["log"]).parent.name == "logs" and Path(info["server"]["log"]).is_file()
    assert not _alive(info["server"]["pid"]), "a server outlived the run"
    # a launch that exits: one line, the candidate is ERROR, the run exits 2
    assert bad["status"] == "error"
    assert re.match(r"ServerError: openai-server: launch command: the server exited with code 3 before answering "
                    r"http://127\.0\.0\.1:\d+/v1/models", bad["error"]["message"])
    assert "[broken] ERROR in evaluate: ServerError: openai-server: launch command: the server exited with code 3" in (
        r.stdout + r.stderr)


def _wait_for(pred, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _server_pid(logs: Path, record: str) -> int | None:
    try:
        m = re.search(r"# quantgate: server pid (\d+)", (logs / f"{record}-evaluate.server.log").read_text())
    except FileNotFoundError:
        return None
    return int(m.group(1)) if m else None


JSON = {"suite": "json-format", "name": "json", "params": {"limit": 4, "max_gen_toks": 32}}


@pytest.mark.slow
@pytest.mark.heavy
def test_server_killed_mid_suite_and_worker_killed(tmp_path, qg_home, f16):
    """Candidate ``killed``: its server is SIGKILLed while it scores json-format, after gsm8k
    finished (lm-eval suites journal a chunk of up to 50 items at once); ``orphan``: its evaluate
    worker is SIGKILLed while it scores; ``inproc`` still runs."""
    inproc = {"name": "inproc", "quantizer": {"method": "unquantized", "params": {"format": "gguf"}},
              "runtime": {"name": "llama-cpp", "params": {"n_threads": 1}}}
    plan = _plan(tmp_path, [_served("killed", model_name="killed"), _served("orphan", model_name="orphan"), inproc],
                 [GSM8K, JSON], name="kills")
    reports = tmp_path / "reports"
    journals = qg_home / "journals"
    before = set(journals.glob("*.jsonl")) if journals.is_dir() else set()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(plan), "--no-tracking", "--reports-dir",
                             str(reports)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        logs = _wait_for(lambda: next(iter(reports.glob("*/logs")), None), 120, "the run's logs folder")
        _wait_for(lambda: _started(logs, "killed", "json"), 300, "killed's json-format suite")
        time.sleep(0.5)
        killed_pid = _server_pid(logs, "killed")
        os.killpg(killed_pid, signal.SIGKILL)  # the server dies mid-suite
        # orphan: once its server answers and scoring started, kill -9 the worker that started it
        _wait_for(lambda: _started(logs, "orphan", "gsm8k"), 300, "orphan's gsm8k suite")
        orphan_pid = _server_pid(logs, "orphan")
        with open(f"/proc/{orphan_pid}/stat") as f:
            worker = int(f.read().rsplit(")", 1)[1].split()[1])
        os.kill(worker, signal.SIGKILL)
        assert _wait_gone(orphan_pid), "the server outlived its worker (kill -9)"
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out[-3000:]
    res = _results(reports)
    killed, orphan, ok = res["candidates"]
    assert killed["status"] == "error" and "openai-server" in killed["error"]["message"], killed["error"]
    assert orphan["status"] == "error" and "worker process died" in orphan["error"]["message"], orphan["error"]
    assert ok["status"] == "ok" and len(ok["suites"]["gsm8k"]["records"]) == 4
    assert not _alive(killed_pid) and not _alive(orphan_pid)
    # the suite killed's server finished is kept in its journal: a second run resumes from it
    from harness.journal import ItemJournal

    left = [ItemJournal(p) for p in set(journals.glob("*.jsonl")) - before]
    assert sorted(len(j.records) for j in left) == [4], [len(j.records) for j in left]
    assert all(r["id"].startswith("gsm8k-") for j in left for r in j.records.values())


def _started(logs: Path, record: str, job: str) -> bool:
    try:
        lines = (logs / f"{record}-evaluate.progress.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return False
    for ln in lines:
        try:
            if json.loads(ln)["job"] == job:
                return True
        except ValueError:
            continue
    return False
