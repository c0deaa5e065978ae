"""quantgate against llama.cpp's own tools on the same GGUF files and the same tokens (figures,
not assertions): writes reports/bench/crosscheck.json (commit it as benchmarks/cpu/crosscheck.json).

1. llama-perplexity and llama-bench are built from the llama.cpp tree vendored in the
   llama-cpp-python sdist that quantgate's runtime is built from (benchmarks/llama_tools.py;
   ~8 minutes on 2 cores the first time, cached in $QUANTGATE_HOME/tools).
2. ``quantgate run`` on the smoke plan's model and windows (F16 baseline; Q8_0, Q4_K_M, Q2_K;
   WikiText-2, 16 × 512 tokens, LF newlines) with perplexity scored on every token and on the
   second half of each window (as llama-perplexity scores), the fidelity suite (defaults:
   top_k 32, 32 sampled tail tokens, second half).
3. llama-perplexity on the same files and text: the F16 baseline writes its log-probabilities
   (``--kl-divergence-base``, 16 bits per entry), each candidate is compared with
   ``--kl-divergence``; the tokens in that file are checked against quantgate's windows.
4. The exact full-vocabulary KL through quantgate's own llama.cpp sessions on the same
   positions, to separate the estimator's error from the runtimes'.
5. Speed: quantgate's ``bench`` probe (spawned probe worker, as in a run) and llama-bench with the
   same threads, flash attention (auto, both sides) and tests, alternating per model.

Usage: python benchmarks/crosscheck.py [--threads 2] [--bench-threads 1] [--rounds 2] [--skip-bench] [--out reports/bench/crosscheck.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "reports" / "bench" / "crosscheck"
CANDIDATES = ("Q8_0", "Q4_K_M", "Q2_K")
WINDOW = {"dataset": "wikitext2", "context_length": 512, "max_tokens": 8192, "newline": "lf"}
BENCH = {"n_prompt": [512], "n_gen": [128], "n_depth": [0, 512], "repetitions": 5, "warmup": 1}


def plan(threads: int) -> dict:
    rt = {"name": "llama-cpp", "params": {"n_threads": threads, "flash_attn": "auto"}}
    return {
        "name": "crosscheck",
        "description": "quantgate vs llama-perplexity / llama-bench on the smoke plan's model and windows",
        "baseline": {"name": "f16", "model": "embedded:smollm2-135m", "runtime": rt},
        "candidates": [{"name": t.lower(), "quantizer": {"method": "gguf", "params": {"type": t}}, "runtime": rt}
                       for t in CANDIDATES],
        "suites": [
            {"suite": "perplexity", "name": "ppl_all", "params": dict(WINDOW)},
            {"suite": "perplexity", "name": "ppl_half", "params": {**WINDOW, "scored_tokens": "second_half"}},
            {"suite": "fidelity", "name": "fidelity", "params": {**WINDOW, "scored_tokens": "second_half"}},
        ],
        "probes": {"size": {}},  # the bench probe runs beside llama-bench (compare_speed)
        "gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "ppl_half.ppl", "max_pct": 10}],
        "tracking": {"enabled": False},
    }


def run(cmd: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(f"$ {' '.join(cmd)}\n# rc {proc.returncode}, {time.perf_counter() - t0:.1f} s\n"
                   + proc.stdout + proc.stderr)
    if proc.returncode not in ok:
        raise SystemExit(f"{cmd[0]} failed (rc {proc.returncode}); see {log}")
    return proc.stdout + proc.stderr


def _num(pattern: str, text: str, scale: float = 1.0) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) * scale if m else None


def parse_kld(text: str) -> dict:
    f = r"\s*:?\s*(-?[0-9.]+)"
    return {
        "ppl": _num(r"Mean PPL\(Q\)" + f, text), "ppl_base": _num(r"Mean PPL\(base\)" + f, text),
        "kl_mean": _num(r"Mean\s+KLD:\s*([0-9.]+)", text), "kl_mean_se": _num(r"Mean\s+KLD:\s*[0-9.]+\s*±\s*([0-9.]+)", text),
        "kl_max": _num(r"Maximum KLD:\s*([0-9.]+)", text), "kl_p99": _num(r"99\.0%\s+KLD:\s*([0-9.]+)", text),
        "kl_p90": _num(r"90\.0%\s+KLD:\s*([0-9.]+)", text), "kl_median": _num(r"Median\s+KLD:\s*([0-9.]+)", text),
        "same_top_rate": _num(r"Same top p:\s*([0-9.]+)", text, 0.01),
        "dp_mean": _num(r"Mean\s+Δp:\s*(-?[0-9.]+)", text, 0.01), "dp_rms": _num(r"RMS Δp\s*:\s*([0-9.]+)", text, 0.01),
    }


def kld_tokens(path: Path) -> tuple[int, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(8) != b"_logits_":
            raise SystemExit(f"{path}: not a llama-perplexity log-probability file")
        n_ctx, _n_vocab, n_chunk = np.frombuffer(f.read(12), dtype=np.int32)
        return int(n_ctx), np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype=np.int32).reshape(n_chunk, n_ctx)


def exact_kl(f16: Path, candidates: dict[str, Path], threads: int) -> dict:
    """Full-vocabulary KL(F16 ‖ candidate) through quantgate's llama.cpp sessions on the second
    half of each window (the positions llama-perplexity scores), and the windows' tokens."""
    from harness.runtimes.llama_cpp import LlamaCppParams, LlamaCppRuntime
    from harness.suites.perplexity import PerplexityParams, first_scored_row, token_windows

    rt = LlamaCppRuntime()
    params = LlamaCppParams(n_threads=threads)
    base = rt.load(f16, params, 512)
    windows = token_windows(PerplexityParams(**WINDOW), base)
    firsts = [first_scored_row(PerplexityParams(**WINDOW, scored_tokens="second_half"), len(w)) for w in windows]
    ref = [base.token_distributions(w)[f:] for w, f in zip(windows, firsts, strict=True)]
    base.close()
    out = {}
    for name, path in candidates.items():
        s = rt.load(path, params, 512)
        kl = np.concatenate([(np.exp(p) * (p - s.token_distributions(w)[f:])).sum(1)
                             for p, w, f in zip(ref, windows, firsts, strict=True)])
        s.close()
        out[name] = {"kl_mean": float(kl.mean()), "positions": int(kl.size)}
    return {"windows": windows, "kl": out}


