"""Build and run a study: the baseline alone, or Optuna trials around it, on Ray Tune.

`run_study` is the one place a `Tuner` is built. The baseline command is a study of
one trial at the fixed baseline point; a search adds the Optuna sampler, the ASHA
scheduler and a parent MLflow run. Both train through `trainable.train_trial`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune

from search import cluster, tracking
from search.space import BASELINE_POINT, Parameter, baseline_point
from search.trainable import SEARCH_METRIC, train_trial

BACKENDS = ("tensorflow", "jax")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs besides the trial configs themselves."""

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
    max_failures: int = 2
    register_as: str | None = None
    backend: str = "tensorflow"

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.backend == "jax" and importlib.util.find_spec("jax") is None:
            raise ValueError("the jax backend needs JAX: pip install 'dream-hpo[jax]' (with jax[cuda12] for GPUs)")
        if self.num_trials < 1:
            raise ValueError(f"num_trials must be >= 1, got {self.num_trials}")
        if self.scheduler not in {"asha", "none"}:
            raise ValueError(f"scheduler must be 'asha' or 'none', got {self.scheduler!r}")
        if self.space is None and self.num_trials != 1:
            raise ValueError("a study without a search space runs exactly one trial (the baseline)")


def connect_ray(address: str | None, backend: str = "tensorflow") -> None:
    """A local Ray on this machine by default; `auto` or `ray://...` joins a cluster.

    Trials run Keras on `backend`: Ray starts every worker with KERAS_BACKEND set,
    and the driver (which loads the best model for MLflow) uses it too unless it
    has imported Keras already.
    """
    os.environ["KERAS_BACKEND"] = backend
    if ray.is_initialized():
        running = (ray.get_runtime_context().runtime_env.get("env_vars") or {}).get("KERAS_BACKEND", "tensorflow")
        if running != backend:
            raise ValueError(
                f"Ray is already connected with KERAS_BACKEND={running}; a {backend} study needs "
                "a new process (or ray.shutdown() first)"
            )
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    env_vars = {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # Ray workers must import this project whether it is installed or run from a checkout.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "KERAS_BACKEND": backend,
        # JAX takes 75% of a GPU at start unless told not to; packed trials share the card.
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }
    ray.init(address=address, runtime_env={"env_vars": env_vars}, include_dashboard=False, log_to_driver=True)


def storage_path(config: StudyConfig) -> str:
    return config.storage_path or str(Path("ray_results").resolve())


def run_study(config: StudyConfig, progress=print) -> dict:
    """Run (or resume) the study and return a summary of its trials, best first."""
    tracking.check_tracking_server(config.tracking_uri)
    connect_ray(config.address, config.backend)
    gpus = config.gpus_per_trial
    if gpus is None:
        gpus = cluster.default_gpus_per_trial(ray.cluster_resources())
    cluster.check_storage(storage_path(config), config.shared_storage, {"CPU": config.cpus_per_trial, "GPU": gpus})
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.open_experiment(client, config.experiment)
    data_manifest = json.loads((Path(config.data_dir) / "manifest.json").read_text())

    constants = {"data_dir": str(Path(config.data_dir).resolve()), **config.fixed}
    space = config.space or {}
    point = baseline_point(space, config.fixed) if space else {}
    # On resume Ray restores the logger pickled with the tuner; it finds its runs by tags.
    parent_run_id = open_parent_run(client, experiment_id, config) if space else None
    logger = tracking.MlflowTrialLogger(
        tracking_uri,
        experiment_id,
        study=config.name,
        baseline_point=point,
        data_manifest=data_manifest,
        parent_run_id=parent_run_id,
    )
    trainable = tune.with_resources(train_trial, {"cpu": config.cpus_per_trial, "gpu": gpus})
    # A string join keeps the '//' of s3:// and gs:// storage URIs, which Path would collapse.
    experiment_path = f"{storage_path(config).rstrip('/')}/{config.name}"
    progress(f"study '{config.name}': {config.num_trials} trial(s), {gpus:g} GPU and {config.cpus_per_trial:g} CPU each")
    if config.resume:
        if not tune.Tuner.can_restore(str(experiment_path)):
            raise FileNotFoundError(f"nothing to resume at {experiment_path}; run without --resume to start it")
        tuner = tune.Tuner.restore(
            str(experiment_path),
            trainable,
            resume_errored=True,
            param_space=_param_space(space, constants),
        )
    else:
        if tune.Tuner.can_restore(str(experiment_path)):
            raise FileExistsError(
                f"a study named '{config.name}' already exists at {experiment_path}; "
                "pass --resume to continue it or --name to start another"
            )
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(space, constants),
            tune_config=_tune_config(config, space, point),
            run_config=tune.RunConfig(
                name=config.name,
                storage_path=storage_path(config),
                callbacks=[logger],
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=1,
            ),
        )
    try:
        with GracefulInterrupt() as interrupt:
            results = tuner.fit()
        if interrupt.happened:
            raise KeyboardInterrupt(f"(state saved); continue it with --resume --name {config.name}")
    finally:
        tracking.close_open_runs(client, experiment_id, config.name, "KILLED")
    device_share = gpus if gpus > 0 else config.cpus_per_trial
    summary = summarise(results, client, experiment_id, config.name, logger, device_share)
    if parent_run_id:
        from search.report import finish_parent_run

        finish_parent_run(client, parent_run_id, summary, config)
    return summary


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


