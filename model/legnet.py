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

`build_network` returns, with the bins head (the published one), the softmax over
`num_bins` expression bins (model.bins); with the Poisson head, an ingredient option,
one softplus value. Its input is channels-last (batch, length, channels): the four
one-hot channels, then the strand and singleton channels when the ingredients ask for
them; model.families adds those channels, averages strands and appends the
expectation for evaluation and serving.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
from keras import ops

from model.config import InputConfig, LegNetConfig
from model.mini_enformer import ELEMENTWISE_DTYPE

CORE_NAME = "legnet"
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

Block = Callable[[keras.KerasTensor], keras.KerasTensor]


def _conv_initializer() -> keras.initializers.Initializer:
    """Prix Fixe's: normal with variance 2 / (width x output channels)."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def _dense_initializer() -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=0.001)


@keras.saving.register_keras_serializable(package="dream_hpo")
class GroupedConv1D(keras.layers.Layer):
    """A bias-free, same-padded grouped convolution with as many outputs as inputs, `filters_per_group` of each a group.

    Computed as a depthwise convolution with `filters_per_group` filters per input
    channel, whose outputs are summed within each group: the same function and the
    same number of weights as Conv1D(groups=channels // filters_per_group), but
    TensorFlow's CPU kernels run grouped Conv1D about 300x slower than this
    (benchmarks/bench_train.py, docs/benchmarks.md). Weights start as Prix Fixe's:
    normal with variance 2 / (width x channels).
    """

    def __init__(self, width: int, filters_per_group: int, **kwargs):
        super().__init__(**kwargs)
        self.width, self.filters_per_group = width, filters_per_group

    def build(self, input_shape):
        channels = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(self.width, channels, self.filters_per_group),
            initializer=keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (self.width * channels))),
            name="kernel",
        )

    def call(self, x):
        per_input = ops.depthwise_conv(x, ops.cast(self.kernel, x.dtype), strides=1, padding="same")
        f = self.filters_per_group
        shape = ops.shape(x)
        # (batch, length, channels * f), ordered (input channel, filter) -> groups of f inputs x f outputs.
        grouped = ops.reshape(per_input, (shape[0], shape[1], x.shape[-1] // f, f, f))
        return ops.reshape(ops.sum(grouped, axis=3), (shape[0], shape[1], x.shape[-1]))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "width": self.width, "filters_per_group": self.filters_per_group}


def conv_bn_silu(filters: int, width: int, filters_per_group: int | None = None) -> Block:
    """Conv1D(same, no bias), or the grouped one, -> BatchNorm -> SiLU, LegNet's unit everywhere but the head."""

    def apply(x):
        if filters_per_group:
            x = GroupedConv1D(width, filters_per_group)(x)
        else:
            x = keras.layers.Conv1D(
                filters, width, padding="same", use_bias=False, kernel_initializer=_conv_initializer()
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
        x = conv_bn_silu(expanded, config.kernel_width, filters_per_group=config.filters_per_group)(x)
        x = squeeze_excitation(input_width // config.se_reduction)(x)
        return conv_bn_silu(input_width, 1)(x)

    def apply(x):
        x = keras.layers.Concatenate()([x, inverted_residual(x)])
        return conv_bn_silu(width, config.kernel_width)(x)

    return apply


def stem(config: LegNetConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, conv_bn_silu(config.stem_channels, config.stem_kernel)(inputs), name="stem")


def core(config: LegNetConfig, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(input_shape)
    x, input_width = inputs, config.stem_channels
    for width in config.block_channels:
        x = core_block(input_width, width, config)(x)
        input_width = width
    return keras.Model(inputs, x, name="core")


def head(outputs: int, activation: str, input_shape: tuple) -> keras.Model:
    """1x1 conv to `outputs` -> mean over positions -> the loss's activation, all float32
    so mixed precision never rounds the prediction."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv1D(outputs, 1, kernel_initializer=_conv_initializer(), dtype="float32")(inputs)
    x = keras.layers.GlobalAveragePooling1D(dtype="float32")(x)
    x = keras.layers.Activation(activation, dtype="float32")(x)
    return keras.Model(inputs, x, name="head")


def build_network(config: LegNetConfig, inputs: InputConfig, facts=None) -> keras.Model:
    """(batch, length, inputs.channels) float32 -> (batch, num_bins) bin probabilities
    with the bins head, (batch, tasks) values with the one-value head (`facts` as for the mini-Enformer)."""
    from model.mini_enformer import head_outputs

    sequence = keras.Input((inputs.length(facts), inputs.channels), dtype="float32", name="sequence")
    x = stem(config, tuple(sequence.shape[1:]))(sequence)
    x = core(config, tuple(x.shape[1:]))(x)
    x = head(*head_outputs(inputs, facts), tuple(x.shape[1:]))(x)
    return keras.Model(sequence, x, name=CORE_NAME)
