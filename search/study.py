"""Run a study: the baseline alone, or Optuna trials around it, on Ray Tune.

`run_study` is the one place a `Tuner` is built. The baseline command is a study of
one trial at the fixed baseline point; a search adds the Optuna sampler, the ASHA
scheduler and a parent MLflow run. Both train through `trainable.train_trial`.
Everything a user gave is checked by `settings.validate_study` before Ray starts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from data_prep.prepare import DataFacts
from search import cluster, report, results, settings
from search.baseline import TrialNaming, reference_of, trial_params
from search.settings import StudyConfig
from search.space import Parameter, baseline_point, point_of
from search.final_scoring import score_on_test
from search.trainable import TUNE_METRIC


def run_study(config: StudyConfig, progress=print) -> results.StudyResult:
    """Run (or resume) the study and return its result, trials best first."""
    from search import runtime, tracking
    from search.tracking_store import resolve_tracking_uri

    manifest = settings.validate_study(config)
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    reference = reference_model(config.data_dir, progress)
    if not config.verbose:
        runtime.quiet_driver()
    import ray
    from ray import tune

    runtime.connect_ray(config.address, config.backend, config.verbose)
    resources = ray.cluster_resources()
    gpus = config.gpus_per_trial if config.gpus_per_trial is not None else cluster.default_gpus_per_trial(resources)
    cluster.check_storage(settings.storage_path(config), config.shared_storage, {"CPU": config.cpus_per_trial, "GPU": gpus})
    cluster.warn_if_no_gpus(gpus, resources)
    data_dir = str(Path(config.data_dir).resolve())
    runs = tracking.StudyRuns(tracking_uri, config.experiment, config.name, data_dir, manifest)
    parent_run_id = runs.open_parent(study_params(config, gpus), space_spec(config.space)) if config.searched else None
    # On resume Ray restores the callbacks pickled with the tuner; they find their runs by tags.
    stop_reason = stopped_early(config)
    logger = tracking.MlflowTrialLogger(runs, TrialNaming(config), trial_params, parent_run_id, stop_reason)
    trainable = tune.with_resources(_train_trial(), {"cpu": config.cpus_per_trial, "gpu": gpus})
    param_space = ray_param_space(config, data_dir)
    progress(report.header(config, gpus, tracking_uri, manifest))
    try:
        if config.resume:
            tuner = tune.Tuner.restore(
                settings.experiment_path(config), trainable, resume_errored=True, param_space=param_space
            )
        else:
            settings.write_settings(config)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune_config(config),
                run_config=run_config(config, config.name, [logger, console_reporter(config, progress)]),
            )
        with runtime.GracefulInterrupt() as interrupt:
            grid = tuner.fit()
        if interrupt.happened:
            raise KeyboardInterrupt(f"(state saved); continue it with --resume --name {config.name}")
        device_share = gpus if gpus > 0 else config.cpus_per_trial
        trials = [trial_result(outcome, runs, config, device_share, stop_reason) for outcome in grid]
        study = results.summarise(
            trials,
            observed=eval_targets(config.data_dir),
            kmer=reference,
            max_epochs=config.max_epochs,
            rungs=results.asha_rungs(config.max_epochs, config.grace_period, config.reduction_factor)
            if config.uses_asha
            else None,
            ensemble_size=config.ensemble_size if config.searched else 0,
            experiment_path=str(grid.experiment_path),
            data_dir=str(config.data_dir),
            tasks=DataFacts.of(manifest).tasks,
        )
        seed_trials = confirm_seeds(config, study, trainable, runs, parent_run_id, device_share, progress)
        # Every choice is made: now, and only now, the test split.
        study = score_on_test(study, reference, progress, seed_trials, {"num_cpus": config.cpus_per_trial, "num_gpus": gpus})
        runs.log_trial_figures(study)
        registered = results.Registration()
        if parent_run_id:
            registered = runs.finish_parent(parent_run_id, study, config.space, config.register_as)
    except BaseException as error:
        runs.close_open_runs("KILLED")
        if parent_run_id:
            interrupted = isinstance(error, KeyboardInterrupt)
            runs.fail_parent(parent_run_id, f"{type(error).__name__}: {error}", "KILLED" if interrupted else "FAILED")
        raise
    runs.close_open_runs("KILLED")
    return replace(study, registered=registered, parent_run_id=parent_run_id)


def run_config(config: StudyConfig, name: str, callbacks: list):
    """Where a Tuner of the study saves its state, what it calls back, and its retries."""
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=settings.storage_path(config),
        callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=1 if config.verbose else 0,
    )


def seed_points(config: StudyConfig, study: results.StudyResult) -> list[tuple[str, dict]]:
    """(role, config) of each extra-seed trial: the best's config, then the baseline's unless it is the best."""
    chosen = [("best", study.best)]
    if study.baseline is not None and study.best is not None and study.baseline.trial_id != study.best.trial_id:
        chosen.append(("baseline", study.baseline))
    return [
        (role, {**trial.config, "seed": trial.config["seed"] + extra})
        for role, trial in chosen
        if trial is not None
        for extra in range(1, config.seeds_to_confirm + 1)
    ]


def confirm_seeds(config: StudyConfig, study, trainable, runs, parent_run_id, device_share, progress) -> dict[str, list]:
    """Train the best and baseline configs with `--confirm-seeds` more seeds, every epoch, no early stopping.

    They run after every choice is made and are never ranked: they measure how much the
    chosen figure owes to its seed. Their runs nest under the parent as `ROLE-seed-S`.
    Returns {role: [TrialResult per extra seed]}.
    """
    points = seed_points(config, study)
    if not points:
        return {}
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from search import runtime, tracking
    from search.baseline import SeedNaming
    from search.console import ConsoleReporter

    roles = sorted({role for role, _ in points}, key=["best", "baseline"].index)
    progress(report.seeds_header(config.seeds_to_confirm, roles, config.max_epochs, len(points)))
    keys = sorted({key for _, point in points for key in point})
    # Ray fills the points into this space: a field they share is a constant, one they differ in a choice.
    param_space = {"data_dir": str(Path(config.data_dir).resolve())}
    for key in keys:
        values = list(dict.fromkeys(point.get(key) for _, point in points))
        param_space[key] = values[0] if len(values) == 1 else tune.choice(values)
    naming = SeedNaming(points)
    logger = tracking.MlflowTrialLogger(runs, naming, trial_params, parent_run_id)
    console = ConsoleReporter(len(points), config.max_epochs, False, dict(config.fixed), None, progress)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=TUNE_METRIC,
            mode="max",
            search_alg=BasicVariantGenerator(
                points_to_evaluate=[dict(point) for _, point in points], max_concurrent=config.max_concurrent or 0
            ),
            num_samples=len(points),
            reuse_actors=True,
        ),
        run_config=run_config(config, f"{config.name}-seeds", [logger, console]),
    )
    with runtime.GracefulInterrupt() as interrupt:
        grid = tuner.fit()
    if interrupt.happened:
        raise KeyboardInterrupt(f"(the search is saved); continue it with --resume --name {config.name}")
    by_role = {role: [] for role in roles}
    for outcome in grid:
        trial = trial_result(outcome, runs, config, device_share, None)
        by_role[naming.role_of(trial.config)].append(trial)
    return {role: sorted(trials, key=lambda t: t.config["seed"]) for role, trials in by_role.items()}


def _train_trial():
    from search.trainable import train_trial

    return train_trial


def reference_model(data_dir, progress) -> dict:
    """The study's k-mer reference (ridge on 4- to 6-mer counts), fitted once per prepared set and cached."""
    from model.kmer_reference import kmer_reference

    reference = kmer_reference(data_dir)
    progress(report.reference_line(reference))
    return reference


