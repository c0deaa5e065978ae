"""Size of the artifact on disk (the file or folder a runtime loads)."""

from __future__ import annotations

from harness.probes import Probe, ProbeContext
from harness.store import dir_size

GIB = 1024**3


class SizeProbe(Probe):
    name = "size"
    metrics = {"bytes": "lower", "gib": "lower"}
    needs_session = False

    def measure(self, ctx: ProbeContext, params) -> dict[str, float]:
        size = dir_size(ctx.artifact_path.resolve())
        return {"bytes": float(size), "gib": size / GIB}
