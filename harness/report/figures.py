"""Figures of one run, as pure functions of its results dict (``quantgate.results/1``).

Only matplotlib's object API is used (``matplotlib.figure.Figure``, rendered by the Agg/SVG
canvases on save): no pyplot, no global backend switch, no display, and nothing kept alive
after the caller drops the figure.

* :func:`pareto` -- quality vs size (or memory) per record, the Pareto front, gate lines;
* :func:`suite_bars` -- one bar chart per suite (its gated and headline metrics), candidates
  as bars with error bars (the verdict's interval in metric units where it has one, else the
  metric's stderr).
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

VERDICT_COLORS = {"PASS": "#2e7d32", "FAIL": "#c62828", "INCONCLUSIVE": "#e69f00", "ERROR": "#7f7f7f"}
BASELINE_COLOR = "#1f4e79"
FIGSIZE = (6.0, 4.0)
DPI = 100

# leaf-name words whose metric is better when lower (ppl, nll, kl_*, bits_per_byte, sizes, times)
_LOWER_WORDS = {"ppl", "perplexity", "nll", "kl", "loss", "bpb", "error", "errors", "seconds",
                "gib", "bytes", "rss", "latency", "tail", "rms", "byte_perplexity", "word_perplexity"}
_LOWER_LEAVES = {"bits_per_byte", "byte_perplexity", "word_perplexity", "ref_tail_mass_mean"}
# metrics that describe the measurement, not quality: not worth a bar
_COUNT_LEAVES = {"tokens", "n", "items", "windows", "scored_tokens", "count"}
_SIZE_LABELS = {"size.gib": "size on disk (GiB)", "memory.peak_rss_gib": "peak RSS (GiB)",
                "size.bytes": "size on disk (bytes)"}


# ---------------------------------------------------------------- reading the results dict

def records(results: dict) -> list[dict]:
    """The baseline (when present) then the candidates."""
    out = [results["baseline"]] if results.get("baseline") else []
    return out + list(results.get("candidates") or [])


def gates(results: dict) -> list[dict]:
    return list(((results.get("policy") or {}).get("gates")) or [])


def suite_names(results: dict) -> list[str]:
    """Suite names (metric prefixes), in plan order, then any others the records carry."""
    names: list[str] = []
    for s in (results.get("plan") or {}).get("suites") or []:
        n = s.get("name") or s.get("suite")
        if n and n not in names:
            names.append(n)
    for r in records(results):
        for n in r.get("suites") or {}:
            if n not in names:
                names.append(n)
    return names


def suite_of(metric: str, suites: list[str]) -> str | None:
    """The suite a metric belongs to (the longest suite name that prefixes it), or None."""
    best = None
    for s in suites:
        if metric.startswith(s + ".") and (best is None or len(s) > len(best)):
            best = s
    return best


def metric_names(results: dict) -> list[str]:
    names: list[str] = []
    for r in records(results):
        for k in r.get("metrics") or {}:
            if k not in names:
                names.append(k)
    return names


def metric_value(rec: dict, name: str) -> float | None:
    m = (rec.get("metrics") or {}).get(name)
    if m is None:
        return None
    v = m.get("value") if isinstance(m, dict) else m
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def metric_stderr(rec: dict, name: str) -> float | None:
    m = (rec.get("metrics") or {}).get(name)
    if not isinstance(m, dict) or m.get("stderr") is None:
        return None
    try:
        s = float(m["stderr"])
    except (TypeError, ValueError):
        return None
    return s if math.isfinite(s) else None


def lower_is_better(metric: str, results: dict | None = None) -> bool:
    """From the gate kind on this metric when there is one, else from the metric's name."""
    for g in gates(results or {}):
        if g.get("metric") == metric:
            if g.get("kind") in ("max_increase_pct", "max_value"):
                return True
            if g.get("kind") in ("max_drop_pct", "min_value"):
                return False
    leaf = metric.rsplit(".", 1)[-1].lower()
    if leaf in _LOWER_LEAVES:
        return True
    return any(w in _LOWER_WORDS for w in leaf.split("_"))


def default_quality_metric(results: dict) -> str | None:
    """The first gated suite metric of the policy, else the first suite metric measured."""
    suites = suite_names(results)
    measured = metric_names(results)
    for g in gates(results):
        m = g.get("metric")
        if m and suite_of(m, suites) and m in measured:
            return m
    for m in measured:
        if suite_of(m, suites) and m.rsplit(".", 1)[-1] not in _COUNT_LEAVES:
            return m
    return None


