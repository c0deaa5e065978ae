"""Executor figures (issue 14): local vs Ray on one plan, kill -9 mid-suite then rerun, Ray's own
cost per task. Writes reports/bench/executors.json (figures, not assertions).

Every measured run is ``python -m harness run PLAN --reports-dir D --no-tracking [--executor ray]``
in a subprocess with a fresh ``QUANTGATE_HOME`` (an empty store) unless a section says it reuses
one; the figures come from each run's results.json. Sections:

- local_vs_ray: a 4-candidate CPU plan on the embedded model (F16 baseline and GGUF Q8_0, Q6_K,
  Q4_K_M, Q3_K_M, all on llama.cpp with 1 thread; WikiText-2 perplexity, 16 windows x 512 tokens;
  the size probe only), once with the local executor and once with ``--executor ray`` (no
  address: quantgate starts a Ray cluster of this machine for the run, 2 CPUs, so two 1-thread
  candidates at a time), each from an empty store. Wall times, speed-up, whether verdicts and
  every record's item records are identical, and where each stage ran (placement).
- kills: kill -9 at about half of a 200-item suite, then run the same command again on the same
  store. Kinds: ``cli`` (the CLI's whole process group, os.killpg), ``worker`` (the local
  executor's evaluate worker: the spawned process whose parent is the CLI; the run records that
  candidate as ERROR and goes on), ``ray_worker`` (the Ray worker running
  ``quantgate:<record>:candidate``; Ray retries the task once and it resumes in the same run),
  and ``cli_mmlu`` (the CLI's group during an lm-eval suite: MMLU, 200 questions, on the
  embedded model). The fake plans score 200 windows with ``score_delay_ms`` (a speed-only
  param: the same result key as without it), chunks of 20 items; MMLU's chunks are 50 items.
  The kill comes after half the items plus half a chunk's time (so a chunk is in flight).
- overhead: the fake plan with 4 trivial candidates (2 windows, no probes): local vs Ray wall
  time (quantgate's own local cluster, and a cluster started beforehand with ``ray start``,
  joined by address), each Ray task's timeline from the cluster's task events (submit ->
  worker leased -> running -> finished), the cluster's start time, and trivial no-op tasks with
  quantgate's task options (``max_calls=1``: a fresh worker process per task).

Each section records the load average (os.getloadavg) at its start and end: on a shared 2-core
machine wall times move with other work.

Usage: python benchmarks/executors.py [--skip local_vs_ray|kills|overhead ...] [--kinds cli worker ray_worker cli_mmlu]
                                      [--windows 16] [--fake-items 200] [--mmlu 200] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "reports" / "bench"
RUNS = OUT / "executors-runs"  # every measured run's reports folder (results.json, logs)
RAY = str(Path(sys.executable).with_name("ray"))

LLAMA1 = {"name": "llama-cpp", "params": {"n_threads": 1}}


def cpu_plan(windows: int) -> dict:
    return {
        "name": "executors-cpu",
        "description": "issue 14: local vs Ray, 4 GGUF candidates on llama.cpp with 1 thread each",
        "baseline": {"name": "f16", "model": "embedded:smollm2-135m", "runtime": LLAMA1},
        "candidates": [{"name": t.lower(), "quantizer": {"method": "gguf", "params": {"type": t}}, "runtime": LLAMA1}
                       for t in ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M")],
        "suites": [{"suite": "perplexity", "name": "wikitext2",
                    "params": {"dataset": "wikitext2", "context_length": 512, "max_tokens": 512 * windows}}],
        "probes": {"size": {}},
        "gates": {"gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wikitext2.ppl", "max_pct": 10}]},
        "tracking": {"enabled": False},
    }


def fake_kill_plan(items: int, delay_ms: float | None) -> dict:
    """The baseline fast; the candidate ``q4`` slow (``score_delay_ms`` per window); a second
    candidate after it, to show the run goes on past a killed one."""
    slow = {"name": "fake", "params": {"score_delay_ms": delay_ms}} if delay_ms else {"name": "fake"}
    return {
        "name": "executors-kill",
        "baseline": {"name": "f32", "model": "fake:tiny", "runtime": {"name": "fake"}},
        "candidates": [{"name": "q4", "quantizer": {"method": "fake", "params": {"bits": 4}}, "runtime": slow},
                       {"name": "noise-0.02", "quantizer": {"method": "fake", "params": {"noise": 0.02}},
                        "runtime": {"name": "fake"}}],
        "suites": [{"suite": "perplexity", "name": "wiki",
                    "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 256 * items}}],
        "gates": {"gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wiki.ppl", "max_pct": 5}]},
        "tracking": {"enabled": False},
    }


def mmlu_kill_plan(limit: int) -> dict:
    return {
        "name": "executors-kill-mmlu",
        "baseline": {"name": "f16", "model": "embedded:smollm2-135m", "runtime": LLAMA1},
        "candidates": [{"name": "q8_0", "quantizer": {"method": "gguf", "params": {"type": "Q8_0"}},
                        "runtime": LLAMA1}],
        "suites": [{"suite": "mmlu", "params": {"limit": limit}}],
        "gates": {"gates": [{"name": "mmlu", "kind": "max_drop", "metric": "mmlu.acc", "max": 0.05}]},
        "tracking": {"enabled": False},
    }


def trivial_plan(n: int = 4) -> dict:
    fake = {"name": "fake"}
    quant = [{"bits": 4}, {"bits": 8}, {"noise": 0.01}, {"noise": 0.02}]
    return {
        "name": "executors-overhead",
        "baseline": {"name": "f32", "model": "fake:tiny", "runtime": fake},
        "candidates": [{"name": f"t{i + 1}", "quantizer": {"method": "fake", "params": quant[i % len(quant)]},
                        "runtime": fake} for i in range(n)],
        "suites": [{"suite": "perplexity", "name": "wiki",
                    "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 512}}],
        "gates": {"gates": [{"name": "ppl", "kind": "max_increase_pct", "metric": "wiki.ppl", "max_pct": 50}]},
        "tracking": {"enabled": False},
    }


# ------------------------------------------------------------------ running quantgate
class Work:
    """A scratch folder for plans and stores (removed at the end unless --keep); reports go to RUNS."""

    def __init__(self, keep: bool):
        self.root = Path(tempfile.mkdtemp(prefix="quantgate-bench-executors-"))
        self.keep = keep
        self.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")

    def plan(self, name: str, plan: dict) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(plan, sort_keys=False))
        return path

    def home(self, name: str) -> Path:
        return self.root / f"home-{name}"

    def reports(self, name: str) -> Path:
        return RUNS / self.stamp / name

    def drop(self, home: Path) -> None:
        if not self.keep:
            shutil.rmtree(home, ignore_errors=True)


def start(plan: Path, home: Path, reports: Path, *extra: str) -> tuple[subprocess.Popen, float]:
    """`python -m harness run` in its own session (its process group is killable whole)."""
    reports.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "QUANTGATE_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log = open(reports.parent / f"{reports.name}.out", "ab")  # noqa: SIM115 (closed with the process)
    cmd = [sys.executable, "-m", "harness", "run", str(plan), "--reports-dir", str(reports), "--no-tracking", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    proc.cmd = cmd  # type: ignore[attr-defined]
    return proc, time.perf_counter()


def results(reports: Path) -> dict | None:
    runs = sorted((p for p in reports.iterdir() if (p / "results.json").is_file()), key=lambda p: p.stat().st_mtime) \
        if reports.is_dir() else []
    return json.loads((runs[-1] / "results.json").read_text()) if runs else None


def run(plan: Path, home: Path, reports: Path, *extra: str, timeout: float = 3600) -> dict:
    proc, t0 = start(plan, home, reports, *extra)
    rc = proc.wait(timeout=timeout)
    wall = time.perf_counter() - t0
    res = results(reports)
    out = {"command": " ".join(["python", *proc.cmd[1:]]), "exit_code": rc, "subprocess_wall_seconds": round(wall, 2),
           "run_id": res and res["run_id"], "reports": str(reports.relative_to(ROOT))}
    if res is None:
        raise RuntimeError(f"no results.json from {out['command']} (exit {rc}); see {reports}.out")
    return {**out, "results": res}


def records(res: dict) -> dict[str, dict[str, list]]:
    """Every record's item records, by record and suite."""
    return {r["name"]: {s: v.get("records") for s, v in (r.get("suites") or {}).items()}
            for r in [res["baseline"], *res["candidates"]]}


