"""HumanEval pass@1 (metric ``pass_at_1``, greedy), scored by lm-eval; completions run only in harness.sandbox."""

from __future__ import annotations

from pydantic import Field

from harness.suites.lm_eval import LmEvalParams, LmEvalSuite


class HumanEvalParams(LmEvalParams):
    limit: int | None = Field(None, ge=1, description="problems scored; null: all 164")
    max_gen_toks: int = Field(384, ge=16)


class HumanEvalSuite(LmEvalSuite):
    name = "humaneval"
    Params = HumanEvalParams
    version = "1"
    task_yaml = "humaneval.yaml"
    # quantgate's name (MLflow metric names admit no "@")
    metrics = {"pass_at_1": "higher"}
    metric_map = {("pass@1", "none"): "pass_at_1"}
