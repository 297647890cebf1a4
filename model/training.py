"""Loss, optimiser, learning-rate schedule, batch size and compilation.

The defaults are the seed's recipe (SGD with momentum at a constant rate); Adam,
AdamW and the one-cycle and warm-up-cosine schedules of the DREAM challenge's
winners are search options.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from model.bins import soft_bin_kl_loss
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


@keras.saving.register_keras_serializable(package="dream_hpo")
def mse_loss(y_true, y_pred):
    """Mean squared error over every task of every example, in float32 (both flattened, as for Poisson)."""
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return ops.mean(ops.square(y_pred - y_true))


# Each resolved loss (model.config.resolved_loss).
LOSSES = {"poisson": poisson_loss, "mse": mse_loss, "bins": soft_bin_kl_loss}

# One-cycle's start and end rates as fractions of the peak: PyTorch's OneCycleLR
# defaults (div_factor 25, final_div_factor 1e4), which the challenge's winners kept.
ONE_CYCLE_START = 1 / 25
ONE_CYCLE_END = 1 / (25 * 1e4)


def resolve_batch_size(batch_size: int, n_train: int, min_steps: int = 32) -> int:
    """The configured batch, capped so an epoch has at least `min_steps` optimizer steps.

    The seed's batch of 10,000 suits its 6.7M sequences (670 steps an epoch); on a
    library of 6,000 it would be one step an epoch and nothing would be learned.
    Never below 1; the full data set is unaffected.
    """
    if n_train < 1:
        raise ValueError(f"the training split is empty (n_train={n_train}); prepare more sequences")
    return max(1, min(batch_size, n_train // min_steps))


@keras.saving.register_keras_serializable(package="dream_hpo")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One-cycle (Smith 2018, PyTorch's OneCycleLR without momentum cycling).

    Cosine from peak * ONE_CYCLE_START up to `peak` over `warmup_steps`, then cosine
    down to peak * ONE_CYCLE_END at `total_steps`, and held there after.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int):
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = max(self.warmup_steps, 1)
        decay = max(self.total_steps - self.warmup_steps, 1)
        rising = ops.minimum(step / warmup, 1.0)
        falling = ops.clip((step - self.warmup_steps) / decay, 0.0, 1.0)
        start, end = self.peak * ONE_CYCLE_START, self.peak * ONE_CYCLE_END
        up = start + (self.peak - start) * (1 - ops.cos(math.pi * rising)) / 2
        down = end + (self.peak - end) * (1 + ops.cos(math.pi * falling)) / 2
        return ops.where(step < self.warmup_steps, up, down)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


def learning_rate_schedule(train: TrainConfig, steps_per_epoch: int | None):
    """The rate for `train.lr_schedule`: a float (constant) or a schedule over all `epochs`.

    A schedule spans `epochs * steps_per_epoch` optimizer steps; the step counter is
    the optimizer's, saved with its state, so a resumed trial continues the curve.
    "warmup_cosine" rises linearly from 0 to `learning_rate`, then decays to 0.
    """
    if train.lr_schedule == "constant":
        return train.learning_rate
    if steps_per_epoch is None or isinstance(steps_per_epoch, bool) or steps_per_epoch < 1:
        raise ValueError(
            f"lr_schedule {train.lr_schedule!r} needs steps_per_epoch, an integer >= 1; got {steps_per_epoch!r}."
        )
    total = train.epochs * steps_per_epoch
    warmup = min(round(train.warmup_fraction * total), total - 1)
    if train.lr_schedule == "one_cycle":
        return OneCycle(peak=train.learning_rate, total_steps=total, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total - warmup,
        warmup_target=train.learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(train: TrainConfig, steps_per_epoch: int | None = None) -> keras.optimizers.Optimizer:
    """SGD with plain momentum (the seed's), or Adam/AdamW, at `train.lr_schedule`; no clipping anywhere.

    Keras decouples weight decay in all three (the weights shrink by lr * weight_decay
    each step), so Adam with weight decay is AdamW; both are kept for the seed's names.
    """
    learning_rate = learning_rate_schedule(train, steps_per_epoch)
    weight_decay = train.weight_decay or None
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=train.momentum, nesterov=False, weight_decay=weight_decay
        )
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=weight_decay)
    return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=train.weight_decay)


def compile_for_training(
    model: keras.Model, train: TrainConfig, steps_per_epoch: int | None = None, loss: str = "poisson"
) -> keras.Model:
    """Compile with the loss; training, evaluation and predict steps all get XLA or none.

    `steps_per_epoch` (optimizer steps in one epoch) is needed by every schedule but
    "constant". `loss` is `model.config.resolved_loss`'s.
    """
    jit_compile = resolve_jit_compile(train.jit_compile)
    model.compile(optimizer=make_optimizer(train, steps_per_epoch), loss=LOSSES[loss], jit_compile=jit_compile)
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
