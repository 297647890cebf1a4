"""Saving for resuming (.keras) and exporting for serving (TF SavedModel).

The seed lost its best model to a serving signature fixed to the wrong
shape, so the export states its signature explicitly: any batch size of
(sequence_length, 4) float32 one-hot.
"""

from __future__ import annotations

from pathlib import Path

import keras

# Imported for its registrations (as model.layers is below), so .keras files
# load without custom_objects.
from model import training as _training  # noqa: F401
from model.layers import NUM_BASES


def _keras_path(path) -> Path:
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model files must end in '.keras'; got {str(path)!r}.")
    return path


def save_model(model: keras.Model, path) -> Path:
    path = _keras_path(path)
    model.save(path)
    return path


def load_model(path) -> keras.Model:
    return keras.saving.load_model(_keras_path(path))


def export_serving(core_model: keras.Model, directory) -> Path:
    """Export a SavedModel whose `serve` endpoint takes (batch, L, 4) float32."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"export_serving needs the TensorFlow backend (KERAS_BACKEND=tensorflow); "
            f"this process runs {keras.backend.backend()!r}."
        )
    input_shape = tuple(core_model.input_shape)
    if len(input_shape) != 3 or input_shape[-1] != NUM_BASES:
        raise ValueError(
            f"export_serving needs the core model with input (batch, L, {NUM_BASES}); got input shape "
            f"{input_shape}. Pass model.core_model(training_model), not the training model."
        )
    signature = [keras.InputSpec(shape=(None, *input_shape[1:]), dtype="float32")]
    core_model.export(str(directory), format="tf_saved_model", input_signature=signature, verbose=False)
    return Path(directory)
