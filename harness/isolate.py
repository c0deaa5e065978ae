"""Run one stage in a fresh process.

A backend that segfaults or runs out of memory takes down only its worker; the
run records the stage as an error and goes on. Backend chatter (llama.cpp logs
at the C level) goes to the stage's log file instead of the terminal.

A worker never outlives the process that started it, ``kill -9`` included, and takes
what it started (a vLLM engine subprocess, a sandbox) with it:

- the worker leads its own process group; what it starts is in that group (unless it
  leaves it), and a terminal's Ctrl-C reaches only the parent, which stops the worker;
- on Linux the worker asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``); that holds while the worker is busy in C code with the
  GIL held. The signal fires when the parent *thread* that forked it exits: a spawn-context
  ``ProcessPoolExecutor`` starts its worker in ``submit()`` (CPython 3.9+; 3.11's
  ``concurrent/futures/process.py`` calls ``_adjust_process_count`` there), that is in the
  thread that calls ``run_isolated``, which then waits in it for the result; so it fires only
  when the caller is gone. Elsewhere (no ``prctl``) a watchdog thread polls ``getppid``;
- the SIGKILL ends the worker but not its group: a guardian process (one per parent
  process, in a session of its own so a terminal's signals miss it) reads a pipe from the
  parent, in which the parent registers each running worker's group; when the pipe closes
  (the parent ended, however) it SIGKILLs every group still registered, then exits;
- when a stage ends (result, error, Ctrl-C) the worker's group is killed: nothing the
  worker started and left behind survives it.

Ctrl-C (``KeyboardInterrupt``) while a stage runs kills the worker's group at once (not
after the stage, as a pool's shutdown would wait) and re-raises: the stage's result is
lost, what it already put in the store (a suite's journal) is kept, and what it was writing
is a temporary entry a later ``Store`` removes (``harness.store.clean_stale_temp``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerDied(RuntimeError):
    pass


def _trampoline(fn: Callable, log_path: str | None, args: tuple, kwargs: dict) -> Any:
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    return fn(*args, **kwargs)


# ------------------------------------------------------------------ in the worker
def _end_own_group() -> None:
    """SIGKILL this process's group if it leads one (itself and what it started), else exit."""
    if os.getpgid(0) == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    _end_own_group()


#: in a worker whose runtime libraries the pool's initializer imported: whether numpy was already
#: loaded then (the order a CUDA llama-cpp-python build crashes with); None where none ran
_numpy_before_preload: bool | None = None


def numpy_before_preload() -> bool | None:
    """Whether this worker's initializer found numpy loaded before it imported the runtime's
    libraries; None in a process where no initializer preloaded anything."""
    return _numpy_before_preload


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent (the thread that
    started it) exits; False where that is not available. A child that leaves the worker's
    process group (``start_new_session``) calls it first thing, to die with the worker."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _worker_start(parent_pid: int, preload: tuple[str, ...] = ()) -> None:
    """The pool's initializer: lead a process group, die with the parent (see the module's note);
    then import ``preload`` (the runtime's libraries), before the task is unpickled: unpickling
    imports the worker function's module (``harness.stages`` loads numpy), and a CUDA build of
    llama-cpp-python loaded after numpy segfaults at model load (benchmarks/README.md)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    armed = set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        _end_own_group()
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="quantgate-parent-watchdog",
                         daemon=True).start()
    if preload:  # what the probe worker records as "numpy loaded before the runtime's libraries"
        global _numpy_before_preload
        _numpy_before_preload = "numpy" in sys.modules
    for module in preload:
        with contextlib.suppress(ImportError):  # a missing library: the task itself says so
            importlib.import_module(module)


# ------------------------------------------------------------------ in the parent
_GUARD_CODE = """
import os, signal, sys
groups = set()
for line in sys.stdin:  # "+PID" / "-PID" from the parent; EOF: the parent is gone
    (groups.add if line[:1] == "+" else groups.discard)(int(line[1:]))
for pid in groups:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


class _Guardian:
    """The guardian process of this parent (see the module's note), started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = 0  # the pid that started it (a forked child starts its own)
        self._groups: set[int] = set()

    def _send(self, sign: str, pids: list[int]) -> None:
        with self._lock:
            if sign == "+":
                self._groups.update(pids)
            else:
                pids = [pid for pid in pids if pid in self._groups]
                self._groups.difference_update(pids)
            if not pids:
                return
            lines = "".join(f"{sign}{pid}\n" for pid in pids)
            proc = self._proc
            if proc is None or self._owner != os.getpid() or proc.poll() is not None:
                if sign == "-":
                    return  # a guardian that is gone holds nothing to forget
                if self._owner != os.getpid():  # a forked child: its own guardian, its own groups
                    self._groups = set(pids)
                try:
                    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD_CODE], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True, text=True)
                except OSError:
                    return  # no guardian: the workers still die with this process (PR_SET_PDEATHSIG)
                self._proc, self._owner = proc, os.getpid()
                lines = "".join(f"+{pid}\n" for pid in self._groups)  # a restarted guardian: all of them
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(lines)
                proc.stdin.flush()

    def register(self, pids: Iterable[int]) -> None:
        self._send("+", list(pids))

    def unregister(self, pids: Iterable[int]) -> None:
        self._send("-", list(pids))


_GUARDIAN = _Guardian()


def _workers(pool: ProcessPoolExecutor) -> dict[int, Any]:
    """The pool's worker processes by pid (started in ``submit``)."""
    return dict(getattr(pool, "_processes", None) or {})


def _kill_groups(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def run_isolated(fn: Callable, *args: Any, log_path: Path | None = None,
                 on_poll: Callable[[], None] | None = None, poll_seconds: float = 0.5, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a spawned process; its exception is re-raised here.
    ``on_poll`` is called every ``poll_seconds`` while the worker runs (progress display).
    On Ctrl-C (or any ``BaseException`` that is not an ``Exception``) the worker and its
    process group are killed at once and the exception re-raised."""
    # OpenMP busy-waiting makes 2-thread runs slower than 1 on a loaded 2-core machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"), initializer=_worker_start,
                               initargs=(os.getpid(), tuple(kwargs.get("preload") or ())))
    workers: dict[int, Any] = {}
    stopped = False
    try:
        future = pool.submit(_trampoline, fn, str(log_path) if log_path else None, args, kwargs)
        workers = _workers(pool)
        _GUARDIAN.register(workers)
        try:
            if on_poll is not None:
                while True:
                    try:
                        return future.result(timeout=poll_seconds)
                    except FuturesTimeout:
                        on_poll()
            return future.result()
        except BrokenProcessPool:
            where = f"; see {log_path}" if log_path else ""
            raise WorkerDied(f"the worker process died (crash or out of memory){where}") from None
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C: stop the stage now, not when it ends
            stopped = True
            workers = workers or _workers(pool)
            for proc in workers.values():
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    proc.kill()  # the worker, also before it leads its group
            _kill_groups(workers)
        raise
    finally:
        try:
            if not stopped:
                pool.shutdown(wait=True)  # the worker exits
        finally:
            _kill_groups(workers)  # and what it started and left behind goes with it
            if stopped:
                pool.shutdown(wait=False, cancel_futures=True)
            _GUARDIAN.unregister(workers)
