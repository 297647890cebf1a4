"""What a study tells people in the terminal: its header, the final table and the lines after it. Text only."""

from __future__ import annotations

import math
from pathlib import Path

from search.results import Compute, EnsembleResult, Interval, StudyResult, TestScore, TrialResult


def header(config, gpus: float, tracking_uri: str, manifest: dict) -> str:
    """The study's first lines: what runs, on what data, splits and resources, and where results go."""
    from search.settings import experiment_path

    kind = f"search of {config.num_trials} trials" if config.searched else "one trial"
    if config.references:
        kind += " and the LegNet reference"
    schedule = f", {config.scheduler} scheduler" if config.searched else ""
    concurrency = f", at most {config.max_concurrent} at once" if config.max_concurrent else ""
    return (
        f"study '{config.name}': {kind} ({config.max_epochs} epochs at most{schedule}{concurrency})\n"
        f"  data:      {Path(config.data_dir).resolve()}\n"
        f"  splits:    {splits_line(manifest)}\n"
        + (f"  tasks:     {tasks_line(config, manifest)}\n" if manifest.get("source_format") == "table" else "")
        + 
        f"  resources: {gpus:g} GPU and {config.cpus_per_trial:g} CPU per trial, Keras on {config.backend}\n"
        f"  results:   MLflow {tracking_uri} (experiment '{config.experiment}'), checkpoints {experiment_path(config)}"
    )


def tasks_line(config, manifest: dict) -> str:
    """A table's tasks, what ranks trials on them, and the baseline's resolved loss."""
    from data_prep.prepare import DataFacts
    from model import split_config
    from model.config import resolved_loss
    from search.settings import single_trial_config

    facts = DataFacts.of(manifest)
    loss = resolved_loss(split_config(single_trial_config(config)).inputs, facts)
    ranked = "the mean eval Pearson over tasks" if len(facts.tasks) > 1 else "eval Pearson"
    return (
        f"{', '.join(facts.tasks)} (trials ranked by {ranked}); the baseline trains with the {loss} loss "
        f"(loss=auto: Poisson only for DREAM-format counts); models read {facts.layout.window_length} of "
        f"{facts.layout.width} stored bases"
    )


def splits_line(manifest: dict) -> str:
    """How the prepared data divides, and what each split decides."""
    test_size = manifest.get("test_size", 0)
    line = f"{manifest['train_size']:,} training, {manifest['eval_size']:,} validation (every choice)"
    if test_size:
        return line + f", {test_size:,} test (scored once, after the study has chosen)"
    return line + "; no test split, so every figure is a validation figure"


def reference_line(reference: dict) -> str:
    return (
        f"k-mer reference (ridge on 4-6-mer counts, fitted on {reference['n_fit']:,} training sequences "
        f"in {reference['seconds']:.0f} s, cached): eval r {reference['pearson']:.4f}"
    )


def _interval(figures: Interval | None, signed: bool = False) -> str:
    if figures is None:
        return "-"
    sign = "+" if signed else ""
    return f"{figures.estimate:{sign}.3f} [{figures.low:{sign}.3f}, {figures.high:{sign}.3f}]"


def trial_table(result: StudyResult, top: int = 10) -> list[str]:
    """Top trials against the baseline, the LegNet reference (when run) and the k-mer reference, with bootstrap 95 % intervals.

    "vs baseline", "vs LegNet" and "vs k-mer" are paired differences of eval Pearson on
    the same resampled evaluation rows: an interval above zero is a better model on this
    split. Failed trials come last with their reason; trials beyond `top` are counted.
    The references always show, ranked among the others or below the top.
    """
    legnet, test = result.legnet is not None, result.test_size > 0
    lines = [
        f"{'rank':>4}  {'trial':<12} {'eval r [95% CI]':<24} "
        + (f"{'test r [95% CI]':<24} " if test else "")
        + f"{'vs baseline [95% CI]':<26} "
        + (f"{'vs LegNet [95% CI]':<26} " if legnet else "")
        + f"{'vs k-mer [95% CI]':<26} {'epochs':>6} {'hours':>7}  status     "
        + ("eval r per task: " + ", ".join(result.tasks) + "; " if len(result.tasks) > 1 else "")
        + "config"
    ]
    shown = [
        (rank, trial)
        for rank, trial in enumerate(result.trials, start=1)
        if rank <= top or trial.baseline or trial.legnet_reference
    ]
    for rank, trial in shown:
        config = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.searched.items())
        shown_rank = str(rank) if trial.rankable else "-"
        reason = f"  ({trial.reason})" if trial.status != "done" and trial.reason else ""
        pearson = _interval(trial.interval) if trial.interval else f"{trial.best_eval_pearson:.3f}"
        tag = "[baseline] " if trial.baseline else "[LegNet reference] " if trial.legnet_reference else ""
        lines.append(
            f"{shown_rank:>4}  {(trial.trial_id or '?'):<12} {pearson:<24} "
            + (f"{_interval(trial.test.pearson if trial.test else None):<24} " if test else "")
            + f"{_interval(trial.vs_baseline, signed=True):<26} "
            + (f"{_interval(trial.vs_legnet, signed=True):<26} " if legnet else "")
            + f"{_interval(trial.vs_kmer, signed=True):<26} "
            f"{trial.epochs_trained:>6} {trial.device_hours:>7.3f}  "
            f"{trial.status:<9}  {_per_task(trial)}{tag}{'' if trial.legnet_reference else config}{reason}"
        )
    shown_ranks = {rank for rank, _ in shown}
    left_out = [trial for rank, trial in enumerate(result.trials, start=1) if rank not in shown_ranks]
    if left_out:
        failed = sum(trial.status != "done" for trial in left_out)
        lines.append(
            f"{'':>4}  ... {len(left_out)} more trial{'s' * (len(left_out) > 1)} not shown"
            + (f" ({failed} of them not done)" if failed else "")
            + "; all are in the parent run's study/trials.csv"
        )
    if result.reference is not None:
        lines.append(
            f"{'':>4}  {'k-mer ridge':<12} {_interval(result.reference):<24} "
            + (f"{_interval(result.reference_test):<24} " if test else "")
            + "(ridge regression on 4- to 6-mer counts, same split)"
        )
    lines.append(compute_line(result.compute))
    return lines