def quantgate_bench(path: Path, threads: int) -> dict:
    """The ``bench`` probe as the pipeline runs it: a spawned probe worker, the model loaded there."""
    from harness.isolate import run_isolated
    from harness.probes.runner import probe_worker

    res = run_isolated(probe_worker, "llama-cpp", {"n_threads": threads, "flash_attn": "auto"}, str(path),
                       {"bench": BENCH})
    return {"figures": res["figures"]["bench"], "runs": res["notes"]["bench"]["runs"],
            "flash_attn": res["notes"].get("session_info", {}).get("flash_attn")}


def llama_bench(bin_dir: Path, path: Path, threads: int, log: Path) -> dict:
    raw = run([str(bin_dir / "llama-bench"), "-m", str(path), "-p", ",".join(map(str, BENCH["n_prompt"])),
               "-n", ",".join(map(str, BENCH["n_gen"])), "-d", ",".join(map(str, BENCH["n_depth"])),
               "-r", str(BENCH["repetitions"]), "-t", str(threads), "-fa", "auto", "-o", "json"], log)
    out = {}
    for e in json.loads(raw[raw.index("["): raw.rindex("]") + 1]):
        kind, n = ("pp", e["n_prompt"]) if e["n_gen"] == 0 else ("tg", e["n_gen"])
        out[f"{kind}{n}" + (f"@d{e['n_depth']}" if e.get("n_depth") else "")] = {
            "avg_ts": e["avg_ts"], "stddev_ts": e["stddev_ts"], "samples_ts": e.get("samples_ts")}
    return out


