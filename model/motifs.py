"""Motifs a model learned: TF-MoDISco patterns from its attributions, named by TOMTOM against a motif set.

`discover` runs modisco-lite on one task's hypothetical contributions (the
mutagenesis effects centred over the four bases, model.attribution) and returns
each pattern trimmed to its informative core; `name_patterns` compares them with a
motif set by memelite's TOMTOM. Both come with the `explain` extra (their
clustering needs igraph and leidenalg, GPL-licensed), so they are imported when
called and `missing_packages` says what to install.

TOMTOM's p-values come from a background built over the targets' columns, and with
fewer than 25 targets they swing with the choice of targets; a small set (the five
planted DREAM motifs) is therefore padded with seeded random decoys to
`MIN_TARGETS`. A pattern's q-value is Benjamini-Hochberg over its p-values against
every target, decoys included; its match is the best target of the set when no
decoy matches better and q < `MATCH_Q`, else none.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace

import numpy as np

# Import name -> what to pip install.
EXPLAIN_PACKAGES = {"modiscolite": "modisco-lite", "memelite": "memelite"}
MIN_TARGETS = 30
MATCH_Q = 0.05
DECOY_PREFIX = "decoy_"
# A pattern keeps the columns whose contribution is at least this share of its largest (as modisco's report trims).
TRIM_SHARE = 0.3
# Seqlet windows suited to promoters and enhancers of 80 to 300 bp (modisco's defaults, 21 + 2 x 10, suit kilobases).
WINDOW, FLANK = 15, 5
MIN_SEQLETS = 20


def missing_packages() -> list[str]:
    """The pip names of the motif packages that are not installed."""
    return [pip for module, pip in EXPLAIN_PACKAGES.items() if importlib.util.find_spec(module) is None]


@dataclass(frozen=True)
class Pattern:
    """One discovered motif: trimmed probability and contribution matrices `(width, 4)` and its match."""

    task: str
    name: str  # "pos_0", "neg_1": modisco's metacluster and rank
    sign: int  # +1: raises the prediction where it occurs, -1: lowers it
    seqlets: int
    probabilities: np.ndarray
    contributions: np.ndarray
    match: str = ""  # the motif set's name, or "" when nothing matches
    q_value: float = float("nan")  # of the best real target

    @property
    def consensus(self) -> str:
        return "".join("ACGT"[i] for i in self.probabilities.argmax(axis=1))


def discover(one_hot: np.ndarray, hypothetical: np.ndarray, task: str, min_seqlets: int = MIN_SEQLETS) -> list[Pattern]:
    """TF-MoDISco patterns for one task: `one_hot` and `hypothetical` are `(n, L, 4)`."""
    from modiscolite.tfmodisco import TFMoDISco

    positive, negative = TFMoDISco(
        np.ascontiguousarray(one_hot, np.float32),
        np.ascontiguousarray(hypothetical, np.float32),
        sliding_window_size=WINDOW,
        flank_size=FLANK,
        min_metacluster_size=min_seqlets,
        final_min_cluster_size=min_seqlets,
        trim_to_window_size=WINDOW + FLANK,
        initial_flank_to_add=FLANK,
    )
    patterns = []
    for prefix, sign, found in (("pos", 1, positive), ("neg", -1, negative)):
        for rank, pattern in enumerate(found or []):
            strength = np.abs(pattern.contrib_scores).sum(axis=1)
            kept = np.flatnonzero(strength >= TRIM_SHARE * strength.max())
            core = slice(kept.min(), kept.max() + 1)
            patterns.append(
                Pattern(
                    task,
                    f"{prefix}_{rank}",
                    sign,
                    len(pattern.seqlets),
                    np.asarray(pattern.sequence[core], np.float64),
                    np.asarray(pattern.contrib_scores[core], np.float64),
                )
            )
    return patterns


def decoys(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random motifs 6 to 14 wide (columns from a Dirichlet(0.5)), reproducible by `seed`."""
    rng = np.random.default_rng(seed)
    return {
        f"{DECOY_PREFIX}{i + 1}": rng.dirichlet(np.full(4, 0.5), size=int(rng.integers(6, 15))) for i in range(count)
    }


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """q-values of one family of p-values."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(q, 1.0)
    return out


def name_patterns(patterns: list[Pattern], motifs: dict[str, np.ndarray]) -> list[Pattern]:
    """The patterns with their best TOMTOM match in `motifs` (name -> PWM `(width, 4)`), both strands."""
    if not patterns:
        return []
    from memelite import tomtom

    targets = dict(motifs) | decoys(max(0, MIN_TARGETS - len(motifs)))
    names = list(targets)
    p_values = np.asarray(
        tomtom([p.probabilities.T for p in patterns], [targets[n].T for n in names])[0], np.float64
    ).reshape(len(patterns), len(names))
    named = []
    for pattern, row in zip(patterns, p_values):
        q = benjamini_hochberg(np.nan_to_num(row, nan=1.0))
        best_real = int(np.argmin(q[: len(motifs)]))  # the motif set comes first, decoys after
        match = names[best_real] if q[best_real] <= q.min() and q[best_real] < MATCH_Q else ""
        named.append(replace(pattern, match=match, q_value=float(q[best_real])))
    return named


def recovered(patterns: list[Pattern], expected_signs: dict[str, float]) -> dict[str, Pattern]:
    """Motif name -> the strongest pattern matching it (q < MATCH_Q) with the sign the motif is expected to have."""
    found: dict[str, Pattern] = {}
    for pattern in sorted(patterns, key=lambda p: p.q_value):
        sign = expected_signs.get(pattern.match)
        if pattern.match and sign is not None and sign == pattern.sign and pattern.match not in found:
            found[pattern.match] = pattern
    return found
