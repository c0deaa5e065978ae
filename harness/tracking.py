"""MLflow logging: a parent run per plan execution, a child run per candidate (and the baseline).

Default store: sqlite in the run folder (artifacts beside it), so a run logs with no
server; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` selects a server.

What one execution logs:

- parent run (named after the quantgate run id): tags ``quantgate.plan``,
  ``quantgate.run_id``, ``quantgate.role`` = comparison, ``quantgate.accepted``
  ("true" when the exit code is 0), ``exit_code``, ``approved``, ``mlflow.note.content``
  (summary.md); params ``plan``, ``policy``, ``candidates``, ``suites``, ``gates``,
  ``quantgate_version``; metrics ``wall_seconds``, ``candidates``, ``approved``;
  artifacts summary.md, results.json, report.html and ``figures/*.png`` (from
  ``harness.report.figures`` when that module is installed).
- child run per record (named after the candidate): tags ``verdict``, ``status``,
  ``gate.<gate>`` (PASS/FAIL/INCONCLUSIVE/ERROR), ``quantgate.role``, ``error``; params
  ``method``, ``scheme``, ``bits``, ``group_size``, ``calibration.*``, ``runtime``,
  ``runtime.*``, ``versions.runtime.*``, ``versions.quantizer.*``, ``artifact.*`` and the
  full ``quantizer.*`` spec; metrics every result metric with ``<metric>.stderr``, plus
  ``<suite>.score_seconds`` and ``wall_seconds``; one per-item table per suite
  (``items/<suite>.json``, ``MlflowClient.log_table`` format) and, for a record that
  failed, its stage log under ``logs/``.

Everything logged is read from the typed results (``harness.results.RunResults``).

A tracking server that cannot be reached at all raises :class:`TrackingUnreachable`
(the CLI turns it into exit code 2). Any other failure (one param batch, one table, one
figure, one file) is recorded in the returned dict's ``errors`` and the rest is logged.
"""

from __future__ import annotations

import json
import os
import re
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
        raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {uri}: {reason}") from exc


