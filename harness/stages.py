"""The stages of a run, as functions of plain, picklable inputs plus the store.

    derive      the baseline in the format a runtime or quantizer reads
    produce     a candidate's artifact (a quantizer, cached by content key)
    evaluate    the plan's suites on one record (items fixed by the baseline, cached results)
    probe       speed / memory / size probes on one record
    plan_memory the memory-fit planner's prediction beside what was measured

A stage takes specs (pydantic models of the plan), a ``Record`` it fills, a ``StageEnv``
(where logs go, how workers are started, where progress is reported) and the store; the
heavy work runs in a worker process (``harness.isolate``) started through ``env.call``. The
runner (``harness.pipeline``) only orders the stages; because their inputs are plain data and
their outputs are in the store or the record, a candidate's stages can run in another process
or on another machine that sees the same store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import CandidateSpec, RuntimeSpec, SuiteSpec
from harness.progress import Progress
from harness.results import ArtifactRef, Metric, Record, RuntimeInfo, SuiteResult
from harness.store import MANIFEST, Store, atomic_dir, content_key, dir_size, files_digest

#: progress is reported after each chunk of items; a suite scores a chunk in one call
PROGRESS_CHUNKS = 10


@dataclass
class StageEnv:
    """Where a stage's workers log and report progress, and how they are started."""

    logs_dir: Path
    progress: Progress = field(default_factory=Progress)
    #: run_isolated-like: (fn, *args, log_path=..., on_poll=..., **kwargs) -> result
    runner: Callable[..., Any] | None = None

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def call(self, fn: Callable, *args: Any, log_name: str, on_poll: Callable[[], None] | None = None,
             **kwargs: Any) -> Any:
        if self.runner is None:
            from harness.isolate import run_isolated

            self.runner = run_isolated
        return self.runner(fn, *args, log_path=self.log_path(log_name), on_poll=on_poll, **kwargs)


@dataclass
class SuiteItems:
    """A suite's items as the baseline fixed them: the store key, and the items once known."""

    key: str
    items: list[dict] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ workers
# Top-level functions: they run in spawned processes and receive plain data.
def derive_worker(model: str, fmt: str, store_root: str | None = None) -> str:
    """The baseline in ``fmt`` (derived once into the store, under the entry's lock)."""
    from harness import baseline

    return str(baseline.derive(model, fmt, store=Store(Path(store_root)) if store_root else None))


def quantize_worker(method: str, params_raw: dict, calibration: dict | None, source: str | None,
                    key: str, key_inputs: dict, baseline_model: str, store_root: str | None = None) -> dict:
    """Quantize into a scratch folder that becomes ``artifacts/<key>`` once sealed (the caller
    holds the key's lock); returns the manifest as stored."""
    from harness.probes.memory import peak_rss_bytes
    from harness.quantizers import REGISTRY, QuantizeContext

    quantizer = REGISTRY.get(method)()
    params = quantizer.Params.model_validate(params_raw)
    store = Store(Path(store_root) if store_root else None)
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
    # as stored: a folder another process published first (one that took no lock) is kept
    return store.manifest("artifacts", key) or manifest


def gguf_weight_stats(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path.resolve())
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_elem = sum(int(t.n_elements) for t in reader.tensors)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"bits_per_weight": 8.0 * n_bytes / n_elem, "parameters": n_elem, "tensor_types": types}


def _load_session(runtime_name: str, runtime_params: dict, artifact_path: str, n_ctx: int):
    from harness.runtimes import REGISTRY

    runtime = REGISTRY.get(runtime_name)()
    params = runtime.Params.model_validate(runtime_params)
    return runtime.load(Path(artifact_path), params, n_ctx)


def _write_progress(path: str | None, job_id: str, done: int, total: int) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"job": job_id, "done": done, "total": total}) + "\n")


