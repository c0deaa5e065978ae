"""summary.md of one run (for CI step summaries and PR comments), and the notes and tables
report.html shares with it. Reads the typed results (``harness.results``)."""

from __future__ import annotations

import re

from harness.results import Metric, Record, RunResults

#: the arrow beside a metric's name: which way is better, as its suite or probe declared it
#: (none for a metric without a declared direction)
ARROWS = {"lower": "↓", "higher": "↑"}


def _num(m: Metric | None, digits: int = 4) -> str:
    if m is None or m.value is None:
        return "—"
    s = f"{m.value:.{digits}g}"
    if m.stderr:
        s += f" ± {m.stderr:.2g}"
    return s


def metric_better(recs: list[Record], name: str) -> str | None:
    """The direction ("higher" | "lower") the records' metric ``name`` declares, or None."""
    for r in recs:
        m = r.metrics.get(name)
        if m is not None and m.better is not None:
            return m.better
    return None


def _named(name: str, better: str | None) -> str:
    return f"{name} {ARROWS[better]}" if better in ARROWS else name


def scoring_note(meta: dict) -> str:
    """Which tokens a window suite scored (perplexity, fidelity), from the suite's meta; '' for
    other suites. Said in every report because llama-perplexity scores only each window's
    second half, and the two figures differ (36.6 vs 29.7 on the smoke plan's windows)."""
    if not meta or meta.get("unit", "window") != "window" or "windows" not in meta:
        return ""
    which = {"second_half": "the second half of each window, as llama-perplexity scores",
             "all": "every token after the first of each window"}.get(meta.get("scored_tokens", "all"), "?")
    return f"{meta['windows']} windows of {meta.get('context_length')} tokens; scored: {which}."


def kv_cache_label(rec: Record) -> str:
    """The KV half of a candidate's label: " + KV q8_0" when the record's runtime keeps a KV
    cache other than its default (llama.cpp ``type_k``/``type_v``, vLLM ``kv_cache_dtype``,
    transformers ``kv_cache``), else "": "gguf Q4_K_M + KV q8_0" on llama-cpp."""
    params = (rec.runtime.params if rec.runtime is not None else None) or {}
    if params.get("type_k") or params.get("type_v"):
        k, v = params.get("type_k") or "f16", params.get("type_v") or "f16"
        if (k, v) == ("f16", "f16"):
            return ""
        return f" + KV {k}" if k == v else f" + KV K {k} / V {v}"
    value = params.get("kv_cache_dtype") or params.get("kv_cache")
    return f" + KV {value}" if isinstance(value, str) and value not in ("auto", "none") else ""


def unsandboxed_suites(results: RunResults) -> list[str]:
    """Suites whose model-written code ran outside the bwrap sandbox (``sandbox: guard-only``),
    from the suite meta or the per-item records; every report says so."""
    out: list[str] = []
    for r in results.records():
        for sid, entry in r.suites.items():
            marks = [str(entry.meta.get("sandbox", ""))]
            marks += [str(rec.get("sandbox", "")) for rec in entry.records if isinstance(rec, dict)]
            if any("UNSANDBOXED" in m for m in marks) and sid not in out:
                out.append(sid)
    return out


def unsandboxed_note(results: RunResults) -> str:
    suites = unsandboxed_suites(results)
    if not suites:
        return ""
    return (f"UNSANDBOXED: model-written code in suite {', '.join(suites)} ran under the in-process "
            "guard only (`sandbox: guard-only`), not in the bubblewrap sandbox.")


