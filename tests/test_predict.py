"""Predict and evaluate: submission files, challenge scores, and the served pyfunc.

The expected values here are computed without dream-hpo's own encoding or
metrics: one-hot by hand from the sequence strings, correlations with SciPy
(what the organisers' evaluation used).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from data_prep.challenge_subsets import read_subsets
from data_prep.dream_format import DreamFormatError
from data_prep.synth import write_synthetic
from model import ModelConfig, build_model, save_model
from model.challenge_scores import challenge_scores
from search.cli import main

TINY = ModelConfig(channels=48, transformer_layers=1, num_heads=8, key_size=8, tower_blocks=2)
BASES = "ACGT"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> Path:
    import keras

    keras.utils.set_random_seed(3)
    return save_model(build_model(TINY), tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture(scope="module")
def keras_model(keras_file):
    from model import load_model

    return load_model(keras_file)


@pytest.fixture(scope="module")
def strand_keras_file(tmp_path_factory) -> Path:
    """A model trained with rc_augment: the core wrapped in StrandAveraged, as a study saves it."""
    import keras

    keras.utils.set_random_seed(4)
    from model import InputConfig

    return save_model(build_model(TINY, InputConfig(rc_augment=True)), tmp_path_factory.mktemp("strand") / "strand.keras")


@pytest.fixture(scope="module")
def strand_model(strand_keras_file):
    from model import load_model

    return load_model(strand_keras_file)


def expected_predictions(keras_model, sequences: list[str]) -> np.ndarray:
    """One-hot by hand: cut or N-pad to 110, keep positions 15..99, N as a zero row."""
    one_hot = np.zeros((len(sequences), 85, 4), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        fixed = sequence.upper()[:110].ljust(110, "N")
        for column, base in enumerate(fixed[15:100]):
            if base in BASES:
                one_hot[row, column, BASES.index(base)] = 1.0
    return np.asarray(keras_model.predict(one_hot, verbose=0)).reshape(-1)


@pytest.fixture(scope="module")
def sequences_file(tmp_path_factory) -> tuple[Path, list[str]]:
    """A test file as users bring it: mixed lengths, some N, some lowercase, some lines with no second column."""
    root = tmp_path_factory.mktemp("test_file")
    write_synthetic(root / "synthetic.txt", 60, seed=11)
    lines = (root / "synthetic.txt").read_text().splitlines()
    sequences = [line.split("\t")[0] for line in lines]
    sequences[1] = sequences[1].lower()
    sequences[2] = sequences[2][:40] + "NNNN" + sequences[2][44:]
    sequences[3] = sequences[3][:70]
    text = "".join(f"{s}\t0\n" if i % 3 else f"{s}\n" for i, s in enumerate(sequences))
    (root / "test_sequences.txt").write_text(text)
    return root / "test_sequences.txt", sequences


def predict(model, sequences, out, *options) -> int:
    """`dream-hpo predict` in this process; returns its exit code."""
    return main(["predict", "--model", str(model), "--sequences", str(sequences), "--out", str(out), *options])


def no_leftovers(directory: Path, keep: set[str]) -> bool:
    return {p.name for p in directory.iterdir()} == keep


def test_tsv_and_json_submissions_keep_input_order_and_match_the_keras_model(
    tmp_path, keras_file, keras_model, sequences_file, capsys
):
    path, sequences = sequences_file
    expected = expected_predictions(keras_model, sequences)

    tsv = tmp_path / "submission.tsv"
    assert predict(keras_file, path, tsv, "--batch-size", "16") == 0
    assert "predict [" in capsys.readouterr().err
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert [r[0] for r in rows] == sequences
    np.testing.assert_allclose([float(r[1]) for r in rows], expected, rtol=1e-5, atol=1e-6)

    submission = tmp_path / "leaderboard.json"
    assert predict(keras_file, path, submission) == 0
    loaded = json.loads(submission.read_text())
    assert list(loaded) == [str(i) for i in range(len(sequences))]
    np.testing.assert_allclose(list(loaded.values()), [float(r[1]) for r in rows], rtol=1e-6)

    forced = tmp_path / "also.json"
    assert predict(keras_file, path, forced, "--format", "tsv") == 0
    assert forced.read_text() == tsv.read_text()
    assert no_leftovers(tmp_path, {"submission.tsv", "leaderboard.json", "also.json"})


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("ACGTACGT\nACGXACGT\nACGT\n", 2, "character 'X' at position 4 is not one of A, C, G, T, N"),
        ("ACGTACGT\n\nACGT\n", 2, "empty line"),
        ("ACGT\t1\tfoo\n", 1, "expected 1 or 2 columns, found 3"),
    ],
)
def test_bad_input_names_file_and_line_and_leaves_the_old_output_alone(
    tmp_path, keras_file, text, line, message, capsys
):
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    out = tmp_path / "submission.tsv"
    out.write_text("previous submission\n")
    code = predict(keras_file, bad, out)
    error = capsys.readouterr().err
    assert code == 2
    assert f"{bad}, line {line}: {message}" in error
    assert out.read_text() == "previous submission\n"
    assert no_leftovers(tmp_path, {"bad.txt", "submission.tsv"})

    fresh = tmp_path / "fresh.json"
    assert predict(keras_file, bad, fresh) == 2
    assert not fresh.exists()
    assert no_leftovers(tmp_path, {"bad.txt", "submission.tsv"})


def test_a_missing_model_or_unknown_model_spec_is_refused_before_reading(tmp_path, sequences_file, capsys):
    path, _ = sequences_file
    out = tmp_path / "out.tsv"
    assert predict(tmp_path / "none.keras", path, out) == 2
    assert "none.keras: no such model file" in capsys.readouterr().err
    assert predict("best-model", path, out) == 2
    assert "give an MLflow run id" in capsys.readouterr().err
    assert predict(tmp_path / "none.keras", path, out, "--batch-size", "0") == 2
    assert capsys.readouterr().err == (
        "dream-hpo predict: error: batch_size must be a whole number of at least 1, got 0\n"
    )
    assert not out.exists()


def unloadable_models(directory: Path, keras_file: Path) -> dict[str, tuple[Path, str]]:
    """Models that cannot load, and the cause each error must give: a truncated file, an unknown layer."""
    import zipfile

    truncated = directory / "truncated.keras"
    truncated.write_bytes(keras_file.read_bytes()[:5000])
    unknown = directory / "unknown_layer.keras"
    with zipfile.ZipFile(keras_file) as source, zipfile.ZipFile(unknown, "w") as renamed:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b"RelativeMultiHeadAttention", b"NoSuchAttention")
            renamed.writestr(item, data)
    return {
        "truncated": (truncated, f"{truncated} is not a zip archive, as .keras files are"),
        "unknown layer": (unknown, "Could not locate class 'NoSuchAttention'. Make sure custom classes"),
    }


@pytest.mark.parametrize("kind", ["truncated", "unknown layer"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_model_that_does_not_load_is_one_line_naming_it_and_the_cause(
    tmp_path, keras_file, sequences_file, capsys, kind, command
):
    model, message = unloadable_models(tmp_path, keras_file)[kind]
    measured = tmp_path / "measured.txt"
    measured.write_text("".join(f"{s}\t{i}\n" for i, s in enumerate(sequences_file[1])))
    argv = [command, "--model", str(model), "--sequences", str(measured)]
    argv += ["--out", str(tmp_path / "out.tsv")] if command == "predict" else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.splitlines()[-1]
    assert last.startswith(f"dream-hpo {command}: error: cannot load model {model}: {message}"), err
    # The progress bar of the test file, then that one line: no traceback and no model config.
    assert err.count("\n") == 2 and "config" not in err.lower() and not (tmp_path / "out.tsv").exists()


def test_an_unexpected_failure_in_predict_is_one_line_with_its_type(
    tmp_path, keras_file, sequences_file, monkeypatch, capsys
):
    def fail(*args, **kwargs):
        raise RuntimeError("out of device memory\nallocator dump: ...")

    monkeypatch.setattr("model.inference.Blend.predict", fail)
    assert predict(keras_file, sequences_file[0], tmp_path / "out.tsv") == 1
    assert capsys.readouterr().err.splitlines()[-1] == "dream-hpo predict: error: RuntimeError: out of device memory"


def test_predict_refuses_to_write_over_its_input(tmp_path, keras_file, sequences_file, capsys):
    """The same file by name, through a symbolic link and through a hard link."""
    original, _ = sequences_file
    test = tmp_path / "test.txt"
    test.write_bytes(original.read_bytes())
    (tmp_path / "link.txt").symlink_to(test)
    os.link(test, tmp_path / "hard.txt")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for out in (test, tmp_path / "link.txt", tmp_path / "hard.txt", tmp_path / "." / "test.txt"):
        assert predict(keras_file, test, out) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"dream-hpo predict: error: --out {out} is the --sequences file; give another file name, "
            "predict never overwrites its input"
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def not_mlflow(path: Path) -> str:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("create table notes (text)")
        connection.commit()
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    "uri, message",
    [
        ("sqlite:///{tmp}/mlfow.db", "--tracking-uri sqlite:///{tmp}/mlfow.db: no MLflow store, {tmp}/mlfow.db does not exist"),
        ("sqlite:///mlflow.db", "--tracking-uri sqlite:///mlflow.db: no MLflow store, {tmp}/mlflow.db does not exist"),
        ("sqllite:///{tmp}/mlflow.db", "--tracking-uri sqllite:///{tmp}/mlflow.db: unknown scheme 'sqllite'"),
        ("sqlite:mlflow.db", "--tracking-uri sqlite:mlflow.db: a SQLite store is sqlite:///RELATIVE/PATH"),
        ("{tmp}/mlruns", "--tracking-uri {tmp}/mlruns: no MLflow store, {tmp}/mlruns is not a directory"),
        ("file://{tmp}/mlruns", "--tracking-uri file://{tmp}/mlruns: no MLflow store, {tmp}/mlruns is not a directory"),
        ("not_mlflow", "{tmp}/notes.db is an SQLite database without MLflow's tables"),
        (None, "the default store sqlite:///{tmp}/mlflow.db: no MLflow store, {tmp}/mlflow.db does not exist"),
        ("env", "MLFLOW_TRACKING_URI sqlite:///{tmp}/typo.db: no MLflow store, {tmp}/typo.db does not exist"),
    ],
    ids=["missing sqlite file", "relative missing", "mistyped scheme", "two slashes short", "missing directory",
         "missing file URI", "sqlite without mlflow", "default store", "environment variable"],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_missing_tracking_store_is_refused_not_created(tmp_path, monkeypatch, sequences_file, capsys, uri, message, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if uri == "not_mlflow":
        uri = not_mlflow(tmp_path / "notes.db")
    elif uri == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/typo.db")
        uri = None
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    argv = [command, "--model", "models:/dream-hpo-best/1", "--sequences", str(sequences_file[0])]
    argv += ["--out", str(tmp_path / "out.tsv")] if command == "predict" else []
    argv += ["--tracking-uri", uri.format(tmp=tmp_path)] if uri else []
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"dream-hpo {command}: error: " in err
    assert message.format(tmp=tmp_path) in err and "read test" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --- challenge scores ---------------------------------------------------------------------------

N_TEST = 48
HIGH, LOW, YEAST, RANDOM, CHALLENGING = (
    [0, 1, 2, 3, 4, 5, 5],  # a repeated index counts once, as in the organisers' evaluation
    [6, 7, 8, 9, 10, 11],
    [12, 13, 14, 15, 16, 40],
    [17, 18, 19, 20, 21, 22, 41],
    [23, 24, 25, 26, 27, 42],
)
SNVS = [(28, 29), (30, 29), (31, 32), (33, 34), (35, 34), (36, 37), (28, 29)]  # (alt, ref); one repeat
MOTIF_PERTURBATION = [(38, 39), (43, 39), (44, 45), (46, 45)]
MOTIF_TILING = [(47, 0), (1, 2), (3, 4), (6, 8), (9, 10)]
PUBLIC_SINGLE = [40, 41, 42]
PUBLIC_PAIRS = [(36, 37)]


def write_subsets(directory: Path) -> Path:
    """The organisers' layout: pandas-written CSVs with an unnamed index column and extra columns."""
    directory.mkdir()
    for name, indices in {
        "high_exp_seqs.csv": HIGH,
        "low_exp_seqs.csv": LOW,
        "yeast_seqs.csv": YEAST,
        "all_random_seqs.csv": RANDOM,
        "challenging_seqs.csv": CHALLENGING,
    }.items():
        pd.DataFrame({"tag": [f"seq{i}" for i in indices], "pos": indices, "exp": ""}).to_csv(directory / name)
    for name, pairs in {
        "all_SNVs_seqs.csv": SNVS,
        "motif_perturbation.csv": MOTIF_PERTURBATION,
        "motif_tiling_seqs.csv": MOTIF_TILING,
    }.items():
        alt, ref = zip(*pairs)
        pd.DataFrame({"alt_tag": "a", "ref_tag": "r", "alt_pos": alt, "ref_pos": ref}).to_csv(directory / name)
    return directory


