"""Paired statistics for quality gates: a three-way verdict with its evidence.

A candidate (a quantized model) and its baseline are scored on the *same* items, so every
comparison here is paired, item by item. Each gate function returns a :class:`Decision`:

* ``PASS``  -- the one-sided (1-alpha) bound on the bad side clears the threshold
  (e.g. the upper bound of an accuracy drop is <= ``max_drop``);
* ``FAIL``  -- the one-sided (1-alpha) bound on the good side is past the threshold
  (e.g. the lower bound of the drop is > ``max_drop``);
* ``INCONCLUSIVE`` -- neither: the data cannot tell; ``needed_n`` says roughly how many
  paired items would settle it if the observed effect and spread held.

The reported ``[lower, upper]`` is therefore a two-sided (1-2*alpha) interval. A gate's
threshold is pre-registered: a PASS or FAIL is a one-sided test at level alpha against it,
so a model whose true change sits exactly on the threshold is wrongly FAILed (or wrongly
PASSed) at most about alpha of the time, and noise alone does not flip the verdict.

Methods
-------
* Paired 0/1 scores, difference of accuracies (:func:`max_drop_binary`): Tango's (1998)
  asymptotic score interval for the difference of paired proportions, with a half-unit
  continuity correction on the score numerator ``b - c - n*delta`` (``b``/``c``: items only
  the baseline / only the candidate got right). Plain Tango sits right at the nominal level
  (exact false-FAIL probability 0.0504 at n=1000, 15% discordant items, true drop = threshold
  = 2 pt); the correction brings it under alpha (0.0460) at a small cost in power (exact
  power 0.948 vs 0.953 for a 5-pt drop against a 1-pt gate, n=1000). These figures come
  from an exact enumeration of the trinomial distribution of (b, c), done while choosing the
  method; ``tests/test_stats.py`` re-checks the corrected ones. The paired Wald and percentile-bootstrap intervals
  collapse to zero width when no item is discordant, which would PASS a gate on a handful
  of items; the score interval does not (b = c = 0, n = 20 gives about +-16 points).
  McNemar's exact test (binomial test on the discordant pairs) is reported as evidence.
* Paired 0/1 scores, ratio of accuracies (:func:`min_ratio_binary`, and
  ``max_drop_binary(relative=True)``): Tang, Tang & Chan's (2003) score interval for the
  ratio of paired proportions, with the same continuity correction.
* Continuous per-item scores and perplexity (:func:`max_drop_continuous`,
  :func:`max_increase_continuous`): a paired bootstrap over items (or documents/windows),
  resampling the unit indices once per replicate for both models. Percentile bounds are
  *expanded* for small samples (Hesterberg 2015: tail level alpha' with
  ``z_{alpha'} = sqrt(n/(n-1)) t_{alpha, n-1}``), which corrects the percentile bootstrap's
  known narrowness at small n.
* Absolute floor on one accuracy (:func:`min_value_binary`): one-sided Wilson score bounds.

Small samples: the paired gates refuse to decide below ``min_n`` paired items (100 for 0/1
scores, 10 units for the bootstrap gates) and return INCONCLUSIVE. At n = 20 one item is
5 points: no interval built on asymptotics (score or bootstrap) can be trusted to resolve a
2-point threshold there, and a false PASS is worse than asking for more items.

``needed_n``: for the score intervals, the score statistic at the threshold grows like
sqrt(n) when the observed proportions are held fixed, so the n at which it reaches z is
solved in closed form (it includes the continuity correction; to first order it is
``n * (z * sd / |threshold - estimate|)**2`` with ``sd`` the per-item sd of the paired
differences). For the bootstrap gates, ``needed_n = n * (z * se_boot / |threshold -
estimate|)**2``. It is None when the estimate sits exactly on the threshold (no amount of
data at that effect clears it) or the verdict is not INCONCLUSIVE, and it is never below
``min_n`` nor at or below the current n.

Measured (``pytest tests/test_stats.py -s``, fixed seeds; acc 0.6, 15% discordant items):

* max_drop_binary, n=1000, no true drop, 2-pt gate: FAIL 0.001, PASS 0.513 (1000 gates);
  max_drop=0 (true drop on the threshold): false-FAIL 0.0477 over 20000 gates, exact 0.0462;
  exact P(FAIL) and P(PASS) with the true drop on the threshold: 0.042-0.048 over
  n in {300, 1000, 5000} and 5-30% discordant items.
* power, 5-pt drop vs 1-pt gate, n=1000: FAIL 0.944 (1000 gates), exact 0.948.
* n=20 and n=50, no true drop, 2-pt gate: INCONCLUSIVE 1.000 (1000 gates each); without the
  min_n guard the score interval alone would PASS 0.021 (n=20) and 0.068 (n=50).
* n=5000, 0.2-pt true drop, 2-pt gate: PASS 0.955 (1000 gates).
* min_ratio_binary, true ratio on min_ratio=0.95, n=1000: false-FAIL 0.0435, false-PASS
  0.0449 (10000 gates); true ratio 0.90: power 0.81 (2000 gates; normal approximation 0.79).
* max_increase_continuous, 64 windows, identical models: FAIL 0.000 at max +5% (1000 gates);
  at max +0% (on the threshold) 0.040 (1000 gates; 0.052 over 4000 in a separate run): the
  bootstrap gates are at, not under, their nominal level when the truth sits on the
  threshold. +10% perplexity vs max +5%: FAIL 1.000 (500 gates, per-window paired sd 0.04
  nats/token), 0.778 with paired sd 0.15.
* max_drop_continuous, n=300 items in [0, 1]: false-FAIL 0.000 at max_drop 0.02 and 0.065 at
  max_drop 0 (400 gates; 0.0605 over 4000 in a separate run, where the paired t-test gave
  0.059 on the same gates and 0.0501 over 100000).

Pure numpy + stdlib; deterministic for a given seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"

#: continuity correction subtracted from |score numerator| in the paired score intervals
SCORE_CC = 0.5
#: default fewest paired items a 0/1-score gate decides on
MIN_N_BINARY = 100
#: default fewest units a bootstrap gate decides on
MIN_N_BOOTSTRAP = 10

_BISECT_STEPS = 64
_BOOT_CHUNK_ELEMS = 2_000_000


@dataclass
class Decision:
    """A gate's verdict with the evidence behind it.

    ``estimate``, ``lower``, ``upper`` and ``threshold`` are in the gate's own units (an
    absolute drop in proportion units, 0.02 = 2 points; a relative drop as a fraction of the
    baseline; a perplexity change in percent; a ratio). ``[lower, upper]`` is two-sided
    (1 - 2*alpha), so each side is a one-sided (1 - alpha) bound.
    """

    verdict: str
    estimate: float
    lower: float
    upper: float
    n: int
    test: str
    p_value: float | None
    threshold: float
    alpha: float
    needed_n: int | None
    discordant: dict[str, int] | None
    text: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: numpy scalars become Python numbers, inf/nan become None."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------ small helpers
def z_value(alpha: float) -> float:
    return NormalDist().inv_cdf(1.0 - alpha)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")


def _as_1d(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")
    return a


def _paired(base: Any, cand: Any) -> tuple[np.ndarray, np.ndarray]:
    b = _as_1d(base, "base")
    c = _as_1d(cand, "cand")
    if b.shape != c.shape:
        raise ValueError(f"base and cand must be scored on the same items: {b.size} vs {c.size}")
    return b, c


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    if not np.all((x == 0) | (x == 1)):
        raise ValueError(f"{name} must hold 0/1 scores")
    return x.astype(bool)


def _counts(base: Any, cand: Any) -> tuple[int, int, int, int]:
    """(both right, base only, cand only, both wrong) for paired 0/1 scores."""
    b, c = _paired(base, cand)
    b, c = _binary(b, "base"), _binary(c, "cand")
    return (int(np.sum(b & c)), int(np.sum(b & ~c)), int(np.sum(~b & c)), int(np.sum(~b & ~c)))


def _verdict(lower: float, upper: float, threshold: float, *, higher_is_worse: bool,
             decide: bool = True) -> str:
    if not decide:
        return INCONCLUSIVE
    if higher_is_worse:
        if upper <= threshold:
            return PASS
        if lower > threshold:
            return FAIL
    else:
        if lower >= threshold:
            return PASS
        if upper < threshold:
            return FAIL
    return INCONCLUSIVE


def _needed_from_score(n: int, numer: float, sd: float, z: float, cc: float) -> int | None:
    """Smallest N at which the score statistic at the threshold reaches z, proportions fixed.

    At N = k*n items the numerator scales by k and its sd by sqrt(k):
    Z_N = (k*|numer| - cc) / (sqrt(k) * sd). Solve Z_N = z for s = sqrt(k).
    """
    a = abs(numer)
    if a == 0.0 or not math.isfinite(a):
        return None
    if sd <= 0.0 or not math.isfinite(sd):
        return None
    s = (z * sd + math.sqrt(z * z * sd * sd + 4.0 * a * cc)) / (2.0 * a)
    return math.ceil(n * s * s)


def _finish_needed(needed: int | None, verdict: str, n: int, min_n: int) -> int | None:
    if verdict != INCONCLUSIVE:
        return None
    if needed is None:
        return min_n if n < min_n else None
    return max(needed, n + 1, min_n)


def _shrink(numer: np.ndarray, cc: float) -> np.ndarray:
    return np.sign(numer) * np.maximum(np.abs(numer) - cc, 0.0)


def _safe_z(numer: np.ndarray, var: np.ndarray) -> np.ndarray:
    """numer / sqrt(var); +-inf where the variance vanishes, 0 where the numerator does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = numer / np.sqrt(var)
    return np.where(numer == 0.0, 0.0, np.where(var > 0.0, out, np.copysign(np.inf, numer)))


