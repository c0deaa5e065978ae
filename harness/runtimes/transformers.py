"""transformers in process: BF16/FP16/FP32 checkpoints and compressed-tensors artifacts.

Scores with one forward pass per window (log-softmax in float64 at the scored
positions); generation is a greedy loop over the KV cache, EOS ignored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import MissingDependency
from harness.registry import package_missing, package_version
from harness.runtimes import Runtime, Session, cut_at_stop


class TransformersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="compute dtype; float32 is the fast and exact choice on CPU")
    n_threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: torch's choice")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:0', ...")
    trust_remote_code: bool = False
    #: compressed-tensors checkpoints: decompress the weights to dense once at load (true), or
    #: keep them packed and let compressed-tensors decompress on every forward (false)
    dequantize: bool = True
    kv_cache: Literal["none", "quanto-int4", "quanto-int2", "hqq-int8", "hqq-int4", "hqq-int2"] = Field(
        "none", description="transformers' QuantizedCache for generation (backend-bits; quanto needs "
        "optimum-quanto, hqq needs hqq); none: the default dynamic cache. Scoring (one forward per "
        "window) keeps no cache and is unaffected")


#: the package each quantized-cache backend needs (transformers imports it when the cache is made)
KV_CACHE_PACKAGES = {"quanto": ("optimum.quanto", "optimum-quanto"), "hqq": ("hqq", "hqq")}


def kv_cache_unavailable(kv_cache: str) -> str | None:
    """Why the quantized cache ``kv_cache`` cannot be made here (its backend is missing), or None."""
    if kv_cache == "none":
        return None
    module, package = KV_CACHE_PACKAGES[kv_cache.split("-")[0]]
    if package_missing(module, "", package, "") is None:
        return None
    return (f"runtime 'transformers' with kv_cache {kv_cache!r} needs the Python package '{package}', "
            f"which is not installed; install it with: pip install {package}")


def _cache_factory(kv_cache: str, config):
    """A function making a fresh cache for one generation: None (transformers' default dynamic
    cache) or a ``QuantizedCache`` with the backend and bits of ``kv_cache``."""
    if kv_cache == "none":
        return lambda: None
    from transformers import QuantizedCache

    backend, bits = kv_cache.split("-")
    return lambda: QuantizedCache(backend=backend, config=config, nbits=int(bits.removeprefix("int")))


def _quant_method(path: Path) -> str | None:
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    return (json.loads(config.read_text()).get("quantization_config") or {}).get("quant_method")


def _activation_quantization(model) -> str:
    """The input-activation quantization compressed-tensors attached to the model's modules, e.g.
    "float8 dynamic per token", or "" when none (weight-only schemes)."""
    found = set()
    for m in model.modules():
        a = getattr(getattr(m, "quantization_scheme", None), "input_activations", None)
        if a is not None:
            found.add(f"{a.type}{a.num_bits} {'dynamic' if a.dynamic else 'static'} per {a.strategy}")
    return ", ".join(sorted(found))


def _remove_offload(model) -> str:
    """compressed-tensors (0.19) loads a checkpoint with every module's tensors in a CPU offload
    cache that onloads them on each access: ``model.to("cuda")`` then leaves the weights on the
    CPU and every forward copies them to the GPU (the FP8 probes on an H200 took 8x the BF16
    baseline's time). Undo it so the model is plain modules on one device, as deployed."""
    try:
        from compressed_tensors.offload import remove_dispatch
        from compressed_tensors.offload.cache import OffloadCache
    except ImportError:  # older compressed-tensors: no offload caches to undo
        return "none"
    if not any(isinstance(m._parameters, OffloadCache) for m in model.modules()):
        return "none"
    remove_dispatch(model, onload_tensors=True)
    return "compressed-tensors CPU offload removed at load"


class TransformersSession(Session):
    def __init__(self, model, tokenizer, device: str, n_ctx: int, load_info: dict, new_cache=lambda: None):
        self.model = model
        self.new_cache = new_cache
        self.tok = tokenizer
        self.device = device
        self.n_ctx = n_ctx
        self._info = load_info
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_token_ids = tuple(sorted({int(t) for t in [*eos, tokenizer.eos_token_id] if t is not None}))

    def info(self) -> dict:
        return dict(self._info)

    def tokenize(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def detokenize(self, ids: list[int]) -> bytes:
        return self.tok.decode(ids).encode("utf-8")

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.tensor([ids], device=self.device)).logits[0, :-1]
            return torch.log_softmax(logits.double(), dim=-1).cpu().numpy()

    def next_token_distribution(self, context: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.tensor([context], device=self.device)).logits[0, -1]
            return torch.log_softmax(logits.double(), dim=-1).cpu().numpy()

    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        import torch

        out: list[int] = []
        text = ""
        with torch.inference_mode():
            res = self.model(torch.tensor([prompt], device=self.device), past_key_values=self.new_cache(),
                             use_cache=True)
            for _ in range(min(max_new_tokens, self.n_ctx - len(prompt))):
                token = int(res.logits[0, -1].argmax())
                if token in self.stop_token_ids:
                    break
                out.append(token)
                text, stopped = cut_at_stop(self.tok.decode(out), stop)
                if stopped:
                    break
                res = self.model(torch.tensor([[token]], device=self.device),
                                 past_key_values=res.past_key_values, use_cache=True)
        return text

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def greedy_decode(self, prompt: list[int], n_tokens: int) -> dict[str, float]:
        return self.greedy_decode_batch([prompt], n_tokens)

    def greedy_decode_batch(self, prompts: list[list[int]], n_tokens: int,
                            last_logits_only: bool = True) -> dict[str, float]:
        """Prefill equal-length ``prompts`` in one forward pass, then ``n_tokens`` greedy steps of
        the whole batch (EOS ignored), the device synchronized at each boundary. Returns the
        seconds and ``tokens``: the ``n_tokens`` tokens fed to each sequence.
        ``last_logits_only`` (default): the prefill computes the last position's logits only, as
        ``generate()`` does; full logits at batch 4 x 512 tokens would hold 400 MB of float32
        that no deployment allocates."""
        import torch

        if len({len(p) for p in prompts}) != 1:
            raise ValueError("greedy_decode_batch: prompts must have equal length (no padding)")
        sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)
        prefill_kw = {"logits_to_keep": 1} if last_logits_only else {}
        with torch.inference_mode():
            ids = torch.tensor(prompts, device=self.device)
            sync()
            t0 = time.perf_counter()
            out = self.model(ids, past_key_values=self.new_cache(), use_cache=True, **prefill_kw)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            t1 = time.perf_counter()
            fed = []  # kept on the device: reading each token back would sync every step
            for _ in range(n_tokens):
                fed.append(token)
                out = self.model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            sync()
            t2 = time.perf_counter()
        tokens = torch.cat(fed, dim=1).tolist() if fed else [[] for _ in prompts]
        return {"prefill_seconds": t1 - t0, "decode_seconds": t2 - t1, "tokens": tokens}