def write_public(directory: Path) -> Path:
    directory.mkdir()
    (directory / "yeast_exp_indices.json").write_text(json.dumps({"40": 0.5}))
    (directory / "random_exp_indices.json").write_text(json.dumps({"41": 0.1, "42": 0.2}))
    (directory / "SNVs_exp_indices.json").write_text(json.dumps({"36,37": [0.1, 0.2]}))
    return directory


def reference_scores(measured, predicted, public: bool) -> dict[str, tuple[float, float]]:
    """Each subset's (Pearson r, Spearman rho) with SciPy, from the lists above."""
    excluded = set(PUBLIC_SINGLE) | {i for pair in PUBLIC_PAIRS for i in pair} if public else set()
    drop_pairs = set(PUBLIC_PAIRS) if public else set()

    def single(indices):
        kept = sorted(set(indices) - excluded)
        return stats.pearsonr(measured[kept], predicted[kept])[0], stats.spearmanr(measured[kept], predicted[kept])[0]

    def paired(pairs):
        kept = sorted(set(pairs) - drop_pairs)
        alt, ref = map(list, zip(*kept))
        changes = measured[alt] - measured[ref], predicted[alt] - predicted[ref]
        return stats.pearsonr(*changes)[0], stats.spearmanr(*changes)[0]

    return {
        "all": single(range(len(measured))),
        "high": single(HIGH),
        "low": single(LOW),
        "yeast": single(YEAST),
        "random": single(RANDOM),
        "challenging": single(CHALLENGING),
        "SNVs": paired(SNVS),
        "motif_perturbation": paired(MOTIF_PERTURBATION),
        "motif_tiling": paired(MOTIF_TILING),
    }


