"""Gate evaluation: a policy + a candidate's and the baseline's results -> one verdict per gate.

Gate kinds are classes, one file each, registered by name below (third parties through the
entry-point group ``quantgate.gates``); each owns its parameters, the direction its metric
must have, and its statistic. Where both sides have per-item records of the gated metric
(identical items, matched by item id), the comparison is paired (``harness.stats``):
accuracy-type 0/1 scores use a paired score interval with McNemar's exact test, per-item real
scores and perplexities a paired bootstrap over items/documents/windows. A gate PASSes only
when the one-sided (1 - alpha) bound clears its threshold, FAILs when the bound shows it is
exceeded, and is INCONCLUSIVE otherwise, with the number of items that would settle it.
Metrics without per-item records (probes: size, speed, memory) are compared as measured, with
a normal bound where a standard error exists.

Pure functions over stored results (``harness.results`` models): ``quantgate gate`` and
``quantgate compare`` re-decide from results.json without loading a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.gates.base import Gate
from harness.registry import Registry
from harness.results import Record, RunResults, Verdict

REGISTRY = Registry(
    "gates",
    {
        "max_increase_pct": "harness.gates.max_increase_pct:MaxIncreasePct",
        "max_drop_pct": "harness.gates.max_drop_pct:MaxDropPct",
        "max_drop": "harness.gates.max_drop:MaxDrop",
        "min_ratio": "harness.gates.min_ratio:MinRatio",
        "max_value": "harness.gates.max_value:MaxValue",
        "min_value": "harness.gates.min_value:MinValue",
    },
    base="harness.gates.base:Gate",
)

PASS, FAIL, INCONCLUSIVE, ERROR = "PASS", "FAIL", "INCONCLUSIVE", "ERROR"
_RANK = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2, ERROR: 3}
#: perplexity-like metrics: exp(sum of NLL / sum of a per-record denominator)
PPL_DENOMINATOR = {"ppl": "n_scored", "word_perplexity": "n_words", "byte_perplexity": "n_bytes"}


def gate_class(kind: str) -> type[Gate]:
    return REGISTRY.get(kind)


def kinds_for(better: str) -> list[str]:
    """The registered gate kinds for a metric that is better when ``better``."""
    return [k for k in REGISTRY.names() if gate_class(k).requires == better]


def gate_from_dict(data: dict[str, Any]) -> Gate:
    """A stored gate (a policy's JSON) as its class."""
    return gate_class(data["kind"]).model_validate(data)


def z_value(alpha: float) -> float:
    from harness.stats import z_value as z

    return z(alpha)


def _suite_records(rec: Record | None, metric: str) -> tuple[str, list[dict]] | None:
    """(metric name within the suite, records) of the suite that produced ``metric``."""
    for sid, entry in (rec.suites if rec is not None else {}).items():
        if metric.startswith(sid + ".") and entry.records:
            return metric[len(sid) + 1:], entry.records
    return None


def paired_items(cand: Record, base: Record | None, metric: str) -> dict[str, Any] | None:
    """Per-item data of ``metric`` on the items both records scored, or None.

    Returns {"kind": "binary" | "continuous", "base", "cand", "ids"} or
    {"kind": "perplexity", "base_nll", "cand_nll", "denominator", "ids"}."""
    c, b = _suite_records(cand, metric), _suite_records(base, metric)
    if c is None or b is None:
        return None
    name, c_recs = c
    _, b_recs = b
    b_by_id = {r["id"]: r for r in b_recs}
    ids = [r["id"] for r in c_recs if r["id"] in b_by_id]
    if not ids:
        return None
    c_by_id = {r["id"]: r for r in c_recs}
    if name in PPL_DENOMINATOR and all("logprob_sum" in c_by_id[i] for i in ids):
        den = PPL_DENOMINATOR[name]
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


def _single_items(rec: Record, metric: str) -> np.ndarray | None:
    """A record's own per-item 0/1 scores of ``metric`` (for absolute floors), or None."""
    found = _suite_records(rec, metric)
    if found is None:
        return None
    name, recs = found
    try:
        v = np.array([float(r["scores"][name]) for r in recs])
    except (KeyError, TypeError):
        return None
    return v if np.isin(v, (0.0, 1.0)).all() else None


def _point(gate: Gate, value: float, ref: float | None, alpha: float, stderr: float | None) -> dict[str, Any]:
    """Compare measured values (no per-item records); a normal bound where a stderr exists."""
    est, words = gate.estimate(value, ref)
    thr = gate.threshold()
    if stderr is not None and gate.relative:
        stderr = stderr * gate.stderr_scale(ref)
    if stderr is None or not math.isfinite(stderr) or stderr == 0:
        ok = est <= thr if gate.bad_is_high else est >= thr
        return {"verdict": PASS if ok else FAIL, "estimate": est, "lower": None, "upper": None, "n": None,
                "test": "measured value", "threshold": thr, "reason": words}
    z = z_value(alpha)
    lo, hi = est - z * stderr, est + z * stderr
    if gate.bad_is_high:
        verdict = PASS if hi <= thr else FAIL if lo > thr else INCONCLUSIVE
    else:
        verdict = PASS if lo >= thr else FAIL if hi < thr else INCONCLUSIVE
    words += f" [{lo:.4g}, {hi:.4g}] (normal bound from its standard error): {verdict}"
    return {"verdict": verdict, "estimate": est, "lower": lo, "upper": hi, "n": None,
            "test": "normal bound on the standard error", "threshold": thr, "reason": words}


def evaluate_gate(gate: Gate, cand: Record, base: Record | None, alpha: float = 0.05,
                  min_items: int | None = None) -> Verdict:
    """One gate on a candidate record against the baseline record."""
    metric = cand.metrics.get(gate.metric)
    value = None if metric is None else metric.value
    out: dict[str, Any] = {"gate": gate.name, "kind": gate.kind, "metric": gate.metric, "value": value,
                           "better": None if metric is None else metric.better}
    if value is None:
        return Verdict(**out, verdict=ERROR, reason=f"{gate.metric} was not measured")
    ref = None
    if gate.relative:
        ref = base.value(gate.metric) if base is not None else None
        out["baseline"] = ref
        if ref is None:
            return Verdict(**out, verdict=ERROR, reason=f"baseline {gate.metric} was not measured")
        if ref == 0 and gate.proportional:
            return Verdict(**out, verdict=ERROR, reason=(
                f"baseline {gate.metric} is 0: a change in proportion to 0 is undefined "
                f"(gate kind {gate.kind!r}; 'max_drop' bounds the difference)"))
        out["change_pct"] = 100.0 * (value - ref) / abs(ref) if ref else None

    decision = None
    if gate.relative:
        pairs = paired_items(cand, base, gate.metric) if base is not None else None
        if pairs is not None:
            decision = gate.decide_paired(pairs, alpha, {"min_n": min_items} if min_items else {})
    else:
        items = _single_items(cand, gate.metric)
        if items is not None:
            decision = gate.decide_items(items, alpha)
    if decision is not None:
        d = decision.to_dict()
        return Verdict(**out, **{k: v for k, v in d.items() if k != "verdict"}, verdict=d["verdict"],
                       reason=d["text"], paired=gate.relative)
    return Verdict(**out, **_point(gate, value, ref, alpha, metric.stderr), paired=False)


def evaluate_policy(policy: Any, cand: Record, base: Record | None) -> list[Verdict]:
    return [evaluate_gate(g, cand, base, policy.alpha, policy.min_items) for g in policy.gates]


def overall(status: str, verdicts: list[Verdict]) -> str:
    """A candidate's verdict: the worst of its gates; ERROR when it did not run."""
    if status != "ok":
        return ERROR
    worst = PASS
    for v in verdicts:
        if _RANK[v.verdict] > _RANK[worst]:
            worst = v.verdict
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


def decide(results: RunResults, policy: Any) -> RunResults:
    """``policy``: a ``harness.config.GatePolicy`` (not imported here: config builds its gate
    schema from this package's registry). Re-decide every verdict of a run under ``policy`` (no model is loaded). The baseline
    is held to the absolute gates only."""
    base = results.baseline
    base.verdicts = [evaluate_gate(g, base, base, policy.alpha, policy.min_items)
                     for g in policy.gates if not g.relative]
    base.verdict = overall(base.status, base.verdicts)
    for rec in results.candidates:
        rec.verdicts = evaluate_policy(policy, rec, base)
        rec.verdict = overall(rec.status, rec.verdicts)
    code = exit_code([r.verdict for r in results.candidates], policy.inconclusive_blocks)
    results.policy = policy.model_dump(mode="json")
    results.approved = [r.name for r in results.candidates if r.verdict == PASS]
    results.exit_code = 2 if base.status != "ok" else code
    return results
