"""The base class of gate kinds. One file per kind (``harness/gates/<kind>.py``), registered
by name in ``harness.gates``; each kind owns its parameters (pydantic fields), the direction
its metric must have, its statistic on paired items, its measured-value comparison and how
its threshold reads in the metric's own units (for the report's figures).

Kept free of numpy and of the statistics: ``harness.config`` builds the plan schema from
these classes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def fmt(x: float) -> str:
    return f"{x:.4g}"


class Gate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    metric: str

    #: the direction the gated metric must be better in: "lower" (the gate bounds a rise) or
    #: "higher" (it bounds a fall)
    requires: ClassVar[str]
    #: compared with the baseline's value of the metric (False: an absolute bound)
    relative: ClassVar[bool] = True
    #: bounds a change in proportion to the baseline's value (percent, ratio): undefined at 0
    proportional: ClassVar[bool] = False
    #: whether the estimate is bad when high (a ceiling) or when low (a floor)
    bad_is_high: ClassVar[bool] = True

    # each kind declares ``kind: Literal["<its name>"]``: the plan's discriminator

    # ---- validation
    def direction_problem(self, better: str | None) -> str | None:
        """Why this gate contradicts its metric's declared direction, or None."""
        if better is None or better == self.requires:
            return None
        return (f"gate kind {self.kind!r} bounds a metric where {self.requires} is better, but "
                f"{self.metric!r} is declared {better}-is-better")

    # ---- deciding
    def threshold(self) -> float:
        raise NotImplementedError

    def estimate(self, value: float, ref: float | None) -> tuple[float, str]:
        """(the estimate in the gate's units, a sentence) from the measured values."""
        raise NotImplementedError

    def stderr_scale(self, ref: float | None) -> float:
        """Factor from the metric's standard error to the estimate's (the baseline's own error
        is not known for probes)."""
        return 1.0

    def decide_paired(self, pairs: dict[str, Any], alpha: float, floor: dict[str, Any]):
        """A ``harness.stats.Decision`` on per-item pairs (``harness.gates.paired_items``), or
        None when this kind has no paired statistic for that kind of data."""
        return None

    def decide_items(self, items, alpha: float, floor: dict | None = None):
        """A Decision on the candidate's own per-item 0/1 scores (absolute floors), or None;
        ``floor``: {"min_n": the policy's min_items} when the policy sets one."""
        return None

    # ---- the report's figures
    def to_metric_units(self, g: float, ref: float | None, paired: bool) -> float | None:
        """A value in the gate's units (estimate, bound, threshold) in the metric's units."""
        raise NotImplementedError

    def line(self, ref: float | None) -> tuple[float, str] | None:
        """Where the threshold lies in metric units, with a short label (None: unknown)."""
        y = self.to_metric_units(self.threshold(), ref, paired=False)
        return None if y is None or not math.isfinite(y) else (y, self.label())

    def label(self) -> str:
        return f"{self.name}: {self.kind} {fmt(self.threshold())}"
