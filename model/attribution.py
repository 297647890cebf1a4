"""What each base of a sequence does to a model's prediction: in-silico mutagenesis and gradient x input.

Both read the bases of the data layout's window (the 85 bp crop on DREAM data), the
only ones a crop model sees, and return arrays `(n, window_length, 4, tasks)` over
base channels A, C, G, T:

- `mutagenesis` predicts every single-base substitution through the Blend, so the
  model's own windowing, strand averaging and ensemble weights apply; an effect is
  the substitution's prediction minus the sequence's own (0 for the base present).
- `gradient_x_input` differentiates the Keras members on their backend; it is the
  cheap linear estimate of the same thing, checked against mutagenesis.

`hypothetical` centres either over the four bases at each position (what TF-MoDISco
takes as hypothetical contributions) and `importance` keeps the present base's
share: how much the base there raises the prediction over the average base.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from data_prep.encoding import one_hot
from model.inference import DEFAULT_BATCH_SIZE, Blend, check_batch_size

NUM_BASES = 4
# Substitutions predicted per call to the Blend: bounds memory (a few MB of codes)
# while keeping Keras batches full.
VARIANTS_PER_CALL = 16_384


def window_positions(blend: Blend) -> np.ndarray:
    """The stored columns a model reads: the layout's window."""
    layout = blend.layout
    return np.arange(layout.window_start, layout.window_start + layout.window_length)


def _as_tasks(predictions: np.ndarray) -> np.ndarray:
    return predictions.reshape(len(predictions), -1)


