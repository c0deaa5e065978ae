"""max_drop_pct: the candidate may fall below the baseline by at most ``max_pct`` percent
(higher-is-better metrics: accuracy, pass@1). Paired on per-item scores: a score interval with
McNemar's test for 0/1 scores, a paired bootstrap for real ones."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from harness.gates.base import Gate, fmt


class MaxDropPct(Gate):
    kind: Literal["max_drop_pct"]
    proportional = True
    max_pct: float = Field(ge=0)

    requires = "higher"

    def threshold(self) -> float:
        return self.max_pct

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        change = 100.0 * (value - ref) / abs(ref)
        return -change, (f"{self.metric} {fmt(value)} vs baseline {fmt(ref)}: {change:+.2f}% "
                         f"(max -{fmt(self.max_pct)}%)")

    def stderr_scale(self, ref: float | None) -> float:
        return 100.0 / abs(ref)

    def decide_paired(self, pairs: dict[str, Any], alpha: float, floor: dict[str, Any]):
        from harness import stats

        if pairs["kind"] == "binary":
            return stats.max_drop_binary(pairs["base"], pairs["cand"], self.max_pct / 100.0, alpha=alpha,
                                         relative=True, label=self.metric, **floor)
        if pairs["kind"] == "continuous":
            return stats.max_drop_continuous(pairs["base"], pairs["cand"], self.max_pct / 100.0,
                                             relative=True, alpha=alpha, label=self.metric)
        return None

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        # paired statistics give the drop as a fraction of the baseline, measured values in percent
        if not ref:
            return None
        return ref - g * abs(ref) * (1.0 if paired else 0.01)

    def line(self, ref: float | None) -> tuple[float, str] | None:
        return None if not ref else (ref - self.max_pct * abs(ref) / 100.0, self.label())

    def label(self) -> str:
        return f"{self.name}: -{self.max_pct:g}%"