class TransformersRuntime(Runtime):
    name = "transformers"
    Params = TransformersParams
    accepts = ("hf",)
    extra = "hf"
    speed_only_params = ("n_threads",)
    import_modules = ("torch", "transformers")

    def unavailable(self) -> str | None:
        return package_missing("torch", f"runtime {self.name!r}", "torch", self.extra) or package_missing(
            "transformers", f"runtime {self.name!r}", "transformers", self.extra)

    def versions(self) -> dict[str, str]:
        return {p: package_version(p) for p in ("transformers", "torch", "compressed-tensors")}

    def load(self, path: Path, params: TransformersParams, n_ctx: int) -> TransformersSession:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise MissingDependency.of("runtime 'transformers'", "transformers", self.extra) from None
        if missing := kv_cache_unavailable(params.kv_cache):
            raise RuntimeError(missing)
        if params.n_threads:
            torch.set_num_threads(params.n_threads)
        dtype = params.dtype if params.dtype == "auto" else getattr(torch, params.dtype)
        kwargs = {}
        quant_method = _quant_method(path)
        info = {"quant_method": quant_method, "dtype": params.dtype, "device": params.device,
                "weights": "dense"}
        if quant_method == "compressed-tensors":
            from transformers import CompressedTensorsConfig

            # dequantize=True: decompress once at load, plain dense matmuls afterwards;
            # False: weights stay packed and are decompressed on every forward pass
            kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=params.dequantize)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=params.trust_remote_code, **kwargs)
        if quant_method == "compressed-tensors":
            info["offload"] = _remove_offload(model)
        # compressed-tensors checkpoints are decompressed to dense at load (transformers 5.x);
        # some formats (MXFP4/NVFP4) come back in their storage dtype: cast to the compute dtype.
        if params.dtype != "auto" and params.dequantize:
            model = model.to(dtype)
        model = model.to(params.device)
        model.eval()
        # what the forward pass really runs on: packed integer/FP8 weights (decompressed by
        # compressed-tensors inside every forward) or dense floating-point weights
        stored = {n: p for n, p in model.named_parameters() if n.endswith(("weight", "weight_packed"))}
        packed = sorted({n.rsplit(".", 1)[-1] + ":" + str(p.dtype).replace("torch.", "") for n, p in stored.items()
                         if n.endswith("weight_packed") or not p.dtype.is_floating_point
                         or "float8" in str(p.dtype)})
        info["packed_parameters"] = packed
        if acts := _activation_quantization(model):
            # compressed-tensors keeps its forward wrapper: each Linear's input is quantized and
            # dequantized per call (on an H200 the 135M FP8-dynamic model decoded 8 tok/s vs 50)
            info["activations"] = (f"fake-quantized in every forward ({acts}): the scheme's numerics, "
                                   "emulated; speed is not that of FP8/INT8 kernels")
        info["weights"] = "packed, decompressed on every forward" if packed else (
            "decompressed to dense at load" if quant_method == "compressed-tensors" else "dense")
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=params.trust_remote_code)
        info["kv_cache"] = {"type": params.kv_cache, "applies_to": (
            "generation (incremental decoding) only: scoring runs one forward per window over "
            "unquantized keys and values, with no cache" if params.kv_cache != "none" else "default dynamic cache")}
        return TransformersSession(model, tok, params.device, n_ctx, info,
                                   _cache_factory(params.kv_cache, model.config))
