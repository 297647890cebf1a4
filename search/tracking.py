"""MLflow logging, done by the driver from what trials report.

Ray's own MLflow callback keeps its trial-to-run map in memory only, so a resumed
driver would open duplicate runs. Here each run carries the study name and Ray's
trial id as tags: a restarted driver finds the same run again, and steps already
logged are never logged twice.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from search import plots, serving
from search.trainable import BEST_MODEL_FILE, BEST_PREDICTIONS_FILE, STATE_FILE

EPOCH_METRICS = (
    "train_loss",
    "eval_pearson",
    "eval_spearman",
    "eval_mse",
    "eval_poisson",
    "samples_per_second",
    "epoch_seconds",
)
TRIAL_ID_TAG = "ray_trial_id"
STUDY_TAG = "study"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(uri: str | None) -> str:
    """Make a relative SQLite store absolute, so Ray workers in other directories hit the same file."""
    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def ui_command(tracking_uri: str) -> str:
    """The exact command a user runs to browse this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def open_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it with artifacts beside a local store."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    uri = client._tracking_client.tracking_uri
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def git_commit() -> str:
    """The code's commit, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]):
    """The one run with these tags, or None."""
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=2)
    if len(runs) > 1:
        raise RuntimeError(f"several MLflow runs match {tags}; the store is inconsistent")
    return runs[0] if runs else None


def close_open_runs(client: MlflowClient, experiment_id: str, study: str, status: str = "KILLED") -> None:
    """End the study's runs left RUNNING by Ctrl-C or a crash; a resume reopens them."""
    query = f"tags.{STUDY_TAG} = '{study}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], filter_string=query):
        if run.data.tags.get("study_parent") != "true":
            client.set_terminated(run.info.run_id, status=status)


def trial_number(trial) -> int:
    """Ray's 1-based creation order of a trial (its ids are random hex); the baseline is 1."""
    return int(trial.experiment_tag.split("_", 1)[0])


