"""`dream-hpo predict --variants`: ref, alt and alt - ref per task, for a pairs table or a challenge subset CSV.

The expected values come from `Blend.predict` on every ref and every alt sequence encoded
on their own (no deduplication), so a mixed-up row, a wrong sign or a reused prediction
shows. The model and the test file are those of test_predict.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_predict import keras_file, keras_model, sequences_file  # noqa: F401 (fixtures)

from data_prep.encoding import SequenceLayout, encode_sequences
from data_prep.submission import read_test_sequences
from model.inference import Blend
from search.cli import main

RNG = np.random.default_rng(5)


def random_sequence(length: int) -> str:
    return "".join(RNG.choice(list("ACGT"), length))


def mutated(sequence: str, position: int) -> str:
    base = "ACGT"[("ACGT".index(sequence[position]) + 1) % 4]
    return sequence[:position] + base + sequence[position + 1 :]


# An SNV set as users bring it: one reference, several variants of it, a second reference, a repeated pair.
REFERENCE = random_sequence(110)
OTHER = random_sequence(104)
PAIRS = [(f"v{i}", REFERENCE, mutated(REFERENCE, 20 + 7 * i)) for i in range(5)]
PAIRS += [("w1", OTHER, mutated(OTHER, 50)), ("w1-again", OTHER, mutated(OTHER, 50)), ("v0-again", *PAIRS[0][1:])]
DISTINCT = len({sequence for _, ref, alt in PAIRS for sequence in (ref, alt)})  # 2 references, 6 variants


def variants(*arguments) -> int:
    return main(["predict", *map(str, arguments)])


def blend_of(model) -> Blend:
    return Blend(models=(model,), weights=(1.0,))


def expected_effects(blend: Blend, ref: list[str], alt: list[str]) -> np.ndarray:
    """(pairs, 3 * tasks): ref_TASK, alt_TASK, delta_TASK per task, from each side predicted on its own."""
    ref_predicted = blend.predict(blend.encode(ref)[0]).reshape(len(ref), -1)
    alt_predicted = blend.predict(blend.encode(alt)[0]).reshape(len(alt), -1)
    columns = []
    for task in range(len(blend.tasks)):
        ref_task, alt_task = ref_predicted[:, task], alt_predicted[:, task]
        columns += [ref_task, alt_task, alt_task - ref_task]
    return np.stack(columns, axis=1)


@pytest.fixture
def counted(monkeypatch):
    """The rows each Blend.predict call received."""
    calls = []
    predict = Blend.predict

    def counting(self, codes, *args, **kwargs):
        calls.append(len(codes))
        return predict(self, codes, *args, **kwargs)

    monkeypatch.setattr(Blend, "predict", counting)
    return calls


def test_a_pairs_table_gives_each_pairs_effect_in_input_order_predicting_each_sequence_once(
    tmp_path, keras_file, keras_model, counted, capsys  # noqa: F811
):
    table = tmp_path / "snvs.tsv"
    table.write_text("id\tREF\tAlt\n" + "".join(f"{i}\t{ref}\t{alt}\n" for i, ref, alt in PAIRS))
    out = tmp_path / "effects.tsv"
    assert variants("--model", keras_file, "--variants", table, "--out", out, "--batch-size", "4") == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[-1] == f"wrote {len(PAIRS)} variant effects to {out}"
    assert f"{len(PAIRS)} pairs, {DISTINCT} distinct sequences to predict" in printed.out and "predict [" in printed.err
    assert counted == [DISTINCT]

    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header == ["id", "ref", "alt", "ref_expression", "alt_expression", "delta_expression"]
    assert [row[:3] for row in rows] == [list(pair) for pair in PAIRS]
    expected = expected_effects(blend_of(keras_model), [p[1] for p in PAIRS], [p[2] for p in PAIRS])
    written = np.array([[float(value) for value in row[3:]] for row in rows])
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-6)
    assert np.ptp(written[:5, 2]) > 0  # the variants of one reference differ: no row took another's prediction
    assert rows[5][3:] == rows[6][3:] and rows[0][3:] == rows[7][3:]

    # The same pairs as a gzipped comma table without ref/alt names: its two sequence columns, in order; JSON out.
    unnamed = tmp_path / "unnamed.csv.gz"
    text = "name,wild_type,variant\n" + "".join(f"{i},{r},{a}\n" for i, r, a in PAIRS)
    unnamed.write_bytes(gzip.compress(text.encode()))
    as_json = tmp_path / "effects.json"
    assert variants("--model", keras_file, "--variants", unnamed, "--out", as_json) == 0
    objects = json.loads(as_json.read_text())
    assert [list(o) for o in objects] == [["name", *header[1:]]] * len(PAIRS)
    assert [o["name"] for o in objects] == [p[0] for p in PAIRS]
    np.testing.assert_allclose([[o[c] for c in header[3:]] for o in objects], written, rtol=1e-5, atol=1e-6)


def write_subset(path: Path, pairs: list[tuple[int, int]]) -> Path:
    """The organisers' layout: a pandas index column, tags, then alt_pos and ref_pos."""
    alt, ref = zip(*pairs)
    pd.DataFrame({"alt_tag": "a", "ref_tag": "r", "alt_pos": alt, "ref_pos": ref}).to_csv(path)
    return path


