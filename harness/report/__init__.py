"""Reports of one run: summary.md (for CI step summaries and PR comments) and results.json."""

from __future__ import annotations

from pathlib import Path

from harness.store import write_json_atomic


def _num(m: dict | None, digits: int = 4) -> str:
    if not m or m.get("value") is None:
        return "—"
    v = m["value"]
    s = f"{v:.{digits}g}"
    if m.get("stderr"):
        s += f" ± {m['stderr']:.2g}"
    return s


def summary_markdown(results: dict) -> str:
    recs = [results["baseline"], *results["candidates"]]
    metric_names: list[str] = []
    for r in recs:
        for k in r["metrics"]:
            if k not in metric_names:
                metric_names.append(k)
    gated = [g["metric"] for g in results["policy"]["gates"]]
    shown = [m for m in metric_names if m in gated] + [
        m for m in metric_names if m not in gated and m.split(".")[-1] in ("ppl", "tokens_per_s", "peak_rss_gib", "seconds")]
    lines = [f"# quantgate: {results['plan']['name']}", "",
             f"Run `{results['run_id']}` · policy `{results['policy'].get('name', 'inline')}` · "
             f"exit code **{results['exit_code']}**", "",
             "| candidate | method | runtime | verdict | " + " | ".join(shown) + " | reason |",
             "|---|---|---|---|" + "---|" * len(shown) + "---|"]
    for r in recs:
        q = r.get("quantizer") or {}
        method = q.get("method", "")
        params = q.get("params") or {}
        if params.get("type") or params.get("scheme"):
            method += f" {params.get('type') or params.get('scheme')}"
        manifest = (r.get("artifact") or {}).get("manifest") or {}
        if "emulated" in (manifest.get("note") or ""):
            method += " (emulated: speed figures do not reflect FP4 hardware)"
        runtime = (r.get("runtime") or {}).get("name") or ""
        verdict = r["verdict"] if r["role"] == "candidate" else f"baseline ({r['verdict']})"
        if r["status"] != "ok":
            reason = f"{r['error']['stage']}: {r['error']['message']}"
        else:
            reason = "; ".join(v["reason"] for v in r["verdicts"] if v["verdict"] != "PASS") or "all gates pass"
        cells = [_num(r["metrics"].get(m)) for m in shown]
        lines.append(f"| {r['name']} | {method} | {runtime} | {verdict} | " + " | ".join(cells) +
                     f" | {reason.replace('|', '/')} |")
    lines += ["", "## Approved list", ""]
    lines += [f"- {n}" for n in results["approved"]] or ["(no candidate passed every gate)"]
    lines += ["", "## Gates", ""]
    for r in results["candidates"]:
        for v in r["verdicts"]:
            lines.append(f"- **{r['name']}** `{v['gate']}`: {v['verdict']} — {v['reason']}")
    # every metric, one row each (suites and probes), candidates as columns
    lines += ["", "## All metrics", "", "| metric | " + " | ".join(r["name"] for r in recs) + " |",
              "|---|" + "---|" * len(recs)]
    for name in metric_names:
        lines.append(f"| {name} | " + " | ".join(_num(r["metrics"].get(name)) for r in recs) + " |")
    m = results["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cpus_usable']} CPUs, {m['memory_gib']} GiB; "
              f"wall time {results['wall_seconds']} s.", ""]
    return "\n".join(lines)


def write_reports(results: dict, run_dir: Path) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = run_dir / "summary.md"
    summary.write_text(summary_markdown(results))
    out = run_dir / "results.json"
    write_json_atomic(out, results)
    paths: dict = {"summary": summary, "results": out}
    try:  # report.html (figures) last: a plot that fails must never cost the results above
        from harness.report.html import write_html

        paths["html"] = write_html(results, run_dir)
    except Exception as exc:
        paths["html_error"] = f"{type(exc).__name__}: {exc}"
    return paths
