"""One execution of a plan: the runner decides what runs and in which order; an executor
(``harness.executors``) decides where.

    baseline:   derive -> evaluate (its items fix every suite)           run_baseline_main
    candidates: produce -> evaluate                                       run_candidate_main
    each:       probe -> plan_memory (the probes own their device)        run_probes
    then:       decide (``harness.gates``); the CLI writes reports and logs to MLflow

The task functions take plain, picklable task objects (``BaselineTask``, ``CandidateTask``,
``ProbeTask``) and a progress display, and return an ``Outcome`` (the record and the store
integrity problems met); the local executor calls them one after another in this process, the
Ray executor runs them as tasks on a cluster that sees the same store. Each stage's heavy work
runs in a worker process (``harness.isolate``); a stage that fails turns its record into an
``error`` record with the stage and message, keeps whatever was already measured, and the run
goes on with the others. Artifacts and item results are cached by content key
(``harness.store``), finished items are journaled as they are scored (``harness.journal``), so
a second run of the same plan recomputes only what changed or was lost. Every reused entry is
checked against its sha256 first; one that fails is reported (the log, and the
``store_integrity`` list of results.json) and recomputed.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__, stages
from harness.config import BaselineSpec, CandidateSpec, Plan, RuntimeSpec, SuiteSpec
from harness.progress import Progress
from harness.results import SCHEMA, Record, RunResults
from harness.store import IntegrityJournal, IntegrityProblem, Store

RESULTS_SCHEMA = SCHEMA


class _LogProgress(Progress):
    """A Progress that only prints the log lines (the ``log=`` callers of before)."""

    def __init__(self, log: Callable[[str], None]):
        self._log = log

    def log(self, text: str) -> None:
        self._log(text)


def placement(**extra: Any) -> dict[str, Any]:
    """Where a stage ran: host and process, the GPUs it was shown (``CUDA_VISIBLE_DEVICES``, when
    set), plus what the executor knows (node, GPU ids)."""
    shown = {"cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]} if "CUDA_VISIBLE_DEVICES" in os.environ else {}
    return {"hostname": socket.gethostname(), "pid": os.getpid(), **shown, **extra}


# ------------------------------------------------------------------ tasks: plain data
@dataclass
class ProbeTask:
    """A record's probes and memory-fit prediction, on its artifact."""

    name: str
    runtime: RuntimeSpec
    probes: dict[str, dict]
    suites: list[SuiteSpec]
    logs_dir: str
    store_root: str


@dataclass
class BaselineTask:
    baseline: BaselineSpec
    suites: list[SuiteSpec]
    probes: dict[str, dict]
    logs_dir: str
    store_root: str

    def probe_task(self) -> ProbeTask:
        return ProbeTask(self.baseline.name, self.baseline.runtime, self.probes, self.suites, self.logs_dir,
                         self.store_root)


@dataclass
class CandidateTask:
    candidate: CandidateSpec
    baseline_model: str
    baseline_source_key: str | None
    #: format -> path of the baseline's derived formats (a quantizer's input)
    baseline_paths: dict[str, str]
    items: dict[str, stages.SuiteItems] | None
    suites: list[SuiteSpec]
    probes: dict[str, dict]
    logs_dir: str
    store_root: str

    @property
    def name(self) -> str:
        return self.candidate.name

    def probe_task(self) -> ProbeTask:
        return ProbeTask(self.candidate.name, self.candidate.runtime, self.probes, self.suites, self.logs_dir,
                         self.store_root)


@dataclass
class Outcome:
    record: Record
    #: store integrity problems met, each {"record", "stage", entry...}
    integrity: list[dict] = field(default_factory=list)


@dataclass
class BaselineOutcome:
    outcome: Outcome
    items: dict[str, stages.SuiteItems] | None
    baseline_paths: dict[str, str]
    task: BaselineTask

    def probe_task(self) -> ProbeTask:
        return self.task.probe_task()


