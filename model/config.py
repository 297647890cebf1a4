"""Validated, frozen configs: each model family's architecture, the input and output ingredients, training.

The search space names fields of these configs, so a trial's parameters are
just a config: every check runs at construction, and every message says which
field is wrong, the value received and what is allowed. A trial's flat config
(what Ray, Optuna, `--set` and MLflow speak) becomes a `TrialConfig` here, and
only here; the family it names decides which architecture config applies.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

POOLINGS = ("max", "average")
# The model families, the seed's first (the default and the baseline's).
FAMILIES = ("mini_enformer", "legnet")
# "crop": the seed's 85 bp window of the stored 110; "plasmid": the whole stored
# sequence padded on its 5' side with the plasmid to `padded_length` (LegNet's input).
INPUT_WINDOWS = ("crop", "plasmid")
CROP_LENGTH = 85
# The padded window holds the whole stored sequence (110 bases) and at most the plasmid
# flank that data_prep.encoding carries.
PADDED_LENGTHS = (110, 200)
# "poisson": one value per task, trained with `loss` (the seed's Poisson by default on
# DREAM data); "bins": softmax over expression bins trained with soft-label KL,
# predicting their expectation (LegNet's, for DREAM's one task of counts).
OUTPUT_HEADS = ("poisson", "bins")
# The one-value head's loss: "auto" is Poisson on DREAM-format data whose targets are
# all >= 0, and mean squared error otherwise (signed log ratios, a user's table).
LOSSES = ("auto", "poisson", "mse")
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
    """Architecture knobs of the mini-Enformer; defaults are the seed's 192/5/4/4."""

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
class LegNetConfig(_Config):
    """Architecture knobs of LegNet (model.legnet); defaults are Prix Fixe's DREAM configuration.

    `block_channels` is each core block's output width; a block's input width is the
    previous block's output (the stem's for the first). A list (from YAML or JSON) is
    stored as a tuple. The input's length and channels and the number of output bins
    are the ingredients' (`InputConfig`), shared with every family.
    """

    stem_channels: int = 256
    stem_kernel: int = 7
    block_channels: tuple[int, ...] = (128, 128, 64, 64, 64, 64)
    expansion: int = 4
    kernel_width: int = 7
    filters_per_group: int = 2
    se_reduction: int = 4

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field in ("stem_channels", "stem_kernel", "expansion", "kernel_width", "filters_per_group", "se_reduction"):
            _check_int(name, field, getattr(self, field))
        if isinstance(self.block_channels, list):
            object.__setattr__(self, "block_channels", tuple(self.block_channels))
        channels = self.block_channels
        if not (isinstance(channels, tuple) and channels and all(is_int(c) and c >= 1 for c in channels)):
            raise ValueError(
                f"{name}.block_channels must be a non-empty list of integers >= 1; got {channels!r}."
            )
        ungroupable = [c for c in channels if (self.expansion * c) % self.filters_per_group]
        if ungroupable:
            raise ValueError(
                f"{name}: expansion * each of block_channels must be divisible by filters_per_group "
                f"(the grouped convolution's groups); got expansion={self.expansion}, "
                f"filters_per_group={self.filters_per_group}, block_channels {ungroupable} do not divide."
            )
        narrowest = min((self.stem_channels, *channels[:-1]))
        if narrowest < self.se_reduction:
            raise ValueError(
                f"{name}: squeeze-and-excitation narrows each block's input width by se_reduction, so "
                f"stem_channels and every block_channels entry but the last must be >= se_reduction; "
                f"got se_reduction={self.se_reduction} and a width of {narrowest}."
            )


# Each family's architecture config, by the name `model_family` takes.
FAMILY_CONFIGS = {"mini_enformer": ModelConfig, "legnet": LegNetConfig}


def family_of(architecture) -> str:
    """The family an architecture config belongs to."""
    return next(name for name, cls in FAMILY_CONFIGS.items() if type(architecture) is cls)


