"""The GPU lane (issue 15 part 6) and the multi-GPU run of the Ray executor (issue 18) on the
lent 2×H200 machine: full ``quantgate run``s of GPU plans, once with the local executor and once
with ``--executor ray`` on a Ray cluster started on that machine, on the embedded model and on a
random-weight model of Llama-3-8B's shape generated on the device. Writes JSON figures (collected
here into ``benchmarks/gpu/lane_h200x2.json``).

The device has no network and no quantgate dependencies beyond its image; what it lacks travels
in three carry folders (64 MiB a call), made here by ``pack``:

- ``gpulane_a/``: ``src/`` (``git archive HEAD`` of harness, configs, gates, suites, benchmarks and
  pyproject.toml, plus ``harness/isolate.py`` of the working tree when its only change is the
  preload fix below, and this script and its plans), the wheels the device lacks (pydantic,
  gguf, llm-compressor and theirs; ``ray`` 2.60 as a trimmed tarball: the wheel without its Java
  jar, dashboard build, rllib, data, serve, train and tune is 28 MB instead of 79), the trimmed
  llama-cpp-python 0.3.36 sdist (``llama_cpp_cuda.trim_filter``), llama.cpp's converter folder
  as the store holds it (extracted here from the pinned sdist by ``harness.converter``, sealed;
  the device's store reuses it after checking every file's sha256, so the pin is kept without
  carrying the 77 MB sdist), the embedded model's tokenizer, WikiText-2, and the first part of
  the embedded model's GGUF;
- ``gpulane_b/``, ``gpulane_c/``: the GGUF's other two parts and its sha256.

Stages (each device call runs one, within the machine's warm period; ``detach`` runs ``run`` in
a session of its own and follows it, so a run outlives a call that reaches its deadline):

    python benchmarks/gpu/lane.py pack [--harness worktree] [--commit C]  # here
    python3 benchmarks/gpu/lane.py setup --carry gpulane_a --out $OUT --wait 450           # device call 1
    python3 benchmarks/gpu/lane.py detach --plan llama8b --carry gpulane_b --wait 300 --deadline 540 --out $OUT
    python3 benchmarks/gpu/lane.py detach --plan embedded --kill --carry gpulane_c --deadline 400 --out $OUT
    python3 benchmarks/gpu/lane.py detach --plan llama8b-bf16 --executors local --deadline 240 --out $OUT

(gpulane_b and gpulane_c together exceed a call's 64 MiB: without the llama8b plan, park part 1 with
``run --plan none --carry gpulane_b --out $OUT`` in a call of its own; benchmarks/gpu/lane_h200x2_s8.json,
``device_time.calls``, has the calls of the 2026-11-30 session that ran the embedded plan, the kill
and the 8B BF16-only plan.)
    python benchmarks/gpu/lane.py collect --out X.json DIR...           # here
    python benchmarks/gpu/lane.py dry                                   # here: all of it on CPU, tiny

What the 2×H200 runs of 2026-11-30 did, call by call, is in benchmarks/gpu/lane_h200x2.json
(first session: the 8B plan with both executors; the embedded plan ran out of device time on
FP8-dynamic's probes, since fixed) and benchmarks/gpu/lane_h200x2_s8.json (second session: the
embedded plan with both executors, the GPU kill of a Ray worker, the 8B BF16-only plan), each
in ``device_time.calls``.

``setup`` installs the wheels into /tmp/gpulane/site, starts the CUDA build of llama-cpp-python
(sm_90, all cores, a session of its own: it outlives the call while the machine stays warm),
generates the random 8B checkpoint on GPU 1 (bf16, seeded) and converts it to the F16 GGUF with
``harness.baseline.derive`` into a seed store, and waits for both. ``run`` starts a Ray head
(``ray start --head --num-gpus N``, 127.0.0.1, token auth) unless one is up, then runs the plan
from an empty store holding only the derived baselines (made once before the runs, the same for
both executors) with the local executor and with ``--executor ray --address auto``, sampling
every GPU process's memory through NVML; ``--kill`` adds the kill plan: once uninterrupted (the
local executor) and once under Ray with ``kill -9`` of the worker running the candidate's suites
when half its items are scored (Ray retries it once; it resumes from the item journal).

The runs' harness is the snapshot (``/tmp/gpulane/src``), never the working tree (other engineers
edit it while the calls run). ``--small`` / ``dry`` runs every stage on this CPU machine with tiny
shapes (a 2-layer random Llama of the same vocabulary, CPU llama-cpp-python, float32 transformers,
quantgate's own Ray cluster) so the device calls only run.

The preload fix (``harness/isolate.py``): a stage worker used to import the runtime's libraries
after unpickling its task, which loads ``harness.stages`` and numpy first; CUDA llama-cpp-python
loaded after numpy segfaults at model load (benchmarks/README.md, Probes), so the evaluate stage
of a llama.cpp candidate with GPU layers could not run. The pool's initializer now imports them
before the task is unpickled.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
D = Path(os.environ.get("GPULANE_DIR", "/tmp/gpulane"))
SNAP = D / "src"
SITE = D / "site"
WORK = D / "work"
os.environ.setdefault("QG_GPU_WORK", str(WORK))
os.environ.setdefault("QG_GPU_SITE", str(SITE))
sys.path.insert(0, str(HERE))
import llama_cpp_cuda as lcc  # noqa: E402  (stdlib only at import; WORK/SITE from the variables above)

SDIST = Path("/tmp/sdist/llama_cpp_python-0.3.36.tar.gz")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PLANS = {"embedded": "embedded-gpu.yaml", "kill": "embedded-gpu-kill.yaml", "llama8b": "llama8b-random-gpu.yaml",
         "llama8b-bf16": "llama8b-bf16-gpu.yaml"}
#: the plans on the random 8B checkpoint (they wait for `setup`'s gen8b and read its seed store)
PLANS_8B = ("llama8b", "llama8b-bf16")
MODEL_8B = D / "llama8b-random"
#: NVLink multicast stays off in every process (KINDS.md): NCCL, PyTorch, NVSHMEM
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NO_MULTICAST)
#: Llama-3-8B (and 3.1-8B) shapes; rope scaling of 3.1 left out: it changes no shape
SHAPE_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192,
            "rope_theta": 500000.0, "rms_norm_eps": 1e-5}
#: head dim 32: a q8_0 KV cache needs a multiple of its 32-value block
SHAPE_SMALL = {**SHAPE_8B, "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 256}
#: parts of the 98 MB GGUF: part 0 rides with call 1's carry, 1 and 2 with calls 2 and 3
SPLITS = (19_000_000, 79_000_000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd: str) -> str:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return (r.stdout + r.stderr).strip()


def dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))


# ------------------------------------------------------------------ here: pack
def isolate_patch() -> str:
    """The working tree's change to harness/isolate.py (the preload fix), or '' when none."""
    return subprocess.run(["git", "diff", "HEAD", "--", "harness/isolate.py"], cwd=ROOT, capture_output=True,
                          text=True).stdout


