# Copyright (c) monai_adv contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0

"""The statistics of randomized smoothing: binomial bounds and tests, radii, and multiple-testing corrections.

Every interval and test is a ``scipy.stats`` call. Functions take numpy arrays (any shape) and work elementwise;
where an array may hold millions of entries (the voxels of a volume) they evaluate scipy once per distinct count,
since a count of noise votes takes at most ``n + 1`` values.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import stats

__all__ = [
    "CORRECTIONS",
    "lower_confidence_bound",
    "radius_from_bound",
    "one_sided_pvalues",
    "two_sided_pvalue",
    "two_sided_pvalues",
    "reject",
]

#: the family-wise error corrections over the voxels of an image
CORRECTIONS = ("holm", "bonferroni")


def _per_distinct(values: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` evaluated once per distinct entry of ``values`` and spread back to its shape (float64)."""
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.float64)
    distinct, inverse = np.unique(values, return_inverse=True)
    return np.asarray(fn(distinct), dtype=np.float64)[inverse].reshape(values.shape)


def lower_confidence_bound(counts: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion, from ``counts`` successes of ``n``.

    The bound is the ``alpha`` quantile of Beta(k, n - k + 1) (``scipy.stats.beta.ppf``), and 0 where k = 0.
    With probability at least ``1 - alpha`` over the draws, the true proportion is at least the bound.
    """
    counts = np.asarray(counts, dtype=np.int64)

    def bound(k: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)

    return _per_distinct(counts, bound)


def radius_from_bound(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """The certified L2 radius ``sigma * Phi^-1(p_lower)`` where ``p_lower > 1/2``, else 0 (Cohen et al., Thm. 1)."""
    p_lower = np.asarray(p_lower, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = sigma * stats.norm.ppf(p_lower)
    return np.where(p_lower > 0.5, radius, 0.0)


def one_sided_pvalues(counts: np.ndarray, n: int, tau: float) -> np.ndarray:
    """p-values of the exact binomial tests of H0: p <= ``tau`` against p > ``tau``, from ``counts`` of ``n``.

    The p-value of k successes is P(Binomial(n, tau) >= k) (``scipy.stats.binom.sf``). It is at most ``a`` exactly
    when ``tau`` is at most the one-sided ``1 - a`` Clopper-Pearson lower bound of k (the interval inverts the test).
    """
    counts = np.asarray(counts, dtype=np.int64)
    return _per_distinct(counts, lambda k: stats.binom.sf(k - 1, n, tau))


def two_sided_pvalue(count_a: int, count_b: int) -> float:
    """p-value of the two-sided exact binomial test that ``count_a`` of ``count_a + count_b`` has proportion 1/2.

    Cohen et al.'s PREDICT test between the two most frequent classes (``scipy.stats.binomtest``); 1 when both
    counts are 0.
    """
    total = int(count_a) + int(count_b)
    if total == 0:
        return 1.0
    return float(stats.binomtest(int(count_a), total, 0.5).pvalue)


def two_sided_pvalues(count_a: np.ndarray, count_b: np.ndarray) -> np.ndarray:
    """:func:`two_sided_pvalue` elementwise, for arrays of many tests (the voxels of an image).

    The binomial with p = 1/2 is symmetric, so the two-sided exact p-value of ``binomtest`` is twice the lower tail
    at the smaller count, ``2 * binom.cdf(min(a, b), a + b, 1/2)``, capped at 1; evaluated once per distinct pair.
    """
    a = np.asarray(count_a, dtype=np.int64)
    b = np.asarray(count_b, dtype=np.int64)
    low, total = np.minimum(a, b), a + b
    if a.size == 0:
        return np.zeros(a.shape, dtype=np.float64)
    pairs = np.stack([low.ravel(), total.ravel()], axis=1)
    distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
    p = np.minimum(1.0, 2.0 * stats.binom.cdf(distinct[:, 0], np.maximum(distinct[:, 1], 1), 0.5))
    p = np.where(distinct[:, 1] > 0, p, 1.0)
    return p[np.asarray(inverse).ravel()].reshape(a.shape)


def reject(pvalues: np.ndarray, alpha: float, correction: str = "holm") -> np.ndarray:
    """Which null hypotheses to reject, per row of ``pvalues`` (M, V), with family-wise error at most ``alpha``.

    Each row is one family (the voxels of one image). ``"bonferroni"`` rejects p <= alpha / V. ``"holm"`` (Holm's
    step-down procedure) sorts the row's p-values increasingly and rejects the first ones while the j-th smallest
    (j = 0, 1, ...) is <= alpha / (V - j): it controls the same error and rejects every hypothesis Bonferroni does.

    Returns:
        a boolean array of the shape of ``pvalues``.
    """
    pvalues = np.asarray(pvalues, dtype=np.float64)
    if pvalues.ndim != 2:
        raise ValueError(f"`pvalues` must have shape (families, tests), got {pvalues.shape}.")
    m = pvalues.shape[1]
    if m == 0:
        return np.zeros(pvalues.shape, dtype=bool)
    if correction == "bonferroni":
        return pvalues <= alpha / m
    if correction != "holm":
        raise ValueError(f"`correction` must be one of {list(CORRECTIONS)}, got {correction!r}.")
    order = np.argsort(pvalues, axis=1, kind="stable")
    ordered = np.take_along_axis(pvalues, order, axis=1)
    passes = ordered <= alpha / (m - np.arange(m))
    # the step-down stops at the first test that fails: reject exactly the leading run of passes
    leading = np.cumprod(passes, axis=1).astype(bool)
    out = np.zeros(pvalues.shape, dtype=bool)
    np.put_along_axis(out, order, leading, axis=1)
    return out
