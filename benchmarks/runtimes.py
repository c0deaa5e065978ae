"""Runtime figures: cross-runtime consistency, lm-eval request throughput, suite wall times.

Writes reports/bench/runtimes.json. Sections (each timed on this machine, threads as given):
- consistency: the same F16 weights as a GGUF on llama.cpp and as BF16 safetensors on
  transformers (float32 compute): perplexity on identical windows, MMLU 0-shot answer
  agreement (log-likelihood margins of every disagreeing item).
- loglikelihood_throughput: MMLU log-likelihood requests per second through quantgate's
  in-process llama.cpp model vs lm-eval's ``gguf`` backend against llama-cpp-python's
  OpenAI-compatible server on the same file (and whether their answers agree).
- suite_seconds: wall time of each suite per runtime on the embedded model.
- compressed_tensors: a compressed-tensors checkpoint on transformers with its weights kept
  packed (decompressed on every forward) vs decompressed once at load.
Usage: python benchmarks/runtimes.py [--threads N] [--mmlu 200] [--compressed DIR] [--skip SECTION ...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load(runtime: str, path: Path, n_ctx: int, **params):
    from harness.runtimes import REGISTRY

    rt = REGISTRY.get(runtime)()
    t0 = time.perf_counter()
    session = rt.load(path, rt.Params.model_validate(params), n_ctx)
    return session, time.perf_counter() - t0


def _suite(name: str, **params):
    from harness.suites import REGISTRY

    suite = REGISTRY.get(name)()
    return suite, suite.Params.model_validate(params)


def consistency(llama, hf, n_mmlu: int) -> dict:
    suite, p = _suite("perplexity", context_length=512, max_tokens=4096)
    prep = suite.prepare(p, llama)
    ppl = {}
    for name, s in (("llama-cpp", llama), ("transformers", hf)):
        recs = suite.score(s, prep["items"], p)
        ppl[name] = suite.aggregate(prep["items"], recs, p)["ppl"]["value"]
    mm, mp = _suite("mmlu", num_fewshot=0, limit=n_mmlu)
    mprep = mm.prepare(mp, llama)
    recs = {name: mm.score(s, mprep["items"], mp) for name, s in (("llama-cpp", llama), ("transformers", hf))}

    def pick(r):
        lls = [x[0] for x in r["response"]]
        order = sorted(range(4), key=lambda i: -lls[i])
        return order[0], lls[order[0]] - lls[order[1]]

    disagree, agree = [], 0
    for a, b in zip(recs["llama-cpp"], recs["transformers"], strict=True):
        (ca, ma), (cb, mb) = pick(a), pick(b)
        if ca == cb:
            agree += 1
        else:
            disagree.append({"id": a["id"], "llama_cpp": {"choice": "ABCD"[ca], "margin": round(ma, 4)},
                             "transformers": {"choice": "ABCD"[cb], "margin": round(mb, 4)}})
    acc = {k: sum(r["scores"]["acc"] for r in v) / len(v) for k, v in recs.items()}
    return {
        "perplexity": {"windows": prep["meta"]["windows"], "context_length": 512, **ppl,
                       "difference_pct": 100 * (ppl["transformers"] / ppl["llama-cpp"] - 1)},
        "mmlu_0shot": {"items": len(mprep["items"]), "agreement": agree / len(mprep["items"]),
                       "accuracy": acc, "disagreements": disagree},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loglikelihood_throughput(llama, gguf: Path, threads: int, n_items: int) -> dict:
    from harness.lmeval import SessionLM

    suite, p = _suite("mmlu", num_fewshot=0, limit=n_items)
    task = suite.build_task(p)
    prep = suite.prepare(p, llama)
    task.build_all_requests(samples=[it["doc_index"] for it in prep["items"]], rank=0, world_size=1)
    reqs = list(task.instances)
    lm = SessionLM(llama)
    t0 = time.perf_counter()
    ours = lm.loglikelihood(reqs, disable_tqdm=True)
    t_ours = time.perf_counter() - t0
    out = {"requests": len(reqs), "items": n_items,
           "in_process": {"seconds": round(t_ours, 3), "requests_per_second": len(reqs) / t_ours}}
    port = _free_port()
    # the server's log goes to a file: llama.cpp logs a lot at load, and a full pipe would block it
    log_path = ROOT / "reports" / "bench" / "llama_cpp_server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads), "--logits_all", "true"],
        stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        import requests

        deadline = time.monotonic() + 600
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start; see {log_path}")
        from lm_eval.models.gguf import GGUFLM

        theirs_lm = GGUFLM(base_url=f"http://127.0.0.1:{port}")
        t0 = time.perf_counter()
        theirs = theirs_lm.loglikelihood(reqs, disable_tqdm=True)
        t_theirs = time.perf_counter() - t0
    except Exception as exc:  # the comparison is optional: record why it did not run
        out["gguf_server"] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    n_doc = len(prep["items"])

    def choices(res):
        return [max(range(4), key=lambda j: res[4 * i + j][0]) for i in range(n_doc)]

    out["gguf_server"] = {"seconds": round(t_theirs, 3), "requests_per_second": len(reqs) / t_theirs,
                          "answer_agreement_with_in_process": sum(
                              a == b for a, b in zip(choices(ours), choices(theirs), strict=True)) / n_doc,
                          "mean_abs_loglik_difference": sum(abs(a[0] - b[0]) for a, b in zip(ours, theirs, strict=True)) / len(reqs)}
    out["speedup"] = t_theirs / t_ours
    return out


SUITES = [
    ("perplexity", {"unit": "document", "context_length": 1024, "max_tokens": 4096}),
    ("fidelity", {"context_length": 512, "max_tokens": 1024}),
    ("mmlu", {"num_fewshot": 0, "limit": 50}),
    ("mmlu", {"num_fewshot": 5, "limit": 20}),
    ("gsm8k", {"limit": 5}),
    ("humaneval", {"limit": 5}),
    ("json-format", {"limit": 10}),
]


def suite_seconds(sessions: dict) -> list[dict]:
    rows = []
    ref = sessions["llama-cpp"]
    for name, params in SUITES:
        suite, p = _suite(name, **params)
        prep = suite.prepare(p, ref)
        row = {"suite": name, "params": params, "items": len(prep["items"])}
        for rname, s in sessions.items():
            t0 = time.perf_counter()
            recs = suite.score(s, prep["items"], p)
            sec = time.perf_counter() - t0
            metrics = suite.aggregate(prep["items"], recs, p)
            row[rname] = {"seconds": round(sec, 2), "seconds_per_item": round(sec / len(prep["items"]), 3),
                          "metrics": {k: v["value"] for k, v in metrics.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def compressed_tensors(path: Path, threads: int) -> dict:
    out = {"checkpoint": str(path)}
    suite, p = _suite("perplexity", context_length=512, max_tokens=4096)
    items = None
    for mode in (True, False):
        session, load_s = _load("transformers", path, 512, n_threads=threads, dequantize=mode)
        if items is None:
            items = suite.prepare(p, session)["items"]
        t0 = time.perf_counter()
        recs = suite.score(session, items, p)
        sec = time.perf_counter() - t0
        key = "decompressed_at_load" if mode else "packed"
        out[key] = {"load_seconds": round(load_s, 2), "score_seconds": round(sec, 2),
                    "tokens_per_second": sum(r["n_scored"] for r in recs) / sec,
                    "ppl": suite.aggregate(items, recs, p)["ppl"]["value"], "load_info": session.info()}
        session.close()
    out["speedup_of_decompressing"] = out["packed"]["score_seconds"] / out["decompressed_at_load"]["score_seconds"]
    out["ppl_difference"] = out["packed"]["ppl"] - out["decompressed_at_load"]["ppl"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="per runtime (1 is fastest on a loaded 2-core machine)")
    ap.add_argument("--mmlu", type=int, default=200, help="MMLU items for the agreement check")
    ap.add_argument("--throughput-items", type=int, default=25)
    ap.add_argument("--compressed", help="a compressed-tensors checkpoint folder (default: make GPTQ W4A16 g64)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["consistency", "throughput", "suites", "compressed"])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench" / "runtimes.json"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from harness import baseline, machine
    from harness.registry import package_version

    gguf = baseline.derive("embedded:smollm2-135m", "gguf")
    hf_dir = baseline.derive("embedded:smollm2-135m", "hf")
    result: dict = {"machine": machine.describe(), "threads": args.threads,
                    "versions": {p: package_version(p) for p in ("llama-cpp-python", "transformers", "torch", "lm-eval")},
                    "command": " ".join(sys.argv)}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.skip and out_path.is_file():  # a partial re-run keeps the other sections' figures
        result = {**json.loads(out_path.read_text()), **result}

    def save():
        out_path.write_text(json.dumps(result, indent=1))

    llama, t_llama = _load("llama-cpp", gguf, 2048, n_threads=args.threads)
    hf, t_hf = _load("transformers", hf_dir, 2048, n_threads=args.threads)
    result["load_seconds"] = {"llama-cpp": round(t_llama, 2), "transformers": round(t_hf, 2)}
    if "consistency" not in args.skip:
        result["consistency"] = consistency(llama, hf, args.mmlu)
        save()
        print(json.dumps({k: v for k, v in result["consistency"].items()}, indent=1)[:3000], flush=True)
    if "throughput" not in args.skip:
        result["loglikelihood_throughput"] = loglikelihood_throughput(llama, gguf, args.threads, args.throughput_items)
        save()
        print(json.dumps(result["loglikelihood_throughput"], indent=1), flush=True)
    if "suites" not in args.skip:
        result["suite_seconds"] = suite_seconds({"llama-cpp": llama, "transformers": hf})
        save()
    llama.close()
    hf.close()
    if "compressed" not in args.skip:
        path = Path(args.compressed) if args.compressed else _make_gptq()
        if path is not None:
            result["compressed_tensors"] = compressed_tensors(path, args.threads)
            save()
            print(json.dumps(result["compressed_tensors"], indent=1), flush=True)
    save()
    print(f"wrote {out_path}")
    return 0


def _make_gptq() -> Path | None:
    """A GPTQ W4A16 g64 artifact through the pipeline's own quantizer (store-cached)."""
    from harness.registry import package_missing

    if package_missing("llmcompressor", "", "", ""):
        print("llm-compressor not installed: compressed-tensors section skipped")
        return None
    plan = ROOT / "benchmarks" / "plans" / "gptq-packed-vs-dense.yaml"
    runs = ROOT / "reports" / "bench" / "runs"
    subprocess.run([sys.executable, "-m", "harness", "run", str(plan), "--reports-dir", str(runs), "--no-tracking"],
                   cwd=ROOT, check=False)
    run_dir = max((p for p in runs.iterdir() if "gptq-packed" in p.name), key=lambda p: p.stat().st_mtime)
    res = json.loads((run_dir / "results.json").read_text())
    return Path(res["candidates"][0]["artifact"]["path"])


if __name__ == "__main__":
    sys.exit(main())
