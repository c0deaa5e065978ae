"""Prompt processing (prefill) and generation (decode) tokens/s, by prompt length and batch.

For each declared prompt length P and batch size B: ``warmup`` untimed runs of that shape,
then ``repetitions`` timed ones. One run prefills B prompts of P tokens (different token
windows of a fixed text, so nothing can be served from another sequence's cache), then
generates ``gen_tokens`` tokens per sequence greedily, EOS ignored. Figures are aggregate
over the batch:

- ``prefill_tps_pP_bB`` = B·P / prefill seconds (the first token's logits included),
- ``decode_tps_pP_bB`` = B·gen_tokens / decode seconds,

each as the median of the repetitions with ``_min``, ``_max``, ``_std`` (sample standard
deviation, as llama-bench's ±) and ``_mean``.

Batch 1 runs on every runtime (``Session.greedy_decode``). Batch > 1 needs the session hook
``greedy_decode_batch(prompts, n_tokens) -> {prefill_seconds, decode_seconds}`` (prompts of
equal length, all sequences advanced together, EOS ignored); sessions without it are skipped
for B > 1 and the skipped shapes are listed in the probe notes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.probes import Probe, ProbeContext, record_machine
from harness.probes.timing import loadavg, prompt_ids, shape_key, stat_names, with_stats


class ThroughputParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: list[int] = Field(default_factory=lambda: [512], min_length=1)
    batch_sizes: list[int] = Field(default_factory=lambda: [1], min_length=1)
    gen_tokens: int = Field(128, ge=1)
    repetitions: int = Field(5, ge=1, description="timed runs per shape (llama-bench: 5)")
    warmup: int = Field(1, ge=0, description="untimed runs per shape before the timed ones")

    @field_validator("prompt_tokens", "batch_sizes")
    @classmethod
    def _positive_unique(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("every value must be >= 1")
        return sorted(set(v))


def supports_batch(session) -> bool:
    return callable(getattr(session, "greedy_decode_batch", None))


def run_shape(session, prompt_tokens: int, batch: int, gen_tokens: int, repetitions: int,
              warmup: int) -> dict[str, list[float]]:
    """Timed runs of one shape: {"prefill_tps": [...], "decode_tps": [...]} (aggregate tokens/s)."""
    if batch == 1:
        prompts = [prompt_ids(session, prompt_tokens)]

        def once(n):
            return session.greedy_decode(prompts[0], n)
    else:
        prompts = [prompt_ids(session, prompt_tokens, offset=7 * i) for i in range(batch)]

        def once(n):
            return session.greedy_decode_batch(prompts, n)
    # warm-up runs are the full shape: on CUDA the first pass over each new KV-cache length
    # is ~3x slower (measured on an H100, transformers 5.17), so a shorter warm-up leaves that
    # cost in the first timed repetition
    for _ in range(warmup):
        once(gen_tokens)
    prefill, decode = [], []
    for _ in range(repetitions):
        t = once(gen_tokens)
        if t["prefill_seconds"] <= 0 or t["decode_seconds"] <= 0:
            raise RuntimeError(f"non-positive timing from the runtime: {t}")
        prefill.append(batch * prompt_tokens / t["prefill_seconds"])
        decode.append(batch * gen_tokens / t["decode_seconds"])
    return {"prefill_tps": prefill, "decode_tps": decode}


class ThroughputProbe(Probe):
    name = "throughput"
    Params = ThroughputParams
    # the names for the default parameters; metric_names(params) gives a plan's own
    metrics = {n: "lower" if n.endswith("_std") else "higher" for kind in ("prefill_tps", "decode_tps")
               for n in stat_names(shape_key(kind, 512, 1))}
    order = 40

    @classmethod
    def direction_of(cls, metric: str) -> str | None:
        return "lower" if metric.endswith("_std") else "higher"

    @classmethod
    def metric_names(cls, params: ThroughputParams) -> list[str]:
        return [n for p in params.prompt_tokens for b in params.batch_sizes
                for kind in ("prefill_tps", "decode_tps") for n in stat_names(shape_key(kind, p, b))]

    def context_length(self, params: ThroughputParams) -> int:
        return max(params.prompt_tokens) + params.gen_tokens + 1

    def measure(self, ctx: ProbeContext, params: ThroughputParams) -> dict[str, float]:
        record_machine(ctx)
        session = ctx.session
        out: dict[str, float] = {}
        skipped, raw = [], {}
        before = loadavg()
        for p in params.prompt_tokens:
            for b in params.batch_sizes:
                if b > 1 and not supports_batch(session):
                    skipped.append(f"p{p}_b{b}")
                    continue
                runs = run_shape(session, p, b, params.gen_tokens, params.repetitions, params.warmup)
                for kind, values in runs.items():
                    key = shape_key(kind, p, b)
                    raw[key] = values
                    out.update(with_stats(key, values))
        ctx.notes["throughput"] = {
            "runs": raw, "skipped_shapes": skipped, "gen_tokens": params.gen_tokens,
            "repetitions": params.repetitions, "warmup": params.warmup,
            "loadavg_before": before, "loadavg_after": loadavg(),
            "batch_hook": supports_batch(session),
            # [tokens per sequence, batch, prompt tokens] of every shape run: the planner's workload
            "shapes": [[p + params.gen_tokens + 1, b, p] for p in params.prompt_tokens for b in params.batch_sizes
                       if f"p{p}_b{b}" not in skipped],
        }
        if skipped:
            ctx.notes["throughput"]["why_skipped"] = (
                "batch > 1 needs Session.greedy_decode_batch, which this runtime's session lacks")
        return out
