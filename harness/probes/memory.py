"""Peak memory of the runtime: this process and its children, host and GPU.

- Host: the kernel's peak RSS of this process (``ru_maxrss``, exact) and a background sampler
  (psutil, every ``interval`` seconds: 0.1 s) of this process's live descendants — vLLM runs its
  engine core and workers as child processes, which ``RUSAGE_CHILDREN`` only counts once they
  have ended and been waited for, and then only the largest one. The tree figure is the
  largest sum of RSS over this process and its children at one sampling instant (RSS counts
  shared pages in each process that maps them).
- GPU, where NVML (``nvidia-ml-py``) finds one: the largest sum of per-process GPU memory over
  the same processes (NVML's ``usedGpuMemory``; some virtualized drivers report none, then
  only the whole device's use is given), and the device's used memory.
- torch, when the session runs torch on CUDA in this process: ``max_memory_reserved`` (what
  the caching allocator holds: what the process needs) and ``max_memory_allocated`` (live
  tensors only: it understates the need), both since the process started.

- ``model_rss_gib``: this process's peak RSS less its RSS just before the model was loaded (the
  runtime's libraries already imported: ``Runtime.import_modules``): the model's own host
  memory (weights read, KV cache, compute buffers), what the memory-fit planner predicts.

The sampler starts when the probe object is created — in the probe worker that is before the
model is loaded — so the load and every other probe fall inside the sampled window.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
import time
from typing import Any

from harness.probes import Probe, ProbeContext, record_machine

GIB = 1024**3


def peak_rss_bytes() -> int:
    """max(peak RSS of this process, of its largest waited-for child) from getrusage."""
    # ru_maxrss is KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return max(own, children)


def _self_peak_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class TreeSampler:
    """Samples RSS (and NVML GPU memory) of a process and its descendants in a daemon thread.

    The list of descendants is refreshed every ``rescan`` seconds (scanning /proc for children
    costs more than reading a few processes' RSS); ``sample()`` can also be called directly.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.1, rescan: float = 1.0, gpu: bool = True):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid or os.getpid())
        try:
            self._root_cmdline = self.root.cmdline()
        except psutil.Error:  # pragma: no cover
            self._root_cmdline = None
        self.interval = interval
        self.rescan = rescan
        self.gpu = gpu
        self._children: dict[int, Any] = {}
        self._ignored: set[int] = set()
        self._last_scan = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        self.peak_self = 0
        self.peak_children = 0
        self.peak_tree = 0
        self.peak_per_pid: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.peak_vram_tree: int | None = None
        self.peak_vram_per_pid: dict[int, int] = {}
        self.peak_device_used: int | None = None
        self.device_used_at_start: int | None = None
        if gpu:
            from harness.probes.gpu import nvml_device_used

            self.device_used_at_start = nvml_device_used()

    def _scan(self) -> None:
        now = time.monotonic()
        if self._last_scan and now - self._last_scan < self.rescan:
            return
        self._last_scan = now
        try:
            kids = self.root.children(recursive=True)
        except self._psutil.Error:
            kids = []
        fresh = {}
        for p in kids:
            if p.pid in self._ignored:
                continue
            if p.pid not in self.names:
                with contextlib.suppress(self._psutil.Error):
                    # multiprocessing's resource tracker is shared bookkeeping, not the runtime's
                    # (harness.runtimes.vllm leaves it out of its workers the same way)
                    if any("resource_tracker" in part for part in p.cmdline()):
                        self._ignored.add(p.pid)
                        continue
                    self.names[p.pid] = p.name()
            fresh[p.pid] = self._children.get(p.pid, p)
        self._children = fresh

    def _forked_not_exec(self, p) -> bool:
        """A child caught between fork and exec still maps its parent's pages (copy-on-write) and
        shows the parent's RSS for a moment: not memory of its own. Seen as a young child with
        the parent's command line; a fork that never execs (multiprocessing's fork start
        method) counts again after a second."""
        try:
            return time.time() - p.create_time() < 1.0 and p.cmdline() == self._root_cmdline
        except self._psutil.Error:
            return True

    def sample(self) -> None:
        with self._lock:
            self._scan()
            try:
                own = self.root.memory_info().rss
            except self._psutil.Error:
                own = 0
            kids = 0
            for pid, p in list(self._children.items()):
                if self._forked_not_exec(p):
                    continue
                try:
                    rss = p.memory_info().rss
                except self._psutil.Error:
                    self._children.pop(pid, None)
                    continue
                kids += rss
                self.peak_per_pid[pid] = max(self.peak_per_pid.get(pid, 0), rss)
            self.peak_per_pid[self.root.pid] = max(self.peak_per_pid.get(self.root.pid, 0), own)
            self.peak_self = max(self.peak_self, own)
            self.peak_children = max(self.peak_children, kids)
            self.peak_tree = max(self.peak_tree, own + kids)
            self.samples += 1
            if self.gpu:
                self._sample_gpu()

    def _sample_gpu(self) -> None:
        from harness.probes.gpu import nvml, nvml_device_used, nvml_process_vram

        if nvml() is None:
            self.gpu = False
            return
        pids = {self.root.pid, *self._children}
        per = nvml_process_vram(pids)
        if per:
            self.peak_vram_tree = max(self.peak_vram_tree or 0, sum(per.values()))
            for pid, v in per.items():
                self.peak_vram_per_pid[pid] = max(self.peak_vram_per_pid.get(pid, 0), v)
        used = nvml_device_used()
        if used is not None:
            self.peak_device_used = max(self.peak_device_used or 0, used)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # pragma: no cover - a sampler must never take the probe down
                pass
            self._stop.wait(self.interval)

    def start(self) -> TreeSampler:
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="quantgate-memory-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


_SAMPLER: TreeSampler | None = None


def watch(interval: float = 0.1) -> TreeSampler:
    """The process-wide sampler of this process's tree, started on first use. At 0.1 s (children
    rescanned every second) it costs ~0.4% of one core (measured with 75 processes running)."""
    global _SAMPLER
    if _SAMPLER is None or _SAMPLER.root.pid != os.getpid():
        _SAMPLER = TreeSampler(interval=interval).start()
    return _SAMPLER


def torch_peaks() -> dict[str, float]:
    """torch's CUDA allocator peaks of this process (every device it used), GiB; empty when
    torch is not loaded or never initialized CUDA."""
    from harness.probes.gpu import torch_cuda

    torch = torch_cuda()
    if torch is None:
        return {}
    reserved = sum(torch.cuda.max_memory_reserved(i) for i in range(torch.cuda.device_count()))
    allocated = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    return {"torch_max_reserved_gib": reserved / GIB, "torch_max_allocated_gib": allocated / GIB}


class MemoryProbe(Probe):
    name = "memory"
    metrics = {
        "peak_rss_gib": "lower",
        "peak_rss_self_gib": "lower",
        "peak_rss_children_gib": "lower",
        "peak_rss_tree_gib": "lower",
        "peak_vram_gib": "lower",
        "peak_vram_self_gib": "lower",
        "peak_device_vram_used_gib": "lower",
        "torch_max_reserved_gib": "lower",
        "torch_max_allocated_gib": "lower",
        "model_rss_gib": "lower",
    }
    order = 100  # the peak after the model's workloads (roofline, which times a copy, runs after)

    def __init__(self):
        # before the model is loaded (the probe worker creates every probe first)
        self.sampler = watch()

    def measure(self, ctx: ProbeContext, params) -> dict[str, float]:
        record_machine(ctx)
        s = self.sampler
        s.sample()
        own_peak = _self_peak_bytes()
        waited_children = peak_rss_bytes()  # also covers children that already ended
        out = {
            # the figure plans gate on: the largest of the exact own peak, the sampled tree
            # and the largest finished child
            "peak_rss_gib": max(own_peak, s.peak_tree, waited_children) / GIB,
            "peak_rss_self_gib": own_peak / GIB,
            "peak_rss_children_gib": s.peak_children / GIB,
            "peak_rss_tree_gib": max(s.peak_tree, own_peak) / GIB,
        }
        if s.peak_vram_tree is not None:
            out["peak_vram_gib"] = s.peak_vram_tree / GIB
            out["peak_vram_self_gib"] = s.peak_vram_per_pid.get(s.root.pid, 0) / GIB
        if s.peak_device_used is not None:
            out["peak_device_vram_used_gib"] = s.peak_device_used / GIB
        before = ctx.notes.get("rss_before_load_bytes")
        if before:  # the model's own memory: this process's peak less what it held before loading
            out["model_rss_gib"] = max(own_peak - before, 0) / GIB
        out.update(torch_peaks())
        ctx.notes["memory"] = {
            "samples": s.samples, "interval_s": s.interval,
            "peak_rss_per_pid_gib": {f"{pid} {s.names.get(pid, 'self' if pid == s.root.pid else '?')}":
                                     round(v / GIB, 4) for pid, v in s.peak_per_pid.items()},
            "peak_vram_per_pid_gib": {str(pid): round(v / GIB, 4) for pid, v in s.peak_vram_per_pid.items()},
            "device_vram_used_at_start_gib": (None if s.device_used_at_start is None
                                              else round(s.device_used_at_start / GIB, 4)),
            "nvml": s.gpu,
        }
        if s.peak_device_used is not None and s.peak_vram_tree is None:
            ctx.notes["memory"]["vram_note"] = (
                "NVML reported no per-process GPU memory for this process tree; "
                "peak_device_vram_used_gib is the whole device's use (other processes included)")
        return out
