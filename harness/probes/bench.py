"""Speed figures named and measured as ``llama-bench`` names and measures them, so that a
quantgate table can be laid beside one a llama.cpp user publishes:

- ``pp<N>``: prompt processing of N tokens from an empty context (only the last position's
  logits computed), tokens/s;
- ``tg<N>``: N single-token decode steps from an (almost) empty context: after a one-token
  prompt, so the steps sit at positions 1 .. N where llama-bench's sit at 0 .. N-1;
- ``pp<N>@d<D>`` / ``tg<N>@d<D>``: the same after D tokens already in the KV cache
  (llama-bench ``-d D``). ``tg<N>@d<P>`` is what the ``decode`` and ``throughput`` probes call
  decode after a P-token prompt; those keep their own names.

Each figure is the mean over ``repetitions`` timed runs of tokens/s (llama-bench's ``avg_ts``)
with ``_std``, the sample standard deviation (its ``stddev_ts``), after ``warmup`` untimed runs.
Decode is greedy over the model's own tokens where llama-bench feeds random ones: the cost of a
decode step does not depend on which token it is. ``pp<N>@d<D>`` with D > 0 needs the session
hook ``timed_prefill(context, prompt) -> seconds`` (llama.cpp has it); other sessions skip it,
listed in the notes. Metric keys keep llama-bench's ``@``; MLflow receives ``_`` in its place.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.probes import Probe, ProbeContext, record_machine
from harness.probes.timing import loadavg, prompt_ids


class BenchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_prompt: list[int] = Field(default_factory=lambda: [512], description="llama-bench -p (0: none)")
    n_gen: list[int] = Field(default_factory=lambda: [128], description="llama-bench -n (0: none)")
    n_depth: list[int] = Field(default_factory=lambda: [0], description="llama-bench -d")
    repetitions: int = Field(5, ge=1, description="llama-bench -r")
    warmup: int = Field(1, ge=0)

    @field_validator("n_prompt", "n_gen", "n_depth")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError("every value must be >= 0")
        return sorted(set(v))


def bench_name(kind: str, n: int, depth: int) -> str:
    """llama-bench's test name: ``pp512``, ``tg128``, ``tg128@d512``."""
    return f"{kind}{n}" + (f"@d{depth}" if depth else "")


def _tests(params: BenchParams) -> list[tuple[str, int, int]]:
    return [(kind, n, d) for d in params.n_depth
            for kind, sizes in (("pp", params.n_prompt), ("tg", params.n_gen)) for n in sizes if n > 0]


def supports_depth_prefill(session) -> bool:
    return callable(getattr(session, "timed_prefill", None))


def run_test(session, kind: str, n: int, depth: int, repetitions: int, warmup: int) -> list[float]:
    """tokens/s of each timed run of one llama-bench test."""
    if kind == "pp" and depth == 0:
        prompt = prompt_ids(session, n)

        def once() -> float:
            return session.greedy_decode(prompt, 1)["prefill_seconds"]
    elif kind == "pp":
        context, prompt = prompt_ids(session, depth), prompt_ids(session, n, offset=depth)

        def once() -> float:
            return session.timed_prefill(context, prompt)
    else:
        prompt = prompt_ids(session, max(depth, 1))

        def once() -> float:
            return session.greedy_decode(prompt, n)["decode_seconds"]
    for _ in range(warmup):
        once()
    out = []
    for _ in range(repetitions):
        seconds = once()
        if seconds <= 0:
            raise RuntimeError(f"non-positive timing from the runtime: {seconds}")
        out.append(n / seconds)
    return out


class BenchProbe(Probe):
    name = "bench"
    Params = BenchParams
    metrics = {"pp512": "higher", "pp512_std": "lower", "tg128": "higher", "tg128_std": "lower"}
    order = 40

    @classmethod
    def direction_of(cls, metric: str) -> str | None:
        return "lower" if metric.endswith("_std") else "higher"

    @classmethod
    def metric_names(cls, params: BenchParams) -> list[str]:
        return [n for kind, size, d in _tests(params) for n in (bench_name(kind, size, d), bench_name(kind, size, d) + "_std")]

    def context_length(self, params: BenchParams) -> int:
        longest = max([p for p in params.n_prompt] + [g + 1 for g in params.n_gen] + [1])
        return max(params.n_depth) + longest + 1

    def measure(self, ctx: ProbeContext, params: BenchParams) -> dict[str, float]:
        record_machine(ctx)
        session = ctx.session
        out: dict[str, float] = {}
        runs, skipped = {}, []
        before = loadavg()
        for kind, n, depth in _tests(params):
            name = bench_name(kind, n, depth)
            if kind == "pp" and depth and not supports_depth_prefill(session):
                skipped.append(name)
                continue
            tps = run_test(session, kind, n, depth, params.repetitions, params.warmup)
            runs[name] = tps
            out[name] = statistics.fmean(tps)
            out[name + "_std"] = statistics.stdev(tps) if len(tps) > 1 else 0.0
        ctx.notes["bench"] = {"runs": runs, "skipped": skipped, "repetitions": params.repetitions,
                              "warmup": params.warmup, "loadavg_before": before, "loadavg_after": loadavg()}
        if skipped:
            ctx.notes["bench"]["why_skipped"] = ("prompt processing at a depth needs Session.timed_prefill, "
                                                 "which this runtime's session lacks")
        return out