def _per_task(trial: TrialResult) -> str:
    """`0.712 / 0.655; ` for a trial scored on several tasks, else ''."""
    return " / ".join(f"{value:.3f}" for value in trial.task_pearsons.values()) + "; " if trial.task_pearsons else ""


def compute_line(compute: Compute) -> str:
    """One line on what the study spent: epochs against running every trial to the end, ASHA's rungs, start-up."""
    line = (
        f"compute: {compute.epochs_trained} of {compute.epochs_without_early_stopping} epochs "
        f"({compute.saved_fraction:.0%} saved), {compute.device_hours:.3f} device-hours"
    )
    if compute.rungs:
        reached = ", ".join(f"epoch {epoch}: {trials}" for epoch, trials in compute.rungs.items())
        line += f"; trials reaching each ASHA rung: {reached}"
    if math.isfinite(compute.mean_trial_startup_seconds):
        line += f"; trial start-up {compute.mean_trial_startup_seconds:.1f} s on average"
    return line


def ensemble_line(ensemble: EnsembleResult, registered: str | None) -> str:
    interval, delta = ensemble.interval, ensemble.vs_best
    test = f"; test r {_interval(ensemble.test.pearson)}" if ensemble.test else ""
    return (
        f"ensemble ({ensemble.composition}; chosen on validation): eval r {interval.estimate:.3f} "
        f"[{interval.low:.3f}, {interval.high:.3f}], vs the single best {delta.estimate:+.3f} "
        f"[{delta.low:+.3f}, {delta.high:+.3f}]{test}" + (f"; registered as {registered}" if registered else "")
    )


def test_line(result: StudyResult) -> str | None:
    """The best trial's test figures in one line, or None without a test split."""
    best = result.best
    if best is None or best.test is None:
        return None
    score = best.test
    line = f"best trial on the test split ({result.test_size:,} sequences, scored once): r {_interval(score.pearson)}"
    if score.vs_baseline is not None:
        line += f", vs baseline {_interval(score.vs_baseline, signed=True)}"
    return line + f", vs k-mer reference {_interval(score.vs_kmer, signed=True)}"


def registry_description(validation: Interval | None, test: TestScore | None, test_size: int) -> str:
    """What a registered version says about itself: the figure it was chosen on, and the one to quote."""
    parts = []
    if validation is not None:
        parts.append(f"Validation Pearson {_interval(validation)} (the split every choice was made on).")
    if test is not None:
        parts.append(
            f"Test Pearson {_interval(test.pearson)} on {test_size:,} sequences the search never saw, scored once: "
            "the figure to quote."
        )
    else:
        parts.append("No test split: its figures are validation figures.")
    return " ".join(parts) + " Bootstrap 95 % intervals."


def seeds_header(extra: int, roles: list[str], epochs: int, trainings: int) -> str:
    """The line before the extra-seed trainings start."""
    configs = " and ".join(f"the {role}'s" if role == "baseline" else "the best trial's" for role in roles)
    return (
        f"training {configs} config with {extra} more seed{'s' if extra != 1 else ''} ({trainings} trainings, "
        f"{epochs} epochs each, no early stopping): how much of its figure is its seed"
    )


def seed_lines(result: StudyResult) -> list[str]:
    """One line per retrained config: each seed's figure, the study's own first, then mean and spread."""
    lines = []
    for spread in result.seeds:
        shown = ", ".join("failed" if not math.isfinite(f) else f"{f:.3f}" for f in spread.figures)
        who = "best trial" if spread.role == "best" else "baseline"
        line = f"{who} over {len(spread.seeds)} seeds, {spread.split} r: {shown} (seed {spread.seeds[0]} is the study's)"
        if len(spread.finite) > 1:
            line += f"; mean {spread.mean:.3f}, sd {spread.sd:.3f}"
        lines.append(line)
    return lines
