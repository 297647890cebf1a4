"""Keras input pipeline over data_prep's window batches.

The host ships uint8 base codes (a byte per base of the window); the training model one-hots
them in its first layer, so float32 one-hot never exists for the whole data set.
"""

from __future__ import annotations

import keras

from data_prep.batches import WindowBatches

# One thread draws a 10,000-example batch in under 2 ms (bench_train.py), so two keep a GPU fed.
PREFETCH_WORKERS = 2
PREFETCH_BATCHES = 8


class CodeBatches(keras.utils.PyDataset):
    """One epoch of `(codes (b, length) uint8 [with singleton flags], targets (b,) float32)` batches.

    `set_epoch` picks the epoch's order and shifts, derived from (seed, epoch), so a
    resumed trial replays an epoch exactly without saving a generator state. Fit it
    with `shuffle=False`: Keras would otherwise reorder the batches with Python's
    global random state.

    Worker threads draw the next batches while the device runs the current step
    (Keras keeps their order). Drawing is a few NumPy copies out of memory-mapped
    arrays, so threads suffice and no batch is pickled between processes.
    """

    def __init__(
        self, batches: WindowBatches, workers: int = PREFETCH_WORKERS, max_queue_size: int = PREFETCH_BATCHES, **kwargs
    ):
        super().__init__(workers=workers, max_queue_size=max_queue_size, **kwargs)
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        return self.batches[index]

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)
