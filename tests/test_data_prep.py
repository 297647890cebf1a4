"""data_prep: DREAM files to prepared arrays, strict errors, windows, batches and the synthetic grammar."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_prep.batches import WindowBatches
from data_prep.dream_format import DreamFormatError, read_blocks
from data_prep.encoding import (
    N_CODE,
    SEQUENCE_WIDTH,
    SequenceError,
    SHIFTS,
    WINDOW_LENGTH,
    WINDOW_START,
    decode,
    encode_sequences,
    one_hot,
    window,
)
from conftest import DEMO
from data_prep.prepare import MANIFEST, PreparedData, PreparedDataError, check_prepared, prepare, sha256
from data_prep.synth import MOTIFS, ensure_synthetic, expression_signal, synthesize, write_synthetic
from search.cli import main

N_LINES, SEED, EVAL_SIZE, TEST_SIZE = 2_000, 3, 400, 200
ARRAYS = ("codes", "targets", "train_index", "eval_index", "test_index", "test_targets")
GOOD_LINE = b"TGCATTTTTTTCACATCACGTAGCTAGGCTAACGTTGGTTACGGCTGTT\t11.5\n"


def read_lines(path: Path) -> tuple[list[str], np.ndarray]:
    """The file's sequences and values, parsed line by line in plain Python (the reference)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as stream:
        pairs = [line.rstrip("\r\n").split("\t") for line in stream if line.strip()]
    return [sequence for sequence, _ in pairs], np.array([float(value) for _, value in pairs])


def stored(sequence: str) -> str:
    """The 110-wide row a sequence becomes: cut at the 3' end or padded with N."""
    return sequence.upper()[:SEQUENCE_WIDTH].ljust(SEQUENCE_WIDTH, "N")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path]:
    """(synthetic DREAM file, its prepared directory) shared by the read-only tests."""
    root = tmp_path_factory.mktemp("synthetic")
    source = write_synthetic(root / "train.txt", N_LINES, seed=SEED)
    prepare(source, root / "prepared", eval_size=EVAL_SIZE, split_seed=0)  # the test split by default: 200
    return source, root / "prepared"


def with_test_rows_hidden(values: np.ndarray, test_index: np.ndarray) -> np.ndarray:
    """What targets.npy holds: the values, NaN on the test split's rows."""
    hidden = values.astype(np.float32)
    hidden[test_index] = np.nan
    return hidden


# --- prepare: the round trip ---------------------------------------------------------------


def test_codes_and_targets_equal_the_file(synthetic):
    source, prepared = synthetic
    data = PreparedData.load(prepared)
    sequences, values = read_lines(source)

    assert data.codes.dtype == np.uint8 and data.codes.shape == (N_LINES, SEQUENCE_WIDTH)
    assert [decode(row) for row in data.codes] == [stored(s) for s in sequences]
    assert data.targets.dtype == np.float32
    np.testing.assert_array_equal(data.targets, with_test_rows_hidden(values, data.test_index))
    np.testing.assert_array_equal(data.read_test_targets(), values.astype(np.float32)[data.test_index])
    # The synthetic lengths span both sides of 110, so truncation and padding are both exercised.
    lengths = [len(s) for s in sequences]
    assert min(lengths) < SEQUENCE_WIDTH < max(lengths)


def test_three_splits_are_disjoint_and_cover_every_row(synthetic):
    data = PreparedData.load(synthetic[1])
    splits = (data.train_index, data.eval_index, data.test_index)
    assert [len(split) for split in splits] == [N_LINES - EVAL_SIZE - TEST_SIZE, EVAL_SIZE, TEST_SIZE]
    np.testing.assert_array_equal(np.sort(np.concatenate(splits)), np.arange(N_LINES))
    assert all((np.diff(split) > 0).all() for split in splits)


def test_the_validation_split_is_the_same_with_or_without_a_test_split(synthetic, tmp_path):
    source, prepared = synthetic
    manifest = prepare(source, tmp_path / "two", eval_size=EVAL_SIZE, split_seed=0, test_size=0)
    two, three = PreparedData.load(tmp_path / "two"), PreparedData.load(prepared)
    np.testing.assert_array_equal(two.eval_index, three.eval_index)  # one seeded permutation, validation first
    assert not two.has_test_split and three.has_test_split
    assert (manifest["train_size"], manifest["test_size"], manifest["test_size_rule"]) == (N_LINES - EVAL_SIZE, 0, "--test-size")
    assert np.isfinite(two.targets).all()


def test_a_directory_of_the_previous_format_still_loads_without_a_test_split(synthetic, tmp_path):
    source = synthetic[0]
    prepare(source, tmp_path / "old", eval_size=EVAL_SIZE, split_seed=0, test_size=0)
    manifest = json.loads((tmp_path / "old" / MANIFEST).read_text())
    for name in ("test_index", "test_targets"):
        (tmp_path / "old" / manifest["arrays"].pop(name)["file"]).unlink()
    for key in ("test_size", "test_size_rule"):
        manifest.pop(key)
    (tmp_path / "old" / MANIFEST).write_text(json.dumps({**manifest, "format_version": 2}))
    data = PreparedData.load(tmp_path / "old")
    assert not data.has_test_split and len(data.test_index) == 0
    assert len(data.train_index) + len(data.eval_index) == N_LINES


