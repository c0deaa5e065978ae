"""Serving under load: TTFT, inter-token latency and end-to-end latency percentiles, output
tokens/s and requests/s of an OpenAI-compatible server, per concurrency and per request rate.

Runs against ``ctx.session.endpoint()`` (runtime ``openai-server``: a server it launched or
attached to); a session without an endpoint (an in-process runtime) is skipped, with a note.
Requests are streaming ``/v1/completions`` of ``prompt_tokens`` prompt tokens and exactly
``output_tokens`` generated tokens (greedy; ``min_tokens`` and ``ignore_eos`` keep EOS from
ending them early), sent by ``harness.loadgen`` (httpx + asyncio; why not guidellm: see
there). Each prompt starts with its own number, so no request is served from another's
prompt cache.

Levels: each ``concurrency`` C (closed loop: C clients, each sends its next request when its
last one ends) and each ``rates`` R (open loop: requests sent at R per second whatever the
backlog; arrivals "poisson", exponential gaps drawn with ``seed``, or "constant"). A level
sends ``requests`` requests and starts none after ``max_seconds``; ``warmup`` untimed requests
go first, once. Metrics per level L (``c8``, ``r2``, ``r0.5``), named ``<figure>_<L>`` (MLflow-safe,
as every probe metric: ``serving.ttft_ms_p95_c8``), milliseconds, percentiles by linear
interpolation:

- ``ttft_ms_p50_L`` / ``_p95`` / ``_p99``: send to first token chunk, per request;
- ``itl_ms_p50_L`` / ``_p95`` / ``_p99``: gaps between token chunks, pooled over the level's
  requests;
- ``e2e_ms_p50_L`` / ``_p95`` / ``_p99``: send to the end of the stream;
- ``output_tok_s_L``, ``req_s_L``: completed requests' output tokens, and completed
  requests, per second of the level's wall time;
- ``errors_L``: failed requests (HTTP error, timeout, broken or short stream);
  ``completed_L``: the requests the percentiles are of.

Latency figures are of completed requests; a level where none completed reports only
``errors``, ``completed``, ``output_tok_s`` and ``req_s`` (gates on the rest say "not measured").
"""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.probes import Probe, ProbeContext, record_machine
from harness.probes.timing import PROMPT, check_name, loadavg, percentile

LATENCIES = ("ttft_ms", "itl_ms", "e2e_ms")
QUANTILES = (50, 95, 99)
#: per level: metric -> direction
LEVEL_METRICS: dict[str, str | None] = {
    **{f"{m}_p{q}": "lower" for m in LATENCIES for q in QUANTILES},
    "output_tok_s": "higher", "req_s": "higher", "errors": "lower", "completed": None,
}
_LEVEL = re.compile(r"^(?P<metric>[a-z0-9_]+?)_(?P<level>c[0-9]+|r[0-9.]+)$")


class ServingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    concurrency: list[int] = Field(default_factory=lambda: [1, 2, 4, 8],
                                   description="closed-loop levels: requests in flight")
    rates: list[float] = Field(default_factory=list, description="open-loop levels: requests per second")
    arrivals: Literal["poisson", "constant"] = Field(
        "poisson", description="how a rate level spaces its requests: exponential gaps (seeded) or even")
    prompt_tokens: int | list[int] = Field(
        128, description="prompt length in tokens; a list: each request draws one of them (seeded)")
    output_tokens: int = Field(64, ge=2, le=8192, description="generated tokens per request (EOS ignored)")
    requests: int = Field(32, ge=1, le=10_000, description="requests per level")
    max_seconds: float = Field(60.0, gt=0, le=3600, description="no request starts later in a level")
    warmup: int = Field(2, ge=0, le=100, description="untimed requests before the first level")
    seed: int = 0
    request_timeout_s: float = Field(120.0, gt=0, le=3600, description="one request's limit")

    @field_validator("concurrency")
    @classmethod
    def _concurrency(cls, v: list[int]) -> list[int]:
        if any(c < 1 or c > 1024 for c in v):
            raise ValueError("every concurrency must be between 1 and 1024")
        return sorted(set(v))

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if any(not 0.001 <= r <= 10_000 for r in v):  # the level's name (r0.001) stays plain
            raise ValueError("every rate must be between 0.001 and 10000 requests/s")
        return sorted(set(v))

    @field_validator("prompt_tokens")
    @classmethod
    def _prompt(cls, v: int | list[int]) -> int | list[int]:
        values = v if isinstance(v, list) else [v]
        if not values or any(p < 1 or p > 131_072 for p in values):
            raise ValueError("prompt lengths must be between 1 and 131072 tokens (a list: at least one)")
        return v

    def levels(self) -> list[tuple[str, str, float]]:
        """(label, kind, value): ``("c4", "concurrency", 4)``, ``("r0.5", "rate", 0.5)``."""
        return ([(f"c{c}", "concurrency", c) for c in self.concurrency]
                + [(f"r{r:g}", "rate", r) for r in self.rates])

    def prompt_lengths(self) -> list[int]:
        return self.prompt_tokens if isinstance(self.prompt_tokens, list) else [self.prompt_tokens]


