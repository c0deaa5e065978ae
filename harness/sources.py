"""Text sources: where calibration and the suites get their text.

A source is a string naming one of:

* a built-in corpus (``BUILTIN``): ``wikitext2`` (prose), and the record sets ``humaneval``
  (Python code), ``gsm8k`` (math word problems), ``mmlu`` (exam questions); a record set takes
  a slice, ``humaneval[0:82]``, to keep calibration and evaluation apart;
* a local file: ``.txt`` text, or ``.jsonl`` / ``.jsonl.gz`` records (field ``text``, or
  ``messages`` joined as ``role: content`` lines);
* ``hub:ID[:CONFIG[:SPLIT]]``: a hub dataset's ``text`` column, where the hub is reachable.

This module only turns a source into text. The files behind the built-ins are fetched,
pinned and verified by ``harness.data`` (wheel assets; the ``QUANTGATE_DATA`` files in
``LOCAL_FILES``), which knows nothing about text.

Text hashes enter cache keys (calibration's artifact key, the suites' data identity): a change
to what any function here returns for a source changes those keys.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from harness import data

#: built-in corpus names
BUILTIN = ("wikitext2", "humaneval", "gsm8k", "mmlu")
#: the built-ins made of records, which take a slice: ``gsm8k[0:100]``
RECORD_SETS = ("humaneval", "gsm8k", "mmlu")
#: the prefix of a hub dataset source
HUB_PREFIX = "hub:"

_SLICED = re.compile(r"([a-z0-9_]+)\[(-?\d*):(-?\d*)\]")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file (gzip-compressed when its name ends in ``.gz``)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def record_text(rec: dict) -> str:
    """One JSONL record as text: its ``text`` field, or its ``messages`` as ``role: content`` lines."""
    if "text" in rec:
        return str(rec["text"])
    if "messages" in rec:
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in rec["messages"])
    raise ValueError("calibration JSONL records need a 'text' or 'messages' field")


def split_source(source: str) -> tuple[str, slice | None]:
    """``humaneval[0:82]`` -> ("humaneval", slice(0, 82)): records of a built-in set."""
    m = _SLICED.fullmatch(source)
    if not m:
        return source, None
    return m.group(1), slice(int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None)


def is_builtin(source: str) -> bool:
    """Whether ``source`` names a built-in corpus (sliced or not)."""
    return split_source(source)[0] in BUILTIN


def is_hub(source: str) -> bool:
    """Whether ``source`` names a hub dataset (``hub:ID[:CONFIG[:SPLIT]]``)."""
    return source.startswith(HUB_PREFIX)


def is_pinned_file(source: str) -> bool:
    """Whether ``source`` names a pinned file of the local data folder (``wikitext2``, ``gsm8k``)."""
    return source in data.LOCAL_FILES


def hub_text(spec: str) -> str:
    """A hub dataset's ``text`` column joined (as lm-eval's wikitext task); ``spec`` is
    ``ID[:CONFIG[:SPLIT]]`` (split ``test`` by default), without the ``hub:`` prefix."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError("hub datasets need the 'datasets' package: pip install datasets") from None
    parts = spec.split(":")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else "test")
    ds = datasets.load_dataset(name, config, split=split)
    return "".join(ds["text"])


def pinned_file_text(name: str) -> str:
    """A pinned file of the local data folder (``harness.data.LOCAL_FILES``: ``wikitext2``,
    ``gsm8k``) decoded as stored: line ends kept, JSONL not rendered."""
    return data.local_file(name).read_bytes().decode("utf-8")


def file_bytes_text(path: Path) -> str:
    """A local file decoded as stored (line ends kept)."""
    return path.read_bytes().decode("utf-8")


def builtin_text(name: str, part: slice | None = None) -> str:
    """A built-in corpus as text: WikiText-2 with LF line ends; a record set's records
    (``part`` of them) rendered and separated by blank lines."""
    if part is not None and name not in RECORD_SETS:
        raise ValueError(f"record slices apply to humaneval, gsm8k and mmlu, not {name!r}")
    if part is None:
        part = slice(None)
    if name == "wikitext2":
        return pinned_file_text("wikitext2").replace("\r\n", "\n")
    if name == "gsm8k":
        return "\n\n".join(f"Question: {r['question']}\nAnswer: {r['answer']}"
                           for r in read_jsonl(data.local_file("gsm8k"))[part])
    if name == "humaneval":
        return "\n\n".join(r["prompt"] + r["canonical_solution"] for r in read_jsonl(data.fetch_asset("humaneval"))[part])
    if name == "mmlu":
        return "\n\n".join(
            f"{r['question']}\nA. {r['answer_a']}\nB. {r['answer_b']}\nC. {r['answer_c']}\nD. {r['answer_d']}\n"
            f"Answer: {r['correct_answer']}" for r in read_jsonl(data.fetch_asset("mmlu"))[part])
    raise ValueError(f"unknown built-in corpus {name!r}; allowed: {', '.join(BUILTIN)}")


def load_text(source: str, what: str = "source") -> str:
    """The text of any source: a built-in (record sets sliceable, e.g. ``humaneval[0:82]``),
    a hub dataset, or a local file (``.jsonl``/``.gz`` records rendered, other files read as
    text with universal newlines). ``what`` names the source in errors."""
    name, part = split_source(source)
    if part is not None or name in BUILTIN:
        return builtin_text(name, part)
    if is_hub(source):
        return hub_text(source[len(HUB_PREFIX):])
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {source!r}: not a built-in ({', '.join(BUILTIN)}) nor a file")
    if path.suffix in (".jsonl", ".gz"):
        return "\n\n".join(record_text(r) for r in read_jsonl(path))
    return path.read_text(encoding="utf-8")
