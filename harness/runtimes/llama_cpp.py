"""llama.cpp in process through llama-cpp-python.

Scoring uses ``Llama.eval`` + ``scores`` (logits for every position), which
matches llama.cpp's own perplexity tool; the OpenAI-compatible server shifts
echoed log-probs by one token on models without BOS, so it is not used.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import MissingDependency
from harness.registry import package_missing, package_version
from harness.runtimes import Runtime, Session, cut_at_stop


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: the KV cache types llama.cpp accepts (common/arg.cpp ``kv_cache_types``, its tools'
#: ``--cache-type-k/-v``) and their ggml type ids (ggml.h ``enum ggml_type``; llama-cpp-python
#: names most of them ``llama_cpp.GGML_TYPE_*``, not BF16)
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20,
                  "q5_0": 6, "q5_1": 7}
KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
#: block-quantized cache types: llama.cpp refuses a V cache of these without flash attention
QUANTIZED_KV = frozenset({"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"})


def _ggml_type(llama_cpp, name: str) -> int:
    return int(getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", KV_CACHE_TYPES[name]))


class LlamaCppParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_threads: int | None = Field(None, ge=1, description="default: the CPUs this process may use")
    n_gpu_layers: Annotated[int, Field(ge=-1)] | Literal["auto"] = Field(0, description=(
        "layers on the GPU (llama.cpp's -ngl, the output layer counted; -1: every layer; needs a GPU build); "
        "auto: as many as the memory-fit planner fits in gpu_budget_gib, resolved at load"))
    gpu_budget_gib: float | None = Field(None, gt=0, description=(
        "GPU memory (GiB) n_gpu_layers: auto is planned against: weights, KV cache and runtime reserve"))
    n_batch: int = Field(512, ge=1)
    seed: int = 0
    flash_attn: Literal["auto", "on", "off"] = Field("auto", description=(
        "flash attention; auto (the default of llama.cpp's own tools: on where the device supports it, "
        "which includes the CPU). llama-cpp-python's Llama() alone defaults to off"))
    type_k: KvCacheType = Field("f16", description="K cache type (llama.cpp's --cache-type-k)")
    type_v: KvCacheType = Field("f16", description=(
        "V cache type (--cache-type-v); a quantized one (q8_0, q4_0, ...) needs flash attention"))

    @model_validator(mode="after")
    def _quantized_v_needs_flash_attn(self):
        if self.type_v in QUANTIZED_KV and self.flash_attn == "off":
            raise ValueError(f"type_v {self.type_v!r} (a quantized V cache) needs flash attention, which "
                             "llama.cpp requires for it: set flash_attn to 'on' or 'auto', or type_v to 'f16'")
        return self


def _gpu_layers_of(n_gpu_layers: int, n_layers: int | None) -> tuple[int | None, bool]:
    """(repeating layers on the GPU, output layer on the GPU) for llama.cpp's -ngl: the vendored
    llama.cpp puts layers from ``n_layer + 1 - ngl`` up on the GPU, the output layer counting
    as layer ``n_layer``, so ``ngl`` k >= 1 is the output layer and the last k - 1 layers."""
    if n_gpu_layers == 0:
        return 0, False
    if n_layers is None:
        return None, True
    if n_gpu_layers < 0:
        return n_layers, True
    return max(0, min(n_gpu_layers, n_layers + 1) - 1), True


def resolve_gpu_layers(path: str | Path, params: LlamaCppParams, n_ctx: int, gpu_offload: bool) -> dict:
    """The ``n_gpu_layers`` llama.cpp gets, and what the session records about it.

    ``auto``: the memory-fit planner's offload plan (``harness.planner.plan_memory``'s
    ``offload``) for this file at context ``n_ctx``, batch 1, KV cache at the wider of
    ``type_k`` / ``type_v``, within ``gpu_budget_gib``; flash attention counted off unless it is
    ``on`` (the larger compute buffer). On a build without GPU offload ``auto`` resolves to 0,
    with a note. Returns ``n_gpu_layers_resolved`` and, for ``auto``, ``gpu_budget_gib``,
    ``gpu_layers``, ``n_layers``, the planner's figures and an ``offload_note``."""
    if params.n_gpu_layers != "auto":
        return {"n_gpu_layers_resolved": params.n_gpu_layers if gpu_offload else 0}
    if params.gpu_budget_gib is None:
        raise ValueError("llama-cpp: n_gpu_layers: auto needs gpu_budget_gib, the GPU memory (GiB) to plan against")
    from harness import planner

    kv = max((params.type_k, params.type_v), key=planner.kv_dtype_bytes)
    plan = planner.plan_memory(path, None, context=n_ctx, budget_gib=params.gpu_budget_gib, kv_dtype=kv,
                               runtime="llama-cpp", flash_attn=params.flash_attn == "on")
    off = plan["offload"]
    k, n, budget = off["gpu_layers"], off["n_layers"], params.gpu_budget_gib
    planned = (f"{k} of {n} layers" + (" and the output layer" if off["output_on_gpu"] else "")
               + f" fit {budget:g} GiB at n_ctx {n_ctx} (KV {kv}, weights {plan['weights']['gib']:.3f} GiB, "
               f"runtime reserve {plan['reserve']['gib']:.3f} GiB)")
    out = {"n_gpu_layers_requested": "auto", "gpu_budget_gib": budget, "n_layers": n,
           "planned_n_gpu_layers": off["n_gpu_layers"], "planned_gpu_layers": k,
           "planned_gpu_gib": round(off["gpu_bytes"] / planner.GIB, 4),
           "planned_host_gib": round(off["host_bytes"] / planner.GIB, 4)}
    if gpu_offload:
        return {**out, "n_gpu_layers_resolved": off["n_gpu_layers"], "gpu_layers": k,
                "offload_note": f"auto: planner: {planned}"}
    return {**out, "n_gpu_layers_resolved": 0, "gpu_layers": 0,
            "offload_note": f"auto resolved to 0: this llama.cpp build has no GPU offload (on a GPU build: {planned})"}


