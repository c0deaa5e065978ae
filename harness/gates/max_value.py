"""max_value: an absolute ceiling on a lower-is-better metric (size on disk, peak RAM in GiB,
p95 latency). Checked on the baseline too."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.gates.base import Gate, fmt


class MaxValue(Gate):
    kind: Literal["max_value"]
    max: float = Field(gt=0)

    requires = "lower"
    relative = False

    def threshold(self) -> float:
        return self.max

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        return value, f"{self.metric} {fmt(value)} (max {fmt(self.max)})"

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        return g

    def label(self) -> str:
        return f"{self.name}: max {self.max:g}"
