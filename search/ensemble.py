"""The study's ensemble: greedy selection with replacement (Caruana et al. 2004) on the validation split.

Starting from nothing, each round adds the candidate (a finished trial or the k-mer
reference) whose addition gives the blend the highest validation Pearson; a candidate
may be picked again, which raises its weight. The kept blend is the best one seen over
the rounds, and each member's weight is its share of that blend's picks. This is how
auto-sklearn and AutoGluon build theirs: it never averages in a weak trial just for
being in the top k, and it can weight two kinds of model (deep and k-mer) that err
differently. Everything here reads validation predictions only; the test split scores
the result once, afterwards (search.final_scoring).
"""

from __future__ import annotations

import math

import numpy as np

from model.inference import weighted_mean
from model.kmer_reference import KmerRidge
from model.metrics import paired_pearson_difference, pearson, pearson_interval
from search.results import EnsembleResult, Interval, TrialResult

# Differences in validation Pearson below this are ties: the earlier (smaller) blend is kept.
TIE = 1e-9


def greedy_weights(candidates: list[np.ndarray], observed: np.ndarray, rounds: int) -> np.ndarray:
    """Each candidate's weight in the best blend that `rounds` greedy picks with replacement reach."""
    observed = np.asarray(observed, np.float64)
    counts = np.zeros(len(candidates), np.int64)
    blend_sum = np.zeros(observed.shape)
    best_score, best_counts = -math.inf, counts
    for _ in range(rounds):
        # Pearson ignores scale, so the sum of the picked predictions scores as their mean.
        scores = [pearson(observed, blend_sum + np.asarray(candidate, np.float64)) for candidate in candidates]
        scores = [score if math.isfinite(score) else -math.inf for score in scores]
        pick = int(np.argmax(scores))
        if scores[pick] == -math.inf:
            break
        counts = counts.copy()
        counts[pick] += 1
        blend_sum = blend_sum + candidates[pick]
        if scores[pick] > best_score + TIE:
            best_score, best_counts = scores[pick], counts
    return best_counts / max(best_counts.sum(), 1)


def select_ensemble(ranked: tuple[TrialResult, ...], observed: np.ndarray, kmer: dict, rounds: int) -> EnsembleResult | None:
    """The greedy blend of the rankable trials and the k-mer reference; None when it keeps fewer than two members."""
    trials = [t for t in ranked if t.rankable and t.predicted is not None]
    if rounds < 2 or not trials:
        return None
    candidates = [np.asarray(t.predicted, np.float64) for t in trials] + [np.asarray(kmer["predicted"], np.float64)]
    weights = greedy_weights(candidates, observed, rounds)
    if np.count_nonzero(weights) < 2:
        return None
    chosen = [i for i in range(len(trials)) if weights[i] > 0]
    chosen.sort(key=lambda i: -weights[i])
    blend = weighted_mean([candidates[i] for i in chosen] + [candidates[-1]], [weights[i] for i in chosen] + [weights[-1]])
    best = trials[0].predicted
    return EnsembleResult(
        members=tuple(trials[i] for i in chosen),
        weights=tuple(float(weights[i]) for i in chosen),
        kmer_weight=float(weights[-1]),
        kmer=KmerRidge.of(kmer) if weights[-1] > 0 else None,
        interval=Interval.of(pearson_interval(observed, blend)),
        vs_best=Interval.of(paired_pearson_difference(observed, blend, best)),
    )
