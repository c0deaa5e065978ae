"""Store safety under concurrency and workers that never outlive their run (issue 14, parts 3-4,
and Ctrl-C of part 6): one writer per store key (``Store.lock``), temporary entries of killed
writers removed, worker process trees that die with the CLI (``kill -9`` included) and stop at
once on Ctrl-C. On the fake model and quantizer (``delay_seconds``: a long quantization,
``child_seconds``: a child process the worker starts, as a vLLM engine would)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from harness.isolate import run_isolated
from harness.store import STALE_FOREIGN_SECONDS, Store, host_token
from tests.conftest import ROOT


# ------------------------------------------------------------------ helpers
def _plan(folder: Path, candidates: list[dict], name: str = "plan.yaml") -> Path:
    """configs/fake.yaml with one small perplexity suite, no probes, the perplexity gate only."""
    plan = yaml.safe_load((ROOT / "configs" / "fake.yaml").read_text())
    plan["suites"] = [{"suite": "perplexity", "name": "wikitext2",
                       "params": {"dataset": "wikitext2", "context_length": 256, "max_tokens": 1024}}]
    plan["probes"] = {}
    plan["gates"] = [g for g in yaml.safe_load((ROOT / "gates" / "fake.yaml").read_text())["gates"]
                     if g["metric"] == "wikitext2.ppl"]
    plan["candidates"] = candidates
    path = folder / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def _fake(name: str, **params) -> dict:
    return {"name": name, "quantizer": {"method": "fake", "params": params}, "runtime": {"name": "fake"}}


def _start(plan: Path, home: Path, reports: Path) -> subprocess.Popen:
    """``quantgate run PLAN`` in the background, in a session of its own (the test's signals
    reach only what it sends them to)."""
    env = {**os.environ, "QUANTGATE_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE", "CI": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(plan), "--no-tracking",
                             "--reports-dir", str(reports)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _results(stdout: str) -> dict:
    line = next(x for x in stdout.splitlines() if "results:" in x)
    return json.loads(Path(line.split("results:")[1].strip().split()[0]).read_text())


def _tree_when(proc: subprocess.Popen, ready, timeout: float = 120) -> list[psutil.Process]:
    """The CLI's descendants, once ``ready(descendants)`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        with_cmd = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                with_cmd.append((p, " ".join(p.cmdline())))
            except psutil.Error:
                continue
        if ready(with_cmd):
            return [p for p, _ in with_cmd]
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"not ready within {timeout} s: {proc.communicate()}")


def _alive(pids: list[int], timeout: float) -> list[int]:
    """Those of ``pids`` still running after up to ``timeout`` s (a zombie counts as gone: a
    container's init may never reap a reparented process)."""
    deadline = time.time() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.02)


def _engine_started(tree) -> bool:
    """The quantize worker has written its file and started its child (the stand-in engine)."""
    return any("time.sleep(120" in cmd for _, cmd in tree)


# ------------------------------------------------------------------ the lock
_HOLDER = """
import sys, time
from pathlib import Path
from harness.store import Store
with Store(Path(sys.argv[1])).lock("artifacts", "k"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_lock_makes_the_other_writer_wait_and_a_killed_holder_releases_it(tmp_path):
    """The second taker of a key's lock says whom it waits for and waits; ``kill -9`` of the
    holder releases the lock at once (flock: the kernel drops it with the process)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said, got = [], threading.Event()

        def take():
            with Store(tmp_path, log=said.append).lock("artifacts", "k"):
                got.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        time.sleep(1.0)
        assert not got.is_set(), "two holders of one key"
        assert len(said) == 1 and said[0].startswith(
            f"waiting for artifacts/k (another run is producing it); held by pid {holder.pid} on "), said
    finally:
        holder.kill()
        holder.wait()
    assert got.wait(10), "the lock of a killed holder was not released"
    taker.join(5)
    assert not Store(tmp_path).lock_path("artifacts", "k").with_suffix(".owner").exists()


_DERIVE = "from harness import baseline; print(baseline.derive('fake:tiny', 'fake'), flush=True)"


