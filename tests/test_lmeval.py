"""harness.lmeval.SessionLM: lm-eval's model interface over a quantgate session.

The session here is a small deterministic bigram model (numpy), the neighbour of the
thing under test; SessionLM's request handling (grouping, truncation, rolling windows,
stop strings) is what these tests check, against direct computations on that session.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from harness.lmeval import SessionLM, register_runtimes  # noqa: E402
from harness.runtimes import Session, cut_at_stop  # noqa: E402

VOCAB = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" ", ".", "\n", "<eos>"]
EOS = len(VOCAB) - 1


class BigramSession(Session):
    """log p(next | previous token) from a fixed random table; one character per token."""

    def __init__(self, n_ctx: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(len(VOCAB), len(VOCAB))) * 2.0
        self.table = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        self.n_ctx = n_ctx
        self.stop_token_ids = (EOS,)
        self.calls = 0

    def tokenize(self, text: str) -> list[int]:
        return [VOCAB.index(c) for c in text]

    def detokenize(self, ids: list[int]) -> bytes:
        return "".join(VOCAB[i] for i in ids if i != EOS).encode()

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        self.calls += 1
        assert len(ids) <= self.n_ctx, "SessionLM must truncate to n_ctx"
        return self.table[np.asarray(ids[:-1])]

    def generate(self, prompt: list[int], max_new_tokens: int, stop: list[str]) -> str:
        out, prev = [], prompt[-1]
        for _ in range(max_new_tokens):
            prev = int(np.argmax(self.table[prev]))
            if prev == EOS:
                break
            out.append(prev)
            text, hit = cut_at_stop(self.detokenize(out).decode(), stop)
            if hit:
                return text
        return self.detokenize(out).decode()


def _lp(session: BigramSession, text: str, cont: str) -> float:
    # lm-eval scores a context's trailing spaces as part of the continuation
    n = len(text) - len(text.rstrip(" "))
    text, cont = (text[:-n], text[-n:] + cont) if n else (text, cont)
    ids = session.tokenize(text + cont)
    return float(sum(session.table[ids[i - 1], ids[i]] for i in range(len(text), len(ids))))


def _req(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_matches_direct_sums_and_groups_one_token_answers():
    session = BigramSession()
    lm = SessionLM(session)
    context = "the answer is"
    reqs = [_req("loglikelihood", context, f" {c}") for c in "abcd"]  # two tokens each
    reqs += [_req("loglikelihood", context + " ", c) for c in "abcd"]  # lm-eval moves the space: still 2 tokens
    reqs += [_req("loglikelihood", "xy", c) for c in "abcd"]  # one token each, one context
    session.calls = 0
    out = lm.loglikelihood(reqs)
    for r, (lp, greedy) in zip(reqs, out, strict=True):
        ctx, cont = r.args
        assert math.isclose(lp, _lp(session, ctx, cont), rel_tol=1e-9)
        ids = session.tokenize(ctx + cont)
        start = len(ctx.rstrip(" "))
        is_top = all(int(np.argmax(session.table[ids[i - 1]])) == ids[i] for i in range(start, len(ids)))
        assert greedy == is_top
    # the four one-token answers after "xy" cost one distribution, not four
    assert session.calls == 8 + 1


def test_long_requests_keep_the_newest_tokens():
    session = BigramSession(n_ctx=16)
    lm = SessionLM(session)
    context = "abcdefghijklmnopqrstuvwxyz" * 2
    (lp, _), = lm.loglikelihood([_req("loglikelihood", context, "ab")])
    assert math.isclose(lp, _lp(session, context, "ab"), rel_tol=1e-9)  # a bigram needs only the last token


def test_loglikelihood_rolling_scores_every_token_once():
    session = BigramSession(n_ctx=8)
    lm = SessionLM(session)
    text = "a quick brown fox jumps over the lazy dog."
    (total,) = lm.loglikelihood_rolling([_req("loglikelihood_rolling", text)])
    ids = session.tokenize(text)
    expected = session.table[EOS, ids[0]] + sum(session.table[ids[i - 1], ids[i]] for i in range(1, len(ids)))
    assert math.isclose(total, float(expected), rel_tol=1e-9)


def test_generate_until_stops_at_stop_strings_and_budget():
    session = BigramSession()
    lm = SessionLM(session)
    free = lm.generate_until([_req("generate_until", "q", {"until": [], "max_gen_toks": 12})])[0]
    assert 0 < len(free) <= 12
    stop = free[3:5]
    cut = lm.generate_until([_req("generate_until", "q", {"until": [stop], "max_gen_toks": 12})])[0]
    assert cut == free[: free.find(stop)]


def test_runtimes_are_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    names = register_runtimes()
    assert {"quantgate-llama-cpp", "quantgate-transformers", "quantgate-vllm"} <= set(names)
    assert get_model("quantgate-llama-cpp").runtime_name == "llama-cpp"