def verdicts(res: dict) -> dict[str, str]:
    return {c["name"]: c["verdict"] for c in res["candidates"]}


def max_abs_diff(a: Any, b: Any) -> float | None:
    """The largest difference between two JSON values' numbers (None: they differ in shape)."""
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or a is None:
        return 0.0 if a == b else None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b))
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return None
        diffs = [max_abs_diff(a[k], b[k]) for k in a]
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return None
        diffs = [max_abs_diff(x, y) for x, y in zip(a, b, strict=True)]
    else:
        return None
    return None if None in diffs else max(diffs, default=0.0)


def compare_records(a: dict, b: dict) -> dict:
    ra, rb = records(a), records(b)
    per = {}
    for name in ra.keys() | rb.keys():
        for suite in (ra.get(name) or {}).keys() | (rb.get(name) or {}).keys():
            x, y = (ra.get(name) or {}).get(suite), (rb.get(name) or {}).get(suite)
            differ = [u.get("id") for u, v in zip(x or [], y or [], strict=False) if u != v]
            per[f"{name}/{suite}"] = {"identical": x == y, "max_abs_diff": max_abs_diff(x, y) if x and y else None,
                                      "items": [len(x or []), len(y or [])], "differing_items": len(differ),
                                      "differing_ids": differ[:20]}
    return {"identical": ra == rb, "per_record": per}


