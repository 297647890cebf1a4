"""The code MLflow stores with every served model (models-from-code), in place of a pickle."""

import mlflow

from search.serving import SequenceModel

mlflow.models.set_model(SequenceModel())
