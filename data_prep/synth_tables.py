"""Synthetic sequence tables shaped like the libraries users bring, each with a planted signal.

Two shapes, so every table path (header, delimiter, signed targets, several tasks,
the user's own split, lengths that need padding) is exercised on data whose answer is known:

| shape | file | sequences | targets | split column |
|---|---|---|---|---|
| `lentimpra` | TSV: `seq_id seq mean_value fold` | 200 bp insert between 15 bp adapters (230 bp) | `mean_value`, a signed log2(RNA/DNA) | `fold`, 1..10 |
| `starr` | CSV: `ID,Sequence,Dev_log2_enrichment,Hk_log2_enrichment,set` | 249 bp, 1 in 20 shorter (230..249 bp) | two signed log2 enrichments | `set`: Train, Val, Test (8:1:1) |

Each target is a base level plus the effect of every motif match (either strand) in the
sequence, plus `GC_EFFECT` x (GC fraction - 0.5), plus Gaussian noise (`NOISE_SD`). The
motifs are planted at random positions and strands with probability `PLANT_PROBABILITY`:

| shape | task | motif effects |
|---|---|---|
| lentimpra | mean_value | AP-1 `TGACTCA` +0.8, HNF1 `GTTAATGATTAAC` +1.0, HNF4 `CAAAGTCCA` +0.6, CEBP `TTGCGCAA` +0.5, GFI1 `AAATCACTGC` -0.8 |
| starr | Dev_log2_enrichment | GATA `GATAAG` +0.9, AP-1 `TGACTCA` +1.1, Twist `CAGCTG` +0.5 |
| starr | Hk_log2_enrichment | DRE `TATCGATA` +1.2, Ohler1 `GGTCACACT` +0.8, ETS `CCGGAAGT` +0.7 |

`library_signal` is the noise-free value, so a test can ask how much of it a model learned.
"""

from __future__ import annotations

import gzip
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.encoding import BASE_BYTES, N_CODE
from data_prep.synth import motif_codes, motif_starts, reverse_complement

PLANT_PROBABILITY = 0.3
NOISE_SD = 0.3
GC_EFFECT = -1.0


@dataclass(frozen=True)
class TaskGrammar:
    """One target column: its name, base level and (motif, effect) pairs."""

    name: str
    base_level: float
    motifs: tuple[tuple[str, str, float], ...]  # (motif name, bases, effect)


@dataclass(frozen=True)
class LibraryShape:
    """The layout of one kind of library file and the grammar behind its targets."""

    name: str
    delimiter: str
    id_column: str
    sequence_column: str
    split_column: str
    split_values: tuple[str, ...]  # cycled over rows in this order
    length: int
    short_fraction: float  # rows made shorter (down to `shortest`), to exercise padding
    shortest: int
    adapters: tuple[str, str]
    tasks: tuple[TaskGrammar, ...]

    @property
    def header(self) -> list[str]:
        return [self.id_column, self.sequence_column, *(t.name for t in self.tasks), self.split_column]


LENTIMPRA = LibraryShape(
    name="lentimpra",
    delimiter="\t",
    id_column="seq_id",
    sequence_column="seq",
    split_column="fold",
    split_values=tuple(str(fold) for fold in range(1, 11)),
    length=230,
    short_fraction=0.0,
    shortest=230,
    adapters=("AGGACCGGATCAACT", "CATTGCGTGAACCGA"),
    tasks=(
        TaskGrammar(
            "mean_value",
            -0.5,
            (
                ("AP-1", "TGACTCA", 0.8),
                ("HNF1", "GTTAATGATTAAC", 1.0),
                ("HNF4", "CAAAGTCCA", 0.6),
                ("CEBP", "TTGCGCAA", 0.5),
                ("GFI1", "AAATCACTGC", -0.8),
            ),
        ),
    ),
)

STARR = LibraryShape(
    name="starr",
    delimiter=",",
    id_column="ID",
    sequence_column="Sequence",
    split_column="set",
    split_values=("Train",) * 8 + ("Val", "Test"),
    length=249,
    short_fraction=0.05,
    shortest=230,
    adapters=("", ""),
    tasks=(
        TaskGrammar("Dev_log2_enrichment", 0.0, (("GATA", "GATAAG", 0.9), ("AP-1", "TGACTCA", 1.1), ("Twist", "CAGCTG", 0.5))),
        TaskGrammar("Hk_log2_enrichment", -1.0, (("DRE", "TATCGATA", 1.2), ("Ohler1", "GGTCACACT", 0.8), ("ETS", "CCGGAAGT", 0.7))),
    ),
)

