"""Cost of harness.sandbox per program: the bwrap path (issue 12) against the old path.

The old path is harness/sandbox.py at commit b1acdea (before issue 12), loaded from git:
one `python -I -B` subprocess with unshare(CLONE_NEWNET), rlimits and the in-process guard;
HumanEval as one program (prompt + completion + tests) whose end is reported on a status pipe.
The new path: run_python in bwrap; HumanEval through check_function (candidate sandbox +
checker sandbox). guard-only: the new protocol without bwrap. Needs the git history (the old
path is read from it) and bubblewrap. Writes reports/bench/sandbox_cost.md.

Usage: python benchmarks/sandbox_cost.py
"""
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OLD_COMMIT = "b1acdea"  # the last commit with the pre-bubblewrap sandbox
OUT = ROOT / "reports" / "bench" / "sandbox_cost.md"
old_src = subprocess.check_output(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:harness/sandbox.py"], text=True)
old_file = Path(tempfile.mkdtemp()) / "old_sandbox.py"
old_file.write_text(old_src)
spec = importlib.util.spec_from_file_location("old_sandbox", old_file)
old = importlib.util.module_from_spec(spec)
sys.modules["old_sandbox"] = old  # dataclasses look their module up
spec.loader.exec_module(old)

from harness import sandbox as new  # noqa: E402
from harness.scoring import humaneval_check, humaneval_check_many, humaneval_program, load_humaneval  # noqa: E402

N = 20
problems = load_humaneval()
p = problems[0]


prog = humaneval_program(p, p["canonical_solution"])
PATHS = [
    ("trivial program `pass`", "old (before bubblewrap: subprocess + netns + guard)", lambda: old.run_python("pass").passed),
    ("trivial program `pass`", "new, bwrap", lambda: new.run_python("pass").passed),
    ("trivial program `pass`", "new, guard-only (UNSANDBOXED)", lambda: new.run_python("pass", sandbox="guard-only").passed),
    ("HumanEval/0 canonical", "old (before bubblewrap: one program, status pipe)", lambda: old.check_program(prog)["passed"]),
    ("HumanEval/0 canonical", "new, bwrap (candidate + checker sandboxes)",
     lambda: humaneval_check(p, p["canonical_solution"])["passed"]),
    ("HumanEval/0 canonical", "new, guard-only (UNSANDBOXED)",
     lambda: humaneval_check(p, p["canonical_solution"], sandbox="guard-only")["passed"]),
]
load0 = os.getloadavg()
times = {i: [] for i in range(len(PATHS))}
for i, (_, _, fn) in enumerate(PATHS):
    assert fn(), PATHS[i]  # warm-up: interpreter staging, page cache
for _ in range(N):  # interleaved, so that the machine's load falls on every path alike
    for i, (_, _, fn) in enumerate(PATHS):
        t0 = time.perf_counter()
        ok = fn()
        times[i].append(time.perf_counter() - t0)
        assert ok, PATHS[i]
rows = [(what, path, (statistics.median(times[i]), min(times[i]), max(times[i])))
        for i, (what, path, _) in enumerate(PATHS)]
whole = []
t0 = time.perf_counter()
r_old = old.check_programs([humaneval_program(q, q["canonical_solution"]) for q in problems], workers=2)
whole.append(("old", time.perf_counter() - t0, sum(r["passed"] for r in r_old)))
t0 = time.perf_counter()
r_new = humaneval_check_many(problems, [q["canonical_solution"] for q in problems], workers=2)
whole.append(("new, bwrap", time.perf_counter() - t0, sum(r["passed"] for r in r_new)))
load1 = os.getloadavg()

out = ["# harness.sandbox: cost per program", "",
       f"Measured {time.strftime('%Y-%m-%d %H:%M')} on this machine ({os.cpu_count()} cores, shared; "
       f"load average {load0[0]:.2f} before, {load1[0]:.2f} after), as uid {os.geteuid()}, "
       f"Python {sys.version.split()[0]}, bubblewrap 0.8.0. Wall seconds per program, median of {N} "
       "runs (min–max), the six paths interleaved, after one warm-up run each.", "",
       "Command: `python benchmarks/sandbox_cost.py`", "", "| program | path | median s | min–max s |", "|---|---|---|---|"]
for what, path, (med, lo, hi) in rows:
    out.append(f"| {what} | {path} | {med:.3f} | {lo:.3f}–{hi:.3f} |")
out += ["", "All 164 canonical solutions, 2 workers, once each:", "", "| path | wall s | passed |", "|---|---|---|"]
for path, secs, n in whole:
    out.append(f"| {path} | {secs:.1f} | {n}/164 |")
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text("\n".join(out) + "\n")
print("\n".join(out[:30]))