def metric_name(metric: str, level: str) -> str:
    """``serving`` metric names: ``ttft_ms_p95_c8`` (the plan names it ``serving.ttft_ms_p95_c8``)."""
    return check_name(f"{metric}_{level}")


def level_names(params: ServingParams) -> list[str]:
    return [metric_name(m, label) for label, _, _ in params.levels() for m in LEVEL_METRICS]


def unknown_metric_hint(metric: str, params: ServingParams) -> str | None:
    """Why ``metric`` (without the probe prefix) is not among this plan's serving metrics, in
    words naming the levels the plan measures; None when it is not a serving-shaped name."""
    m = _LEVEL.match(metric)
    levels = ", ".join(label for label, _, _ in params.levels()) or "none"
    if m is None:
        first = params.levels()[0][0] if params.levels() else "c1"
        return (f"serving metrics are METRIC_LEVEL (e.g. serving.ttft_ms_p95_{first}), METRIC one of "
                f"{', '.join(LEVEL_METRICS)}; levels of this plan: {levels}")
    if m["metric"] not in LEVEL_METRICS:
        return f"unknown serving metric {m['metric']!r}; allowed: {', '.join(LEVEL_METRICS)}"
    return (f"the serving probe measures no level {m['level']!r} in this plan; its levels: {levels} "
            "(concurrency cN, rate rR: add it to probes.serving.concurrency or .rates)")


def summarize_level(label: str, requests: list[dict], wall_s: float) -> dict[str, float]:
    """A level's metrics from its requests (``harness.loadgen.RequestResult.to_dict()``s)."""
    ok = [r for r in requests if r["ok"]]
    out = {metric_name("errors", label): float(len(requests) - len(ok)),
           metric_name("completed", label): float(len(ok)),
           metric_name("output_tok_s", label): sum(r["output_tokens"] for r in ok) / wall_s if wall_s > 0 else 0.0,
           metric_name("req_s", label): len(ok) / wall_s if wall_s > 0 else 0.0}
    samples = {"ttft_ms": [1000.0 * r["ttft_s"] for r in ok],
               "e2e_ms": [1000.0 * r["e2e_s"] for r in ok],
               "itl_ms": [1000.0 * g for r in ok for g in r["gaps_s"]]}
    for m in LATENCIES:
        if samples[m]:
            for q in QUANTILES:
                out[metric_name(f"{m}_p{q}", label)] = percentile(samples[m], q)
    return out


def build_prompts(session, lengths: list[int]) -> tuple[list[str], list[int | None], str]:
    """One prompt per requested length, each opened by its own number (no shared prefix with
    the one before). Exact token counts where the session tokenizes (ids cut to length, then
    detokenized; the count re-measured), else words of the fixed text as an approximation."""
    tokenize = getattr(session, "tokenize", None)
    detokenize = getattr(session, "detokenize", None)
    try:
        base = tokenize(PROMPT)
        detokenize(base[:2])
        exact = bool(base)
    except Exception:  # a session that cannot tokenize: approximate
        exact = False
    prompts: list[str] = []
    measured: list[int | None] = []
    words = PROMPT.split()
    for i, n in enumerate(lengths):
        head = f"{i + 1}. "
        if exact:
            ids = list(tokenize(head))
            while len(ids) < n + 64:
                ids += base
            cut = n
            for _ in range(8):  # text -> tokens may merge pieces: lengthen the cut until it counts n
                text = detokenize(ids[:cut])
                text = text.decode("utf-8", "ignore") if isinstance(text, bytes) else str(text)
                count = len(tokenize(text))
                if count >= n or cut >= len(ids):
                    break
                cut += n - count
            prompts.append(text)
            measured.append(count)
        else:
            body = [head.strip()] + [words[j % len(words)] for j in range(max(0, n - 1))]
            prompts.append(" ".join(body))
            measured.append(None)
    return prompts, measured, "exact (the session's tokenizer)" if exact else "approximate (one word per token)"


