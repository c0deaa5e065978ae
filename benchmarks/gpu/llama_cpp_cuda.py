"""The probes on a GPU for the llama-cpp runtime (llama-cpp-python built with CUDA on the device
machine) and the transformers runtime (BF16, the runtime's own ``greedy_decode_batch``).

The device machine has no network and no llama-cpp-python; its source distribution (77 MB) and
the embedded model's Q4_1 GGUF (94 MB) are each over what one call carries (64 MiB), so:

- ``pack`` (here) trims the sdist to what a CUDA build of the Python bindings needs
  (vendor/llama.cpp without models/, docs/, tests/, tools/, examples/ and the other backends),
  packs it as a tarball, and splits the Q4_1 GGUF into two halves; ``gpu_carry_a/`` holds the
  source, the wheels the device lacks and GGUF part a, ``gpu_carry_b/`` part b, the expected
  digests and a snapshot of ``harness/`` at the committed HEAD (another engineer may be editing
  the working tree while the calls run).
- ``build`` (device, call 1, carries ``gpu_carry_a``): installs the wheels into /tmp/site, keeps
  part a in /tmp/qg_gpu, and builds llama-cpp-python from the trimmed sdist with
  ``pip wheel --no-build-isolation --no-deps`` and CUDA (sm_90) in a process of its own session
  (it outlives the call while the machine stays warm), waiting for it up to ``--wait`` seconds.
- ``run`` (device, call 2.., carries ``gpu_carry_b``, within the machine's warm period): waits for
  the build if needed, reassembles and checks the GGUF, writes the F16 GGUF with
  ``harness.baseline.write_f16_gguf`` (sha256 checked against this machine's copy), quantizes
  Q8_0 and Q4_K_M from it with ``llama_cpp.llama_model_quantize`` (as harness's gguf quantizer
  does), derives the BF16 checkpoint with ``harness.baseline.write_hf_bf16`` (tensor digest
  checked), then runs the probe worker (``harness.probes.runner.probe_worker`` in a spawned
  process, as the pipeline does) for the configurations named by ``--only``.
- ``collect`` (here) merges the JSON files the calls wrote into one report.

On the device, llama-cpp-python's CUDA build and torch crash in one process (either import
order), and a probe worker that loads harness's probes before llama_cpp crashed too: llama-cpp
workers import llama_cpp first, and the parent never imports it (quantizing runs in a child).

    python benchmarks/gpu/llama_cpp_cuda.py pack --sdist /tmp/x/llama_cpp_python-0.3.36.tar.gz --wheels DIR
    # device call 1 (carry gpu_carry_a)
    python3 benchmarks/gpu/llama_cpp_cuda.py build --carry gpu_carry_a --out $OUT
    # device call 2.. (carry gpu_carry_b)
    python3 benchmarks/gpu/llama_cpp_cuda.py run --carry gpu_carry_b --only llama --out $OUT/run_llama.json
    python3 benchmarks/gpu/llama_cpp_cuda.py run --carry gpu_carry_b --only transformers,llama-roofline --out $OUT/run_tf.json
    # here: merge what came back
    python benchmarks/gpu/llama_cpp_cuda.py collect --out X.json --build build.json run_llama.json run_tf.json ...
    # here: a dry run on CPU with small shapes (CPU llama-cpp-python, float32 transformers)
    python benchmarks/gpu/llama_cpp_cuda.py run --local --small --device cpu --out /tmp/x.json

The re-run with the harness at HEAD (probes_h100_head.json): ``snapshot`` (here) replaces
gpu_carry_b/harness with ``git archive HEAD harness`` and records the commit; the transformers
run goes first and the build after it (the compiler's 16 jobs would share the CPU with the
transformers run, whose batch-1 decode is bound by Python and kernel launches):

    python benchmarks/gpu/llama_cpp_cuda.py snapshot
    # call 1 (carry gpu_carry_a): wheels, part a and the source kept on the machine, no build yet
    python3 benchmarks/gpu/llama_cpp_cuda.py build --defer --carry gpu_carry_a --out $OUT
    # call 2 (carry gpu_carry_b): transformers, then the build started (own session)
    python3 benchmarks/gpu/llama_cpp_cuda.py run --carry gpu_carry_b --only transformers-bfloat16 --out $OUT/run_tf.json
    python3 benchmarks/gpu/llama_cpp_cuda.py build --carry /tmp/qg_gpu/carry_a --wait 0 --out $OUT
    # call 3 (carry gpu_carry_b): waits for the build, then the llama-cpp runs
    python3 benchmarks/gpu/llama_cpp_cuda.py run --carry gpu_carry_b --only llama-f16,llama-q4_k_m,llama-latency-c8 --wait 420 --out $OUT/run_llama.json

In these runs the workers are harness's own ``probe_worker`` (which now imports the runtime's
libraries first); a llama-cpp configuration whose worker dies is tried again with llama_cpp
imported before harness (``llama_first_worker``), and the report says so (``worker``).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("QG_GPU_WORK", "/tmp/qg_gpu"))
SITE = Path(os.environ.get("QG_GPU_SITE", "/tmp/site"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPLIT_AT = 50_000_000
SDIST_DIR = "llama_cpp_python-0.3.36"

CMAKE_ARGS = " ".join([
    "-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=90", "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAVA_BUILD=OFF",
])

# what of vendor/llama.cpp the build of the bindings reads (everything else is left out)
KEEP_LLAMA = ["CMakeLists.txt", "LICENSE", "cmake", "common", "ggml", "include", "src", "vendor", "licenses"]
KEEP_GGML_SRC_DIRS = {"ggml-cpu", "ggml-cuda"}
KEEP_TOP = ["CMakeLists.txt", "pyproject.toml", "PKG-INFO", "README.md", "LICENSE.md", "llama_cpp"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sh(cmd: list[str] | str, **kw) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, shell=isinstance(cmd, str), **kw)
    return (r.stdout + r.stderr).strip()


def tensor_digest(folder: Path) -> dict:
    """As benchmarks/gpu/run_probes.py's (copied: importing that module puts the working tree's
    harness/ first on sys.path): sha256 over every tensor's name, dtype, shape and bytes."""
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
def trim_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if len(parts) < 2:
        return info
    rel = parts[1:]
    if rel[0] not in KEEP_TOP and rel[0] != "vendor":
        return None
    if rel[0] == "llama_cpp" and len(rel) > 1 and rel[1] == "server":
        return None
    if rel[0] == "vendor":
        if len(rel) >= 2 and rel[1] != "llama.cpp":
            return None
        if len(rel) >= 3 and rel[2] not in KEEP_LLAMA:
            return None
        if len(rel) >= 5 and rel[2] == "ggml" and rel[3] == "src":
            # the other backends' folders (ggml-vulkan, ggml-sycl, ...); files like ggml-alloc.c stay
            if rel[4].startswith("ggml-") and "." not in rel[4] and rel[4] not in KEEP_GGML_SRC_DIRS:
                return None
    return info


