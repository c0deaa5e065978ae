"""The memory-fit planner against the GPU runs' measured VRAM (figures, not assertions).

For each probe run in a ``benchmarks/gpu/*.json`` that carries a memory figure, predict the
probe process's model memory with ``harness.planner.predict_probe_peak`` (device "cuda": weights,
the KV cache of the session and of the largest batch shape, runtime buffers, the CUDA context
estimate) from the run's probe parameters, and compare it with the process's peak VRAM per NVML.
The artifacts are this machine's copies of the same files (the F16 GGUF is byte-identical to
the device's; Q8_0/Q4_K_M are made from it by the same llama_model_quantize call; the BF16
checkpoint's tensor digest matches).

    python benchmarks/gpu/planner_check.py RUN_JSON NAME=ARTIFACT ... [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def check(runs: dict, artifacts: dict[str, str]) -> dict:
    from harness import planner

    out = {}
    for name, path in artifacts.items():
        r = runs[name]
        tp = r["probe_params"]["throughput"]
        lens = [p + tp["gen_tokens"] + 1 for p in tp["prompt_tokens"]]
        lat = r["probe_params"].get("latency") or {}
        n_ctx = max(lens + [lat.get("prompt_tokens", 0) + lat.get("gen_tokens", 0) + 1, 64])
        shapes = [[n, b] for n in lens for b in tp["batch_sizes"]]
        info = (r.get("notes") or {}).get("session_info") or {}
        p = planner.predict_probe_peak(path, r["runtime"]["name"], n_ctx=n_ctx, shapes=shapes, device="cuda",
                                       session_info=info or None)
        mem = r["figures"]["memory"]
        measured = mem["peak_vram_self_gib"]
        out[name] = {"artifact": str(path), "n_ctx": n_ctx, "shapes": shapes, "prediction": p,
                     "measured_peak_vram_self_gib": measured,
                     "torch_max_reserved_gib": mem.get("torch_max_reserved_gib"),
                     "error_pct": round(100 * (p["total_gib"] - measured) / measured, 1),
                     "residual_gib": round(measured - p["total_gib"], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_json")
    ap.add_argument("pairs", nargs="+", help="RUN_NAME=ARTIFACT_PATH")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu" / "planner_vs_measured.json"))
    args = ap.parse_args()
    runs = json.loads(Path(args.run_json).read_text())["runs"]
    artifacts = dict(p.split("=", 1) for p in args.pairs)
    result = check(runs, artifacts)
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    report[Path(args.run_json).name] = {"command": " ".join(["python", *sys.argv]), "runs": result}
    out.write_text(json.dumps(report, indent=1))
    for name, c in result.items():
        print(f"{name}: predicted {c['prediction']['total_gib']:.3f} GiB vs NVML {c['measured_peak_vram_self_gib']:.3f}"
              f" ({c['error_pct']:+.1f}%), {c['prediction']['workload']}")


if __name__ == "__main__":
    main()
