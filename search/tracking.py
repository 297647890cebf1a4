"""The MLflow run lifecycle of a study, in one place: experiment, parent run, trial runs, models, registry.

The only module that opens, reopens, finishes and registers MLflow runs and models;
each run's status is set here, and a run is never reopened to log a model into it.

Ray's own MLflow callback keeps its trial-to-run map in memory only, so a resumed
driver would open duplicate runs. Here each run carries a key of the study's name
and Ray's trial id as tags: a restarted driver finds the same run again, and steps
already logged are never logged twice. Queries use only those hex keys, never text
a user typed, so any study name works.

The driver does all the logging from what trials report, and never imports
TensorFlow: the served model is logged from code with a fixed signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from data_prep.prepare import DataFacts
from search import plots, serving
from search.results import EnsembleResult, Registration, StudyResult
from search.runtime import error_summary, trial_config, trial_number
from search.trainable import BEST_MODEL_FILE, BEST_PREDICTIONS_FILE, STATE_FILE, task_metric

EPOCH_METRICS = (
    "train_loss",
    "eval_pearson",
    "eval_spearman",
    "eval_mse",
    "eval_poisson",
    "samples_per_second",
    "epoch_seconds",
)
# Each task's eval Pearson, beside their mean, on data of several tasks (search.trainable.task_metric).
TASK_METRIC_PREFIX = task_metric("")
# MLflow's UI shows metrics under this prefix in a run's "System metrics" tab.
SYSTEM_PREFIX = "system/"
TRIAL_ID_TAG = "ray_trial_id"
STUDY_TAG = "study"
STUDY_KEY_TAG = "study_key"
PARENT_TAG = "study_parent"
ENSEMBLE_MODEL_NAME = "ensemble"
# MLflow's experiment kind: the UI opens such experiments on their training runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def model_card(validation, test, test_size: int) -> tuple[str, dict]:
    """A registered version's description and tags: its validation figure and, with a test split, its test one."""
    from search.report import registry_description

    tags = {}
    if validation is not None:
        tags |= {key: f"{value:.4f}" for key, value in validation.metrics("validation_pearson").items()}
    if test is not None:
        tags |= {key: f"{value:.4f}" for key, value in test.pearson.metrics("test_pearson").items()}
        tags["test_size"] = str(test_size)
    return registry_description(validation, test, test_size), tags


def study_key(name: str) -> str:
    """A hex key of the study name: safe in MLflow filter strings whatever the name holds."""
    return hashlib.sha256(name.encode()).hexdigest()[:24]


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


def dataset_entity(manifest: dict, data_dir: str) -> Dataset:
    """The prepared data as an MLflow dataset: name, digest, source and row counts."""
    profile = {
        "num_rows": manifest.get("count"),
        "train_rows": manifest.get("train_size"),
        "eval_rows": manifest.get("eval_size"),
        "test_rows": manifest.get("test_size", 0),
        "split_seed": manifest.get("split_seed"),
    }
    schema = {"mlflow_colspec": [{"type": "string", "name": "sequence"}, {"type": "float", "name": "expression"}]}
    return Dataset(
        name=Path(data_dir).name,
        digest=manifest.get("source_sha256", "unknown")[:16],
        source_type="local",
        source=json.dumps({"uri": str(data_dir), "source_file": manifest.get("source")}),
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )


class StudyRuns:
    """The MLflow side of one study: find or create its runs, log to them, finish them.

    Holds only strings, so the Tune callback that carries it pickles with the tuner
    and a resumed driver gets it back.
    """

    def __init__(self, tracking_uri: str, experiment: str, study: str, data_dir: str, manifest: dict):
        self.tracking_uri = tracking_uri
        self.study = study
        self.data_dir = data_dir
        self.manifest = manifest
        self.experiment_id = self._open_experiment(experiment)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def use_fluent_api(self) -> None:
        """Point MLflow's module-level API (model logging, registry) at this study's store."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)

    def _open_experiment(self, name: str) -> str:
        """The experiment's id, created as a model-training experiment with artifacts beside a local store."""
        client = self.client
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if "mlflow.experimentKind" not in experiment.tags:
                for key, value in EXPERIMENT_KIND.items():
                    client.set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:///"):
            artifact_location = (Path(self.tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
        return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)

    def find_run(self, **tags: str):
        """The study's one run with these (hex-valued) tags, or None."""
        tags = {STUDY_KEY_TAG: study_key(self.study), **tags}
        query = " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=2)
        if len(runs) > 1:
            raise RuntimeError(f"several MLflow runs match {tags}; the store is inconsistent")
        return runs[0] if runs else None

    def _create_run(self, run_name: str, tags: dict, params: dict, start_time: float | None = None) -> str:
        tags = {
            STUDY_TAG: self.study,
            STUDY_KEY_TAG: study_key(self.study),
            "git_commit": git_commit(),
            "driver_host": socket.gethostname(),
            "data_sha256": self.manifest.get("source_sha256", "unknown"),
            **tags,
        }
        client = self.client
        started = int((start_time or time.time()) * 1000)
        run_id = client.create_run(self.experiment_id, start_time=started, tags=tags, run_name=run_name).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
        context = InputTag("mlflow.data.context", "training")
        client.log_inputs(run_id, datasets=[DatasetInput(dataset_entity(self.manifest, self.data_dir), [context])])
        return run_id

    # The parent run of a search.

    def open_parent(self, settings: dict, space_spec: dict) -> str:
        """The study's parent run, reopened on resume, with the study's settings and space."""
        run = self.find_run(**{PARENT_TAG: "true"})
        if run is not None:
            self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run_id = self._create_run(self.study, {PARENT_TAG: "true"}, settings)
        self.log_json(run_id, "study/search_space.json", space_spec)
        return run_id

    def fail_parent(self, run_id: str, reason: str, status: str = "FAILED") -> None:
        self.client.set_tag(run_id, "stop_reason", reason)
        self.client.set_terminated(run_id, status=status)

    def trial_run(self, trial_id: str | None) -> tuple[str | None, bool]:
        """(run id, whether its model was logged) of a trial's run, (None, False) when it has none."""
        run = self.find_run(**{TRIAL_ID_TAG: trial_id}) if trial_id else None
        return (run.info.run_id, run.data.tags.get("model_logged") == "true") if run else (None, False)

    def log_trial_figures(self, result: StudyResult) -> None:
        """Each trial run's interval and paired differences to the baseline, the LegNet reference and the k-mer reference."""
        for trial in result.trials:
            if trial.run_id is None or trial.interval is None:
                continue
            metrics = trial.interval.metrics("best_eval_pearson", estimate=False)
            metrics |= trial.vs_kmer.metrics("vs_kmer_reference") | {"kmer_reference_pearson": result.reference.estimate}
            if trial.vs_baseline is not None:
                metrics |= trial.vs_baseline.metrics("vs_baseline")
            if trial.vs_legnet is not None:
                metrics |= trial.vs_legnet.metrics("vs_legnet_reference")
            self.log_metrics(trial.run_id, metrics)

    def finish_parent(self, run_id: str, result: StudyResult, space: dict, register_as: str | None) -> Registration:
        """The study's results, plots, best model and ensemble on its parent run, which ends once.

        FINISHED with a best trial, FAILED (with the reason) without one; the registered
        models come back as a `Registration`.
        """
        client = self.client
        best, registration = result.best, Registration()
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "trials.csv"
            pd.DataFrame(result.table_rows()).to_csv(path, index=False)
            client.log_artifact(run_id, path, "study")
            finished = [trial for trial in result.trials if trial.rankable]
            for figure in (plots.optuna_figures(finished, space, Path(scratch)) if finished else {}).values():
                client.log_artifact(run_id, figure, "plots")
        metrics = result.compute.metrics()
        if result.baseline is not None and math.isfinite(result.baseline.best_eval_pearson):
            metrics["baseline_eval_pearson"] = result.baseline.best_eval_pearson
        if result.legnet is not None and math.isfinite(result.legnet.best_eval_pearson):
            metrics["legnet_reference_eval_pearson"] = result.legnet.best_eval_pearson
        if result.reference is not None:
            metrics |= result.reference.metrics("kmer_reference_pearson")
        if result.reference_test is not None:
            metrics |= result.reference_test.metrics("kmer_reference_test_pearson")
        for name, trial in (("best", best), ("baseline", result.baseline), ("legnet_reference", result.legnet)):
            if trial is not None and trial.test is not None:
                metrics |= trial.test.metrics(name)
        if result.ensemble is not None and result.ensemble.test is not None:
            metrics |= result.ensemble.test.metrics("ensemble")
        metrics["test_size"] = result.test_size
        for spread in result.seeds:
            metrics |= spread.metrics()
        if best is not None:
            metrics |= {"best_eval_pearson": best.best_eval_pearson}
            for interval, name, estimate in ((best.interval, "best_eval_pearson", False),
                                             (best.vs_baseline, "best_vs_baseline", True),
                                             (best.vs_legnet, "best_vs_legnet_reference", True),
                                             (best.vs_kmer, "best_vs_kmer_reference", True)):
                if interval is not None:
                    metrics |= interval.metrics(name, estimate)
        self.log_metrics(run_id, metrics)
        if best is None:
            self.fail_parent(run_id, "no trial finished with a finite eval Pearson and a logged model")
            return registration
        self.log_json(run_id, "study/best_config.json", best.config)
        client.set_tag(run_id, "best_run_id", best.run_id)
        client.set_tag(run_id, "best_config", json.dumps(best.searched, sort_keys=True))
        if register_as:
            [model] = [m for m in self.logged_models(best.run_id) if m.name == serving.LOGGED_MODEL_NAME]
            card = model_card(best.interval, best.test, result.test_size)
            registration = Registration(best=self.register(model.model_id, register_as, card))
        if result.ensemble is not None:
            ensemble_name = f"{register_as}-ensemble" if register_as else None
            ensemble_uri = self.log_ensemble(run_id, result.ensemble, ensemble_name, result.test_size)
            registration = Registration(best=registration.best, ensemble=ensemble_uri)
        client.set_terminated(run_id, status="FINISHED")
        return registration

    def log_ensemble(self, run_id: str, ensemble: EnsembleResult, register_as: str | None, test_size: int) -> str | None:
        """The ensemble's model (its members' best-epoch .keras files, weights, k-mer member) and scores on the
        parent run; registered as `register_as` when given (returns its URI)."""
        with tempfile.TemporaryDirectory() as scratch:
            paths = []
            for number, member in enumerate(ensemble.members, start=1):
                with member.checkpoint.as_directory() as directory:
                    paths.append(Path(scratch) / f"member_{number}.keras")
                    shutil.copyfile(Path(directory) / BEST_MODEL_FILE, paths[-1])
            blend = serving.BlendSpec(weights=ensemble.weights, kmer=ensemble.kmer, kmer_weight=ensemble.kmer_weight)
            model_id = self.log_model(run_id, paths, ENSEMBLE_MODEL_NAME, blend)
        weights = {f"ensemble_weight_{member.trial_id}": weight for member, weight in zip(ensemble.members, ensemble.weights)}
        self.log_metrics(
            run_id,
            ensemble.interval.metrics("ensemble_eval_pearson")
            | ensemble.vs_best.metrics("ensemble_vs_best")
            | weights
            | {"ensemble_weight_kmer_reference": ensemble.kmer_weight},
        )
        self.client.set_tag(run_id, "ensemble_members", ensemble.composition)
        if not register_as:
            return None
        return self.register(model_id, register_as, model_card(ensemble.interval, ensemble.test, test_size))

    def log_model(
        self, run_id: str, keras_paths: list[Path], name: str = serving.LOGGED_MODEL_NAME, blend=None
    ) -> str:
        """Log .keras model(s) to a run as one sequence-serving model, without reopening the run; its model id.

        The logged model is created here, in the study's experiment and with the run's
        params, so MLflow's model logging needs no active run.
        """
        from mlflow.tracking.context import registry as context_registry

        client = self.client
        params = client.get_run(run_id).data.params
        model = client.create_logged_model(
            self.experiment_id, name=name, source_run_id=run_id, params=params, tags=context_registry.resolve_tags()
        )
        self.use_fluent_api()
        serving.log_sequence_model(
            run_id, keras_paths, name=name, model_id=model.model_id, blend=blend, data=self.served_data()
        )
        return model.model_id

    def served_data(self) -> serving.ServedData:
        """The layout and tasks a logged model serves with, and two of this data's sequences as its input example."""
        from data_prep import PreparedData
        from data_prep.encoding import N_CODE, decode

        facts = DataFacts.of(self.manifest)
        if facts.format == "dream":
            return serving.ServedData(facts)
        data = PreparedData.load(self.data_dir)
        rows = np.asarray(data.codes[data.eval_index[:2]])
        return serving.ServedData(facts, tuple(decode(row[row != N_CODE]) for row in rows))

    def register(self, model_id: str, name: str, card: tuple[str, dict] | None = None) -> str:
        """Register a logged model under `name`, with a (description, tags) card; returns `models:/NAME/VERSION`."""
        import mlflow

        self.use_fluent_api()
        tags = card[1] if card else None
        with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints what the caller reports itself
            version = mlflow.register_model(f"models:/{model_id}", name, tags=tags)
        if card:
            self.client.update_model_version(name, version.version, description=card[0])
        return f"models:/{name}/{version.version}"

    def logged_models(self, run_id: str) -> list:
        """The models logged by a run (MLflow's LoggedModel entities)."""
        import mlflow

        self.use_fluent_api()
        # run ids are 32 hex characters, never user text
        return mlflow.search_logged_models(
            experiment_ids=[self.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
        )

    # Trial runs.

    def open_trial_run(self, trial_id: str, run_name: str, tags: dict, params: dict, parent_run_id: str | None,
                       start_time: float | None = None):
        """(run id, epochs already logged): the trial's run found again, or created with its params and start time."""
        run = self.find_run(**{TRIAL_ID_TAG: trial_id})
        client = self.client
        if run is None:
            tags = {TRIAL_ID_TAG: trial_id, **tags}
            if parent_run_id:
                tags["mlflow.parentRunId"] = parent_run_id
            return self._create_run(run_name, tags, params, start_time), set()
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}

    def log_epoch(self, run_id: str, result: dict) -> None:
        """One epoch's metrics with step=epoch and the wall-clock time the trial measured them.

        Non-finite values are logged as they are (MLflow stores NaN), never replaced by numbers.
        """
        step = int(result["epoch"])
        timestamp = int(result.get("epoch_end_time", time.time()) * 1000)
        keys = [key for key in EPOCH_METRICS if key in result]
        keys += sorted(key for key in result if key.startswith(TASK_METRIC_PREFIX))
        keys += sorted(key for key in result if key.startswith(SYSTEM_PREFIX))
        metrics = [Metric(key, float(result[key]), timestamp, step) for key in keys]
        self.client.log_batch(run_id, metrics=metrics)

    def log_metrics(self, run_id: str, metrics: dict) -> None:
        """Study-level figures of a run (intervals, references), logged once at step 0."""
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])

    def log_json(self, run_id: str, artifact_path: str, content) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / Path(artifact_path).name
            path.write_text(json.dumps(content, indent=2, sort_keys=True))
            self.client.log_artifact(run_id, path, str(Path(artifact_path).parent))

    def log_trial_artifacts(self, run_id: str, config: dict, checkpoint_dir: Path) -> list[dict]:
        """The final metrics, plots, predictions, config and the best model; returns the history."""
        state = json.loads((checkpoint_dir / STATE_FILE).read_text())
        client = self.client
        now = int(time.time() * 1000)
        final = [Metric("epochs_trained", float(state["epochs_done"]), now, 0)]
        if state["best_epoch"] is not None:  # a trial with no signal in any epoch has no best
            final.append(Metric("best_epoch", float(state["best_epoch"]), now, 0))
            final.append(Metric("best_eval_pearson", float(state["best_eval_pearson"]), now, 0))
        client.log_batch(run_id, metrics=final)
        self.log_json(run_id, "config/trial_config.json", config)
        self.log_json(run_id, "data/data_manifest.json", self.manifest)
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            loss = client.get_run(run_id).data.params.get("resolved_loss", "poisson")
            plots.training_curve(state["history"], scratch / "training_curve.png", loss)
            client.log_artifact(run_id, scratch / "training_curve.png", "plots")
            if (checkpoint_dir / BEST_PREDICTIONS_FILE).exists():
                predictions = np.load(checkpoint_dir / BEST_PREDICTIONS_FILE)
                tasks = DataFacts.of(self.manifest).tasks
                observed = predictions["observed"].reshape(len(predictions["row"]), -1)
                predicted = predictions["predicted"].reshape(len(predictions["row"]), -1)
                # One task keeps the columns it always had; several get a pair per task.
                names = [""] if len(tasks) == 1 else [f"/{task}" for task in tasks]
                columns = {"row": predictions["row"]}
                for i, suffix in enumerate(names):
                    columns |= {f"observed{suffix}": observed[:, i], f"predicted{suffix}": predicted[:, i]}
                pd.DataFrame(columns).to_csv(scratch / "eval_predictions.csv", index=False)
                client.log_artifact(run_id, scratch / "eval_predictions.csv", "predictions")
                for i, suffix in enumerate(names):
                    file = f"observed_vs_predicted{suffix.replace('/', '_')}.png"
                    plots.observed_vs_predicted(
                        observed[:, i],
                        predicted[:, i],
                        scratch / file,
                        title=f"{tasks[i] + ', ' if suffix else ''}best epoch {state['best_epoch']}",
                    )
                    client.log_artifact(run_id, scratch / file, "plots")
        if (checkpoint_dir / BEST_MODEL_FILE).exists():
            self.log_model(run_id, [checkpoint_dir / BEST_MODEL_FILE])
            client.set_tag(run_id, "model_logged", "true")
        return state["history"]

    def finish_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(run_id, "stop_reason", reason)
        self.client.set_terminated(run_id, status=status)

    def close_open_runs(self, status: str = "KILLED") -> None:
        """End the study's trial runs left RUNNING by Ctrl-C or a crash; a resume reopens them."""
        query = f"tags.{STUDY_KEY_TAG} = '{study_key(self.study)}' and attributes.status = 'RUNNING'"
        client = self.client
        for run in client.search_runs([self.experiment_id], filter_string=query):
            if run.data.tags.get(PARENT_TAG) != "true":
                client.set_terminated(run.info.run_id, status=status)


