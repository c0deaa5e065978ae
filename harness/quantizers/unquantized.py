"""The baseline itself, in the format another runtime loads (F16 GGUF or BF16 safetensors).

For cross-runtime checks: the same weights through transformers and through llama.cpp
should score the same, so any difference is the runtime's, not the quantizer's.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.quantizers import QuantizeContext, Quantizer


class UnquantizedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["gguf", "hf"] = Field(description="'gguf': F16 GGUF file; 'hf': BF16 safetensors folder")


class Unquantized(Quantizer):
    name = "unquantized"
    Params = UnquantizedParams

    def input_format_for(self, params: UnquantizedParams) -> str:
        return params.format

    def output_format_for(self, params: UnquantizedParams) -> str:
        return params.format

    def quantize(self, ctx: QuantizeContext, params: UnquantizedParams) -> dict[str, Any]:
        src = ctx.source.resolve()
        try:  # a link: the baseline already lives in the store
            os.symlink(src, ctx.out_dir / src.name)
        except OSError:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, ctx.out_dir / src.name)
        return {"entry": src.name, "bits_per_weight": 16.0}
