"""Turn a DREAM training file or a user's sequence table into the arrays every trial memory-maps.

A prepared directory holds `codes.npy` (uint8, n x the layout's width), `targets.npy`
(float32, n for one task, n x tasks for several),
`train_index.npy` / `eval_index.npy` / `test_index.npy` (the fixed training,
validation and test splits), `test_targets.npy` and `manifest.json`, which states
each array's file, dtype and shape. The test split's targets live only in
`test_targets.npy` (NaN in `targets.npy`), which nothing opens but
`PreparedData.read_test_targets`, the study's one scoring pass after it has chosen. It is built in a temporary directory
beside the target and renamed into place only when complete, so a failure leaves
nothing half-written. `check_prepared` verifies a directory against its manifest
before anything trains on it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data_prep.dream_format import DreamFormatError, read_blocks
from data_prep.encoding import DREAM_LAYOUT, N_CODE, SEQUENCE_WIDTH, SequenceLayout, fit_sequences
from data_prep.table_format import detect_format, read_table

FORMAT_VERSION = 4
# Directories of format 2 (no test split) still load; their figures are validation figures.
# Formats 2 and 3 are DREAM files: DREAM_LAYOUT, one task.
READABLE_VERSIONS = (2, 3, 4)
FORMATS = ("dream", "table")
# The one task of DREAM data.
DREAM_TASK = "expression"
MANIFEST = "manifest.json"
# Caches dream-hpo derives from a prepared set and keeps beside it; part of its layout.
KMER_REFERENCE_FILE = "kmer_reference.json"
DERIVED_FILES = (KMER_REFERENCE_FILE,)
# The arrays of a manifest without an `arrays` entry (format 1), which `--overwrite` may replace.
UNLISTED_ARRAYS = ("codes", "targets", "train_index", "eval_index")
DEFAULT_EVAL_SIZE = 10_000
DEFAULT_EVAL_RULE = f"the smaller of {DEFAULT_EVAL_SIZE:,} and 10 % of the sequences"
# The test split has the same default rule as the validation split.
DEFAULT_TEST_RULE = DEFAULT_EVAL_RULE


def default_split_size(count: int) -> int:
    """The default validation (and test) size: DEFAULT_EVAL_RULE, at least 1."""
    return max(1, min(DEFAULT_EVAL_SIZE, count // 10))


class PreparedDataError(ValueError):
    """A prepared directory that cannot be trained on; the message names the file, the value and what is allowed."""


@dataclass(frozen=True)
class TableOptions:
    """How to read a user's table (data_prep.table_format) and lay its sequences out.

    `length` fixes the stored width (default: the longest sequence); a longer sequence
    is cut on the `trim` side only when `trim` is given, never otherwise. `window` is
    the (start, end) columns models read (default: the whole width).
    """

    sequence_column: str | None = None
    target_columns: tuple[str, ...] = ()
    split_column: str | None = None
    validation_values: tuple[str, ...] = ()
    test_values: tuple[str, ...] = ()
    length: int | None = None
    trim: str | None = None
    pad: str = "right"
    window: tuple[int, int] | None = None

    def is_default(self) -> bool:
        return self == TableOptions()


def prepare(
    source,
    out_dir,
    eval_size: int | None = None,
    split_seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    test_size: int | None = None,
    format: str | None = None,
    table: TableOptions = TableOptions(),
) -> dict:
    """Validate and encode `source` into `out_dir`; returns the manifest.

    `format` is "dream" or "table" (None: detected from the first line); `table` says
    how to read a table. `eval_size=None` holds out DEFAULT_EVAL_RULE (at least 1) for
    validation, and `test_size=None` as many again for test; `test_size=0` keeps two
    splits; a table's split column replaces both. `out_dir` may exist
    only as an empty directory or, with `overwrite`, as exactly a prepared layout;
    anything else is refused, never deleted. The data is built beside `out_dir` and
    renamed into place, so a failure or an interruption leaves `out_dir` as it was.
    """
    source, out_dir = Path(source), Path(out_dir)
    if eval_size is not None and eval_size < 1:
        raise ValueError(f"--eval-size must be at least 1, got {eval_size}")
    if test_size is not None and test_size < 0:
        raise ValueError(f"--test-size must be 0 or more (0 keeps no test split), got {test_size}")
    if split_seed < 0:
        raise ValueError(f"--split-seed must be 0 or more, got {split_seed}")
    if format is not None and format not in FORMATS:
        raise ValueError(f"--format must be one of {list(FORMATS)}, got {format!r}")
    _check_table_options(table, eval_size, test_size)
    if format is None:
        try:
            format = detect_format(source)
        except DreamFormatError:
            format = "dream"  # unreadable: the strict reader says why, as it always has
    if format == "dream" and not table.is_default():
        raise ValueError(
            f"{source} is read in the DREAM format (SEQUENCE<TAB>EXPRESSION, the seed's 110-wide layout); "
            "the table options (--sequence-column, --target-column, --split-column, --length, --window ...) "
            "apply to --format table"
        )
    replaces = check_output_directory(out_dir, overwrite)
    created = [parent for parent in (out_dir.parent, *out_dir.parent.parents) if not parent.exists()]
    # Made with mkdir, not mkdtemp, so the directory gets the umask's permissions, not 0700.
    scratch = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        scratch.mkdir()
        if format == "dream":
            read = _read_dream(source, scratch, progress)
        else:
            read = _read_table(source, scratch, table)
        manifest = _write_arrays(source, scratch, read, eval_size, test_size, split_seed)
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _install(scratch, out_dir, replaces)
    except BaseException as error:
        shutil.rmtree(scratch, ignore_errors=True)
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(error, OSError):
            raise type(error)(
                f"{out_dir}: cannot write the prepared data: {error.strerror or error}; the partial output was removed"
            ) from None
        raise
    return manifest


def check_output_directory(out_dir: Path, overwrite: bool) -> set[str] | None:
    """The prepared files `out_dir` holds and `prepare` may replace: None when it is new or empty.

    Refuses the working directory, anything but a directory, and a directory holding
    anything besides a manifest and the arrays it names; a prepared one only with `overwrite`.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return None
    resolved, working = out_dir.resolve(), Path.cwd().resolve()
    if resolved == working or resolved in working.parents:
        raise FileExistsError(f"--out {out_dir} is the working directory or holds it; give a new directory")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} exists and is not a plain directory; give a new directory")
    entries = {entry.name for entry in out_dir.iterdir()}
    if not entries:
        return None
    files = _prepared_files(out_dir)
    if files is None:
        detail = f"it holds {_some(entries)} and no readable {MANIFEST}"
    elif entries - files:
        detail = f"it also holds {_some(entries - files)}"
    elif files - entries:
        detail = f"{_some(files - entries)} named by its {MANIFEST} missing"
    elif any((out_dir / name).is_symlink() or not (out_dir / name).is_file() for name in files):
        detail = "some of its entries are not plain files"
    else:
        detail = None
    if detail:
        raise FileExistsError(
            f"--out {out_dir} exists and is not a prepared data directory ({detail}); "
            "prepare never deletes what it did not make: give a new directory"
        )
    if not overwrite:
        raise FileExistsError(f"--out {out_dir} already holds prepared data; pass --overwrite to replace it")
    return files


