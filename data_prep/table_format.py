"""Read a user's sequence table (a header, then tab- or comma-separated rows, optionally gzipped) strictly.

Users bring MPRA and STARR-seq libraries as tables: a sequence column, one numeric
column per task, often a split or fold column, and columns to ignore. Every problem is
a `DreamFormatError` naming the file, the file line (the header is line 1), the column,
the value and what is allowed; of several problems the one nearest the top is raised.

Speed: 500k rows of 230 bp read in about a second. Fields are split out of the whole
text at once and columns are list slices: a list per row costs several times as much,
most of it in the garbage collector. Only comma files with quotes go through the csv
module, line by line (twice as slow), so that a quoted field cannot run onto the next
line and data row `i` is always file line `i + 2`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import zlib
from dataclasses import dataclass
from itertools import chain
from operator import methodcaller
from pathlib import Path

import numpy as np

from data_prep.dream_format import EMPTY_LINE, DreamFormatError
from data_prep.encoding import BASES, CODE_OF_BYTE, INVALID

SPLIT_NAMES = ("train", "validation", "test")  # codes 0, 1, 2 in Table.split
SPLIT_WORDS = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "testing": 2}
GZIP_MAGIC = b"\x1f\x8b"
HEADER_LINE = 1
FIRST_ROW_LINE = 2
VALID_BYTES = bytes(np.flatnonzero(CODE_OF_BYTE != INVALID).tolist())
ALLOWED_BASES = ", ".join(BASES)
SHOWN_SPLIT_WORDS = ", ".join("/".join(w for w, c in SPLIT_WORDS.items() if c == code) for code in range(3))
TARGET_FLAG = "--target-column NAME (repeat it for several tasks)"


@dataclass(frozen=True, eq=False)
class Table:
    """A validated table: one entry per data row, in file order."""

    path: Path
    sequences: np.ndarray  # object array of str, as in the file (case kept)
    targets: np.ndarray | None  # float32 (n, len(task_names)); None when no targets were asked for
    task_names: tuple[str, ...]
    split: np.ndarray | None  # int8 (n,), codes of SPLIT_NAMES; None without a split column
    sequence_column: str
    split_column: str | None
    ignored_columns: tuple[str, ...]  # every other header name, in file order
    delimiter: str  # "\t" or ","


@dataclass(frozen=True)
class _Problem:
    """One bad line found by one check; the reader raises the one nearest the top of the file."""

    line: int
    message: str


@dataclass(frozen=True)
class _Rows:
    """The header, and column by column the well-formed data rows above the first malformed line."""

    header: tuple[str, ...]
    columns: dict[str, list[str]]
    delimiter: str
    problem: _Problem | None


def detect_format(path) -> str:
    """'dream' when the first line is SEQUENCE<TAB>NUMBER (no header; A/C/G/T/N in any case), else 'table'."""
    path = Path(path)
    with _reading(path) as stream:
        fields = stream.readline().rstrip(b"\r\n").split(b"\t")
    if len(fields) != 2 or not fields[0] or fields[0].translate(None, VALID_BYTES):
        return "table"
    return "dream" if _is_number(fields[1]) else "table"


def read_table(
    path,
    sequence_column: str | None = None,
    target_columns: tuple[str, ...] = (),
    split_column: str | None = None,
    validation_values: tuple[str, ...] = (),
    test_values: tuple[str, ...] = (),
    require_targets: bool = True,
) -> Table:
    """Read and check a table; raise `DreamFormatError` at its first problem.

    A column not named is found from the values: the sequences are the one column of
    A/C/G/T/N strings, and (when `require_targets`) the target the one other column of
    numbers besides the split column. A split column holds train/val/test words, unless
    `validation_values` / `test_values` map its values (every other value is training).
    """
    path = Path(path)
    target_columns = tuple(target_columns)
    validation_values = tuple(value.strip() for value in validation_values)
    test_values = tuple(value.strip() for value in test_values)
    _check_arguments(path, sequence_column, target_columns, split_column, validation_values, test_values)
    rows = _split_rows(path, _read_text(path))
    header, values = rows.header, rows.columns
    for name in (sequence_column, *target_columns, split_column):
        if name is not None and name not in values:
            raise DreamFormatError(path, f"no column {name!r}; the header has {_listed(header)}", HEADER_LINE)
    if not values[header[0]]:
        if rows.problem:
            raise _error(path, rows.problem)
        raise DreamFormatError(path, "no data rows after the header")
    problems = [rows.problem]

    if sequence_column is None:
        named = {*target_columns, split_column}
        misses = {name: _sequence_problem(name, values[name]) for name in header if name not in named}
        sequence_column = _the_one(
            path, problems, misses, "the sequences", "A/C/G/T/N strings", "--sequence-column NAME"
        )
    else:
        problems.append(_sequence_problem(sequence_column, values[sequence_column]))

    numbers = {}
    if not target_columns and require_targets:
        others = [name for name in header if name not in (sequence_column, split_column)]
        numbers = {name: _numbers(values[name]) for name in others}
        misses = {
            name: None if parsed is not None else _not_a_number(name, values[name], bad_row)
            for name, (parsed, bad_row) in numbers.items()
        }
        target_columns = (_the_one(path, problems, misses, "the target", "numbers", TARGET_FLAG),)
    targets = []
    for name in target_columns:
        column, problem = _target(name, values[name], numbers.get(name) or _numbers(values[name]))
        targets.append(column)
        problems.append(problem)

    split = None
    if split_column is not None:
        split, problem = _split_codes(split_column, values[split_column], validation_values, test_values)
        problems.append(problem)

    first = _first(problems)
    if first:
        raise _error(path, first)
    if split_column is not None:
        _check_split_values(path, split_column, values[split_column], validation_values + test_values)
    used = {sequence_column, *target_columns, split_column}
    return Table(
        path=path,
        sequences=np.array(values[sequence_column], dtype=object),
        targets=np.stack(targets, axis=1) if targets else None,
        task_names=target_columns,
        split=split,
        sequence_column=sequence_column,
        split_column=split_column,
        ignored_columns=tuple(name for name in header if name not in used),
        delimiter=rows.delimiter,
    )


def read_header(path) -> tuple[str, ...]:
    """The first line's column names, stripped and not yet checked: enough to tell two kinds of table apart."""
    path = Path(path)
    with _reading(path) as stream:
        line = stream.readline().decode("utf-8-sig", "replace").rstrip("\r\n")
    delimiter = _delimiter(line)
    fields = next(csv.reader([line]), []) if delimiter == "," and '"' in line else line.split(delimiter)
    return tuple(field.strip() for field in fields)


