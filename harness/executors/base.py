"""The executor interface: run the baseline's and the candidates' tasks, report as they finish."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from harness.pipeline import BaselineOutcome, BaselineTask, CandidateTask, Outcome
    from harness.progress import Progress


class Executor:
    """Runs a plan's tasks somewhere. ``run_baseline`` first (its items fix every suite), then
    ``run_candidates``; ``on_outcome`` is called with each finished record's outcome (the
    baseline's too, once its probes are done) as soon as it is known."""

    name: ClassVar[str]

    def __init__(self, address: str | None = None):
        self.address = address

    def describe(self) -> dict:
        """Recorded in results.json (``executor``): which executor, and where."""
        return {"name": self.name}

    def run_baseline(self, task: BaselineTask, progress: Progress) -> BaselineOutcome:
        """Derive and evaluate the baseline (its probes come with the candidates)."""
        raise NotImplementedError

    def run_candidates(self, baseline: BaselineOutcome, tasks: list[CandidateTask], progress: Progress,
                       on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
        """The baseline's probes and every candidate; outcomes in plan order (baseline first)."""
        raise NotImplementedError

    def close(self) -> None:
        """Give back what the executor started (a local Ray cluster)."""
