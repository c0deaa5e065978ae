"""The plan schema (pydantic v2) and its structural parse.

A plan is read in two passes: the structure (this module's models, unknown keys
rejected: ``parse_plan``), then the names it uses (quantizer methods, runtimes, suites,
probes, gate metrics) against the adapter registries, each adapter validating its own
``params`` (``harness.validate``; ``harness.validate.load_plan`` does both). Every
problem becomes a ``PlanError`` whose message names the file, the key path, the bad
value and what is allowed.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from harness.errors import PlanError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
EMBEDDED_MODEL = "embedded:smollm2-135m"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- plan parts
class Calibration(Strict):
    """Calibration data a quantizer sees; part of the artifact's cache key."""

    source: str = Field(description="local text/JSONL file, 'wikitext2', or a hub dataset id")
    samples: int = Field(128, gt=0)
    seq_len: int = Field(512, gt=0)
    seed: int = 0


class QuantizerSpec(Strict):
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None


class RuntimeSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class BaselineSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "baseline"
    model: str = Field(
        EMBEDDED_MODEL,
        description="'embedded:smollm2-135m', a local .gguf file or HF checkpoint folder",
    )
    runtime: RuntimeSpec
    #: score the baseline this many times (each repeat its own stored result) and report its
    #: run-to-run spread per metric: the noise floor a gate cannot FAIL within (1: once)
    repeats: int = Field(1, ge=1, le=20)


class CandidateSpec(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    quantizer: QuantizerSpec
    runtime: RuntimeSpec


class SuiteSpec(Strict):
    suite: str
    name: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name or self.suite


# ------------------------------------------------------------------- gates
def _gate_union() -> Any:
    """Every registered gate kind (``harness.gates``), discriminated by ``kind``."""
    from harness.gates import REGISTRY

    classes = tuple(REGISTRY.get(k) for k in REGISTRY.names())
    return Annotated[Union[classes], Field(discriminator="kind")]  # noqa: UP007


def _gate_kinds() -> list[str]:
    from harness.gates import REGISTRY

    return REGISTRY.names()


GateSpec = _gate_union()
GATE_KINDS = _gate_kinds()


class CalibrationOverlapRule(Strict):
    """A candidate whose calibration text shares a 13-gram with more than
    ``max_item_fraction`` of a suite's items is FAILed (``blocks``) or INCONCLUSIVE."""

    max_item_fraction: float = Field(0.0, ge=0, le=1)
    blocks: bool = True


class GatePolicy(Strict):
    name: str = "inline"
    description: str = ""
    #: whether an INCONCLUSIVE gate fails the run (exit 1) or is only reported
    inconclusive_blocks: bool = True
    #: one-sided error rate of each gate decision (a PASS or FAIL is a test at this level)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    #: fewest paired items (0/1 scores) a paired gate decides on; default: the statistics'
    #: own floor (100). Lower it knowingly: below ~100 the interval's error rate is not checked.
    min_items: int | None = Field(None, ge=10)
    #: family-wise error across a candidate's paired gates: "holm" tests each gate's FAIL at
    #: a Holm-Bonferroni adjusted level (a PASS is not adjusted); "none": each at alpha
    multiple_testing: Literal["none", "holm"] = "none"
    #: calibration text that shares n-grams with a suite's items (``harness.overlap``)
    calibration_overlap: CalibrationOverlapRule | None = None
    gates: list[GateSpec]


class TrackingSpec(Strict):
    enabled: bool = True
    uri: str | None = Field(
        None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI, else sqlite in the run folder"
    )
    experiment: str = "quantgate"


class ExecutorSpec(Strict):
    """Where the candidates' stages run (``quantgate run --executor`` overrides it)."""

    name: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="ray: 'auto' (a running cluster on this machine), 'ray://HOST:10001', or none: "
        "start a local cluster for the run")


class Plan(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    baseline: BaselineSpec
    candidates: list[CandidateSpec] = Field(min_length=1)
    suites: list[SuiteSpec] = Field(min_length=1)
    probes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: a policy file (gates/NAME.yaml), an inline list of gates, or an inline policy;
    #: parse_plan validates it as a GatePolicy (kept loose here so errors name one cause)
    gates: str | list[Any] | dict[str, Any]
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)

    # Filled by parse_plan, not read from YAML.
    _source_path: str | None = PrivateAttr(None)
    _policy: GatePolicy | None = PrivateAttr(None)

    @property
    def source_path(self) -> str | None:
        return self._source_path

    def policy(self) -> GatePolicy:
        if self._policy is None:
            raise RuntimeError("parse_plan resolves the gate policy")  # pragma: no cover
        return self._policy


# --------------------------------------------------------- error formatting
def format_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _unwrap(tp: Any) -> list[Any]:
    """The BaseModel / container types hiding in an annotation."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        out = []
        for a in typing.get_args(tp):
            out += _unwrap(a)
        return out
    return [tp]


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """Walk ``loc`` through the schema to the model class that holds the last key."""
    current: list[Any] = [model]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            origin = typing.get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if part in tp.model_fields:
                    nxt += _unwrap(tp.model_fields[part].annotation)
                else:
                    # a discriminated union puts its tag ("max_value") in loc
                    kind = tp.model_fields.get("kind")
                    if kind is not None and part in typing.get_args(kind.annotation):
                        nxt.append(tp)
            elif origin is list and isinstance(part, int):
                for member in _unwrap(typing.get_args(tp)[0]):
                    nxt += _unwrap(member)
            elif origin is dict:
                nxt += _unwrap(typing.get_args(tp)[-1])
        current = nxt
    for tp in current:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def _allowed_keys(model: type[BaseModel]) -> str:
    return ", ".join(model.model_fields)


def _visible_loc(loc: tuple, model: type[BaseModel]) -> tuple:
    """Drop pydantic's union-member tags (e.g. 'list[...]', 'max_value') from a loc."""
    out = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in GATE_KINDS or part in ("str", "GatePolicy")):
            continue
        out.append(part)
    return tuple(out)


