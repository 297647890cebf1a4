"""What a study prints at the end, the ensemble it picks, how the commands assemble a study, and Ctrl-C twice.

Results are hand-built records (no Ray, no MLflow, no training), so every figure the
table shows is known in advance; the command-line checks run the parser and the
config builders alone, or a CLI process that must stop before Ray starts.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from search.report import compute_line, ensemble_line, trial_table
from search.results import (
    Compute,
    EnsembleResult,
    Interval,
    StudyResult,
    TrialResult,
    rank_trials,
    summarise,
)
from search.ensemble import greedy_weights, select_ensemble

ROOT = Path(__file__).resolve().parents[1]
FOOTER = "; all are in the parent run's study/trials.csv"


def trial(trial_id, pearson, status="done", reason="", *, baseline=False, interval=None, vs_baseline=None,
          vs_kmer=None, searched=None, epochs=3, hours=0.25, logged=True, predicted=None) -> TrialResult:
    return TrialResult(
        trial_id=trial_id, run_id=None, baseline=baseline, status=status, reason=reason, best_eval_pearson=pearson,
        epochs_trained=epochs, device_hours=hours, startup_seconds=2.0, model_logged=logged, config={},
        searched=searched or {}, interval=interval, vs_baseline=vs_baseline, vs_kmer=vs_kmer, predicted=predicted,
    )


def study(trials, compute=None, reference=None) -> StudyResult:
    """A study result as `summarise` leaves it: trials best first."""
    return StudyResult(
        trials=tuple(rank_trials(trials)),
        compute=compute or Compute(1, 1, 0.0, math.nan),
        experiment_path="/ray_results/s",
        data_dir="/data",
        reference=reference,
    )


# The final table.

HEADER = (
    "rank  trial        eval r [95% CI]          vs baseline [95% CI]       vs k-mer [95% CI]          "
    "epochs   hours  status     config"
)


def test_table_ranks_finished_trials_and_puts_failures_last_with_their_reasons():
    trials = [
        trial("t_err", math.nan, "error", "error: ValueError: boom (trace: /r/error.txt)", epochs=0, hours=0.0,
              searched={"channels": 96, "learning_rate": 0.05}),
        trial("t_base", 0.5, baseline=True, interval=Interval(0.5, 0.45, 0.55), vs_baseline=Interval(0.0, 0.0, 0.0),
              vs_kmer=Interval(-0.05, -0.09, -0.01), searched={"channels": 192, "learning_rate": 0.01}),
        trial("t_best", 0.61234, interval=Interval(0.61234, 0.57, 0.65), vs_baseline=Interval(0.11234, 0.08, 0.14),
              vs_kmer=Interval(0.0612, 0.02, 0.1), searched={"channels": 144, "learning_rate": 0.0031622},
              hours=1.5),
        trial("t_flat", math.nan, "no signal", "all eval predictions are the constant 0.5",
              searched={"channels": 96, "learning_rate": 0.1}),
        trial("t_div", math.nan, "diverged", "diverged: train loss nan at epoch 1", epochs=1,
              searched={"channels": 384, "learning_rate": 0.1}),
    ]
    lines = trial_table(study(trials, Compute(10, 15, 1.875, 4.5, {1: 5, 3: 1}), reference=Interval(0.55, 0.5, 0.6)))
    assert lines == [
        HEADER,
        "   1  t_best       0.612 [0.570, 0.650]     +0.112 [+0.080, +0.140]    +0.061 [+0.020, +0.100]         "
        "3   1.500  done       channels=144, learning_rate=0.0031622",
        "   2  t_base       0.500 [0.450, 0.550]     +0.000 [+0.000, +0.000]    -0.050 [-0.090, -0.010]         "
        "3   0.250  done       [baseline] channels=192, learning_rate=0.01",
        "   -  t_err        nan                      -                          -                               "
        "0   0.000  error      channels=96, learning_rate=0.05  (error: ValueError: boom (trace: /r/error.txt))",
        "   -  t_flat       nan                      -                          -                               "
        "3   0.250  no signal  channels=96, learning_rate=0.1  (all eval predictions are the constant 0.5)",
        "   -  t_div        nan                      -                          -                               "
        "1   0.250  diverged   channels=384, learning_rate=0.1  (diverged: train loss nan at epoch 1)",
        "      k-mer ridge  0.550 [0.500, 0.600]     (ridge regression on 4- to 6-mer counts, same split)",
        "compute: 10 of 15 epochs (33% saved), 1.875 device-hours; trials reaching each ASHA rung: "
        "epoch 1: 5, epoch 3: 1; trial start-up 4.5 s on average",
    ]


def test_table_shows_a_trial_without_interval_by_its_pearson_and_a_failure_without_reason_bare():
    trials = [
        trial(None, 0.4321, searched={"optimizer": "adamw", "rc_augment": True}),
        trial("t_err", math.nan, "error", "", epochs=0),
    ]
    assert trial_table(study(trials))[1:3] == [
        "   1  ?            0.432                    -                          -                               "
        "3   0.250  done       optimizer=adamw, rc_augment=True",
        "   -  t_err        nan                      -                          -                               "
        "0   0.250  error      ",
    ]


def test_a_finished_trial_without_a_logged_model_is_not_ranked():
    trials = [trial("t_err", math.nan, "error", "boom"), trial("no_model", 0.95, logged=False), trial("good", 0.7)]
    assert [line.split()[:2] for line in trial_table(study(trials))[1:4]] == [
        ["1", "good"], ["-", "t_err"], ["-", "no_model"],
    ]


@pytest.mark.parametrize(
    "finished, counted",
    [(12, " (4 of them not done)"), (5, " (6 of them not done)"), (16, "")],
)
def test_table_of_16_trials_counts_the_6_not_shown_and_how_many_of_them_failed(finished, counted):
    done = [trial(f"d{number:02d}", 0.9 - number / 100) for number in range(finished)]
    failed = [trial(f"e{number:02d}", math.nan, "error", "boom") for number in range(16 - finished)]
    lines = trial_table(study(failed + done), top=10)
    shown = [f"d{number:02d}" for number in range(min(finished, 10))] + [f"e{number:02d}" for number in range(10 - finished)]
    assert [line.split()[1] for line in lines[1:11]] == shown
    assert lines[11] == "      ... 6 more trials not shown" + counted + FOOTER
    assert lines[12].startswith("compute: ") and len(lines) == 13


def test_table_of_eleven_trials_names_the_one_left_out_and_of_ten_prints_no_such_line():
    eleven = [trial(f"d{number:02d}", 0.9 - number / 100) for number in range(11)]
    lines = trial_table(study(eleven), top=10)
    assert lines[11] == "      ... 1 more trial not shown" + FOOTER
    lines = trial_table(study(eleven[:10]), top=10)
    assert len(lines) == 12 and lines[-1].startswith("compute: ")
    assert not any("not shown" in line for line in lines)
    assert [line.split()[0] for line in lines[1:11]] == [str(rank) for rank in range(1, 11)]


@pytest.mark.parametrize(
    "compute, line",
    [
        (Compute(10, 15, 1.875, 4.5, {1: 5, 3: 1}),
         "compute: 10 of 15 epochs (33% saved), 1.875 device-hours; trials reaching each ASHA rung: "
         "epoch 1: 5, epoch 3: 1; trial start-up 4.5 s on average"),
        (Compute(4, 4, 0.5, math.nan), "compute: 4 of 4 epochs (0% saved), 0.500 device-hours"),
        (Compute(0, 0, 0.0, 12.26, {}), "compute: 0 of 0 epochs (0% saved), 0.000 device-hours; "
         "trial start-up 12.3 s on average"),
        (Compute(10, 40, 0.002, 1.0), "compute: 10 of 40 epochs (75% saved), 0.002 device-hours; "
         "trial start-up 1.0 s on average"),
    ],
)
def test_compute_line_states_epochs_the_share_saved_rungs_and_start_up(compute, line):
    assert compute_line(compute) == line


def test_ensemble_line_gives_members_weights_the_difference_to_the_best_and_where_it_was_registered():
    members = (trial("a", 0.7), trial("b", 0.6))
    ensemble = EnsembleResult(
        members, (0.48, 0.32), Interval(0.7123, 0.68, 0.74), Interval(0.0123, -0.004, 0.029), kmer_weight=0.2
    )
    assert ensemble_line(ensemble, "models:/dream-hpo-best-ensemble/2") == (
        "ensemble (0.48 a, 0.32 b, 0.20 k-mer reference; chosen on validation): eval r 0.712 [0.680, 0.740], "
        "vs the single best +0.012 [-0.004, +0.029]; registered as models:/dream-hpo-best-ensemble/2"
    )
    assert ensemble_line(EnsembleResult(members, (0.5, 0.5), Interval(0.5, 0.4, 0.6), Interval(-0.2, -0.3, -0.1)), None) == (
        "ensemble (0.50 a, 0.50 b; chosen on validation): eval r 0.500 [0.400, 0.600], vs the single best -0.200 [-0.300, -0.100]"
    )


# The ensemble: greedy selection with replacement on validation predictions.


@pytest.fixture(scope="module")
def scored():
    """Eval targets, a k-mer reference and six trials whose best eval Pearson is that of their predictions."""
    rng = np.random.default_rng(7)
    observed = rng.gamma(2.0, 2.0, size=400)

    def noisy(scale):
        return observed + rng.normal(0, scale, size=observed.size)

    def scored_trial(trial_id, predicted, **kwargs):
        return trial(trial_id, float(np.corrcoef(observed, predicted)[0, 1]), predicted=predicted, **kwargs)

    trials = [
        scored_trial("error_best", noisy(0.1), status="error", reason="lost worker"),
        scored_trial("c", noisy(3.0)),
        scored_trial("no_model", noisy(0.2), logged=False),
        scored_trial("a", noisy(1.0), baseline=True),
        trial("diverged", math.nan, "diverged", "diverged: train loss nan at epoch 1", epochs=1),
        scored_trial("d", noisy(5.0)),
        scored_trial("b", noisy(2.0)),
    ]
    kmer = {"predicted": noisy(4.0), "pearson": 0.5, "weights": np.zeros(4), "intercept": 0.0}
    return observed, kmer, trials


def summarised(scored, ensemble_size, trials=None):
    observed, kmer, all_trials = scored
    return summarise(
        all_trials if trials is None else trials, observed=observed, kmer=kmer, max_epochs=3, rungs=[1, 3],
        ensemble_size=ensemble_size, experiment_path="/ray_results/s", data_dir="/data",
    )


def test_greedy_selection_finds_the_blend_that_is_known_to_be_best():
    """y = 2u + v: u and v blended 2:1 predict it exactly, in three picks (u, v, u); noise is never picked."""
    rng = np.random.default_rng(0)
    u, v, noise = rng.normal(size=(3, 500))
    observed = 2 * u + v
    for rounds in (3, 4, 12):
        weights = greedy_weights([v, noise, u], observed, rounds)
        np.testing.assert_allclose(weights, [1 / 3, 0, 2 / 3])
    # Two picks stop short of it: u then v, at equal weight.
    np.testing.assert_allclose(greedy_weights([v, noise, u], observed, 2), [0.5, 0, 0.5])


def test_greedy_selection_keeps_the_best_round_and_one_model_when_nothing_improves_on_it():
    rng = np.random.default_rng(1)
    observed = rng.normal(size=300)
    exact, worse = observed.copy(), observed + rng.normal(0, 1, 300)
    np.testing.assert_allclose(greedy_weights([worse, exact], observed, 10), [0, 1])


def kmer_reference_of(predicted):
    return {"predicted": predicted, "pearson": 0.0, "weights": np.arange(4.0), "intercept": 0.5}


def test_the_ensemble_weights_a_trial_and_the_kmer_reference_and_scores_their_blend():
    """A trial that sees one half of the signal and a k-mer model that sees the other: the k-mer reference is a member."""
    rng = np.random.default_rng(2)
    u, v, noise = rng.normal(size=(3, 400))
    observed = 2 * u + v
    trials = tuple(
        rank_trials([
            trial("deep", float(np.corrcoef(observed, u)[0, 1]), predicted=u),
            trial("weak", float(np.corrcoef(observed, u + 3 * noise)[0, 1]), predicted=u + 3 * noise),
        ])
    )
    ensemble = select_ensemble(trials, observed, kmer_reference_of(v), rounds=10)
    assert ensemble.member_ids == ["deep"]
    assert ensemble.weights == pytest.approx((2 / 3,)) and ensemble.kmer_weight == pytest.approx(1 / 3)
    assert ensemble.interval.estimate == pytest.approx(1.0)
    assert ensemble.vs_best.estimate == pytest.approx(1.0 - np.corrcoef(observed, u)[0, 1])
    np.testing.assert_array_equal(ensemble.kmer.weights, np.arange(4.0))
    assert ensemble.composition == "0.67 deep, 0.33 k-mer reference"


def test_summarise_selects_the_ensemble_among_rankable_trials_only(scored):
    observed, _, trials = scored
    result = summarised(scored, 25)
    assert [t.trial_id for t in result.trials] == ["a", "b", "c", "d", "error_best", "no_model", "diverged"]
    assert result.best.trial_id == "a"
    ensemble = result.ensemble
    assert set(ensemble.member_ids) <= {"a", "b", "c", "d"} and ensemble.member_ids[0] == "a"
    by_id = {t.trial_id: t for t in trials}
    blend = sum(w * by_id[m].predicted for m, w in zip(ensemble.member_ids, ensemble.weights))
    blend = blend + ensemble.kmer_weight * np.asarray(scored[1]["predicted"])
    expected = np.corrcoef(observed, blend)[0, 1]
    assert sum(ensemble.weights) + ensemble.kmer_weight == pytest.approx(1.0)
    assert ensemble.interval.estimate == pytest.approx(expected, rel=1e-9)
    assert expected > by_id["a"].best_eval_pearson
    assert ensemble.interval.low < expected < ensemble.interval.high
    assert ensemble.vs_best.estimate == pytest.approx(expected - by_id["a"].best_eval_pearson, rel=1e-9)


@pytest.mark.parametrize("size", [0, 1])
def test_ensemble_size_0_and_1_give_no_ensemble(scored, size):
    observed, kmer, _ = scored
    result = summarised(scored, size)
    assert result.ensemble is None
    assert select_ensemble(result.trials, observed, kmer, size) is None
    assert result.best.trial_id == "a"


def test_no_ensemble_when_selection_keeps_a_single_model():
    rng = np.random.default_rng(3)
    observed = rng.normal(size=200)
    trials = (trial("exact", 1.0, predicted=observed.copy()), trial("failed", 0.9, status="error", predicted=observed))
    assert select_ensemble(trials, observed, kmer_reference_of(rng.normal(size=200)), 25) is None


def test_summarise_scores_each_trial_against_the_baseline_and_the_kmer_reference(scored):
    observed, kmer, _ = scored
    result = summarised(scored, 3)
    by_id = {t.trial_id: t for t in result.trials}
    assert by_id["a"].vs_baseline == Interval(0.0, 0.0, 0.0)
    assert by_id["b"].vs_baseline.estimate == pytest.approx(
        by_id["b"].best_eval_pearson - by_id["a"].best_eval_pearson, rel=1e-9
    )
    assert by_id["c"].vs_kmer.estimate == pytest.approx(
        by_id["c"].best_eval_pearson - np.corrcoef(observed, kmer["predicted"])[0, 1], rel=1e-9
    )
    assert by_id["diverged"].interval is None and by_id["diverged"].vs_kmer is None
    assert result.reference.estimate == 0.5
    assert result.compute == Compute(19, 21, 7 * 0.25, 2.0, {1: 7, 3: 6})


def test_cli_refuses_a_negative_ensemble_size_in_one_line_before_ray_starts(tmp_path, make_synthetic_data):
    data = make_synthetic_data(400, seed=3, eval_size=100)
    script = (
        "import runpy, sys\n"
        "sys.argv = ['dream-hpo', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('search.cli', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('ray started:', 'ray' in sys.modules and sys.modules['ray'].is_initialized())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "search", "--data", str(data), "--ensemble-size", "-1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "dream-hpo search: error: --ensemble-size -1: must be >= 0 (0 or 1: no ensemble)"
    ]
    assert result.stdout.splitlines() == ["ray started: False"]
    assert list(tmp_path.iterdir()) == []


# How the commands assemble a study.


def parse(*argv: str):
    from search.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_quick_baseline_takes_the_quick_epochs_and_batch_size():
    from search.cli import baseline_config
    from search.settings import QUICK

    config = baseline_config(parse("baseline", "--quick", "--name", "b"), Path("/data"))
    assert config.fixed == {"seed": 0, "epochs": QUICK["epochs"], "batch_size": QUICK["batch_size"]}
    assert (QUICK["epochs"], QUICK["batch_size"]) == (4, 256)
    assert config.overrides == {} and config.derived_from is None
    assert (config.name, config.num_trials, config.space, config.data_dir) == ("b", 1, None, Path("/data"))


def test_baseline_without_quick_keeps_the_seeds_batch_size_unless_given():
    from search.cli import baseline_config
    from search.settings import EMBEDDED

    config = baseline_config(parse("baseline", "--name", "b"), Path("/data"))
    assert config.fixed == {"seed": 0, "epochs": EMBEDDED["epochs"]}
    config = baseline_config(
        parse("baseline", "--name", "b", "--epochs", "2", "--batch-size", "32", "--seed", "7"), Path("/data")
    )
    assert config.fixed == {"seed": 7, "epochs": 2, "batch_size": 32}
    config = baseline_config(parse("baseline", "--quick", "--name", "b", "--batch-size", "16"), Path("/data"))
    assert config.fixed == {"seed": 0, "epochs": 4, "batch_size": 16}


def test_epochs_0_is_checked_not_replaced_by_the_default():
    from search.cli import baseline_config, search_config
    from search.settings import StudyError
    from search.space import load_space

    with pytest.raises(StudyError, match=r"^--epochs 0: must be >= 1$"):
        baseline_config(parse("baseline", "--quick", "--name", "b", "--epochs", "0"), Path("/data"))
    with pytest.raises(StudyError, match=r"^--max-epochs 0: must be >= 1$"):
        search_config(parse("search", "--quick", "--name", "s", "--max-epochs", "0"), Path("/data"), load_space(None))


def test_baseline_set_fields_are_overrides_of_the_one_trial():
    from search.cli import baseline_config

    config = baseline_config(
        parse("baseline", "--name", "b", "--set", "optimizer=adamw", "--set", "learning_rate=0.003",
              "--set", "jit_compile=false"),
        Path("/data"),
    )
    assert config.overrides == {"optimizer": "adamw", "learning_rate": 0.003, "jit_compile": False}
    assert config.fixed == {"seed": 0, "epochs": 10}


def test_a_config_file_gives_overrides_but_the_command_decides_epochs_seed_and_batch_size(tmp_path, monkeypatch):
    import json

    from search.cli import baseline_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "best.json").write_text(json.dumps({
        "epochs": 40, "seed": 3, "batch_size": 512, "channels": 96, "learning_rate": 0.02,
        "optimizer": "adamw", "data_dir": "/somewhere/else",
    }))
    args = parse("baseline", "--name", "b", "--config", "best.json", "--epochs", "2", "--batch-size", "64",
                 "--set", "channels=144")
    config = baseline_config(args, Path("/data"))
    assert config.fixed == {"seed": 0, "epochs": 2, "batch_size": 64}
    assert config.overrides == {"channels": 144, "learning_rate": 0.02, "optimizer": "adamw"}
    assert config.derived_from == str(tmp_path.resolve() / "best.json")
    # Without --batch-size or --quick the file's batch size is the one trained: a searched batch size retrains as it was.
    config = baseline_config(parse("baseline", "--name", "b", "--config", "best.json"), Path("/data"))
    assert config.fixed == {"seed": 0, "epochs": 10}
    assert config.overrides == {"batch_size": 512, "channels": 96, "learning_rate": 0.02, "optimizer": "adamw"}


def test_quick_search_takes_the_quick_trials_concurrency_epochs_and_batch_size():
    from search.cli import search_config
    from search.settings import QUICK_SEARCH
    from search.space import load_space

    space = load_space(None)
    config = search_config(parse("search", "--quick", "--name", "s"), Path("/data"), space)
    assert config.fixed == {"epochs": QUICK_SEARCH["epochs"], "seed": 0, "batch_size": QUICK_SEARCH["batch_size"]}
    assert (config.num_trials, config.max_concurrent) == (QUICK_SEARCH["num_trials"], QUICK_SEARCH["max_concurrent"])
    assert (config.num_trials, config.max_concurrent, config.fixed["epochs"]) == (4, 2, 3)
    assert config.space is space and config.overrides == {}
    assert (config.scheduler, config.grace_period, config.reduction_factor) == ("asha", 1, 3)
    assert (config.ensemble_size, config.register_as) == (25, "dream-hpo-best")


def test_search_flags_win_over_the_defaults():
    from search.cli import search_config
    from search.space import load_space

    args = parse("search", "--name", "s")
    config = search_config(args, Path("/data"), load_space(None))
    assert config.fixed == {"epochs": 10, "seed": 0}
    assert (config.num_trials, config.max_concurrent) == (20, None)
    args = parse("search", "--quick", "--name", "s", "--num-trials", "6", "--max-concurrent", "1", "--max-epochs",
                 "5", "--batch-size", "64", "--seed", "9", "--ensemble-size", "0", "--scheduler", "none",
                 "--set", "optimizer=adamw", "--set", "weight_decay=0.01")
    config = search_config(args, Path("/data"), load_space(None))
    assert config.fixed == {"epochs": 5, "seed": 9, "batch_size": 64, "optimizer": "adamw", "weight_decay": 0.01}
    assert (config.num_trials, config.max_concurrent, config.ensemble_size, config.scheduler) == (6, 1, 0, "none")
    assert config.overrides == {} and config.seed == 9


def test_a_space_that_searches_batch_size_leaves_it_out_of_the_fixed_fields():
    from search.cli import search_config
    from search.space import load_space

    space = load_space("extended")
    assert "batch_size" in space
    config = search_config(parse("search", "--quick", "--name", "s"), Path("/data"), space)
    assert config.fixed == {"epochs": 3, "seed": 0}


@pytest.mark.parametrize(
    "command, field, flag",
    [
        ("search", "epochs", "--epochs (baseline) or --max-epochs (search)"),
        ("baseline", "epochs", "--epochs (baseline) or --max-epochs (search)"),
        ("search", "seed", "--seed"),
        ("baseline", "batch_size", "--batch-size"),
        ("search", "batch_size", "--batch-size"),
    ],
)
def test_set_of_a_field_with_its_own_flag_is_refused_naming_the_flag(capsys, command, field, flag):
    with pytest.raises(SystemExit) as exit:
        parse(command, "--set", f"{field}=3")
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dream-hpo {command}: error: argument --set: '{field}' has its own flag: use {flag} instead of --set"
    )


def test_set_reads_the_float_its_help_gives_as_an_example():
    assert parse("search", "--set", "weight_decay=1e-3").set == [("weight_decay", 0.001)]
    assert parse("search", "--set", "optimizer=adamw", "--set", "rc_augment=true").set == [
        ("optimizer", "adamw"), ("rc_augment", True)
    ]


def test_a_space_file_reads_1e_3_as_a_number(tmp_path):
    from search.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("learning_rate: {type: float, low: 1e-3, high: 1E-1, log: true}\n")
    parameter = load_space(path)["learning_rate"]
    assert (parameter.low, parameter.high) == (0.001, 0.1)


def test_batch_size_flag_with_a_space_that_searches_batch_size_is_refused_not_dropped():
    from search.cli import search_config
    from search.space import load_space

    with pytest.raises(ValueError, match=r"^--batch-size 64: this study's space searches batch_size; drop --batch-size"):
        search_config(parse("search", "--batch-size", "64"), Path("/data"), load_space("extended"))


# Ctrl-C twice.

GRACEFUL = """
import os, signal, sys, time
from search.runtime import GracefulInterrupt

