"""llama.cpp's own HF checkpoint -> GGUF converter, at the revision the runtime is built from.

quantgate has no converter of its own. ``convert_hf_to_gguf.py`` comes from the source
distribution of llama-cpp-python 0.3.36 (the ``llamacpp`` extra's pin), which vendors the
llama.cpp tree it builds: the converter, its ``conversion/`` package (the model classes),
``gguf-py`` and ``requirements/requirements-convert_hf_to_gguf.txt``. The sdist is fetched
once (``pip download --no-binary :all: --no-deps``; or the file ``$QUANTGATE_LLAMA_SDIST``;
``$QUANTGATE_FIND_LINKS`` for an air-gapped index), refused unless its sha256 is
``SDIST_SHA256``, and only those files are extracted into
``$QUANTGATE_HOME/tools/convert-<sdist sha[:12]>/`` (a scratch folder renamed when complete,
under the store's ``tools`` lock: two runs extract once), sealed like a store entry and
checked on reuse; the extracted ``convert_hf_to_gguf.py`` must match ``CONVERTER_SHA256``.

The converter runs in a subprocess with the vendored ``gguf-py`` first on ``PYTHONPATH`` (so
the installed ``gguf`` package's version does not matter to it). Its Python dependencies for a
llama-family model: torch, transformers, numpy, sentencepiece (imported for every llama
model, even a BPE one), pyyaml; the ``hf`` extra carries them.

Which architectures it converts is read from the vendored tree without importing it: the
``TEXT_MODEL_MAP`` of ``conversion/__init__.py`` (or, for a tree without one, the names in its
``@ModelBase.register(...)`` decorators). ``checkpoint_problem`` checks a folder against it.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DataError, PlanError
from harness.store import Store, atomic_dir, sha256_file, temp_prefix

SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SPEC = "llama-cpp-python==0.3.36"
#: the sha256 of ``SDIST`` as PyPI serves it (benchmarks/llama_tools.py builds llama.cpp's tools from it too)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
#: the sha256 of ``vendor/llama.cpp/convert_hf_to_gguf.py`` in that sdist
CONVERTER_SHA256 = "e9a1da876330bbce9687541ab31736542a01b4ac43c6686126514a50f122fb7f"
SDIST_ENV = "QUANTGATE_LLAMA_SDIST"
CONVERTER = "convert_hf_to_gguf.py"
REQUIREMENTS = "requirements/requirements-convert_hf_to_gguf.txt"
#: what is extracted, relative to the sdist's ``vendor/llama.cpp/`` (a folder ends with "/")
MEMBERS = (CONVERTER, "conversion/", "gguf-py/", REQUIREMENTS,
           "requirements/requirements-convert_legacy_llama.txt", "LICENSE")
OUTTYPES = ("f16", "bf16", "f32")
_VENDOR = "/vendor/llama.cpp/"


def tools_key() -> str:
    return f"convert-{SDIST_SHA256[:12]}"


# ------------------------------------------------------------------ fetch and extract
def fetch_sdist(dest: Path, log: Callable[[str], Any] = print, given: Path | None = None) -> Path:
    """The pinned sdist: ``given``, ``$QUANTGATE_LLAMA_SDIST``, one already in ``dest``, or
    ``pip download``'s copy there; DataError unless its sha256 is the pin."""
    given = given or os.environ.get(SDIST_ENV)
    path = Path(given).expanduser() if given else dest / SDIST
    if not given and not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), SDIST_SPEC]
        find_links = os.environ.get("QUANTGATE_FIND_LINKS")
        if find_links:
            cmd[4:4] = ["--no-index", "--find-links", find_links]
        log(f"fetching {SDIST_SPEC} (source distribution, for llama.cpp's {CONVERTER})")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"could not fetch {SDIST_SPEC} for llama.cpp's {CONVERTER} ({last}); "
                            f"set {SDIST_ENV} to a local copy of {SDIST}")
    if not path.is_file():
        raise DataError(f"{SDIST_ENV}={given}: no such file")
    digest = sha256_file(path)
    if digest != SDIST_SHA256:
        raise DataError(f"{path}: sha256 {digest} is not the pinned {SDIST_SHA256} ({SDIST})")
    return path


