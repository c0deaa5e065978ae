"""The same artifact in process (runtime llama-cpp) and behind llama-cpp-python's OpenAI
server (runtime openai-server, launch: llama-cpp): what a served deployment changes.

Two parts, written as JSON to ``--out`` (default benchmarks/cpu/server.json):

- ``run``: from a finished ``quantgate run configs/server.yaml`` (its results.json): per
  (in-process, served) pair of the same artifact, the same-greedy-text rate over the gsm8k
  items, each side's gsm8k figure, seconds and items/s, and the served candidate's error line;
- ``direct``: sessions opened here on the run's artifacts (F16, Q8_0): the session's
  self-check figures, perplexity over the first ``--windows`` of the run's WikiText-2 windows
  (512 tokens; default 3) in process and
  from the server's raw echoed log-probs (the ones the self-check refuses), and seconds.

    QUANTGATE_DATA=... QUANTGATE_HOME=... python benchmarks/server_equivalence.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np

PAIRS = [("f16", "f16-server"), ("q8_0", "q8_0-server")]


def run_figures(results: dict) -> dict:
    recs = {r["name"]: r for r in [results["baseline"], *results["candidates"]]}
    out = {}
    for inproc, served in PAIRS:
        a, b = recs.get(inproc), recs.get(served)
        if not a or not b or "gsm8k" not in a["suites"] or "gsm8k" not in b["suites"]:
            continue
        ga, gb = a["suites"]["gsm8k"], b["suites"]["gsm8k"]
        ra = {x["id"]: x["response"] for x in ga["records"]}
        rb = {x["id"]: x["response"] for x in gb["records"]}
        same = sum(ra[i] == rb.get(i) for i in ra)
        out[f"{inproc} vs {served}"] = {
            "gsm8k_items": len(ra), "same_greedy_text": same, "same_greedy_rate": same / len(ra),
            "gsm8k_exact_match_flexible": [a["metrics"]["gsm8k.exact_match_flexible"]["value"],
                                           b["metrics"]["gsm8k.exact_match_flexible"]["value"]],
            "gsm8k_seconds": [ga["seconds"], gb["seconds"]],
            "gsm8k_items_per_s": [round(len(ra) / ga["seconds"], 3), round(len(rb) / gb["seconds"], 3)],
            "wikitext2_ppl_in_process": a["metrics"].get("wikitext2.ppl", {}).get("value"),
            "served_status": b["status"], "served_error": (b.get("error") or {}).get("message"),
            "record_seconds": [a.get("seconds"), b.get("seconds")],
        }
    return out


def direct_figures(results: dict, threads: int, n_windows: int) -> dict:
    from harness.runtimes import REGISTRY
    from harness.store import Store

    store = Store()
    recs = {r["name"]: r for r in [results["baseline"], *results["candidates"]]}
    windows_key = recs["f16"]["suites"]["wikitext2"]["items_key"]
    windows = [it["tokens"] for it in store.get_result(windows_key)["items"]][:n_windows]
    out = {}
    for _, served in PAIRS:
        path = Path(recs[served]["artifact"]["path"])
        local = REGISTRY.get("llama-cpp")()
        ref = local.load(path, local.Params.model_validate({"n_threads": threads}), 512)
        t0 = time.perf_counter()
        lp_ref = [ref.token_logprobs(w) for w in windows]
        t_ref = time.perf_counter() - t0
        ref.close()
        rt = REGISTRY.get("openai-server")()
        t0 = time.perf_counter()
        session = rt.load(path, rt.Params.model_validate({"launch": "llama-cpp", "n_threads": threads}), 1024)
        t_load = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            raw = [session.raw_prompt_logprobs(w)[0] for w in windows]
            t_srv = time.perf_counter() - t0
            check = session.info()["self_check"]
        finally:
            session.close()
        n = sum(len(x) for x in lp_ref)
        ppl_ref = math.exp(-sum(float(x.sum()) for x in lp_ref) / n)
        ppl_raw = math.exp(-sum(float(np.nansum(x)) for x in raw) / n)
        d = np.concatenate([np.abs(a - b) for a, b in zip(raw, lp_ref, strict=True)])
        out[served] = {"artifact": path.name, "windows": len(windows), "tokens_scored": n,
                       "ppl_in_process": round(ppl_ref, 4), "ppl_server_raw_echo": round(ppl_raw, 4),
                       "mean_abs_logprob_diff_raw": round(float(d.mean()), 4),
                       "seconds_in_process": round(t_ref, 2), "seconds_server": round(t_srv, 2),
                       "server_start_and_self_check_seconds": round(t_load, 2), "self_check": check}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", help="the report folder of a `quantgate run configs/server.yaml`")
    ap.add_argument("--out", default=str(Path(__file__).parent / "cpu" / "server.json"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3, help="of the run's perplexity windows, scored directly")
    args = ap.parse_args()
    results = json.loads((Path(args.run_dir) / "results.json").read_text())
    doc = {"what": __doc__.strip().splitlines()[0], "command": f"python benchmarks/server_equivalence.py {args.run_dir}",
           "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg(), "python": platform.python_version()},
           "run_id": results["run_id"], "run_wall_seconds": results["wall_seconds"],
           "run": run_figures(results)}
    print(json.dumps(doc["run"], indent=1), flush=True)
    doc["direct"] = direct_figures(results, args.threads, args.windows)
    doc["machine"]["loadavg_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["direct"], indent=1)[:6000])


if __name__ == "__main__":
    main()
