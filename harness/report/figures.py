"""Figures of one run, as pure functions of its typed results (``harness.results.RunResults``).

Only matplotlib's object API is used (``matplotlib.figure.Figure``, rendered by the Agg/SVG
canvases on save): no pyplot, no global backend switch, no display, and nothing kept alive
after the caller drops the figure.

* :func:`pareto` -- quality vs size (or memory) per record, the Pareto front, gate lines;
* :func:`suite_bars` -- one bar chart per suite (its gated and headline metrics), candidates
  as bars with error bars (the verdict's interval in metric units where it has one, else the
  metric's stderr).

Which way a metric is better comes from the results (``Metric.better``, declared once by the
suite or probe that measured it); where a gate's limit lies and what a verdict's interval is
in the metric's units, from the gate's class (``harness.gates``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from matplotlib.figure import Figure

from harness.gates import REGISTRY as GATES
from harness.gates import Gate, gate_class, gate_from_dict
from harness.results import Record, RunResults, Verdict

VERDICT_COLORS = {"PASS": "#2e7d32", "FAIL": "#c62828", "INCONCLUSIVE": "#e69f00", "ERROR": "#7f7f7f"}
BASELINE_COLOR = "#1f4e79"
FIGSIZE = (6.0, 4.0)
DPI = 100

# metrics that describe the measurement, not quality: not worth a bar
_COUNT_LEAVES = {"tokens", "n", "items", "windows", "scored_tokens", "count"}
_SIZE_LABELS = {"size.gib": "size on disk (GiB)", "memory.peak_rss_gib": "peak RSS (GiB)",
                "size.bytes": "size on disk (bytes)"}
#: tests with which a gate compared measured values: its interval is in the unpaired units
_UNPAIRED_TESTS = ("measured value", "normal bound on the standard error")


# ---------------------------------------------------------------- reading the results

def records(results: RunResults) -> list[Record]:
    """The baseline then the candidates."""
    return results.records()


def gates(results: RunResults) -> list[dict]:
    """The policy's gates as stored (dicts)."""
    return list(results.policy.get("gates") or [])


def gate_objects(results: RunResults) -> list[Gate]:
    """The policy's gates as their classes; a gate this install cannot build (a kind it does
    not know, parameters its class refuses) is left out: it draws no line."""
    out = []
    for g in gates(results):
        try:
            out.append(gate_from_dict(g))
        except Exception:
            continue
    return out


def suite_names(results: RunResults) -> list[str]:
    """Suite names (metric prefixes), in plan order, then any others the records carry."""
    names: list[str] = []
    for s in results.plan.get("suites") or []:
        n = s.get("name") or s.get("suite")
        if n and n not in names:
            names.append(n)
    for r in records(results):
        for n in r.suites:
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


def metric_names(results: RunResults) -> list[str]:
    names: list[str] = []
    for r in records(results):
        for k in r.metrics:
            if k not in names:
                names.append(k)
    return names


def metric_value(rec: Record | None, name: str) -> float | None:
    m = None if rec is None else rec.metrics.get(name)
    return None if m is None else _finite(m.value)


def metric_stderr(rec: Record | None, name: str) -> float | None:
    m = None if rec is None else rec.metrics.get(name)
    return None if m is None else _finite(m.stderr)


def metric_better(results: RunResults, metric: str) -> str | None:
    """"higher" | "lower": the direction the records' metric declares (a verdict's where no
    record carries the metric), or None where nothing declares one (a count, such as tokens)."""
    for r in records(results):
        m = r.metrics.get(metric)
        if m is not None and m.better is not None:
            return m.better
    for r in records(results):
        for v in r.verdicts:
            if v.metric == metric and v.better is not None:
                return v.better
    return None


def lower_is_better(metric: str, results: RunResults) -> bool:
    """Whether ``metric`` is declared lower-is-better. A metric without a declared direction
    (None: a count that describes the measurement) is drawn as higher-is-better: for display
    only (the axis label, the Pareto front's side), it decides nothing."""
    return metric_better(results, metric) == "lower"


def default_quality_metric(results: RunResults) -> str | None:
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


def verdict_of(rec: Record) -> str:
    if rec.status != "ok":
        return "ERROR"
    return rec.verdict or "ERROR"