def _tune_config(config: StudyConfig, space: dict[str, Parameter], point: dict) -> tune.TuneConfig:
    search_alg, scheduler = None, None
    if space:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna.samplers.TPESampler(seed=config.seed, multivariate=True)
        search_alg = OptunaSearch(points_to_evaluate=[point], sampler=sampler)
        if config.max_concurrent:
            from ray.tune.search import ConcurrencyLimiter

            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=config.max_concurrent)
    if config.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="epoch",
            max_t=config.fixed.get("epochs", 10),
            grace_period=config.grace_period,
            reduction_factor=config.reduction_factor,
        )
    return tune.TuneConfig(
        metric=SEARCH_METRIC,
        mode="max",
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=config.num_trials,
        max_concurrent_trials=config.max_concurrent,
    )


def open_parent_run(client: MlflowClient, experiment_id: str, config: StudyConfig) -> str:
    """The study's parent run, reopened on resume."""
    tags = {tracking.STUDY_TAG: config.name, "study_parent": "true"}
    run = tracking.find_run(client, experiment_id, tags)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    run = client.create_run(experiment_id, tags={**tags, "git_commit": tracking.git_commit()}, run_name=config.name)
    from search.report import log_study_setup

    log_study_setup(client, run.info.run_id, config)
    return run.info.run_id


def summarise(
    results, client, experiment_id: str, study: str, logger: tracking.MlflowTrialLogger, device_share: float
) -> dict:
    """Per-trial outcome rows, best first; device hours are GPU-hours (CPU-hours without GPUs)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        config = {k: v for k, v in (result.config or {}).items() if k != "data_dir"}
        trial_id = metrics.get("trial_id")
        run = tracking.find_run(client, experiment_id, {tracking.STUDY_TAG: study, tracking.TRIAL_ID_TAG: trial_id})
        best = metrics.get("best_eval_pearson", metrics.get(SEARCH_METRIC, math.nan))
        rows.append(
            {
                "trial_id": trial_id,
                "run_id": run.info.run_id if run else None,
                "baseline": logger.is_baseline(config),
                "best_eval_pearson": float(best) if best is not None else math.nan,
                "epochs_trained": int(metrics.get("epoch", 0)),
                "device_hours": float(metrics.get("time_total_s", 0.0)) * device_share / 3600,
                "searched": {k: config[k] for k in (logger.baseline_point or BASELINE_POINT) if k in config},
                "status": "error" if result.error else ("diverged" if metrics.get("diverged") else "done"),
                "config": config,
                "checkpoint": result.checkpoint.path if result.checkpoint else None,
            }
        )
    rows.sort(key=lambda row: -row["best_eval_pearson"] if math.isfinite(row["best_eval_pearson"]) else math.inf)
    return {"trials": rows, "experiment_path": str(results.experiment_path)}
