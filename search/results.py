"""What a study found, as typed records built once when its trials have finished.

A `TrialResult` per trial and one `StudyResult`: ranking, bootstrap intervals, the
compute spent, and the ensemble's members, weights and scores. The terminal table, the
best-config file, the parent MLflow run, the registry and the command line all read
these; nothing here talks to MLflow or Ray's controller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


# How the k-mer reference is named when it is an ensemble member.
KMER_MEMBER = "k-mer reference"
# A trial whose best eval Pearson is at or below this has learned nothing worth ranking.
NO_SIGNAL_FLOOR = 0.0


@dataclass(frozen=True)
class Interval:
    """A figure with its bootstrap 95 % interval."""

    estimate: float
    low: float
    high: float

    @classmethod
    def of(cls, figures: dict) -> "Interval":
        return cls(float(figures["estimate"]), float(figures["low"]), float(figures["high"]))

    def metrics(self, name: str, estimate: bool = True) -> dict[str, float]:
        """MLflow metric names for it: NAME, NAME_low, NAME_high."""
        bounds = {f"{name}_low": self.low, f"{name}_high": self.high}
        return {name: self.estimate, **bounds} if estimate else bounds


@dataclass(frozen=True)
class TestScore:
    """A chosen model's one score on the test split: Pearson and paired differences, each with its interval."""

    pearson: Interval
    vs_baseline: Interval | None = None
    vs_kmer: Interval | None = None

    def metrics(self, name: str) -> dict[str, float]:
        """MLflow metrics NAME_test_pearson(_low, _high), NAME_test_vs_baseline..., NAME_test_vs_kmer_reference..."""
        figures = self.pearson.metrics(f"{name}_test_pearson")
        for interval, suffix in ((self.vs_baseline, "vs_baseline"), (self.vs_kmer, "vs_kmer_reference")):
            figures |= interval.metrics(f"{name}_test_{suffix}") if interval is not None else {}
        return figures


@dataclass(frozen=True)
class TrialResult:
    """One trial's outcome; `predicted` (its best epoch's eval predictions) and `checkpoint` travel along unshown."""

    trial_id: str | None
    run_id: str | None
    baseline: bool
    status: str  # done, error, diverged, no signal
    reason: str
    best_eval_pearson: float
    epochs_trained: int
    device_hours: float
    startup_seconds: float
    model_logged: bool
    config: dict
    searched: dict
    interval: Interval | None = None
    vs_baseline: Interval | None = None
    vs_kmer: Interval | None = None
    legnet_reference: bool = False
    vs_legnet: Interval | None = None
    test: TestScore | None = None  # only the trials the study chose or compares with: best, references, ensemble
    task_pearsons: dict[str, float] = field(default_factory=dict)  # eval Pearson per task, data with several tasks
    predicted: np.ndarray | None = field(default=None, repr=False, compare=False)
    checkpoint: object = field(default=None, repr=False, compare=False)

    @property
    def rankable(self) -> bool:
        """The best-trial rule: finished, with a finite eval Pearson and a logged model."""
        return self.status == "done" and self.model_logged and math.isfinite(self.best_eval_pearson)

    def table_row(self) -> dict:
        """Its row of the study's trials.csv (per-task columns named as the trial's MLflow metrics)."""
        from search.trainable import task_metric

        figures = {
            f"{name}_{key}": getattr(getattr(self, name), key)
            for name in ("interval", "vs_baseline", "vs_legnet", "vs_kmer")
            if getattr(self, name) is not None
            for key in ("estimate", "low", "high")
        }
        if self.test is not None:
            figures |= {f"test_pearson_{key}": getattr(self.test.pearson, key) for key in ("estimate", "low", "high")}
        return {
            "trial_id": self.trial_id,
            "run_id": self.run_id,
            "baseline": self.baseline,
            "legnet_reference": self.legnet_reference,
            "best_eval_pearson": self.best_eval_pearson,
            "epochs_trained": self.epochs_trained,
            "device_hours": self.device_hours,
            "status": self.status,
            "reason": self.reason,
            **figures,
            **{task_metric(task): value for task, value in self.task_pearsons.items()},
            **self.searched,
        }


