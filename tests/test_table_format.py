"""data_prep.table_format: users' sequence tables read strictly, with errors at the first bad line."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from data_prep.dream_format import DreamFormatError
from data_prep.table_format import SPLIT_NAMES, detect_format, read_table

BASES = np.array(list("ACGT"))


def write(path, text: str, compress: bool = False):
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def random_sequences(count: int, length: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(BASES[rng.integers(0, 4, length)]) for _ in range(count)]


def read_error(path, **options) -> DreamFormatError:
    with pytest.raises(DreamFormatError) as raised:
        read_table(path, **options)
    return raised.value


def test_lentimpra_tsv_with_folds_mapped_to_splits(tmp_path):
    sequences = random_sequences(12, 230, seed=1)
    sequences[3] = sequences[3].lower()  # case is kept as in the file
    values = [round(-5 + 0.75 * row, 2) for row in range(12)]
    folds = [row % 10 + 1 for row in range(12)]
    lines = ["seq_id\tseq\tmean_value\tfold"]
    lines += [f"ENSG{row:03d}_Reversed:\t{s}\t{v}\t{f}" for row, (s, v, f) in enumerate(zip(sequences, values, folds))]
    path = write(tmp_path / "lentimpra.tsv", "\n".join(lines) + "\n")

    table = read_table(path, split_column="fold", validation_values=("1",), test_values=("2",))

    assert table.sequences.dtype == object and list(table.sequences) == sequences
    assert table.sequence_column == "seq" and table.task_names == ("mean_value",)
    assert table.targets.dtype == np.float32 and table.targets.shape == (12, 1)
    np.testing.assert_array_equal(table.targets[:, 0], np.array(values, dtype=np.float32))
    expected = [{1: 1, 2: 2}.get(fold, 0) for fold in folds]
    assert table.split.dtype == np.int8 and table.split.tolist() == expected
    assert table.split.tolist()[:3] == [1, 2, 0] and table.split.tolist()[10:] == [1, 2]
    assert table.split_column == "fold" and table.ignored_columns == ("seq_id",) and table.delimiter == "\t"


def test_deepstarr_gzipped_csv_with_two_tasks_and_set_words(tmp_path):
    sequences = random_sequences(6, 249, seed=2)
    sets = ["train", "val", "test", "Train", " Val ", "TEST"]
    dev = [1.5, -2.25, 0.0, 8.0, -5.0, 3.125]
    hk = [-0.5, 0.75, 2.0, -1.0, 4.5, -3.0]
    lines = ["sequence,Dev_log2_enrichment,Hk_log2_enrichment,set"]
    lines += [f"{s},{d},{h},{t}" for s, d, h, t in zip(sequences, dev, hk, sets)]
    # Compression is found from the first bytes, not the name.
    path = write(tmp_path / "deepstarr.csv", "\n".join(lines) + "\n", compress=True)

    table = read_table(path, target_columns=("Hk_log2_enrichment", "Dev_log2_enrichment"), split_column="set")

    assert list(table.sequences) == sequences and table.delimiter == ","
    assert table.task_names == ("Hk_log2_enrichment", "Dev_log2_enrichment")
    np.testing.assert_array_equal(table.targets, np.array([hk, dev], dtype=np.float32).T)
    assert table.split.tolist() == [0, 1, 2, 0, 1, 2]
    assert [SPLIT_NAMES[code] for code in table.split[:3]] == ["train", "validation", "test"]
    assert table.ignored_columns == ()


def test_a_plain_file_named_gz_is_read_as_plain_text(tmp_path):
    path = write(tmp_path / "plain.tsv.gz", "name\tseq\tvalue\nx\tACGT\t2.5\n")
    table = read_table(path)
    assert list(table.sequences) == ["ACGT"] and table.targets.tolist() == [[2.5]]


def test_default_columns_are_the_one_sequence_and_the_one_numeric_column(tmp_path):
    path = write(tmp_path / "t.csv", "id,activity,sequence,note\nr1,0.5,ACGTN,a\nr2,-1e-3,acgtn,b\n")
    table = read_table(path)
    assert table.sequence_column == "sequence" and table.task_names == ("activity",)
    np.testing.assert_array_equal(table.targets[:, 0], np.array([0.5, -1e-3], dtype=np.float32))
    assert table.ignored_columns == ("id", "note") and table.split is None


def test_no_targets_asked_for_leaves_targets_none(tmp_path):
    path = write(tmp_path / "t.tsv", "seq\ta\tb\nACG\t1\t2\n")
    table = read_table(path, require_targets=False)
    assert table.targets is None and table.task_names == () and table.ignored_columns == ("a", "b")


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("a\tb\tv\nACGT\tGGCC\t1\n", {}, ["'a', 'b' could each be the sequences", "--sequence-column NAME"]),
        ("a\tv\nx1\t1\n", {}, ["no column holds A/C/G/T/N strings", "columns: 'a', 'v'", "--sequence-column NAME"]),
        (
            "seq\tdev\thk\nACGT\t1\t2\n",
            {},
            ["'dev', 'hk' could each be the target", "--target-column NAME (repeat it for several tasks)"],
        ),
        (
            "seq\tname\tset\nACGT\tx\t1\n",
            {"split_column": "set", "validation_values": ("1",)},
            ["no column holds numbers in every row to be the target (columns: 'name')", "--target-column NAME"],
        ),
    ],
    ids=["two-sequence-columns", "no-sequence-column", "two-numeric-columns", "no-numeric-column"],
)
def test_column_detection_that_finds_none_or_several_says_which_flag_to_pass(tmp_path, text, options, expected):
    error = read_error(write(tmp_path / "t.tsv", text), **options)
    for part in expected:
        assert part in str(error)


def test_the_split_column_is_not_a_target_candidate(tmp_path):
    path = write(tmp_path / "t.tsv", "seq\tvalue\tfold\nACGT\t1.5\t3\nACGA\t2.5\t4\n")
    table = read_table(path, split_column="fold", test_values=("3",))
    assert table.task_names == ("value",) and table.split.tolist() == [2, 0]


@pytest.mark.parametrize(
    ("text", "options", "line", "parts"),
    [
        ("seq\tv\tseq\nACGT\t1\tA\n", {}, 1, ["'seq' appears twice in the header (columns 1 and 3)"]),
        ("seq\t \tv\nACGT\tx\t1\n", {}, 1, ["column 2 has an empty name"]),
        ("\nseq\tv\nACGT\t1\n", {}, 1, ["first line is empty"]),
        ("seq\tv\nACGT\t1\nACGT\t2\textra\n", {}, 3, ["found 3 tab-separated fields, expected 2"]),
        (
            "seq,v,w\nACGT,1,2\nACGT,1,2\nACGT,1\n",
            {"target_columns": ("v",)},
            4,
            ["found 2 comma-separated fields, expected 3"],
        ),
        ("seq\tv\nACGT\t1\n\nACGT\t2\n", {}, 3, ["empty line in the middle"]),
        ("seq\tv\nACGT\t1\n\tx\n", {"sequence_column": "seq"}, 3, ["column 'seq': empty sequence"]),
        (
            "seq\tv\nACGT\t1\nACGT\t2\nACXGT\t3\n",
            {"sequence_column": "seq"},
            4,
            ["column 'seq': character 'X' at position 3 of the sequence is not one of A, C, G, T, N"],
        ),
        ("seq\tv\nACGT\t1\nAC GT\t3\n", {"sequence_column": "seq"}, 3, ["character ' ' at position 3"]),
        ("seq\tv\nACGT\t1\nACGé\t3\n", {"sequence_column": "seq"}, 3, ["character 'é' at position 4"]),
        ("seq\tv\nACGT\t1\nACGT\t1.2.3\n", {"target_columns": ("v",)}, 3, ["column 'v': '1.2.3' is not a number"]),
        ("seq\tv\nACGT\t1\nACGT\t\n", {"target_columns": ("v",)}, 3, ["column 'v': '' is not a number"]),
        ("seq\tv\nACGT\t1\nACGT\t2\nACGT\tnan\n", {}, 4, ["column 'v': 'nan' is not a finite number"]),
        ("seq\tv\nACGT\t-inf\n", {}, 2, ["column 'v': '-inf' is not a finite number"]),
        ("seq\tv\nACGT\t1\nACGT\t1e39\n", {}, 3, ["column 'v': '1e39' is not a finite number"]),
        (
            "seq\tv\tset\nACGT\t1\ttrain\nACGT\t2\tfold3\n",
            {"split_column": "set"},
            3,
            ["column 'set': 'fold3' is not a split (train/training, val/valid/validation, test/testing",
             "--validation-values and --test-values"],
        ),
        ("seq,v,note\nACGT,1,\"a, b\"\nACGT,2,\"open\n", {"target_columns": ("v",)}, 3, ["malformed quoting"]),
        ("seq\tv\nACGT\t1\nAC\xffGT\t2\n", {"sequence_column": "seq"}, 3, ["character 'ÿ' at position 3"]),
    ],
    ids=[
        "duplicate-header", "empty-header-name", "blank-header", "too-many-fields", "too-few-fields", "blank-line",
        "empty-sequence", "bad-character", "space-in-sequence", "non-ascii-character", "not-a-number", "empty-target",
        "nan-target", "inf-target", "float32-overflow", "unknown-split-word", "unclosed-quote", "latin-1-in-utf-8",
    ],
)
def test_each_error_names_the_line_column_and_value(tmp_path, text, options, line, parts):
    path = write(tmp_path / "t.txt", text)
    error = read_error(path, **options)
    assert error.line == line
    assert str(error).startswith(f"{path}, line {line}: ")
    for part in parts:
        assert part in str(error)


def test_bytes_that_are_not_utf8_are_reported_at_their_line(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"seq\tv\nACGT\t1\nACGT\t2\nAC\xffGT\t3\n")
    error = read_error(path)
    assert error.line == 4 and "not UTF-8" in str(error)


def test_the_first_bad_line_in_file_order_is_reported_whatever_its_kind(tmp_path):
    header = "seq\tv\tset\n"
    good = "ACGT\t1\ttrain\n"
    bad_sequence, bad_value, bad_split, ragged = "ACGU\t1\ttrain\n", "ACGT\tx\ttrain\n", "ACGT\t1\tnope\n", "ACGT\t1\n"
    options = {"sequence_column": "seq", "target_columns": ("v",), "split_column": "set"}
    for lines, line in [
        ([good, bad_value, good, bad_sequence], 3),
        ([good, bad_sequence, bad_value], 3),
        ([good, good, bad_split, bad_sequence, bad_value], 4),
        ([good, bad_split, bad_value], 3),
        ([good, good, good, bad_value, bad_split], 5),
        ([good, bad_split, ragged], 3),
        ([good, ragged, bad_sequence], 3),
        ([good, bad_value, ragged], 3),
        ([good, good, "\n", bad_value], 4),
    ]:
        path = write(tmp_path / "t.tsv", header + "".join(lines))
        assert read_error(path, **options).line == line, lines


def test_a_malformed_line_wins_over_column_detection_on_the_rows_above_it(tmp_path):
    # Without line 3 the table has no numeric column; the ragged line is what the user must fix first.
    path = write(tmp_path / "t.tsv", "seq\tv\nACGT\tx\nACGT\t1\t2\n")
    error = read_error(path)
    assert error.line == 3 and "found 3 tab-separated fields" in str(error)


def test_a_bad_value_in_a_named_column_wins_over_column_detection(tmp_path):
    path = write(tmp_path / "t.tsv", "seq\tv\nACGT\t1\nACGU\t2\nACGT\tx\n")
    error = read_error(path, sequence_column="seq")
    assert error.line == 3 and "column 'seq': character 'U' at position 4" in str(error)


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        ({"sequence_column": "sequence"}, ["no column 'sequence'", "'seq', 'v', 'fold'"]),
        ({"target_columns": ("v", "w")}, ["no column 'w'"]),
        ({"split_column": "set"}, ["no column 'set'"]),
        ({"target_columns": ("v", "v")}, ["--target-column v is given 2 times"]),
        ({"split_column": "fold", "validation_values": ("1",), "test_values": (" 1",)}, ["'1' given both in"]),
        (
            {"split_column": "fold", "validation_values": ("1",), "test_values": ("11",)},
            ["column 'fold' never holds '11' (its values: '1', '2')"],
        ),
        ({"validation_values": ("1",)}, ["map values of a split column"]),
        ({"sequence_column": "seq", "target_columns": ("seq",)}, ["'seq' cannot be both the sequences and a target"]),
    ],
)
def test_column_choices_are_checked_against_the_header_and_each_other(tmp_path, options, parts):
    path = write(tmp_path / "t.tsv", "seq\tv\tfold\nACGT\t1\t1\nACGT\t2\t2\n")
    message = str(read_error(path, **options))
    for part in parts:
        assert part in message


def test_split_values_are_compared_stripped_and_case_sensitive(tmp_path):
    path = write(tmp_path / "t.tsv", "seq\tv\tgroup\nACGT\t1\t A \nACGT\t2\ta\nACGT\t3\tB\nACGT\t4\tC\n")
    table = read_table(path, split_column="group", validation_values=("A",), test_values=("B ", "C"))
    assert table.split.tolist() == [1, 0, 2, 2]


def test_a_header_only_table_is_an_error(tmp_path):
    error = read_error(write(tmp_path / "t.tsv", "seq\tv\n\n"))
    assert "no data rows" in str(error)


def test_an_empty_file_is_an_error(tmp_path):
    assert "file is empty" in str(read_error(write(tmp_path / "t.tsv", "")))


def test_crlf_lines_and_trailing_blank_lines_read_like_plain_ones(tmp_path):
    text = "seq,v,set\r\nACGT,1.25,train\r\nGGCC,-2,test\r\n\r\n\r\n"
    table = read_table(write(tmp_path / "t.csv", text), split_column="set")
    assert list(table.sequences) == ["ACGT", "GGCC"] and table.split.tolist() == [0, 2]
    assert table.targets[:, 0].tolist() == [1.25, -2.0]


def test_quoted_comma_fields_are_read_as_the_csv_module_reads_them(tmp_path):
    text = '"seq","v","note"\nACGT,1,"x, y"\n"GGCC",2,"say ""hi"""\n'
    table = read_table(write(tmp_path / "t.csv", text))
    assert table.sequence_column == "seq" and list(table.sequences) == ["ACGT", "GGCC"]
    assert table.targets[:, 0].tolist() == [1.0, 2.0] and table.ignored_columns == ("note",)


