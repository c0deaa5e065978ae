"""Content-addressed store for artifacts and item results.

Everything lands under ``QUANTGATE_HOME`` (default: the user cache dir):

    data/<asset>/...              unpacked embedded data
    baselines/<key>/              derived baseline checkpoints (F16 GGUF, BF16 HF)
    artifacts/<key>/              one quantized artifact + manifest.json
    results/<key>.json            cached item results of one (artifact, runtime, suite)

Directories are built under a temporary name and renamed when complete, so a
killed build never leaves something that a later run would reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs

MANIFEST = "manifest.json"


def quantgate_home() -> Path:
    value = os.environ.get("QUANTGATE_HOME")
    return Path(value) if value else Path(platformdirs.user_cache_dir("quantgate"))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 24) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch folder that becomes ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():  # another process finished first: keep theirs
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
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


class Store:
    def __init__(self, root: Path | None = None):
        self.root = root or quantgate_home()

    # ---- artifacts (and derived baselines): a folder holding a manifest
    def folder(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def manifest(self, kind: str, key: str) -> dict | None:
        path = self.folder(kind, key) / MANIFEST
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    # ---- item results: one JSON per (artifact, runtime, suite)
    def result_path(self, key: str) -> Path:
        return self.root / "results" / f"{key}.json"

    def get_result(self, key: str) -> Any | None:
        path = self.result_path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a torn write from an older version: recompute

    def put_result(self, key: str, value: Any) -> None:
        write_json_atomic(self.result_path(key), value)
