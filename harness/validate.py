"""Second pass of plan validation: names and adapter params against the registries.

``load_plan`` reads a plan file through both passes (``harness.config.parse_plan``, then
``check_plan``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from harness.config import Plan, format_path, parse_plan, validation_messages
from harness.errors import PlanError


def _params(cls: type[BaseModel], raw: dict[str, Any], loc: tuple, problems: list[str]) -> BaseModel | None:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        problems += validation_messages(err, cls, prefix=loc)
        return None


def _known(name: str, registry, loc: tuple, what: str, problems: list[str]) -> bool:
    if name in registry:
        return True
    problems.append(f"{format_path(loc)}: unknown {what} {name!r}; allowed: {', '.join(registry.names())}")
    return False


def metric_names(plan: Plan) -> list[str]:
    from harness.probes import REGISTRY as PROBES
    from harness.suites import REGISTRY as SUITES

    names = []
    for s in plan.suites:
        if s.suite in SUITES:
            names += [f"{s.id}.{m}" for m in SUITES.get(s.suite).metrics]
    for p in plan.probes:
        if p in PROBES:
            cls = PROBES.get(p)
            try:  # metric names can depend on the probe's params (prompt lengths, batch sizes)
                names += [f"{p}.{m}" for m in cls.metric_names(cls.Params.model_validate(plan.probes[p] or {}))]
            except ValidationError:
                names += [f"{p}.{m}" for m in cls.metrics]
    return names


def _probe_metric_hint(plan: Plan, metric: str) -> str | None:
    """What a probe of the plan says about an unknown ``<probe>.<name>`` of its own (the serving
    probe names the load levels the plan measures), or None."""
    from harness.probes import REGISTRY as PROBES

    probe, _, name = metric.partition(".")
    if probe not in plan.probes or probe not in PROBES:
        return None
    cls = PROBES.get(probe)
    hint = getattr(cls, "unknown_metric_hint", None)
    if not callable(hint):
        return None
    try:
        return hint(name, cls.Params.model_validate(plan.probes[probe] or {}))
    except ValidationError:
        return None


def plan_metric_directions(plan: Plan) -> dict[str, str]:
    """metric name -> "higher" | "lower", as the plan's suites and probes declare them."""
    from harness.results import plan_directions

    return plan_directions(plan.model_dump(mode="json"))


def check_baseline_model(model: str, needs_gguf: bool = False) -> str | None:
    """A local baseline must look like what it claims to be (cheap header checks only). An HF
    folder that must become a GGUF (``needs_gguf``) must be one llama.cpp's converter takes:
    its architecture among those the vendored ``convert_hf_to_gguf.py`` converts (read from its
    source, which is extracted into the store once)."""
    import json
    import struct
    from pathlib import Path

    from harness.config import EMBEDDED_MODEL
    from harness.runtimes import runtime_owning

    owner = runtime_owning(model)  # a runtime's own models (fake:tiny): that runtime checks them
    if owner is not None:
        return owner.check_baseline(model)
    if model.startswith("embedded:"):
        return None if model == EMBEDDED_MODEL else f"unknown embedded model {model!r}; allowed: {EMBEDDED_MODEL}"
    path = Path(model).expanduser()
    if not path.exists():
        return f"{model!r} is neither {EMBEDDED_MODEL!r} nor an existing file or folder"
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF" and not path.name.lower().endswith(".gguf"):
            return f"{model!r} is neither a GGUF file (magic {magic!r}, expected b'GGUF') nor a checkpoint folder"
        return gguf_problem(model)
    if not (path / "config.json").is_file():
        return f"{model!r}: checkpoint folder without config.json"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return f"{model!r}: checkpoint folder without *.safetensors files"
    for w in weights:
        try:
            with open(w, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100_000_000:
                    raise ValueError("header length out of range")
                json.loads(f.read(n))
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            return f"{w}: not a readable safetensors file ({exc})"
    if needs_gguf:
        from harness.converter import checkpoint_problem
        from harness.errors import QuantgateError

        try:
            return checkpoint_problem(path, log=lambda line: None)
        except (QuantgateError, OSError) as exc:
            return f"{model!r}: a GGUF from an HF folder needs llama.cpp's converter: {exc}"
    return None


def plan_needs_gguf(plan: Plan) -> bool:
    """Whether a run of ``plan`` derives its baseline as a GGUF: its baseline runtime loads
    GGUF, or a candidate's quantizer reads one (``gguf``, ``unquantized`` with format gguf)."""
    from harness.quantizers import REGISTRY as QUANTIZERS
    from harness.runtimes import REGISTRY as RUNTIMES

    if plan.baseline.runtime.name in RUNTIMES and RUNTIMES.get(plan.baseline.runtime.name).accepts[:1] == ("gguf",):
        return True
    for cand in plan.candidates:
        if cand.quantizer.method in QUANTIZERS:
            quantizer = QUANTIZERS.get(cand.quantizer.method)()
            try:
                params = quantizer.Params.model_validate(cand.quantizer.params)
            except ValidationError:
                continue
            if quantizer.input_format_for(params) == "gguf":
                return True
    return False


def gguf_problem(path: str) -> str | None:
    """Why the GGUF at ``path`` would not load (truncated, not a GGUF), read from its header
    and tensor table; None when it is whole."""
    from harness.gguf_check import GGUFError, check_gguf

    try:
        check_gguf(path)
    except GGUFError as exc:
        return str(exc)
    return None


def _gguf_paths(value: Any, loc: tuple) -> list[tuple[tuple, str]]:
    """(key path, value) of every string ending in .gguf in an adapter's params."""
    if isinstance(value, str):
        return [(loc, value)] if value.lower().endswith(".gguf") else []
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _gguf_paths(v, loc + (k,))]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in _gguf_paths(v, loc + (i,))]
    return []