def pack(args) -> None:
    import subprocess as sp

    sys.path.insert(0, str(ROOT))
    from harness import baseline

    a, b = ROOT / "gpu_carry_a", ROOT / "gpu_carry_b"
    for d in (a, b):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
    # the trimmed source
    t0 = time.perf_counter()
    kept = skipped = 0
    with tarfile.open(args.sdist) as src, tarfile.open(a / "llama_src.tar.gz", "w:gz", compresslevel=9) as dst:
        for info in src:
            if trim_filter(info) is None:
                skipped += 1
                continue
            kept += 1
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    print(f"trimmed sdist: kept {kept} entries, left out {skipped}; "
          f"{(a / 'llama_src.tar.gz').stat().st_size / 2**20:.1f} MiB ({time.perf_counter() - t0:.0f} s)")
    shutil.copytree(args.wheels, a / "whl")
    # the GGUF halves
    src = baseline.source_file("embedded:smollm2-135m")
    data = src.read_bytes()
    (a / "part_a.bin").write_bytes(data[:SPLIT_AT])
    (b / "part_b.bin").write_bytes(data[SPLIT_AT:])
    f16 = baseline.derive("embedded:smollm2-135m", "gguf")
    hf = baseline.derive("embedded:smollm2-135m", "hf")
    expected = {"gguf": GGUF_NAME, "gguf_sha256": sha256(src), "gguf_bytes": len(data), "split_at": SPLIT_AT,
                "f16_gguf_sha256": sha256(f16), "f16_gguf_bytes": f16.stat().st_size,
                "hf_bf16_tensors": tensor_digest(hf),
                "hf_bf16_written_with": json.loads((hf / "config.json").read_text()).get("transformers_version"),
                "sdist_sha256": sha256(Path(args.sdist)),
                "harness_commit": sp.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip()}
    (b / "expected.json").write_text(json.dumps(expected, indent=1))
    # harness/ as committed (the working tree may hold another engineer's edits in progress)
    sp.run(f"git archive HEAD harness | tar -x -C {b}", shell=True, cwd=ROOT, check=True)
    print(json.dumps(expected, indent=1))
    for d in (a, b):
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        print(f"{d.name}: {size / 2**20:.1f} MiB")


