"""Shuffled batches of the window a model reads, drawn without per-example Python."""

from __future__ import annotations

import math

import numpy as np

from data_prep.encoding import DREAM_LAYOUT, WINDOW_LENGTH, SequenceLayout, model_input


class WindowBatches:
    """One epoch of `(codes (b, length) uint8, targets (b,) or (b, tasks) float32)` over `rows`.

    The epoch's order and per-example shifts come from `default_rng([seed, epoch])`,
    so an epoch is reproducible on any worker and after a resume. With `augment`,
    each example's window moves by one of the layout's shifts (the seed's tripled data,
    drawn on the fly instead of stored three times); a padded window never moves.
    With `singleton`, the inputs are `(codes, flags (b, 1) float32)`, a flag being 1
    where the measured value is a whole number (DREAM's single-bin measurements).
    """

    def __init__(
        self,
        codes,
        targets,
        rows,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        length: int = WINDOW_LENGTH,
        singleton: bool = False,
        layout: SequenceLayout = DREAM_LAYOUT,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.codes, self.targets = codes, targets
        self.rows = np.asarray(rows)
        self.batch_size, self.seed, self.length, self.singleton = batch_size, seed, length, singleton
        self.layout = layout
        self.augment = augment and length == layout.window_length
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        self.order = rng.permutation(self.rows)
        if self.augment:
            self.shifts = rng.choice(np.array(self.layout.shifts), size=len(self.rows))
        else:
            self.shifts = np.zeros(len(self.rows), dtype=np.intp)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        rows = self.order[part]
        codes = model_input(self.codes, rows, self.length, self.shifts[part], self.layout)
        targets = np.asarray(self.targets[rows], dtype=np.float32)
        if self.singleton:
            return (codes, (targets == np.floor(targets)).astype(np.float32)[:, None]), targets
        return codes, targets
