"""MMLU (0- or 5-shot), scored by lm-eval: accuracy of the highest-likelihood answer letter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.suites.lm_eval import LmEvalParams, LmEvalSuite


class MmluParams(LmEvalParams):
    num_fewshot: Literal[0, 5] = Field(0, description="examples from the same subject's dev questions")
    limit: int | None = Field(200, ge=1, description="questions scored, stratified over the 57 subjects")


class MmluSuite(LmEvalSuite):
    name = "mmlu"
    Params = MmluParams
    version = "1"
    task_yaml = "mmlu.yaml"
    metrics = {"acc": "higher"}
    metric_map = {("acc", "none"): "acc"}
    stratify_by = "subject"

    def dataset_kwargs(self, params: MmluParams) -> dict:
        return {"source": params.source, "num_fewshot": params.num_fewshot}