def summary_markdown(results: RunResults) -> str:
    recs = results.records()
    metric_names: list[str] = []
    for r in recs:
        for k in r.metrics:
            if k not in metric_names:
                metric_names.append(k)
    gated = [g["metric"] for g in results.policy.get("gates") or []]
    shown = [m for m in metric_names if m in gated] + [
        m for m in metric_names if m not in gated and m.split(".")[-1] in ("ppl", "tokens_per_s", "peak_rss_gib", "seconds")]
    lines = [f"# quantgate: {results.plan.get('name')}", "",
             f"Run `{results.run_id}` · policy `{results.policy.get('name', 'inline')}` · "
             f"exit code **{results.exit_code}**", "",
             *([f"**{note}**", ""] if (note := unsandboxed_note(results)) else []),
             "| candidate | method | runtime | verdict | "
             + " | ".join(_named(m, metric_better(recs, m)) for m in shown) + " | reason |",
             "|---|---|---|---|" + "---|" * len(shown) + "---|"]
    for r in recs:
        q = r.quantizer or {}
        method = q.get("method", "")
        params = q.get("params") or {}
        if params.get("type") or params.get("scheme"):
            method += f" {params.get('type') or params.get('scheme')}"
        manifest = r.artifact.manifest if r.artifact is not None else {}
        method += kv_cache_label(r)
        if "emulated" in (manifest.get("note") or ""):
            method += " (emulated: speed figures do not reflect FP4 hardware)"
        runtime = (r.runtime.name if r.runtime is not None else "") or ""
        verdict = r.verdict if r.role == "candidate" else f"baseline ({r.verdict})"
        if r.status != "ok":
            reason = f"{r.error.stage}: {r.error.message}" if r.error is not None else "failed"
        else:
            reason = "; ".join(v.reason for v in r.verdicts if v.verdict != "PASS") or "all gates pass"
        cells = [_num(r.metrics.get(m)) for m in shown]
        lines.append(f"| {r.name} | {method} | {runtime} | {verdict} | " + " | ".join(cells) +
                     f" | {reason.replace('|', '/')} |")
    notes = []
    for spec in results.plan.get("suites") or []:
        sid = spec.get("name") or spec.get("suite")
        meta = next((entry.meta for r in recs if (entry := r.suites.get(sid)) is not None and entry.meta), {})
        if note := scoring_note(meta):
            notes.append(f"- `{sid}`: {note}")
    if notes:
        lines += ["", "Window suites:", "", *notes]
    lines += ["", "## Approved list", ""]
    lines += [f"- {n}" for n in results.approved] or ["(no candidate passed every gate)"]
    lines += ["", "## Gates", ""]
    for r in results.candidates:
        for v in r.verdicts:
            lines.append(f"- **{r.name}** `{v.gate}`: {v.verdict} — {v.reason}")
    lines += probe_lines(recs) + serving_lines(recs) + planner_lines(recs) + offload_lines(recs)
    lines += statistics_lines(results)
    # every metric, one row each (suites and probes), candidates as columns
    lines += ["", "## All metrics", "", "| metric | " + " | ".join(r.name for r in recs) + " |",
              "|---|" + "---|" * len(recs)]
    for name in metric_names:
        lines.append(f"| {_named(name, metric_better(recs, name))} | "
                     + " | ".join(_num(r.metrics.get(name)) for r in recs) + " |")
    m = results.machine
    lines += ["", f"Machine: {m.get('cpu', '?')}, {m.get('cpus_usable', '?')} CPUs, {m.get('memory_gib', '?')} GiB; "
              f"wall time {results.wall_seconds} s.", ""]
    return "\n".join(lines)


