"""Per-request latency: time to first token (TTFT), end-to-end and inter-token latency.

``requests`` requests of ``prompt_tokens`` prompt tokens and ``gen_tokens`` generated tokens
(greedy, EOS ignored), after ``warmup`` untimed ones; each request uses a different window of
the fixed text (no prompt-cache hits). Percentiles by linear interpolation.

- ``ttft_seconds_p50_cC`` / ``_p95_cC`` / ``_max_cC``: from the request's start to the logits of
  its first token (the prefill),
- ``e2e_seconds_p50_cC`` / ``_p95_cC`` / ``_max_cC``: the whole request,
- ``itl_seconds_p50_cC``: decode seconds / generated tokens, per request.

Concurrency 1 (C = 1) runs in process on every runtime, one request after the other, with
``Session.greedy_decode``. Concurrency > 1 needs the session hook
``timed_requests(prompts, n_tokens, concurrency) -> [{"ttft_seconds", "e2e_seconds"}, ...]``:
all requests submitted, at most ``concurrency`` in flight, each timed from its own submission
(vLLM: its engine stepped with streaming outputs; llama.cpp: parallel slots of one context, as
llama-server serves them).
Sessions without it are skipped (named in the probe notes).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from harness.probes import Probe, ProbeContext, record_machine
from harness.probes.timing import check_name, loadavg, percentile, prompt_ids


class LatencyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(512, ge=1)
    gen_tokens: int = Field(128, ge=1)
    requests: int = Field(20, ge=1)
    warmup: int = Field(1, ge=0)
    concurrency: int = Field(1, ge=1)


def _names(c: int) -> list[str]:
    return [check_name(f"{m}_c{c}") for m in (
        "ttft_seconds_p50", "ttft_seconds_p95", "ttft_seconds_max",
        "e2e_seconds_p50", "e2e_seconds_p95", "e2e_seconds_max", "itl_seconds_p50")]


def summarize_requests(timings: list[dict[str, float]], gen_tokens: int, concurrency: int) -> dict[str, float]:
    ttft = [t["ttft_seconds"] for t in timings]
    e2e = [t["e2e_seconds"] for t in timings]
    itl = [(t["e2e_seconds"] - t["ttft_seconds"]) / gen_tokens for t in timings]
    values = [percentile(ttft, 50), percentile(ttft, 95), max(ttft),
              percentile(e2e, 50), percentile(e2e, 95), max(e2e), percentile(itl, 50)]
    return dict(zip(_names(concurrency), values, strict=True))


class LatencyProbe(Probe):
    name = "latency"
    Params = LatencyParams
    metrics = {n: "lower" for n in _names(1)}
    order = 45

    @classmethod
    def direction_of(cls, metric: str) -> str | None:
        return "lower"  # seconds

    @classmethod
    def metric_names(cls, params: LatencyParams) -> list[str]:
        return _names(params.concurrency)

    def context_length(self, params: LatencyParams) -> int:
        return params.prompt_tokens + params.gen_tokens + 1

    def measure(self, ctx: ProbeContext, params: LatencyParams) -> dict[str, float]:
        record_machine(ctx)
        session = ctx.session
        prompts = [prompt_ids(session, params.prompt_tokens, offset=3 * i)
                   for i in range(params.requests + params.warmup)]
        notes = {"loadavg_before": loadavg(), "concurrency": params.concurrency}
        ctx.notes["latency"] = notes
        if params.concurrency == 1:
            for p in prompts[: params.warmup]:
                session.greedy_decode(p, params.gen_tokens)
            timings = []
            for p in prompts[params.warmup:]:
                t = session.greedy_decode(p, params.gen_tokens)
                timings.append({"ttft_seconds": t["prefill_seconds"],
                                "e2e_seconds": t["prefill_seconds"] + t["decode_seconds"]})
        elif callable(getattr(session, "timed_requests", None)):
            if params.warmup:
                session.timed_requests(prompts[: params.warmup], params.gen_tokens, params.concurrency)
            timings = session.timed_requests(prompts[params.warmup:], params.gen_tokens, params.concurrency)
        else:
            notes["skipped"] = (f"concurrency {params.concurrency} needs Session.timed_requests, "
                                "which this runtime's session lacks")
            return {}
        notes["timings"] = timings
        notes["loadavg_after"] = loadavg()
        return summarize_requests(timings, params.gen_tokens, params.concurrency)
