"""Strands and extra input channels: train on a random strand, predict the mean of both.

A promoter read on the other strand is the same DNA, so with `InputConfig.rc_augment`
(or `strand_channel`) each training example is reverse-complemented with probability
1/2, and the model that is evaluated, saved and served averages its predictions for
the forward and the reverse-complement sequence. The same wrapper appends LegNet's
extra channels to the one-hot: the strand channel (1 on the reverse complement) and
the singleton channel (the training example's flag; 0 at prediction). All of it
happens inside the Keras model, so `.keras` files, the SavedModel export and
`predict` take the one-hot alone.

Codes are A,C,G,T,N = 0..4 and one-hot channels are A,C,G,T, so the complement is
the channel order reversed and N (an all-zero row) stays N.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from model.layers import NUM_BASES

COMPLEMENT_CODE = np.array([3, 2, 1, 0, 4], dtype=np.uint8)  # A<->T, C<->G, N->N


def reverse_complement_codes(codes: np.ndarray) -> np.ndarray:
    """Base codes `(..., L)` read on the other strand."""
    return COMPLEMENT_CODE[np.asarray(codes)][..., ::-1]


def reverse_complement(one_hot):
    """One-hot `(batch, L, 4)` read on the other strand: positions and channels reversed."""
    return ops.flip(ops.flip(one_hot, axis=-1), axis=-2)


@keras.saving.register_keras_serializable(package="dream_hpo")
class StrandAveraged(keras.layers.Wrapper):
    """Wraps a family's network: feeds it the one-hot plus its extra channels, on one or both strands.

    - `both_strands`: a random strand per example in training, the mean of both otherwise.
    - `strand_channel`: a channel that is 1 where the sequence is the reverse complement.
    - `singleton_channel`: a channel holding each training example's flag (called with
      `(one_hot, flags)`, flags (batch, 1)); 0 when called with the one-hot alone.

    The coin flips come from a seeded `SeedGenerator`, whose state variable (path
    containing "seed_generator") the trainable checkpoints with the dropout
    generators', so a resumed trial draws the same strands. Models saved before the
    channels existed load as `both_strands` alone, which is what they did.
    """

    def __init__(
        self,
        layer,
        seed: int | None = None,
        both_strands: bool = True,
        strand_channel: bool = False,
        singleton_channel: bool = False,
        **kwargs,
    ):
        # float32 like BaseOneHot, so under mixed precision the one-hot reaches the network
        # unrounded and the two strands' float32 predictions are averaged in float32.
        kwargs.setdefault("dtype", "float32")
        super().__init__(layer, **kwargs)
        self.seed = seed
        self.both_strands, self.strand_channel, self.singleton_channel = both_strands, strand_channel, singleton_channel
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _with_channels(self, one_hot, reverse: bool | object, flags):
        """The network's input: one-hot, then the strand channel, then the singleton channel."""
        parts = [one_hot]
        column = ops.zeros_like(one_hot[..., :1])
        if self.strand_channel:
            parts.append(column + ops.cast(reverse, one_hot.dtype))
        if self.singleton_channel:
            parts.append(column if flags is None else column + ops.cast(ops.reshape(flags, (-1, 1, 1)), one_hot.dtype))
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else one_hot

    def call(self, inputs, training=None):
        one_hot, flags = inputs if isinstance(inputs, (list, tuple)) else (inputs, None)
        if not training:
            flags = None
        if not self.both_strands:
            return self.layer(self._with_channels(one_hot, 0.0, flags), training=training)
        reverse = reverse_complement(one_hot)
        if training:
            coin = keras.random.uniform((ops.shape(one_hot)[0], 1, 1), seed=self.seed_generator) < 0.5
            sequence = ops.where(coin, reverse, one_hot)
            return self.layer(self._with_channels(sequence, coin, flags), training=True)
        forward = self.layer(self._with_channels(one_hot, 0.0, None), training=False)
        backward = self.layer(self._with_channels(reverse, 1.0, None), training=False)
        return (forward + backward) / 2

    def compute_output_shape(self, input_shape):
        one_hot_shape = input_shape[0] if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)) else input_shape
        extra = int(self.strand_channel) + int(self.singleton_channel)
        return self.layer.compute_output_shape((*one_hot_shape[:-1], NUM_BASES + extra))

    def get_config(self):
        return {
            **super().get_config(),
            "seed": self.seed,
            "both_strands": self.both_strands,
            "strand_channel": self.strand_channel,
            "singleton_channel": self.singleton_channel,
        }
