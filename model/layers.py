"""Custom Keras layers of the mini-Enformer, written with keras.ops only.

Only keras.ops is used so the same layers run on the TensorFlow and JAX
backends; each layer is registered so `.keras` files load without
custom_objects.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from model.config import RELATIVE_POSITION_COMPONENTS

NUM_BASES = 4  # A, C, G, T; code 4 (N) one-hots to a zero row.


@keras.saving.register_keras_serializable(package="dream_hpo")
class BaseOneHot(keras.layers.Layer):
    """Integer base codes (A,C,G,T,N = 0..4) -> one-hot rows, N as zeros.

    The training model starts with this layer so the host ships one byte per
    base instead of sixteen bytes of float32 one-hot. Its output is float32,
    the dtype of the core model's serving input.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, codes):
        # Code 4 is out of range for four classes, which one_hot maps to a zero row on every
        # backend: no fifth column to cut off.
        return ops.one_hot(ops.cast(codes, "int32"), NUM_BASES, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape, NUM_BASES)


def _exponential_features(distances: np.ndarray, num: int, seq_length: int) -> np.ndarray:
    """Exponential decay with half-lives from 2**3 to seq_length (log-spaced)."""
    half_life = 2.0 ** np.linspace(3.0, math.log2(seq_length), num)
    return np.exp(-math.log(2.0) / half_life * distances[:, None])


def _central_mask_features(distances: np.ndarray, num: int) -> np.ndarray:
    """1 inside windows of width 2**k - 1 around the query, 0 outside."""
    widths = 2.0 ** np.arange(1, num + 1) - 1
    return (widths > distances[:, None]).astype(np.float64)


def _gamma_features(distances: np.ndarray, num: int, seq_length: int) -> np.ndarray:
    """Gamma densities with means spread over the sequence, each scaled to max 1."""
    stddev = seq_length / (2 * num)
    mean = np.linspace(seq_length / num, seq_length, num)
    concentration = (mean / stddev) ** 2
    rate = mean / stddev**2
    x = distances[:, None]
    # concentration >= 4, so clamping x = 0 away from log(0) still gives density 0 there.
    log_unnormalised = (concentration - 1) * np.log(np.maximum(x, 1e-300)) - rate * x
    log_normalisation = np.array([math.lgamma(c) for c in concentration]) - concentration * np.log(rate)
    probabilities = np.exp(log_unnormalised - log_normalisation) + 1e-8
    return probabilities / probabilities.max(axis=0, keepdims=True)


@functools.cache
def relative_position_basis(seq_length: int, feature_size: int) -> np.ndarray:
    """Enformer's basis features for distances -(L-1)..(L-1): (2L-1, feature_size).

    Depends only on the sequence length, so it is a NumPy constant computed
    once per length and size (shared, read-only, by every attention layer)
    rather than a graph of ops run every step.
    """
    signed = np.arange(-seq_length + 1, seq_length, dtype=np.float64)
    distances = np.abs(signed)
    num = feature_size // RELATIVE_POSITION_COMPONENTS
    features = np.concatenate(
        [
            _exponential_features(distances, num, seq_length),
            _central_mask_features(distances, num),
            _gamma_features(distances, num, seq_length),
        ],
        axis=-1,
    )
    basis = np.concatenate([features, np.sign(signed)[:, None] * features], axis=-1).astype(np.float32)
    basis.flags.writeable = False
    return basis


def relative_position_index(seq_length: int) -> np.ndarray:
    """(T, T) rows into the basis: [i, j] is distance j - i, offset by T - 1.

    Gathering the projected basis with it gives each query-key pair its own
    relative-position key, which replaces Transformer-XL's pad-and-reshape
    "relative shift" of the (batch, heads, T, 2T-1) logits: the same logits,
    but only T of the 2T-1 distances are computed and nothing batch-sized is
    padded or reshaped.
    """
    positions = np.arange(seq_length)
    return (positions[None, :] - positions[:, None] + seq_length - 1).astype(np.int32)