def load_plan(path: str | Path, check_names: bool = True) -> Plan:
    """Read and validate a plan file (structure, then names unless ``check_names`` is false);
    raise PlanError with one line per problem."""
    plan = parse_plan(path)
    if check_names:
        problems = check_plan(plan)
        if problems:
            raise PlanError("\n".join(f"{Path(path)}: {p}" for p in problems))
    return plan


def check_plan(plan: Plan) -> list[str]:
    """Every problem with the names a plan uses, one line each (empty: valid)."""
    from harness.probes import REGISTRY as PROBES
    from harness.quantizers import REGISTRY as QUANTIZERS
    from harness.runtimes import REGISTRY as RUNTIMES
    from harness.suites import REGISTRY as SUITES

    problems: list[str] = []

    def check_runtime(spec, loc, artifact_format: str | None):
        if not _known(spec.name, RUNTIMES, loc + ("name",), "runtime", problems):
            return
        runtime = RUNTIMES.get(spec.name)()
        rparams = _params(runtime.Params, spec.params, loc + ("params",), problems)
        if rparams is not None:  # a server URL that does not answer, a launcher not installed
            for where, why in runtime.check(rparams):
                problems.append(f"{format_path(loc + ('params',) + where)}: {why}")
        # n_gpu_layers: auto (llama-cpp) is resolved by the memory-fit planner against a declared budget
        if getattr(rparams, "n_gpu_layers", None) == "auto" and getattr(rparams, "gpu_budget_gib", 0) is None:
            problems.append(f"{format_path(loc + ('params', 'n_gpu_layers'))}: 'auto' needs a GPU budget to plan "
                            "against: add gpu_budget_gib: N (GiB) beside it, or give a layer count (-1: every layer)")
        if artifact_format and artifact_format not in runtime.accepts:
            problems.append(
                f"{format_path(loc + ('name',))}: runtime {spec.name!r} loads {', '.join(runtime.accepts)} "
                f"artifacts, not {artifact_format!r}; runtimes that load {artifact_format!r}: "
                + (", ".join(n for n in RUNTIMES.names() if artifact_format in RUNTIMES.get(n).accepts) or "none")
            )

    check_runtime(plan.baseline.runtime, ("baseline", "runtime"), None)
    why = check_baseline_model(plan.baseline.model, needs_gguf=plan_needs_gguf(plan))
    if why:
        problems.append(f"baseline.model: {why}")
    for where, gguf in _gguf_paths(plan.baseline.runtime.params, ("baseline", "runtime", "params")):
        why = gguf_problem(gguf) if Path(gguf).expanduser().is_file() else None
        if why:
            problems.append(f"{format_path(where)}: {why}")

    seen: dict[str, int] = {plan.baseline.name: -1}
    for i, cand in enumerate(plan.candidates):
        loc = ("candidates", i)
        if cand.name in seen:
            first = "baseline.name" if seen[cand.name] < 0 else f"candidates[{seen[cand.name]}].name"
            problems.append(f"{format_path(loc + ('name',))}: duplicate name {cand.name!r} (also {first})")
        seen.setdefault(cand.name, i)
        fmt = None
        if _known(cand.quantizer.method, QUANTIZERS, loc + ("quantizer", "method"), "quantizer method", problems):
            q = QUANTIZERS.get(cand.quantizer.method)()
            params = _params(q.Params, cand.quantizer.params, loc + ("quantizer", "params"), problems)
            if params is not None:
                fmt = q.output_format_for(params)
            if params is not None:
                for where, why in q.check(params):
                    problems.append(f"{format_path(loc + ('quantizer',) + where)}: {why}")
            if params is not None and q.requires_calibration(params) and cand.quantizer.calibration is None:
                problems.append(f"{format_path(loc + ('quantizer', 'calibration'))}: method "
                                f"{cand.quantizer.method!r} needs calibration data (source, samples, seq_len, seed)")
        check_runtime(cand.runtime, loc + ("runtime",), fmt)
        # a GGUF the plan names (a prebuilt artifact, a draft model): whole, or said so now
        for where, gguf in _gguf_paths(cand.quantizer.params, loc + ("quantizer", "params")) + _gguf_paths(
                cand.runtime.params, loc + ("runtime", "params")):
            why = gguf_problem(gguf) if Path(gguf).expanduser().is_file() else None
            if why:
                problems.append(f"{format_path(where)}: {why}")

    suite_ids: dict[str, int] = {}
    for i, s in enumerate(plan.suites):
        loc = ("suites", i)
        if s.id in suite_ids:
            problems.append(f"{format_path(loc)}: duplicate suite name {s.id!r}; give one a distinct 'name'")
        suite_ids.setdefault(s.id, i)
        if _known(s.suite, SUITES, loc + ("suite",), "suite", problems):
            _params(SUITES.get(s.suite).Params, s.params, loc + ("params",), problems)

    for name, raw in plan.probes.items():
        loc = ("probes", name)
        if _known(name, PROBES, loc, "probe", problems):
            _params(PROBES.get(name).Params, raw or {}, loc, problems)

    known_metrics = metric_names(plan)
    directions = plan_metric_directions(plan)
    policy = plan.policy()
    gate_names: set[str] = set()
    for i, gate in enumerate(policy.gates):
        loc = ("gates", i)
        if gate.name in gate_names:
            problems.append(f"{format_path(loc + ('name',))}: duplicate gate name {gate.name!r}")
        gate_names.add(gate.name)
        if gate.metric not in known_metrics:
            hint = _probe_metric_hint(plan, gate.metric)
            problems.append(
                f"{format_path(loc + ('metric',))}: unknown metric {gate.metric!r}; "
                + (hint or f"metrics of this plan's suites and probes: {', '.join(known_metrics) or 'none'}")
            )
        else:
            better = directions.get(gate.metric)
            why = gate.direction_problem(better)
            if why:
                from harness.gates import kinds_for

                problems.append(f"{format_path(loc + ('kind',))}: {why}; use "
                                + ", ".join(repr(k) for k in kinds_for(better)) + " for it")
            elif getattr(gate, "per_slice", False):
                why = _slice_problem(plan, gate.metric)
                if why:
                    problems.append(f"{format_path(loc + ('metric',))}: {why}")
    return problems


