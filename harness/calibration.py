"""Calibration data a quantizer sees, declared in the plan and hashed into the artifact key.

The source is read by ``harness.sources``: a built-in name (``wikitext2`` prose,
``humaneval`` Python code, ``gsm8k`` math word problems, ``mmlu`` exam questions: all from
the pinned offline data; the record sets take a slice, ``humaneval[0:82]``, to keep
calibration and evaluation apart), a local ``.txt`` file or ``.jsonl`` file (field ``text``,
or ``messages`` joined), or ``hub:ID[:CONFIG[:SPLIT]]`` (column ``text``) where the hub is
reachable. Samples are ``samples`` windows of ``seq_len`` tokens drawn with ``seed``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from harness import sources


def load_calibration_text(source: str) -> str:
    """Text of a source (``harness.sources``); built-in record sets take a slice, e.g. ``humaneval[0:82]``."""
    return sources.load_text(source, what="calibration source")


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
