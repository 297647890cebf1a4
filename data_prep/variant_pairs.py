"""Variant pairs for `predict --variants`: a reference and an alternative sequence per row, in input order.

A user brings them as a table with a header (a `ref` and an `alt` column, or any two
columns of sequences, plus ids to carry along); the challenge brings them as a paired
subset CSV of test-file lines (`alt_pos`, `ref_pos`), read with the subset reader so both
commands accept and refuse the same files. Parsing is the owners': table_format for
tables, challenge_subsets for index files; this module only decides which one a file is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_prep.challenge_subsets import PAIR_COLUMNS, read_index_columns
from data_prep.dream_format import DreamFormatError
from data_prep.table_format import HEADER_LINE, read_header, read_sequence_columns

ROLES = ("ref", "alt")  # the default column names (any case), and the output's names for the two sequences
FLAGS = ("--ref-column NAME", "--alt-column NAME")


@dataclass(frozen=True)
class VariantPairs:
    """Pairs in input order, and the columns written in front of their predictions (name, values as text)."""

    path: Path
    ref: tuple[str, ...]
    alt: tuple[str, ...]
    carried: tuple[tuple[str, tuple[str, ...]], ...] = ()


def read_pairs_table(path, ref_column: str | None = None, alt_column: str | None = None) -> VariantPairs:
    """The pairs of a table with a header; every column besides the two sequence columns is carried."""
    path = Path(path)
    header = read_header(path)
    if ref_column is None and alt_column is None and _is_subset_file(header):
        raise DreamFormatError(
            path,
            f"columns {' and '.join(map(repr, PAIR_COLUMNS))} index lines of a test file (a challenge subset CSV): "
            "give that file with --sequences TEST",
            HEADER_LINE,
        )
    header, values, (ref, alt) = read_sequence_columns(path, (ref_column, alt_column), ROLES, FLAGS)
    carried = [name for name in header if name not in (ref, alt)]
    clash = next((name for name in carried if name in ROLES), None)
    if clash is not None:
        raise DreamFormatError(
            path,
            f"column {clash!r} is not the {clash} sequence ({ref!r} and {alt!r} are), but the output names that "
            f"one {clash!r}; rename the column",
            HEADER_LINE,
        )
    carried_values = tuple((name, tuple(values[name])) for name in carried)
    return VariantPairs(path, tuple(values[ref]), tuple(values[alt]), carried_values)


def read_subset_pairs(path, sequences: list[str]) -> VariantPairs:
    """The pairs a challenge subset CSV names by 0-based line of `sequences`; its index columns are carried."""
    path = check_subset_file(path)
    alt_lines, ref_lines = read_index_columns(path, PAIR_COLUMNS, len(sequences)).T.tolist()  # PAIR_COLUMNS' order
    return VariantPairs(
        path,
        ref=tuple(sequences[i] for i in ref_lines),
        alt=tuple(sequences[i] for i in alt_lines),
        carried=tuple((name, tuple(map(str, lines))) for name, lines in zip(PAIR_COLUMNS, (alt_lines, ref_lines))),
    )


def check_subset_file(path) -> Path:
    """Refuse a file without index columns from its header alone, before the (large) test file is read."""
    path = Path(path)
    header = read_header(path)
    if not set(PAIR_COLUMNS) <= set(header):
        raise DreamFormatError(
            path,
            f"no {' and '.join(map(repr, PAIR_COLUMNS))} columns (the header has {', '.join(map(repr, header))}): "
            "with --sequences, --variants is a challenge subset CSV of test lines; "
            "a table of ref and alt sequences needs no --sequences",
            HEADER_LINE,
        )
    return path


def _is_subset_file(header: tuple[str, ...]) -> bool:
    """Index columns, and no column named like a sequence: a subset CSV, whatever else it holds."""
    return set(PAIR_COLUMNS) <= set(header) and not {name.lower() for name in header} & set(ROLES)
