"""Whole-set evaluation metrics in NumPy (not averages of per-batch values), with bootstrap intervals.

Correlations of a constant vector are undefined, so pearson and spearman
return nan for them rather than a misleading 0.0; NaN inputs propagate.
Targets and predictions of several tasks are (n, tasks): a correlation, its
bootstrap and a paired difference are then the mean over tasks, the one number a
study ranks on (`task_pearsons` gives each task's).
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


def _tasks(y, p) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Each task's (targets, predictions) when both are (n, tasks) with several tasks; None for one task."""
    y, p = np.asarray(y), np.asarray(p)
    if y.ndim == 2 and y.shape[1] > 1:
        if p.shape != y.shape:
            raise ValueError(f"targets and predictions must have the same shape; got {y.shape} and {p.shape}.")
        return [(y[:, t], p[:, t]) for t in range(y.shape[1])]
    return None


def task_pearsons(y, p) -> list[float]:
    """Pearson of each task (one value for one task)."""
    return [pearson(a, b) for a, b in (_tasks(y, p) or [(y, p)])]


def _as_table(y, p) -> tuple[np.ndarray, np.ndarray]:
    """float64 (n,) vectors for one task, (n, tasks) arrays for several."""
    if _tasks(y, p) is not None:
        return np.asarray(y, np.float64), np.asarray(p, np.float64)
    return _as_pair(y, p)


def pearson(y, p) -> float:
    """Pearson correlation; the mean over tasks for (n, tasks) inputs."""
    if (tasks := _tasks(y, p)) is not None:
        return float(np.mean([pearson(a, b) for a, b in tasks]))
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
    if (tasks := _tasks(y, p)) is not None:
        return float(np.mean([spearman(a, b) for a, b in tasks]))
    y, p = _as_pair(y, p)
    return pearson(average_ranks(y), average_ranks(p))


def mse(y, p) -> float:
    y, p = _as_pair(y, p)
    return float(np.mean((y - p) ** 2))


def poisson(y, p) -> float:
    """The training loss, mean(p - y * log(p + eps)), over the whole set."""
    y, p = _as_pair(y, p)
    return float(np.mean(p - y * np.log(p + POISSON_EPSILON)))


# Resamples drawn per chunk: the index matrix is chunk x n, so memory stays near
# 16 MB per float64 array on an evaluation split of 10,000.
BOOTSTRAP_CHUNK_CELLS = 2_000_000


def _bootstrap_pearsons(y: np.ndarray, predictions: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """Pearson of y with each prediction on the same `resamples` resamples: (len(predictions), resamples).

    Every predictor sees the same resampled rows, which is what makes a paired
    difference paired. Vectorised: one (chunk, n) index matrix per chunk. With several
    tasks, each resample's figure is the mean over tasks (the same rows for every task).
    """
    if y.ndim == 2 and y.shape[1] > 1:
        return np.mean(
            [_bootstrap_pearsons(y[:, t], [p[:, t] for p in predictions], resamples, seed) for t in range(y.shape[1])],
            axis=0,
        )
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 2:
        raise ValueError(f"resamples must be an integer >= 2; got {resamples!r}.")
    n = y.size
    if n < 3:
        raise ValueError(f"a bootstrap of Pearson needs at least 3 values; got {n}.")
    rng = np.random.default_rng(seed)
    # Centring first keeps the one-pass sums below from cancelling.
    y = y - y.mean()
    predictions = [p - p.mean() for p in predictions]
    chunk = max(1, BOOTSTRAP_CHUNK_CELLS // n)
    out = np.empty((len(predictions), resamples))
    for start in range(0, resamples, chunk):
        rows = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        ys = y[rows]
        ys -= ys.mean(axis=1, keepdims=True)
        y_norm = np.sqrt((ys * ys).sum(axis=1))
        for i, p in enumerate(predictions):
            ps = p[rows]
            ps -= ps.mean(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[i, start : start + len(rows)] = (ys * ps).sum(axis=1) / (y_norm * np.sqrt((ps * ps).sum(axis=1)))
    return out


def _interval(estimate: float, draws: np.ndarray, level: float) -> dict[str, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}.")
    low, high = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def pearson_interval(y, p, resamples: int = 1_000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Pearson over the whole set with a percentile bootstrap interval: {estimate, low, high}.

    The seed is fixed so a trial's interval is reproducible and every trial of a
    study is resampled on the same rows.
    """
    y, p = _as_table(y, p)
    return _interval(pearson(y, p), _bootstrap_pearsons(y, [p], resamples, seed)[0], level)


def paired_pearson_difference(
    y, p, reference, resamples: int = 1_000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """pearson(y, p) - pearson(y, reference), with a paired bootstrap interval: {estimate, low, high}.

    Both predictors are scored on the same resampled rows, so the interval is that
    of the difference, much narrower than two separate intervals would suggest
    when the predictors' errors are correlated. An interval above 0 means p is
    better than the reference on this evaluation split.
    """
    y, p = _as_table(y, p)
    _, reference = _as_table(y, reference)
    draws = _bootstrap_pearsons(y, [p, reference], resamples, seed)
    return _interval(pearson(y, p) - pearson(y, reference), draws[0] - draws[1], level)