def _prepared_files(directory: Path) -> set[str] | None:
    """The manifest and the array files it names; None without a readable manifest."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        arrays = manifest.get("arrays") or {name: {"file": f"{name}.npy"} for name in UNLISTED_ARRAYS}
        derived = {name for name in DERIVED_FILES if (directory / name).is_file()}
        return {MANIFEST, *(str(spec["file"]) for spec in arrays.values()), *derived}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _some(names) -> str:
    names = sorted(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _install(scratch: Path, out_dir: Path, replaces: set[str] | None) -> None:
    """Rename the finished `scratch` to `out_dir`; an old prepared `out_dir` goes only once the new one is in place."""
    if replaces is None:
        os.replace(scratch, out_dir)  # out_dir is absent or empty: one atomic rename
        return
    old = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.old"
    os.rename(out_dir, old)
    try:
        os.rename(scratch, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    for name in replaces:
        (old / name).unlink()
    # Anything added to the old directory since it was checked stays, in `old`.
    with contextlib.suppress(OSError):
        old.rmdir()


def array_layout(
    count: int, train_size: int, eval_size: int, test_size: int | None, width: int = SEQUENCE_WIDTH, tasks: int = 1
) -> dict:
    """File, dtype and shape of each array of a prepared directory, as its manifest states them.

    `test_size=None` is the layout of format 2, which had no test split. Targets are
    one column per task, a vector for one task.
    """
    per_task = [] if tasks == 1 else [tasks]
    layout = {
        "codes": {"file": "codes.npy", "dtype": "uint8", "shape": [count, width]},
        "targets": {"file": "targets.npy", "dtype": "float32", "shape": [count, *per_task]},
        "train_index": {"file": "train_index.npy", "dtype": "int64", "shape": [train_size]},
        "eval_index": {"file": "eval_index.npy", "dtype": "int64", "shape": [eval_size]},
    }
    if test_size is None:
        return layout
    return layout | {
        "test_index": {"file": "test_index.npy", "dtype": "int64", "shape": [test_size]},
        "test_targets": {"file": "test_targets.npy", "dtype": "float32", "shape": [test_size, *per_task]},
    }


def _check_table_options(table: TableOptions, eval_size: int | None, test_size: int | None) -> None:
    """The table flags among themselves, before anything is read."""
    if table.split_column is not None and (eval_size is not None or test_size is not None):
        raise ValueError("--split-column gives the splits; drop --eval-size and --test-size")
    if (table.validation_values or table.test_values) and table.split_column is None:
        raise ValueError("--validation-values and --test-values map values of --split-column; give --split-column")
    if table.length is not None and table.length < 1:
        raise ValueError(f"--length must be at least 1, got {table.length}")
    if table.trim is not None and table.length is None:
        raise ValueError("--trim cuts sequences to --length; give --length too")
    if table.window is not None:
        start, end = table.window
        if not 0 <= start < end:
            raise ValueError(f"--window {start}:{end}: it needs 0 <= START < END")


@dataclass
class _Read:
    """A source's rows, encoded: codes are already in `scratch/codes.npy`."""

    format: str
    layout: SequenceLayout
    count: int
    targets: np.ndarray  # (count, tasks) float32
    task_names: tuple[str, ...]
    split: np.ndarray | None  # int8 codes of table_format.SPLIT_NAMES, from the user's split column
    details: dict  # the manifest's record of what reading found


