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


def test_synthetic_libraries_have_the_shapes_users_bring_and_their_documented_grammar():
    from data_prep.encoding import CODE_OF_BYTE
    from data_prep.synth_tables import GC_EFFECT, LENTIMPRA, STARR, library_signal, synthesize_library

    lines, targets, signal = synthesize_library(LENTIMPRA, 200, seed=3)
    assert lines[0] == "seq_id\tseq\tmean_value\tfold"
    fields = [line.split("\t") for line in lines[1:]]
    assert {len(f[1]) for f in fields} == {230} and {f[3] for f in fields} == {str(k) for k in range(1, 11)}
    assert all(f[1].startswith("AGGACCGGATCAACT") and f[1].endswith("CATTGCGTGAACCGA") for f in fields)
    assert (targets < 0).any() and np.corrcoef(targets[:, 0], signal[:, 0])[0, 1] > 0.8
    lines, targets, _ = synthesize_library(STARR, 400, seed=3)
    assert lines[0].split(",")[2:4] == ["Dev_log2_enrichment", "Hk_log2_enrichment"] and targets.shape == (400, 2)
    lengths = [len(line.split(",")[1]) for line in lines[1:]]
    assert max(lengths) == 249 and 230 <= min(lengths) < 249

    def codes(text):
        return CODE_OF_BYTE[np.frombuffer(text.encode(), np.uint8)][None, :]

    plain, dre, dre_reverse = "A" * 40, "A" * 16 + "TATCGATA" + "A" * 16, "A" * 16 + "TATCGATA"[::-1].translate(str.maketrans("ACGT", "TGCA")) + "A" * 16
    base = library_signal(STARR, codes(plain))[0]
    assert base == pytest.approx([0.0 - GC_EFFECT * 0.5, -1.0 - GC_EFFECT * 0.5])
    for with_motif in (dre, dre_reverse):  # DRE is a housekeeping motif only: the dev task sees its GC alone
        gc_shift = GC_EFFECT * 2 / 40
        assert library_signal(STARR, codes(with_motif))[0] == pytest.approx([base[0] + gc_shift, base[1] + 1.2 + gc_shift])


def test_a_tables_split_is_scored_per_task_with_their_mean_first():
    from model.challenge_scores import TASK_MEAN, format_table, task_scores

    rng = np.random.default_rng(2)
    measured = rng.normal(size=(200, 2))
    predicted = measured + rng.normal(size=(200, 2)) * [0.2, 2.0]
    scores = task_scores(measured, predicted, ("dev", "hk"))
    names = [score.name for score in scores.subsets]
    assert names == [TASK_MEAN, "dev", "hk"]
    dev, hk = scores.subsets[1].pearson, scores.subsets[2].pearson
    assert dev > 0.9 > 0.6 > hk and scores.subsets[0].pearson == pytest.approx((dev + hk) / 2)
    assert scores.metrics()["test_hk_pearson"] == pytest.approx(hk)
    assert [line.split()[0] for line in format_table(scores, challenge_file=False).splitlines()[1:]] == names
    with pytest.raises(ValueError, match="one column per task"):
        task_scores(measured, predicted[:, 0], ("dev", "hk"))


def test_the_ensemble_of_a_two_task_study_blends_a_model_good_at_each_task():
    from search.ensemble import greedy_weights

    rng = np.random.default_rng(4)
    observed = rng.normal(size=(500, 2))
    good_at_dev = np.stack([observed[:, 0] + 0.3 * rng.normal(size=500), rng.normal(size=500)], axis=1)
    good_at_hk = np.stack([rng.normal(size=500), observed[:, 1] + 0.3 * rng.normal(size=500)], axis=1)
    weights = greedy_weights([good_at_dev, good_at_hk], observed, rounds=4)
    assert weights[0] > 0 and weights[1] > 0


def learned(data_dir, run_id: str, uri: str, shape) -> np.ndarray:
    """Per task, the Pearson between a logged model's validation predictions and the noise-free planted signal."""
    from data_prep import PreparedData
    from data_prep.synth_tables import library_signal
    from search.predict import load_blend

    data = PreparedData.load(data_dir)
    blend = load_blend(f"runs:/{run_id}/model", uri)
    rows = data.codes[data.eval_index]
    predicted = np.asarray(blend.predict(rows, 256)).reshape(len(rows), -1)
    signal = library_signal(shape, rows)
    return np.array([np.corrcoef(predicted[:, i], signal[:, i])[0, 1] for i in range(signal.shape[1])])


