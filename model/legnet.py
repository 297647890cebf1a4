"""LegNet, the DREAM 2022 winner (autosome.org; Penzar et al., Bioinformatics 2023), in Keras 3.

The configuration followed is Prix Fixe's DREAM one, the organisers' re-implementation
in de-Boer-Lab/random-promoter-dream-challenge-2022 (`prixfixe/autosome/`), as the
design doc legnet.md describes it: stem -> core (6 blocks, 256 -> 128 -> 128 -> 64 ->
64 -> 64 -> 64) -> head. With the defaults (6 input channels, length 150) the model
has 1,725,122 trainable parameters (stem 11,264; core 1,712,688; head 1,170), the
count of Prix Fixe's PyTorch code; the batch norms' 11,136 moving statistics are
non-trainable here and buffers there, so neither count includes them.

Where the description leaves a choice, Prix Fixe's code decides:
- Every convolution is bias-free, since a batch norm follows it, except the head's 1x1.
- Squeeze-and-excitation squeezes the expanded width to the block's *input* width //
  se_reduction (not the expanded width // se_reduction), with biased dense layers:
  mean over positions -> Dense + SiLU -> Dense + sigmoid -> scale.
- The inverted residual ends in batch norm and SiLU; the head has no activation
  between its 1x1 convolution and the softmax. (The original submission added a
  low-rank bilinear term to squeeze-and-excitation and a SiLU after the head's
  convolution, so its count differs.)
- Batch norm is PyTorch's: momentum 0.1 there (0.9 here, the weight of the running
  value) and epsilon 1e-5. Convolutions start He-normal on fan-out (k x out
  channels), dense layers normal with sd 0.001, biases at zero.

The model returns the softmax over `num_bins` expression bins: training fits it with
`soft_bin_kl_loss` against the measured values, and `expression_model` appends
`ExpectedBin`, the expectation of the bin index, for evaluation and serving
((batch, 1), like the mini-Enformer's output). The input is channels-last
(batch, input_length, input_channels): in legnet.md's layout the four one-hot
channels, the strand channel and the singleton channel, in the order the caller
encodes them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
import numpy as np
from keras import ops

from model.config import _check_int, _Config, is_int
from model.mini_enformer import ELEMENTWISE_DTYPE

CORE_NAME = "legnet"
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5
NUM_BINS = 18
# A measured value v is read as a normal with mean v + SOFT_TARGET_SHIFT and sd
# SOFT_TARGET_SCALE (Prix Fixe dataset.py), so bin i = [i, i + 1) peaks at v = i.
SOFT_TARGET_SHIFT = 0.5
SOFT_TARGET_SCALE = 0.5
# log() floor: exactly zero terms stay zero (0 log 0 = 0) and equal bins give KL 0.
_TINY = float(np.finfo(np.float32).tiny)

Block = Callable[[keras.KerasTensor], keras.KerasTensor]


@dataclasses.dataclass(frozen=True)
class LegNetConfig(_Config):
    """Architecture knobs of LegNet; defaults are Prix Fixe's DREAM configuration.

    `block_channels` is each core block's output width; a block's input width is the
    previous block's output (the stem's for the first). A list (from YAML or JSON) is
    stored as a tuple.
    """

    input_length: int = 150
    input_channels: int = 6
    stem_channels: int = 256
    stem_width: int = 7
    block_channels: tuple[int, ...] = (128, 128, 64, 64, 64, 64)
    expansion: int = 4
    kernel_width: int = 7
    filters_per_group: int = 2
    se_reduction: int = 4
    num_bins: int = NUM_BINS

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in (
            "input_length",
            "input_channels",
            "stem_channels",
            "stem_width",
            "expansion",
            "kernel_width",
            "filters_per_group",
            "se_reduction",
        ):
            _check_int(name, field, getattr(self, field))
        _check_int(name, "num_bins", self.num_bins, minimum=2)
        if isinstance(self.block_channels, list):
            object.__setattr__(self, "block_channels", tuple(self.block_channels))
        channels = self.block_channels
        if not (isinstance(channels, tuple) and channels and all(is_int(c) and c >= 1 for c in channels)):
            raise ValueError(
                f"{name}.block_channels must be a non-empty list of integers >= 1; got {channels!r}."
            )
        ungroupable = [c for c in channels if (self.expansion * c) % self.filters_per_group]
        if ungroupable:
            raise ValueError(
                f"{name}: expansion * each of block_channels must be divisible by filters_per_group "
                f"(the grouped convolution's groups); got expansion={self.expansion}, "
                f"filters_per_group={self.filters_per_group}, block_channels {ungroupable} do not divide."
            )
        narrowest = min((self.stem_channels, *channels[:-1]))
        if narrowest < self.se_reduction:
            raise ValueError(
                f"{name}: squeeze-and-excitation narrows each block's input width by se_reduction, so "
                f"stem_channels and every block_channels entry but the last must be >= se_reduction; "
                f"got se_reduction={self.se_reduction} and a width of {narrowest}."
            )


def _conv_initializer() -> keras.initializers.Initializer:
    """Prix Fixe's: normal with variance 2 / (width x output channels)."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _dense_initializer() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=0.001)


