"""The study's one look at its test split, after every choice is made.

Each trial's best epoch, ASHA's promotions, Optuna's points, the ranking, the ensemble's
members and the k-mer reference's penalty are all decided on the validation split. Only
then does `score_on_test` read the test targets (`PreparedData.read_test_targets`, the
one reader) and score what the study chose and what it compares with, once each: the
best trial, the ensemble, the baseline, the LegNet reference and the k-mer reference,
with bootstrap 95 % intervals and paired differences to the baseline and the k-mer
reference on the same resampled test rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from search.results import Interval, StudyResult, TestScore


def score_on_test(study: StudyResult, kmer: dict, progress=print) -> StudyResult:
    """`study` with test scores for its chosen and reference models; unchanged without a test split."""
    from data_prep import PreparedData
    from model.metrics import paired_pearson_difference, pearson_interval

    data = PreparedData.load(study.data_dir)
    if not data.has_test_split:
        return study
    progress(f"scoring the chosen models once on the test split ({len(data.test_index):,} sequences)")
    codes = np.asarray(data.codes[data.test_index])
    scored = [t for t in (study.best, study.baseline, study.legnet) if t is not None and t.checkpoint is not None]
    members = list(study.ensemble.members) if study.ensemble is not None else []
    predicted = {}
    for trial in scored + members:
        if trial.trial_id not in predicted:
            predicted[trial.trial_id] = checkpoint_predictions(trial.checkpoint, codes)
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
        ensemble = replace(ensemble, test=score(np.mean([predicted[m.trial_id] for m in members], axis=0)))
    return replace(
        study,
        trials=trials,
        ensemble=ensemble,
        test_size=len(observed),
        reference_test=Interval.of(pearson_interval(observed, kmer_predicted)),
    )


def checkpoint_predictions(checkpoint, codes: np.ndarray) -> np.ndarray:
    """A trial's best-epoch model, from its checkpoint, on `codes`, as the trial predicts its validation split."""
    from model.inference import predict_codes
    from model.saving import load_model
    from search.trainable import BEST_MODEL_FILE

    with checkpoint.as_directory() as directory:
        model = load_model(Path(directory) / BEST_MODEL_FILE)
    return np.asarray(predict_codes(model, codes), np.float64)
