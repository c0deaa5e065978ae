"""llama.cpp in process through llama-cpp-python.

Scoring uses ``Llama.eval`` + ``scores`` (logits for every position), which
matches llama.cpp's own perplexity tool; the OpenAI-compatible server shifts
echoed log-probs by one token on models without BOS, so it is not used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import MissingDependency
from harness.registry import package_missing, package_version
from harness.runtimes import Runtime, Session


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class LlamaCppParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_threads: int | None = Field(None, ge=1, description="default: the CPUs this process may use")
    n_gpu_layers: int = Field(0, ge=-1, description="-1: offload every layer (needs a GPU build)")
    n_batch: int = Field(512, ge=1)
    seed: int = 0


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64, copy=False)
    m = logits.max(axis=1, keepdims=True)
    return logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))


class LlamaCppSession(Session):
    def __init__(self, llm):
        self.llm = llm

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.llm.detokenize(ids)

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        if n > self.llm.n_ctx():
            raise ValueError(f"sequence of {n} tokens exceeds n_ctx={self.llm.n_ctx()}")
        self.llm.reset()
        self.llm.eval(ids)
        return log_softmax_rows(np.asarray(self.llm.scores[: n - 1]))

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, float]:
        llm = self.llm
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        for _ in range(n_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        t2 = time.perf_counter()
        return {"prefill_seconds": t1 - t0, "decode_seconds": t2 - t1}

    def close(self) -> None:
        self.llm.close()


class LlamaCppRuntime(Runtime):
    name = "llama-cpp"
    Params = LlamaCppParams
    accepts = ("gguf",)
    extra = "llamacpp"
    speed_only_params = ("n_threads",)

    def _lib(self):
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependency.of("runtime 'llama-cpp'", "llama-cpp-python", self.extra) from None
        return llama_cpp

    def unavailable(self) -> str | None:
        return package_missing("llama_cpp", f"{self.kind_label} {self.name!r}", "llama-cpp-python", self.extra)

    def versions(self) -> dict[str, str]:
        return {"llama-cpp-python": package_version("llama-cpp-python")}

    def load(self, path: Path, params: LlamaCppParams, n_ctx: int) -> LlamaCppSession:
        llama_cpp = self._lib()
        threads = params.n_threads or _default_threads()
        if not Path(path).is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(params.n_batch, n_ctx),
            n_ubatch=min(params.n_batch, n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=params.n_gpu_layers,
            logits_all=True,
            seed=params.seed,
            verbose=False,
        )
        return LlamaCppSession(llm)

    def describe(self, params: LlamaCppParams) -> dict:
        d = params.model_dump()
        d["n_threads"] = params.n_threads or _default_threads()
        return d