def _bisect_decreasing(fn, lo: np.ndarray, hi: np.ndarray, target: float) -> np.ndarray:
    """x in [lo, hi] with fn(x) == target, fn non-increasing in x (elementwise)."""
    lo, hi = lo.copy(), hi.copy()
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        up = fn(mid) > target
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------ McNemar exact
def _binom_half_cdf(k: int, m: int) -> float:
    """P(X <= k) for X ~ Binomial(m, 1/2), exact for m <= 5000, log-space above."""
    if k < 0:
        return 0.0
    if k >= m:
        return 1.0
    if m <= 5000:
        term, total = 1, 1
        for i in range(k):
            term = term * (m - i) // (i + 1)
            total += term
        return total / (1 << m)
    i = np.arange(1, k + 1, dtype=float)
    logc = np.concatenate(([0.0], np.cumsum(np.log((m - i + 1.0) / i))))
    top = logc.max()
    return float(min(1.0, math.exp(top + math.log(np.exp(logc - top).sum()) - m * math.log(2.0))))


def mcnemar_exact(base_only: int, cand_only: int, alternative: str = "two-sided") -> float:
    """McNemar's exact test: a binomial test of base_only vs cand_only discordant pairs.

    ``alternative``: "two-sided" (the two models differ), "base_better" (the candidate is
    worse: many base-only items), "cand_better". Under "no difference" each discordant pair
    is base-only with probability 1/2.
    """
    b, c = int(base_only), int(cand_only)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    m = b + c
    if m == 0:
        return 1.0
    if alternative == "two-sided":
        return min(1.0, 2.0 * _binom_half_cdf(min(b, c), m))
    if alternative == "base_better":  # P(B >= b) = P(C <= c)
        return _binom_half_cdf(c, m)
    if alternative == "cand_better":
        return _binom_half_cdf(b, m)
    raise ValueError(f"unknown alternative {alternative!r}")


