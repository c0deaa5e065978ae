"""MLflow logging: a parent run per plan execution, a child run per candidate (and the baseline).

Default store: sqlite in the run folder (artifacts beside it), so a run logs with no
server; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` selects a server.

What one execution logs:

- parent run (named after the quantgate run id): tags ``quantgate.plan``,
  ``quantgate.run_id``, ``quantgate.role`` = comparison, ``quantgate.complete``,
  ``quantgate.accepted`` ("true" when the gates' exit code is 0, set once the run is
  complete and FINISHED), ``exit_code``, ``approved``, ``mlflow.note.content``
  (summary.md); params ``plan``, ``policy``, ``candidates``, ``suites``, ``gates``,
  ``quantgate_version``; metrics ``wall_seconds``, ``candidates``, ``approved``;
  artifacts summary.md, results.json, report.html and ``figures/*.png`` (from
  ``harness.report.figures`` when that module is installed).
- child run per record (named after the candidate): tags ``quantgate.record``, ``verdict``, ``status``,
  ``gate.<gate>`` (PASS/FAIL/INCONCLUSIVE/ERROR), ``quantgate.role``, ``error``; params
  ``method``, ``scheme``, ``bits``, ``group_size``, ``calibration.*``, ``runtime``,
  ``runtime.*``, ``versions.runtime.*``, ``versions.quantizer.*``, ``artifact.*`` and the
  full ``quantizer.*`` spec; metrics every result metric with ``<metric>.stderr``, plus
  ``<suite>.score_seconds`` and ``wall_seconds``; one per-item table per suite
  (``items/<suite>.json``, ``MlflowClient.log_table`` format) and, for a record that
  failed, its stage log under ``logs/``.

Everything logged is read from the typed results (``harness.results.RunResults``).

Tracking is an outbox (:class:`RunLogger`): the run folder holds the truth, MLflow gets a
copy as it goes and can be sent it again later. The parent run is created when the run starts, each record's child run is logged as soon as the
record is finished (``Runner(on_record=...)``), the parent is completed at the end, and it
is tagged ``quantgate.complete`` / ``quantgate.accepted`` only after it is FINISHED, as the
last request. Our calls use short HTTP timeouts and one retry (``HTTP_LIMITS``); the first
call that finds the server unreachable stops all logging for the rest of the run, which
records ``pending`` and the command that logs it later (``quantgate log RUN``). Logging
again is idempotent: runs are found by the tags ``quantgate.run_id`` (and
``quantgate.record`` for children) and completed, never duplicated. :func:`log_run` (all at
once) raises :class:`TrackingUnreachable` when the server cannot be reached. Any other
failure (one param batch, one table, one figure, one file) is recorded in ``errors`` and
the rest is logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.errors import MissingDependency
from harness.results import Record, RunResults

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
MAX_TAG_VALUE = 8000  # ... on a tag value
MAX_KEY = 250  # ... on a param, metric or tag key
MAX_BATCH_PARAMS = 100  # params (and tags) per log_batch request
MAX_BATCH_METRICS = 1000
RESPONSE_CHARS = 2000  # a per-item response is cut to this many characters
REPORT_FILES = ("summary.md", "results.json", "report.html")


class TrackingUnreachable(RuntimeError):
    """The tracking server did not answer at all (refused, timed out, name not resolved)."""


def mlflow_module():
    try:
        import mlflow
    except ImportError:
        raise MissingDependency.of("MLflow tracking", "mlflow", "mlflow") from None
    return mlflow


def redact_uri(uri: str | None) -> str | None:
    """``uri`` without user info (``https://user:token@host`` -> ``https://host``): what results,
    logs and release bundles record, so no credential leaves the machine in them."""
    if not uri:
        return uri
    parts = urlparse(uri)
    if not (parts.username or parts.password):
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return parts._replace(netloc=host).geturl()


def credentialed_uri(recorded: str | None) -> str | None:
    """The recorded (redacted) URI, or ``MLFLOW_TRACKING_URI`` when that names the same server
    with its credentials (a later ``log`` or ``release`` on the machine that has them)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env and recorded and redact_uri(env) == recorded else recorded


def tracking_uri(spec, run_dir: Path) -> tuple[str, bool]:
    """(uri, is_local_default)."""
    if spec.uri:
        return spec.uri, False
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], False
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}", True


