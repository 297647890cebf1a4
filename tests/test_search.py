"""The search: Optuna trials on real local Ray with ASHA, nested MLflow runs, registry, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.space import SpaceError, load_space, parse_space

# The seed's values of the default space's fields: 192/5/4/4 at learning rate 0.01.
SEED_POINT = {"channels": 192, "stem_width": 5, "tower_width": 4, "transformer_layers": 4, "learning_rate": 0.01}

# Around the baseline but small enough for CPU tests; the baseline must lie inside. Learning
# rates above about 0.05 can leave this tiny set's model constant, which would be a real
# "no signal" trial; the tests want six finished ones.
SMALL_SPACE = {
    "channels": {"type": "int", "low": 96, "high": 192, "step": 48},
    "stem_width": {"type": "int", "low": 3, "high": 5},
    "tower_width": {"type": "int", "low": 2, "high": 4},
    "transformer_layers": {"type": "int", "low": 1, "high": 4},
    "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def search_data(make_synthetic_data) -> Path:
    return make_synthetic_data(900, seed=5, eval_size=300)


class FileOpens:
    """Counts the opens of one file by any process, through Linux inotify."""

    IN_OPEN = 0x20

    def __init__(self, path: Path):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, str(path).encode(), self.IN_OPEN) >= 0
        self.opens = 0

    def count(self) -> int:
        import struct

        while True:
            try:
                events = os.read(self.fd, 4096)
            except BlockingIOError:
                return self.opens
            offset = 0
            while offset < len(events):
                name_length = struct.unpack_from("iIII", events, offset)[3]
                offset += 16 + name_length
                self.opens += 1


def child_runs(tracking_uri: str, study: str):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.study = '{study}'")
    parents = [r for r in runs if r.data.tags.get("study_parent") == "true"]
    return client, parents, [r for r in runs if r.data.tags.get("study_parent") != "true"]


@pytest.mark.slow
def test_search_runs_baseline_first_stops_early_and_registers_the_best(tmp_path, search_data, monkeypatch):
    from mlflow.entities import RunStatus
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from search.settings import StudyConfig
    from search.study import run_study

    # Every status a run is set to, in order: the parent must end once and never run again.
    statuses = []
    update_run_info = SqlAlchemyStore.update_run_info

    def record(store, run_id, run_status, *args, **kwargs):
        statuses.append((run_id, RunStatus.to_string(run_status) if isinstance(run_status, int) else run_status))
        return update_run_info(store, run_id, run_status, *args, **kwargs)

    monkeypatch.setattr(SqlAlchemyStore, "update_run_info", record)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Any process that opens the test targets (the driver, a Ray worker, the k-mer fit) is seen.
    test_target_opens = FileOpens(search_data / "test_targets.npy")
    opened_before_scoring = []

    def progress(message: str) -> None:
        if message.startswith("scoring the chosen models once on the test split"):
            opened_before_scoring.append(test_target_opens.count())

    result = run_study(
        StudyConfig(
            name="six",
            data_dir=search_data,
            experiment="tests",
            tracking_uri=tracking_uri,
            storage_path=str(tmp_path / "ray_results"),
            space=parse_space(SMALL_SPACE),
            legnet_reference=False,
            num_trials=6,
            max_concurrent=2,
            gpus_per_trial=0,
            scheduler="asha",
            grace_period=1,
            reduction_factor=2,
            seed=7,
            # float32 everywhere: the trial outcomes asserted below were seen in it, whatever `auto` picks on this CPU.
            fixed={"epochs": 4, "batch_size": 64, "seed": 0, "jit_compile": False, "mixed_precision": False},
            register_as="tests-best",
            confirm_seeds=1,
        ),
        progress=progress,
    )
    # Every choice was made without the test targets (the extra seeds' trainings included); the one scoring pass then read them.
    assert opened_before_scoring == [0] and test_target_opens.count() >= 1
    trials = result.trials
    assert len(trials) == 6 and all(t.status == "done" for t in trials), [(t.status, t.searched) for t in trials]
    assert min(t.epochs_trained for t in trials) < 4, "ASHA stopped no trial early"
    assert result.baseline.epochs_trained == 4, "the baseline must train to the end"

    client, [parent], runs = child_runs(tracking_uri, "six")
    children = [c for c in runs if c.data.tags["run_kind"] != "confirm_seed"]
    seed_runs = {c.data.tags["confirms"]: c for c in runs if c.data.tags["run_kind"] == "confirm_seed"}
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == [1, 2, 3, 4, 5, 6]
    [first] = [c for c in children if c.data.tags["trial_number"] == "1"]
    assert first.data.tags["baseline"] == "true" and first.info.run_name == "baseline"
    assert {k: float(first.data.params[k]) for k in SEED_POINT} == {k: float(v) for k, v in SEED_POINT.items()}
    assert sum(c.data.tags["baseline"] == "true" for c in children) == 1
    # Every run has every config field and the derived facts, searched or not: the compare view lines up.
    keys = {frozenset(c.data.params) for c in children}
    assert len(keys) == 1
    assert {"optimizer", "momentum", "num_heads", "attention_dropout", "trainable_parameters"} <= set(next(iter(keys)))

    # Start-up is measured in every trial; reused actors skip the imports a new process pays.
    startups = [client.get_metric_history(c.info.run_id, "system/startup_seconds") for c in children]
    assert all(len(history) == 1 and history[0].step == 1 and history[0].value > 0 for history in startups)
    imports = sorted(
        client.get_metric_history(c.info.run_id, "system/startup_import_seconds")[0].value for c in children
    )
    assert imports[3] < 1.0 < imports[-1], f"trials did not reuse actors: import seconds {imports}"
    # What ASHA saved, on the parent: epochs against running all six to the end, trials per rung (1, 2, 4).
    compute = result.compute
    assert compute.epochs_trained == sum(t.epochs_trained for t in trials) < 6 * 4
    assert compute.epochs_without_early_stopping == 24
    assert compute.rungs == {e: sum(t.epochs_trained >= e for t in trials) for e in (1, 2, 4)}
    assert compute.rungs[1] == 6
    assert parent.data.metrics["compute_saved_fraction"] == pytest.approx(1 - compute.epochs_trained / 24)
    assert parent.data.metrics["asha_rung_4_trials"] == compute.rungs[4]

    # Optuna learned the trials ASHA stopped as pruned, with their per-epoch scores, and the rest as complete.
    from ray.tune.search import ConcurrencyLimiter

    from search.scheduler import PrunedAwareOptunaSearch

    searcher = ConcurrencyLimiter(PrunedAwareOptunaSearch(4), max_concurrent=2)
    searcher.restore_from_dir(result.experiment_path)
    import optuna

    optuna_trials = searcher.searcher._ot_study.trials
    assert len(optuna_trials) == 6
    for state, epochs in ((optuna.trial.TrialState.PRUNED, lambda n: n < 4), (optuna.trial.TrialState.COMPLETE, lambda n: n == 4)):
        assert sorted(len(t.intermediate_values) for t in optuna_trials if t.state == state) == sorted(
            t.epochs_trained for t in trials if epochs(t.epochs_trained)
        )
    assert sorted(t.value for t in optuna_trials if t.state == optuna.trial.TrialState.COMPLETE) == pytest.approx(
        sorted(t.best_eval_pearson for t in trials if t.epochs_trained == 4)
    )

    # Optuna, ASHA and the table rank by one number: each trial's best eval Pearson so far.
    for trial in trials:
        history = [m.value for m in client.get_metric_history(trial.run_id, "eval_pearson")]
        assert trial.best_eval_pearson == pytest.approx(max(history))
    best = trials[0]
    assert best is result.best and best.best_eval_pearson == max(t.best_eval_pearson for t in trials)
    assert parent.info.status == "FINISHED"
    parent_statuses = [status for run_id, status in statuses if run_id == parent.info.run_id]
    assert parent_statuses[-1] == "FINISHED" and parent_statuses.count("FINISHED") == 1, parent_statuses
    assert parent.data.metrics["best_eval_pearson"] == pytest.approx(best.best_eval_pearson)
    assert parent.data.tags["best_run_id"] == best.run_id
    artifacts = {a.path for folder in ("study", "plots") for a in client.list_artifacts(parent.info.run_id, folder)}
    assert {"study/trials.csv", "study/best_config.json", "study/search_space.json"} <= artifacts
    assert {"plots/optimization_history.png", "plots/param_importances.png", "plots/parallel_coordinate.png"} <= artifacts

    # Uncertainty and references: intervals on every finished trial, the k-mer reference, the ensemble.
    assert all(t.interval.low <= t.best_eval_pearson <= t.interval.high for t in trials)
    assert result.baseline.vs_baseline.estimate == result.baseline.vs_baseline.low == 0.0
    assert parent.data.metrics["kmer_reference_pearson"] == pytest.approx(result.reference.estimate)
    baseline_run = next(c for c in children if c.data.tags["baseline"] == "true")
    assert baseline_run.data.metrics["kmer_reference_pearson"] == pytest.approx(result.reference.estimate)
    assert baseline_run.data.metrics["vs_kmer_reference_low"] == pytest.approx(result.baseline.vs_kmer.low)
    ensemble = result.ensemble
    assert set(ensemble.member_ids) <= {t.trial_id for t in trials if t.rankable}
    assert sum(ensemble.weights) + ensemble.kmer_weight == pytest.approx(1.0)
    assert parent.data.metrics["ensemble_eval_pearson"] == pytest.approx(ensemble.interval.estimate)
    assert parent.data.metrics["ensemble_weight_kmer_reference"] == pytest.approx(ensemble.kmer_weight)
    assert result.registered.ensemble == "models:/tests-best-ensemble/1"
    assert parent.data.tags["ensemble_members"] == ensemble.composition

    version = client.get_latest_versions("tests-best")[0]
    assert result.registered.best == f"models:/tests-best/{version.version}"
    import mlflow
    import numpy as np
    import pandas as pd

    mlflow.set_tracking_uri(tracking_uri)
    # The registered model is the best trial's: it predicts what that trial's best epoch predicted.
    model = mlflow.pyfunc.load_model(result.registered.best)
    from data_prep import PreparedData
    from data_prep.encoding import decode

    data = PreparedData.load(search_data)
    sequences = [decode(codes) for codes in data.codes[data.eval_index[:20]]]
    served = np.asarray(model.predict(pd.DataFrame({"sequence": sequences}))).reshape(-1)
    np.testing.assert_allclose(served, best.predicted[:20], rtol=1e-4, atol=1e-5)
    # The registered ensemble, k-mer member included, predicts the blend it was chosen as on validation.
    eval_sequences = pd.DataFrame({"sequence": [decode(codes) for codes in data.codes[data.eval_index]]})
    served = np.asarray(mlflow.pyfunc.load_model(result.registered.ensemble).predict(eval_sequences)).reshape(-1)
    from model.metrics import pearson

    assert pearson(np.asarray(data.targets[data.eval_index]), served) == pytest.approx(ensemble.interval.estimate, abs=1e-4)
    # Each registered version says what it scored: validation, and test, the figure to quote.
    for name, figures in (("tests-best", (best.interval, best.test)), ("tests-best-ensemble", (ensemble.interval, ensemble.test))):
        card = client.get_model_version(name, "1")
        assert float(card.tags["test_pearson"]) == pytest.approx(figures[1].pearson.estimate, abs=1e-4)
        assert float(card.tags["validation_pearson_low"]) == pytest.approx(figures[0].low, abs=1e-4)
        assert f"Test Pearson {figures[1].pearson.estimate:.3f}" in card.description

    # The test figures, computed again from the registered models and the test rows alone.
    from model.kmer_reference import kmer_reference

    observed = data.read_test_targets()
    test_sequences = pd.DataFrame({"sequence": [decode(codes) for codes in data.codes[data.test_index]]})
    assert result.test_size == len(observed) == 90
    for uri, score in ((result.registered.best, best.test), (result.registered.ensemble, ensemble.test)):
        served = np.asarray(mlflow.pyfunc.load_model(uri).predict(test_sequences)).reshape(-1)
        assert score.pearson.estimate == pytest.approx(pearson(observed, served), abs=1e-4)
    kmer_test = np.asarray(kmer_reference(search_data)["test_predicted"])
    assert result.reference_test.estimate == pytest.approx(pearson(observed, kmer_test), abs=1e-6)
    assert best.test.vs_kmer.estimate == pytest.approx(best.test.pearson.estimate - result.reference_test.estimate, abs=1e-6)
    assert result.baseline.test.vs_baseline.estimate == 0.0
    assert [t.trial_id for t in trials if t.test is not None] == sorted(
        {best.trial_id, result.baseline.trial_id}, key=[t.trial_id for t in trials].index
    )
    assert parent.data.metrics["best_test_pearson"] == pytest.approx(best.test.pearson.estimate)

    # --confirm-seeds 1: the best and baseline configs trained once more, seed 1, every epoch; each seed's
    # test r recomputed from its own logged model.
    roles = ["best"] + (["baseline"] if not best.baseline else [])
    assert [spread.role for spread in result.seeds] == roles and set(seed_runs) == set(roles)
    for spread in result.seeds:
        own = best if spread.role == "best" else result.baseline
        run = seed_runs[spread.role]
        assert run.info.run_name == f"{spread.role}-seed-1" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["seed"] == "1" and len(client.get_metric_history(run.info.run_id, "eval_pearson")) == 4
        assert {k: v for k, v in run.data.params.items() if k != "seed"} == {
            k: v for k, v in client.get_run(own.run_id).data.params.items() if k != "seed"
        }
        served = np.asarray(mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(test_sequences)).reshape(-1)
        assert spread.seeds == (0, 1) and spread.split == "test"
        assert spread.figures == pytest.approx((own.test.pearson.estimate, pearson(observed, served)), abs=1e-4)
        assert spread.sd == pytest.approx(np.std(spread.figures, ddof=1))
        assert parent.data.metrics[f"{spread.role}_seeds_test_pearson_mean"] == pytest.approx(np.mean(spread.figures))
    assert parent.data.metrics["ensemble_test_pearson_low"] == pytest.approx(ensemble.test.pearson.low)
    assert parent.data.metrics["kmer_reference_test_pearson"] == pytest.approx(result.reference_test.estimate)


def test_bad_space_files_are_rejected_with_what_to_change(tmp_path):
    bad_range = tmp_path / "space.yaml"
    bad_range.write_text("channels: {type: int, low: 384, high: 96}\n")
    with pytest.raises(SpaceError, match=r"space.yaml: parameter 'channels': needs low < high, got low=384 high=96"):
        load_space(bad_range)

    heads = tmp_path / "heads.toml"
    heads.write_text("[channels]\ntype = \"int\"\nlow = 96\nhigh = 200\nstep = 48\n")
    with pytest.raises(SpaceError, match=r"high - low \(104\) must be a multiple of step 48"):
        load_space(heads)

    indivisible = tmp_path / "indivisible.toml"
    indivisible.write_text('[channels]\ntype = "categorical"\nchoices = [192, 200]\n')
    with pytest.raises(SpaceError, match=r"the point channels=200 makes an invalid config"):
        load_space(indivisible)

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("filters: {type: int, low: 1, high: 2}\n")
    with pytest.raises(SpaceError, match=r"'filters' is not a config field"):
        load_space(unknown)

    broken = tmp_path / "broken.yaml"
    broken.write_text("channels: [unclosed\n")
    with pytest.raises(SpaceError, match=r"broken.yaml: not valid YAML"):
        load_space(broken)

    no_baseline = parse_space({"learning_rate": {"type": "float", "low": 0.02, "high": 0.1}})
    from search.space import baseline_point

    with pytest.raises(SpaceError, match=r"must contain the baseline value 0.01"):
        baseline_point(no_baseline, {})

    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "search", "--space", str(bad_range)],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 2
    assert "needs low < high" in result.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("max_epochs, grace, factor", [(12, 1, 3), (4, 1, 2), (27, 3, 3), (5, 2, 4)])
def test_asha_rungs_are_the_epochs_ray_compares_trials_at(max_epochs, grace, factor):
    from ray.tune.schedulers import ASHAScheduler

    from search.results import asha_rungs

    scheduler = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace, reduction_factor=factor)
    ray_rungs = sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs)
    assert asha_rungs(max_epochs, grace, factor) == sorted(set(ray_rungs) | {max_epochs})


@pytest.mark.parametrize("name", ["default", "extended"])
def test_built_in_spaces_start_at_the_seed_and_can_move_both_ways_from_it(name):
    """The seed's five dimensions lie strictly inside their ranges; the extended recipe's may start at an end (0)."""
    from search.baseline import seed_config
    from search.space import baseline_point

    space = load_space(name)
    seed = seed_config()
    assert baseline_point(space, {}) == {field: seed[field] for field in space}
    for parameter in space.values():
        if parameter.type != "categorical" and parameter.name in load_space("default"):
            assert parameter.low < seed[parameter.name] < parameter.high, parameter


@pytest.mark.slow
def test_killed_search_resumes_with_one_mlflow_run_per_trial(tmp_path, search_data):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(SMALL_SPACE))
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [
        sys.executable, "-m", "search.cli", "search", "--data", str(search_data), "--name", "killed",
        "--experiment", "tests", "--tracking-uri", tracking_uri, "--storage-path", str(tmp_path / "ray_results"),
        "--space", str(space_file), "--num-trials", "4", "--max-concurrent", "2", "--gpus-per-trial", "0",
        "--scheduler", "none", "--max-epochs", "3", "--batch-size", "64", "--set", "jit_compile=false", "--register-as", "killed-best",
        "--no-legnet-reference", "--explain", "0",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    MlflowClient(tracking_uri).search_experiments()  # create the store's tables before two processes race to
    driver = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            assert driver.poll() is None, "the search ended before it could be killed"
            assert time.time() < deadline, "no trial finished within 5 minutes"
            if MlflowClient(tracking_uri).get_experiment_by_name("tests"):
                _, _, children = child_runs(tracking_uri, "killed")
                if sum(c.info.status == "FINISHED" for c in children) >= 1 and len(children) >= 2:
                    break
            time.sleep(1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    _, _, before = child_runs(tracking_uri, "killed")

    # A resume that changes what the study computes is refused, naming each flag with both values.
    changed = [*command, "--resume", "--max-epochs", "4", "--num-trials", "5", "--grace-period", "2"]
    for flag, value in (("--max-epochs", "3"), ("--num-trials", "4")):
        del changed[changed.index(flag):changed.index(flag) + 2]
    refused = subprocess.run(changed, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    # --grace-period changes nothing without ASHA, so it is no reason to refuse.
    assert line.endswith("these flags differ from the study's: --max-epochs was 3, now 4; --num-trials was 4, now 5. "
                         "Resume with the study's values, or start a new study with another --name"), line
    assert {c.info.run_id for c in child_runs(tracking_uri, "killed")[2]} == {c.info.run_id for c in before}

    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, env=env, timeout=900)
    assert resumed.returncode == 0
    client, parents, children = child_runs(tracking_uri, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags["ray_trial_id"] for c in children]
    assert len(children) == 4 and len(set(trial_ids)) == 4
    assert {c.info.run_id for c in before} <= {c.info.run_id for c in children}
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval_pearson")]
        assert sorted(steps) == [1, 2, 3], (child.data.tags["ray_trial_id"], steps)
        assert child.info.status == "FINISHED"
    assert (tmp_path / "killed-best_config.json").exists()


def test_asha_stops_a_poor_trial_early_but_never_the_baseline():
    """The baseline is what every trial is compared with, so it trains all its epochs."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from search.baseline import baseline_config
    from search.scheduler import StudyASHA

    fixed = {"epochs": 4, "seed": 0}
    asha = dict(time_attr="epoch", metric="search_score", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    baseline = dict(baseline_config(fixed), data_dir="data")

    def decisions(scheduler) -> dict:
        trials = {
            "good": Trial("__fake", config=dict(baseline, learning_rate=0.002), stub=True),
            "better": Trial("__fake", config=dict(baseline, learning_rate=0.003), stub=True),
            "baseline": Trial("__fake", config=baseline, stub=True),
            "poor": Trial("__fake", config=dict(baseline, learning_rate=0.05), stub=True),
        }
        scores = {"good": 0.5, "better": 0.6, "baseline": 0.1, "poor": 0.1}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        return {
            name: scheduler.on_trial_result(None, trial, {"epoch": 1, "search_score": scores[name]})
            for name, trial in trials.items()
        }

    plain = decisions(ASHAScheduler(**asha))
    assert plain["baseline"] == plain["poor"] == TrialScheduler.STOP  # what ASHA alone would do
    keeping = decisions(StudyASHA(fixed, **asha))
    assert keeping == dict(plain, baseline=TrialScheduler.CONTINUE)


def _decide(scheduler, results: list[tuple[str, dict, dict]]) -> dict:
    """Feed (name, config changes, result) in order to a scheduler; each trial's decision at its result."""
    from ray.tune.experiment import Trial

    from search.baseline import baseline_config

    base = dict(baseline_config({"epochs": 4, "seed": 0}), data_dir="data")
    trials = {}
    for name, changes, _ in results:
        if name not in trials:
            trials[name] = Trial("__fake", config=dict(base, **changes), stub=True)
            scheduler.on_trial_add(None, trials[name])
    return {name: scheduler.on_trial_result(None, trials[name], result) for name, _, result in results}


def test_a_collapsed_baseline_never_lifts_a_worse_trial_over_a_rung():
    """The seed's recipe at r -0.38 in the rung would lower the cut (to 0.06) and promote a trial at 0.1."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from search.scheduler import StudyASHA

    asha = dict(time_attr="epoch", metric="search_score", mode="max", max_t=4, grace_period=1, reduction_factor=2)
    results = [
        ("baseline", {}, {"epoch": 1, "search_score": -0.38, "best_eval_pearson": -0.38}),
        ("good", {"learning_rate": 0.002}, {"epoch": 1, "search_score": 0.5, "best_eval_pearson": 0.5}),
        ("weak", {"learning_rate": 0.003}, {"epoch": 1, "search_score": 0.1, "best_eval_pearson": 0.1}),
    ]
    plain = _decide(ASHAScheduler(**asha), results)
    assert plain["weak"] == TrialScheduler.CONTINUE  # lifted over the rung by the baseline's score
    ours = _decide(StudyASHA({"epochs": 4, "seed": 0}, **asha), results)
    assert ours == {"baseline": TrialScheduler.CONTINUE, "good": TrialScheduler.CONTINUE, "weak": TrialScheduler.STOP}


@pytest.mark.parametrize("grace", [1, 2])
def test_a_trial_without_signal_stops_at_its_grace_period_whatever_the_rung_holds(grace):
    from ray.tune.schedulers import TrialScheduler

    from search.scheduler import StudyASHA, early_stop_reason

    asha = dict(time_attr="epoch", metric="search_score", mode="max", max_t=4, grace_period=grace, reduction_factor=2)
    flat = {"epoch": grace, "search_score": -1.0, "best_eval_pearson": float("nan")}
    negative = {"epoch": grace, "search_score": -0.12, "best_eval_pearson": -0.12}
    zero = {"epoch": grace, "search_score": 0.0, "best_eval_pearson": 0.0}
    early = {"epoch": grace - 1, "search_score": -1.0, "best_eval_pearson": float("nan")}
    results = [
        ("flat", {"learning_rate": 0.002}, flat),  # first in its rung: plain ASHA would keep it
        ("negative", {"learning_rate": 0.003}, negative),
        ("zero", {"learning_rate": 0.004}, zero),
        ("baseline", {}, dict(flat)),
    ]
    if grace > 1:
        results.insert(0, ("early", {"learning_rate": 0.005}, early))
    decisions = _decide(StudyASHA({"epochs": 4, "seed": 0}, **asha), results)
    assert decisions == {
        **({"early": TrialScheduler.CONTINUE} if grace > 1 else {}),
        "flat": TrialScheduler.STOP, "negative": TrialScheduler.STOP, "zero": TrialScheduler.STOP,
        "baseline": TrialScheduler.CONTINUE,
    }
    assert early_stop_reason(flat, grace, 4) == (
        f"stopped: no signal by epoch {grace}, its grace period (constant or non-finite predictions)"
    )
    assert early_stop_reason(negative, grace, 4).endswith("(best eval r -0.120 <= 0)")
    assert early_stop_reason({"epoch": 2, "search_score": 0.4, "best_eval_pearson": 0.4}, 1, 4) == (
        "stopped early by ASHA after epoch 2"
    )
    assert early_stop_reason({"epoch": 4, "search_score": -1.0}, 1, 4) is None  # it ran to the end
    assert early_stop_reason({"epoch": 1, "search_score": -1.0, "diverged": 1}, 1, 4) is None


def test_asha_with_two_workers_halves_about_as_intended_and_stops_what_never_learns():
    """The measured setting of benchmarks/bench_asha.py: 2 asynchronous workers, 32 trials, 12 epochs,
    reduction factor 3 from epoch 1. Halving would keep 1/3 at epoch 3 and 1/9 at epoch 9; asynchronous
    promotion keeps a little more (the first trials at a rung have nothing to beat), never the whole rung."""
    import statistics
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_asha

    at_3, at_9, compute = [], [], []
    for seed in range(5):
        made = bench_asha.curves(32, 12, seed)
        full = bench_asha.replay(bench_asha.NoStopping(), made, 2, 12)
        run = bench_asha.replay(bench_asha.AshaRule(12, 1, 3), made, 2, 12)
        assert run["reached"][0] == 12  # the baseline runs to the end
        assert full["best"] - run["best"] < 0.03
        compute.append(run["spent"] / full["spent"])
        for curve, reached in zip(made[1:], run["reached"][1:]):
            if curve.score(1) <= 0:
                assert reached == 1  # no signal by the grace period: stopped there, whatever the rung holds
        share_3, share_9 = bench_asha.reaching(run["reached"], [3, 9])
        at_3.append(share_3)
        at_9.append(share_9)
    assert 0.25 <= statistics.median(at_3) <= 0.5 and statistics.median(at_9) <= 0.3, (at_3, at_9)
    assert statistics.median(compute) < 0.4, compute
