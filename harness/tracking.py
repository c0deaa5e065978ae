"""MLflow logging: a parent run per plan execution, a child run per candidate.

Default store: sqlite in the run folder (artifacts beside it), so a run logs
with no server; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` selects a server.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from harness.errors import MissingDependency


def _mlflow():
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


def _flat_params(prefix: str, obj: Any, out: dict[str, str]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif obj is not None:
        out[prefix] = str(obj)[:500]


def _metric_key(name: str) -> str:
    # MLflow admits alphanumerics, _ - . space / in metric names; "/" would nest in its UI
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", name)


def candidate_params(rec: dict) -> dict[str, str]:
    params: dict[str, str] = {"role": rec["role"]}
    _flat_params("quantizer", rec.get("quantizer") or {}, params)
    if rec.get("runtime"):
        _flat_params("runtime", {"name": rec["runtime"]["name"], **rec["runtime"]["params"]}, params)
        _flat_params("versions", rec["runtime"]["versions"], params)
    art = rec.get("artifact") or {}
    if art:
        params["artifact.key"] = art["key"]
        params["artifact.format"] = art["format"]
        man = art.get("manifest") or {}
        if "bits_per_weight" in man:
            params["artifact.bits_per_weight"] = f"{man['bits_per_weight']:.3f}"
    return params


def log_run(results: dict, spec, run_dir: Path) -> dict:
    """Log ``results`` to MLflow; returns what results.json records about it."""
    _mlflow()
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri, local = tracking_uri(spec, run_dir)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(spec.experiment)
    if exp is None:
        artifact_location = (run_dir / "mlartifacts").resolve().as_uri() if local else None
        exp_id = client.create_experiment(spec.experiment, artifact_location=artifact_location)
    else:
        exp_id = exp.experiment_id

    plan = results["plan"]
    parent = client.create_run(exp_id, run_name=results["run_id"], tags={
        "quantgate.run_id": results["run_id"], "quantgate.plan": plan["name"],
        "quantgate.role": "comparison", "exit_code": str(results["exit_code"]),
        "approved": ",".join(results["approved"]) or "(none)",
    })
    pid = parent.info.run_id
    client.log_param(pid, "plan", plan["name"])
    client.log_param(pid, "policy", results["policy"].get("name", "inline"))
    client.log_param(pid, "candidates", ",".join(c["name"] for c in results["candidates"]))
    child_ids = {}
    for rec in [results["baseline"], *results["candidates"]]:
        tags = {"mlflow.parentRunId": pid, "quantgate.role": rec["role"], "quantgate.run_id": results["run_id"],
                "verdict": rec["verdict"] or "", "status": rec["status"]}
        for v in rec["verdicts"]:
            tags[f"gate.{v['gate']}"] = v["verdict"]
        if rec.get("error"):
            tags["error"] = f"{rec['error']['stage']}: {rec['error']['message']}"[:4000]
        child = client.create_run(exp_id, run_name=rec["name"], tags=tags)
        cid = child.info.run_id
        child_ids[rec["name"]] = cid
        params = [Param(k, v) for k, v in candidate_params(rec).items()]
        metrics = []
        now = int(time.time() * 1000)
        for name, m in rec["metrics"].items():
            if m.get("value") is None:
                continue
            metrics.append(Metric(_metric_key(name), float(m["value"]), now, 0))
            if m.get("stderr") is not None:
                metrics.append(Metric(_metric_key(name) + ".stderr", float(m["stderr"]), now, 0))
        client.log_batch(cid, metrics=metrics, params=params)
        client.set_terminated(cid, "FINISHED" if rec["status"] == "ok" else "FAILED")
    for name in ("summary.md", "results.json"):
        if (run_dir / name).is_file():
            client.log_artifact(pid, str(run_dir / name))
    client.set_terminated(pid, "FINISHED")
    return {"uri": uri, "experiment": spec.experiment, "experiment_id": exp_id, "parent_run_id": pid,
            "child_run_ids": child_ids}