def snapshot(dest: Path, harness_from: str = "head", commit: str = "HEAD") -> dict:
    """``git archive HEAD`` (or ``commit``: a pinned one while others commit) of what a run reads,
    plus the preload fix (HEAD only) and this lane's files;
    ``harness_from="worktree"``: harness/ as the working tree holds it (sha256 of each file
    recorded), for a HEAD whose harness does not run on its own (23b0c3d, see benchmarks/README.md)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(f"git archive {commit} harness configs gates suites benchmarks pyproject.toml | tar -x -C {dest}",
                   shell=True, cwd=ROOT, check=True)
    pinned = commit != "HEAD"
    commit = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    patch = "" if pinned else isolate_patch()
    shas = None
    if harness_from == "worktree":
        shutil.rmtree(dest / "harness")
        shutil.copytree(ROOT / "harness", dest / "harness", ignore=shutil.ignore_patterns("__pycache__"))
        shas = {str(f.relative_to(dest)): lcc.sha256(f) for f in sorted((dest / "harness").rglob("*.py"))}
    elif patch:
        shutil.copy(ROOT / "harness" / "isolate.py", dest / "harness" / "isolate.py")
    for f in [HERE / "lane.py", *sorted((HERE / "plans").glob("*.yaml"))]:
        target = dest / f.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    info = {"harness_commit": commit, "isolate_patch": patch or None, "harness_from": harness_from,
            "harness_sha256": shas,
            "files_from_working_tree": ["benchmarks/gpu/lane.py", "benchmarks/gpu/plans/*.yaml"]
            + (["harness/isolate.py"] if patch else [])}
    dump(dest / "SNAPSHOT.json", info)
    return info


#: what of Ray's wheel a Ray head and quantgate's tasks do not read (79 MB -> a 28 MB tarball)
RAY_DROP = ("ray/jars", "ray/dashboard/client/build", "ray/rllib", "ray/data", "ray/serve", "ray/train", "ray/tune")


def ray_trim(wheel: Path, dst: Path) -> None:
    """Ray's wheel unpacked (as pip installs it) without ``RAY_DROP`` and source maps, as a tarball."""
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                path = Path(zf.extract(info, tmp))
                mode = info.external_attr >> 16
                if mode and not info.is_dir():
                    path.chmod(mode & 0o777)  # raylet, gcs_server: executables (extract drops the bits)
        for sub in RAY_DROP:
            shutil.rmtree(Path(tmp) / sub, ignore_errors=True)
        for m in Path(tmp).rglob("*.map"):
            m.unlink()
        with tarfile.open(dst, "w:xz", preset=6) as tf:
            for item in sorted(Path(tmp).iterdir()):
                tf.add(item, arcname=item.name)


def xz_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, lzma.open(dst, "wb", preset=6) as g:
        shutil.copyfileobj(f, g, 1 << 20)


