"""The results of a run as typed, versioned models (schema ``quantgate.results/2``).

One ``RunResults`` per run: the plan and policy it ran under, the machine, then one
``Record`` per model (the baseline, the candidates) holding its artifact, runtime, per-suite
results with per-item records, metrics (each with its value, standard error, n and the
direction declared by the suite or probe that measured it), gate verdicts and, when a stage
failed, the error. Modelled on inspect_ai's ``EvalLog`` and optimum-benchmark's
``BenchmarkReport``: the run writes results.json from these models, and every reader
(``quantgate gate``, ``compare``, ``trend``, the reports, MLflow) reads them back through
``load_results``, which also upgrades ``quantgate.results/1`` files.

Nothing here loads a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.errors import QuantgateError

SCHEMA = "quantgate.results/2"
SCHEMA_V1 = "quantgate.results/1"
READABLE = (SCHEMA, SCHEMA_V1)

Better = Literal["higher", "lower"]
VerdictName = Literal["PASS", "FAIL", "INCONCLUSIVE", "ERROR"]


class ResultsError(QuantgateError):
    """A results file is missing or not one quantgate can read."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metric(_Model):
    """One measured figure. ``better`` is declared by the suite or probe that measured it
    (None: a count that describes the measurement, such as ``tokens``)."""

    value: float | None
    stderr: float | None = None
    n: int | None = None
    better: Better | None = None


class Verdict(_Model):
    """One gate on one record. The statistics fields come from ``harness.stats.Decision``
    where the gate was decided on paired items; a measured-value gate fills the common ones."""

    gate: str
    kind: str
    metric: str
    value: float | None = None
    verdict: VerdictName
    reason: str
    better: Better | None = None
    baseline: float | None = None
    change_pct: float | None = None
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    n: int | None = None
    test: str | None = None
    p_value: float | None = None
    threshold: float | None = None
    alpha: float | None = None
    needed_n: int | None = None
    discordant: dict[str, int] | None = None
    text: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    paired: bool | None = None
    #: the level this gate's FAIL was tested at after a family-wise correction across the
    #: candidate's paired gates (policy ``multiple_testing: holm``); None: no correction
    adjusted_alpha: float | None = None


class StageError(_Model):
    stage: str
    message: str
    log: str | None = None
    traceback: str | None = None


class ArtifactRef(_Model):
    """Where the record's artifact lies in the store and the manifest it was sealed with."""

    key: str
    #: the cache key of what the artifact was made from (a baseline: its source's bytes)
    source_key: str | None = None
    format: str
    path: str
    manifest: dict[str, Any] = Field(default_factory=dict)
    reused: bool | None = None


class RuntimeInfo(_Model):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)


class SuiteResult(_Model):
    """One suite on one record: per-item records (the paired gates' input) and metrics."""

    records: list[dict[str, Any]]
    seconds: float | None = None
    load_info: dict[str, Any] = Field(default_factory=dict)
    result_key: str
    reused: bool = False
    #: items scored by an earlier, interrupted attempt and read back from its journal
    resumed_items: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)
    items_key: str | None = None
    metrics: dict[str, Metric] = Field(default_factory=dict)