class MlflowTrialLogger(tune.Callback):
    """One MLflow run per trial, nested under the study's parent run when there is one."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        study: str,
        baseline_point: dict,
        data_manifest: dict,
        parent_run_id: str | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.study = study
        self.baseline_point = baseline_point
        self.data_manifest = data_manifest
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self.logged_steps: dict[str, set[int]] = {}

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def is_baseline(self, config: dict) -> bool:
        return all(config.get(key) == value for key, value in self.baseline_point.items())

    def run_id(self, trial) -> str:
        """Find the trial's run (a resumed driver) or create it (a new trial)."""
        if trial.trial_id in self.run_ids:
            return self.run_ids[trial.trial_id]
        client = self.client
        tags = {STUDY_TAG: self.study, TRIAL_ID_TAG: trial.trial_id}
        run = find_run(client, self.experiment_id, tags)
        if run is None:
            config = {k: v for k, v in trial.config.items() if k != "data_dir"}
            baseline = self.is_baseline(config)
            number = trial_number(trial)
            tags.update(
                trial_number=str(number),
                baseline=str(baseline).lower(),
                git_commit=git_commit(),
                driver_host=socket.gethostname(),
                data_sha256=self.data_manifest.get("source_sha256", "unknown"),
            )
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = client.create_run(
                self.experiment_id, tags=tags, run_name="baseline" if baseline else f"trial-{number}"
            )
            client.log_batch(
                run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(config.items())]
            )
            self.logged_steps[run.info.run_id] = set()
        else:
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            self.logged_steps[run.info.run_id] = {
                m.step for m in client.get_metric_history(run.info.run_id, "eval_pearson")
            }
        self.run_ids[trial.trial_id] = run.info.run_id
        return run.info.run_id

    def log_epoch(self, run_id: str, result: dict) -> None:
        """Log one epoch's metrics with step=epoch, once."""
        step = int(result["epoch"])
        if step in self.logged_steps[run_id]:
            return
        metrics = [
            Metric(key, float(result[key]), 0, step)
            for key in EPOCH_METRICS
            if key in result and math.isfinite(float(result[key]))
        ]
        self.client.log_batch(run_id, metrics=metrics)
        self.logged_steps[run_id].add(step)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)  # the run appears, RUNNING, as soon as the trial starts

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        client = self.client
        if result.get("diverged"):
            client.set_tag(run_id, "stop_reason", result.get("stop_reason", "diverged"))
            return
        if not self.logged_steps[run_id]:
            client.set_tag(run_id, "worker_host", result.get("hostname", "unknown"))
            client.set_tag(run_id, "hardware", result.get("hardware", "unknown"))
        self.log_epoch(run_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        diverged = bool((trial.last_result or {}).get("diverged"))
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as directory:
                self.log_trial_artifacts(run_id, trial, Path(directory))
        self.client.set_terminated(run_id, status="FAILED" if diverged else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        self.client.set_tag(run_id, "stop_reason", f"error: {trial.error_file or 'see Ray logs'}")
        self.client.set_terminated(run_id, status="FAILED")

    def log_trial_artifacts(self, run_id: str, trial, checkpoint_dir: Path) -> None:
        """Backfill missed epochs, then the plots, predictions, config and best model."""
        state = json.loads((checkpoint_dir / STATE_FILE).read_text())
        for epoch_metrics in state["history"]:
            self.log_epoch(run_id, epoch_metrics)
        client = self.client
        client.log_metric(run_id, "best_eval_pearson", state["best_eval_pearson"])
        client.log_metric(run_id, "best_epoch", state["best_epoch"])
        client.log_metric(run_id, "epochs_trained", state["epochs_done"])
        config = {k: v for k, v in trial.config.items() if k != "data_dir"}
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            (scratch / "trial_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            client.log_artifact(run_id, scratch / "trial_config.json", "config")
            (scratch / "data_manifest.json").write_text(json.dumps(self.data_manifest, indent=2))
            client.log_artifact(run_id, scratch / "data_manifest.json", "data")
            plots.training_curve(state["history"], scratch / "training_curve.png")
            client.log_artifact(run_id, scratch / "training_curve.png", "plots")
            predictions = np.load(checkpoint_dir / BEST_PREDICTIONS_FILE)
            table = pd.DataFrame({k: predictions[k] for k in ("row", "observed", "predicted")})
            table.to_csv(scratch / "eval_predictions.csv", index=False)
            client.log_artifact(run_id, scratch / "eval_predictions.csv", "predictions")
            plots.observed_vs_predicted(
                table["observed"].to_numpy(),
                table["predicted"].to_numpy(),
                scratch / "observed_vs_predicted.png",
                title=f"best epoch {state['best_epoch']}",
            )
            client.log_artifact(run_id, scratch / "observed_vs_predicted.png", "plots")
        serving.log_sequence_model(run_id, checkpoint_dir / BEST_MODEL_FILE)
        serving.log_keras_flavour(run_id, checkpoint_dir / BEST_MODEL_FILE)


def check_tracking_server(uri: str | None) -> None:
    """Refuse an MLflow server that cannot be reached or refuses the login, in one line and seconds.

    Without this, MLflow's client retries for minutes and fails with a traceback only when
    the first trial starts. Credentials come from where MLflow reads them:
    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials).
    """
    if not uri or not uri.startswith(("http://", "https://")):
        return
    import re

    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, timeout=10,
            params={"max_results": 1}, raise_on_status=False,
        )
    except MlflowException as error:
        cause = re.search(r"\[Errno -?\d+\] [^\"')]+", str(error))
        reason = cause.group(0) if cause else str(error).splitlines()[0][:200]
        message = f"cannot reach the MLflow server at {uri} ({reason}); start it or fix --tracking-uri"
        raise ValueError(message) from None
    if response.status_code == 401:
        problem = (
            f"refused the login of user {creds.username!r}" if creds.username
            else "needs a login, and MLFLOW_TRACKING_USERNAME is not set"
        )
        raise ValueError(
            f"the MLflow server at {uri} {problem} (HTTP 401); set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account on that server"
        )
    if response.status_code != 200:
        raise ValueError(f"the MLflow server at {uri} answered HTTP {response.status_code} to a search of experiments")
