"""An artifact someone already made (a downloaded GGUF, a checkpoint folder): no quantization."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from harness.quantizers import QuantizeContext, Quantizer


class PrebuiltParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    format: Literal["gguf", "hf"] = "gguf"


class PrebuiltArtifact(Quantizer):
    name = "prebuilt"
    Params = PrebuiltParams
    input_format = None

    def check(self, params: PrebuiltParams) -> list[tuple[tuple, str]]:
        if Path(params.path).expanduser().exists():
            return []
        return [(("params", "path"), f"file not found: {params.path!r}")]

    def output_format_for(self, params: PrebuiltParams) -> str:
        return params.format

    def identity(self, params: PrebuiltParams) -> dict[str, Any]:
        from harness.data import sha256_file

        path = Path(params.path)
        if path.is_file():
            return {"sha256": sha256_file(path)}
        st = path.stat()
        return {"path": str(path.resolve()), "mtime": st.st_mtime_ns}

    def quantize(self, ctx: QuantizeContext, params: PrebuiltParams) -> dict[str, Any]:
        out_dir = ctx.out_dir
        src = Path(params.path).resolve()
        entry = src.name
        # a link, not a copy: prebuilt artifacts can be many GB
        try:
            os.symlink(src, out_dir / entry)
        except OSError:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, out_dir / entry)
        return {"entry": entry}
