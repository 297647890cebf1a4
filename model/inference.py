"""Predict from stored base codes, in batches, with the training-time window.

A model's input length says which window it reads (data_prep.encoding.model_input):
the data layout's unshifted window (the 85 bp crop on DREAM data), as training
evaluates it, or the plasmid-padded sequence. Predictions are `(n,)` for a model
of one task, `(n, tasks)` for several, like a prepared set's targets.
Both saved forms of the model are accepted: the core model (float one-hot input,
what trials save and serve) and the training model (uint8 codes input).

Keras is imported for type checking only, so the CLI reads DEFAULT_BATCH_SIZE for
its `--batch-size` default without starting TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from data_prep.encoding import (
    DREAM_LAYOUT,
    PLASMID_UPSTREAM,
    SEQUENCE_WIDTH,
    Fitted,
    SequenceLayout,
    fit_sequences,
    model_input,
    one_hot,
)
from model.kmer_reference import KmerRidge

if TYPE_CHECKING:
    import keras

# Sequences per predict batch, for `dream-hpo predict`/`evaluate` and the served model.
DEFAULT_BATCH_SIZE = 1024


def check_batch_size(batch_size: int) -> None:
    """Callers check it before reading sequences or loading a model."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")


def predict_codes(
    model: keras.Model,
    codes: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    layout: SequenceLayout = DREAM_LAYOUT,
) -> np.ndarray:
    """Float32 predictions `(n,)` or `(n, tasks)` for codes stored in `layout`, in input order."""
    check_batch_size(batch_size)
    input_shape = tuple(model.input_shape)
    length = input_shape[1] if isinstance(input_shape[1], int) else None
    plasmid = layout.preset == "dream" and length is not None and SEQUENCE_WIDTH <= length <= len(PLASMID_UPSTREAM)
    if len(input_shape) not in (2, 3) or not (length == layout.window_length or plasmid):
        dream = f" or {SEQUENCE_WIDTH} to {len(PLASMID_UPSTREAM)} (the plasmid-padded sequence)" if layout.preset == "dream" else ""
        raise ValueError(
            f"the model must take (L,) base codes or (L, 4) one-hot per sequence, L being {layout.window_length} "
            f"(the data's window){dream}; its input shape is {input_shape}"
        )
    takes_one_hot = len(input_shape) == 3
    tasks = model.output_shape[-1]
    codes = np.asarray(codes)
    predictions = np.empty((len(codes), tasks), dtype=np.float32)
    for start in range(0, len(codes), batch_size):
        rows = np.arange(start, min(start + batch_size, len(codes)))
        inputs = model_input(codes, rows, length, 0, layout)
        if takes_one_hot:
            inputs = one_hot(inputs)
        predictions[rows] = np.asarray(model.predict_on_batch(inputs), dtype=np.float32).reshape(len(rows), tasks)
        if progress:
            progress(int(rows[-1]) + 1, len(codes))
    return predictions[:, 0] if tasks == 1 else predictions


def weighted_mean(predictions, weights) -> np.ndarray:
    """The blend of several predictions (each `(n,)` or `(n, tasks)`): each weighted by its share of `weights`' sum."""
    weights = np.asarray(weights, np.float64)
    return np.tensordot(weights / weights.sum(), np.asarray(predictions, np.float64), axes=1)


@dataclass(frozen=True)
class Blend:
    """What a logged model predicts with: one or more Keras models and perhaps the k-mer ridge, each weighted.

    A single model is a blend of one. A search's ensemble is chosen on validation with
    weights (search.ensemble); its k-mer member is computed here from the same codes.
    `layout` and `tasks` are those of the data it was trained on (DREAM's by default):
    `encode` stores sequences by the layout's rule, and `tasks` names the outputs.
    """

    models: tuple
    weights: tuple[float, ...]
    kmer: KmerRidge | None = None
    kmer_weight: float = 0.0
    layout: SequenceLayout = DREAM_LAYOUT
    tasks: tuple[str, ...] = ("expression",)

    def encode(self, sequences) -> tuple[np.ndarray, Fitted]:
        """Sequences as the training data stored them, and how many were padded or cut to fit."""
        return fit_sequences(sequences, self.layout)

    def predict(
        self,
        codes: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Float32 predictions `(n,)` or `(n, tasks)` for codes stored in `layout`, in input order."""
        predictions = [predict_codes(model, codes, batch_size, progress, self.layout) for model in self.models]
        weights = list(self.weights)
        if self.kmer is not None:
            predictions.append(self.kmer.predict_codes(codes, self.layout))
            weights.append(self.kmer_weight)
        return weighted_mean(predictions, weights).astype(np.float32)