def placement(res: dict) -> dict:
    """Which host, process and Ray node ran each record's stages (results.json ``placement``)."""
    out = {}
    for r in [res["baseline"], *res["candidates"]]:
        out[r["name"]] = {stage: {k: p.get(k) for k in ("hostname", "pid", "node_id", "cpus", "gpus", "executor")
                                  if p.get(k) is not None}
                          for stage, p in (r.get("placement") or {}).items()}
    return out


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(r: dict) -> dict:
    """A run without its (large) results: what the figures need."""
    res = r["results"]
    return {k: v for k, v in r.items() if k != "results"} | {
        "wall_seconds": res["wall_seconds"], "executor": res["executor"], "verdicts": verdicts(res),
        "statuses": {c["name"]: c["status"] for c in [res["baseline"], *res["candidates"]]},
        "record_seconds": {c["name"]: c.get("seconds") for c in [res["baseline"], *res["candidates"]]},
        "suite_seconds": {c["name"]: {s: v.get("seconds") for s, v in (c.get("suites") or {}).items()}
                          for c in [res["baseline"], *res["candidates"]]},
        "store_integrity": res.get("store_integrity"), "placement": placement(res)}


# ------------------------------------------------------------------ 1. local vs Ray
def local_vs_ray(work: Work, windows: int) -> dict:
    plan = work.plan("cpu", cpu_plan(windows))
    out: dict[str, Any] = {"plan": cpu_plan(windows), "loadavg_start": load()}
    runs = {}
    for executor in ("local", "ray"):
        home = work.home(f"cpu-{executor}")
        extra = ("--executor", "ray") if executor == "ray" else ()
        print(f"local_vs_ray: {executor} executor, empty store {home}", flush=True)
        runs[executor] = run(plan, home, work.reports(f"cpu-{executor}"), *extra)
        work.drop(home)
        r = runs[executor]
        print(f"  exit {r['exit_code']}, wall {r['results']['wall_seconds']} s (subprocess {r['subprocess_wall_seconds']} s), "
              f"verdicts {verdicts(r['results'])}, load {load()}", flush=True)
    lres, rres = runs["local"]["results"], runs["ray"]["results"]
    out.update({
        "local": summary(runs["local"]), "ray": summary(runs["ray"]),
        "speedup_wall_seconds": round(lres["wall_seconds"] / rres["wall_seconds"], 3),
        "speedup_subprocess_wall": round(runs["local"]["subprocess_wall_seconds"] / runs["ray"]["subprocess_wall_seconds"], 3),
        "verdicts_identical": verdicts(lres) == verdicts(rres),
        "records": compare_records(lres, rres),
        "metrics": {c["name"]: {"local": (c["metrics"].get("wikitext2.ppl") or {}).get("value"),
                                "ray": (d["metrics"].get("wikitext2.ppl") or {}).get("value")}
                    for c, d in zip([lres["baseline"], *lres["candidates"]], [rres["baseline"], *rres["candidates"]], strict=True)},
        "loadavg_end": load(),
        "what": {
            "wall_seconds": "results.json wall_seconds: from the run's start to its verdicts, inside the CLI "
                            "(for Ray, includes starting and stopping the run's own local cluster)",
            "subprocess_wall_seconds": "the whole `python -m harness run` process, imports and report writing included",
            "speedup": "local / ray",
            "records.identical": "every record's every suite's item records equal (JSON) between the two runs",
        },
    })
    return out


# ------------------------------------------------------------------ 2. kills
def _progress(reports: Path, record: str) -> int:
    done = 0
    for path in reports.glob(f"*/logs/{record}-evaluate.progress.jsonl"):
        for line in path.read_text().splitlines():
            if line.endswith("}"):
                done = max(done, json.loads(line)["done"])
    return done


def _journals(home: Path) -> dict[str, int]:
    from harness.journal import ItemJournal

    return {p.stem: len(ItemJournal(p).records) for p in sorted((home / "journals").glob("*.jsonl"))}


def _spawn_worker_of(pid: int):
    import psutil

    for child in psutil.Process(pid).children():
        try:
            if any("multiprocessing.spawn" in part for part in child.cmdline()):
                return child
        except psutil.Error:
            continue
    return None


def _ray_worker_of(task_name: str):
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if any(f"ray::{task_name}" in part for part in (p.info["cmdline"] or [])):
            return p
    return None


def _session_left(sid: int) -> list[dict]:
    """Processes still in the killed CLI's session (its workers): none expected."""
    import psutil

    left = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            # a zombie has ended (killed, not yet reaped by init): not left running
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append({"pid": p.pid, "cmdline": " ".join(p.info["cmdline"] or [])[:200]})
        except (OSError, psutil.Error):
            continue
    return left


