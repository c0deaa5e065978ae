"""harness.sandbox: model-written code runs contained, and pass/fail is read correctly."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from harness.sandbox import check_program, check_programs, run_python
from tests.conftest import ROOT


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone for our purpose: it runs nothing
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_passing_program_passes():
    r = run_python("print(sum(range(10)))", timeout=10)
    assert r.status == "passed" and r.returncode == 0, r
    assert r.stdout.strip() == "45"


def test_exception_fails():
    r = run_python("raise ValueError('boom')", timeout=10)
    assert r.status == "failed" and r.returncode == 1
    assert "ValueError: boom" in r.stderr


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)", "exit()", "raise SystemExit"])
def test_exiting_early_is_not_a_pass(code):
    """A completion that exits before the tests run must not count as passing."""
    assert run_python(code + "\nassert False\n", timeout=10).status == "failed"


def test_syntax_error_fails():
    r = run_python("def f(:\n", timeout=10)
    assert r.status == "failed" and "SyntaxError" in r.stderr


def test_infinite_loop_times_out_and_process_is_gone():
    code = "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n"
    t0 = time.monotonic()
    r = run_python(code, timeout=2)
    assert r.status == "timeout", r
    assert time.monotonic() - t0 < 8
    assert _gone(int(r.stdout.split()[0]))


def test_timeout_kills_the_whole_process_group():
    """Without the in-process guard a program can start children: the group kill takes them too."""
    code = ("import subprocess, time\n"
            "p = subprocess.Popen(['sleep', '300'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(300)\n")
    r = run_python(code, timeout=2, guard=False)
    assert r.status == "timeout", r
    assert _gone(int(r.stdout.split()[0]))


def test_memory_limit():
    r = run_python("x = bytearray(4 << 30)\nprint(len(x))", timeout=10, memory_mb=512)
    assert r.status == "failed", r
    assert "MemoryError" in r.stderr


def test_file_size_limit():
    r = run_python("with open('big.bin', 'wb') as f:\n    f.write(b'0' * (100 << 20))\n", timeout=20)
    assert r.status == "failed", r
    assert "File too large" in r.stderr


@pytest.fixture
def listening_server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    # the server is reachable from this process: the failure below is the sandbox's doing
    socket.create_connection(("127.0.0.1", srv.getsockname()[1]), timeout=5).close()
    time.sleep(0.1)
    n0 = len(accepted)
    yield srv.getsockname()[1], accepted, n0
    srv.close()


CONNECT = ("import socket\n"
           "s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
           "print('connected')\n")


@pytest.mark.parametrize("netns", [True, False], ids=["namespace+guard", "guard-only"])
def test_network_is_blocked(listening_server, netns):
    port, accepted, n0 = listening_server
    r = run_python(CONNECT.format(port=port), timeout=10, network_namespace=netns)
    assert r.network_isolated == (netns and r.network_isolated)
    assert r.status == "failed", r
    assert "connected" not in r.stdout
    time.sleep(0.2)
    assert len(accepted) == n0


def test_network_namespace_alone_blocks(listening_server):
    """The kernel layer on its own (guard off): no route to the parent's loopback."""
    port, accepted, n0 = listening_server
    r = run_python(CONNECT.format(port=port), timeout=10, guard=False)
    if not r.network_isolated:
        pytest.skip("no network namespace on this machine (not root, user namespaces disabled)")
    assert r.status == "failed", r
    assert "connected" not in r.stdout
    assert "Network is unreachable" in r.stderr or "OSError" in r.stderr
    time.sleep(0.2)
    assert len(accepted) == n0


def test_require_network_isolation_is_honoured():
    r = run_python("print(1)", timeout=10, require_network_isolation=True)
    assert r.status == ("passed" if r.network_isolated else "error"), r


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("QUANTGATE_TEST_SECRET", "hunter2-secret")
    r = run_python("import os\nprint(sorted(os.environ.items()))\n", timeout=10)
    assert r.status == "passed", r
    assert "hunter2" not in r.stdout and "QUANTGATE_TEST_SECRET" not in r.stdout
    env = dict(eval(r.stdout))
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "OMP_NUM_THREADS"}


