"""Run history from the MLflow tracking store: the last accepted run of a plan, metric trends.

Pure functions of the tracking store (nothing is written, no global MLflow state is
touched). They read what :class:`harness.tracking.RunLogger` writes: one parent run per plan
execution tagged ``quantgate.plan``, ``quantgate.role`` = comparison and
``quantgate.accepted`` ("true" when the run's gates gave exit code 0; set as the last step,
once the run is complete and FINISHED), with one child run per
candidate and the baseline (``mlflow.parentRunId``), whose metrics are the result metrics
(``<metric>.stderr`` beside each that has one).

For the nightly job: compare against :func:`last_accepted`, report :func:`trend`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from harness.results import ResultsError, RunResults, parse_results
from harness.tracking import mlflow_module

_PLAN_RE = re.compile(r"^[A-Za-z0-9._-]+$")
STDERR = ".stderr"
#: how many of the newest accepted parent runs are checked for completeness
ACCEPTED_SCAN = 50


def _client(uri: str | None):
    mlflow_module()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, experiment: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    return None if exp is None else exp.experiment_id


def _check_plan(plan_name: str) -> str:
    if not _PLAN_RE.match(plan_name or ""):  # the plan schema's own pattern; nothing to escape
        raise ValueError(f"not a plan name: {plan_name!r} (allowed: A-Z a-z 0-9 . _ -)")
    return plan_name


def _search(client, exp_id: str, filter_string: str, limit: int | None, order_by: list[str] | None = None) -> list:
    out, token = [], None
    while limit is None or len(out) < limit:
        page = client.search_runs([exp_id], filter_string=filter_string, order_by=order_by,
                                  max_results=min(1000, limit - len(out)) if limit else 1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            break
    return out


def _parents(client, exp_id: str, plan_name: str, accepted_only: bool, limit: int) -> list:
    f = f"tags.`quantgate.plan` = '{_check_plan(plan_name)}' AND tags.`quantgate.role` = 'comparison'"
    if accepted_only:  # a torn run (left RUNNING, killed) is never accepted, whatever its tags say
        f += " AND tags.`quantgate.accepted` = 'true' AND attributes.status = 'FINISHED'"
    # newest first; the run id breaks ties between runs started in the same millisecond
    return _search(client, exp_id, f, limit, ["attributes.start_time DESC", "attributes.run_id DESC"])


def _children(client, exp_id: str, parent_id: str) -> list:
    return _search(client, exp_id, f"tags.`mlflow.parentRunId` = '{parent_id}'", None)


def _iso(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def _run_summary(run) -> dict[str, Any]:
    tags = run.data.tags
    code = tags.get("exit_code")
    return {"run_id": run.info.run_id, "run_name": run.info.run_name,
            "quantgate_run_id": tags.get("quantgate.run_id"), "start_time": run.info.start_time,
            "started": _iso(run.info.start_time), "status": run.info.status,
            "accepted": tags.get("quantgate.accepted") == "true",
            "exit_code": int(code) if code not in (None, "") and code.lstrip("-").isdigit() else None}


def _name(child) -> str:
    return child.data.tags.get("quantgate.candidate") or child.info.run_name


def _complete(client, run) -> bool:
    """A parent run that can stand as accepted: FINISHED, tagged accepted, not marked
    incomplete (``quantgate.complete``, set by quantgate >= the outbox; older runs lack it) and
    holding its results.json artifact."""
    tags = run.data.tags
    if run.info.status != "FINISHED" or tags.get("quantgate.accepted") != "true":
        return False
    if tags.get("quantgate.complete", "true") != "true":
        return False
    try:
        return "results.json" in {f.path for f in client.list_artifacts(run.info.run_id)}
    except Exception:  # an artifact store that cannot be listed: the run cannot be compared against
        return False


def last_accepted(uri: str | None, experiment: str, plan_name: str) -> dict[str, Any] | None:
    """The newest complete parent run of ``plan_name`` tagged ``quantgate.accepted = "true"``,
    or None. Complete: FINISHED, not tagged ``quantgate.complete = "false"``, with its
    results.json artifact; a torn run (left RUNNING by a crash, or without its files) is skipped.

    Returns the run's summary (``run_id``, ``run_name``, ``quantgate_run_id``,
    ``start_time`` in ms since the epoch, ``started`` in ISO 8601 UTC, ``status``,
    ``exit_code``) and, per child run (candidates and the baseline, by name):
    ``metrics`` (name -> {metric: value}, ``<metric>.stderr`` included), ``roles``,
    ``verdicts``, ``child_run_ids``; ``approved`` is the list the run approved.
    """
    client = _client(uri)
    exp_id = _experiment_id(client, experiment)
    if exp_id is None:
        return None
    found = _parents(client, exp_id, plan_name, accepted_only=True, limit=ACCEPTED_SCAN)
    parent = next((run for run in found if _complete(client, run)), None)
    if parent is None:
        return None
    out = _run_summary(parent)
    approved = parent.data.tags.get("approved", "")
    out["approved"] = [] if approved in ("", "(none)") else approved.split(",")
    out.update(metrics={}, roles={}, verdicts={}, child_run_ids={})
    for child in _children(client, exp_id, parent.info.run_id):
        name = _name(child)
        out["metrics"][name] = dict(child.data.metrics)
        out["roles"][name] = child.data.tags.get("quantgate.role")
        out["verdicts"][name] = child.data.tags.get("verdict")
        out["child_run_ids"][name] = child.info.run_id
    return out


def trend(uri: str | None, experiment: str, plan_name: str, limit: int = 30) -> dict[str, Any]:
    """Per candidate (and the baseline), per metric, its series over the last ``limit``
    parent runs of ``plan_name``, oldest first.

    ``{"plan", "experiment_id", "runs": [run summary, ...], "series": {candidate: {metric:
    [{"run_id" (the parent), "child_run_id", "start_time", "started", "accepted", "value",
    "stderr"}, ...]}}}``. ``<metric>.stderr`` is folded into its metric's points, not a
    series of its own. A candidate absent from a run has no point for it.
    """
    client = _client(uri)
    exp_id = _experiment_id(client, experiment)
    out: dict[str, Any] = {"plan": plan_name, "experiment_id": exp_id, "runs": [], "series": {}}
    if exp_id is None:
        return out
    parents = _parents(client, exp_id, plan_name, accepted_only=False, limit=max(int(limit), 0))
    for parent in reversed(parents):  # oldest first
        summary = _run_summary(parent)
        out["runs"].append(summary)
        for child in _children(client, exp_id, parent.info.run_id):
            metrics = child.data.metrics
            series = out["series"].setdefault(_name(child), {})
            for key in sorted(metrics):
                if key.endswith(STDERR) and key[: -len(STDERR)] in metrics:
                    continue
                series.setdefault(key, []).append({
                    "run_id": summary["run_id"], "child_run_id": child.info.run_id,
                    "start_time": summary["start_time"], "started": summary["started"],
                    "accepted": summary["accepted"], "value": metrics[key],
                    "stderr": metrics.get(key + STDERR)})
    return out


def results_json(uri: str | None, run_id: str) -> RunResults | None:
    """The results.json a parent run logged, read as typed results (either schema: a /1 file
    is upgraded), or None when the run has none. ``harness.results.ResultsError`` when the
    file is not one quantgate can read."""
    client = _client(uri)
    if "results.json" not in {f.path for f in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, "results.json", tmp)
        text = Path(path).read_text()
    where = f"results.json of MLflow run {run_id}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{where}: not valid JSON: {exc}") from None
    return parse_results(data, where)