def test_a_challenge_subset_csv_pairs_lines_of_the_test_file(
    tmp_path, keras_file, keras_model, sequences_file, counted  # noqa: F811
):
    test, sequences = sequences_file
    pairs = [(1, 0), (2, 0), (3, 0), (5, 4), (2, 0)]
    subset = write_subset(tmp_path / "all_SNVs_seqs.csv", pairs)
    out = tmp_path / "snvs.tsv"
    assert variants("--model", keras_file, "--sequences", test, "--variants", subset, "--out", out) == 0
    assert counted == [6]

    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header == ["alt_pos", "ref_pos", "ref", "alt", "ref_expression", "alt_expression", "delta_expression"]
    assert [row[:4] for row in rows] == [[str(a), str(r), sequences[r], sequences[a]] for a, r in pairs]
    # Every line of the test file predicted as `predict` reads it, then paired here.
    everything = blend_of(keras_model).predict(read_test_sequences(test).codes)
    alt, ref = np.array(pairs).T
    expected = np.stack([everything[ref], everything[alt], everything[alt] - everything[ref]], axis=1)
    np.testing.assert_allclose([[float(v) for v in row[4:]] for row in rows], expected, rtol=1e-5, atol=1e-6)


def bad_pairs(directory: Path, test: Path) -> dict[str, tuple[list, str]]:
    """{case: (flags after --model, the expected one-line error after `dream-hpo predict: error: `)}."""
    good, other = "ACGTACGTAC", "ACGAACGTAC"
    pairs = directory / "pairs.tsv"
    pairs.write_text(f"id\tref\talt\nv1\t{good}\t{other}\nv2\t{good}\tAXGT\n")
    empty = directory / "empty.csv"
    empty.write_text(f"id,ref,alt\nv1,,{other}\n")
    subset = write_subset(directory / "snvs.csv", [(1, 0), (60, 0)])
    return {
        "missing column": (
            ["--variants", pairs, "--ref-column", "wild_type"],
            f"{pairs}, line 1: no column 'wild_type' (--ref-column); the header has 'id', 'ref', 'alt'",
        ),
        "not ACGTN": (
            ["--variants", pairs],
            f"{pairs}, line 3: column 'alt': character 'X' at position 2 of the sequence is not one of A, C, G, T, N",
        ),
        "empty sequence": (
            ["--variants", empty],
            f"{empty}, line 2: column 'ref': empty sequence (expected A, C, G, T, N)",
        ),
        "index out of range": (
            ["--sequences", test, "--variants", subset],
            f"{subset}, line 3: alt_pos '60' is not a test index; allowed are whole numbers 0 to 59 "
            "(the sequences file has 60 lines)",
        ),
        "subset without --sequences": (
            ["--variants", subset],
            f"{subset}, line 1: columns 'alt_pos' and 'ref_pos' index lines of a test file (a challenge subset CSV): "
            "give that file with --sequences TEST",
        ),
        "--sequences with a pairs table": (
            ["--sequences", test, "--variants", pairs],
            f"{pairs}, line 1: no 'alt_pos' and 'ref_pos' columns (the header has 'id', 'ref', 'alt'): "
            "with --sequences, "
            "--variants is a challenge subset CSV of test lines; a table of ref and alt sequences needs no --sequences",
        ),
        "no input": ([], "the following arguments are required: --sequences (or --variants PAIRS)"),
        "--out is --variants": (
            ["--variants", pairs, "--out", pairs],
            f"--out {pairs} is the --variants file; give another file name, predict never overwrites its input",
        ),
    }


