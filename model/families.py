"""The one registry of model families, and the training and serving models built around a family's network.

A family is a module with `build_network(config, inputs)`, the network from the
ingredients' input (length x channels) to the output head's (one value, or bin
probabilities). Around it, built here for every family alike:
- the serving model (`build_model`): float one-hot (batch, length, 4) -> (batch, tasks)
  values; it adds the strand and singleton channels, averages strands and takes
  the bins' expectation. This is what trials evaluate, save and serve.
- the training model (`build_training_model`): uint8 base codes (batch, length), plus
  each example's singleton flag (batch, 1) when that channel is on -> the network's
  output, on a random strand, for the head's loss.
Both share one set of weights; `core_model` gets the serving model back from a
training model.
"""

from __future__ import annotations

import keras

from model import legnet, mini_enformer
from model.bins import ExpectedBin
from model.config import InputConfig, LegNetConfig, ModelConfig, family_of
from model.layers import NUM_BASES, BaseOneHot
from model.strand import StrandAveraged

BUILDERS = {"mini_enformer": mini_enformer.build_network, "legnet": legnet.build_network}
NETWORK_NAMES = (mini_enformer.CORE_NAME, legnet.CORE_NAME)
WRAPPER_NAME = "strand_averaged"


def build_network(architecture: ModelConfig | LegNetConfig, inputs: InputConfig, facts=None) -> keras.Model:
    """The family's network, picked by the architecture config's type, for this data (`facts`; None is DREAM data)."""
    return BUILDERS[family_of(architecture)](architecture, inputs, facts)


def _input_layer(network: keras.Model, inputs: InputConfig):
    """What feeds the network: the strand/channel wrapper when the ingredients need one, else the network."""
    if inputs.both_strands or inputs.singleton_channel:
        return StrandAveraged(
            network,
            both_strands=inputs.both_strands,
            strand_channel=inputs.strand_channel,
            singleton_channel=inputs.singleton_channel,
            name=WRAPPER_NAME,
        )
    return network


def _serving(feeding: keras.layers.Layer, network: keras.Model) -> keras.Model:
    """One-hot (batch, length, 4) -> (batch, 1): the wrapper (if any), then the bins' expectation (if bins)."""
    bins = _is_bins(network)
    if feeding is network and not bins:
        return network  # the seed's model, exactly as it always was saved
    length = network.input_shape[1]
    one_hot = keras.Input((length, NUM_BASES), dtype="float32", name="one_hot")
    x = feeding(one_hot)
    if bins:
        x = ExpectedBin(name="expected_bin")(x)
    return keras.Model(one_hot, x, name=network.name)


def _is_bins(network: keras.Model) -> bool:
    """Whether the network's head ends in a softmax over bins (the bins head), not one value per task."""
    last = network.get_layer("head").layers[-1]
    return getattr(last, "activation", None) is keras.activations.softmax


def build_model(
    architecture: ModelConfig | LegNetConfig, inputs: InputConfig = InputConfig(), facts=None
) -> keras.Model:
    """The serving model: float one-hot (batch, length, 4) -> (batch, tasks) float32 values."""
    network = build_network(architecture, inputs, facts)
    return _serving(_input_layer(network, inputs), network)


def build_training_model(
    architecture: ModelConfig | LegNetConfig, inputs: InputConfig = InputConfig(), facts=None
) -> keras.Model:
    """uint8 codes (batch, length) [+ singleton flags (batch, 1)] -> BaseOneHot -> the network's output (shared weights)."""
    network = build_network(architecture, inputs, facts)
    feeding = _input_layer(network, inputs)
    codes = keras.Input((inputs.length(facts),), dtype="uint8", name="codes")
    one_hot = BaseOneHot(name="base_one_hot")(codes)
    if inputs.singleton_channel:
        flags = keras.Input((1,), dtype="float32", name="singleton")
        return keras.Model([codes, flags], feeding([one_hot, flags]), name=f"{network.name}_training")
    return keras.Model(codes, feeding(one_hot), name=f"{network.name}_training")


def core_model(training_model: keras.Model) -> keras.Model:
    """The serving model inside a training model (the same weights), for evaluating, saving and serving."""
    names = {layer.name for layer in training_model.layers}
    feeding = training_model.get_layer(WRAPPER_NAME if WRAPPER_NAME in names else next(n for n in NETWORK_NAMES if n in names))
    network = feeding.layer if isinstance(feeding, StrandAveraged) else feeding
    return _serving(feeding, network)
