"""max_slice_drop: no slice of a suite (an MMLU subject, a JSON-format category, a custom
suite's ``slice``/language) may fall below the baseline by more than ``max_drop`` in the
metric's own units (accuracy 0.05 = 5 points), judged on paired items, slice by slice
(higher-is-better metrics).

The average can pass while one slice breaks (English fine, French broken); this gate reads
the worst slice. With S slices it is S tests: a FAIL needs one slice's drop to exceed
``max_drop`` at level alpha/S (Bonferroni, so noise in one of many slices does not FAIL a
candidate more often than alpha); a PASS needs every slice's upper bound within
``max_drop`` at alpha (all must pass: no correction needed); anything else is
INCONCLUSIVE. Each slice needs the policy's ``min_items`` paired items (default 100 for
0/1 scores) to decide, so slices of a small suite stay INCONCLUSIVE.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field

from harness.gates.base import Gate, fmt


class MaxSliceDrop(Gate):
    kind: Literal["max_slice_drop"]
    max_drop: float = Field(ge=0, lt=1)

    requires = "higher"
    #: judged per slice: the whole metric's noise floor does not apply
    per_slice: ClassVar[bool] = True

    def threshold(self) -> float:
        return self.max_drop

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        return ref - value, (f"{self.metric} {fmt(value)} vs baseline {fmt(ref)} (no per-slice items: "
                             f"the average's drop {fmt(ref - value)}, max {fmt(self.max_drop)} per slice)")

    def decide_paired(self, pairs: dict[str, Any], alpha: float, floor: dict[str, Any]):
        from harness import stats
        from harness.gates import split_slices

        if pairs["kind"] not in ("binary", "continuous"):
            return None
        parts = split_slices(pairs)
        n = len(pairs["ids"])
        if not parts:
            return stats.Decision(stats.INCONCLUSIVE, math.nan, math.nan, math.nan, n, "per-slice paired drop",
                                  None, self.max_drop, alpha, None, None,
                                  f"{self.metric}: its items carry no slice label: INCONCLUSIVE", {})
        s = len(parts)
        level = alpha / s

        def decide(part: dict[str, Any], a: float):
            if part["kind"] == "binary":
                return stats.max_drop_binary(part["base"], part["cand"], self.max_drop, alpha=a,
                                             label=self.metric, **floor)
            return stats.max_drop_continuous(part["base"], part["cand"], self.max_drop, alpha=a,
                                             label=self.metric)

        rows = {}
        for lab, part in parts.items():
            at_alpha, at_level = decide(part, alpha), decide(part, level)
            rows[lab] = {"n": at_alpha.n, "estimate": at_alpha.estimate, "lower": at_alpha.lower,
                         "upper": at_alpha.upper, "pass": at_alpha.verdict == stats.PASS,
                         "fail": at_level.verdict == stats.FAIL, "p_value": at_alpha.p_value}
        worst = max(rows, key=lambda k: (rows[k]["estimate"] if math.isfinite(rows[k]["estimate"]) else -math.inf))
        failed = [k for k, r in rows.items() if r["fail"]]
        if failed:
            verdict = stats.FAIL
        elif all(r["pass"] for r in rows.values()):
            verdict = stats.PASS
        else:
            verdict = stats.INCONCLUSIVE
        w = rows[worst]
        others = ", ".join(f"{k} {100 * r['estimate']:+.1f}" for k, r in sorted(rows.items()) if k != worst)
        text = (f"{self.metric} worst slice {worst!r}: drop {100 * w['estimate']:+.2f} pt "
                f"[{100 * w['lower']:+.2f}, {100 * w['upper']:+.2f}], n={w['n']} ({s} slices"
                + (f"; {others} pt" if others else "") + f"): {verdict} (max drop {100 * self.max_drop:g} pt "
                f"per slice; FAIL tested at alpha/{s} = {level:.3g}"
                + (f"; failing: {', '.join(failed)}" if failed else "") + ")")
        return stats.Decision(verdict, w["estimate"], w["lower"], w["upper"], n,
                              "per-slice paired drop (worst slice; Bonferroni alpha/S for FAIL)",
                              w["p_value"], self.max_drop, alpha, None, None, text,
                              {"worst_slice": worst, "slices": rows, "fail_level": level})

    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        return None  # a slice's drop is not a point on the whole metric's axis

    def line(self, ref: float | None) -> tuple[float, str] | None:
        return None

    def label(self) -> str:
        return f"{self.name}: -{self.max_drop:g} per slice"