@dataclasses.dataclass(frozen=True)
class InputConfig(_Config):
    """The ingredients every family can take; defaults are the seed's (85 bp crop, one strand, Poisson).

    They change the saved model, so they are not training settings:
    - `input_window`: "crop" (85 bp, shifted by -1/0/+1 in training) or "plasmid"
      (the whole stored sequence, 5'-padded with the plasmid to `padded_length`).
    - `rc_augment`: train on a random strand, predict the mean of both (model.strand).
    - `strand_channel`: an input channel marking the reverse-complement strand; implies
      reverse-complement training and averaging.
    - `singleton_channel`: an input channel set to 1 for training examples whose
      measured value is a whole number (DREAM's single-bin measurements), 0 otherwise
      and always 0 at prediction.
    - `output_head`: "poisson" (one value per task) or "bins" (`num_bins` bins, model.bins).
    - `loss`: the one-value head's loss, "poisson", "mse" or "auto" (`resolved_loss`).

    The data decides the rest (`DataFacts`): the crop is the layout's window, and the
    plasmid window, singleton channel and bins head apply to DREAM-format data only.
    """

    input_window: str = "crop"
    padded_length: int = 150
    rc_augment: bool = False
    strand_channel: bool = False
    singleton_channel: bool = False
    output_head: str = "poisson"
    num_bins: int = 18
    loss: str = "auto"

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_choice(name, "input_window", self.input_window, INPUT_WINDOWS)
        _check_int(name, "padded_length", self.padded_length)
        low, high = PADDED_LENGTHS
        if not low <= self.padded_length <= high:
            raise ValueError(
                f"{name}.padded_length must be in [{low}, {high}] (the whole stored sequence, at most the "
                f"plasmid flank carried); got {self.padded_length}."
            )
        for field in ("rc_augment", "strand_channel", "singleton_channel"):
            _check_bool(name, field, getattr(self, field))
        _check_choice(name, "output_head", self.output_head, OUTPUT_HEADS)
        _check_int(name, "num_bins", self.num_bins, minimum=2)
        _check_choice(name, "loss", self.loss, LOSSES)

    def length(self, facts=None) -> int:
        """Bases the model reads per sequence: the data's window (the seed's 85 bp crop on DREAM data) or the padded length."""
        if self.input_window == "plasmid":
            return self.padded_length
        return CROP_LENGTH if facts is None else facts.layout.window_length

    @property
    def channels(self) -> int:
        """Input channels of the family's network: one-hot, then strand, then singleton."""
        return 4 + int(self.strand_channel) + int(self.singleton_channel)

    @property
    def both_strands(self) -> bool:
        return self.rc_augment or self.strand_channel


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


def resolved_loss(inputs: InputConfig, facts=None) -> str:
    """The loss a trial trains with on this data (`facts`: data_prep's DataFacts; None is DREAM data).

    "auto" is Poisson on DREAM-format data with every target >= 0, else MSE; the bins
    head has its own. Poisson with a negative target is refused, naming the task.
    """
    if inputs.output_head == "bins":
        return "bins"
    if facts is None:
        return "poisson" if inputs.loss == "auto" else inputs.loss
    counts = facts.format == "dream" and min(facts.target_minima) >= 0
    loss = ("poisson" if counts else "mse") if inputs.loss == "auto" else inputs.loss
    if loss == "poisson" and min(facts.target_minima) < 0:
        task, smallest = min(zip(facts.tasks, facts.target_minima), key=lambda pair: pair[1])
        raise ValueError(
            f"loss 'poisson' needs targets >= 0, but task {task!r} goes down to {smallest:g}; "
            "use loss=mse (or auto, which picks it for signed targets)"
        )
    return loss


# The transformer needs at least this many positions left after the conv tower's halvings.
MIN_TRANSFORMER_POSITIONS = 2


def shortest_window(architecture) -> int:
    """The shortest window a mini-Enformer can read: each tower block halves the length
    (rounding up), and the transformer needs MIN_TRANSFORMER_POSITIONS positions. LegNet has no pooling."""
    if not isinstance(architecture, ModelConfig):
        return 1
    return (MIN_TRANSFORMER_POSITIONS - 1) * 2**architecture.tower_blocks + 1


