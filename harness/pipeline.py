"""One execution of a plan: produce -> evaluate -> probe -> gate -> log -> report.

Each candidate's stages run in worker processes (harness.isolate); a stage that
fails turns the candidate into an ``error`` record with the stage and message,
keeps whatever was already measured, and the run goes on with the others.
Artifacts and item results are cached by content key (harness.store), so a
second run of the same plan recomputes only what changed. Every reused entry is
checked against its sha256 first; one that fails is reported (the log, and the
``store_integrity`` list of results.json) and recomputed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
import traceback
from pathlib import Path

from harness import __version__
from harness.config import Plan
from harness.store import (
    MANIFEST,
    IntegrityJournal,
    Store,
    atomic_dir,
    content_key,
    dir_size,
    files_digest,
)

RESULTS_SCHEMA = "quantgate.results/1"


# ------------------------------------------------------------------ workers
# Top-level functions: they run in spawned processes and receive plain data.
def _derive_worker(model: str, fmt: str) -> str:
    from harness import baseline

    return str(baseline.derive(model, fmt))


def _quantize_worker(method: str, params_raw: dict, calibration: dict | None, source: str | None,
                     key: str, key_inputs: dict, baseline_model: str) -> dict:
    from harness.probes.memory import peak_rss_bytes
    from harness.quantizers import REGISTRY, QuantizeContext

    quantizer = REGISTRY.get(method)()
    params = quantizer.Params.model_validate(params_raw)
    store = Store()
    t0 = time.perf_counter()
    with atomic_dir(store.folder("artifacts", key)) as tmp:
        ctx = QuantizeContext(source=Path(source) if source else None, out_dir=tmp,
                              calibration=calibration, baseline_model=baseline_model)
        info = quantizer.quantize(ctx, params)
        entry = tmp / info["entry"]
        manifest = {
            "key": key,
            "method": method,
            "params": params.model_dump(),
            "calibration": calibration,
            "format": quantizer.output_format_for(params),
            "wall_seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_gib": round(peak_rss_bytes() / 1024**3, 3),
            "size_bytes": dir_size(entry.resolve()),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "key_inputs": key_inputs,
            **info,
        }
        if manifest["format"] == "gguf" and "bits_per_weight" not in manifest:
            manifest.update(gguf_weight_stats(entry))
        manifest = store.seal(tmp, manifest)  # the sha256 of every file, checked on reuse
    return manifest


def gguf_weight_stats(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path.resolve())
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_elem = sum(int(t.n_elements) for t in reader.tensors)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"bits_per_weight": 8.0 * n_bytes / n_elem, "parameters": n_elem, "tensor_types": types}


def _session(runtime_name: str, runtime_params: dict, artifact_path: str, n_ctx: int):
    from harness.runtimes import REGISTRY

    runtime = REGISTRY.get(runtime_name)()
    params = runtime.Params.model_validate(runtime_params)
    return runtime.load(Path(artifact_path), params, n_ctx)


def _evaluate_worker(runtime_name: str, runtime_params: dict, artifact_path: str, jobs: list[dict],
                     preload: tuple[str, ...] = ()) -> dict:
    """Score every job's items on one loaded session; prepare items where a job has none.
    ``preload``: the runtime's libraries, imported before harness's suites and runtimes (see
    ``harness.probes.runner.probe_worker``: a CUDA llama.cpp build segfaults after numpy)."""
    import importlib

    for module in preload:
        importlib.import_module(module)
    from harness.suites import REGISTRY

    n_ctx = max(j["context_length"] for j in jobs)
    session = _session(runtime_name, runtime_params, artifact_path, n_ctx)
    out = {}
    try:
        for job in jobs:
            suite = REGISTRY.get(job["suite"])()
            params = suite.Params.model_validate(job["params"])
            prepared = None
            items = job.get("items")
            if items is None:
                prepared = suite.prepare(params, session)
                items = prepared["items"]
            t0 = time.perf_counter()
            records = suite.score(session, items, params)
            out[job["id"]] = {"prepared": prepared, "records": records,
                              "seconds": round(time.perf_counter() - t0, 3), "load_info": session.info()}
    finally:
        session.close()
    return out


# ------------------------------------------------------------------- runner
class Runner:
    def __init__(self, plan: Plan, reports_dir: Path = Path("reports"), log=print):
        self.plan = plan
        self.log = log
        self.store = Store(log=log)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_id = f"{stamp}-{plan.name}-{secrets.token_hex(2)}"
        self.run_dir = Path(reports_dir) / self.run_id
        self.logs_dir = self.run_dir / "logs"
        self.items: dict[str, dict] = {}  # suite id -> {"items", "meta", "key"}
        # integrity problems met in this run (here and in its workers), and where
        self.journal = IntegrityJournal(self.logs_dir / "store-integrity.jsonl")
        self.store_integrity: list[dict] = []
        self._journal_read = 0  # journal entries already in store_integrity

    # ---- helpers
    def _call(self, fn, *args, log_name: str, **kwargs):
        from harness.isolate import run_isolated

        return run_isolated(fn, *args, log_path=self.logs_dir / f"{log_name}.log", **kwargs)

    def _suite(self, spec):
        from harness.suites import REGISTRY

        suite = REGISTRY.get(spec.suite)()
        return suite, suite.Params.model_validate(spec.params)

    def _runtime(self, spec):
        from harness.runtimes import REGISTRY

        runtime = REGISTRY.get(spec.name)()
        return runtime, runtime.Params.model_validate(spec.params)

    # ---- stages
    def _baseline_artifact(self, rec: dict, fmt: str) -> None:
        from harness.baseline import source_key

        path = Path(self._call(_derive_worker, self.plan.baseline.model, fmt,
                               log_name=f"{rec['name']}-derive-{fmt}"))
        # a baseline derived into the store (checked there by the worker) names its source's key;
        # one used as it is (a float GGUF, an HF folder) is keyed by its own bytes
        derived = path.parent.parent.resolve() == (self.store.root / "baselines").resolve()
        manifest = json.loads((path.parent / MANIFEST).read_text()) if derived else {}
        key = manifest.get("source_key") or source_key(path, self.store.hashes)
        rec["artifact"] = {
            "key": f"baseline-{key}-{fmt}",
            "format": fmt,
            "path": str(path),
            "manifest": manifest,
            "reused": None,
        }

    def _produce(self, rec: dict, cand, baseline_paths: dict[str, Path], baseline_key: str) -> None:
        from harness.calibration import calibration_identity
        from harness.quantizers import REGISTRY

        quantizer = REGISTRY.get(cand.quantizer.method)()
        params = quantizer.Params.model_validate(cand.quantizer.params)
        why = quantizer.unavailable()
        if why:
            raise RuntimeError(why)
        source = None
        input_format = quantizer.input_format_for(params)
        if input_format:
            if input_format not in baseline_paths:
                baseline_paths[input_format] = Path(self._call(
                    _derive_worker, self.plan.baseline.model, input_format,
                    log_name=f"baseline-derive-{input_format}"))
            source = str(baseline_paths[input_format])
        calibration = cand.quantizer.calibration.model_dump() if cand.quantizer.calibration else None
        key_inputs = {
            "baseline": baseline_key if input_format else None,
            "input_format": input_format,
            "method": quantizer.name,
            "params": params.model_dump(),
            "calibration": calibration_identity(calibration),
            "identity": quantizer.identity(params),
            "versions": quantizer.versions(),
        }
        key = content_key(key_inputs)
        manifest = self.store.reusable_manifest("artifacts", key)
        reused = manifest is not None
        if reused:
            self.log(f"  [{rec['name']}] artifact {key} reused from the store")
        else:
            self.log(f"  [{rec['name']}] producing artifact with {quantizer.name} {params.model_dump(exclude_defaults=True)}")
            manifest = self._call(_quantize_worker, quantizer.name, params.model_dump(), calibration, source,
                                  key, key_inputs, self.plan.baseline.model, log_name=f"{rec['name']}-quantize")
        folder = self.store.folder("artifacts", key)
        rec["artifact"] = {"key": key, "format": manifest["format"], "path": str(folder / manifest["entry"]),
                           "manifest": manifest, "reused": reused}

    def _items_key(self, suite, sparams, tokenizer_key: str) -> str:
        return "items-" + content_key({"suite": suite.name, "version": suite.version,
                                       "params": sparams.model_dump(), "data": suite.data_identity(sparams),
                                       "tokenizer": tokenizer_key})

    def _evaluate(self, rec: dict, runtime_spec, is_baseline: bool) -> None:
        runtime, rparams = self._runtime(runtime_spec)
        why = runtime.unavailable()
        if why:
            raise RuntimeError(why)
        versions = runtime.versions()
        rec["runtime"] = {"name": runtime.name, "params": runtime.describe(rparams), "versions": versions}
        jobs, result_keys = [], {}
        for spec in self.plan.suites:
            suite, sparams = self._suite(spec)
            if is_baseline:
                # the baseline's tokenizer fixes the items every candidate scores
                items_key = self._items_key(suite, sparams, rec["artifact"]["key"])
                cached = self.store.get_result(items_key)
                self.items[spec.id] = {**(cached or {}), "key": items_key}
            elif "items" not in self.items.get(spec.id, {}):
                raise RuntimeError(f"suite {spec.id}: the baseline produced no items to score")
            result_keys[spec.id] = "result-" + content_key({
                "artifact": rec["artifact"]["key"], "artifact_files": files_digest(rec["artifact"]["manifest"]),
                "runtime": runtime.name, "versions": versions,
                "runtime_params": runtime.result_identity(rparams), "suite": suite.name,
                "suite_version": suite.version, "items": self.items[spec.id]["key"]})
            cached = self.store.get_result(result_keys[spec.id]) if "items" in self.items[spec.id] else None
            if cached is not None:
                rec["suites"][spec.id] = {**cached, "result_key": result_keys[spec.id], "reused": True}
                continue
            jobs.append({"id": spec.id, "suite": suite.name, "params": sparams.model_dump(),
                         "context_length": suite.context_length(sparams),
                         "items": self.items[spec.id].get("items")})
        if jobs:
            self.log(f"  [{rec['name']}] scoring {', '.join(j['id'] for j in jobs)} on {runtime.name}")
            out = self._call(_evaluate_worker, runtime.name, rparams.model_dump(), rec["artifact"]["path"], jobs,
                             log_name=f"{rec['name']}-evaluate", preload=tuple(runtime.import_modules))
            for job in jobs:
                res = out[job["id"]]
                if res["prepared"] is not None:
                    self.store.put_result(self.items[job["id"]]["key"], res["prepared"])
                    self.items[job["id"]].update(res["prepared"])
                stored = {"records": res["records"], "seconds": res["seconds"], "load_info": res["load_info"]}
                self.store.put_result(result_keys[job["id"]], stored)
                rec["suites"][job["id"]] = {**stored, "result_key": result_keys[job["id"]], "reused": False}
        for spec in self.plan.suites:
            suite, sparams = self._suite(spec)
            entry = rec["suites"][spec.id]
            entry["meta"] = self.items[spec.id]["meta"]
            entry["items_key"] = self.items[spec.id]["key"]
            entry["metrics"] = suite.aggregate(self.items[spec.id]["items"], entry["records"], sparams)
            for m, v in entry["metrics"].items():
                rec["metrics"][f"{spec.id}.{m}"] = v

    def _probe(self, rec: dict, runtime_spec) -> None:
        if not self.plan.probes:
            return
        runtime, rparams = self._runtime(runtime_spec)
        self.log(f"  [{rec['name']}] probing {', '.join(self.plan.probes)}")
        from harness.probes.runner import probe_worker

        # the worker is pickled by reference: its module (harness.probes.runner) is light, so the
        # runtime's libraries (preload) are the first heavy imports of the spawned process
        res = self._call(probe_worker, runtime.name, rparams.model_dump(), rec["artifact"]["path"],
                         dict(self.plan.probes), log_name=f"{rec['name']}-probe",
                         preload=tuple(runtime.import_modules))
        out = res["figures"]
        rec["probes"] = out
        rec["probe_notes"] = res.get("notes")  # machine, raw repetitions, bandwidth source
        for probe, figures in out.items():
            for m, v in figures.items():
                rec["metrics"][f"{probe}.{m}"] = {"value": v, "stderr": None, "n": 1}

    def _plan_memory(self, rec: dict, runtime_spec) -> None:
        """The memory-fit planner's prediction for this artifact, beside what was measured."""
        from harness import planner

        n_ctx = max([2048] + [suite.context_length(params) for suite, params in map(self._suite, self.plan.suites)])
        try:
            p = planner.plan_memory(rec["artifact"]["path"], None, context=n_ctx,
                                    runtime=runtime_spec.name if runtime_spec.name in planner.RUNTIMES else None)
        except Exception as exc:  # a prediction is a bonus: never lose the record over it
            rec["planner"] = {"error": f"{type(exc).__name__}: {exc}"}
            return
        out = {"context": n_ctx, "runtime": p["runtime"], "weights_gib": p["weights"]["gib"],
               "bits_per_weight": p["weights"]["bits_per_weight"], "kv_cache_gib": p["kv_cache"]["gib"],
               "reserve_gib": p["reserve"]["gib"], "total_gib": p["total"]["gib"], "exact": p.get("exact"),
               "notes": p.get("notes", [])}
        size = rec["metrics"].get("size.gib", {}).get("value")
        if size:  # weights: prediction vs the artifact on disk (the files include metadata)
            out["weights_error_pct"] = 100.0 * (out["weights_gib"] - size) / size
        self._plan_probe_peak(rec, runtime_spec, out)
        rec["planner"] = out
        for k in ("weights_gib", "kv_cache_gib", "total_gib", "weights_error_pct", "probe_predicted_gib",
                  "probe_measured_gib", "probe_error_pct"):
            if out.get(k) is not None:
                rec["metrics"][f"planner.{k}"] = {"value": out[k], "stderr": None, "n": 1}

    @staticmethod
    def _plan_probe_peak(rec: dict, runtime_spec, out: dict) -> None:
        """The planner's prediction for the probe process's own workload against the model memory
        the memory probe measured there (peak less the memory before loading; on a GPU, the
        process's peak VRAM)."""
        from harness import planner

        notes = rec.get("probe_notes") or {}
        mem = (rec.get("probes") or {}).get("memory") or {}
        if not notes.get("n_ctx") or not mem:
            return
        device = "cuda" if str((notes.get("session_info") or {}).get("device", "")).startswith("cuda") else "cpu"
        # on a GPU the process tree's VRAM (vLLM's engine runs in a child); on a CPU this
        # process's own model memory (a multi-process runtime's children are not in it)
        measured = (mem.get("peak_vram_gib") or mem.get("peak_vram_self_gib")) if device == "cuda" \
            else mem.get("model_rss_gib")
        try:
            p = planner.predict_probe_peak(rec["artifact"]["path"], runtime_spec.name, n_ctx=notes["n_ctx"],
                                           shapes=(notes.get("throughput") or {}).get("shapes"), device=device,
                                           session_info=notes.get("session_info"))
        except Exception as exc:
            out["probe_error"] = f"{type(exc).__name__}: {exc}"
            return
        out["probe_prediction"] = p
        out["probe_predicted_gib"] = p["total_gib"]
        if measured:
            out["probe_measured_gib"] = measured
            out["probe_measured_as"] = "peak VRAM of the process tree (NVML)" if device == "cuda" else \
                "model_rss_gib: peak RSS less RSS before the model loaded"
            out["probe_error_pct"] = 100.0 * (p["total_gib"] - measured) / measured

    # ---- the run
    def _new_record(self, name: str, role: str) -> dict:
        return {"name": name, "role": role, "status": "ok", "error": None, "quantizer": None,
                "runtime": None, "artifact": None, "suites": {}, "metrics": {}, "probes": {}, "planner": None,
                "verdicts": [], "verdict": None, "seconds": None}

    def _guard(self, rec: dict, stage: str, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as exc:  # errors are data: record, go on
            message = f"{type(exc).__name__}: {exc}".strip()
            rec["status"] = "error"
            rec["error"] = {"stage": stage, "message": message,
                            "log": str(self.logs_dir / f"{rec['name']}-{stage}.log"),
                            "traceback": traceback.format_exc(limit=8)}
            self.log(f"  [{rec['name']}] ERROR in {stage}: {message}")
            return False
        finally:
            self._collect_integrity(rec["name"], stage)

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

    def execute(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.journal:
            return self._execute()

    def _execute(self) -> dict:
        from harness import gates, machine

        plan = self.plan
        started = dt.datetime.now(dt.timezone.utc)
        t_run = time.perf_counter()
        self.log(f"run {self.run_id}: plan {plan.name}, {len(plan.candidates)} candidates -> {self.run_dir}")

        # Baseline: derived in the format its runtime loads; its items define every suite.
        base = self._new_record(plan.baseline.name, "baseline")
        base["quantizer"] = {"method": "baseline", "model": plan.baseline.model}
        t0 = time.perf_counter()
        self.log(f"[{base['name']}] baseline {plan.baseline.model} on {plan.baseline.runtime.name}")
        runtime, _ = self._runtime(plan.baseline.runtime)
        baseline_paths: dict[str, Path] = {}
        baseline_key = None
        if self._guard(base, "derive", self._baseline_artifact, base, runtime.accepts[0]):
            baseline_paths[base["artifact"]["format"]] = Path(base["artifact"]["path"])
            baseline_key = base["artifact"]["key"].rsplit("-", 1)[0]
            if self._guard(base, "evaluate", self._evaluate, base, plan.baseline.runtime, True):
                self._guard(base, "probe", self._probe, base, plan.baseline.runtime)
            self._plan_memory(base, plan.baseline.runtime)
        base["seconds"] = round(time.perf_counter() - t0, 2)

        records = []
        for cand in plan.candidates:
            rec = self._new_record(cand.name, "candidate")
            rec["quantizer"] = cand.quantizer.model_dump()
            t0 = time.perf_counter()
            self.log(f"[{cand.name}] {cand.quantizer.method} on {cand.runtime.name}")
            if baseline_key is None and cand.quantizer.method != "prebuilt":
                rec["status"] = "error"
                rec["error"] = {"stage": "produce", "message": "the baseline could not be derived", "log": None}
            elif self._guard(rec, "produce", self._produce, rec, cand, baseline_paths, baseline_key):
                if self._guard(rec, "evaluate", self._evaluate, rec, cand.runtime, False):
                    self._guard(rec, "probe", self._probe, rec, cand.runtime)
                self._plan_memory(rec, cand.runtime)
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            records.append(rec)

        self._collect_integrity(None, None)
        policy = plan.policy()
        results = {
            "schema": RESULTS_SCHEMA,
            "run_id": self.run_id,
            "quantgate_version": __version__,
            "plan": plan.model_dump(mode="json"),
            "plan_file": plan.source_path,
            "policy": policy.model_dump(mode="json"),
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - t_run, 2),
            "machine": machine.describe(),
            "environment": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "QUANTGATE_DATA") if k in os.environ},
            "baseline": base,
            "candidates": records,
            # stored entries that failed their sha256 check in this run and were recomputed
            "store_integrity": self.store_integrity,
            "approved": [],
            "exit_code": None,
            "tracking": None,
        }
        return gates.decide(results, policy)
