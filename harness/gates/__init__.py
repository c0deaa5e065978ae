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
        "max_slice_drop": "harness.gates.max_slice_drop:MaxSliceDrop",
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
    """(metric name within the suite, records) of the suite that produced ``metric`` (the longest
    suite id that prefixes it: "a.b.acc" belongs to suite "a.b" before "a")."""
    found = [(sid, entry) for sid, entry in (rec.suites if rec is not None else {}).items()
             if metric.startswith(sid + ".") and entry.records]
    if not found:
        return None
    sid, entry = max(found, key=lambda x: len(x[0]))
    return metric[len(sid) + 1:], entry.records


def unpaired_item_scores(cand: Record, base: Record | None, metric: str) -> str | None:
    """Why ``metric`` has per-item scores that ``paired_items`` could not pair (a record without
    the score or the id, no common item, a score that is not a finite number), or None when the
    metric is not a per-item score (an aggregate such as a per-length rate): a paired gate on
    such a metric must not be decided on the averages alone."""
    for rec in (cand, base):
        got = _suite_records(rec, metric)
        if got is None:
            continue
        name, recs = got
        if any(name in (r.get("scores") or {}) for r in recs) or (
                name in PPL_DENOMINATOR and any("logprob_sum" in r for r in recs)):
            return (f"{metric}: the suite's per-item records cannot be paired between baseline and "
                    "candidate (an item without an id or this score, a score that is not a finite "
                    "number, or no item in common); not decided on the averages")
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
    if not all("id" in r for r in (*c_recs, *b_recs)):
        return None
    b_by_id = {r["id"]: r for r in b_recs}
    ids = [r["id"] for r in c_recs if r["id"] in b_by_id]
    if not ids:
        return None
    c_by_id = {r["id"]: r for r in c_recs}
    labels = _slice_labels(b_by_id, ids)
    extra = {"slices": labels} if labels is not None else {}
    if name in PPL_DENOMINATOR and all("logprob_sum" in c_by_id[i] for i in ids):
        den = PPL_DENOMINATOR[name]
        if not all(b_by_id[i].get(den) for i in ids) or not all("logprob_sum" in b_by_id[i] for i in ids):
            return None
        try:
            out = {"kind": "perplexity", "ids": ids, **extra,
                   "base_nll": np.array([-float(b_by_id[i]["logprob_sum"]) for i in ids]),
                   "cand_nll": np.array([-float(c_by_id[i]["logprob_sum"]) for i in ids]),
                   "denominator": np.array([float(b_by_id[i][den]) for i in ids])}
        except (TypeError, ValueError):
            return None
        finite = all(np.isfinite(out[k]).all() for k in ("base_nll", "cand_nll", "denominator"))
        return out if finite else None
    try:
        bv = np.array([float(b_by_id[i]["scores"][name]) for i in ids])
        cv = np.array([float(c_by_id[i]["scores"][name]) for i in ids])
    except (KeyError, TypeError, ValueError):
        return None
    if not (np.isfinite(bv).all() and np.isfinite(cv).all()):
        return None
    binary = bool(np.isin(bv, (0.0, 1.0)).all() and np.isin(cv, (0.0, 1.0)).all())
    return {"kind": "binary" if binary else "continuous", "ids": ids, "base": bv, "cand": cv, **extra}


def _slice_labels(b_by_id: dict[str, dict], ids: list[str]) -> list[str] | None:
    """The slice label of each item (``slice`` in the baseline's records: an MMLU subject, a
    JSON-format category), or None when any item has none."""
    labels = [b_by_id[i].get("slice") for i in ids]
    if not labels or any(lab is None for lab in labels):
        return None
    return [str(lab) for lab in labels]


