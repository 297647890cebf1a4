"""Shuffled, shift-augmented batches of 85 bp windows, drawn without per-example Python."""

from __future__ import annotations

import math

import numpy as np

from data_prep.encoding import SHIFTS, window


class WindowBatches:
    """One epoch of `(codes (b, 85) uint8, targets (b,) float32)` over `rows`.

    The epoch's order and per-example shifts come from `default_rng([seed, epoch])`,
    so an epoch is reproducible on any worker and after a resume. With `augment`,
    each example's window moves by -1, 0 or +1 base (the seed's tripled data, drawn
    on the fly instead of stored three times).
    """

    def __init__(self, codes, targets, rows, batch_size: int, seed: int = 0, augment: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.codes, self.targets = codes, targets
        self.rows = np.asarray(rows)
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.order = rng.permutation(self.rows)
        if self.augment:
            self.shifts = rng.choice(np.array(SHIFTS), size=len(self.rows))
        else:
            self.shifts = np.zeros(len(self.rows), dtype=np.intp)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        rows = self.order[part]
        return window(self.codes, rows, self.shifts[part]), np.asarray(self.targets[rows], dtype=np.float32)