def test_baseline_derivation_waits_for_its_lock_and_one_of_two_waiters_builds_it(tmp_path):
    """Two processes deriving one baseline while its lock is held: both wait (one line each),
    then one builds it and the other reuses what it built."""
    from harness.runtimes import fake

    home = tmp_path / "home"
    name = f"{fake.model_key('fake:tiny')}-{fake.FORMAT_NAME}"
    env = {**os.environ, "QUANTGATE_HOME": str(home)}
    with Store(home).lock("baselines", name):
        procs = [subprocess.Popen([sys.executable, "-c", _DERIVE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        firsts = [p.stdout.readline() for p in procs]  # each says it waits, then waits
        assert all(line.startswith(f"waiting for baselines/{name} (another run is producing it)") for line in firsts)
        time.sleep(0.5)
        assert all(p.poll() is None for p in procs) and not (home / "baselines" / name).exists()
    outs = [first + p.communicate(timeout=120)[0] for first, p in zip(firsts, procs, strict=True)]
    assert all(p.returncode == 0 for p in procs), outs
    assert "".join(outs).count("fitting the fake baseline") == 1, outs
    paths = {out.strip().splitlines()[-1] for out in outs}
    assert paths == {str(home / "baselines" / name / fake.BASELINE_ENTRY)}
    assert (home / "baselines" / name / "manifest.json").is_file()


# ------------------------------------------------------------------ stale temporary entries
def test_stale_temporary_entries_are_removed_only_when_their_writer_is_gone(tmp_path):
    root = tmp_path / "home"
    artifacts, results = root / "artifacts", root / "results"
    artifacts.mkdir(parents=True)
    results.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here, old = host_token(), time.time() - STALE_FOREIGN_SECONDS - 3600

    def entry(folder: Path, name: str, mtime: float | None = None, size: int = 1024) -> Path:
        path = folder / name
        if name.endswith(".json") or ".json+" in name:
            path.write_bytes(b"{" * size)
        else:
            path.mkdir()
            (path / "model.npz").write_bytes(b"x" * size)
        if mtime is not None:
            for p in (*path.rglob("*"), path):
                os.utime(p, (mtime, mtime))
        return path

    try:
        time.sleep(0.1)
        gone = [
            entry(artifacts, f".tmp-k1+{dead_pid}@{here}+abc", size=3 << 20),  # its writer died
            entry(results, f".tmp-result-1.json+{dead_pid}@{here}+x_1"),  # a half-written result file
            # a live pid, but its process started after the entry was last written: a reused pid
            entry(artifacts, f".tmp-k2+{live.pid}@{here}+abc", mtime=time.time() - 3600),
            entry(artifacts, f".tmp-k3+{dead_pid}@other-node+abc", mtime=old),  # another host, a day old
            entry(artifacts, ".tmp-k4-h7d2k", mtime=old),  # written by a quantgate that recorded no writer
            entry(artifacts, ".discarded-k5-a1b2c3", mtime=time.time() - 3600),
        ]
        kept = [
            entry(artifacts, f".tmp-k6+{live.pid}@{here}+abc"),  # its writer is at work
            entry(artifacts, f".tmp-k7+{dead_pid}@other-node+abc"),  # another host: its pids are not ours
            entry(artifacts, ".tmp-k8-h7d2k"),  # unknown writer, recent
            entry(artifacts, "k9"),  # a store entry
        ]
        lines: list[str] = []
        Store(root, log=lines.append)
        assert [p for p in gone if p.exists()] == []
        assert [p for p in kept if not p.exists()] == []
        assert len(lines) == len(gone), lines
        line = next(x for x in lines if ".tmp-k1+" in x)
        assert "3.0 MiB" in line and f"pid {dead_pid} on this host, is gone" in line, line
        Store(root, log=lines.append)  # once per process and store
        assert len(lines) == len(gone)
    finally:
        live.kill()
        live.wait()


# ------------------------------------------------------------------ worker process trees
def _start_engine_and_return_its_pid() -> int:
    """In a worker: start a child that outlives this function, as an engine subprocess would."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]).pid


def _report_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def test_what_a_worker_started_dies_with_its_stage():
    engine = run_isolated(_start_engine_and_return_its_pid)
    assert _alive([engine], timeout=10) == [], f"the worker's child {engine} outlived its stage"


def test_ctrl_c_in_run_isolated_kills_the_worker_at_once(tmp_path):
    """SIGINT while a stage runs: KeyboardInterrupt here at once, and the worker is gone."""
    marker = tmp_path / "pid"

    def interrupt():
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_isolated(_report_pid_and_sleep, str(marker))
    elapsed = time.perf_counter() - t0
    assert _alive([int(marker.read_text())], timeout=10) == []
    assert elapsed < 60, elapsed  # the stage would have slept 120 s


SLOW = _fake("slow", bits=4, delay_seconds=60, child_seconds=120)


def test_kill_9_of_the_cli_leaves_no_process_behind_and_its_scratch_folder_is_removed(tmp_path):
    """``kill -9`` of ``quantgate run`` while a quantize worker (with a child of its own) runs:
    every process the CLI started is gone within seconds; the worker's scratch folder is the
    only trace, and the next ``Store`` removes it (its writer is dead)."""
    home = tmp_path / "home"
    proc = _start(_plan(tmp_path, [SLOW]), home, tmp_path / "reports")
    tree = _tree_when(proc, _engine_started)
    assert len(tree) >= 2  # the worker and its child at least (the guardian and resource tracker too)
    commands = {p.pid: " ".join(p.cmdline()) for p in tree}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.perf_counter()
    alive = _alive(list(commands), timeout=15)
    print(f"kill -9: {len(tree)} descendants, {len(alive)} alive after {time.perf_counter() - t0:.2f} s")
    assert alive == [], [commands[pid] for pid in alive]
    artifacts = home / "artifacts"
    assert not list(artifacts.glob("*/manifest.json"))  # nothing published
    scratch = list(artifacts.glob(".tmp-*"))
    assert len(scratch) == 1 and list(scratch[0].glob("*.npz")), scratch
    lines: list[str] = []
    Store(home, log=lines.append)
    assert not scratch[0].exists() and any("is gone" in x for x in lines), lines


def test_sigint_stops_the_run_promptly_with_exit_2_and_no_process_behind(tmp_path):
    """Ctrl-C during a 60 s quantization: the run ends with ``error: interrupted`` and exit 2
    without waiting for the stage, and no process it started is left."""
    home = tmp_path / "home"
    proc = _start(_plan(tmp_path, [SLOW]), home, tmp_path / "reports")
    tree = _tree_when(proc, _engine_started)
    commands = {p.pid: " ".join(p.cmdline()) for p in tree}
    t0 = time.perf_counter()
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=50)
    elapsed = time.perf_counter() - t0
    alive = _alive(list(commands), timeout=15)
    print(f"SIGINT: exit {proc.returncode} after {elapsed:.2f} s; {len(tree)} descendants, {len(alive)} alive")
    assert proc.returncode == 2, out + err
    assert "interrupted" in err, err
    assert alive == [], [commands[pid] for pid in alive]
    assert elapsed < 45, elapsed  # the stage alone would take 60 s more
    assert not list((home / "artifacts").glob("*/manifest.json"))


# ------------------------------------------------------------------ two runs, one store
@pytest.mark.slow  # two real runs at once (~15 s on 2 cores)
def test_two_runs_of_one_plan_on_one_store_produce_each_artifact_once(tmp_path):
    """Two ``quantgate run`` of one plan at once on one QUANTGATE_HOME (slow quantizations, so
    they overlap): the baseline is derived once and each artifact quantized once, the other
    run waits for it and reuses it; both runs' results are equal."""
    home = tmp_path / "home"
    plan = _plan(tmp_path, [_fake("q4", bits=4, delay_seconds=4), _fake("noisy", noise=0.3, delay_seconds=4)])
    procs = [_start(plan, home, tmp_path / f"reports-{i}") for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 1, out + err  # noisy fails its gate, as planned
    stdout = "".join(out for out, _ in outs)
    logs = "".join(f.read_text() for i in range(2) for f in (tmp_path / f"reports-{i}").rglob("*.log"))
    assert stdout.count("producing artifact with fake") == 2, stdout
    assert logs.count("fitting the fake baseline") == 1, logs
    assert "(another run is producing it)" in stdout + logs  # they did overlap
    assert len(list((home / "artifacts").glob("*/manifest.json"))) == 2
    assert not list(home.glob("*/.tmp-*"))
    first, second = (_results(out) for out, _ in outs)

    def essence(res: dict) -> list:
        return [(r["name"], r["artifact"]["key"], r["verdict"],
                 {m: v["value"] for m, v in r["metrics"].items()},
                 [(rec["id"], rec.get("score"), rec.get("nll")) for s in r["suites"].values() for rec in s["records"]])
                for r in (res["baseline"], *res["candidates"])]

    assert essence(first) == essence(second)
    reused = [c["artifact"]["reused"] for res in (first, second) for c in res["candidates"]]
    assert sorted(reused) == [False, False, True, True]
    # each (record, suite) result was scored by one run: the other waited on its lock and reused it
    for name in ("f32", "q4", "noisy"):
        scored = [s["reused"] for res in (first, second) for r in (res["baseline"], *res["candidates"])
                  if r["name"] == name for s in r["suites"].values()]
        assert sorted(scored) == [False, True], (name, scored)