def evaluate_worker(runtime_name: str, runtime_params: dict, artifact_path: str, jobs: list[dict],
                    preload: tuple[str, ...] = (), progress_path: str | None = None,
                    store_root: str | None = None) -> dict:
    """Score every job's items on one loaded session; prepare items where a job has none (and
    store them at once, so an interrupted baseline resumes on the same items). Items are scored
    in chunks; each chunk's records go to the job's journal (``harness.journal``) before the
    next starts, and items the journal already holds are skipped: a killed worker loses at most
    one chunk. After each chunk the count done is appended to ``progress_path`` (the parent
    shows it). ``preload``: the runtime's libraries, imported before harness's suites and
    runtimes (see ``harness.probes.runner.probe_worker``: a CUDA llama.cpp build segfaults
    after numpy)."""
    import importlib

    for module in preload:
        importlib.import_module(module)
    from harness.errors import SessionRefused
    from harness.journal import ItemJournal, journal_path
    from harness.suites import REGISTRY

    store = Store(Path(store_root) if store_root else None)
    n_ctx = max(j["context_length"] for j in jobs)
    session = _load_session(runtime_name, runtime_params, artifact_path, n_ctx)
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
                store.put_result(job["items_key"], prepared)
            journal = ItemJournal(journal_path(store.root, job["result_key"]))
            todo = [it for it in items if not journal.done(it["id"])]
            resumed = len(items) - len(todo)
            if resumed or journal.dropped:
                print(f"{job['id']}: {resumed} of {len(items)} items from the journal {journal.path}"
                      + (f" ({journal.dropped} torn lines dropped)" if journal.dropped else ""), flush=True)
            t0 = time.perf_counter()
            size = max(1, suite.min_chunk_items, -(-len(items) // PROGRESS_CHUNKS))
            _write_progress(progress_path, job["id"], resumed, len(items))
            try:
                for start in range(0, len(todo), size):
                    session.reset()  # each chunk scores as in a fresh session: resumed runs match
                    journal.append(suite.score(session, todo[start:start + size], params))
                    _write_progress(progress_path, job["id"], resumed + min(start + size, len(todo)), len(items))
            except SessionRefused as exc:  # this suite cannot run on this session; the others go on
                print(f"{job['id']}: refused: {exc}", flush=True)
                out[job["id"]] = {"refused": str(exc), "load_info": session.info()}
                continue
            out[job["id"]] = {"prepared": prepared, "records": journal.ordered(items), "resumed_items": resumed,
                              "seconds": round(time.perf_counter() - t0, 3), "load_info": session.info()}
    finally:
        session.close()
    return out


class _ProgressFile:
    """Reads a worker's progress lines and forwards them to the run's progress display."""

    def __init__(self, path: Path, record: str, progress: Progress):
        self.path, self.record, self.progress = path, record, progress
        self.offset = 0
        self.started: set[str] = set()
        path.unlink(missing_ok=True)

    def poll(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e["job"] not in self.started:
                self.started.add(e["job"])
                self.progress.step_started(self.record, e["job"], e["total"])
            self.progress.step_advanced(self.record, e["job"], e["done"], e["total"])


# ------------------------------------------------------------------ stages
def suite_and_params(spec: SuiteSpec):
    from harness.suites import REGISTRY

    suite = REGISTRY.get(spec.suite)()
    return suite, suite.Params.model_validate(spec.params)


def runtime_and_params(spec: RuntimeSpec):
    from harness.runtimes import REGISTRY

    runtime = REGISTRY.get(spec.name)()
    return runtime, runtime.Params.model_validate(spec.params)


def derive(rec: Record, model: str, fmt: str, store: Store, env: StageEnv) -> None:
    """The baseline's artifact in ``fmt`` (derived into the store, or the file as given)."""
    from harness.baseline import source_key

    path = Path(env.call(derive_worker, model, fmt, str(store.root), log_name=f"{rec.name}-derive-{fmt}"))
    # a baseline derived into the store (checked there by the worker) names its source's key;
    # one used as it is (a float GGUF, an HF folder) is keyed by its own bytes
    derived = path.parent.parent.resolve() == (store.root / "baselines").resolve()
    manifest = json.loads((path.parent / MANIFEST).read_text()) if derived else {}
    key = manifest.get("source_key") or source_key(path, store.hashes)
    rec.artifact = ArtifactRef(key=f"baseline-{key}-{fmt}", source_key=key, format=fmt, path=str(path),
                               manifest=manifest, reused=None)


def produce(rec: Record, cand: CandidateSpec, baseline_model: str, baseline_source_key: str | None,
            baseline_paths: dict[str, str], store: Store, env: StageEnv) -> None:
    """The candidate's artifact: reused from the store by content key, else quantized.
    ``baseline_paths`` (format -> path) caches the baseline's derived formats across candidates."""
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
        if baseline_source_key is None:
            raise RuntimeError("the baseline could not be derived")
        if input_format not in baseline_paths:
            baseline_paths[input_format] = str(env.call(derive_worker, baseline_model, input_format,
                                                        log_name=f"baseline-derive-{input_format}",
                                                        store_root=str(store.root)))
        source = baseline_paths[input_format]
    calibration = cand.quantizer.calibration.model_dump() if cand.quantizer.calibration else None
    key_inputs = {
        "baseline": baseline_source_key if input_format else None,
        "input_format": input_format,
        "method": quantizer.name,
        "params": params.model_dump(),
        "calibration": calibration_identity(calibration),
        "identity": quantizer.identity(params),
        "versions": quantizer.versions(),
    }
    key = content_key(key_inputs)
    # one producer per key: check, else take the key's lock and check again (another run may
    # have produced it while this one waited), and only then produce
    manifest = store.reusable_manifest("artifacts", key)
    reused = manifest is not None
    if not reused:
        with store.lock("artifacts", key, on_wait=lambda line: env.progress.log(f"  [{rec.name}] {line}")):
            manifest = store.reusable_manifest("artifacts", key)
            reused = manifest is not None
            if not reused:
                env.progress.log(f"  [{rec.name}] producing artifact with {quantizer.name} "
                                 f"{params.model_dump(exclude_defaults=True)}")
                manifest = env.call(quantize_worker, quantizer.name, params.model_dump(), calibration, source,
                                    key, key_inputs, baseline_model, log_name=f"{rec.name}-quantize",
                                    store_root=str(store.root))
    if reused:
        env.progress.log(f"  [{rec.name}] artifact {key} reused from the store")
    folder = store.folder("artifacts", key)
    rec.artifact = ArtifactRef(key=key, format=manifest["format"], path=str(folder / manifest["entry"]),
                               manifest=manifest, reused=reused)


def items_key(suite, sparams, tokenizer_key: str) -> str:
    return "items-" + content_key({"suite": suite.name, "version": suite.version,
                                   "params": sparams.model_dump(), "data": suite.data_identity(sparams),
                                   "tokenizer": tokenizer_key})


def baseline_items(suites: list[SuiteSpec], tokenizer_key: str, store: Store) -> dict[str, SuiteItems]:
    """Each suite's items key under the baseline's tokenizer, and its items where stored."""
    out = {}
    for spec in suites:
        suite, sparams = suite_and_params(spec)
        key = items_key(suite, sparams, tokenizer_key)
        cached = store.get_result(key) or {}
        out[spec.id] = SuiteItems(key=key, items=cached.get("items"), meta=cached.get("meta") or {})
    return out


def evaluate(rec: Record, runtime_spec: RuntimeSpec, suites: list[SuiteSpec], items: dict[str, SuiteItems],
             store: Store, env: StageEnv, repeat: int = 0) -> None:
    """Every suite on ``rec``'s artifact: stored results are reused (by content key), the rest
    scored in one worker. Items a suite has not prepared yet (the baseline's first run) are
    prepared there and stored; ``items`` is updated in place. ``repeat`` > 0: a repeated
    scoring of the same artifact (the noise floor), stored under its own result key."""

    runtime, rparams = runtime_and_params(runtime_spec)
    why = runtime.unavailable()
    if why:
        raise RuntimeError(why)
    versions = runtime.versions()
    rec.runtime = RuntimeInfo(name=runtime.name, params=runtime.describe(rparams), versions=versions)
    artifact = rec.artifact
    adapters = {spec.id: suite_and_params(spec) for spec in suites}
    jobs, result_keys = [], {}
    seen: dict[str, tuple | None] = {}  # each result file as first looked at
    for spec in suites:
        suite, sparams = adapters[spec.id]
        entry = items.get(spec.id)
        if entry is None:
            raise RuntimeError(f"suite {spec.id}: the baseline produced no items to score")
        result_keys[spec.id] = "result-" + content_key({
            "artifact": artifact.key, "artifact_files": files_digest(artifact.manifest),
            "runtime": runtime.name, "versions": versions,
            "runtime_params": runtime.result_identity(rparams), "suite": suite.name,
            "suite_version": suite.version, "items": entry.key, **({"repeat": repeat} if repeat else {})})
        cached = store.get_result(result_keys[spec.id]) if entry.items is not None else None
        seen[result_keys[spec.id]] = _stat(store.result_path(result_keys[spec.id]))
        if cached is not None:
            rec.suites[spec.id] = SuiteResult(**cached, result_key=result_keys[spec.id], reused=True)
            env.progress.step_finished(rec.name, spec.id, "reused", f"{len(cached['records'])} items from the store")
            continue
        jobs.append({"id": spec.id, "suite": suite.name, "params": sparams.model_dump(),
                     "context_length": suite.context_length(sparams), "items": entry.items,
                     "items_key": entry.key, "result_key": result_keys[spec.id]})
    with contextlib.ExitStack() as locks:
        if jobs:  # one scorer per result: another run scoring the same one finishes, this one reuses it
            for key in sorted(j["result_key"] for j in jobs):
                locks.enter_context(store.lock("results", key, on_wait=lambda line: env.progress.log(
                    f"  [{rec.name}] {line}")))
            jobs = [j for j in jobs if not _stored_meanwhile(rec, j, items[j["id"]], store, env, seen)]
        refused = _score_jobs(rec, runtime, rparams, artifact, jobs, items, store, env)
    for spec in suites:
        if spec.id in refused:
            continue
        suite, sparams = adapters[spec.id]
        result, entry = rec.suites[spec.id], items[spec.id]
        result.meta, result.items_key = entry.meta, entry.key
        result.metrics = {m: Metric(**{"better": suite.metrics.get(m), **v})
                          for m, v in suite.aggregate(entry.items, result.records, sparams).items()}
        label_slices(result.records, entry.items)
        for m, v in result.metrics.items():
            rec.metrics[f"{spec.id}.{m}"] = v
    if refused:  # the record is an error; the suites it could score keep their results
        from harness.errors import SessionRefused

        raise SessionRefused("; ".join(f"suite {sid}: {why}" for sid, why in refused.items()))


def label_slices(records: list[dict], items: list[dict] | None) -> None:
    """Copy each item's slice label (an MMLU subject, a JSON-format category, a custom
    suite's ``slice``/language, set when the items were prepared) onto its record, where the
    gates read it (per-slice metrics, ``max_slice_drop``)."""
    labels = {it["id"]: it["slice"] for it in items or [] if it.get("slice") is not None}
    if not labels:
        return
    for r in records:
        if r.get("id") in labels:
            r["slice"] = labels[r["id"]]


def evaluate_repeats(rec: Record, runtime_spec: RuntimeSpec, suites: list[SuiteSpec],
                     items: dict[str, SuiteItems], repeats: int, store: Store, env: StageEnv) -> None:
    """Score ``rec`` (the baseline, already evaluated) ``repeats - 1`` more times, each repeat
    under its own result key (never a cache hit of another), and record every metric's
    values and its run-to-run spread in ``rec.noise_floor`` (``harness.stats.noise_floor``).
    On a bit-deterministic runtime (llama.cpp on a CPU) the spread is 0."""
    from harness.stats import noise_floor

    values = {m: [v.value] for m, v in rec.metrics.items() if v.better is not None}
    keys = []
    for r in range(1, repeats):
        again = Record(name=f"{rec.name}-repeat{r}", role=rec.role, artifact=rec.artifact)
        evaluate(again, runtime_spec, suites, items, store, env, repeat=r)
        keys.append({sid: entry.result_key for sid, entry in again.suites.items()})
        for m, vals in values.items():
            vals.append(again.value(m))
    rec.noise_floor = {"repeats": repeats, "result_keys": keys,
                       "metrics": {m: {"values": v, "floor": noise_floor(v)} for m, v in values.items()}}


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _stored_meanwhile(rec: Record, job: dict, entry: SuiteItems, store: Store, env: StageEnv,
                      seen: dict[str, tuple | None]) -> bool:
    """Whether another run stored this job's result while this one waited for its lock (then
    ``rec`` takes it, as a reused result). A result file unchanged since it was first looked at
    (missing, or refused by its integrity check) is not read again."""
    if _stat(store.result_path(job["result_key"])) == seen.get(job["result_key"]):
        return False
    if entry.items is None:
        prepared = store.get_result(entry.key)
        if prepared is None:
            return False
        entry.items, entry.meta = prepared["items"], prepared.get("meta") or {}
    cached = store.get_result(job["result_key"])
    if cached is None:
        return False
    rec.suites[job["id"]] = SuiteResult(**cached, result_key=job["result_key"], reused=True)
    env.progress.step_finished(rec.name, job["id"], "reused", f"{len(cached['records'])} items from the store")
    return True


def _score_jobs(rec: Record, runtime, rparams, artifact: ArtifactRef, jobs: list[dict],
                items: dict[str, SuiteItems], store: Store, env: StageEnv) -> dict[str, str]:
    """Score ``jobs`` in one worker; store their items (first run) and results. Returns the
    suites the session refused (id -> why)."""
    from harness.journal import journal_path

    refused: dict[str, str] = {}
    result_keys = {j["id"]: j["result_key"] for j in jobs}
    if jobs:
        env.progress.log(f"  [{rec.name}] scoring {', '.join(j['id'] for j in jobs)} on {runtime.name}")
        watch = _ProgressFile(env.logs_dir / f"{rec.name}-evaluate.progress.jsonl", rec.name, env.progress)
        try:
            out = env.call(evaluate_worker, runtime.name, rparams.model_dump(), artifact.path, jobs,
                           log_name=f"{rec.name}-evaluate", preload=tuple(runtime.import_modules),
                           progress_path=str(watch.path), store_root=str(store.root), on_poll=watch.poll)
        except Exception as exc:
            watch.poll()
            for job in jobs:
                env.progress.step_finished(rec.name, job["id"], "error", f"{type(exc).__name__}: {exc}")
            raise
        watch.poll()
        for job in jobs:
            res = out[job["id"]]
            entry = items[job["id"]]
            if "refused" in res:  # the session could not score this suite (its journal is kept)
                refused[job["id"]] = res["refused"]
                env.progress.step_finished(rec.name, job["id"], "error", res["refused"])
                continue
            if res["prepared"] is not None:  # stored by the worker already
                entry.items, entry.meta = res["prepared"]["items"], res["prepared"].get("meta") or {}
            stored = {"records": res["records"], "seconds": res["seconds"], "load_info": res["load_info"]}
            store.put_result(result_keys[job["id"]], stored)
            journal_path(store.root, result_keys[job["id"]]).unlink(missing_ok=True)  # the result holds it now
            resumed = res["resumed_items"]
            rec.suites[job["id"]] = SuiteResult(**stored, result_key=result_keys[job["id"]], reused=False,
                                                resumed_items=resumed)
            n, s = len(res["records"]) - resumed, res["seconds"]
            rate = f" ({n / s:.3g} items/s)" if s else ""
            kept = f", {resumed} from the journal" if resumed else ""
            env.progress.step_finished(rec.name, job["id"], "ok", f"{n} items in {s:.1f} s{rate}{kept}")
    return refused


def probe(rec: Record, runtime_spec: RuntimeSpec, probes: dict[str, dict], env: StageEnv) -> None:
    """The plan's probes on ``rec``'s artifact, in one worker (a fresh process: clean memory)."""
    if not probes:
        return
    from harness.probes.runner import probe_worker
    from harness.results import probe_directions

    runtime, rparams = runtime_and_params(runtime_spec)
    env.progress.step_started(rec.name, "probe", len(probes))
    # the worker is pickled by reference: its module (harness.probes.runner) is light, so the
    # runtime's libraries (preload) are the first heavy imports of the spawned process
    t0 = time.perf_counter()
    try:
        res = env.call(probe_worker, runtime.name, rparams.model_dump(), rec.artifact.path, dict(probes),
                       log_name=f"{rec.name}-probe", preload=tuple(runtime.import_modules))
    except Exception as exc:
        env.progress.step_finished(rec.name, "probe", "error", f"{type(exc).__name__}: {exc}")
        raise
    rec.probes = res["figures"]
    rec.probe_notes = res.get("notes")  # machine, raw repetitions, bandwidth source
    for name, figures in rec.probes.items():
        directions = probe_directions(name, probes.get(name))
        for m, v in figures.items():
            rec.metrics[f"{name}.{m}"] = Metric(value=v, stderr=None, n=1, better=directions.get(m))
    env.progress.step_finished(rec.name, "probe", "ok",
                               f"{', '.join(probes)} in {time.perf_counter() - t0:.1f} s")


def plan_memory(rec: Record, runtime_spec: RuntimeSpec, suites: list[SuiteSpec]) -> None:
    """The memory-fit planner's prediction for this artifact, beside what was measured. A
    prediction is a bonus: a failure is recorded in ``rec.planner``, never raised."""
    from harness import planner
    from harness.results import PLANNER_DIRECTIONS

    n_ctx = max([2048] + [suite.context_length(params) for suite, params in map(suite_and_params, suites)])
    try:
        # the candidate's KV cache type (llama.cpp type_k/type_v, vLLM kv_cache_dtype); f16 by default
        runtime, rparams = runtime_and_params(runtime_spec)
        kv_dtype = runtime.kv_cache_dtype(rparams) or "f16"
        p = planner.plan_memory(rec.artifact.path, None, context=n_ctx, kv_dtype=kv_dtype,
                                runtime=runtime_spec.name if runtime_spec.name in planner.RUNTIMES else None)
    except Exception as exc:
        rec.planner = {"error": f"{type(exc).__name__}: {exc}"}
        return
    out = {"context": n_ctx, "runtime": p["runtime"], "weights_gib": p["weights"]["gib"],
           "bits_per_weight": p["weights"]["bits_per_weight"], "kv_dtype": kv_dtype, "kv_cache_gib": p["kv_cache"]["gib"],
           "reserve_gib": p["reserve"]["gib"], "total_gib": p["total"]["gib"], "exact": p.get("exact"),
           "notes": p.get("notes", [])}
    size = rec.value("size.gib")
    if size:  # weights: prediction vs the artifact on disk (the files include metadata)
        out["weights_error_pct"] = 100.0 * (out["weights_gib"] - size) / size
    _plan_probe_peak(rec, runtime_spec, out)
    rec.planner = out
    for k in ("weights_gib", "kv_cache_gib", "total_gib", "weights_error_pct", "probe_predicted_gib",
              "probe_measured_gib", "probe_error_pct"):
        if out.get(k) is not None:
            rec.metrics[f"planner.{k}"] = Metric(value=out[k], stderr=None, n=1, better=PLANNER_DIRECTIONS.get(k))


def _plan_probe_peak(rec: Record, runtime_spec: RuntimeSpec, out: dict) -> None:
    """The planner's prediction for the probe process's own workload against the model memory
    the memory probe measured there (peak less the memory before loading; on a GPU, the
    process's peak VRAM)."""
    from harness import planner

    notes = rec.probe_notes or {}
    mem = rec.probes.get("memory") or {}
    if not notes.get("n_ctx") or not mem:
        return
    device = "cuda" if str((notes.get("session_info") or {}).get("device", "")).startswith("cuda") else "cpu"
    # on a GPU the process tree's VRAM (vLLM's engine runs in a child); on a CPU this
    # process's own model memory (a multi-process runtime's children are not in it)
    measured = (mem.get("peak_vram_gib") or mem.get("peak_vram_self_gib")) if device == "cuda" \
        else mem.get("model_rss_gib")
    try:
        p = planner.predict_probe_peak(rec.artifact.path, runtime_spec.name, n_ctx=notes["n_ctx"],
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
