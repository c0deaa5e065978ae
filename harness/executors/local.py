"""The default executor: this process orders the stages, each stage's heavy work runs in a
fresh worker process on this machine (``harness.isolate``), one candidate after another, so
probes never share the machine with another candidate.

On a machine with several GPUs and no ``CUDA_VISIBLE_DEVICES``, the workers see one GPU: every
runtime here serves a candidate from one GPU (the memory-fit planner and ``gpu_budget_gib``
count one), but llama.cpp with ``n_gpu_layers: -1`` would split the model over every GPU it
sees. On 2xH200 that turned the planner's -8% into -36% (Q8_0) and took 11% off F16's batch-1 decode
(benchmarks/README.md, GPU lane). Set ``CUDA_VISIBLE_DEVICES`` to choose the GPU, or several.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from harness import pipeline
from harness.executors.base import Executor
from harness.progress import Progress

VISIBLE = "CUDA_VISIBLE_DEVICES"


def gpu_count() -> int:
    """GPUs the driver reports (NVML; 0 without nvidia-ml-py, a driver or a GPU). Initializes no
    CUDA context."""
    from harness.probes.gpu import nvml

    nv = nvml()
    return int(nv.nvmlDeviceGetCount()) if nv is not None else 0


@contextlib.contextmanager
def one_gpu(count: Callable[[], int] = gpu_count) -> Iterator[str | None]:
    """Within: ``CUDA_VISIBLE_DEVICES=0`` for the workers started here when it is unset and the
    machine has more than one GPU (yields "0"); else as it was (yields its value or None)."""
    if VISIBLE in os.environ or count() < 2:
        yield os.environ.get(VISIBLE)
        return
    os.environ[VISIBLE] = "0"
    try:
        yield "0"
    finally:
        os.environ.pop(VISIBLE, None)


class LocalExecutor(Executor):
    name = "local"

    def describe(self) -> dict:
        with one_gpu():  # placement() records CUDA_VISIBLE_DEVICES as the workers will see it
            return {"name": self.name, "placement": pipeline.placement(executor=self.name)}

    def run_baseline(self, task: pipeline.BaselineTask, progress: Progress) -> pipeline.BaselineOutcome:
        with one_gpu():
            return pipeline.run_baseline_main(task, progress)

    def run_candidates(self, baseline: pipeline.BaselineOutcome, tasks: list[pipeline.CandidateTask],
                       progress: Progress, on_outcome: Callable[[pipeline.Outcome], None]) -> list[pipeline.Outcome]:
        with one_gpu():
            outcomes = [pipeline.run_probes(baseline.probe_task(), baseline.outcome.record, progress, baseline.outcome)]
            on_outcome(outcomes[0])
            for task in tasks:
                out = pipeline.run_candidate_main(task, progress)
                if out.record.status == "ok":
                    out = pipeline.run_probes(task.probe_task(), out.record, progress, out)
                on_outcome(out)
                outcomes.append(out)
        return outcomes
