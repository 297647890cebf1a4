"""The baseline trial end to end: real local Ray, real MLflow SQLite store, real training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import DEMO, interrupt_at_checkpoint
from data_prep import PreparedData, prepare

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# A small but real configuration from the search ranges, so CPU tests take seconds per epoch.
# XLA compilation costs more than it saves on these tiny CPU runs.
TINY = {"channels": 48, "stem_width": 5, "tower_width": 4, "transformer_layers": 1, "batch_size": 64, "jit_compile": False}


@pytest.fixture(scope="module")
def tiny_data(make_synthetic_data) -> Path:
    return make_synthetic_data(1_200, seed=3, eval_size=300)


def run_baseline(tmp_path: Path, data: Path, name: str, fixed: dict, **kwargs):
    from search.settings import StudyConfig
    from search.study import run_study

    return run_study(
        StudyConfig(
            name=name,
            data_dir=data,
            experiment="tests",
            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
            storage_path=str(tmp_path / "ray_results"),
            gpus_per_trial=0,
            fixed=fixed,
            **kwargs,
        ),
        progress=lambda message: None,
    )


def study_runs(tmp_path: Path, study: str):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tests")
    return client, client.search_runs([experiment.experiment_id], filter_string=f"tags.study = '{study}'")


def head_commit() -> str:
    """The checkout's commit as git itself says, or 'unknown' outside a git checkout or without git."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def test_baseline_trial_logs_epochs_artifacts_and_a_loadable_model(tmp_path, tiny_data):
    commit_before = head_commit()
    result = run_baseline(tmp_path, tiny_data, "base", dict(TINY, epochs=2, learning_rate=0.01))
    [trial] = result.trials
    assert trial.status == "done" and trial.epochs_trained == 2 and trial.baseline

    client, runs = study_runs(tmp_path, "base")
    [run] = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["baseline"] == "true"
    # Either side of the run, in case a commit landed while it trained.
    assert run.data.tags["git_commit"] in {commit_before, head_commit()}
    assert run.data.tags["data_sha256"] == json.loads((tiny_data / "manifest.json").read_text())["source_sha256"]
    assert run.data.params["channels"] == "48" and run.data.params["learning_rate"] == "0.01"
    for metric in ("train_loss", "eval_pearson", "eval_spearman", "eval_mse", "eval_poisson", "samples_per_second"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [1, 2], metric
    pearsons = [m.value for m in client.get_metric_history(run.info.run_id, "eval_pearson")]
    assert run.data.metrics["best_eval_pearson"] == pytest.approx(max(pearsons))

    artifacts = {a.path for folder in ("plots", "predictions", "config", "data") for a in client.list_artifacts(run.info.run_id, folder)}
    assert artifacts == {
        "plots/training_curve.png",
        "plots/observed_vs_predicted.png",
        "predictions/eval_predictions.csv",
        "config/trial_config.json",
        "data/data_manifest.json",
    }
    local = Path(client.download_artifacts(run.info.run_id, "predictions/eval_predictions.csv", str(tmp_path)))
    import pandas as pd

    table = pd.read_csv(local)
    data = PreparedData.load(tiny_data)
    assert len(table) == 300
    np.testing.assert_array_equal(table["row"], data.eval_index)
    np.testing.assert_allclose(table["observed"], data.targets[data.eval_index], rtol=1e-6)
    r = np.corrcoef(table["observed"], table["predicted"])[0, 1]
    assert r == pytest.approx(max(pearsons), abs=1e-4)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    logged = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")}
    assert set(logged) == {"model"}
    from data_prep.encoding import decode

    # "model" serves sequences; the stored codes decode back to them.
    pyfunc = mlflow.pyfunc.load_model(logged["model"].model_uri)
    sequences = [decode(codes) for codes in data.codes[data.eval_index[:50]]]
    predicted = np.asarray(pyfunc.predict(pd.DataFrame({"sequence": sequences}))).reshape(-1)
    np.testing.assert_allclose(predicted, table["predicted"][:50], rtol=1e-4, atol=1e-5)


def test_diverging_trial_stops_with_a_reason(tmp_path, tiny_data):
    result = run_baseline(tmp_path, tiny_data, "diverge", dict(TINY, epochs=3, learning_rate=1e6))
    [trial] = result.trials
    assert trial.status == "diverged"
    assert trial.epochs_trained == 1
    _, [run] = study_runs(tmp_path, "diverge")
    assert run.info.status == "FAILED"
    assert run.data.tags["stop_reason"].startswith("diverged: train loss")


def test_interrupted_baseline_resumes_from_its_checkpoint_without_repeating_epochs(tmp_path, tiny_data):
    """Ctrl-C after epoch 1 leaves the run KILLED; --resume finishes it with each epoch logged once."""
    command = [
        sys.executable, "-m", "search.cli", "baseline",
        "--data", str(tiny_data), "--name", "resumable", "--experiment", "tests",
        "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray_results"),
        "--gpus-per-trial", "0", "--epochs", "4", "--batch-size", "16", "--set", "jit_compile=false",
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert interrupt_at_checkpoint(command, tmp_path, env, tmp_path / "ray_results" / "resumable", "checkpoint_*", 240) != 0
    client, [run] = study_runs(tmp_path, "resumable")
    assert run.info.status == "KILLED"
    interrupted_at = len(client.get_metric_history(run.info.run_id, "eval_pearson"))
    assert 1 <= interrupted_at < 4

    finished = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, timeout=600)
    assert finished.returncode == 0
    client, [run] = study_runs(tmp_path, "resumable")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval_pearson")) == [1, 2, 3, 4]
    assert run.data.metrics["epochs_trained"] == 4


@pytest.mark.skipif(not DEMO.exists(), reason=f"real DREAM demo sample not present at {DEMO}")
def test_real_demo_sample_trains_one_epoch(tmp_path):
    prepare(DEMO, tmp_path / "demo", eval_size=1_000, split_seed=0)
    result = run_baseline(tmp_path, tmp_path / "demo", "demo", dict(TINY, epochs=1, batch_size=128))
    [trial] = result.trials
    assert trial.status == "done" and trial.epochs_trained == 1
    _, [run] = study_runs(tmp_path, "demo")
    assert np.isfinite(run.data.metrics["eval_pearson"]) and np.isfinite(run.data.metrics["train_loss"])
