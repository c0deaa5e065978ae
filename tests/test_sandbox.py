"""harness.sandbox: model-written code runs in bubblewrap, verdicts come from the checker.

The hostile programs (escapes, false passes, as root and as an unprivileged user) are in
tests/test_sandbox_attacks.py; here: the ordinary behaviour, the limits, the codec, the
check protocol, the guard-only opt-in and what happens without bwrap.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from harness import sandbox
from harness.sandbox import (
    CheckJob,
    SandboxUnavailable,
    check_function,
    check_functions,
    describe_mode,
    require_sandbox,
    run_many,
    run_python,
)
from tests.conftest import ROOT


@pytest.fixture(autouse=True, scope="module")
def _bwrap_ready():
    require_sandbox("bwrap")  # fails here, with the install hint, where bubblewrap is missing


def _named(marker: str) -> list[int]:
    """Live processes on this machine whose name (comm) or command line holds ``marker``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (marker in comm or marker in cmd):
            out.append(int(pid))
    return out


# a program that names itself and a forked child (visible as comm on the host), then spins
NAMED_CHILDREN = """
import ctypes, os, time
ctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)
if os.fork() == 0:
    time.sleep(300)
print('started', flush=True)
while True:
    pass
"""


# ---------------------------------------------------------------- how programs end
def test_passing_program_passes():
    r = run_python("print(sum(range(10)))", timeout=10)
    assert r.status == "passed" and r.returncode == 0, r
    assert r.stdout.strip() == "45" and r.sandbox == "bwrap" and r.network_isolated


def test_exception_fails():
    r = run_python("raise ValueError('boom')", timeout=10)
    assert r.status == "failed" and r.returncode == 1
    assert "ValueError: boom" in r.stderr


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)", "exit()", "raise SystemExit"])
def test_exiting_early_is_not_a_pass(code):
    assert run_python(code + "\nassert False\n", timeout=10).status == "failed"


def test_syntax_error_fails():
    r = run_python("def f(:\n", timeout=10)
    assert r.status == "failed" and "SyntaxError" in r.stderr


def test_timeout_kills_the_whole_sandbox():
    marker = "qgt" + secrets.token_hex(4)
    t0 = time.monotonic()
    r = run_python(NAMED_CHILDREN.format(marker=marker), timeout=3)
    assert r.status == "timeout", r
    assert "started" in r.stdout
    assert time.monotonic() - t0 < 10
    assert _named(marker) == []  # run_python returns only once the pid namespace is gone


def test_daemon_does_not_outlive_its_program():
    marker = "qgd" + secrets.token_hex(4)
    code = ("import ctypes, os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            f"        ctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)\n"
            "        time.sleep(300)\n"
            "    os._exit(0)\n"
            "time.sleep(0.5)\n")
    r = run_python(code, timeout=10)
    assert r.status == "passed", r
    assert _named(marker) == []


# ---------------------------------------------------------------- limits
def test_memory_limit():
    r = run_python("x = bytearray(4 << 30)\nprint(len(x))", timeout=10, memory_mb=512)
    assert r.status == "failed", r
    assert "MemoryError" in r.stderr


def test_file_size_limit():
    r = run_python("with open('big.bin', 'wb') as f:\n    f.write(b'0' * (100 << 20))\n", timeout=20)
    assert r.status == "failed", r
    assert "File too large" in r.stderr


def test_disk_cap_on_tmp_and_dev_shm():
    code = ("import os\n"
            "for folder in ('/tmp', '/dev/shm'):\n"
            "    n = 0\n"
            "    try:\n"
            "        for i in range(10):\n"
            "            with open(f'{folder}/f{i}', 'wb') as f:\n"
            "                f.write(b'0' * (8 << 20))\n"
            "            n += 8\n"
            "    except OSError as e:\n"
            "        print(folder, n, e.strerror)\n")
    r = run_python(code, timeout=20, disk_mb=32)
    assert r.status == "passed", r
    lines = [ln.split(maxsplit=2) for ln in r.stdout.splitlines()]
    assert [ln[0] for ln in lines] == ["/tmp", "/dev/shm"], r.stdout
    for _folder, mib, why in lines:
        assert int(mib) <= 32 and why == "No space left on device"