def pack(args) -> None:
    """The three carry folders (gpulane_a, _b, _c) in the repository root (ignored there)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("QUANTGATE_HOME", "/tmp/gpulane-home")
    from harness import baseline, converter

    cache = Path(args.cache)
    a, b, c = (ROOT / f"gpulane_{x}" for x in "abc")
    for d in (a, b, c):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
    info = snapshot(a / "src", args.harness, args.commit)
    log(f"snapshot of {args.commit} = {info['harness_commit'][:10]}; isolate patch: {bool(info['isolate_patch'])}")
    # wheels: the small ones as wheels, ray as a trimmed tarball
    (a / "whl").mkdir()
    for w in sorted(Path(args.wheels).glob("*.whl")):
        if not w.name.startswith("ray-"):
            shutil.copy(w, a / "whl" / w.name)
    ray_tar = cache / "ray_trim.tar.xz"
    if not ray_tar.is_file():
        wheel = next(iter(sorted(Path(args.wheels).glob("ray-*.whl"))), None) or \
            next(iter(sorted(Path("/tmp/whl312").glob("ray-*.whl"))), None)
        if wheel is None:
            raise SystemExit(f"{ray_tar} missing and no ray-*.whl (cp312) in {args.wheels} to make it from")
        ray_trim(wheel, ray_tar)
    shutil.copy(ray_tar, a / ray_tar.name)
    src_tar = cache / "llama_src.tar.xz"
    if not src_tar.is_file():
        with tarfile.open(SDIST) as src, tarfile.open(src_tar, "w:xz", preset=9) as dst:
            for member in src:
                if lcc.trim_filter(member) is not None:
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    shutil.copy(src_tar, a / src_tar.name)
    # llama.cpp's converter, as the store holds it (sealed; its files sha256-checked on reuse)
    os.environ.setdefault(converter.SDIST_ENV, str(SDIST))
    conv = converter.ensure_converter()
    shutil.copytree(conv, a / "converter" / conv.name)
    # the embedded model's tokenizer (for the random 8B) and WikiText-2
    hf = baseline.derive("embedded:smollm2-135m", "hf")
    (a / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        xz_file(hf / name, a / "tokenizer" / f"{name}.xz")
    data = Path(os.environ.get("QUANTGATE_DATA", "/work/shared/data"))
    (a / "data").mkdir()
    xz_file(data / "wikitext2_test.txt", a / "data" / "wikitext2_test.txt.xz")
    # the GGUF in three parts
    gguf = baseline.source_file("embedded:smollm2-135m")
    raw = gguf.read_bytes()
    cuts = [0, *SPLITS, len(raw)]
    for i, d in enumerate((a, b, c)):
        (d / f"gguf.part{i}").write_bytes(raw[cuts[i]:cuts[i + 1]])
    dump(c / "gguf.json", {"name": GGUF, "sha256": lcc.sha256(gguf), "bytes": len(raw), "cuts": cuts})
    for d in (a, b, c):
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        log(f"{d.name}: {size / 2**20:.1f} MiB")


# ------------------------------------------------------------------ device: setup
def install(carry: Path) -> dict:
    SITE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    wheels = sorted(str(p) for p in (carry / "whl").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels], check=True)
    if (carry / "ray_trim.tar.xz").is_file():
        with tarfile.open(carry / "ray_trim.tar.xz") as tf:
            tf.extractall(SITE, filter="tar")
    return {"wheels": [Path(w).name for w in wheels], "ray": "ray_trim.tar.xz" if (carry / "ray_trim.tar.xz").is_file()
            else None, "seconds": round(time.perf_counter() - t0, 1)}


def unxz(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(src) as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 20)


def start_build(carry: Path) -> dict:
    """The CUDA build of llama-cpp-python in a session of its own (llama_cpp_cuda's script)."""
    WORK.mkdir(parents=True, exist_ok=True)
    if (WORK / "build.pid").is_file() or (WORK / "build.done").is_file():
        return {"state": "already started"}
    with tarfile.open(carry / "llama_src.tar.xz") as tf:
        tf.extractall(WORK / "src", filter="tar")
    hint_args, found, _ = lcc.cuda_hints()
    cmake_args = " ".join([lcc.CMAKE_ARGS, *hint_args])
    jobs = os.cpu_count() or 16
    script = lcc.BUILD_SCRIPT.format(src=WORK / "src" / lcc.SDIST_DIR, cmake_args=cmake_args, py=sys.executable,
                                     work=WORK, site=SITE).replace("CMAKE_BUILD_PARALLEL_LEVEL=16",
                                                                   f"CMAKE_BUILD_PARALLEL_LEVEL={jobs}")
    (WORK / "build.sh").write_text(script)
    p = subprocess.Popen(["bash", str(WORK / "build.sh")], start_new_session=True,
                         stdout=open(WORK / "build.sh.log", "w"), stderr=subprocess.STDOUT)
    (WORK / "build.pid").write_text(str(p.pid))
    meta = {"cmake_args": cmake_args, "cuda_found": found, "jobs": jobs}
    dump(WORK / "build_meta.json", meta)
    return {"state": "started", "pid": p.pid, **meta}


def gen_model(out: Path, small: bool, device: str, seed: int = 0) -> dict:
    """A Llama of Llama-3-8B's shape (``--small``: 2 tiny layers, the same vocabulary) with random
    weights (seeded; transformers' own init: normal(0, 0.02), norms 1), made in bf16 on ``device``
    and saved with the embedded model's tokenizer (49,152 tokens, ``bpe_tokenizer``: llama.cpp's
    converter pads the vocabulary to the model's 128,256 rows with unused tokens)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = dict(SHAPE_SMALL if small else SHAPE_8B)
    theta = shape.pop("rope_theta")
    cfg = LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": theta}, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.eval()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_init = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, max_shard_size="5GB")
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).save_pretrained(tmp)
    for f in (D / "tokenizer").iterdir():
        shutil.copy(f, tmp / f.name)
    bpe_tokenizer(tmp / "tokenizer.json")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"shape": SHAPE_SMALL if small else SHAPE_8B, "params": n_params, "dtype": "bfloat16", "device": device,
            "seed": seed, "init_seconds": round(t_init, 2), "total_seconds": round(time.perf_counter() - t0, 1),
            "bytes": sum(p.stat().st_size for p in out.iterdir()), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}


def bpe_tokenizer(path: Path) -> None:
    """SmolLM2's tokenizer as its own repository writes it (byte-level BPE, digits split one by
    one), from the one harness.baseline.write_hf_bf16 writes (transformers' GGUF import: byte
    fallback on, a SentencePiece-style decoder). llama.cpp's converter takes the latter for a
    SentencePiece vocabulary: it does not pad that to the model's 128,256 rows (the model does not
    load) and its byte tokens are missing (tokenizing aborts). This one it converts as GPT-2 BPE
    (pre-tokenizer "smollm"), padded; both tokenizers give the same ids."""
    t = json.loads(path.read_text(encoding="utf-8"))
    t["model"]["byte_fallback"] = False
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    t["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    path.write_text(json.dumps(t, ensure_ascii=False), encoding="utf-8")


def seed_env(home: Path) -> dict:
    env = {**os.environ, "QUANTGATE_HOME": str(home), "QUANTGATE_DATA": str(D / "data"),
           "PYTHONPATH": os.pathsep.join([str(SNAP), str(SITE)]), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1",
           "RAY_USAGE_STATS_ENABLED": "0", **NO_MULTICAST}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    libdirs = lcc.cuda_hints()[2]
    if libdirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p])
    return env


def derive_seed(model: str, home: Path, formats: tuple[str, ...]) -> dict:
    """The derived baselines of ``model`` in the seed store ``home`` (a subprocess, the snapshot's harness)."""
    t0 = time.perf_counter()
    code = ("import json,sys; from harness import baseline; "
            f"print(json.dumps({{f: str(baseline.derive({model!r}, f)) for f in {list(formats)!r}}}))")
    r = subprocess.run([sys.executable, "-c", code], env=seed_env(home), capture_output=True, text=True, cwd=SNAP)
    (home / "derive.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"deriving {model} failed (exit {r.returncode}): {(r.stdout + r.stderr)[-1500:]}")
    return {"paths": json.loads(r.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - t0, 1)}


def place_converter(home: Path) -> None:
    for folder in (D / "converter").iterdir():
        target = home / "tools" / folder.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, target)


def gen8b(args) -> None:
    """Device, in the background of ``setup``: the random checkpoint, then its F16 GGUF in the seed store."""
    out: dict[str, Any] = {"started": time.time()}
    try:
        out["model"] = gen_model(MODEL_8B, args.small, args.device)
        log(f"random model: {out['model']}")
        home = D / "seed-llama8b"
        place_converter(home)
        out["derive"] = derive_seed(str(MODEL_8B), home, ("gguf",))
        log(f"derived: {out['derive']}")
        out["state"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported to the waiting call
        out["state"] = "failed"
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["ended"] = time.time()
    dump(D / "gen8b.tmp", out)
    (D / "gen8b.tmp").rename(D / "gen8b.done")


def setup(args) -> None:
    t0 = time.perf_counter()
    carry = Path(args.carry).resolve()
    D.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"stage": "setup", "command": " ".join(sys.argv)}
    report["facts"] = {**({} if args.small else lcc.machine_facts()), "gpus": sh("nvidia-smi -L"),
                       "nvlink": sh("nvidia-smi nvlink -s 2>&1 | head -8"), "mem": sh("free -g | head -2"),
                       "disk": sh(f"df -h {D} | tail -1")}
    log(f"facts: {json.dumps(report['facts'])[:1500]}")
    if not args.small:
        report["install"] = install(carry)
        log(f"installed: {report['install']}")
    if SNAP.exists():
        shutil.rmtree(SNAP)
    shutil.copytree(carry / "src", SNAP)
    report["snapshot"] = json.loads((SNAP / "SNAPSHOT.json").read_text())
    (D / "parts").mkdir(exist_ok=True)
    shutil.copy(carry / "gguf.part0", D / "parts" / "gguf.part0")
    if (D / "converter").exists():
        shutil.rmtree(D / "converter")
    shutil.copytree(carry / "converter", D / "converter")
    for f in (carry / "tokenizer").iterdir():
        unxz(f, D / "tokenizer" / f.name.removesuffix(".xz"))
    unxz(carry / "data" / "wikitext2_test.txt.xz", D / "data" / "wikitext2_test.txt")
    if not args.small:
        report["build_start"] = start_build(carry)
        log(f"build: {json.dumps(report['build_start'])[:600]}")
    # the random model and its F16 GGUF, in the background (a session of its own)
    if not (D / "gen8b.done").is_file():
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("GPULANE_GEN_GPU", "1"), **NO_MULTICAST,
               "PYTHONPATH": os.pathsep.join([str(SNAP), str(SITE)])}
        cmd = [sys.executable, str(Path(__file__).resolve()), "gen8b", "--device", args.device] + \
            (["--small"] if args.small else [])
        subprocess.Popen(cmd, start_new_session=True, env=env, stdout=open(D / "gen8b.log", "w"),
                         stderr=subprocess.STDOUT)
        log("random 8B generation started (GPU 1), then its F16 GGUF")
    deadline = time.perf_counter() + args.wait
    last = 0.0
    while time.perf_counter() < deadline:
        built = args.small or (WORK / "build.done").is_file()
        if built and (D / "gen8b.done").is_file():
            break
        if time.perf_counter() - last > 30:
            last = time.perf_counter()
            step = sh(f"grep -E '^ *\\[[0-9]+/[0-9]+\\]' {WORK}/build.log 2>/dev/null | tail -1 | cut -c1-80")
            log(f"waiting: build {'done' if built else step or 'starting'}; gen8b: "
                f"{sh(f'tail -c 200 {D}/gen8b.log') if not (D / 'gen8b.done').is_file() else 'done'}")
        time.sleep(2)
    if not args.small:
        report["build"] = lcc.wait_build(0)
        if (WORK / "build.log").is_file():
            shutil.copy(WORK / "build.log", out_dir / "build.log")
    report["gen8b"] = json.loads((D / "gen8b.done").read_text()) if (D / "gen8b.done").is_file() else \
        {"state": "running", "log_tail": sh(f"tail -c 1500 {D}/gen8b.log")}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    dump(out_dir / "setup.json", report)
    log(f"build: {report.get('build', {}).get('state')} {report.get('build', {}).get('wheel_build_seconds')} s; "
        f"gen8b: {report['gen8b'].get('state')}; setup {report['seconds']} s")


