"""Trials that fail for real: one that raises in its data load, one that learns nothing from start to end.

Real local Ray, a real MLflow SQLite store, real (tiny) training; each study is one
trial, and what it leaves behind is checked in the result, the table, MLflow and the
command's exit code.
"""

from __future__ import annotations

import math

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

TINY = {"channels": 48, "stem_width": 5, "tower_width": 4, "transformer_layers": 1, "batch_size": 64, "jit_compile": False}


@pytest.fixture(scope="module")
def small_data(make_synthetic_data) -> Path:
    return make_synthetic_data(400, seed=3, eval_size=100)


def run_one_trial(tmp_path: Path, data: Path, name: str, fixed: dict, on_line=None):
    """A one-trial study; returns its result and every line it printed."""
    from search.settings import StudyConfig
    from search.study import run_study

    lines: list[str] = []

    def progress(message: str) -> None:
        lines.extend(message.splitlines())
        if on_line:
            on_line(message)

    result = run_study(
        StudyConfig(
            name=name, data_dir=data, experiment="tests", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
            storage_path=str(tmp_path / "ray_results"), gpus_per_trial=0, max_failures=0, fixed=fixed,
        ),
        progress=progress,
    )
    return result, lines


def only_run(tmp_path: Path, study: str):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tests")
    [run] = client.search_runs([experiment.experiment_id], filter_string=f"tags.study = '{study}'")
    return client, run


def exit_code_of_baseline_command(monkeypatch, tmp_path: Path, data: Path, result, capsys) -> tuple[int, list[str]]:
    """`dream-hpo baseline` for a study that ended as `result`: its exit code and the table it printed."""
    import search.study
    from search.cli import main

    monkeypatch.setattr(search.study, "run_study", lambda config: result)
    capsys.readouterr()
    code = main(["baseline", "--data", str(data), "--name", "again", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    return code, capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def broken(tmp_path_factory, small_data):
    """A study whose one trial finds the codes array gone after every check passed: the trial raises."""
    tmp_path = tmp_path_factory.mktemp("broken")
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    codes, hidden = data / "codes.npy", tmp_path / "codes.npy.hidden"

    def break_the_data(message: str) -> None:
        if message.startswith("study '"):
            codes.rename(hidden)
        elif "FAILED:" in message:
            # The driver reads the eval targets once the trials are over; only the trial must fail.
            hidden.rename(codes)

    result, lines = run_one_trial(tmp_path, data, "broken", dict(TINY, epochs=1), break_the_data)
    return tmp_path, data, result, lines


MISSING = "codes.npy: missing; manifest.json names it"


def test_a_trial_whose_data_load_raises_fails_its_run_and_the_study_with_the_exception(broken, monkeypatch, capsys):
    tmp_path, data, result, lines = broken
    [failed] = [line for line in lines if "FAILED:" in line]
    assert failed.startswith(f"trial 1/1 [baseline]  FAILED: data_prep.prepare.PreparedDataError: {data / MISSING} "
                             "(trace: "), lines

    [trial] = result.trials
    assert (trial.status, trial.baseline, trial.epochs_trained, trial.model_logged) == ("error", True, 0, False)
    assert (trial.interval, trial.predicted) == (None, None)
    assert result.best is None and result.ensemble is None

    client, run = only_run(tmp_path, "broken")
    assert run.info.status == "FAILED"
    assert run.data.tags["stop_reason"].startswith(f"error: data_prep.prepare.PreparedDataError: {data / MISSING} ")
    assert trial.run_id == run.info.run_id and run.data.tags["ray_trial_id"] == trial.trial_id

    code, printed = exit_code_of_baseline_command(monkeypatch, tmp_path, data, result, capsys)
    assert code == 1
    [row] = [line for line in printed if trial.trial_id in line]
    assert row.split()[:2] == ["-", trial.trial_id] and "  error      [baseline] " in row, row


def test_an_errored_trial_carries_its_exception_as_its_reason_into_the_table(broken, monkeypatch, capsys):
    tmp_path, data, result, _ = broken
    [trial] = result.trials
    assert MISSING in trial.reason
    _, printed = exit_code_of_baseline_command(monkeypatch, tmp_path, data, result, capsys)
    [row] = [line for line in printed if trial.trial_id in line]
    assert MISSING in row and row.endswith(")"), row


def test_a_trial_with_constant_predictions_every_epoch_has_no_signal_and_says_why(
    tmp_path, small_data, monkeypatch, capsys
):
    """At learning rate 1 the softplus head dies at once: every prediction is 0 at every epoch, the loss finite.

    In float32: bfloat16 (`auto` on CPUs with bfloat16 units) rounds differently and the head survives."""
    result, lines = run_one_trial(
        tmp_path, small_data, "flat", dict(TINY, epochs=2, learning_rate=1.0, mixed_precision=False)
    )

    epochs = [line for line in lines if " epoch " in line]
    assert len(epochs) == 2, lines
    for number, line in enumerate(epochs, start=1):
        assert line.startswith(f"trial 1/1 [baseline]  epoch {number}/2  loss "), line
        assert float(line.split("loss ")[1].split()[0]) < 1e6  # finite: not divergence
        assert "  eval r nan  " in line and line.endswith("(all eval predictions are the constant 0)"), line
    assert not any("FAILED" in line or "stopped" in line for line in lines), lines

    [trial] = result.trials
    assert (trial.status, trial.reason) == ("no signal", "all eval predictions are the constant 0")
    assert (trial.epochs_trained, trial.model_logged, trial.baseline, trial.predicted) == (2, False, True, None)
    assert trial.interval is None and result.best is None
    assert math.isnan(trial.best_eval_pearson)  # not the -inf a trial starts from

    client, run = only_run(tmp_path, "flat")
    assert run.info.status == "FINISHED"  # it trained to the end; only divergence and errors fail a run
    assert run.data.tags["stop_reason"] == "all eval predictions are the constant 0"
    assert "model_logged" not in run.data.tags
    assert "best_eval_pearson" not in run.data.metrics and "best_epoch" not in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_pearson")] == [1, 2]

    code, printed = exit_code_of_baseline_command(monkeypatch, tmp_path, small_data, result, capsys)
    assert code == 1
    [row] = [line for line in printed if "no signal" in line]
    assert row.split()[0] == "-" and row.endswith("(all eval predictions are the constant 0)"), row