def test_identity_capabilities_and_process_limit():
    code = ("import os, time\n"
            "status = open('/proc/self/status').read()\n"
            "print(os.getuid(), os.getgid(), [l.split()[1] for l in status.splitlines() if l.startswith('CapEff')])\n"
            "n = 0\n"
            "try:\n"
            "    for _ in range(100):\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(3)\n"
            "            os._exit(0)\n"
            "        n += 1\n"
            "except OSError as e:\n"
            "    print('stopped', e.errno)\n"
            "print('forked', n)\n")
    r = run_python(code, timeout=20, max_processes=8)
    assert r.status == "passed", r
    lines = r.stdout.splitlines()
    assert lines[0] == "65534 65534 ['0000000000000000']"
    assert lines[1] == "stopped 11"  # EAGAIN: RLIMIT_NPROC, as root too (bwrap runs as 65534)
    assert int(lines[2].split()[1]) < 8


# ---------------------------------------------------------------- what the program sees
def test_file_system_holds_only_the_interpreter():
    code = ("import os, sys\n"
            "print(sorted(os.listdir('/')))\n"
            "print(os.getcwd(), sorted(os.listdir('.')), sorted(os.listdir('/sandbox')))\n"
            f"print(os.path.exists({str(ROOT)!r}), os.path.exists('/etc'), os.path.exists('/home'))\n"
            "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))\n")
    r = run_python(code, timeout=10)
    assert r.status == "passed", r
    top, cwd, hidden, pids = r.stdout.splitlines()
    assert set(eval(top)) <= {"dev", "lib", "lib32", "lib64", "libx32", "proc", "root", "sandbox", "tmp", "usr"}
    assert cwd == "/tmp [] ['program.py']"
    assert hidden == "False False False"
    assert eval(pids) == ["1", "2"]  # bwrap's init and the program: no host process


def test_parent_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("QUANTGATE_TEST_SECRET", "hunter2-secret")
    code = ("import os\n"
            "print(sorted(os.environ.items()))\n"
            "print([open(f'/proc/{p}/environ', 'rb').read() for p in ('1', 'self')])\n")
    r = run_python(code, timeout=10)
    assert r.status == "passed", r
    assert "hunter2" not in r.stdout and "QUANTGATE_TEST_SECRET" not in r.stdout
    env = dict(eval(r.stdout.splitlines()[0]))
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "PWD"}


def test_sandboxes_share_nothing_and_leave_nothing():
    token = secrets.token_hex(4)
    write = f"open('/tmp/{token}', 'w').write('x')\nopen('/dev/shm/{token}', 'w').write('x')\n"
    assert run_python(write, timeout=10).status == "passed"
    look = f"import os\nprint(os.path.exists('/tmp/{token}'), os.path.exists('/dev/shm/{token}'))\n"
    assert run_python(look, timeout=10).stdout.strip() == "False False"
    assert not os.path.exists(f"/tmp/{token}") and not os.path.exists(f"/dev/shm/{token}")


def test_cannot_write_into_the_repository():
    probe = ROOT / f"sandbox_probe_{secrets.token_hex(4)}.txt"
    try:
        r = run_python(f"open({str(probe)!r}, 'w').write('x')\n", timeout=10)
        assert r.status == "failed", r
        assert "Read-only file system" in r.stderr or "No such file" in r.stderr
        assert not probe.exists()
    finally:
        probe.unlink(missing_ok=True)


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


@pytest.mark.parametrize("mode", ["bwrap", "guard-only"])
def test_network_is_blocked(listening_server, mode):
    port, accepted, n0 = listening_server
    r = run_python(CONNECT.format(port=port), timeout=10, sandbox=mode)
    assert r.status == "failed", r
    assert "connected" not in r.stdout
    assert ("ConnectionRefusedError" if mode == "bwrap" else "PermissionError") in r.stderr
    time.sleep(0.2)
    assert len(accepted) == n0