SHAPES = {shape.name: shape for shape in (LENTIMPRA, STARR)}


def _motif_hits(codes: np.ndarray, bases: str) -> np.ndarray:
    """Matches per row on either strand (a palindrome counts once)."""
    motif = motif_codes(bases)
    hits = motif_starts(codes, motif).sum(axis=1)
    reverse = reverse_complement(motif)
    if not np.array_equal(reverse, motif):
        hits = hits + motif_starts(codes, reverse).sum(axis=1)
    return hits


def library_signal(shape: LibraryShape, codes: np.ndarray) -> np.ndarray:
    """The noise-free targets (n, tasks) of sequences as codes (N past a shorter row's end)."""
    codes = np.asarray(codes)
    known = codes < N_CODE
    gc = ((codes == 1) | (codes == 2)).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
    columns = []
    for task in shape.tasks:
        value = np.full(len(codes), task.base_level) + GC_EFFECT * (gc - 0.5)
        for _, bases, effect in task.motifs:
            value += effect * _motif_hits(codes, bases)
        columns.append(value)
    return np.stack(columns, axis=1)


def _planted_codes(shape: LibraryShape, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes (n, length) with N past each row's end, lengths) with motifs planted in the insert."""
    adapter_5, adapter_3 = shape.adapters
    insert_width = shape.length - len(adapter_5) - len(adapter_3)
    lengths = np.where(rng.random(n) < shape.short_fraction, rng.integers(shape.shortest, shape.length + 1, n), shape.length)
    insert_lengths = lengths - len(adapter_5) - len(adapter_3)
    insert = rng.integers(0, 4, size=(n, insert_width), dtype=np.uint8)
    for task in shape.tasks:
        for _, bases, _ in task.motifs:
            motif = motif_codes(bases)
            rows = np.flatnonzero(rng.random(n) < PLANT_PROBABILITY)
            starts = rng.integers(0, insert_lengths[rows] - len(motif) + 1)
            planted = np.where((rng.random(len(rows)) < 0.5)[:, None], reverse_complement(motif), motif)
            insert[rows[:, None], starts[:, None] + np.arange(len(motif))] = planted
    codes = np.full((n, shape.length), N_CODE, dtype=np.uint8)
    codes[:, : len(adapter_5)] = motif_codes(adapter_5)
    columns = np.arange(insert_width)
    codes[:, len(adapter_5) : len(adapter_5) + insert_width] = np.where(columns < insert_lengths[:, None], insert, N_CODE)
    if adapter_3:
        ends = len(adapter_5) + insert_lengths
        codes[np.arange(n)[:, None], ends[:, None] + np.arange(len(adapter_3))] = motif_codes(adapter_3)
    return codes, lengths


def synthesize_library(shape: LibraryShape, n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(file lines with the header first, targets (n, tasks), noise-free signal (n, tasks))."""
    rng = np.random.default_rng(seed)
    codes, lengths = _planted_codes(shape, rng, n)
    signal = library_signal(shape, codes)
    targets = np.round(signal + rng.normal(0.0, NOISE_SD, signal.shape), 4)
    text = BASE_BYTES[np.minimum(codes, N_CODE)].view(f"S{shape.length}").ravel()
    values = targets.astype("U12")
    splits = np.resize(np.array(shape.split_values), n)
    lines = [shape.delimiter.join(shape.header)]
    for row in range(n):
        sequence = text[row][: lengths[row]].decode()
        lines.append(shape.delimiter.join([f"{shape.name}_{row}", sequence, *values[row], splits[row]]))
    return lines, targets, signal


def write_library(path, shape: LibraryShape, n: int, seed: int = 0) -> Path:
    """Write an `n`-row table of `shape` to `path` (gzipped if it ends in .gz), atomically."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines, _, _ = synthesize_library(shape, n, seed)
    data = ("\n".join(lines) + "\n").encode()
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        temporary.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