def read_sequence_columns(
    path, named: tuple[str | None, ...], roles: tuple[str, ...], flags: tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, list[str]], tuple[str, ...]]:
    """(header, every column as text, each role's column) of a table with several sequences a row.

    A variant table holds a reference and an alternative per row. Role `i` is column
    `named[i]`; else the column called `roles[i]` in any case; the roles still open take
    the table's other columns of A/C/G/T/N strings, in file order, when there are exactly
    as many. Problems raise `DreamFormatError` as `read_table`'s do, the nearest the top of
    the file first; `flags[i]` is how the message says to choose role `i`.
    """
    path = Path(path)
    given = [name for name in named if name is not None]
    for name in dict.fromkeys(given):
        if given.count(name) > 1:
            both = " and ".join(flag.split()[0] for flag, other in zip(flags, named) if other == name)
            raise DreamFormatError(path, f"{both} both name column {name!r}; a pair needs two columns")
    rows = _split_rows(path, _read_text(path))
    header, values = rows.header, rows.columns
    for name, flag in zip(named, flags):
        if name is not None and name not in values:
            message = f"no column {name!r} ({flag.split()[0]}); the header has {_listed(header)}"
            raise DreamFormatError(path, message, HEADER_LINE)
    if not values[header[0]]:
        if rows.problem:
            raise _error(path, rows.problem)
        raise DreamFormatError(path, "no data rows after the header")
    chosen = list(named)
    for index, role in enumerate(roles):
        if chosen[index] is None:
            matches = [name for name in header if name.lower() == role.lower() and name not in chosen]
            if len(matches) > 1:
                message = f"columns {_listed(matches)} could each be the {role}; choose with {flags[index]}"
                raise DreamFormatError(path, message, HEADER_LINE)
            chosen[index] = matches[0] if matches else None
    open_roles = [index for index, name in enumerate(chosen) if name is None]
    if open_roles:
        misses = {name: _sequence_problem(name, values[name]) for name in header if name not in chosen}
        found = [name for name, miss in misses.items() if miss is None]
        if len(found) != len(open_roles):
            if rows.problem:
                raise _error(path, rows.problem)
            raise _unchosen(path, [roles[i] for i in open_roles], [flags[i] for i in open_roles], found, misses)
        if not "".join(found).encode("ascii", "replace").translate(None, VALID_BYTES):
            message = f"the first line holds sequences ({_listed(found)}), not a header; add a line of column names"
            raise DreamFormatError(path, message, HEADER_LINE)
        for index, name in zip(open_roles, found):
            chosen[index] = name
    first = _first([rows.problem, *(_sequence_problem(name, values[name]) for name in chosen)])
    if first:
        raise _error(path, first)
    return header, values, tuple(chosen)


