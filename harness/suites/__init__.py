"""Suite adapters: one file each, registered by name below.

A suite turns a dataset into items (fixed once, from the baseline's tokenizer,
so every candidate sees identical items), scores items on a session, and
aggregates per-item records into metrics with standard errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

REGISTRY = Registry(
    "suites",
    {
        "perplexity": "harness.suites.perplexity:PerplexitySuite",
        "fidelity": "harness.suites.fidelity:FidelitySuite",
        "mmlu": "harness.suites.mmlu:MmluSuite",
        "gsm8k": "harness.suites.gsm8k:Gsm8kSuite",
        "humaneval": "harness.suites.humaneval:HumanEvalSuite",
        "json-format": "harness.suites.json_format:JsonFormatSuite",
        "long-context": "harness.suites.long_context:LongContextSuite",
    },
    base="harness.suites:Suite",
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Suite:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: bump when items or scoring change: it enters every result's cache key
    version: ClassVar[str] = "1"
    #: metric name -> "lower" or "higher" (which direction is better); None: a count
    metrics: ClassVar[dict[str, str | None]] = {}
    #: fewest items ``score`` is called with while the runner reports progress: a suite with a
    #: fixed cost per call (lm-eval builds its requests over the whole task) takes big chunks
    min_chunk_items: ClassVar[int] = 1

    def unavailable(self) -> str | None:
        """Why this suite cannot run here (a missing library), or None."""
        return None

    def context_length(self, params: BaseModel) -> int:
        """Longest token sequence a session must hold for this suite."""
        return 2048

    def data_identity(self, params: BaseModel) -> dict[str, Any]:
        """What identifies the items' source data (hashes), for the cache key."""
        return {}

    def prepare(self, params: BaseModel, tokenize) -> dict[str, Any]:
        """Build the items: ``{"items": [...], "meta": {...}}``; each item has an ``id``."""
        raise NotImplementedError

    def score(self, session, items: list[dict], params: BaseModel) -> list[dict[str, Any]]:
        """One record per item: ``id``, ``prompt_hash`` and the suite's raw scores."""
        raise NotImplementedError

    def aggregate(self, items: list[dict], records: list[dict], params: BaseModel) -> dict[str, dict]:
        """metric -> {"value": float, "stderr": float | None, "n": int}"""
        raise NotImplementedError
