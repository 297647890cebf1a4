"""`dream-hpo explain`: mutagenesis, gradient x input, motifs named by TOMTOM, and what a trained model learned."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.encoding import DREAM_LAYOUT, N_CODE, WINDOW_LENGTH, WINDOW_START
from data_prep.motif_files import MotifFileError, consensus_matrix, planted_motifs, read_meme, write_meme
from model import ModelConfig, build_model, save_model
from model.attribution import gradient_x_input, importance, mutagenesis
from model.inference import Blend
from model.motifs import Pattern, benjamini_hochberg, name_patterns
from search.cli import main

TINY = ModelConfig(channels=48, transformer_layers=1, num_heads=8, key_size=8, tower_blocks=2)
REB1 = "TTACCCG"


def random_codes(n: int, seed: int) -> np.ndarray:
    codes = np.random.default_rng(seed).integers(0, 4, size=(n, DREAM_LAYOUT.width)).astype(np.uint8)
    codes[0, WINDOW_START + 40] = N_CODE  # an N inside the window: set to each of the four bases
    codes[1, 100:] = N_CODE  # padding after the window
    return codes


@pytest.fixture(scope="module")
def tiny_models():
    import keras

    keras.utils.set_random_seed(5)
    return build_model(TINY), build_model(TINY)


def test_mutagenesis_equals_predicting_every_mutated_sequence_in_small_batches(tiny_models, monkeypatch):
    import model.attribution as attribution

    blend = Blend(models=tiny_models, weights=(2.0, 1.0))  # an ensemble, weighted
    codes = random_codes(3, seed=1)
    monkeypatch.setattr(attribution, "VARIANTS_PER_CALL", 300)  # one sequence per call: the batched path
    effects, reference = mutagenesis(blend, codes, batch_size=64)
    assert effects.shape == (3, WINDOW_LENGTH, 4, 1)
    np.testing.assert_allclose(reference[:, 0], blend.predict(codes), rtol=1e-6)

    direct = np.zeros_like(effects)
    for row in range(3):
        variants, where = [], []
        for column in range(WINDOW_LENGTH):
            for base in range(4):
                if codes[row, WINDOW_START + column] != base:
                    variant = codes[row].copy()
                    variant[WINDOW_START + column] = base
                    variants.append(variant)
                    where.append((column, base))
        predicted = blend.predict(np.array(variants))
        for (column, base), value in zip(where, predicted):
            direct[row, column, base, 0] = value - reference[row, 0]
    np.testing.assert_allclose(effects, direct, atol=2e-5)
    assert (effects[0, 40, :, 0] != 0).all()  # the N was set to all four bases
    assert np.count_nonzero(effects[1, 0, :, 0]) == 3  # elsewhere, the base present has no effect

    # The ensemble's gradient is its members', weighted as its predictions are.
    each = [gradient_x_input(Blend(models=(m,), weights=(1.0,)), codes) for m in tiny_models]
    np.testing.assert_allclose(gradient_x_input(blend, codes), (2 * each[0] + each[1]) / 3, rtol=1e-4, atol=1e-7)


def motif_detector(motif: str, background: float = 0.0):
    """A model that counts `motif` in the window (a conv matching it exactly, ReLU, a sum), plus a weak random linear term."""
    import keras

    kernel = np.zeros((len(motif), 4, 1), np.float32)
    kernel[np.arange(len(motif)), ["ACGT".index(b) for b in motif], 0] = 1.0
    inputs = keras.Input((WINDOW_LENGTH, 4))
    conv, total, linear = keras.layers.Conv1D(1, len(motif)), keras.layers.Dense(1), keras.layers.Dense(1)
    counted = total(keras.layers.GlobalAveragePooling1D()(keras.layers.ReLU()(conv(inputs))))
    outputs = keras.layers.Add()([counted, linear(keras.layers.Flatten()(inputs))])
    conv.set_weights([kernel, np.array([1.0 - len(motif)], np.float32)])
    total.set_weights([np.full((1, 1), WINDOW_LENGTH - len(motif) + 1, np.float32), np.zeros(1, np.float32)])
    weights = np.random.default_rng(0).normal(0, background, (WINDOW_LENGTH * 4, 1)).astype(np.float32)
    linear.set_weights([weights, np.zeros(1, np.float32)])
    return keras.Model(inputs, outputs)


def test_gradient_x_input_and_mutagenesis_agree_on_a_planted_motifs_positions():
    codes = random_codes(4, seed=2)
    starts = [10, 30, 50, 70]
    for row, start in enumerate(starts):
        codes[row, WINDOW_START + start : WINDOW_START + start + len(REB1)] = ["ACGT".index(b) for b in REB1]
    blend = Blend(models=(motif_detector(REB1),), weights=(1.0,))
    window = codes[:, WINDOW_START : WINDOW_START + WINDOW_LENGTH]
    effects, _ = mutagenesis(blend, codes)
    gradients = gradient_x_input(blend, codes)
    for scores in (effects, gradients):
        per_position = importance(scores, window)[..., 0]
        for row, start in enumerate(starts):
            top = set(np.argsort(-per_position[row])[: len(REB1)])
            assert top == set(range(start, start + len(REB1)))


def test_a_model_reading_the_plasmid_padded_sequence_gets_mutagenesis_and_a_reason_for_no_gradients():
    import keras

    from model.attribution import attribute

    inputs = keras.Input((150, 4))
    plasmid = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)))
    attributions, [note] = attribute(Blend(models=(plasmid,), weights=(1.0,)), random_codes(2, seed=3))
    assert attributions.mutagenesis.shape == (2, WINDOW_LENGTH, 4, 1) and attributions.gradients is None
    assert note.startswith("gradient x input left out: ") and "reads (150, 4)" in note


def test_meme_files_round_trip_and_bad_lines_are_named(tmp_path):
    motifs = planted_motifs()
    assert {"dream:reb1", "dream:urs1", "starr:GATA", "lentimpra:HNF1"} <= set(motifs)
    write_meme(tmp_path / "planted.meme", motifs)
    read = read_meme(tmp_path / "planted.meme")
    assert list(read) == list(motifs)
    np.testing.assert_allclose(read["dream:rap1"], consensus_matrix("ACACCCATACAT"), atol=1e-6)

    text = (tmp_path / "planted.meme").read_text().splitlines()
    row = next(i for i, line in enumerate(text) if line.startswith("letter")) + 2
    text[row] = "0.5 0.5 x 0.0"
    (tmp_path / "bad.meme").write_text("\n".join(text))
    with pytest.raises(MotifFileError, match=rf"bad.meme, line {row + 1}: '0.5 0.5 x 0.0' in motif 'dream:reb1'"):
        read_meme(tmp_path / "bad.meme")
    (tmp_path / "rna.meme").write_text("MEME version 4\nALPHABET= ACGU\n")
    with pytest.raises(MotifFileError, match="line 2: alphabet 'ACGU'"):
        read_meme(tmp_path / "rna.meme")
    (tmp_path / "empty.meme").write_text("MEME version 4\n")
    with pytest.raises(MotifFileError, match="no motifs"):
        read_meme(tmp_path / "empty.meme")


def test_benjamini_hochberg_matches_a_hand_computation():
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]))
    # ranks 1..4 of (0.01, 0.03, 0.04, 0.5): p * 4 / rank = 0.04, 0.06, 0.0533, 0.5, then the running minimum from the top
    np.testing.assert_allclose(q, [0.04, 0.0533333, 0.0533333, 0.5], rtol=1e-5)


def test_tomtom_names_a_noisy_copy_of_a_planted_motif_and_nothing_for_a_random_one():
    rng = np.random.default_rng(0)
    noisy = consensus_matrix("TAGCCGCCGA")[::-1, ::-1] * 0.8 + 0.2 * rng.dirichlet(np.ones(4), size=10)  # other strand
    random = rng.dirichlet(np.ones(4), size=9)
    patterns = [Pattern("expression", name, -1, 30, m, m) for name, m in (("neg_0", noisy), ("neg_1", random))]
    motifs = {n: m for n, m in planted_motifs().items() if n.startswith("dream:")}
    named = name_patterns(patterns, motifs)
    assert named[0].match == "dream:urs1" and named[0].q_value < 1e-3
    assert named[1].match == ""


def test_explain_refuses_bad_input_in_one_line_before_loading_the_model(tmp_path, capsys, tiny_models):
    model = save_model(tiny_models[0], tmp_path / "tiny.keras")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    (tmp_path / "seqs.txt").write_text("ACGT" * 20 + "\n")
    (tmp_path / "bad.meme").write_text("MOTIF a\nletter-probability matrix: alength= 4 w= 2\n0.25 0.25 0.25 0.25\n")
    base = ["explain", "--model", str(model), "--sequences", str(tmp_path / "seqs.txt")]
    cases = {
        "taken": (["--out", str(tmp_path / "taken")], "is a directory that is not empty; explain writes into a new or empty directory"),
        "n": (["--out", str(tmp_path / "new"), "--n", "0"], "--n must be a whole number of at least 1, got 0"),
        "meme": (["--out", str(tmp_path / "new"), "--motifs", str(tmp_path / "bad.meme")], "bad.meme, line 3: motif 'a' ends before its 2 rows"),
        "model": (["--out", str(tmp_path / "new"), "--model", str(tmp_path / "none.keras")], "none.keras: no such model file"),
    }
    for flags, message in cases.values():
        assert main(base + flags) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me" and not (tmp_path / "new").exists()


def test_explain_writes_its_folder_for_a_two_task_model_read_from_sequences(tmp_path, capsys):
    """Arrays, table, logos and summary for each task; without trained motifs, the table may be empty but exists."""
    import keras

    from data_prep.encoding import SequenceLayout

    keras.utils.set_random_seed(6)
    layout = SequenceLayout(60, 0, 60)
    inputs = keras.Input((60, 4))
    two_tasks = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    from search.explain import explain_blend, motif_set

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(40, 60)).astype(np.uint8)
    blend = Blend(models=(two_tasks,), weights=(1.0,), layout=layout, tasks=("dev", "hk"))
    explanation = explain_blend(blend, codes, tmp_path / "out", motif_set(None, False, blend.tasks))
    arrays = np.load(tmp_path / "out" / "attributions.npz")
    assert arrays["mutagenesis"].shape == (40, 60, 4, 2) and list(arrays["tasks"]) == ["dev", "hk"]
    # A linear model: mutagenesis and gradient x input are the same map, r = 1 on every sequence.
    np.testing.assert_allclose(explanation.attributions.agreement, [1.0, 1.0], atol=1e-4)
    logos = sorted(p.name for p in (tmp_path / "out" / "logos").iterdir())
    assert logos[:3] == ["sequence_dev_1.png", "sequence_dev_2.png", "sequence_dev_3.png"] and "sequence_hk_3.png" in logos
    assert (tmp_path / "out" / "motifs.tsv").read_text().startswith("task\tpattern\tsign\tseqlets\tconsensus\tbest_match\tq_value\n")
    assert "data:image/png;base64," in (tmp_path / "out" / "summary.html").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_without_the_explain_extra_attributions_are_written_and_the_note_says_what_to_install(tmp_path, monkeypatch, tiny_models):
    import model.motifs

    from search.explain import explain_blend, motif_set

    monkeypatch.setattr(model.motifs, "missing_packages", lambda: ["modisco-lite"])
    blend = Blend(models=tiny_models[:1], weights=(1.0,))
    explanation = explain_blend(blend, random_codes(5, seed=4), tmp_path / "out", motif_set(None, True, blend.tasks))
    assert explanation.patterns == ()
    assert "motif discovery left out: install modisco-lite (pip install 'dream-hpo[explain]')" in explanation.notes
    assert (tmp_path / "out" / "logos" / "sequence_expression_1.png").is_file()
    assert "install modisco-lite" in (tmp_path / "out" / "summary.html").read_text()


def motif_rows(path) -> list[dict]:
    import csv

    with open(path) as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def recovered_motifs(rows: list[dict]) -> dict[str, str]:
    """Planted DREAM motif -> the sign of the pattern TOMTOM named it by (q < 0.05)."""
    return {r["best_match"]: r["sign"] for r in rows if r["best_match"].startswith("dream:") and float(r["q_value"]) < 0.05}


@pytest.mark.slow
def test_a_trained_model_recovers_the_planted_motifs_with_their_signs_and_random_weights_recover_none(
    tmp_path, monkeypatch, capsys, make_synthetic_data
):
    """8 epochs of a 96-channel, 2-layer mini-Enformer on 17,600 synthetic sequences (eval r about 0.88), 1,000 explained."""
    from mlflow.tracking import MlflowClient

    data = str(make_synthetic_data(24_000, 0, 4_000))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--data", data, "--epochs", "8", "--batch-size", "256", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    for setting in ("channels=96", "transformer_layers=2", "optimizer=adamw", "learning_rate=0.002"):
        flags += ["--set", setting]
    assert main(["baseline", *flags]) == 0
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("dream-hpo").experiment_id], order_by=["start_time DESC"])[0]
    capsys.readouterr()

    assert main(["explain", "--model", run.info.run_id, "--data", data, "--out", "learned", "--n", "1000", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    found = recovered_motifs(motif_rows(tmp_path / "learned" / "motifs.tsv"))
    assert len(found) >= 4, out
    assert found.pop("dream:urs1") == "-" and set(found.values()) == {"+"}, out
    assert f"planted motifs recovered: {len(found) + 1} of 5" in out
    agreement = float(out.split("median per-sequence r over positions ")[1].split()[0])
    assert agreement > 0.5
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "explain")}
    assert {"explain/motifs.tsv", "explain/summary.html", "explain/attributions.npz", "explain/logos"} <= logged
    # A second explanation of the model goes beside the first, never mixed into it.
    assert main(["explain", "--model", run.info.run_id, "--data", data, "--out", "again", "--n", "50", "--tracking-uri", uri]) == 0
    assert f"logged under explain_2/ in MLflow run {run.info.run_id}" in capsys.readouterr().out
    assert "explain_2/summary.html" in {a.path for a in client.list_artifacts(run.info.run_id, "explain_2")}

    import keras

    keras.utils.set_random_seed(0)
    untrained = save_model(build_model(ModelConfig(channels=96, transformer_layers=2)), tmp_path / "untrained.keras")
    assert main(["explain", "--model", str(untrained), "--data", data, "--out", "untrained", "--n", "1000"]) == 0
    assert recovered_motifs(motif_rows(tmp_path / "untrained" / "motifs.tsv")) == {}
    assert "planted motifs recovered: 0 of 5" in capsys.readouterr().out


def test_explain_names_patterns_by_the_users_meme_file_for_a_keras_file_and_a_sequence_file(tmp_path, capsys):
    """A Reb1 counter on 300 sequences, half holding Reb1: the pattern found is named by the user's motif, not a planted one."""
    from data_prep.encoding import decode

    codes = random_codes(300, seed=7)
    for row in range(0, 300, 2):
        start = WINDOW_START + 5 + (row * 7) % 60
        codes[row, start : start + len(REB1)] = ["ACGT".index(b) for b in REB1]
    codes[:2] = np.random.default_rng(8).integers(0, 4, size=(2, codes.shape[1]))  # no N: a plain sequence file
    (tmp_path / "seqs.txt").write_text("".join(decode(row) + "\n" for row in codes))
    model = save_model(motif_detector(REB1, background=0.05), tmp_path / "reb1.keras")
    user = {"MA0363.2 REB1": consensus_matrix("TTACCCGG"), "MA0359.2 RAP1": consensus_matrix("ACACCCATACAT")}
    write_meme(tmp_path / "jaspar.meme", user)
    args = ["explain", "--model", str(model), "--sequences", str(tmp_path / "seqs.txt"), "--out", str(tmp_path / "out"),
            "--motifs", str(tmp_path / "jaspar.meme"), "--n", "300"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "explaining the first 300 of the 300 sequences" in out and "TOMTOM against " + str(tmp_path / "jaspar.meme") in out
    rows = motif_rows(tmp_path / "out" / "motifs.tsv")
    assert rows and rows[0]["best_match"] == "MA0363.2 REB1" and rows[0]["sign"] == "+" and float(rows[0]["q_value"]) < 0.05
    assert "planted motifs recovered" not in out  # a user's set has no expectations
    assert "logged under explain/" not in out  # a .keras file has no MLflow run
