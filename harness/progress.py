"""Progress of a run: what the pipeline reports while it produces, evaluates and probes.

The pipeline calls a :class:`Progress`; the base class does nothing, so it can always call
it. ``make_progress()`` picks the display:

- :class:`RichProgress` on a terminal: a live area with one bar per (record, step) -- the
  record, the step, items done/total, items/s and the time left; a finished step turns
  into one ``✓``/``✗`` line above the live area, and so do log lines;
- :class:`PlainProgress` elsewhere (CI, a pipe, a file): one line per finished step, e.g.
  ``[Q4_K_M] mmlu: ok, 100 items in 12.3 s (8.1 items/s)``, plus the log lines, and
  nothing per item (no redraw spam in CI logs).

Calls may come from any thread (e.g. a thread polling a worker's item count): every
implementation takes a lock.

How the pipeline calls it, per record (baseline first, then the candidates)::

    progress.run_started(run_id, plan.name, [baseline_name, *candidate_names])
    progress.step_started("Q4_K_M", "mmlu", total=100)      # total: items, if known
    progress.step_advanced("Q4_K_M", "mmlu", done=40)       # absolute count so far
    progress.step_finished("Q4_K_M", "mmlu", "ok")          # or "reused", or "error", detail=...
    progress.log("free text")                               # what log=print printed before
    progress.close()                                        # once, at the end (also on errors)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["Progress", "PlainProgress", "RichProgress", "make_progress", "is_interactive"]


class Progress:
    """The interface the pipeline reports to. Every method is a no-op here."""

    def run_started(self, run_id: str, plan: str, records: list[str]) -> None:
        """A run begins; ``records``: the baseline's name, then the candidates' names."""

    def step_started(self, record: str, step: str, total: int | None = None) -> None:
        """``record`` begins ``step`` ("derive", "produce", "evaluate", "probe", or a suite
        id such as "mmlu"); ``total``: the number of items, if known."""

    def step_advanced(self, record: str, step: str, done: int, total: int | None = None) -> None:
        """``done`` items of ``step`` are finished so far (an absolute count, not a delta)."""

    def step_finished(self, record: str, step: str, status: str = "ok", detail: str = "") -> None:
        """``step`` ended: ``status`` "ok", "reused" or "error"; ``detail`` e.g.
        "24 items in 12.3 s" or the error line (default: what was counted)."""

    def log(self, text: str) -> None:
        """Free text (what the pipeline printed with ``log=print``)."""

    def close(self) -> None:
        """The run is over: stop any live display. Safe to call more than once."""


def _ci() -> bool:
    """The CI environment variable is set (to anything but an explicit no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def is_interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: stdout) is a terminal a person watches: a TTY, outside
    CI, and not a dumb terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        tty = False
    return tty and not _ci() and os.environ.get("TERM", "") != "dumb"


def make_progress(stream: IO[str] | None = None) -> Progress:
    """RichProgress when ``stream`` (default: stdout) is a TTY and CI is not set, else
    PlainProgress."""
    if is_interactive(stream):
        try:
            from rich.console import Console
        except ImportError:  # rich is a dependency; a broken install still gets plain lines
            return PlainProgress(stream)
        return RichProgress(Console(file=stream) if stream is not None else None)
    return PlainProgress(stream)


@dataclass
class _Step:
    started: float
    done: int | None = None
    total: int | None = None
    task: Any = None  # rich TaskID in RichProgress


def _key(record: str, step: str) -> tuple[str, str]:
    return (record, step)


def _summary(st: _Step | None, status: str, detail: str, now: float) -> str:
    """``ok, 100 items in 12.3 s (8.1 items/s)``: the detail if the pipeline gave one, else
    what was counted."""
    if detail:
        return f"{status}, {detail}"
    if st is None:
        return status
    elapsed = max(now - st.started, 0.0)
    if st.done is not None:
        rate = f" ({st.done / elapsed:.1f} items/s)" if elapsed > 0 and st.done > 0 else ""
        return f"{status}, {st.done} items in {elapsed:.1f} s{rate}"
    return f"{status}, {elapsed:.1f} s"


def finished_line(record: str, step: str, summary: str) -> str:
    return f"[{record}] {step}: {summary}"