# ------------------------------------------------------------------ stage calls: errors are data
class _Stages:
    """Runs one record's stages: a failure becomes the record's error, timing and integrity
    problems are collected per stage."""

    def __init__(self, rec: Record, progress: Progress, logs_dir: str, store_root: str,
                 outcome: Outcome | None = None):
        self.rec, self.progress = rec, progress
        self.logs_dir = Path(logs_dir)
        self.env = stages.StageEnv(logs_dir=self.logs_dir, progress=progress)
        self.store = Store(Path(store_root), log=progress.log)
        self.outcome = outcome or Outcome(rec)
        # one integrity journal per record: its workers append to it, wherever they run
        self.journal = IntegrityJournal(self.logs_dir / f"{rec.name}-store-integrity.jsonl")
        self._read = len(self.journal.entries())

    def __enter__(self) -> _Stages:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        os.environ["QUANTGATE_HOME"] = str(self.store.root)  # the workers' store
        self.journal.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._collect(None)
        self.journal.__exit__(*exc)

    def _collect(self, stage: str | None) -> None:
        entries = self.journal.entries()
        for entry in entries[self._read:]:
            pid = entry.pop("pid", None)
            if pid != os.getpid():
                self.progress.log(f"  [{self.rec.name}] {IntegrityProblem(**entry).line()}")
            self.outcome.integrity.append({"record": self.rec.name, "stage": stage, **entry})
        self._read = len(entries)

    def __call__(self, stage: str, fn: Callable, *args: Any) -> bool:
        rec = self.rec
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
            from harness.failures import describe_stage_failure  # a full store disk says so

            message = describe_stage_failure(exc, self.store.root)
            rec.fail(stage, message, log=str(self.logs_dir / f"{rec.name}-{stage}.log"),
                     tb=traceback.format_exc(limit=8))
            if not quiet:
                self.progress.step_finished(rec.name, stage, "error", message)
            self.progress.log(f"  [{rec.name}] ERROR in {stage}: {message}")
            return False
        finally:
            self._collect(stage)


def run_baseline_main(task: BaselineTask, progress: Progress, where: dict | None = None) -> BaselineOutcome:
    """Derive the baseline and score every suite on it; its items fix what candidates score."""
    spec = task.baseline
    base = Record(name=spec.name, role="baseline", quantizer={"method": "baseline", "model": spec.model})
    base.placement = {"evaluate": where or placement()}
    t0 = time.perf_counter()
    progress.log(f"[{base.name}] baseline {spec.model} on {spec.runtime.name}")
    runtime, _ = stages.runtime_and_params(spec.runtime)
    items = None
    baseline_paths: dict[str, str] = {}
    with _Stages(base, progress, task.logs_dir, task.store_root) as run:
        if run("derive", stages.derive, base, spec.model, runtime.accepts[0], run.store, run.env):
            baseline_paths[base.artifact.format] = base.artifact.path
            # the baseline's tokenizer (its artifact) fixes the items every candidate scores
            items = stages.baseline_items(task.suites, base.artifact.key, run.store)
            if run("evaluate", stages.evaluate, base, spec.runtime, task.suites, items, run.store, run.env) \
                    and spec.repeats > 1:  # the noise floor: the same artifact scored again
                run("repeat", stages.evaluate_repeats, base, spec.runtime, task.suites, items, spec.repeats,
                    run.store, run.env)
            if any(i.items is None for i in items.values()):
                items = None
    base.seconds = round(time.perf_counter() - t0, 2)
    return BaselineOutcome(run.outcome, items, baseline_paths, task)


def run_candidate_main(task: CandidateTask, progress: Progress, where: dict | None = None) -> Outcome:
    """The candidate's artifact (produced or reused) and every suite on it."""
    cand = task.candidate
    rec = Record(name=cand.name, role="candidate", quantizer=cand.quantizer.model_dump())
    rec.placement = {"evaluate": where or placement()}
    t0 = time.perf_counter()
    progress.log(f"[{cand.name}] {cand.quantizer.method} on {cand.runtime.name}")
    with _Stages(rec, progress, task.logs_dir, task.store_root) as run:
        if run("produce", stages.produce, rec, cand, task.baseline_model, task.baseline_source_key,
               dict(task.baseline_paths), run.store, run.env):
            if task.items is None:
                rec.fail("evaluate", "the baseline produced no items to score (see the baseline's error)")
            else:
                run("evaluate", stages.evaluate, rec, cand.runtime, task.suites, task.items, run.store, run.env)
    rec.seconds = round(time.perf_counter() - t0, 2)
    return run.outcome