def test_workdir_is_a_fresh_temp_dir_removed_afterwards():
    code = ("import os\n"
            "open('scratch.txt', 'w').write('x')\n"
            "print(os.getcwd())\n"
            "print(sorted(os.listdir('.')))\n")
    r = run_python(code, timeout=10)
    assert r.status == "passed", r
    cwd, listing = r.stdout.splitlines()
    assert os.path.basename(cwd).startswith("quantgate-sandbox-")
    assert os.path.realpath(cwd) != os.path.realpath(ROOT)
    assert listing == "['program.py', 'scratch.txt']"
    assert not os.path.exists(cwd)


def test_cannot_write_into_the_repository():
    # a plain relative path lands in the sandbox's own folder, which is then deleted
    r = run_python("open('sandbox_probe.txt', 'w').write('x')\n", timeout=10)
    assert r.status == "passed"
    assert not (ROOT / "sandbox_probe.txt").exists()
    # climbing out with ../ to the repository is refused
    code = ("import os\n"
            f"rel = os.path.relpath({str(ROOT)!r}, os.getcwd())\n"
            "open(os.path.join(rel, 'sandbox_probe.txt'), 'w').write('x')\n")
    try:
        r = run_python(code, timeout=10)
        assert r.status == "failed", r
        assert "PermissionError" in r.stderr
        assert not (ROOT / "sandbox_probe.txt").exists()
    finally:
        (ROOT / "sandbox_probe.txt").unlink(missing_ok=True)


@pytest.mark.parametrize("code", [
    "import os\nos.system('true')",
    "import subprocess\nsubprocess.run(['true'])",
    "import shutil\nshutil.rmtree('/tmp/nothing-here')",
    "import os\nos.kill(1, 0)",
    "import os\nos.fork()",
    "import os\nos.remove('/tmp/quantgate-no-such-file')",
    "import os\nos.chmod('.', 0o777)",
])
def test_guard_blocks_dangerous_calls(code):
    r = run_python(code, timeout=10)
    assert r.status == "failed" and "PermissionError" in r.stderr and "disabled" in r.stderr, r


def test_files_inside_the_workdir_are_usable():
    code = ("import os, pathlib, tempfile\n"
            "pathlib.Path('d/e').mkdir(parents=True)\n"
            "open('d/e/a', 'w').write('x')\n"
            "os.rename('d/e/a', 'b')\n"
            "os.remove('b')\n"
            "with tempfile.TemporaryFile() as f:\n    f.write(b'x')\n"
            "print(tempfile.gettempdir() == os.getcwd())\n")
    r = run_python(code, timeout=10)
    assert r.status == "passed" and r.stdout.strip() == "True", r


def test_output_is_truncated():
    r = run_python("print('x' * 1_000_000)", timeout=10, max_output_bytes=1000)
    assert r.status == "passed" and r.truncated
    assert len(r.stdout) < 1100 and "truncated" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root and a system interpreter that uid 65534 can read")
def test_root_drops_privileges_when_it_can():
    code = ("import os\nprint(os.getuid(), os.getgid())\n"
            "open('/etc/sandbox_probe', 'a')\n")  # guard aside, the kernel refuses too
    r = run_python(code, timeout=10, python="/usr/bin/python3", guard=False)
    assert r.privileges_dropped, r
    assert r.stdout.split() == ["65534", "65534"]
    assert r.status == "failed" and "Permission denied" in r.stderr
    assert not os.path.exists("/etc/sandbox_probe")


def test_check_programs_in_parallel_keeps_order():
    programs = ["import time\ntime.sleep(0.3)\nassert True", "assert False", "print(1)"]
    t0 = time.monotonic()
    out = check_programs(programs, timeout=10, workers=2)
    assert [o["passed"] for o in out] == [True, False, True]
    assert time.monotonic() - t0 < 10
    assert check_program("assert 1 + 1 == 2")["passed"]


def test_workdir_is_removed_after_a_timeout_too():
    code = ("import os\n"
            "os.makedirs('a/b/c')\n"
            "open('a/b/c/f', 'w').write('x')\n"
            "print(os.getcwd(), flush=True)\n"
            "while True:\n    pass\n")
    r = run_python(code, timeout=2)
    assert r.status == "timeout"
    assert not os.path.exists(r.stdout.split()[0])


def test_interpreter_missing_is_an_error(tmp_path):
    r = run_python("print(1)", python=str(tmp_path / "no-python"))
    assert r.status == "error" and "could not start" in r.detail