def small_baseline(uri: str, tmp_path, data: str) -> list[str]:
    flags = ["--data", data, "--epochs", "6", "--batch-size", "64", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    for setting in ("channels=48", "transformer_layers=1", "optimizer=adamw", "learning_rate=0.002"):
        flags += ["--set", setting]
    return ["baseline", *flags]


def last_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name("dream-hpo").experiment_id], order_by=["start_time DESC"])[0]


@pytest.mark.slow
def test_a_starr_table_with_two_tasks_learns_both_predicts_a_column_per_task_serves_the_same_and_shows_its_motifs(
    tmp_path, monkeypatch, capsys
):
    import mlflow
    import pandas as pd

    from data_prep.synth_tables import STARR
    from search.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--kind", "starr", "--n", "4000", "--out", "starr.csv.gz"]) == 0
    tasks = ["Dev_log2_enrichment", "Hk_log2_enrichment"]
    assert main(["prepare", "starr.csv.gz", "--out", "data", "--target-column", tasks[0], "--target-column", tasks[1], "--split-column", "set"]) == 0
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(small_baseline(uri, tmp_path, "data")) == 0
    run = last_run(uri)
    assert run.data.params["resolved_loss"] == "mse"
    each = [run.data.metrics[f"eval_pearson/{task}"] for task in tasks]
    assert run.data.metrics["eval_pearson"] == pytest.approx(np.mean(each))
    assert (learned("data", run.info.run_id, uri, STARR) > 0.6).all()

    (tmp_path / "query.tsv").write_text("sequence\nACGTACGTAC\n" + "ACGT" * 60 + "\n")
    assert main(["predict", "--model", run.info.run_id, "--sequences", "query.tsv", "--out", "p.tsv", "--tracking-uri", uri]) == 0
    header, *rows = (tmp_path / "p.tsv").read_text().splitlines()
    assert header == "sequence\t" + "\t".join(tasks) and [r.split("\t")[0] for r in rows] == ["ACGTACGTAC", "ACGT" * 60]
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    frame = served.predict(pd.DataFrame({"sequence": ["ACGTACGTAC", "ACGT" * 60]}))
    assert list(frame.columns) == tasks
    np.testing.assert_allclose(frame.to_numpy(), [[float(v) for v in r.split("\t")[1:]] for r in rows], rtol=1e-5)

    # What it learned, per task, against each task's own planted motifs.
    capsys.readouterr()
    assert main(["explain", "--model", run.info.run_id, "--data", "data", "--out", "learned", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    arrays = np.load(tmp_path / "learned" / "attributions.npz")
    assert arrays["mutagenesis"].shape == (400, 249, 4, 2) and list(arrays["tasks"]) == tasks
    for task in tasks:
        [line] = [line for line in out.splitlines() if f"planted motifs recovered for {task}:" in line]
        assert int(line.split(":")[1].split()[0]) >= 1, out
    patterns = [row.split("\t") for row in (tmp_path / "learned" / "motifs.tsv").read_text().splitlines()[1:]]
    assert {p[0] for p in patterns} <= set(tasks) and all(p[5].startswith("starr:") for p in patterns if p[5])


@pytest.mark.slow
def test_a_lentimpra_table_with_cv_folds_learns_its_signed_activity(tmp_path, monkeypatch, capsys):
    from data_prep.synth_tables import LENTIMPRA
    from search.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["synth", "--kind", "lentimpra", "--n", "4000", "--out", "lenti.tsv"]) == 0
    assert main(["prepare", "lenti.tsv", "--out", "data", "--split-column", "fold", "--validation-values", "9", "--test-values", "10"]) == 0
    assert "3,200 for training, 400 for validation and 400 for test (by --split-column fold)" in capsys.readouterr().out
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(small_baseline(uri, tmp_path, "data")) == 0
    run = last_run(uri)
    assert learned("data", run.info.run_id, uri, LENTIMPRA)[0] > 0.6
    assert main(["evaluate", "--model", run.info.run_id, "--data", "data", "--tracking-uri", uri]) == 0
    [score_line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mean_value")]
    assert float(score_line.split()[3]) > 0.5
