"""max_drop: the candidate may fall below the baseline by at most ``max`` in the metric's own
units (accuracy 0.02 = 2 points), judged on paired items (higher-is-better metrics)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from harness.gates.base import Gate, fmt


class MaxDrop(Gate):
    kind: Literal["max_drop"]
    max: float = Field(ge=0)

    requires = "higher"

    def threshold(self) -> float:
        return self.max

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        return ref - value, (f"{self.metric} {fmt(value)} vs baseline {fmt(ref)}: drop {fmt(ref - value)} "
                             f"(max {fmt(self.max)})")

    def decide_paired(self, pairs: dict[str, Any], alpha: float, floor: dict[str, Any]):
        from harness import stats

        if pairs["kind"] == "binary":
            return stats.max_drop_binary(pairs["base"], pairs["cand"], self.max, alpha=alpha, relative=False,
                                         label=self.metric, **floor)
        if pairs["kind"] == "continuous":
            return stats.max_drop_continuous(pairs["base"], pairs["cand"], self.max, relative=False,
                                             alpha=alpha, label=self.metric)
        return None

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        return None if ref is None else ref - g

    def label(self) -> str:
        return f"{self.name}: -{self.max:g}"