def snapshot(args) -> None:
    """gpu_carry_b/harness := harness/ at HEAD (git archive), and the commit beside it."""
    b = ROOT / "gpu_carry_b"
    if (b / "harness").exists():
        shutil.rmtree(b / "harness")
    subprocess.run(f"git archive HEAD harness | tar -x -C {b}", shell=True, cwd=ROOT, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    (b / "harness_commit.txt").write_text(commit + "\n")
    print(f"gpu_carry_b/harness at {commit}")


# ---------------------------------------------------------------- device
BUILD_SCRIPT = """set -x
cd {src}
export CMAKE_ARGS="{cmake_args}" CMAKE_BUILD_PARALLEL_LEVEL=16 CUDACXX=${{CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}}
t0=$(date +%s.%N)
{py} -m pip wheel -v --no-build-isolation --no-deps --no-cache-dir -w {work}/wheel \
    --config-settings=build-dir={work}/build . > {work}/build.log 2>&1
rc=$?
t1=$(date +%s.%N)
if [ $rc = 0 ]; then
  {py} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target {site} {work}/wheel/llama_cpp_python-*.whl >> {work}/build.log 2>&1
  rc=$?
fi
echo "{{\\"rc\\": $rc, \\"started\\": $t0, \\"wheel_done\\": $t1, \\"ended\\": $(date +%s.%N)}}" > {work}/build.done.tmp
mv {work}/build.done.tmp {work}/build.done
"""


def cuda_hints() -> tuple[list[str], dict, list[str]]:
    """CMake cache entries for what the CUDA toolkit of this image may lack: the image's toolkit
    is assembled from NVIDIA's pip packages, and cuBLAS (headers and library) may only be in
    torch's ``nvidia-cublas`` package. Returns (cmake args, what was found, library folders)."""
    import glob
    import site

    roots = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu",
             "/usr/local/nvidia/lib64", "/usr/local/cuda/lib64/stubs", "/usr/local/cuda/targets/x86_64-linux/lib/stubs"]
    pkgs = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    for sp in pkgs:
        roots += sorted(glob.glob(f"{sp}/nvidia/*/lib")) + sorted(glob.glob(f"{sp}/nvidia/*/lib64"))

    def first(pattern: str) -> str | None:
        for r in roots:
            hits = sorted(glob.glob(os.path.join(r, pattern)), key=len)
            if hits:
                return hits[0]
        return None

    found = {"cublas": first("libcublas.so*"), "cublasLt": first("libcublasLt.so*"),
             "cuda_driver": first("libcuda.so*")}
    inc = None
    for cand in ["/usr/local/cuda/include", "/usr/local/cuda/targets/x86_64-linux/include"] + \
            [str(Path(p).parent / "include") for p in filter(None, [found["cublas"]])]:
        if os.path.isfile(os.path.join(cand, "cublas_v2.h")):
            inc = cand
            break
    found["cublas_include"] = inc
    args = [f"-DCUDA_{k}_LIBRARY={v}" for k, v in found.items() if v and k != "cublas_include"]
    if inc and not inc.startswith("/usr/local/cuda"):
        args += [f"-DCMAKE_CUDA_FLAGS=-I{inc}", f"-DCMAKE_CXX_FLAGS=-I{inc}"]
    libdirs = sorted({str(Path(v).parent) for k, v in found.items() if v and k in ("cublas", "cublasLt")})
    return args, found, libdirs


def ensure_library_path() -> None:
    """cuBLAS from a pip package is on no loader path: put its folder on LD_LIBRARY_PATH and
    re-execute (the loader reads the variable at process start; spawned workers inherit it)."""
    _, _, libdirs = cuda_hints()
    have = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    missing = [d for d in libdirs if d not in have and not d.startswith("/usr/local/cuda")]
    if missing and not os.environ.get("QG_REEXEC"):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(missing + [h for h in have if h])
        os.environ["QG_REEXEC"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])


def install_wheels(carry: Path) -> None:
    whl = sorted((carry / "whl").glob("*.whl"))
    if whl:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, whl)], check=True)
        print(f"installed {len(whl)} wheels into {SITE}")


def machine_facts() -> dict:
    facts = {"nvidia_smi": _sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                "clocks.max.memory,power.limit", "--format=csv"]),
             "nvcc": _sh("nvcc --version | tail -2"), "cmake": _sh("cmake --version | head -1"),
             "ninja": _sh("ninja --version"), "gcc": _sh("gcc --version | head -1"),
             "nproc": os.cpu_count(), "python": sys.version.split()[0]}
    facts["scikit_build_core"] = _sh([sys.executable, "-c", "import scikit_build_core as s; print(s.__version__)"])
    return facts