def _auto_flash_attn_context(llama_cpp, llm) -> str:
    """Give ``llm`` a context made with flash attention AUTO, as llama.cpp's tools make theirs
    (llama-cpp-python's ``Llama(flash_attn=...)`` takes only on/off), and return what llama.cpp
    resolved it to: it says so only in its log, which is captured while the context is made."""
    from llama_cpp import _internals, _logger

    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):  # noqa: ARG001 - the C callback's signature
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    old, llm._ctx, llm.context_params = llm._ctx, ctx, params
    old.close()  # the model's exit stack closes the new one with the model
    log = "".join(lines)
    if "Flash Attention enabled" in log:
        return "on"
    if "Flash Attention not supported" in log:
        return "off"
    return "auto (llama.cpp did not log the outcome)"


def _quantized_v_context(llama_cpp, llm, type_v: str, resolved: str) -> str:
    """Under flash attention AUTO, a quantized V cache: ``llm``'s context was made (and AUTO
    resolved) with an f16 V cache; llama.cpp allows a quantized one only with flash attention
    on, so where AUTO resolved to off this refuses, and otherwise gives ``llm`` a context with
    the V cache type and flash attention ON. Returns what flash attention is."""
    from llama_cpp import _internals

    if resolved == "off":
        raise RuntimeError(f"llama-cpp: type_v {type_v} (a quantized V cache) needs flash attention, and "
                           "flash_attn auto resolved to off on this device; set flash_attn: on to force it, "
                           "or type_v: f16")
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    params.type_v = _ggml_type(llama_cpp, type_v)
    try:
        ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
    except ValueError as exc:
        raise RuntimeError(f"llama-cpp: no context with V cache {type_v} and flash attention on ({exc}); "
                           "llama.cpp's log names the cause") from None
    old, llm._ctx, llm.context_params = llm._ctx, ctx, params
    old.close()
    return "on" if resolved == "on" else "on (forced for the quantized V cache; auto's outcome was not logged)"


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64, copy=False)
    m = logits.max(axis=1, keepdims=True)
    return logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))


