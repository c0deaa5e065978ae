"""What an infrastructure failure was, in words a user can act on.

A tool that runs out of disk rarely says so: llama.cpp's quantizer answers
``llama_model_quantize returned 1``, a worker re-raises a bare ``OSError``. The runner asks
``describe_stage_failure`` for a stage's error message, which names a full store disk (the
exception's errno, or the store's filesystem being near full) before the tool's own words.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

#: below this much free space on the store's filesystem, a failed stage is blamed on the disk
LOW_SPACE_BYTES = 64 * 1024 * 1024

_ENOSPC_WORDS = ("no space left on device", f"[errno {errno.ENOSPC}]", "disk quota exceeded")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop always returns


def os_error_cause(exc: BaseException) -> str:
    """An OSError's cause without its file name ('no space left on device'); the caller
    names the file once."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return f"{type(exc).__name__}: {exc}".strip()


def is_no_space(exc: BaseException | None) -> bool:
    """ENOSPC or EDQUOT anywhere in the exception's chain, or in its message (a worker's
    exception can come back as text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if any(w in text for w in _ENOSPC_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_space(path: Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent); None
    when it cannot be told."""
    p = Path(path).expanduser()
    try:
        p = p.resolve()
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free
    except OSError:
        return None


def no_space_message(path: Path, free: int | None = None) -> str:
    free = free_space(path) if free is None else free
    return f"no space left on device: {path}" + (f" ({human_bytes(free)} free)" if free is not None else "")


def describe_stage_failure(exc: BaseException, store_root: Path | str) -> str:
    """A failed stage's error message: ``<Type>: <message>``, led by ``no space left on
    device: <store> (<free> free)`` when the exception is ENOSPC or the store's filesystem
    has less than 64 MiB free. Never raises: it runs while an error is being recorded."""
    message = f"{type(exc).__name__}: {exc}".strip()
    try:
        free = free_space(Path(store_root))
        if is_no_space(exc) or (free is not None and free < LOW_SPACE_BYTES):
            return f"{no_space_message(Path(store_root), free)}; {message}"
    except Exception:  # noqa: BLE001 - describing a failure must not fail
        pass
    return message