# ------------------------------------------------------------------ score statistics
def _tango_z(b, c, n, delta, cc: float = SCORE_CC) -> np.ndarray:
    """Tango's score statistic for H0: p(base right) - p(cand right) = delta.

    With q the restricted MLE of the cand-only cell probability (the positive root of
    2n q^2 + (-b - c + (2n - b + c) delta) q - c delta (1 - delta) = 0), the variance of
    b - c is n (2q + delta - delta^2). Decreasing in delta.
    """
    b, c, n, d = (np.asarray(v, dtype=float) for v in (b, c, n, delta))
    qa = 2.0 * n
    qb = -b - c + (2.0 * n - b + c) * d
    qc = -c * d * (1.0 - d)
    q = (np.sqrt(np.maximum(qb * qb - 4.0 * qa * qc, 0.0)) - qb) / (2.0 * qa)
    var = n * np.maximum(2.0 * q + d - d * d, 0.0)
    return _safe_z(_shrink(b - c - n * d, cc), var)


def _tango_bounds(b, c, n, z: float, cc: float = SCORE_CC) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper bounds of the paired drop (b - c)/n, each one-sided at level Phi(-z)."""
    b, c, n = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (b, c, n)))
    lo0, hi0 = np.full(b.shape, -1.0), np.full(b.shape, 1.0)

    def fn(d):
        return _tango_z(b, c, n, d, cc)

    return _bisect_decreasing(fn, lo0, hi0, z), _bisect_decreasing(fn, lo0, hi0, -z)


def _tango_var(b, c, n, delta) -> float:
    """Variance of b - c under the restricted MLE at delta (for needed_n)."""
    qa, qb, qc = 2.0 * n, -b - c + (2.0 * n - b + c) * delta, -c * delta * (1.0 - delta)
    q = (math.sqrt(max(qb * qb - 4.0 * qa * qc, 0.0)) - qb) / (2.0 * qa)
    return n * max(2.0 * q + delta - delta * delta, 0.0)


def _ratio_parts(a, b, c, d, theta):
    """Numerator and variance of Tang et al.'s score for H0: p(cand right) = theta * p(base right).

    Cells: a both right, b base only, c cand only, d both wrong. Under H0 the restricted MLE
    keeps p(both wrong) = d/n; with K = (1 - theta)(a + b + c)/n the base-only probability u
    is the larger root of n(1+theta) u^2 - (n(1+theta) K + b + c theta^2) u + b K = 0, the
    cand-only one is (u - K)/theta and both-right (1 - d/n - (1+theta) u)/theta.
    """
    a, b, c, d, t = (np.asarray(v, dtype=float) for v in (a, b, c, d, theta))
    n = a + b + c + d
    k = (1.0 - t) * (a + b + c) / n
    qa = n * (1.0 + t)
    qb = qa * k + b + c * t * t
    qc = b * k
    u = (qb + np.sqrt(np.maximum(qb * qb - 4.0 * qa * qc, 0.0))) / (2.0 * qa)
    v = np.maximum((u - k) / t, 0.0)
    m = np.maximum((1.0 - d / n - (1.0 + t) * u) / t, 0.0)
    var = n * (m * (1.0 - t) ** 2 + u * t * t + v)
    return (a + c) - t * (a + b), var


def _ratio_z(a, b, c, d, theta, cc: float = SCORE_CC) -> np.ndarray:
    numer, var = _ratio_parts(a, b, c, d, theta)
    return _safe_z(_shrink(numer, cc), var)


def _ratio_bounds(a, b, c, d, z: float, cc: float = SCORE_CC) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper bounds of p(cand right)/p(base right); inf when unbounded above."""
    a, b, c, d = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, c, d)))
    lo0, hi0 = np.full(a.shape, math.log(1e-6)), np.full(a.shape, math.log(1e6))

    def fn(log_t):
        return _ratio_z(a, b, c, d, np.exp(log_t), cc)

    lower = np.exp(_bisect_decreasing(fn, lo0, hi0, z))
    upper = np.exp(_bisect_decreasing(fn, lo0, hi0, -z))
    lower = np.where(lower < 1.001e-6, 0.0, lower)
    upper = np.where(upper > 0.999e6, np.inf, upper)
    return lower, upper


