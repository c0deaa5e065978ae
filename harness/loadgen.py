"""A small load generator for OpenAI-compatible servers: streaming ``/v1/completions`` at a
fixed concurrency (closed loop) or a fixed request rate (open loop), timed per request.

Why not guidellm (0.8.1, checked 2026-11-30): it pins ``click~=8.4.0`` (this environment has
8.5, which huggingface-hub and mlflow accept), hard-requires torch, transformers, datasets,
sanic, uvloop and faker for what is here an HTTP loop, runs its requests from worker
processes of its own, and takes its prompts' tokenizer from a Hugging Face model name (a
served GGUF has none). This loop needs only ``httpx`` (the ``server`` extra) and asyncio.

What one request records (``RequestResult``), from the client's side of the socket:

- ``ttft_s``: from sending the request to the first chunk that carries a token (a chunk
  whose choice has text, or no ``finish_reason``: llama-cpp-python ends a stream with an
  empty chunk that only carries ``finish_reason``, which is not a token);
- ``gaps_s``: the gaps between consecutive token chunks (inter-token latency; a server that
  puts several tokens in one chunk, as vLLM can, shows one gap per chunk);
- ``e2e_s``: from sending to the end of the stream (``data: [DONE]``);
- ``output_tokens``: the ``usage.completion_tokens`` of the stream when the server sends one
  (``stream_options.include_usage``), else the number of token chunks (llama-cpp-python sends
  one chunk per token and no usage, except that it holds back an incomplete UTF-8 character
  and sends it with the next token: with ``finish_reason`` "length" and no usage the request
  counts as the ``max_tokens`` it asked for).

A request is an error when the HTTP status is not 200, the stream breaks, it exceeds
``request_timeout_s``, or it ends short of the requested ``max_tokens`` (a server that
ignores ``min_tokens`` / ``ignore_eos``, or llama-cpp-python's server with its default
``interrupt_requests``, which cuts a stream short when another request arrives).

Bounds: a level sends at most ``requests`` requests and starts none after ``max_seconds``;
requests in flight then finish (each bounded by ``request_timeout_s``), so a level ends
within ``max_seconds + request_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RequestResult:
    index: int
    #: seconds from the level's start to this request's send
    sent_s: float
    ok: bool = False
    ttft_s: float | None = None
    e2e_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    tokens_from: str = "chunks"  # "usage" when the server reported completion_tokens
    finish_reason: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gaps_s"] = [round(g, 6) for g in self.gaps_s]
        return d


@dataclass
class LevelResult:
    """One load level: ``kind`` "concurrency" (``value`` requests in flight) or "rate"
    (``value`` requests/s, arrivals as ``arrivals`` says)."""

    kind: str
    value: float
    wall_s: float
    requests: list[RequestResult]
    arrivals: str | None = None
    stopped_by: str = "requests"  # or "max_seconds"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "wall_s": round(self.wall_s, 6),
                "arrivals": self.arrivals, "stopped_by": self.stopped_by,
                "requests": [r.to_dict() for r in self.requests]}


def completions_url(base_url: str) -> str:
    """``http://h:p/v1`` -> ``http://h:p/v1/completions``."""
    return base_url.rstrip("/") + "/completions"