# ------------------------------------------------------------------ device: run
def ray_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def ray_up(n_gpus: int) -> dict:
    """A Ray head on this machine (127.0.0.1, token auth, every GPU), started once per machine."""
    env = seed_env(D / "ray-home")
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_memory_monitor_refresh_ms"] = "0"  # MemTotal starts small on this VM and grows as used
    t0 = time.perf_counter()
    if (D / "ray.up").is_file():
        return {"state": "already up", **json.loads((D / "ray.up").read_text())}
    gen = subprocess.run(ray_cli("get-auth-token", "--generate"), env=env, capture_output=True, text=True)
    cmd = ray_cli("start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6379", "--num-gpus", str(n_gpus),
                  "--num-cpus", str(os.cpu_count()), "--memory", str(200 << 30), "--object-store-memory",
                  str(4 << 30), "--include-dashboard=false", "--disable-usage-stats")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, start_new_session=True)
    info = {"command": "RAY_AUTH_MODE=token " + " ".join(["ray", *cmd[3:]]), "rc": r.returncode,
            "seconds": round(time.perf_counter() - t0, 1), "token_generated": gen.returncode == 0,
            "output_tail": (r.stdout + r.stderr)[-800:]}
    if r.returncode == 0:
        dump(D / "ray.up", info)
    return info


class VramSampler(threading.Thread):
    """Every GPU process's memory (NVML) every ``interval`` s: per pid, its GPU, peak, first and
    last seen, its parent pid and what the parent is (a Ray task's worker names the task)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.stop, self.procs = interval, threading.Event(), {}
        self.device_peak: dict[int, int] = {}
        self.error: str | None = None
        self.t0 = time.time()

    def run(self) -> None:
        try:
            import psutil
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # noqa: BLE001 - no GPU here (the dry run)
            self.error = f"{type(exc).__name__}: {exc}"
            return
        while not self.stop.is_set():
            now = time.time() - self.t0
            for i, h in enumerate(handles):
                try:
                    used = pynvml.nvmlDeviceGetMemoryInfo(h).used
                    self.device_peak[i] = max(self.device_peak.get(i, 0), used)
                    plist = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
                except pynvml.NVMLError:
                    continue
                for p in plist:
                    mem = p.usedGpuMemory or 0
                    rec = self.procs.get((p.pid, i))
                    if rec is None:
                        rec = {"pid": p.pid, "gpu": i, "first_s": round(now, 2), "peak_bytes": 0}
                        try:
                            proc = psutil.Process(p.pid)
                            parent = proc.parent()
                            rec["ppid"] = parent.pid if parent else None
                            rec["parent"] = " ".join(parent.cmdline())[:160] if parent else None
                            rec["cmdline"] = " ".join(proc.cmdline())[:160]
                        except Exception:  # noqa: BLE001 - gone already
                            pass
                        self.procs[(p.pid, i)] = rec
                    rec["peak_bytes"] = max(rec["peak_bytes"], mem)
                    rec["last_s"] = round(now, 2)
            self.stop.wait(self.interval)

    def result(self) -> dict:
        return {"interval_s": self.interval, "error": self.error,
                "device_peak_gib": {i: round(v / 2**30, 3) for i, v in self.device_peak.items()},
                "processes": sorted(({**r, "peak_gib": round(r["peak_bytes"] / 2**30, 3)} for r in self.procs.values()),
                                    key=lambda r: r["first_s"])}


def seeded_home(seed: Path, home: Path) -> None:
    """An empty store holding only the seed's derived baselines, converter and data (hard links)."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    for sub in ("baselines", "hashes", "tools", "data"):
        if (seed / sub).exists():
            subprocess.run(["cp", "-al", str(seed / sub), str(home / sub)], check=True)


