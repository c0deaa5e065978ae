"""GGUF quantization with llama.cpp's ``llama_model_quantize`` (llama-cpp-python binding).

K-quants and legacy types quantize the F16 baseline directly. I-quants (IQ*) are
quantized with an importance matrix computed from the candidate's declared
calibration text (see imatrix.py); any other type takes one too when calibration
is declared.
"""

from __future__ import annotations

import ctypes
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import MissingDependency
from harness.quantizers import QuantizeContext, Quantizer
from harness.registry import package_missing, package_version

K_AND_LEGACY = (
    "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "Q2_K_S", "F16", "BF16",
)
I_QUANTS = ("IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS")
GGUF_TYPES = K_AND_LEGACY + I_QUANTS
TENSOR_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS")


class GGUFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[GGUF_TYPES]  # type: ignore[valid-type]
    #: keep output.weight unquantized (llama-quantize --leave-output-tensor)
    leave_output_tensor: bool = False
    #: quantize every tensor to ``type``, no per-tensor mixtures (llama-quantize --pure)
    pure: bool = False
    #: override the type of output.weight / token_embd.weight (llama-quantize --output-tensor-type)
    output_tensor_type: Literal[TENSOR_TYPES] | None = None  # type: ignore[valid-type]
    token_embedding_type: Literal[TENSOR_TYPES] | None = None  # type: ignore[valid-type]
    threads: int = Field(0, ge=0, description="0: llama.cpp picks")


class GGUFQuantizer(Quantizer):
    name = "gguf"
    Params = GGUFParams
    input_format = "gguf"
    output_format = "gguf"
    extra = "llamacpp"

    def _lib(self):
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependency.of("quantizer 'gguf'", "llama-cpp-python", self.extra) from None
        return llama_cpp

    def unavailable(self) -> str | None:
        return package_missing("llama_cpp", f"{self.kind_label} {self.name!r}", "llama-cpp-python", self.extra)

    def versions(self) -> dict[str, str]:
        return {"llama-cpp-python": package_version("llama-cpp-python"), "imatrix": "torch-hooks/1"}

    def requires_calibration(self, params: GGUFParams) -> bool:
        return params.type in I_QUANTS

    def quantize(self, ctx: QuantizeContext, params: GGUFParams) -> dict[str, Any]:
        llama_cpp = self._lib()
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{params.type}")
        qp.nthread = params.threads
        qp.pure = params.pure
        qp.quantize_output_tensor = not params.leave_output_tensor
        if params.output_tensor_type:
            qp.output_tensor_type = getattr(llama_cpp, f"GGML_TYPE_{params.output_tensor_type}")
        if params.token_embedding_type:
            qp.token_embedding_type = getattr(llama_cpp, f"GGML_TYPE_{params.token_embedding_type}")
        info: dict[str, Any] = {"quant_type": params.type}
        keep = None
        if ctx.calibration:
            from harness.quantizers.imatrix import as_c_array, cached_imatrix

            matrix, info["imatrix"] = cached_imatrix(ctx.baseline("hf"), ctx.calibration, params.threads or None)
            entries, keep = as_c_array(llama_cpp, matrix)
            qp.imatrix = entries
        entry = f"model-{params.type}.gguf"
        rc = llama_cpp.llama_model_quantize(str(ctx.source).encode(), str(ctx.out_dir / entry).encode(), ctypes.byref(qp))
        del keep
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize returned {rc} for type {params.type} (see the stage log)")
        info["entry"] = entry
        return info