def _unchosen(
    path: Path, roles: list[str], flags: list[str], found: list[str], misses: dict[str, _Problem | None]
) -> DreamFormatError:
    """Why the open roles took no columns of sequences: too many to choose from, or too few (the nearest miss shown)."""
    named, choose = " or ".join(map(repr, roles)), " and ".join(flags)
    if len(found) > len(roles):
        return DreamFormatError(
            path, f"no column is named {named} (any case), and {_listed(found)} all hold sequences; choose with "
            + choose
        )
    nearest = max((miss for miss in misses.values() if miss), key=lambda miss: miss.line, default=None)
    shown = nearest is not None and nearest.line > FIRST_ROW_LINE
    hint = f"; the nearest is line {nearest.line:,}: {nearest.message}" if shown else ""
    holding = f"only {_listed(found)} holds" if found else "no column holds"
    return DreamFormatError(
        path, f"no column is named {named} (any case), and {holding} A/C/G/T/N strings in every row{hint}; "
        f"name them with {choose}"
    )


def _check_arguments(path, sequence_column, target_columns, split_column, validation_values, test_values):
    """The column choices among themselves, before the file is read."""
    for name in dict.fromkeys(target_columns):
        if target_columns.count(name) > 1:
            raise DreamFormatError(path, f"--target-column {name} is given {target_columns.count(name)} times")
    for role, name in (("the sequences", sequence_column), ("the split", split_column)):
        if name is not None and name in target_columns:
            raise DreamFormatError(path, f"column {name!r} cannot be both {role} and a target")
    if sequence_column is not None and sequence_column == split_column:
        raise DreamFormatError(path, f"column {sequence_column!r} cannot be both the sequences and the split")
    if (validation_values or test_values) and split_column is None:
        raise DreamFormatError(path, "--validation-values and --test-values map values of a split column; name it")
    both = sorted(set(validation_values) & set(test_values))
    if both:
        raise DreamFormatError(path, f"{_listed(both)} given both in --validation-values and in --test-values")


@contextlib.contextmanager
def _reading(path: Path):
    """A binary stream of the file, decompressed when it starts with gzip's magic bytes (whatever its name).

    Errors while reading (a truncated or corrupt gzip file among them) become `DreamFormatError`.
    """
    if not path.exists():
        raise DreamFormatError(path, "no such file")
    if path.is_dir():
        raise DreamFormatError(path, "is a directory; expected a table (a header line, then one row per sequence)")
    try:
        with path.open("rb") as raw:
            magic = raw.read(len(GZIP_MAGIC))
        with gzip.open(path, "rb") if magic == GZIP_MAGIC else path.open("rb") as stream:
            yield stream
    except (OSError, EOFError, zlib.error) as error:
        raise DreamFormatError(path, f"cannot read it ({error})") from None


def _read_text(path: Path) -> str:
    """The whole file as text, without Windows line ends, a UTF-8 byte-order mark or blank lines at the end."""
    with _reading(path) as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DreamFormatError(path, f"not UTF-8 text (byte {data[error.start]:#04x})", line) from None
    return text.replace("\r\n", "\n").rstrip("\n")  # blank lines at the end are allowed


