"""report.html: one self-contained page for release sign-off.

Everything is inline: the CSS, and the figures as inline SVG (matplotlib, text drawn as
paths, so no font is fetched). No script, no external reference. Every piece of text from the
results is escaped. The page degrades instead of failing: missing metrics print as "—", a
figure that cannot be drawn is replaced by a note saying why.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from harness.report import figures as F
from harness.report.markdown import ARROWS, kv_cache_label, scoring_note, unsandboxed_note
from harness.results import Record, RunResults, Verdict

VERDICT_CSS = {"PASS": "pass", "FAIL": "fail", "INCONCLUSIVE": "inconclusive", "ERROR": "error"}
EXIT_MEANING = {0: "every candidate passed every gate",
                1: "a gate failed (or was inconclusive, when the policy blocks on that)",
                2: "an error: a candidate, the baseline or MLflow logging failed, or bad input"}
FIDELITY_COLUMNS = [("kl_mean", "KL mean"), ("kl_estimator_se", "KL estimator SE"), ("kl_median", "KL median"),
                    ("kl_p90", "KL p90"), ("kl_p99", "KL p99"), ("kl_max", "KL max"),
                    ("same_top_rate", "same top-1"), ("dp_mean", "Δp mean"), ("dp_rms", "Δp RMS"),
                    ("dp_p05", "Δp p05"), ("dp_p95", "Δp p95"), ("ref_tail_mass_mean", "ref tail mass")]
_STATS_FIELDS = ("estimate", "lower", "upper", "n", "test", "p_value", "needed_n")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 margin:0 auto;max-width:1200px;padding:1.2em 1.6em;color:#1b1b1b;line-height:1.4;font-size:14px}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd;
 padding-bottom:.2em}h3{font-size:1.05em;margin:1.1em 0 .4em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}
th,td{border:1px solid #d5d5d5;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}tbody tr:nth-child(even){background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto}
.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;font-weight:700;font-size:12px;
 color:#fff;white-space:nowrap}
.pass{background:#2e7d32}.fail{background:#c62828}.inconclusive{background:#e69f00;color:#1b1b1b}
.error{background:#7f7f7f}.base{background:#1f4e79}
.gate{margin:.1em 0}.gate .g{font-weight:600}.ev{color:#555;font-size:12px}
.small{color:#555;font-size:12px}.warn{color:#8a4b00;background:#fff4e0;padding:.3em .6em}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.6em 0}
dl.meta dt{font-weight:600;color:#444}dl.meta dd{margin:0}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:.7em;overflow-x:auto;font-size:12px;
 white-space:pre-wrap;word-break:break-word}
figure{margin:.6em 0 1.2em}figure svg{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:12px}
.figs{display:flex;flex-wrap:wrap;gap:1em}
code{font-size:12px;background:#f3f4f6;padding:0 .2em;border-radius:3px}
@media print{body{max-width:none}.scroll{overflow:visible}}
"""


# ---------------------------------------------------------------- small formatters

def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fnum(x: Any, digits: int = 4) -> str:
    if x is None or isinstance(x, bool):
        return "—" if x is None else str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return esc(x)
    if not math.isfinite(v):
        return "—"
    if v == int(v) and abs(v) >= 1000:
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def badge(verdict: str | None, baseline: bool = False) -> str:
    v = verdict or "—"
    cls = "base" if baseline else VERDICT_CSS.get(v, "error")
    return f'<span class="badge {cls}">{esc(v)}</span>'


def compact(d: Any) -> str:
    """params as ``k=v, k=v`` (nested values as JSON)."""
    if not d:
        return ""
    if not isinstance(d, dict):
        return str(d)
    parts = []
    for k, v in d.items():
        if v is None:
            continue
        parts.append(f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v}")
    return ", ".join(parts)


def _tag(name: str, body: str, cls: str | None = None) -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<{name}{c}>{body}</{name}>"


def table(headers: list[str], rows: list[list[str]], num_cols: set[int] | None = None,
          cls: str | None = None) -> str:
    """headers/rows are HTML already (escaped by the caller)."""
    num_cols = num_cols or set()
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in num_cols else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    c = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def kv_table(d: dict) -> str:
    rows = [[esc(k), "—" if v is None else esc(json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)]
            for k, v in d.items()]
    return table(["key", "value"], rows)


# ---------------------------------------------------------------- figures as inline SVG