def weighted(reference) -> tuple[float, float]:
    r = {name: value[0] for name, value in reference.items()}
    rho = {name: value[1] for name, value in reference.items()}
    pearson_score = (
        r["all"] ** 2 + 0.3 * r["high"] ** 2 + 0.3 * r["low"] ** 2 + 0.3 * r["yeast"] ** 2 + 0.3 * r["random"] ** 2
        + 0.5 * r["challenging"] ** 2 + 1.25 * r["SNVs"] ** 2 + 0.3 * r["motif_perturbation"] ** 2
        + 0.4 * r["motif_tiling"] ** 2
    ) / 4.65
    spearman_score = (
        rho["all"] + 0.3 * rho["high"] + 0.3 * rho["low"] + 0.3 * rho["yeast"] + 0.3 * rho["random"]
        + 0.5 * rho["challenging"] + 1.25 * rho["SNVs"] + 0.3 * rho["motif_perturbation"] + 0.4 * rho["motif_tiling"]
    ) / 4.65
    return pearson_score, spearman_score


@pytest.mark.parametrize("public", [False, True])
def test_subset_and_weighted_scores_match_an_independent_computation(tmp_path, public):
    rng = np.random.default_rng(4)
    measured = rng.normal(size=N_TEST)
    measured[[1, 2]] = measured[0]  # ties, ranked as SciPy ranks them
    predicted = measured + rng.normal(scale=0.8, size=N_TEST)
    subsets = read_subsets(
        write_subsets(tmp_path / "test_subset_ids"),
        N_TEST,
        write_public(tmp_path / "public_leaderboard_ids") if public else None,
    )
    scores = challenge_scores(measured, predicted, subsets)
    reference = reference_scores(measured, predicted, public)

    got = {s.name: (s.pearson, s.spearman) for s in scores.subsets}
    assert list(got) == list(reference)
    for name, expected in reference.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-10, err_msg=name)
    sizes = {s.name: s.size for s in scores.subsets}
    assert sizes["high"] == 6 and sizes["SNVs"] == (5 if public else 6)
    assert sizes["all"] == (N_TEST - 5 if public else N_TEST)
    np.testing.assert_allclose((scores.pearson_score, scores.spearman_score), weighted(reference), rtol=1e-10)