def build(args) -> None:
    carry = Path(args.carry)
    WORK.mkdir(parents=True, exist_ok=True)
    SITE.mkdir(parents=True, exist_ok=True)
    install_wheels(carry)
    if (carry / "part_a.bin").is_file():
        shutil.copy(carry / "part_a.bin", WORK / "part_a.bin")
        print(f"kept part a ({(WORK / 'part_a.bin').stat().st_size} bytes) in {WORK}")
    facts = machine_facts()
    print(json.dumps(facts, indent=1))
    if args.defer:
        # keep the source on the machine for a later call's build (--carry WORK/carry_a)
        (WORK / "carry_a").mkdir(exist_ok=True)
        shutil.copy(carry / "llama_src.tar.gz", WORK / "carry_a" / "llama_src.tar.gz")
        (Path(args.out) / "build_defer.json").write_text(json.dumps({"facts": facts}, indent=1))
        print(f"deferred: the source kept in {WORK / 'carry_a'}")
        return
    done = WORK / "build.done"
    if not done.is_file() and not (WORK / "build.pid").is_file():
        t0 = time.perf_counter()
        with tarfile.open(carry / "llama_src.tar.gz") as tf:
            tf.extractall(WORK / "src", filter="tar")
        print(f"unpacked the trimmed sdist in {time.perf_counter() - t0:.1f} s")
        hint_args, found, _ = cuda_hints()
        print("cuda libraries found:", json.dumps(found))
        cmake_args = " ".join([CMAKE_ARGS, *hint_args])
        script = BUILD_SCRIPT.format(src=WORK / "src" / SDIST_DIR, cmake_args=cmake_args, py=sys.executable,
                                     work=WORK, site=SITE)
        (WORK / "build.sh").write_text(script)
        p = subprocess.Popen(["bash", str(WORK / "build.sh")], start_new_session=True,
                             stdout=open(WORK / "build.sh.log", "w"), stderr=subprocess.STDOUT)
        (WORK / "build.pid").write_text(str(p.pid))
        (WORK / "build_meta.json").write_text(json.dumps({"cmake_args": cmake_args, "cuda_found": found,
                                                          "facts": facts, "script": script}, indent=1))
        print(f"build started (pid {p.pid}, own session): CMAKE_ARGS={cmake_args}")
    status = wait_build(args.wait)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (WORK / "build.log").is_file():
        shutil.copy(WORK / "build.log", out / "build.log")
    (out / "build.json").write_text(json.dumps(status, indent=1))
    print(json.dumps(status, indent=1))


def wait_build(limit: float) -> dict:
    done = WORK / "build.done"
    t0 = time.perf_counter()
    last = 0.0
    while not done.is_file() and time.perf_counter() - t0 < limit:
        time.sleep(2)
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            tail = _sh(f"grep -E '^ *\\[[0-9]+/[0-9]+\\]' {WORK}/build.log | tail -1 | cut -c1-150")
            print(f"  build running ({time.perf_counter() - t0:.0f} s waited): {tail}", flush=True)
    meta = json.loads((WORK / "build_meta.json").read_text()) if (WORK / "build_meta.json").is_file() else {}
    if not done.is_file():
        return {"state": "running", "waited_s": round(time.perf_counter() - t0), **meta}
    d = json.loads(done.read_text())
    status = {"state": "ok" if d["rc"] == 0 else "failed", "rc": d["rc"],
              "wheel_build_seconds": round(d["wheel_done"] - d["started"], 1),
              "install_seconds": round(d["ended"] - d["wheel_done"], 1), **meta}
    if d["rc"] == 0:
        status["wheel"] = [p.name for p in (WORK / "wheel").glob("*.whl")]
        status["wheel_bytes"] = sum(p.stat().st_size for p in (WORK / "wheel").glob("*.whl"))
        status["libs"] = {p.name: p.stat().st_size for p in (SITE / "llama_cpp" / "lib").iterdir()}
        status["compile_steps"] = _sh(f"grep -cE '^ *\\[[0-9]+/[0-9]+\\]' {WORK}/build.log")
        check = _sh([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__, "
                     "llama_cpp.llama_supports_gpu_offload())"],
                    env={**os.environ, "PYTHONPATH": str(SITE), "LD_LIBRARY_PATH": os.pathsep.join(
                        cuda_hints()[2] + [os.environ.get("LD_LIBRARY_PATH", "")])})
        status["import_check"] = check
    else:
        status["log_tail"] = _sh(f"tail -60 {WORK}/build.log")
    return status


