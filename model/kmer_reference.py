"""A k-mer reference: ridge regression on 4- to 6-mer counts, the bar a deep model should clear.

Each prepared data set gets one reference, fitted on its training split with the
ridge penalty chosen by k-fold cross-validation there, scored on its evaluation
split, and cached as JSON beside the arrays (`kmer_reference(data_dir)`).

Each task gets its own ridge. Counts are taken over the same window the model sees
(the data's layout, shift 0; the 85 bp crop on DREAM data), so the
reference and the model get exactly the same bases: a gap between them is what
the model makes of order and spacing, not extra sequence. N-containing k-mers are
skipped. The 5,376 counts are never stored for the whole set: chunks of rows are
counted and folded into per-fold sufficient statistics (X'X, X'1, X'y), from which
both the fits and every held-out fold's Pearson follow exactly. NumPy only.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.encoding import DREAM_LAYOUT, N_CODE, SequenceLayout, window
from data_prep.prepare import KMER_REFERENCE_FILE as CACHE_FILE
from model.metrics import pearson

KMER_SIZES = (4, 5, 6)
N_FEATURES = sum(4**k for k in KMER_SIZES)  # 5,376
# Ridge penalties per fitted row on standardised counts (alpha = penalty * rows), the
# grid cross-validation picks from, half a decade apart: the DREAM demo's 5,733
# training sequences pick 10, and larger sets smaller ones.
PENALTIES = (0.1, 0.316, 1.0, 3.16, 10.0, 31.6)
# Each fold and penalty costs one 5,376-square solve (about 1 s in float32 on one
# core), so three folds, not five.
FOLDS = 3
# The Gram costs about 0.27 ms a row on one core; above this many training
# sequences the fit uses a seeded subsample.
MAX_FIT_ROWS = 100_000
CHUNK_ROWS = 2_048
CACHE_VERSION = 4


def kmer_counts(windows: np.ndarray) -> np.ndarray:
    """Counts `(n, 5376)` float32 of every 4-, 5- and 6-mer, in base-4 order per size (A=0 .. T=3)."""
    windows = np.asarray(windows)
    n, length = windows.shape
    valid = windows < N_CODE
    bases = np.where(valid, windows, 0).astype(np.int64)
    # invalid_before[:, i] = N's among the first i bases, so a k-mer at i is clean when
    # invalid_before[:, i + k] == invalid_before[:, i].
    invalid_before = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(~valid, axis=1)], axis=1)
    blocks = []
    for k in KMER_SIZES:
        starts = length - k + 1
        index = np.zeros((n, starts), np.int64)
        for j in range(k):
            index = index * 4 + bases[:, j : j + starts]
        clean = invalid_before[:, k:] == invalid_before[:, :starts]
        flat = (np.arange(n)[:, None] * 4**k + index)[clean]
        blocks.append(np.bincount(flat, minlength=n * 4**k).reshape(n, 4**k).astype(np.float32))
    return np.concatenate(blocks, axis=1)


class _Moments:
    """Sufficient statistics of one set of rows: n, X'1, X'X, X'y, 1'y, y'y."""

    def __init__(self):
        self.n, self.x, self.xx = 0, np.zeros(N_FEATURES), np.zeros((N_FEATURES, N_FEATURES), np.float32)
        self.xy, self.y, self.yy = np.zeros(N_FEATURES), 0.0, 0.0

    def add(self, counts: np.ndarray, y: np.ndarray) -> None:
        self.n += len(y)
        self.x += counts.sum(axis=0, dtype=np.float64)
        self.xx += counts.T @ counts
        self.xy += counts.T.astype(np.float64) @ y
        self.y += float(y.sum())
        self.yy += float(y @ y)

    def minus(self, other: "_Moments") -> "_Moments":
        out = _Moments.__new__(_Moments)
        out.n, out.x, out.xx = self.n - other.n, self.x - other.x, self.xx - other.xx
        out.xy, out.y, out.yy = self.xy - other.xy, self.y - other.y, self.yy - other.yy
        return out


def _sum(parts: list[_Moments]) -> _Moments:
    total = _Moments()
    total.xx = np.zeros((N_FEATURES, N_FEATURES))
    for part in parts:
        total.n += part.n
        total.x, total.xx, total.xy = total.x + part.x, total.xx + part.xx, total.xy + part.xy
        total.y, total.yy = total.y + part.y, total.yy + part.yy
    return total