def results_of(reports: Path) -> dict | None:
    runs = sorted((p for p in reports.iterdir() if (p / "results.json").is_file()), key=lambda p: p.stat().st_mtime) \
        if reports.is_dir() else []
    return json.loads((runs[-1] / "results.json").read_text()) if runs else None


def start_run(plan: Path, home: Path, reports: Path, executor: str, env_extra: dict | None = None):
    reports.mkdir(parents=True, exist_ok=True)
    env = {**seed_env(home), **(env_extra or {})}
    cmd = [sys.executable, "-m", "harness", "run", str(plan), "--reports-dir", str(reports), "--no-tracking"]
    if executor == "ray":
        cmd += ["--executor", "ray"] + ([] if ADDRESS is None else ["--address", ADDRESS])
        env["RAY_AUTH_MODE"] = "token"
    env["CI"] = "1"
    out = open(reports.parent / f"{reports.name}.out", "ab")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, cwd=SNAP, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return proc, cmd


ADDRESS: str | None = "auto"


def figures(rec: dict) -> dict:
    """What the lane reports per record: decode tokens/s per batch, prefill, TTFT, VRAM, roofline, planner."""
    m = {k: v.get("value") for k, v in (rec.get("metrics") or {}).items()}
    out: dict[str, Any] = {"status": rec.get("status"), "verdict": rec.get("verdict")}
    for k, v in sorted(m.items()):
        if k.startswith(("throughput.decode_tps_p", "throughput.prefill_tps_p")) and k.count("_") <= 4 and \
                not k.endswith(("_min", "_max", "_std", "_mean")):
            out[k.removeprefix("throughput.")] = round(v, 1)
    for k in ("latency.ttft_seconds_p50_c1", "latency.itl_seconds_p50_c1", "latency.e2e_seconds_p50_c1",
              "memory.peak_vram_gib", "memory.peak_vram_self_gib", "memory.torch_max_reserved_gib",
              "memory.torch_max_allocated_gib", "roofline.decode_tps", "roofline.achieved_gbps", "roofline.pct_of_peak",
              "roofline.pct_of_measured", "size.gib", "load.seconds", "planner.total_gib",
              "planner.probe_predicted_gib", "planner.probe_measured_gib", "planner.probe_error_pct",
              "planner.weights_error_pct"):
        if m.get(k) is not None:
            out[k] = round(m[k], 4)
    for k, v in m.items():
        if "ppl" in k and k.endswith(".ppl"):
            out[k] = round(v, 4)
    roof = (rec.get("probe_notes") or {}).get("roofline") or {}
    if roof:
        out["roofline_notes"] = {k: roof.get(k) for k in ("bandwidth_source", "peak_gbps", "measured_gbps",
                                                          "bytes_per_token", "device") if k in roof}
    info = (rec.get("probe_notes") or {}).get("session_info")
    if info:
        out["session_info"] = info
    if rec.get("error"):
        out["error"] = {k: rec["error"].get(k) for k in ("stage", "message")}
    out["placement"] = {s: {k: p.get(k) for k in ("pid", "gpu_ids", "cuda_visible_devices", "gpus", "cpus", "executor")
                            if p.get(k) is not None} for s, p in (rec.get("placement") or {}).items()}
    return out


def summarize(res: dict, wall: float, cmd: list[str], rc: int, vram: dict) -> dict:
    recs = [res["baseline"], *res["candidates"]]
    out = {"command": "python3 " + " ".join(cmd[1:]), "exit_code": rc, "subprocess_wall_seconds": round(wall, 1),
           "wall_seconds": res["wall_seconds"], "run_id": res["run_id"], "executor": res["executor"],
           "verdicts": {c["name"]: c["verdict"] for c in res["candidates"]},
           "record_seconds": {r["name"]: r.get("seconds") for r in recs},
           "records": {r["name"]: figures(r) for r in recs}, "store_integrity": res.get("store_integrity"),
           "machine": res.get("machine"), "vram_nvml": vram}
    # which NVML processes belong to which record's stage (Ray: the stage worker is a child of the task's worker)
    by_parent = {}
    for r in recs:
        for stage, p in (r.get("placement") or {}).items():
            by_parent.setdefault(p.get("pid"), []).append(f"{r['name']}/{stage}")
    for proc in vram.get("processes", []):
        owners = by_parent.get(proc.get("ppid")) or by_parent.get(proc.get("pid"))
        if owners and len(owners) == 1:
            proc["record_stage"] = owners[0]
    return out


def one_run(name: str, plan: Path, seed: Path, executor: str, out_dir: Path) -> tuple[dict, dict]:
    home, reports = D / "homes" / f"{name}-{executor}", D / "runs" / f"{name}-{executor}"
    seeded_home(seed, home)
    if reports.exists():
        shutil.rmtree(reports)
    sampler = VramSampler()
    sampler.start()
    t0 = time.perf_counter()
    proc, cmd = start_run(plan, home, reports, executor)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join(5)
    res = results_of(reports)
    if res is None:
        raise RuntimeError(f"{name}/{executor}: no results.json (exit {rc}); "
                           f"{sh(f'tail -c 2500 {reports.parent}/{reports.name}.out')}")
    summary = summarize(res, wall, cmd, rc, sampler.result())
    log(f"{name}/{executor}: exit {rc}, wall {res['wall_seconds']} s (process {wall:.1f} s), verdicts {summary['verdicts']}")
    for rname, f in summary["records"].items():
        keys = ("decode_tps_p512_b1", "decode_tps_p512_b8", "decode_tps_p512_b32", "latency.ttft_seconds_p50_c1",
                "memory.peak_vram_self_gib", "roofline.pct_of_peak", "planner.probe_error_pct")
        short = {k.split(".")[-1]: f.get(k) for k in keys if f.get(k) is not None}
        gpus = {s: p.get("gpu_ids") for s, p in f["placement"].items()}
        log(f"  {rname}: {f['status']} {f.get('verdict')} {short} gpus {gpus}"
            + (f" ERROR {f['error']}" if f.get("error") else ""))
    return summary, res


