"""HumanEval pass@1 (metric ``pass_at_1``, greedy), scored by lm-eval.

Completions run only in harness.sandbox: the model's function in a bubblewrap sandbox of its
own, the problem's tests in another that decides the verdict (``harness.scoring.humaneval_check``).
Without bwrap the suite refuses to run unless the plan sets ``sandbox: guard-only``; then the
suite's meta and every record say UNSANDBOXED, and so do summary.md and report.html.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from harness.suites.lm_eval import LmEvalParams, LmEvalSuite


class HumanEvalParams(LmEvalParams):
    limit: int | None = Field(None, ge=1, description="problems scored; null: all 164")
    max_gen_toks: int = Field(384, ge=16)
    sandbox: Literal["bwrap", "guard-only"] = Field(
        "bwrap", description="bwrap: kernel sandbox (required, `apt-get install bubblewrap`); "
                             "guard-only: in-process guard only, results marked UNSANDBOXED")


class HumanEvalSuite(LmEvalSuite):
    name = "humaneval"
    Params = HumanEvalParams
    version = "2"  # 2: verdicts from a separate checker sandbox
    task_yaml = "humaneval.yaml"
    # quantgate's name (MLflow metric names admit no "@")
    metrics = {"pass_at_1": "higher"}
    metric_map = {("pass@1", "none"): "pass_at_1"}

    def unavailable(self) -> str | None:
        from harness.sandbox import bwrap_problem

        why = super().unavailable()
        bwrap = bwrap_problem()
        if bwrap:
            bwrap = f"suite 'humaneval': {bwrap} (or `sandbox: guard-only`, UNSANDBOXED)"
        return "; ".join(w for w in (why, bwrap) if w) or None

    def prepare(self, params: BaseModel, session) -> dict[str, Any]:
        from harness.sandbox import describe_mode, require_sandbox

        require_sandbox(params.sandbox)  # refuse before any generation
        out = super().prepare(params, session)
        out["meta"]["sandbox"] = describe_mode(params.sandbox)
        return out

    def score(self, session, items: list[dict], params: BaseModel) -> list[dict[str, Any]]:
        from harness.sandbox import describe_mode
        from harness.scoring import humaneval_sandbox

        with humaneval_sandbox(params.sandbox) as outcomes:
            records = super().score(session, items, params)
        for rec in records:
            rec["sandbox"] = describe_mode(params.sandbox)
            if rec["id"] in outcomes:
                o = outcomes[rec["id"]]
                rec["check"] = {"status": o["status"], "detail": o["detail"], "seconds": o["seconds"]}
        return records
