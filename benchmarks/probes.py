"""Probe figures on this machine (figures, not assertions): writes reports/bench/probes.json.

Sections:
- stability: the ``decode`` probe run ``--runs`` times on the same GGUF (the F16 baseline and a
  Q4_K_M made from it with harness's GGUF quantizer), each run in a fresh spawned process as
  the pipeline's probe worker runs it; the spread is each run's median against the median of
  the runs (the goal: every run within 10%).
- probe_vs_plain: decode (and prefill) tokens/s from the probe's own measurement
  (``harness.probes.throughput.run_shape`` on the llama-cpp session) against a plain
  llama-cpp-python generation loop (``Llama.generate``, greedy, ``logits_all=False`` as a user
  loads it) timed the same way: prefill = until the first token's logits, decode = the next
  ``gen`` tokens. The two alternate repetition by repetition in one process, so machine load
  falls on both alike (the goal: within 5%).

Every section records the machine (``harness.probes.gpu.machine_info``) and the load average
before and after: on a shared 2-core machine CPU timings move with other work.

Usage: python benchmarks/probes.py [--threads 1] [--runs 3] [--prompt 512] [--gen 128] [--reps 5]
                                   [--skip stability|probe_vs_plain ...]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "reports" / "bench"


def q4_k_m(f16: Path) -> Path:
    """A Q4_K_M of the F16 baseline (llama_model_quantize, as the gguf quantizer calls it)."""
    import llama_cpp

    dst = OUT / "probes-model-Q4_K_M.gguf"
    if not dst.is_file():
        qp = llama_cpp.llama_model_quantize_default_params()
        qp.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        tmp = dst.with_suffix(".tmp")
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(qp))
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize returned {rc}")
        tmp.rename(dst)
    return dst


def spread(values: list[float]) -> dict:
    med = statistics.median(values)
    dev = [100 * (v / med - 1) for v in values]
    return {"values": values, "median": med, "deviation_pct": dev, "max_abs_deviation_pct": max(map(abs, dev)),
            "all_within_10pct": all(abs(d) <= 10 for d in dev)}


def stability(models: dict[str, Path], threads: int, runs: int, prompt: int, gen: int, reps: int) -> dict:
    from harness.isolate import run_isolated
    from harness.probes.runner import probe_worker

    probes = {"decode": {"prompt_tokens": prompt, "gen_tokens": gen, "repetitions": reps, "warmup": 1}}
    out = {}
    for name, path in models.items():
        results = []
        for i in range(runs):
            t0 = time.perf_counter()
            r = run_isolated(probe_worker, "llama-cpp", {"n_threads": threads}, str(path), probes)
            d = r["notes"]["decode"]
            results.append({"figures": r["figures"]["decode"], "runs": d["runs"],
                            "loadavg_before": d["loadavg_before"], "loadavg_after": d["loadavg_after"],
                            "wall_seconds": round(time.perf_counter() - t0, 1)})
            print(f"stability {name} run {i + 1}: decode {r['figures']['decode']['tokens_per_s']:.1f} tok/s "
                  f"(load {d['loadavg_before']})", flush=True)
        out[name] = {
            "artifact": str(path), "probe_params": probes["decode"], "n_threads": threads, "runs": results,
            "decode_tokens_per_s": spread([r["figures"]["tokens_per_s"] for r in results]),
            "prefill_tokens_per_s": spread([r["figures"]["prefill_tokens_per_s"] for r in results]),
        }
    return out


def plain_generate(llm, prompt: list[int], gen: int) -> dict[str, float]:
    """A plain llama-cpp-python loop: ``Llama.generate`` with greedy sampling, first token =
    prefill, the next ``gen`` tokens = decode (each yield is one eval + one sample)."""
    llm.reset()  # generate() would otherwise reuse the KV cache of the previous prompt
    it = llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
    t0 = time.perf_counter()
    next(it)
    t1 = time.perf_counter()
    for _ in range(gen):
        next(it)
    t2 = time.perf_counter()
    it.close()
    return {"prefill_seconds": t1 - t0, "decode_seconds": t2 - t1}


def probe_vs_plain(path: Path, threads: int, prompt: int, gen: int, reps: int) -> dict:
    import llama_cpp

    from harness.probes.throughput import run_shape
    from harness.probes.timing import loadavg, prompt_ids, summarize
    from harness.runtimes import REGISTRY

    rt = REGISTRY.get("llama-cpp")()
    n_ctx = prompt + gen + 1
    session = rt.load(path, rt.Params(n_threads=threads), n_ctx)
    plain = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_ubatch=min(512, n_ctx),
                            n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False)
    ids = prompt_ids(session, prompt)
    arms = {
        "probe": lambda: run_shape(session, prompt, 1, gen, repetitions=1, warmup=0),
        "plain": lambda: _as_tps(plain_generate(plain, ids, gen), prompt, gen),
    }
    before = loadavg()
    for fn in arms.values():  # warm-up each
        fn()
    raw = {name: {"prefill_tps": [], "decode_tps": []} for name in arms}
    names = list(arms)
    for i in range(reps):
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate the order: load drift falls on all
            r = arms[name]()
            raw[name]["prefill_tps"] += r["prefill_tps"]
            raw[name]["decode_tps"] += r["decode_tps"]
        print(f"probe_vs_plain rep {i + 1}: " + ", ".join(f"{n} {raw[n]['decode_tps'][-1]:.1f}" for n in names)
              + " decode tok/s", flush=True)
    session.close()
    plain.close()
    s = {k: {name: summarize(raw[name][k]) for name in names} for k in ("prefill_tps", "decode_tps")}
    for k in s:
        for name in ("probe",):
            s[k][f"{name}_over_plain_pct"] = 100 * (s[k][name]["median"] / s[k]["plain"]["median"] - 1)
    return {"artifact": str(path), "n_threads": threads, "prompt_tokens": prompt, "gen_tokens": gen,
            "repetitions": reps, "raw": raw, "summary": s,
            "decode_within_5pct": abs(s["decode_tps"]["probe_over_plain_pct"]) <= 5,
            "loadavg_before": before, "loadavg_after": loadavg(),
            "note": "probe: LlamaCppSession.greedy_decode (prefill computes the last position's logits "
                    "only, though the session loads with logits_all=True for scoring); plain: "
                    "Llama(logits_all=False).generate, greedy"}


def _as_tps(t: dict[str, float], prompt: int, gen: int) -> dict[str, list[float]]:
    return {"prefill_tps": [prompt / t["prefill_seconds"]], "decode_tps": [gen / t["decode_seconds"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--plain-reps", type=int, default=9)
    ap.add_argument("--skip", nargs="*", default=[])
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from harness import baseline
    from harness.probes.gpu import machine_info

    OUT.mkdir(parents=True, exist_ok=True)
    f16 = baseline.derive("embedded:smollm2-135m", "gguf")
    models = {"f16": f16, "q4_k_m": q4_k_m(f16)}
    path = OUT / "probes.json"
    # sections not run this time keep their earlier figures (with their own command and times)
    report = json.loads(path.read_text()) if path.is_file() else {}
    report.update({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                   "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(),
                   "loadavg_start": list(os.getloadavg())})
    if "stability" not in args.skip:
        report["stability"] = stability(models, args.threads, args.runs, args.prompt, args.gen, args.reps)
        report["stability"]["_command"] = report["command"]
        report["stability"]["_started"] = report["started"]
        path.write_text(json.dumps(report, indent=1))
    if "probe_vs_plain" not in args.skip:
        report["probe_vs_plain"] = {name: probe_vs_plain(p, args.threads, args.prompt, args.gen, args.plain_reps)
                                    for name, p in models.items()}
        report["probe_vs_plain"]["_command"] = report["command"]
        report["probe_vs_plain"]["_started"] = report["started"]
    report["loadavg_end"] = list(os.getloadavg())
    path.write_text(json.dumps(report, indent=1))
    for name, s in report.get("stability", {}).items():
        if name.startswith("_"):
            continue
        d = s["decode_tokens_per_s"]
        print(f"stability {name}: decode {[round(v, 1) for v in d['values']]} tok/s, "
              f"max deviation from median {d['max_abs_deviation_pct']:.1f}%")
    for name, c in report.get("probe_vs_plain", {}).items():
        if name.startswith("_"):
            continue
        for k in ("decode_tps", "prefill_tps"):
            d = c["summary"][k]
            print(f"probe vs plain {name} {k}: probe {d['probe']['median']:.1f} "
                  f"({d['probe_over_plain_pct']:+.1f}%), plain {d['plain']['median']:.1f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