def checked_inputs(carry: Path, need_hf: bool, need: set[str] | None = None) -> tuple[dict[str, Path], dict]:
    """The GGUF artifacts (F16, Q8_0, Q4_K_M) and the BF16 checkpoint, made on this machine."""
    from harness import baseline

    expected = json.loads((carry / "expected.json").read_text())
    gguf = WORK / expected["gguf"]
    if not gguf.is_file():
        a, b = WORK / "part_a.bin", carry / "part_b.bin"
        if not a.is_file():
            sys.exit(f"part a is not on this machine ({a}): the machine went back between the calls")
        with open(gguf, "wb") as f:
            f.write(a.read_bytes())
            f.write(b.read_bytes())
    info: dict = {"q4_1_gguf_sha256": sha256(gguf)}
    if info["q4_1_gguf_sha256"] != expected["gguf_sha256"]:
        sys.exit(f"reassembled GGUF sha256 {info['q4_1_gguf_sha256']} != {expected['gguf_sha256']}")
    arts: dict[str, Path] = {}
    f16 = WORK / "model-F16.gguf"
    t0 = time.perf_counter()
    if not f16.is_file():
        baseline.write_f16_gguf(gguf, f16)
    info["f16"] = {"how": "harness.baseline.write_f16_gguf(Q4_1 GGUF) on the device (gguf package)",
                   "seconds": round(time.perf_counter() - t0, 1), "sha256": sha256(f16),
                   "bytes": f16.stat().st_size, "expected_sha256": expected["f16_gguf_sha256"]}
    info["f16"]["identical_to_reference"] = info["f16"]["sha256"] == expected["f16_gguf_sha256"]
    arts["f16"] = f16
    for name in ("q8_0", "q4_k_m"):
        if need is not None and name not in need:
            continue
        dst = WORK / f"model-{name.upper()}.gguf"
        t0 = time.perf_counter()
        if not dst.is_file():
            # in a child process: llama_cpp and torch in one process crash on the device
            isolated(quantize_worker, str(f16), str(dst), name)
        info[name] = {"how": "llama_cpp.llama_model_quantize from the F16 GGUF", "seconds":
                      round(time.perf_counter() - t0, 1), "sha256": sha256(dst), "bytes": dst.stat().st_size}
        arts[name] = dst
    if need_hf:
        hf = WORK / "hf-bf16"
        t0 = time.perf_counter()
        if not (hf / "config.json").is_file():
            baseline.write_hf_bf16(gguf, hf)
        digest = tensor_digest(hf)
        info["hf_bf16"] = {"how": "harness.baseline.write_hf_bf16(Q4_1 GGUF) on the device",
                           "seconds": round(time.perf_counter() - t0, 1), "tensor_digest": digest,
                           "identical_to_reference": digest == expected["hf_bf16_tensors"],
                           "size_bytes": sum(p.stat().st_size for p in hf.iterdir())}
        arts["hf_bf16"] = hf
    print("inputs", json.dumps(info), flush=True)
    return arts, info


