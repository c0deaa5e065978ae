"""Executors: where a run's stages run. The runner (``harness.pipeline``) decides what runs and
in which order; an executor decides where: ``local`` (worker processes on this machine, one
candidate after another) or ``ray`` (tasks on a Ray cluster, as many at once as its resources
allow). Both run the same task functions (``harness.pipeline.run_baseline_main`` and friends)
on the same plain inputs, so they give the same records."""

from __future__ import annotations

from harness.registry import Registry

REGISTRY = Registry(
    "executors",
    {
        "local": "harness.executors.local:LocalExecutor",
        "ray": "harness.executors.ray:RayExecutor",
    },
    base="harness.executors.base:Executor",
)