def compare(a: dict, b: dict) -> dict:
    from benchmarks.executors import compare_records, verdicts

    c = compare_records(a, b)
    return {"verdicts_identical": verdicts(a) == verdicts(b), "records_identical": c["identical"],
            "per_record": {k: {kk: v[kk] for kk in ("identical", "max_abs_diff", "items", "differing_items")}
                           for k, v in c["per_record"].items()},
            "metrics": {r["name"]: {k: [v.get("value"), s["metrics"].get(k, {}).get("value")]
                                    for k, v in r["metrics"].items() if k.endswith(".ppl")}
                        for r, s in zip([a["baseline"], *a["candidates"]], [b["baseline"], *b["candidates"]],
                                        strict=True)}}


def kill_run(plan: Path, seed: Path, record: str, out_dir: Path, clean: dict) -> dict:
    """The kill plan under Ray: kill -9 of the worker running ``record``'s suites when half its
    items are journaled and half a chunk more has passed; Ray retries the task, which resumes."""
    import psutil

    from benchmarks.executors import _journals, _progress, compare_records, verdicts

    name = "kill"
    home, reports = D / "homes" / f"{name}-ray", D / "runs" / f"{name}-ray"
    seeded_home(seed, home)
    if reports.exists():
        shutil.rmtree(reports)
    suite = json.loads(json.dumps(clean["baseline"]["suites"]))
    n_items = len(next(iter(suite.values()))["records"])
    chunk = max(1, n_items // 10)
    t0 = time.perf_counter()
    proc, cmd = start_run(plan, home, reports, "ray")
    samples: list[tuple[float, int]] = []
    victim = None
    deadline = time.monotonic() + 420
    while victim is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            return {"error": f"the run ended (exit {proc.poll()}) before the kill", "command": " ".join(cmd)}
        time.sleep(0.05)
        done = _progress(reports, record)
        if not samples or done != samples[-1][1]:
            samples.append((time.perf_counter(), done))
        if done < n_items // 2:
            continue
        moving = [s for s in samples if s[1] > 0]
        rate = (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0]) if len(moving) > 1 and \
            moving[-1][0] > moving[0][0] else None
        time.sleep(max(0.0, (min(30.0, 0.5 * chunk / rate) if rate else 0.5) - (time.perf_counter() - samples[-1][0])))
        for p in psutil.process_iter(["cmdline"]):
            if any(f"ray::quantgate:{record}:candidate" in part for part in (p.info["cmdline"] or [])):
                if ADDRESS is None and proc.pid not in [q.pid for q in p.parents()]:
                    continue  # the dry run: only a worker of this run's own cluster (a shared machine)
                victim = p
                break
        if victim is None:
            continue
        victim_pid = victim.pid
        victim.kill()
    killed = time.perf_counter()
    done_at_kill = _progress(reports, record)
    time.sleep(0.3)
    journals = _journals(home)
    rc = proc.wait()
    res = results_of(reports)
    out: dict[str, Any] = {"command": "python3 " + " ".join(cmd[1:]), "record": record, "items": n_items,
                           "chunk_items": chunk, "victim_pid": victim_pid, "seconds_to_kill": round(killed - t0, 2),
                           "items_done_at_kill": done_at_kill, "journals_at_kill": journals, "exit_code": rc,
                           "wall_seconds": res and res["wall_seconds"]}
    if res is None:
        out["error"] = "no results.json after the kill"
        return out
    rec = next(r for r in [res["baseline"], *res["candidates"]] if r["name"] == record)
    suite_id, s = next(iter(rec["suites"].items()))
    journaled = journals.get(s.get("result_key"), 0)
    out.update({"suite": suite_id, "record_status": rec["status"], "verdict": rec.get("verdict"),
                "items_journaled_at_kill": journaled, "resumed_items": s.get("resumed_items"),
                "placement": rec.get("placement"),
                "records_equal_uninterrupted_run": compare_records(res, clean)["identical"],
                "verdicts_equal_uninterrupted_run": verdicts(res) == verdicts(clean),
                "store_integrity": res.get("store_integrity"), "journals_left": _journals(home),
                "ray_retried": "the victim's task ran again in the same run (Ray max_retries=1)"})
    log(f"kill: pid {victim_pid} at {done_at_kill}/{n_items} items ({journaled} journaled); exit {rc}; "
        f"resumed {s.get('resumed_items')}; records equal: {out['records_equal_uninterrupted_run']}")
    return out


def plan_for(name: str, small: bool, out: Path) -> Path:
    """The plan file a run reads: the committed YAML (``--small``: tiny shapes on CPU)."""
    import yaml

    plan = yaml.safe_load((HERE / "plans" / PLANS[name]).read_text())
    if name in PLANS_8B:
        plan["baseline"]["model"] = str(MODEL_8B)
    if small:
        for r in [plan["baseline"], *plan["candidates"]]:
            rt = r["runtime"]
            if rt["name"] == "transformers":
                rt["params"].update(device="cpu", dtype="float32", n_threads=1)
            elif rt["name"] == "llama-cpp":
                rt["params"].update(n_gpu_layers=0, n_threads=1)
        if name == "embedded":  # four of the seven records: the code paths, not the figures
            plan["candidates"] = [c for c in plan["candidates"] if c["name"] in ("f16-gguf", "q4_k_m-kv-q8",
                                                                                 "fp8-dynamic")]
        for s in plan["suites"]:
            s["params"]["context_length"] = 128
            s["params"]["max_tokens"] = 128 * (24 if name == "kill" else 4)
        probes = plan["probes"]
        if "throughput" in probes:
            probes["throughput"] = {"prompt_tokens": [32], "batch_sizes": [1, 2], "gen_tokens": 4, "repetitions": 1}
            probes["latency"] = {"prompt_tokens": 32, "gen_tokens": 4, "requests": 2}
            probes["roofline"] = {"prompt_tokens": 32, "gen_tokens": 4, "repetitions": 1, "device": "cpu"}
    path = out / f"{plan['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def assemble_gguf(carry: Path) -> dict:
    """The embedded model's GGUF from its three parts (two kept on this machine), sha256-checked,
    in the embedded seed store's data folder (where ``embedded:smollm2-135m`` is looked up)."""
    for part in carry.glob("gguf.part*"):
        shutil.copy(part, D / "parts" / part.name)
    meta_file = carry / "gguf.json"
    if not meta_file.is_file():
        return {"state": "parts kept", "parts": sorted(p.name for p in (D / "parts").iterdir())}
    meta = json.loads(meta_file.read_text())
    target = D / "seed-embedded" / "data" / "smollm2-135m" / GGUF
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        for i in range(3):
            f.write((D / "parts" / f"gguf.part{i}").read_bytes())
    got = lcc.sha256(target)
    if got != meta["sha256"]:
        raise SystemExit(f"reassembled GGUF sha256 {got} != {meta['sha256']}")
    return {"state": "ok", "sha256": got, "bytes": target.stat().st_size}


