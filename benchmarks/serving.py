"""Serving-probe figures on this machine (figures, not assertions): runs
benchmarks/plans/serving.yaml through ``quantgate run`` (llama-cpp-python's server, launched by
runtime openai-server), then writes benchmarks/cpu/serving.json (every serving figure, the
probe's workload and levels notes, the load average) and prints the latency-vs-concurrency
table as markdown.

Usage: python benchmarks/serving.py [--plan benchmarks/plans/serving.yaml] [--results RUN_DIR]
  --results: read an earlier run's results.json instead of running the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "cpu" / "serving.json"
COLUMNS = [("completed", "done"), ("errors", "errors"), ("ttft_ms_p50", "TTFT p50"), ("ttft_ms_p95", "TTFT p95"),
           ("ttft_ms_p99", "TTFT p99"), ("itl_ms_p50", "ITL p50"), ("itl_ms_p95", "ITL p95"),
           ("e2e_ms_p50", "e2e p50"), ("e2e_ms_p95", "e2e p95"), ("e2e_ms_p99", "e2e p99"),
           ("output_tok_s", "out tok/s"), ("req_s", "req/s")]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", default=str(ROOT / "benchmarks" / "plans" / "serving.yaml"))
    ap.add_argument("--results", help="an earlier run's folder (holding results.json)")
    args = ap.parse_args()
    if args.results:
        run_dir = Path(args.results)
    else:
        reports = ROOT / "reports" / "bench" / "serving"
        res = subprocess.run([sys.executable, "-m", "harness", "run", args.plan, "--no-tracking",
                              "--reports-dir", str(reports)], cwd=ROOT, env=os.environ, text=True,
                             capture_output=True)
        print(res.stdout[-3000:], res.stderr[-2000:], f"exit code {res.returncode}", sep="\n")
        run_dir = max(reports.iterdir(), key=lambda p: p.stat().st_mtime)
    data = json.loads((run_dir / "results.json").read_text())
    out = {"plan": data["plan"]["probes"]["serving"], "run": data["run_id"], "machine": data.get("machine"),
           "records": {}}
    lines = []
    for rec in [data["baseline"], *data["candidates"]]:
        figs = (rec.get("probes") or {}).get("serving") or {}
        notes = (rec.get("probe_notes") or {}).get("serving") or {}
        levels = {k: {kk: v for kk, v in lv.items() if kk != "requests"} for k, lv in (notes.get("levels") or {}).items()}
        out["records"][rec["name"]] = {
            "status": rec["status"], "runtime": rec.get("runtime"), "figures": figs, "levels": levels,
            "workload": notes.get("workload"), "skipped": notes.get("skipped"),
            "loadavg_before": notes.get("loadavg_before"), "loadavg_after": notes.get("loadavg_after"),
            "server": ((rec.get("probe_notes") or {}).get("session_info") or {}).get("server"),
            "verdicts": [(v["gate"], v["verdict"], v.get("value")) for v in rec.get("verdicts") or []]}
        labels = list(levels)
        if not labels:
            lines.append(f"\n{rec['name']}: {notes.get('skipped') or rec.get('error') or 'no serving figures'}")
            continue
        lines += [f"\n{rec['name']} (load average before {notes.get('loadavg_before')}, after "
                  f"{notes.get('loadavg_after')})", "",
                  "| level | " + " | ".join(h for _, h in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for lab in labels:
            cells = [figs.get(f"{k}_{lab}") for k, _ in COLUMNS]
            lines.append(f"| {lab} | " + " | ".join("—" if c is None else f"{c:.0f}" if abs(c) >= 100 else f"{c:.3g}" for c in cells) + " |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
