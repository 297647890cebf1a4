"""The served model: an MLflow pyfunc that takes DNA sequences and returns expression.

A trial's best Keras model is logged wrapped in `SequenceModel`, so the model
the search registers loads with `mlflow.pyfunc.load_model` and `mlflow models
serve` answers `{"dataframe_split": {"columns": ["sequence"], "data": [...]}}`
with one prediction per sequence: a number for DREAM data, one column per task
for a table's model. The wrapper applies the training data's layout (the
`data_layout` artifact: width, padding, cutting and window; the DREAM layout for
models logged before it existed), so callers never one-hot anything.

The model is logged from code (`search/served_model.py`, MLflow's models-from-code),
so no pickled Python object is stored; the .keras file travels as its artifact and
the code comes from the installed dream-hpo package, so serve with
`--env-manager local` in its environment. Signature and input example are fixed
here, so the driver logs a model without importing TensorFlow or running it.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

# A single model's artifact; an ensemble's members are KERAS_ARTIFACT_1 ... KERAS_ARTIFACT_k,
# its weights BLEND_ARTIFACT (artifact name -> weight) and its k-mer member KMER_ARTIFACT.
KERAS_ARTIFACT = "keras_model"
BLEND_ARTIFACT = "blend_weights"
KMER_ARTIFACT = "kmer_ridge"
DATA_ARTIFACT = "data_layout"
LOGGED_MODEL_NAME = "model"
SEQUENCE_COLUMN = "sequence"
# Two sequences in the challenge layout (constant flanks around a random middle), one shorter with an N.
INPUT_EXAMPLE = pd.DataFrame(
    {
        SEQUENCE_COLUMN: [
            "TGCATTTTTTTCACATCACGTTACCCGGATATAAAGCTAGCATCGATCGGATCCTTACCCG"
            "TTTTTTTTTATGCATGCAACGTTAGCATGCATGCATGGTTACGGCTGTT",
            "TGCATTTTTTTCACATCGGCATTAGCCGCCGATTGCAGTNACGATCGATCGGGCTAGCGGTTACGGCTGTT",
        ]
    }
)
REQUIREMENTS = ("mlflow", "tensorflow", "keras", "numpy", "pandas")
MODEL_CODE = Path(__file__).with_name("served_model.py")


@dataclass(frozen=True)
class BlendSpec:
    """An ensemble's weights (one per .keras path) and its k-mer member, as a search chose them."""

    weights: tuple[float, ...]
    kmer: object = None  # model.kmer_reference.KmerRidge
    kmer_weight: float = 0.0


@dataclass(frozen=True)
class ServedData:
    """What a logged model needs of its training data: the layout and tasks (data_prep's DataFacts), and
    a few of its sequences as the input example (DREAM's own example when empty)."""

    facts: object
    examples: tuple[str, ...] = ()


class SequenceModel(mlflow.pyfunc.PythonModel):
    """DataFrame with a `sequence` column in, float32 predictions `(n,)` out, in input order.

    One Keras model, or an ensemble: its members' predictions weighted, the k-mer
    member's computed here from the same sequences. An ensemble logged without
    weights (before they existed) is the plain mean of its members.
    """

    def load_context(self, context):
        from data_prep.encoding import SequenceLayout
        from model import load_model
        from model.inference import Blend
        from model.kmer_reference import KmerRidge

        artifacts = context.artifacts
        members = sorted((name for name in artifacts if name.startswith(KERAS_ARTIFACT)), key=member_number)
        weights = json.loads(Path(artifacts[BLEND_ARTIFACT]).read_text()) if BLEND_ARTIFACT in artifacts else {}
        data = json.loads(Path(artifacts[DATA_ARTIFACT]).read_text()) if DATA_ARTIFACT in artifacts else {}
        self.blend = Blend(
            models=tuple(load_model(artifacts[name]) for name in members),
            weights=tuple(weights.get(name, 1.0) for name in members),
            kmer=KmerRidge.load(artifacts[KMER_ARTIFACT]) if KMER_ARTIFACT in artifacts else None,
            kmer_weight=weights.get(KMER_ARTIFACT, 0.0),
            **({"layout": SequenceLayout.from_dict(data["layout"]), "tasks": tuple(data["tasks"])} if data else {}),
        )

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Predictions `(n,)` for one task; a DataFrame with a column per task for several."""
        predictions = self.blend.predict(sequence_codes(model_input, self.blend))
        if len(self.blend.tasks) == 1:
            return predictions
        return pd.DataFrame(predictions, columns=list(self.blend.tasks))


def member_number(artifact: str) -> int:
    """1 for keras_model and keras_model_1, 10 for keras_model_10: members in the order they were logged."""
    suffix = artifact.removeprefix(KERAS_ARTIFACT).lstrip("_")
    return int(suffix) if suffix else 1


def sequence_codes(model_input, blend=None) -> np.ndarray:
    """The `sequence` column encoded by `blend`'s layout (DREAM's without one), every row a non-empty string of
    A, C, G, T, N checked to its end, as `predict` does.

    Errors are MLflow's INVALID_PARAMETER_VALUE, so the scoring server answers HTTP 400
    with this message (the row, the position, the character) and no stack trace.
    """
    from mlflow.exceptions import MlflowException

    from data_prep.encoding import DREAM_LAYOUT, fit_sequences

    if not isinstance(model_input, pd.DataFrame) or SEQUENCE_COLUMN not in model_input.columns:
        found = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise MlflowException.invalid_parameter_value(
            f"expected a DataFrame with a '{SEQUENCE_COLUMN}' column; got {found}"
        )
    sequences = model_input[SEQUENCE_COLUMN].tolist()
    for row, sequence in enumerate(sequences):
        if not isinstance(sequence, str) or not sequence:
            raise MlflowException.invalid_parameter_value(
                f"row {row + 1}: {sequence!r} is not a DNA sequence; "
                "every row needs a non-empty string of A, C, G, T, N"
            )
    layout = blend.layout if blend is not None else DREAM_LAYOUT
    try:
        codes, fitted = fit_sequences(sequences, layout)
    except ValueError as error:
        raise MlflowException.invalid_parameter_value(str(error)) from None
    if fitted.padded or fitted.trimmed:  # the server's log says what the layout did to the request
        logging.getLogger(__name__).info(
            "fitted %d sequences to the model's %d-base layout: %d padded with N on the %s, %d cut on the %s",
            len(sequences), layout.width, fitted.padded, layout.pad, fitted.trimmed, layout.trim,
        )
    return codes


def signature(tasks: tuple[str, ...] = ("expression",)):
    """A `sequence` column in; one float per sequence out, or a column per task for several."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    if len(tasks) == 1:
        outputs = Schema([TensorSpec(np.dtype(np.float32), (-1,))])
    else:
        outputs = Schema([ColSpec("float", task) for task in tasks])
    return ModelSignature(inputs=Schema([ColSpec("string", SEQUENCE_COLUMN)]), outputs=outputs)


