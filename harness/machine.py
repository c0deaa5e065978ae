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


def describe() -> dict:
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus_usable": usable,
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "gpu": None,
        "packages": {p: package_version(p) for p in PACKAGES},
    }
