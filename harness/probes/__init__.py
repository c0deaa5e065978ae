"""Probe adapters: one file each, registered by name below.

Probes that need a loaded model run in a process of their own (spawned for the
purpose), apart from evaluation, so that memory figures belong to one
candidate and timings are not disturbed by scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

REGISTRY = Registry(
    "probes",
    {
        "size": "harness.probes.size:SizeProbe",
        "load": "harness.probes.load:LoadProbe",
        "decode": "harness.probes.decode:DecodeProbe",
        "throughput": "harness.probes.throughput:ThroughputProbe",
        "bench": "harness.probes.bench:BenchProbe",
        "latency": "harness.probes.latency:LatencyProbe",
        "roofline": "harness.probes.roofline:RooflineProbe",
        "memory": "harness.probes.memory:MemoryProbe",
        "serving": "harness.probes.serving:ServingProbe",
    },
    base="harness.probes:Probe",
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class ProbeContext:
    """What a probe sees. ``notes`` is shared by the probes of one process (in order): a probe
    leaves non-numeric facts there (machine, runs, skipped shapes) and later probes may reuse
    figures (roofline takes throughput's decode runs)."""

    artifact_path: Path
    session: Any = None
    load_seconds: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def record_machine(ctx: ProbeContext) -> None:
    """Put what the figures were measured on (CPU, GPUs, driver, CUDA, library versions) in the
    notes, once per probe process."""
    if "machine" not in ctx.notes:
        from harness.probes.gpu import machine_info

        ctx.notes["machine"] = machine_info()


class Probe:
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    metrics: ClassVar[dict[str, str | None]] = {}
    #: needs a loaded session (runs in the probe process)
    needs_session: ClassVar[bool] = True
    #: probes run in ascending order; memory reads the peaks after the workloads
    order: ClassVar[int] = 50

    def context_length(self, params: BaseModel) -> int:
        """Tokens the session must hold for this probe."""
        return 0

    @classmethod
    def metric_names(cls, params: BaseModel) -> list[str]:
        """The metrics this probe reports with ``params`` (``metrics`` holds those of the
        default parameters; probes whose names depend on parameters override this). A class
        method: validating a plan must not create probes (the memory probe starts a sampler)."""
        return list(cls.metrics)

    @classmethod
    def metric_directions(cls, params: BaseModel) -> dict[str, str | None]:
        """metric -> "higher" | "lower" (which is better) for the metrics ``params`` give: the
        direction is declared here once and carried to results, gates, reports and figures."""
        return {n: cls.metrics.get(n) or cls.direction_of(n) for n in cls.metric_names(params)}

    @classmethod
    def direction_of(cls, metric: str) -> str | None:
        """The direction of a metric whose name depends on the params (not in ``metrics``)."""
        return None

    def measure(self, ctx: ProbeContext, params: BaseModel) -> dict[str, float]:
        raise NotImplementedError