def _extract(sdist: Path, dest: Path) -> int:
    """The ``MEMBERS`` of the sdist's vendored llama.cpp tree into ``dest``; returns the file count."""
    n = 0
    with tarfile.open(sdist) as tar:
        for member in tar:
            head, sep, rel = member.name.partition(_VENDOR)
            if not sep or "/" in head or "__pycache__" in rel:
                continue
            if not any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in MEMBERS):
                continue
            if not member.isfile():
                continue  # folders come with their files; no links: nothing here needs one
            local = copy.copy(member)
            local.name = rel
            if hasattr(tarfile, "data_filter"):
                tar.extract(local, dest, filter="data")
            else:  # Python without extraction filters: the checks above (files, folders) suffice
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise DataError(f"{sdist}: unsafe member {member.name!r}")
                tar.extract(local, dest)
            n += 1
    return n


def ensure_converter(store: Store | None = None, log: Callable[[str], Any] = print) -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` and ``gguf-py``, extracted once into the
    store (``tools/convert-<sdist sha[:12]>``) and checked against its seal on every reuse."""
    store = store or Store(log=log)
    key = tools_key()
    folder = store.folder("tools", key)
    if store.reusable_manifest("tools", key) is not None:
        return folder
    with store.lock("tools", key, on_wait=log):
        if store.reusable_manifest("tools", key) is None:  # not extracted while this one waited
            t0 = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if os.environ.get(SDIST_ENV):
                    sdist = fetch_sdist(Path("."), log)
                else:  # downloaded beside the entry, removed once extracted (pip's cache keeps it);
                    # a temporary name a later Store removes if this process is killed meanwhile
                    folder.parent.mkdir(parents=True, exist_ok=True)
                    scratch = Path(tempfile.mkdtemp(prefix=temp_prefix(f"{key}-sdist"), dir=folder.parent))
                    stack.callback(shutil.rmtree, scratch, ignore_errors=True)
                    sdist = fetch_sdist(scratch, log)
                with atomic_dir(folder) as tmp:
                    files = _extract(sdist, tmp)
                    found = sha256_file(tmp / CONVERTER) if (tmp / CONVERTER).is_file() else None
                    if found != CONVERTER_SHA256:
                        raise DataError(f"{sdist}: {CONVERTER} has sha256 {found}, not the pinned {CONVERTER_SHA256}")
                    store.seal(tmp, {
                        "kind": "llama.cpp-converter", "entry": CONVERTER, "sdist": SDIST,
                        "sdist_sha256": SDIST_SHA256, "converter_sha256": CONVERTER_SHA256,
                        "gguf_py_version": gguf_py_version(tmp), "files": files,
                        "seconds": round(time.perf_counter() - t0, 3),
                    })
            log(f"extracted llama.cpp's {CONVERTER} from {SDIST} into {folder}")
    return folder


def gguf_py_version(folder: Path) -> str | None:
    """The vendored gguf-py's version (its pyproject.toml)."""
    with contextlib.suppress(OSError):
        m = re.search(r'^version\s*=\s*"([^"]+)"', (folder / "gguf-py" / "pyproject.toml").read_text(), re.M)
        return m.group(1) if m else None
    return None


# ------------------------------------------------------------------ architectures
def supported_architectures(folder: Path) -> frozenset[str]:
    """The HF architectures (``config.json`` ``architectures``) the converter in ``folder``
    converts to a text model, read from its source without importing it."""
    init = folder / "conversion" / "__init__.py"
    if init.is_file():
        for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
                node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
                return frozenset(ast.literal_eval(node.value))
    names: set[str] = set()
    sources = [folder / CONVERTER, *sorted((folder / "conversion").glob("*.py"))]
    for path in sources:
        if path.is_file():
            for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", path.read_text(encoding="utf-8")):
                names.update(re.findall(r"""["']([^"']+)["']""", args))
    return frozenset(names)


def architecture(config: dict) -> str | None:
    """The architecture the converter picks for a text model (its ``get_model_architecture``):
    ``architectures[0]``, or the ``text_config``'s where it names one."""
    arch = (config.get("architectures") or [None])[0]
    if arch is None and isinstance(config.get("ssm_cfg"), dict):
        arch = config["ssm_cfg"].get("layer", "Mamba") + "ForCausalLM"
    text = config.get("text_config")
    if isinstance(text, dict) and text.get("architectures"):
        return text["architectures"][0]
    return arch


def config_problem(folder: Path) -> str | None:
    """What keeps llama.cpp's converter from reading ``folder`` at all (no readable config.json)."""
    config = folder / "config.json"
    if not config.is_file():
        return f"{str(folder)!r}: checkpoint folder without config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{config}: not readable JSON ({exc})"
    return None


def checkpoint_problem(folder: Path, supported: frozenset[str] | None = None, store: Store | None = None,
                       log: Callable[[str], Any] = print) -> str | None:
    """Why llama.cpp's converter would refuse the HF folder (no config.json, no architecture,
    one it does not convert), or None. ``supported`` defaults to the vendored converter's list
    (extracted into the store first if need be)."""
    why = config_problem(folder)
    if why:
        return why
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch = architecture(config) if isinstance(config, dict) else None
    if not arch:
        return f"{folder / 'config.json'}: names no 'architectures'; llama.cpp's {CONVERTER} needs one"
    if supported is None:
        supported = supported_architectures(ensure_converter(store, log))
    if arch in supported:
        return None
    close = difflib.get_close_matches(arch, sorted(supported), n=3)
    return (f"{str(folder)!r}: architecture {arch!r} is not one llama.cpp's {CONVERTER} converts to GGUF "
            f"({SDIST_SPEC}, {len(supported)} architectures"
            + (f"; closest: {', '.join(close)})" if close else ")"))


# ------------------------------------------------------------------ convert
def last_error_line(lines: list[str]) -> str:
    """The line that says why the converter failed: the last one naming an error (a traceback's
    ``XError: ...``, the converter's ``ERROR:hf-to-gguf:...``), else the last line."""
    text = [ln.strip() for ln in lines if ln.strip()]
    for ln in reversed(text):
        if re.search(r"error|exception|not supported", ln, re.I):
            return ln
    return text[-1] if text else "no output"


def convert(src: Path, out: Path, outtype: str = "f16", store: Store | None = None,
            log: Callable[[str], Any] = print, log_file: Path | None = None) -> dict[str, Any]:
    """Convert the HF checkpoint folder ``src`` into the GGUF ``out`` with llama.cpp's
    ``convert_hf_to_gguf.py --outtype OUTTYPE``. Its output goes to ``log`` line by line (and to
    ``log_file``). PlanError for a folder it would refuse; RuntimeError naming its last error line
    when it fails. Returns what a manifest records."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r}; allowed: {', '.join(OUTTYPES)}")
    why = config_problem(src)
    if why:
        raise PlanError(f"baseline.model: {why}")
    folder = ensure_converter(store, log)
    why = checkpoint_problem(src, supported_architectures(folder))
    if why:
        raise PlanError(f"baseline.model: {why}")
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(folder / "gguf-py"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, str(folder / CONVERTER), str(src), "--outfile", str(out), "--outtype", outtype]
    log(f"running llama.cpp's {CONVERTER} ({SDIST_SPEC}): {' '.join(cmd[1:])}")
    tail: collections.deque[str] = collections.deque(maxlen=200)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(log_file, "w", encoding="utf-8")) if log_file else None
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                errors="replace")
        stack.callback(lambda: proc.poll() is None and proc.kill())
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
            if sink:
                sink.write(line + "\n")
        rc = proc.wait()
    seconds = round(time.perf_counter() - t0, 3)
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"llama.cpp's {CONVERTER} failed on {src} (exit {rc}): {last_error_line(list(tail))}")
    arch = architecture(json.loads((src / "config.json").read_text(encoding="utf-8")))
    return {"converter": {"script": CONVERTER, "sha256": CONVERTER_SHA256, "sdist": SDIST,
                          "sdist_sha256": SDIST_SHA256, "outtype": outtype, "architecture": arch,
                          "seconds": seconds, "folder": str(folder)},
            "gguf_py_version": gguf_py_version(folder)}