def test_the_check_never_opens_the_test_targets_and_their_reader_checks_them(synthetic, tmp_path):
    directory = copy_prepared(synthetic[1], tmp_path / "prepared")
    test_targets = directory / "test_targets.npy"
    values = np.load(test_targets)
    values[7] = np.nan
    np.save(test_targets, values)
    check_prepared(directory)  # the size is right, and the values are not the check's to read
    with pytest.raises(PreparedDataError, match=re.escape(f"{test_targets}: entry 7 holds nan; targets must be")):
        PreparedData.load(directory).read_test_targets()
    test_targets.write_bytes(test_targets.read_bytes()[:-4])
    with pytest.raises(PreparedDataError, match=re.escape(f"{test_targets}: truncated: ")):
        check_prepared(directory)


def test_same_seed_gives_identical_bytes_and_another_seed_another_split(synthetic, tmp_path):
    source, first = synthetic
    again = prepare(source, tmp_path / "again", eval_size=EVAL_SIZE, split_seed=0)
    other = prepare(source, tmp_path / "other", eval_size=EVAL_SIZE, split_seed=1)

    for name in ARRAYS:
        assert (first / f"{name}.npy").read_bytes() == (tmp_path / "again" / f"{name}.npy").read_bytes(), name
    manifest = json.loads((first / MANIFEST).read_text())
    assert {k: v for k, v in manifest.items() if k != "created"} == {k: v for k, v in again.items() if k != "created"}

    assert other["split_seed"] == 1
    assert (first / "codes.npy").read_bytes() == (tmp_path / "other" / "codes.npy").read_bytes()
    assert not np.array_equal(np.load(first / "eval_index.npy"), np.load(tmp_path / "other" / "eval_index.npy"))


