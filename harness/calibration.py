"""Calibration data a quantizer sees, declared in the plan and hashed into the artifact key.

Sources: a built-in name (``wikitext2`` prose, ``humaneval`` Python code, ``gsm8k``
math word problems, ``mmlu`` exam questions: all from the pinned offline data; the
record sets take a slice, ``humaneval[0:82]``, to keep calibration and evaluation
apart), a local
``.txt`` file or ``.jsonl`` file (field ``text``, or ``messages`` joined), or
``hub:ID[:CONFIG[:SPLIT]]`` (column ``text``) where the hub is reachable.
Samples are ``samples`` windows of ``seq_len`` tokens drawn with ``seed``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

BUILTIN = ("wikitext2", "humaneval", "gsm8k", "mmlu")


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _record_text(rec: dict) -> str:
    if "text" in rec:
        return str(rec["text"])
    if "messages" in rec:
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in rec["messages"])
    raise ValueError("calibration JSONL records need a 'text' or 'messages' field")


def split_source(source: str) -> tuple[str, slice | None]:
    """``humaneval[0:82]`` -> ("humaneval", slice(0, 82)): records of a built-in set."""
    import re

    m = re.fullmatch(r"([a-z0-9_]+)\[(-?\d*):(-?\d*)\]", source)
    if not m:
        return source, None
    return m.group(1), slice(int(m.group(2)) if m.group(2) else None, int(m.group(3)) if m.group(3) else None)


def load_calibration_text(source: str) -> str:
    """Text of a source; built-in record sets take a slice, e.g. ``humaneval[0:82]``."""
    from harness import data

    source, part = split_source(source)
    if part is not None and source not in ("humaneval", "gsm8k", "mmlu"):
        raise ValueError(f"record slices apply to humaneval, gsm8k and mmlu, not {source!r}")
    if part is None:
        part = slice(None)
    if source == "wikitext2":
        return data.local_file("wikitext2").read_bytes().decode("utf-8").replace("\r\n", "\n")
    if source == "gsm8k":
        return "\n\n".join(f"Question: {r['question']}\nAnswer: {r['answer']}" for r in read_jsonl(data.local_file("gsm8k"))[part])
    if source == "humaneval":
        return "\n\n".join(r["prompt"] + r["canonical_solution"] for r in read_jsonl(data.fetch_asset("humaneval"))[part])
    if source == "mmlu":
        return "\n\n".join(
            f"{r['question']}\nA. {r['answer_a']}\nB. {r['answer_b']}\nC. {r['answer_c']}\nD. {r['answer_d']}\n"
            f"Answer: {r['correct_answer']}" for r in read_jsonl(data.fetch_asset("mmlu"))[part])
    if source.startswith("hub:"):
        from harness.suites.perplexity import hub_text

        return hub_text(source[4:])
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"calibration source {source!r}: not a built-in ({', '.join(BUILTIN)}) nor a file")
    if path.suffix in (".jsonl", ".gz"):
        return "\n\n".join(_record_text(r) for r in read_jsonl(path))
    return path.read_text(encoding="utf-8")


def calibration_identity(calibration: dict | None) -> dict | None:
    """What enters the artifact key: the text's hash and the sampling settings."""
    if not calibration:
        return None
    text = load_calibration_text(calibration["source"])
    return {**calibration, "text_sha256": hashlib.sha256(text.encode()).hexdigest()}


def sample_windows(ids: list[int], samples: int, seq_len: int, seed: int) -> list[list[int]]:
    """``samples`` windows of ``seq_len`` tokens at seeded random offsets (without overlap when possible)."""
    n = len(ids)
    if n <= seq_len:
        return [list(ids)]
    rng = np.random.default_rng(seed)
    slots = n // seq_len
    if slots >= samples:
        starts = sorted(rng.choice(slots, size=samples, replace=False) * seq_len)
    else:
        starts = sorted(rng.integers(0, n - seq_len, size=samples))
    return [list(ids[s : s + seq_len]) for s in starts]
