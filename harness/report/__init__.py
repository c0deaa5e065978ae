"""Reports of one run: results.json, summary.md (``harness.report.markdown``) and report.html
(``harness.report.html``).

Everything here reads the typed results (``harness.results.RunResults``); results.json is
written from ``RunResults.to_json()`` (schema ``quantgate.results/2``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

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


def _write_text_atomic(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file beside it and a rename: a reader (or a
    crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_reports(results: RunResults, run_dir: Path) -> dict[str, Path]:
    """summary.md, results.json (``results.to_json()``, schema /2, written atomically) and
    report.html into ``run_dir``; returns their paths (``html_error`` instead of ``html``
    when the page could not be written)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "results.json"  # first: a report that fails must never cost the results
    _write_text_atomic(out, results.to_json())
    summary = run_dir / "summary.md"
    summary.write_text(summary_markdown(results))
    paths: dict = {"summary": summary, "results": out}
    try:  # report.html (figures) last: a plot that fails must never cost the results above
        from harness.report.html import write_html

        paths["html"] = write_html(results, run_dir)
    except Exception as exc:
        paths["html_error"] = f"{type(exc).__name__}: {exc}"
    return paths