def run_probes(task: ProbeTask, rec: Record, progress: Progress, outcome: Outcome | None = None,
               where: dict | None = None) -> Outcome:
    """The probes (on a record whose stages all succeeded) and the memory-fit prediction (on
    any record with an artifact). The probe stage must own its device: executors call this
    when nothing else runs there."""
    outcome = outcome or Outcome(rec)
    if rec.artifact is None:
        return outcome
    t0 = time.perf_counter()
    with _Stages(rec, progress, task.logs_dir, task.store_root, outcome) as run:
        if rec.status == "ok" and task.probes:
            rec.placement["probe"] = where or placement()
            run("probe", stages.probe, rec, task.runtime, task.probes, run.env)
        stages.plan_memory(rec, task.runtime, task.suites)
    rec.seconds = round((rec.seconds or 0.0) + time.perf_counter() - t0, 2)
    return outcome


# ------------------------------------------------------------------ the run
class Runner:
    def __init__(self, plan: Plan, reports_dir: Path = Path("reports"), log: Callable[[str], None] | None = None,
                 progress: Progress | None = None, on_record: Callable[[Record], None] | None = None,
                 executor: str | None = None, address: str | None = None):
        self.plan = plan
        self.progress = progress or _LogProgress(log or print)
        self.store = Store(log=self.progress.log)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{plan.name}-{secrets.token_hex(2)}"
        self.run_dir = Path(reports_dir) / self.run_id
        self.logs_dir = self.run_dir / "logs"
        #: called with each finished record (baseline first), e.g. to log it to MLflow at once
        self.on_record = on_record
        self.executor_name = executor or plan.executor.name
        self.address = address if address is not None else plan.executor.address

    def log(self, text: str) -> None:
        self.progress.log(text)

    def _finished(self, out: Outcome) -> None:
        if self.on_record is None:
            return
        try:
            self.on_record(out.record)
        except Exception as exc:  # a tracking hiccup never stops the run
            self.log(f"  [{out.record.name}] on_record hook failed: {type(exc).__name__}: {exc}")

    def execute(self) -> RunResults:
        from harness import gates, machine
        from harness.executors import REGISTRY

        plan = self.plan
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = dt.datetime.now(dt.timezone.utc)
        t_run = time.perf_counter()
        self.progress.run_started(self.run_id, plan.name, [plan.baseline.name, *(c.name for c in plan.candidates)])
        self.log(f"run {self.run_id}: plan {plan.name}, {len(plan.candidates)} candidates -> {self.run_dir}")
        executor = REGISTRY.get(self.executor_name)(address=self.address)
        common = {"suites": plan.suites, "probes": plan.probes, "logs_dir": str(self.logs_dir),
                  "store_root": str(self.store.root)}
        try:
            base = executor.run_baseline(BaselineTask(baseline=plan.baseline, **common), self.progress)
            base_rec = base.outcome.record
            tasks = [CandidateTask(candidate=cand, baseline_model=plan.baseline.model,
                                   baseline_source_key=base_rec.artifact.source_key if base_rec.artifact else None,
                                   baseline_paths=base.baseline_paths, items=base.items, **common)
                     for cand in plan.candidates]
            outcomes = executor.run_candidates(base, tasks, self.progress, self._finished)
            where = executor.describe()
        finally:
            executor.close()
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
            machine=machine.describe(all_distributions=True),
            environment={k: os.environ[k] for k in ("OMP_WAIT_POLICY", "QUANTGATE_DATA") if k in os.environ},
            executor=where,
            baseline=outcomes[0].record,
            candidates=[o.record for o in outcomes[1:]],
            store_integrity=[e for o in outcomes for e in o.integrity],
        )
        self._calibration_overlap(results)
        return gates.decide(results, policy)

    def _calibration_overlap(self, results: RunResults) -> None:
        """Each calibrating candidate's 13-gram overlap with every suite's items
        (``harness.overlap``), before the gates are decided (the policy may block on it)."""
        if not any(c.quantizer.calibration for c in self.plan.candidates):
            return
        from harness.overlap import overlap_warnings, plan_overlap

        try:
            found = plan_overlap(self.plan)
        except Exception as exc:  # a measurement, not a stage: say so and go on (a blocking rule
            # then makes the calibrating candidates INCONCLUSIVE: overlap not shown to be absent)
            why = f"not measured: {type(exc).__name__}: {exc}"
            self.log(f"calibration overlap {why}")
            found = {c.name: {s.id: {"checked": False, "why": why} for s in self.plan.suites}
                     for c in self.plan.candidates if c.quantizer.calibration}
        for rec in results.candidates:
            if rec.name in found:
                rec.calibration_overlap = found[rec.name]
        for line in overlap_warnings(found):
            self.log(f"warning: {line}")
