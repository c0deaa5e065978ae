"""The probes on a GPU: transformers runtime, the embedded model's BF16 checkpoint, CUDA.

Run on the device machine (``run`` tool). The BF16 checkpoint (257 MiB) is over the 64 MiB a
call can carry, so it is derived there from the embedded Q4_1 GGUF (94 MB, itself carried in
two halves over two calls to one warm machine) with ``harness.baseline.write_hf_bf16`` — the
same code that made this machine's copy — and checked tensor by tensor against a digest of
this machine's copy (``expected.json``).

    # here, once: split the GGUF, write the digests (gpu_carry/ is ignored via .git/info/exclude)
    python benchmarks/gpu/run_probes.py split --out gpu_carry
    # device, call 1 (carry gpu_carry with part a): keep part a on the machine
    python3 benchmarks/gpu/run_probes.py prep --carry gpu_carry
    # device, call 2 (carry gpu_carry with part b), within the machine's warm period
    python3 benchmarks/gpu/run_probes.py run --carry gpu_carry --out $OUT/probes_gpu.json
    # here: a dry run of the same flow on CPU with small shapes
    python benchmarks/gpu/run_probes.py run --checkpoint DIR --device cpu --small --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

WORK = Path(os.environ.get("QG_GPU_WORK", "/tmp/qg_gpu"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPLIT_AT = 50_000_000


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(folder: Path) -> dict:
    """sha256 over every tensor's name, dtype, shape and raw bytes (sorted by name): equal
    digests mean the same weights whatever the file's metadata or tensor order."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    n = 0
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in sorted(st.keys()):
                t = st.get_tensor(name).contiguous()
                raw = t.view(torch.int16) if t.element_size() == 2 else t.view(torch.uint8)
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(raw.numpy().tobytes())
                n += 1
    return {"sha256": h.hexdigest(), "tensors": n}


# ------------------------------------------------------------------ here
def split(out: Path) -> None:
    from harness import baseline

    src = baseline.source_file("embedded:smollm2-135m")
    hf = baseline.derive("embedded:smollm2-135m", "hf")
    out.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    (out / "part_a.bin").write_bytes(data[:SPLIT_AT])
    (out / "part_b.bin").write_bytes(data[SPLIT_AT:])
    expected = {"gguf": GGUF_NAME, "gguf_sha256": sha256(src), "gguf_bytes": len(data), "split_at": SPLIT_AT,
                "hf_bf16_tensors": tensor_digest(hf), "hf_bf16_written_with": _hf_written_with(hf)}
    (out / "expected.json").write_text(json.dumps(expected, indent=1))
    print(json.dumps(expected, indent=1))


def _hf_written_with(hf: Path) -> str | None:
    cfg = json.loads((hf / "config.json").read_text())
    return cfg.get("transformers_version")


# ---------------------------------------------------------------- device
def prep(carry: Path) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    src = carry / "part_a.bin"
    if src.is_file():
        shutil.copy(src, WORK / "part_a.bin")
        print(f"kept {src} ({src.stat().st_size} bytes) in {WORK}")
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.memory",
                          "--format=csv"], capture_output=True, text=True).stdout)
    import torch

    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        x = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        print("nvml pid", os.getpid(), "processes", [(p.pid, p.usedGpuMemory) for p in procs])
        del x
    except Exception as e:  # noqa: BLE001
        print("nvml:", type(e).__name__, e)


def derive_checkpoint(carry: Path) -> tuple[Path, dict]:
    from harness import baseline

    expected = json.loads((carry / "expected.json").read_text())
    gguf = WORK / expected["gguf"]
    if not gguf.is_file():
        a, b = WORK / "part_a.bin", carry / "part_b.bin"
        if not a.is_file():
            sys.exit(f"part a is not on this machine ({a}): the machine went back between the calls; "
                     "run 'prep' again with part a, then 'run' with part b")
        with open(gguf, "wb") as f:
            f.write(a.read_bytes())
            f.write(b.read_bytes())
    got = sha256(gguf)
    if got != expected["gguf_sha256"]:
        sys.exit(f"reassembled GGUF sha256 {got} != {expected['gguf_sha256']}")
    hf = WORK / "hf-bf16"
    t0 = time.perf_counter()
    if not (hf / "config.json").is_file():
        baseline.write_hf_bf16(gguf, hf)
    digest = tensor_digest(hf)
    info = {"gguf_sha256": got, "derive_seconds": round(time.perf_counter() - t0, 1),
            "tensor_digest": digest, "expected_tensor_digest": expected["hf_bf16_tensors"],
            "identical_to_reference": digest == expected["hf_bf16_tensors"],
            "reference_written_with_transformers": expected.get("hf_bf16_written_with"),
            "size_bytes": sum(p.stat().st_size for p in hf.iterdir())}
    print("derived", json.dumps(info))
    return hf, info


