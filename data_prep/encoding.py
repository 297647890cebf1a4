"""Base codes, the fixed 110-wide layout, and the windows models read.

Sequences are stored as uint8 codes A,C,G,T,N -> 0..4 in a row of SEQUENCE_WIDTH,
as the seed stored them (janggu's fixedlen=110): longer sequences are cut at the 3'
end, shorter ones padded with N. Models read one of two windows (`model_input`
picks by length): the seed's 85 bp crop, positions 15..100, which training shifts
by -1, 0 or +1 base per example; or LegNet's whole sequence padded on its 5' side
with the DREAM plasmid to a fixed length. One-hot happens late (here or in the
model's first layer) so float32 one-hot never exists for a whole data set.
"""

from __future__ import annotations

import numpy as np

BASES = "ACGTN"
N_CODE = 4
INVALID = 255
SEQUENCE_WIDTH = 110
WINDOW_START = 15
WINDOW_LENGTH = 85
SHIFTS = (-1, 0, 1)

# The DREAM plasmid's 200 bases 5' of the random insert (data/plasmid.json in the
# challenge organisers' repository, de-Boer-Lab/random-promoter-dream-challenge-2022).
# Its last 17 are the constant 5' flank every DREAM sequence starts with.
PLASMID_UPSTREAM = (
    "CAAAAGAATAGACCGAGATAGGGTTGAGTGTTGTTCCAGTTTGGAACAAG"
    "AGTCCACTATTAAAGAACGTGGACTCCAACGTCAAAGGGCGAAAAACCGT"
    "CTATCAGGGCGATGGCCCACTACGTGAACCATCACCCTAATCAAGTGCTA"
    "GCAGGAATGATGCAAAAGGTTCCCGATTCGAACTGCATTTTTTTCACATC"
)
FIVE_PRIME_FLANK = 17

BASE_BYTES = np.frombuffer(BASES.encode(), dtype=np.uint8)

# Byte -> code lookup, case-insensitive; everything else maps to INVALID.
CODE_OF_BYTE = np.full(256, INVALID, dtype=np.uint8)
for _code, _base in enumerate(BASES):
    CODE_OF_BYTE[ord(_base)] = _code
    CODE_OF_BYTE[ord(_base.lower())] = _code


def encode_sequences(sequences) -> np.ndarray:
    """Codes `(n, SEQUENCE_WIDTH)` for strings of any length.

    Every character is checked, also past the 110 that are kept, as `predict` checks
    a test file: a bad one raises `SequenceError` naming its row, position and character.
    """
    sequences = list(sequences)
    codes = np.full((len(sequences), SEQUENCE_WIDTH), N_CODE, dtype=np.uint8)
    for row, sequence in enumerate(sequences):
        # One byte per character ("?" for non-ASCII), so positions in the bytes are positions in the string.
        coded = CODE_OF_BYTE[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]
        if (coded == INVALID).any():
            position = int(np.argmax(coded == INVALID))
            raise SequenceError(
                f"row {row + 1}, position {position + 1}: character {sequence[position]!r} is not one of "
                "A, C, G, T, N (rows and positions count from 1)"
            )
        kept = coded[:SEQUENCE_WIDTH]
        codes[row, : len(kept)] = kept
    return codes


class SequenceError(ValueError):
    """A sequence with a character outside ACGTN; the message names its row, position and character."""


def window(codes: np.ndarray, rows: np.ndarray, shifts=0) -> np.ndarray:
    """The 85 bp windows `(len(rows), 85)` of `codes[rows]`, each moved by its shift (-1, 0 or +1)."""
    rows = np.asarray(rows)
    shifts = np.broadcast_to(np.asarray(shifts, dtype=np.intp), rows.shape)
    low, high = (int(shifts.min()), int(shifts.max())) if shifts.size else (0, 0)
    # One gather of the columns every shift needs, then one contiguous 85-byte copy per
    # row out of a strided view: about 5x faster than gathering through an (n, 85)
    # index array, which matters when the input pipeline feeds a GPU.
    span = np.asarray(codes[rows, WINDOW_START + low : WINDOW_START + high + WINDOW_LENGTH])
    windows = np.lib.stride_tricks.sliding_window_view(span, WINDOW_LENGTH, axis=1)
    return windows[np.arange(len(rows)), shifts - low]


def padded_window(codes: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
    """`codes[rows]` as LegNet reads them, `(len(rows), length)`: the plasmid, then the sequence, 3' ends aligned.

    As Prix Fixe does: each sequence's first 17 bases (the constant 5' flank) give way
    to the plasmid's own copy, and the plasmid upstream of it fills the window to
    `length`, so every sequence ends at the window's end. A sequence's stored end is
    its last base other than the N padding (a trailing N reads as padding).
    """
    if not SEQUENCE_WIDTH <= length <= len(PLASMID_UPSTREAM):
        raise ValueError(f"a padded window is {SEQUENCE_WIDTH} to {len(PLASMID_UPSTREAM)} bases; got {length}")
    rows = np.asarray(rows)
    stored = np.asarray(codes[rows])
    plasmid = CODE_OF_BYTE[np.frombuffer(PLASMID_UPSTREAM.encode(), dtype=np.uint8)]
    joined = np.concatenate([np.broadcast_to(plasmid, (len(rows), plasmid.size)), stored[:, FIVE_PRIME_FLANK:]], axis=1)
    not_padding = stored[:, ::-1] != N_CODE
    ends = SEQUENCE_WIDTH - np.where(not_padding.any(axis=1), np.argmax(not_padding, axis=1), SEQUENCE_WIDTH)
    stop = plasmid.size + np.maximum(ends - FIVE_PRIME_FLANK, 0)
    columns = stop[:, None] - length + np.arange(length)
    return np.take_along_axis(joined, columns, axis=1)


def model_input(codes: np.ndarray, rows: np.ndarray, length: int, shifts=0) -> np.ndarray:
    """The window of `length` a model reads: the 85 bp crop (moved by `shifts`) or the plasmid-padded sequence."""
    if length == WINDOW_LENGTH:
        return window(codes, rows, shifts)
    return padded_window(codes, rows, length)


def one_hot(codes: np.ndarray) -> np.ndarray:
    """Float32 one-hot `(..., 4)`; N is an all-zero row, as in the seed."""
    return np.eye(N_CODE + 1, dtype=np.float32)[codes][..., :N_CODE]


def decode(codes: np.ndarray) -> str:
    """One row of codes back to a string (padding N included)."""
    return BASE_BYTES[np.asarray(codes)].tobytes().decode()