def _fmt(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def _with_range(figs: dict, key: str) -> str:
    if figs.get(key) is None:
        return "—"
    s = _fmt(figs[key])
    if figs.get(f"{key}_min") is not None and figs.get(f"{key}_max") is not None:
        s += f" ({_fmt(figs[key + '_min'], 3)}–{_fmt(figs[key + '_max'], 3)})"
    elif figs.get(f"{key}_std") is not None:  # the bench probe: mean ± std, as llama-bench prints
        s += f" ± {_fmt(figs[key + '_std'], 2)}"
    return s


def probe_lines(recs: list[Record]) -> list[str]:
    """Speed and memory: one row per figure, candidates as columns (a plan's probes give many
    figures and few candidates), medians with min–max over the repetitions."""
    rows: list[tuple[str, str]] = []  # (probe, metric)
    keep = {"memory": ("peak_rss_gib", "model_rss_gib", "peak_vram_gib", "torch_max_reserved_gib"),
            "roofline": ("pct_of_peak", "achieved_gbps"), "size": ("gib",)}
    for r in recs:
        for probe, figs in r.probes.items():
            for k in figs:
                if k.endswith(("_min", "_max", "_std", "_mean")) or (probe, k) in rows or probe == "serving":
                    continue  # the serving probe has a table of its own (serving_lines)
                if probe in keep and k not in keep[probe]:
                    continue
                rows.append((probe, k))
    if not rows:
        return []
    out = ["", "## Speed and memory", "",
           "Medians over the probe's repetitions, (min–max) beside them; measured in a process of its "
           "own per candidate. tps = tokens/s; pP_bB = prompt tokens, batch; cC = concurrency. The bench "
           "probe's figures are llama-bench's: tokens/s, mean ± standard deviation; pp = prompt processing, "
           "tg = generation, @dD = after D tokens of context.", "",
           "| probe | figure | " + " | ".join(r.name for r in recs) + " |", "|---|---|" + "---|" * len(recs)]
    for probe, k in rows:
        out.append(f"| {probe} | {k} | " + " | ".join(_with_range(r.probes.get(probe) or {}, k)
                                                   for r in recs) + " |")
    return out


#: a serving-probe figure's level: ``ttft_ms_p95_c8`` -> ``c8``, ``req_s_r0.5`` -> ``r0.5``
_SERVING_LEVEL = re.compile(r"^[a-z0-9_]+?_(c[0-9]+|r[0-9.]+)$")
#: the serving table's columns: (figure at a level, header)
SERVING_COLUMNS = [("completed", "done"), ("errors", "errors"), ("ttft_ms_p50", "TTFT p50"),
                   ("ttft_ms_p95", "TTFT p95"), ("ttft_ms_p99", "TTFT p99"), ("itl_ms_p50", "ITL p50"),
                   ("itl_ms_p95", "ITL p95"), ("e2e_ms_p50", "e2e p50"), ("e2e_ms_p95", "e2e p95"),
                   ("e2e_ms_p99", "e2e p99"), ("output_tok_s", "out tok/s"), ("req_s", "req/s")]


def plain_number(v) -> str:
    """A figure without exponent: 14490, 56.5, 0.302."""
    return "—" if v is None else f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def serving_levels(figs: dict) -> list[str]:
    """The load levels of a record's serving figures, in the order measured: ["c1", "c8", "r2"]."""
    levels: list[str] = []
    for k in figs:
        m = _SERVING_LEVEL.match(k)
        if m is not None and m[1] not in levels:
            levels.append(m[1])
    return levels


def serving_lines(recs: list[Record]) -> list[str]:
    """The serving probe's sweep, one table per record that ran it: a row per load level (cN:
    N requests in flight; rR: R requests/s), latencies in ms."""
    out: list[str] = []
    for r in recs:
        figs = r.probes.get("serving") or {}
        levels = serving_levels(figs)
        notes = (r.probe_notes or {}).get("serving") or {}
        if not levels:
            if notes.get("skipped"):
                out += ["", f"- {r.name}: serving probe skipped: {notes['skipped']}"]
            continue
        w = notes.get("workload") or {}
        out += ["", f"### {r.name}", "",
                f"prompt tokens {w.get('prompt_tokens', '?')}, output tokens {w.get('output_tokens', '?')}, "
                f"{w.get('requests_per_level', '?')} requests per level"
                + (f", {w['arrivals']} arrivals" if w.get("arrivals") else "") + f"; {notes.get('endpoint', '')}", "",
                "| level | " + " | ".join(h for _, h in SERVING_COLUMNS) + " |",
                "|---|" + "---|" * len(SERVING_COLUMNS)]
        for level in levels:
            out.append(f"| {level} | " + " | ".join(plain_number(figs.get(f"{k}_{level}")) for k, _ in SERVING_COLUMNS)
                       + " |")
    if not out:
        return []
    return ["", "## Serving under load", "",
            "The serving probe: streaming /v1/completions against the candidate's server; cN = N requests "
            "in flight, rR = R requests/s; latencies in ms (TTFT: to the first token; ITL: between tokens; "
            "e2e: the whole request), percentiles of completed requests.", *out]


def planner_lines(recs: list[Record]) -> list[str]:
    """The memory-fit planner's prediction beside the measurement, with its error."""
    rows = [r for r in recs if isinstance(r.planner, dict)]
    if not rows:
        return []
    out = ["", "## Memory plan vs measured", "",
           "Predicted by `quantgate plan-memory`'s model: weights against the artifact's size; the "
           "probe process's model memory (weights as the runtime holds them + KV cache + buffers, for the "
           "workload the probes ran) against the memory probe's `model_rss_gib` (peak RSS less the RSS "
           "before loading; on a GPU, the process's peak VRAM). Error = (predicted − measured) / measured.", "",
           "| candidate | weights GiB | size GiB | error | probe predicted GiB | measured GiB | error | "
           "predicted total GiB (GPU, suites' context) | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.planner
        if p.get("error"):
            out.append(f"| {r.name} | — | — | — | — | — | — | — | {p['error']} |")
            continue
        size = r.value("size.gib")
        pp = p.get("probe_prediction") or {}
        pct = lambda v: "—" if v is None else f"{v:+.1f}%"  # noqa: E731
        note = "; ".join(x for x in (pp.get("weights_as"), pp.get("workload")) if x)
        out.append(f"| {r.name} | {_fmt(p.get('weights_gib'))} | {_fmt(size)} | {pct(p.get('weights_error_pct'))} | "
                   f"{_fmt(p.get('probe_predicted_gib'))} | {_fmt(p.get('probe_measured_gib'))} | "
                   f"{pct(p.get('probe_error_pct'))} | {_fmt(p.get('total_gib'))} | {note.replace('|', '/')} |")
    return out


def offload_line(r: Record) -> str | None:
    """Where a llama.cpp record's layers ran, from its session info (suites' ``load_info``, the
    probes' ``session_info``): "Q4_K_M with 20 of 30 layers on GPU (auto, budget 1.5 GiB)";
    None for a record with nothing on a GPU and no ``n_gpu_layers: auto``."""
    infos = [e.load_info for e in r.suites.values()] + [(r.probe_notes or {}).get("session_info") or {}]
    info = next((i for i in infos if "n_gpu_layers_resolved" in i), None)
    if info is None:
        return None
    auto = info.get("n_gpu_layers_requested") == "auto"
    if not auto and not info.get("n_gpu_layers_resolved"):
        return None
    label = ((r.quantizer or {}).get("params") or {}).get("type") or ("the baseline" if r.role == "baseline" else r.name)
    how = f"auto, budget {info.get('gpu_budget_gib'):g} GiB" if auto else f"n_gpu_layers {info.get('n_gpu_layers')}"
    if auto and not info.get("gpu_offload_supported", True):
        how += (f"; CPU-only llama.cpp build: the planner would put {info.get('planned_gpu_layers')} layers "
                "on a GPU")
    return f"- {r.name}: {label} with {info.get('gpu_layers')} of {info.get('n_layers')} layers on GPU ({how})"


def offload_lines(recs: list[Record]) -> list[str]:
    rows = [line for r in recs if (line := offload_line(r))]
    return ["", "## GPU offload (llama.cpp)", "", *rows] if rows else []


# ------------------------------------------------------------------ statistics for release decisions
def statistics_tables(results: RunResults) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, intro, headers, rows) of the release-statistics tables a run has: per-slice
    metrics, calibration overlap, the baseline's noise floor, the Holm-adjusted levels."""
    out = []
    rows = []
    for r in results.candidates:
        for sid, metrics in (r.slices or {}).items():
            for m, per in metrics.items():
                for lab, x in per.items():
                    pct = x.get("units") == "change_pct"
                    f = (lambda v: "—" if v is None else f"{v:+.2f}%") if pct else \
                        (lambda v: "—" if v is None else f"{100 * v:+.2f} pt")
                    rows.append([r.name, f"{sid}.{m}", str(lab), str(x.get("n")), _fmt(x.get("base")),
                                 _fmt(x.get("cand")), f(x.get("estimate")), f"[{f(x.get('lower'))}, {f(x.get('upper'))}]"])
    if rows:
        alpha = results.policy.get("alpha", 0.05)
        out.append(("Slices", f"Per slice (MMLU subject, JSON-format category, a custom suite's slice/language), paired "
                    f"item by item: drop = baseline - candidate (points), perplexity change in percent; "
                    f"[{100 * (1 - 2 * alpha):g}% interval].",
                    ["candidate", "metric", "slice", "n", "baseline", "candidate", "drop / change", "interval"], rows))
    rows = []
    for r in results.candidates:
        for sid, o in (r.calibration_overlap or {}).items():
            if not o.get("checked"):
                rows.append([r.name, sid, "—", "—", "—", f"not checked: {o.get('why')}"])
                continue
            rows.append([r.name, sid, str(o.get("calibration_source")),
                         f"{o['items_overlapping']}/{o['items']} ({100 * o['item_fraction']:.1f}%)",
                         f"{100 * o['calibration_fraction']:.2f}%", "OVERLAP" if o["items_overlapping"] else "none"])
    if rows:
        out.append(("Calibration overlap", "13-grams of normalized words shared between each candidate's calibration "
                    "text and each suite's items: items sharing at least one, and the share of the calibration's "
                    "13-grams found in the suite.",
                    ["candidate", "suite", "calibration", "items overlapping", "calibration 13-grams in suite", ""],
                    rows))
    nf = results.baseline.noise_floor
    if nf:
        rows = [[m, " / ".join(_fmt(v) for v in x.get("values") or []),
                 "—" if x.get("floor") is None else f"±{x['floor']:.4g}"]
                for m, x in (nf.get("metrics") or {}).items()]
        out.append(("Noise floor", f"The baseline scored {nf.get('repeats')} times (baseline.repeats): a gate whose "
                    "observed change lies within its own run-to-run spread cannot FAIL. A bit-deterministic runtime "
                    "(llama.cpp on a CPU) gives 0.", ["metric", "values per repeat", "floor"], rows))
    rows = [[r.name, v.gate, v.verdict, f"{v.adjusted_alpha:.4g}"]
            for r in results.candidates for v in r.verdicts if v.adjusted_alpha is not None]
    if rows:
        out.append(("Multiple testing", f"Holm-Bonferroni over each candidate's paired gates (policy "
                    f"multiple_testing: holm, alpha {results.policy.get('alpha', 0.05)}): a FAIL stands only at its "
                    "adjusted level.", ["candidate", "gate", "verdict", "adjusted alpha"], rows))
    return out


def statistics_lines(results: RunResults) -> list[str]:
    lines: list[str] = []
    for title, intro, headers, rows in statistics_tables(results):
        lines += ["", f"## {title}", "", intro, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return lines