class ServingProbe(Probe):
    name = "serving"
    Params = ServingParams
    metrics = {metric_name(m, f"c{c}"): d for c in (1, 2, 4, 8) for m, d in LEVEL_METRICS.items()}
    order = 47

    @classmethod
    def metric_names(cls, params: ServingParams) -> list[str]:
        return level_names(params)

    @classmethod
    def direction_of(cls, metric: str) -> str | None:
        m = _LEVEL.match(metric)
        return LEVEL_METRICS.get(m["metric"]) if m else None

    @classmethod
    def unknown_metric_hint(cls, metric: str, params: ServingParams) -> str | None:
        return unknown_metric_hint(metric, params)

    def context_length(self, params: ServingParams) -> int:
        return max(params.prompt_lengths()) + params.output_tokens + 8

    def measure(self, ctx: ProbeContext, params: ServingParams) -> dict[str, float]:
        endpoint = getattr(ctx.session, "endpoint", None)
        url = endpoint() if callable(endpoint) else None
        notes: dict = {}
        ctx.notes["serving"] = notes
        if not url:
            notes["skipped"] = ("the serving probe needs a served session (runtime openai-server); "
                                "this runtime runs in process and has no endpoint")
            return {}
        from harness import loadgen

        record_machine(ctx)
        model = getattr(ctx.session, "served_model_name", None)
        rng = random.Random(params.seed)
        choices = params.prompt_lengths()
        n_per_level = params.requests
        levels = params.levels()
        lengths = [rng.choice(choices) for _ in range(params.warmup + n_per_level * len(levels))]
        prompts, measured, how = build_prompts(ctx.session, lengths)
        outputs = [params.output_tokens] * len(prompts)
        real = [m for m in measured if m is not None]
        notes.update({
            "endpoint": url, "model": model, "client": "harness.loadgen (httpx, asyncio)",
            "request": "POST /v1/completions, stream, temperature 0, max_tokens = min_tokens = output_tokens, "
                       "ignore_eos",
            "workload": {"prompt_tokens": params.prompt_tokens, "prompt_tokens_measured":
                         {"min": min(real), "max": max(real), "mean": sum(real) / len(real)} if real else None,
                         "prompt_length_from": how, "output_tokens": params.output_tokens,
                         "seed": params.seed, "arrivals": params.arrivals if params.rates else None,
                         "requests_per_level": n_per_level, "max_seconds": params.max_seconds},
            "loadavg_before": loadavg(), "levels": {},
        })
        timeout = params.request_timeout_s
        if params.warmup:
            w = loadgen.run_concurrency(url, model, prompts[: params.warmup], outputs[: params.warmup], 1,
                                        params.max_seconds, timeout)
            failed = [r.error for r in w.requests if not r.ok]
            notes["warmup"] = {"requests": len(w.requests), "errors": failed[:3]}
            if len(failed) == len(w.requests):
                raise RuntimeError(f"the server at {url} completed none of {len(w.requests)} warm-up "
                                   f"requests: {failed[0]}")
        out: dict[str, float] = {}
        start = params.warmup
        for label, kind, value in levels:
            ps, os_ = prompts[start: start + n_per_level], outputs[start: start + n_per_level]
            start += n_per_level
            if kind == "concurrency":
                res = loadgen.run_concurrency(url, model, ps, os_, int(value), params.max_seconds, timeout)
            else:
                res = loadgen.run_rate(url, model, ps, os_, value, params.arrivals, params.seed,
                                       params.max_seconds, timeout)
            reqs = [r.to_dict() for r in res.requests]
            out.update(summarize_level(label, reqs, res.wall_s))
            errors = [r["error"] for r in reqs if not r["ok"]]
            notes["levels"][label] = {
                "kind": kind, "value": value, "wall_s": round(res.wall_s, 4), "stopped_by": res.stopped_by,
                "sent": len(reqs), "errors": len(errors), "error_examples": errors[:3],
                "tokens_from": sorted({r["tokens_from"] for r in reqs if r["ok"]}),
                # per request: send time, TTFT, e2e, tokens (the chunk gaps stay out: they are many)
                "requests": [[round(r["sent_s"], 4), _r(r["ttft_s"]), _r(r["e2e_s"]), r["output_tokens"]]
                             for r in reqs],
            }
        notes["levels_columns"] = ["sent_s", "ttft_s", "e2e_s", "output_tokens"]
        notes["loadavg_after"] = loadavg()
        return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 5)