def _multinomial_boot(counts: tuple[int, int, int, int], n_boot: int, seed: int) -> np.ndarray:
    n = sum(counts)
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.asarray(counts, dtype=float) / n, size=n_boot).astype(float)


# ------------------------------------------------------------------ t quantile (expanded bootstrap)
def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def _t_sf(t: float, df: float) -> float:
    """P(T > t) for t >= 0."""
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))


def _t_ppf_upper(alpha: float, df: float) -> float:
    """t with P(T > t) = alpha (alpha < 0.5)."""
    lo, hi = 0.0, 1.0
    while _t_sf(hi, df) > alpha:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _t_sf(mid, df) > alpha:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _expanded_alpha(alpha: float, n: int) -> float:
    """Tail level for an expanded percentile bootstrap interval (Hesterberg 2015)."""
    if n < 2:
        return alpha
    zq = math.sqrt(n / (n - 1.0)) * _t_ppf_upper(alpha, n - 1.0)
    return NormalDist().cdf(-zq)


def _boot_ratio_of_sums(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Paired bootstrap replicates of sum(num[idx]) / sum(den[idx]), idx resampled per replicate."""
    n = num.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMS // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        out[start:start + k] = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    return out


def _boot_interval(reps: np.ndarray, alpha: float, n: int) -> tuple[float, float, float]:
    a2 = _expanded_alpha(alpha, n)
    lo, hi = np.quantile(reps, [a2, 1.0 - a2])
    return float(lo), float(hi), a2


def _needed_from_se(n: int, se: float, gap: float, z: float) -> int | None:
    if gap == 0.0 or not math.isfinite(se) or se <= 0.0:
        return None
    return math.ceil(n * (z * se / abs(gap)) ** 2)


# ------------------------------------------------------------------ formatting
def _pt(x: float) -> str:
    return f"{100.0 * x:+.2f}"


def _g(x: float) -> str:
    return f"{x:.4g}"


def _tail(verdict: str, needed: int | None, n: int, min_n: int) -> str:
    if verdict != INCONCLUSIVE:
        return ""
    parts = []
    if n < min_n:
        parts.append(f"n < min_n={min_n}")
    if needed is not None:
        parts.append(f"about {needed} items would settle it")
    return "; " + ", ".join(parts) if parts else ""


# ------------------------------------------------------------------ gates: 0/1 scores
def max_drop_binary(base: Any, cand: Any, max_drop: float, *, alpha: float = 0.05,
                    relative: bool = False, method: str = "score", n_boot: int = 2000,
                    seed: int = 0, label: str = "", min_n: int = MIN_N_BINARY) -> Decision:
    """Accuracy drop gate on paired per-item 0/1 scores (higher is better).

    drop = mean(base) - mean(cand) in proportion units (0.02 = 2 points), or with
    ``relative`` that drop as a fraction of mean(base). PASS if the upper (1-alpha) bound of
    the drop is <= ``max_drop``, FAIL if the lower (1-alpha) bound is > ``max_drop``, else
    INCONCLUSIVE (always INCONCLUSIVE below ``min_n`` items).

    ``method="score"`` (default): Tango's score interval (Tang's ratio interval when
    ``relative``) with a half-unit continuity correction. ``method="bootstrap"``: paired
    percentile bootstrap of the item table (expanded for small n; ``n_boot``, ``seed``);
    it is not conservative at small n and has zero width when no item is discordant.
    """
    _check_alpha(alpha)
    if not -1.0 < max_drop < 1.0:
        raise ValueError(f"max_drop must be in (-1, 1), got {max_drop}")
    a, b, c, d = _counts(base, cand)
    n = a + b + c + d
    z = z_value(alpha)
    name = label or "accuracy"
    p_two = mcnemar_exact(b, c)
    p_one = mcnemar_exact(b, c, "base_better")
    details: dict[str, Any] = {"base_mean": (a + b) / n, "cand_mean": (a + c) / n,
                               "p_one_sided_cand_worse": p_one, "method": method,
                               "min_n": min_n, "relative": relative}
    if relative and a + b == 0:
        return Decision(INCONCLUSIVE, math.nan, math.nan, math.nan, n, "paired ratio", p_two,
                        max_drop, alpha, None, {"base_only": b, "cand_only": c},
                        f"{name}: baseline got no item right, a relative drop is undefined: "
                        f"INCONCLUSIVE", details)

    if method == "score":
        if relative:
            rlo, rhi = _ratio_bounds(a, b, c, d, z)
            lower, upper = 1.0 - float(rhi), 1.0 - float(rlo)
            estimate = (b - c) / (a + b)
            numer, var = _ratio_parts(a, b, c, d, 1.0 - max_drop)
            needed = _needed_from_score(n, float(numer), math.sqrt(float(var)), z, SCORE_CC)
            test = "Tang score interval for the paired ratio (cc 0.5) + McNemar exact"
        else:
            lo_a, hi_a = _tango_bounds(b, c, n, z)
            lower, upper = float(lo_a), float(hi_a)
            estimate = (b - c) / n
            numer = b - c - n * max_drop
            needed = _needed_from_score(n, numer, math.sqrt(_tango_var(b, c, n, max_drop)), z,
                                        SCORE_CC)
            test = "Tango score interval (paired, cc 0.5) + McNemar exact"
    elif method == "bootstrap":
        tab = _multinomial_boot((a, b, c, d), n_boot, seed)
        if relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                reps = (tab[:, 1] - tab[:, 2]) / (tab[:, 0] + tab[:, 1])
            reps = reps[np.isfinite(reps)]
            estimate = (b - c) / (a + b)
        else:
            reps = (tab[:, 1] - tab[:, 2]) / n
            estimate = (b - c) / n
        lower, upper, a2 = _boot_interval(reps, alpha, n)
        details["alpha_expanded"] = a2
        needed = _needed_from_se(n, float(np.std(reps, ddof=1)), max_drop - estimate, z)
        test = "paired bootstrap (percentile, expanded) + McNemar exact"
    else:
        raise ValueError(f"unknown method {method!r}")

    verdict = _verdict(lower, upper, max_drop, higher_is_worse=True, decide=n >= min_n)
    needed = _finish_needed(needed, verdict, n, min_n)
    if relative:
        body = (f"{name} relative drop {_pt(estimate)}% [{_pt(lower)}, {_pt(upper)}], n={n}: "
                f"{verdict} (max drop {100 * max_drop:g}% of baseline")
    else:
        body = (f"{name} drop {_pt(estimate)} pt [{_pt(lower)}, {_pt(upper)}], n={n}: "
                f"{verdict} (max drop {100 * max_drop:g} pt")
    text = (f"{body}; base-only {b}, cand-only {c}, McNemar p={p_two:.3g}"
            f"{_tail(verdict, needed, n, min_n)})")
    return Decision(verdict, estimate, lower, upper, n, test, p_two, max_drop, alpha, needed,
                    {"base_only": b, "cand_only": c}, text, details)


def min_ratio_binary(base: Any, cand: Any, min_ratio: float, *, alpha: float = 0.05,
                     method: str = "score", n_boot: int = 2000, seed: int = 0, label: str = "",
                     min_n: int = MIN_N_BINARY) -> Decision:
    """Recovery gate: mean(cand) / mean(base) >= ``min_ratio`` on paired 0/1 scores.

    PASS if the lower (1-alpha) bound of the ratio is >= ``min_ratio``, FAIL if the upper
    bound is < ``min_ratio``, else INCONCLUSIVE (always below ``min_n`` items).
    ``method="score"`` (default): Tang, Tang & Chan's score interval for the ratio of paired
    proportions (continuity-corrected); ``method="bootstrap"``: paired percentile bootstrap.
    """
    _check_alpha(alpha)
    if not min_ratio > 0.0:
        raise ValueError("min_ratio must be > 0")
    a, b, c, d = _counts(base, cand)
    n = a + b + c + d
    z = z_value(alpha)
    name = label or "accuracy"
    p_two = mcnemar_exact(b, c)
    details: dict[str, Any] = {"base_mean": (a + b) / n, "cand_mean": (a + c) / n,
                               "p_one_sided_cand_worse": mcnemar_exact(b, c, "base_better"),
                               "method": method, "min_n": min_n}
    disc = {"base_only": b, "cand_only": c}
    if a + b == 0:
        return Decision(INCONCLUSIVE, math.nan, math.nan, math.nan, n, "paired ratio", p_two,
                        min_ratio, alpha, None, disc,
                        f"{name}: baseline got no item right, the recovery ratio is undefined: "
                        f"INCONCLUSIVE", details)
    estimate = (a + c) / (a + b)
    if method == "score":
        lo_a, hi_a = _ratio_bounds(a, b, c, d, z)
        lower, upper = float(lo_a), float(hi_a)
        numer, var = _ratio_parts(a, b, c, d, min_ratio)
        needed = _needed_from_score(n, float(numer), math.sqrt(float(var)), z, SCORE_CC)
        test = "Tang score interval for the paired ratio (cc 0.5) + McNemar exact"
    elif method == "bootstrap":
        tab = _multinomial_boot((a, b, c, d), n_boot, seed)
        with np.errstate(divide="ignore", invalid="ignore"):
            reps = (tab[:, 0] + tab[:, 2]) / (tab[:, 0] + tab[:, 1])
        reps = reps[np.isfinite(reps)]
        lower, upper, a2 = _boot_interval(reps, alpha, n)
        details["alpha_expanded"] = a2
        needed = _needed_from_se(n, float(np.std(reps, ddof=1)), estimate - min_ratio, z)
        test = "paired bootstrap (percentile, expanded) + McNemar exact"
    else:
        raise ValueError(f"unknown method {method!r}")
    verdict = _verdict(lower, upper, min_ratio, higher_is_worse=False, decide=n >= min_n)
    needed = _finish_needed(needed, verdict, n, min_n)
    text = (f"{name} recovery {estimate:.4f} [{lower:.4f}, {upper:.4f}], n={n}: {verdict} "
            f"(min ratio {min_ratio:g}; base-only {b}, cand-only {c}, McNemar p={p_two:.3g}"
            f"{_tail(verdict, needed, n, min_n)})")
    return Decision(verdict, estimate, lower, upper, n, test, p_two, min_ratio, alpha, needed,
                    disc, text, details)


def wilson_bounds(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """One-sided (1-alpha) Wilson score lower and upper bounds for a proportion."""
    if n <= 0:
        raise ValueError("n must be > 0")
    z = z_value(alpha)
    p = successes / n
    z2n = z * z / n
    centre = p + z2n / 2.0
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    return (centre - half) / (1.0 + z2n), (centre + half) / (1.0 + z2n)


#: fewest items an absolute floor on 0/1 scores decides on: below ~30 the one-sided Wilson bound
#: is liberal (P(PASS) at a true accuracy equal to the floor: 0.078 at n=5, 0.069 at n=20, alpha 0.05)
MIN_N_FLOOR = 30


def min_value_binary(cand: Any, floor: float, *, alpha: float = 0.05, label: str = "",
                     min_n: int = MIN_N_FLOOR) -> Decision:
    """Absolute floor on an accuracy from per-item 0/1 scores, one-sided Wilson bounds.

    PASS if the Wilson lower (1-alpha) bound is >= ``floor``, FAIL if the Wilson upper bound
    is < ``floor``, else INCONCLUSIVE (always below ``min_n`` items); ``needed_n`` solves the
    Wilson score test at the floor (|p - floor| / sqrt(floor (1 - floor) / N) = z) for N.
    """
    _check_alpha(alpha)
    x = _binary(_as_1d(cand, "cand"), "cand")
    n, k = int(x.size), int(x.sum())
    lower, upper = wilson_bounds(k, n, alpha)
    p = k / n
    verdict = _verdict(lower, upper, floor, higher_is_worse=False, decide=n >= min_n)
    needed = None
    if verdict == INCONCLUSIVE and 0.0 < floor < 1.0 and p != floor:
        needed = max(n + 1, math.ceil(z_value(alpha) ** 2 * floor * (1.0 - floor) / (p - floor) ** 2))
    needed = _finish_needed(needed, verdict, n, min_n)
    name = label or "accuracy"
    text = (f"{name} {100 * p:.2f}% [{100 * lower:.2f}, {100 * upper:.2f}], n={n}: {verdict} "
            f"(floor {100 * floor:g}%{_tail(verdict, needed, n, min_n)})")
    return Decision(verdict, p, lower, upper, n, "Wilson score bound (one-sided)", None, floor,
                    alpha, needed, None, text, {"successes": k})


# ------------------------------------------------------------------ gates: continuous
def max_drop_continuous(base: Any, cand: Any, max_drop: float, *, relative: bool = False,
                        alpha: float = 0.05, n_boot: int = 2000, seed: int = 0, label: str = "",
                        min_n: int = MIN_N_BOOTSTRAP) -> Decision:
    """Paired mean-difference gate on real per-item scores (higher is better).

    drop = mean(base - cand), in the scores' units, or with ``relative`` that drop divided
    by mean(base). Interval: paired bootstrap over items (expanded percentile). Same
    three-way rule as :func:`max_drop_binary`.
    """
    _check_alpha(alpha)
    b, c = _paired(base, cand)
    n = int(b.size)
    diff = b - c
    if relative:
        if not b.sum() > 0.0:
            raise ValueError("relative drop needs a positive baseline mean")
        den = b
    else:
        den = np.ones(n)
    estimate = float(diff.sum() / den.sum())
    reps = _boot_ratio_of_sums(diff, den, n_boot, seed)
    lower, upper, a2 = _boot_interval(reps, alpha, n)
    se = float(np.std(reps, ddof=1))
    verdict = _verdict(lower, upper, max_drop, higher_is_worse=True, decide=n >= min_n)
    needed = _finish_needed(_needed_from_se(n, se, max_drop - estimate, z_value(alpha)), verdict, n,
                            min_n)
    name = label or "score"
    if relative:
        text = (f"{name} relative drop {_pt(estimate)}% [{_pt(lower)}, {_pt(upper)}], n={n}: "
                f"{verdict} (max drop {100 * max_drop:g}% of baseline"
                f"{_tail(verdict, needed, n, min_n)})")
    else:
        text = (f"{name} drop {estimate:+.4g} [{lower:+.4g}, {upper:+.4g}], n={n}: {verdict} "
                f"(max drop {max_drop:g}{_tail(verdict, needed, n, min_n)})")
    return Decision(verdict, estimate, lower, upper, n,
                    "paired bootstrap over items (percentile, expanded)", None, max_drop, alpha,
                    needed, None, text,
                    {"base_mean": float(b.mean()), "cand_mean": float(c.mean()), "se_boot": se,
                     "alpha_expanded": a2, "n_boot": n_boot, "seed": seed, "min_n": min_n,
                     "relative": relative})


def max_increase_continuous(base_nll_sum: Any, cand_nll_sum: Any, n_tokens: Any,
                            max_increase_pct: float, *, alpha: float = 0.05, n_boot: int = 2000,
                            seed: int = 0, label: str = "",
                            min_n: int = MIN_N_BOOTSTRAP) -> Decision:
    """Perplexity gate (lower is better) from per-unit (document/window) sums.

    Inputs, one entry per unit scored by both models on the same tokens:
    ``base_nll_sum``/``cand_nll_sum``: the unit's summed negative log-likelihood (nats);
    ``n_tokens``: the unit's scored token count. Perplexity = exp(sum nll / sum tokens);
    the change is 100 * (ppl_cand / ppl_base - 1) percent. The interval is a paired bootstrap
    over units (one index resample per replicate, used for both models). PASS if the upper
    bound is <= ``max_increase_pct``, FAIL if the lower bound is > it, else INCONCLUSIVE.
    """
    _check_alpha(alpha)
    nb, nc = _paired(base_nll_sum, cand_nll_sum)
    tok = _as_1d(n_tokens, "n_tokens")
    if tok.shape != nb.shape:
        raise ValueError("n_tokens must have one entry per unit")
    if np.any(tok <= 0):
        raise ValueError("every unit needs > 0 tokens")
    if max_increase_pct <= -100.0:
        raise ValueError("max_increase_pct must be > -100")
    n = int(nb.size)
    delta = nc - nb
    log_ratio = float(delta.sum() / tok.sum())
    reps = _boot_ratio_of_sums(delta, tok, n_boot, seed)
    lo_r, hi_r, a2 = _boot_interval(reps, alpha, n)
    se_r = float(np.std(reps, ddof=1))
    thr_r = math.log1p(max_increase_pct / 100.0)
    estimate = 100.0 * math.expm1(log_ratio)
    lower, upper = 100.0 * math.expm1(lo_r), 100.0 * math.expm1(hi_r)
    verdict = _verdict(lo_r, hi_r, thr_r, higher_is_worse=True, decide=n >= min_n)
    needed = _finish_needed(_needed_from_se(n, se_r, thr_r - log_ratio, z_value(alpha)), verdict, n,
                            min_n)
    ppl_b = math.exp(nb.sum() / tok.sum())
    ppl_c = math.exp(nc.sum() / tok.sum())
    name = label or "perplexity"
    text = (f"{name} {ppl_b:.4g} -> {ppl_c:.4g}: {estimate:+.2f}% [{lower:+.2f}, {upper:+.2f}], "
            f"n={n} units: {verdict} (max +{max_increase_pct:g}%"
            f"{_tail(verdict, needed, n, min_n)})")
    return Decision(verdict, estimate, lower, upper, n,
                    "paired bootstrap over units (percentile, expanded)", None, max_increase_pct,
                    alpha, needed, None, text,
                    {"ppl_base": ppl_b, "ppl_cand": ppl_c, "tokens": float(tok.sum()),
                     "se_boot_log_ratio": se_r, "alpha_expanded": a2, "n_boot": n_boot,
                     "seed": seed, "min_n": min_n})


# ------------------------------------------------------------------ family-wise error across gates
def holm_step_down(fails_at: list[Any], alpha: float) -> list[dict[str, Any]]:
    """Holm-Bonferroni over k one-sided tests, each given as ``fails_at(level) -> bool``
    (whether the test rejects its null, i.e. the gate FAILs, at ``level``; monotone: a
    rejection at a level is one at every larger level).

    Holm's procedure sorts the p-values and tests the i-th smallest at alpha/(k-i+1),
    stopping at the first non-rejection. Without p-values the same decisions come from the
    tests themselves: with m hypotheses left, every test that rejects at alpha/m is rejected
    (its p-value is <= alpha/m, so it is among the smallest, and each later level is larger),
    m shrinks by their number, and the procedure stops when none rejects. It controls the
    probability of any false rejection at alpha whatever the dependence between the tests.

    Returns, per test: ``rejected`` and ``level`` (the adjusted level it was last tested at:
    where it was rejected, or the level at which the procedure stopped)."""
    _check_alpha(alpha)
    k = len(fails_at)
    out: list[dict[str, Any]] = [{"rejected": False, "level": alpha / k if k else alpha} for _ in range(k)]
    remaining = list(range(k))
    while remaining:
        level = alpha / len(remaining)
        hits = [i for i in remaining if fails_at[i](level)]
        for i in remaining:
            out[i]["level"] = level
        if not hits:
            break
        for i in hits:
            out[i]["rejected"] = True
        remaining = [i for i in remaining if i not in hits]
    return out


def holm_pvalues(p_values: list[float], alpha: float) -> list[bool]:
    """The textbook Holm-Bonferroni on p-values (sorted, the i-th smallest at alpha/(k-i+1),
    stopping at the first non-rejection): which hypotheses are rejected."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    out = [False] * k
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (k - rank):
            break
        out[i] = True
    return out


# ------------------------------------------------------------------ noise floor
def noise_floor(values: list[float]) -> float | None:
    """The run-to-run spread of one metric over repeated scorings of the same model on the
    same items: the largest distance of a repeat from the first (the baseline's value a gate
    compares with), so a change within +-floor could be the runtime's own noise. None with
    fewer than two finite values."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(x) < 2:
        return None
    return float(max(abs(v - x[0]) for v in x[1:]))


def paired_drop_bounds(base_only: Any, cand_only: Any, n: Any, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The bounds :func:`max_drop_binary` uses (Tango's score interval, cc 0.5), vectorized
    over arrays of discordant counts: (lower, upper), each one-sided at level ``alpha``. For
    simulations of many gates at once."""
    _check_alpha(alpha)
    return _tango_bounds(base_only, cand_only, n, z_value(alpha))