def is_loopback(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def request_body(model: str | None, prompt: str, output_tokens: int) -> dict[str, Any]:
    """A greedy streaming completion of exactly ``output_tokens`` tokens where the server
    honours it: ``min_tokens`` (llama-cpp-python's server, vLLM) and ``ignore_eos`` (vLLM;
    llama-cpp-python ignores unknown fields) keep EOS from ending it early."""
    body: dict[str, Any] = {
        "prompt": prompt, "max_tokens": output_tokens, "min_tokens": output_tokens, "ignore_eos": True,
        "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True},
    }
    if model:
        body["model"] = model
    return body


async def one_request(client, url: str, body: dict[str, Any], index: int, t_level: float,
                      timeout_s: float) -> RequestResult:
    """Send one streaming completion and time it (see the module docstring)."""
    t0 = time.perf_counter()
    res = RequestResult(index=index, sent_s=t0 - t_level)
    state = {"last": None, "chunks": 0, "usage": None, "done": False}
    try:
        await asyncio.wait_for(_stream(client, url, body, t0, res, state), timeout_s)
    except asyncio.TimeoutError:  # TimeoutError from 3.11 on
        res.error = f"no complete answer within {timeout_s:g} s"
        return res
    except Exception as exc:  # a broken connection is this request's error, not the level's
        res.error = f"{type(exc).__name__}: {exc}"[:300]
        return res
    if res.error:  # an HTTP error status
        return res
    res.e2e_s = time.perf_counter() - t0
    res.output_tokens = state["usage"] if state["usage"] is not None else state["chunks"]
    res.tokens_from = "usage" if state["usage"] is not None else "chunks"
    want = body.get("max_tokens")
    if not state["done"]:
        res.error = "the stream ended without data: [DONE]"
    elif res.ttft_s is None:
        res.error = "the stream carried no token"
    elif want is not None and res.output_tokens < want and state["usage"] is None and res.finish_reason == "length":
        # no usage figure, and the server stopped at max_tokens: it generated them all, in fewer
        # chunks (llama-cpp-python holds back an incomplete UTF-8 character and sends it with
        # the next token's text)
        res.output_tokens, res.tokens_from, res.ok = want, "finish_reason length", True
    elif want is not None and res.output_tokens < want:
        res.error = (f"{res.output_tokens} of {want} tokens (finish_reason {res.finish_reason}): the "
                     "server ended the stream early (does it honour min_tokens / ignore_eos? llama-cpp-python: "
                     "start it with --interrupt_requests False)")
    else:
        res.ok = True
    return res


async def _stream(client, url: str, body: dict[str, Any], t0: float, res: RequestResult, state: dict) -> None:
    async with client.stream("POST", url, json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode("utf-8", "replace")
            res.error = f"HTTP {resp.status_code}: {text[:200]}"
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                state["done"] = True
                return
            now = time.perf_counter()
            msg = json.loads(data)
            usage = msg.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                state["usage"] = int(usage["completion_tokens"])
            for choice in msg.get("choices") or []:
                if choice.get("finish_reason"):
                    res.finish_reason = choice["finish_reason"]
                if choice.get("text") or not choice.get("finish_reason"):
                    state["chunks"] += 1
                    if state["last"] is None:
                        res.ttft_s = now - t0
                    else:
                        res.gaps_s.append(now - state["last"])
                    state["last"] = now


def arrival_times(rate: float, n: int, arrivals: str, seed: int) -> list[float]:
    """Send times (seconds from the level's start) of ``n`` requests at ``rate`` per second:
    "poisson" (exponential gaps, seeded) or "constant" (every 1/rate s). The first is at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, not {rate}")
    if arrivals == "constant":
        return [i / rate for i in range(n)]
    if arrivals != "poisson":
        raise ValueError(f"arrivals must be 'poisson' or 'constant', not {arrivals!r}")
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _client(base_url: str, connections: int, timeout_s: float):
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - the server extra brings it
        from harness.errors import MissingDependency

        raise MissingDependency.of("the serving probe", "httpx", "server") from exc
    # a loopback server is reached directly: proxy variables of the environment would misroute it
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
                             limits=httpx.Limits(max_connections=max(1, connections),
                                                 max_keepalive_connections=max(1, connections)),
                             trust_env=not is_loopback(base_url))


async def _concurrency_level(base_url: str, model: str | None, prompts: list[str], output_tokens: list[int],
                             concurrency: int, max_seconds: float, timeout_s: float) -> LevelResult:
    url = completions_url(base_url)
    results: list[RequestResult] = []
    next_index = 0
    stopped = "requests"
    async with _client(base_url, concurrency, timeout_s) as client:
        t_level = time.perf_counter()

        async def worker():
            nonlocal next_index, stopped
            while next_index < len(prompts):
                if time.perf_counter() - t_level >= max_seconds:
                    stopped = "max_seconds"
                    return
                i = next_index
                next_index += 1
                body = request_body(model, prompts[i], output_tokens[i])
                results.append(await one_request(client, url, body, i, t_level, timeout_s))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t_level
    results.sort(key=lambda r: r.index)
    return LevelResult("concurrency", concurrency, wall, results, stopped_by=stopped)


async def _rate_level(base_url: str, model: str | None, prompts: list[str], output_tokens: list[int],
                      rate: float, arrivals: str, seed: int, max_seconds: float, timeout_s: float) -> LevelResult:
    url = completions_url(base_url)
    times = arrival_times(rate, len(prompts), arrivals, seed)
    stopped = "requests"
    async with _client(base_url, len(prompts), timeout_s) as client:
        t_level = time.perf_counter()
        tasks = []
        for i, at in enumerate(times):
            if at >= max_seconds:
                stopped = "max_seconds"
                break
            delay = at - (time.perf_counter() - t_level)
            if delay > 0:
                await asyncio.sleep(delay)
            body = request_body(model, prompts[i], output_tokens[i])
            tasks.append(asyncio.create_task(one_request(client, url, body, i, t_level, timeout_s)))
        results = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t_level
    return LevelResult("rate", rate, wall, results, arrivals=arrivals, stopped_by=stopped)


def run_concurrency(base_url: str, model: str | None, prompts: list[str], output_tokens: list[int],
                    concurrency: int, max_seconds: float, timeout_s: float = 120.0) -> LevelResult:
    """Closed loop: ``concurrency`` clients, each sending its next request when its last one
    ends, until every prompt was sent or ``max_seconds`` passed."""
    if len(prompts) != len(output_tokens):
        raise ValueError("one output length per prompt")
    return asyncio.run(_concurrency_level(base_url, model, prompts, output_tokens, concurrency,
                                          max_seconds, timeout_s))


def run_rate(base_url: str, model: str | None, prompts: list[str], output_tokens: list[int], rate: float,
             arrivals: str = "poisson", seed: int = 0, max_seconds: float = 60.0,
             timeout_s: float = 120.0) -> LevelResult:
    """Open loop: requests sent at ``rate`` per second whatever the server's backlog, until every
    prompt was sent or ``max_seconds`` passed."""
    if len(prompts) != len(output_tokens):
        raise ValueError("one output length per prompt")
    return asyncio.run(_rate_level(base_url, model, prompts, output_tokens, rate, arrivals, seed,
                                   max_seconds, timeout_s))