def ui_url(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI page of an experiment's runs table (or of one run) on an http(s) server.

    Child runs show nested under their parent (expand it); the ``verdict`` tag and any
    metric or param are added as columns through "Columns"."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    base = f"{uri.rstrip('/')}/#/experiments/{experiment_id}"
    # MLflow 3's UI opens an experiment on its GenAI overview unless asked for the training runs
    return f"{base}/runs/{run_id}" if run_id else f"{base}/runs?workflowType=machine_learning"


# ------------------------------------------------------------------ logging
class _Log:
    """Runs one logging step; a failure is recorded (unless the server is gone: that raises)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.errors: list[dict[str, str]] = []

    def __call__(self, what: str, fn, *args, **kwargs) -> Any:
        return self.step(what, fn, *args, **kwargs)[1]

    def step(self, what: str, fn, *args, **kwargs) -> tuple[bool, Any]:
        """(succeeded, what ``fn`` returned)."""
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:
            if _unreachable(exc):
                raise TrackingUnreachable(f"lost the MLflow tracking server at {self.uri} while logging "
                                          f"{what}: {type(exc).__name__}: {str(exc)[:500]}") from exc
            self.errors.append({"what": what, "error": f"{type(exc).__name__}: {str(exc)[:1000]}"})
            return False, None


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _log_batch(client, log: _Log, run_id: str, what: str, metrics=(), params=None, tags=None) -> None:
    from mlflow.entities import Param, RunTag

    for chunk in _chunks([Param(k, v) for k, v in (params or {}).items()], MAX_BATCH_PARAMS):
        log(f"{what} params", client.log_batch, run_id, params=chunk)
    for chunk in _chunks([RunTag(k, v) for k, v in (tags or {}).items()], MAX_BATCH_PARAMS):
        log(f"{what} tags", client.log_batch, run_id, tags=chunk)
    for chunk in _chunks(list(metrics), MAX_BATCH_METRICS):
        log(f"{what} metrics", client.log_batch, run_id, metrics=chunk)


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
    tags = {"verdict": rec.verdict or "", "status": rec.status, "quantgate.candidate": rec.name}
    for v in rec.verdicts:
        tags[_key(f"gate.{v.gate}")] = str(v.verdict)
    if rec.error is not None:
        tags["error"] = _clip(f"{rec.error.stage}: {rec.error.message}", 4000)
    return tags


def _log_figures(client, log: _Log, results: RunResults, run_id: str) -> list[str]:
    """Figures from harness.report.figures (when installed) as PNGs of the parent run."""
    try:
        from harness.report import figures
    except ImportError:
        return []
    logged: list[str] = []

    def one(fig, path: str) -> None:
        try:
            client.log_figure(run_id, fig, path)
            logged.append(path)
        finally:  # figures hold memory; pyplot keeps the ones it made
            try:
                import matplotlib.pyplot as plt

                plt.close(fig)
            except Exception:
                pass

    if hasattr(figures, "pareto"):
        fig = log("figure pareto", figures.pareto, results)
        if fig is not None:
            log("figure figures/pareto.png", one, fig, "figures/pareto.png")
    if hasattr(figures, "suite_bars"):
        for name, fig in log("figure suite_bars", figures.suite_bars, results) or []:
            path = f"figures/{_key(name).replace(' ', '_')}.png"
            log(f"figure {path}", one, fig, path)
    return logged


def log_run(results: RunResults, spec, run_dir: Path) -> dict:
    """Log ``results`` to MLflow; returns what results.json records about it (``tracking``)."""
    mlflow_module()
    from mlflow.tracking import MlflowClient

    t_start = time.perf_counter()
    uri, local = tracking_uri(spec, run_dir)
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    log = _Log(uri)
    try:  # these must work: without an experiment and a parent run nothing can be logged
        exp = client.get_experiment_by_name(spec.experiment)
        if exp is None:
            artifact_location = (run_dir / "mlartifacts").resolve().as_uri() if local else None
            exp_id = client.create_experiment(spec.experiment, artifact_location=artifact_location,
                                              tags={"mlflow.experimentKind": "custom_model_development"})
        else:
            exp_id = exp.experiment_id
        plan = results.plan
        accepted = results.exit_code == 0
        parent = client.create_run(exp_id, run_name=results.run_id, tags={
            "quantgate.run_id": results.run_id, "quantgate.plan": plan["name"],
            "quantgate.role": "comparison", "quantgate.accepted": "true" if accepted else "false"})
    except Exception as exc:
        if _unreachable(exc):
            raise TrackingUnreachable(f"cannot reach the MLflow tracking server at {uri}: {exc}") from exc
        raise
    pid = parent.info.run_id
    now = int(time.time() * 1000)
    records = results.records()
    policy = results.policy
    parent_tags = {"exit_code": str(results.exit_code), "approved": ",".join(results.approved) or "(none)"}
    summary = run_dir / "summary.md"
    if summary.is_file():
        parent_tags["mlflow.note.content"] = _clip(summary.read_text(errors="replace"), MAX_TAG_VALUE)
    parent_params = {
        "plan": plan["name"], "policy": policy.get("name", "inline"),
        "candidates": ",".join(c.name for c in results.candidates),
        "baseline": results.baseline.name,
        "suites": ",".join(s.get("name") or s.get("suite") for s in plan.get("suites") or []),
        "gates": ",".join(g.get("name", "?") for g in policy.get("gates") or []),
        "quantgate_version": results.quantgate_version,
        "plan_file": results.plan_file,
    }
    from mlflow.entities import Metric

    parent_metrics = [Metric("candidates", float(len(results.candidates)), now, 0),
                      Metric("approved", float(len(results.approved)), now, 0)]
    if _num(results.wall_seconds) is not None:
        parent_metrics.append(Metric("wall_seconds", float(results.wall_seconds), now, 0))
    _log_batch(client, log, pid, "parent", metrics=parent_metrics,
               params={_key(k): _clip(v, MAX_PARAM_VALUE) for k, v in parent_params.items() if v},
               tags=parent_tags)

    child_ids: dict[str, str] = {}
    tables: dict[str, list[str]] = {}
    for rec in records:
        child = log(f"child run {rec.name}", client.create_run, exp_id, run_name=rec.name, tags={
            "mlflow.parentRunId": pid, "quantgate.role": rec.role, "quantgate.run_id": results.run_id,
            "quantgate.plan": plan["name"]})
        if child is None:
            continue
        cid = child.info.run_id
        child_ids[rec.name] = cid
        _log_batch(client, log, cid, rec.name, metrics=_record_metrics(rec, now),
                   params=candidate_params(rec), tags=_record_tags(rec))
        for sid, entry in rec.suites.items():
            if not entry.records:
                continue
            path = f"items/{_key(sid).replace(' ', '_')}.json"
            table = log(f"{rec.name} table {path} (build)", item_table, rec.name, entry.records)
            if table is not None and log.step(f"{rec.name} table {path}", client.log_table, cid,
                                              data=table, artifact_file=path)[0]:
                tables.setdefault(rec.name, []).append(path)
        if rec.probes or rec.planner:
            # the probes' raw repetitions, machine notes and the planner's prediction beside them
            log(f"{rec.name} probes.json", client.log_dict, cid,
                {"figures": rec.probes, "notes": rec.probe_notes, "planner": rec.planner}, "probes.json")
        err_log = rec.error.log if rec.error is not None else None
        if err_log and Path(err_log).is_file():
            log(f"{rec.name} log {err_log}", client.log_artifact, cid, err_log, "logs")
        log(f"{rec.name} status", client.set_terminated, cid, "FINISHED" if rec.status == "ok" else "FAILED")

    artifacts = []
    for name in REPORT_FILES:
        if (run_dir / name).is_file():
            if log.step(f"artifact {name}", client.log_artifact, pid, str(run_dir / name))[0]:
                artifacts.append(name)
    figures = _log_figures(client, log, results, pid)
    if log.errors:
        log("parent error tag", client.set_tag, pid, "quantgate.logging_errors", str(len(log.errors)))
    log("parent status", client.set_terminated, pid, "FINISHED")

    out = {"uri": uri, "experiment": spec.experiment, "experiment_id": exp_id, "parent_run_id": pid,
           "child_run_ids": child_ids, "accepted": accepted, "artifacts": artifacts, "tables": tables,
           "figures": figures, "errors": log.errors, "seconds": round(time.perf_counter() - t_start, 2)}
    if ui_url(uri, exp_id):
        out["ui_url"] = ui_url(uri, exp_id, pid)
        out["experiment_url"] = ui_url(uri, exp_id)
        out["child_ui_urls"] = {n: ui_url(uri, exp_id, c) for n, c in child_ids.items()}
    elif local:
        out["ui_command"] = f"mlflow ui --backend-store-uri {uri}"
    return out