def label_of(rec: Record) -> str:
    return f"{rec.name} (baseline)" if rec.role == "baseline" else rec.name


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def verdict_gate(v: Verdict, results: RunResults | None = None) -> Gate | None:
    """The gate class instance a verdict was decided by: the policy's gate of that name and
    kind where ``results`` has it, else the kind's class without its parameters (mapping to
    metric units reads none of them), or None for a kind this install does not know."""
    if results is not None:
        for g in gate_objects(results):
            if g.name == v.gate and g.kind == v.kind:
                return g
    if v.kind not in GATES:
        return None
    return gate_class(v.kind).model_construct(name=v.gate, metric=v.metric)


def verdict_paired(v: Verdict) -> bool:
    """Whether a verdict's statistics are in its gate's paired units; a file that predates the
    ``paired`` field tells by its test."""
    if v.paired is not None:
        return v.paired
    return v.test is not None and v.test not in _UNPAIRED_TESTS


def verdict_metric_interval(v: Verdict, base_value: float | None = None,
                            gate: Gate | None = None) -> tuple[float, float] | None:
    """A verdict's ``[lower, upper]`` in the metric's own units, or None when it has none or
    its gate's class cannot map it.

    The interval is in the gate's units (a change in percent, a drop as a fraction, a ratio,
    the metric itself for absolute bounds); the gate's class maps each bound back with
    ``to_metric_units(x, baseline, paired)``. ``gate`` defaults to the verdict's kind's class;
    the baseline to the verdict's own, else ``base_value``.
    """
    lo, hi = _finite(v.lower), _finite(v.upper)
    if lo is None or hi is None:
        return None
    gate = gate or verdict_gate(v)
    if gate is None:
        return None
    b = _finite(v.baseline)
    if b is None:
        b = _finite(base_value)
    paired = verdict_paired(v)
    try:
        a, c = (_finite(gate.to_metric_units(x, b, paired=paired)) for x in (lo, hi))
    except (AttributeError, TypeError, ValueError, ZeroDivisionError, NotImplementedError):
        return None  # a third-party kind that needs what a parameterless instance lacks
    if a is None or c is None:
        return None
    return (min(a, c), max(a, c))


def threshold_lines(results: RunResults, metric: str) -> list[tuple[float, str]]:
    """Where each gate on ``metric`` puts its limit, in metric units, with a short label."""
    bv = metric_value(results.baseline, metric)
    out = []
    for g in gate_objects(results):
        if g.metric != metric:
            continue
        line = g.line(bv)
        if line is not None:
            out.append(line)
    return out


def _fig(w: float = FIGSIZE[0], h: float = FIGSIZE[1]) -> Figure:
    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _axis_label(metric: str, results: RunResults) -> str:
    base = _SIZE_LABELS.get(metric, metric)
    # no declared direction (a count): "higher", for display only (see lower_is_better)
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


def pareto(results: RunResults, quality_metric: str | None = None, size_metric: str = "size.gib") -> Figure:
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
        if r.status != "ok" or x is None or y is None:
            missing.append(f"{r.name} ({verdict_of(r) if r.status != 'ok' else 'not measured'})")
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
        if r.role == "baseline":
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
    for value, text in threshold_lines(results, q):
        ax.axhline(value, color="#b0b0b0", ls="--", lw=0.8, zorder=0)
        ax.annotate(text, (1, value), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                    textcoords="offset points", ha="right", va="bottom", fontsize=7, color="#777777")
    for value, text in threshold_lines(results, size_metric):
        ax.axvline(value, color="#b0b0b0", ls=":", lw=0.8, zorder=0)
        ax.annotate(text, (value, 1), xycoords=("data", "axes fraction"), xytext=(2, -3),
                    textcoords="offset points", ha="left", va="top", fontsize=7, color="#777777",
                    rotation=90)
    ax.margins(x=0.15, y=0.15)
    _place_labels(ax, pts, [r.name for r in shown])
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

def _bar_metrics(results: RunResults, suite: str, limit: int = 4) -> list[str]:
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


def gate_interval(results: RunResults, rec: Record, metric: str) -> tuple[float, float] | None:
    """The interval of the first verdict on ``metric`` that has one, in the metric's units."""
    base_value = metric_value(results.baseline, metric)
    for v in rec.verdicts:
        if v.metric == metric:
            iv = verdict_metric_interval(v, base_value, verdict_gate(v, results))
            if iv is not None:
                return iv
    return None