@keras.saving.register_keras_serializable(package="dream_hpo")
class RelativeMultiHeadAttention(keras.layers.Layer):
    """Enformer's multi-head self-attention with relative positional logits.

    Content and position terms each get a learned bias (Transformer-XL style);
    the relative-position features are fixed basis functions projected per
    head, so the layer needs no absolute position embedding.
    """

    def __init__(
        self,
        num_heads: int,
        key_size: int,
        attention_dropout: float,
        positional_dropout: float,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_size = key_size
        self.attention_dropout = attention_dropout
        self.positional_dropout = positional_dropout
        # Float32 dropouts: they act on the float32 basis and softmax, and float32 random numbers are cheaper on CPUs.
        self.positional_dropout_layer = keras.layers.Dropout(positional_dropout, dtype="float32")
        self.attention_dropout_layer = keras.layers.Dropout(attention_dropout, dtype="float32")

    def build(self, input_shape):
        length, channels = input_shape[-2], input_shape[-1]
        heads, key_size = self.num_heads, self.key_size
        self.value_size = channels // heads
        qkv_init = keras.initializers.VarianceScaling(2.0)

        def projection(name, in_dim, out_dim, initializer):
            return self.add_weight(name=name, shape=(in_dim, out_dim), initializer=initializer)

        self.query = projection("query", channels, heads * key_size, qkv_init)
        self.key = projection("key", channels, heads * key_size, qkv_init)
        self.value = projection("value", channels, heads * self.value_size, qkv_init)
        # The output projection starts at zero so each residual block starts as identity.
        self.output_kernel = projection("output_kernel", heads * self.value_size, channels, "zeros")
        self.output_bias = self.add_weight(name="output_bias", shape=(channels,), initializer="zeros")
        self.basis = relative_position_basis(length, self.value_size)
        self.relative_index = relative_position_index(length)
        self.relative_position = projection(
            "relative_position",
            self.value_size,
            heads * key_size,
            keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
        )
        self.content_bias = self.add_weight(name="content_bias", shape=(heads, 1, key_size), initializer=qkv_init)
        self.position_bias = self.add_weight(name="position_bias", shape=(heads, 1, key_size), initializer=qkv_init)

    def call(self, x, training=None):
        heads, key_size, value_size, length = self.num_heads, self.key_size, self.value_size, x.shape[1]
        # Heads stay in the last axes (batch, T, heads, size) and einsum contracts them, so no
        # (batch, heads, T, size) copies are made; the biases are added to the flat
        # (batch, T, heads * key_size) query, so their gradients sum over contiguous rows.
        q = ops.matmul(x, self.query) * key_size**-0.5
        content_q = ops.reshape(q + ops.reshape(self.content_bias, (-1,)), (-1, length, heads, key_size))
        position_q = ops.reshape(q + ops.reshape(self.position_bias, (-1,)), (-1, length, heads, key_size))
        k = ops.reshape(ops.matmul(x, self.key), (-1, length, heads, key_size))
        v = ops.reshape(ops.matmul(x, self.value), (-1, length, heads, value_size))

        basis = self.positional_dropout_layer(ops.convert_to_tensor(self.basis), training=training)
        r_k = ops.matmul(ops.cast(basis, self.compute_dtype), self.relative_position)
        r_k = ops.take(ops.reshape(r_k, (2 * length - 1, heads, key_size)), self.relative_index, axis=0)

        logits = ops.einsum("bihk,bjhk->bhij", content_q, k) + ops.einsum("bihk,ijhk->bhij", position_q, r_k)
        # Softmax in float32: bfloat16 logits lose the small differences that matter.
        weights = self.attention_dropout_layer(ops.softmax(ops.cast(logits, "float32"), axis=-1), training=training)
        attended = ops.einsum("bhij,bjhv->bihv", ops.cast(weights, self.compute_dtype), v)
        attended = ops.reshape(attended, (-1, length, heads * value_size))
        return ops.matmul(attended, self.output_kernel) + self.output_bias

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "key_size": self.key_size,
            "attention_dropout": self.attention_dropout,
            "positional_dropout": self.positional_dropout,
        }