def verdict_of(rec: dict) -> str:
    if rec.get("status") not in (None, "ok"):
        return "ERROR"
    return rec.get("verdict") or "ERROR"


def label_of(rec: dict) -> str:
    return f"{rec.get('name', '?')} (baseline)" if rec.get("role") == "baseline" else str(rec.get("name", "?"))


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def verdict_metric_interval(v: dict, base_value: float | None = None) -> tuple[float, float] | None:
    """A verdict's ``[lower, upper]`` in the metric's own units, or None when it has none or
    its units cannot be told.

    Paired verdicts give the interval in the gate's units (a change in percent, a drop in
    proportion units, a ratio...). Which one is found by matching the verdict's ``estimate``
    against the maps from the metric value to those units; a gate on an absolute value
    (max_value/min_value) is in metric units already.
    """
    lo, hi = _finite(v.get("lower")), _finite(v.get("upper"))
    if lo is None or hi is None:
        return None
    if v.get("kind") in ("max_value", "min_value"):
        return (min(lo, hi), max(lo, hi))
    est, x = _finite(v.get("estimate")), _finite(v.get("value"))
    b = _finite(v.get("baseline"))
    if b is None:
        b = base_value
    if est is None or x is None or b is None or b == 0:
        return None
    ab = abs(b)
    maps = [  # (gate units from metric value, metric value from gate units)
        (lambda y: 100 * (y - b) / ab, lambda g: b + g * ab / 100),
        (lambda y: 100 * (b - y) / ab, lambda g: b - g * ab / 100),
        (lambda y: (y - b) / ab, lambda g: b + g * ab),
        (lambda y: (b - y) / ab, lambda g: b - g * ab),
        (lambda y: y - b, lambda g: b + g),
        (lambda y: b - y, lambda g: b - g),
        (lambda y: 100 * (b - y), lambda g: b - g / 100),
        (lambda y: y / b, lambda g: g * b),
    ]
    tol = 0.02 * abs(est) + 1e-9
    found = {tuple(round(z, 12) for z in sorted((inv(lo), inv(hi))))
             for fwd, inv in maps if abs(fwd(x) - est) <= tol}
    if len(found) != 1:  # no map, or several that disagree (e.g. an estimate of 0)
        return None
    a, c = found.pop()
    return (a, c)


def _threshold_lines(results: dict, metric: str) -> list[tuple[float, str]]:
    """Where each gate on ``metric`` puts its limit, in metric units, with a short label."""
    out = []
    base = results.get("baseline") or {}
    bv = metric_value(base, metric)
    for g in gates(results):
        if g.get("metric") != metric:
            continue
        kind = g.get("kind")
        if kind == "max_value" and _finite(g.get("max")) is not None:
            out.append((float(g["max"]), f"{g.get('name')}: max {g['max']:g}"))
        elif kind == "min_value" and _finite(g.get("min")) is not None:
            out.append((float(g["min"]), f"{g.get('name')}: min {g['min']:g}"))
        elif kind in ("max_increase_pct", "max_drop_pct") and bv is not None \
                and _finite(g.get("max_pct")) is not None:
            sign = 1 if kind == "max_increase_pct" else -1
            out.append((bv * (1 + sign * g["max_pct"] / 100),
                        f"{g.get('name')}: {'+' if sign > 0 else '-'}{g['max_pct']:g}%"))
    return out


def _fig(w: float = FIGSIZE[0], h: float = FIGSIZE[1]) -> Figure:
    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _axis_label(metric: str, results: dict) -> str:
    base = _SIZE_LABELS.get(metric, metric)
    return f"{base} ({'lower' if lower_is_better(metric, results) else 'higher'} is better)"


def _message(fig: Figure, text: str) -> Figure:
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="#555555", wrap=True)
    return fig


# ---------------------------------------------------------------- Pareto plot

def pareto_front(points: list[tuple[float, float]], lower_better: bool) -> list[int]:
    """Indices of the points no other point beats on both size (smaller) and quality,
    ordered by size."""
    sign = 1.0 if lower_better else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        q = sign * points[i][1]
        if q < best:
            front.append(i)
            best = q
    return front


