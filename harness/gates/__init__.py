"""Gate evaluation: a policy + a candidate's and the baseline's results -> one verdict per gate.

Where both sides have per-item records of the gated metric (identical items, matched by
item id), the comparison is paired (``harness.stats``): accuracy-type 0/1 scores use a
paired score interval with McNemar's exact test, per-item real scores and perplexities a
paired bootstrap over items/documents/windows. A gate PASSes only when the one-sided
(1 - alpha) bound clears its threshold, FAILs when the bound shows it is exceeded, and is
INCONCLUSIVE otherwise, with the number of items that would settle it. Metrics without
per-item records (probes: size, speed, memory) are compared as measured, with a normal
bound where a standard error exists.

Pure functions over stored results: ``quantgate gate`` and ``quantgate compare`` re-decide
from results.json without loading a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.config import GatePolicy

PASS, FAIL, INCONCLUSIVE, ERROR = "PASS", "FAIL", "INCONCLUSIVE", "ERROR"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2, ERROR: 3}
#: perplexity-like metrics: exp(sum of NLL / sum of a per-record denominator)
_PPL_DENOMINATOR = {"ppl": "n_scored", "word_perplexity": "n_words", "byte_perplexity": "n_bytes"}


def _value(metrics: dict[str, Any], name: str) -> float | None:
    m = metrics.get(name)
    if m is None:
        return None
    v = m["value"] if isinstance(m, dict) else m
    return None if v is None else float(v)


def _stderr(metrics: dict[str, Any], name: str) -> float | None:
    m = metrics.get(name)
    return m.get("stderr") if isinstance(m, dict) else None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def z_value(alpha: float) -> float:
    from harness.stats import z_value as z

    return z(alpha)


def _records(rec: dict | None, metric: str) -> tuple[str, list[dict]] | None:
    """(metric name within the suite, records) of the suite that produced ``metric``."""
    for sid, entry in ((rec or {}).get("suites") or {}).items():
        if metric.startswith(sid + ".") and entry.get("records"):
            return metric[len(sid) + 1:], entry["records"]
    return None


def paired_items(cand: dict, base: dict, metric: str) -> dict[str, Any] | None:
    """Per-item data of ``metric`` on the items both records scored, or None.

    Returns {"kind": "binary" | "continuous", "base", "cand", "ids"} or
    {"kind": "perplexity", "base_nll", "cand_nll", "denominator", "ids"}."""
    c, b = _records(cand, metric), _records(base, metric)
    if c is None or b is None:
        return None
    name, c_recs = c
    _, b_recs = b
    b_by_id = {r["id"]: r for r in b_recs}
    ids = [r["id"] for r in c_recs if r["id"] in b_by_id]
    if not ids:
        return None
    c_by_id = {r["id"]: r for r in c_recs}
    if name in _PPL_DENOMINATOR and all("logprob_sum" in c_by_id[i] for i in ids):
        den = _PPL_DENOMINATOR[name]
        if not all(b_by_id[i].get(den) for i in ids):
            return None
        return {"kind": "perplexity", "ids": ids,
                "base_nll": np.array([-b_by_id[i]["logprob_sum"] for i in ids]),
                "cand_nll": np.array([-c_by_id[i]["logprob_sum"] for i in ids]),
                "denominator": np.array([float(b_by_id[i][den]) for i in ids])}
    try:
        bv = np.array([float(b_by_id[i]["scores"][name]) for i in ids])
        cv = np.array([float(c_by_id[i]["scores"][name]) for i in ids])
    except (KeyError, TypeError):
        return None
    binary = bool(np.isin(bv, (0.0, 1.0)).all() and np.isin(cv, (0.0, 1.0)).all())
    return {"kind": "binary" if binary else "continuous", "ids": ids, "base": bv, "cand": cv}


def _single_items(rec: dict, metric: str) -> np.ndarray | None:
    """A record's own per-item 0/1 scores of ``metric`` (for absolute floors), or None."""
    found = _records(rec, metric)
    if found is None:
        return None
    name, recs = found
    try:
        v = np.array([float(r["scores"][name]) for r in recs])
    except (KeyError, TypeError):
        return None
    return v if np.isin(v, (0.0, 1.0)).all() else None


