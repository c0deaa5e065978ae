"""Decode (generation) and prefill throughput, median of repetitions after a warm-up."""

from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field

from harness.probes import Probe, ProbeContext


class DecodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(64, ge=1)
    gen_tokens: int = Field(64, ge=1)
    repetitions: int = Field(3, ge=1)
    warmup: int = Field(1, ge=0)


# A fixed, neutral prompt; repeated to reach prompt_tokens.
PROMPT = (
    "The history of the river valley begins with the first farmers, who settled along its banks "
    "and learned to read the seasons of flood and drought. "
)


class DecodeProbe(Probe):
    name = "decode"
    Params = DecodeParams
    metrics = {
        "tokens_per_s": "higher",
        "tokens_per_s_min": "higher",
        "tokens_per_s_max": "higher",
        "prefill_tokens_per_s": "higher",
    }

    def context_length(self, params: DecodeParams) -> int:
        return params.prompt_tokens + params.gen_tokens + 1

    def measure(self, ctx: ProbeContext, params: DecodeParams) -> dict[str, float]:
        session = ctx.session
        ids = session.tokenize(PROMPT)
        while len(ids) < params.prompt_tokens:
            ids = ids + ids
        prompt = ids[: params.prompt_tokens]
        for _ in range(params.warmup):
            session.greedy_decode(prompt, min(8, params.gen_tokens))
        decode, prefill = [], []
        for _ in range(params.repetitions):
            t = session.greedy_decode(prompt, params.gen_tokens)
            decode.append(params.gen_tokens / t["decode_seconds"])
            prefill.append(params.prompt_tokens / t["prefill_seconds"])
        return {
            "tokens_per_s": statistics.median(decode),
            "tokens_per_s_min": min(decode),
            "tokens_per_s_max": max(decode),
            "prefill_tokens_per_s": statistics.median(prefill),
        }
