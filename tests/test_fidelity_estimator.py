"""The fidelity suite's KL estimator on synthetic distributions whose exact KL is known."""

from __future__ import annotations

import numpy as np
import pytest

from harness.suites.fidelity import estimate_kl, sample_tail


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(1, keepdims=True)))


def _pair(rows: int, vocab: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and 'quantized' log-probabilities: Zipf-like logits (a heavy tail, as language
    models have), the candidate's perturbed by Gaussian noise."""
    rng = np.random.default_rng(seed)
    base = -1.1 * np.log(np.arange(1, vocab + 1))[None, :] + rng.normal(0, 1.0, (rows, vocab))
    cand = base + rng.normal(0, noise, (rows, vocab))
    return _log_softmax(base), _log_softmax(cand)


def _exact(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (np.exp(p) * (p - q)).sum(1)


def _estimate(p, q, k, m, seed):
    top = np.argsort(-p, axis=1)[:, :k]
    ids, mass = sample_tail(p, top, m, np.random.default_rng(seed))
    take = np.take_along_axis
    return estimate_kl(take(p, top, 1), take(q, top, 1), mass,
                       take(p, np.maximum(ids, 0), 1) if m else None,
                       take(q, np.maximum(ids, 0), 1) if m else None)


def test_top_k_bound_is_low_and_sampled_tail_is_unbiased():
    p, q = _pair(rows=64, vocab=4000, noise=0.5)
    exact = _exact(p, q).mean()
    bound, var0 = _estimate(p, q, k=32, m=0, seed=0)
    assert var0.sum() == 0
    assert bound.mean() < 0.9 * exact  # the old figure: a lower bound well under the KL
    means, ses = [], []
    for seed in range(40):
        kl, var = _estimate(p, q, k=32, m=32, seed=seed)
        assert (kl >= 0).all()
        means.append(kl.mean())
        ses.append(np.sqrt(var.sum()) / len(kl))
    means = np.array(means)
    # unbiased: the mean of 40 independent estimates is within 4 standard errors of the exact KL
    assert abs(means.mean() - exact) < 4 * means.std(ddof=1) / np.sqrt(len(means))
    # the reported standard error matches the spread of the estimates (within 30%)
    assert 0.7 < np.mean(ses) / means.std(ddof=1) < 1.3
    # and each estimate lies within 4 of its own standard errors of the exact KL
    assert (np.abs(means - exact) < 4 * np.array(ses)).all()


def test_exact_when_tail_is_rescaled_uniformly_and_zero_against_itself():
    p, _ = _pair(rows=16, vocab=1000, noise=0.0)
    top = np.argsort(-p, axis=1)[:, :8]
    # the candidate moves mass between head and tail but keeps the tail's shape: r is constant
    # on the tail, so one sample is as good as all of them
    q = p.copy()
    np.put_along_axis(q, top, np.take_along_axis(p, top, 1) + 0.3, axis=1)
    q = _log_softmax(q)
    kl, var = _estimate(p, q, k=8, m=4, seed=1)
    np.testing.assert_allclose(kl, _exact(p, q), rtol=1e-9)
    assert var.max() < 1e-20
    self_kl, _ = _estimate(p, p, k=8, m=4, seed=1)
    assert np.abs(self_kl).max() < 1e-12


@pytest.mark.parametrize("vocab", [300, 50_000])
def test_samples_come_from_the_tail_in_proportion(vocab):
    p, _ = _pair(rows=2, vocab=vocab, noise=0.0, seed=3)
    top = np.argsort(-p, axis=1)[:, :16]
    ids, mass = sample_tail(p, top, 20_000, np.random.default_rng(0))
    for row in range(2):
        assert not np.isin(ids[row], top[row]).any()
        tail_p = np.exp(p[row]).copy()
        tail_p[top[row]] = 0
        np.testing.assert_allclose(mass[row], tail_p.sum(), rtol=1e-12)
        # the sampled tokens' average baseline probability matches E[p | tail] = Σ p² / P_T
        expected = (tail_p ** 2).sum() / tail_p.sum()
        got = tail_p[ids[row]].mean()
        assert abs(got / expected - 1) < 0.05
