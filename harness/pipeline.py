"""One execution of a plan: the runner orders the stages (``harness.stages``).

    baseline:   derive -> evaluate (its items fix every suite) -> probe -> plan_memory
    candidates: produce -> evaluate -> probe -> plan_memory        (one after another)
    then:       decide (``harness.gates``); the CLI writes reports and logs to MLflow

Each stage's heavy work runs in a worker process (``harness.isolate``); a stage that fails
turns its record into an ``error`` record with the stage and message, keeps whatever was
already measured, and the run goes on with the others. Artifacts and item results are
cached by content key (``harness.store``), so a second run of the same plan recomputes only
what changed. Every reused entry is checked against its sha256 first; one that fails is
reported (the log, and the ``store_integrity`` list of results.json) and recomputed.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from harness import __version__, stages
from harness.config import Plan
from harness.progress import Progress
from harness.results import SCHEMA, Record, RunResults
from harness.store import IntegrityJournal, Store

RESULTS_SCHEMA = SCHEMA


class _LogProgress(Progress):
    """A Progress that only prints the log lines (the ``log=`` callers of before)."""

    def __init__(self, log: Callable[[str], None]):
        self._log = log

    def log(self, text: str) -> None:
        self._log(text)


class Runner:
    def __init__(self, plan: Plan, reports_dir: Path = Path("reports"), log: Callable[[str], None] | None = None,
                 progress: Progress | None = None):
        self.plan = plan
        self.progress = progress or _LogProgress(log or print)
        self.store = Store(log=self.progress.log)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{plan.name}-{secrets.token_hex(2)}"
        self.run_dir = Path(reports_dir) / self.run_id
        self.logs_dir = self.run_dir / "logs"
        self.env = stages.StageEnv(logs_dir=self.logs_dir, progress=self.progress)
        # integrity problems met in this run (here and in its workers), and where
        self.journal = IntegrityJournal(self.logs_dir / "store-integrity.jsonl")
        self.store_integrity: list[dict] = []
        self._journal_read = 0  # journal entries already in store_integrity

    def log(self, text: str) -> None:
        self.progress.log(text)

    # ---- stage calls: errors are data
    def _guard(self, rec: Record, stage: str, fn, *args) -> bool:
        t0 = time.perf_counter()
        quiet = stage in ("evaluate", "probe")  # these report their own steps (per suite)
        if not quiet:
            self.progress.step_started(rec.name, stage)
        try:
            fn(*args)
            if not quiet:
                reused = stage == "produce" and rec.artifact is not None and rec.artifact.reused
                self.progress.step_finished(rec.name, stage, "reused" if reused else "ok",
                                            f"{time.perf_counter() - t0:.1f} s")
            return True
        except Exception as exc:  # record, go on
            message = f"{type(exc).__name__}: {exc}".strip()
            rec.fail(stage, message, log=str(self.logs_dir / f"{rec.name}-{stage}.log"),
                     tb=traceback.format_exc(limit=8))
            if not quiet:
                self.progress.step_finished(rec.name, stage, "error", message)
            self.log(f"  [{rec.name}] ERROR in {stage}: {message}")
            return False
        finally:
            self._collect_integrity(rec.name, stage)

    def _collect_integrity(self, record: str | None, stage: str | None) -> None:
        """Add the integrity problems met since the last call to the run's list; show those
        the workers met (they logged them to the stage's log file, not to this log)."""
        from harness.store import IntegrityProblem

        entries = self.journal.entries()
        for entry in entries[self._journal_read:]:
            pid = entry.pop("pid", None)
            if pid != os.getpid():
                self.log(f"  [{record}] {IntegrityProblem(**entry).line()}")
            self.store_integrity.append({"record": record, "stage": stage, **entry})
        self._journal_read = len(entries)

    # ---- the run
    def execute(self) -> RunResults:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.journal:
            return self._execute()

    def _run_baseline(self) -> tuple[Record, dict[str, stages.SuiteItems] | None, dict[str, str]]:
        plan = self.plan
        base = Record(name=plan.baseline.name, role="baseline",
                      quantizer={"method": "baseline", "model": plan.baseline.model})
        t0 = time.perf_counter()
        self.log(f"[{base.name}] baseline {plan.baseline.model} on {plan.baseline.runtime.name}")
        runtime, _ = stages.runtime_and_params(plan.baseline.runtime)
        items = None
        baseline_paths: dict[str, str] = {}
        if self._guard(base, "derive", stages.derive, base, plan.baseline.model, runtime.accepts[0],
                       self.store, self.env):
            baseline_paths[base.artifact.format] = base.artifact.path
            # the baseline's tokenizer (its artifact) fixes the items every candidate scores
            items = stages.baseline_items(plan.suites, base.artifact.key, self.store)
            if self._guard(base, "evaluate", stages.evaluate, base, plan.baseline.runtime, plan.suites, items,
                           self.store, self.env):
                self._guard(base, "probe", stages.probe, base, plan.baseline.runtime, plan.probes, self.env)
            stages.plan_memory(base, plan.baseline.runtime, plan.suites)
            if any(i.items is None for i in items.values()):
                items = None
        base.seconds = round(time.perf_counter() - t0, 2)
        return base, items, baseline_paths

    def _run_candidate(self, cand, base: Record, items: dict[str, stages.SuiteItems] | None,
                       baseline_paths: dict[str, str]) -> Record:
        plan = self.plan
        rec = Record(name=cand.name, role="candidate", quantizer=cand.quantizer.model_dump())
        t0 = time.perf_counter()
        self.log(f"[{cand.name}] {cand.quantizer.method} on {cand.runtime.name}")
        source_key = base.artifact.source_key if base.artifact is not None else None
        if self._guard(rec, "produce", stages.produce, rec, cand, plan.baseline.model, source_key, baseline_paths,
                       self.store, self.env):
            if items is None:
                rec.fail("evaluate", "the baseline produced no items to score (see the baseline's error)")
            elif self._guard(rec, "evaluate", stages.evaluate, rec, cand.runtime, plan.suites, items,
                             self.store, self.env):
                self._guard(rec, "probe", stages.probe, rec, cand.runtime, plan.probes, self.env)
            stages.plan_memory(rec, cand.runtime, plan.suites)
        rec.seconds = round(time.perf_counter() - t0, 2)
        return rec

    def _execute(self) -> RunResults:
        from harness import gates, machine

        plan = self.plan
        started = dt.datetime.now(dt.timezone.utc)
        t_run = time.perf_counter()
        self.progress.run_started(self.run_id, plan.name, [plan.baseline.name, *(c.name for c in plan.candidates)])
        self.log(f"run {self.run_id}: plan {plan.name}, {len(plan.candidates)} candidates -> {self.run_dir}")
        base, items, baseline_paths = self._run_baseline()
        records = [self._run_candidate(cand, base, items, baseline_paths) for cand in plan.candidates]
        self._collect_integrity(None, None)
        policy = plan.policy()
        results = RunResults(
            run_id=self.run_id,
            quantgate_version=__version__,
            plan=plan.model_dump(mode="json"),
            plan_file=plan.source_path,
            policy=policy.model_dump(mode="json"),
            started=started.isoformat(timespec="seconds"),
            finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            wall_seconds=round(time.perf_counter() - t_run, 2),
            machine=machine.describe(),
            environment={k: os.environ[k] for k in ("OMP_WAIT_POLICY", "QUANTGATE_DATA") if k in os.environ},
            baseline=base,
            candidates=records,
            store_integrity=self.store_integrity,
        )
        return gates.decide(results, policy)
