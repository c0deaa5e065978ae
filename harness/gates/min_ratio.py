"""min_ratio: recovery, candidate / baseline at least ``min`` (e.g. 0.95), judged on paired
items (higher-is-better metrics)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from harness.gates.base import Gate, fmt


class MinRatio(Gate):
    kind: Literal["min_ratio"]
    proportional = True
    min: float = Field(gt=0)

    requires = "higher"
    bad_is_high = False

    def threshold(self) -> float:
        return self.min

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        return value / ref, (f"{self.metric} {fmt(value)} / baseline {fmt(ref)} = {value / ref:.4f} "
                             f"(min {fmt(self.min)})")

    def stderr_scale(self, ref: float | None) -> float:
        return 1.0 / abs(ref)

    def decide_paired(self, pairs: dict[str, Any], alpha: float, floor: dict[str, Any]):
        from harness import stats

        if pairs["kind"] != "binary":
            return None
        return stats.min_ratio_binary(pairs["base"], pairs["cand"], self.min, alpha=alpha, label=self.metric,
                                      **floor)

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        return None if ref is None else g * ref

    def label(self) -> str:
        return f"{self.name}: x{self.min:g}"