def run(args) -> None:
    global ADDRESS
    t_start = time.perf_counter()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sys.path[:0] = [str(SNAP), str(SITE)]
    report: dict[str, Any] = {"stage": "run", "plan": args.plan, "command": " ".join(sys.argv),
                              "snapshot": json.loads((SNAP / "SNAPSHOT.json").read_text())}
    if args.carry:
        report["gguf"] = assemble_gguf(Path(args.carry))
    if args.plan == "none":
        dump(out_dir / "run_none.json", report)
        return
    if not args.small:
        build = lcc.wait_build(args.wait)
        report["build"] = {k: build.get(k) for k in ("state", "wheel_build_seconds", "import_check")}
        if build["state"] != "ok":
            raise SystemExit(f"llama-cpp-python build not ready: {json.dumps(build)[:2000]}")
    if args.plan in PLANS_8B:
        deadline = time.perf_counter() + args.wait
        while not (D / "gen8b.done").is_file() and time.perf_counter() < deadline:
            time.sleep(2)
        report["gen8b"] = json.loads((D / "gen8b.done").read_text())
        if report["gen8b"]["state"] != "ok":
            raise SystemExit(f"random 8B: {report['gen8b']}")
        seed = D / "seed-llama8b"
    else:
        seed = D / "seed-embedded"
        if not args.small:
            place_converter(seed)
        report["derive"] = derive_seed("embedded:smollm2-135m", seed, ("gguf", "hf"))
        log(f"derived the embedded baselines: {report['derive']}")
    if args.small:
        ADDRESS = None  # quantgate's own Ray cluster for the run (no `ray start` on a shared machine)
    else:
        import torch  # noqa: F401  (only for the count; the runs are subprocesses)

        report["ray_start"] = ray_up(torch.cuda.device_count())
        log(f"ray: {report['ray_start']}")
    plans_dir = D / "plans"
    plan = plan_for(args.plan, args.small, plans_dir)
    report["plan_yaml"] = plan.read_text()
    runs, full = {}, {}
    for executor in args.executors.split(","):
        runs[executor], full[executor] = one_run(args.plan, plan, seed, executor, out_dir)
        dump(out_dir / f"run_{args.plan}.json", {**report, "runs": runs})
    if "local" in full and "ray" in full:
        lw, rw = runs["local"]["wall_seconds"], runs["ray"]["wall_seconds"]
        report["speedup"] = {"wall_seconds": round(lw / rw, 3), "local_s": lw, "ray_s": rw,
                             "process_wall": round(runs["local"]["subprocess_wall_seconds"]
                                                   / runs["ray"]["subprocess_wall_seconds"], 3)}
        report["local_vs_ray"] = compare(full["local"], full["ray"])
        log(f"speed-up local/ray {report['speedup']}; verdicts identical "
            f"{report['local_vs_ray']['verdicts_identical']}, records identical {report['local_vs_ray']['records_identical']}")
    if args.kill:
        kplan = plan_for("kill", args.small, plans_dir)
        clean, clean_full = one_run("kill", kplan, seed, "local", out_dir)
        runs["kill-local"] = clean
        report["kill"] = kill_run(kplan, seed, "q4_k_m", out_dir, clean_full)
    report["runs"] = runs
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    dump(out_dir / f"run_{args.plan}.json", report)
    # the runs' folders (results.json, logs, summary.md) without the store
    with tarfile.open(out_dir / f"runs_{args.plan}.tar.xz", "w:xz") as tf:
        for p in sorted((D / "runs").iterdir()):
            tf.add(p, arcname=p.name)
    log(f"run {args.plan}: {report['seconds']} s")


def stage_running() -> list[str]:
    """Plans whose detached run has started and not finished."""
    return sorted(f.name.removeprefix("stage-").removesuffix(".pid") for f in D.glob("stage-*.pid")
                  if not f.with_suffix(".done").is_file())


def detach(args) -> None:
    """``run`` in a session of its own (it outlives the call while the machine stays warm), its
    log followed here until it ends or ``--deadline`` s pass; then its files are copied to
    ``--out``. Called again for the same plan, it follows the run already going. A run of
    another plan still going is waited for first (the GPUs are measured one run at a time)."""
    t0 = time.perf_counter()
    deadline = t0 + args.deadline
    out = D / f"out-{args.plan}"
    pid_file, done_file, log_file = (D / f"stage-{args.plan}.{x}" for x in ("pid", "done", "log"))
    others = [p for p in stage_running() if p != args.plan]
    while others and time.perf_counter() < deadline:
        time.sleep(2)
        others = [p for p in stage_running() if p != args.plan]
    if others:
        log(f"{others} still running after {args.deadline} s: {args.plan} not started")
        return
    if not pid_file.is_file():
        cmd = [sys.executable, str(Path(__file__).resolve()), "run", "--plan", args.plan, "--out", str(out),
               "--executors", args.executors, "--wait", str(args.wait)]
        cmd += (["--carry", str(Path(args.carry).resolve())] if args.carry else []) + \
            (["--kill"] if args.kill else []) + (["--small"] if args.small else [])
        D.mkdir(parents=True, exist_ok=True)
        script = " ".join(f"'{c}'" for c in cmd) + f"; echo $? > {done_file}"
        p = subprocess.Popen(["bash", "-c", script], start_new_session=True, stdout=open(log_file, "w"),
                             stderr=subprocess.STDOUT)
        pid_file.write_text(str(p.pid))
        log(f"started {args.plan} (pid {p.pid}, own session): {' '.join(cmd)}")
    pos = 0
    while True:
        finished = done_file.is_file()
        if log_file.is_file():
            with open(log_file) as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
            if chunk:
                print(chunk, end="", flush=True)
        if finished or time.perf_counter() > deadline:
            break
        time.sleep(1)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*"):  # run_<plan>.json is written after each executor's run: partial figures too
        if f.is_file():
            shutil.copy(f, dest / f.name)
    if finished:
        log(f"{args.plan}: finished, exit {done_file.read_text().strip()}; files {sorted(p.name for p in out.glob('*'))}")
    else:
        log(f"{args.plan}: still running after {args.deadline} s (call `detach --plan {args.plan}` again)")