def _point(gate, value: float, ref: float | None, alpha: float, stderr: float | None) -> dict[str, Any]:
    """Compare measured values (no per-item records); a normal bound where a stderr exists."""
    kind = gate.kind
    if kind == "max_value":
        est, thr, bad_is_high = value, gate.max, True
        words = f"{gate.metric} {_fmt(value)} (max {_fmt(gate.max)})"
    elif kind == "min_value":
        est, thr, bad_is_high = value, gate.min, False
        words = f"{gate.metric} {_fmt(value)} (min {_fmt(gate.min)})"
    else:
        change = 100.0 * (value - ref) / abs(ref)
        if kind == "max_increase_pct":
            est, thr, bad_is_high = change, gate.max_pct, True
            words = f"{gate.metric} {_fmt(value)} vs baseline {_fmt(ref)}: {change:+.2f}% (max +{_fmt(gate.max_pct)}%)"
        elif kind == "max_drop_pct":
            est, thr, bad_is_high = -change, gate.max_pct, True
            words = f"{gate.metric} {_fmt(value)} vs baseline {_fmt(ref)}: {change:+.2f}% (max -{_fmt(gate.max_pct)}%)"
        elif kind == "max_drop":
            est, thr, bad_is_high = ref - value, gate.max, True
            words = f"{gate.metric} {_fmt(value)} vs baseline {_fmt(ref)}: drop {_fmt(ref - value)} (max {_fmt(gate.max)})"
        else:  # min_ratio
            est, thr, bad_is_high = value / ref, gate.min, False
            words = f"{gate.metric} {_fmt(value)} / baseline {_fmt(ref)} = {value / ref:.4f} (min {_fmt(gate.min)})"
        if stderr is not None:  # the baseline's error is not known here: scale the candidate's
            stderr = stderr * (100.0 / abs(ref) if kind in ("max_increase_pct", "max_drop_pct") else
                               (1.0 / abs(ref) if kind == "min_ratio" else 1.0))
    if stderr is None or not math.isfinite(stderr) or stderr == 0:
        ok = est <= thr if bad_is_high else est >= thr
        return {"verdict": PASS if ok else FAIL, "estimate": est, "lower": None, "upper": None, "n": None,
                "test": "measured value", "threshold": thr, "reason": words}
    z = z_value(alpha)
    lo, hi = est - z * stderr, est + z * stderr
    if bad_is_high:
        verdict = PASS if hi <= thr else FAIL if lo > thr else INCONCLUSIVE
    else:
        verdict = PASS if lo >= thr else FAIL if hi < thr else INCONCLUSIVE
    words += f" [{_fmt(lo)}, {_fmt(hi)}] (normal bound from its standard error): {verdict}"
    return {"verdict": verdict, "estimate": est, "lower": lo, "upper": hi, "n": None,
            "test": "normal bound on the standard error", "threshold": thr, "reason": words}


def evaluate_gate(gate, cand: dict, base: dict | None, alpha: float = 0.05,
                  min_items: int | None = None) -> dict[str, Any]:
    """One gate on a candidate record (``metrics`` and ``suites``) against the baseline record."""
    from harness import stats

    cm, bm = cand.get("metrics", {}), (base or {}).get("metrics", {})
    value = _value(cm, gate.metric)
    out: dict[str, Any] = {"gate": gate.name, "kind": gate.kind, "metric": gate.metric, "value": value}
    if value is None:
        return {**out, "verdict": ERROR, "reason": f"{gate.metric} was not measured"}
    relative_kinds = ("max_increase_pct", "max_drop_pct", "max_drop", "min_ratio")
    ref = _value(bm, gate.metric) if gate.kind in relative_kinds else None
    if gate.kind in relative_kinds:
        out["baseline"] = ref
        if ref is None or ref == 0:
            return {**out, "verdict": ERROR, "reason": f"baseline {gate.metric} was not measured"}
        if gate.kind in ("max_increase_pct", "max_drop_pct"):
            out["change_pct"] = 100.0 * (value - ref) / abs(ref)

    decision = None
    floor = {"min_n": min_items} if min_items else {}
    pairs = paired_items(cand, base, gate.metric) if (base is not None and gate.kind in relative_kinds) else None
    if pairs is not None:
        kind = pairs["kind"]
        if kind == "perplexity" and gate.kind == "max_increase_pct":
            decision = stats.max_increase_continuous(pairs["base_nll"], pairs["cand_nll"], pairs["denominator"],
                                                     gate.max_pct, alpha=alpha, label=gate.metric)
        elif kind == "binary" and gate.kind in ("max_drop_pct", "max_drop"):
            relative = gate.kind == "max_drop_pct"
            decision = stats.max_drop_binary(pairs["base"], pairs["cand"],
                                             gate.max_pct / 100.0 if relative else gate.max,
                                             alpha=alpha, relative=relative, label=gate.metric, **floor)
        elif kind == "binary" and gate.kind == "min_ratio":
            decision = stats.min_ratio_binary(pairs["base"], pairs["cand"], gate.min, alpha=alpha,
                                              label=gate.metric, **floor)
        elif kind == "continuous" and gate.kind in ("max_drop_pct", "max_drop"):
            relative = gate.kind == "max_drop_pct"
            decision = stats.max_drop_continuous(pairs["base"], pairs["cand"],
                                                 gate.max_pct / 100.0 if relative else gate.max,
                                                 relative=relative, alpha=alpha, label=gate.metric)
    elif gate.kind == "min_value":
        items = _single_items(cand, gate.metric)
        if items is not None:
            decision = stats.min_value_binary(items, gate.min, alpha=alpha, label=gate.metric)
    if decision is not None:
        d = decision.to_dict()
        return {**out, **d, "verdict": d["verdict"], "reason": d["text"], "paired": gate.kind != "min_value"}
    return {**out, **_point(gate, value, ref, alpha, _stderr(cm, gate.metric)), "paired": False}


def evaluate_policy(policy: GatePolicy, cand: dict, base: dict | None) -> list[dict[str, Any]]:
    return [evaluate_gate(g, cand, base, policy.alpha, policy.min_items) for g in policy.gates]


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


def decide(results: dict, policy: GatePolicy) -> dict:
    """Re-decide every verdict of a results dict under ``policy`` (no model is loaded)."""
    base = results["baseline"]
    base["verdicts"] = [v for v in evaluate_policy(policy, base, base) if v["kind"] in ("max_value", "min_value")]
    base["verdict"] = overall(base["status"], base["verdicts"])
    for rec in results["candidates"]:
        rec["verdicts"] = evaluate_policy(policy, rec, base)
        rec["verdict"] = overall(rec["status"], rec["verdicts"])
    code = exit_code([r["verdict"] for r in results["candidates"]], policy.inconclusive_blocks)
    results["policy"] = policy.model_dump(mode="json")
    results["approved"] = [r["name"] for r in results["candidates"] if r["verdict"] == PASS]
    results["exit_code"] = 2 if base["status"] != "ok" else code
    return results