def test_manifest_describes_the_file(synthetic):
    source, prepared = synthetic
    manifest = json.loads((prepared / MANIFEST).read_text())
    sequences, values = read_lines(source)
    lengths = Counter(len(s) for s in sequences)

    assert manifest["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest() == sha256(source)
    assert manifest["source"] == str(source.resolve())
    assert manifest["count"] == N_LINES
    split = (manifest["train_size"], manifest["eval_size"], manifest["test_size"], manifest["split_seed"])
    assert split == (N_LINES - EVAL_SIZE - TEST_SIZE, EVAL_SIZE, TEST_SIZE, 0)
    assert manifest["test_size_rule"] == "the smaller of 10,000 and 10 % of the sequences"
    assert (manifest["sequence_width"], manifest["window_start"], manifest["window_length"]) == (110, 15, 85)
    assert {int(k): v for k, v in manifest["length_histogram"].items()} == dict(lengths)
    assert sum(manifest["length_histogram"].values()) == N_LINES
    assert manifest["truncated"] == sum(v for k, v in lengths.items() if k > SEQUENCE_WIDTH)
    assert manifest["padded"] == sum(v for k, v in lengths.items() if k < SEQUENCE_WIDTH)
    assert manifest["n_characters"] == sum(s[:SEQUENCE_WIDTH].count("N") for s in sequences)

    targets = values.astype(np.float32)
    summary = manifest["expression"]
    assert summary["min"] == pytest.approx(float(targets.min()))
    assert summary["max"] == pytest.approx(float(targets.max()))
    assert summary["mean"] == pytest.approx(float(targets.mean()), rel=1e-6)
    assert summary["std"] == pytest.approx(float(targets.std()), rel=1e-5)
    assert summary["whole_numbers"] == pytest.approx(float(np.mean(values == np.round(values))))


def test_gzip_input_gives_the_same_arrays(synthetic, tmp_path):
    source, plain = synthetic
    packed = tmp_path / "train.txt.gz"
    packed.write_bytes(gzip.compress(source.read_bytes()))
    manifest = prepare(packed, tmp_path / "from_gzip", eval_size=EVAL_SIZE, split_seed=0)

    for name in ARRAYS:
        np.testing.assert_array_equal(np.load(plain / f"{name}.npy"), np.load(tmp_path / "from_gzip" / f"{name}.npy"))
    assert manifest["source_sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what a test compares to say nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_replaces_a_prepared_directory_only_with_overwrite(synthetic, tmp_path):
    source, _ = synthetic
    prepare(source, tmp_path / "out", eval_size=EVAL_SIZE, split_seed=0)
    before = tree(tmp_path)
    with pytest.raises(FileExistsError, match=rf"--out {tmp_path / 'out'} already holds prepared data; pass --overwrite"):
        prepare(source, tmp_path / "out", eval_size=EVAL_SIZE, split_seed=1)
    assert tree(tmp_path) == before

    assert prepare(source, tmp_path / "out", eval_size=EVAL_SIZE, split_seed=1, overwrite=True)["split_seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert check_prepared(tmp_path / "out")["split_seed"] == 1
    assert np.load(tmp_path / "out" / "eval_index.npy").tolist() != np.frombuffer(
        before["out/eval_index.npy"][128:], dtype=np.int64
    ).tolist()


def test_prepare_fills_an_empty_directory(synthetic, tmp_path):
    (tmp_path / "empty").mkdir()
    prepare(synthetic[0], tmp_path / "empty", eval_size=EVAL_SIZE)
    assert check_prepared(tmp_path / "empty")["count"] == N_LINES


def user_directory(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    return path


def prepared_plus_a_file(path: Path) -> Path:
    prepare(write_synthetic(path.parent / "small.txt", 50, seed=1), path, eval_size=5)
    (path / "results.csv").write_text("mine")
    return path


def arrays_without_manifest(path: Path) -> Path:
    path.mkdir()
    np.save(path / "codes.npy", np.zeros((3, SEQUENCE_WIDTH), dtype=np.uint8))
    return path


def manifest_without_arrays(path: Path) -> Path:
    prepare(write_synthetic(path.parent / "small.txt", 50, seed=1), path, eval_size=5)
    (path / "targets.npy").unlink()
    return path


def a_file(path: Path) -> Path:
    path.write_text("not a directory")
    return path


def link_to_prepared(path: Path) -> Path:
    prepare(write_synthetic(path.parent / "small.txt", 50, seed=1), path.parent / "real", eval_size=5)
    path.symlink_to(path.parent / "real")
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (user_directory, f"is not a prepared data directory (it holds notes.txt and no readable {MANIFEST})"),
        (prepared_plus_a_file, "is not a prepared data directory (it also holds results.csv)"),
        (arrays_without_manifest, f"is not a prepared data directory (it holds codes.npy and no readable {MANIFEST})"),
        (manifest_without_arrays, f"is not a prepared data directory (targets.npy named by its {MANIFEST} missing)"),
        (a_file, "exists and is not a plain directory"),
        (link_to_prepared, "exists and is not a plain directory"),
    ],
    ids=[
        "user files", "prepared plus a file", "arrays without manifest", "manifest without its arrays", "a file",
        "a link to a prepared directory",
    ],
)
def test_prepare_never_deletes_what_it_did_not_make(synthetic, tmp_path, make, fragment):
    out = make(tmp_path / "out")
    before = tree(tmp_path)
    with pytest.raises(FileExistsError) as error:
        prepare(synthetic[0], out, eval_size=EVAL_SIZE, overwrite=True)
    assert str(error.value).startswith(f"--out {out} ") and fragment in str(error.value)
    assert "\n" not in str(error.value)
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {p.split("/")[0] for p in before} | {"out"}
    )


@pytest.mark.parametrize("out", [".", "..", "work"])
def test_prepare_refuses_the_working_directory(synthetic, tmp_path, monkeypatch, capsys, out):
    """Even a working directory that is exactly a prepared layout: the shell would be left in a deleted directory."""
    work = tmp_path / "work"
    prepare(synthetic[0], work, eval_size=EVAL_SIZE)
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    assert main(["prepare", str(synthetic[0]), "--out", str(work if out == "work" else out), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"dream-hpo prepare: error: --out {work if out == 'work' else out} is the working directory or holds it; give a new directory"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("eval_size", [0, -5])
def test_an_eval_size_below_one_is_refused_before_reading(tmp_path, eval_size, capsys):
    """The source does not even exist: the flag is checked first."""
    assert main(["prepare", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "out"), "--eval-size", str(eval_size)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dream-hpo prepare: error: --eval-size must be at least 1, got {eval_size}"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("eval_size, test_size", [(N_LINES, 0), (N_LINES + 1, 0), (N_LINES - 200, None)])
def test_the_held_out_splits_must_leave_training_data(synthetic, tmp_path, eval_size, test_size):
    held_out = f"the validation split of {eval_size:,} and the test split of {200 if test_size is None else 0} must leave"
    with pytest.raises(DreamFormatError, match=f"has {N_LINES:,} sequences; {held_out}"):
        prepare(synthetic[0], tmp_path / "nested" / "out", eval_size=eval_size, test_size=test_size)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("n, expected", [(2_000, 200), (150_000, 10_000), (9, 1)])
def test_default_held_out_splits_are_10000_or_a_tenth(tmp_path, n, expected, capsys):
    source = write_synthetic(tmp_path / "train.txt", n, seed=2)
    assert main(["prepare", str(source), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert (
        f"prepared {n:,} sequences into {tmp_path / 'out'}: {n - 2 * expected:,} for training, {expected:,} for "
        f"validation and {expected:,} for test (the smaller of 10,000 and 10 % of the sequences each)"
    ) in out
    manifest = check_prepared(tmp_path / "out")
    assert (manifest["eval_size"], manifest["test_size"], manifest["train_size"]) == (expected, expected, n - 2 * expected)
    assert manifest["eval_size_rule"] == "the smaller of 10,000 and 10 % of the sequences"
    assert len(np.load(tmp_path / "out" / "eval_index.npy")) == expected
    assert main(["prepare", str(source), "--out", str(tmp_path / "given"), "--eval-size", "3"]) == 0
    assert (
        f"{n - 3 - expected:,} for training, 3 for validation and {expected:,} for test (the test split by default: "
        "the smaller of 10,000 and 10 % of the sequences)"
    ) in capsys.readouterr().out
    assert check_prepared(tmp_path / "given")["eval_size_rule"] == "--eval-size"


# --- checking a prepared directory -----------------------------------------------------------


def copy_prepared(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def edit_manifest(**changes):
    def edit(directory: Path) -> str:
        manifest = json.loads((directory / MANIFEST).read_text())
        manifest.update(changes)
        (directory / MANIFEST).write_text(json.dumps(manifest))
        return str(directory / MANIFEST)

    return edit


def write_manifest(text: str):
    def edit(directory: Path) -> str:
        (directory / MANIFEST).write_text(text)
        return str(directory / MANIFEST)

    return edit


def truncate_codes(directory: Path) -> str:
    path = directory / "codes.npy"
    path.write_bytes(path.read_bytes()[:-1000])
    return str(path)


def set_array(name: str, row: int, value, column: int | None = None):
    def edit(directory: Path) -> str:
        array = np.load(directory / f"{name}.npy")
        array[(row, column) if column is not None else row] = value
        np.save(directory / f"{name}.npy", array)
        return str(directory / f"{name}.npy")

    return edit


def retype(name: str, dtype):
    def edit(directory: Path) -> str:
        np.save(directory / f"{name}.npy", np.load(directory / f"{name}.npy").astype(dtype))
        return str(directory / f"{name}.npy")

    return edit


def remove(name: str):
    def edit(directory: Path) -> str:
        (directory / name).unlink()
        return str(directory / name)

    return edit


def first_row(directory: Path, split: str) -> int:
    return int(np.load(directory / f"{split}.npy")[0])


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (write_manifest("{not json"), "not valid JSON (Expecting property name"),
        (write_manifest("[1, 2]"), "holds a list, not a JSON object"),
        (edit_manifest(format_version=1), "format_version is 1; this dream-hpo reads [2, 3, 4]: prepare the data again"),
        (edit_manifest(count="2000"), "count is '2000'; it must be a whole number >= 2"),
        (edit_manifest(eval_size=401), "train_size 1,400 + eval_size 401 + test_size 200 must equal count 2,000"),
        (remove(MANIFEST), f"is not a prepared data directory (no {MANIFEST})"),
        (remove("targets.npy"), "missing; manifest.json names it"),
        (truncate_codes, "truncated: 219,128 bytes where uint8 (2000, 110) needs 220,128"),
        (retype("codes", np.int16), "holds int16 (2000, 110); manifest.json states uint8 (2000, 110) in C order"),
        (retype("train_index", np.int32), "holds int32 (1400,); manifest.json states int64 (1400,)"),
        (set_array("codes", 1_234, 7, column=56), "row 1,234, column 56 holds code 7; codes must be 0..4 (A, C, G, T, N)"),
        (lambda d: set_array("targets", first_row(d, "train_index"), np.nan)(d), "holds nan; it must be finite and >= 0"),
        (lambda d: set_array("targets", first_row(d, "eval_index"), -2.0)(d), "holds -2.0; it must be finite and >= 0"),
        (
            lambda d: set_array("targets", first_row(d, "test_index"), 1.5)(d),
            "holds 1.5; it must be NaN on a test row (its target is in test_targets.npy)",
        ),
        (set_array("train_index", 5, 2_000), "entry 5 holds row 2,000, outside 0..1,999"),
        (lambda d: set_array("train_index", 0, first_row(d, "eval_index"))(d), "entry 0 holds row"),
    ],
    ids=[
        "manifest not JSON", "manifest a list", "old format", "count a string", "sizes disagree", "no manifest",
        "missing targets", "truncated codes", "codes int16", "index int32", "code 7", "target nan",
        "target negative", "test target in targets.npy", "index out of range", "index in both splits",
    ],
)
def test_check_prepared_names_the_file_the_value_and_what_is_allowed(synthetic, tmp_path, edit, fragment):
    directory = copy_prepared(synthetic[1], tmp_path / "prepared")
    named = edit(directory)
    before = tree(tmp_path)
    with pytest.raises(PreparedDataError) as error:
        check_prepared(directory)
    message = str(error.value)
    assert fragment in message and "\n" not in message
    assert message.startswith(named if fragment != f"is not a prepared data directory (no {MANIFEST})" else str(directory))
    with pytest.raises(PreparedDataError, match=re.escape(fragment)):
        PreparedData.load(directory)
    assert tree(tmp_path) == before


def test_check_prepared_accepts_what_prepare_wrote(synthetic):
    manifest = check_prepared(synthetic[1])
    assert manifest["arrays"]["codes"] == {"file": "codes.npy", "dtype": "uint8", "shape": [N_LINES, SEQUENCE_WIDTH]}
    assert manifest == json.loads((synthetic[1] / MANIFEST).read_text())


# --- the real demo sample ------------------------------------------------------------------


def test_demo_sample_parses_and_prepares(tmp_path):
    if not DEMO.exists():
        pytest.skip(f"demo sample {DEMO} not present")
    sequences, values = read_lines(DEMO)
    # 6,369 newlines: the last of the 6,370 lines has none, and must still be read.
    assert DEMO.read_bytes().count(b"\n") == 6_369 and len(sequences) == 6_370

    manifest = prepare(DEMO, tmp_path / "demo", eval_size=1_000, split_seed=0)
    data = PreparedData.load(tmp_path / "demo")
    assert manifest["count"] == len(sequences) == 6_370
    histogram = {int(k): v for k, v in manifest["length_histogram"].items()}
    assert (min(histogram), max(histogram)) == (87, 135)
    assert histogram == dict(Counter(len(s) for s in sequences))
    n_characters = sum(s[:SEQUENCE_WIDTH].count("N") for s in sequences)
    assert manifest["n_characters"] == n_characters > 0
    assert int((data.codes == N_CODE).sum()) == n_characters + sum(max(0, 110 - len(s)) for s in sequences)
    np.testing.assert_array_equal(data.targets, with_test_rows_hidden(values, data.test_index))
    assert [decode(row) for row in data.codes[::97]] == [stored(s) for s in sequences[::97]]


# --- strict reading: every bad input names the file and the line ---------------------------

# (id, bad line, part of the message); each is put after three good lines, so it is line 4.
BAD_LINES = [
    ("one column", b"ACGTACGT\n", "expected 2 tab-separated columns"),
    ("three columns", b"ACGT\t1.0\t2.0\n", "found 3"),
    ("character U", b"ACGUACGT\t1.0\n", "'U' at position 4"),
    ("character space", b"ACGT ACGT\t1.0\n", "' ' at position 5"),
    ("character past 110", b"A" * 129 + b"U" + b"A" * 5 + b"\t1.0\n", "'U' at position 130"),
    ("character at 111", b"C" * 110 + b"-\t1.0\n", "'-' at position 111"),
    ("empty sequence", b"\t1.0\n", "empty sequence"),
    ("empty expression", b"ACGT\t\n", "expression column is empty"),
    ("expression text", b"ACGT\tabc\n", "expression is not a number"),
    ("expression 1,5", b"ACGT\t1,5\n", "expression is not a number"),
    ("expression with NUL", b"ACGT\t12\x00\n", "expression is not a number"),
    ("nan", b"ACGT\tnan\n", "not a finite number"),
    ("inf", b"ACGT\tinf\n", "not a finite number"),
    ("-inf", b"ACGT\t-inf\n", "not a finite number"),
    ("negative", b"ACGT\t-0.5\n", "expression is negative"),
    ("empty line in the middle", b"\n", "empty line in the middle"),
]


def bad_file(path: Path, bad: bytes, good_before: int = 3, good_after: int = 3) -> Path:
    path.write_bytes(GOOD_LINE * good_before + bad + GOOD_LINE * good_after)
    return path


def assert_names(error: pytest.ExceptionInfo, path: Path, line: int | None, fragment: str) -> None:
    message = str(error.value)
    assert str(path) in message and fragment in message, message
    assert error.value.line == line
    if line is not None:
        assert f"line {line:,}:" in message, message


@pytest.mark.parametrize("bad, fragment", [case[1:] for case in BAD_LINES], ids=[case[0] for case in BAD_LINES])
def test_prepare_rejects_a_bad_line_and_leaves_nothing(tmp_path, bad, fragment):
    source = bad_file(tmp_path / "train.txt", bad)
    with pytest.raises(DreamFormatError) as error:
        prepare(source, tmp_path / "prepared", eval_size=1)
    assert_names(error, source, 4, fragment)
    assert [p.name for p in tmp_path.iterdir()] == ["train.txt"]  # no output, no temporary directory


@pytest.mark.parametrize("bad, fragment", [case[1:] for case in BAD_LINES], ids=[case[0] for case in BAD_LINES])
def test_line_numbers_count_across_blocks(tmp_path, bad, fragment):
    # About 55 bytes a line and 200-byte blocks: line 1,203 is in a block far from the first.
    source = bad_file(tmp_path / "train.txt", bad, good_before=1_202, good_after=40)
    with pytest.raises(DreamFormatError) as error:
        list(read_blocks(source, block_bytes=200))
    assert_names(error, source, 1_203, fragment)


def test_blocks_number_their_lines_and_agree_with_one_block(synthetic):
    source, prepared = synthetic
    blocks = list(read_blocks(source, block_bytes=1_000))
    assert len(blocks) > 100
    assert [b.first_line for b in blocks] == list(np.cumsum([0] + [len(b.codes) for b in blocks[:-1]]))
    np.testing.assert_array_equal(np.concatenate([b.codes for b in blocks]), np.load(prepared / "codes.npy"))
    test_index = np.load(prepared / "test_index.npy")
    hidden = with_test_rows_hidden(np.concatenate([b.expression for b in blocks]), test_index)
    np.testing.assert_array_equal(hidden, np.load(prepared / "targets.npy"))


def test_the_first_bad_line_is_named_whatever_its_kind(tmp_path):
    # Each check runs over all lines at once; an earlier line failing a later check must still win.
    source = tmp_path / "train.txt"
    source.write_bytes(GOOD_LINE + b"ACGT\tnan\n" + GOOD_LINE + b"ACGT\n" + GOOD_LINE)
    with pytest.raises(DreamFormatError) as error:
        list(read_blocks(source))
    assert_names(error, source, 2, "not a finite number")

    source.write_bytes(GOOD_LINE + b"\n" + GOOD_LINE + b"ACGX\t1\n")
    with pytest.raises(DreamFormatError) as error:
        list(read_blocks(source))
    assert_names(error, source, 2, "empty line in the middle")

    # Bytes past 110 are checked apart from the first 110: the earlier line still wins.
    long_bad, short_bad = b"G" * 120 + b"x\t1\n", b"GXG\t1\n"
    for lines, position in (([long_bad, short_bad], 121), ([short_bad, long_bad], 2)):
        source.write_bytes(GOOD_LINE + b"".join(lines) + GOOD_LINE)
        with pytest.raises(DreamFormatError) as error:
            list(read_blocks(source))
        assert_names(error, source, 2, f"at position {position} ")


def test_an_empty_line_at_a_block_boundary_is_named(tmp_path):
    source = tmp_path / "train.txt"
    source.write_bytes(GOOD_LINE * 3 + b"\n" * 5 + GOOD_LINE)
    for block_bytes in (len(GOOD_LINE) * 3 + 1, len(GOOD_LINE) * 3 + 3, 7):
        with pytest.raises(DreamFormatError) as error:
            list(read_blocks(source, block_bytes=block_bytes))
        assert_names(error, source, 4, "empty line in the middle")


@pytest.mark.parametrize(
    "content",
    [
        GOOD_LINE * 3 + b"\n\n\n",
        (GOOD_LINE * 3).replace(b"\n", b"\r\n") + b"\r\n",
        GOOD_LINE * 2 + GOOD_LINE.rstrip(b"\n"),
        GOOD_LINE * 2 + GOOD_LINE.lower(),
    ],
    ids=["blank lines at the end", "CRLF", "no final newline", "lowercase"],
)
def test_accepted_variants_read_like_the_plain_file(tmp_path, content):
    source = tmp_path / "train.txt"
    source.write_bytes(content)
    for block_bytes in (len(GOOD_LINE) + 2, 1 << 20):
        blocks = list(read_blocks(source, block_bytes=block_bytes))
        codes = np.concatenate([b.codes for b in blocks])
        assert codes.shape == (3, SEQUENCE_WIDTH)
        assert {decode(row) for row in codes} == {stored(GOOD_LINE.split(b"\t")[0].decode())}
        np.testing.assert_array_equal(np.concatenate([b.expression for b in blocks]), [11.5] * 3)


def written(content: bytes):
    def make(path: Path) -> Path:
        path.write_bytes(content)
        return path

    return make


def directory(path: Path) -> Path:
    path.mkdir()
    return path


def corrupt_gzip(path: Path) -> Path:
    packed = bytearray(gzip.compress(GOOD_LINE * 500))
    packed[30:60] = b"\xff" * 30
    path.write_bytes(bytes(packed))
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (written(b""), "file is empty"),
        (written(b"\n\r\n\n"), "file is empty"),
        (directory, "is a directory"),
        (corrupt_gzip, "unreadable compressed file"),
        (written(gzip.compress(GOOD_LINE * 500)[:-20]), "unreadable compressed file"),
        (lambda path: path, "no such file"),
    ],
    ids=["empty", "only blank lines", "directory", "corrupt gzip", "truncated gzip", "missing"],
)
def test_prepare_rejects_a_bad_file_and_leaves_nothing(tmp_path, make, fragment):
    source = make(tmp_path / "train.txt")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DreamFormatError) as error:
        prepare(source, tmp_path / "prepared", eval_size=1)
    assert_names(error, source, None, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- the command line ----------------------------------------------------------------------


def test_cli_prepare_and_synth(tmp_path, capsys):
    source = tmp_path / "train.txt"
    assert main(["synth", "--n", "50", "--out", str(source), "--seed", "1"]) == 0
    assert len(source.read_bytes().splitlines()) == 50
    assert main(["prepare", str(source), "--out", str(tmp_path / "prepared"), "--eval-size", "10"]) == 0
    assert "prepared 50 sequences into" in capsys.readouterr().out
    assert main(["prepare", str(source), "--out", str(tmp_path / "two"), "--eval-size", "10", "--test-size", "0"]) == 0
    out = capsys.readouterr().out
    assert "40 for training, 10 for validation and 0 for test" in out
    assert "no test split (--test-size 0): a study's figures on this data are validation figures" in out
    assert PreparedData.load(tmp_path / "prepared").codes.shape == (50, SEQUENCE_WIDTH)


def test_cli_prepare_reports_the_bad_line(tmp_path, capsys):
    source = bad_file(tmp_path / "train.txt", b"ACGT\t-3\n", good_before=6)
    assert main(["prepare", str(source), "--out", str(tmp_path / "prepared"), "--eval-size", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{source}, line 7:" in err and "negative" in err
    assert not (tmp_path / "prepared").exists()


# --- encoding, windows and shifts ----------------------------------------------------------


def test_encode_pads_cuts_and_rejects():
    codes = encode_sequences(["acgtn", "T" * 130])
    assert decode(codes[0]) == "ACGTN" + "N" * 105 and decode(codes[1]) == "T" * 110
    with pytest.raises(SequenceError) as error:
        encode_sequences(["ACGT", "ACGU"])
    assert str(error.value) == "row 2, position 4: character 'U' is not one of A, C, G, T, N (rows and positions count from 1)"


@pytest.mark.parametrize("position", [1, 110, 111, 150])
def test_encode_checks_the_whole_sequence_as_predict_does(tmp_path, position):
    """The served model refuses what `predict` refuses, also past the 110 bases it keeps."""
    sequence = "A" * (position - 1) + "X" + "C" * 30
    with pytest.raises(SequenceError, match=f"row 3, position {position}: character 'X'"):
        encode_sequences(["ACGT", "T" * 200, sequence])
    with pytest.raises(DreamFormatError, match=f"line 1: character 'X' at position {position} is not one of"):
        list(read_blocks(written(f"{sequence}\n".encode())(tmp_path / "test.txt"), require_expression=False))


def test_window_shifts_move_the_window_by_one_base():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, size=(20, SEQUENCE_WIDTH), dtype=np.uint8)
    rows = np.array([3, 0, 17, 3])
    centre, right, left = (window(codes, rows, shift) for shift in (0, 1, -1))
    assert centre.shape == (4, WINDOW_LENGTH) and centre.dtype == np.uint8
    np.testing.assert_array_equal(centre, codes[rows, WINDOW_START : WINDOW_START + WINDOW_LENGTH])
    np.testing.assert_array_equal(centre[:, 1:], right[:, :-1])
    np.testing.assert_array_equal(right[:, -1], codes[rows, WINDOW_START + WINDOW_LENGTH])
    np.testing.assert_array_equal(centre[:, :-1], left[:, 1:])
    np.testing.assert_array_equal(left[:, 0], codes[rows, WINDOW_START - 1])
    mixed = window(codes, rows, np.array([1, 0, -1, 0]))
    np.testing.assert_array_equal(mixed, np.stack([right[0], centre[1], left[2], centre[3]]))


def test_one_hot_of_bases_is_a_unit_row_and_of_n_zero():
    encoded = one_hot(np.array([[0, 1, 2, 3, N_CODE]], dtype=np.uint8))
    assert encoded.dtype == np.float32 and encoded.shape == (1, 5, 4)
    np.testing.assert_array_equal(encoded[0], np.vstack([np.eye(4), np.zeros(4)]))


# --- batches -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_data():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 5, size=(300, SEQUENCE_WIDTH), dtype=np.uint8)
    targets = np.arange(300, dtype=np.float32) / 10
    return codes, targets, np.arange(5, 300, 3)  # 99 rows


def one_epoch(batches: WindowBatches):
    return [batches[i] for i in range(len(batches))]


def rows_of(batch_targets):
    """Rows back from targets: the fixture's target of row r is r / 10."""
    return np.rint(np.concatenate(batch_targets) * 10).astype(int)


def test_batches_cover_every_row_once_with_shapes(batch_data):
    codes, targets, rows = batch_data
    batches = WindowBatches(codes, targets, rows, batch_size=32, seed=7)
    epoch = one_epoch(batches)
    assert len(batches) == 4 and [len(t) for _, t in epoch] == [32, 32, 32, 3]
    for windows, batch_targets in epoch:
        assert windows.dtype == np.uint8 and windows.shape == (len(batch_targets), WINDOW_LENGTH)
        assert batch_targets.dtype == np.float32
    seen = rows_of([t for _, t in epoch])
    np.testing.assert_array_equal(np.sort(seen), rows)
    with pytest.raises(IndexError):
        batches[4]


def test_batches_windows_match_their_targets_and_shifts(batch_data):
    codes, targets, rows = batch_data
    batches = WindowBatches(codes, targets, rows, batch_size=40, seed=7, augment=True)
    used = Counter()
    for windows, batch_targets in one_epoch(batches):
        for window_codes, row in zip(windows, rows_of([batch_targets])):
            shift = [s for s in SHIFTS if np.array_equal(window(codes, [row], s)[0], window_codes)]
            assert shift, f"row {row}: window matches no shift"
            used[shift[0]] += 1
    assert set(used) == set(SHIFTS) and min(used.values()) > 15

    plain = WindowBatches(codes, targets, rows, batch_size=40, seed=7, augment=False)
    for windows, batch_targets in one_epoch(plain):
        np.testing.assert_array_equal(windows, window(codes, rows_of([batch_targets]), 0))


def test_batches_are_reproducible_per_seed_and_epoch(batch_data):
    codes, targets, rows = batch_data

    def order(seed, epoch):
        batches = WindowBatches(codes, targets, rows, batch_size=16, seed=seed)
        batches.set_epoch(epoch)
        epoch_batches = one_epoch(batches)
        return np.concatenate([w for w, _ in epoch_batches]), rows_of([t for _, t in epoch_batches])

    windows, seen = order(7, 2)
    again_windows, again_seen = order(7, 2)
    np.testing.assert_array_equal(windows, again_windows)
    np.testing.assert_array_equal(seen, again_seen)
    assert not np.array_equal(seen, order(7, 3)[1])
    assert not np.array_equal(seen, order(8, 2)[1])
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        WindowBatches(codes, targets, rows, batch_size=0)


# --- the synthetic grammar -----------------------------------------------------------------


def reference_signal(sequence: str) -> float:
    """The documented grammar, string by string: the table in data_prep/synth.py."""
    text = stored(sequence)[WINDOW_START : WINDOW_START + WINDOW_LENGTH]
    complement = str.maketrans("ACGT", "TGCA")
    signal = 9.0
    for name, (motif, _, effect, both_strands) in MOTIFS.items():
        patterns = [motif] + ([motif.translate(complement)[::-1]] if both_strands else [])
        half = (WINDOW_LENGTH - len(motif) + 1) // 2
        for pattern in patterns:
            for start in range(WINDOW_LENGTH - len(pattern) + 1):
                if text.startswith(pattern, start):
                    signal += effect * (1.5 if name == "reb1" and start >= half else 1.0)
    run = max(_longest(text, "T"), _longest(text, "A"))
    signal += min(0.3 * max(run - 4, 0), 2.4)
    known = [c for c in text if c != "N"]
    return signal - 6.0 * (sum(c in "GC" for c in known) / len(known) - 0.5)


def _longest(text: str, base: str) -> int:
    longest = run = 0
    for character in text:
        run = run + 1 if character == base else 0
        longest = max(longest, run)
    return longest


def test_synthetic_file_matches_synthesize_and_the_documented_grammar(synthetic):
    source, prepared = synthetic
    lines, expression, signal = synthesize(N_LINES, seed=SEED)
    assert lines == source.read_bytes()
    codes = np.load(prepared / "codes.npy")
    np.testing.assert_allclose(expression_signal(codes), signal, rtol=0, atol=1e-12)

    sequences, values = read_lines(source)
    np.testing.assert_allclose(values, expression, atol=1e-9)
    reference = [reference_signal(s) for s in sequences[:300]]
    np.testing.assert_allclose(signal[:300], reference, atol=1e-9)

    assert np.corrcoef(signal, expression)[0, 1] > 0.8
    assert values.min() >= 0 and values.max() <= 17
    assert 0.45 < np.mean(values == np.round(values)) < 0.6
    lengths = Counter(map(len, sequences))
    assert lengths.most_common(1)[0][0] == 110 and min(lengths) >= 87 and max(lengths) <= 135
    assert synthesize(50, seed=SEED)[0] != synthesize(50, seed=SEED + 1)[0]


@pytest.mark.parametrize("start, effect", [(5, 2.0), (60, 3.0)], ids=["5' half", "3' half (x1.5)"])
def test_planting_reb1_raises_the_signal(start, effect):
    background = "ACGT" * 28  # no motif and no run of T or A: only GC content counts
    planted = background[: WINDOW_START + start] + "TTACCCG" + background[WINDOW_START + start + 7 :]
    before, after = expression_signal(encode_sequences([background, planted]))

    def gc_term(sequence):
        return -6.0 * (np.mean([c in "GC" for c in sequence[WINDOW_START : WINDOW_START + WINDOW_LENGTH]]) - 0.5)

    assert before == pytest.approx(9.0 + gc_term(background))
    assert after == pytest.approx(9.0 + effect + gc_term(planted))
    assert after > before + 1.5


def test_written_files_follow_the_umask(tmp_path):
    # Temporary names must not leak mkstemp's 0600 or mkdtemp's 0700 into the results.
    previous = os.umask(0o022)
    try:
        source = write_synthetic(tmp_path / "train.txt", 20, seed=0)
        prepare(source, tmp_path / "prepared", eval_size=5)
    finally:
        os.umask(previous)
    assert source.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "prepared").iterdir()} == {0o644}


def test_ensure_synthetic_creates_once_and_reuses(tmp_path):
    first = ensure_synthetic(tmp_path, 300, seed=2, eval_size=50)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["count"] == 300 and manifest["eval_size"] == 50 and manifest["split_seed"] == 2

    os.utime(first / MANIFEST, ns=(1, 1))  # an old stamp: a rewrite could not keep it
    stamps[first / MANIFEST] = 1
    second = ensure_synthetic(tmp_path, 300, seed=2, eval_size=50)
    assert second == first
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert ensure_synthetic(tmp_path, 300, seed=2, eval_size=60) != first
