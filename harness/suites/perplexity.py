"""Perplexity on fixed token windows or whole documents.

``unit: window`` (default): the text is tokenized once with the baseline's tokenizer and
cut into non-overlapping windows of ``context_length`` tokens until ``max_tokens`` is
spent; in each window the first token is context only (the model has no BOS).

``unit: document`` (lm-eval's wikitext protocol): the text is split into documents
(WikiText's `` = Title = `` headings; other text is one document), whole documents are
taken in order until ``max_tokens`` is spent, each is prefixed with the end-of-text token
and scored in disjoint rolling windows of ``context_length`` tokens, so every token of the
document is scored. Per-document log-likelihoods are kept; word and byte perplexity and
bits per byte are computed as lm-eval does (words: whitespace-separated).

Either way every candidate scores exactly the baseline's token ids.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness import sources
from harness.suites import Suite


class PerplexityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "wikitext2",
        description="'wikitext2' (pinned file in QUANTGATE_DATA), 'humaneval'/'gsm8k'/'mmlu' (sliceable: "
        "'humaneval[82:]'), a text file path, or 'hub:ID[:CONFIG[:SPLIT]]'",
    )
    context_length: int = Field(512, ge=16)
    max_tokens: int = Field(4096, ge=16, description="token budget: windows = max_tokens // context_length; "
                            "unit document: whole documents until the budget is reached")
    #: WikiText-2's file has CRLF line ends; "lf" normalizes them (as the hub dataset has
    #: them), "raw" keeps the bytes (as llama.cpp's perplexity tool reads them).
    newline: Literal["lf", "raw"] = "lf"
    unit: Literal["window", "document"] = "window"
    #: which positions of a window are scored: "all" (every token after the first), or
    #: "second_half" as llama.cpp's perplexity tool scores a chunk (the first half is context
    #: only), so that figures can be set beside the ones llama.cpp users publish
    scored_tokens: Literal["all", "second_half"] = "all"

    @model_validator(mode="after")
    def _budget(self):
        if self.max_tokens < self.context_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be at least context_length ({self.context_length})"
            )
        if self.scored_tokens != "all" and self.unit != "window":
            raise ValueError(f"scored_tokens {self.scored_tokens!r} needs unit 'window' (documents score every token)")
        return self


def first_scored_row(params: PerplexityParams, window_length: int) -> int:
    """The first row of ``token_distributions(window)`` that is scored: row i predicts token
    i + 1, so "all" scores rows 0 .. n-2 and "second_half" rows n//2 .. n-2 (llama-perplexity's
    ``first = n_ctx/2``: 255 tokens of a 512-token window)."""
    return window_length // 2 if params.scored_tokens == "second_half" else 0


def load_text(dataset: str, newline: str) -> str:
    """The suite's text: a pinned local file (``wikitext2``, ``gsm8k``) or a local file as
    stored, a sliced or record built-in rendered as records, a hub dataset's text; then
    CRLF -> LF when ``newline`` is "lf"."""
    if sources.is_pinned_file(dataset):
        raw = sources.pinned_file_text(dataset)
    elif sources.is_builtin(dataset):
        raw = sources.load_text(dataset)  # record sets: humaneval, gsm8k, mmlu (sliceable)
    elif sources.is_hub(dataset):
        raw = sources.hub_text(dataset[len(sources.HUB_PREFIX):])
    else:
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"perplexity dataset {dataset!r}: no such file")
        raw = sources.file_bytes_text(path)
    return raw.replace("\r\n", "\n") if newline == "lf" else raw


def _hash_tokens(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def token_windows(params: PerplexityParams, session) -> list[list[int]]:
    """Non-overlapping windows of ``context_length`` tokens, ``max_tokens`` in all."""
    text = load_text(params.dataset, params.newline)
    L = params.context_length
    n_windows = params.max_tokens // L
    need = n_windows * L
    # Tokenize a growing prefix rather than the whole corpus; drop the last
    # tokens of a cut prefix, which may be a word split in two.
    chars = need * 6
    while True:
        ids = session.tokenize(text[:chars])
        if len(ids) >= need + 8 or chars >= len(text):
            break
        chars *= 2
    if len(ids) < need:
        n_windows = len(ids) // L
        if n_windows == 0:
            raise ValueError(f"dataset {params.dataset!r} has {len(ids)} tokens, fewer than context_length {L}")
    return [[int(t) for t in ids[w * L : (w + 1) * L]] for w in range(n_windows)]


_WIKI_TITLE = re.compile(r"^ = [^=].* = $", re.MULTILINE)


def split_documents(text: str) -> list[str]:
    """WikiText articles start at level-1 headings (`` = Title = ``); other text is one document."""
    starts = [m.start() for m in _WIKI_TITLE.finditer(text)]
    if not starts:
        return [text.strip("\n")] if text.strip() else []
    if starts[0] != 0:
        starts.insert(0, 0)
    docs = [text[a:b].strip("\n") for a, b in zip(starts, starts[1:] + [len(text)], strict=True)]
    return [d for d in docs if d.strip()]


def document_items(params: PerplexityParams, session) -> list[dict]:
    """Whole documents within the token budget, each as disjoint rolling windows."""
    docs = split_documents(load_text(params.dataset, params.newline))
    prefix = list(session.stop_token_ids[:1])
    if not prefix:
        raise ValueError("document perplexity needs an end-of-text token to open each document")
    L, items, spent = params.context_length, [], 0
    for d, doc in enumerate(docs):
        ids = [int(t) for t in session.tokenize(doc)]
        seq = prefix + ids
        # window k holds seq[k*(L-1) : k*(L-1)+L]: its first token is context, the rest scored
        windows = [seq[k: k + L] for k in range(0, len(seq) - 1, L - 1)]
        items.append({"id": f"d{d:04d}", "windows": windows, "n_tokens": len(ids),
                      "n_bytes": len(doc.encode("utf-8")), "n_words": len(re.split(r"\s+", doc))})
        spent += len(ids)
        if spent >= params.max_tokens:
            break
    return items


class PerplexitySuite(Suite):
    name = "perplexity"
    Params = PerplexityParams
    version = "2"
    metrics = {"ppl": "lower", "nll": "lower", "bits_per_byte": "lower", "byte_perplexity": "lower",
               "word_perplexity": "lower", "tokens": None}  # tokens: a count

    def context_length(self, params: PerplexityParams) -> int:
        return params.context_length

    def data_identity(self, params: PerplexityParams) -> dict[str, Any]:
        text = load_text(params.dataset, params.newline)
        return {"text_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def prepare(self, params: PerplexityParams, session) -> dict[str, Any]:
        L = params.context_length
        meta = {"dataset": params.dataset, "newline": params.newline, "unit": params.unit, "context_length": L,
                "scored_tokens": params.scored_tokens}
        if params.unit == "document":
            items = document_items(params, session)
            meta.update(documents=len(items), n_scored=sum(it["n_tokens"] for it in items))
            return {"items": items, "meta": meta}
        windows = token_windows(params, session)
        items = []
        for w, window in enumerate(windows):
            first = first_scored_row(params, len(window))
            text = session.detokenize(window[first + 1:])
            items.append({"id": f"w{w:04d}", "tokens": window, "n_bytes": len(text),
                          "n_words": len(text.decode("utf-8", "ignore").split())})
        meta.update(windows=len(windows), n_scored=sum(len(w) - 1 - first_scored_row(params, len(w)) for w in windows))
        return {"items": items, "meta": meta}

    def score(self, session, items: list[dict], params: PerplexityParams) -> list[dict[str, Any]]:
        records = []
        for item in items:
            windows = item.get("windows") or [item["tokens"]]
            firsts = [first_scored_row(params, len(w)) if "tokens" in item else 0 for w in windows]
            sums = [float(session.token_logprobs(w)[f:].sum()) for w, f in zip(windows, firsts, strict=True)]
            records.append({
                "id": item["id"],
                "prompt_hash": _hash_tokens([t for w in windows for t in w]),
                "logprob_sum": float(sum(sums)),
                "n_scored": int(sum(len(w) - 1 - f for w, f in zip(windows, firsts, strict=True))),
                "n_bytes": item["n_bytes"],
                "n_words": item.get("n_words"),
                **({"window_logprob_sums": sums} if len(windows) > 1 else {}),
            })
        return records

    def aggregate(self, items: list[dict], records: list[dict], params: PerplexityParams) -> dict[str, dict]:
        lp = np.array([r["logprob_sum"] for r in records], dtype=np.float64)
        n = np.array([r["n_scored"] for r in records], dtype=np.float64)
        nbytes = float(sum(r["n_bytes"] for r in records))
        words = [r.get("n_words") for r in records]
        total_n = n.sum()
        nll = -lp.sum() / total_n
        # standard error of the token-weighted mean NLL, windows/documents as the sampling unit
        per_unit = -lp / n
        k = len(records)
        se_nll = float(np.sqrt(np.sum((n / total_n) ** 2 * (per_unit - nll) ** 2) * k / max(k - 1, 1))) if k > 1 else None
        ppl = math.exp(nll)
        out = {
            "ppl": {"value": ppl, "stderr": ppl * se_nll if se_nll is not None else None, "n": k},
            "nll": {"value": float(nll), "stderr": se_nll, "n": k},
            "bits_per_byte": {"value": float(-lp.sum() / (math.log(2) * nbytes)), "stderr": None, "n": k},
            "byte_perplexity": {"value": math.exp(-lp.sum() / nbytes), "stderr": None, "n": k},
            "tokens": {"value": float(total_n), "stderr": None, "n": k},
        }
        if all(w for w in words):
            out["word_perplexity"] = {"value": math.exp(-lp.sum() / float(sum(words))), "stderr": None, "n": k}
        return out