def test_a_bad_line_after_quoted_rows_keeps_its_file_line(tmp_path):
    text = 'seq,v,note\nACGT,1,"x, y"\nACGT,2,"z"\nACGT,three,w\n'
    error = read_error(write(tmp_path / "t.csv", text), target_columns=("v",))
    assert error.line == 4 and "'three' is not a number" in str(error)


@pytest.mark.parametrize(
    ("text", "nearest", "flag"),
    [
        (
            "id\tseq\tv\nr1\tACGT\t1\nr2\tACGT\t2\nr3\tACGU\t3\n",
            "line 4: column 'seq': character 'U' at position 4",
            "--sequence-column",
        ),
        ("seq\tv\tnote\nACGT\t1\tx\nACGT\tNA\ty\n", "line 3: column 'v': 'NA' is not a number", "--target-column"),
        ("id\tv\nr1\t1\n", None, "--sequence-column"),
    ],
)
def test_when_no_column_fits_the_nearest_miss_is_shown(tmp_path, text, nearest, flag):
    """A column that fails on its first row is no near miss, and none is shown."""
    message = str(read_error(write(tmp_path / "t.tsv", text)))
    assert f"name it with {flag} NAME" in message
    assert (f"; the nearest is {nearest}" in message) if nearest else ("nearest" not in message)