def _argmax(logits_ptr, n_vocab: int) -> int:
    """The greedy token from one row of llama.cpp's output logits (a C float pointer)."""
    return int(np.argmax(np.ctypeslib.as_array(logits_ptr, shape=(n_vocab,))))


def _fill(batch, tokens: list[tuple[int, int, int, bool]]) -> None:
    """Fill a ``llama_batch`` with (token, position, sequence id, wants logits) rows."""
    batch.n_tokens = len(tokens)
    for j, (tok, pos, seq, want) in enumerate(tokens):
        batch.token[j] = tok
        batch.pos[j] = pos
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = seq
        batch.logits[j] = want


class LlamaCppSession(Session):
    def __init__(self, llm, info: dict | None = None):
        self.llm = llm
        self._info = dict(info or {})
        self.n_ctx = llm.n_ctx()
        self.stop_token_ids = tuple(t for t in {llm.token_eos()} if t >= 0)

    def info(self) -> dict:
        return dict(self._info)

    def tokenize(self, text: str) -> list[int]:
        # special=True: control tokens written in the text ("<|im_start|>" of a rendered chat
        # prompt) become their one token, as a Hugging Face tokenizer parses them; with False
        # they were spelled out as plain text and chat suites scored a prompt the model never saw
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

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

    def reset(self) -> None:
        # a reused prefix is evaluated in other batches than a fresh one, which moves log-probs
        # (up to 0.36 nats on Q8_0 MMLU items): start every chunk of items from an empty cache
        self.llm.reset()

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
        """Timed greedy generation, EOS ignored (the speed probes). The prefill computes the last
        position's logits only, as a user's ``Llama(logits_all=False)`` does: the session loads
        with ``logits_all=True`` for scoring, and copying every prompt position's logits cost
        18% of prefill speed on the embedded model (benchmarks/probes.py). ``scores`` rows are
        not written, so the KV cache is dropped afterwards (``_feed`` must not reuse it)."""
        import llama_cpp

        llm = self.llm
        llm.reset()
        saved, llm._logits_all = llm._logits_all, False
        n_vocab = llm.n_vocab()
        try:
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            tokens = []
            for _ in range(n_tokens):
                tokens.append(_argmax(llama_cpp.llama_get_logits_ith(llm.ctx, -1), n_vocab))
                llm.eval(tokens[-1:])
            t2 = time.perf_counter()
        finally:
            llm._logits_all = saved
            llm.reset()
        return {"prefill_seconds": t1 - t0, "decode_seconds": t2 - t1, "tokens": [tokens]}

    def timed_prefill(self, context: list[int], prompt: list[int]) -> float:
        """Seconds to process ``prompt`` after ``context`` is already in the KV cache (llama-bench's
        ``pp<N>@d<D>``), computing the last position's logits only, as ``greedy_decode`` does."""
        llm = self.llm
        llm.reset()
        saved, llm._logits_all = llm._logits_all, False
        try:
            if context:
                llm.eval(context)
            t0 = time.perf_counter()
            llm.eval(prompt)
            return time.perf_counter() - t0
        finally:
            llm._logits_all = saved
            llm.reset()

    def greedy_decode_batch(self, prompts: list[list[int]], n_tokens: int) -> dict[str, float]:
        """``len(prompts)`` sequences decoded together, as llama.cpp's batched-bench does: one
        context with a sequence id per prompt; the prefill sends every prompt token (chunks of
        ``n_batch``), then each step decodes one token of every sequence in one batch. Greedy,
        EOS ignored. The context is made for the shape and kept for the next call of that shape.
        Returns the seconds and ``tokens``: the ``n_tokens`` tokens fed to each sequence."""
        llm = self.llm
        b = len(prompts)
        longest = max(map(len, prompts))
        ctx, batch = self._batch_context(b, longest + n_tokens + 1)
        ctx.kv_cache_clear()
        n_vocab = llm.n_vocab()
        n_batch = batch._n_tokens

        def argmax_at(i: int) -> int:
            return _argmax(ctx.get_logits_ith(i), n_vocab)

        flat = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
        last = [0] * b
        t0 = time.perf_counter()
        for start in range(0, len(flat), n_batch):
            chunk = flat[start: start + n_batch]
            _fill(batch.batch, chunk)
            ctx.decode(batch)
            for j, (_, _, seq, want) in enumerate(chunk):
                if want:
                    last[seq] = argmax_at(j)
        t1 = time.perf_counter()
        tokens: list[list[int]] = [[] for _ in range(b)]
        for step in range(n_tokens):
            _fill(batch.batch, [(last[s], len(prompts[s]) + step, s, True) for s in range(b)])
            for s in range(b):
                tokens[s].append(last[s])
            ctx.decode(batch)
            last = [argmax_at(s) for s in range(b)]
        t2 = time.perf_counter()
        return {"prefill_seconds": t1 - t0, "decode_seconds": t2 - t1, "tokens": tokens}

    def timed_requests(self, prompts: list[list[int]], n_tokens: int, concurrency: int) -> list[dict[str, float]]:
        """Requests served as llama.cpp's server serves parallel slots: at most ``concurrency``
        sequences share one context, and every ``llama_decode`` carries one token of each
        decoding request plus prompt chunks of newly admitted ones (a request takes the first
        free slot, in order). Each request is timed from its admission: TTFT when its first
        token's logits come back, e2e after ``n_tokens`` more tokens (greedy, EOS ignored).
        Returns per request ``ttft_seconds``, ``e2e_seconds`` and ``tokens``."""
        llm = self.llm
        n_slots = max(1, min(concurrency, len(prompts)))
        ctx, batch = self._batch_context(n_slots, max(map(len, prompts)) + n_tokens + 1)
        ctx.kv_cache_clear()
        n_vocab, n_batch = llm.n_vocab(), batch._n_tokens
        pending = list(range(len(prompts)))
        free = list(range(n_slots))
        active: dict[int, dict] = {}  # slot -> request state
        out: list[dict | None] = [None] * len(prompts)
        while pending or active:
            while pending and free:  # admit
                slot, r = free.pop(0), pending.pop(0)
                active[slot] = {"req": r, "fed": 0, "start": time.perf_counter(), "tokens": [], "last": None}
            rows: list[tuple[int, int, int, bool]] = []
            for slot, st in active.items():  # one token of every decoding request
                if st["last"] is not None:
                    rows.append((st["last"], len(prompts[st["req"]]) + len(st["tokens"]) - 1, slot, True))
            for slot, st in active.items():  # prompt chunks in the room left
                prompt = prompts[st["req"]]
                while st["fed"] < len(prompt) and len(rows) < n_batch:
                    rows.append((prompt[st["fed"]], st["fed"], slot, st["fed"] == len(prompt) - 1))
                    st["fed"] += 1
            _fill(batch.batch, rows)
            ctx.decode(batch)
            now = time.perf_counter()
            for j, (_, _, slot, want) in enumerate(rows):
                if not want:
                    continue
                st = active[slot]
                token = _argmax(ctx.get_logits_ith(j), n_vocab)
                if st["last"] is None:
                    st["ttft"] = now - st["start"]
                st["tokens"].append(token)
                st["last"] = token
                if len(st["tokens"]) > n_tokens:  # the first token + n_tokens more
                    out[st["req"]] = {"ttft_seconds": st["ttft"], "e2e_seconds": now - st["start"],
                                      "tokens": st["tokens"][:n_tokens]}
                    ctx.kv_cache_seq_rm(slot, -1, -1)
                    del active[slot]
                    free.append(slot)
            free.sort()
        return out  # type: ignore[return-value]

    def _batch_context(self, n_seq: int, per_seq: int):
        from llama_cpp import _internals

        per_seq = -(-per_seq // 256) * 256  # llama.cpp pads n_ctx to 256 and splits it per sequence
        key = (n_seq, per_seq)
        if getattr(self, "_batch_key", None) != key:
            self._close_batch_context()
            llm = self.llm
            params = type(llm.context_params).from_buffer_copy(llm.context_params)
            params.n_seq_max = n_seq
            params.n_ctx = n_seq * per_seq
            params.kv_unified = False  # each sequence its own cache: they share no prefix
            params.n_batch = max(n_seq, min(n_seq * per_seq, 2048))
            params.n_ubatch = min(params.n_batch, max(llm.context_params.n_ubatch, n_seq))
            ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
            batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
            self._batch_ctx, self._batch_key = (ctx, batch), key
        return self._batch_ctx

    def _close_batch_context(self) -> None:
        if getattr(self, "_batch_ctx", None) is not None:
            ctx, batch = self._batch_ctx
            batch.close()
            ctx.close()
        self._batch_ctx, self._batch_key = None, None

    def close(self) -> None:
        self._close_batch_context()
        self.llm.close()


class LlamaCppRuntime(Runtime):
    name = "llama-cpp"
    Params = LlamaCppParams
    accepts = ("gguf",)
    extra = "llamacpp"
    speed_only_params = ("n_threads",)
    #: 2: control tokens in text parsed (chat prompts), as Hugging Face tokenizers do
    scoring_revision = 2
    import_modules = ("llama_cpp",)

    def resources(self, params: LlamaCppParams) -> dict[str, float]:
        # any offloaded layer puts the model on one GPU (a CUDA build uses the first visible one)
        return {"cpus": float(params.n_threads or 1), "gpus": 1.0 if params.n_gpu_layers != 0 else 0.0}

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
        from harness.gguf_check import check_gguf

        # a truncated or foreign file is named with its cause, not llama.cpp's "failed to load"
        check_gguf(path)
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        layers = resolve_gpu_layers(path, params, n_ctx, offload)  # n_gpu_layers: auto -> the planner's count
        quant_v_auto = params.type_v in QUANTIZED_KV and params.flash_attn == "auto"
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=min(params.n_batch, n_ctx),
            n_ubatch=min(params.n_batch, n_ctx),
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=layers["n_gpu_layers_resolved"],
            logits_all=True,
            seed=params.seed,
            flash_attn=params.flash_attn == "on",
            type_k=_ggml_type(llama_cpp, params.type_k),
            # under auto a quantized V cache waits until flash attention has resolved (below)
            type_v=_ggml_type(llama_cpp, "f16" if quant_v_auto else params.type_v),
            verbose=False,
        )
        flash_attn = _auto_flash_attn_context(llama_cpp, llm) if params.flash_attn == "auto" else params.flash_attn
        kv_cache = {"type_k": params.type_k, "type_v": params.type_v}
        if quant_v_auto:
            flash_attn = _quantized_v_context(llama_cpp, llm, params.type_v, flash_attn)
            kv_cache["note"] = "a quantized V cache needs flash attention: the context was made with it on"
        # where the weights run: the probes' roofline and the planner's comparison read it
        ngl = layers["n_gpu_layers_resolved"]
        on_gpu = offload and ngl != 0
        n_layers = int(llm.metadata.get(f"{llm.metadata.get('general.architecture', 'llama')}.block_count", 0)) or None
        gpu_layers, output_on_gpu = _gpu_layers_of(ngl, n_layers)
        return LlamaCppSession(llm, {
            "device": "cuda" if on_gpu else "cpu", "gpu_offload_supported": offload,
            **layers, "n_gpu_layers": params.n_gpu_layers, "n_layers": n_layers, "gpu_layers": gpu_layers,
            "flash_attn": {"requested": params.flash_attn, "resolved": flash_attn},
            "kv_cache": kv_cache,
            "weights": "all layers on the GPU" if on_gpu and n_layers and gpu_layers == n_layers and output_on_gpu
            else (f"{gpu_layers} of {n_layers} layers on the GPU" if on_gpu else "CPU")})

    def describe(self, params: LlamaCppParams) -> dict:
        d = params.model_dump()
        d["n_threads"] = params.n_threads or _default_threads()
        return d

    def kv_cache_dtype(self, params: LlamaCppParams) -> str | None:
        if params.type_k == params.type_v == "f16":
            return None
        return params.type_k if params.type_k == params.type_v else f"{params.type_k}/{params.type_v}"
