"""The one trainable: every trial, the baseline included, trains through `train_trial`.

A trial's Ray config is flat: `model_family`, the fields of its architecture config,
`InputConfig` and `TrainConfig` (model.config.split_config), plus `data_dir`. Each epoch it reports metrics together with a checkpoint holding the
weights, the optimizer state, the dropout generators' state and the history, so a
killed trial resumes at the next epoch. It does not talk to MLflow: the driver's
`tracking.MlflowTrialLogger` logs what the trial reports, which survives ASHA
stopping a trial and workers that cannot reach the tracking server.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from ray import tune

WEIGHTS_FILE = "weights.weights.h5"
STATE_FILE = "state.json"
RNG_FILE = "rng_state.npz"
BEST_MODEL_FILE = "best_model.keras"
BEST_PREDICTIONS_FILE = "best_eval_predictions.npz"
SEARCH_METRIC = "eval_pearson"
# What Ray Tune's scheduler and Optuna rank on: the trial's best eval Pearson so far, the
# number the study ranks trials by and keeps the model of; below any correlation while it
# has none (constant or non-finite predictions, divergence), so such trials rank last.
# MLflow gets each epoch's metric itself, NaN included.
TUNE_METRIC = "search_score"


def split_trial_config(config: dict):
    """Turn a flat trial config into (TrialConfig, data_dir)."""
    from model import split_config

    # Ray's samplers may hand back NumPy scalars; the configs validate plain Python types.
    config = {k: v.item() if isinstance(v, np.generic) else v for k, v in config.items()}
    return split_config({k: v for k, v in config.items() if k != "data_dir"}), Path(config["data_dir"])


def _seed_generator_variables(model):
    return [v for v in model.non_trainable_variables if "seed_generator" in v.path]


def evaluate(core, data, batch_size: int, loss: str = "poisson") -> tuple[dict, np.ndarray]:
    """Whole-eval-split metrics (not per-batch means) and the predictions of the serving model.

    The serving model is what is saved and served: it reads the unshifted window and
    averages strands, as `dream-hpo predict` does. Metrics of constant or non-finite
    predictions stay NaN; `prediction_problem` says why. With several tasks,
    `eval_pearson` is their mean and `eval_pearson/TASK` each one's; the Poisson
    deviance is reported only for a model trained with it (signed values have none).
    """
    from model.inference import predict_codes
    from model.metrics import mse, pearson, poisson, spearman, task_pearsons

    facts = data.facts
    observed = np.asarray(data.targets[data.eval_index], dtype=np.float32)
    predicted = predict_codes(core, np.asarray(data.codes[data.eval_index]), batch_size, layout=facts.layout)
    metrics = {
        "eval_pearson": pearson(observed, predicted),
        "eval_spearman": spearman(observed, predicted),
        "eval_mse": mse(observed, predicted),
    }
    if loss != "mse":
        metrics["eval_poisson"] = poisson(observed, predicted)
    if len(facts.tasks) > 1:
        metrics |= {task_metric(task): r for task, r in zip(facts.tasks, task_pearsons(observed, predicted))}
    return metrics, predicted


def task_metric(task: str) -> str:
    """The MLflow metric of one task's eval Pearson (MLflow allows letters, digits, _ - . / and spaces)."""
    return "eval_pearson/" + "".join(c if c.isalnum() or c in "_-. " else "_" for c in task)


def prediction_problem(predicted: np.ndarray) -> str | None:
    """Why eval predictions carry no signal, or None when they do."""
    if not np.all(np.isfinite(predicted)):
        return f"{int(np.sum(~np.isfinite(predicted)))} of {predicted.size} eval predictions are not finite"
    if predicted.size and np.ptp(predicted) == 0:
        return f"all eval predictions are the constant {float(predicted[0]):.6g}"
    return None


class TrialState:
    """What a checkpoint carries besides weights: progress, history and the best epoch."""

    def __init__(self, epochs_done=0, history=None, best_epoch=None, best_eval_pearson=-math.inf):
        self.epochs_done = epochs_done
        self.history = history or []
        self.best_epoch = best_epoch
        self.best_eval_pearson = best_eval_pearson

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> "TrialState":
        return cls(**json.loads(text))