class Record(_Model):
    """The baseline or one candidate."""

    name: str
    role: Literal["baseline", "candidate"]
    status: Literal["ok", "error"] = "ok"
    error: StageError | None = None
    quantizer: dict[str, Any] | None = None
    runtime: RuntimeInfo | None = None
    artifact: ArtifactRef | None = None
    suites: dict[str, SuiteResult] = Field(default_factory=dict)
    #: "<suite id>.<metric>", "<probe>.<metric>", "planner.<figure>"
    metrics: dict[str, Metric] = Field(default_factory=dict)
    #: probe -> metric -> value, as the probe reported them
    probes: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    #: how the probes measured (machine, raw repetitions, bandwidth source, session)
    probe_notes: dict[str, Any] | None = None
    #: the memory-fit planner's prediction beside what was measured
    planner: dict[str, Any] | None = None
    #: where each stage ran: {"evaluate": {...}, "probe": {...}} (host, pid; Ray node, GPU ids)
    placement: dict[str, Any] = Field(default_factory=dict)
    verdicts: list[Verdict] = Field(default_factory=list)
    verdict: VerdictName | None = None
    seconds: float | None = None
    #: suite id -> metric -> slice label -> per-slice figures with the paired interval
    #: (suites whose items carry a slice label; filled when gates are decided)
    slices: dict[str, Any] = Field(default_factory=dict)
    #: suite id -> n-gram overlap of this candidate's calibration text with the suite's items
    #: (``harness.overlap``); None: no calibration
    calibration_overlap: dict[str, Any] | None = None
    #: the baseline re-scored ``baseline.repeats`` times: metric -> values and spread
    noise_floor: dict[str, Any] | None = None

    def fail(self, stage: str, message: str, log: str | None = None, tb: str | None = None) -> None:
        self.status = "error"
        self.error = StageError(stage=stage, message=message, log=log, traceback=tb)

    def value(self, metric: str) -> float | None:
        m = self.metrics.get(metric)
        return None if m is None else m.value


class RunResults(_Model):
    """A whole run: what ran, where, every record, the decision and where it was logged."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: Literal["quantgate.results/2"] = Field(SCHEMA, alias="schema")
    run_id: str
    quantgate_version: str
    plan: dict[str, Any]
    plan_file: str | None = None
    policy: dict[str, Any]
    started: str
    finished: str
    wall_seconds: float
    machine: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    #: where the stages ran: {"name": "local" | "ray", ...}
    executor: dict[str, Any] = Field(default_factory=dict)
    baseline: Record
    candidates: list[Record]
    #: stored entries that failed their sha256 check in this run and were recomputed
    store_integrity: list[dict[str, Any]] = Field(default_factory=list)
    approved: list[str] = Field(default_factory=list)
    exit_code: int | None = None
    tracking: dict[str, Any] | None = None
    #: set when the file was upgraded from an older schema on load (not written by runs)
    upgraded_from: str | None = None

    def records(self) -> list[Record]:
        return [self.baseline, *self.candidates]

    def record(self, name: str) -> Record | None:
        return next((r for r in self.records() if r.name == name), None)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude={"upgraded_from"}), indent=2)

    def dump(self) -> dict[str, Any]:
        """The JSON-ready dict (as written to results.json)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"upgraded_from"})


# ------------------------------------------------------------------ metric directions
def suite_directions(suite_name: str) -> dict[str, str]:
    """metric -> "higher" | "lower" as the suite declares them ({} for an unknown suite)."""
    from harness.suites import REGISTRY

    if suite_name not in REGISTRY:
        return {}
    return dict(REGISTRY.get(suite_name).metrics)


def probe_directions(probe_name: str, params: dict[str, Any] | None) -> dict[str, str]:
    from harness.probes import REGISTRY

    if probe_name not in REGISTRY:
        return {}
    cls = REGISTRY.get(probe_name)
    try:
        p = cls.Params.model_validate(params or {})
    except ValidationError:
        return dict(cls.metrics)
    return cls.metric_directions(p)


#: the planner's figures that enter a record's metrics: sizes (lower is better); errors are signed
PLANNER_DIRECTIONS = {"weights_gib": "lower", "kv_cache_gib": "lower", "total_gib": "lower",
                      "probe_predicted_gib": "lower", "probe_measured_gib": "lower"}


def plan_directions(plan: dict[str, Any]) -> dict[str, str]:
    """Every metric name of a plan ("<suite id>.<metric>", "<probe>.<metric>") -> direction."""
    out: dict[str, str] = {}
    for s in plan.get("suites") or []:
        sid = s.get("name") or s.get("suite")
        out.update({f"{sid}.{m}": d for m, d in suite_directions(s.get("suite", "")).items()})
    for probe, params in (plan.get("probes") or {}).items():
        out.update({f"{probe}.{m}": d for m, d in probe_directions(probe, params).items()})
    out.update({f"planner.{m}": d for m, d in PLANNER_DIRECTIONS.items()})
    return out