def validation_messages(err: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    """One human line per pydantic error: path, problem, bad value, allowed values."""
    lines = []
    for e in err.errors():
        raw_loc = tuple(e["loc"])
        loc = prefix + _visible_loc(raw_loc, model)
        path = format_path(loc)
        etype = e["type"]
        if etype == "extra_forbidden":
            owner = _model_at(model, raw_loc[:-1])
            allowed = _allowed_keys(owner) if owner else "see the schema"
            parent = format_path(prefix + _visible_loc(raw_loc[:-1], model))
            lines.append(f"{parent}: unknown key {raw_loc[-1]!r}; allowed keys: {allowed}")
        elif etype == "missing":
            lines.append(f"{path}: required key is missing")
        elif etype == "union_tag_invalid":
            lines.append(
                f"{path}.kind: unknown gate kind {e['input'].get('kind')!r}; allowed: {', '.join(GATE_KINDS)}"
                if isinstance(e.get("input"), dict)
                else f"{path}: {e['msg']}"
            )
        elif etype == "union_tag_not_found":
            lines.append(f"{path}.kind: required key is missing; allowed: {', '.join(GATE_KINDS)}")
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    # pydantic reports every branch of a union; keep the distinct lines
    return list(dict.fromkeys(lines))


# ------------------------------------------------------------------ loading
#: plans and policies are a few KiB; a bigger file, or one whose aliases expand to more nodes
#: than this (a "billion laughs" bomb), is refused before it can fill memory or an error line
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


class _YamlTooBig(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """yaml's SafeLoader, refusing a document that expands (aliases followed) to more than
    ``MAX_YAML_NODES`` nodes or refers to itself: an alias is one event but can stand for a
    whole tree, and a few dozen nested ones stand for billions of nodes."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _count_nodes(node, MAX_YAML_NODES)
        return node


def _count_nodes(root: yaml.Node, limit: int) -> int:
    """The number of nodes ``root`` stands for with every alias expanded (each distinct node
    counted once per reference, computed once); _YamlTooBig past ``limit`` or on a cycle."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _YamlTooBig("an alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise _YamlTooBig(f"its aliases expand to more than {limit:,} nodes (an alias bomb?)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(root)


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise PlanError(f"{path}: {what} file not found")
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise PlanError(f"{path}: {what} file is {size:,} bytes; refused above {MAX_YAML_BYTES:,} (1 MiB)")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise PlanError(f"{path}: {what} file is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _YamlTooBig as exc:
        raise PlanError(f"{path}: {what} refused: {exc}") from None
    except RecursionError:
        raise PlanError(f"{path}: {what} refused: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PlanError(f"{path}{where}: not valid YAML: {problem}") from None


def _policy_path(ref: str, plan_path: Path) -> Path:
    """A policy reference: relative to the plan, then to the project's gates/ folder, then
    the policies shipped with quantgate (harness.resources.find_policy)."""
    from harness.resources import find_policy

    return find_policy(ref, plan_path.parent) or plan_path.parent / Path(ref).expanduser()


def parse_policy(data: Any, where: Path, prefix: tuple = ()) -> GatePolicy:
    """A policy from a mapping, or from a bare list of gates."""
    if isinstance(data, list):
        data, prefix = {"gates": data}, ()
    if not isinstance(data, dict):
        raise PlanError(f"{where}: {format_path(prefix)}: expected a mapping with 'gates', got {type(data).__name__}")
    try:
        return GatePolicy.model_validate(data)
    except ValidationError as err:
        raise PlanError("\n".join(f"{where}: {m}" for m in validation_messages(err, GatePolicy, prefix))) from None


def load_policy(path: Path) -> GatePolicy:
    policy = parse_policy(_read_yaml(path, "gate policy"), path)
    if policy.name == "inline":
        policy.name = path.stem
    return policy


def parse_plan(path: str | Path) -> Plan:
    """Read a plan file's structure: YAML, the schema, and the gate policy it names or holds;
    raise PlanError with one line per problem. The names it uses (methods, runtimes, suites,
    probes, metrics) are not checked here: ``harness.validate.load_plan`` does both passes."""
    path = Path(path)
    data = _read_yaml(path, "plan")
    if not isinstance(data, dict):
        raise PlanError(f"{path}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as err:
        raise PlanError("\n".join(f"{path}: {m}" for m in validation_messages(err, Plan))) from None
    plan._source_path = str(path)
    if isinstance(plan.gates, str):
        policy_file = _policy_path(plan.gates, path)
        if not policy_file.is_file():
            raise PlanError(f"{path}: gates: policy file {plan.gates!r} not found (looked next to the plan, in gates/ and among the shipped policies)")
        plan._policy = load_policy(policy_file)
    else:
        plan._policy = parse_policy(plan.gates, path, ("gates",))
    return plan
