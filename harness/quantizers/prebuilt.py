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
        """The artifact's bytes: a file's sha256, or a folder's {relative name: sha256} of every
        file. Hashed through the store's cache, so an unchanged multi-GB file is not read again;
        the path is not part of it (a moved file keeps its key)."""
        from harness.store import hash_cache, tree_sha256

        path = Path(params.path).expanduser()
        if path.is_file():
            return {"sha256": hash_cache().sha256(path)}
        return {"files": tree_sha256(path)}

    def quantize(self, ctx: QuantizeContext, params: PrebuiltParams) -> dict[str, Any]:
        out_dir = ctx.out_dir
        src = Path(params.path).expanduser().resolve()
        entry = src.name
        # a link, not a copy: prebuilt artifacts can be many GB
        try:
            os.symlink(src, out_dir / entry)
        except OSError:
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, out_dir / entry)
        return {"entry": entry}
