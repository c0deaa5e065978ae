"""Peak resident memory of the probe process (and any children it started)."""

from __future__ import annotations

import resource
import sys

from harness.probes import Probe, ProbeContext

GIB = 1024**3


def peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return max(own, children)


class MemoryProbe(Probe):
    name = "memory"
    metrics = {"peak_rss_gib": "lower"}
    order = 100  # last: the peak after every other probe ran

    def measure(self, ctx: ProbeContext, params) -> dict[str, float]:
        return {"peak_rss_gib": peak_rss_bytes() / GIB}
