"""Structured output: parse rate, JSON-Schema-valid rate and field exact match of JSON replies.

The seeds' failure: a quantized model that still chats but emits invalid JSON. Prompts go
through the model's chat template; cases are ``suites/json_format/cases.jsonl`` or a JSONL
file of your own (``cases: PATH``, same fields: id, prompt, schema, expected).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import Field

from harness.suites.lm_eval import LmEvalParams, LmEvalSuite


class JsonFormatParams(LmEvalParams):
    cases: str | None = Field(None, description="a JSONL file of cases; default: the shipped suite")
    limit: int | None = Field(None, ge=1, description="cases scored; null: all")
    max_gen_toks: int = Field(256, ge=16)


class JsonFormatSuite(LmEvalSuite):
    name = "json-format"
    Params = JsonFormatParams
    version = "1"
    task_yaml = "json_format.yaml"
    metrics = {"parsed": "higher", "schema_valid": "higher", "field_match": "higher"}
    metric_map = {(m, "none"): m for m in ("parsed", "schema_valid", "field_match")}
    chat_template = True
    stratify_by = "category"

    def dataset_kwargs(self, params: JsonFormatParams) -> dict:
        return {"cases": str(Path(params.cases).expanduser().resolve()) if params.cases else None}

    def data_identity(self, params: JsonFormatParams) -> dict:
        from harness.resources import shipped_path

        path = (Path(params.cases).expanduser() if params.cases
                else shipped_path("suites") / "json_format" / "cases.jsonl")
        return {**super().data_identity(params),
                "cases_sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None}