# ------------------------------------------------------------------ names and values
def _metric_key(name: str) -> str:
    # MLflow admits alphanumerics, _ - . space / (and : off Windows) in names; "/" would nest
    # in its UI, so only the portable set is kept. A leading "." would read as a relative path.
    key = re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(name))
    if not key or key.startswith("."):
        key = "_" + key
    return key[:MAX_KEY]


_key = _metric_key  # params and tags follow the same rules


def _clip(value: Any, limit: int) -> str:
    s = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    return s if len(s) <= limit else s[: limit - 20] + f"…[+{len(s) - limit + 20} chars]"


def _flat_params(prefix: str, obj: Any, out: dict[str, str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif obj is not None:
        out[_key(prefix)] = _clip(obj, MAX_PARAM_VALUE)


def candidate_params(rec: Record) -> dict[str, str]:
    """The params of one record's child run: short names for comparing runs, then the full spec."""
    q = rec.quantizer or {}
    qp = q.get("params") or {}
    art = rec.artifact
    man = art.manifest if art is not None else {}
    key_inputs = man.get("key_inputs") or {}
    params: dict[str, str] = {"role": rec.role}

    def put(name: str, value: Any) -> None:
        if value is not None and value != "":
            params[_key(name)] = _clip(value, MAX_PARAM_VALUE)

    put("method", q.get("method"))
    # one column across methods: a GGUF type, an llm-compressor scheme, an unquantized format
    scheme = qp.get("scheme") or qp.get("type") or man.get("quant_type")
    if not scheme and q.get("method") in ("unquantized", "prebuilt"):
        scheme = qp.get("format")
    put("scheme", scheme)
    if isinstance(man.get("bits_per_weight"), (int, float)):
        put("bits", f"{man['bits_per_weight']:.3f}")
    put("group_size", qp.get("group_size"))
    cal = q.get("calibration")
    if cal:
        for k in ("source", "samples", "seq_len", "seed"):
            put(f"calibration.{k}", cal.get(k))
        put("calibration.text_sha256", (key_inputs.get("calibration") or {}).get("text_sha256"))
    else:
        put("calibration", "none")
    if q.get("model"):
        put("model", q["model"])
    rt = rec.runtime
    if rt is not None:
        put("runtime", rt.name)
        _flat_params("runtime", rt.params, params)
        _flat_params("versions.runtime", rt.versions, params)
    _flat_params("versions.quantizer", key_inputs.get("versions") or {}, params)
    if man.get("versions") and not key_inputs:  # a derived baseline records its converters' versions
        _flat_params("versions.baseline", man["versions"], params)
    if art is not None:
        put("artifact.key", art.key)
        put("artifact.format", art.format)
        put("artifact.source_key", man.get("source_key"))
        put("artifact.size_bytes", man.get("size_bytes"))
        put("artifact.reused", art.reused)
        if isinstance(man.get("bits_per_weight"), (int, float)):
            put("artifact.bits_per_weight", f"{man['bits_per_weight']:.3f}")
    for k, v in q.items():  # the declared spec, as written
        if k != "calibration":
            _flat_params(f"quantizer.{k}", v, params)
    return params


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def item_table(name: str, records: list[dict]) -> dict[str, list]:
    """A suite's per-item records as table columns: id, prompt_hash, response, target, scores.

    ``scores`` (lm-eval suites) is flattened into one column per score; perplexity records
    give ``logprob_sum``, ``n_scored``, ``n_bytes``, ``n_words`` (and ``windows``: how many
    windows a document spanned), fidelity records the means of their per-token ``kl`` and
    ``dp`` lists with ``same_top``, ``n``, ``ref_tail_mass``. Responses are cut to
    ``RESPONSE_CHARS`` characters; non-text responses (log-likelihoods) are JSON strings.
    """
    rows: list[dict[str, Any]] = []
    for r in records:
        row: dict[str, Any] = {"candidate": name, "id": str(r.get("id")), "prompt_hash": r.get("prompt_hash")}
        resp = r.get("response")
        row["response"] = None if resp is None else _clip(resp, RESPONSE_CHARS)
        tgt = r.get("target")
        row["target"] = None if tgt is None else _clip(tgt, RESPONSE_CHARS)
        for k, v in (r.get("scores") or {}).items():
            row[str(k)] = v
        for k, v in r.items():
            if k in ("id", "prompt_hash", "response", "target", "scores"):
                continue
            if k == "window_logprob_sums" and isinstance(v, list):
                row["windows"] = len(v)
            elif isinstance(v, list) and v and all(_num(x) is not None for x in v):
                row[f"{k}_mean"] = float(sum(v) / len(v))
            elif v is None or isinstance(v, (str, int, float, bool)):
                row.setdefault(k, _clip(v, RESPONSE_CHARS) if isinstance(v, str) else v)
            else:  # filtered responses, sandbox details, ...
                row.setdefault(k, _clip(v, RESPONSE_CHARS))
        if _num(r.get("logprob_sum")) is not None and _num(r.get("n_scored")):
            row["token_nll"] = -float(r["logprob_sum"]) / float(r["n_scored"])
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    return {c: [row.get(c) for row in rows] for c in columns}


# ------------------------------------------------------------------ reachability
def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the server could not be reached at all."""
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, requests.exceptions.SSLError):
            return False
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        text = str(exc)
        if "Max retries exceeded" in text and ("NewConnectionError" in text or "Connection refused" in text
                                               or "NameResolutionError" in text or "timed out" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """For an http(s) tracking URI: one request, no retries; raises TrackingUnreachable when
    nothing answers (any HTTP answer, even 401/404, counts as reachable)."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name",
                     params={"experiment_name": "quantgate-reachability-check"}, timeout=timeout)
    except requests.exceptions.SSLError:
        return  # it answered; the client's own TLS settings decide
    except requests.exceptions.RequestException as exc:
        m = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
        reason = m.group(0).strip() if m else f"{type(exc).__name__}: {str(exc)[:300]}"
        raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {redact_uri(uri)}: {reason}") from exc


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment's runs table (or of one run) on an http(s) server.

    Child runs show nested under their parent (expand it); the ``verdict`` tag and any
    metric or param are added as columns through "Columns"."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    base = f"{uri.rstrip('/')}/#/experiments/{experiment_id}"
    # MLflow 3's UI opens an experiment on its GenAI overview unless asked for the training runs
    return f"{base}/runs/{run_id}" if run_id else f"{base}/runs?workflowType=machine_learning"


# ------------------------------------------------------------------ HTTP limits
#: MLflow's own HTTP settings for our calls, unless the user set them: MLflow's defaults (7
#: retries, backoff factor 2, 120 s timeout) take about 250 s to give up on a dead server.
#: A refused connection now fails in milliseconds; a server that accepts and never answers
#: costs (1 + retries) x timeout = 10 s, after which nothing more is sent in this run.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # no "View run ... at ..." lines in the middle of a run's progress (and one get_run less)
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@contextlib.contextmanager
def http_limits():
    """``HTTP_LIMITS`` in the environment while MLflow is called (MLflow reads them per
    request); a variable the user set wins. Restored afterwards, so worker processes started
    later do not inherit them. MLflow's warnings (pandas deprecations in ``log_table``) are
    silenced meanwhile: they would land in the middle of the run's progress display."""
    import warnings

    added = [k for k in HTTP_LIMITS if k not in os.environ]
    for k in added:
        os.environ[k] = HTTP_LIMITS[k]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for k in added:
            os.environ.pop(k, None)


#: the failure line is kept under the CLI's cap on an error line
LINE_CHARS = 480


def _one_line(value: Any, limit: int = 400) -> str:
    return _clip(" ".join(str(value).split()), limit)


def _why(exc: BaseException) -> str:
    """The short reason a request failed: the OS error or the timeout, else the exception."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        m = re.search(r"\[Errno -?\d+\][^'\")]*", text)
        if m:
            return m.group(0).strip()
        m = re.search(r"Read timed out[^'\")]*|timed out|NameResolutionError|Connection (?:refused|reset|aborted)", text)
        if m:
            return m.group(0).strip().rstrip(".")
        e = e.__cause__ or e.__context__
    return f"{type(exc).__name__}: {_one_line(exc, 200)}"


# ------------------------------------------------------------------ logging
def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _record_metrics(rec: Record, now: int) -> list:
    from mlflow.entities import Metric

    out: dict[str, Any] = {}
    for name, m in rec.metrics.items():
        value = _num(m.value)
        if value is None:
            continue
        out[_metric_key(name)] = Metric(_metric_key(name), value, now, 0)
        stderr = _num(m.stderr)
        if stderr is not None:
            k = _metric_key(name + ".stderr")
            out[k] = Metric(k, stderr, now, 0)
    for sid, entry in rec.suites.items():
        secs = _num(entry.seconds)
        k = _metric_key(f"{sid}.score_seconds")
        if secs is not None and k not in out:
            out[k] = Metric(k, secs, now, 0)
    if _num(rec.seconds) is not None and "wall_seconds" not in out:
        out["wall_seconds"] = Metric("wall_seconds", float(rec.seconds), now, 0)
    return list(out.values())


def _record_tags(rec: Record) -> dict[str, str]:
    """What a record's child run is tagged with once the run is decided (verdict, gates)."""
    tags = {"verdict": rec.verdict or "", "status": rec.status, "quantgate.candidate": rec.name}
    for v in rec.verdicts:
        tags[_key(f"gate.{v.gate}")] = str(v.verdict)
    if rec.error is not None:
        tags["error"] = _clip(f"{rec.error.stage}: {rec.error.message}", 4000)
    return tags


def _ms(iso: str | None) -> int | None:
    """An ISO 8601 time (results.json's ``started``/``finished``) in ms since the epoch."""
    if not iso:
        return None
    import datetime as dt

    try:
        return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)
    except ValueError:
        return None