def compare_speed(paths: dict[str, Path], bin_dir: Path, threads: int, rounds: int) -> dict:
    """quantgate's bench probe and llama-bench on each model, alternating (A B A B ... per model,
    ``rounds`` times) so that the machine's load falls on both alike; ratio = mean of quantgate's
    per-round figures / mean of llama-bench's."""
    speed = {}
    for name, path in paths.items():
        ours, theirs = [], []
        for i in range(rounds):
            ours.append(quantgate_bench(path, threads))
            theirs.append(llama_bench(bin_dir, path, threads, WORK / f"llama-bench-{name}-{i}.log"))
        figs = {}
        for key in theirs[0]:
            q = [o["figures"].get(key) for o in ours]
            ll = [t[key]["avg_ts"] for t in theirs]
            figs[key] = {"quantgate": q, "llama_bench": ll,
                         "quantgate_std": [o["figures"].get(key + "_std") for o in ours],
                         "llama_bench_std": [t[key]["stddev_ts"] for t in theirs]}
            if all(x is not None for x in q):
                figs[key]["ratio"] = statistics.fmean(q) / statistics.fmean(ll)
        speed[name] = {"tests": figs, "flash_attn_quantgate": ours[0]["flash_attn"]}
        print(f"{name} speed (quantgate / llama-bench): "
              + ", ".join(f"{k} {v.get('ratio', float('nan')):.3f}" for k, v in figs.items()), flush=True)
    return speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-bench", action="store_true", help="no speed comparison")
    ap.add_argument("--bench-threads", type=int, default=1,
                    help="threads for the speed comparison (1: steadiest on a shared 2-core machine)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating quantgate / llama-bench rounds per model")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "crosscheck.json")
    args = ap.parse_args()
    import llama_tools

    from harness.probes.gpu import machine_info
    from harness.suites.perplexity import load_text

    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tools = llama_tools.build()
    bin_dir = Path(tools["bin"])
    print(f"tools: {bin_dir} (build {tools['build_seconds']} s; cached {tools['cached']})", flush=True)

    p = plan(args.threads)
    plan_path = WORK / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(p, sort_keys=False))
    reports = WORK / "runs"
    t0 = time.perf_counter()
    run([sys.executable, "-m", "harness", "run", str(plan_path), "--reports-dir", str(reports), "--no-tracking"],
        WORK / "quantgate-run.log", ok=(0, 1))
    run_seconds = time.perf_counter() - t0
    run_dir = max(reports.iterdir(), key=lambda d: d.stat().st_mtime)
    results = json.loads((run_dir / "results.json").read_text())
    recs = {r["name"]: r for r in [results["baseline"], *results["candidates"]]}
    bad = [n for n, r in recs.items() if r.get("status") != "ok"]
    if bad:
        raise SystemExit(f"quantgate run: {bad} not ok; see {run_dir}")
    paths = {n: Path(r["artifact"]["path"]) for n, r in recs.items()}
    from harness.store import Store

    # what the baseline keeps for the fidelity suite (top-k + tail samples, JSON) vs llama.cpp's file
    fidelity_items_bytes = Store().result_path(recs["f16"]["suites"]["fidelity"]["items_key"]).stat().st_size
    print(f"quantgate run {run_dir.name}: {run_seconds:.0f} s", flush=True)

    text_file = WORK / "wikitext2-lf.txt"
    text_file.write_bytes(load_text("wikitext2", "lf").encode("utf-8"))
    base_kld = WORK / "f16.kld"
    ppl_cmd = [str(bin_dir / "llama-perplexity"), "-c", "512", "-b", "512", "-t", str(args.threads), "-fa", "auto"]
    t0 = time.perf_counter()
    out = run([*ppl_cmd, "-m", str(paths["f16"]), "-f", str(text_file), "--chunks", "16",
               "--kl-divergence-base", str(base_kld)], WORK / "llama-perplexity-f16.log")
    llama = {"f16": {"ppl": _num(r"Final estimate: PPL = ([0-9.]+)", out)}}
    for name in (c.lower() for c in CANDIDATES):
        out = run([*ppl_cmd, "-m", str(paths[name]), "--kl-divergence-base", str(base_kld), "--kl-divergence"],
                  WORK / f"llama-perplexity-{name}.log")
        llama[name] = parse_kld(out)
    llama_seconds = time.perf_counter() - t0
    kld_size = base_kld.stat().st_size

    exact = exact_kl(paths["f16"], {n: paths[n] for n in llama if n != "f16"}, args.threads)
    n_ctx, kld_tok = kld_tokens(base_kld)
    ours = np.asarray(exact["windows"], dtype=np.int32)
    same_tokens = bool(kld_tok.shape == ours.shape and (kld_tok == ours).all())
    base_kld.unlink()  # 400 MB

    def metric(name: str, key: str) -> float | None:
        m = recs[name]["metrics"].get(key)
        return None if m is None else m["value"]

    table = {}
    for name in recs:
        row: dict = {"quantgate": {
            "ppl_all_tokens": metric(name, "ppl_all.ppl"), "ppl_second_half": metric(name, "ppl_half.ppl")}}
        if name == "f16":
            row["llama_perplexity"] = llama["f16"]
            row["ppl_second_half_ratio"] = row["quantgate"]["ppl_second_half"] / llama["f16"]["ppl"]
        else:
            q = row["quantgate"]
            for k in ("kl_mean", "kl_estimator_se", "kl_median", "kl_p90", "kl_p99", "kl_max", "same_top_rate",
                      "dp_mean", "dp_rms", "ref_tail_mass_mean"):
                q[k] = metric(name, f"fidelity.{k}")
            q["kl_mean_exact_full_vocab"] = exact["kl"][name]["kl_mean"]
            ll = llama[name]
            row["llama_perplexity"] = ll
            row["ratios"] = {
                "ppl_second_half": q["ppl_second_half"] / ll["ppl"],
                "kl_mean_vs_llama": q["kl_mean"] / ll["kl_mean"],
                "kl_exact_vs_llama": q["kl_mean_exact_full_vocab"] / ll["kl_mean"],
                "kl_mean_vs_exact": q["kl_mean"] / q["kl_mean_exact_full_vocab"],
                "same_top_rate_diff": q["same_top_rate"] - ll["same_top_rate"],
            }
            print(f"{name}: KL quantgate {q['kl_mean']:.5f} ± {q['kl_estimator_se']:.5f} (estimator), "
                  f"exact {q['kl_mean_exact_full_vocab']:.5f}, llama-perplexity {ll['kl_mean']:.5f} "
                  f"-> {100 * (row['ratios']['kl_mean_vs_llama'] - 1):+.2f}%", flush=True)
        table[name] = row

    speed = None if args.skip_bench else compare_speed(paths, bin_dir, args.bench_threads, args.rounds)
    report = {
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/crosscheck.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "tools": tools,
        "threads": args.threads, "bench_threads": args.bench_threads, "rounds": args.rounds,
        "flash_attn": "auto (both sides)",
        "windows": {**WINDOW, "count": len(exact["windows"]), "scored_positions_second_half": 16 * 255},
        "same_tokens_as_llama_perplexity": same_tokens, "llama_perplexity_n_ctx": n_ctx,
        "fidelity_estimator": {"top_k": 32, "tail_samples": 32,
                               "what": "exact top-k + unbiased sampled tail (harness/suites/fidelity.py)"},
        "llama_kld_base_file_bytes": kld_size, "quantgate_fidelity_items_bytes": fidelity_items_bytes,
        "quantgate_run": {"id": run_dir.name, "seconds": round(run_seconds, 1)},
        "llama_perplexity_seconds": round(llama_seconds, 1),
        "candidates": table, "speed": speed,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    os.sync()


if __name__ == "__main__":
    main()