def _read_dream(source: Path, scratch: Path, progress) -> _Read:
    lengths = np.zeros(0, dtype=np.int64)
    targets = []
    count = n_characters = 0
    with (scratch / "codes.npy").open("wb+") as codes_file:
        header = _npy_header(0)
        codes_file.write(header)
        for block in read_blocks(source, require_expression=True, progress=progress):
            codes_file.write(block.codes.tobytes())
            count += len(block.codes)
            targets.append(block.expression)
            lengths = _add_counts(lengths, block.lengths)
            n_characters += _n_characters(block)
        final_header = _npy_header(count)
        assert len(final_header) == len(header), "NumPy's .npy header must not change size"
        codes_file.seek(0)
        codes_file.write(final_header)
    targets = np.concatenate(targets).astype(np.float32)[:, None]
    details = {
        "length_histogram": {str(k): int(v) for k, v in enumerate(lengths) if v},
        "truncated": int(lengths[SEQUENCE_WIDTH + 1 :].sum()),
        "padded": int(lengths[:SEQUENCE_WIDTH].sum()),
        "n_characters": n_characters,
        "expression": _target_statistics(targets[:, 0]),
    }
    return _Read("dream", DREAM_LAYOUT, count, targets, (DREAM_TASK,), None, details)


def _read_table(source: Path, scratch: Path, options: TableOptions) -> _Read:
    table = read_table(
        source,
        sequence_column=options.sequence_column,
        target_columns=options.target_columns,
        split_column=options.split_column,
        validation_values=options.validation_values,
        test_values=options.test_values,
    )
    lengths = np.fromiter(map(len, table.sequences), dtype=np.int64, count=len(table.sequences))
    width = int(lengths.max()) if options.length is None else options.length
    if options.length is not None and options.trim is None and (lengths > width).any():
        row = int(np.argmax(lengths > width))
        raise DreamFormatError(
            source,
            f"column {table.sequence_column!r} holds a sequence of {lengths[row]} bases, longer than --length "
            f"{width}; give --trim left, right or both to cut such sequences ({int((lengths > width).sum()):,} of them)",
            row + 2,
        )
    start, end = options.window or (0, width)
    if end > width:
        raise ValueError(f"--window {start}:{end} ends past the stored width of {width} bases")
    layout = SequenceLayout(width, start, end - start, options.pad, options.trim)
    codes, fitted = fit_sequences(table.sequences, layout)
    np.save(scratch / "codes.npy", codes)
    details = {
        "sequence_column": table.sequence_column,
        "split_column": table.split_column,
        "ignored_columns": list(table.ignored_columns),
        "length_histogram": {str(k): int(v) for k, v in zip(*np.unique(lengths, return_counts=True))},
        "truncated": fitted.trimmed,
        "padded": fitted.padded,
        "n_characters": int(np.count_nonzero(codes == N_CODE)) - _padding_bases(lengths, width),
        "tasks": {name: _target_statistics(table.targets[:, i]) for i, name in enumerate(table.task_names)},
    }
    return _Read("table", layout, len(codes), table.targets, table.task_names, table.split, details)