def mutagenesis(
    blend: Blend,
    codes: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(effects `(n, L, 4, tasks)`, reference predictions `(n, tasks)`) for codes stored in `blend.layout`.

    Sequences are mutated a few at a time, `VARIANTS_PER_CALL` substitutions per
    prediction call, never all at once. A position holding N is set to each of the
    four bases.
    """
    check_batch_size(batch_size)
    codes = np.asarray(codes)
    positions = window_positions(blend)
    reference = _as_tasks(blend.predict(codes, batch_size))
    effects = np.zeros((len(codes), len(positions), NUM_BASES, reference.shape[1]), np.float32)
    per_call = max(1, VARIANTS_PER_CALL // (len(positions) * (NUM_BASES - 1)))
    for start in range(0, len(codes), per_call):
        chunk = codes[start : start + per_call]
        variants = np.repeat(chunk[:, None, None, :], len(positions), axis=1).repeat(NUM_BASES, axis=2)
        rows, columns, bases = np.indices(variants.shape[:3])
        variants[rows, columns, bases, positions[columns]] = bases
        changed = chunk[:, positions][:, :, None] != np.arange(NUM_BASES)
        predicted = _as_tasks(blend.predict(variants[changed], batch_size))
        block = np.zeros((*changed.shape, reference.shape[1]), np.float32)
        block[changed] = predicted - np.repeat(reference[start : start + per_call], changed.sum(axis=(1, 2)), axis=0)
        effects[start : start + len(chunk)] = block
        if progress:
            progress(start + len(chunk), len(codes))
    return effects, reference


def gradient_x_input(blend: Blend, codes: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Gradients of each task's prediction with respect to the window's one-hot, `(n, L, 4, tasks)`.

    An ensemble's Keras members are weighted as the Blend weights them; the k-mer
    member has no gradient and is left out (`keras_share` says how much of the
    blend the gradients cover). Models reading more than the window (LegNet's
    plasmid-padded input) are refused: mutagenesis covers them.
    """
    check_batch_size(batch_size)
    share = keras_share(blend)
    if share == 0:
        raise ValueError("the model has no Keras member to differentiate (a k-mer reference alone)")
    layout = blend.layout
    windows = one_hot(np.asarray(codes)[:, window_positions(blend)])
    total = np.zeros((*windows.shape, len(blend.tasks)), np.float32)
    for model, weight in zip(blend.models, blend.weights):
        if tuple(model.input_shape[1:]) != (layout.window_length, NUM_BASES):
            raise ValueError(
                f"gradient x input needs a model reading the {layout.window_length}-base window as one-hot; "
                f"this one reads {tuple(model.input_shape[1:])}"
            )
        for start in range(0, len(windows), batch_size):
            total[start : start + batch_size] += weight * _gradients(model, windows[start : start + batch_size])
    return total / (sum(blend.weights) / share)


def keras_share(blend: Blend) -> float:
    """The share of the blend's weight held by its Keras members (1 for a single model)."""
    keras_weight = float(sum(blend.weights))
    return keras_weight / (keras_weight + (blend.kmer_weight if blend.kmer is not None else 0.0))


def _gradients(model, one_hot_batch: np.ndarray) -> np.ndarray:
    """d prediction / d one-hot for each task, on the model's Keras backend, `(batch, L, 4, tasks)`."""
    import keras

    backend = keras.backend.backend()
    tasks = model.output_shape[-1]
    if backend == "tensorflow":
        import tensorflow as tf

        inputs = tf.convert_to_tensor(one_hot_batch)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(inputs)
            outputs = tf.cast(tf.reshape(model(inputs, training=False), (len(one_hot_batch), tasks)), tf.float32)
            sums = [tf.reduce_sum(outputs[:, task]) for task in range(tasks)]
        grads = [tape.gradient(total, inputs) for total in sums]
        del tape
        return np.stack([np.asarray(g, np.float32) for g in grads], axis=-1)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def task_sum(inputs, task):
            outputs = jnp.reshape(model(inputs, training=False), (inputs.shape[0], tasks)).astype(jnp.float32)
            return outputs[:, task].sum()

        grad = jax.grad(task_sum)
        return np.stack(
            [np.asarray(grad(jnp.asarray(one_hot_batch), task), np.float32) for task in range(tasks)], axis=-1
        )
    raise ValueError(f"gradients are computed on the tensorflow or jax backend; Keras runs on {backend}")


def hypothetical(scores: np.ndarray) -> np.ndarray:
    """Scores `(n, L, 4, tasks)` centred over the four bases at each position."""
    return scores - scores.mean(axis=2, keepdims=True)


def importance(scores: np.ndarray, window_codes: np.ndarray) -> np.ndarray:
    """`(n, L, tasks)`: the centred score of the base present at each position (0 at N)."""
    present = one_hot(window_codes)[..., None]
    return (hypothetical(scores) * present).sum(axis=2)


def positional_agreement(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per task, the median over sequences of the Pearson r between two importance maps `(n, L, tasks)` along positions."""
    a = first - first.mean(axis=1, keepdims=True)
    b = second - second.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / denominator
    return np.nanmedian(np.where(denominator > 0, r, np.nan), axis=0)


@dataclass(frozen=True)
class Attributions:
    """What `attribute` computed for `n` sequences: arrays over the window, tasks last."""

    window_codes: np.ndarray  # (n, L) uint8, N = N_CODE
    predictions: np.ndarray  # (n, tasks)
    mutagenesis: np.ndarray  # (n, L, 4, tasks)
    gradients: np.ndarray | None  # (n, L, 4, tasks), None when no Keras member reads the window
    agreement: np.ndarray | None  # (tasks,) median per-sequence r of the two importance maps

    @property
    def ism_importance(self) -> np.ndarray:
        return importance(self.mutagenesis, self.window_codes)

    @property
    def gradient_importance(self) -> np.ndarray | None:
        return None if self.gradients is None else importance(self.gradients, self.window_codes)


def attribute(
    blend: Blend,
    codes: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Attributions, tuple[str, ...]]:
    """Mutagenesis and, where the model allows, gradient x input, for codes stored in `blend.layout`.

    Returns the arrays and one line for each thing a reader should know about them:
    why gradients were not taken, or how little of an ensemble they cover.
    """
    effects, predictions = mutagenesis(blend, codes, batch_size, progress)
    window_codes = np.asarray(codes)[:, window_positions(blend)].astype(np.uint8)
    try:
        gradients = gradient_x_input(blend, codes)
    except ValueError as reason:
        return Attributions(window_codes, predictions, effects, None, None), (f"gradient x input left out: {reason}",)
    agreement = positional_agreement(importance(effects, window_codes), importance(gradients, window_codes))
    share = keras_share(blend)
    notes = (
        ()
        if share == 1
        else (f"gradient x input covers the Keras members, {share:.0%} of the blend; the k-mer member has no gradient",)
    )
    return Attributions(window_codes, predictions, effects, gradients, agreement), notes
