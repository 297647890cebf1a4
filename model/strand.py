"""Reverse-complement augmentation: train on a random strand, predict the mean of both.

A promoter read on the other strand is the same DNA, so with `ModelConfig.rc_augment`
each training example is reverse-complemented with probability 1/2, and the model
that is evaluated, saved and served averages its predictions for the forward and the
reverse-complement window. Both happen inside the Keras model, so `.keras` files,
the SavedModel export and `predict` need nothing extra.

Codes are A,C,G,T,N = 0..4 and one-hot channels are A,C,G,T, so the complement is
the channel order reversed and N (an all-zero row) stays N.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

COMPLEMENT_CODE = np.array([3, 2, 1, 0, 4], dtype=np.uint8)  # A<->T, C<->G, N->N


def reverse_complement_codes(codes: np.ndarray) -> np.ndarray:
    """Base codes `(..., L)` read on the other strand."""
    return COMPLEMENT_CODE[np.asarray(codes)][..., ::-1]


def reverse_complement(one_hot):
    """One-hot `(batch, L, 4)` read on the other strand: positions and channels reversed."""
    return ops.flip(ops.flip(one_hot, axis=-1), axis=-2)


@keras.saving.register_keras_serializable(package="dream_hpo")
class StrandAveraged(keras.layers.Wrapper):
    """Wraps the core model: a random strand per example in training, the mean of both otherwise.

    The coin flips come from a seeded `SeedGenerator`, whose state variable (path
    containing "seed_generator") the trainable checkpoints with the dropout
    generators', so a resumed trial draws the same strands.
    """

    def __init__(self, layer, seed: int | None = None, **kwargs):
        # float32 like BaseOneHot, so under mixed precision the one-hot reaches the core
        # unrounded and the two strands' float32 predictions are averaged in float32.
        kwargs.setdefault("dtype", "float32")
        super().__init__(layer, **kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, one_hot, training=None):
        reverse = reverse_complement(one_hot)
        if training:
            coin = keras.random.uniform((ops.shape(one_hot)[0], 1, 1), seed=self.seed_generator)
            return self.layer(ops.where(coin < 0.5, reverse, one_hot), training=True)
        return (self.layer(one_hot, training=False) + self.layer(reverse, training=False)) / 2

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def strand_averaged(core: keras.Model) -> keras.Model:
    """The core model wrapped in StrandAveraged, same input, output and name, so it saves and serves alike."""
    inputs = keras.Input(core.input_shape[1:], dtype="float32", name="one_hot")
    return keras.Model(inputs, StrandAveraged(core, name="strand_averaged")(inputs), name=core.name)
