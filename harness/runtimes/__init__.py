"""Runtime adapters: one file each, registered by name below.

A runtime loads an artifact into a ``Session`` that scores token sequences and
generates; suites and probes talk only to that interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

REGISTRY = Registry(
    "runtimes",
    {
        "llama-cpp": "harness.runtimes.llama_cpp:LlamaCppRuntime",
        "transformers": "harness.runtimes.transformers:TransformersRuntime",
    },
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Session:
    """A loaded model."""

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def detokenize(self, ids: list[int]) -> bytes:
        raise NotImplementedError

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[i] | ids[:i]) for i = 1 .. len(ids) - 1 (float64, length len(ids) - 1)."""
        logp = self.token_distributions(ids)
        return logp[np.arange(len(ids) - 1), ids[1:]]

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        """Log-probabilities over the vocabulary after each prefix: shape (len(ids) - 1, vocab),
        row i predicting ids[i + 1] (float64)."""
        raise NotImplementedError

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, float]:
        """Prefill ``prompt`` then generate exactly ``n_tokens`` greedily (EOS ignored).
        Returns ``prefill_seconds`` and ``decode_seconds``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Runtime:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: artifact formats this runtime loads
    accepts: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    kind_label: ClassVar[str] = "runtime"
    #: params that change speed but not scores: left out of the result cache key
    speed_only_params: ClassVar[tuple[str, ...]] = ()

    def unavailable(self) -> str | None:
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def load(self, path: Path, params: BaseModel, n_ctx: int) -> Session:
        raise NotImplementedError

    def describe(self, params: BaseModel) -> dict[str, Any]:
        """Runtime settings recorded with results (enter the result cache key)."""
        return params.model_dump()

    def result_identity(self, params: BaseModel) -> dict[str, Any]:
        d = params.model_dump()
        for k in self.speed_only_params:
            d.pop(k, None)
        return d
