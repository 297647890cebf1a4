"""Whole-set evaluation metrics in NumPy (not averages of per-batch values).

Correlations of a constant vector are undefined, so pearson and spearman
return nan for them rather than a misleading 0.0; NaN inputs propagate.
"""

from __future__ import annotations

import numpy as np

# Shared with training.poisson_loss so the metric and the loss agree.
POISSON_EPSILON = 1e-7


def _as_pair(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"targets and predictions must have the same size; got {y.size} and {p.size}.")
    return y, p


def pearson(y, p) -> float:
    y, p = _as_pair(y, p)
    y, p = y - y.mean(), p - p.mean()
    denominator = np.sqrt((y * y).sum() * (p * p).sum())
    if denominator == 0:
        return float("nan")
    return float((y * p).sum() / denominator)


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts_run = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    run = np.cumsum(starts_run) - 1
    starts = np.flatnonzero(starts_run)
    ends = np.append(starts[1:], x.size)
    ranks = np.empty(x.size)
    ranks[order] = ((starts + 1 + ends) / 2)[run]
    return ranks


def spearman(y, p) -> float:
    y, p = _as_pair(y, p)
    return pearson(average_ranks(y), average_ranks(p))


def mse(y, p) -> float:
    y, p = _as_pair(y, p)
    return float(np.mean((y - p) ** 2))


def poisson(y, p) -> float:
    """The training loss, mean(p - y * log(p + eps)), over the whole set."""
    y, p = _as_pair(y, p)
    return float(np.mean(p - y * np.log(p + POISSON_EPSILON)))
