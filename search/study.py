"""Build and run a study: the baseline alone, or Optuna trials around it, on Ray Tune.

`run_study` is the one place a `Tuner` is built. The baseline command is a study of
one trial at the fixed baseline point; a search adds the Optuna sampler, the ASHA
scheduler and a parent MLflow run. Both train through `trainable.train_trial`.
Everything a user gave is checked by `check_study` before Ray starts or MLflow is touched.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from search import cluster, tracking
from search.space import Parameter, baseline_config, baseline_point, changed_fields, check_space, is_baseline
from search.trainable import TUNE_METRIC

BACKENDS = ("tensorflow", "jax")
SCHEDULERS = ("asha", "none")


class StudyError(ValueError):
    """A study that cannot start as given; the message names the flag or file, the value and what is allowed."""


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs besides the trial configs themselves.

    `fixed` holds the config fields every trial shares (the study's epochs, seed,
    batch size, and `--set` fields of a search): the baseline is the seed with them.
    `overrides` change the one trial of a baseline-command study away from the
    baseline (`--set`, `--config`): such a run is a variant, and says where it came from.
    """

    name: str
    data_dir: Path
    experiment: str = "dream-hpo"
    tracking_uri: str | None = None
    address: str | None = None
    storage_path: str | None = None
    shared_storage: bool = False
    space: dict[str, Parameter] | None = None
    num_trials: int = 1
    max_concurrent: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    scheduler: str = "none"
    grace_period: int = 1
    reduction_factor: int = 3
    seed: int = 0
    resume: bool = False
    fixed: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    derived_from: str | None = None
    max_failures: int = 2
    register_as: str | None = None
    ensemble_size: int = 3
    backend: str = "tensorflow"
    verbose: bool = False

    def __post_init__(self):
        def require(ok: bool, flag: str, value, allowed: str):
            if not ok:
                raise StudyError(f"{flag} {value!r}: {allowed}")

        require(self.backend in BACKENDS, "--backend", self.backend, f"must be one of {list(BACKENDS)}")
        require(
            self.backend != "jax" or importlib.util.find_spec("jax") is not None,
            "--backend",
            self.backend,
            "needs JAX: pip install 'dream-hpo[jax]' (with jax[cuda12] for GPUs)",
        )
        require(_is_int(self.num_trials) and self.num_trials >= 1, "--num-trials", self.num_trials, "must be >= 1")
        require(
            self.max_concurrent is None or (_is_int(self.max_concurrent) and self.max_concurrent >= 1),
            "--max-concurrent",
            self.max_concurrent,
            "must be >= 1 (leave it out to run as many as resources allow)",
        )
        require(
            self.gpus_per_trial is None or (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0),
            "--gpus-per-trial",
            self.gpus_per_trial,
            "must be >= 0 (fractions pack trials on one GPU)",
        )
        require(
            math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0,
            "--cpus-per-trial",
            self.cpus_per_trial,
            "must be > 0",
        )
        require(self.scheduler in SCHEDULERS, "--scheduler", self.scheduler, f"must be one of {list(SCHEDULERS)}")
        require(_is_int(self.grace_period) and self.grace_period >= 1, "--grace-period", self.grace_period, "must be >= 1")
        require(
            _is_int(self.reduction_factor) and self.reduction_factor >= 2,
            "--reduction-factor",
            self.reduction_factor,
            "must be >= 2 (ASHA keeps 1/F of the trials at each rung)",
        )
        require(
            _is_int(self.ensemble_size) and self.ensemble_size >= 0,
            "--ensemble-size",
            self.ensemble_size,
            "must be >= 0 (0 or 1: no ensemble)",
        )
        epochs = self.fixed.get("epochs", 1)
        require(_is_int(epochs) and epochs >= 1, "--max-epochs/--epochs", epochs, "must be >= 1")
        require(bool(self.name) and self.name not in {".", ".."}, "--name", self.name, "must be a non-empty name")
        require(
            "/" not in self.name and "\\" not in self.name and "\0" not in self.name and self.name.isprintable(),
            "--name",
            self.name,
            "names a directory of the study's results: any printable characters but / and \\",
        )
        if self.space is None and self.num_trials != 1:
            raise StudyError("a study without a search space runs exactly one trial (the baseline)")
        if self.space and self.overrides:
            raise StudyError("a search sets its shared fields with `fixed`; `overrides` belong to one-trial studies")

    @property
    def max_epochs(self) -> int:
        return baseline_config(self.fixed)["epochs"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def storage_path(config: StudyConfig) -> str:
    return config.storage_path or str(Path("ray_results").resolve())


def experiment_path(config: StudyConfig) -> str:
    # A string join keeps the '//' of s3:// and gs:// storage URIs, which Path would collapse.
    return f"{storage_path(config).rstrip('/')}/{config.name}"


def single_trial_config(config: StudyConfig) -> dict:
    """The one trial of a study without a space: the baseline, changed by any overrides."""
    return {**baseline_config(config.fixed), **config.overrides}


def check_study(config: StudyConfig) -> dict:
    """Every check that needs no Ray and touches no MLflow store; returns the data's manifest.

    The data directory, the fixed fields and overrides, every point of the space
    together with them, the baseline inside the space, and whether the study exists.
    """
    from data_prep import check_prepared
    from model import split_config

    manifest = check_prepared(config.data_dir)
    for key, value in {**config.fixed, **config.overrides}.items():
        try:
            split_config({**baseline_config({}), key: value})
        except (ValueError, TypeError) as error:
            raise StudyError(f"--set/--config {key}={value!r}: {error}") from None
    searched = sorted(set(config.fixed) & set(config.space or {}))
    if searched:
        raise StudyError(
            f"--set {searched[0]}: '{searched[0]}' is searched by this study's space; a fixed value would be "
            "ignored. Narrow the space (--space FILE) instead, or drop the --set"
        )
    try:
        split_config(single_trial_config(config))
    except (ValueError, TypeError) as error:
        raise StudyError(f"--set/--config: the trial's config is invalid: {error}") from None
    if config.space:
        check_space(config.space, config.fixed)
        baseline_point(config.space, config.fixed)
    from ray import tune

    exists = tune.Tuner.can_restore(experiment_path(config))
    if config.resume and not exists:
        raise StudyError(f"--resume --name {config.name}: nothing to resume at {experiment_path(config)}")
    if exists and not config.resume:
        raise StudyError(
            f"--name {config.name}: a study of that name already exists at {experiment_path(config)}; "
            "pass --resume to continue it or another --name to start a new one"
        )
    return manifest


def connect_ray(address: str | None, backend: str = "tensorflow", verbose: bool = False) -> None:
    """A local Ray on this machine by default; `auto` or `ray://...` joins a cluster.

    Trials run Keras on `backend`: Ray starts every worker with KERAS_BACKEND set.
    A local Ray uses a loopback node address and Ray's token authentication (see the
    README's Reliability section for the ports it opens). Without `verbose`, the
    workers' output (TensorFlow, CUDA, absl) stays in Ray's log files.
    """
    import ray

    os.environ["KERAS_BACKEND"] = backend
    if ray.is_initialized():
        running = (ray.get_runtime_context().runtime_env.get("env_vars") or {}).get("KERAS_BACKEND", "tensorflow")
        if running != backend:
            raise StudyError(
                f"--backend {backend}: Ray is already connected with KERAS_BACKEND={running}; a {backend} "
                "study needs a new process (or ray.shutdown() first)"
            )
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    env_vars = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "GRPC_VERBOSITY": "ERROR",
        # Ray workers must import this project whether it is installed or run from a checkout.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "KERAS_BACKEND": backend,
        # JAX takes 75% of a GPU at start unless told not to; packed trials share the card.
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    local = {} if address else {"_node_ip_address": LOCAL_NODE_IP}
    ray.init(
        address=address,
        runtime_env={"env_vars": env_vars},
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        **local,
    )


# Ray turns 127.0.0.1 into the machine's network address; the rest of 127/8 stays loopback.
LOCAL_NODE_IP = "127.0.0.2"


def quiet_driver() -> None:
    """Ray Tune's and MLflow's info messages (result paths, TensorBoard hints, download bars) are for --verbose."""
    import warnings

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] = "0"
    for name in ("ray", "ray.tune", "ray.train", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", message=".*is experimental.*")


def run_study(config: StudyConfig, progress=print) -> dict:
    """Run (or resume) the study and return a summary of its trials, best first."""
    manifest = check_study(config)
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    tracking.check_tracking_server(tracking_uri)
    reference = reference_model(config.data_dir, progress)
    if not config.verbose:
        quiet_driver()
    import ray
    from ray import tune

    connect_ray(config.address, config.backend, config.verbose)
    resources = ray.cluster_resources()
    gpus = config.gpus_per_trial if config.gpus_per_trial is not None else cluster.default_gpus_per_trial(resources)
    cluster.check_storage(storage_path(config), config.shared_storage, {"CPU": config.cpus_per_trial, "GPU": gpus})
    cluster.warn_if_no_gpus(gpus, resources)
    runs = tracking.StudyRuns(tracking_uri, config.experiment, config.name, str(Path(config.data_dir).resolve()), manifest)
    space = config.space or {}
    point = baseline_point(space, config.fixed) if space else {}
    constants = {"data_dir": str(Path(config.data_dir).resolve()), **config.fixed}
    if not space:
        constants = {**constants, **config.overrides}
    parent_run_id = runs.open_parent(study_settings(config, gpus), space_spec(space)) if space else None
    # On resume Ray restores the callbacks pickled with the tuner; they find their runs by tags.
    logger = tracking.MlflowTrialLogger(runs, TrialNaming(config), trial_params, parent_run_id)
    console = console_reporter(config, progress)
    trainable = tune.with_resources(_train_trial(), {"cpu": config.cpus_per_trial, "gpu": gpus})
    progress(header(config, gpus, tracking_uri))
    try:
        if config.resume:
            tuner = tune.Tuner.restore(
                experiment_path(config), trainable, resume_errored=True, param_space=_param_space(space, constants)
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(space, constants),
                tune_config=_tune_config(config, space, point),
                run_config=tune.RunConfig(
                    name=config.name,
                    storage_path=storage_path(config),
                    callbacks=[logger, console],
                    failure_config=tune.FailureConfig(max_failures=config.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=1 if config.verbose else 0,
                ),
            )
        with GracefulInterrupt() as interrupt:
            results = tuner.fit()
        if interrupt.happened:
            raise KeyboardInterrupt(f"(state saved); continue it with --resume --name {config.name}")
        summary = summarise(results, runs, config, gpus if gpus > 0 else config.cpus_per_trial)
        add_intervals(summary, reference, manifest, runs)
    except BaseException as error:
        runs.close_open_runs("KILLED")
        if parent_run_id:
            interrupted = isinstance(error, KeyboardInterrupt)
            runs.fail_parent(parent_run_id, f"{type(error).__name__}: {error}", "KILLED" if interrupted else "FAILED")
        raise
    runs.close_open_runs("KILLED")
    best = best_trial(summary["trials"])
    summary["best"] = best
    if parent_run_id:
        finish_parent_run(runs, parent_run_id, summary, best, config)
    return summary


def _train_trial():
    from search.trainable import train_trial

    return train_trial


class TrialNaming:
    """A trial's run name and tags, from the study's one definition of the baseline."""

    def __init__(self, config: StudyConfig):
        self.fixed = dict(config.fixed)
        self.search = bool(config.space)
        self.derived_from = config.derived_from

    def __call__(self, trial_config: dict, number: int) -> tuple[str, dict]:
        if is_baseline(trial_config, self.fixed):
            return "baseline", {"baseline": "true", "run_kind": "baseline", "trial_number": str(number)}
        tags = {"baseline": "false", "trial_number": str(number)}
        if self.search:
            return f"trial-{number}", {**tags, "run_kind": "search_trial"}
        if self.derived_from:
            return f"retrain-{Path(self.derived_from).stem}", {
                **tags,
                "run_kind": "retrain",
                "derived_from": self.derived_from,
            }
        shown = ",".join(f"{k}={v}" for k, v in sorted(changed_fields(trial_config, self.fixed).items()))
        return f"baseline+{shown}", {**tags, "run_kind": "variant", "derived_from": f"baseline --set {shown}"}


def trial_params(trial_config: dict) -> dict:
    """Every resolved field of the model and training config, defaults included: the same keys for every run."""
    from model import split_config

    model_config, train_config = split_config({**baseline_config({}), **trial_config})
    return {**model_config.to_dict(), **train_config.to_dict()}


def console_reporter(config: StudyConfig, progress):
    from search.console import ConsoleReporter

    return ConsoleReporter(config.num_trials, config.max_epochs, bool(config.space), dict(config.fixed), progress)


def header(config: StudyConfig, gpus: float, tracking_uri: str) -> str:
    kind = f"search of {config.num_trials} trials" if config.space else "one trial"
    schedule = f", {config.scheduler} scheduler" if config.space else ""
    concurrency = f", at most {config.max_concurrent} at once" if config.max_concurrent else ""
    return (
        f"study '{config.name}': {kind} ({config.max_epochs} epochs at most{schedule}{concurrency})\n"
        f"  data:      {Path(config.data_dir).resolve()}\n"
        f"  resources: {gpus:g} GPU and {config.cpus_per_trial:g} CPU per trial, Keras on {config.backend}\n"
        f"  results:   MLflow {tracking_uri} (experiment '{config.experiment}'), checkpoints {experiment_path(config)}"
    )


def study_settings(config: StudyConfig, gpus: float) -> dict:
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


class GracefulInterrupt:
    """Ctrl-C asks Ray Tune to stop gracefully (saving its state), and is remembered.

    Tune swallows Ctrl-C and returns as if it had finished; here Ctrl-C instead
    sends Tune the SIGUSR1 that stops it the same way, and the command can then
    exit non-zero and tell the user to resume. A second Ctrl-C interrupts at once.
    """

    def __enter__(self):
        self.happened = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            self.previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def _interrupt(self, signum, frame):
        self.happened = True
        signal.signal(signal.SIGINT, self.previous)
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _param_space(space: dict[str, Parameter], constants: dict) -> dict:
    return {**constants, **{name: parameter.to_ray() for name, parameter in space.items()}}


def _tune_config(config: StudyConfig, space: dict[str, Parameter], point: dict):
    from ray import tune

    search_alg, scheduler = None, None
    if space:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=config.seed, multivariate=True)
        # Ray Tune limits the searcher itself from `max_concurrent_trials`.
        search_alg = OptunaSearch(points_to_evaluate=[point], sampler=sampler)
    if config.scheduler == "asha":
        from search.scheduler import BaselineKeepingASHA

        scheduler = BaselineKeepingASHA(
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
        num_samples=config.num_trials,
        max_concurrent_trials=config.max_concurrent,
        # A new actor per trial pays Ray's worker start and TensorFlow's import again
        # (measured in the README's search benchmark); all trials ask for the same resources.
        reuse_actors=True,
    )


def summarise(results, runs: tracking.StudyRuns, config: StudyConfig, device_share: float) -> dict:
    """Per-trial outcome rows, ranked; device hours are GPU-hours (CPU-hours without GPUs)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_config = {k: v for k, v in (result.config or {}).items() if k != "data_dir"}
        trial_id = metrics.get("trial_id")
        run = runs.find_run(**{tracking.TRIAL_ID_TAG: trial_id}) if trial_id else None
        best = metrics.get("best_eval_pearson", math.nan)
        if result.error:
            status = "error"
        elif metrics.get("diverged"):
            status = "diverged"
        elif best is None or not math.isfinite(best):
            status = "no signal"
        else:
            status = "done"
        rows.append(
            {
                "trial_id": trial_id,
                "run_id": run.info.run_id if run else None,
                "model_logged": bool(run and run.data.tags.get("model_logged") == "true"),
                "baseline": is_baseline(trial_config, config.fixed),
                "best_eval_pearson": float(best) if best is not None else math.nan,
                "epochs_trained": int(metrics.get("epoch", 0)),
                "device_hours": float(metrics.get("time_total_s", 0.0)) * device_share / 3600,
                "startup_seconds": float(metrics.get("startup_seconds", math.nan)),
                "searched": {k: trial_config[k] for k in (config.space or {}) if k in trial_config},
                "status": status,
                "reason": metrics.get("stop_reason") or metrics.get("problem") or "",
                "config": trial_config,
                "predicted": best_predictions(result.checkpoint),
                "checkpoint": result.checkpoint,
            }
        )
    rows = rank_trials(rows)
    return {
        "trials": rows,
        "compute": compute_figures(rows, config),
        "experiment_path": str(results.experiment_path),
        "data_dir": str(config.data_dir),
    }


def asha_rungs(config: StudyConfig) -> list[int]:
    """The epochs at which ASHA compares trials: grace period times powers of the reduction factor."""
    rungs, epoch = [], config.grace_period
    while epoch < config.max_epochs:
        rungs.append(epoch)
        epoch *= config.reduction_factor
    return rungs + [config.max_epochs]


def compute_figures(rows: list[dict], config: StudyConfig) -> dict:
    """What the study spent against every trial running all its epochs, and how many trials reached each rung."""
    epochs = sum(row["epochs_trained"] for row in rows)
    full = len(rows) * config.max_epochs
    startups = [row["startup_seconds"] for row in rows if math.isfinite(row["startup_seconds"])]
    figures = {
        "epochs_trained": epochs,
        "epochs_without_early_stopping": full,
        "compute_saved_fraction": 1 - epochs / full if full else 0.0,
        "device_hours": sum(row["device_hours"] for row in rows),
        "mean_trial_startup_seconds": sum(startups) / len(startups) if startups else math.nan,
    }
    if config.scheduler == "asha":
        figures["rungs"] = {rung: sum(row["epochs_trained"] >= rung for row in rows) for rung in asha_rungs(config)}
    return figures


def reference_model(data_dir, progress) -> dict:
    """The study's k-mer reference (ridge on 4- to 6-mer counts), fitted once per prepared set and cached."""
    from model.kmer_reference import kmer_reference

    reference = kmer_reference(data_dir)
    progress(
        f"k-mer reference (ridge on 4-6-mer counts, fitted on {reference['n_fit']:,} training sequences "
        f"in {reference['seconds']:.0f} s, cached): eval r {reference['pearson']:.4f}"
    )
    return reference


def best_predictions(checkpoint):
    """A trial's best-epoch eval predictions (eval-split order) from its last checkpoint, or None."""
    import numpy as np

    from search.trainable import BEST_PREDICTIONS_FILE

    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        path = Path(directory) / BEST_PREDICTIONS_FILE
        return np.load(path)["predicted"] if path.exists() else None


def add_intervals(summary: dict, reference: dict, manifest: dict, runs: tracking.StudyRuns) -> None:
    """Bootstrap 95 % intervals: each trial's eval Pearson, and its paired difference to the baseline and
    to the k-mer reference (the same resampled rows for all, fixed seed); logged to the trial runs."""
    import numpy as np

    from data_prep import PreparedData
    from model.metrics import paired_pearson_difference, pearson_interval

    data = PreparedData.load(summary["data_dir"])
    # The eval split's measured values, read (and the data checked) once for intervals and the ensemble.
    observed = summary["observed"] = np.asarray(data.targets[data.eval_index], np.float64)
    kmer = np.asarray(reference["predicted"])
    summary["reference"] = {"pearson": reference["pearson"], **pearson_interval(observed, kmer)}
    baseline = next((row for row in summary["trials"] if row["baseline"] and row["predicted"] is not None), None)
    for row in summary["trials"]:
        if row["predicted"] is None or not math.isfinite(row["best_eval_pearson"]):
            continue
        row["interval"] = pearson_interval(observed, row["predicted"])
        row["vs_kmer"] = paired_pearson_difference(observed, row["predicted"], kmer)
        metrics = {
            "best_eval_pearson_low": row["interval"]["low"],
            "best_eval_pearson_high": row["interval"]["high"],
            "kmer_reference_pearson": reference["pearson"],
            "vs_kmer_reference": row["vs_kmer"]["estimate"],
        }
        if baseline is not None:
            row["vs_baseline"] = paired_pearson_difference(observed, row["predicted"], baseline["predicted"])
            metrics.update(
                vs_baseline=row["vs_baseline"]["estimate"],
                vs_baseline_low=row["vs_baseline"]["low"],
                vs_baseline_high=row["vs_baseline"]["high"],
            )
        if row["run_id"]:
            runs.log_metrics(row["run_id"], metrics)


def add_ensemble(summary: dict, runs: tracking.StudyRuns, parent_run_id: str, config: StudyConfig) -> None:
    """The top `ensemble_size` finished trials averaged into one served model, scored against the single best.

    Its eval predictions are the mean of its members' (each member's best epoch), so
    it is scored on the same split with the same bootstrap. It is logged on the parent
    run and registered under its own name; the single best stays the default model.
    """
    import shutil
    import tempfile

    import numpy as np

    from model.metrics import paired_pearson_difference, pearson_interval
    from search.trainable import BEST_MODEL_FILE

    members = [row for row in summary["trials"] if is_rankable(row) and row["predicted"] is not None]
    members = members[: config.ensemble_size]
    if len(members) < 2:
        return
    observed = summary["observed"]
    predicted = np.mean([row["predicted"] for row in members], axis=0)
    ensemble = {
        "members": [row["trial_id"] for row in members],
        "interval": pearson_interval(observed, predicted),
        "vs_best": paired_pearson_difference(observed, predicted, members[0]["predicted"]),
    }
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for number, row in enumerate(members, start=1):
            with row["checkpoint"].as_directory() as directory:
                paths.append(Path(scratch) / f"member_{number}.keras")
                shutil.copyfile(Path(directory) / BEST_MODEL_FILE, paths[-1])
        register_as = f"{config.register_as}-ensemble" if config.register_as else None
        ensemble["registered"] = runs.log_ensemble(parent_run_id, paths, ensemble, register_as)
    summary["ensemble"] = ensemble


def is_rankable(row: dict) -> bool:
    """The best-trial rule: finished, with a finite eval Pearson and a logged model."""
    return row["status"] == "done" and row["model_logged"] and math.isfinite(row["best_eval_pearson"])


def rank_trials(rows: list[dict]) -> list[dict]:
    """Rankable trials by best eval Pearson, then the rest (errors, divergence, no signal)."""
    return sorted(rows, key=lambda row: (not is_rankable(row), -row["best_eval_pearson"] if is_rankable(row) else 0))


def best_trial(rows: list[dict]) -> dict | None:
    """The one definition of the study's best trial, used by the table, the config file, MLflow and the registry."""
    ranked = rank_trials(rows)
    return ranked[0] if ranked and is_rankable(ranked[0]) else None


def trial_table(rows: list[dict]) -> list[dict]:
    return [
        {
            "trial_id": row["trial_id"],
            "run_id": row["run_id"],
            "baseline": row["baseline"],
            "best_eval_pearson": row["best_eval_pearson"],
            "epochs_trained": row["epochs_trained"],
            "device_hours": row["device_hours"],
            "status": row["status"],
            "reason": row["reason"],
            **{
                f"{name}_{key}": row[name][key]
                for name in ("interval", "vs_baseline", "vs_kmer")
                if name in row
                for key in ("estimate", "low", "high")
            },
            **row["searched"],
        }
        for row in rows
    ]


def finish_parent_run(runs: tracking.StudyRuns, run_id: str, summary: dict, best: dict | None, config: StudyConfig):
    """The parent run ends FINISHED with a best trial, FAILED without one; never left RUNNING."""
    import tempfile

    from search.report import optuna_figures

    try:
        with tempfile.TemporaryDirectory() as scratch:
            summary["table"] = trial_table(summary["trials"])
            finished = [row for row in summary["trials"] if is_rankable(row)]
            figures = optuna_figures(finished, config.space, Path(scratch)) if finished else {}
            runs.finish_parent(run_id, summary, best, figures, config.register_as)
            if best is not None:
                add_ensemble(summary, runs, run_id, config)
    except BaseException as error:
        runs.fail_parent(run_id, f"{type(error).__name__}: {error}")
        raise


def write_best_config(best: dict, path: Path) -> None:
    """The best trial's config as a file `dream-hpo baseline --config` retrains."""
    path.write_text(json.dumps(best["config"], indent=2, sort_keys=True))