def conv_bn_silu(filters: int, width: int, groups: int = 1) -> Block:
    """Conv1D(same, no bias) -> BatchNorm -> SiLU, LegNet's unit everywhere but the head."""

    def apply(x):
        x = keras.layers.Conv1D(
            filters, width, padding="same", groups=groups, use_bias=False, kernel_initializer=_conv_initializer()
        )(x)
        x = keras.layers.BatchNormalization(
            momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, dtype=ELEMENTWISE_DTYPE
        )(x)
        return keras.layers.Activation("silu", dtype=ELEMENTWISE_DTYPE)(x)

    return apply


def squeeze_excitation(bottleneck: int) -> Block:
    """Scale each channel by a gate computed from its mean over positions."""

    def apply(x):
        gate = keras.layers.GlobalAveragePooling1D(keepdims=True)(x)
        gate = keras.layers.Dense(bottleneck, activation="silu", kernel_initializer=_dense_initializer())(gate)
        gate = keras.layers.Dense(x.shape[-1], activation="sigmoid", kernel_initializer=_dense_initializer())(gate)
        return keras.layers.Multiply()([x, gate])

    return apply


def core_block(input_width: int, width: int, config: LegNetConfig) -> Block:
    """Inverted residual concatenated with its input, then resized to `width`.

    Prix Fixe's `inv_res_blc{i}` and `resize_blc{i}`: the inverted residual expands to
    expansion x width, convolves in groups of filters_per_group, squeezes and excites,
    and projects back to the input width.
    """
    expanded = config.expansion * width

    def inverted_residual(x):
        x = conv_bn_silu(expanded, 1)(x)
        x = conv_bn_silu(expanded, config.kernel_width, groups=expanded // config.filters_per_group)(x)
        x = squeeze_excitation(input_width // config.se_reduction)(x)
        return conv_bn_silu(input_width, 1)(x)

    def apply(x):
        x = keras.layers.Concatenate()([x, inverted_residual(x)])
        return conv_bn_silu(width, config.kernel_width)(x)

    return apply


def stem(config: LegNetConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, conv_bn_silu(config.stem_channels, config.stem_width)(inputs), name="stem")


def core(config: LegNetConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x, input_width = inputs, config.stem_channels
    for width in config.block_channels:
        x = core_block(input_width, width, config)(x)
        input_width = width
    return keras.Model(inputs, x, name="core")


def head(config: LegNetConfig, input_shape: tuple) -> keras.Model:
    """1x1 conv to the bins -> mean over positions -> softmax, in float32 so mixed precision never rounds it."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv1D(config.num_bins, 1, kernel_initializer=_conv_initializer(), dtype="float32")(inputs)
    x = keras.layers.GlobalAveragePooling1D(dtype="float32")(x)
    x = keras.layers.Softmax(dtype="float32")(x)
    return keras.Model(inputs, x, name="head")


PARTS = (stem, core, head)


def build_legnet(config: LegNetConfig) -> keras.Model:
    """(batch, input_length, input_channels) float32 -> (batch, num_bins) float32 bin probabilities."""
    inputs = keras.Input((config.input_length, config.input_channels), dtype="float32", name="sequence")
    x = inputs
    for part in PARTS:
        x = part(config, tuple(x.shape[1:]))(x)
    return keras.Model(inputs, x, name=CORE_NAME)


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


def expression_model(legnet: keras.Model) -> keras.Model:
    """LegNet followed by ExpectedBin: the same input -> (batch, 1) expression, sharing the weights."""
    inputs = keras.Input(legnet.input_shape[1:], dtype="float32", name="sequence")
    return keras.Model(inputs, ExpectedBin(name="expected_bin")(legnet(inputs)), name=f"{CORE_NAME}_expression")


def soft_bin_targets(values, num_bins: int = NUM_BINS):
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
