"""Perplexity on fixed token windows.

The text is tokenized once with the baseline's tokenizer and cut into
non-overlapping windows of ``context_length`` tokens until ``max_tokens`` is
spent; every candidate scores exactly these windows. In each window the first
token is context only (the model has no BOS), the rest are scored.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.suites import Suite


class PerplexityParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "wikitext2",
        description="'wikitext2' (pinned file in QUANTGATE_DATA), 'humaneval'/'gsm8k'/'mmlu' (sliceable: "
        "'humaneval[82:]'), a text file path, or 'hub:ID[:CONFIG[:SPLIT]]'",
    )
    context_length: int = Field(512, ge=16)
    max_tokens: int = Field(4096, ge=16, description="token budget: windows = max_tokens // context_length")
    #: WikiText-2's file has CRLF line ends; "lf" normalizes them (as the hub dataset has
    #: them), "raw" keeps the bytes (as llama.cpp's perplexity tool reads them).
    newline: Literal["lf", "raw"] = "lf"

    @model_validator(mode="after")
    def _budget(self):
        if self.max_tokens < self.context_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be at least context_length ({self.context_length})"
            )
        return self


def load_text(dataset: str, newline: str) -> str:
    from harness.calibration import BUILTIN, _split, load_calibration_text
    from harness.data import LOCAL_FILES, local_file

    if dataset in LOCAL_FILES:
        raw = local_file(dataset).read_bytes().decode("utf-8")
    elif _split(dataset)[0] in BUILTIN:
        raw = load_calibration_text(dataset)  # record sets: humaneval, gsm8k, mmlu (sliceable)
    elif dataset.startswith("hub:"):
        raw = _hub_text(dataset[4:])
    else:
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"perplexity dataset {dataset!r}: no such file")
        raw = path.read_bytes().decode("utf-8")
    return raw.replace("\r\n", "\n") if newline == "lf" else raw


def _hub_text(spec: str) -> str:
    """A hub dataset's ``text`` column joined by newlines (as lm-eval's wikitext task)."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError("hub datasets need the 'datasets' package: pip install datasets") from None
    parts = spec.split(":")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else "test")
    ds = datasets.load_dataset(name, config, split=split)
    return "".join(ds["text"])


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


class PerplexitySuite(Suite):
    name = "perplexity"
    Params = PerplexityParams
    version = "1"
    metrics = {"ppl": "lower", "nll": "lower", "bits_per_byte": "lower", "tokens": "higher"}

    def context_length(self, params: PerplexityParams) -> int:
        return params.context_length

    def data_identity(self, params: PerplexityParams) -> dict[str, Any]:
        text = load_text(params.dataset, params.newline)
        return {"text_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def prepare(self, params: PerplexityParams, session) -> dict[str, Any]:
        windows = token_windows(params, session)
        items = [{"id": f"w{w:04d}", "tokens": window, "n_bytes": len(session.detokenize(window[1:]))}
                 for w, window in enumerate(windows)]
        L = params.context_length
        meta = {"dataset": params.dataset, "newline": params.newline, "windows": len(windows),
                "context_length": L, "scored_tokens": len(windows) * (L - 1)}
        return {"items": items, "meta": meta}

    def score(self, session, items: list[dict], params: PerplexityParams) -> list[dict[str, Any]]:
        records = []
        for item in items:
            lp = session.token_logprobs(item["tokens"])
            records.append({
                "id": item["id"],
                "prompt_hash": _hash_tokens(item["tokens"]),
                "logprob_sum": float(lp.sum()),
                "n_scored": int(lp.size),
                "n_bytes": item["n_bytes"],
            })
        return records

    def aggregate(self, items: list[dict], records: list[dict], params: PerplexityParams) -> dict[str, dict]:
        lp = np.array([r["logprob_sum"] for r in records], dtype=np.float64)
        n = np.array([r["n_scored"] for r in records], dtype=np.float64)
        nbytes = float(sum(r["n_bytes"] for r in records))
        total_n = n.sum()
        nll = -lp.sum() / total_n
        # standard error of the token-weighted mean NLL, windows as the sampling unit
        per_window = -lp / n
        k = len(records)
        se_nll = float(np.sqrt(np.sum((n / total_n) ** 2 * (per_window - nll) ** 2) * k / max(k - 1, 1))) if k > 1 else None
        ppl = math.exp(nll)
        return {
            "ppl": {"value": ppl, "stderr": ppl * se_nll if se_nll is not None else None, "n": k},
            "nll": {"value": nll, "stderr": se_nll, "n": k},
            "bits_per_byte": {"value": -lp.sum() / (math.log(2) * nbytes), "stderr": None, "n": k},
            "tokens": {"value": float(total_n), "stderr": None, "n": k},
        }
