"""Quantizer figures: wall time, peak RSS, size, bits/weight and perplexity per method.

Runs configs/all-methods.yaml in a fresh QUANTGATE_HOME (so every artifact is made,
none reused) and writes reports/bench/quantizers.json plus a Markdown table.
Usage: python benchmarks/quantizers.py [PLAN] [--keep-home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan", nargs="?", default=str(ROOT / "configs" / "all-methods.yaml"))
    ap.add_argument("--home", help="QUANTGATE_HOME to use (default: a fresh temporary one)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "quantizers.json"))
    args = ap.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="quantgate-bench-")
    env = {**os.environ, "QUANTGATE_HOME": home}
    runs = Path(args.out).parent / "runs"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "run", args.plan, "--reports-dir", str(runs),
                           "--no-tracking"], env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    run_dir = max(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    res = json.loads((run_dir / "results.json").read_text())
    base_ppl = res["baseline"]["metrics"].get("wikitext2.ppl", {}).get("value")
    rows = []
    for c in res["candidates"]:
        man = (c.get("artifact") or {}).get("manifest") or {}
        ppl = c["metrics"].get("wikitext2.ppl", {}).get("value")
        rows.append({
            "candidate": c["name"],
            "method": c["quantizer"]["method"],
            "params": c["quantizer"]["params"],
            "calibration": c["quantizer"].get("calibration"),
            "runtime": (c.get("runtime") or {}).get("name"),
            "status": c["status"],
            "error": (c.get("error") or {}).get("message"),
            "quantize_wall_seconds": man.get("wall_seconds"),
            "quantize_peak_rss_gib": man.get("peak_rss_gib"),
            "size_gib": c["metrics"].get("size.gib", {}).get("value"),
            "bits_per_weight": man.get("bits_per_weight"),
            "ppl": ppl,
            "ppl_change_pct": (100 * (ppl / base_ppl - 1)) if ppl and base_ppl else None,
            "emulated": "emulated" in (man.get("note") or ""),
        })
    out = {"plan": args.plan, "run_id": res["run_id"], "machine": res["machine"], "baseline_ppl": base_ppl,
           "wall_seconds": round(wall, 1), "exit_code": proc.returncode, "candidates": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n| candidate | quantize s | peak RSS GiB | size GiB | bits/w | ppl | Δ% |\n|---|---|---|---|---|---|---|")
    for r in rows:
        f = lambda v, d=2: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
        name = r["candidate"] + (" (emulated)" if r["emulated"] else "") + ("" if r["status"] == "ok" else " ERROR")
        print(f"| {name} | {f(r['quantize_wall_seconds'], 1)} | {f(r['quantize_peak_rss_gib'])} | "
              f"{f(r['size_gib'], 3)} | {f(r['bits_per_weight'])} | {f(r['ppl'])} | {f(r['ppl_change_pct'], 1)} |")
    print(f"\nbaseline ppl {base_ppl:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