def suite_has_slices(suite: str, params: dict[str, Any]) -> bool:
    """Whether a suite's items carry a slice label: a suite that stratifies its items (MMLU by
    subject, JSON-format by category), or an lm-eval task file of your own (its documents'
    ``slice``/``language`` field; checked when the items are prepared)."""
    from harness.suites import REGISTRY as SUITES

    if suite not in SUITES:
        return False
    return bool(getattr(SUITES.get(suite), "stratify_by", None) or params.get("task_file"))


def _slice_problem(plan: Plan, metric: str) -> str | None:
    spec = next((s for s in plan.suites if metric.startswith(s.id + ".")), None)
    if spec is None or suite_has_slices(spec.suite, spec.params):
        return None
    from harness.suites import REGISTRY as SUITES

    with_slices = [n for n in SUITES.names() if getattr(SUITES.get(n), "stratify_by", None)]
    return (f"gate kind 'max_slice_drop' needs a suite whose items carry a slice label, but suite {spec.id!r} "
            f"({spec.suite}) has none; suites with slices: {', '.join(with_slices)}, or an lm-eval task_file "
            "whose documents have a 'slice' or 'language' field")


def plan_warnings(plan: Plan) -> list[str]:
    """What a plan may do wrong without being invalid (``quantgate validate`` prints each as a
    ``warning:`` line, exit 0): a candidate that calibrates on text a suite evaluates
    (``harness.overlap``: 13-grams shared between its calibration text and the suite's items)."""
    from harness.overlap import overlap_warnings, plan_overlap

    try:
        return overlap_warnings(plan_overlap(plan, fetch=False))
    except (OSError, ValueError, RuntimeError) as exc:  # texts that cannot be read here: not a verdict
        return [f"calibration overlap not checked: {type(exc).__name__}: {exc}"]


