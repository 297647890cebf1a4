"""The seed's mini-Enformer: stem -> conv_tower -> transformer -> final_pointwise -> head.

Each part is a named functional sub-model, so its parameters can be counted
and its weights found under the paper's name. The network takes float
(batch, length, channels), one-hot plus any channels the ingredients add, and
returns (batch, 1) float32 expression after softplus (rank 2 so Keras losses and
`predict` need no reshaping), or bin probabilities with the bins head.
model.families builds the training and serving models around it.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

from model.config import InputConfig, ModelConfig, resolved_loss
from model.layers import RelativeMultiHeadAttention

CORE_NAME = "mini_enformer"
TOWER_DIVISIBLE_BY = 32
BATCH_NORM_MOMENTUM = 0.9
# Normalisations, activations and dropout compute in float32 under every precision policy;
# under mixed_bfloat16 only convolutions, dense layers and attention run in bfloat16.
# Keras' own normalisations already upcast to float32 inside; keeping their neighbours
# float32 too saves a cast each way, and CPUs run float32 elementwise ops and random
# numbers several times faster than bfloat16 ones (README, Performance).
ELEMENTWISE_DTYPE = "float32"

Block = Callable[[keras.KerasTensor], keras.KerasTensor]


def exponential_linspace_int(start: float, end: float, num: int, divisible_by: int = 1) -> list[int]:
    """`num` values spaced exponentially from start to end, rounded to multiples of divisible_by."""
    if num == 1:
        return [int(np.round(end / divisible_by) * divisible_by)]
    base = np.exp(np.log(end / start) / (num - 1))
    return [int(np.round(start * base**i / divisible_by) * divisible_by) for i in range(num)]


def tower_filters(channels: int, blocks: int) -> list[int]:
    """Conv tower widths from channels/4 up to channels (64, 64, 128, 192 for the seed).

    The last block is pinned to `channels` because the transformer's residuals
    need that width (144 would otherwise round to 128), and no block gets
    fewer than 32 filters (channels 48 would otherwise round to 0).
    """
    filters = exponential_linspace_int(channels / 4, channels, blocks, TOWER_DIVISIBLE_BY)
    return [max(f, TOWER_DIVISIBLE_BY) for f in filters[:-1]] + [channels]


def _fan_in_truncated_normal() -> keras.initializers.Initializer:
    """The seed's initialiser for the stem conv and dense layers: stddev 1/sqrt(fan_in)."""
    return keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")


def pooling(kind: str, strides: int) -> keras.layers.Layer:
    """Width-2 pooling with same padding; `kind` is ModelConfig.pooling."""
    layer = keras.layers.MaxPooling1D if kind == "max" else keras.layers.AveragePooling1D
    return layer(pool_size=2, strides=strides, padding="same")


def conv_block(filters: int, width: int) -> Block:
    """BatchNorm -> GELU -> Conv1D(same), the seed's pre-activation conv block."""

    def apply(x):
        x = keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM, dtype=ELEMENTWISE_DTYPE)(x)
        x = keras.layers.Activation("gelu", dtype=ELEMENTWISE_DTYPE)(x)
        return keras.layers.Conv1D(filters, width, padding="same", kernel_initializer="glorot_uniform")(x)

    return apply


def residual(x: keras.KerasTensor, block: Block) -> keras.KerasTensor:
    """x + block(x)."""
    return keras.layers.Add()([x, block(x)])


def stem(config: ModelConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv1D(
        config.channels // 4, config.stem_width, padding="same", kernel_initializer=_fan_in_truncated_normal()
    )(inputs)
    x = residual(x, conv_block(config.channels // 4, 1))
    x = pooling(config.pooling, strides=1)(x)
    return keras.Model(inputs, x, name="stem")


def conv_tower(config: ModelConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in tower_filters(config.channels, config.tower_blocks):
        x = conv_block(filters, config.tower_width)(x)
        x = residual(x, conv_block(filters, 1))
        x = pooling(config.pooling, strides=2)(x)
    return keras.Model(inputs, x, name="conv_tower")


def _attention(config: ModelConfig) -> Block:
    def apply(x):
        x = keras.layers.LayerNormalization(dtype=ELEMENTWISE_DTYPE)(x)
        x = RelativeMultiHeadAttention(
            num_heads=config.num_heads,
            key_size=config.key_size,
            attention_dropout=config.attention_dropout,
            positional_dropout=config.positional_dropout,
        )(x)
        return keras.layers.Dropout(config.transformer_dropout, dtype=ELEMENTWISE_DTYPE)(x)

    return apply


def _mlp(config: ModelConfig) -> Block:
    def apply(x):
        x = keras.layers.LayerNormalization(dtype=ELEMENTWISE_DTYPE)(x)
        x = keras.layers.Dense(2 * config.channels, kernel_initializer=_fan_in_truncated_normal())(x)
        x = keras.layers.Dropout(config.transformer_dropout, dtype=ELEMENTWISE_DTYPE)(x)
        x = keras.layers.ReLU(dtype=ELEMENTWISE_DTYPE)(x)
        x = keras.layers.Dense(config.channels, kernel_initializer=_fan_in_truncated_normal())(x)
        return keras.layers.Dropout(config.transformer_dropout, dtype=ELEMENTWISE_DTYPE)(x)

    return apply


def transformer(config: ModelConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = inputs
    for _ in range(config.transformer_layers):
        x = residual(x, _attention(config))
        x = residual(x, _mlp(config))
    return keras.Model(inputs, x, name="transformer")


def final_pointwise(config: ModelConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = conv_block(config.channels, 1)(inputs)
    x = pooling(config.pooling, strides=2)(x)
    x = keras.layers.Dropout(config.final_dropout, dtype=ELEMENTWISE_DTYPE)(x)
    x = keras.layers.Activation("gelu", dtype=ELEMENTWISE_DTYPE)(x)
    return keras.Model(inputs, x, name="final_pointwise")


def head(outputs: int, activation: str, input_shape: tuple) -> keras.Model:
    """Flatten -> Dense -> softplus (1 value) or softmax (bins), float32 so mixed precision never rounds it."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(outputs, kernel_initializer=_fan_in_truncated_normal(), dtype="float32")(x)
    x = keras.layers.Activation(activation, dtype="float32")(x)
    return keras.Model(inputs, x, name="head")


PARTS = (stem, conv_tower, transformer, final_pointwise)


def build_network(config: ModelConfig, inputs: InputConfig, facts=None) -> keras.Model:
    """(batch, length, inputs.channels) float32 -> (batch, tasks) values, or bin probabilities.

    `facts` (data_prep's DataFacts; None is DREAM data) gives the window length and tasks.
    """
    sequence = keras.Input((inputs.length(facts), inputs.channels), dtype="float32", name="one_hot")
    x = sequence
    for part in PARTS:
        x = part(config, tuple(x.shape[1:]))(x)
    x = head(*head_outputs(inputs, facts), tuple(x.shape[1:]))(x)
    return keras.Model(sequence, x, name=CORE_NAME)


# The last activation of each loss: bins are probabilities, Poisson rates positive, MSE values signed.
ACTIVATIONS = {"bins": "softmax", "poisson": "softplus", "mse": "linear"}


def head_outputs(inputs: InputConfig, facts=None) -> tuple[int, str]:
    """The head's width and last activation for these ingredients on this data (every family's)."""
    loss = resolved_loss(inputs, facts)
    width = inputs.num_bins if loss == "bins" else (1 if facts is None else len(facts.tasks))
    return width, ACTIVATIONS[loss]
