"""Quantizer adapters: one file each, registered by name below.

A quantizer turns the baseline (in the format it reads) into an artifact folder.
Adapters import their backend library inside methods, so looking one up, or
validating a plan that names it, works without the library installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

REGISTRY = Registry(
    "quantizers",
    {
        "gguf": "harness.quantizers.gguf:GGUFQuantizer",
        "prebuilt": "harness.quantizers.prebuilt:PrebuiltArtifact",
        "unquantized": "harness.quantizers.unquantized:Unquantized",
        "llm-compressor": "harness.quantizers.llmcompressor:LLMCompressorQuantizer",
        "autoawq": "harness.quantizers.autoawq:AutoAWQQuantizer",
        "fake": "harness.quantizers.fake:FakeQuantizer",
    },
    base="harness.quantizers:Quantizer",
)


@dataclass
class QuantizeContext:
    """What a quantizer gets besides its params."""

    source: Path | None  # the baseline in the quantizer's input_format
    out_dir: Path  # write the artifact here (renamed into the store when complete)
    calibration: dict | None  # the plan's calibration block (source, samples, seq_len, seed)
    baseline_model: str  # the plan's baseline.model, to derive other formats

    def baseline(self, fmt: str) -> Path:
        from harness.baseline import derive

        return derive(self.baseline_model, fmt)


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

    def input_format_for(self, params: BaseModel) -> str | None:
        return self.input_format

    def requires_calibration(self, params: BaseModel) -> bool:
        return self.needs_calibration

    def unavailable(self) -> str | None:
        """Why this quantizer cannot run here (its library is missing), or None."""
        return None

    def check(self, params: BaseModel) -> list[tuple[tuple, str]]:
        """Plan errors in a recipe beyond its schema: (key path under ``quantizer``, message)."""
        return []

    def versions(self) -> dict[str, str]:
        """Tool versions that enter the artifact's cache key."""
        return {}

    def identity(self, params: BaseModel) -> dict[str, Any]:
        """Extra inputs of the cache key. Name inputs by their bytes (a prebuilt file's sha256),
        never by a path or an mtime: a file changed in place must get a new key."""
        return {}

    def quantize(self, ctx: QuantizeContext, params: BaseModel) -> dict[str, Any]:
        """Write the artifact into ``ctx.out_dir``; return manifest fields, including ``entry``
        (the file or folder name inside ``out_dir`` that a runtime loads)."""
        raise NotImplementedError
