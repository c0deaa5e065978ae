"""A real ``mlflow server`` for tests: started once per session, killed with its workers.

``mlflow server`` (MLflow 3) runs uvicorn with worker processes, and, unless
``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, job-runner processes that outlive the
server's own process. It is started in its own session (so its own process group) and the
whole group is killed at the end; :meth:`MlflowServer.stop` returns the processes that
survived, and the fixture asserts there are none.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 300  # measured 30-70 s on 2 shared cores


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> list[tuple[int, int, str]]:
    """(pid, process group, command line) of every process readable in /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] == "Z":  # a zombie holds nothing; its parent reaps it
            continue
        out.append((int(entry), int(fields[2]), cmd.strip()))
    return out


@dataclass
class MlflowServer:
    root: Path
    port: int
    proc: subprocess.Popen | None = None
    startup_seconds: float | None = None
    log_path: Path | None = None
    survivors: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def marker(self) -> str:
        """A string only this server's processes carry on their command line."""
        return str(self.root / "mlflow.db")

    def start(self) -> MlflowServer:
        self.log_path = self.root / "server.log"
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.root, start_new_session=True)
        while time.monotonic() - t0 < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as r:
                    if r.status == 200:
                        self.startup_seconds = round(time.monotonic() - t0, 1)
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path and self.log_path.is_file() else ""

    def ours(self) -> list[tuple[int, int, str]]:
        """Live processes of this server: its process group, or its store on the command line."""
        if self.proc is None:
            return []
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        me = os.getpid()
        return [p for p in _processes() if p[0] != me and (p[1] == pgid or self.marker in p[2])]

    def stop(self, grace_s: float = 20.0) -> list[tuple[int, int, str]]:
        """Kill the whole process group (TERM, then KILL); returns the processes still alive."""
        if self.proc is None:
            return self.survivors
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            for p in self.ours():  # anything that left the group but still runs on our store
                if p[1] != pgid:
                    try:
                        os.kill(p[0], sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not self.ours():
                    break
                time.sleep(0.2)
            if self.proc.poll() is not None and not self.ours():
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.survivors = self.ours()
        return self.survivors


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server with a sqlite store and proxied artifacts."""
    server = MlflowServer(root=tmp_path_factory.mktemp("mlflow-server"), port=free_port()).start()
    yield server
    survivors = server.stop()
    assert not survivors, f"mlflow processes outlived the server: {survivors}"
