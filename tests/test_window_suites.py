"""The perplexity and fidelity suites' own logic (which positions are scored, the KL estimate
against the exact full-vocabulary KL) on a small numpy language model: fast, no runtime."""

from __future__ import annotations

import numpy as np
import pytest

from harness.suites.fidelity import FidelityParams, FidelitySuite
from harness.suites.perplexity import PerplexityParams, PerplexitySuite


class TableModel:
    """A 'session' whose next-token distribution depends on the previous token only: a fixed
    random table of logits (heavy-tailed), optionally perturbed as a quantized copy would be."""

    stop_token_ids = (0,)
    n_ctx = 4096

    def __init__(self, vocab: int = 3000, noise: float = 0.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        logits = -1.2 * np.log(np.arange(1, vocab + 1))[None, :] + rng.normal(0, 1.5, (vocab, vocab))
        logits = logits + np.random.default_rng(seed + 1).normal(0, noise, logits.shape) if noise else logits
        m = logits.max(1, keepdims=True)
        self.logp = logits - (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))
        self.vocab = vocab

    def tokenize(self, text: str) -> list[int]:
        return [(ord(c) * 7 + i) % self.vocab for i, c in enumerate(text)]

    def detokenize(self, ids: list[int]) -> bytes:
        return b"x" * len(ids)

    def token_distributions(self, ids: list[int]) -> np.ndarray:
        return self.logp[np.asarray(ids[:-1])]

    def token_logprobs(self, ids: list[int]) -> np.ndarray:
        return self.token_distributions(ids)[np.arange(len(ids) - 1), ids[1:]]


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    return str(path)


def _params(cls, text_file, **kw):
    return cls(dataset=text_file, context_length=64, max_tokens=64 * 12, **kw)


def test_second_half_scores_llama_perplexity_positions(text_file):
    suite, session = PerplexitySuite(), TableModel()
    full = _params(PerplexityParams, text_file)
    half = _params(PerplexityParams, text_file, scored_tokens="second_half")
    items_full = suite.prepare(full, session)
    items_half = suite.prepare(half, session)
    assert items_half["meta"]["scored_tokens"] == "second_half"
    rec_full = suite.score(session, items_full["items"], full)
    rec_half = suite.score(session, items_half["items"], half)
    assert [r["n_scored"] for r in rec_full] == [63] * 12
    assert [r["n_scored"] for r in rec_half] == [31] * 12  # rows 32..62 of a 64-token window
    for item, r in zip(items_half["items"], rec_half, strict=True):
        w = item["tokens"]
        assert r["logprob_sum"] == pytest.approx(float(session.token_logprobs(w)[32:].sum()))
    ppl_full = suite.aggregate(items_full["items"], rec_full, full)["ppl"]["value"]
    ppl_half = suite.aggregate(items_half["items"], rec_half, half)["ppl"]["value"]
    assert ppl_full != pytest.approx(ppl_half)


def test_second_half_needs_windows():
    with pytest.raises(ValueError, match="needs unit 'window'"):
        PerplexityParams(unit="document", scored_tokens="second_half")


def _exact_kl(base: TableModel, cand: TableModel, windows: list[list[int]], first: int) -> float:
    kl = [(np.exp(p) * (p - q)).sum(1) for w in windows
          for p, q in [(base.token_distributions(w)[first:], cand.token_distributions(w)[first:])]]
    return float(np.concatenate(kl).mean())


@pytest.mark.parametrize("scored", ["all", "second_half"])
def test_fidelity_kl_is_the_full_vocabulary_kl(text_file, scored):
    suite = FidelitySuite()
    base, cand = TableModel(), TableModel(noise=0.4)
    params = _params(FidelityParams, text_file, top_k=16, tail_samples=32, scored_tokens=scored)
    prep = suite.prepare(params, base)
    records = suite.score(cand, prep["items"], params)
    metrics = suite.aggregate(prep["items"], records, params)
    first = 32 if scored == "second_half" else 0
    exact = _exact_kl(base, cand, [it["tokens"] for it in prep["items"]], first)
    est, se = metrics["kl_mean"]["value"], metrics["kl_estimator_se"]["value"]
    assert se > 0 and abs(est - exact) < 4 * se + 1e-4 * exact
    assert metrics["kl_mean"]["n"] == 12 * (63 - first)
    # the tail holds much of the mass here: the top-k bound alone reads far below the KL
    bound_params = params.model_copy(update={"tail_samples": 0})
    bound_items = suite.prepare(bound_params, base)["items"]
    bound = suite.aggregate(bound_items, suite.score(cand, bound_items, bound_params), bound_params)
    assert metrics["ref_tail_mass_mean"]["value"] > 0.3
    assert bound["kl_mean"]["value"] < 0.9 * exact
    assert bound["kl_estimator_se"]["value"] == 0
    for k in ("kl_median", "kl_p90", "kl_p99", "kl_max"):
        assert metrics[k]["value"] >= 0
    assert metrics["kl_median"]["value"] <= metrics["kl_p90"]["value"] <= metrics["kl_p99"]["value"] <= metrics["kl_max"]["value"]
    # the baseline scored against its own items: zero (up to the stored rounding)
    self_metrics = suite.aggregate(prep["items"], suite.score(base, prep["items"], params), params)
    assert self_metrics["kl_mean"]["value"] < 1e-6 and self_metrics["same_top_rate"]["value"] == 1.0


def test_fidelity_items_are_reproducible(text_file):
    suite, base = FidelitySuite(), TableModel()
    params = _params(FidelityParams, text_file, top_k=8, tail_samples=4)
    a, b = suite.prepare(params, base), suite.prepare(params, base)
    assert a == b
    c = suite.prepare(params.model_copy(update={"seed": 1}), base)
    assert c["items"][0]["ref_tail_ids"] != a["items"][0]["ref_tail_ids"]
