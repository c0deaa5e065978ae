"""llm-compressor (``llmcompressor.oneshot``): compressed-tensors checkpoints.

Schemes: GPTQ / AWQ / round-to-nearest W4A16 (int4 weights in groups), RTN W8A16,
FP8 dynamic (E4M3 weights per channel, dynamic per-token activations), INT8 W8A8
with SmoothQuant, and the block-scaled FP4 formats MXFP4 (32-element groups, E8M0
scales) and NVFP4 (16-element groups, E4M3 scales). The baseline's BF16
checkpoint is loaded in float32 (fast and exact on CPU), quantized, cast back to
BF16 for the parts that stay unquantized, and saved compressed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.quantizers import QuantizeContext, Quantizer
from harness.registry import package_missing, package_version

SCHEMES = ("gptq-w4a16", "awq-w4a16", "rtn-w4a16", "rtn-w8a16", "fp8-dynamic", "w8a8-int8", "mxfp4", "nvfp4")
NEEDS_DATA = ("gptq-w4a16", "awq-w4a16", "w8a8-int8")


class LLMCompressorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: Literal[SCHEMES]  # type: ignore[valid-type]
    #: int4 group size (W4A16 schemes); must divide the hidden size (576 on the embedded model: use 64)
    group_size: int = Field(128, ge=8)
    symmetric: bool = True
    #: GPTQ activation ordering: null, "group", "weight" (llm-compressor's actorder)
    act_order: Literal["group", "weight"] | None = None
    #: SmoothQuant migration strength for w8a8-int8
    smoothing_strength: float = Field(0.8, gt=0, lt=1)
    #: GPTQ/W8A8: weight rounding by GPTQ (true) or to nearest (false)
    gptq: bool = True
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    threads: int | None = Field(None, ge=1)


def _int_weights(bits: int, params: LLMCompressorParams, group: bool) -> dict[str, Any]:
    weights: dict[str, Any] = {"num_bits": bits, "type": "int", "symmetric": params.symmetric,
                               "strategy": "group" if group else "channel"}
    if group:
        weights["group_size"] = params.group_size
    if params.act_order:
        weights["actorder"] = params.act_order
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def build_recipe(params: LLMCompressorParams) -> list:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    s, ignore = params.scheme, params.ignore
    if s == "gptq-w4a16":
        return [GPTQModifier(config_groups=_int_weights(4, params, True), ignore=ignore)]
    if s == "rtn-w4a16":
        return [QuantizationModifier(config_groups=_int_weights(4, params, True), ignore=ignore)]
    if s == "rtn-w8a16":
        return [QuantizationModifier(config_groups=_int_weights(8, params, False), ignore=ignore)]
    if s == "awq-w4a16":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(), QuantizationModifier(config_groups=_int_weights(4, params, True), ignore=ignore)]
    if s == "fp8-dynamic":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=ignore)]
    if s == "w8a8-int8":
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        quant = GPTQModifier if params.gptq else QuantizationModifier
        return [SmoothQuantModifier(smoothing_strength=params.smoothing_strength),
                quant(targets="Linear", scheme="W8A8", ignore=ignore)]
    # FP4 weight-only (A16): activations stay in the compute dtype, as on hardware
    # without FP4 matmuls; llm-compressor's W4A4 presets are "MXFP4" / "NVFP4".
    if s == "mxfp4":
        return [QuantizationModifier(targets="Linear", scheme="MXFP4A16", ignore=ignore)]
    if s == "nvfp4":
        return [QuantizationModifier(targets="Linear", scheme="NVFP4A16", ignore=ignore)]
    raise ValueError(s)  # pragma: no cover - the schema admits no other scheme


def _no_pin_memory_without_accelerator() -> None:
    """llm-compressor's AWQ pins cached activations unconditionally; pinning needs an
    accelerator. Without one, make it a no-op (process-local: quantizers run in a worker)."""
    import torch
    from llmcompressor.pipelines import cache

    if not torch.accelerator.is_available():
        cache.IntermediatesCache.pin_memory = lambda self, *a, **k: None


class LLMCompressorQuantizer(Quantizer):
    name = "llm-compressor"
    Params = LLMCompressorParams
    input_format = "hf"
    output_format = "hf"
    extra = "llmcompressor"

    def unavailable(self) -> str | None:
        return package_missing("llmcompressor", f"quantizer {self.name!r}", "llmcompressor", self.extra)

    def versions(self) -> dict[str, str]:
        # "adapter" changes whenever this file's recipe for a scheme changes
        return {"adapter": "2", **{p: package_version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")}}

    def requires_calibration(self, params: LLMCompressorParams) -> bool:
        return params.scheme in NEEDS_DATA

    def quantize(self, ctx: QuantizeContext, params: LLMCompressorParams) -> dict[str, Any]:
        import torch
        from llmcompressor import oneshot
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if params.threads:
            torch.set_num_threads(params.threads)
        _no_pin_memory_without_accelerator()
        tok = AutoTokenizer.from_pretrained(ctx.source)
        model = AutoModelForCausalLM.from_pretrained(ctx.source, dtype=torch.float32)
        kwargs: dict[str, Any] = {}
        info: dict[str, Any] = {"scheme": params.scheme}
        if ctx.calibration and params.scheme in NEEDS_DATA:
            from datasets import Dataset

            from harness.calibration import load_calibration_text, sample_windows

            cal = ctx.calibration
            text = load_calibration_text(cal["source"])
            ids = tok(text[: max(cal["samples"] * cal["seq_len"] * 12, 200_000)]).input_ids
            windows = sample_windows(ids, cal["samples"], cal["seq_len"], cal["seed"])
            kwargs = {"dataset": Dataset.from_dict({"input_ids": windows,
                                                    "attention_mask": [[1] * len(w) for w in windows]}),
                      "max_seq_length": cal["seq_len"], "num_calibration_samples": len(windows)}
            info["calibration_tokens"] = sum(len(w) for w in windows)
        oneshot(model=model, recipe=build_recipe(params), **kwargs)
        model.to(torch.bfloat16)
        entry = "model"
        model.save_pretrained(ctx.out_dir / entry, save_compressed=True)
        tok.save_pretrained(ctx.out_dir / entry)
        info["entry"] = entry
        info.update(safetensors_weight_stats(ctx.source, ctx.out_dir / entry))
        if params.scheme in ("mxfp4", "nvfp4"):
            info["note"] = "FP4 without FP4 hardware: evaluation runs on dequantized (emulated) weights"
        return info


def _safetensors_tensors(folder: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) from the headers of a folder's safetensors files."""
    import json
    import struct

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        out.update({k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"})
    return out


def safetensors_weight_stats(baseline: Path, artifact: Path) -> dict[str, Any]:
    """Bits per weight: the artifact's tensor bytes over the baseline's parameter count
    (packed weights, scales and zero points all counted, as GGUF's figure does)."""
    import json
    import math

    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I64": 8, "I8": 1, "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
             "I16": 2}
    params = sum(math.prod(shape) for _, shape in _safetensors_tensors(baseline).values())
    nbytes = sum(math.prod(shape) * sizes.get(dt, 4) for dt, shape in _safetensors_tensors(artifact).values())
    qc = json.loads((Path(artifact) / "config.json").read_text()).get("quantization_config") or {}
    return {"bits_per_weight": 8.0 * nbytes / params, "parameters": params, "quant_format": qc.get("format")}
