"""Synthetic DREAM-format data with a planted, documented regulatory grammar.

Each line is the real 5' flank, a random middle (80 bp for most lines, 57..105 bp
for 15%, so lengths span 87..135 like the real file; about 1 base in 2,000 is N),
the real 3' flank, a tab and an expression value. Expression is
`expression_signal(codes)` plus Gaussian noise (sd NOISE_SD), clipped to 0..17,
half of the values rounded to whole numbers like the real bins. The signal reads
only the 85 bp window the model sees (positions 15..99 of the 110-wide codes):

| feature | rule | effect |
|---|---|---|
| Reb1 `TTACCCG` | each match, either strand | +2.0, x1.5 if it starts in the 3' half of its 79 start positions (39 or later) |
| Rap1 `ACACCCATACAT` | each match, either strand | +2.5 |
| Abf1 `ATCACTTAAACG` | each match, either strand | +1.5 |
| TATA box `TATAAA` | each match, forward strand only | +1.0 |
| Ume6 URS1 `TAGCCGCCGA` | each match, either strand (a repressor) | -4.0 |
| poly-dT | longest run of T (or A) beyond 4 | +0.3 per base, at most +2.4 |
| GC content | fraction of G or C in the window | -6 x (GC - 0.5) |

Planting probabilities per line: Reb1 0.3, Rap1 0.2, Abf1 0.2, TATA 0.25, URS1 0.15.
`expression_signal` is the noise-free value, so the ceiling a model can reach is known.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from data_prep.encoding import BASE_BYTES, CODE_OF_BYTE, N_CODE, SEQUENCE_WIDTH, WINDOW_LENGTH, WINDOW_START

FLANK_5 = "TGCATTTTTTTCACATC"
FLANK_3 = "GGTTACGGCTGTT"
MIDDLE_LENGTH, MIDDLE_MIN, MIDDLE_MAX = 80, 57, 105
VARIABLE_FRACTION, N_RATE, NOISE_SD, BASE_LEVEL = 0.15, 0.0005, 1.0, 9.0
MAX_EXPRESSION = 17.0
ROWS_PER_CHUNK = 100_000

# name: (motif, planting probability, effect, both strands)
MOTIFS = {
    "reb1": ("TTACCCG", 0.30, 2.0, True),
    "rap1": ("ACACCCATACAT", 0.20, 2.5, True),
    "abf1": ("ATCACTTAAACG", 0.20, 1.5, True),
    "tata": ("TATAAA", 0.25, 1.0, False),
    "urs1": ("TAGCCGCCGA", 0.15, -4.0, True),
}
REB1_3PRIME_BOOST = 1.5
POLY_DT_MIN, POLY_DT_EFFECT, POLY_DT_CAP = 4, 0.3, 2.4
GC_EFFECT, GC_CENTRE = -6.0, 0.5


def motif_codes(text: str) -> np.ndarray:
    """Codes of a motif written in bases."""
    return CODE_OF_BYTE[np.frombuffer(text.encode(), np.uint8)]


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    """The reverse complement of a motif's codes (A<->T, C<->G)."""
    return (3 - codes)[::-1]


def motif_starts(window_codes: np.ndarray, motif: np.ndarray) -> np.ndarray:
    """Boolean (n, positions) where `motif` starts."""
    # One comparison per motif base over all start positions: much faster than reducing
    # a sliding-window view over its short last axis.
    positions = window_codes.shape[1] - len(motif) + 1
    hits = np.ones((len(window_codes), positions), dtype=bool)
    for offset, base in enumerate(motif):
        hits &= window_codes[:, offset : offset + positions] == base
    return hits


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Longest run of True per row, one in-place pass per column over all rows at once."""
    run = np.zeros(mask.shape[0], dtype=np.int32)
    longest = np.zeros_like(run)
    for column in np.ascontiguousarray(mask.T):
        run += 1
        run *= column
        np.maximum(longest, run, out=longest)
    return longest


def expression_signal(codes: np.ndarray) -> np.ndarray:
    """The noise-free expression of 110-wide codes, from the model's 85 bp window only."""
    window_codes = np.asarray(codes)[:, WINDOW_START : WINDOW_START + WINDOW_LENGTH]
    signal = np.full(len(window_codes), BASE_LEVEL)
    for name, (motif, _, effect, both_strands) in MOTIFS.items():
        motif = motif_codes(motif)
        hits = motif_starts(window_codes, motif).astype(np.float64)
        if name == "reb1":
            hits[:, hits.shape[1] // 2 :] *= REB1_3PRIME_BOOST
        if both_strands:
            reverse = motif_starts(window_codes, reverse_complement(motif)).astype(np.float64)
            if name == "reb1":
                reverse[:, reverse.shape[1] // 2 :] *= REB1_3PRIME_BOOST
            hits += reverse
        signal += effect * hits.sum(axis=1)
    run = np.maximum(_longest_run(window_codes == 3), _longest_run(window_codes == 0))
    signal += np.minimum(POLY_DT_EFFECT * np.maximum(run - POLY_DT_MIN, 0), POLY_DT_CAP)
    known = window_codes < N_CODE
    gc = ((window_codes == 1) | (window_codes == 2)).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
    return signal + GC_EFFECT * (gc - GC_CENTRE)


def _synthesize_chunk(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(DREAM lines as bytes, expression, noise-free signal) for `n` new sequences."""
    lengths = np.where(
        rng.random(n) < VARIABLE_FRACTION, rng.integers(MIDDLE_MIN, MIDDLE_MAX + 1, n), MIDDLE_LENGTH
    )
    middle = rng.integers(0, 4, size=(n, MIDDLE_MAX), dtype=np.uint8)
    for motif, probability, _, both_strands in MOTIFS.values():
        motif = motif_codes(motif)
        rows = np.flatnonzero(rng.random(n) < probability)
        starts = rng.integers(0, lengths[rows] - len(motif) + 1)
        reverse = both_strands & (rng.random(len(rows)) < 0.5)
        planted = np.where(reverse[:, None], reverse_complement(motif), motif)
        middle[rows[:, None], starts[:, None] + np.arange(len(motif))] = planted
    middle[rng.random(middle.shape) < N_RATE] = N_CODE

    # Rows of bytes: flanks around the middle, then 0 to the end of a shorter row.
    flank_5, flank_3 = np.frombuffer(FLANK_5.encode(), np.uint8), np.frombuffer(FLANK_3.encode(), np.uint8)
    width = len(FLANK_5) + MIDDLE_MAX + len(FLANK_3)
    text = np.zeros((n, width), dtype=np.uint8)
    text[:, : len(FLANK_5)] = flank_5
    columns = np.arange(MIDDLE_MAX)
    text[:, len(FLANK_5) : len(FLANK_5) + MIDDLE_MAX] = np.where(columns < lengths[:, None], BASE_BYTES[middle], 0)
    text[np.arange(n)[:, None], len(FLANK_5) + lengths[:, None] + np.arange(len(FLANK_3))] = flank_3
    stored = text[:, :SEQUENCE_WIDTH]
    codes = np.where(stored == 0, np.uint8(N_CODE), CODE_OF_BYTE[stored])

    signal = expression_signal(codes)
    expression = np.clip(signal + rng.normal(0.0, NOISE_SD, n), 0.0, MAX_EXPRESSION)
    whole = rng.random(n) < 0.5
    expression = np.where(whole, np.round(expression), expression)
    # Text only for the rows that use it: float-to-text is the slowest step here.
    values = np.empty(n, dtype="S24")
    values[whole] = expression[whole].astype(np.int64).astype("S24")
    values[~whole] = np.round(expression[~whole], 10).astype("S24")
    value_bytes = values.view(np.uint8).reshape(n, -1)
    separators = np.full((n, 1), ord("\t"), np.uint8), np.full((n, 1), ord("\n"), np.uint8)
    lines = np.concatenate([text, separators[0], value_bytes, separators[1]], axis=1).reshape(-1)
    return lines[lines != 0].tobytes(), expression, signal


def synthesize(n: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """All `n` lines in memory: (file bytes, expression, noise-free signal). For tests and small sets."""
    parts = list(_chunks(n, seed))
    return b"".join(p[0] for p in parts), np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _chunks(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, n, ROWS_PER_CHUNK):
        yield _synthesize_chunk(rng, min(ROWS_PER_CHUNK, n - start))


def write_synthetic(path, n: int, seed: int = 0, progress=None) -> Path:
    """Write `n` synthetic lines to `path` (atomically: a temporary file renamed when complete)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened with open(), not mkstemp, so the file gets the umask's permissions, not 0600.
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with temporary.open("xb") as stream:
            done = 0
            for lines, expression, _ in _chunks(n, seed):
                stream.write(lines)
                done += len(expression)
                if progress:
                    progress(done, n)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def ensure_synthetic(cache_dir, n: int, seed: int = 0, eval_size: int = 10_000, progress=None) -> Path:
    """The prepared synthetic set for (n, seed, eval_size), generated once into `cache_dir` and reused.

    The test split has the default rule; the format version is in the name, so a set an
    earlier version prepared is made again with this version's splits.
    """
    from data_prep.prepare import FORMAT_VERSION, PreparedDataError, check_prepared, prepare

    cache_dir = Path(cache_dir)
    prepared = cache_dir / f"synthetic-v{FORMAT_VERSION}-n{n}-seed{seed}-eval{eval_size}"
    try:
        check_prepared(prepared)
    except PreparedDataError:  # not made yet, or by an older format: make it (again)
        source = write_synthetic(cache_dir / f"synthetic-n{n}-seed{seed}.txt", n, seed)
        prepare(source, prepared, eval_size=eval_size, split_seed=seed, overwrite=True, progress=progress)
    return prepared