def eval_targets(data_dir):
    """The eval split's measured values, in the order trials' predictions are saved."""
    import numpy as np

    from data_prep import PreparedData

    data = PreparedData.load(data_dir)
    return np.asarray(data.targets[data.eval_index], np.float64)


def ray_param_space(config: StudyConfig, data_dir: str) -> dict:
    """Ray's param space: the fixed fields (and a one-trial study's overrides) plus the space's distributions.

    A space over families is Optuna's define-by-run function (`tune_config`), so Ray gets its constants only.
    """
    constants = {"data_dir": data_dir, **config.fixed}
    if not config.searched:
        return {**constants, **config.overrides}
    if "model_family" in config.space:
        return constants
    return {**constants, **{name: parameter.to_ray() for name, parameter in config.space.items()}}


def tune_config(config: StudyConfig):
    """Optuna's multivariate TPE from the baseline point, and ASHA that never stops the baseline."""
    from ray import tune

    search_alg, scheduler = None, None
    if config.searched:
        import warnings

        import optuna

        from search.scheduler import PrunedAwareOptunaSearch, WithReferences
        from search.space import FamilySpace

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # `group` lets multivariate TPE model each family's own parameters together.
        sampler = optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group="model_family" in config.space)
        # A reference that is a point of the space (LegNet in `families`) is one of
        # Optuna's trials, like the baseline, so TPE learns from it; the others are not.
        points = [(reference, point_of(config.space, reference, config.fixed)) for reference in config.references]
        # Ray Tune limits the searcher itself from `max_concurrent_trials`.
        search_alg = PrunedAwareOptunaSearch(
            config.max_epochs,
            points_to_evaluate=[
                baseline_point(config.space, config.fixed),
                *(point for _, point in points if point is not None),
            ],
            sampler=sampler,
            # Over families the space is a define-by-run function, which needs the metric up front.
            **({"space": FamilySpace(config.space), "metric": TUNE_METRIC, "mode": "max"} if "model_family" in config.space else {}),
        )
        outside = [reference for reference, point in points if point is None]
        if outside:
            search_alg = WithReferences(search_alg, outside)
    if config.uses_asha:
        from search.scheduler import StudyASHA

        scheduler = StudyASHA(
            config.fixed,
            time_attr="epoch",
            max_t=config.max_epochs,
            grace_period=config.grace_period,
            reduction_factor=config.reduction_factor,
        )
    return tune.TuneConfig(
        metric=TUNE_METRIC,
        mode="max",
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=config.total_trials,
        max_concurrent_trials=config.max_concurrent,
        # A new actor per trial pays Ray's worker start and TensorFlow's import again
        # (measured in docs/benchmarks.md); all trials ask for the same resources.
        reuse_actors=True,
    )


