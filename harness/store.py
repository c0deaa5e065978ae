"""Content-addressed store for artifacts and item results, checked on every reuse.

Everything lands under ``QUANTGATE_HOME`` (default: the user cache dir):

    data/<asset>/...              unpacked embedded data (checked against its pin)
    baselines/<key>/              derived baseline checkpoints (F16 GGUF, BF16 HF) + manifest.json
    artifacts/<key>/              one quantized artifact + manifest.json
    results/<key>.json            item sets (items-*) and item results (result-*)
    hashes/<key>.json             the hash cache: a file's sha256 and the stat it was taken at
    locks/<kind>/<key>.lock       one writer per entry (``Store.lock``); ``.owner`` names the holder

Directories are built under a temporary name and renamed when complete, so a
killed build never leaves something that a later run would reuse. The temporary name
records its writer (``.tmp-<name>+<pid>@<host>+<random>``): a ``Store`` removes, once per
process, the temporary entries whose writer is gone (``clean_stale_temp``).

Concurrency. One writer per store key at a time: ``Store.lock(kind, key)`` is a lock file
under ``locks/``; a run that needs an entry another run is producing waits, then reuses it.

Integrity. Every entry carries its content hash, written when it is stored and
checked when it is reused:

- a result is stored in an envelope ``{"format", "sha256", "value"}``; ``sha256`` is
  the hash of the value's canonical JSON (``canonical_json``);
- a folder (artifact, derived baseline) is sealed: its ``manifest.json`` gets an
  ``integrity`` block with the sha256 and size of every other file (symlinks followed,
  names relative to the folder) and the hash of the manifest itself.

An entry that fails its check (edited, truncated, written by a program that does not
know the envelope, or by a quantgate older than these checks, so without a hash) is
reported (one log line naming the entry, the hash expected and the hash found, and a
record in the run's ``store_integrity`` list through ``IntegrityJournal``) and is then
recomputed, never used. Unhashed entries are recomputed too: nothing vouches for them.

This protects against accidental and unaware changes (a hand edit, a tool rewriting a
file, a bad disk), not against someone who rewrites the recorded hashes as well: the
hashes carry no secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

MANIFEST = "manifest.json"
ENTRY_FORMAT = "quantgate.store-entry/1"
INTEGRITY_ALGORITHM = "sha256"
JOURNAL_ENV = "QUANTGATE_INTEGRITY_JOURNAL"


def quantgate_home() -> Path:
    value = os.environ.get("QUANTGATE_HOME")
    return Path(value) if value else Path(platformdirs.user_cache_dir("quantgate"))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 24) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ temporary entries
#: a temporary entry's name: ``.tmp-<name>+<pid>@<host>+<random>`` (its writer, see ``temp_prefix``)
_TEMP_NAME = re.compile(r"^\.tmp-(?P<name>.*)\+(?P<pid>\d+)@(?P<host>[^+/]+)\+[A-Za-z0-9_]*$")
#: a temporary entry written on another host (or by a quantgate that did not record its writer)
#: is removed once nothing in it has changed for this long
STALE_FOREIGN_SECONDS = 86400.0
#: a ``.discarded-*`` entry is being removed by whoever renamed it; one this old was left by a kill
STALE_DISCARDED_SECONDS = 600.0
_HOST_TOKEN: str | None = None


def host_token() -> str:
    """This host as temporary names record it: the host name and, where there is one, the pid
    namespace (two containers on one host with one name do not see each other's pids)."""
    global _HOST_TOKEN
    if _HOST_TOKEN is None:
        name = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "unknown"
        with contextlib.suppress(OSError):
            name += f"~{os.stat('/proc/self/ns/pid').st_ino}"
        _HOST_TOKEN = name
    return _HOST_TOKEN


def temp_prefix(name: str) -> str:
    """The prefix of a temporary entry for ``name`` written by this process."""
    return f".tmp-{name}+{os.getpid()}@{host_token()}+"


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes ``target`` only if the block succeeds. Its name
    records this process and host, so a later ``Store`` removes it if this process is killed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    try:
        yield tmp
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.exists():
                    raise
                shutil.rmtree(tmp)  # published by another process meanwhile: keep theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def discard(path: Path) -> None:
    """Remove a bad store entry. It is renamed first, so a rebuild can publish under its name
    at once; symlinks inside (a prebuilt artifact's link to the user's file) are removed, never
    followed."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f".discarded-{path.name}-{secrets.token_hex(3)}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:  # another process discarded it first
        return
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _newest_mtime(path: Path) -> float:
    """The latest modification under ``path`` (a file written in place changes its own mtime,
    not its folder's)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


def _own_size(path: Path) -> int:
    """Bytes of the files under ``path`` itself (a symlink counts as a link, not its target)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _writer_alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` of this host may still be writing an entry last changed at
    ``since``: it exists, is no zombie, and started before that (else the pid was reused; a
    minute's slack for clock steps: a reused pid only keeps an entry longer)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since + 60.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. access denied: it exists, so keep its entry
        return True


def stale_temp_reason(path: Path, now: float | None = None) -> str | None:
    """Why the temporary entry ``path`` (``.tmp-*`` or ``.discarded-*``) can be removed, or
    None while its writer may still be at work:

    - written on this host (same host name and pid namespace): its writer's pid is gone;
    - written on another host, or by a quantgate that did not record its writer: nothing in
      it changed for ``STALE_FOREIGN_SECONDS`` (a day);
    - ``.discarded-*``: unchanged for ``STALE_DISCARDED_SECONDS`` (its remover was killed).
    """
    now = time.time() if now is None else now
    age = now - _newest_mtime(path)
    if path.name.startswith(".discarded-"):
        return f"discarded, left {age / 60:.0f} min ago" if age > STALE_DISCARDED_SECONDS else None
    m = _TEMP_NAME.match(path.name)
    if m and m["host"] == host_token():
        pid = int(m["pid"])
        if pid == os.getpid() or _writer_alive(pid, now - age):
            return None
        return f"its writer, pid {pid} on this host, is gone"
    if age > STALE_FOREIGN_SECONDS:
        writer = f"pid {m['pid']} on {m['host']}" if m else "an unrecorded writer"
        return f"written by {writer}, unchanged for {age / 3600:.0f} h"
    return None


def clean_stale_temp(root: Path, log: Callable[[str], Any] = print) -> list[Path]:
    """Remove the temporary entries a killed writer left in the store at ``root`` (a scratch
    folder of a quantization killed while it wrote its GGUF, a half-written result file): the
    ``.tmp-*`` and ``.discarded-*`` entries directly under ``root`` and its folders
    (``artifacts/``, ``baselines/``, ``imatrix/``, ``results/``, ...) that ``stale_temp_reason``
    finds stale. One log line each; returns what was removed."""
    removed: list[Path] = []
    try:
        folders = [root, *(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]
    except OSError:
        return removed
    for folder in folders:
        try:
            entries = [Path(e.path) for e in os.scandir(folder) if e.name.startswith((".tmp-", ".discarded-"))]
        except OSError:
            continue
        for path in entries:
            try:
                why = stale_temp_reason(path)
                if why is None:
                    continue
                size = _own_size(path)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:  # gone meanwhile (its writer finished, another cleaner), or not ours to remove
                continue
            removed.append(path)
            log(f"store: removed a stale temporary entry {path.relative_to(root)} "
                f"({size / 1024**2:.1f} MiB; {why})")
    return removed


_CLEANED: set[tuple[str, int]] = set()


# ------------------------------------------------------------------ hash cache
@dataclass(frozen=True)
class FileStat:
    """What the hash cache compares: any write to a file changes its ctime (which, unlike
    mtime, cannot be set back with ``os.utime``); size, mtime and inode catch the rest."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileStat:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class HashCache:
    """sha256 of files, remembered in small sidecars (``hashes/<key of the path>.json``) with
    the file's (size, mtime_ns, ctime_ns, inode, device), so a multi-GB artifact that has not
    changed since it was last hashed is not read again: one ``stat`` and one small JSON read.

    A file whose ctime is less than ``settle_ns`` before the hashing began is hashed but not
    remembered: file timestamps are coarse (a clock tick, up to 10 ms), so a write in the same
    tick as the hash could leave the stat unchanged (git's "racily clean" problem). A file
    just written is therefore hashed again on its next check, and remembered then.
    """

    SETTLE_NS = 2_000_000_000

    def __init__(self, root: Path | None = None, settle_ns: int | None = None):
        self.folder = (root or quantgate_home()) / "hashes"
        self.settle_ns = self.SETTLE_NS if settle_ns is None else settle_ns
        self.files_hashed = 0  # files read in full by this cache (tests and measurements)
        self._memo: dict[str, tuple[FileStat, str]] = {}

    def _sidecar(self, real: Path) -> Path:
        return self.folder / f"{content_key(str(real))}.json"

    def sha256(self, path: Path) -> str:
        real = Path(path).resolve()
        stat = FileStat.of(real)
        memo = self._memo.get(str(real))
        if memo and memo[0] == stat:
            return memo[1]
        sidecar = self._sidecar(real)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            rec = json.loads(sidecar.read_text())
            if rec["path"] == str(real) and FileStat(**rec["stat"]) == stat:
                self._memo[str(real)] = (stat, rec["sha256"])
                return rec["sha256"]
        started_ns = time.time_ns()
        digest = sha256_file(real)
        self.files_hashed += 1
        # remember only a settled file that did not change while it was read
        if FileStat.of(real) == stat and stat.ctime_ns < started_ns - self.settle_ns:
            self._memo[str(real)] = (stat, digest)
            with contextlib.suppress(OSError):
                write_json_atomic(sidecar, {"path": str(real), "stat": dataclasses.asdict(stat), "sha256": digest})
        return digest


_HASH_CACHES: dict[Path, HashCache] = {}


def hash_cache(root: Path | None = None) -> HashCache:
    """The hash cache of the store at ``root`` (default ``QUANTGATE_HOME``), one per process."""
    root = root or quantgate_home()
    if root not in _HASH_CACHES:
        _HASH_CACHES[root] = HashCache(root)
    return _HASH_CACHES[root]


def tree_files(folder: Path, skip: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """Every file under ``folder`` as (name relative to it, path), symlinks followed, sorted."""
    out = []
    for dirpath, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel not in skip:
                out.append((rel, path))
    return sorted(out)


def tree_sha256(folder: Path, cache: HashCache | None = None) -> dict[str, str]:
    """{relative name: sha256} of every file under ``folder`` (a folder's content identity)."""
    cache = cache or hash_cache()
    return {rel: cache.sha256(path) for rel, path in tree_files(folder)}


# ------------------------------------------------------------------ problems
@dataclass(frozen=True)
class IntegrityProblem:
    """A stored entry that failed its check, and what was done about it."""

    entry: str  # e.g. "results/result-ab12.json", "artifacts/ab12/model.gguf"
    problem: str  # "sha256 mismatch", "no hash", "missing file", "unexpected file", "unreadable"
    expected: str | None
    found: str | None
    action: str  # "recomputing", "rebuilding", "re-fetching"

    def line(self) -> str:
        return (f"store integrity: {self.entry}: {self.problem} (expected {self.expected or '-'}, "
                f"found {self.found or '-'}); {self.action}")


def report_integrity(problem: IntegrityProblem, log: Callable[[str], Any] = print) -> None:
    """Log one line and, during a run, append the problem to the run's journal (its workers
    find the journal through ``QUANTGATE_INTEGRITY_JOURNAL``)."""
    log(problem.line())
    journal = os.environ.get(JOURNAL_ENV)
    if journal:
        row = {**dataclasses.asdict(problem), "pid": os.getpid()}
        with open(journal, "a") as f:  # one short line per append: safe from several processes
            f.write(json.dumps(row) + "\n")


class IntegrityJournal:
    """The integrity problems of one run, from this process and the workers it starts."""

    def __init__(self, path: Path):
        self.path = path
        self._previous: str | None = None

    def __enter__(self) -> IntegrityJournal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._previous = os.environ.get(JOURNAL_ENV)
        os.environ[JOURNAL_ENV] = str(self.path)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            os.environ.pop(JOURNAL_ENV, None)
        else:
            os.environ[JOURNAL_ENV] = self._previous

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ sealing
def _manifest_digest(manifest: dict) -> str:
    integrity = {k: v for k, v in manifest.get("integrity", {}).items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical_json({**manifest, "integrity": integrity}).encode()).hexdigest()


def seal(folder: Path, manifest: dict, cache: HashCache | None = None) -> dict:
    """Write ``manifest.json`` into ``folder`` with the sha256 of every other file and of the
    manifest itself; return the manifest as written (as a later ``json.loads`` gives it)."""
    cache = cache or hash_cache()
    files = {rel: {"sha256": cache.sha256(path), "size": path.stat().st_size}
             for rel, path in tree_files(folder, skip=(MANIFEST,))}
    sealed = json.loads(json.dumps({**manifest, "integrity": {"algorithm": INTEGRITY_ALGORITHM, "files": files}},
                                   default=str))
    sealed["integrity"]["manifest_sha256"] = _manifest_digest(sealed)
    (folder / MANIFEST).write_text(json.dumps(sealed, indent=1))
    return sealed


def files_digest(manifest: dict | None) -> str | None:
    """One hash of a sealed folder's files (names and sha256s), None for an unsealed one: an
    item result keyed with it belongs to exactly the bytes that were scored, so a rebuilt
    artifact whose bytes differ (a non-deterministic quantizer) is scored again."""
    files = ((manifest or {}).get("integrity") or {}).get("files")
    return content_key({rel: f["sha256"] for rel, f in files.items()}, 64) if files else None


def check_sealed(folder: Path, cache: HashCache | None = None) -> tuple[dict | None, list[IntegrityProblem]]:
    """(manifest, problems) of a sealed folder; ``action`` in the problems is left empty."""
    cache = cache or hash_cache()
    name = f"{folder.parent.name}/{folder.name}"
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, [IntegrityProblem(f"{name}/{MANIFEST}", f"unreadable ({type(exc).__name__})", None, None, "")]
    integrity = manifest.get("integrity") if isinstance(manifest, dict) else None
    if not isinstance(integrity, dict) or not isinstance(integrity.get("files"), dict):
        return manifest, [IntegrityProblem(f"{name}/{MANIFEST}", "no hash (sealed by no quantgate that checks)",
                                           "a manifest with file hashes", "none", "")]
    problems = []
    found_digest = _manifest_digest(manifest)
    if integrity.get("manifest_sha256") != found_digest:
        problems.append(IntegrityProblem(f"{name}/{MANIFEST}", "sha256 mismatch", integrity.get("manifest_sha256"),
                                         found_digest, ""))
    recorded: dict = integrity["files"]
    on_disk = dict(tree_files(folder, skip=(MANIFEST,)))
    for rel in sorted(set(recorded) | set(on_disk)):
        if rel not in on_disk:
            problems.append(IntegrityProblem(f"{name}/{rel}", "missing file", recorded[rel].get("sha256"), None, ""))
            continue
        if rel not in recorded:
            problems.append(IntegrityProblem(f"{name}/{rel}", "unexpected file", None, "a file not in the manifest", ""))
            continue
        try:
            found = cache.sha256(on_disk[rel])
        except OSError as exc:  # e.g. a dangling symlink
            found = f"unreadable ({type(exc).__name__})"
        if found != recorded[rel].get("sha256"):
            problems.append(IntegrityProblem(f"{name}/{rel}", "sha256 mismatch", recorded[rel].get("sha256"), found, ""))
    return manifest, problems


# ------------------------------------------------------------------ the store
class Store:
    def __init__(self, root: Path | None = None, log: Callable[[str], Any] = print):
        self.root = root or quantgate_home()
        self.log = log
        self.hashes = hash_cache(self.root)
        # once per process and store: what killed writers left behind (``clean_stale_temp``)
        seen = (str(self.root), os.getpid())
        if seen not in _CLEANED:
            _CLEANED.add(seen)
            clean_stale_temp(self.root, log)

    def report(self, problem: IntegrityProblem) -> None:
        report_integrity(problem, self.log)

    # ---- one writer per key
    def lock_path(self, kind: str, key: str) -> Path:
        return self.root / "locks" / kind / f"{key}.lock"

    @contextlib.contextmanager
    def lock(self, kind: str, key: str, on_wait: Callable[[str], Any] | None = None) -> Iterator[None]:
        """Hold the lock of store entry ``kind/key`` (one writer per key, across processes and
        hosts that share the store). If another process holds it, one line ("waiting for
        KIND/KEY (another run is producing it)", with the holder when known) goes to ``on_wait``
        (default: the store's log), then this waits without limit. The caller checks the store
        again once it holds the lock: what the other run produced is then there to reuse.

        The lock is ``filelock.FileLock``: ``flock(2)`` on ``locks/KIND/KEY.lock``, which the
        kernel releases when its holder dies (``kill -9`` too), so a killed run never leaves a
        lock behind; on NFS the Linux client maps ``flock`` onto NFS byte-range locks, which every
        node sees. (A ``SoftFileLock``, a file that exists while held, would survive a kill and
        block every later run.) ``locks/KIND/KEY.owner`` names the holder, for the waiting line."""
        from filelock import FileLock, Timeout

        path = self.lock_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        owner = path.with_suffix(".owner")
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = ""
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                rec = json.loads(owner.read_text())
                holder = f"; held by pid {rec['pid']} on {rec['host']} since {rec['since']}"
            (on_wait or self.log)(f"waiting for {kind}/{key} (another run is producing it){holder}")
            lock.acquire()
        try:
            with contextlib.suppress(OSError):
                owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
            yield
        finally:
            with contextlib.suppress(OSError):
                owner.unlink(missing_ok=True)
            lock.release()

    # ---- artifacts (and derived baselines): a folder holding a manifest
    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def manifest(self, kind: str, key: str) -> dict | None:
        """The manifest as stored, unchecked (to display); ``reusable_manifest`` to reuse."""
        path = self.folder(kind, key) / MANIFEST
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def reusable_manifest(self, kind: str, key: str) -> dict | None:
        """The manifest of a folder whose every file matches its recorded sha256. A folder that
        does not (or has no hashes) is reported, removed and ``None`` returned: rebuild it."""
        folder = self.folder(kind, key)
        if not folder.is_dir():
            return None
        manifest, problems = check_sealed(folder, self.hashes)
        if not problems:
            return manifest
        for problem in problems:
            self.report(dataclasses.replace(problem, action=f"rebuilding {kind}/{key}"))
        discard(folder)
        return None

    def seal(self, folder: Path, manifest: dict) -> dict:
        return seal(folder, manifest, self.hashes)

    # ---- item results: one JSON per (artifact, runtime, suite)
    def result_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.json"

    def get_result(self, key: str) -> Any | None:
        """The stored value if its sha256 checks out; otherwise report it and return None."""
        path = self.result_path(key)
        if not path.is_file():
            return None
        name = f"results/{key}.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # a torn write, a hand edit gone wrong
            self.report(IntegrityProblem(name, f"unreadable ({type(exc).__name__})", None, None, "recomputing"))
            return None
        if not (isinstance(stored, dict) and stored.get("format") == ENTRY_FORMAT and "value" in stored):
            self.report(IntegrityProblem(name, "no hash (written by an older quantgate or another program)",
                                         f"a {ENTRY_FORMAT} envelope", "none", "recomputing"))
            return None
        found = hashlib.sha256(canonical_json(stored["value"]).encode()).hexdigest()
        if found != stored.get("sha256"):
            self.report(IntegrityProblem(name, "sha256 mismatch", stored.get("sha256"), found, "recomputing"))
            return None
        return stored["value"]

    def put_result(self, key: str, value: Any) -> None:
        # hash what a reader will get back: the value after a JSON round trip
        value = json.loads(json.dumps(value, default=str))
        digest = hashlib.sha256(canonical_json(value).encode()).hexdigest()
        write_json_atomic(self.result_path(key), {"format": ENTRY_FORMAT, "sha256": digest, "value": value})
