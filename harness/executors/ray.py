"""The Ray executor: the baseline first, then every candidate as Ray tasks, as many at once as
the cluster's resources allow (Ray Core).

- **Where:** ``address`` none starts a local cluster for the run (on 127.0.0.1, stopped at the
  end); ``auto`` joins the cluster running on this machine (``ray start --head``);
  ``ray://HOST:10001`` connects through Ray Client. Every node must see the store
  (``QUANTGATE_HOME`` on a shared path) and the run folder, and have quantgate installed.
- **Resources** come from the candidate's runtime (``Runtime.resources``: its threads as CPUs,
  one GPU for a CUDA llama.cpp / transformers / vLLM session) and memory from the memory-fit
  planner's prediction for the baseline at the suites' context (a quantized artifact needs
  less, its quantizer at least that), so Ray does not pack two models into a node or GPU that
  cannot hold them. A candidate no node can host is an ERROR record saying so, not a hang.
- **One fresh worker process per task** (``max_calls=1``): a deleted vLLM engine does not give
  its GPU memory back; a stage's own work still runs in a child process (``harness.isolate``).
- **Probes own their device:** a candidate's probes are a second task, pinned to the node its
  evaluation ran on, holding every CPU of that node (and its GPUs), so nothing else runs there
  while it measures. The record says which node, process and GPUs ran each stage (``placement``).
- **Retries:** a task whose worker dies (node lost, OOM-killed) is retried once by Ray and
  resumes from the item journals; an exception inside a stage is an ERROR record, not retried.
- Known traps avoided: no placement group is created inside a task (vLLM nests its own and
  deadlocks, lm-eval PR #3725), ``VLLM_DP_*`` variables are cleared in the tasks, and a CPU
  task gets ``CUDA_VISIBLE_DEVICES=""`` from Ray (``num_gpus=0``), which is what it should see.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import pipeline
from harness.errors import MissingDependency, QuantgateError
from harness.executors.base import Executor
from harness.progress import EventFileProgress, EventReplay, Progress
from harness.results import Record

GIB = 1 << 30
#: the environment a task needs from the driver (the store is passed explicitly)
_PASSED_ENV = ("QUANTGATE_DATA", "OMP_WAIT_POLICY", "HF_HUB_OFFLINE", "HF_HOME", "MLFLOW_TRACKING_URI")


class ExecutorError(QuantgateError):
    """The executor could not start or reach its cluster."""


# ------------------------------------------------------------------ inside a task
def _where(cpus: float, gpus: float) -> dict[str, Any]:
    import ray

    ctx = ray.get_runtime_context()
    return pipeline.placement(executor="ray", node_id=ctx.get_node_id(), node_ip=ray.util.get_node_ip_address(),
                              gpu_ids=[str(g) for g in ray.get_gpu_ids()], cpus=cpus, gpus=gpus,
                              cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def ray_task(kind: str, task: Any, rec: Record | None, outcome: pipeline.Outcome | None, events: str,
             cpus: float, gpus: float) -> Any:
    """One task on a Ray worker: ``kind`` is baseline | candidate | probes."""
    for name in [k for k in os.environ if k.startswith("VLLM_DP_")]:
        os.environ.pop(name)
    progress = EventFileProgress(events)
    where = _where(cpus, gpus)
    name = task.baseline.name if kind == "baseline" else task.name
    gpu = f", GPU {','.join(where['gpu_ids'])}" if where["gpu_ids"] else ""
    progress.log(f"[{name}] {'probes' if kind == 'probes' else 'suites'} on node {where['node_ip']} "
                 f"({where['hostname']}, pid {where['pid']}, {cpus:g} CPUs{gpu})")
    if kind == "baseline":
        out = pipeline.run_baseline_main(task, progress, where)
        return out, where["node_id"]
    if kind == "candidate":
        return pipeline.run_candidate_main(task, progress, where), where["node_id"]
    # rec arrives as its own copy when pickled apart from outcome: fill the outcome's record
    return pipeline.run_probes(task, outcome.record, progress, outcome, where), where["node_id"]


# ------------------------------------------------------------------ the driver
class RayExecutor(Executor):
    name = "ray"
    #: a task whose worker process died is retried this many times (it resumes from the journals)
    max_retries = 1

    def __init__(self, address: str | None = None):
        super().__init__(address)
        self._started = False
        self._ray: Any = None
        self._replays: dict[str, EventReplay] = {}
        self._checked = time.monotonic()
        self._lost_since: float | None = None

    # ---- cluster
    def _init(self) -> Any:
        if self._ray is not None:
            return self._ray
        # token authentication (Ray >= 2.52, read when ray is imported): `ray start` turns it on by default, and a cluster
        # this run starts has it too, so nothing else on the network can submit work to it;
        # the token is ~/.ray/auth_token (or RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        try:
            import ray
        except ImportError:
            raise MissingDependency.of("executor 'ray'", "ray", "ray") from None
        env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        # a checkout run without installing: the tasks import harness from the same place
        env["PYTHONPATH"] = os.pathsep.join([str(Path(pipeline.__file__).resolve().parents[1]),
                                             *filter(None, [os.environ.get("PYTHONPATH")])])
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                                      "logging_level": "ERROR"}
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:  # a cluster of this machine for this run only, on the loopback interface
                    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
                    self._started = True
            except Exception as exc:
                where = self.address or "a local cluster"
                raise ExecutorError(f"ray: could not start or reach {where}: {type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        self._ray = ray
        return ray

    def describe(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "address": self.address or "local cluster"}
        if self._ray is not None and self._ray.is_initialized():
            out["nodes"] = [{"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"),
                             "resources": {k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU", "memory")}}
                            for n in self._ray.nodes() if n.get("Alive")]
            out["ray_version"] = self._ray.__version__
        return out

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
            self._started = False

    def _nodes(self) -> list[dict[str, float]]:
        return [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]

    # ---- what a task needs
    @staticmethod
    def _needs(runtime_spec) -> dict[str, float]:
        from harness import stages

        runtime, params = stages.runtime_and_params(runtime_spec)
        return runtime.resources(params)

    def _memory_bytes(self, base: Record, runtime_spec, suites) -> int | None:
        """The planner's prediction for the baseline on this runtime, at the suites' context."""
        if base.artifact is None:
            return None
        from harness import planner, stages

        n_ctx = max([2048] + [s.context_length(p) for s, p in map(stages.suite_and_params, suites)])
        try:
            p = planner.plan_memory(base.artifact.path, None, context=n_ctx,
                                    runtime=runtime_spec.name if runtime_spec.name in planner.RUNTIMES else None)
            return int(p["total"]["gib"] * GIB)
        except Exception:  # no prediction (a fake artifact, an unknown format): no memory request
            return None

    def _unplaceable(self, needs: dict[str, float], memory: int | None) -> str | None:
        """Why no node of the cluster can run a task with these needs, or None."""
        nodes = self._nodes()
        for n in nodes:
            if n.get("CPU", 0) >= needs["cpus"] and n.get("GPU", 0) >= needs["gpus"] and \
                    (memory is None or n.get("memory", 0) >= memory):
                return None
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0), n.get("memory", 0)), default={})
        mem = f", {memory / GIB:.2f} GiB memory (the planner's prediction)" if memory else ""
        return (f"ray: no node of the cluster can run it: it needs {needs['cpus']:g} CPUs, {needs['gpus']:g} GPUs"
                f"{mem}; the largest node has {largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs, "
                f"{largest.get('memory', 0) / GIB:.2f} GiB")

    def _submit(self, kind: str, task: Any, name: str, needs: dict[str, float], memory: int | None = None,
                rec: Record | None = None, outcome: pipeline.Outcome | None = None, node: str | None = None) -> Any:
        ray = self._ray
        events = str(Path(task.logs_dir) / f"{name}-{kind}.events.jsonl")
        Path(events).parent.mkdir(parents=True, exist_ok=True)
        opts: dict[str, Any] = {"num_cpus": needs["cpus"], "num_gpus": needs["gpus"],
                                "max_retries": self.max_retries, "retry_exceptions": False,
                                "name": f"quantgate:{name}:{kind}"}
        if memory:
            opts["memory"] = memory
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        # max_calls=1: a fresh worker process per task (set on the function, not in options)
        remote = ray.remote(max_calls=1)(ray_task).options(**opts)
        self._replays[events] = EventReplay(events, self._progress)
        return remote.remote(kind, task, rec, outcome, events, needs["cpus"], needs["gpus"])

    def _poll(self) -> None:
        for replay in self._replays.values():
            replay.poll()

    #: seconds without a live node before the waiting tasks are given up as errors
    lost_cluster_seconds = 30.0

    def _wait(self, refs: list) -> tuple[list, list]:
        done, pending = self._ray.wait(refs, num_returns=1, timeout=0.5)
        self._poll()
        now = time.monotonic()
        if not done and now - self._checked > 5:  # a cluster that died does not say so through wait
            self._checked = now
            try:
                alive = bool(self._nodes())
            except Exception:  # the GCS itself is gone
                alive = False
            if alive:
                self._lost_since = None
            elif self._lost_since is None:
                self._lost_since = now
            elif now - self._lost_since > self.lost_cluster_seconds:
                raise ExecutorError(f"ray: the cluster has had no live node for {self.lost_cluster_seconds:g} s "
                                    f"({self.address or 'the local cluster'}); the tasks still waiting are lost")
        return done, pending

    def _failed(self, name: str, role: str, stage: str, exc: BaseException, rec: Record | None = None) -> Record:
        rec = rec or Record(name=name, role=role)
        message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        rec.fail(stage, message)
        self._progress.step_finished(name, stage, "error", message)
        return rec

    # ---- the executor interface
    def run_baseline(self, task: pipeline.BaselineTask, progress: Progress) -> pipeline.BaselineOutcome:
        self._progress = progress
        ray = self._init()
        progress.log(f"executor ray: {len(self._nodes())} nodes, "
                     f"{sum(n.get('CPU', 0) for n in self._nodes()):g} CPUs, "
                     f"{sum(n.get('GPU', 0) for n in self._nodes()):g} GPUs")
        needs = self._needs(task.baseline.runtime)
        why = self._unplaceable(needs, None)
        if why:
            rec = Record(name=task.baseline.name, role="baseline")
            rec.fail("derive", why)
            return pipeline.BaselineOutcome(pipeline.Outcome(rec), None, {}, task)
        ref = self._submit("baseline", task, task.baseline.name, needs)
        try:
            while True:
                done, _ = self._wait([ref])
                if done:
                    break
            out, self._baseline_node = ray.get(ref)
            return out
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            raise
        except Exception as exc:
            rec = self._failed(task.baseline.name, "baseline", "derive", exc)
            return pipeline.BaselineOutcome(pipeline.Outcome(rec), None, {}, task)

    def run_candidates(self, baseline: pipeline.BaselineOutcome, tasks: list[pipeline.CandidateTask],
                       progress: Progress, on_outcome: Callable[[pipeline.Outcome], None]) -> list[pipeline.Outcome]:
        self._progress = progress
        ray = self._init()
        base_rec = baseline.outcome.record
        outcomes: dict[str, pipeline.Outcome] = {}
        # ref -> (stage kind, name, task, needs, memory)
        running: dict[Any, tuple[str, str, Any, dict, int | None]] = {}

        def probes(name: str, probe_task: pipeline.ProbeTask, out: pipeline.Outcome, needs: dict, node: str) -> None:
            if out.record.artifact is None:
                finish(name, out)
                return
            if not probe_task.probes:  # nothing to measure: the memory prediction alone, here
                finish(name, pipeline.run_probes(probe_task, out.record, progress, out))
                return
            # the whole node (every CPU), and the GPUs the runtime uses: nothing else runs there
            node_cpus = next((n["Resources"].get("CPU", needs["cpus"]) for n in ray.nodes()
                              if n["NodeID"] == node), needs["cpus"])
            owned = {"cpus": max(needs["cpus"], node_cpus), "gpus": needs["gpus"]}
            ref = self._submit("probes", probe_task, name, owned, rec=out.record, outcome=out, node=node)
            running[ref] = ("probes", name, probe_task, owned, None)

        def finish(name: str, out: pipeline.Outcome) -> None:
            outcomes[name] = out
            on_outcome(out)

        if base_rec.artifact is not None:
            probes(base_rec.name, baseline.probe_task(), baseline.outcome, self._needs(baseline.task.baseline.runtime),
                   getattr(self, "_baseline_node", None))
        else:
            finish(base_rec.name, baseline.outcome)
        for task in tasks:
            needs = self._needs(task.candidate.runtime)
            memory = self._memory_bytes(base_rec, task.candidate.runtime, task.suites)
            why = self._unplaceable(needs, memory)
            if why:
                rec = Record(name=task.name, role="candidate", quantizer=task.candidate.quantizer.model_dump())
                rec.fail("produce", why)
                progress.step_finished(task.name, "produce", "error", why)
                finish(task.name, pipeline.Outcome(rec))
                continue
            ref = self._submit("candidate", task, task.name, needs, memory)
            running[ref] = ("candidate", task.name, task, needs, memory)
        try:
            while running:
                done, _ = self._wait(list(running))
                for ref in done:
                    kind, name, task, needs, _memory = running.pop(ref)
                    try:
                        out, node = ray.get(ref)
                    except Exception as exc:  # the task itself failed (worker lost twice, cancelled)
                        role = "baseline" if name == base_rec.name else "candidate"
                        prior = outcomes.get(name)
                        rec = self._failed(name, role, "probe" if kind == "probes" else "evaluate", exc,
                                           prior.record if prior else None)
                        finish(name, pipeline.Outcome(rec))
                        continue
                    if kind == "candidate":
                        probes(name, task.probe_task(), out, needs, node)
                    else:
                        finish(name, out)
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        except ExecutorError as exc:  # the cluster is gone: what was still running is an error
            for kind, name, _task, _needs, _memory in running.values():
                role = "baseline" if name == base_rec.name else "candidate"
                prior = outcomes.get(name) or (baseline.outcome if role == "baseline" else None)
                rec = self._failed(name, role, "probe" if kind == "probes" else "evaluate", exc,
                                   prior.record if prior else None)
                finish(name, pipeline.Outcome(rec))
        self._poll()
        order = [base_rec.name, *(t.name for t in tasks)]
        return [outcomes[name] for name in order]