def console_reporter(config: StudyConfig, progress):
    from search.console import ConsoleReporter

    return ConsoleReporter(
        config.total_trials, config.max_epochs, config.searched, dict(config.fixed),
        config.grace_period if config.uses_asha else None, progress,
    )


def stopped_early(config: StudyConfig):
    """What ended a trial before its last epoch under the study's ASHA, from its last result (None without ASHA)."""
    if not config.uses_asha:
        return None
    from functools import partial

    from search.scheduler import early_stop_reason

    return partial(early_stop_reason, grace_period=config.grace_period, max_epochs=config.max_epochs)


def trial_result(outcome, runs, config: StudyConfig, device_share: float, stop_reason) -> results.TrialResult:
    """One of Ray's trial results as a `TrialResult`; device hours are GPU-hours (CPU-hours without GPUs).

    `stop_reason` is `stopped_early(config)`: what ended a trial early under ASHA, or None without it.
    """
    import math

    from search.runtime import trial_config as config_of

    metrics = outcome.metrics or {}
    trial_config = config_of(outcome)
    reference = reference_of(trial_config, config.fixed)
    trial_id = metrics.get("trial_id")
    run_id, model_logged = runs.trial_run(trial_id)
    best = metrics.get("best_eval_pearson", math.nan)
    return results.TrialResult(
        trial_id=trial_id,
        run_id=run_id,
        baseline=reference == "baseline",
        legnet_reference=reference == "legnet",
        status=results.trial_status(metrics, errored=outcome.error is not None),
        reason=metrics.get("stop_reason")
        or (stop_reason(metrics) if stop_reason else None)
        or metrics.get("problem")
        or error_line(outcome.error),
        best_eval_pearson=float(best) if best is not None else math.nan,
        epochs_trained=int(metrics.get("epoch", 0)),
        device_hours=float(metrics.get("time_total_s", 0.0)) * device_share / 3600,
        startup_seconds=float(metrics.get("startup_seconds", math.nan)),
        model_logged=model_logged,
        config=trial_config,
        searched={k: trial_config[k] for k in (config.space or {}) if k in trial_config},
        predicted=best_predictions(outcome.checkpoint),
        checkpoint=outcome.checkpoint,
    )


def error_line(error: BaseException | None) -> str:
    """The exception line of a trial's error (Ray's error text ends with it), or ''."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1] if lines else (type(error).__name__ if error else "")


def best_predictions(checkpoint):
    """A trial's best-epoch eval predictions (eval-split order) from its last checkpoint, or None."""
    import numpy as np

    from search.trainable import BEST_PREDICTIONS_FILE

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory) / BEST_PREDICTIONS_FILE
        return np.load(path)["predicted"] if path.exists() else None


def study_params(config: StudyConfig, gpus: float) -> dict:
    """The parent run's params: how the study searches, so it can be repeated."""
    return {
        "num_trials": config.num_trials,
        "max_concurrent": config.max_concurrent,
        "scheduler": config.scheduler,
        "grace_period": config.grace_period,
        "reduction_factor": config.reduction_factor,
        "sampler": "optuna TPE (multivariate)",
        "sampler_seed": config.seed,
        "gpus_per_trial": gpus,
        "cpus_per_trial": config.cpus_per_trial,
        "backend": config.backend,
        **{f"fixed.{k}": v for k, v in config.fixed.items()},
    }


def space_spec(space: dict[str, Parameter]) -> dict:
    return {name: parameter.to_spec() for name, parameter in space.items()}
