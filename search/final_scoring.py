"""The study's one look at its test split, after every choice is made.

Each trial's best epoch, ASHA's promotions, Optuna's points, the ranking, the ensemble's
members and the k-mer reference's penalty are all decided on the validation split. Only
then does `score_on_test` read the test targets (`PreparedData.read_test_targets`, the
one reader) and score what the study chose and what it compares with, once each: the
best trial, the ensemble, the baseline, the LegNet reference and the k-mer reference,
with bootstrap 95 % intervals and paired differences to the baseline and the k-mer
reference on the same resampled test rows; and the best and baseline configs' extra
seeds (`--confirm-seeds`), whose spread is the training noise behind those figures.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from search.results import Interval, SeedSpread, StudyResult, TestScore


def score_on_test(
    study: StudyResult, kmer: dict, progress=print, seed_trials: dict | None = None, resources: dict | None = None
) -> StudyResult:
    """`study` with test scores for its chosen and reference models, and the spread over `seed_trials`
    ({role: extra-seed TrialResults}); without a test split only the seeds' validation spread.

    The models predict in one Ray task with `resources` (Ray's num_cpus, num_gpus), like a trial.
    """
    from data_prep import PreparedData
    from model.inference import weighted_mean
    from model.metrics import paired_pearson_difference, pearson, pearson_interval

    seed_trials = seed_trials or {}
    data = PreparedData.load(study.data_dir)
    if not data.has_test_split:
        return replace(study, seeds=seed_spreads(study, seed_trials, "validation", lambda t: t.best_eval_pearson))
    progress(f"scoring the chosen models once on the test split ({len(data.test_index):,} sequences)")
    codes = np.asarray(data.codes[data.test_index])
    # A trial with a best model: finished with signal (its checkpoint then holds the best epoch's model).
    scored = [t for t in (study.best, study.baseline, study.legnet) if t is not None and t.rankable]
    members = list(study.ensemble.members) if study.ensemble is not None else []
    extra = [t for trials in seed_trials.values() for t in trials if t.rankable]
    checkpoints = {t.trial_id: t.checkpoint for t in scored + members + extra}
    predicted = predict_checkpoints(checkpoints, codes, resources or {"num_cpus": 1}, data.facts.layout)
    observed = data.read_test_targets().astype(np.float64)
    kmer_predicted = np.asarray(kmer["test_predicted"], np.float64)
    baseline = predicted.get(study.baseline.trial_id) if study.baseline is not None else None

    def score(prediction: np.ndarray) -> TestScore:
        return TestScore(
            pearson=Interval.of(pearson_interval(observed, prediction)),
            vs_baseline=None
            if baseline is None
            else Interval.of(paired_pearson_difference(observed, prediction, baseline)),
            vs_kmer=Interval.of(paired_pearson_difference(observed, prediction, kmer_predicted)),
        )

    chosen = {t.trial_id for t in scored}
    trials = tuple(replace(t, test=score(predicted[t.trial_id])) if t.trial_id in chosen else t for t in study.trials)
    ensemble = study.ensemble
    if ensemble is not None:
        blend = weighted_mean(
            [predicted[m.trial_id] for m in members] + [kmer_predicted], [*ensemble.weights, ensemble.kmer_weight]
        )
        ensemble = replace(ensemble, test=score(blend))

    def seed_figure(trial) -> float:
        return pearson(observed, predicted[trial.trial_id]) if trial.trial_id in predicted else math.nan

    return replace(
        study,
        trials=trials,
        ensemble=ensemble,
        test_size=len(observed),
        reference_test=Interval.of(pearson_interval(observed, kmer_predicted)),
        seeds=seed_spreads(study, seed_trials, "test", seed_figure),
    )


def seed_spreads(study: StudyResult, seed_trials: dict, split: str, figure) -> tuple[SeedSpread, ...]:
    """Each role's spread: the study's own trial first, then its extra seeds, each scored by `figure(trial)`."""
    own = {"best": study.best, "baseline": study.baseline}
    return tuple(
        SeedSpread(
            role=role,
            seeds=tuple(t.config["seed"] for t in (own[role], *trials)),
            figures=tuple(float(figure(t)) for t in (own[role], *trials)),
            split=split,
        )
        for role, trials in seed_trials.items()
    )


def predict_checkpoints(checkpoints: dict, codes: np.ndarray, resources: dict, layout) -> dict[str, np.ndarray]:
    """{trial id: its best-epoch model's predictions on `codes` (stored in `layout`)}, in one Ray task on a
    worker, so the driver never imports TensorFlow."""
    import ray

    if not checkpoints:
        return {}
    task = ray.remote(_predict_checkpoints).options(**resources)
    return ray.get(task.remote(checkpoints, codes, layout))


def _predict_checkpoints(checkpoints: dict, codes: np.ndarray, layout) -> dict[str, np.ndarray]:
    """Each checkpoint's best-epoch model on `codes`, as the trial predicted its validation split."""
    from model.inference import predict_codes
    from model.saving import load_model
    from search.trainable import BEST_MODEL_FILE

    predicted = {}
    for trial_id, checkpoint in checkpoints.items():
        with checkpoint.as_directory() as directory:
            model = load_model(Path(directory) / BEST_MODEL_FILE)
        predicted[trial_id] = np.asarray(predict_codes(model, codes, layout=layout), np.float64)
    return predicted