usr1 = []

def on_usr1(signum, frame):
    usr1.append(signum)
    print(f"SIGUSR1 happened={interrupt.happened}", flush=True)

signal.signal(signal.SIGUSR1, on_usr1)
with GracefulInterrupt() as quiet:
    pass
print(f"no Ctrl-C: happened={quiet.happened} restored={signal.getsignal(signal.SIGINT) is signal.default_int_handler}",
      flush=True)
try:
    with GracefulInterrupt() as interrupt:
        print(f"ready tune_sigint_disabled={os.environ.get('TUNE_DISABLE_SIGINT_HANDLER')}", flush=True)
        while True:  # stands for tuner.fit(), which goes on until it has saved its state
            time.sleep(0.02)
except KeyboardInterrupt:
    print(f"KeyboardInterrupt happened={interrupt.happened} usr1={len(usr1)}", flush=True)
print(f"restored={signal.getsignal(signal.SIGINT) is signal.default_int_handler}", flush=True)
"""


def test_first_ctrl_c_asks_tune_to_stop_and_the_second_interrupts_at_once():
    # A job started in the background inherits SIGINT ignored, and Python then installs no
    # handler of its own; the child starts as a terminal's foreground command would.
    child = subprocess.Popen(
        [sys.executable, "-c", GRACEFUL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in child.stdout], daemon=True).start()

    def next_line() -> str:
        try:
            return lines.get(timeout=30)
        except queue.Empty:
            child.kill()
            pytest.fail(f"no line from the child; stderr: {child.stderr.read()}")

    try:
        assert next_line() == "no Ctrl-C: happened=False restored=True"
        assert next_line() == "ready tune_sigint_disabled=1"
        child.send_signal(signal.SIGINT)
        assert next_line() == "SIGUSR1 happened=True"
        child.send_signal(signal.SIGINT)
        assert next_line() == "KeyboardInterrupt happened=True usr1=1"
        assert next_line() == "restored=True"
        assert child.wait(timeout=30) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.parametrize("best, status", [(0.31, "done"), (0.0, "no signal"), (-0.38, "no signal"), (math.nan, "no signal")])
def test_a_trial_at_or_below_zero_correlation_has_no_signal_and_is_not_ranked(best, status):
    from search.results import best_trial, trial_status

    assert trial_status({"best_eval_pearson": best}, errored=False) == status
    ranked = best_trial([trial("t", best, status)])
    assert (ranked is not None) == (status == "done")


def test_the_table_shows_a_test_column_only_for_the_rows_scored_on_test():
    from dataclasses import replace

    from search.report import splits_line, test_line
    from search.results import TestScore

    best = trial("t_best", 0.61, interval=Interval(0.61, 0.57, 0.65), searched={"channels": 144})
    best = replace(best, test=TestScore(Interval(0.58, 0.52, 0.63), Interval(0.2, 0.1, 0.3), Interval(-0.01, -0.04, 0.02)))
    other = trial("t_other", 0.55, interval=Interval(0.55, 0.5, 0.6), searched={"channels": 96})
    without = study([best, other], reference=Interval(0.6, 0.55, 0.65))
    assert "test r" not in trial_table(without)[0] and test_line(replace(without, trials=(other,))) is None
    scored = replace(without, test_size=90, reference_test=Interval(0.59, 0.5, 0.66))
    lines = trial_table(scored)
    assert lines[0].startswith("rank  trial        eval r [95% CI]          test r [95% CI]          vs baseline")
    assert lines[1].split()[1:8] == ["t_best", "0.610", "[0.570,", "0.650]", "0.580", "[0.520,", "0.630]"]
    assert lines[2].split()[1:6] == ["t_other", "0.550", "[0.500,", "0.600]", "-"]
    assert "k-mer ridge  0.600 [0.550, 0.650]     0.590 [0.500, 0.660]" in lines[3]
    assert test_line(scored) == (
        "best trial on the test split (90 sequences, scored once): r 0.580 [0.520, 0.630], "
        "vs baseline +0.200 [+0.100, +0.300], vs k-mer reference -0.010 [-0.040, +0.020]"
    )
    manifest = {"train_size": 720, "eval_size": 90, "test_size": 90}
    assert splits_line(manifest) == "720 training, 90 validation (every choice), 90 test (scored once, after the study has chosen)"
    assert splits_line({"train_size": 810, "eval_size": 90}).endswith("; no test split, so every figure is a validation figure")


def test_the_best_config_file_records_both_figures_and_retrains_without_them(tmp_path):
    from search.baseline import seed_config
    from search.cli import load_trial_config
    from search.results import TestScore, write_best_config

    config = seed_config()
    best = trial("a", 0.71, interval=Interval(0.71, 0.66, 0.75))
    best = TrialResult(**{**best.__dict__, "config": config, "test": TestScore(Interval(0.64, 0.6, 0.68))})
    path = tmp_path / "best_config.json"
    write_best_config(best, path, test_size=637)
    figures = json.loads(path.read_text())["figures"]
    assert figures == {
        "validation_pearson": 0.71, "validation_pearson_low": 0.66, "validation_pearson_high": 0.75,
        "test_pearson": 0.64, "test_pearson_low": 0.6, "test_pearson_high": 0.68, "test_size": 637,
    }
    assert load_trial_config(path) == {key: value for key, value in config.items()}


def test_seed_lines_show_each_seed_the_mean_and_the_sample_sd_leaving_failed_seeds_out():
    from search.report import seed_lines
    from search.results import SeedSpread

    spreads = (
        SeedSpread("best", (0, 1, 2), (0.64, 0.60, math.nan), "test"),
        SeedSpread("baseline", (0, 1), (0.2, 0.3), "validation"),
    )
    result = StudyResult((), Compute(1, 1, 0.0, math.nan), "/r", "/d", seeds=spreads)
    assert seed_lines(result) == [
        "best trial over 3 seeds, test r: 0.640, 0.600, failed (seed 0 is the study's); mean 0.620, sd 0.028",
        "baseline over 2 seeds, validation r: 0.200, 0.300 (seed 0 is the study's); mean 0.250, sd 0.071",
    ]
    assert spreads[0].metrics() == pytest.approx(
        {"best_seeds_test_pearson_mean": 0.62, "best_seeds_test_pearson_sd": 0.02 * 2**0.5, "best_seeds": 2}
    )


def test_confirm_seeds_default_to_two_from_sixteen_trials_and_refuse_a_negative_count():
    from search.cli import search_config
    from search.settings import StudyError
    from search.space import load_space

    space = load_space(None)

    def seeds(*argv):
        return search_config(parse("search", "--name", "s", *argv), Path("/data"), space).seeds_to_confirm

    assert (seeds("--quick"), seeds("--num-trials", "15"), seeds("--num-trials", "16")) == (0, 0, 2)
    assert (seeds("--num-trials", "16", "--confirm-seeds", "0"), seeds("--quick", "--confirm-seeds", "3")) == (0, 3)
    with pytest.raises(StudyError, match=r"^--confirm-seeds -1: must be >= 0 \(0: no extra seeds\)$"):
        search_config(parse("search", "--name", "s", "--confirm-seeds", "-1"), Path("/data"), space)