class PlainProgress(Progress):
    """No terminal: one line per finished step, and the log lines; nothing per item."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream  # None: sys.stdout at the time of each write
        self._lock = threading.RLock()
        self._steps: dict[tuple[str, str], _Step] = {}

    def _write(self, text: str) -> None:
        out = sys.stdout if self._stream is None else self._stream
        print(text, file=out, flush=True)

    def step_started(self, record: str, step: str, total: int | None = None) -> None:
        with self._lock:
            self._steps[_key(record, step)] = _Step(time.monotonic(), total=total)

    def step_advanced(self, record: str, step: str, done: int, total: int | None = None) -> None:
        with self._lock:
            st = self._steps.setdefault(_key(record, step), _Step(time.monotonic()))
            st.done = done
            if total is not None:
                st.total = total

    def step_finished(self, record: str, step: str, status: str = "ok", detail: str = "") -> None:
        with self._lock:
            st = self._steps.pop(_key(record, step), None)
            self._write(finished_line(record, step, _summary(st, status, detail, time.monotonic())))

    def log(self, text: str) -> None:
        with self._lock:
            self._write(text)

    def close(self) -> None:
        with self._lock:
            self._steps.clear()


class RichProgress(Progress):
    """A terminal: a rich live area with one bar per running (record, step); finished steps
    and log lines are printed above it."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as _Bars
        from rich.text import Text

        class RateColumn(ProgressColumn):
            """items/s of the step (rich's own speed estimate, else done / elapsed)."""

            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                if speed is None and task.completed and task.elapsed:
                    speed = task.completed / task.elapsed
                return Text("" if speed is None else f"{speed:.1f} items/s", style="progress.data.speed")

        self._Text = Text
        self.console = console if console is not None else Console()
        self._lock = threading.RLock()
        self._steps: dict[tuple[str, str], _Step] = {}
        self._live = False
        self._closed = False
        self._bars = _Bars(
            SpinnerColumn(),
            TextColumn("{task.fields[record]}", markup=False, style="bold"),
            TextColumn("{task.fields[step]}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,  # only the ✓/✗ lines stay once the run is over
            refresh_per_second=8,
        )

    def _start(self) -> None:
        if not self._live and not self._closed:
            self._bars.start()
            self._live = True

    def _print(self, text: Any) -> None:
        # console.print while the live area runs prints above it
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def run_started(self, run_id: str, plan: str, records: list[str]) -> None:
        with self._lock:
            self._start()

    def _step(self, record: str, step: str, total: int | None) -> _Step:
        st = self._steps.get(_key(record, step))
        if st is None:
            self._start()
            st = _Step(time.monotonic(), total=total)
            st.task = self._bars.add_task(f"{record} {step}", total=total, record=record, step=step)
            self._steps[_key(record, step)] = st
        return st

    def step_started(self, record: str, step: str, total: int | None = None) -> None:
        with self._lock:
            old = self._steps.pop(_key(record, step), None)
            if old is not None:  # started again: a fresh bar
                self._bars.remove_task(old.task)
            self._step(record, step, total)

    def step_advanced(self, record: str, step: str, done: int, total: int | None = None) -> None:
        with self._lock:
            st = self._step(record, step, total)
            st.done = done
            if total is not None:
                st.total = total
                self._bars.update(st.task, completed=done, total=total)
            else:
                self._bars.update(st.task, completed=done)

    def step_finished(self, record: str, step: str, status: str = "ok", detail: str = "") -> None:
        with self._lock:
            st = self._steps.pop(_key(record, step), None)
            if st is not None:
                self._bars.remove_task(st.task)
            line = finished_line(record, step, _summary(st, status, detail, time.monotonic()))
            ok = status != "error"
            text = self._Text()
            text.append("✓ " if ok else "✗ ", style="bold green" if ok else "bold red")
            text.append(line, style="dim" if status == "reused" else ("" if ok else "red"))
            self._print(text)

    def log(self, text: str) -> None:
        with self._lock:
            self._print(self._Text(text))

    def close(self) -> None:
        with self._lock:
            if self._live:
                self._bars.stop()
                self._live = False
            self._closed = True
            self._steps.clear()


class EventFileProgress(Progress):
    """A Progress for stages that run in another process or on another node (Ray tasks): each
    call is appended as one JSON line to ``path`` (on the run folder every node sees), which
    the driver replays into its own display with :class:`EventReplay`."""

    def __init__(self, path: str | os.PathLike, where: str | None = None) -> None:
        self.path = str(path)
        self.where = where  # e.g. "node 10.0.0.5, GPU 1": shown once per step start
        self._lock = threading.Lock()

    def _emit(self, method: str, *args: Any) -> None:
        import json

        line = json.dumps({"m": method, "a": list(args)}, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def step_started(self, record: str, step: str, total: int | None = None) -> None:
        self._emit("step_started", record, step, total)

    def step_advanced(self, record: str, step: str, done: int, total: int | None = None) -> None:
        self._emit("step_advanced", record, step, done, total)

    def step_finished(self, record: str, step: str, status: str = "ok", detail: str = "") -> None:
        self._emit("step_finished", record, step, status, detail)

    def log(self, text: str) -> None:
        self._emit("log", text)


class EventReplay:
    """Reads an :class:`EventFileProgress` file from where it left off and calls ``progress``."""

    _METHODS = ("step_started", "step_advanced", "step_finished", "log")

    def __init__(self, path: str | os.PathLike, progress: Progress) -> None:
        self.path, self.progress, self.offset = str(path), progress, 0

    def poll(self) -> None:
        import json

        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("m") in self._METHODS:
                getattr(self.progress, event["m"])(*event.get("a", []))