# ------------------------------------------------------------------ reading
def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A ``quantgate.results/1`` dict as ``/2``: metric directions from the registries (the
    /1 writer dropped them); a baseline artifact's source key out of its ``baseline-KEY-FMT``."""
    directions = plan_directions(data.get("plan") or {})
    suite_of = {(s.get("name") or s.get("suite")): s.get("suite") for s in (data.get("plan") or {}).get("suites") or []}

    def metric(m: Any, better: str | None) -> dict[str, Any]:
        m = dict(m) if isinstance(m, dict) else {"value": m}
        m.setdefault("better", better)
        return m

    def record(rec: dict[str, Any]) -> dict[str, Any]:
        rec = dict(rec)
        rec["metrics"] = {k: metric(v, directions.get(k)) for k, v in (rec.get("metrics") or {}).items()}
        suites = {}
        for sid, entry in (rec.get("suites") or {}).items():
            entry = dict(entry)
            own = suite_directions(suite_of.get(sid) or "")
            entry["metrics"] = {k: metric(v, own.get(k)) for k, v in (entry.get("metrics") or {}).items()}
            suites[sid] = entry
        rec["suites"] = suites
        art = rec.get("artifact")
        if art and rec.get("role") == "baseline" and str(art.get("key", "")).startswith("baseline-"):
            rec["artifact"] = {**art, "source_key": art["key"][len("baseline-"):].rsplit("-", 1)[0]}
        if rec.get("error"):
            rec["error"] = {k: rec["error"].get(k) for k in ("stage", "message", "log", "traceback")}
        directions_v = {v.get("metric"): directions.get(v.get("metric")) for v in rec.get("verdicts") or []}
        rec["verdicts"] = [{**v, "better": v.get("better", directions_v.get(v.get("metric")))}
                           for v in rec.get("verdicts") or []]
        return rec

    out = dict(data)
    out["schema"] = SCHEMA
    out["baseline"] = record(data["baseline"])
    out["candidates"] = [record(r) for r in data.get("candidates") or []]
    out.setdefault("store_integrity", [])
    out["upgraded_from"] = SCHEMA_V1
    return out


class MissingPolicy(ResultsError):
    """A results file without the gate policy its run was decided under."""


def parse_results(data: Any, where: str = "results", policy: dict[str, Any] | None = None) -> RunResults:
    """A results dict (either schema) -> RunResults; ResultsError naming what is wrong.
    ``policy`` stands in for the file's own (``quantgate gate --policy`` on a file without one)."""
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in READABLE:
        kind = "" if isinstance(data, dict) else f" (a JSON {type(data).__name__})"
        raise ResultsError(f"{where}: not a quantgate results file: schema {schema!r}{kind}, this quantgate "
                           f"reads {' or '.join(map(repr, READABLE))}")
    # a missing policy is named once the rest of the file is known to be a run's results
    no_policy = None
    if policy is not None:
        data = {**data, "policy": policy}
    elif not isinstance(data.get("policy"), dict):
        no_policy = ("no 'policy' key" if "policy" not in data else "'policy' is null" if data["policy"] is None
                     else f"'policy' is a {type(data['policy']).__name__}, not a mapping")
        data = {**data, "policy": {}}
    if schema == SCHEMA_V1:
        try:
            data = _upgrade_v1(data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ResultsError(f"{where}: a {SCHEMA_V1} file without {exc}") from None
    try:
        results = RunResults.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ResultsError(f"{where}: {loc}: {first['msg']} ({err.error_count()} problem(s))") from None
    if no_policy:
        raise MissingPolicy(f"{where}: {no_policy} (the gate policy the run was decided under)")
    return results


def load_results(ref: str | Path, policy: dict[str, Any] | None = None) -> tuple[RunResults, Path]:
    """A run folder (``reports/<run-id>``) or its results.json -> (results, path); ``policy``
    as for ``parse_results``."""
    path = Path(ref)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ResultsError(f"{ref}: no results.json here (give a run folder under reports/ or a results.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ResultsError(f"{path}: not a quantgate results file (JSON nested too deeply)") from None
    return parse_results(data, str(path), policy=policy), path