def _padding_bases(lengths: np.ndarray, width: int) -> int:
    return int(np.maximum(width - lengths, 0).sum())


def _write_arrays(source: Path, scratch: Path, read: _Read, eval_size: int | None, test_size: int | None, split_seed: int) -> dict:
    count = read.count
    if read.split is not None:
        eval_index, test_index, train_index = (np.flatnonzero(read.split == code).astype(np.int64) for code in (1, 2, 0))
        eval_rule = test_rule = f"--split-column {read.details['split_column']}"
        if not len(train_index) or not len(eval_index):
            empty = "training" if not len(train_index) else "validation"
            raise DreamFormatError(
                source, f"the split column {read.details['split_column']!r} leaves the {empty} split empty"
            )
        eval_size, test_size = len(eval_index), len(test_index)
    else:
        eval_rule = "--eval-size" if eval_size is not None else DEFAULT_EVAL_RULE
        test_rule = "--test-size" if test_size is not None else DEFAULT_TEST_RULE
        eval_size = default_split_size(count) if eval_size is None else eval_size
        test_size = default_split_size(count) if test_size is None else test_size
        if eval_size + test_size >= count:
            raise DreamFormatError(
                source,
                f"has {count:,} sequences; the validation split of {eval_size:,} and the test split of "
                f"{test_size:,} must leave training data",
            )
        # One seeded permutation: validation first (the same rows as with --test-size 0), then test.
        order = np.random.default_rng(split_seed).permutation(count).astype(np.int64)
        eval_index = np.sort(order[:eval_size])
        test_index = np.sort(order[eval_size : eval_size + test_size])
        train_index = np.sort(order[eval_size + test_size :])
    tasks = len(read.task_names)
    targets = read.targets.astype(np.float32) if tasks > 1 else read.targets[:, 0].astype(np.float32)
    np.save(scratch / "eval_index.npy", eval_index)
    np.save(scratch / "test_index.npy", test_index)
    np.save(scratch / "train_index.npy", train_index)
    np.save(scratch / "test_targets.npy", targets[test_index])
    targets[test_index] = np.nan  # reachable only through test_targets.npy
    np.save(scratch / "targets.npy", targets)
    train_size = count - eval_size - test_size
    return {
        "format_version": FORMAT_VERSION,
        "source": str(source.resolve()),
        "source_sha256": sha256(source),
        "source_format": read.format,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "count": count,
        "train_size": train_size,
        "eval_size": eval_size,
        "eval_size_rule": eval_rule,
        "test_size": test_size,
        "test_size_rule": test_rule,
        "split_seed": split_seed,
        "tasks": list(read.task_names),
        "target_minima": [float(v) for v in read.targets.min(axis=0)],
        "layout": read.layout.to_dict(),
        "arrays": array_layout(count, train_size, eval_size, test_size, read.layout.width, tasks),
        "sequence_width": read.layout.width,
        "window_start": read.layout.window_start,
        "window_length": read.layout.window_length,
        **read.details,
    }