def test_paired_subsets_score_differences_not_levels():
    """A model right about every level but wrong about every SNV effect scores r = -1 on SNVs."""
    from model.challenge_scores import paired_score

    measured = np.array([5.0, 5.5, 2.0, 2.1, 9.0, 8.0])
    predicted = np.array([5.5, 5.0, 2.1, 2.0, 8.8, 9.1])  # levels close, each change reversed
    snv = paired_score("SNVs", measured, predicted, [(0, 1), (2, 3), (4, 5)])
    assert stats.pearsonr(measured, predicted)[0] > 0.95
    assert snv.pearson == pytest.approx(stats.pearsonr([-0.5, -0.1, 1.0], [0.5, 0.1, -0.3])[0])
    assert snv.pearson < -0.9 and snv.spearman == pytest.approx(-1.0)


def test_subset_files_with_errors_name_file_line_and_value(tmp_path):
    directory = write_subsets(tmp_path / "ids")
    (directory / "low_exp_seqs.csv").write_text(",tag,pos\n0,a,6\n1,b,x7\n")
    with pytest.raises(DreamFormatError, match=r"low_exp_seqs.csv, line 3: pos 'x7' is not a test index"):
        read_subsets(directory, N_TEST)
    (directory / "low_exp_seqs.csv").write_text(",tag,pos\n0,a,6\n1,b,48\n")
    allowed = r"line 3: pos '48' is not a test index; allowed are whole numbers 0 to 47 \(the sequences file has 48"
    with pytest.raises(DreamFormatError, match=allowed):
        read_subsets(directory, N_TEST)
    (directory / "low_exp_seqs.csv").write_text(",tag,position\n0,a,6\n")
    with pytest.raises(DreamFormatError, match=r"low_exp_seqs.csv, line 1: header lacks column 'pos'"):
        read_subsets(directory, N_TEST)
    (directory / "low_exp_seqs.csv").write_text(",tag,pos\n0,a,6\n\n1,b,7\n")
    with pytest.raises(DreamFormatError, match=r"line 3: empty line in the middle"):
        read_subsets(directory, N_TEST)
    with pytest.raises(DreamFormatError, match=r"no subset index files"):
        read_subsets(tmp_path, N_TEST)