BAD_CASES = [
    "missing column", "not ACGTN", "empty sequence", "index out of range", "subset without --sequences",
    "--sequences with a pairs table", "no input", "--out is --variants",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_naming_file_line_column_and_value_before_the_model_loads(
    tmp_path, monkeypatch, keras_file, sequences_file, capsys, case  # noqa: F811
):
    def refuse(*args):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("search.predict.load_blend", refuse)
    cases = bad_pairs(tmp_path, sequences_file[0])
    assert list(cases) == BAD_CASES
    flags, message = cases[case]
    out = tmp_path / "effects.tsv"
    before = {path.name for path in tmp_path.iterdir()}
    with_out = flags if "--out" in flags else [*flags, "--out", out]
    assert variants("--model", keras_file, *with_out) == 2
    *progress, error = capsys.readouterr().err.rstrip("\n").split("\n")
    assert error == f"dream-hpo predict: error: {message}"
    assert all(line.startswith("\rread ") for line in progress)  # the test file's bar, where it had to be read
    assert {path.name for path in tmp_path.iterdir()} == before


def test_a_two_task_model_writes_ref_alt_and_delta_per_task_by_its_own_layout(tmp_path, monkeypatch, capsys):
    import keras

    keras.utils.set_random_seed(6)
    layout = SequenceLayout(width=12, window_start=0, window_length=12, trim="right")
    model = keras.Sequential([keras.Input((12, 4)), keras.layers.Flatten(), keras.layers.Dense(2)])
    blend = Blend(models=(model,), weights=(1.0,), layout=layout, tasks=("dev", "hk"))
    monkeypatch.setattr("search.predict.load_blend", lambda model, tracking_uri: blend)
    (tmp_path / "two_tasks.keras").write_bytes(b"")  # resolve_model needs the file; load_blend is the stub
    ref = ["ACGTACGTACGT", "ACGTACGTACGT", "TTGACA"]
    alt = ["ACGTACGAACGT", "ACGTACGTACGA", "TTGACAGGGGGGGGG"]
    table = tmp_path / "pairs.csv"
    table.write_text("ref,alt\n" + "".join(f"{r},{a}\n" for r, a in zip(ref, alt)))
    out = tmp_path / "effects.tsv"
    assert variants("--model", tmp_path / "two_tasks.keras", "--variants", table, "--out", out) == 0
    assert "12 bases wide: 1 sequences padded with N on the right, 1 cut" in capsys.readouterr().out

    header, *rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert header == ["ref", "alt", "ref_dev", "alt_dev", "delta_dev", "ref_hk", "alt_hk", "delta_hk"]
    assert [row[:2] for row in rows] == [list(pair) for pair in zip(ref, alt)]
    written = np.array([[float(v) for v in row[2:]] for row in rows])
    np.testing.assert_allclose(written, expected_effects(blend, ref, alt), rtol=1e-5, atol=1e-6)
    assert not np.allclose(written[:, :3], written[:, 3:])  # the tasks are not one column written twice


def test_the_dream_codes_of_a_variant_are_those_predict_reads(sequences_file):  # noqa: F811
    """A pairs table's sequences are encoded as the DREAM reader encodes a test file (lowercase, N, short lines)."""
    test, sequences = sequences_file
    np.testing.assert_array_equal(encode_sequences(sequences), read_test_sequences(test).codes)
