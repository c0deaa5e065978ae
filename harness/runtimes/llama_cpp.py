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
from harness.runtimes import Runtime, Session, cut_at_stop


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
        self.n_ctx = llm.n_ctx()
        self.stop_token_ids = tuple(t for t in {llm.token_eos()} if t >= 0)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.llm.detokenize(ids)

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        n = len(ids)
        if n > self.n_ctx:
            raise ValueError(f"sequence of {n} tokens exceeds n_ctx={self.n_ctx}")
        # a fresh evaluation (no KV reuse): the figures of the perplexity/fidelity suites do not
        # depend on what was scored before
        self.llm.reset()
        self.llm.eval(ids)
        return log_softmax_rows(np.asarray(self.llm.scores[: n - 1]))

    def _feed(self, ids: list[int]) -> None:
        """Evaluate ``ids``, reusing the KV cache of the longest prefix already evaluated
        (requests sorted by prompt share their context: MMLU's four answers, few-shot prefixes)."""
        if len(ids) > self.n_ctx:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds n_ctx={self.n_ctx}")
        llm = self.llm
        cached = llm.input_ids[: llm.n_tokens]
        common = 0
        for a, b in zip(cached, ids, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)  # always evaluate the last token: fresh logits
        llm.n_tokens = common  # eval() drops the KV cache from here on
        llm.eval(ids[common:])

    def continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[np.ndarray, bool]:
        ids = list(context) + list(continuation)
        self._feed(ids)
        logp = log_softmax_rows(np.asarray(self.llm.scores[len(context) - 1: len(ids) - 1]))
        cont = np.asarray(continuation)
        return logp[np.arange(len(cont)), cont], bool((logp.argmax(1) == cont).all())

    def next_token_distribution(self, context: list[int]) -> np.ndarray:
        self._feed(list(context))
        return log_softmax_rows(np.asarray(self.llm.scores[len(context) - 1: len(context)]))[0]

    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        llm = self.llm
        self._feed(list(prompt))
        out: list[int] = []
        text = ""
        for _ in range(max_new_tokens):
            if llm.n_tokens >= self.n_ctx:
                break
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in self.stop_token_ids:
                break
            out.append(token)
            text = llm.detokenize(out).decode("utf-8", errors="ignore")
            text, stopped = cut_at_stop(text, stop)
            if stopped:
                return text
            llm.eval([token])
        return text

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("this GGUF file has no chat template (tokenizer.chat_template)")
        vocab = lambda key: self.llm.metadata.get(key)  # noqa: E731
        eos_id, bos_id = vocab("tokenizer.ggml.eos_token_id"), vocab("tokenizer.ggml.bos_token_id")
        token = lambda i: self.llm.detokenize([int(i)], special=True).decode("utf-8", "ignore") if i is not None else ""  # noqa: E731
        formatter = Jinja2ChatFormatter(template, eos_token=token(eos_id), bos_token=token(bos_id))
        return formatter(messages=messages).prompt

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
