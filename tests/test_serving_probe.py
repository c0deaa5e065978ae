"""The serving probe (harness/probes/serving.py) and its load generator (harness/loadgen.py).

Unit tests: percentile math and metric names, plan validation of serving gates, the probe's
skip on an in-process session, the report's sweep table and figure, and the load generator's
own logic (stream parsing, short and failed streams, the concurrency bound, the rate schedule)
against a tiny asyncio HTTP server written here: it scripts what a server sends, to test OUR
parsing and scheduling, and stands in for no real server.

Integration (slow): the load generator and the probe against a real llama-cpp-python server
(``python -m llama_cpp.server``) on 127.0.0.1 serving the embedded model's F16 GGUF; and, where
runtime ``openai-server`` exists, the probe through ``quantgate run``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness import loadgen
from harness.probes import REGISTRY as PROBES
from harness.probes import ProbeContext
from harness.probes.serving import (
    LEVEL_METRICS,
    ServingParams,
    ServingProbe,
    build_prompts,
    level_names,
    summarize_level,
)
from harness.results import Metric, Record, RunResults
from tests.conftest import ROOT, run_cli


# ------------------------------------------------------------------ percentiles and names
def _req(ttft, e2e, gaps, tokens, ok=True):
    return {"ok": ok, "ttft_s": ttft, "e2e_s": e2e, "gaps_s": gaps, "output_tokens": tokens}


def test_summarize_level_percentiles_match_numpy_and_count_errors():
    ttft = [0.1, 0.5, 0.2, 0.4, 0.3]
    e2e = [1.0, 1.4, 1.1, 1.3, 1.2]
    gaps = [[0.01, 0.02], [0.03, 0.04], [0.05, 0.06], [0.07, 0.08], [0.09, 0.10]]
    reqs = [_req(t, e, g, 3) for t, e, g in zip(ttft, e2e, gaps, strict=True)]
    reqs.append(_req(None, None, [], 0, ok=False))  # an error: counted, not in the percentiles
    out = summarize_level("c2", reqs, wall_s=2.0)
    for q in (50, 95, 99):
        assert out[f"ttft_ms_p{q}_c2"] == pytest.approx(np.percentile(np.array(ttft) * 1000, q))
        assert out[f"e2e_ms_p{q}_c2"] == pytest.approx(np.percentile(np.array(e2e) * 1000, q))
        assert out[f"itl_ms_p{q}_c2"] == pytest.approx(np.percentile(np.array(gaps).ravel() * 1000, q))
    assert out["ttft_ms_p50_c2"] == pytest.approx(300.0)
    assert out["errors_c2"] == 1 and out["completed_c2"] == 5
    assert out["output_tok_s_c2"] == pytest.approx(15 / 2.0)
    assert out["req_s_c2"] == pytest.approx(5 / 2.0)
    assert set(out) == {f"{m}_c2" for m in LEVEL_METRICS}


def test_level_with_no_completed_request_reports_counts_only():
    out = summarize_level("r2", [_req(None, None, [], 0, ok=False)] * 3, wall_s=1.5)
    assert out == {"errors_r2": 3.0, "completed_r2": 0.0, "output_tok_s_r2": 0.0, "req_s_r2": 0.0}


def test_metric_names_and_directions_follow_the_levels():
    params = ServingParams(concurrency=[4, 1, 4], rates=[0.5, 2])
    assert [lab for lab, _, _ in params.levels()] == ["c1", "c4", "r0.5", "r2"]
    names = ServingProbe.metric_names(params)
    assert names == level_names(params)
    assert "ttft_ms_p95_c4" in names and "req_s_r0.5" in names and "ttft_ms_p95_c8" not in names
    d = ServingProbe.metric_directions(params)
    assert d["ttft_ms_p95_c4"] == "lower" and d["itl_ms_p50_r2"] == "lower" and d["e2e_ms_p99_c1"] == "lower"
    assert d["output_tok_s_c4"] == "higher" and d["req_s_r0.5"] == "higher"
    assert d["errors_c1"] == "lower" and d["completed_c1"] is None
    from mlflow.utils.validation import _validate_metric_name  # the names MLflow takes as they are

    for n in names:
        _validate_metric_name(f"serving.{n}")
    assert "serving" in PROBES.names()


@pytest.mark.parametrize("bad", [{"concurrency": [0]}, {"rates": [-1]}, {"rates": [0.0001]}, {"output_tokens": 1},
                                 {"requests": 0}, {"max_seconds": 0}, {"prompt_tokens": []},
                                 {"arrivals": "bursty"}, {"concurency": [1]}])
def test_params_refuse_bad_values(bad):
    with pytest.raises(ValueError):
        ServingParams.model_validate(bad)


# ------------------------------------------------------------------ validate
def _plan(tmp_path: Path, probe: dict, gates: list[dict]) -> Path:
    data = {"name": "serve", "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake"}},
            "candidates": [{"name": "q4", "quantizer": {"method": "fake", "params": {"bits": 4}},
                            "runtime": {"name": "fake"}}],
            "suites": [{"suite": "perplexity", "params": {"dataset": "wikitext2", "context_length": 256,
                                                          "max_tokens": 1024}}],
            "probes": {"serving": probe}, "gates": {"name": "slo", "gates": gates}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_validate_accepts_a_gate_on_a_measured_level(tmp_path):
    from harness.validate import check_plan, load_plan

    path = _plan(tmp_path, {"concurrency": [1, 8], "rates": [2]},
                 [{"name": "ttft", "kind": "max_value", "metric": "serving.ttft_ms_p95_c8", "max": 200},
                  {"name": "rps", "kind": "min_value", "metric": "serving.req_s_r2", "min": 1}])
    assert check_plan(load_plan(path, check_names=False)) == []


def test_validate_refuses_an_unmeasured_level_naming_the_levels(tmp_path):
    path = _plan(tmp_path, {"concurrency": [1, 2]},
                 [{"name": "ttft", "kind": "max_value", "metric": "serving.ttft_ms_p95_c8", "max": 200}])
    res = run_cli("validate", str(path))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "gates[0]" in ln]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "gates[0].metric" in lines[0] and "'serving.ttft_ms_p95_c8'" in lines[0]
    assert "levels: c1, c2" in lines[0]


def test_validate_refuses_a_wrong_direction_and_an_unknown_serving_metric(tmp_path):
    from harness.validate import check_plan, load_plan

    path = _plan(tmp_path, {"concurrency": [2]},
                 [{"name": "tput", "kind": "max_value", "metric": "serving.output_tok_s_c2", "max": 10},
                  {"name": "p97", "kind": "max_value", "metric": "serving.ttft_ms_p97_c2", "max": 10}])
    problems = check_plan(load_plan(path, check_names=False))
    assert len(problems) == 2
    assert "gates[0].kind" in problems[0] and "higher-is-better" in problems[0] and "'min_value'" in problems[0]
    assert "gates[1].metric" in problems[1] and "unknown serving metric 'ttft_ms_p97'" in problems[1]


# ------------------------------------------------------------------ skip without an endpoint
class _InProcess:
    """A session as the in-process runtimes have it: Session's default endpoint()."""

    def endpoint(self):
        from harness.runtimes import Session

        return Session.endpoint(self)


