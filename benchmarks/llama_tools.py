"""llama.cpp's own command-line tools (llama-perplexity, llama-bench), built from the llama.cpp
tree that llama-cpp-python's source distribution vendors: the same revision as the runtime
quantgate loads, so a difference between the two is quantgate's, not llama.cpp's.

The sdist is downloaded once with pip (or taken from ``--sdist``), checked against its pinned
sha256, and the two tools are built with CMake into ``$QUANTGATE_HOME/tools/<sdist sha>/``
(about 8 minutes on 2 cores; cached afterwards). The build uses llama.cpp's defaults for a
CPU build (as pip's build of llama-cpp-python does): Release, native CPU flags.

Usage: python benchmarks/llama_tools.py [--sdist FILE]   # prints the folder with the binaries
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SPEC = "llama-cpp-python==0.3.36"
from harness.converter import SDIST_SHA256  # noqa: E402, I001  (one pin, shared with the converter)
TOOLS = ("llama-perplexity", "llama-bench")


def tools_dir() -> Path:
    from harness.store import quantgate_home

    return quantgate_home() / "tools" / f"llama.cpp-{SDIST_SHA256[:12]}"


def fetch_sdist(dest: Path, given: Path | None = None) -> Path:
    """The pinned sdist: ``given``, or one already in ``dest``, or ``pip download``'s (the
    converter's fetch, ``harness.converter.fetch_sdist``)."""
    from harness.converter import fetch_sdist as fetch

    return fetch(dest, given=given)


def build(sdist: Path | None = None, jobs: int | None = None, log=print) -> dict:
    """Build (or reuse) the tools; returns {"bin": folder, "build_seconds": s or None, ...}."""
    out = tools_dir()
    bins = {t: out / "bin" / t for t in TOOLS}
    if all(p.is_file() for p in bins.values()):
        return {"bin": str(out / "bin"), "build_seconds": None, "cached": True, "sdist_sha256": SDIST_SHA256}
    src_tar = fetch_sdist(out / "sdist", sdist)
    jobs = jobs or len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llama-tools-") as tmp:
        tmp = Path(tmp)
        with tarfile.open(src_tar) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        src = next(tmp.glob("*/vendor/llama.cpp"))
        build_dir = tmp / "build"
        flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
                 "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_OPENSSL=OFF"]
        log(f"building {', '.join(TOOLS)} from {src_tar.name} ({jobs} jobs; ~8 min on 2 cores)")
        subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), *flags], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build_dir), "--target", *TOOLS, "-j", str(jobs)], check=True,
                       stdout=subprocess.DEVNULL)
        (out / "bin").mkdir(parents=True, exist_ok=True)
        for tool, dst in bins.items():
            shutil.copy2(build_dir / "bin" / tool, dst)
    seconds = round(time.perf_counter() - t0, 1)
    (out / "build.txt").write_text(f"built from {SDIST} (sha256 {SDIST_SHA256}) in {seconds} s, {jobs} jobs\n"
                                   f"cmake flags: {' '.join(flags)}\n")
    return {"bin": str(out / "bin"), "build_seconds": seconds, "cached": False, "sdist_sha256": SDIST_SHA256,
            "cmake_flags": flags}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", type=Path, help="a local copy of " + SDIST)
    ap.add_argument("--jobs", type=int)
    args = ap.parse_args()
    info = build(args.sdist, args.jobs)
    print(info["bin"])


if __name__ == "__main__":
    main()