class MlflowTrialLogger(tune.Callback):
    """One MLflow run per trial, nested under the study's parent run when there is one.

    `describe_trial(config)` names and tags a trial's run from its config (the study
    decides what the baseline is); `params(config)` gives the params it logs.
    """

    def __init__(self, runs: StudyRuns, describe_trial, params, parent_run_id: str | None = None,
                 stopped_early=None):
        self.runs = runs
        self.stopped_early = stopped_early
        self.searched = parent_run_id is not None
        self.describe_trial = describe_trial
        self.params = params
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self.logged_steps: dict[str, set[int]] = {}
        self.start_times: dict[str, float] = {}

    def run_id(self, trial) -> str:
        """Find the trial's run (a resumed driver) or create it (a new trial).

        Called at the trial's first result, not at its start: a driver killed between
        a trial's start and Ray's next save of the experiment would leave a run for a
        trial the resumed study never knew (and would start again as a new trial).
        """
        if trial.trial_id not in self.run_ids:
            config = trial_config(trial)
            run_name, tags = self.describe_trial(config, trial_number(trial, self.searched))
            run_id, logged = self.runs.open_trial_run(
                trial.trial_id, run_name, tags, self.params(config), self.parent_run_id,
                self.start_times.get(trial.trial_id),
            )
            self.run_ids[trial.trial_id] = run_id
            self.logged_steps[run_id] = logged
        return self.run_ids[trial.trial_id]

    def log_epoch(self, run_id: str, result: dict) -> None:
        step = int(result["epoch"])
        if step not in self.logged_steps[run_id]:
            self.runs.log_epoch(run_id, result)
            self.logged_steps[run_id].add(step)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start_times.setdefault(trial.trial_id, time.time())  # the run, opened at the first result, starts here

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        client = self.runs.client
        if not self.logged_steps[run_id] and "derived" in result:
            client.set_tag(run_id, "worker_host", result.get("hostname", "unknown"))
            client.set_tag(run_id, "hardware", result.get("hardware", "unknown"))
            existing = client.get_run(run_id).data.params
            derived = {k: v for k, v in result["derived"].items() if k not in existing}
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in sorted(derived.items())])
        if result.get("problem"):
            client.set_tag(run_id, "stop_reason", result["problem"])
        self.log_epoch(run_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        if trial.checkpoint is not None:
            started = time.perf_counter()
            with trial.checkpoint.as_directory() as directory:
                for epoch_metrics in self.runs.log_trial_artifacts(run_id, trial_config(trial), Path(directory)):
                    self.log_epoch(run_id, epoch_metrics)
            # The driver does this between trials' results, so it is part of what a trial costs.
            self.runs.log_metrics(run_id, {"system/artifact_logging_seconds": time.perf_counter() - started})
        last = trial.last_result or {}
        failed = bool(last.get("diverged"))
        reason = last.get("stop_reason") or (self.stopped_early(last) if self.stopped_early else None)
        self.runs.finish_run(run_id, "FAILED" if failed else "FINISHED", reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.runs.finish_run(self.run_id(trial), "FAILED", f"error: {error_summary(trial)}")