def suite_bars(results: RunResults) -> list[tuple[str, Figure]]:
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
                v = metric_value(r, metric) if r.status == "ok" else None
                if r.role == "baseline":
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
            limits = threshold_lines(results, metric)
            for value, _ in limits:
                ax.axhline(value, color="#555555", ls="--", lw=0.8, zorder=4)
            ax.set_xticks(list(xs))
            ax.set_xticklabels(names, rotation=35 if len(names) > 3 else 0,
                               ha="right" if len(names) > 3 else "center", fontsize=7)
            leaf = metric[len(suite) + 1:]
            arrow = "↓" if lower_is_better(metric, results) else "↑"  # None: "↑", for display only
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


# ---------------------------------------------------------------- serving under load

_SERVING = re.compile(r"^serving\.(?P<metric>[a-z0-9_]+?)_c(?P<c>[0-9]+)$")


def serving_sweep(rec: Record) -> dict[int, dict[str, float]]:
    """A record's serving-probe figures by concurrency: {C: {"ttft_ms_p50": v, ...}}."""
    out: dict[int, dict[str, float]] = {}
    for name in rec.metrics:
        m = _SERVING.match(name)
        v = metric_value(rec, name)
        if m is not None and v is not None:
            out.setdefault(int(m["c"]), {})[m["metric"]] = v
    return dict(sorted(out.items()))


def serving_workload(results: RunResults) -> str:
    """The serving probe's workload in words (prompt and output lengths, requests per level),
    from the first record's probe notes: said beside the latency figure."""
    for r in records(results):
        w = ((r.probe_notes or {}).get("serving") or {}).get("workload")
        if w:
            measured = w.get("prompt_tokens_measured") or {}
            got = (f" (measured {measured['min']}–{measured['max']})" if measured else "")
            return (f"prompt tokens {w.get('prompt_tokens')}{got}, {w.get('prompt_length_from')}; "
                    f"output tokens {w.get('output_tokens')} (EOS ignored); {w.get('requests_per_level')} requests "
                    f"per level, at most {w.get('max_seconds')} s; seed {w.get('seed')}")
    return ""


def serving_latency(results: RunResults) -> Figure | None:
    """p50 (solid) and p95 (dashed) TTFT and end-to-end latency against concurrency, a line per
    record that ran the serving probe; None when no record did."""
    sweeps = [(r, serving_sweep(r)) for r in records(results)]
    sweeps = [(r, s) for r, s in sweeps if s]
    if not sweeps:
        return None
    fig = _fig(10.0, 3.8)
    axes = fig.subplots(1, 2)
    colors = ["#1f4e79", "#c62828", "#2e7d32", "#e69f00", "#6a3d9a", "#17becf", "#8c564b", "#7f7f7f"]
    for ax, (key, title) in zip(axes, (("ttft_ms", "time to first token"), ("e2e_ms", "end-to-end latency")),
                                strict=True):
        for i, (r, sweep) in enumerate(sweeps):
            color = colors[i % len(colors)]
            for q, ls in (("p50", "-"), ("p95", "--")):
                pts = [(c, figs[f"{key}_{q}"]) for c, figs in sweep.items() if f"{key}_{q}" in figs]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker="o", ms=3.5, color=color,
                            lw=1.2, label=f"{label_of(r)} {q}")
        gated = {g.metric for g in gate_objects(results)
                 if (m := _SERVING.match(g.metric)) is not None and m["metric"].startswith(key + "_")}
        for value, text in [(v, f"{t} (at {metric.rsplit('_', 1)[1]})") for metric in sorted(gated)
                            for v, t in threshold_lines(results, metric)]:
            ax.axhline(value, color="#b0b0b0", ls=":", lw=0.8)
            ax.annotate(text, (1, value), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                        textcoords="offset points", ha="right", va="bottom", fontsize=7, color="#777777")
        levels = sorted({c for _, s in sweeps for c in s})
        if len(levels) > 1 and levels[-1] / levels[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(c) for c in levels])
        ax.set_xlabel("concurrency (requests in flight)", fontsize=9)
        ax.set_ylabel(f"{title} (ms, lower is better)", fontsize=9)
        ax.set_title(f"{title}: p50 solid, p95 dashed", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, lw=0.4, alpha=0.5)
        ax.legend(fontsize=6.5, loc="upper left", framealpha=0.8)
    return fig