def figure_svg(fig, label: str) -> str:
    """A matplotlib figure as an inline <svg> element: no XML prolog, DOCTYPE, metadata or
    namespace URLs (the HTML parser puts <svg> in its namespace itself)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)
    return svg.replace("<svg", f'<svg role="img" aria-label="{esc(label)}"', 1)


def _figure_block(make, label: str, caption: str = "") -> str:
    try:
        fig = make()
        svg = figure_svg(fig, label)
    except Exception as exc:  # a plot never costs the report
        return f'<p class="warn">figure "{esc(label)}" could not be drawn: {esc(type(exc).__name__)}: {esc(exc)}</p>'
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure class="plot">{svg}{cap}</figure>'


# ---------------------------------------------------------------- sections

def _manifest(rec: Record) -> dict:
    return rec.artifact.manifest if rec.artifact is not None else {}


def _method(rec: Record) -> str:
    q = rec.quantizer or {}
    method = q.get("method") or ("baseline" if rec.role == "baseline" else "")
    out = f"<b>{esc(method)}</b>" + (f" <b>{esc(kv)}</b>" if (kv := kv_cache_label(rec).strip()) else "")
    if q.get("model"):
        out += f" <span class=small>{esc(q['model'])}</span>"
    if q.get("params"):
        out += f"<br><span class=small>{esc(compact(q['params']))}</span>"
    cal = q.get("calibration")
    if cal:
        out += f"<br><span class=small>calibration: {esc(compact(cal))}</span>"
    manifest = _manifest(rec)
    if "emulated" in str(manifest.get("note") or ""):
        out += "<br><span class=small>emulated: speed figures do not reflect FP4 hardware</span>"
    return out


def _runtime(rec: Record) -> str:
    rt = rec.runtime
    out = f"<b>{esc((rt.name if rt is not None else None) or '—')}</b>"
    if rt is not None and rt.params:
        out += f"<br><span class=small>{esc(compact(rt.params))}</span>"
    return out


def _interval_text(v: Verdict) -> str:
    lo, hi = v.lower, v.upper
    return f"[{fnum(lo)}, {fnum(hi)}]" if lo is not None or hi is not None else ""


def _evidence(v: Verdict) -> str:
    """What a paired verdict adds to its sentence: the test, sample, p-value, discordant pairs
    (and the interval, when the sentence does not give one). Point verdicts add nothing: their
    sentence has the value, the baseline, the change and the limit."""
    if not any(getattr(v, k) is not None for k in _STATS_FIELDS) or v.lower is None and v.test in (None, "measured value"):
        return ""
    bits = []
    reason = str(v.reason or v.text or "")
    iv = _interval_text(v)
    if iv and "[" not in reason:
        alpha = v.alpha
        level = f"{100 * (1 - 2 * float(alpha)):g}% " if isinstance(alpha, int | float) else ""
        bits.append(f"estimate {fnum(v.estimate)}, {level}interval {iv}")
    if v.test:
        bits.append(str(v.test))
    if v.n is not None:
        bits.append(f"n={fnum(v.n)}")
    if v.p_value is not None:
        bits.append(f"p={fnum(v.p_value, 3)}")
    disc = v.discordant
    if isinstance(disc, dict) and disc:
        bits.append("discordant " + compact(disc))
    if v.needed_n is not None and "settle" not in reason:
        bits.append(f"≈{fnum(v.needed_n)} paired items would settle it")
    return esc(" · ".join(bits))


def _gates_cell(rec: Record) -> str:
    if rec.status != "ok":
        err = rec.error
        return (f'<div class="gate">{badge("ERROR")} {esc((err.stage if err else None) or "?")}: '
                f"{esc((err.message if err else None) or 'failed')}</div>")
    vs = rec.verdicts
    if not vs:
        return '<span class="small">no gate</span>'
    out = []
    for v in vs:
        reason = v.reason or v.text or ""
        ev = _evidence(v)
        out.append(f'<div class="gate">{badge(v.verdict)} <span class="g">{esc(v.gate)}</span>'
                   f' <span class="small">({esc(v.kind or "")} on <code>{esc(v.metric)}</code>)</span>'
                   f": {esc(reason)}" + (f'<div class="ev">{ev}</div>' if ev else "") + "</div>")
    return "".join(out)


def _header(results: RunResults) -> str:
    plan = results.plan
    policy = results.policy
    code = results.exit_code
    approved = results.approved
    cands = results.candidates
    counts: dict[str, int] = {}
    for c in cands:
        counts[F.verdict_of(c)] = counts.get(F.verdict_of(c), 0) + 1
    tally = ", ".join(f"{n} {k}" for k, n in counts.items())
    tracking = results.tracking or {}
    if tracking.get("error"):
        track = f"failed: {tracking['error']}"
    elif tracking.get("uri"):
        track = (f"{tracking.get('uri')} · experiment {tracking.get('experiment')} · "
                 f"parent run {tracking.get('parent_run_id')}")
    else:
        track = "off"
    rows = [
        ("run id", esc(results.run_id)),
        ("plan", f"{esc(plan.get('name'))} <span class=small>({esc(results.plan_file or 'inline')})</span>"),
        ("started", f"{esc(results.started)} → {esc(results.finished)} "
                    f"<span class=small>({fnum(results.wall_seconds)} s)</span>"),
        ("exit code", f"<b>{esc(code)}</b> <span class=small>{esc(EXIT_MEANING.get(code, ''))}</span>"),
        ("policy", f"{esc(policy.get('name') or 'inline')} <span class=small>{esc(policy.get('description') or '')}"
                   f"{' · INCONCLUSIVE blocks' if policy.get('inconclusive_blocks') else ''}</span>"),
        ("candidates", f"{len(cands)}: {esc(tally)}" if cands else "none"),
        ("approved", ", ".join(f"<b>{esc(a)}</b>" for a in approved) if approved
         else "<b>none</b> <span class=small>(no candidate passed every gate)</span>"),
        ("quantgate", esc(results.quantgate_version)),
        ("MLflow", esc(track)),
    ]
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    desc = f'<p class="small">{esc(plan.get("description"))}</p>' if plan.get("description") else ""
    return f"<h1>quantgate: {esc(plan.get('name') or '?')}</h1>{desc}<dl class=meta>{dl}</dl>"


def _verdict_table(results: RunResults) -> str:
    rows = []
    for r in F.records(results):
        is_base = r.role == "baseline"
        name = f"<b>{esc(r.name)}</b>" + ("<br><span class=small>baseline</span>" if is_base else "")
        verdict = badge(F.verdict_of(r)) if not is_base else (
            badge("baseline", baseline=True) + (f'<br><span class="small">own gates</span> {badge(F.verdict_of(r))}'
                                                if r.verdicts or r.status != "ok" else ""))
        rows.append([name, _method(r), _runtime(r), verdict, _gates_cell(r)])
    return "<h2>Verdicts</h2>" + table(["candidate", "method / params", "runtime", "verdict",
                                       "gates: evidence"], rows, cls="verdicts")


def _fidelity_suites(results: RunResults) -> list[str]:
    names = F.suite_names(results)
    out = []
    for s in results.plan.get("suites") or []:
        if s.get("suite") == "fidelity":
            out.append(s.get("name") or s.get("suite"))
    for n in names:  # a fidelity suite the plan did not name (e.g. a hand-made results file)
        if n not in out and any(m == f"{n}.kl_mean" for m in F.metric_names(results)):
            out.append(n)
    return out


def _cell(results: RunResults, rec: Record, metric: str) -> str:
    if rec.status != "ok" and F.metric_value(rec, metric) is None:
        return '<span class="small">—</span>'
    v, se = F.metric_value(rec, metric), F.metric_stderr(rec, metric)
    s = fnum(v)
    if v is not None and se:
        s += f" ± {fnum(se, 2)}"
    for vd in rec.verdicts:
        if vd.metric == metric and (vd.lower is not None or vd.upper is not None):
            base = F.metric_value(results.baseline, metric)
            iv = F.verdict_metric_interval(vd, base, F.verdict_gate(vd, results))
            if iv is not None:
                s += f'<br><span class="ev">[{fnum(iv[0])}, {fnum(iv[1])}]</span>'
            else:
                s += (f'<br><span class="ev">{esc(vd.gate)} (gate units): {fnum(vd.estimate)} '
                      f"{_interval_text(vd)}</span>")
    return s


def _arrow(better: str | None) -> str:
    return f" {ARROWS[better]}" if better in ARROWS else ""


def _suite_tables(results: RunResults) -> str:
    suites = F.suite_names(results)
    fidelity = set(_fidelity_suites(results))
    all_metrics = F.metric_names(results)
    out = []
    for s in suites:
        if s in fidelity:
            continue
        ms = [m for m in all_metrics if F.suite_of(m, suites) == s]
        if not ms:
            continue
        # the arrow: the direction the suite declared; none for a metric that declares none (a count)
        headers = ["candidate", *(esc(m[len(s) + 1:]) + _arrow(F.metric_better(results, m)) for m in ms),
                   "seconds"]
        rows = []
        for r in F.records(results):
            srec = r.suites.get(s)
            rows.append([esc(F.label_of(r)), *(_cell(results, r, m) for m in ms),
                         fnum(srec.seconds if srec is not None else None)
                         + (" <span class=small>(reused)</span>" if srec is not None and srec.reused else "")])
        note = scoring_note(_suite_meta(results, s))
        out.append(f"<h3>{esc(s)}</h3>" + (f"<p class=small>{esc(note)}</p>" if note else "")
                   + table(headers, rows, num_cols=set(range(1, len(ms) + 2))))
    if not out:
        return "<h2>Suites</h2><p class=small>no suite metric was measured</p>"
    return ("<h2>Suites</h2><p class=small>value ± standard error; below it, where a gate computed one, "
            "the verdict's interval (in the metric's units when its gate can map them, else the gate's)."
            " ↓/↑: lower/higher is better, as the suite declares it.</p>" + "".join(out))


def _fidelity_table(results: RunResults) -> str:
    out = []
    for s in _fidelity_suites(results):
        rows = []
        for r in F.records(results):
            if r.role == "baseline" and F.metric_value(r, f"{s}.kl_mean") is None:
                continue  # the reference itself: KL 0 by definition, usually not scored
            rows.append([esc(F.label_of(r)), *(_cell(results, r, f"{s}.{k}") for k, _ in FIDELITY_COLUMNS)])
        if rows:
            out.append(f"<h3>{esc(s)}</h3>" + _fidelity_method(results, s)
                       + table(["candidate", *(esc(lab) for _, lab in FIDELITY_COLUMNS)],
                                                    rows, num_cols=set(range(1, len(FIDELITY_COLUMNS) + 1))))
    if not out:
        return ""
    return ("<h2>Fidelity to the baseline</h2><p class=small>Token-level KL(baseline ‖ candidate) in nats "
            "over the whole vocabulary, on identical windows: the baseline's top-k tokens are summed exactly "
            "and the rest of the vocabulary is estimated without bias from tokens sampled from the baseline's "
            "tail (the candidate's probabilities are exact); KL estimator SE is the standard error that "
            "sampling adds to KL mean (KL mean's interval in the gates is the spread between windows, which "
            "contains it); percentiles are of per-position estimates. With no tail samples the figure is a "
            "lower bound, marked below. Same top-1: how often the argmax token agrees (llama-perplexity's "
            "“same top p”); Δp: the candidate's probability of the actual next token minus the "
            "baseline's.</p>" + "".join(out))


def _suite_meta(results: RunResults, suite_id: str) -> dict:
    for r in F.records(results):
        entry = r.suites.get(suite_id)
        if entry is not None and entry.meta:
            return entry.meta
    return {}


def _fidelity_method(results: RunResults, suite_id: str) -> str:
    """One line saying how this suite's KL was computed, from the suite's meta in a record."""
    meta = _suite_meta(results, suite_id)
    if not meta:
        return ""
    m = meta.get("tail_samples")
    how = (f"top-{meta.get('top_k')} exact + {m} sampled tail tokens per position (unbiased)" if m else
           f"top-{meta.get('top_k')} + tail: <b>a lower bound</b> on the KL, not the KL")
    return f"<p class=small>{how}; {esc(scoring_note(meta))}</p>"


PROBE_LABELS = {"size.gib": "size GiB", "size.bytes": "size bytes", "load.seconds": "load s",
                "decode.tokens_per_s": "decode tok/s", "decode.prefill_tokens_per_s": "prefill tok/s",
                "memory.peak_rss_gib": "peak RSS GiB"}
_PROBE_ORDER = ["size", "load", "decode", "memory"]


def _probe_table(results: RunResults) -> str:
    recs = F.records(results)
    flat: list[dict[str, Any]] = []
    cols: list[str] = []
    for r in recs:
        row: dict[str, Any] = {}
        for probe, vals in r.probes.items():
            if probe == "serving":  # its own section (_serving_block): figures by load level
                continue
            for k, v in vals.items():
                row[f"{probe}.{k}" if k else probe] = v
        flat.append(row)
        cols += [c for c in row if c not in cols]
    cols.sort(key=lambda c: _PROBE_ORDER.index(c.split(".")[0]) if c.split(".")[0] in _PROBE_ORDER else 99)
    # x_min / x_max beside x print as one column: "x (min–max)"
    ranged = {c for c in cols if f"{c}_min" in cols and f"{c}_max" in cols}
    cols = [c for c in cols if not any(c in (f"{b}_min", f"{b}_max") for b in ranged)]
    # std/mean stay in results.json and MLflow; the table shows median (min–max)
    cols = [c for c in cols if not c.endswith(("_std", "_mean"))]
    extra = [("bits/weight", "bits_per_weight"), ("quantize s", "wall_seconds"),
             ("quantize peak RSS GiB", "peak_rss_gib")]
    extra = [(lab, key) for lab, key in extra if any(_manifest(r).get(key) is not None for r in recs)]
    if not cols and not extra:
        return ""
    rows = []
    for r, vals in zip(recs, flat, strict=True):
        row = [esc(F.label_of(r))]
        for c in cols:
            cell = fnum(vals.get(c))
            if c in ranged and vals.get(f"{c}_min") is not None:
                cell += f' <span class="small">({fnum(vals.get(f"{c}_min"))}–{fnum(vals.get(f"{c}_max"))})</span>'
            row.append(cell)
        manifest = _manifest(r)
        row += [fnum(manifest.get(key)) for _, key in extra]
        rows.append(row)
    headers = ["candidate", *(esc(PROBE_LABELS.get(c, c.replace(".", " ").replace("_", " ")))
                              + (" <span class=small>(min–max)</span>" if c in ranged else "") for c in cols),
               *(esc(lab) for lab, _ in extra)]
    return ("<h2>Probes</h2><p class=small>size, load time, speed (tps: tokens/s; pP_bB: prompt tokens, batch; "
            "cC: concurrency; medians with min–max), latency and peak memory as measured on this machine, in a "
            "process of its own per candidate; quantize figures from the artifact manifest (a reused artifact keeps "
            "its first build's).</p>"
            + table(headers, rows, num_cols=set(range(1, len(headers)))))


def _serving_block(results: RunResults) -> str:
    """The serving probe's sweep (a table per record) and latency-vs-concurrency figure, when a
    record ran it."""
    if not any(r.probes.get("serving") for r in F.records(results)):
        return ""
    from harness.report.markdown import SERVING_COLUMNS, plain_number, serving_levels

    work = F.serving_workload(results)
    tables = []
    for r in F.records(results):
        figs = r.probes.get("serving") or {}
        rows = [[esc(lv), *(plain_number(figs.get(f"{k}_{lv}")) for k, _ in SERVING_COLUMNS)]
                for lv in serving_levels(figs)]
        if rows:
            tables.append(f"<h3>{esc(F.label_of(r))}</h3>" + table(
                ["level", *(esc(h) for _, h in SERVING_COLUMNS)], rows, num_cols=set(range(1, len(SERVING_COLUMNS) + 1))))
    return ("<h2>Serving under load</h2><p class=small>cN: N requests in flight; rR: R requests/s; latencies in ms "
            "(TTFT to the first token, ITL between tokens, e2e the whole request), percentiles of completed "
            "requests.</p>" + "".join(tables) + (_figure_block(
                lambda: F.serving_latency(results), "latency vs concurrency",
                "serving probe: TTFT and end-to-end latency (p50 solid, p95 dashed) against requests in flight, "
                "streaming /v1/completions" + (f"; {work}" if work else "") + "; dotted lines: gate limits.")
                if any(F.serving_sweep(r) for r in F.records(results)) else ""))


def _planner_table(results: RunResults) -> str:
    from harness.report.markdown import planner_lines

    lines = planner_lines(F.records(results))
    if not lines:
        return ""
    intro, head, rows = lines[3], lines[5], [ln for ln in lines[7:] if ln.startswith("|")]
    cells = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    headers = [esc(h) for h in cells(head)]
    body = [[esc(c) for c in cells(ln)] for ln in rows]
    return ("<h2>Memory plan vs measured</h2><p class=small>" + esc(intro).replace("`", "") + "</p>"
            + table(headers, body, num_cols=set(range(1, len(headers) - 1))))


def _statistics_tables(results: RunResults) -> str:
    from harness.report.markdown import statistics_tables

    return "".join(f"<h2>{esc(title)}</h2><p class=small>{esc(intro)}</p>"
                   + table([esc(h) for h in headers], [[esc(c) for c in row] for row in rows])
                   for title, intro, headers, rows in statistics_tables(results))


def _errors(results: RunResults) -> str:
    rows = []
    for r in F.records(results):
        if r.status == "ok":
            continue
        e = r.error
        log = e.log if e is not None else None
        rows.append([esc(F.label_of(r)), esc(e.stage if e is not None else None),
                     f"<pre>{esc(e.message if e is not None else None)}</pre>",
                     f"<code>{esc(log)}</code>" if log else "—"])
    if not rows:
        return ""
    return "<h2>Errors</h2>" + table(["candidate", "stage", "message", "log"], rows)


def _plan(results: RunResults) -> str:
    plan = results.plan
    try:
        import yaml

        text = yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=100)
    except Exception:
        text = json.dumps(plan, indent=2, default=str)
    return f"<h2>Plan</h2><pre>{esc(text)}</pre>"


def _machine(results: RunResults) -> str:
    m = dict(results.machine)
    packages = m.pop("packages", None) or {}
    distributions = m.pop("distributions", None) or {}  # every installed one: results.json, release bundles
    out = ["<h2>Machine and versions</h2>"]
    if m:
        out.append(kv_table(m))
    if packages:
        out.append("<h3>packages</h3>" + table(["package", "version"],
                                               [[esc(k), esc(v)] for k, v in packages.items()]))
    if distributions:
        out.append(f"<p class=small>{len(distributions)} distributions installed in the run's interpreter "
                   "(results.json: <code>machine.distributions</code>)</p>")
    env = results.environment
    if env:
        out.append("<h3>environment</h3>" + kv_table(env))
    rows = []
    for r in F.records(results):
        rt = r.runtime
        art = r.artifact
        man = _manifest(r)
        qv = man.get("versions") or (man.get("key_inputs") or {}).get("versions") or {}
        art_key = art.key if art is not None else None
        rows.append([esc(F.label_of(r)),
                     esc(f"{(rt.name if rt is not None else None) or '—'} "
                         + compact(rt.versions if rt is not None else None)),
                     f"<code>{esc(art_key or '—')}</code>"
                     + (f"<br><span class=small>manifest key {esc(man.get('key'))}</span>"
                        if man.get("key") and man.get("key") != art_key else ""),
                     esc((art.format if art is not None else None) or man.get("format") or "—"),
                     esc(compact(qv)) or "—",
                     esc(man.get("created") or "—")
                     + (" <span class=small>(reused)</span>" if art is not None and art.reused else ""),
                     f"<code>{esc(art.path)}</code>" if art is not None and art.path else "—"])
    if rows:
        out.append("<h3>records</h3>" + table(["candidate", "runtime versions", "artifact key", "format",
                                               "built with", "created", "path"], rows))
    return "".join(out)


# ---------------------------------------------------------------- the page

def render_html(results: RunResults) -> str:
    plan = results.plan
    title = f"quantgate: {plan.get('name') or '?'} · {results.run_id or ''}"
    parts = [_header(results), _verdict_table(results)]
    if note := unsandboxed_note(results):
        parts.insert(1, f'<p class="warn"><b>{esc(note)}</b></p>')
    q = F.default_quality_metric(results)
    parts.append("<h2>Quality vs size</h2>")
    parts.append(_figure_block(lambda: F.pareto(results), "Pareto plot",
                               f"{q or 'quality'} against artifact size; the grey staircase is the Pareto "
                               "front (no other record is both smaller and better); dashed lines: gate limits."))
    parts.append(_suite_tables(results))
    try:
        bars = F.suite_bars(results)
    except Exception as exc:
        bars = []
        parts.append(f'<p class="warn">suite figures could not be drawn: {esc(type(exc).__name__)}: {esc(exc)}</p>')
    if bars:
        parts.append('<div class="figs">' + "".join(
            _figure_block(lambda f=fig: f, f"{name} bars",
                          f"{name}: thin error bars ± one standard error; thick grey segment beside a bar: "
                          "the gate's paired interval, where the verdict has one")
            for name, fig in bars) + "</div>")
    parts += [_fidelity_table(results), _probe_table(results), _serving_block(results), _planner_table(results),
              _statistics_tables(results), _errors(results), _plan(results),
              _machine(results)]
    body = "\n".join(p for p in parts if p)
    upgraded = f" (read from {results.upgraded_from})" if results.upgraded_from else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<p class=small>schema {esc(results.schema_)}{esc(upgraded)} · written by quantgate "
            f"{esc(results.quantgate_version)}</p>\n</body></html>\n")


def write_html(results: RunResults, run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(render_html(results), encoding="utf-8")
    tmp.replace(out)
    return out
