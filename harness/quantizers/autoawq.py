"""AutoAWQ (archived upstream): AWQ W4 GEMM checkpoints.

Status here (measured on the embedded model, CPU): autoawq 0.2.9 installs beside
torch 2.13 and transformers 5.17 and quantizes at ~25 s per decoder layer (12+ min for
SmolLM2-135M's 30 layers with 16 short samples); its artifacts have been measured at
perplexity ~363,000 when loaded through transformers, i.e. broken. The adapter is kept
so plans that name it get a clear answer; it runs only with ``allow_archived: true``.
The maintained route to the same method is ``llm-compressor`` with ``scheme: awq-w4a16``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.quantizers import QuantizeContext, Quantizer
from harness.registry import package_missing, package_version

ALTERNATIVE = "use method 'llm-compressor' with scheme 'awq-w4a16' instead"


class AutoAWQParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    w_bit: Literal[4] = 4
    group_size: int = Field(128, ge=8)
    zero_point: bool = True
    version: Literal["GEMM", "GEMV"] = "GEMM"
    #: run it anyway, knowing its artifacts were measured broken here
    allow_archived: bool = False


class AutoAWQQuantizer(Quantizer):
    name = "autoawq"
    Params = AutoAWQParams
    input_format = "hf"
    output_format = "hf"
    needs_calibration = True
    extra = "autoawq"

    def unavailable(self) -> str | None:
        missing = package_missing("awq", f"quantizer {self.name!r}", "autoawq", self.extra)
        if missing:
            return f"{missing}; AutoAWQ is archived upstream: {ALTERNATIVE}"
        return None

    def check(self, params: AutoAWQParams) -> list[tuple[tuple, str]]:
        """Refused even when installed, unless the plan opts in."""
        if params.allow_archived:
            return []
        return [(("method",), "quantizer 'autoawq': archived upstream, and its artifacts measured perplexity "
                 f"~363,000 on this project's model (broken); {ALTERNATIVE}, or set allow_archived: true")]

    def versions(self) -> dict[str, str]:
        return {p: package_version(p) for p in ("autoawq", "transformers", "torch")}

    def quantize(self, ctx: QuantizeContext, params: AutoAWQParams) -> dict[str, Any]:
        import torch
        from awq import AutoAWQForCausalLM
        from transformers import AutoTokenizer

        from harness.calibration import load_calibration_text

        cal = ctx.calibration
        model = AutoAWQForCausalLM.from_pretrained(str(ctx.source), dtype=torch.float32, device_map="cpu")
        tok = AutoTokenizer.from_pretrained(ctx.source)
        # AutoAWQ skips samples longer than max_calib_seq_len tokens: give it short paragraphs
        paragraphs = [p.strip()[: cal["seq_len"] * 2] for p in load_calibration_text(cal["source"]).split("\n\n")]
        samples = [p for p in paragraphs if len(p) > 200][: cal["samples"]]
        model.quantize(tok, quant_config={"zero_point": params.zero_point, "q_group_size": params.group_size,
                                          "w_bit": params.w_bit, "version": params.version},
                       calib_data=samples, max_calib_seq_len=cal["seq_len"], max_calib_samples=len(samples),
                       n_parallel_calib_samples=1)
        model.save_quantized(str(ctx.out_dir / "model"))
        tok.save_pretrained(ctx.out_dir / "model")
        return {"entry": "model", "status": "archived upstream; measured broken on this model"}
