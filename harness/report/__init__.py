"""Reports of one run: results.json, summary.md (``harness.report.markdown``) and report.html
(``harness.report.html``).

Everything here reads the typed results (``harness.results.RunResults``); results.json is
written from ``RunResults.to_json()`` (schema ``quantgate.results/2``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from harness.errors import QuantgateError
from harness.report.markdown import (  # noqa: F401  (the package's public names)
    ARROWS,
    metric_better,
    planner_lines,
    probe_lines,
    scoring_note,
    summary_markdown,
    unsandboxed_note,
    unsandboxed_suites,
)
from harness.results import RunResults


class ReportError(QuantgateError):
    """The reports folder cannot be written (read-only, a file, a full disk); the message says
    where the results are, if anywhere."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_text_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file beside it, synced, and a rename: a reader
    (or a crash, or a full disk) never sees half a file, and a failed write leaves no
    temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a report from CI's other users
            _write_all(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_reports_dir(reports_dir: Path) -> None:
    """Before a run, not after it: the reports folder is a folder (made if missing) that takes
    a file (a small one is written, synced and removed). ReportError otherwise."""
    from harness.failures import os_error_cause

    d = Path(reports_dir)
    if d.exists() and not d.is_dir():
        raise ReportError(f"{d}: the reports folder (--reports-dir) is a file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{d}: cannot create the reports folder (--reports-dir): {os_error_cause(exc)}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-quantgate-probe-", dir=d)
        try:
            try:
                _write_all(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as exc:
        raise ReportError(f"{d}: cannot write to the reports folder (--reports-dir): {os_error_cause(exc)}") from None


def fallback_results_path(run_id: str) -> Path:
    """Where a run that cannot write its reports folder keeps its results.json: the store."""
    from harness.store import quantgate_home

    return quantgate_home() / "runs" / run_id / "results.json"


def _save_fallback(results: RunResults, failed: Path, exc: OSError) -> ReportError:
    """results.json to the store when ``failed`` could not be written; the error to raise,
    naming both (or saying the results are lost)."""
    from harness.failures import os_error_cause

    head = f"cannot write the run's reports: {failed}: {os_error_cause(exc)}"
    fallback = fallback_results_path(results.run_id)
    try:
        _write_text_atomic(fallback, results.to_json())
    except OSError as exc2:
        return ReportError(f"{head}; nor the fallback {fallback}: {os_error_cause(exc2)}; the results are lost")
    return ReportError(f"{head}; the results are in {fallback}")


def _inside(filename: str | bytes | None, folder: Path) -> bool:
    """Is an OSError's file in ``folder`` (None: the error named no file, so it was ours)?"""
    if filename is None:
        return True
    with contextlib.suppress(ValueError, OSError):
        Path(os.fsdecode(filename)).resolve().relative_to(folder.resolve())
        return True
    return False


def write_reports(results: RunResults, run_dir: Path) -> dict[str, Path]:
    """results.json (``results.to_json()``, schema /2), summary.md and report.html into
    ``run_dir``, each written atomically; returns their paths (``html_error`` instead of
    ``html`` when the page could not be drawn). A folder that cannot be written (read-only, a
    file, a full disk) is a ReportError saying where the results are: ``run_dir``'s
    results.json when it was written, else a copy in the store (``fallback_results_path``)."""
    from harness.failures import os_error_cause

    run_dir = Path(run_dir)
    out = run_dir / "results.json"  # first: a report that fails must never cost the results
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _save_fallback(results, run_dir, exc) from None
    try:
        _write_text_atomic(out, results.to_json())
    except OSError as exc:
        raise _save_fallback(results, out, exc) from None
    summary = run_dir / "summary.md"
    try:
        _write_text_atomic(summary, summary_markdown(results))
    except OSError as exc:
        raise ReportError(f"cannot write the run's reports: {summary}: {os_error_cause(exc)}; "
                          f"the results are in {out}") from None
    paths: dict = {"summary": summary, "results": out}
    try:  # report.html (figures) last: a plot that fails must never cost the results above
        from harness.report.html import write_html

        paths["html"] = write_html(results, run_dir)
    except OSError as exc:
        if not _inside(exc.filename, run_dir):  # a library's own file (a font cache): a note
            paths["html_error"] = f"{type(exc).__name__}: {exc}"
            return paths
        with contextlib.suppress(OSError):  # write_html's temporary file
            (run_dir / "report.html.tmp").unlink()
        raise ReportError(f"cannot write the run's reports: {run_dir / 'report.html'}: {os_error_cause(exc)}; "
                          f"the results are in {out}") from None
    except Exception as exc:
        paths["html_error"] = f"{type(exc).__name__}: {exc}"
    return paths
