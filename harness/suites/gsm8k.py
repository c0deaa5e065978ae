"""GSM8K (5-shot by default), scored by lm-eval: strict ("#### N") and flexible (last number) match."""

from __future__ import annotations

from pydantic import Field

from harness.suites.lm_eval import LmEvalParams, LmEvalSuite


class Gsm8kParams(LmEvalParams):
    limit: int | None = Field(50, ge=1)
    num_fewshot: int = Field(5, ge=0, le=8)
    max_gen_toks: int = Field(256, ge=16)


class Gsm8kSuite(LmEvalSuite):
    name = "gsm8k"
    Params = Gsm8kParams
    version = "1"
    task_yaml = "gsm8k.yaml"
    metrics = {"exact_match_strict": "higher", "exact_match_flexible": "higher"}
    metric_map = {("exact_match", "strict-match"): "exact_match_strict",
                  ("exact_match", "flexible-extract"): "exact_match_flexible"}
    fewshot_by_lm_eval = True