def test_evaluate_data_scores_the_test_split_by_default_and_says_when_there_is_none(
    tmp_path, keras_file, keras_model, capsys
):
    """Against the test targets read back from the file and the model's predictions by hand."""
    from data_prep import PreparedData, prepare
    from data_prep.encoding import decode

    write_synthetic(tmp_path / "synthetic.txt", 300, seed=4)
    prepare(tmp_path / "synthetic.txt", tmp_path / "data", eval_size=40, test_size=60)
    data = PreparedData.load(tmp_path / "data")
    for split, rows, measured in (
        ("test", data.test_index, np.load(tmp_path / "data" / "test_targets.npy")),
        ("validation", data.eval_index, np.asarray(data.targets[data.eval_index])),
    ):
        predicted = expected_predictions(keras_model, [decode(codes) for codes in data.codes[rows]])
        chosen = [] if split == "test" else ["--split", "validation"]
        assert main(["evaluate", "--model", str(keras_file), "--data", str(tmp_path / "data"), *chosen]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{split} split of {tmp_path / 'data'}\n") and "PearsonScore" not in out
        [row] = re.findall(rf"^all +{len(rows)} +\S+ +(\S+) ", out, flags=re.M)
        assert float(row) == pytest.approx(stats.pearsonr(measured, predicted)[0], abs=1e-4)

    prepare(tmp_path / "synthetic.txt", tmp_path / "two", eval_size=40, test_size=0)
    assert main(["evaluate", "--model", str(keras_file), "--data", str(tmp_path / "two")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dream-hpo evaluate: error: --data {tmp_path / 'two'} has no test split (prepared with --test-size 0 or by "
        "an earlier version); give --split validation, or prepare it again"
    )


def test_evaluate_prints_the_table_and_logs_scores_to_a_run(tmp_path, keras_file, keras_model, capsys):
    """End to end on a test file with measured (log-scale, partly negative) expression."""
    import mlflow
    from mlflow.tracking import MlflowClient

    write_synthetic(tmp_path / "synthetic.txt", N_TEST, seed=12)
    sequences = [line.split("\t")[0] for line in (tmp_path / "synthetic.txt").read_text().splitlines()]
    predicted = expected_predictions(keras_model, sequences)
    measured = np.round(predicted - predicted.mean() + np.random.default_rng(5).normal(scale=0.05, size=N_TEST), 4)
    assert (measured < 0).any()
    measured_file = tmp_path / "filtered_test_data_with_MAUDE_expression.txt"
    measured_file.write_text("".join(f"{s}\t{m}\n" for s, m in zip(sequences, measured)))
    subsets = write_subsets(tmp_path / "test_subset_ids")

    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment("tests")
    run_id = MlflowClient(tracking_uri).create_run(experiment.experiment_id).info.run_id
    code = main(
        [
            "evaluate", "--model", str(keras_file), "--sequences", str(measured_file), "--subsets", str(subsets),
            "--log-to", run_id, "--tracking-uri", tracking_uri,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    reference = reference_scores(measured, predicted, public=False)
    pearson_score, spearman_score = weighted(reference)
    printed = dict(re.findall(r"^(PearsonScore|SpearmanScore) +(\S+)$", out, flags=re.M))
    assert float(printed["PearsonScore"]) == pytest.approx(pearson_score, abs=1e-4)
    assert float(printed["SpearmanScore"]) == pytest.approx(spearman_score, abs=1e-4)
    assert "SNVs" in out and "6 pairs" in out

    metrics = MlflowClient(tracking_uri).get_run(run_id).data.metrics
    assert metrics["test_PearsonScore"] == pytest.approx(pearson_score, rel=1e-4)
    assert metrics["test_SpearmanScore"] == pytest.approx(spearman_score, rel=1e-4)
    assert metrics["test_SNVs_pearson"] == pytest.approx(reference["SNVs"][0], rel=1e-4)

    assert main(["evaluate", "--model", str(keras_file), "--sequences", str(measured_file), "--log-to", "0" * 32,
                 "--tracking-uri", tracking_uri]) == 2
    assert f"--log-to {'0' * 32}: no such run" in capsys.readouterr().err


# --- serving ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until_healthy(server: subprocess.Popen, url: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve was not healthy after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


# Requests the served model refuses, as `predict` refuses the same lines: (sequences, message).
BAD_REQUESTS = [
    (["ACGT", "ACGXT"], "row 2, position 4: character 'X' is not one of A, C, G, T, N (rows and positions count from 1)"),
    (["A" * 149 + "X"], "row 1, position 150: character 'X' is not one of A, C, G, T, N (rows and positions count from 1)"),
    (["ACGT", ""], "row 2: '' is not a DNA sequence; every row needs a non-empty string of A, C, G, T, N"),
]

# What predict writes to the console: its progress bars. Anything else is noise (TensorFlow, absl, MLflow).
OWN_LINES = re.compile(r"(read \S+|predict) \[[#.]+\] [\d,]+/[\d,]+")


def fresh_predicts(cwd: Path, *commands: list[str]) -> subprocess.Popen:
    """`dream-hpo predict` for each argument list, in turn, in a new Python with nothing imported.

    The first model loads before any of dream-hpo's Keras classes were imported: they
    must register themselves.
    """
    script = (
        "import json, sys\nfrom search.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n    if main(['predict', *argv]):\n        sys.exit(1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(commands)],
        cwd=cwd,
        env=dict(env, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished_quietly(process: subprocess.Popen, outs: list[Path], count: int) -> None:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert stdout == "".join(f"wrote {count} predictions to {out}\n" for out in outs)
    noise = [line for line in re.split(r"[\r\n]+", stderr) if line and not OWN_LINES.fullmatch(line)]
    assert noise == [], stderr[-3000:]
    assert "oneDNN" not in stderr and "absl" not in stderr


@pytest.mark.slow
def test_registered_models_predict_the_keras_values_in_process_in_fresh_processes_and_over_http(
    tmp_path, keras_file, keras_model, strand_keras_file, strand_model, sequences_file
):
    """What a study registers: the best model (plain or strand-averaged) and the ensemble it selects.

    The ensemble weights two Keras models and the k-mer ridge, whose predictions are
    computed here from the counts. Each loads where nothing of dream-hpo was imported
    before: `dream-hpo predict` in a new process on a .keras file and then on a
    registry URI, and `mlflow models serve`.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from data_prep.encoding import encode_sequences, window
    from model.kmer_reference import N_FEATURES, KmerRidge, kmer_counts
    from search.serving import BlendSpec, log_sequence_model

    path, sequences = sequences_file
    expected = expected_predictions(keras_model, sequences)
    expected_strand = expected_predictions(strand_model, sequences)
    kmer = KmerRidge(np.random.default_rng(3).normal(0, 0.05, N_FEATURES), 0.25)
    codes = encode_sequences(sequences)
    expected_kmer = kmer_counts(window(codes, np.arange(len(codes)), 0)).astype(np.float64) @ kmer.weights + 0.25
    expected_ensemble = 0.5 * expected + 0.2 * expected_strand + 0.3 * expected_kmer
    assert np.std(0.3 * expected_kmer) > 0.1 * np.std(expected_ensemble)
    assert not np.allclose(expected_strand, expected, rtol=1e-3)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = mlflow.set_experiment("tests")
    run_id = client.create_run(experiment.experiment_id).info.run_id
    info = log_sequence_model(run_id, [keras_file])
    registered = f"models:/tests-served/{mlflow.register_model(info.model_uri, 'tests-served').version}"
    assert registered == "models:/tests-served/1"
    blend = BlendSpec(weights=(0.5, 0.2), kmer=kmer, kmer_weight=0.3)
    ensemble_info = log_sequence_model(run_id, [keras_file, strand_keras_file], name="ensemble", blend=blend)
    ensemble = f"models:/tests-ensemble/{mlflow.register_model(ensemble_info.model_uri, 'tests-ensemble').version}"

    port = free_port()
    log = tmp_path / "serve.log"
    # The README's command, from a shell whose PATH lacks the virtual environment: MLflow starts
    # `uvicorn` by name, so the command puts the environment's bin first on PATH itself.
    venv_bin = Path(sys.executable).parent
    readme_command = (
        f'PATH="{venv_bin}:$PATH" MLFLOW_TRACKING_URI={tracking_uri} {venv_bin}/mlflow models serve -m {ensemble} '
        f"--env-manager local --host 127.0.0.1 --port {port} --workers 1"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PATH="/usr/bin:/bin")
    assert shutil.which("uvicorn", path=env["PATH"]) is None
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    # The server and the fresh predicts start together: both spend most of their time importing.
    with log.open("w") as log_stream:
        server = subprocess.Popen(
            ["/bin/sh", "-c", f"exec env {readme_command}"],
            env=env,
            stdout=log_stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    outs = [fresh / "strand.tsv", fresh / "ensemble.json"]
    fresh_process = fresh_predicts(
        fresh,
        ["--model", str(strand_keras_file), "--sequences", str(path), "--out", str(outs[0])],
        ["--model", ensemble, "--sequences", str(path), "--out", str(outs[1]), "--tracking-uri", tracking_uri],
    )
    try:
        pyfunc = mlflow.pyfunc.load_model(registered)
        predicted = pyfunc.predict(pd.DataFrame({"sequence": sequences}))
        np.testing.assert_allclose(np.asarray(predicted).reshape(-1), expected, rtol=1e-5, atol=1e-6)
        from mlflow.exceptions import MlflowException

        for bad, message in BAD_REQUESTS:
            with pytest.raises(MlflowException) as error:
                pyfunc.predict(pd.DataFrame({"sequence": bad}))
            assert error.value.message == message and error.value.error_code == "INVALID_PARAMETER_VALUE"

        # Without --tracking-uri, predict reads MLFLOW_TRACKING_URI, as MLflow's own commands do.
        submission = tmp_path / "from_registry.tsv"
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        try:
            assert predict(registered, path, submission) == 0
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
        from_registry = [float(line.split("\t")[1]) for line in submission.read_text().splitlines()]
        np.testing.assert_allclose(from_registry, expected, rtol=1e-5, atol=1e-6)
        by_run = tmp_path / "from_run.json"
        assert predict(run_id, path, by_run, "--tracking-uri", tracking_uri) == 0
        np.testing.assert_allclose(list(json.loads(by_run.read_text()).values()), expected, rtol=1e-5, atol=1e-6)

        finished_quietly(fresh_process, outs, len(sequences))
        strand_rows = [line.split("\t") for line in outs[0].read_text().splitlines()]
        assert [row[0] for row in strand_rows] == sequences
        np.testing.assert_allclose([float(row[1]) for row in strand_rows], expected_strand, rtol=1e-5, atol=1e-6)
        from_ensemble = list(json.loads(outs[1].read_text()).values())
        np.testing.assert_allclose(from_ensemble, expected_ensemble, rtol=1e-5, atol=1e-6)

        wait_until_healthy(server, f"http://127.0.0.1:{port}/ping", log)
        status, body = post(
            f"http://127.0.0.1:{port}/invocations",
            {"dataframe_split": {"columns": ["sequence"], "data": [[s] for s in sequences]}},
        )
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body["predictions"]).reshape(-1), expected_ensemble, rtol=1e-5, atol=1e-6)

        for bad, message in BAD_REQUESTS:
            status, body = post(
                f"http://127.0.0.1:{port}/invocations",
                {"dataframe_split": {"columns": ["sequence"], "data": [[s] for s in bad]}},
            )
            assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
            assert body["message"].endswith(f"Error: {message}"), body
            assert "stack_trace" not in body
            text = json.dumps(body)
            assert "Traceback" not in text and "site-packages" not in text and str(tmp_path) not in text
            assert str(Path(__file__).parents[1]) not in text
    finally:
        if fresh_process.poll() is None:
            fresh_process.kill()
            fresh_process.wait()
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """End the server and its uvicorn child: they are alone in the session the test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue
