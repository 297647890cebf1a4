"""The challenge's test subsets: which test lines are high, low, yeast, random, ..., SNV pairs.

The organisers publish each subset as a CSV of test indices (0-based lines of
`test_sequences.txt`): a `pos` column for the five single subsets, `alt_pos` and
`ref_pos` columns for the three paired ones (a variant and its reference). Their
evaluation scores each index once and each (alt, ref) pair once, so duplicates
are dropped here. For the final scores they left out the public-leaderboard
sequences, listed in `public_leaderboard_ids/*_indices.json` (keys `"i"` for
single subsets, `"alt,ref"` for pairs): a public index leaves every single subset
and the whole-set score, a public pair leaves the paired subsets.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.dream_format import DreamFormatError

# Subset name -> accepted file names (the organisers' repository and their
# evaluation code spell the motif perturbation file both ways).
SINGLE_SUBSETS = {
    "high": ("high_exp_seqs.csv",),
    "low": ("low_exp_seqs.csv",),
    "yeast": ("yeast_seqs.csv",),
    "random": ("all_random_seqs.csv",),
    "challenging": ("challenging_seqs.csv",),
}
PAIRED_SUBSETS = {
    "SNVs": ("all_SNVs_seqs.csv",),
    "motif_perturbation": ("motif_perturbation_seqs.csv", "motif_perturbation.csv"),
    "motif_tiling": ("motif_tiling_seqs.csv",),
}
PAIR_COLUMNS = ("alt_pos", "ref_pos")  # a paired subset's test indices: the variant's line, its reference's line
PUBLIC_SINGLE_FILES = (
    "high_exp_indices.json",
    "low_exp_indices.json",
    "yeast_exp_indices.json",
    "random_exp_indices.json",
    "challenging_exp_indices.json",
)
PUBLIC_PAIRED_FILES = (
    "SNVs_exp_indices.json",
    "motif_perturbation_exp_indices.json",
    "motif_tiling_exp_indices.json",
)


@dataclass(frozen=True)
class ChallengeSubsets:
    """Test indices per subset, public-leaderboard sequences already removed.

    `single` maps a subset name to sorted unique indices; `paired` maps one to a
    `(k, 2)` array of unique (alt, ref) index rows; `excluded` holds the public
    indices, which the whole-set ("all") score leaves out too.
    """

    single: dict[str, np.ndarray]
    paired: dict[str, np.ndarray]
    excluded: np.ndarray


def read_subsets(directory, n_sequences: int, public_dir=None) -> ChallengeSubsets:
    """Read the subset CSVs found in `directory`; indices must lie in 0..n_sequences-1.

    Subsets whose file is absent are left out (the weighted scores then cannot be
    computed); a directory with none of them is an error. With `public_dir`, the
    public-leaderboard sequences are removed as in the organisers' final scores.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DreamFormatError(directory, "not a directory; expected the challenge's test_subset_ids folder")
    single = {}
    for name, file_names in SINGLE_SUBSETS.items():
        path = _find(directory, file_names)
        if path is not None:
            single[name] = np.unique(read_index_columns(path, ("pos",), n_sequences)[:, 0])
    paired = {}
    for name, file_names in PAIRED_SUBSETS.items():
        path = _find(directory, file_names)
        if path is not None:
            paired[name] = np.unique(read_index_columns(path, PAIR_COLUMNS, n_sequences), axis=0)
    if not single and not paired:
        expected = [names[0] for names in (*SINGLE_SUBSETS.values(), *PAIRED_SUBSETS.values())]
        raise DreamFormatError(directory, f"no subset index files; expected some of {expected}")

    excluded = np.zeros(0, dtype=np.int64)
    if public_dir is not None:
        public_single, public_pairs = read_public_leaderboard(public_dir)
        excluded = np.union1d(public_single, public_pairs.reshape(-1))
        single = {name: np.setdiff1d(indices, excluded) for name, indices in single.items()}
        paired = {name: _drop_pairs(pairs, public_pairs) for name, pairs in paired.items()}
    return ChallengeSubsets(single, paired, excluded)