def test_probe_skips_a_session_without_endpoint():
    ctx = ProbeContext(artifact_path=Path("x"), session=_InProcess())
    assert ServingProbe().measure(ctx, ServingParams()) == {}
    assert "openai-server" in ctx.notes["serving"]["skipped"]


def test_prompts_without_a_tokenizer_are_approximate_and_distinct():
    prompts, measured, how = build_prompts(_InProcess(), [8, 8, 16])
    assert how.startswith("approximate") and measured == [None, None, None]
    assert len(set(prompts)) == 3 and [len(p.split()) for p in prompts] == [8, 8, 16]


# ------------------------------------------------------------------ a scripted server for our code
class ScriptedServer:
    """An asyncio HTTP/1.1 server on 127.0.0.1 answering POST /v1/completions with a stream
    scripted by the prompt: "usage" (two chunks of two tokens each, then usage 4), "short" (two
    token chunks, then [DONE]), "nodone" (two chunks, then the connection closes), "fail" (HTTP
    500), anything else: ``max_tokens`` one-token chunks, an empty finish chunk and [DONE].
    "hold" requests wait until a second one is in flight (or 5 s): the concurrency bound shows."""

    def __init__(self):
        self.inflight = 0
        self.max_inflight = 0
        self.count = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.cond = asyncio.Condition()
        self.ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
        body = json.loads(await reader.readexactly(length))
        self.count += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        async with self.cond:
            self.cond.notify_all()
        try:
            await self._answer(body, writer)
        finally:
            self.inflight -= 1
            writer.close()

    async def _answer(self, body, writer):
        mode = body["prompt"].split()[0]
        if mode == "fail":
            writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops")
            await writer.drain()
            return
        if mode == "hold":
            async with self.cond:
                await asyncio.wait_for(self.cond.wait_for(lambda: self.inflight >= 2), 5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")

        def send(obj):
            writer.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

        def chunk(text, finish=None):
            return {"choices": [{"text": text, "index": 0, "finish_reason": finish}]}

        if mode == "usage":
            send(chunk("a b"))
            send(chunk(" c d", "length"))
            send({"choices": [], "usage": {"completion_tokens": 4}})
        elif mode in ("short", "nodone"):
            send(chunk("a"))
            send(chunk("b"))
        else:
            for i in range(body["max_tokens"]):
                send(chunk(f" t{i}"))
                await writer.drain()
                await asyncio.sleep(0.002)
            send(chunk("", "length"))
        if mode != "nodone":
            send(b"[DONE]")
        await writer.drain()

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def scripted():
    s = ScriptedServer()
    yield s
    s.close()


def test_loadgen_parses_streams_and_flags_bad_ones(scripted):
    modes = ["plain", "usage", "short", "nodone", "fail"]
    res = loadgen.run_concurrency(scripted.url, "m", [f"{m} x" for m in modes], [4] * 5, 1, max_seconds=60,
                                  timeout_s=10)
    by = dict(zip(modes, res.requests, strict=True))
    plain = by["plain"]
    assert plain.ok and plain.output_tokens == 4 and plain.tokens_from == "chunks"
    assert len(plain.gaps_s) == 3 and plain.finish_reason == "length"  # the empty finish chunk is no token
    assert 0 < plain.ttft_s <= plain.e2e_s
    assert by["usage"].ok and by["usage"].output_tokens == 4 and by["usage"].tokens_from == "usage"
    assert len(by["usage"].gaps_s) == 1  # two chunks: one gap
    assert not by["short"].ok and "2 of 4 tokens" in by["short"].error
    assert not by["nodone"].ok and "[DONE]" in by["nodone"].error
    assert not by["fail"].ok and by["fail"].error.startswith("HTTP 500")
    assert res.kind == "concurrency" and res.stopped_by == "requests" and scripted.count == 5


def test_loadgen_keeps_at_most_c_requests_in_flight(scripted):
    res = loadgen.run_concurrency(scripted.url, None, ["hold x"] * 6, [3] * 6, 2, max_seconds=60, timeout_s=10)
    assert [r.index for r in res.requests] == list(range(6))
    assert all(r.ok for r in res.requests), [r.error for r in res.requests]
    assert scripted.max_inflight == 2


def test_rate_level_follows_its_schedule_and_stops_at_max_seconds(scripted):
    res = loadgen.run_rate(scripted.url, None, ["plain x"] * 10, [2] * 10, rate=4.0, arrivals="constant",
                           max_seconds=0.6, timeout_s=10)
    # arrivals at 0, 0.25, 0.5 (0.75 is past max_seconds): three requests, sent in order
    assert len(res.requests) == 3 and res.stopped_by == "max_seconds" and res.arrivals == "constant"
    sent = [r.sent_s for r in res.requests]
    assert sent == sorted(sent) and all(r.ok for r in res.requests)


def test_arrival_times():
    assert loadgen.arrival_times(2.0, 4, "constant", 0) == [0.0, 0.5, 1.0, 1.5]
    a = loadgen.arrival_times(5.0, 4000, "poisson", 7)
    assert a == loadgen.arrival_times(5.0, 4000, "poisson", 7) and a[0] == 0.0
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(0.2, rel=0.06) and gaps.std() == pytest.approx(0.2, rel=0.08)
    with pytest.raises(ValueError):
        loadgen.arrival_times(0, 3, "poisson", 0)


def test_probe_against_the_scripted_server(scripted):
    class Served(_InProcess):
        served_model_name = "m"

        def endpoint(self):
            return scripted.url

    ctx = ProbeContext(artifact_path=Path("x"), session=Served())
    params = ServingParams(concurrency=[1, 2], rates=[50], prompt_tokens=[4, 6], output_tokens=3, requests=4,
                           warmup=1, max_seconds=30)
    out = ServingProbe().measure(ctx, params)
    assert set(out) == set(ServingProbe.metric_names(params))
    notes = ctx.notes["serving"]
    assert notes["workload"]["output_tokens"] == 3 and notes["workload"]["arrivals"] == "poisson"
    assert scripted.count == 1 + 3 * 4
    for label in ("c1", "c2", "r50"):
        assert out[f"completed_{label}"] == 4 and out[f"errors_{label}"] == 0
        assert notes["levels"][label]["sent"] == 4


# ------------------------------------------------------------------ the report
def _sweep_record(name, role, scale):
    metrics = {}
    for c in (1, 2, 4):
        for m, d in LEVEL_METRICS.items():
            metrics[f"serving.{m}_c{c}"] = Metric(value=scale * c * (2 if "p95" in m else 1), better=d)
    probes = {"serving": {k.split(".", 1)[1]: v.value for k, v in metrics.items()}}
    notes = {"serving": {"endpoint": "http://127.0.0.1:1/v1", "workload": {
        "prompt_tokens": 64, "output_tokens": 16, "requests_per_level": 8, "max_seconds": 60, "seed": 0,
        "prompt_length_from": "exact", "prompt_tokens_measured": {"min": 64, "max": 64, "mean": 64}}}}
    return Record(name=name, role=role, metrics=metrics, probes=probes, probe_notes=notes, verdict="PASS")


def _results():
    plan = {"name": "serve", "suites": [], "probes": {"serving": {"concurrency": [1, 2, 4]}}}
    policy = {"name": "slo", "gates": [{"name": "ttft", "kind": "max_value", "metric": "serving.ttft_ms_p95_c4",
                                        "max": 200}]}
    return RunResults(run_id="r1", quantgate_version="0", plan=plan, policy=policy, started="", finished="",
                      wall_seconds=1.0, baseline=_sweep_record("f16", "baseline", 10.0),
                      candidates=[_sweep_record("q4", "candidate", 5.0)])


def test_summary_has_the_sweep_table_per_candidate():
    from harness.report.markdown import summary_markdown

    md = summary_markdown(_results())
    assert "## Serving under load" in md and "### f16" in md and "### q4" in md
    rows = [ln for ln in md.splitlines() if ln.startswith(("| c1 ", "| c2 ", "| c4 "))]
    assert [r.split("|")[1].strip() for r in rows] == ["c1", "c2", "c4"] * 2
    # q4's c4 row: TTFT p95 = 5 * 4 * 2
    assert rows[5].split("|")[5].strip() == "40"
    assert "| serving |" not in md  # not repeated among the other probes' rows


def test_report_html_has_the_latency_figure():
    from harness.report import figures as F
    from harness.report.html import render_html

    results = _results()
    assert F.serving_sweep(results.candidates[0])[4]["ttft_ms_p95"] == 40
    fig = F.serving_latency(results)
    axes = fig.get_axes()
    assert len(axes) == 2
    labels = [ln.get_label() for ln in axes[0].get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["f16 (baseline) p50", "f16 (baseline) p95", "q4 p50", "q4 p95"]
    assert any(ln.get_ydata()[0] == 200 for ln in axes[0].get_lines())  # the gate's limit
    page = render_html(results)
    assert "Serving under load" in page and 'aria-label="latency vs concurrency"' in page
    assert "output tokens 16" in page
    # a table per record, the probe's figures left out of the general probe table
    section = page[page.index("<h2>Serving under load</h2>"):]
    assert section.index("<h3>f16 (baseline)</h3>") < section.index("<h3>q4</h3>")
    assert "<th>TTFT p95</th>" in section and '<td class="num">40</td>' in section
    probes = page[page.index("<h2>Probes</h2>"):] if "<h2>Probes</h2>" in page else ""
    assert "ttft" not in probes[: probes.find("</table>")]


# ------------------------------------------------------------------ a real llama-cpp-python server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gguf(qg_home) -> Path:
    from harness.baseline import derive
    from harness.config import EMBEDDED_MODEL

    return Path(derive(EMBEDDED_MODEL, "gguf", log=lambda m: None))


@pytest.fixture(scope="module")
def llama_server(gguf, tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1. --interrupt_requests False:
    by default it ends a stream early when another request arrives."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--interrupt_requests",
                                 "False"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/models", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _check_level(level, n, output_tokens):
    assert len(level.requests) == n
    for r in level.requests:
        assert r.ok, r.error
        assert r.output_tokens == output_tokens and r.tokens_from == "chunks"
        assert len(r.gaps_s) == output_tokens - 1
        assert 0 < r.ttft_s <= r.e2e_s
    assert level.wall_s >= max(r.e2e_s for r in level.requests)


@pytest.mark.slow
def test_loadgen_against_llama_cpp_server(llama_server):
    prompts = [f"{i}. The river valley and its first farmers" for i in range(6)]
    for c in (1, 2):
        level = loadgen.run_concurrency(llama_server, None, prompts[:3], [6] * 3, c, max_seconds=120, timeout_s=120)
        _check_level(level, 3, 6)
    level = loadgen.run_rate(llama_server, None, prompts[3:], [6] * 3, rate=5.0, arrivals="poisson", seed=1,
                             max_seconds=120, timeout_s=120)
    _check_level(level, 3, 6)


@pytest.mark.slow
def test_probe_against_llama_cpp_server(llama_server, gguf):
    from llama_cpp import Llama

    vocab = Llama(str(gguf), vocab_only=True, verbose=False)

    class Served:
        served_model_name = None

        def endpoint(self):
            return llama_server

        def tokenize(self, text):
            return vocab.tokenize(text.encode(), add_bos=False, special=False)

        def detokenize(self, ids):
            return vocab.detokenize(ids)

    ctx = ProbeContext(artifact_path=gguf, session=Served())
    params = ServingParams(concurrency=[1, 2], prompt_tokens=32, output_tokens=5, requests=3, warmup=1)
    out = ServingProbe().measure(ctx, params)
    assert set(out) == set(ServingProbe.metric_names(params))
    for label in ("c1", "c2"):
        assert out[f"completed_{label}"] == 3 and out[f"errors_{label}"] == 0
        for m in ("ttft_ms", "itl_ms", "e2e_ms"):
            assert 0 < out[f"{m}_p50_{label}"] <= out[f"{m}_p95_{label}"] <= out[f"{m}_p99_{label}"]
        assert out[f"ttft_ms_p99_{label}"] <= out[f"e2e_ms_p99_{label}"]
        assert out[f"ttft_ms_p50_{label}"] <= out[f"e2e_ms_p50_{label}"]
        assert out[f"output_tok_s_{label}"] == pytest.approx(out[f"req_s_{label}"] * 5)
    notes = ctx.notes["serving"]
    assert notes["workload"]["prompt_tokens_measured"] == {"min": 32, "max": 32, "mean": 32}
    assert notes["levels"]["c2"]["tokens_from"] == ["chunks"]


# ------------------------------------------------------------------ through a plan (runtime openai-server)
HAS_OPENAI_SERVER = (ROOT / "harness" / "runtimes" / "openai_server.py").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPENAI_SERVER, reason="runtime openai-server (another change) is not in this checkout")
def test_plan_with_an_openai_server_candidate(qg_home, gguf, tmp_path):
    from harness.runtimes import REGISTRY as RUNTIMES

    assert "openai-server" in RUNTIMES.names()
    plan = {"name": "serve", "baseline": {"name": "f16", "model": "embedded:smollm2-135m",
                                          "runtime": {"name": "llama-cpp", "params": {"n_threads": 2}}},
            # --interrupt_requests False: llama-cpp-python's server otherwise ends a stream when the
            # next request arrives (concurrency 2 would see short streams, counted as errors)
            "candidates": [{"name": "served", "quantizer": {"method": "unquantized", "params": {"format": "gguf"}},
                            "runtime": {"name": "openai-server", "params": {
                                "launch": "llama-cpp", "n_threads": 2, "n_ctx": 512,
                                "extra_args": ["--interrupt_requests", "False"]}}}],
            # a generation suite: the probe runs on a record whose suites succeeded
            "suites": [{"suite": "gsm8k", "params": {"limit": 1, "num_fewshot": 0, "max_gen_toks": 16}}],
            "probes": {"serving": {"concurrency": [1, 2], "prompt_tokens": 16, "output_tokens": 4,
                                   "requests": 2, "warmup": 1}},
            "gates": {"name": "slo", "gates": [
                {"name": "ttft", "kind": "max_value", "metric": "serving.ttft_ms_p95_c2", "max": 600000}]}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    res = run_cli("run", str(path), "--no-tracking", "--reports-dir", str(tmp_path / "reports"),
                  env={"QUANTGATE_HOME": os.environ["QUANTGATE_HOME"]})
    assert res.returncode in (0, 1), res.stdout + res.stderr
    data = json.loads(next((tmp_path / "reports").rglob("results.json")).read_text())
    cand = data["candidates"][0]
    assert cand["status"] == "ok", cand.get("error")
    assert cand["metrics"]["serving.completed_c2"]["value"] == 2
    assert cand["metrics"]["serving.ttft_ms_p95_c2"]["better"] == "lower"
    assert [v["verdict"] for v in cand["verdicts"]] == ["PASS"]
    # the in-process baseline skips the probe, with a note
    assert "openai-server" in data["baseline"]["probe_notes"]["serving"]["skipped"]


def test_probe_fails_when_no_warmup_request_completes(scripted, monkeypatch):
    """A server that answers no warm-up request makes the probe an error (of the record)."""
    import harness.probes.serving as serving

    class Failing(_InProcess):
        def endpoint(self):
            return scripted.url

    # every prompt the scripted server answers with HTTP 500
    monkeypatch.setattr(serving, "build_prompts", lambda session, lengths: (["fail x"] * len(lengths),
                                                                            [None] * len(lengths), "test"))
    ctx = ProbeContext(artifact_path=Path("x"), session=Failing())
    with pytest.raises(RuntimeError, match="completed none of 2 warm-up requests: HTTP 500"):
        ServingProbe().measure(ctx, ServingParams(concurrency=[1], output_tokens=3, requests=2, warmup=2))
    assert scripted.count == 2  # no level ran