@dataclass(frozen=True)
class Compute:
    """What the study spent, against every trial running all its epochs; trials reaching each ASHA rung."""

    epochs_trained: int
    epochs_without_early_stopping: int
    device_hours: float
    mean_trial_startup_seconds: float
    rungs: dict[int, int] | None = None

    @property
    def saved_fraction(self) -> float:
        full = self.epochs_without_early_stopping
        return 1 - self.epochs_trained / full if full else 0.0

    def metrics(self) -> dict[str, float]:
        figures = {
            "epochs_trained": self.epochs_trained,
            "epochs_without_early_stopping": self.epochs_without_early_stopping,
            "compute_saved_fraction": self.saved_fraction,
            "device_hours": self.device_hours,
            "mean_trial_startup_seconds": self.mean_trial_startup_seconds,
        }
        figures = {key: value for key, value in figures.items() if math.isfinite(value)}
        return figures | {f"asha_rung_{epoch}_trials": trials for epoch, trials in (self.rungs or {}).items()}


@dataclass(frozen=True)
class EnsembleResult:
    """The blend chosen on validation (search.ensemble): trials and perhaps the k-mer reference, weighted.

    Members are heaviest first; `weights` are theirs and `kmer_weight` the k-mer
    reference's, together summing to 1. `kmer` is the reference's model, carried so the
    registered ensemble computes that member itself.
    """

    members: tuple[TrialResult, ...]
    weights: tuple[float, ...]
    interval: Interval
    vs_best: Interval
    kmer_weight: float = 0.0
    kmer: object = field(default=None, repr=False, compare=False)
    test: TestScore | None = None

    @property
    def member_ids(self) -> list[str]:
        return [member.trial_id for member in self.members]

    @property
    def composition(self) -> str:
        """Members and weights in one line, heaviest first: `0.48 a1b2c3d4, 0.32 k-mer reference, 0.20 e5f6a7b8`."""
        named = [(weight, member.trial_id) for member, weight in zip(self.members, self.weights)]
        named += [(self.kmer_weight, KMER_MEMBER)] if self.kmer_weight > 0 else []
        return ", ".join(f"{weight:.2f} {name}" for weight, name in sorted(named, key=lambda pair: -pair[0]))


@dataclass(frozen=True)
class SeedSpread:
    """A chosen config trained with more seeds: each seed's Pearson on `split`, the study's own trial first.

    Test when the data has a test split, else validation; a seed that failed is NaN and
    left out of the mean and spread.
    """

    role: str  # best or baseline
    seeds: tuple[int, ...]
    figures: tuple[float, ...]
    split: str

    @property
    def finite(self) -> np.ndarray:
        return np.asarray([f for f in self.figures if math.isfinite(f)])

    @property
    def mean(self) -> float:
        return float(self.finite.mean()) if len(self.finite) else math.nan

    @property
    def sd(self) -> float:
        """The sample standard deviation over seeds (NaN for fewer than two)."""
        return float(self.finite.std(ddof=1)) if len(self.finite) > 1 else math.nan

    def metrics(self) -> dict[str, float]:
        name = f"{self.role}_seeds_{self.split}_pearson"
        figures = {f"{name}_mean": self.mean, f"{name}_sd": self.sd, f"{self.role}_seeds": len(self.finite)}
        return {key: value for key, value in figures.items() if math.isfinite(value)}


@dataclass(frozen=True)
class Registration:
    """Model Registry URIs (`models:/NAME/VERSION`) of what the study registered."""

    best: str | None = None
    ensemble: str | None = None


@dataclass(frozen=True)
class StudyResult:
    """A study's trials, best first, with the figures that put them in context."""

    trials: tuple[TrialResult, ...]
    compute: Compute
    experiment_path: str
    data_dir: str
    reference: Interval | None = None
    ensemble: EnsembleResult | None = None
    registered: Registration = Registration()
    test_size: int = 0  # sequences of the test split the chosen models were scored on; 0 without one
    reference_test: Interval | None = None  # the k-mer reference on the test split
    seeds: tuple[SeedSpread, ...] = ()  # --confirm-seeds: the best and baseline configs over more seeds
    tasks: tuple[str, ...] = ()  # the data's target columns; eval r is their mean when there are several
    parent_run_id: str | None = None  # the search's MLflow parent run (None for a baseline)

    @property
    def best(self) -> TrialResult | None:
        """The one definition of the study's best trial, used by the table, the config file, MLflow and the registry."""
        return best_trial(self.trials)

    @property
    def baseline(self) -> TrialResult | None:
        return next((trial for trial in self.trials if trial.baseline), None)

    @property
    def legnet(self) -> TrialResult | None:
        """The LegNet reference trial, when the study ran one."""
        return next((trial for trial in self.trials if trial.legnet_reference), None)

    def table_rows(self) -> list[dict]:
        return [trial.table_row() for trial in self.trials]


def trial_status(metrics: dict, errored: bool) -> str:
    best = metrics.get("best_eval_pearson", math.nan)
    if errored:
        return "error"
    if metrics.get("diverged"):
        return "diverged"
    if best is None or not math.isfinite(best) or best <= NO_SIGNAL_FLOOR:
        return "no signal"
    return "done"


