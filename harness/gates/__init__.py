"""Gate evaluation: a policy + metrics -> one verdict per gate, with its evidence.

Pure functions over stored metrics: ``quantgate gate`` can re-decide from a
results.json without loading a model.
"""

from __future__ import annotations

from typing import Any

from harness.config import GatePolicy

PASS, FAIL, INCONCLUSIVE, ERROR = "PASS", "FAIL", "INCONCLUSIVE", "ERROR"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2, ERROR: 3}


def _value(metrics: dict[str, Any], name: str) -> float | None:
    m = metrics.get(name)
    if m is None:
        return None
    return m["value"] if isinstance(m, dict) else float(m)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate_gate(gate, cand: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    value = _value(cand, gate.metric)
    out: dict[str, Any] = {"gate": gate.name, "kind": gate.kind, "metric": gate.metric, "value": value}
    if value is None:
        return {**out, "verdict": ERROR, "reason": f"{gate.metric} was not measured"}
    if gate.kind in ("max_increase_pct", "max_drop_pct"):
        ref = _value(base or {}, gate.metric)
        out["baseline"] = ref
        out["threshold"] = gate.max_pct
        if ref is None or ref == 0:
            return {**out, "verdict": ERROR, "reason": f"baseline {gate.metric} was not measured"}
        change = 100.0 * (value - ref) / abs(ref)
        out["change_pct"] = change
        if gate.kind == "max_increase_pct":
            ok = change <= gate.max_pct
            words = f"{gate.metric} {_fmt(value)} vs baseline {_fmt(ref)}: {change:+.2f}% (max +{_fmt(gate.max_pct)}%)"
        else:
            ok = -change <= gate.max_pct
            words = f"{gate.metric} {_fmt(value)} vs baseline {_fmt(ref)}: {change:+.2f}% (max -{_fmt(gate.max_pct)}%)"
    elif gate.kind == "max_value":
        out["threshold"] = gate.max
        ok = value <= gate.max
        words = f"{gate.metric} {_fmt(value)} (max {_fmt(gate.max)})"
    elif gate.kind == "min_value":
        out["threshold"] = gate.min
        ok = value >= gate.min
        words = f"{gate.metric} {_fmt(value)} (min {_fmt(gate.min)})"
    else:  # pragma: no cover - the schema admits no other kind
        raise ValueError(gate.kind)
    return {**out, "verdict": PASS if ok else FAIL, "reason": words}


def evaluate_policy(policy: GatePolicy, cand: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [evaluate_gate(g, cand, base) for g in policy.gates]


def overall(status: str, verdicts: list[dict[str, Any]]) -> str:
    """A candidate's verdict: the worst of its gates; ERROR when it did not run."""
    if status != "ok":
        return ERROR
    worst = PASS
    for v in verdicts:
        if _RANK[v["verdict"]] > _RANK[worst]:
            worst = v["verdict"]
    return worst


def exit_code(candidate_verdicts: list[str], inconclusive_blocks: bool = True) -> int:
    """0 all passed; 1 a gate failed (or was inconclusive, if the policy says so);
    2 a candidate errored."""
    if any(v == ERROR for v in candidate_verdicts):
        return 2
    blocking = (FAIL, INCONCLUSIVE) if inconclusive_blocks else (FAIL,)
    if any(v in blocking for v in candidate_verdicts):
        return 1
    return 0
