"""Cold start: seconds from nothing to a model ready to score, in a fresh process."""

from __future__ import annotations

from harness.probes import Probe, ProbeContext


class LoadProbe(Probe):
    name = "load"
    metrics = {"seconds": "lower"}
    order = 0

    def measure(self, ctx: ProbeContext, params) -> dict[str, float]:
        return {"seconds": float(ctx.load_seconds)}