def rank_trials(trials) -> list:
    """Rankable trials by best eval Pearson, then the rest (errors, divergence, no signal)."""
    return sorted(trials, key=lambda t: (not t.rankable, -t.best_eval_pearson if t.rankable else 0))


def best_trial(trials) -> TrialResult | None:
    ranked = rank_trials(trials)
    return ranked[0] if ranked and ranked[0].rankable else None


def asha_rungs(max_epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The epochs at which ASHA compares trials: grace period times powers of the reduction factor."""
    rungs, epoch = [], grace_period
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs + [max_epochs]


def compute_spent(trials, max_epochs: int, rungs: list[int] | None) -> Compute:
    startups = [t.startup_seconds for t in trials if math.isfinite(t.startup_seconds)]
    return Compute(
        epochs_trained=sum(t.epochs_trained for t in trials),
        epochs_without_early_stopping=len(trials) * max_epochs,
        device_hours=sum(t.device_hours for t in trials),
        mean_trial_startup_seconds=sum(startups) / len(startups) if startups else math.nan,
        rungs={rung: sum(t.epochs_trained >= rung for t in trials) for rung in rungs} if rungs else None,
    )


def with_intervals(trials, observed: np.ndarray, kmer_predicted: np.ndarray, tasks=()) -> tuple[TrialResult, ...]:
    """Each scored trial with its eval Pearson's interval and its paired differences to the baseline, the LegNet
    reference and the k-mer reference (the same resampled rows for all, fixed seed); with several `tasks`,
    its Pearson on each."""
    from dataclasses import replace

    from model.metrics import paired_pearson_difference, pearson_interval, task_pearsons

    baseline = next((t for t in trials if t.baseline and t.predicted is not None), None)
    legnet = next((t for t in trials if t.legnet_reference and t.predicted is not None), None)
    scored = []
    for trial in trials:
        if trial.predicted is None or not math.isfinite(trial.best_eval_pearson):
            scored.append(trial)
            continue
        scored.append(
            replace(
                trial,
                interval=Interval.of(pearson_interval(observed, trial.predicted)),
                vs_kmer=Interval.of(paired_pearson_difference(observed, trial.predicted, kmer_predicted)),
                vs_baseline=Interval.of(paired_pearson_difference(observed, trial.predicted, baseline.predicted))
                if baseline is not None
                else None,
                vs_legnet=Interval.of(paired_pearson_difference(observed, trial.predicted, legnet.predicted))
                if legnet is not None
                else None,
                task_pearsons=dict(zip(tasks, task_pearsons(observed, trial.predicted))) if len(tasks) > 1 else {},
            )
        )
    return tuple(scored)


def summarise(
    trials, *, observed, kmer, max_epochs, rungs, ensemble_size, experiment_path, data_dir, tasks=()
) -> StudyResult:
    """The study's one result: trials with intervals, ranked; compute; the k-mer reference; the ensemble."""
    from model.metrics import pearson_interval
    from search.ensemble import select_ensemble

    ranked = tuple(rank_trials(with_intervals(trials, observed, kmer["predicted"], tasks)))
    reference = pearson_interval(observed, np.asarray(kmer["predicted"]))
    return StudyResult(
        trials=ranked,
        compute=compute_spent(ranked, max_epochs, rungs),
        experiment_path=experiment_path,
        data_dir=data_dir,
        reference=Interval(float(kmer["pearson"]), reference["low"], reference["high"]),
        ensemble=select_ensemble(ranked, observed, kmer, ensemble_size),
        tasks=tuple(tasks),
    )


# The best-config file's key for the figures it was chosen with; `baseline --config` ignores it.
FIGURES_KEY = "figures"


def write_best_config(best: TrialResult, path: Path, test_size: int = 0) -> None:
    """The best trial's config as a file `dream-hpo baseline --config` retrains: every field of its family,
    resolved, and none of another family's (a study's `--set` for its other trials); beside them, under
    FIGURES_KEY, its validation and (with a test split) test Pearson with their intervals."""
    from model.config import split_config

    figures = {"validation_pearson": best.best_eval_pearson}
    if best.interval is not None:
        figures |= best.interval.metrics("validation_pearson", estimate=False)
    if best.test is not None:
        figures |= best.test.pearson.metrics("test_pearson") | {"test_size": test_size}
    content = split_config(best.config).to_flat() | {FIGURES_KEY: figures}
    path.write_text(json.dumps(content, indent=2, sort_keys=True))