def _split_rows(path: Path, text: str) -> _Rows:
    """Split the text into the header and columns, up to the first blank, malformed or ragged line."""
    if not text:
        raise DreamFormatError(path, "file is empty; expected a header line, then one row per sequence")
    lines = text.split("\n")
    if not lines[0]:
        raise DreamFormatError(path, "the first line is empty; expected the header", HEADER_LINE)
    delimiter = _delimiter(lines[0])
    problems = []
    if "" in lines:
        problems.append(_Problem(lines.index("") + 1, EMPTY_LINE))
    if delimiter == "," and '"' in text:
        rows, problem = _quoted_rows(lines)
        problems.append(problem)
        counts = np.fromiter(map(len, rows), np.int64, len(rows))
        fields = list(chain.from_iterable(rows))
    else:
        counts = np.fromiter(map(methodcaller("count", delimiter), lines), np.int64, len(lines)) + 1
        fields = text.replace("\n", delimiter).split(delimiter)
    width = int(counts[0]) if len(counts) else 0
    ragged = np.flatnonzero(counts != width)
    if len(ragged):
        kind = "tab" if delimiter == "\t" else "comma"
        found = int(counts[ragged[0]])
        message = f"found {found} {kind}-separated fields, expected {width} as in the header"
        problems.append(_Problem(int(ragged[0]) + 1, message))
    problem = _first(problems)
    if problem is not None and problem.line == HEADER_LINE:
        raise _error(path, problem)
    header = _header(path, fields[:width])
    stop = width * (problem.line - 1 if problem else len(counts))
    columns = {name: fields[width + index : stop : width] for index, name in enumerate(header)}
    return _Rows(header, columns, delimiter, problem)


def _delimiter(header_line: str) -> str:
    return "\t" if "\t" in header_line else ","


def _quoted_rows(lines: list[str]) -> tuple[list[list[str]], _Problem | None]:
    """Lines of a comma file with quotes, each parsed on its own; stops at the first the csv module rejects."""
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(next(csv.reader([line], strict=True)))
        except csv.Error as error:
            return rows, _Problem(number, f"malformed quoting ({error}; a quoted field must end on its own line)")
    return rows, None


def _header(path: Path, fields: list[str]) -> tuple[str, ...]:
    """The column names, stripped; each must be non-empty and unique."""
    names = tuple(field.strip() for field in fields)
    for index, name in enumerate(names):
        if not name:
            raise DreamFormatError(path, f"column {index + 1} has an empty name in the header", HEADER_LINE)
        if names.index(name) != index:
            first = names.index(name) + 1
            message = f"column name {name!r} appears twice in the header (columns {first} and {index + 1})"
            raise DreamFormatError(path, message, HEADER_LINE)
    return names


def _the_one(
    path: Path, problems: list[_Problem | None], misses: dict[str, _Problem | None], role: str, holding: str, flag: str
) -> str:
    """The one column with no miss (the first row where it fails to be `role`), or an error.

    A bad line found so far wins: a malformed line, above which alone the columns were
    judged, or a bad value in a column the user named. With no column to choose, the
    one that holds out longest is shown: usually the intended one.
    """
    candidates = [name for name, miss in misses.items() if miss is None]
    if len(candidates) == 1:
        return candidates[0]
    first = _first(problems)
    if first:
        raise _error(path, first)
    if candidates:
        raise DreamFormatError(path, f"columns {_listed(candidates)} could each be {role}; choose with {flag}")
    nearest = max(misses.values(), key=lambda miss: miss.line)
    hint = f"; the nearest is line {nearest.line:,}: {nearest.message}" if nearest.line > FIRST_ROW_LINE else ""
    columns = _listed(misses)
    raise DreamFormatError(
        path, f"no column holds {holding} in every row to be {role} (columns: {columns}){hint}; name it with {flag}"
    )


