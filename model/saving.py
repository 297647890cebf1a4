"""Saving and loading Keras models (.keras) and exporting them for serving (TF SavedModel).

This module is the one place that saves and loads a Keras model, so it imports
every module that registers a custom object (`REGISTERING_MODULES`): a `.keras`
file then loads in a fresh process, with no custom_objects, whatever the model
holds (a strand-averaged model needs model.strand, a compiled one model.training).

The seed lost its best model to a serving signature fixed to the wrong
shape, so the export states its signature explicitly: any batch size of
(sequence_length, 4) float32 one-hot.
"""

from __future__ import annotations

import zipfile
from importlib import import_module
from pathlib import Path

import keras

from model.layers import NUM_BASES

# Every module with a `keras.saving.register_keras_serializable` class or function.
REGISTERING_MODULES = ("model.bins", "model.layers", "model.legnet", "model.strand", "model.training")
for _module in REGISTERING_MODULES:
    import_module(_module)


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
    """The model in a `.keras` file; a file that is not one fails with ValueError before Keras reads it."""
    path = _keras_path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip archive, as .keras files are: it is truncated or not a Keras model")
    return keras.saving.load_model(path)


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