def configs(device: str, small: bool) -> list[dict]:
    dtype = "bfloat16" if device == "cuda" else "float32"
    if small:
        tp = {"prompt_tokens": [32, 64], "batch_sizes": [1, 4], "gen_tokens": 8, "repetitions": 2}
        lat = {"prompt_tokens": 32, "gen_tokens": 8, "requests": 3}
        roof = {"prompt_tokens": 64, "gen_tokens": 8}
        stab = {"prompt_tokens": 64, "gen_tokens": 8, "repetitions": 2}
        n_stab = 2
    else:
        tp = {"prompt_tokens": [128, 512, 2048], "batch_sizes": [1, 8, 32], "gen_tokens": 128, "repetitions": 5}
        lat = {"prompt_tokens": 512, "gen_tokens": 128, "requests": 20}
        roof = {"prompt_tokens": 512, "gen_tokens": 128}
        stab = {"prompt_tokens": 512, "gen_tokens": 128, "repetitions": 5}
        n_stab = 3
    runtime = {"dtype": dtype, "device": device}
    out = [{"name": f"transformers-{dtype}-{device}", "runtime": runtime,
            "probes": {"throughput": tp, "latency": lat, "roofline": roof, "memory": {}}}]
    # the same with prefill logits of the last position only (the proposed runtime change)
    tp_last = {**tp, "prompt_tokens": tp["prompt_tokens"][-2:], "batch_sizes": [1, tp["batch_sizes"][-1]],
               "repetitions": 3}
    out += [{"name": f"transformers-{dtype}-{device}-last-logits", "runtime": runtime,
             "hooks": "benchmarks.gpu.hooks:attach_last_logits",
             "probes": {"throughput": tp_last, "roofline": roof, "memory": {}}}]
    # stability: the decode probe in fresh processes, as three pipeline runs would measure it
    out += [{"name": f"decode-stability-{i + 1}", "runtime": runtime, "probes": {"decode": stab}}
            for i in range(n_stab)]
    return out


def run(args) -> None:
    from harness.isolate import run_isolated
    from harness.probes.runner import probe_worker

    if args.checkpoint:
        hf, derivation = Path(args.checkpoint), {"checkpoint": args.checkpoint}
    else:
        hf, derivation = derive_checkpoint(Path(args.carry))
    report = {"command": " ".join(sys.argv), "checkpoint": "embedded:smollm2-135m BF16 safetensors (hf-bf16)",
              "derivation": derivation, "runs": {}}
    for cfg in configs(args.device, args.small):
        if args.only and not any(cfg["name"].startswith(o) for o in args.only.split(",")):
            continue
        t0 = time.perf_counter()
        res = run_isolated(probe_worker, "transformers", cfg["runtime"], str(hf), cfg["probes"],
                           cfg.get("hooks", "benchmarks.gpu.hooks:attach"))
        res["session_hooks"] = cfg.get("hooks", "benchmarks.gpu.hooks:attach")
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        res["runtime"] = {"name": "transformers", **cfg["runtime"]}
        res["probe_params"] = cfg["probes"]
        report.setdefault("machine", res["notes"].pop("machine"))
        res["notes"].pop("machine", None)
        report["runs"][cfg["name"]] = res
        print(f"{cfg['name']}: {res['wall_seconds']} s", flush=True)
    stab = [r["figures"]["decode"]["tokens_per_s"] for k, r in report["runs"].items() if k.startswith("decode-stab")]
    if stab:
        med = sorted(stab)[len(stab) // 2]
        report["stability"] = {"decode_tokens_per_s": stab, "median": med,
                               "max_deviation_pct": max(abs(x / med - 1) * 100 for x in stab)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print_table(report)


def print_table(report: dict) -> None:
    for name, run in report["runs"].items():
        if not name.startswith("decode-stab"):
            print(f"\n== {name}")
            _print_run(run["figures"])
    if "stability" in report:
        print("stability", json.dumps(report["stability"]))
    print("gpu", json.dumps((report.get("machine") or {}).get("gpu")))


def _print_run(f: dict) -> None:
    print("\nshape        prefill tok/s (min-max, std)          decode tok/s (min-max, std)")
    for key in sorted(k for k in f["throughput"] if k.startswith("decode_tps") and k.count("_") == 3):
        shape = key.removeprefix("decode_tps_")
        p, d = f"prefill_tps_{shape}", key
        t = f["throughput"]
        print(f"{shape:12s} {t[p]:10.0f} ({t[p + '_min']:.0f}-{t[p + '_max']:.0f}, {t[p + '_std']:.0f})"
              f"      {t[d]:9.1f} ({t[d + '_min']:.1f}-{t[d + '_max']:.1f}, {t[d + '_std']:.2f})")
    for probe in ("latency", "roofline", "memory"):
        if probe in f:
            print(probe, json.dumps({k: round(v, 5) for k, v in f[probe].items()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["split", "prep", "run"])
    ap.add_argument("--carry", default="gpu_carry")
    ap.add_argument("--out", default="reports/bench/probes_gpu.json")
    ap.add_argument("--checkpoint", help="use this HF folder instead of deriving one")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny shapes (a dry run)")
    ap.add_argument("--only", help="comma-separated prefixes of the configurations to run")
    args = ap.parse_args()
    if args.stage == "split":
        split(Path(args.carry))
    elif args.stage == "prep":
        prep(Path(args.carry))
    else:
        run(args)


if __name__ == "__main__":
    main()
