"""Loss, optimiser and compilation: the seed's recipe, with Adam/AdamW as search options."""

from __future__ import annotations

import keras
from keras import ops

from model.config import TrainConfig
from model.devices import resolve_jit_compile, resolve_mixed_precision
from model.metrics import POISSON_EPSILON


@keras.saving.register_keras_serializable(package="dream_hpo")
def poisson_loss(y_true, y_pred):
    """The seed's loss, mean(y_pred - y_true * log(y_pred + eps)), in float32.

    Both tensors are flattened, so (batch,) targets against (batch, 1)
    predictions cannot broadcast into a (batch, batch) matrix.
    """
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return ops.mean(y_pred - y_true * ops.log(y_pred + POISSON_EPSILON))


def make_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """SGD with plain momentum (the seed's), or Adam/AdamW; no clipping anywhere."""
    weight_decay = train.weight_decay or None
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=train.learning_rate, momentum=train.momentum, nesterov=False, weight_decay=weight_decay
        )
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=train.learning_rate, weight_decay=weight_decay)
    return keras.optimizers.AdamW(learning_rate=train.learning_rate, weight_decay=train.weight_decay)


def compile_for_training(model: keras.Model, train: TrainConfig) -> keras.Model:
    """Compile with the seed's loss; training, evaluation and predict steps all get XLA or none."""
    jit_compile = resolve_jit_compile(train.jit_compile)
    model.compile(optimizer=make_optimizer(train), loss=poisson_loss, jit_compile=jit_compile)
    return model


def set_precision(train: TrainConfig) -> str:
    """Set Keras' global dtype policy before building a model; returns the policy name.

    Keras reads the policy when layers are created, so this must run before
    build_model; float32 is restored explicitly so a previous trial's bfloat16
    never leaks into the next one in the same process. "auto" is bfloat16 on GPUs
    that have it (model.devices).
    """
    policy = "mixed_bfloat16" if resolve_mixed_precision(train.mixed_precision) else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