def _trusts_remote_code(value: Any) -> bool:
    if isinstance(value, dict):
        return any((k == "trust_remote_code" and v is True) or _trusts_remote_code(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_trusts_remote_code(v) for v in value)
    return False


def remote_code_notes(plan: Plan) -> list[str]:
    """One note per runtime or quantizer with ``trust_remote_code: true``: it executes the
    model repository's Python on this machine, which a reviewer should know before a run."""
    model = plan.baseline.model
    specs = [(f"baseline {plan.baseline.name!r}", "runtime", plan.baseline.runtime.name, plan.baseline.runtime.params)]
    for c in plan.candidates:
        specs += [(f"candidate {c.name!r}", "quantizer", c.quantizer.method, c.quantizer.params),
                  (f"candidate {c.name!r}", "runtime", c.runtime.name, c.runtime.params)]
    return [f"{who}: {kind} {name!r} has trust_remote_code: true: it runs code from the model "
            f"repository ({model}) on this machine; review that code or drop the option"
            for who, kind, name, params in specs if _trusts_remote_code(params)]


def availability(plan: Plan) -> list[str]:
    """Adapters the plan names whose libraries are missing here, and adapters told to run
    code from a model repository (not errors for validate)."""
    from harness.quantizers import REGISTRY as QUANTIZERS
    from harness.runtimes import REGISTRY as RUNTIMES

    notes = remote_code_notes(plan)
    seen = set()
    for cand in plan.candidates:
        for reg, name in ((QUANTIZERS, cand.quantizer.method), (RUNTIMES, cand.runtime.name)):
            if (reg.kind, name) in seen:
                continue
            seen.add((reg.kind, name))
            why = reg.get(name)().unavailable()
            if why:
                notes.append(why)
    from harness.suites import REGISTRY as SUITES

    suites = [(s.id, s.suite) for s in plan.suites]
    for cand in plan.candidates:  # what a runtime can score of the plan's suites (a served model)
        if cand.runtime.name in RUNTIMES:
            runtime = RUNTIMES.get(cand.runtime.name)()
            try:
                params = runtime.Params.model_validate(cand.runtime.params)
            except ValidationError:
                continue
            notes += [f"candidate {cand.name!r} ({runtime.name}): {n}" for n in runtime.plan_notes(params, suites)]
    for suite_name in dict.fromkeys(s.suite for s in plan.suites):
        why = SUITES.get(suite_name)().unavailable()
        if why:
            notes.append(why)
    return notes
