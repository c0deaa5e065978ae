"""min_value: an absolute floor on a higher-is-better metric (accuracy >= 0.6, decode
tokens/s >= 20). On 0/1 per-item scores it is a one-sample score interval. Checked on the
baseline too."""

from __future__ import annotations

from typing import Literal

from harness.gates.base import Gate, fmt


class MinValue(Gate):
    kind: Literal["min_value"]
    min: float

    requires = "higher"
    relative = False
    bad_is_high = False

    def threshold(self) -> float:
        return self.min

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        return value, f"{self.metric} {fmt(value)} (min {fmt(self.min)})"

    def decide_items(self, items, alpha: float, floor: dict | None = None):
        from harness import stats

        return stats.min_value_binary(items, self.min, alpha=alpha, label=self.metric, **(floor or {}))

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        return g

    def label(self) -> str:
        return f"{self.name}: min {self.min:g}"
