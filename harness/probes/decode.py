"""Decode (generation) and prefill throughput at one prompt length, batch 1: the plans'
original speed probe, kept with its metric names. It measures exactly as ``throughput`` does
for one shape (``harness.probes.throughput.run_shape``); ``throughput`` adds prompt-length and
batch sweeps and the flat per-shape names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from harness.probes import Probe, ProbeContext, record_machine
from harness.probes.throughput import run_shape
from harness.probes.timing import PROMPT, loadavg, with_stats

__all__ = ["DecodeParams", "DecodeProbe", "PROMPT"]


class DecodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(64, ge=1)
    gen_tokens: int = Field(64, ge=1)
    repetitions: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)


class DecodeProbe(Probe):
    name = "decode"
    Params = DecodeParams
    metrics = {
        "tokens_per_s": "higher",
        "tokens_per_s_min": "higher",
        "tokens_per_s_max": "higher",
        "tokens_per_s_std": "lower",
        "tokens_per_s_mean": "higher",
        "prefill_tokens_per_s": "higher",
        "prefill_tokens_per_s_min": "higher",
        "prefill_tokens_per_s_max": "higher",
        "prefill_tokens_per_s_std": "lower",
        "prefill_tokens_per_s_mean": "higher",
    }
    order = 40

    def context_length(self, params: DecodeParams) -> int:
        return params.prompt_tokens + params.gen_tokens + 1

    def measure(self, ctx: ProbeContext, params: DecodeParams) -> dict[str, float]:
        record_machine(ctx)
        before = loadavg()
        runs = run_shape(ctx.session, params.prompt_tokens, 1, params.gen_tokens,
                         params.repetitions, params.warmup)
        ctx.notes["decode"] = {"runs": runs, "loadavg_before": before, "loadavg_after": loadavg()}
        return {**with_stats("tokens_per_s", runs["decode_tps"]),
                **with_stats("prefill_tokens_per_s", runs["prefill_tps"])}
