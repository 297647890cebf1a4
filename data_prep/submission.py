"""The challenge's test files in, its submission files out.

A test file is read with the training reader (`read_blocks`), so predictions see
exactly the training-time codes. The two submission formats are the final
phase's TSV (`sequence<TAB>prediction`, one line per test sequence in input
order, the sequence echoed as given) and the leaderboard phase's JSON object
mapping the 0-based test line index, as a string, to the prediction. Outputs are
written to a temporary file renamed into place, so a failure leaves nothing
behind and never a half-written submission.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data_prep.dream_format import read_blocks

FORMATS = ("tsv", "json")


@dataclass
class SequenceFile:
    """A test file's sequences as given, their 110-wide codes and (when read with it) measured expression."""

    sequences: list[str]
    codes: np.ndarray  # (n, SEQUENCE_WIDTH) uint8
    expression: np.ndarray | None  # (n,) float32


def read_test_sequences(
    path, with_expression: bool = False, progress: Callable[[int, int], None] | None = None
) -> SequenceFile:
    """Every line of a DREAM test file.

    `with_expression` requires a measured value on each line; negatives are allowed
    (the measured test expression is log-scale).
    """
    sequences, codes, expression = [], [], []
    for block in read_blocks(
        path, require_expression=with_expression, keep_sequences=True, progress=progress, nonnegative=False
    ):
        sequences.extend(block.sequences)
        codes.append(block.codes)
        expression.append(block.expression)
    return SequenceFile(
        sequences, np.concatenate(codes), np.concatenate(expression) if with_expression else None
    )


def format_prediction(value) -> str:
    """The shortest decimal that reads back as the same float32."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def write_submission(path, sequences: list[str], predictions: np.ndarray, format: str = "tsv") -> Path:
    """Write the TSV or JSON submission atomically; non-finite predictions are refused."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}; got {format!r}")
    predictions = np.asarray(predictions, dtype=np.float32).reshape(-1)
    if len(predictions) != len(sequences):
        raise ValueError(f"{len(sequences):,} sequences but {len(predictions):,} predictions")
    bad = ~np.isfinite(predictions)
    if bad.any():
        raise ValueError(
            f"the model predicted a non-finite value for {int(bad.sum()):,} sequences "
            f"(first: line {int(np.argmax(bad)) + 1:,}); no submission written"
        )
    values = [format_prediction(p) for p in predictions]
    if format == "tsv":
        text = "".join(f"{sequence}\t{value}\n" for sequence, value in zip(sequences, values))
    else:
        text = "{" + ", ".join(f'"{index}": {value}' for index, value in enumerate(values)) + "}\n"
    return write_atomically(path, text)


def write_task_predictions(
    path, sequences: list[str], predictions: np.ndarray, tasks: tuple[str, ...], format: str = "tsv"
) -> Path:
    """Predictions of a table's model: TSV `sequence<TAB>TASK...` under a header line, or a JSON list of
    one object per sequence (`{"sequence": ..., TASK: value, ...}`), written atomically."""
    predictions = np.asarray(predictions, dtype=np.float32).reshape(len(sequences), len(tasks))
    values = {task: predictions[:, index] for index, task in enumerate(tasks)}
    return write_table(path, {"sequence": sequences}, values, format, rows="sequences")


def write_table(
    path, text: dict[str, Sequence[str]], values: dict[str, np.ndarray], format: str = "tsv", rows: str = "rows"
) -> Path:
    """Text columns, then float32 value columns: TSV under a header line, or a JSON list of one object per row.

    The one writer of predictions with named columns (per task, per variant), so every such
    output refuses non-finite values (counted in `rows`) and is written atomically alike.
    """
    import json

    columns = {name: np.asarray(column, dtype=np.float32).reshape(-1) for name, column in values.items()}
    if columns:
        bad = ~np.isfinite(np.stack(list(columns.values()), axis=1)).all(axis=1)
        if bad.any():
            raise ValueError(
                f"the model predicted a non-finite value for {int(bad.sum()):,} {rows} "
                f"(first: row {int(np.argmax(bad)) + 1:,}); nothing written"
            )
    if format == "tsv":
        shown = [list(column) for column in text.values()] + [list(map(format_prediction, c)) for c in columns.values()]
        lines = ("\t".join(row) + "\n" for row in zip(*shown))
        body = "\t".join([*text, *columns]) + "\n" + "".join(lines)
    else:
        names = [*text, *columns]
        cells = [list(column) for column in text.values()] + [c.astype(float).tolist() for c in columns.values()]
        body = json.dumps([dict(zip(names, row)) for row in zip(*cells)]) + "\n"
    return write_atomically(path, body)


def write_atomically(path, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = check_output_path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):  # disk full, read-only: one line naming the output
            raise type(error)(f"{path}: cannot write it: {error.strerror or error}; nothing was written") from None
        raise
    return path


def check_output_path(path) -> Path:
    """Refuse an output path that cannot be written, before any long work is done for it."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give a file name for the output")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    return path
