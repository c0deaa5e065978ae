"""Does the import order decide whether llama-cpp-python's CUDA build crashes loading a model?

Device call 2 of two (call 1 starts the build: ``llama_cpp_cuda.py build --carry gpu_carry_a
--wait N``); this one carries ``gpu_carry_b`` (GGUF part b), waits for the build, writes the F16
GGUF with ``harness.baseline.write_f16_gguf`` and then runs, each in a fresh python process,
the model loaded with n_gpu_layers=-1 and a few tokens decoded:

  (a) ``import llama_cpp`` first, then numpy;
  (b) ``import numpy`` first, then llama_cpp;
  (c) ``import harness.runtimes`` (numpy, pydantic) first, then llama_cpp;
  (d) the pipeline's path: a neutral main script calls ``harness.isolate.run_isolated(
      harness.probes.runner.probe_worker, "llama-cpp", {"n_gpu_layers": -1}, f16, probes,
      preload=("llama_cpp",))``.

harness/ is the working tree's (the repository root first on sys.path, then /tmp/site for the
wheels); the carried snapshot gpu_carry_b/harness is not used.

    python3 benchmarks/gpu/import_order.py --carry gpu_carry_b --wait 450 --out $OUT/import_order.json
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

CHILD = r'''
import json, sys, time
order = sys.argv[1].split(",")
path = sys.argv[2]
t0 = time.perf_counter()
seen = {}
for m in order:
    seen[m] = {"numpy_loaded_before": "numpy" in sys.modules}
    __import__(m)
print("imported", order, flush=True)
import llama_cpp
t1 = time.perf_counter()
llm = llama_cpp.Llama(model_path=path, n_gpu_layers=-1, n_ctx=256, verbose=False)
t2 = time.perf_counter()
out = llm("The capital of France is", max_tokens=8, temperature=0.0)
t3 = time.perf_counter()
print("RESULT " + json.dumps({"order": order, "seen": seen, "text": out["choices"][0]["text"],
      "completion_tokens": out["usage"]["completion_tokens"], "import_s": round(t1 - t0, 2),
      "load_s": round(t2 - t1, 2), "decode_s": round(t3 - t2, 3),
      "gpu_offload": llama_cpp.llama_supports_gpu_offload(),
      "harness_file": getattr(sys.modules.get("harness"), "__file__", None)}), flush=True)
'''

NEUTRAL_MAIN = r'''
import json, sys, time
if __name__ == "__main__":
    from harness.isolate import run_isolated
    from harness.probes.runner import probe_worker
    probes = json.loads(sys.argv[2])
    t0 = time.perf_counter()
    res = run_isolated(probe_worker, "llama-cpp", {"n_gpu_layers": -1}, sys.argv[1], probes,
                       preload=("llama_cpp",), log_path=__import__("pathlib").Path(sys.argv[3]))
    res["wall_s"] = round(time.perf_counter() - t0, 2)
    res["parent_loaded"] = {m: m in sys.modules for m in ("numpy", "pydantic", "llama_cpp")}
    import harness
    res["harness_file"] = harness.__file__
    print("RESULT " + json.dumps(res, default=str), flush=True)
'''

PROBES = {"throughput": {"prompt_tokens": [128], "batch_sizes": [1, 8], "gen_tokens": 32, "repetitions": 3},
          "latency": {"prompt_tokens": 128, "gen_tokens": 32, "requests": 8, "concurrency": 4},
          "memory": {}}


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def child_run(argv: list[str], env: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    dmesg0 = sh("dmesg 2>/dev/null | wc -l")
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), ""
    res: dict = {"rc": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    if isinstance(rc, int) and rc < 0:
        import signal
        res["signal"] = signal.Signals(-rc).name
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res["result"] = json.loads(line[7:])
    if "result" not in res:
        res["stdout_tail"] = out[-1500:]
        res["stderr_tail"] = err[-2500:]
    try:
        new = int(sh("dmesg 2>/dev/null | wc -l") or 0) - int(dmesg0 or 0)
        if new > 0:
            res["dmesg"] = sh(f"dmesg 2>/dev/null | tail -{min(new, 6)}")
    except ValueError:
        pass
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--carry", default="gpu_carry_b")
    ap.add_argument("--wait", type=float, default=450)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="a,b,c,d")
    args = ap.parse_args()
    t_start = time.perf_counter()
    sys.path.insert(0, str(HERE))
    import llama_cpp_cuda as L  # stdlib-only module level

    paths = [str(ROOT)] + ([str(L.SITE)] if L.SITE.is_dir() else [])
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    L.ensure_library_path()  # re-executes with cuBLAS's folder on LD_LIBRARY_PATH if needed
    report: dict = {"what": __doc__.split("\n")[0], "harness_from": str(ROOT / "harness"),
                    "python": sys.version.split()[0], "nvidia_smi": sh("nvidia-smi --query-gpu=name,driver_version "
                                                                          "--format=csv,noheader")}
    import harness.probes.runner as runner

    report["probe_worker_has_preload"] = "preload" in inspect.signature(runner.probe_worker).parameters
    report["runner_sha256"] = hashlib.sha256(Path(runner.__file__).read_bytes()).hexdigest()
    report["runner_file"] = runner.__file__
    t0 = time.perf_counter()
    report["build"] = {k: v for k, v in L.wait_build(args.wait).items() if k not in ("script", "facts")}
    report["build_waited_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if report["build"].get("state") != "ok":
        out.write_text(json.dumps(report, indent=1))
        sys.exit("build not ready")
    arts, info = L.checked_inputs(Path(args.carry), need_hf=False, need=set())
    report["inputs"] = info
    f16 = str(arts["f16"])
    env = dict(os.environ)
    env.pop("QG_REEXEC", None)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    checks = {"a": "llama_cpp,numpy", "b": "numpy,llama_cpp", "c": "harness.runtimes,llama_cpp"}
    report["checks"] = {}
    for key in args.only.split(","):
        if key in checks:
            r = child_run([sys.executable, "-c", CHILD, checks[key], f16], env, 120)
            r["imports"] = checks[key]
        elif key == "d":
            main_py = L.WORK / "neutral_main.py"
            main_py.write_text(NEUTRAL_MAIN)
            log = L.WORK / "probe_worker_d.log"
            r = child_run([sys.executable, str(main_py), f16, json.dumps(PROBES), str(log)], env, 300)
            r["imports"] = "run_isolated(probe_worker, preload=('llama_cpp',)) from a neutral main script"
            r["probes"] = PROBES
            if log.is_file():
                r["worker_log_tail"] = log.read_text(errors="replace")[-1500:]
        else:
            continue
        report["checks"][key] = r
        print(key, json.dumps({k: v for k, v in r.items() if k in ("rc", "signal", "wall_s", "dmesg")}), flush=True)
        out.write_text(json.dumps(report, indent=1, default=str))
    report["script_seconds"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(report, indent=1, default=str))
    print("\ncheck  rc     imports")
    for key, r in report["checks"].items():
        print(f"{key:<6} {str(r['rc']) + (' ' + r['signal'] if 'signal' in r else ''):<14} {r['imports']}")
    d = report["checks"].get("d", {}).get("result")
    if d:
        fig = d["figures"]
        print("d figures:", json.dumps({p: {k: round(v, 3) for k, v in m.items() if not k.endswith(("_min", "_max", "_std", "_mean"))}
                                       for p, m in fig.items()})[:3000])
        print("d notes.imports:", d["notes"].get("imports"), "session_info:", d["notes"].get("session_info"))


if __name__ == "__main__":
    main()