def _sequence_problem(name: str, values: list[str]) -> _Problem | None:
    """The first row whose value is empty or has a character other than A, C, G, T, N (any case)."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    # "replace" makes one byte of each character, so byte offsets are positions in the strings.
    joined = "".join(values).encode("ascii", "replace")
    any_bad = bool(joined.translate(None, VALID_BYTES))
    if lengths.all() and not any_bad:
        return None
    ends = np.cumsum(lengths)
    first_bad = int(np.argmax(CODE_OF_BYTE[np.frombuffer(joined, dtype=np.uint8)] == INVALID)) if any_bad else 0
    bad_row = int(np.searchsorted(ends, first_bad, side="right")) if any_bad else len(values)
    empty_row = int(np.argmax(lengths == 0)) if not lengths.all() else len(values)
    if empty_row < bad_row:
        return _Problem(empty_row + FIRST_ROW_LINE, f"column {name!r}: empty sequence (expected {ALLOWED_BASES})")
    position = first_bad - int(ends[bad_row] - lengths[bad_row])
    character = values[bad_row][position]
    return _Problem(
        bad_row + FIRST_ROW_LINE,
        f"column {name!r}: character {character!r} at position {position + 1} of the sequence "
        f"is not one of {ALLOWED_BASES}",
    )


def _numbers(values: list[str]) -> tuple[np.ndarray | None, int | None]:
    """The values as float64 (as Python's float() reads them), or None and the first row it cannot read."""
    try:
        return np.fromiter(map(float, values), np.float64, len(values)), None
    except ValueError:
        return None, next(row for row, value in enumerate(values) if not _is_number(value))


def _is_number(text: str | bytes) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _target(name: str, values: list[str], numbers) -> tuple[np.ndarray | None, _Problem | None]:
    """A target column as float32, or the first row that is not a finite float32 number."""
    parsed, bad_row = numbers
    if parsed is None:
        return None, _not_a_number(name, values, bad_row)
    with np.errstate(over="ignore"):  # reported below as not finite
        column = parsed.astype(np.float32)
    not_finite = np.flatnonzero(~np.isfinite(column))
    if len(not_finite):
        row = int(not_finite[0])
        return None, _Problem(
            row + FIRST_ROW_LINE,
            f"column {name!r}: {_shown(values[row])} is not a finite number "
            "(nan, inf and beyond ±3.4e38 are not allowed)",
        )
    return column, None


def _not_a_number(name: str, values: list[str], row: int) -> _Problem:
    message = f"column {name!r}: {_shown(values[row])} is not a number (a target is a decimal number)"
    return _Problem(row + FIRST_ROW_LINE, message)


def _split_codes(
    name: str, values: list[str], validation_values: tuple[str, ...], test_values: tuple[str, ...]
) -> tuple[np.ndarray | None, _Problem | None]:
    """Split codes (0 train, 1 validation, 2 test), or the first row whose value names no split."""
    distinct = dict.fromkeys(values)  # in order of first appearance, so the first unknown is the first bad row
    if validation_values or test_values:
        code_of = {
            value: 1 if value.strip() in validation_values else 2 if value.strip() in test_values else 0
            for value in distinct
        }
    else:
        code_of = {value: SPLIT_WORDS.get(value.strip().lower()) for value in distinct}
        unknown = next((value for value, code in code_of.items() if code is None), None)
        if unknown is not None:
            return None, _Problem(
                values.index(unknown) + FIRST_ROW_LINE,
                f"column {name!r}: {_shown(unknown)} is not a split ({SHOWN_SPLIT_WORDS}, any case); "
                "map other values with --validation-values and --test-values",
            )
    return np.fromiter(map(code_of.__getitem__, values), np.int8, len(values)), None


def _check_split_values(path: Path, name: str, values: list[str], given: tuple[str, ...]) -> None:
    """Every value given for --validation-values / --test-values occurs: a typo would silently move rows to training."""
    present = {value.strip() for value in dict.fromkeys(values)}
    absent = [value for value in given if value not in present]
    if absent:
        raise DreamFormatError(
            path, f"column {name!r} never holds {_listed(absent)} (its values: {_listed(sorted(present), limit=20)})"
        )


def _first(problems: list[_Problem | None]) -> _Problem | None:
    """The problem nearest the top of the file; the earliest check's on a tie."""
    return min((problem for problem in problems if problem), key=lambda problem: problem.line, default=None)


def _error(path: Path, problem: _Problem) -> DreamFormatError:
    return DreamFormatError(path, problem.message, problem.line)


def _shown(value: str, width: int = 40) -> str:
    """A value quoted for a message, cut if long."""
    return repr(value) if len(value) <= width else repr(value[:width]) + "..."


def _listed(names, limit: int | None = None) -> str:
    shown = [repr(name) for name in names]
    if limit is not None and len(shown) > limit:
        shown = shown[:limit] + [f"... ({len(names) - limit} more)"]
    return ", ".join(shown)