def read_public_leaderboard(directory) -> tuple[np.ndarray, np.ndarray]:
    """(single indices, (k, 2) alt/ref pairs) of the public leaderboard's `*_indices.json` files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DreamFormatError(directory, "not a directory; expected the challenge's public_leaderboard_ids folder")
    single, pairs = [], []
    for file_name in (*PUBLIC_SINGLE_FILES, *PUBLIC_PAIRED_FILES):
        path = directory / file_name
        if not path.exists():
            continue
        paired = file_name in PUBLIC_PAIRED_FILES
        for key in _json_keys(path):
            fields = key.split(",")
            if len(fields) != (2 if paired else 1) or not all(f.strip().isdigit() for f in fields):
                expected = "'ALT,REF' index pairs" if paired else "test indices"
                raise DreamFormatError(path, f"key {key!r} is not valid; keys must be {expected}")
            (pairs if paired else single).append([int(f) for f in fields])
    if not single and not pairs:
        expected = list(PUBLIC_SINGLE_FILES + PUBLIC_PAIRED_FILES)
        raise DreamFormatError(directory, f"no public leaderboard files; expected some of {expected}")
    single_array = np.array(single, dtype=np.int64).reshape(-1)
    return single_array, np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _find(directory: Path, file_names: tuple[str, ...]) -> Path | None:
    return next((directory / n for n in file_names if (directory / n).exists()), None)


def read_index_columns(path: Path, columns: tuple[str, ...], n_sequences: int) -> np.ndarray:
    """`(rows, len(columns))` int64 indices, in file order, from a CSV with a header naming `columns`.

    Every index is checked against `n_sequences`; `evaluate --subsets` and `predict --variants`
    both read the organisers' files through here.
    """
    try:
        with path.open(newline="") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                raise DreamFormatError(path, f"file is empty; expected a header with {_quoted(columns)}")
            missing = [c for c in columns if c not in header]
            if missing:
                raise DreamFormatError(
                    path, f"header lacks column {_quoted(missing)}; expected {_quoted(columns)}, found {header}", 1
                )
            positions = [header.index(c) for c in columns]
            rows, blank_line = [], None
            for fields in reader:
                if not fields:
                    blank_line = blank_line or reader.line_num
                    continue
                if blank_line is not None:
                    raise DreamFormatError(path, "empty line in the middle of the file", blank_line)
                if len(fields) != len(header):
                    raise DreamFormatError(
                        path, f"expected {len(header)} comma-separated fields, found {len(fields)}", reader.line_num
                    )
                rows.append(
                    [_index(path, reader.line_num, c, fields[p], n_sequences) for c, p in zip(columns, positions)]
                )
    except UnicodeDecodeError as error:
        raise DreamFormatError(path, f"not a text file ({error.reason})") from None
    except csv.Error as error:
        raise DreamFormatError(path, f"not a valid CSV file ({error})") from None
    if not rows:
        raise DreamFormatError(path, "no rows after the header")
    return np.array(rows, dtype=np.int64)


def _index(path: Path, line: int, column: str, text: str, n_sequences: int) -> int:
    """One test index; whole-number floats ('12.0', as pandas writes a column with gaps) are accepted."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value.is_integer() and 0 <= value < n_sequences):
        raise DreamFormatError(
            path,
            f"{column} {text!r} is not a test index; allowed are whole numbers 0 to {n_sequences - 1:,} "
            f"(the sequences file has {n_sequences:,} lines)",
            line,
        )
    return int(value)


def _json_keys(path: Path) -> list[str]:
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise DreamFormatError(path, f"not valid JSON ({getattr(error, 'msg', error)})", line) from None
    if not isinstance(payload, dict):
        raise DreamFormatError(path, f"expected a JSON object keyed by test index, found {type(payload).__name__}")
    return list(payload)


def _drop_pairs(pairs: np.ndarray, public_pairs: np.ndarray) -> np.ndarray:
    public = {tuple(p) for p in public_pairs.tolist()}
    return pairs[np.array([tuple(p) not in public for p in pairs.tolist()], dtype=bool)]


def _quoted(names) -> str:
    return ", ".join(f"'{n}'" for n in names)