def _ridge(m: _Moments, penalties, tolerance: float = 1e-5, dtype=np.float32) -> list[tuple[np.ndarray, float]]:
    """(weights on raw counts, intercept) of ridge on standardised counts for each penalty, alpha = penalty * n.

    Solved by conjugate gradients on the 5,376-square Gram, largest penalty first,
    each solve starting from the previous one's weights: a direct solve costs
    5,376^3/3 operations (seconds to tens of seconds on 2 cores) per penalty and
    fold, a gradient step one product with the Gram. The penalties keep the
    system's condition number below about 1e4, so a few hundred steps reach
    `tolerance` (relative residual). Cross-validation multiplies in float32, twice as
    fast and plenty to rank penalties; the final fit in float64.
    """
    mean = m.x / m.n
    centred = m.xx - m.n * np.outer(mean, mean)
    scale = np.sqrt(np.maximum(np.diag(centred), 0) / m.n)
    scale[scale == 0] = 1.0  # a k-mer constant in these rows: its centred column is 0, its weight 0
    gram = (centred / np.outer(scale, scale)).astype(dtype)
    rhs = (m.xy - mean * m.y) / scale
    fits, beta = {}, np.zeros(N_FEATURES)
    for penalty in sorted(penalties, reverse=True):
        beta = _conjugate_gradients(gram, penalty * m.n, rhs, beta, tolerance)
        fits[penalty] = (beta / scale, m.y / m.n - mean @ (beta / scale))
    return [fits[penalty] for penalty in penalties]


def _conjugate_gradients(gram, shift: float, rhs, start, tolerance: float, max_steps: int = 5_000) -> np.ndarray:
    """Solve (gram + shift I) x = rhs, gram symmetric positive semi-definite, from `start`."""
    x = start.copy()
    residual = rhs - (gram @ x.astype(gram.dtype) + shift * x)
    direction, norm = residual.copy(), residual @ residual
    target = tolerance**2 * (rhs @ rhs)
    for _ in range(max_steps):
        if norm <= target:
            break
        product = gram @ direction.astype(gram.dtype) + shift * direction
        step = norm / (direction @ product)
        x += step * direction
        residual -= step * product
        new_norm = residual @ residual
        direction = residual + (new_norm / norm) * direction
        norm = new_norm
    return x


def _pearson_from_moments(m: _Moments, beta: np.ndarray, intercept: float) -> float:
    """Pearson of y with X beta + intercept over the rows `m` summarises, without their counts."""
    sum_p = m.x @ beta + m.n * intercept
    sum_pp = beta @ (m.xx.astype(np.float64) @ beta) + 2 * intercept * (m.x @ beta) + m.n * intercept**2
    sum_py = beta @ m.xy + intercept * m.y
    cov = sum_py - sum_p * m.y / m.n
    var_p, var_y = sum_pp - sum_p**2 / m.n, m.yy - m.y**2 / m.n
    return float(cov / np.sqrt(var_p * var_y)) if var_p > 0 and var_y > 0 else float("nan")


def fit_kmer_ridge(windows, targets, folds: int = FOLDS, penalties=PENALTIES, seed: int = 0) -> dict:
    """Ridge on k-mer counts, penalty chosen by `folds`-fold CV (mean held-out Pearson).

    Returns the weights, intercept, chosen penalty and each penalty's CV Pearson.
    """
    windows, targets = np.asarray(windows), np.asarray(targets, np.float64)
    if len(windows) != len(targets):
        raise ValueError(f"windows and targets must have the same length; got {len(windows)} and {len(targets)}.")
    if not isinstance(folds, int) or folds < 2 or len(targets) < 2 * folds:
        raise ValueError(f"folds must be an integer >= 2 with at least 2 rows each; got folds={folds!r} for {len(targets)} rows.")
    fold_of = np.random.default_rng(seed).permutation(len(targets)) % folds
    parts = []
    for fold in range(folds):
        rows = np.flatnonzero(fold_of == fold)
        part = _Moments()
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            part.add(kmer_counts(windows[chunk]), targets[chunk])
        parts.append(part)
    total = _sum(parts)
    scores = {penalty: [] for penalty in penalties}
    for part in parts:
        for penalty, (beta, intercept) in zip(penalties, _ridge(total.minus(part), penalties)):
            scores[penalty].append(_pearson_from_moments(part, beta, intercept))
    cv = {penalty: float(np.mean(values)) for penalty, values in scores.items()}
    best = max(cv, key=lambda p: -np.inf if np.isnan(cv[p]) else cv[p])
    [(beta, intercept)] = _ridge(total, [best], tolerance=1e-10, dtype=np.float64)
    return {"weights": beta, "intercept": float(intercept), "penalty": best, "cv_pearson": cv}


def predict_kmer_ridge(fit: dict, windows) -> np.ndarray:
    """`(n,)` predictions for one task's weights `(features,)`, `(n, tasks)` for `(features, tasks)`."""
    windows = np.asarray(windows)
    out = np.empty((len(windows), *np.shape(fit["weights"])[1:]))
    for start in range(0, len(windows), CHUNK_ROWS):
        counts = kmer_counts(windows[start : start + CHUNK_ROWS])
        out[start : start + len(counts)] = counts.astype(np.float64) @ fit["weights"] + fit["intercept"]
    return out


