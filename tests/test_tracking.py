"""What MLflow and the console show: complete params, one baseline, one best trial, honest metrics.

Real local Ray, real MLflow SQLite stores, real training on tiny data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
TINY = {"channels": 48, "stem_width": 5, "tower_width": 4, "transformer_layers": 1, "batch_size": 64, "jit_compile": False}
# The seed, 192/5/4/4, exactly as the design document counts it.
SEED = {
    "channels": "192",
    "stem_width": "5",
    "tower_width": "4",
    "transformer_layers": "4",
    "learning_rate": "0.01",
    "optimizer": "sgd",
    "momentum": "0.9",
    "num_heads": "8",
    "trainable_parameters": "1995617",
    "conv_tower_filters": "64/64/128/192",
}
NOISE = ("cuInit", "oneDNN custom operations", "TensorBoard", "View detailed results", "absl::InitializeLog",
         "Checkpoint successfully created", "Trial status", "Downloading artifacts")


@pytest.fixture(scope="module")
def tiny_data(make_synthetic_data) -> Path:
    return make_synthetic_data(400, seed=11, eval_size=100)


def cli(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`dream-hpo ARGS` in a fresh process; it prints whether that driver ever imported TensorFlow."""
    script = (
        "import sys\nfrom search.cli import main\ncode = main(sys.argv[1:])\n"
        "print('driver imported tensorflow:', 'tensorflow' in sys.modules)\nsys.exit(code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
        env=dict(env, PYTHONPATH=str(ROOT)),
    )


def runs_of(tracking_uri: str, study: str):
    from search.tracking import STUDY_KEY_TAG, study_key

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{STUDY_KEY_TAG} = '{study_key(study)}'")
    return client, experiment, runs