def kill_case(work: Work, kind: str, plan: Path, home: Path, record: str, n_items: int, chunk: int,
              clean: dict, extra: tuple[str, ...] = (), timeout: float = 1800) -> dict:
    """Start the plan, kill -9 (``kind``) when ``record``'s suite is about half done and half a
    chunk into the next, then (except for a Ray worker, which Ray retries in the same run) run
    the same command again on the same store."""
    reports = work.reports(f"kill-{kind}")
    out: dict[str, Any] = {"kind": kind, "record": record, "items": n_items, "chunk_items": chunk,
                           "loadavg_start": load()}
    proc, t0 = start(plan, home, reports, *extra)
    out["command"] = " ".join(["python", *proc.cmd[1:]])
    samples: list[tuple[float, int]] = []  # (time, done) each time the progress moved
    target = n_items // 2
    deadline = time.monotonic() + timeout
    killed = None
    while killed is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"kill {kind}: the run ended (exit {proc.poll()}) before the kill; see {reports}.out")
        time.sleep(0.1)
        done = _progress(reports, record)
        if not samples or done != samples[-1][1]:
            samples.append((time.perf_counter(), done))
        if done < target:
            continue
        # half a chunk past the journaled half: a chunk is in flight when the kill comes
        moving = [s for s in samples if s[1] > 0]
        rate = (moving[-1][1] - moving[0][1]) / (moving[-1][0] - moving[0][0]) if len(moving) > 1 and \
            moving[-1][0] > moving[0][0] else None  # items/s
        wait = min(60.0, 0.5 * chunk / rate) if rate else 1.0
        time.sleep(max(0.0, wait - (time.perf_counter() - samples[-1][0])))
        if kind in ("cli", "cli_mmlu"):
            victim_pid = proc.pid
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "worker":
            victim = _spawn_worker_of(proc.pid)
            if victim is None:
                continue
            victim_pid = victim.pid
            victim.kill()
        else:
            victim = _ray_worker_of(f"quantgate:{record}:candidate")
            if victim is None:
                continue
            victim_pid = victim.pid
            victim.kill()
        killed = time.perf_counter()
    done_at_kill = _progress(reports, record)
    time.sleep(0.3)  # the killed worker's children die with it (PDEATHSIG); then read what is on disk
    journals = _journals(home)
    rate = (samples[-1][1] - samples[1][1]) / (samples[-1][0] - samples[1][0]) if len(samples) > 2 and \
        samples[-1][0] > samples[1][0] else None
    out.update({
        "victim_pid": victim_pid, "seconds_to_kill": round(killed - t0, 2),
        "items_done_at_kill": done_at_kill, "journals_at_kill": journals,
        "items_per_second_before_kill": rate and round(rate, 3),
        "seconds_since_last_progress": round(killed - samples[-1][0], 2),
    })
    if kind in ("cli", "cli_mmlu"):
        proc.wait()
        time.sleep(1.0)
        out["processes_left_in_session"] = _session_left(proc.pid)
        out["killed_run_exit_code"] = proc.returncode
        first = None
    else:
        proc.wait(timeout=timeout)
        first = results(reports)
        out["killed_run_exit_code"] = proc.returncode
        out["killed_run_wall_seconds"] = round(time.perf_counter() - t0, 2)
    if kind == "ray_worker":
        rerun_res = first
        out["rerun"] = "none: Ray retried the task in the same run"
        rerun_summary = {"exit_code": proc.returncode, "results": first}
    else:
        if first is not None:  # the local worker kill: that candidate is ERROR, the run goes on
            out["killed_run"] = {"exit_code": proc.returncode, "wall_seconds": first["wall_seconds"],
                                 "statuses": {c["name"]: c["status"] for c in [first["baseline"], *first["candidates"]]},
                                 "verdicts": verdicts(first),
                                 "errors": {c["name"]: c.get("error") and {k: c["error"].get(k) for k in ("stage", "message")}
                                            for c in first["candidates"] if c["status"] != "ok"}}
        rerun_summary = run(plan, home, work.reports(f"kill-{kind}-rerun"), *extra, timeout=timeout)
        rerun_res = rerun_summary["results"]
        out["rerun"] = {k: v for k, v in rerun_summary.items() if k != "results"} | {
            "wall_seconds": rerun_res["wall_seconds"], "verdicts": verdicts(rerun_res)}
    rec = next(r for r in [rerun_res["baseline"], *rerun_res["candidates"]] if r["name"] == record)
    suite_id, suite = next(iter(rec["suites"].items()))
    journaled = journals.get(suite.get("result_key"), 0)
    resumed = suite.get("resumed_items") or 0
    in_flight = min(chunk, n_items - journaled)
    out.update({
        "suite": suite_id, "items_journaled": journaled, "resumed_items": resumed,
        "recomputed_on_rerun": n_items - resumed,
        "journaled_items_scored_again": max(0, journaled - resumed),
        # the rerun redoes only what the kill lost: the chunk in flight (scored in part, not
        # journaled); estimated from the time since the last journaled chunk and the item rate
        "lost_items_at_most": in_flight if resumed >= journaled else n_items - resumed,
        "lost_items_estimate": min(in_flight, round(out["seconds_since_last_progress"] * rate)) if rate else None,
        "at_most_one_chunk_recomputed": resumed >= journaled and resumed >= done_at_kill,
        "record_status_after": rec["status"], "record_verdict_after": rec.get("verdict"),
        "records_equal_clean_run": records(rerun_res) == records(clean),
        "records_compare": compare_records(rerun_res, clean),
        "verdicts_equal_clean_run": verdicts(rerun_res) == verdicts(clean),
        "store_integrity": rerun_res.get("store_integrity"),
        "store_integrity_empty": not rerun_res.get("store_integrity"),
        "journals_left_after": _journals(home),
        "placement_after": placement(rerun_res).get(record),
        "loadavg_end": load(),
    })
    if kind == "ray_worker":
        ev = rec.get("placement", {}).get("evaluate", {})
        out["retried_in_another_process"] = ev.get("pid") not in (None, victim_pid)
        out["run_exit_code"] = rerun_summary["exit_code"]
    return out


