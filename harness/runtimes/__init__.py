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
        "vllm": "harness.runtimes.vllm:VllmRuntime",
        "fake": "harness.runtimes.fake:FakeRuntime",
        "openai-server": "harness.runtimes.openai_server:OpenAIServerRuntime",
    },
    base="harness.runtimes:Runtime",
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Session:
    """A loaded model. Token ids are the runtime's own (all runtimes of one baseline share the
    tokenizer: suites fix items as token ids from the baseline's session).

    Scoring and generation are greedy and deterministic. The ``*_many`` methods take a whole
    batch of requests so that runtimes that batch (vLLM) can; the defaults loop.
    """

    #: token ids that end a generation (EOS / end-of-turn)
    stop_token_ids: tuple[int, ...] = ()
    #: the longest sequence (prompt + generation) this session holds
    n_ctx: int = 2048

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def detokenize(self, ids: list[int]) -> bytes:
        raise NotImplementedError

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        """Log-probabilities over the vocabulary after each prefix: shape (len(ids) - 1, vocab),
        row i predicting ids[i + 1] (float64)."""
        raise NotImplementedError

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        """log p(ids[i] | ids[:i]) for i = 1 .. len(ids) - 1 (float64, length len(ids) - 1)."""
        logp = self.token_distributions(ids)
        return logp[np.arange(len(ids) - 1), ids[1:]]

    def continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[np.ndarray, bool]:
        """log p of each continuation token given the context and the continuation before it,
        and whether every continuation token is the greedy (argmax) choice."""
        ids = list(context) + list(continuation)
        logp = self.token_distributions(ids)[len(context) - 1:]
        cont = np.asarray(continuation)
        return logp[np.arange(len(cont)), cont], bool((logp.argmax(1) == cont).all())

    def next_token_distribution(self, context: list[int]) -> np.ndarray:
        """Log-probabilities over the vocabulary of the token after ``context``."""
        # a causal model's row for the last context position ignores the appended token
        return self.token_distributions(list(context) + [0])[-1]

    def score_many(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, is-greedy) per (context, continuation) request."""
        out = []
        for context, continuation in requests:
            lp, greedy = self.continuation_logprobs(context, continuation)
            out.append((float(lp.sum()), greedy))
        return out

    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        """Greedy generation from ``prompt``; ends at a stop token id, after ``max_new_tokens``,
        or at the first occurrence of any ``stop`` string (the text returned excludes it)."""
        raise NotImplementedError

    def generate_many(self, prompts: list[list[int]], max_new_tokens: int, stop: list[str]) -> list[str]:
        return [self.generate(p, max_new_tokens, stop) for p in prompts]

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages``, with the assistant turn opened."""
        raise NotImplementedError

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, float]:
        """Prefill ``prompt`` then generate exactly ``n_tokens`` greedily (EOS ignored).
        Returns ``prefill_seconds`` and ``decode_seconds``."""
        raise NotImplementedError

    def endpoint(self) -> str | None:
        """The OpenAI-compatible base URL a served session answers on (e.g.
        ``http://127.0.0.1:8123/v1``: the serving probe sends its requests there); None for a
        session that runs in process."""
        return None

    def info(self) -> dict[str, Any]:
        """How the model was loaded (recorded with results), e.g. weights decompressed at load."""
        return {}

    def reset(self) -> None:
        """Forget what earlier requests left behind (a reused KV-cache prefix), so what follows
        scores exactly as in a fresh session: evaluation resets before each chunk of items, which
        makes an item's scores independent of whether the run was resumed mid-suite."""

    def close(self) -> None:
        pass


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Runtime:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: artifact formats this runtime loads
    accepts: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    kind_label: ClassVar[str] = "runtime"
    #: params that change speed but not scores: left out of the result cache key
    speed_only_params: ClassVar[tuple[str, ...]] = ()
    #: what sessions are loaded for: "evaluate" (suites score them) or "probe" (speed and memory
    #: only; the probe worker sets it on its instance): a runtime may skip what only scoring needs
    purpose: str = "evaluate"
    #: bumped when a fix changes this runtime's scores for the same artifact, params and library
    #: versions: from 2 on it is part of the result cache key, so results of the old scoring are
    #: not reused
    scoring_revision: ClassVar[int] = 1
    #: the libraries load() imports: the probe worker imports them before it reads the
    #: process's memory, so that "model memory" (peak minus that) excludes the libraries
    import_modules: ClassVar[tuple[str, ...]] = ()

    #: a ``baseline.model`` prefix this runtime's own models use (e.g. ``fake:``), or None. Such a
    #: model is not a file: the hooks below check it, key it and write it into the store
    #: (``harness.baseline.derive``, ``harness.validate``), found through ``runtime_owning``.
    model_prefix: ClassVar[str | None] = None
    #: the file a ``write_baseline`` folder's model is in
    baseline_entry: ClassVar[str] = ""

    def check(self, params: BaseModel) -> list[tuple[tuple, str]]:
        """Plan-level problems with ``params`` found before a run, as (key path under
        ``params``, why): a server URL that does not answer, a launcher that is not installed."""
        return []

    def plan_notes(self, params: BaseModel, suites: list[tuple[str, str]]) -> list[str]:
        """Notes for ``quantgate validate`` about the plan's suites ((id, suite name) pairs) on
        this runtime, e.g. which of them a server cannot score."""
        return []

    def check_baseline(self, model: str) -> str | None:
        """Why ``model`` (with this runtime's prefix) names no model, or None."""
        return None

    def baseline_key(self, model: str) -> str:
        """The store key of ``model``: a hash of what it is made from."""
        raise NotImplementedError

    def write_baseline(self, model: str, folder: Path) -> dict[str, Any]:
        """Write ``model`` to ``folder / baseline_entry``; what to record in its manifest."""
        raise NotImplementedError

    def unavailable(self) -> str | None:
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def load(self, path: Path, params: BaseModel, n_ctx: int) -> Session:
        raise NotImplementedError

    def describe(self, params: BaseModel) -> dict[str, Any]:
        """Runtime settings recorded with results (enter the result cache key)."""
        return params.model_dump()

    def resources(self, params: BaseModel) -> dict[str, float]:
        """What one loaded session occupies, for an executor that places candidates (Ray):
        ``{"cpus": threads, "gpus": devices}``. The default reads the usual param names:
        ``n_threads``/``threads`` (unset: 1, the session may then use more) and a ``device``
        starting with "cuda" (one GPU)."""
        d = params.model_dump()
        threads = d.get("n_threads") or d.get("threads") or 1
        gpus = 1.0 if str(d.get("device") or "").startswith("cuda") else 0.0
        return {"cpus": float(threads), "gpus": gpus}

    def result_identity(self, params: BaseModel) -> dict[str, Any]:
        d = params.model_dump()
        for k in self.speed_only_params:
            d.pop(k, None)
        if self.scoring_revision > 1:
            d["scoring_revision"] = self.scoring_revision
        return d

    def kv_cache_dtype(self, params: BaseModel) -> str | None:
        """The KV cache's element type these params ask for, in the memory-fit planner's names
        (``harness.planner.kv_dtype_bytes``: "q8_0", "fp8", "q8_0/f16" for K and V apart), or
        None for the runtime's default cache."""
        return None


def runtime_owning(model: str) -> Runtime | None:
    """The runtime whose ``model_prefix`` starts ``model`` (``fake:tiny`` -> the fake runtime),
    or None for a file, a folder or the embedded model."""
    head, sep, _ = model.partition(":")
    if not sep or head in ("embedded", "hub") or "/" in head:
        return None
    for name in REGISTRY.names():
        try:
            cls = REGISTRY.get(name)
        except Exception:  # an adapter that cannot be imported here owns no prefix we can use
            continue
        if cls.model_prefix and model.startswith(cls.model_prefix):
            return cls()
    return None
