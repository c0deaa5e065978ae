"""Run one stage in a fresh process.

A backend that segfaults or runs out of memory takes down only its worker; the
run records the stage as an error and goes on. Backend chatter (llama.cpp logs
at the C level) goes to the stage's log file instead of the terminal.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any


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


def run_isolated(fn: Callable, *args: Any, log_path: Path | None = None,
                 on_poll: Callable[[], None] | None = None, poll_seconds: float = 0.5, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a spawned process; its exception is re-raised here.
    ``on_poll`` is called every ``poll_seconds`` while the worker runs (progress display)."""
    # OpenMP busy-waiting makes 2-thread runs slower than 1 on a loaded 2-core machine
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if log_path:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        future = pool.submit(_trampoline, fn, str(log_path) if log_path else None, args, kwargs)
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