@pytest.mark.parametrize(
    ("text", "compress", "expected"),
    [
        ("ACGTNacgtn\t12.5\nACGT\t3\n", False, "dream"),
        ("ACGTNacgtn\t12.5\nACGT\t3\n", True, "dream"),
        ("TTGCA\t0\r\n", False, "dream"),
        ("seq\tmean_value\nACGT\t1\n", False, "table"),
        ("sequence,value\nACGT,1\n", True, "table"),
        ("ACGT,12.5\n", False, "table"),
        ("ACGU\t12.5\n", False, "table"),
        ("ACGT\t12.5\tx\n", False, "table"),
        ("", False, "table"),
    ],
)
def test_detect_format_by_the_first_line(tmp_path, text, compress, expected):
    assert detect_format(write(tmp_path / "data.txt", text, compress)) == expected


def test_a_truncated_or_corrupt_gzip_file_is_an_error_not_a_traceback(tmp_path):
    truncated, corrupt = tmp_path / "truncated.tsv", tmp_path / "corrupt.tsv"
    truncated.write_bytes(gzip.compress(b"seq\tv\n" + b"ACGT\t1\n" * 1000)[:40])
    corrupt.write_bytes(b"\x1f\x8b" + b"not deflate data" * 4)
    for read, path in ((read_table, truncated), (read_table, corrupt), (detect_format, corrupt)):
        with pytest.raises(DreamFormatError, match="cannot read it"):
            read(path)


def test_a_missing_file_is_an_error(tmp_path):
    with pytest.raises(DreamFormatError, match="no such file"):
        detect_format(tmp_path / "absent.tsv")
    assert "no such file" in str(read_error(tmp_path / "absent.tsv"))
