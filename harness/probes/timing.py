"""Shared pieces of the speed probes: repetition statistics, metric names, prompts.

Statistics follow llama-bench where it reports (mean ± sample standard deviation over
repetitions) and add the median with its min–max, which is what the gates read: one slow
repetition on a shared machine moves the mean, not the median.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Iterable

#: MLflow accepts alphanumerics, '_', '-', '.', ' ', '/' in metric keys; quantgate's probe
#: metrics keep to the safest subset (no spaces or slashes: they also become column names)
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")

# A fixed, neutral prompt; repeated to reach the prompt length.
PROMPT = (
    "The history of the river valley begins with the first farmers, who settled along its banks "
    "and learned to read the seasons of flood and drought. "
)

STAT_SUFFIXES = ("", "_min", "_max", "_std", "_mean")


def summarize(values: Iterable[float]) -> dict[str, float]:
    """median, min, max, sample standard deviation (n - 1; 0 for one value) and mean."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("no values to summarize")
    if any(math.isnan(x) for x in v):
        raise ValueError(f"NaN among the values: {v}")
    return {
        "median": statistics.median(v),
        "min": min(v),
        "max": max(v),
        "std": statistics.stdev(v) if len(v) > 1 else 0.0,
        "mean": statistics.fmean(v),
    }


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between order statistics
    (numpy's default method)."""
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def check_name(name: str) -> str:
    if not _SAFE.match(name):
        raise ValueError(f"metric name {name!r} is not MLflow-safe (letters, digits, '_', '-', '.')")
    return name


def shape_key(kind: str, prompt_tokens: int, batch: int) -> str:
    """``decode_tps_p512_b1``: the figure, the prompt length and the batch size."""
    return check_name(f"{kind}_p{int(prompt_tokens)}_b{int(batch)}")


def with_stats(name: str, values: Iterable[float]) -> dict[str, float]:
    """``name`` (the median), ``name_min``, ``name_max``, ``name_std``, ``name_mean``."""
    s = summarize(values)
    return {check_name(name + suffix): s[key or "median"]
            for suffix, key in zip(STAT_SUFFIXES, ("", "min", "max", "std", "mean"), strict=True)}


def stat_names(name: str) -> list[str]:
    return [name + s for s in STAT_SUFFIXES]


def prompt_ids(session, n_tokens: int, offset: int = 0) -> list[int]:
    """``n_tokens`` token ids of the fixed prompt (repeated), starting ``offset`` tokens in:
    sequences of one batch differ, so that no runtime can serve one from another's cache."""
    base = session.tokenize(PROMPT)
    if not base:
        raise ValueError("the tokenizer returned no tokens for the probe prompt")
    need = n_tokens + offset
    ids = list(base)
    while len(ids) < need:
        ids += base
    return ids[offset:need]


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None
