"""Quantizer adapters: one file each, registered by name below.

A quantizer turns the baseline (in the format it reads) into an artifact folder.
Adapters import their backend library inside methods, so looking one up, or
validating a plan that names it, works without the library installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

REGISTRY = Registry(
    "quantizers",
    {
        "gguf": "harness.quantizers.gguf:GGUFQuantizer",
        "prebuilt": "harness.quantizers.prebuilt:PrebuiltArtifact",
    },
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quantizer:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: baseline format read ("gguf" = F16 GGUF, "hf" = BF16 safetensors folder); None: reads nothing
    input_format: ClassVar[str | None] = "gguf"
    #: format of the artifact written ("gguf" file or "hf" folder)
    output_format: ClassVar[str] = "gguf"
    needs_calibration: ClassVar[bool] = False
    kind_label: ClassVar[str] = "quantizer"
    extra: ClassVar[str] = ""

    def output_format_for(self, params: BaseModel) -> str:
        return self.output_format

    def unavailable(self) -> str | None:
        """Why this quantizer cannot run here, or None."""
        return None

    def versions(self) -> dict[str, str]:
        """Tool versions that enter the artifact's cache key."""
        return {}

    def identity(self, params: BaseModel) -> dict[str, Any]:
        """Extra inputs of the cache key (e.g. the hash of a prebuilt file)."""
        return {}

    def quantize(self, source: Path | None, out_dir: Path, params: BaseModel, calibration: Any) -> dict[str, Any]:
        """Write the artifact into ``out_dir``; return manifest fields, including ``entry``
        (the file or folder name inside ``out_dir`` that a runtime loads)."""
        raise NotImplementedError
