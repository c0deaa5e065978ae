"""max_increase_pct: the candidate may exceed the baseline by at most ``max_pct`` percent
(lower-is-better metrics: perplexity, KL, latency). Paired on per-window log-likelihoods where
the suite stores them (a bootstrap of the perplexity ratio)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from harness.gates.base import Gate, fmt


class MaxIncreasePct(Gate):
    kind: Literal["max_increase_pct"]
    proportional = True
    max_pct: float = Field(ge=0)

    requires = "lower"

    def threshold(self) -> float:
        return self.max_pct

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        change = 100.0 * (value - ref) / abs(ref)
        return change, (f"{self.metric} {fmt(value)} vs baseline {fmt(ref)}: {change:+.2f}% "
                        f"(max +{fmt(self.max_pct)}%)")

    def stderr_scale(self, ref: float | None) -> float:
        return 100.0 / abs(ref)

    def decide_paired(self, pairs: dict[str, Any], alpha: float, floor: dict[str, Any]):
        from harness import stats

        if pairs["kind"] != "perplexity":
            return None
        return stats.max_increase_continuous(pairs["base_nll"], pairs["cand_nll"], pairs["denominator"],
                                             self.max_pct, alpha=alpha, label=self.metric)

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        return None if not ref else ref + g * abs(ref) / 100.0

    def label(self) -> str:
        return f"{self.name}: +{self.max_pct:g}%"
