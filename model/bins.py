"""The bins output head: softmax over expression bins, soft-label KL loss, the expectation as prediction.

LegNet's head (Penzar et al. 2023; Prix Fixe's `dataset.py` for the soft labels), an
ingredient any family can take (`InputConfig.output_head = "bins"`). The network
outputs bin probabilities for training; `ExpectedBin` turns them into the expression
that is evaluated, saved and served ((batch, 1), like the Poisson head's output).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

# A measured value v is read as a normal with mean v + SOFT_TARGET_SHIFT and sd
# SOFT_TARGET_SCALE (Prix Fixe dataset.py), so bin i = [i, i + 1) peaks at v = i.
SOFT_TARGET_SHIFT = 0.5
SOFT_TARGET_SCALE = 0.5
# log() floor: exactly zero terms stay zero (0 log 0 = 0) and equal bins give KL 0.
_TINY = float(np.finfo(np.float32).tiny)


def expected_bin(probabilities):
    """sum_i i * p_i over the last axis: (..., bins) -> (..., 1) float32."""
    probabilities = ops.cast(probabilities, "float32")
    bins = ops.arange(probabilities.shape[-1], dtype="float32")
    return ops.sum(probabilities * bins, axis=-1, keepdims=True)


@keras.saving.register_keras_serializable(package="dream_hpo")
class ExpectedBin(keras.layers.Layer):
    """`expected_bin` as a layer, so a saved model outputs the expression itself."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, probabilities):
        return expected_bin(probabilities)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


def soft_bin_targets(values, num_bins: int):
    """Measured expression values (...) -> (..., num_bins) float32 probabilities over the bins.

    Bin i holds the mass that a normal with mean value + 0.5 and sd 0.5 puts on
    [i, i + 1); as in Prix Fixe's dataset.py, whose outer edges are -inf and +inf, the
    first bin also takes everything below 1 and the last everything from num_bins - 1
    up, so each row sums to 1 and a value beyond the bins still counts, in the
    nearest one.
    """
    values = ops.expand_dims(ops.convert_to_tensor(values, dtype="float32"), -1)
    edges = ops.arange(1, num_bins, dtype="float32")
    cdf = 0.5 * (1.0 + ops.erf((edges - values - SOFT_TARGET_SHIFT) / (SOFT_TARGET_SCALE * math.sqrt(2.0))))
    below = ops.zeros_like(cdf[..., :1])
    cdf = ops.concatenate([below, cdf, below + 1.0], axis=-1)
    # float32 erf is not strictly monotone far in the tails; a difference of -1e-9 is a zero.
    return ops.maximum(ops.diff(cdf, axis=-1), 0.0)


def bin_kl_divergence(target_bins, predicted_bins):
    """KL(target || predicted) over the last axis, one value per example, in float32.

    PyTorch's KLDivLoss on log-probabilities summed over bins (Prix Fixe averages it
    over the batch, as Keras' reduction does): bins with no target mass add nothing,
    and a predicted probability that underflowed to zero counts as the smallest
    float32 rather than making the loss infinite.
    """
    target = ops.cast(target_bins, "float32")
    predicted = ops.cast(predicted_bins, "float32")
    return ops.sum(target * (ops.log(ops.maximum(target, _TINY)) - ops.log(ops.maximum(predicted, _TINY))), axis=-1)


@keras.saving.register_keras_serializable(package="dream_hpo")
def soft_bin_kl_loss(y_true, y_pred):
    """LegNet's loss: measured values (batch,) or (batch, 1) against bin probabilities (batch, bins).

    The soft targets are made here, so the input pipeline ships the measured values
    unchanged and the same targets serve the expression metrics.
    """
    values = ops.reshape(y_true, (-1,))
    return bin_kl_divergence(soft_bin_targets(values, y_pred.shape[-1]), y_pred)
