"""Validated, frozen configs for the mini-Enformer and its training.

The search space names fields of these configs, so a trial's parameters are
just a config: every check runs at construction, and every message says which
field is wrong, the value received and what is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

POOLINGS = ("max", "average")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "one_cycle", "warmup_cosine")

# Enformer's relative-position basis: three functions (exponential, central
# mask, gamma), each doubled by a sign-symmetric copy.
RELATIVE_POSITION_COMPONENTS = 6


def is_int(value: Any) -> bool:
    """A whole number as a config takes it: an int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(cls_name: str, name: str, value: Any, minimum: int = 1) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(
            f"{cls_name}.{name} must be an integer >= {minimum}; got {value!r}."
        )


def _check_number(cls_name: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{cls_name}.{name} must be a number; got {value!r}.")


def _check_fraction(cls_name: str, name: str, value: Any) -> None:
    _check_number(cls_name, name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{cls_name}.{name} must be in [0, 1); got {value!r}.")


def _check_bool(cls_name: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{cls_name}.{name} must be True or False; got {value!r}.")


def _check_choice(cls_name: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(
            f"{cls_name}.{name} must be one of {list(allowed)}; got {value!r}."
        )


class _Config:
    """to_dict/from_dict/fields shared by the frozen configs."""

    __dataclass_fields__: ClassVar[dict]

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """Field names, so a caller can split a flat trial dict between configs."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a dict; unknown keys raise instead of being dropped silently."""
        unknown = sorted(set(d) - set(cls.fields()))
        if unknown:
            raise ValueError(
                f"{cls.__name__} got unknown keys {unknown}; "
                f"allowed keys are {list(cls.fields())}."
            )
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Config):
    """Architecture knobs of the mini-Enformer; defaults are the seed's 192/5/4/4.

    `rc_augment` lives here, not in TrainConfig, because it changes the saved model:
    training sees each example on a random strand, and the evaluated and served
    model averages both strands (model.strand).
    """

    channels: int = 192
    stem_width: int = 5
    tower_width: int = 4
    transformer_layers: int = 4
    num_heads: int = 8
    key_size: int = 64
    tower_blocks: int = 4
    attention_dropout: float = 0.05
    positional_dropout: float = 0.01
    transformer_dropout: float = 0.4
    final_dropout: float = 0.05
    pooling: str = "max"
    sequence_length: int = 85
    rc_augment: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in (
            "channels",
            "stem_width",
            "tower_width",
            "transformer_layers",
            "num_heads",
            "key_size",
            "tower_blocks",
            "sequence_length",
        ):
            _check_int(name, field, getattr(self, field))
        for field in (
            "attention_dropout",
            "positional_dropout",
            "transformer_dropout",
            "final_dropout",
        ):
            _check_fraction(name, field, getattr(self, field))
        _check_choice(name, "pooling", self.pooling, POOLINGS)
        _check_bool(name, "rc_augment", self.rc_augment)
        if self.channels % 4:
            raise ValueError(
                f"{name}.channels must be divisible by 4 (the stem has channels/4 "
                f"filters); got {self.channels}."
            )
        if self.channels % self.num_heads:
            raise ValueError(
                f"{name}.channels must be divisible by num_heads; got channels="
                f"{self.channels}, num_heads={self.num_heads}."
            )
        if (self.channels // self.num_heads) % RELATIVE_POSITION_COMPONENTS:
            raise ValueError(
                f"{name}: channels // num_heads must be divisible by "
                f"{RELATIVE_POSITION_COMPONENTS} (relative-position basis functions); "
                f"got channels={self.channels}, num_heads={self.num_heads} -> "
                f"{self.channels // self.num_heads}. Use channels that are a multiple "
                f"of {RELATIVE_POSITION_COMPONENTS * self.num_heads}."
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Config):
    """Optimiser and loop knobs; defaults are the seed's recipe (SGD 0.01, momentum 0.9, constant).

    `learning_rate` is the peak rate of the "one_cycle" and "warmup_cosine" schedules,
    which rise over the first `warmup_fraction` of all optimizer steps
    (model.training.learning_rate_schedule). `momentum` applies to SGD only.

    `mixed_precision` (mixed_bfloat16, float32 loss and output) and `jit_compile`
    (XLA) take True, False or "auto", which `model.devices` resolves for the device
    the trial lands on.
    """

    learning_rate: float = 0.01
    momentum: float = 0.9
    optimizer: str = "sgd"
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 10_000
    epochs: int = 10
    seed: int = 0
    mixed_precision: bool | str = "auto"
    jit_compile: bool | str = "auto"

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_number(name, "learning_rate", self.learning_rate)
        if self.learning_rate <= 0:
            raise ValueError(
                f"{name}.learning_rate must be > 0; got {self.learning_rate!r}."
            )
        _check_fraction(name, "momentum", self.momentum)
        _check_choice(name, "optimizer", self.optimizer, OPTIMIZERS)
        _check_choice(name, "lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _check_fraction(name, "warmup_fraction", self.warmup_fraction)
        _check_number(name, "weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValueError(
                f"{name}.weight_decay must be >= 0; got {self.weight_decay!r}."
            )
        _check_int(name, "batch_size", self.batch_size)
        _check_int(name, "epochs", self.epochs)
        _check_int(name, "seed", self.seed, minimum=0)
        for field in ("mixed_precision", "jit_compile"):
            value = getattr(self, field)
            # `1 == True`, so membership alone would let 1 and 0 through.
            if not (isinstance(value, bool) or value == "auto"):
                raise ValueError(
                    f"{name}.{field} must be True, False or 'auto'; got {value!r}."
                )


def split_config(flat: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Split one flat mapping (a trial's config, a set of overrides) between the two configs.

    Trials, search spaces and `--set` all speak in flat field names; unknown keys
    raise rather than being dropped.
    """
    model_fields, train_fields = set(ModelConfig.fields()), set(TrainConfig.fields())
    unknown = set(flat) - model_fields - train_fields
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}; allowed: model fields "
            f"{sorted(model_fields)} and train fields {sorted(train_fields)}"
        )
    return (
        ModelConfig.from_dict({k: v for k, v in flat.items() if k in model_fields}),
        TrainConfig.from_dict({k: v for k, v in flat.items() if k in train_fields}),
    )
