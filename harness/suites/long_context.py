"""Long context: pass-key retrieval from a natural-text haystack, at several lengths and depths.

**Items** (fixed once by the baseline's session, as token ids). For every length L of
``lengths``, depth d of ``depths`` and j < ``per_cell``: a prompt of exactly L tokens,

    intro  +  haystack[:k]  +  needle  +  haystack[k:]  +  question

where the haystack is real prose (WikiText-2's test text by default: its paragraphs, headings
left out, each tokenized once, taken in order from a seeded paragraph and cut to the token
count that makes the prompt L tokens), the needle is " The pass key is 48213. Remember it.
48213 is the pass key." (a seeded 5-digit key per item), inserted at haystack token
k = round(d · haystack tokens), moved to the next word start when one is within ``MAX_SNAP``
tokens (so the needle does not split a word), and the question ends with an answer prefix:
"What is the pass key? Answer with the number. The pass key is". That is the passkey prompt of
Mohtashami & Jaggi (2023, "Landmark Attention"), with prose for filler and an instruction to
answer with the number. ``prompt: completion`` (default) is that plain text; ``prompt: chat``
puts intro, haystack and question in a user turn of the model's chat template and the answer
prefix in the opened assistant turn. Items are independent of the other cells: each (L, d, j)
draws its key and its starting paragraph from its own seeded generator.

**Scores** per item, both on the item's token ids:

- ``passkey_acc``: greedy generation of ``max_new_tokens`` tokens after the prompt; 1 when the
  first number in the reply is the key (exact match), else 0;
- ``passkey_logprob``: the log-likelihood (nats) of the key's tokens (" 48213") after the
  prompt: continuous, so a paired gate sees a degradation long before it flips answers.

Per-length metrics (``acc@L``, ``logprob@L``) are means over the items of that length, with a
standard error over those items; a gate on them is decided on the measured value and that
stderr. To gate one length on paired items, give it a suite of its own (``name: passkey-8k``,
``lengths: [8000]``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness import sources
from harness.suites import Suite

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about the important information there.\n\n")
#: Landmark Attention's needle; the key's repetition and the question's "Answer with the number"
#: keep a small model from answering "a key that is used to ..." when it has the key: on
#: SmolLM2-135M (F16) they lift exact matches at 1k/2k tokens from 3/6 and 1/6 to 5/6 and 4/6
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "\n\nWhat is the pass key? Answer with the number."
ANSWER_PREFIX = "The pass key is"
#: the farthest the needle moves from its requested token to start at a word boundary
MAX_SNAP = 8
#: fewest haystack tokens a prompt keeps around its needle
MIN_HAYSTACK = 32
_HEADING = re.compile(r"^\s*=.*=\s*$")
_NUMBER = re.compile(r"\d+")
_SENTINEL = "\x00QUANTGATE-USER-CONTENT\x00"


class LongContextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lengths: list[int] = Field([1024, 2048, 4096, 8000], min_length=1, description=(
        "prompt lengths in tokens of the baseline's tokenizer (intro, haystack, needle and question)"))
    depths: list[float] = Field([0.1, 0.5, 0.9], min_length=1, description=(
        "where the needle goes: the fraction of the haystack's tokens before it"))
    per_cell: int = Field(10, ge=1, le=1000, description="items per (length, depth)")
    seed: int = 0
    haystack: str = Field("wikitext2", description=(
        "the filler text: a built-in corpus (wikitext2), a text file or hub:ID; non-empty lines are paragraphs"))
    prompt: Literal["completion", "chat"] = Field("completion", description=(
        "completion: plain text ending 'The pass key is'; chat: the model's chat template, the answer prefix "
        "opening the assistant turn"))
    max_new_tokens: int = Field(12, ge=6, le=64, description="greedy tokens generated for the exact match")

    @field_validator("lengths")
    @classmethod
    def _lengths(cls, v: list[int]) -> list[int]:
        bad = [n for n in v if n < 128 or n > 1_048_576]
        if bad:
            raise ValueError(f"lengths must be 128 to 1048576 tokens; got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"lengths repeat a value: {v}")
        return v

    @field_validator("depths")
    @classmethod
    def _depths(cls, v: list[float]) -> list[float]:
        bad = [d for d in v if not 0.0 <= d <= 1.0]
        if bad:
            raise ValueError(f"depths are fractions of the haystack, 0 to 1; got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"depths repeat a value: {v}")
        return v


def cell_id(length: int, depth: float, j: int) -> str:
    """``L4096-d50-03``: length, depth in percent (one decimal where needed), index."""
    pct = f"{100 * depth:.1f}".rstrip("0").rstrip(".")
    return f"L{length}-d{pct}-{j:02d}"


def paragraphs(text: str) -> list[str]:
    """The haystack's paragraphs: non-empty lines, WikiText headings (`` = Title = ``) left out."""
    return [line.strip() for line in text.split("\n") if line.strip() and not _HEADING.match(line)]