def unbuildable(trial: "TrialConfig", facts) -> str | None:
    """Why `trial` cannot be built and trained on this data (data_prep's DataFacts), or None when it can."""
    inputs, dream = trial.inputs, facts.format == "dream"
    if not dream:
        for field, value in (("input_window", "plasmid"), ("singleton_channel", True), ("output_head", "bins")):
            if getattr(inputs, field) == value:
                return (
                    f"{field}={value!r} applies to DREAM-format data only (the DREAM plasmid, whole-number "
                    "measurements, expression bins); this data is a table"
                )
    if len(facts.tasks) > 1 and inputs.output_head == "bins":
        return f"output_head='bins' predicts one task; this data has {len(facts.tasks)}"
    try:
        resolved_loss(inputs, facts)
    except ValueError as error:
        return str(error)
    length, shortest = inputs.length(facts), shortest_window(trial.architecture)
    if length < shortest:
        return (
            f"a mini-Enformer with tower_blocks={trial.architecture.tower_blocks} reads at least {shortest} bases; "
            f"this data's window is {length} (fewer tower_blocks, or prepare with a wider --window)"
        )
    return None


# LegNet's published recipe (legnet.md): its ingredients and training, beside its
# architecture defaults. The study's LegNet reference trial is exactly this.
LEGNET_RECIPE = {
    "model_family": "legnet",
    "input_window": "plasmid",
    "padded_length": 150,
    "rc_augment": True,
    "strand_channel": True,
    "singleton_channel": True,
    "output_head": "bins",
    "num_bins": 18,
    "optimizer": "adamw",
    "weight_decay": 0.01,
    "lr_schedule": "one_cycle",
    "learning_rate": 0.005,
    "warmup_fraction": 0.3,
    "batch_size": 1024,
}


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """One trial's whole configuration: a family's architecture, the ingredients, the training."""

    architecture: ModelConfig | LegNetConfig
    inputs: InputConfig
    train: TrainConfig

    @property
    def family(self) -> str:
        return family_of(self.architecture)

    def to_flat(self) -> dict[str, Any]:
        """Every resolved field, defaults included, under `model_family`: a run's params."""
        return {
            "model_family": self.family,
            **self.architecture.to_dict(),
            **self.inputs.to_dict(),
            **self.train.to_dict(),
        }


def flat_fields() -> list[str]:
    """Every name a flat trial config, a space, `--set` and `--config` may use, sorted."""
    return sorted({"model_family", *family_fields(), *InputConfig.fields(), *TrainConfig.fields()})


def family_fields() -> dict[str, str]:
    """Each architecture field's family. No two families share a field name, so a flat
    config (and a search space over families) never leaves one ambiguous."""
    return {field: family for family, cls in FAMILY_CONFIGS.items() for field in cls.fields()}


def split_config(flat: dict[str, Any]) -> TrialConfig:
    """Split one flat mapping (a trial's config, a set of overrides) into a `TrialConfig`.

    `model_family` (default the mini-Enformer) picks the architecture config. Fields of
    another family's architecture are not this trial's and are left out (a study's
    `--set channels=96` is for its mini-Enformer trials); keys no config has raise.
    """
    family = flat.get("model_family", FAMILIES[0])
    _check_choice("TrialConfig", "model_family", family, FAMILIES)
    architecture_cls = FAMILY_CONFIGS[family]
    own = set(architecture_cls.fields())
    others = set(family_fields()) - own
    input_fields, train_fields = set(InputConfig.fields()), set(TrainConfig.fields())
    unknown = set(flat) - own - others - input_fields - train_fields - {"model_family"}
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}; allowed: model_family, {family} fields "
            f"{sorted(own)}, input fields {sorted(input_fields)} and train fields {sorted(train_fields)}"
        )
    return TrialConfig(
        architecture=architecture_cls.from_dict({k: v for k, v in flat.items() if k in own}),
        inputs=InputConfig.from_dict({k: v for k, v in flat.items() if k in input_fields}),
        train=TrainConfig.from_dict({k: v for k, v in flat.items() if k in train_fields}),
    )
