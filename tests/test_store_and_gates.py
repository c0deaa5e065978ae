from __future__ import annotations

import pytest

from harness import gates
from harness.config import GatePolicy
from harness.results import Metric, Record, Verdict
from harness.store import Store, atomic_dir, content_key


def test_atomic_dir_leaves_nothing_when_killed_midway(tmp_path):
    target = tmp_path / "artifacts" / "abc"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model.gguf").write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_atomic_dir_publishes_complete_folder(tmp_path):
    target = tmp_path / "a" / "k"
    with atomic_dir(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert (target / "manifest.json").is_file()
    assert Store(tmp_path).manifest("a", "k") == {}


def test_content_key_is_order_independent_and_sensitive():
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def _policy(*gate_dicts, **kw):
    return GatePolicy.model_validate({"gates": list(gate_dicts), **kw})


def _m(**values):
    """A result record with measured values only (no per-item records)."""
    return Record(name="r", role="candidate",
                  metrics={k.replace("__", "."): Metric(value=v) for k, v in values.items()})


def _v(verdict: str) -> Verdict:
    return Verdict(gate="g", kind="max_value", metric="m", verdict=verdict, reason="")


def test_gate_kinds_decide_and_explain():
    policy = _policy(
        {"name": "ppl", "kind": "max_increase_pct", "metric": "wt.ppl", "max_pct": 5},
        {"name": "acc", "kind": "max_drop_pct", "metric": "mmlu.acc", "max_pct": 2},
        {"name": "size", "kind": "max_value", "metric": "size.gib", "max": 8},
        {"name": "speed", "kind": "min_value", "metric": "decode.tps", "min": 20},
    )
    base = _m(wt__ppl=30.0, mmlu__acc=0.60)
    good = gates.evaluate_policy(policy, _m(wt__ppl=31.0, mmlu__acc=0.595, size__gib=4, decode__tps=25), base)
    assert [v.verdict for v in good] == ["PASS"] * 4
    bad = gates.evaluate_policy(policy, _m(wt__ppl=33.0, mmlu__acc=0.55, size__gib=9, decode__tps=10), base)
    assert [v.verdict for v in bad] == ["FAIL"] * 4
    assert bad[0].reason == "wt.ppl 33 vs baseline 30: +10.00% (max +5%)"
    assert round(bad[1].change_pct, 2) == -8.33
    missing = gates.evaluate_policy(policy, _m(wt__ppl=31.0), None)
    assert [v.verdict for v in missing] == ["ERROR"] * 4
    assert "baseline wt.ppl was not measured" in missing[0].reason


def test_overall_and_exit_codes():
    assert gates.overall("ok", [_v("PASS"), _v("FAIL")]) == "FAIL"
    assert gates.overall("ok", [_v("PASS"), _v("INCONCLUSIVE")]) == "INCONCLUSIVE"
    assert gates.overall("error", [_v("PASS")]) == "ERROR"
    assert gates.exit_code(["PASS", "PASS"]) == 0
    assert gates.exit_code(["PASS", "FAIL"]) == 1
    assert gates.exit_code(["FAIL", "ERROR"]) == 2
    assert gates.exit_code(["INCONCLUSIVE"]) == 1
    assert gates.exit_code(["INCONCLUSIVE"], inconclusive_blocks=False) == 0