def split_slices(pairs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Paired items (``paired_items``) split by slice label: label -> the same kind of dict
    restricted to that slice's items ({} without labels)."""
    labels = pairs.get("slices")
    if not labels:
        return {}
    out: dict[str, dict[str, Any]] = {}
    arrays = [k for k, v in pairs.items() if isinstance(v, np.ndarray)]
    for lab in sorted(set(labels)):
        idx = np.array([i for i, x in enumerate(labels) if x == lab])
        part = {k: v for k, v in pairs.items() if k not in arrays and k not in ("ids", "slices")}
        part.update({k: pairs[k][idx] for k in arrays})
        part["ids"] = [pairs["ids"][i] for i in idx]
        out[lab] = part
    return out


def slice_interval(part: dict[str, Any], alpha: float) -> dict[str, Any] | None:
    """One slice's paired change with its two-sided (1 - 2 alpha) interval: an absolute drop
    (base - cand) for scores, a percent change for perplexities."""
    from harness import stats

    n = len(part["ids"])
    if part["kind"] == "binary":
        d = stats.max_drop_binary(part["base"], part["cand"], 0.0, alpha=alpha, min_n=1)
        base, cand, units = float(part["base"].mean()), float(part["cand"].mean()), "drop"
    elif part["kind"] == "continuous":
        d = stats.max_drop_continuous(part["base"], part["cand"], 0.0, alpha=alpha, min_n=1)
        base, cand, units = float(part["base"].mean()), float(part["cand"].mean()), "drop"
    elif part["kind"] == "perplexity":
        den = part["denominator"].sum()
        d = stats.max_increase_continuous(part["base_nll"], part["cand_nll"], part["denominator"], 0.0,
                                          alpha=alpha, min_n=1)
        base, cand, units = (math.exp(part["base_nll"].sum() / den), math.exp(part["cand_nll"].sum() / den),
                             "change_pct")
    else:
        return None
    return {"n": n, "base": base, "cand": cand, "units": units, "estimate": _finite(d.estimate),
            "lower": _finite(d.lower), "upper": _finite(d.upper)}


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def slice_table(cand: Record, base: Record | None, alpha: float) -> dict[str, Any]:
    """suite id -> metric -> slice -> {n, base, cand, units, estimate, lower, upper}: every
    metric with per-item records on items that carry a slice label, paired item by item."""
    out: dict[str, Any] = {}
    if base is None or cand.status != "ok":
        return out
    for sid, entry in cand.suites.items():
        for m in entry.metrics:
            pairs = paired_items(cand, base, f"{sid}.{m}")
            if pairs is None or not pairs.get("slices"):
                continue
            rows = {lab: row for lab, part in split_slices(pairs).items()
                    if (row := slice_interval(part, alpha)) is not None}
            if rows:
                out.setdefault(sid, {})[m] = rows
    return out


def _single_items(rec: Record, metric: str) -> np.ndarray | None:
    """A record's own per-item 0/1 scores of ``metric`` (for absolute floors), or None."""
    found = _suite_records(rec, metric)
    if found is None:
        return None
    name, recs = found
    try:
        v = np.array([float(r["scores"][name]) for r in recs])
    except (KeyError, TypeError, ValueError):
        return None
    return v if np.isin(v, (0.0, 1.0)).all() else None


def _point(gate: Gate, value: float, ref: float | None, alpha: float, stderr: float | None,
           base_stderr: float | None = None) -> dict[str, Any]:
    """Compare measured values (no per-item records); a normal bound where a stderr exists."""
    est, words = gate.estimate(value, ref)
    thr = gate.threshold()
    if stderr is not None and gate.relative:
        stderr = stderr * gate.stderr_scale(ref)
        if base_stderr is not None and math.isfinite(base_stderr):
            # two independent estimates (nothing to pair): the difference has both variances
            stderr = math.hypot(stderr, base_stderr * gate.stderr_scale(ref))
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
    try:
        if gate.relative:
            pairs = paired_items(cand, base, gate.metric) if base is not None else None
            if pairs is not None:
                decision = gate.decide_paired(pairs, alpha, {"min_n": min_items} if min_items else {})
            elif why := unpaired_item_scores(cand, base, gate.metric):
                return Verdict(**out, verdict=INCONCLUSIVE, reason=why, paired=False)
        else:
            items = _single_items(cand, gate.metric)
            if items is not None:
                decision = gate.decide_items(items, alpha, {"min_n": min_items} if min_items else None)
    except ValueError as exc:  # a threshold the statistic cannot test (e.g. a drop of 100%)
        return Verdict(**out, verdict=ERROR, reason=f"{gate.metric}: {exc}")
    if decision is not None:
        d = decision.to_dict()
        return Verdict(**out, **{k: v for k, v in d.items() if k != "verdict"}, verdict=d["verdict"],
                       reason=d["text"], paired=gate.relative)
    base_metric = base.metrics.get(gate.metric) if gate.relative and base is not None else None
    return Verdict(**out, **_point(gate, value, ref, alpha, metric.stderr,
                                   base_metric.stderr if base_metric is not None else None), paired=False)


def evaluate_policy(policy: Any, cand: Record, base: Record | None) -> list[Verdict]:
    """Every gate of ``policy`` on a candidate, then what the policy adds across gates: the
    Holm-Bonferroni correction over the paired gates (``multiple_testing: holm``), the
    baseline's noise floor (a change within the baseline's own run-to-run spread cannot
    FAIL), and the calibration-overlap rule. ``quantgate gate`` and a release verify call
    this same function, so a re-decision matches the run's."""
    verdicts = [evaluate_gate(g, cand, base, policy.alpha, policy.min_items) for g in policy.gates]
    if getattr(policy, "multiple_testing", "none") == "holm":
        _holm(policy, verdicts, cand, base)
    _noise_floor(policy, verdicts, base)
    rule = getattr(policy, "calibration_overlap", None)
    if rule is not None and cand.calibration_overlap:
        verdicts += overlap_verdicts(rule, cand.calibration_overlap)
    return verdicts


def _holm(policy: Any, verdicts: list[Verdict], cand: Record, base: Record | None) -> None:
    """Holm-Bonferroni over the candidate's paired gates: a FAIL stands only where the gate
    also FAILs at its adjusted level (``harness.stats.holm_step_down``); the others become
    INCONCLUSIVE. A PASS is not adjusted: a candidate passes only when every gate passes,
    which already bounds a false PASS by alpha."""
    from harness.stats import holm_step_down

    family = [i for i, v in enumerate(verdicts) if v.paired and v.verdict in (PASS, FAIL, INCONCLUSIVE)]
    if not family:
        return
    # by position: verdicts[i] is policy.gates[i]'s (names may repeat in a policy given to `gate`)
    redone: dict[tuple[int, float], Verdict] = {}

    def test(i: int):
        def fails_at(level: float) -> bool:
            v = verdicts[i]
            if v.verdict != FAIL:  # not a FAIL at alpha: not at any smaller level either
                return False
            if level >= policy.alpha:
                return True
            if (i, level) not in redone:
                redone[(i, level)] = evaluate_gate(policy.gates[i], cand, base, level, policy.min_items)
            return redone[(i, level)].verdict == FAIL
        return fails_at

    out = holm_step_down([test(i) for i in family], policy.alpha)
    k = len(family)
    for i, res in zip(family, out, strict=True):
        v = verdicts[i]
        level = res["level"]
        v.adjusted_alpha = level
        v.details = {**v.details, "multiple_testing": {"method": "holm", "family": k, "alpha": policy.alpha,
                                                        "level": level, "rejected": res["rejected"]}}
        if v.verdict != FAIL:
            continue
        if res["rejected"]:
            if level < policy.alpha:  # the evidence at the adjusted level
                again = redone[(i, level)]
                v.lower, v.upper, v.text = again.lower, again.upper, again.text
                v.reason = f"{again.reason} [Holm: FAIL at {level:.3g} of {k} paired gates]"
            continue
        v.verdict = INCONCLUSIVE
        v.reason = (f"{v.reason} [Holm over {k} paired gates: not a FAIL at the adjusted level {level:.3g} "
                    f"(alpha {policy.alpha:g})]")


def _noise_floor(policy: Any, verdicts: list[Verdict], base: Record | None) -> None:
    """A relative gate whose observed change (candidate - baseline, metric units) lies within
    the baseline's own run-to-run spread (``baseline.repeats``) cannot FAIL on it."""
    floors = ((base.noise_floor or {}).get("metrics") or {}) if base is not None else {}
    if not floors:
        return
    repeats = (base.noise_floor or {}).get("repeats")
    for i, v in enumerate(verdicts):
        g = policy.gates[i] if i < len(policy.gates) else None  # verdicts[i] is gates[i]'s; overlap after
        if v.verdict != FAIL or g is None or not g.relative or getattr(g, "per_slice", False):
            continue
        floor = (floors.get(v.metric) or {}).get("floor")
        if floor is None or v.value is None or v.baseline is None:
            continue
        change = v.value - v.baseline
        if abs(change) <= floor:
            v.verdict = INCONCLUSIVE
            v.details = {**v.details, "noise_floor": {"floor": floor, "change": change, "repeats": repeats}}
            v.reason = (f"{v.reason}; {v.metric} changed by {change:+.4g}: within the baseline's own run-to-run "
                        f"spread ±{floor:.4g} ({repeats} repeats), so not a FAIL")


def overlap_verdicts(rule: Any, overlap: dict[str, Any]) -> list[Verdict]:
    """The policy's ``calibration_overlap`` rule on a candidate's measured overlap: FAIL (or
    INCONCLUSIVE when it does not block) where a suite's share of items that share a 13-gram
    with the calibration text exceeds ``max_item_fraction``; one PASS otherwise."""
    limit = rule.max_item_fraction
    checked = {sid: o for sid, o in overlap.items() if o.get("checked")}
    unchecked = {sid: o for sid, o in overlap.items() if not o.get("checked")}
    out: list[Verdict] = []
    if rule.blocks:  # a blocking rule does not pass what it could not check
        out += [Verdict(gate="calibration-overlap", kind="calibration_overlap",
                        metric=f"{sid}.calibration_item_overlap", value=None, verdict=INCONCLUSIVE,
                        threshold=limit, details=dict(o),
                        reason=f"calibration overlap with suite {sid} not checked ({o.get('why') or 'unknown'}): "
                               "INCONCLUSIVE under a blocking calibration_overlap rule")
                for sid, o in unchecked.items()]
    if not checked:
        return out
    over = {sid: o for sid, o in checked.items() if (o.get("item_fraction") or 0.0) > limit}
    if not over and out:
        return out
    if not over:
        worst = max((o.get("item_fraction") or 0.0 for o in checked.values()), default=0.0)
        return [Verdict(gate="calibration-overlap", kind="calibration_overlap", metric="calibration.item_overlap",
                        value=worst, verdict=PASS, threshold=limit,
                        reason=f"calibration shares no 13-gram with more than {limit:.3g} of any suite's items")]
    for sid, o in over.items():
        verdict = FAIL if rule.blocks else INCONCLUSIVE
        out.append(Verdict(
            gate="calibration-overlap", kind="calibration_overlap", metric=f"{sid}.calibration_item_overlap",
            value=o["item_fraction"], verdict=verdict, threshold=limit, details=dict(o),
            reason=(f"calibration overlaps suite {sid}: {o['items_overlapping']} of {o['items']} items "
                    f"({100 * o['item_fraction']:.1f}%) share a 13-gram with the calibration text, "
                    f"{100 * (o.get('calibration_fraction') or 0.0):.1f}% of its 13-grams are in the suite "
                    f"(max {100 * limit:g}% of items): {verdict}")))
    return out


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
        rec.slices = slice_table(rec, base, policy.alpha)
    code = exit_code([r.verdict for r in results.candidates], policy.inconclusive_blocks)
    results.policy = policy.model_dump(mode="json")
    results.approved = [r.name for r in results.candidates if r.verdict == PASS]
    results.exit_code = 2 if base.status != "ok" else code
    return results