# ------------------------------------------------------------------ here: collect, dry
def markdown(merged: dict) -> str:
    """The tables of benchmarks/README.md's section, from the collected figures."""
    lines = []
    for key in sorted(k for k in merged if k.startswith("run_")):
        part = merged[key]
        for ex, r in part.get("runs", {}).items():
            lines.append(f"\n{key} / {ex}: exit {r['exit_code']}, wall {r['wall_seconds']} s, verdicts {r['verdicts']}\n")
            lines.append("| record | status | decode tok/s b1 / b8 / b32 | prefill tok/s b1 | TTFT p50 ms | "
                         "peak VRAM GiB (NVML) | roofline % | planner GiB (error) | GPU (suites / probes) |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for name, f in r["records"].items():
                dec = " / ".join(str(f.get(f"decode_tps_p512_b{b}", "—")) for b in (1, 8, 32))
                ttft = f.get("latency.ttft_seconds_p50_c1")
                pl = f.get("planner.probe_predicted_gib")
                err = f.get("planner.probe_error_pct")
                gpus = " / ".join(",".join(p.get("gpu_ids") or []) or str(p.get("cuda_visible_devices") or "0")
                                  for p in f["placement"].values())
                lines.append(f"| {name} | {f['status']} | {dec} | {f.get('prefill_tps_p512_b1', '—')} | "
                             f"{round(1000 * ttft, 2) if ttft else '—'} | {f.get('memory.peak_vram_self_gib', '—')} | "
                             f"{f.get('roofline.pct_of_peak', '—')} | "
                             f"{pl if pl is None else round(pl, 3)} ({err if err is None else round(err, 1)}%) | {gpus} |")
    return "\n".join(lines)


def collect(args) -> None:
    merged: dict[str, Any] = {"calls": []}
    for d in map(Path, args.inputs):
        for f in sorted(d.rglob("*.json")):
            part = json.loads(f.read_text())
            merged["calls"].append({"file": str(f), "stage": part.get("stage"), "command": part.get("command"),
                                    "seconds": part.get("seconds")})
            key = part["stage"] if part.get("stage") == "setup" else f"run_{part.get('plan')}"
            merged[key] = part
    dump(Path(args.out), merged)
    print(markdown(merged))
    log(f"wrote {args.out}")


def dry(args) -> None:
    """Every stage on this machine, tiny (CPU; quantgate's own Ray cluster): the device calls only run."""
    global D, SNAP, SITE, WORK, MODEL_8B
    base = Path(args.dir)
    os.environ["GPULANE_DIR"] = str(base)
    D, SNAP, SITE, WORK, MODEL_8B = base, base / "src", base / "site", base / "work", base / "llama8b-random"
    carry = base / "carry"
    if not (carry / "src").exists():
        carry.mkdir(parents=True, exist_ok=True)
        snapshot(carry / "src")
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("QUANTGATE_HOME", "/tmp/gpulane-home")
        from harness import baseline, converter

        os.environ.setdefault(converter.SDIST_ENV, str(SDIST))
        conv = converter.ensure_converter()
        shutil.copytree(conv, carry / "converter" / conv.name)
        hf = baseline.derive("embedded:smollm2-135m", "hf")
        (carry / "tokenizer").mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            xz_file(hf / name, carry / "tokenizer" / f"{name}.xz")
        (carry / "data").mkdir(exist_ok=True)
        xz_file(Path(os.environ.get("QUANTGATE_DATA", "/work/shared/data")) / "wikitext2_test.txt",
                carry / "data" / "wikitext2_test.txt.xz")
        raw = baseline.source_file("embedded:smollm2-135m").read_bytes()
        cuts = [0, *SPLITS, len(raw)]
        for i in range(3):
            (carry / f"gguf.part{i}").write_bytes(raw[cuts[i]:cuts[i + 1]])
        dump(carry / "gguf.json", {"name": GGUF, "sha256": GGUF_SHA256, "bytes": len(raw), "cuts": cuts})
    env = {**os.environ, "GPULANE_DIR": str(base)}
    me = [sys.executable, str(Path(__file__).resolve())]
    steps = [["setup", "--carry", str(carry), "--out", str(base / "out1"), "--small", "--device", "cpu",
              "--wait", "900"]]
    for only in args.only.split(","):
        if only in ("8b", "8b-bf16"):
            plan = "llama8b" if only == "8b" else "llama8b-bf16"
            steps.append(["run", "--plan", plan, "--out", str(base / f"out2-{plan}"), "--small"]
                         + (["--executors", "local"] if only == "8b-bf16" else []))
    if "embedded" in args.only.split(","):
        steps.append(["run", "--plan", "embedded", "--carry", str(carry), "--out", str(base / "out3"), "--small"]
                     + (["--kill"] if args.kill else []))
    for step in steps:
        log("dry: " + " ".join(step))
        subprocess.run(me + step, env={**env, "GPULANE_GEN_GPU": ""}, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["pack", "setup", "gen8b", "run", "detach", "collect", "dry"])
    ap.add_argument("--deadline", type=float, default=540, help="detach: seconds to follow the run")
    ap.add_argument("--carry")
    ap.add_argument("--out", default="benchmarks/gpu/lane_h200x2.json")
    ap.add_argument("--wait", type=float, default=480)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny shapes on the CPU (the dry run)")
    ap.add_argument("--plan", choices=[*PLANS, "none"], default="embedded")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--kill", action="store_true", help="also the Ray worker kill (the kill plan)")
    ap.add_argument("--wheels", default="/tmp/gpulane/whl_all", help="pack: the small wheels")
    ap.add_argument("--cache", default="/tmp/gpulane", help="pack: ray_trim.tar.xz, llama_src.tar.xz")
    ap.add_argument("--harness", choices=["head", "worktree"], default="head",
                    help="pack: harness/ from git archive HEAD (+ the preload fix) or as the working tree holds it")
    ap.add_argument("--commit", default="HEAD", help="pack: the commit whose harness the runs use (git archive)")
    ap.add_argument("--dir", default="/tmp/gpulane-dry", help="dry: its folder")
    ap.add_argument("--only", default="8b,embedded", help="dry: which runs (8b, 8b-bf16, embedded; comma-separated)")
    ap.add_argument("inputs", nargs="*", help="collect: the folders the calls' files came back to")
    args = ap.parse_intermixed_args()
    {"pack": pack, "setup": setup, "gen8b": gen8b, "run": run, "detach": detach, "collect": collect,
     "dry": dry}[args.stage](args)


if __name__ == "__main__":
    main()