@pytest.mark.slow
def test_seed_baseline_run_is_complete_honest_and_quiet(tmp_path, tiny_data):
    """The baseline command at the seed's 192/5/4/4: every param, real timestamps, dataset, kind, no pickle, no noise."""
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli(
        tmp_path, "baseline", "--data", str(tiny_data), "--name", "seed's \"run\"", "--experiment", "tests",
        "--tracking-uri", tracking_uri, "--gpus-per-trial", "0", "--epochs", "2", "--batch-size", "64",
        "--set", "jit_compile=false",
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    assert "driver imported tensorflow: False" in result.stdout
    assert "trial 1/1 [baseline]  epoch 1/2  loss" in result.stdout
    assert "trial 1/1 [baseline]  epoch 2/2  loss" in result.stdout
    for noise in NOISE:
        assert noise not in console, noise
    assert "ui --backend-store-uri " + tracking_uri in result.stdout

    client, experiment, [run] = runs_of(tracking_uri, "seed's \"run\"")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == "baseline" and run.data.tags["baseline"] == "true"
    assert {k: run.data.params[k] for k in SEED} == SEED
    # 260 training sequences (400 less 100 validation and 40 test): the batch is capped so an epoch has
    # at least 32 optimizer steps
    assert run.data.params["batch_size"] == "64" and run.data.params["resolved_batch_size"] == "8"

    for metric in ("train_loss", "eval_pearson", "system/host_rss_peak_mb"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [1, 2], metric
        assert all(run.info.start_time <= m.timestamp <= run.info.end_time for m in history), metric
    assert client.get_metric_history(run.info.run_id, "system/host_rss_peak_mb")[0].value > 100

    [dataset_input] = client.get_run(run.info.run_id).inputs.dataset_inputs
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert dataset_input.dataset.digest == manifest["source_sha256"][:16]
    assert json.loads(dataset_input.dataset.profile) == {
        "num_rows": 400, "train_rows": 260, "eval_rows": 100, "test_rows": 40, "split_seed": 0,
    }
    assert json.loads(dataset_input.dataset.source)["uri"] == str(tiny_data.resolve())

    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    [model] = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    folder = Path(mlflow.artifacts.download_artifacts(model.artifact_location, dst_path=str(tmp_path / "model")))
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert "served_model.py" in files and not any(name.endswith((".pkl", ".pickle")) for name in files)
    mlmodel = (folder / "MLmodel").read_text()
    assert "model_code_path" in mlmodel and "python_model.pkl" not in mlmodel


@pytest.mark.slow
def test_set_and_config_runs_are_named_for_what_they_are(tmp_path, tiny_data):
    from search.settings import StudyConfig
    from search.study import run_study

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = dict(
        data_dir=tiny_data, experiment="tests", tracking_uri=tracking_uri,
        storage_path=str(tmp_path / "ray_results"), gpus_per_trial=0, fixed={"epochs": 1, "batch_size": 64},
    )
    overrides = {k: v for k, v in TINY.items() if k != "batch_size"}
    variant = run_study(StudyConfig(name="variant", overrides=overrides, **common), progress=lambda m: None)
    assert not variant.trials[0].baseline
    config_file = tmp_path / "best_config.json"
    config_file.write_text(json.dumps(dict(overrides, learning_rate=0.02)))
    retrain = run_study(
        StudyConfig(name="retrain", overrides=json.loads(config_file.read_text()), derived_from=str(config_file), **common),
        progress=lambda m: None,
    )
    assert not retrain.trials[0].baseline

    _, _, [set_run] = runs_of(tracking_uri, "variant")
    assert set_run.data.tags["baseline"] == "false" and set_run.data.tags["run_kind"] == "variant"
    assert set_run.info.run_name == "baseline+channels=48,transformer_layers=1"
    _, _, [retrain_run] = runs_of(tracking_uri, "retrain")
    assert retrain_run.data.tags["baseline"] == "false" and retrain_run.data.tags["run_kind"] == "retrain"
    assert retrain_run.data.tags["derived_from"] == str(config_file)
    assert retrain_run.info.run_name == "retrain-best_config"
    assert retrain_run.data.params["learning_rate"] == "0.02"
    assert set(set_run.data.params) == set(retrain_run.data.params)

    import ray

    from search.runtime import LOCAL_NODE_IP

    assert [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]] == [LOCAL_NODE_IP]
    assert os.environ["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "chanels=96"], "argument --set: 'chanels' is not a config field; allowed: attention_dropout"),
        (["--set", "transformer_dropout=1.5"], "--set/--config transformer_dropout=1.5: ModelConfig.transformer_dropout must be in [0, 1)"),
        (["--set", "learning_rate=0.02"], "--set learning_rate: 'learning_rate' is searched by this study's space"),
        (["--max-epochs", "0"], "--max-epochs 0: must be >= 1"),
        (["--max-concurrent", "0"], "--max-concurrent 0: must be >= 1"),
        (["--gpus-per-trial", "-1"], "--gpus-per-trial -1.0: must be >= 0"),
        (["--grace-period", "0"], "--grace-period 0: must be >= 1"),
        (["--reduction-factor", "1"], "--reduction-factor 1: must be >= 2"),
        (["--name", "a/b"], "--name 'a/b': names a directory of the study's results"),
        (["--set", "num_heads=16"], "the point channels=144, "),
        (["--set", "kernel_width=5"], "--set/--config kernel_width: a field of the legnet family, and no trial"),
    ],
)
def test_bad_search_settings_are_refused_before_ray_or_mlflow_start(tmp_path, tiny_data, args, message):
    result = cli(tmp_path, "search", "--data", str(tiny_data), *args, timeout=120)
    assert result.returncode == 2, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("dream-hpo search: error: ") and message in last_line, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--storage-path", "/proc/version/studies"], "--storage-path /proc/version/studies: /proc/version is a file"),
        (["--storage-path", "ftp://host/studies"], "--storage-path ftp://host/studies: unknown scheme 'ftp'"),
        (["--tracking-uri", "sqlite:////no/such/folder/mlflow.db"], "the folder /no/such/folder does not exist"),
    ],
)
def test_bad_storage_is_refused_before_ray_starts_or_the_kmer_reference_is_fitted(tmp_path, tiny_data, args, message):
    import shutil

    from data_prep.prepare import KMER_REFERENCE_FILE

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / KMER_REFERENCE_FILE).unlink(missing_ok=True)
    script = (
        "import sys\nfrom search.cli import main\ncode = main(sys.argv[1:])\n"
        "print('ray started:', 'ray' in sys.modules and sys.modules['ray'].is_initialized())\nsys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "baseline", "--data", str(data), *args], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 2 and "ray started: False" in result.stdout, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("dream-hpo baseline: error: ") and message in line, line
    assert not (data / KMER_REFERENCE_FILE).exists(), "the k-mer reference was fitted before the check"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_search_whose_explain_folder_holds_files_is_refused_before_ray_starts(tmp_path, tiny_data):
    (tmp_path / "s-explain").mkdir()
    (tmp_path / "s-explain" / "notes.txt").write_text("mine")
    result = cli(tmp_path, "search", "--data", str(tiny_data), "--name", "s", timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "dream-hpo search: error: --explain's folder s-explain is a directory that is not empty; "
        "explain writes into a new or empty directory; move it, or give --explain 0"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-explain"]
    assert (tmp_path / "s-explain" / "notes.txt").read_text() == "mine"
    result = cli(tmp_path, "search", "--data", str(tiny_data), "--name", "s", "--explain", "-1", timeout=120)
    assert result.stderr.strip().splitlines()[-1] == (
        "dream-hpo search: error: --explain -1: give the number of validation sequences to explain, or 0 to skip it"
    )


def test_a_baseline_outside_the_space_and_a_non_dataset_are_refused_first(tmp_path, tiny_data):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: float, low: 0.02, high: 0.1}\n")
    result = cli(tmp_path, "search", "--data", str(tiny_data), "--space", str(space), timeout=120)
    assert result.returncode == 2 and "must contain the baseline value 0.01" in result.stderr
    result = cli(tmp_path, "baseline", "--data", str(tmp_path), timeout=120)
    assert result.returncode == 2 and str(tmp_path) in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def _row(trial_id, pearson, status="done", logged=True, baseline=False):
    from search.results import TrialResult

    return TrialResult(
        trial_id=trial_id, run_id=None, model_logged=logged, baseline=baseline, best_eval_pearson=pearson,
        epochs_trained=2, device_hours=0.0, startup_seconds=1.0, searched={}, status=status, reason="", config={},
    )


def test_one_rule_decides_the_best_trial():
    from search.results import best_trial, rank_trials

    rows = [
        _row("errored", 0.99, status="error"),
        _row("no-model", 0.95, logged=False),
        _row("nan", math.nan, status="no signal"),
        _row("good", 0.7),
        _row("baseline", 0.6, baseline=True),
        _row("diverged", math.nan, status="diverged"),
    ]
    assert best_trial(rows).trial_id == "good"
    assert [r.trial_id for r in rank_trials(rows)][:2] == ["good", "baseline"]
    assert best_trial([_row("errored", 0.99, status="error")]) is None


@pytest.mark.slow
def test_a_study_whose_trials_all_fail_ends_with_a_failed_parent_and_no_registration(tmp_path, tiny_data):
    from search.settings import StudyConfig
    from search.space import parse_space
    from search.study import run_study

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_study(
        StudyConfig(
            name="doomed", data_dir=tiny_data, experiment="tests", tracking_uri=tracking_uri,
            storage_path=str(tmp_path / "ray_results"), gpus_per_trial=0, num_trials=2, max_concurrent=1, legnet_reference=False,
            space=parse_space({"final_dropout": {"type": "float", "low": 0.0, "high": 0.1}}),
            fixed=dict(TINY, epochs=2, learning_rate=1e6, seed=0), register_as="doomed-best",
        ),
        progress=lambda m: None,
    )
    assert result.best is None and result.ensemble is None and result.registered.best is None
    assert {t.status for t in result.trials} == {"diverged"}
    client, _, runs = runs_of(tracking_uri, "doomed")
    [parent] = [r for r in runs if r.data.tags.get("study_parent") == "true"]
    assert parent.info.status == "FAILED"
    assert "no trial finished" in parent.data.tags["stop_reason"]
    assert client.search_registered_models(filter_string="name = 'doomed-best'") == []
    assert all(r.info.status == "FAILED" for r in runs if r is not parent)


def test_tracking_uri_follows_mlflow_convention(monkeypatch, tmp_path):
    from search.tracking_store import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    assert resolve_tracking_uri("sqlite:///other.db") == f"sqlite:///{tmp_path}/other.db"


@pytest.mark.slow
def test_an_ensemble_serves_the_mean_of_its_members(tmp_path):
    import mlflow
    import numpy as np
    import pandas as pd

    from model import ModelConfig, build_model, save_model
    from search.serving import INPUT_EXAMPLE, log_sequence_model

    paths = []
    for seed, channels in ((1, 48), (2, 96)):
        import keras

        keras.utils.set_random_seed(seed)
        paths.append(save_model(build_model(ModelConfig(channels=channels, transformer_layers=1)), tmp_path / f"m{seed}.keras"))
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment("tests")
    run_id = MlflowClient(tracking_uri).create_run(experiment.experiment_id).info.run_id
    members = [mlflow.pyfunc.load_model(log_sequence_model(run_id, [path], name=f"m{i}").model_uri) for i, path in enumerate(paths)]
    ensemble = mlflow.pyfunc.load_model(log_sequence_model(run_id, paths, name="ensemble").model_uri)
    sequences = pd.DataFrame({"sequence": list(INPUT_EXAMPLE["sequence"]) + ["ACGT" * 30]})
    each = [np.asarray(m.predict(sequences)) for m in members]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(np.asarray(ensemble.predict(sequences)), (each[0] + each[1]) / 2, rtol=1e-6)