def _place_labels(ax, xy: list[tuple[float, float]], texts: list[str], fontsize: float = 8) -> None:
    """Annotate each point, trying a few offsets so that labels do not overprint each other."""
    ax.autoscale_view()
    placed: list[tuple[float, float, float, float]] = []
    offsets = [(6, 5), (6, -12), (-6, 5), (-6, -12), (6, 16), (-6, 16), (6, -23), (-6, -23)]
    px = fontsize * DPI / 72.0  # points to pixels
    for (x, y), text in zip(xy, texts, strict=True):
        dx0, dy0 = ax.transData.transform((x, y))
        w, h = 0.6 * px * len(text), 1.2 * px
        choice = offsets[0]
        for ox, oy in offsets:
            left = dx0 + ox * DPI / 72 - (w if ox < 0 else 0)
            bottom = dy0 + oy * DPI / 72
            box = (left, bottom, left + w, bottom + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (ox, oy)
                placed.append(box)
                break
        else:
            placed.append((dx0, dy0, dx0 + w, dy0 + h))
        ax.annotate(text, (x, y), xytext=choice, textcoords="offset points", fontsize=fontsize,
                    ha="right" if choice[0] < 0 else "left", va="bottom")


def pareto(results: dict, quality_metric: str | None = None, size_metric: str = "size.gib") -> Figure:
    """Quality vs size per record (the baseline too), the Pareto front, gate limits drawn.

    Colour by verdict: PASS green, FAIL red, INCONCLUSIVE amber, ERROR grey; the baseline is
    a navy diamond. Records without both metrics (a crashed candidate) are named below the plot.
    """
    fig = _fig()
    q = quality_metric or default_quality_metric(results)
    if q is None:
        return _message(fig, "no suite metric was measured: nothing to plot")
    recs = records(results)
    if not any(metric_value(r, size_metric) is not None for r in recs):
        for alt in ("size.gib", "memory.peak_rss_gib", "size.bytes"):
            if any(metric_value(r, alt) is not None for r in recs):
                size_metric = alt
                break
    pts, shown, missing = [], [], []
    for r in recs:
        x, y = metric_value(r, size_metric), metric_value(r, q)
        if r.get("status") not in (None, "ok") or x is None or y is None:
            missing.append(f"{r.get('name')} ({verdict_of(r) if r.get('status') != 'ok' else 'not measured'})")
            continue
        pts.append((x, y))
        shown.append(r)
    if not pts:
        return _message(fig, f"no record has both {size_metric} and {q}")
    ax = fig.add_subplot()
    lower = lower_is_better(q, results)
    front = pareto_front(pts, lower)
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.plot(fx, fy, drawstyle="steps-post", color="#999999",
            lw=1.2, ls="-", zorder=1, label="Pareto front")
    seen: set[str] = set()
    for (x, y), r in zip(pts, shown, strict=True):
        err = metric_stderr(r, q)
        if r.get("role") == "baseline":
            color, marker, lab = BASELINE_COLOR, "D", "baseline"
        else:
            lab = verdict_of(r)
            color, marker = VERDICT_COLORS.get(lab, VERDICT_COLORS["ERROR"]), "o"
        if err:
            ax.errorbar([x], [y], yerr=[err], fmt="none", ecolor=color, elinewidth=1, capsize=2,
                        alpha=0.6, zorder=2)
        ax.scatter([x], [y], s=42, c=color, marker=marker, edgecolors="black", linewidths=0.6,
                   zorder=3, label=None if lab in seen else lab)
        seen.add(lab)
    for i in front:  # ring the front's members
        ax.scatter([pts[i][0]], [pts[i][1]], s=110, facecolors="none", edgecolors="#555555",
                   linewidths=0.8, zorder=2)
    for value, text in _threshold_lines(results, q):
        ax.axhline(value, color="#b0b0b0", ls="--", lw=0.8, zorder=0)
        ax.annotate(text, (1, value), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7, color="#777777")
    for value, text in _threshold_lines(results, size_metric):
        ax.axvline(value, color="#b0b0b0", ls=":", lw=0.8, zorder=0)
        ax.annotate(text, (value, 1), xycoords=("data", "axes fraction"), xytext=(2, -3),
                    textcoords="offset points", ha="left", va="top", fontsize=7, color="#777777",
                    rotation=90)
    ax.margins(x=0.15, y=0.15)
    _place_labels(ax, pts, [str(r.get("name")) for r in shown])
    ax.set_xlabel(_axis_label(size_metric, results), fontsize=9)
    ax.set_ylabel(_axis_label(q, results), fontsize=9)
    ax.set_title(f"{q} vs {size_metric}", fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(True, lw=0.4, alpha=0.5)
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    if missing:
        ax.set_xlabel(ax.get_xlabel() + "\nnot plotted: " + ", ".join(missing), fontsize=9)
    return fig


# ---------------------------------------------------------------- bars per suite

def _bar_metrics(results: dict, suite: str, limit: int = 4) -> list[str]:
    """A suite's metrics worth a bar: its gated ones, then those with a stderr, then the rest
    (no counts), at most ``limit``."""
    names = [m for m in metric_names(results) if suite_of(m, suite_names(results)) == suite]
    names = [m for m in names if m.rsplit(".", 1)[-1] not in _COUNT_LEAVES]
    gated = [g.get("metric") for g in gates(results)]
    with_err = [m for m in names if any(metric_stderr(r, m) is not None for r in records(results))]
    ordered = [m for m in names if m in gated]
    ordered += [m for m in with_err if m not in ordered]
    if not ordered:
        ordered = names[:1]
    return ordered[:limit]


def gate_interval(results: dict, rec: dict, metric: str) -> tuple[float, float] | None:
    """The interval of the first verdict on ``metric`` that has one, in the metric's units."""
    base_value = metric_value(results.get("baseline") or {}, metric)
    for v in rec.get("verdicts") or []:
        if v.get("metric") == metric:
            iv = verdict_metric_interval(v, base_value)
            if iv is not None:
                return iv
    return None


def suite_bars(results: dict) -> list[tuple[str, Figure]]:
    """One figure per suite: a bar per record for each of its main metrics."""
    out: list[tuple[str, Figure]] = []
    recs = records(results)
    for suite in suite_names(results):
        metrics = _bar_metrics(results, suite)
        if not metrics:
            continue
        k = len(metrics)
        fig = _fig(min(3.0 * k, 10.0) if k > 2 else FIGSIZE[0], 3.6)
        axes = fig.subplots(1, k, squeeze=False)[0]
        for ax, metric in zip(axes, metrics, strict=True):
            names, vals, colors, ses, ivs, measured = [], [], [], [], [], []
            for r in recs:
                names.append(label_of(r).replace(" (baseline)", "\n(baseline)"))
                v = metric_value(r, metric) if r.get("status") in (None, "ok") else None
                if r.get("role") == "baseline":
                    colors.append(BASELINE_COLOR)
                else:
                    colors.append(VERDICT_COLORS.get(verdict_of(r), VERDICT_COLORS["ERROR"]))
                measured.append(v is not None)
                vals.append(v if v is not None else 0.0)
                ses.append((metric_stderr(r, metric) or 0.0) if v is not None else 0.0)
                ivs.append(gate_interval(results, r, metric) if v is not None else None)
            xs = list(range(len(names)))
            ax.bar(xs, vals, width=0.6, color=colors, edgecolor="black", linewidth=0.5, zorder=2)
            if any(ses):  # thin: ± one standard error
                ax.errorbar(xs, vals, yerr=ses, fmt="none", ecolor="black", elinewidth=0.8,
                            capsize=2, zorder=3)
            for x, iv in zip(xs, ivs, strict=True):  # thick, just right of the bar: the gate's interval
                if iv is not None:
                    ax.vlines(x + 0.38, iv[0], iv[1], colors="#222222", lw=3, alpha=0.55, zorder=3)
            for x, v, se, ok in zip(xs, vals, ses, measured, strict=True):
                neg = ok and v < 0
                ax.annotate(f"{v:.3g}" if ok else "n/a", (x, (v - se if neg else v + se) if ok else 0.0),
                            xytext=(0, -2 if neg else 2), textcoords="offset points", ha="center",
                            va="top" if neg else "bottom", fontsize=6.5,
                            color="#333333" if ok else "#999999")
            limits = _threshold_lines(results, metric)
            for value, _ in limits:
                ax.axhline(value, color="#555555", ls="--", lw=0.8, zorder=4)
            ax.set_xticks(list(xs))
            ax.set_xticklabels(names, rotation=35 if len(names) > 3 else 0,
                               ha="right" if len(names) > 3 else "center", fontsize=7)
            leaf = metric[len(suite) + 1:]
            arrow = "↓" if lower_is_better(metric, results) else "↑"
            title = f"{leaf} ({arrow} better)"
            if limits:  # the gate limits, named in the title rather than over the bars
                title += "\n" + "; ".join(f"--- {t}" for _, t in limits)
            ax.set_title(title, fontsize=8 if limits else 9)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(True, axis="y", lw=0.4, alpha=0.5, zorder=0)
            ax.margins(y=0.12)
        fig.suptitle(suite, fontsize=10)
        out.append((suite, fig))
    return out