def save_model(path, mlflow_model=None, validate_serving_input=True, **kwargs):
    """The flavor hook `Model.log` calls: pyfunc's own save.

    `validate_serving_input` is MLflow's switch for loading the model and running
    the input example at log time; it is taken here so it is not passed on, and
    `log_sequence_model` turns it off: the driver never imports TensorFlow.
    """
    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)


def log_sequence_model(
    run_id: str,
    keras_paths: list[Path],
    name: str = LOGGED_MODEL_NAME,
    model_id: str | None = None,
    blend: BlendSpec | None = None,
    data: ServedData | None = None,
):
    """Log the .keras model(s) to the run as one sequence-serving pyfunc; returns MLflow's ModelInfo.

    Several paths make an ensemble that serves the mean of their predictions, or their
    blend with `blend`'s weights and k-mer member. `data` (None is DREAM data) gives
    the layout and tasks it serves with. `model_id`
    is a logged model already created for it (`search.tracking` creates it in the study's
    experiment); without one MLflow creates it in the active experiment.

    Requirements are pinned to this environment's versions instead of inferred,
    which would load the model in a subprocess for every trial.
    """
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as scratch:
        artifacts = member_artifacts(keras_paths)
        if blend is not None:
            weights = dict(zip(artifacts, blend.weights))
            if blend.kmer is not None:
                artifacts[KMER_ARTIFACT] = str(Path(scratch) / f"{KMER_ARTIFACT}.npz")
                blend.kmer.save(artifacts[KMER_ARTIFACT])
                weights[KMER_ARTIFACT] = blend.kmer_weight
            artifacts[BLEND_ARTIFACT] = str(Path(scratch) / f"{BLEND_ARTIFACT}.json")
            Path(artifacts[BLEND_ARTIFACT]).write_text(json.dumps(weights, indent=2))
        tasks, example = ("expression",), INPUT_EXAMPLE
        if data is not None:
            facts = data.facts
            tasks = facts.tasks
            artifacts[DATA_ARTIFACT] = str(Path(scratch) / f"{DATA_ARTIFACT}.json")
            layout = {"layout": facts.layout.to_dict(), "tasks": list(tasks), "format": facts.format}
            Path(artifacts[DATA_ARTIFACT]).write_text(json.dumps(layout, indent=2))
            if data.examples:
                example = pd.DataFrame({SEQUENCE_COLUMN: list(data.examples)})
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=sys.modules[__name__],
            run_id=run_id,
            model_id=model_id,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            signature=signature(tasks),
            input_example=example,
            pip_requirements=[f"{package}=={metadata.version(package)}" for package in REQUIREMENTS],
            validate_serving_input=False,
        )


def member_artifacts(keras_paths: list[Path]) -> dict[str, str]:
    if len(keras_paths) == 1:
        return {KERAS_ARTIFACT: str(keras_paths[0])}
    return {f"{KERAS_ARTIFACT}_{i}": str(path) for i, path in enumerate(keras_paths, start=1)}


def load_sequence_model(model_uri: str):
    """The `model.inference.Blend` inside a logged `SequenceModel` (`runs:/ID/model`, `models:/NAME/VERSION`, ...)."""
    from mlflow.exceptions import MlflowException

    loaded = mlflow.pyfunc.load_model(model_uri)
    try:
        python_model = loaded.unwrap_python_model()
    except MlflowException:
        python_model = None
    if not isinstance(python_model, SequenceModel):
        raise ValueError(
            "not a dream-hpo sequence model (one logged by search.serving.log_sequence_model); "
            f"its pyfunc loader is {loaded.metadata.flavors['python_function'].get('loader_module')}"
        )
    return python_model.blend