def configs(device: str, small: bool, roofline_device: str | None = None) -> list[dict]:
    if small:
        tp = {"prompt_tokens": [32, 64], "batch_sizes": [1, 4], "gen_tokens": 8, "repetitions": 2}
        lat = {"prompt_tokens": 32, "gen_tokens": 8, "requests": 3}
        lat8 = {"prompt_tokens": 32, "gen_tokens": 8, "requests": 4, "concurrency": 2}
        roof = {"prompt_tokens": 64, "gen_tokens": 8}
        stab = {"prompt_tokens": 64, "gen_tokens": 8, "repetitions": 2}
        n_stab = 2
    else:
        tp = {"prompt_tokens": [128, 512], "batch_sizes": [1, 8, 32], "gen_tokens": 128, "repetitions": 5}
        lat = {"prompt_tokens": 512, "gen_tokens": 128, "requests": 20, "concurrency": 1}
        lat8 = {"prompt_tokens": 512, "gen_tokens": 128, "requests": 16, "concurrency": 8}
        roof = {"prompt_tokens": 512, "gen_tokens": 128}
        stab = {"prompt_tokens": 512, "gen_tokens": 128, "repetitions": 5}
        n_stab = 3
    full = {"throughput": tp, "latency": lat, "roofline": {**roof, "device": roofline_device or device},
            "memory": {}}
    llama = {"n_gpu_layers": -1 if device == "cuda" else 0, "n_threads": None if device == "cuda" else 2}
    dtype = "bfloat16" if device == "cuda" else "float32"
    out = []
    for art in ("f16", "q8_0", "q4_k_m"):
        out.append({"name": f"llama-{art}", "runtime": "llama-cpp", "params": llama, "artifact": art, "probes": full})
    # the roofline alone with device named: "auto" takes a llama.cpp session for a CPU one (its
    # info() names no device) and divides by the host memory's bandwidth
    out += [{"name": f"llama-roofline-{art}", "runtime": "llama-cpp", "params": llama, "artifact": art,
             "probes": {"roofline": {**roof, "device": device}}} for art in ("f16", "q8_0", "q4_k_m")]
    # the latency probe at concurrency > 1 (LlamaCppSession.timed_requests), a process of its own
    out += [{"name": f"llama-latency-c8-{art}", "runtime": "llama-cpp", "params": llama, "artifact": art,
             "probes": {"latency": lat8}} for art in ("f16", "q4_k_m")]
    out += [{"name": f"llama-stability-q4_k_m-{i + 1}", "runtime": "llama-cpp", "params": llama,
             "artifact": "q4_k_m", "probes": {"decode": stab}} for i in range(n_stab)]
    out += [{"name": f"llama-stability-f16-{i + 1}", "runtime": "llama-cpp", "params": llama,
             "artifact": "f16", "probes": {"decode": stab}} for i in range(n_stab)]
    out.append({"name": f"transformers-{dtype}", "runtime": "transformers",
                "params": {"dtype": dtype, "device": device}, "artifact": "hf_bf16", "probes": full})
    out += [{"name": f"transformers-stability-{i + 1}", "runtime": "transformers",
             "params": {"dtype": dtype, "device": device}, "artifact": "hf_bf16", "probes": {"decode": stab}}
            for i in range(n_stab)]
    return out


def quantize_worker(f16: str, dst: str, name: str) -> None:
    import llama_cpp

    qp = llama_cpp.llama_model_quantize_default_params()
    qp.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[name]
    qp.nthread = os.cpu_count() or 1
    tmp = dst + ".tmp"
    rc = llama_cpp.llama_model_quantize(f16.encode(), tmp.encode(), ctypes.byref(qp))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({name}) returned {rc}")
    os.rename(tmp, dst)


def llama_info_worker() -> dict:
    try:
        import llama_cpp

        return {"version": llama_cpp.__version__, "file": llama_cpp.__file__,
                "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
                "system_info": llama_cpp.llama_print_system_info().decode(errors="replace")}
    except Exception as e:  # noqa: BLE001
        return {"error": repr(e)}


def llama_first_worker(*args):
    """The probe worker with llama_cpp (and so libggml-cuda) loaded before anything of harness:
    on the device, a process that loaded harness first (or torch, in either order) crashed in
    libggml-cuda when the model loaded (segfault at address 0 / "free(): invalid pointer")."""
    import llama_cpp  # noqa: F401

    from harness.probes.runner import probe_worker

    return probe_worker(*args)


def plain_worker(*args):
    from harness.probes.runner import probe_worker

    return probe_worker(*args)