def test_files_inside_the_workdir_are_usable():
    code = ("import os, pathlib, tempfile\n"
            "pathlib.Path('d/e').mkdir(parents=True)\n"
            "open('d/e/a', 'w').write('x')\n"
            "os.rename('d/e/a', 'b')\n"
            "os.remove('b')\n"
            "with tempfile.TemporaryFile() as f:\n    f.write(b'x')\n"
            "print(tempfile.gettempdir() == os.getcwd())\n")
    for mode in ("bwrap", "guard-only"):
        r = run_python(code, timeout=10, sandbox=mode)
        assert r.status == "passed" and r.stdout.strip() == "True", (mode, r)


def test_output_is_truncated():
    r = run_python("print('x' * 1_000_000)", timeout=10, max_output_bytes=1000)
    assert r.status == "passed" and r.truncated
    assert len(r.stdout) < 1100 and "truncated" in r.stdout


def test_run_many_in_parallel_keeps_order():
    programs = ["import time\ntime.sleep(0.3)\nassert True", "assert False", "print(1)"]
    t0 = time.monotonic()
    out = run_many(programs, timeout=10, workers=2)
    assert [o.passed for o in out] == [True, False, True]
    assert time.monotonic() - t0 < 10


def test_interpreter_missing_is_an_error(tmp_path):
    r = run_python("print(1)", python=str(tmp_path / "no-python"))
    assert r.status == "error" and "could not start" in r.detail


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_another_interpreter_is_bound_alone():
    r = run_python("import sys\nprint(sys.executable, sys.prefix)", python="/usr/bin/python3", timeout=10)
    assert r.status == "passed", r
    assert r.stdout.split()[1] == "/usr"


# ---------------------------------------------------------------- guard-only and no bwrap
@pytest.mark.parametrize("code", [
    "import os\nos.system('true')",
    "import subprocess\nsubprocess.run(['true'])",
    "import shutil\nshutil.rmtree('/tmp/nothing-here')",
    "import os\nos.kill(1, 0)",
    "import os\nos.fork()",
    "import os\nos.remove('/tmp/quantgate-no-such-file')",
    "import os\nos.chmod('.', 0o777)",
])
def test_guard_only_blocks_dangerous_calls(code):
    r = run_python(code, timeout=10, sandbox="guard-only")
    assert r.sandbox == "guard-only" and not r.network_isolated
    assert r.status == "failed" and "PermissionError" in r.stderr and "disabled" in r.stderr, r


def test_without_bwrap_code_is_refused_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    monkeypatch.setattr(sandbox, "_usable", set())
    for call in (lambda: run_python("print(1)"),
                 lambda: check_function("def f():\n    return 1\n", "f", "def check(c):\n    assert c() == 1\n")):
        with pytest.raises(SandboxUnavailable) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "apt-get install bubblewrap" in msg and "sandbox: guard-only" in msg
    # the explicit opt-in still runs, and says what it is
    r = run_python("print(1)", sandbox="guard-only")
    assert r.status == "passed" and r.sandbox == "guard-only"
    assert describe_mode(r.sandbox) == "guard-only (UNSANDBOXED)"


