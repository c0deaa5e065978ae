"""Item journals: a suite's finished item records, appended to the store as they are scored.

A suite scores its items in chunks; after each chunk its records are appended to
``<store>/journals/<result key>.jsonl`` and flushed to disk, one line per chunk. A worker that
is killed (kill -9, Ctrl-C, a Ray task retried on another node, a CI job resumed) loses at most
the chunk it was scoring: the next attempt reads the journal, skips every item it names and
scores the rest. When the suite completes, its result is stored under the same key and the
journal removed. The journal is keyed by the result key (artifact, its files, runtime, its
versions and params, suite, items), so records never cross into another result.

Each line carries the sha256 of its records: a torn last line (the kill came mid-write) or an
edited one is dropped and its items scored again, never read back wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from harness.store import canonical_json

JOURNAL_FORMAT = "quantgate.journal/1"


def journal_path(store_root: Path, result_key: str) -> Path:
    return Path(store_root) / "journals" / f"{result_key}.jsonl"


def _digest(records: list[dict]) -> str:
    return hashlib.sha256(canonical_json(records).encode()).hexdigest()


class ItemJournal:
    """The finished records of one (artifact, runtime, suite, items) result, by item id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        #: lines dropped on reading (torn or edited): their items are scored again
        self.dropped = 0
        self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                records = entry["records"]
                ok = entry.get("format") == JOURNAL_FORMAT and entry.get("sha256") == _digest(records)
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                self.dropped += 1
                continue
            for rec in records:
                self.records[str(rec["id"])] = rec

    def done(self, item_id: Any) -> bool:
        return str(item_id) in self.records

    def append(self, records: list[dict]) -> None:
        """One line for a chunk of records, on disk (fsync) before this returns."""
        if not records:
            return
        # what a reader gets back is the JSON round trip: hash that
        records = json.loads(json.dumps(records, default=str))
        line = json.dumps({"format": JOURNAL_FORMAT, "sha256": _digest(records), "records": records},
                          separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # a line written after a torn one must start on its own line
            if os.fstat(fd).st_size and not self._ends_with_newline():
                line = "\n" + line
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        for rec in records:
            self.records[str(rec["id"])] = rec

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def ordered(self, items: list[dict]) -> list[dict]:
        """The records of ``items``, in their order (every item must be done)."""
        return [self.records[str(it["id"])] for it in items]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