def _target_statistics(targets: np.ndarray) -> dict:
    return {
        "min": float(targets.min()),
        "max": float(targets.max()),
        "mean": float(targets.mean()),
        "std": float(targets.std()),
        "whole_numbers": float(np.mean(targets == np.round(targets))),
    }


def _npy_header(rows: int, dtype: str = "|u1", width: int | None = SEQUENCE_WIDTH) -> bytes:
    """The .npy header of a (rows, width) array (width None: 1-D); NumPy pads it so its size never depends on rows."""
    import io

    buffer = io.BytesIO()
    shape = (rows,) if width is None else (rows, width)
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _add_counts(histogram: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    counts = np.bincount(lengths)
    size = max(len(histogram), len(counts))
    return np.pad(histogram, (0, size - len(histogram))) + np.pad(counts, (0, size - len(counts)))


def _n_characters(block) -> int:
    """N characters in the kept part of the sequences, not counting the 3' padding."""
    padding = np.maximum(SEQUENCE_WIDTH - block.lengths, 0).sum()
    return int(np.count_nonzero(block.codes == N_CODE) - padding)


def sha256(path: Path) -> str:
    with Path(path).open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def check_prepared(directory) -> dict:
    """The manifest of a prepared directory whose arrays are all there, whole and in range.

    Reads each array's .npy header and size, then scans the values once through a
    memory map: codes within 0..4, targets finite and >= 0 (NaN on test rows), the
    splits' indices a partition of the rows. `test_targets.npy` is checked by its size
    alone, without opening it: the study must not read it before it has chosen. Raises `PreparedDataError` naming the file, the value and
    what is allowed, so a broken directory is refused before any trial starts.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    make = f"make one with `dream-hpo prepare TRAIN.txt --out {directory}`"
    if not directory.is_dir():
        raise PreparedDataError(f"{directory}: no such directory; {make}")
    if not manifest_path.is_file():
        raise PreparedDataError(f"{directory} is not a prepared data directory (no {MANIFEST}); {make}")
    again = f"prepare the data again (`dream-hpo prepare TRAIN.txt --out {directory} --overwrite`)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except OSError as error:
        raise PreparedDataError(f"{manifest_path}: cannot read it ({error.strerror})") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise PreparedDataError(f"{manifest_path}: not valid JSON ({error}); {again}") from None
    if not isinstance(manifest, dict):
        raise PreparedDataError(f"{manifest_path}: holds a {type(manifest).__name__}, not a JSON object; {again}")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise PreparedDataError(
            f"{manifest_path}: format_version is {version!r}; this dream-hpo reads {list(READABLE_VERSIONS)}: {again}"
        )
    sizes = {"count": 2, "train_size": 1, "eval_size": 1} | ({"test_size": 0} if version >= 3 else {})
    for key, least in sizes.items():
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise PreparedDataError(f"{manifest_path}: {key} is {value!r}; it must be a whole number >= {least}")
    count, train_size, eval_size = manifest["count"], manifest["train_size"], manifest["eval_size"]
    test_size = manifest.get("test_size") if version >= 3 else None
    if train_size + eval_size + (test_size or 0) != count:
        raise PreparedDataError(
            f"{manifest_path}: train_size {train_size:,} + eval_size {eval_size:,}"
            + (f" + test_size {test_size:,}" if test_size is not None else "")
            + f" must equal count {count:,}"
        )
    facts = DataFacts.of(manifest, manifest_path)
    expected = array_layout(count, train_size, eval_size, test_size, facts.layout.width, len(facts.tasks))
    if manifest.get("arrays") != expected:
        raise PreparedDataError(
            f"{manifest_path}: arrays is {manifest.get('arrays')!r}; for its counts it must be {expected}"
        )
    for name, spec in expected.items():
        if name != "test_targets":
            _check_npy(directory / spec["file"], np.dtype(spec["dtype"]), tuple(spec["shape"]))
    if test_size is not None:
        _check_size_unopened(directory / expected["test_targets"]["file"], tuple(expected["test_targets"]["shape"]))
    _check_values(directory, count, test_size is not None, facts.signed)
    return manifest


def _check_size_unopened(path: Path, shape: tuple) -> None:
    """The test targets file is there with the size a float32 array of `shape` needs; its contents are not read."""
    if not path.is_file():
        raise PreparedDataError(f"{path}: missing; {MANIFEST} names it")
    needed = len(_npy_header(shape[0], "<f4", shape[1] if len(shape) > 1 else None)) + 4 * int(np.prod(shape))
    size = path.stat().st_size
    if size != needed:
        state = "truncated" if size < needed else "longer than its array"
        raise PreparedDataError(f"{path}: {state}: {size:,} bytes where float32 {shape} needs {needed:,}")


def _check_npy(path: Path, dtype: np.dtype, shape: tuple) -> None:
    """The .npy file at `path` holds a C-order `dtype` array of `shape` and is neither truncated nor padded."""
    if not path.is_file():
        raise PreparedDataError(f"{path}: missing; {MANIFEST} names it")
    try:
        with path.open("rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            found_shape, fortran_order, found_dtype = read_header[version](stream)
            data_start = stream.tell()
    except (OSError, ValueError, KeyError) as error:
        raise PreparedDataError(f"{path}: not a readable NumPy .npy file ({error})") from None
    if found_dtype != dtype or found_shape != shape or fortran_order:
        order = ", Fortran order" if fortran_order else ""
        raise PreparedDataError(
            f"{path}: holds {found_dtype} {found_shape}{order}; {MANIFEST} states {dtype} {shape} in C order"
        )
    needed = data_start + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != needed:
        state = "truncated" if size < needed else "longer than its array"
        raise PreparedDataError(f"{path}: {state}: {size:,} bytes where {dtype} {shape} needs {needed:,}")


def _check_values(directory: Path, count: int, has_test_split: bool, signed: bool) -> None:
    codes = np.load(directory / "codes.npy", mmap_mode="r")
    if codes.max() > N_CODE:
        for start in range(0, count, 1 << 20):
            chunk = np.asarray(codes[start : start + (1 << 20)])
            if chunk.max() > N_CODE:
                row, column = np.argwhere(chunk > N_CODE)[0]
                raise PreparedDataError(
                    f"{directory / 'codes.npy'}: row {start + row:,}, column {column} holds code "
                    f"{chunk[row, column]}; codes must be 0..{N_CODE} (A, C, G, T, N)"
                )
    splits = ("eval_index", "test_index", "train_index") if has_test_split else ("eval_index", "train_index")
    seen = np.zeros(count, dtype=bool)
    for name in splits:
        index = np.load(directory / f"{name}.npy", mmap_mode="r")
        out_of_range = (index < 0) | (index >= count)
        if out_of_range.any() or seen[index].any():
            row = int(np.argmax(out_of_range)) if out_of_range.any() else int(np.argmax(seen[index]))
            problem = f"outside 0..{count - 1:,}" if out_of_range.any() else "also in an earlier split"
            raise PreparedDataError(
                f"{directory / name}.npy: entry {row:,} holds row {index[row]:,}, {problem}; "
                f"the splits ({', '.join(splits)}) must divide the rows between them"
            )
        seen[index] = True
    if not seen.all():
        raise PreparedDataError(
            f"{directory}: row {int(np.argmin(seen)):,} is in none of {', '.join(splits)} (an index "
            "repeats); the splits must divide the rows between them"
        )
    targets = np.load(directory / "targets.npy", mmap_mode="r").reshape(count, -1)
    test_rows = np.zeros(count, dtype=bool)
    if has_test_split:
        test_rows[np.load(directory / "test_index.npy", mmap_mode="r")] = True
    valid = np.isfinite(targets) & (True if signed else targets >= 0)
    bad = ~np.where(test_rows[:, None], np.isnan(targets), valid).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        allowed = "finite" if signed else "finite and >= 0"
        allowed = "NaN on a test row (its target is in test_targets.npy)" if test_rows[row] else allowed
        shown = targets[row, 0] if targets.shape[1] == 1 else targets[row]
        raise PreparedDataError(f"{directory / 'targets.npy'}: row {row:,} holds {shown}; it must be {allowed}")


@dataclass(frozen=True)
class DataFacts:
    """What a prepared set fixes about the models trained on it: its format, layout and tasks."""

    format: str
    layout: SequenceLayout
    tasks: tuple[str, ...]
    target_minima: tuple[float, ...]

    @property
    def signed(self) -> bool:
        """Whether targets may be negative: a table's may, the DREAM format's never."""
        return self.format != "dream"

    @classmethod
    def of(cls, manifest: dict, manifest_path: Path | str = MANIFEST) -> "DataFacts":
        """The facts a manifest records; formats 2 and 3 are DREAM files (DREAM_LAYOUT, one task)."""
        if manifest.get("format_version", FORMAT_VERSION) < 4:
            minimum = manifest.get("expression", {}).get("min", 0.0)
            return cls("dream", DREAM_LAYOUT, (DREAM_TASK,), (float(minimum),))
        try:
            facts = cls(
                manifest["source_format"],
                SequenceLayout.from_dict(manifest["layout"]),
                tuple(manifest["tasks"]),
                tuple(float(v) for v in manifest["target_minima"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PreparedDataError(f"{manifest_path}: its source_format, layout or tasks do not read ({error})") from None
        if facts.format not in FORMATS or not facts.tasks or len(facts.target_minima) != len(facts.tasks):
            raise PreparedDataError(f"{manifest_path}: source_format must be one of {list(FORMATS)}, with one minimum per task")
        return facts


@dataclass
class PreparedData:
    """A prepared directory, arrays memory-mapped read-only so every trial shares the page cache."""

    directory: Path
    manifest: dict
    codes: np.ndarray
    targets: np.ndarray  # NaN on test rows
    train_index: np.ndarray
    eval_index: np.ndarray  # the validation split: every choice of a study is made on it
    test_index: np.ndarray  # empty without a test split

    @classmethod
    def load(cls, directory) -> "PreparedData":
        """The arrays a study may read while it chooses: everything but the test targets."""
        directory = Path(directory)
        manifest = check_prepared(directory)
        arrays = {
            name: np.load(directory / spec["file"], mmap_mode="r")
            for name, spec in manifest["arrays"].items()
            if name != "test_targets"
        }
        arrays.setdefault("test_index", np.zeros(0, dtype=np.int64))
        return cls(directory, manifest, **arrays)

    @property
    def has_test_split(self) -> bool:
        return len(self.test_index) > 0

    @property
    def facts(self) -> DataFacts:
        return DataFacts.of(self.manifest, self.directory / MANIFEST)

    def read_test_targets(self) -> np.ndarray:
        """The test split's targets, in test_index order: for the one scoring pass after the study has chosen."""
        path = self.directory / self.manifest["arrays"]["test_targets"]["file"]
        _check_npy(path, np.dtype("float32"), tuple(self.manifest["arrays"]["test_targets"]["shape"]))
        targets = np.load(path)
        signed = self.facts.signed
        bad = ~(np.isfinite(targets) & (True if signed else targets >= 0))
        if bad.any():
            row = int(np.argmax(bad.reshape(len(targets), -1).any(axis=1)))
            allowed = "finite" if signed else "finite and >= 0"
            raise PreparedDataError(f"{path}: entry {row:,} holds {targets[row]}; targets must be {allowed}")
        return targets


def read_facts(directory) -> DataFacts | None:
    """The facts a prepared directory's manifest records, or None without a readable one (`check_prepared` says why)."""
    try:
        return DataFacts.of(json.loads((Path(directory) / MANIFEST).read_text()))
    except (OSError, ValueError, AttributeError):
        return None