def test_a_broken_bwrap_is_refused_too(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/bin/false")
    monkeypatch.setattr(sandbox, "_usable", set())
    with pytest.raises(SandboxUnavailable, match="could not start a sandbox"):
        run_python("print(1)")


def test_unknown_mode_is_refused():
    with pytest.raises(SandboxUnavailable, match="sandbox must be one of"):
        run_python("print(1)", sandbox="docker")


def test_reports_say_unsandboxed():
    from harness.report import summary_markdown, unsandboxed_suites
    from harness.report.html import render_html
    from harness.results import SuiteResult
    from tests.test_report_html import make_results

    results = make_results()
    assert unsandboxed_suites(results) == []
    assert "UNSANDBOXED" not in summary_markdown(results) and "UNSANDBOXED" not in render_html(results)
    results.candidates[0].suites["humaneval"] = SuiteResult(
        meta={"sandbox": "guard-only (UNSANDBOXED)"}, metrics={}, result_key="humaneval-q8_0",
        records=[{"id": "HumanEval/0", "sandbox": "guard-only (UNSANDBOXED)", "scores": {"pass_at_1": 0.0}}])
    assert unsandboxed_suites(results) == ["humaneval"]
    assert "**UNSANDBOXED: model-written code in suite humaneval" in summary_markdown(results)
    assert "UNSANDBOXED: model-written code in suite humaneval" in render_html(results)


# ---------------------------------------------------------------- the check protocol
IDENTITY = "def f(*args, **kwargs):\n    return args[0] if len(args) == 1 and not kwargs else [args, kwargs]\n"


def test_check_passes_and_fails():
    checker = "def check(candidate):\n    assert candidate(2) == 2\n    assert candidate(1, k=3) == [(1,), {'k': 3}]\n"
    r = check_function(IDENTITY, "f", checker, timeout=10)
    assert r.status == "passed" and r.calls == 2 and r.sandbox == "bwrap", r
    r = check_function("def f(x):\n    return x + 1\n", "f", "def check(candidate):\n    assert candidate(2) == 2\n")
    assert r.status == "failed" and "AssertionError" in r.detail and r.calls == 1, r


VALUES = ("[None, True, False, 0, -5, 10**80, 1.5, -0.0, float('inf'), float('-inf'), 1e-310, '', "
          "'h\\u00e9llo\\n\\x00', [], [1, [2.5, 'x']], (), (1, (2,)), {1: 'a', (2, 3): [4]}, set(), "
          "{1, 'a', (2,)}, frozenset({3})]")


def test_values_cross_with_their_exact_types():
    """Every value the checker sends comes back equal and of the same type (NaN, infinities,
    -0.0, big ints, nested containers, dict keys that are tuples)."""
    checker = ("import math\n"
               f"VALUES = {VALUES}\n"
               "def same(a, b):\n"
               "    if type(a) is not type(b):\n"
               "        return False\n"
               "    if isinstance(a, float):\n"
               "        return a == b and math.copysign(1, a) == math.copysign(1, b)\n"
               "    return a == b\n"
               "def check(candidate):\n"
               "    for v in VALUES:\n"
               "        assert same(candidate(v), v), v\n"
               "    assert math.isnan(candidate(float('nan')))\n")
    r = check_function(IDENTITY, "f", checker, timeout=20)
    assert r.status == "passed", r
    assert r.calls == len(eval(VALUES)) + 1


def test_stdlib_mappings_are_sent_as_dicts():
    code = ("import collections\n"
            "def f(s):\n"
            "    return collections.Counter(s)\n")
    r = check_function(code, "f", "def check(candidate):\n    assert candidate('aab') == {'a': 2, 'b': 1}\n")
    assert r.status == "passed", r


@pytest.mark.parametrize("completion, why", [
    ("def f(x):\n    raise KeyError(x)\n", "raised KeyError"),
    ("def f(x):\n    return object()\n", "cannot be sent"),
    ("def f(x):\n    class I(int):\n        pass\n    return I(x)\n", "cannot be sent"),
    ("def f(x):\n    import os\n    os._exit(0)\n", "ended without answering"),
    # the checker's call meets either a closed pipe or, a moment earlier, a closed reply
    ("import sys\nsys.exit(0)\ndef f(x):\n    return x\n", "ended"),
    ("def f(x:\n", "ended"),
    ("g = 1\n", "raised KeyError: 'f'"),
])
def test_candidate_failures(completion, why):
    r = check_function(completion, "f", "def check(candidate):\n    assert candidate(1) == 1\n", timeout=10)
    assert r.status == "failed" and why in r.detail, r


def test_a_failure_cannot_be_swallowed_by_the_tests():
    checker = ("def check(candidate):\n"
               "    try:\n"
               "        candidate(1)\n"
               "    except Exception:\n"
               "        pass\n"
               "    except BaseException:\n"
               "        pass\n")
    r = check_function("def f(x):\n    raise ValueError\n", "f", checker)
    assert r.status == "failed" and "raised ValueError" in r.detail, r


def test_tests_that_never_call_the_candidate_do_not_pass():
    r = check_function(IDENTITY, "f", "def check(candidate):\n    pass\n")
    assert r.status == "failed" and "never called" in r.detail, r


def test_an_argument_the_protocol_cannot_carry_is_an_error():
    r = check_function(IDENTITY, "f", "def check(candidate):\n    assert candidate(lambda: 1)\n")
    assert r.status == "error" and "cannot be sent" in r.detail, r


def test_check_timeout_kills_both_sandboxes():
    marker = "qgc" + secrets.token_hex(4)
    code = NAMED_CHILDREN.format(marker=marker) + "def f(x):\n    return x\n"
    t0 = time.monotonic()
    r = check_function(code, "f", "def check(candidate):\n    assert candidate(1) == 1\n", timeout=3)
    assert r.status == "timeout", r
    assert time.monotonic() - t0 < 10
    assert _named(marker) == []
    # a checker stuck in its own loop times out too
    r = check_function(IDENTITY, "f", "def check(candidate):\n    candidate(1)\n    while True:\n        pass\n",
                       timeout=3)
    assert r.status == "timeout", r


def test_the_candidate_never_sees_the_tests():
    """All the candidate's sandbox holds: its own program, its own processes; no test code,
    no expected value, no checker process."""
    code = ("import os\n"
            "def f(x):\n"
            "    seen = [open('/sandbox/' + n).read() for n in os.listdir('/sandbox')]\n"
            "    for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "        seen.append(open(f'/proc/{p}/cmdline', 'rb').read().decode('latin-1'))\n"
            "    return repr(seen)\n")
    checker = ("SECRET_EXPECTED = 'a2b9'\n"
               "def check(candidate):\n"
               "    seen = candidate(0)\n"
               "    assert 'def f(x)' in seen and 'entry_point' in seen, 'the look did not work'\n"
               "    assert 'a2b9' not in seen and 'def check' not in seen and 'verdict_fd' not in seen\n")
    r = check_function(code, "f", checker)
    assert r.status == "passed", r


def test_check_functions_in_parallel_keeps_order():
    checker = "def check(candidate):\n    assert candidate(3) == 3\n"
    jobs = [CheckJob(IDENTITY, "f", checker), CheckJob("def f(x):\n    return 0\n", "f", checker),
            CheckJob("import time\ntime.sleep(0.3)\n" + IDENTITY, "f", checker)]
    out = check_functions(jobs, workers=2, timeout=10)
    assert [o.status for o in out] == ["passed", "failed", "passed"]


def test_check_in_guard_only_mode_uses_the_same_protocol():
    r = check_function("def f(x):\n    return x\n", "f", "def check(candidate):\n    assert candidate(1.5) == 1.5\n",
                       sandbox="guard-only")
    assert r.status == "passed" and r.sandbox == "guard-only", r
    r = check_function("def f(x):\n    class E:\n        __eq__ = lambda s, o: True\n    return E()\n", "f",
                       "def check(candidate):\n    assert candidate(1) == 2\n", sandbox="guard-only")
    assert r.status == "failed" and "cannot be sent" in r.detail, r


# ---------------------------------------------------------------- the codec on its own
@pytest.fixture(scope="module")
def codec() -> dict:
    ns: dict = {}
    exec(sandbox._CODEC, ns)
    return ns


@pytest.mark.parametrize("bad", [
    ["int", "1e5"], ["int", 5], ["int", " 5"], ["bool", 1], ["float", 1.5], ["str", None], ["none", 1],
    ["list", "ab"], ["dict", [[["list", []], ["none"]]]], ["set", [["list", []]]], ["object", []], [], "x",
    ["int", "9" * 5000],
])
def test_decoder_refuses_anything_but_tagged_plain_values(codec, bad):
    with pytest.raises((ValueError, TypeError)):
        codec["_decode"](bad)


def test_codec_depth_and_round_trip(codec):
    deep = ["list", []]
    for _ in range(300):
        deep = ["list", [deep]]
    with pytest.raises(ValueError, match="deeply"):
        codec["_decode"](deep)
    v = {"a": [1, 2.5, (None, True)], (1, "b"): {frozenset({1}), 3}}
    assert codec["_decode"](codec["_encode"](v)) == v
    assert math.isnan(codec["_decode"](codec["_encode"](float("nan"))))