def train_trial(config: dict) -> None:
    """Train one configuration, reporting and checkpointing every epoch.

    Trials reuse their Ray actors (see `search.study.tune_config`), so only a process's first trial
    pays the imports; each trial starts from a cleared Keras session. The start-up
    (imports, data, model build) is reported so users see what a trial costs before it learns.
    """
    entered = time.perf_counter()
    from model import devices

    # Before the first model: packed trials (fractional GPUs) must not each grab the whole card.
    devices.allow_gpu_memory_growth()
    import keras

    from data_prep import PreparedData
    from data_prep.batches import WindowBatches
    from model import (
        build_training_model,
        compile_for_training,
        core_model,
        resolve_batch_size,
        save_model,
        set_precision,
    )
    from model.config import resolved_loss, unbuildable
    from model.inputs import CodeBatches

    imported = time.perf_counter()
    # A reused actor still holds the last trial's graphs and layer-name counters; the
    # counters name the dropout generators whose state a checkpoint restores by path.
    keras.backend.clear_session()
    trial, data_dir = split_trial_config(config)
    train_config, inputs = trial.train, trial.inputs
    data = PreparedData.load(data_dir)
    facts = data.facts
    problem = unbuildable(trial, facts)
    if problem:
        raise ValueError(f"this trial's config cannot train on {data_dir}: {problem}")
    loss = resolved_loss(inputs, facts)
    loaded = time.perf_counter()
    policy = set_precision(train_config)
    keras.utils.set_random_seed(train_config.seed)
    batch_size = resolve_batch_size(train_config.batch_size, len(data.train_index))
    train_batches = CodeBatches(
        WindowBatches(
            data.codes,
            data.targets,
            data.train_index,
            batch_size,
            train_config.seed,
            augment=True,
            length=inputs.length(facts),
            singleton=inputs.singleton_channel,
            layout=facts.layout,
        )
    )
    training_model = build_training_model(trial.architecture, inputs, facts)
    compile_for_training(training_model, train_config, len(train_batches), loss)
    training_model.optimizer.build(training_model.trainable_variables)
    core = core_model(training_model)
    from model.mini_enformer import tower_filters

    derived = {
        "trainable_parameters": int(sum(np.prod(v.shape) for v in training_model.trainable_variables)),
        **(
            {"conv_tower_filters": "/".join(str(f) for f in tower_filters(trial.architecture.channels, trial.architecture.tower_blocks))}
            if trial.family == "mini_enformer"
            else {}
        ),
        "resolved_batch_size": batch_size,
        "resolved_loss": loss,
        "resolved_mixed_precision": policy,
        "resolved_jit_compile": bool(training_model.jit_compile),
    }
    hardware = f"{devices.describe()}, {policy}, XLA {'on' if training_model.jit_compile else 'off'}"

    state = TrialState()
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            directory = Path(directory)
            training_model.load_weights(directory / WEIGHTS_FILE)
            rng = np.load(directory / RNG_FILE)
            for variable in _seed_generator_variables(training_model):
                variable.assign(rng[variable.path])
            state = TrialState.from_json((directory / STATE_FILE).read_text())
            best_files = {
                name: (directory / name).read_bytes()
                for name in (BEST_MODEL_FILE, BEST_PREDICTIONS_FILE)
                if (directory / name).exists()
            }
    else:
        best_files = {}
    started_fit = time.perf_counter()
    startup = {
        "system/startup_seconds": started_fit - entered,
        "system/startup_import_seconds": imported - entered,
        "system/startup_data_seconds": loaded - imported,
        "system/startup_build_seconds": started_fit - loaded,
    }

    first_epoch = state.epochs_done
    for epoch in range(first_epoch, train_config.epochs):
        train_batches.set_epoch(epoch)
        started = time.perf_counter()
        # The batches are already shuffled by (seed, epoch); Keras' own shuffle would reorder
        # them with Python's global random state, which a resumed trial cannot replay.
        fit = training_model.fit(train_batches, epochs=1, verbose=0, shuffle=False)
        epoch_seconds = time.perf_counter() - started
        train_loss = float(fit.history["loss"][-1])
        if not math.isfinite(train_loss):
            reason = f"diverged: train loss {train_loss} at epoch {epoch + 1}"
            tune.report(
                {"epoch": epoch + 1, "train_loss": train_loss, TUNE_METRIC: -1.0, "diverged": 1, "stop_reason": reason}
            )
            return
        metrics, predicted = evaluate(core, data, batch_size, loss)
        problem = prediction_problem(predicted)
        metrics.update(
            epoch=epoch + 1,
            epoch_end_time=time.time(),
            train_loss=train_loss,
            epoch_seconds=epoch_seconds,
            samples_per_second=len(data.train_index) / epoch_seconds,
            **{f"system/{key}": value for key, value in devices.system_figures().items()},
        )
        metrics["system/samples_per_second"] = metrics["samples_per_second"]
        state.history.append(metrics)
        state.epochs_done = epoch + 1
        if math.isfinite(metrics[SEARCH_METRIC]) and metrics[SEARCH_METRIC] > state.best_eval_pearson:
            state.best_epoch, state.best_eval_pearson = epoch + 1, metrics[SEARCH_METRIC]
            best_files = _best_epoch_files(core, data, predicted, save_model)
        with tempfile.TemporaryDirectory() as directory:
            directory = Path(directory)
            training_model.save_weights(directory / WEIGHTS_FILE)
            np.savez(
                directory / RNG_FILE,
                **{v.path: np.asarray(v.numpy()) for v in _seed_generator_variables(training_model)},
            )
            (directory / STATE_FILE).write_text(state.to_json())
            for name, content in best_files.items():
                (directory / name).write_bytes(content)
            score = state.best_eval_pearson if math.isfinite(state.best_eval_pearson) else -1.0
            tune.report(
                dict(
                    metrics,
                    # The start-up figures go with this process's first epoch of the trial only.
                    **(startup if epoch == first_epoch else {}),
                    startup_seconds=startup["system/startup_seconds"],
                    # NaN, not the -inf a trial starts from, while no epoch had a signal.
                    best_eval_pearson=state.best_eval_pearson if state.best_epoch is not None else math.nan,
                    best_epoch=state.best_epoch,
                    derived=derived,
                    problem=problem or "",
                    diverged=0,
                    hardware=hardware,
                    **{TUNE_METRIC: score},
                ),
                checkpoint=tune.Checkpoint.from_directory(directory),
            )


def _best_epoch_files(core, data, predicted, save_model) -> dict[str, bytes]:
    """The best epoch's model and eval predictions, carried in every later checkpoint."""
    with tempfile.TemporaryDirectory() as directory:
        model_path = Path(directory) / BEST_MODEL_FILE
        save_model(core, model_path)
        predictions_path = Path(directory) / BEST_PREDICTIONS_FILE
        np.savez(
            predictions_path,
            row=np.asarray(data.eval_index),
            observed=np.asarray(data.targets[data.eval_index], dtype=np.float32),
            predicted=predicted,
        )
        return {BEST_MODEL_FILE: model_path.read_bytes(), BEST_PREDICTIONS_FILE: predictions_path.read_bytes()}