_TERMINATED = ("FINISHED", "FAILED", "KILLED")


class RunLogger:
    """Logs one run to MLflow as it goes: an outbox, the files on disk stay the truth.

    ``start`` creates (or finds again, by the tag ``quantgate.run_id``) the parent run;
    ``record_finished`` logs a finished record's child run at once (tagged ``quantgate.record``),
    so a watcher sees each candidate as it finishes; ``finish`` adds the verdicts, the
    parent's params, metrics, tags, report files and figures, sets the parent FINISHED and
    only then tags it ``quantgate.complete`` and ``quantgate.accepted`` (one batch, the last
    request). Every step is idempotent: a run logged again (``quantgate log``) finds its
    parent and children and completes what is missing (a child run that is terminated is
    complete and is not logged twice; a complete parent is left as it is).

    No method raises. The first call that finds the server unreachable (refused, timed out,
    name not resolved) stops all logging for the rest of the run: ``failed`` is then true,
    ``failure`` says why and ``finish`` returns what results.json records (``pending``, the
    gate exit code, the command that logs the run later). Any other failure of one step (a
    table, a figure, a param batch) is recorded in ``errors`` and the rest is logged.
    Thread-safe (one call at a time).
    """

    def __init__(self, spec, run_dir: Path | None = None):
        self.spec = spec
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.uri: str | None = None
        self.local = False
        self.client = None
        self.exp_id: str | None = None
        self.parent_id: str | None = None
        self.run_id: str | None = None
        self.plan_name: str | None = None
        self.children: dict[str, str] = {}  # record name -> child run id
        self.done: set[str] = set()  # records whose child run is complete (terminated)
        self.tables: dict[str, list[str]] = {}
        self.errors: list[dict[str, str]] = []
        self.failure: BaseException | None = None
        self.gave_up: dict[str, Any] | None = None  # the call that found the server gone, and its time
        self.reused = False  # the parent run existed already
        self.already_complete = False  # ... and was complete: nothing was logged
        self.calls = 0  # requests made (each with MLflow's own retries)
        self.seconds = 0.0  # time spent in them
        self._parent_params: set[str] = set()
        self._parent_metrics: set[str] = set()
        self._parent_tags: dict[str, str] = {}
        self._backdated = False
        self._lock = threading.RLock()

    @property
    def failed(self) -> bool:
        return self.failure is not None

    # ---- calls
    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc

    def _remote(self, what: str, fn, *args, **kwargs) -> tuple[bool, Any]:
        """One request: (succeeded, what it returned); a failure is recorded, except a server
        that cannot be reached, which raises ``TrackingUnreachable``."""
        t0 = time.perf_counter()
        self.calls += 1
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:
            if _unreachable(exc):
                self.gave_up = {"what": what, "seconds": round(time.perf_counter() - t0, 2), "call": self.calls}
                raise TrackingUnreachable(f"lost the MLflow tracking server at {redact_uri(self.uri)} while logging {what} "
                                          f"({_why(exc)})") from exc
            self.errors.append({"what": what, "error": f"{type(exc).__name__}: {str(exc)[:1000]}"})
            return False, None
        finally:
            self.seconds += time.perf_counter() - t0

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        return self._remote(what, fn, *args, **kwargs)[1]

    def _local(self, what: str, fn, *args, **kwargs) -> Any:
        """Work done here (a table built, a figure drawn): a failure is recorded."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self.errors.append({"what": what, "error": f"{type(exc).__name__}: {str(exc)[:1000]}"})
            return None

    def _essential(self, what: str, fn, *args, **kwargs) -> Any:
        """A request without which nothing can be logged: any failure raises."""
        t0 = time.perf_counter()
        self.calls += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _unreachable(exc):
                self.gave_up = {"what": what, "seconds": round(time.perf_counter() - t0, 2), "call": self.calls}
                raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {redact_uri(self.uri)}: "
                                          f"{_why(exc)}") from exc
            raise
        finally:
            self.seconds += time.perf_counter() - t0

    def _batch(self, run_id: str, what: str, metrics=(), params=None, tags=None) -> bool:
        from mlflow.entities import Param, RunTag

        ok = True
        for chunk in _chunks([Param(k, v) for k, v in (params or {}).items()], MAX_BATCH_PARAMS):
            ok &= self._remote(f"{what} params", self.client.log_batch, run_id, params=chunk)[0]
        for chunk in _chunks([RunTag(k, v) for k, v in (tags or {}).items()], MAX_BATCH_PARAMS):
            ok &= self._remote(f"{what} tags", self.client.log_batch, run_id, tags=chunk)[0]
        for chunk in _chunks(list(metrics), MAX_BATCH_METRICS):
            ok &= self._remote(f"{what} metrics", self.client.log_batch, run_id, metrics=chunk)[0]
        return ok

    def _search(self, what: str, filter_string: str) -> list:
        out, token = [], None
        while True:
            page = self._essential(what, self.client.search_runs, [self.exp_id], filter_string=filter_string,
                                   max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    # ---- start
    def start(self, run_id: str, plan: Any, run_dir: Path | None = None, started: str | None = None) -> bool:
        """Create the parent run (or find it again); False when MLflow cannot be used."""
        with self._lock:
            if run_dir is not None:
                self.run_dir = Path(run_dir)
            plan = plan if isinstance(plan, dict) else plan.model_dump(mode="json")
            self.run_id, self.plan_name = run_id, plan["name"]
            if self.failure is not None or self.parent_id is not None:
                return self.failure is None
            try:
                with http_limits():
                    self._start(started)
            except Exception as exc:
                self._fail(exc)
            return self.failure is None

    def _start(self, started: str | None) -> None:
        mlflow_module()
        from mlflow.tracking import MlflowClient

        self.uri, self.local = tracking_uri(self.spec, self.run_dir)
        if self.local:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.calls += 1
        t0 = time.perf_counter()
        try:
            check_reachable(self.uri, timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 5)))
        except TrackingUnreachable:
            self.gave_up = {"what": "reachability check", "seconds": round(time.perf_counter() - t0, 2), "call": 1}
            raise
        finally:
            self.seconds += time.perf_counter() - t0
        self.client = client = MlflowClient(tracking_uri=self.uri)
        exp = self._essential("experiment", client.get_experiment_by_name, self.spec.experiment)
        if exp is None:
            location = (self.run_dir / "mlartifacts").resolve().as_uri() if self.local else None
            self.exp_id = self._essential("experiment", client.create_experiment, self.spec.experiment,
                                          artifact_location=location,
                                          tags={"mlflow.experimentKind": "custom_model_development"})
        else:
            self.exp_id = exp.experiment_id
        found = self._search("find the parent run", f"tags.`quantgate.run_id` = '{_quote(self.run_id)}' "
                                                    "AND tags.`quantgate.role` = 'comparison'")
        if found:
            found.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))  # the first one logged
            parent = found[0]
            self.parent_id, self.reused = parent.info.run_id, True
            self._parent_params = set(parent.data.params)
            self._parent_metrics = set(parent.data.metrics)
            self._parent_tags = dict(parent.data.tags)
            self.already_complete = (parent.info.status == "FINISHED"
                                     and parent.data.tags.get("quantgate.complete") == "true")
            for child in self._search("find the child runs", f"tags.`mlflow.parentRunId` = '{self.parent_id}'"):
                tags = child.data.tags
                name = tags.get("quantgate.record") or tags.get("quantgate.candidate") or child.info.run_name
                if name in self.done:
                    continue  # a duplicate of a complete one
                self.children[name] = child.info.run_id
                if child.info.status in _TERMINATED:
                    self.done.add(name)
            return
        parent = self._essential("parent run", client.create_run, self.exp_id, run_name=self.run_id,
                                 start_time=_ms(started), tags={
                                     "quantgate.run_id": self.run_id, "quantgate.plan": self.plan_name,
                                     "quantgate.role": "comparison", "quantgate.accepted": "false",
                                     "quantgate.complete": "false"})
        self.parent_id = parent.info.run_id
        self._backdated = started is not None

    # ---- one record
    def record_finished(self, rec: Record) -> None:
        """Log a finished record's child run now (the hook ``Runner(on_record=...)`` calls)."""
        with self._lock:
            if self.failure is not None or self.parent_id is None or rec.name in self.done:
                return
            try:
                with http_limits():
                    self._log_record(rec)
            except TrackingUnreachable as exc:
                self._fail(exc)
            except Exception as exc:  # a bug here must not cost the other records
                self.errors.append({"what": f"child run {rec.name}", "error": f"{type(exc).__name__}: {exc}"})

    def _log_record(self, rec: Record) -> None:
        client = self.client
        now = int(time.time() * 1000)
        cid = self.children.get(rec.name)
        existing = None
        if cid is None:
            child = self._call(f"child run {rec.name}", client.create_run, self.exp_id, run_name=rec.name, tags={
                "mlflow.parentRunId": self.parent_id, "quantgate.role": rec.role, "quantgate.run_id": self.run_id,
                "quantgate.plan": self.plan_name, "quantgate.record": rec.name, "quantgate.candidate": rec.name})
            if child is None:
                return
            cid = self.children[rec.name] = child.info.run_id
        else:  # left half-logged: complete what is missing
            existing = self._call(f"child run {rec.name} (read)", client.get_run, cid)
            if existing is None:
                return
        have_params = set(existing.data.params) if existing else set()
        have_metrics = set(existing.data.metrics) if existing else set()
        tags = {"status": rec.status, "quantgate.record": rec.name, "quantgate.candidate": rec.name}
        if rec.error is not None:
            tags["error"] = _clip(f"{rec.error.stage}: {rec.error.message}", 4000)
        self._batch(cid, rec.name, metrics=[m for m in _record_metrics(rec, now) if m.key not in have_metrics],
                    params={k: v for k, v in candidate_params(rec).items() if k not in have_params}, tags=tags)
        have_files: set[str] = set()
        if existing is not None:  # log_table appends to a table that exists: never log one twice
            have_files = {f.path for f in self._call(f"{rec.name} artifacts", client.list_artifacts, cid, "items")
                          or []}
        for sid, entry in rec.suites.items():
            if not entry.records:
                continue
            path = f"items/{_key(sid).replace(' ', '_')}.json"
            if path in have_files:
                self.tables.setdefault(rec.name, []).append(path)
                continue
            table = self._local(f"{rec.name} table {path} (build)", item_table, rec.name, entry.records)
            if table is not None and self._remote(f"{rec.name} table {path}", client.log_table, cid,
                                                  data=table, artifact_file=path)[0]:
                self.tables.setdefault(rec.name, []).append(path)
        if rec.probes or rec.planner:
            # the probes' raw repetitions, machine notes and the planner's prediction beside them
            self._call(f"{rec.name} probes.json", client.log_dict, cid,
                       {"figures": rec.probes, "notes": rec.probe_notes, "planner": rec.planner}, "probes.json")
        err_log = rec.error.log if rec.error is not None else None
        if err_log and Path(err_log).is_file():
            self._call(f"{rec.name} log {err_log}", client.log_artifact, cid, err_log, "logs")
        # terminated last: a terminated child run is a complete one
        if self._remote(f"{rec.name} status", client.set_terminated, cid,
                        "FINISHED" if rec.status == "ok" else "FAILED")[0]:
            self.done.add(rec.name)

    # ---- the end
    def finish(self, results: RunResults, files_dir: Path | None = None, exit_code: int | None = None) -> dict:
        """The verdicts, the parent's params, metrics, tags, files and figures; FINISHED; then
        ``quantgate.complete`` and ``quantgate.accepted``. Returns results.json's ``tracking``.

        ``files_dir``: where summary.md, results.json and report.html are (the run folder);
        ``exit_code``: the gates' exit code (default ``results.exit_code``), which decides
        ``quantgate.accepted``."""
        code = results.exit_code if exit_code is None else exit_code
        with self._lock:
            if self.parent_id is None and self.failure is None:
                self.start(results.run_id, results.plan, started=results.started)
            out: dict[str, Any] = {}
            if self.failure is None and not self.already_complete:
                try:
                    with http_limits():
                        out = self._finish(results, Path(files_dir or self.run_dir), code)
                except TrackingUnreachable as exc:
                    self._fail(exc)
                except Exception as exc:
                    self._fail(exc)
            return self.tracking(results, code, out)

    def _finish(self, results: RunResults, files_dir: Path, code: int | None) -> dict:
        client, pid = self.client, self.parent_id
        records = results.records()
        for rec in records:  # any record the hook did not log (log_run, quantgate log, a hook that failed)
            if rec.name not in self.done:
                self._log_record(rec)
        for rec in records:  # decided now: verdicts and gates
            if rec.name in self.children:
                self._batch(self.children[rec.name], f"{rec.name} verdict", tags=_record_tags(rec))
        now = int(time.time() * 1000)
        plan, policy = results.plan, results.policy
        parent_tags = {"exit_code": str(code), "approved": ",".join(results.approved) or "(none)"}
        summary = files_dir / "summary.md"
        if summary.is_file():
            parent_tags["mlflow.note.content"] = _clip(summary.read_text(errors="replace"), MAX_TAG_VALUE)
        params = {
            "plan": plan["name"], "policy": policy.get("name", "inline"),
            "candidates": ",".join(c.name for c in results.candidates),
            "baseline": results.baseline.name,
            "suites": ",".join(s.get("name") or s.get("suite") for s in plan.get("suites") or []),
            "gates": ",".join(g.get("name", "?") for g in policy.get("gates") or []),
            "quantgate_version": results.quantgate_version,
            "plan_file": results.plan_file,
        }
        from mlflow.entities import Metric

        metrics = [Metric("candidates", float(len(results.candidates)), now, 0),
                   Metric("approved", float(len(results.approved)), now, 0)]
        if _num(results.wall_seconds) is not None:
            metrics.append(Metric("wall_seconds", float(results.wall_seconds), now, 0))
        self._batch(pid, "parent", metrics=[m for m in metrics if m.key not in self._parent_metrics],
                    params={_key(k): _clip(v, MAX_PARAM_VALUE) for k, v in params.items()
                            if v and _key(k) not in self._parent_params}, tags=parent_tags)
        artifacts = []
        for name in REPORT_FILES:
            if (files_dir / name).is_file():
                if self._remote(f"artifact {name}", client.log_artifact, pid, str(files_dir / name))[0]:
                    artifacts.append(name)
        figures = self._figures(results)
        if self.errors:
            self._call("parent error tag", client.set_tag, pid, "quantgate.logging_errors", str(len(self.errors)))
        complete = ("results.json" in artifacts and all(r.name in self.done for r in records))
        # a run logged after the fact keeps its own times (start_time given to start)
        end_time = _ms(results.finished) if self.reused or self._backdated else None
        finished = self._remote("parent status", client.set_terminated, pid, "FINISHED", end_time=end_time)[0]
        accepted = False
        if finished and complete:  # the last request: accepted only once complete and FINISHED
            from mlflow.entities import RunTag

            accepted = code == 0
            if not self._remote("parent accepted tag", client.log_batch, pid, tags=[
                    RunTag("quantgate.complete", "true"), RunTag("quantgate.accepted", "true" if accepted else "false")])[0]:
                complete = accepted = False
        return {"accepted": accepted, "complete": finished and complete, "artifacts": artifacts, "figures": figures}

    def _figures(self, results: RunResults) -> list[str]:
        """Figures from harness.report.figures (when installed) as PNGs of the parent run."""
        try:
            from harness.report import figures
        except ImportError:
            return []
        logged: list[str] = []

        def one(fig, path: str) -> None:
            try:
                if self._remote(f"figure {path}", self.client.log_figure, self.parent_id, fig, path)[0]:
                    logged.append(path)
            finally:  # figures hold memory; pyplot keeps the ones it made
                try:
                    import matplotlib.pyplot as plt

                    plt.close(fig)
                except Exception:
                    pass

        if hasattr(figures, "pareto"):
            fig = self._local("figure pareto", figures.pareto, results)
            if fig is not None:
                one(fig, "figures/pareto.png")
        if hasattr(figures, "suite_bars"):
            for name, fig in self._local("figure suite_bars", figures.suite_bars, results) or []:
                one(fig, f"figures/{_key(name).replace(' ', '_')}.png")
        return logged

    # ---- what results.json records
    def abort(self, status: str = "KILLED") -> None:
        """The run stopped before its end (Ctrl-C, a crash): mark the parent run so, never
        accepted; ``quantgate log RUN`` completes it later if the run's files were written."""
        with self._lock:
            if self.failure is not None or self.parent_id is None:
                return
            try:
                self._remote("mark the parent run stopped", self.client.set_terminated, self.parent_id, status)
            except Exception as exc:  # noqa: BLE001 - best effort on the way out
                self._fail(exc)

    def log_command(self, run_dir: Path | str | None = None) -> str:
        """The command that logs this run later."""
        import shlex

        where = Path(run_dir or self.run_dir or ".")
        uri, local = (self.uri, self.local) if self.uri else tracking_uri(self.spec, where)
        cmd = f"quantgate log {shlex.quote(str(where))}"
        return cmd if local or not uri else f"{cmd} --uri {shlex.quote(redact_uri(uri))}"

    def failure_line(self, run_dir: Path | str | None = None) -> str:
        """One line: why logging stopped, and the command that logs the run later."""
        tail = f"; the results are kept on disk, log them later with: {self.log_command(run_dir)}"
        head = f"MLflow logging failed: {type(self.failure).__name__}: {self.failure}"
        return _one_line(head, max(80, LINE_CHARS - len(tail))) + tail  # the command is never cut

    def tracking(self, results: RunResults, code: int | None, done: dict | None = None) -> dict:
        done = done or {}
        out: dict[str, Any] = {
            "uri": redact_uri(self.uri), "local": self.local, "experiment": self.spec.experiment,
            "experiment_id": self.exp_id, "parent_run_id": self.parent_id,
            "child_run_ids": dict(self.children),
            "accepted": done.get("accepted", self.already_complete and self._parent_tags.get("quantgate.accepted") == "true"),
            "complete": done.get("complete", self.already_complete),
            "artifacts": done.get("artifacts", []), "tables": self.tables, "figures": done.get("figures", []),
            "errors": self.errors, "seconds": round(self.seconds, 2), "calls": self.calls,
        }
        if self.already_complete:
            out["already_complete"] = True
        if self.failure is not None:
            out.update(error=f"{type(self.failure).__name__}: {self.failure}", pending=True, gate_exit_code=code,
                       log_command=self.log_command(), gave_up=self.gave_up)
        if self.uri and self.exp_id and ui_url(self.uri, self.exp_id):
            out["experiment_url"] = ui_url(self.uri, self.exp_id)
            if self.parent_id:
                out["ui_url"] = ui_url(self.uri, self.exp_id, self.parent_id)
            out["child_ui_urls"] = {n: ui_url(self.uri, self.exp_id, c) for n, c in self.children.items()}
        elif self.local and self.uri:
            out["ui_command"] = f"mlflow ui --backend-store-uri {redact_uri(self.uri)}"
        return out


def _quote(value: str) -> str:
    """A value inside a search filter's single quotes."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def gate_exit_code(results: RunResults) -> int | None:
    """The exit code the gates gave a stored run, before any MLflow failure made it 2."""
    tr = results.tracking or {}
    if "gate_exit_code" in tr:
        return tr["gate_exit_code"]
    return results.exit_code


def log_run(results: RunResults, spec, run_dir: Path) -> dict:
    """Log finished ``results`` (start, every record, finish); returns what results.json
    records about it (``tracking``). Raises ``TrackingUnreachable`` when the server cannot be
    reached (or the error that kept the parent run from being created)."""
    logger = RunLogger(spec, run_dir)
    logger.start(results.run_id, results.plan, started=results.started)
    out = logger.finish(results)
    if logger.failure is not None:
        raise logger.failure
    return out