def kills(work: Work, kinds: list[str], fake_items: int, delay_ms: float, mmlu: int, address: str | None) -> dict:
    out: dict[str, Any] = {"loadavg_start": load()}
    fake_chunk = max(1, -(-fake_items // 10))
    if any(k in kinds for k in ("cli", "worker", "ray_worker")):
        slow = work.plan("kill-fake", fake_kill_plan(fake_items, delay_ms))
        # the reference: the same plan without the delay (a speed-only param), an empty store
        print("kills: clean reference run (fake, no delay)", flush=True)
        clean = run(work.plan("kill-fake-clean", fake_kill_plan(fake_items, None)), work.home("kill-clean"),
                    work.reports("kill-fake-clean"))
        work.drop(work.home("kill-clean"))
        out["fake_plan"] = fake_kill_plan(fake_items, delay_ms)
        out["fake_clean_run"] = summary(clean)
        for kind in ("cli", "worker", "ray_worker"):
            if kind not in kinds:
                continue
            extra = ("--executor", "ray", *(("--address", address) if address else ())) if kind == "ray_worker" else ()
            print(f"kills: {kind}", flush=True)
            home = work.home(f"kill-{kind}")
            out[kind] = kill_case(work, kind, slow, home, "q4", fake_items, fake_chunk, clean["results"], extra)
            work.drop(home)
            _print_kill(out[kind])
    if "cli_mmlu" in kinds:
        plan = work.plan("kill-mmlu", mmlu_kill_plan(mmlu))
        print("kills: clean reference run (mmlu)", flush=True)
        clean = run(plan, work.home("kill-mmlu-clean"), work.reports("kill-mmlu-clean"))
        work.drop(work.home("kill-mmlu-clean"))
        out["mmlu_plan"] = mmlu_kill_plan(mmlu)
        out["mmlu_clean_run"] = summary(clean)
        print("kills: cli_mmlu", flush=True)
        home = work.home("kill-cli_mmlu")
        chunk = max(50, -(-mmlu // 10))
        out["cli_mmlu"] = kill_case(work, "cli_mmlu", plan, home, "q8_0", mmlu, chunk, clean["results"])
        work.drop(home)
        _print_kill(out["cli_mmlu"])
    out["loadavg_end"] = load()
    out["what"] = {
        "items_done_at_kill": "the last count in the record's <run>/logs/<record>-evaluate.progress.jsonl "
                              "(written after each chunk is journaled)",
        "items_journaled": "records in QUANTGATE_HOME/journals/<result key>.jsonl 0.3 s after the kill",
        "resumed_items": "the rerun's (for ray_worker: the retried task's) suites.<id>.resumed_items",
        "recomputed_on_rerun": "items - resumed_items: what the rerun scored, the half the killed run never "
                               "reached included (what was scored twice is lost_items)",
        "journaled_items_scored_again": "items the journal held but the rerun scored anyway (goal: 0)",
        "lost_items_at_most": "the chunk in flight at the kill: scored in part, not journaled, scored again",
        "lost_items_estimate": "seconds since the last journaled chunk x items/s before the kill (capped at a chunk)",
        "at_most_one_chunk_recomputed": "resumed_items >= items journaled and >= items done at the kill",
        "records_equal_clean_run": "the rerun's item records (every record, every suite) equal those of a run "
                                   "of the same plan from an empty store that was never killed",
    }
    return out


def _print_kill(k: dict) -> None:
    print(f"  {k['kind']}: done at kill {k['items_done_at_kill']}/{k['items']}, journaled {k['items_journaled']}, "
          f"resumed {k['resumed_items']}, scored on rerun {k['recomputed_on_rerun']}, lost <= {k['lost_items_at_most']} "
          f"(~{k['lost_items_estimate']}), equal to clean {k['records_equal_clean_run']}, "
          f"integrity empty {k['store_integrity_empty']}, load {load()}", flush=True)


# ------------------------------------------------------------------ 3. Ray's own cost
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """`ray start --head` on 127.0.0.1 with 2 CPUs and token auth, in a session of its own and
    with its own temp folder. Stopped by ending the processes of that session (the head's
    daemons and the workers they started), by pid: `ray stop` would end every Ray process of
    this user on the machine, another person's cluster included."""

    def __init__(self, work: Work):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="qgray-"))  # short: Ray's socket paths must fit 107 bytes
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
        log = open(self.temp / "ray-start.log", "wb")  # noqa: SIM115
        t0 = time.perf_counter()
        proc = subprocess.Popen([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                                 "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                                 f"--temp-dir={self.temp}"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # a file, not a pipe: the daemons keep what they inherit
        log.close()
        self.sid = proc.pid
        if proc.wait(timeout=300) != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {(self.temp / 'ray-start.log').read_text()[-2000:]}")
        self.start_seconds = round(time.perf_counter() - t0, 2)

    def _members(self) -> list:
        import psutil

        out = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and os.getsid(p.pid) == self.sid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except (OSError, psutil.Error):
                continue
        return out

    def stop(self) -> float:
        import psutil

        t0 = time.perf_counter()
        members = self._members()
        for p in members:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(members, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        shutil.rmtree(self.temp, ignore_errors=True)
        return round(time.perf_counter() - t0, 2)


_EVENTS_CODE = r"""
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
import ray._private.state as st
from ray.core.generated import common_pb2
out = []
for e in st.state._get_all_task_events():
    ti = e.task_info
    if not ti.name.startswith(sys.argv[2]):
        continue
    out.append({"name": ti.name, "job_id": e.job_id.hex(), "attempt": e.attempt_number,
                "worker_pid": e.state_updates.worker_pid if e.state_updates.HasField("worker_pid") else None,
                "states": {common_pb2.TaskStatus.Name(k): v / 1e9 for k, v in e.state_updates.state_ts_ns.items()}})
print(json.dumps(out))
"""


def task_events(address: str, prefix: str = "quantgate:") -> list[dict]:
    """Each task's state timestamps from the cluster's GCS task events (ray._private: no dashboard needed)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run([sys.executable, "-c", _EVENTS_CODE, address, prefix], env=env, capture_output=True, text=True,
                       timeout=300)
    if p.returncode != 0:
        return [{"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}]
    return json.loads(p.stdout.strip().splitlines()[-1])


def task_timeline(events: list[dict], res: dict | None = None) -> list[dict]:
    """Per task: seconds from submit (PENDING_ARGS_AVAIL) to a worker leased, running, finished."""
    seconds = {}
    if res:
        seconds = {r["name"]: r.get("seconds") for r in [res["baseline"], *res["candidates"]]}
    rows = []
    t_first = min((e["states"].get("PENDING_ARGS_AVAIL", float("inf")) for e in events if "states" in e),
                  default=0.0)
    for e in sorted((e for e in events if "states" in e), key=lambda e: e["states"].get("PENDING_ARGS_AVAIL", 0)):
        s = e["states"]
        sub, lease, runs, fin = (s.get(k) for k in ("PENDING_ARGS_AVAIL", "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED"))
        fail = s.get("FAILED")
        r = lambda a, b: round(b - a, 3) if a is not None and b is not None else None  # noqa: E731
        parts = e["name"].split(":")
        record, kind = (parts[1], parts[2]) if len(parts) == 3 else (None, None)
        rows.append({"task": e["name"], "attempt": e["attempt"], "worker_pid": e["worker_pid"],
                     "submitted_at_s": r(t_first, sub), "submit_to_worker_leased_s": r(sub, lease),
                     "submit_to_running_s": r(sub, runs), "running_s": r(runs, fin or fail),
                     "failed": fail is not None,
                     "record_seconds": seconds.get(record) if kind == "candidate" else None})
    return rows


_INIT_CODE = r"""
import json, os, time
os.environ.setdefault("RAY_AUTH_MODE", "token")
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="ERROR")
t2 = time.perf_counter()
ray.shutdown()
t3 = time.perf_counter()
print(json.dumps({"import_ray_s": round(t1 - t0, 3), "init_local_cluster_s": round(t2 - t1, 3),
                  "shutdown_s": round(t3 - t2, 3)}))
"""

_NOOP_CODE = r"""
import json, os, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
def noop(t_submit):
    return time.time(), os.getpid()
remote = ray.remote(max_calls=1)(noop).options(num_cpus=1, max_retries=1, retry_exceptions=False, name="bench:noop")
rows = []
for i in range(int(sys.argv[2])):
    t0 = time.time()
    t_start, pid = ray.get(remote.remote(t0))
    rows.append({"submit_to_function_s": round(t_start - t0, 3), "round_trip_s": round(time.time() - t0, 3), "pid": pid})
print(json.dumps(rows))
"""


def overhead(work: Work, n_noop: int) -> dict:
    out: dict[str, Any] = {"loadavg_start": load(), "plan": trivial_plan()}
    plan = work.plan("overhead", trivial_plan())
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run([sys.executable, "-c", _INIT_CODE], env=env, capture_output=True, text=True, timeout=300)
    out["ray_init_local_cluster"] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
        {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
    print(f"overhead: ray.init of a local cluster {out['ray_init_local_cluster']}", flush=True)
    runs = {}
    for name, extra in (("local", ()), ("ray_own_cluster", ("--executor", "ray"))):
        runs[name] = run(plan, work.home(f"ovh-{name}"), work.reports(f"overhead-{name}"), *extra)
        work.drop(work.home(f"ovh-{name}"))
        print(f"  {name}: wall {runs[name]['results']['wall_seconds']} s "
              f"(subprocess {runs[name]['subprocess_wall_seconds']} s), load {load()}", flush=True)
    cluster = Cluster(work)
    try:
        out["ray_start_head_seconds"] = cluster.start_seconds
        runs["ray_address"] = run(plan, work.home("ovh-addr"), work.reports("overhead-ray_address"),
                                  "--executor", "ray", "--address", cluster.address)
        work.drop(work.home("ovh-addr"))
        print(f"  ray_address: wall {runs['ray_address']['results']['wall_seconds']} s "
              f"(subprocess {runs['ray_address']['subprocess_wall_seconds']} s), load {load()}", flush=True)
        events = task_events(cluster.address)
        out["tasks"] = task_timeline(events, runs["ray_address"]["results"])
        p = subprocess.run([sys.executable, "-c", _NOOP_CODE, cluster.address, str(n_noop)], env=cluster.env,
                           capture_output=True, text=True, timeout=600)
        out["noop_tasks"] = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
            {"error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
        noop_events = task_timeline(task_events(cluster.address, "bench:noop"))
        for row, ev in zip(out["noop_tasks"], noop_events, strict=False) if isinstance(out["noop_tasks"], list) else ():
            row.update({k: ev[k] for k in ("submit_to_worker_leased_s", "submit_to_running_s", "running_s")})
    finally:
        out["cluster_stop_seconds"] = cluster.stop()
    for name, r in runs.items():
        out[name] = summary(r)
    lw = runs["local"]["results"]["wall_seconds"]
    out["ray_minus_local_wall_seconds"] = {n: round(runs[n]["results"]["wall_seconds"] - lw, 2)
                                           for n in ("ray_own_cluster", "ray_address")}
    cand = [t for t in out.get("tasks", []) if t["task"].endswith(":candidate")]
    if cand:
        med = lambda xs: sorted(xs)[len(xs) // 2] if xs else None  # noqa: E731
        out["per_candidate_task"] = {
            "submit_to_running_s_median": med([t["submit_to_running_s"] for t in cand if t["submit_to_running_s"] is not None]),
            "running_minus_record_seconds_median": med([round(t["running_s"] - (t["record_seconds"] or 0), 3)
                                                        for t in cand if t["running_s"] is not None]),
        }
    if isinstance(out.get("noop_tasks"), list) and out["noop_tasks"]:
        xs = sorted(t["round_trip_s"] for t in out["noop_tasks"])
        out["noop_round_trip_s_median"] = xs[len(xs) // 2]
    out["loadavg_end"] = load()
    out["what"] = {
        "ray_init_local_cluster": "a fresh process: `import ray`, then ray.init() as quantgate's executor calls it "
                                  "without an address (starts GCS, raylet, workers on 127.0.0.1), then ray.shutdown()",
        "ray_start_head_seconds": "`ray start --head --num-cpus=2 --include-dashboard=false` (the command's wall)",
        "local / ray_own_cluster / ray_address": "the trivial plan (fake model, 4 candidates, 2 windows, no probes) from "
                                                 "an empty store: local executor; Ray with the run's own cluster "
                                                 "(started and stopped inside wall_seconds); Ray joining the cluster "
                                                 "started beforehand (--address)",
        "tasks": "the ray_address run's tasks from the cluster's task events: submitted_at_s (from the first "
                 "submit), submit_to_worker_leased_s (resources free and a worker process started or reused), "
                 "submit_to_running_s, running_s (the task function and its argument loading; a candidate task "
                 "runs its produce and evaluate stages, each in a child process); record_seconds: the record's "
                 "own stage time (results.json seconds: candidate stages plus its probes task's memory plan)",
        "per_candidate_task": "medians over the candidate tasks: submit_to_running_s includes waiting for one of the "
                              "2 CPUs; running_minus_record_seconds is what a task costs beyond the record's stages "
                              "(importing harness in the worker, unpickling the task, returning the record)",
        "noop_tasks": "a no-op function with quantgate's task options (max_calls=1, num_cpus=1), one at a time: "
                      "submit_to_function_s is driver submit to the function's first line; round_trip_s until "
                      "ray.get returns; each needs a fresh worker process",
    }
    return out


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip", nargs="*", default=[], choices=["local_vs_ray", "kills", "overhead"])
    ap.add_argument("--kinds", nargs="*", default=["cli", "worker", "ray_worker", "cli_mmlu"],
                    choices=["cli", "worker", "ray_worker", "cli_mmlu"])
    ap.add_argument("--windows", type=int, default=16, help="perplexity windows of 512 tokens in local_vs_ray")
    ap.add_argument("--fake-items", type=int, default=200)
    ap.add_argument("--delay-ms", type=float, default=100.0, help="the fake runtime's score_delay_ms in the kills")
    ap.add_argument("--mmlu", type=int, default=200)
    ap.add_argument("--noop", type=int, default=8, help="no-op Ray tasks in overhead")
    ap.add_argument("--keep", action="store_true", help="keep the scratch stores and plans")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("QUANTGATE_DATA", str((ROOT.parent / "shared" / "data").resolve()))

    from harness.machine import describe

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "executors.json"
    # sections not run this time keep their earlier figures (with their own command and times)
    report = json.loads(path.read_text()) if path.is_file() else {}
    work = Work(args.keep)
    t_all = time.perf_counter()
    report.update({"command": " ".join([Path(sys.executable).name, *sys.argv]),
                   "started": dt.datetime.now().isoformat(timespec="seconds"), "machine": describe(),
                   "loadavg_start": load(), "runs_folder": str((RUNS / work.stamp).relative_to(ROOT))})

    def save(section: str, value: dict, t0: float) -> None:
        report[section] = {**value, "_command": report["command"], "_started": report["started"],
                           "_seconds": round(time.perf_counter() - t0, 1)}
        path.write_text(json.dumps(report, indent=1))

    cluster = None
    try:
        if "local_vs_ray" not in args.skip:
            t0 = time.perf_counter()
            save("local_vs_ray", local_vs_ray(work, args.windows), t0)
        if "kills" not in args.skip:
            t0 = time.perf_counter()
            address = None
            if "ray_worker" in args.kinds:  # a cluster of its own: Ray's retry is seen in its task events
                cluster = Cluster(work)
                address = cluster.address
            k = kills(work, args.kinds, args.fake_items, args.delay_ms, args.mmlu, address)
            if cluster is not None and "ray_worker" in k:
                k["ray_worker"]["task_events"] = task_timeline(task_events(cluster.address, "quantgate:q4:candidate"))
            save("kills", k, t0)
        if cluster is not None:
            cluster.stop()
            cluster = None
        if "overhead" not in args.skip:
            t0 = time.perf_counter()
            save("overhead", overhead(work, args.noop), t0)
    finally:
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(work.root, ignore_errors=True)
    report["loadavg_end"] = load()
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    path.write_text(json.dumps(report, indent=1))
    print_summary(report)
    print(f"wrote {path} in {report['seconds']} s")
    return 0


def print_summary(report: dict) -> None:
    lv = report.get("local_vs_ray")
    if lv:
        print(f"local vs ray: {lv['local']['wall_seconds']} s vs {lv['ray']['wall_seconds']} s "
              f"(x{lv['speedup_wall_seconds']}), verdicts identical {lv['verdicts_identical']}, "
              f"records identical {lv['records']['identical']}")
    for kind in ("cli", "worker", "ray_worker", "cli_mmlu"):
        k = (report.get("kills") or {}).get(kind)
        if k:
            print(f"kill {kind}: done {k['items_done_at_kill']}, journaled {k['items_journaled']}, resumed "
                  f"{k['resumed_items']}, lost <= {k['lost_items_at_most']}, equal {k['records_equal_clean_run']}, "
                  f"integrity empty {k['store_integrity_empty']}")
    ov = report.get("overhead")
    if ov:
        print(f"overhead: local {ov['local']['wall_seconds']} s, ray (own cluster) {ov['ray_own_cluster']['wall_seconds']} s, "
              f"ray (address) {ov['ray_address']['wall_seconds']} s; per candidate task {ov.get('per_candidate_task')}; "
              f"noop round trip {ov.get('noop_round_trip_s_median')} s")


if __name__ == "__main__":
    sys.exit(main())
