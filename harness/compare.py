"""Two stored runs side by side: every shared metric, its change, and a paired interval of
the change where both runs scored the same items. Nothing here loads a model."""

from __future__ import annotations

from typing import Any

from harness.results import RunResults


def compare_runs(a: RunResults, b: RunResults, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every metric of every record present in both runs: A's value, B's, the change,
    and, where both runs scored the same items, a paired interval of the change (B vs A)."""
    from harness import stats
    from harness.gates import paired_items

    rows = []
    ra = {r.name: r for r in a.records()}
    for cb in b.records():
        ca = ra.get(cb.name)
        if ca is None:
            continue
        for metric in [m for m in cb.metrics if m in ca.metrics]:
            va, vb = ca.metrics[metric].value, cb.metrics[metric].value
            row: dict[str, Any] = {"candidate": cb.name, "metric": metric, "a": va, "b": vb,
                                   "better": cb.metrics[metric].better,
                                   "change": None if va is None or vb is None else vb - va,
                                   "change_pct": (100.0 * (vb - va) / abs(va)) if va not in (None, 0) and vb is not None else None}
            pairs = paired_items(cb, ca, metric)
            if pairs is not None:
                if pairs["kind"] == "binary":
                    d = stats.max_drop_binary(pairs["base"], pairs["cand"], 0.0, alpha=alpha, min_n=1, label=metric)
                    row.update(paired_n=d.n, lower=-d.upper, upper=-d.lower, test=d.test, p_value=d.p_value)
                elif pairs["kind"] == "continuous":
                    d = stats.max_drop_continuous(pairs["base"], pairs["cand"], 0.0, alpha=alpha, min_n=2, label=metric)
                    row.update(paired_n=d.n, lower=-d.upper, upper=-d.lower, test=d.test)
                else:
                    d = stats.max_increase_continuous(pairs["base_nll"], pairs["cand_nll"], pairs["denominator"], 0.0,
                                                      alpha=alpha, min_n=2, label=metric)
                    row.update(paired_n=d.n, lower_pct=d.lower, upper_pct=d.upper, test=d.test)
            rows.append(row)
    return rows


def compare_markdown(a: RunResults, b: RunResults, rows: list[dict]) -> str:
    def f(x, d=4):
        return "—" if x is None else f"{x:.{d}g}"

    arrows = {"higher": " ↑", "lower": " ↓"}
    lines = [f"# quantgate compare: `{a.run_id}` (A) → `{b.run_id}` (B)", "",
             "| candidate | metric | A | B | change | paired interval of the change (B − A) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "lower_pct" in r:
            paired = f"[{r['lower_pct']:+.2f}%, {r['upper_pct']:+.2f}%], n={r['paired_n']}"
        elif "lower" in r:
            paired = f"[{r['lower']:+.4g}, {r['upper']:+.4g}], n={r['paired_n']}"
            if r.get("p_value") is not None:
                paired += f", McNemar p={r['p_value']:.3g}"
        else:
            paired = "—"
        change = "—" if r["change"] is None else f"{r['change']:+.4g}" + (
            f" ({r['change_pct']:+.2f}%)" if r["change_pct"] is not None else "")
        metric = r["metric"] + arrows.get(r.get("better") or "", "")
        lines.append(f"| {r['candidate']} | {metric} | {f(r['a'])} | {f(r['b'])} | {change} | {paired} |")
    return "\n".join(lines) + "\n"
