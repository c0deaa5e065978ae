"""The default executor: this process orders the stages, each stage's heavy work runs in a
fresh worker process on this machine (``harness.isolate``), one candidate after another, so
probes never share the machine with another candidate."""

from __future__ import annotations

from collections.abc import Callable

from harness import pipeline
from harness.executors.base import Executor
from harness.progress import Progress


class LocalExecutor(Executor):
    name = "local"

    def describe(self) -> dict:
        return {"name": self.name, "placement": pipeline.placement(executor=self.name)}

    def run_baseline(self, task: pipeline.BaselineTask, progress: Progress) -> pipeline.BaselineOutcome:
        return pipeline.run_baseline_main(task, progress)

    def run_candidates(self, baseline: pipeline.BaselineOutcome, tasks: list[pipeline.CandidateTask],
                       progress: Progress, on_outcome: Callable[[pipeline.Outcome], None]) -> list[pipeline.Outcome]:
        outcomes = [pipeline.run_probes(baseline.probe_task(), baseline.outcome.record, progress, baseline.outcome)]
        on_outcome(outcomes[0])
        for task in tasks:
            out = pipeline.run_candidate_main(task, progress)
            if out.record.status == "ok":
                out = pipeline.run_probes(task.probe_task(), out.record, progress, out)
            on_outcome(out)
            outcomes.append(out)
        return outcomes
