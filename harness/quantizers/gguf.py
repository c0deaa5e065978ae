"""GGUF quantization with llama.cpp's ``llama_model_quantize`` (llama-cpp-python binding)."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.errors import MissingDependency
from harness.quantizers import Quantizer
from harness.registry import package_missing, package_version

GGUF_TYPES = (
    "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "Q2_K_S", "F16", "BF16",
)


class GGUFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[GGUF_TYPES]  # type: ignore[valid-type]
    #: keep output.weight unquantized (llama-quantize --leave-output-tensor)
    leave_output_tensor: bool = False
    #: quantize every tensor to ``type``, no per-tensor mixtures (llama-quantize --pure)
    pure: bool = False
    #: override the type of output.weight / token_embd.weight (e.g. "Q8_0", "F16")
    output_tensor_type: Literal[GGUF_TYPES] | None = None  # type: ignore[valid-type]
    token_embedding_type: Literal[GGUF_TYPES] | None = None  # type: ignore[valid-type]
    threads: int = Field(0, ge=0, description="0: llama.cpp picks")


def _ggml_type(llama_cpp, name: str) -> int:
    return getattr(llama_cpp, f"GGML_TYPE_{name}")


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
        return {"llama-cpp-python": package_version("llama-cpp-python")}

    def quantize(self, source: Path | None, out_dir: Path, params: GGUFParams, calibration: Any) -> dict[str, Any]:
        llama_cpp = self._lib()
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{params.type}")
        qp.nthread = params.threads
        qp.pure = params.pure
        qp.quantize_output_tensor = not params.leave_output_tensor
        if params.output_tensor_type:
            qp.output_tensor_type = _ggml_type(llama_cpp, params.output_tensor_type)
        if params.token_embedding_type:
            qp.token_embedding_type = _ggml_type(llama_cpp, params.token_embedding_type)
        entry = f"model-{params.type}.gguf"
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out_dir / entry).encode(), ctypes.byref(qp))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize returned {rc} for type {params.type}")
        return {"entry": entry, "quant_type": params.type}
