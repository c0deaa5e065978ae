"""What a figure was measured on: recorded with every run."""

from __future__ import annotations

import os
import platform

from harness.registry import package_version

PACKAGES = ("quantgate", "llama-cpp-python", "gguf", "torch", "transformers", "mlflow", "numpy", "pydantic")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def distributions() -> dict[str, str]:
    """Every distribution this interpreter can import (``importlib.metadata``): name -> version,
    sorted by name; the first found on ``sys.path`` wins, as for an import."""
    from importlib.metadata import distributions as dists

    out: dict[str, str] = {}
    for d in dists():
        name = (d.metadata["Name"] or "").strip()
        if name and name not in out:
            out[name] = d.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def describe(all_distributions: bool = False) -> dict:
    """This machine and the key package versions; ``all_distributions``: also every installed
    distribution (``distributions``), as a run records it once for its release bundle."""
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    out = {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus_usable": usable,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": None,
        "packages": {p: package_version(p) for p in PACKAGES},
    }
    if all_distributions:  # the run interpreter's whole package list
        out["distributions"] = distributions()
    return out