@dataclass(frozen=True)
class KmerRidge:
    """The fitted reference as a model an ensemble can hold: weights on raw counts and an intercept, per task.

    `weights` is `(features,)` with a scalar intercept for one task, `(features, tasks)`
    with one intercept per task for several.
    """

    weights: np.ndarray
    intercept: float | np.ndarray

    @classmethod
    def of(cls, reference: dict) -> "KmerRidge":
        """The model inside `kmer_reference`'s result."""
        return cls(np.asarray(reference["weights"], np.float64), _intercept(reference["intercept"]))

    def predict_codes(self, codes: np.ndarray, layout: SequenceLayout = DREAM_LAYOUT) -> np.ndarray:
        """Predictions `(n,)` or `(n, tasks)` for stored codes, on the unshifted window the reference was fitted on."""
        codes = np.asarray(codes)
        windows = window(codes, np.arange(len(codes)), 0, layout)
        return predict_kmer_ridge({"weights": self.weights, "intercept": self.intercept}, windows)

    def save(self, path) -> None:
        np.savez(path, weights=self.weights, intercept=np.asarray(self.intercept, np.float64))

    @classmethod
    def load(cls, path) -> "KmerRidge":
        with np.load(path) as saved:
            return cls(np.asarray(saved["weights"], np.float64), _intercept(saved["intercept"]))


def _intercept(value) -> float | np.ndarray:
    value = np.asarray(value, np.float64)
    return float(value) if value.ndim == 0 else value


def _fit_tasks(windows: np.ndarray, targets: np.ndarray, seed: int) -> dict:
    """One ridge per task, stacked: `fit_kmer_ridge`'s result for one task, weights `(features, tasks)` for several."""
    if targets.ndim == 1:
        fit = fit_kmer_ridge(windows, targets, seed=seed)
        return fit | {"cv_pearson": {f"{p:g}": v for p, v in fit["cv_pearson"].items()}}
    fits = [fit_kmer_ridge(windows, targets[:, task], seed=seed) for task in range(targets.shape[1])]
    return {
        "weights": np.stack([f["weights"] for f in fits], axis=1),
        "intercept": np.array([f["intercept"] for f in fits]),
        "penalty": [f["penalty"] for f in fits],
        "cv_pearson": [{f"{p:g}": v for p, v in f["cv_pearson"].items()} for f in fits],
    }


def kmer_reference(data_dir, max_fit_rows: int = MAX_FIT_ROWS, seed: int = 0) -> dict:
    """The k-mer reference of a prepared directory: fitted once, then read from its cache.

    Returns {pearson, predicted (eval split, in eval_index order), test_predicted (test
    split, in test_index order; empty without one), weights and intercept (`KmerRidge.of`
    makes them a model), penalty, cv_pearson,
    n_fit, n_train, n_eval, folds, kmer_sizes, seconds, ...}. The cache
    (`kmer_reference.json` beside the arrays, written atomically) is reused only
    when it was made from the same source file (the manifest's sha256), split and
    settings.
    """
    from data_prep import PreparedData

    data = PreparedData.load(data_dir)
    key = {
        "cache_version": CACHE_VERSION,
        "source_sha256": data.manifest["source_sha256"],
        "split_seed": data.manifest["split_seed"],
        "eval_size": data.manifest["eval_size"],
        "test_size": data.manifest.get("test_size", 0),
        "max_fit_rows": max_fit_rows,
        "seed": seed,
        "folds": FOLDS,
        "penalties": list(PENALTIES),
        "layout": data.facts.layout.to_dict(),
        "tasks": list(data.facts.tasks),
    }
    cache = Path(data_dir) / CACHE_FILE
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    started = time.perf_counter()
    train_rows = np.asarray(data.train_index)
    if len(train_rows) > max_fit_rows:
        train_rows = np.sort(np.random.default_rng(seed).choice(train_rows, max_fit_rows, replace=False))
    layout = data.facts.layout
    fit = _fit_tasks(window(data.codes, train_rows, 0, layout), np.asarray(data.targets[train_rows]), seed)
    observed = np.asarray(data.targets[data.eval_index], np.float64)
    predicted = predict_kmer_ridge(fit, window(data.codes, data.eval_index, 0, layout))
    result = {
        "key": key,
        "pearson": pearson(observed, predicted),
        "predicted": np.round(predicted, 6).tolist(),
        # Predictions only: the test targets stay unread until the study's scoring pass.
        "test_predicted": np.round(predict_kmer_ridge(fit, window(data.codes, data.test_index, 0, layout)), 6).tolist(),
        "weights": np.asarray(fit["weights"]).tolist(),
        "intercept": np.asarray(fit["intercept"]).tolist(),
        "penalty": fit["penalty"],
        "cv_pearson": fit["cv_pearson"],
        "n_fit": int(len(train_rows)),
        "n_train": int(len(data.train_index)),
        "n_eval": int(len(data.eval_index)),
        "kmer_sizes": list(KMER_SIZES),
        "window_length": layout.window_length,
        "seconds": round(time.perf_counter() - started, 2),
    }
    scratch = cache.with_name(f".{CACHE_FILE}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        scratch.write_text(json.dumps(result))
        os.replace(scratch, cache)
    except OSError:
        # A read-only prepared directory (shared data) still gets its reference, just not cached.
        scratch.unlink(missing_ok=True)
    return result