def isolated(fn, *args):
    """``fn(*args)`` in a spawned process, as harness.isolate.run_isolated does, but the child
    unpickles nothing of harness before ``fn`` runs (fn lives in this script's module)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise RuntimeError("the worker process died (crash or out of memory)") from None


def spread(values: list[float]) -> dict:
    med = statistics.median(values)
    dev = [100 * (v / med - 1) for v in values]
    return {"values": values, "median": med, "deviation_pct": dev, "max_abs_deviation_pct": max(map(abs, dev)),
            "max_over_min_pct": 100 * (max(values) / min(values) - 1), "all_within_10pct": all(abs(d) <= 10 for d in dev)}


def run(args) -> None:
    t_start = time.perf_counter()
    chosen = [c for c in configs(args.device, args.small, args.roofline_device)
              if not args.only or any(c["name"].startswith(o) for o in args.only.split(","))]
    if not args.local and any(c["runtime"] == "llama-cpp" or c["artifact"] != "hf_bf16" for c in chosen):
        status = wait_build(args.wait)
        if status["state"] != "ok":
            sys.exit(f"llama-cpp-python build not ready: {json.dumps(status)[:3000]}")
    need_hf = any(c["artifact"] == "hf_bf16" for c in chosen)
    if args.local:
        from harness import baseline

        arts = {"f16": baseline.derive("embedded:smollm2-135m", "gguf"),
                "hf_bf16": baseline.derive("embedded:smollm2-135m", "hf")}
        sys.path.insert(0, str(ROOT))
        from benchmarks.probes import q4_k_m

        arts["q4_k_m"] = arts["q8_0"] = q4_k_m(arts["f16"])
        inputs = {"local": "F16/BF16 from harness.baseline.derive; q8_0 stands in with the Q4_K_M"}
    else:
        arts, inputs = checked_inputs(Path(args.carry), need_hf, {c["artifact"] for c in chosen})
    import harness

    report = {"command": " ".join(sys.argv), "inputs": inputs, "harness_from": str(Path(harness.__file__).parent),
              "runs": {}}
    commit_file = Path(args.carry) / "harness_commit.txt"
    if commit_file.is_file():
        report["harness_commit"] = commit_file.read_text().strip()
    if any(c["runtime"] == "llama-cpp" for c in chosen):
        report["llama_cpp"] = isolated(llama_info_worker)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for cfg in chosen:
        t0 = time.perf_counter()
        call = (cfg["runtime"], cfg["params"], str(arts[cfg["artifact"]]), cfg["probes"])
        try:
            if args.worker == "llama-first" and cfg["runtime"] == "llama-cpp":
                worker_used = "llama_first_worker"
                res = isolated(llama_first_worker, *call)
            else:
                worker_used = "harness probe_worker"
                try:
                    res = isolated(plain_worker, *call)
                except RuntimeError as e:
                    if cfg["runtime"] != "llama-cpp":
                        raise
                    print(f"{cfg['name']}: harness probe_worker failed ({e}); again with llama_cpp first", flush=True)
                    worker_used = f"llama_first_worker (harness probe_worker failed: {e})"
                    res = isolated(llama_first_worker, *call)
        except Exception as e:  # noqa: BLE001 - one failed configuration must not lose the others
            report["runs"][cfg["name"]] = {"error": f"{type(e).__name__}: {e}", "runtime": cfg["runtime"],
                                           "params": cfg["params"], "artifact": cfg["artifact"]}
            print(f"{cfg['name']}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        res["runtime"] = {"name": cfg["runtime"], **cfg["params"]}
        res["artifact"] = cfg["artifact"]
        res["probe_params"] = cfg["probes"]
        res["worker"] = worker_used
        machine = res["notes"].pop("machine", None)
        report.setdefault("machine", machine)
        report["runs"][cfg["name"]] = res
        extra = ""
        if "decode" in res["figures"]:
            extra = f" decode {res['figures']['decode']['tokens_per_s']:.1f} tok/s"
        print(f"{cfg['name']}: {res['wall_seconds']} s{extra}", flush=True)
        out_path.write_text(json.dumps(report, indent=1, default=str))
    report["stability"] = stability(report["runs"])
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out_path.write_text(json.dumps(report, indent=1, default=str))
    print_table(report)


def stability(runs: dict) -> dict:
    groups: dict[str, list[float]] = {}
    for name, r in runs.items():
        if "-stability-" in name and "figures" in r:
            groups.setdefault(name.rsplit("-", 1)[0], []).append(r["figures"]["decode"]["tokens_per_s"])
    return {g: spread(v) for g, v in groups.items()}


def table_rows(report: dict) -> list[dict]:
    rows = []
    for name, r in report["runs"].items():
        if "-stability-" in name:
            continue
        if "figures" not in r:
            rows.append({"run": name, "error": r.get("error")})
            continue
        f = r["figures"]
        t, lat, roof, mem = f.get("throughput", {}), f.get("latency", {}), f.get("roofline", {}), f.get("memory", {})
        row = {"run": name}
        for p in (128, 512):
            for b in (1, 8, 32):
                if f"decode_tps_p{p}_b{b}" in t:
                    row[f"dec p{p} b{b}"] = round(t[f"decode_tps_p{p}_b{b}"], 1)
            if f"prefill_tps_p{p}_b1" in t:
                row[f"pre p{p} b1"] = round(t[f"prefill_tps_p{p}_b1"])
        if "prefill_tps_p512_b32" in t:
            row["pre p512 b32"] = round(t["prefill_tps_p512_b32"])
        row["ttft p50 ms"] = round(1000 * lat["ttft_seconds_p50_c1"], 2) if "ttft_seconds_p50_c1" in lat else None
        row["itl p50 ms"] = round(1000 * lat["itl_seconds_p50_c1"], 3) if "itl_seconds_p50_c1" in lat else None
        row["vram GiB"] = round(mem["peak_vram_self_gib"], 3) if "peak_vram_self_gib" in mem else None
        row["roof %"] = round(roof["pct_of_peak"], 2) if "pct_of_peak" in roof else None
        rows.append(row)
    return rows


def print_table(report: dict) -> None:
    for row in report.get("table") or table_rows(report):
        print(" | ".join(f"{k}: {v}" for k, v in row.items()))
    for g, s in report.get("stability", {}).items():
        print(f"stability {g}: {[round(v, 1) for v in s['values']]} tok/s, max dev from median "
              f"{s['max_abs_deviation_pct']:.1f}%, max/min {s['max_over_min_pct']:.1f}%")


# ------------------------------------------------------------------ here
def collect(args) -> None:
    """Merge the calls' JSON files; a run name seen in an earlier file gets "<file stem>:" in
    front (repeated stability sets), and each stability group is summarized per file."""
    merged: dict = {"runs": {}, "calls": [], "stability": {}}
    for p in args.inputs:
        part = json.loads(Path(p).read_text())
        for key in ("machine", "llama_cpp", "inputs", "harness_from"):
            if part.get(key) and not merged.get(key):
                merged[key] = part[key]
        names = {}
        for name, r in part["runs"].items():
            new = name if name not in merged["runs"] else f"{Path(p).stem}:{name}"
            merged["runs"][new] = r
            names[name] = new
        merged["calls"].append({"file": Path(p).name, "command": part["command"], "seconds": part.get("seconds"),
                                "runs": list(names.values())})
        for g, s in stability(part["runs"]).items():
            merged["stability"][g if g not in merged["stability"] else f"{Path(p).stem}:{g}"] = s
    if args.build:
        merged["build"] = json.loads(Path(args.build).read_text())
    merged["table"] = table_rows(merged)
    # llama-cpp rows: the roofline with device="cuda" (separate runs); the full runs' roofline
    # divided by the host's memory bandwidth (device "auto" took the llama.cpp session for CPU)
    for row in merged["table"]:
        roof = merged["runs"].get(row["run"].replace("llama-", "llama-roofline-", 1), {}).get("figures")
        if row["run"].startswith("llama-") and roof:
            row["roof % (host bw, wrong)"] = row.pop("roof %")
            row["roof %"] = round(roof["roofline"]["pct_of_peak"], 2)
            row["roof decode tok/s"] = round(roof["roofline"]["decode_tps"], 1)
    Path(args.out).write_text(json.dumps(merged, indent=1, default=str))
    print_table(merged)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["pack", "snapshot", "build", "run", "collect"])
    ap.add_argument("--sdist", default="/tmp/x/llama_cpp_python-0.3.36.tar.gz")
    ap.add_argument("--wheels", help="folder of wheels the device lacks (pack)")
    ap.add_argument("--carry", default="gpu_carry_b")
    ap.add_argument("--out", default="reports/bench/probes_gpu_llama.json")
    ap.add_argument("--wait", type=float, default=480, help="seconds to wait for the build")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny shapes (a dry run)")
    ap.add_argument("--local", action="store_true", help="use this machine's baselines (a dry run)")
    ap.add_argument("--only", help="comma-separated prefixes of the configurations to run")
    ap.add_argument("--build", help="build.json of the build call (collect)")
    ap.add_argument("--defer", action="store_true", help="build: keep wheels, part a and the source; no build yet")
    ap.add_argument("--roofline-device", default="auto", help="the roofline probe's device in the full runs")
    ap.add_argument("--worker", choices=["harness", "llama-first"], default="harness",
                    help="llama-cpp workers: harness's probe_worker (retried llama_cpp-first if it dies) or "
                         "llama_cpp imported before harness")
    ap.add_argument("inputs", nargs="*", help="JSON files to merge (collect)")
    args = ap.parse_intermixed_args()
    if args.stage in ("run", "build"):
        # harness as committed (carried snapshot) before the working tree's; wheels from /tmp/site
        snap = Path(args.carry)
        paths = [str(snap)] if (snap / "harness").is_dir() else []
        paths += [str(ROOT)] + ([str(SITE)] if SITE.is_dir() else [])
        sys.path[:0] = paths
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if args.stage == "run" and args.device == "cuda" and not args.local:
        ensure_library_path()
    if args.stage == "pack":
        pack(args)
    elif args.stage == "snapshot":
        snapshot(args)
    elif args.stage == "build":
        build(args)
    elif args.stage == "run":
        run(args)
    else:
        collect(args)


if __name__ == "__main__":
    main()