def trained_context(session) -> int | None:
    """The longest context the session's model was trained for, where the runtime says so
    (llama.cpp: the GGUF's ``<arch>.context_length``; transformers: ``max_position_embeddings``),
    else None."""
    n = getattr(session, "n_ctx_train", None)
    if isinstance(n, int) and n > 0:
        return n
    llm = getattr(session, "llm", None)
    model = getattr(llm, "_model", None)
    if model is not None and hasattr(model, "n_ctx_train"):
        try:
            n = int(model.n_ctx_train())
            return n if n > 0 else None
        except Exception:  # noqa: BLE001 - a runtime that cannot say: unknown
            pass
    config = getattr(getattr(session, "model", None), "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def context_problem(params: LongContextParams, model_context: int | None) -> str | None:
    """One line when the longest prompt (plus what is generated after it) exceeds
    ``model_context`` (the model's trained context), else None."""
    need = max(params.lengths) + params.max_new_tokens
    if model_context is None or need <= model_context:
        return None
    fits = [n for n in params.lengths if n + params.max_new_tokens <= model_context]
    return (f"suite long-context: length {max(params.lengths)} (+{params.max_new_tokens} generated) exceeds the "
            f"model's context of {model_context} tokens; lengths that fit: {fits or 'none'} "
            f"(at most {model_context - params.max_new_tokens})")


def _hash_tokens(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def _is_word_start(session, ids: list[int], k: int) -> bool:
    """Whether haystack token ``k`` starts a word: its text starts with whitespace, or the
    token before it ends with whitespace."""
    if k <= 0 or k >= len(ids):
        return True
    here = session.detokenize([ids[k]])
    before = session.detokenize([ids[k - 1]])
    return bool(here[:1].isspace() or before[-1:].isspace())


class _Builder:
    """Everything a prompt is made of, tokenized once with the baseline's session."""

    def __init__(self, params: LongContextParams, session):
        self.session = session
        text = sources.load_text(params.haystack, "long-context haystack")
        paras = paragraphs(text)
        if not paras:
            raise ValueError(f"long-context haystack {params.haystack!r} has no text")
        self.paras = [[int(t) for t in session.tokenize(p + "\n")] for p in paras]
        self.total = sum(len(p) for p in self.paras)
        if params.prompt == "chat":
            rendered = session.chat_prompt([{"role": "user", "content": _SENTINEL}])
            before, sep, after = rendered.partition(_SENTINEL)
            if not sep:
                raise ValueError("the chat template dropped the user's message: use prompt: completion")
            self.head = [int(t) for t in session.tokenize(before + INTRO)]
            self.tail = [int(t) for t in session.tokenize(QUESTION + after + ANSWER_PREFIX)]
        else:
            self.head = [int(t) for t in session.tokenize(INTRO)]
            self.tail = [int(t) for t in session.tokenize(QUESTION + " " + ANSWER_PREFIX)]

    def haystack(self, start: int, n: int) -> list[int]:
        """``n`` tokens of paragraphs from paragraph ``start`` on (wrapping round the text)."""
        if n > self.total:
            raise ValueError(f"the haystack holds {self.total} tokens, fewer than the {n} a prompt needs")
        out: list[int] = []
        i = start
        while len(out) < n:
            out += self.paras[i % len(self.paras)]
            i += 1
        return out[:n]

    def item(self, length: int, depth: float, j: int, seed: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, length, int(round(depth * 10_000)), j])
        key = str(int(rng.integers(10_000, 100_000)))
        start = int(rng.integers(len(self.paras)))
        needle = [int(t) for t in self.session.tokenize(NEEDLE.format(key=key))]
        target = [int(t) for t in self.session.tokenize(" " + key)]
        n_hay = length - len(self.head) - len(needle) - len(self.tail)
        if n_hay < MIN_HAYSTACK:
            raise ValueError(f"long-context length {length} leaves {n_hay} haystack tokens after the prompt's "
                             f"{length - n_hay} fixed tokens; use a length of at least {length - n_hay + MIN_HAYSTACK}")
        hay = self.haystack(start, n_hay)
        want = int(round(depth * n_hay))
        k = want
        for s in range(min(MAX_SNAP, n_hay - want) + 1):  # the next word start, when one is near
            if _is_word_start(self.session, hay, want + s):
                k = want + s
                break
        tokens = self.head + hay[:k] + needle + hay[k:] + self.tail
        assert len(tokens) == length
        return {"id": cell_id(length, depth, j), "tokens": tokens, "target": target, "key": key,
                "length": length, "depth": depth, "needle_pos": len(self.head) + k, "needle_tokens": len(needle),
                "haystack_tokens": n_hay, "needle_depth": round(k / n_hay, 6), "haystack_start": start}


def first_number(text: str) -> str | None:
    m = _NUMBER.search(text)
    return m.group(0) if m else None


def _mean_se(x: np.ndarray) -> tuple[float, float | None]:
    n = len(x)
    return float(x.mean()), (float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else None)


class LongContextSuite(Suite):
    name = "long-context"
    Params = LongContextParams
    version = "1"
    #: the overall metrics, and the per-length ones of the default lengths (``metric_names``
    #: gives those of other lengths: ``acc@L`` / ``logprob@L``, higher is better)
    metrics: ClassVar[dict[str, str | None]] = {
        "passkey_acc": "higher", "passkey_logprob": "higher",
        **{f"{m}@{n}": "higher" for n in (1024, 2048, 4096, 8000) for m in ("acc", "logprob")},
    }

    @classmethod
    def metric_names(cls, params: LongContextParams) -> list[str]:
        """The metrics these params give: the overall two and two per length."""
        return ["passkey_acc", "passkey_logprob"] + [f"{m}@{n}" for n in params.lengths for m in ("acc", "logprob")]

    @classmethod
    def metric_directions(cls, params: LongContextParams) -> dict[str, str | None]:
        return {m: cls.metrics.get(m) or cls.direction_of(m) for m in cls.metric_names(params)}

    @classmethod
    def direction_of(cls, metric: str) -> str | None:
        return "higher" if re.fullmatch(r"(acc|logprob)@\d+", metric) else None

    def context_length(self, params: LongContextParams) -> int:
        # the longest prompt, then the key's tokens (scored) or the reply (generated) after it
        return max(params.lengths) + max(params.max_new_tokens, 16)

    def data_identity(self, params: LongContextParams) -> dict[str, Any]:
        text = sources.load_text(params.haystack, "long-context haystack")
        return {"haystack_sha256": hashlib.sha256(text.encode()).hexdigest()}

    def _check_context(self, params: LongContextParams, session) -> None:
        why = context_problem(params, trained_context(session))
        if why:
            raise ValueError(why)

    def prepare(self, params: LongContextParams, session) -> dict[str, Any]:
        self._check_context(params, session)
        b = _Builder(params, session)
        items = [b.item(n, d, j, params.seed) for n in params.lengths for d in params.depths
                 for j in range(params.per_cell)]
        meta = {
            "haystack": params.haystack, "prompt": params.prompt, "lengths": list(params.lengths),
            "depths": list(params.depths), "per_cell": params.per_cell, "seed": params.seed,
            "max_new_tokens": params.max_new_tokens, "needle": NEEDLE.strip(),
            "question": QUESTION.strip() + " " + ANSWER_PREFIX,
            "prompt_format": ("plain completion: intro, haystack with needle, question, answer prefix"
                              if params.prompt == "completion" else
                              "chat template: intro, haystack and question as the user turn; "
                              "the answer prefix opens the assistant turn"),
            "fixed_tokens": {"head": len(b.head), "tail": len(b.tail)},
            "haystack_paragraphs": len(b.paras), "haystack_tokens_total": b.total,
            "scores": "passkey_acc: first number of the greedy reply == key; "
                      "passkey_logprob: log p(key tokens | prompt), nats",
        }
        return {"items": items, "meta": meta}

    def score(self, session, items: list[dict], params: LongContextParams) -> list[dict[str, Any]]:
        records = []
        for item in items:
            prompt, target = list(item["tokens"]), list(item["target"])
            lp, forced = session.continuation_logprobs(prompt, target)
            # after the key's scoring, llama.cpp reuses the prompt's KV cache for the reply
            reply = session.generate(prompt, params.max_new_tokens, [])
            answer = first_number(reply)
            acc = 1.0 if answer == item["key"] else 0.0
            records.append({
                "id": item["id"], "prompt_hash": _hash_tokens(prompt + target),
                "length": item["length"], "depth": item["depth"], "key": item["key"],
                "response": reply, "answer": answer, "key_greedy": bool(forced),
                "key_token_logprobs": [float(f"{x:.6g}") for x in lp],
                "scores": {"passkey_acc": acc, "passkey_logprob": float(lp.sum())},
            })
        return records

    def aggregate(self, items: list[dict], records: list[dict], params: LongContextParams) -> dict[str, dict]:
        acc = np.array([r["scores"]["passkey_acc"] for r in records], dtype=np.float64)
        lp = np.array([r["scores"]["passkey_logprob"] for r in records], dtype=np.float64)
        length = np.array([r["length"] for r in records])
        out: dict[str, dict] = {}
        for name, x in (("passkey_acc", acc), ("passkey_logprob", lp)):
            v, se = _mean_se(x)
            out[name] = {"value": v, "stderr": se, "n": len(x), "better": "higher"}
        for n in params.lengths:
            sel = length == n
            if not sel.any():
                continue
            for name, x in (("acc", acc), ("logprob", lp)):
                v, se = _mean_se(x[sel])
                out[f"{name}@{n}"] = {"value": v, "stderr": se, "n": int(sel.sum()), "better": "higher"}
        return out
