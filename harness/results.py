"""Stored runs: load a results.json (schema ``quantgate.results/1``), re-decide, compare.

Nothing here loads a model: ``quantgate gate`` and ``quantgate compare`` work from what a
run stored (metrics and per-item records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import QuantgateError

SCHEMA = "quantgate.results/1"


class ResultsError(QuantgateError):
    """A results file is missing or not one quantgate can read."""


def load_results(ref: str | Path) -> tuple[dict, Path]:
    """A run folder (``reports/<run-id>``) or its results.json -> (results, path)."""
    path = Path(ref)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ResultsError(f"{ref}: no results.json here (give a run folder under reports/ or a results.json)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON: {exc}") from None
    schema = results.get("schema") if isinstance(results, dict) else None
    if schema != SCHEMA:
        raise ResultsError(f"{path}: schema {schema!r}, this quantgate reads {SCHEMA!r}")
    return results, path


def _records(results: dict) -> dict[str, dict]:
    return {r["name"]: r for r in [results["baseline"], *results["candidates"]]}


def compare_runs(a: dict, b: dict, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every metric of every candidate present in both runs: A's value, B's, the change,
    and, where both runs scored the same items, a paired interval of the change (B vs A)."""
    from harness import gates, stats

    rows = []
    ra, rb = _records(a), _records(b)
    for name in [n for n in rb if n in ra]:
        ca, cb = ra[name], rb[name]
        for metric in [m for m in cb.get("metrics", {}) if m in ca.get("metrics", {})]:
            va, vb = ca["metrics"][metric].get("value"), cb["metrics"][metric].get("value")
            row: dict[str, Any] = {"candidate": name, "metric": metric, "a": va, "b": vb,
                                   "change": None if va is None or vb is None else vb - va,
                                   "change_pct": (100.0 * (vb - va) / abs(va)) if va not in (None, 0) and vb is not None else None}
            pairs = gates.paired_items(cb, ca, metric)
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


def compare_markdown(a: dict, b: dict, rows: list[dict]) -> str:
    def f(x, d=4):
        return "—" if x is None else f"{x:.{d}g}"

    lines = [f"# quantgate compare: `{a['run_id']}` (A) → `{b['run_id']}` (B)", "",
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
        lines.append(f"| {r['candidate']} | {r['metric']} | {f(r['a'])} | {f(r['b'])} | {change} | {paired} |")
    return "\n".join(lines) + "\n"
