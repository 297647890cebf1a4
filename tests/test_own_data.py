"""A user's own table: layouts, prepare, several tasks, signed targets, and a trained model end to end."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.encoding import SequenceLayout, decode, fit_sequences, window
from data_prep.prepare import DataFacts, PreparedData, TableOptions, prepare


def test_fit_sequences_pads_and_cuts_on_the_asked_side_and_counts_them():
    codes, fitted = fit_sequences(["ACG", "ACGTAC", "TTTT"], SequenceLayout(4, 0, 4, pad="left", trim="both"))
    assert [decode(row) for row in codes] == ["NACG", "CGTA", "TTTT"]
    assert (fitted.padded, fitted.trimmed) == (1, 1)
    codes, _ = fit_sequences(["ACG"], SequenceLayout(5, 0, 5, pad="both"))
    assert decode(codes[0]) == "NACGN"


def test_a_layout_that_never_cuts_refuses_a_longer_sequence():
    with pytest.raises(ValueError, match="row 2: 5 bases, longer than the 4"):
        fit_sequences(["ACGT", "ACGTA"], SequenceLayout(4, 0, 4))


def test_a_whole_width_window_reads_N_past_the_row_ends_when_shifted():
    layout = SequenceLayout(4, 0, 4)
    codes, _ = fit_sequences(["ACGT", "TGCA"], layout)
    shifted = window(codes, np.arange(2), [-1, 1], layout)
    assert [decode(row) for row in shifted] == ["NACG", "GCAN"]


def write_table(path, rows: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    lines = ["id\tsequence\tdev\thk\tset"]
    for i in range(rows):
        sequence = "".join(rng.choice(list("ACGT"), 40 if i % 5 else 36))
        split = ["train", "train", "train", "val", "test"][i % 5]
        gc, a = (sequence.count("G") + sequence.count("C")) / 10, sequence.count("A") / 10
        lines.append(f"s{i}\t{sequence}\t{gc + 0.1 * rng.normal():.4f}\t{-a - 3 + 0.1 * rng.normal():.4f}\t{split}")
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_prepare_stores_a_two_task_table_with_its_own_split_and_layout(tmp_path):
    lines = write_table(tmp_path / "lib.tsv")
    options = TableOptions(target_columns=("dev", "hk"), split_column="set")
    manifest = prepare(tmp_path / "lib.tsv", tmp_path / "out", table=options)
    data = PreparedData.load(tmp_path / "out")
    facts = data.facts
    assert facts.format == "table" and facts.tasks == ("dev", "hk") and facts.signed
    assert facts.layout == SequenceLayout(40, 0, 40, "right", None)
    assert manifest["padded"] == 12 and manifest["truncated"] == 0 and manifest["ignored_columns"] == ["id"]
    fields = [line.split("\t") for line in lines[1:]]
    expected_eval = [i for i, f in enumerate(fields) if f[4] == "val"]
    assert data.eval_index.tolist() == expected_eval
    assert data.test_index.tolist() == [i for i, f in enumerate(fields) if f[4] == "test"]
    assert data.targets.shape == (60, 2)
    np.testing.assert_allclose(data.targets[expected_eval], [[float(f[2]), float(f[3])] for f in np.array(fields)[expected_eval]], rtol=1e-6)
    assert np.isnan(data.targets[data.test_index]).all()
    np.testing.assert_allclose(data.read_test_targets()[:, 1], [float(f[3]) for f in fields if f[4] == "test"], rtol=1e-6)
    assert decode(data.codes[5]) == fields[5][1] + "NNNN"
    assert facts.target_minima[1] == pytest.approx(min(float(f[3]) for f in fields), rel=1e-6)


def test_prepare_never_cuts_without_trim_and_keeps_dream_files_in_their_layout(tmp_path):
    write_table(tmp_path / "lib.tsv")
    with pytest.raises(ValueError, match=r"line 3: column 'sequence' holds a sequence of 40 bases, longer than --length 38; give --trim"):
        prepare(tmp_path / "lib.tsv", tmp_path / "out", table=TableOptions(target_columns=("dev",), split_column="set", length=38))
    assert not (tmp_path / "out").exists()
    manifest = prepare(
        tmp_path / "lib.tsv", tmp_path / "cut", table=TableOptions(target_columns=("dev",), split_column="set", length=38, trim="left")
    )
    assert manifest["truncated"] == 48 and manifest["layout"]["trim"] == "left"
    (tmp_path / "dream.txt").write_text("ACGT\t1.0\n" * 30)
    with pytest.raises(ValueError, match="apply to --format table"):
        prepare(tmp_path / "dream.txt", tmp_path / "d", table=TableOptions(length=50))


def facts_for(tasks=("dev", "hk"), minima=(-1.0, -3.0), width=40, format="table"):
    return DataFacts(format, SequenceLayout(width, 0, width), tasks, minima)


def test_buildability_says_what_a_table_cannot_take():
    from model import split_config
    from model.config import resolved_loss, unbuildable

    table = facts_for()
    assert resolved_loss(split_config({}).inputs, table) == "mse"
    assert resolved_loss(split_config({}).inputs, facts_for(minima=(0.0, 1.0), format="dream")) == "poisson"
    assert "task 'hk' goes down to -3" in unbuildable(split_config({"loss": "poisson"}), table)
    assert "DREAM-format data only" in unbuildable(split_config({"input_window": "plasmid"}), table)
    assert "reads at least 17 bases; this data's window is 12" in unbuildable(split_config({}), facts_for(width=12))
    assert unbuildable(split_config({}), table) is None


def test_the_network_has_one_signed_output_per_task_at_the_tables_width():
    from model import ModelConfig, build_model, split_config

    trial = split_config({"channels": 48, "transformer_layers": 1})
    served = build_model(trial.architecture, trial.inputs, facts_for(width=230))
    assert served.input_shape == (None, 230, 4) and served.output_shape == (None, 2)
    assert served.get_layer("head").layers[-1].get_config()["activation"] == "linear"
    seed = build_model(ModelConfig())
    assert sum(int(np.prod(w.shape)) for w in seed.trainable_weights) == 1_995_617


def test_pearson_of_several_tasks_is_their_mean():
    from model.metrics import pearson, pearson_interval, task_pearsons

    rng = np.random.default_rng(1)
    y = rng.normal(size=(300, 2))
    p = y + rng.normal(size=(300, 2)) * [0.3, 3.0]
    each = task_pearsons(y, p)
    assert each[0] > 0.9 > 0.5 > each[1]
    assert pearson(y, p) == pytest.approx(np.mean(each))
    interval = pearson_interval(y, p)
    assert interval["low"] < np.mean(each) < interval["high"]


@pytest.mark.slow
def test_a_two_task_table_trains_predicts_a_column_per_task_and_serves_the_same(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    write_table(tmp_path / "lib.tsv", rows=400)
    assert main(["prepare", "lib.tsv", "--out", "data", "--target-column", "dev", "--target-column", "hk", "--split-column", "set"]) == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--data", "data", "--epochs", "3", "--batch-size", "32", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    for setting in ("channels=48", "transformer_layers=1", "tower_blocks=2", "optimizer=adam", "learning_rate=0.003"):
        flags += ["--set", setting]
    assert main(["baseline", *flags]) == 0
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("dream-hpo").experiment_id])
    assert run.data.params["resolved_loss"] == "mse"
    assert {"eval_pearson/dev", "eval_pearson/hk"} <= set(run.data.metrics)
    assert run.data.metrics["eval_pearson"] == pytest.approx(
        (run.data.metrics["eval_pearson/dev"] + run.data.metrics["eval_pearson/hk"]) / 2
    )
    (tmp_path / "query.tsv").write_text("sequence\nACGTACGTAC\n" + "ACGT" * 10 + "\n")
    assert main(["predict", "--model", run.info.run_id, "--sequences", "query.tsv", "--out", "p.tsv", "--tracking-uri", uri]) == 0
    header, *rows = (tmp_path / "p.tsv").read_text().splitlines()
    assert header == "sequence\tdev\thk" and [r.split("\t")[0] for r in rows] == ["ACGTACGTAC", "ACGT" * 10]
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    import pandas as pd

    frame = served.predict(pd.DataFrame({"sequence": ["ACGTACGTAC", "ACGT" * 10]}))
    assert list(frame.columns) == ["dev", "hk"]
    np.testing.assert_allclose(frame.to_numpy(), [[float(v) for v in r.split("\t")[1:]] for r in rows], rtol=1e-5)
