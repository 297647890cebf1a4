"""The DREAM Challenge's scores: per-subset correlations and the weighted PearsonScore/SpearmanScore.

A table's prepared split has no subsets: `task_scores` gives one row per task instead.

Pure NumPy on arrays of measured and predicted expression, indexed by test line.
It sits next to `model.metrics` because it is built on that module's `pearson`
and `spearman` (data_prep may not import model, and a second copy of the
correlations would drift). For the paired subsets (SNVs, motif perturbation,
motif tiling) the correlation is between predicted and measured differences
alt - ref, as the organisers computed it.

    PearsonScore  = sum(weight * r**2) / 4.65      (r: Pearson per subset)
    SpearmanScore = sum(weight * rho) / 4.65       (rho: Spearman per subset)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.challenge_subsets import ChallengeSubsets
from model.metrics import pearson, spearman

ALL = "all"
WEIGHTS = {
    ALL: 1.0,
    "high": 0.3,
    "low": 0.3,
    "yeast": 0.3,
    "random": 0.3,
    "challenging": 0.5,
    "SNVs": 1.25,
    "motif_perturbation": 0.3,
    "motif_tiling": 0.4,
}
WEIGHT_TOTAL = 4.65  # the organisers' divisor: the sum of WEIGHTS
TASK_MEAN = "mean_over_tasks"  # a table's row for the mean of its tasks' correlations (no weight)


@dataclass(frozen=True)
class SubsetScore:
    """One subset's correlations; `size` counts sequences, or pairs for a paired subset."""

    name: str
    size: int
    paired: bool
    pearson: float
    spearman: float


@dataclass(frozen=True)
class ChallengeScores:
    """Per-subset scores ("all" first) and the weighted scores, None unless every weighted subset was scored."""

    subsets: tuple[SubsetScore, ...]
    pearson_score: float | None
    spearman_score: float | None

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat metric names for MLflow: `test_all_pearson`, ..., `test_PearsonScore`."""
        values = {}
        for score in self.subsets:
            values[f"{prefix}{score.name}_pearson"] = score.pearson
            values[f"{prefix}{score.name}_spearman"] = score.spearman
        if self.pearson_score is not None:
            values[f"{prefix}PearsonScore"] = self.pearson_score
            values[f"{prefix}SpearmanScore"] = self.spearman_score
        return values


def subset_score(name: str, measured, predicted, indices) -> SubsetScore:
    """Correlations over the test lines `indices`."""
    measured, predicted = np.asarray(measured)[indices], np.asarray(predicted)[indices]
    return SubsetScore(name, len(measured), False, pearson(measured, predicted), spearman(measured, predicted))


def paired_score(name: str, measured, predicted, pairs) -> SubsetScore:
    """Correlations of the alt - ref differences over the `(k, 2)` rows of (alt, ref) indices."""
    pairs = np.asarray(pairs).reshape(-1, 2)
    alt, ref = pairs[:, 0], pairs[:, 1]
    measured, predicted = np.asarray(measured), np.asarray(predicted)
    measured, predicted = measured[alt] - measured[ref], predicted[alt] - predicted[ref]
    return SubsetScore(name, len(pairs), True, pearson(measured, predicted), spearman(measured, predicted))


def weighted_scores(scores: dict[str, SubsetScore]) -> tuple[float, float]:
    """(PearsonScore, SpearmanScore) from the scores of every subset in WEIGHTS."""
    missing = [name for name in WEIGHTS if name not in scores]
    if missing:
        raise ValueError(f"the weighted scores need every subset in {list(WEIGHTS)}; missing {missing}")
    pearson_score = sum(w * scores[name].pearson ** 2 for name, w in WEIGHTS.items()) / WEIGHT_TOTAL
    spearman_score = sum(w * scores[name].spearman for name, w in WEIGHTS.items()) / WEIGHT_TOTAL
    return pearson_score, spearman_score


def challenge_scores(measured, predicted, subsets: ChallengeSubsets | None = None) -> ChallengeScores:
    """Scores of "all" (public-leaderboard lines left out) and of each subset; weighted scores once all are there."""
    measured = np.asarray(measured, dtype=np.float64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    if measured.shape != predicted.shape:
        raise ValueError(
            f"measured and predicted need one value per test line; got {measured.size} and {predicted.size}"
        )
    excluded = subsets.excluded if subsets is not None else np.zeros(0, dtype=np.int64)
    scores = {ALL: subset_score(ALL, measured, predicted, np.setdiff1d(np.arange(measured.size), excluded))}
    if subsets is not None:
        for name, indices in subsets.single.items():
            scores[name] = subset_score(name, measured, predicted, indices)
        for name, pairs in subsets.paired.items():
            scores[name] = paired_score(name, measured, predicted, pairs)
    weighted = weighted_scores(scores) if all(name in scores for name in WEIGHTS) else (None, None)
    return ChallengeScores(tuple(scores.values()), *weighted)


def task_scores(measured, predicted, tasks) -> ChallengeScores:
    """Scores of a table's prepared split: one row per task, led by their mean when there are several."""
    measured = np.asarray(measured, dtype=np.float64).reshape(len(measured), -1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    if measured.shape != predicted.shape or measured.shape[1] != len(tasks):
        raise ValueError(f"measured and predicted need one column per task {list(tasks)}; got {measured.shape} and {predicted.shape}")
    rows = np.arange(len(measured))
    each = [subset_score(task, measured[:, i], predicted[:, i], rows) for i, task in enumerate(tasks)]
    if len(each) == 1:
        return ChallengeScores(tuple(each), None, None)
    mean = SubsetScore(
        TASK_MEAN, len(measured), False, float(np.mean([s.pearson for s in each])), float(np.mean([s.spearman for s in each]))
    )
    return ChallengeScores((mean, *each), None, None)


def format_table(scores: ChallengeScores, challenge_file: bool = True) -> str:
    """The terminal table: one line per subset, then the weighted scores (or why they are missing, for a
    challenge test file; a prepared split has no subsets to miss)."""
    lines = [f"{'subset':<20} {'n':>13} {'weight':>6} {'pearson r':>10} {'r^2':>7} {'spearman':>9}"]
    for score in scores.subsets:
        n = f"{score.size:,}" + (" pairs" if score.paired else "")
        weight = f"{WEIGHTS[score.name]:>6.2f}" if score.name in WEIGHTS else f"{'-':>6}"  # a table's task has none
        lines.append(
            f"{score.name:<20} {n:>13} {weight} "
            f"{score.pearson:>10.4f} {score.pearson ** 2:>7.4f} {score.spearman:>9.4f}"
        )
    if scores.pearson_score is None:
        missing = [name for name in WEIGHTS if name not in {s.name for s in scores.subsets}]
        if challenge_file:
            lines.append(f"PearsonScore and SpearmanScore need every subset; missing: {', '.join(missing)}")
    else:
        lines.append(f"PearsonScore  {scores.pearson_score:.4f}")
        lines.append(f"SpearmanScore {scores.spearman_score:.4f}")
    return "\n".join(lines)
