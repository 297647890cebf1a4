"""The search space: which config fields a study varies, and over what ranges.

A space maps config field names (model.config: a family's architecture, the input
ingredients, training) to a distribution, so a trial's config is just a config.
Users replace the default with a YAML or TOML file of the same shape; every range is
checked before anything starts.

A space that searches `model_family` is conditional: no two families share a field
name, so a family's own fields are drawn only for trials of that family, and the
ingredient and training fields for all (`FamilySpace`, Optuna's define-by-run).
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

from search.baseline import baseline_config, same_trial

# Config fields a study sets for all its trials, with the flag that sets them.
STUDY_FIELDS = {"epochs": "--max-epochs", "seed": "--seed"}

DEFAULT_SPACE = {
    "channels": {"type": "int", "low": 96, "high": 384, "step": 48},
    "stem_width": {"type": "int", "low": 3, "high": 15},
    "tower_width": {"type": "int", "low": 2, "high": 8},
    "transformer_layers": {"type": "int", "low": 1, "high": 8},
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
}
# `--space extended`: the seed's five dimensions plus the training recipe the challenge's
# winners used (AdamW, one-cycle or warm-up cosine schedules), regularisation, batch size
# and reverse-complement averaging. Every range holds the seed's value.
EXTENDED_SPACE = {
    **DEFAULT_SPACE,
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "lr_schedule": {"type": "categorical", "choices": ["constant", "one_cycle", "warmup_cosine"]},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "batch_size": {"type": "categorical", "choices": [128, 512, 2048, 10_000]},
    "transformer_dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "final_dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "rc_augment": {"type": "categorical", "choices": [False, True]},
}
# `--space families`: the family itself, each family's main architecture knobs around its
# published configuration, the winners' ingredients (input window, strand and singleton
# channels, bins head) for either family, and the extended training recipe. Every range
# holds the seed's value and the published LegNet's.
FAMILIES_SPACE = {
    "model_family": {"type": "categorical", "choices": ["mini_enformer", "legnet"]},
    **{name: EXTENDED_SPACE[name] for name in ("channels", "stem_width", "tower_width", "transformer_layers")},
    "stem_channels": {"type": "categorical", "choices": [128, 256]},
    "kernel_width": {"type": "int", "low": 5, "high": 9, "step": 2},
    "expansion": {"type": "int", "low": 2, "high": 4},
    "input_window": {"type": "categorical", "choices": ["crop", "plasmid"]},
    "rc_augment": {"type": "categorical", "choices": [False, True]},
    "strand_channel": {"type": "categorical", "choices": [False, True]},
    "singleton_channel": {"type": "categorical", "choices": [False, True]},
    "output_head": {"type": "categorical", "choices": ["poisson", "bins"]},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "lr_schedule": {"type": "categorical", "choices": ["constant", "one_cycle"]},
    "warmup_fraction": {"type": "float", "low": 0.1, "high": 0.5},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "batch_size": {"type": "categorical", "choices": [128, 1024, 10_000]},
}
BUILT_IN_SPACES = {"default": DEFAULT_SPACE, "extended": EXTENDED_SPACE, "families": FAMILIES_SPACE}

KINDS = {"int": ("low", "high", "step", "log"), "float": ("low", "high", "log"), "categorical": ("choices",)}


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML's safe loader, but `1e-3` is a float, as in YAML 1.2 (PyYAML 1.1 wants `1.0e-3`)."""


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str):
    """YAML as users write numbers: a space file, or a `--set` value."""
    return yaml.load(text, Loader=_Yaml12Floats)


class SpaceError(ValueError):
    """A space file or range that cannot be searched; the message says what to change."""


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    log: bool = False
    choices: tuple | None = None

    def values_to_check(self) -> list:
        """Representative values each of which must make a valid config."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = self.step or 1
            return list(range(int(self.low), int(self.high) + 1, step))
        return [self.low, self.high]

    def contains(self, value) -> bool:
        """Whether the parameter can draw `value`."""
        if self.type == "categorical":
            return value in self.choices
        return self.low <= value <= self.high and (not self.step or (value - self.low) % self.step == 0)

    def to_spec(self) -> dict:
        """The file form of this parameter, as a user would write it."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        spec = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return spec | ({"step": self.step} if self.step else {})

    def suggest(self, trial):
        """Draw this parameter from an Optuna trial (define-by-run)."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def to_optuna(self):
        import optuna

        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def to_ray(self):
        from ray import tune

        if self.type == "categorical":
            return tune.choice(list(self.choices))
        if self.type == "int":
            if self.step and self.step > 1:
                return tune.qrandint(int(self.low), int(self.high), self.step)
            if self.log:
                return tune.lograndint(int(self.low), int(self.high) + 1)
            return tune.randint(int(self.low), int(self.high) + 1)
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)


def _parameter(name: str, spec, source: str) -> Parameter:
    where = f"{source}: parameter '{name}'"
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{where} must be a table with a 'type' of {sorted(KINDS)}, got {spec!r}")
    kind = spec["type"]
    if kind not in KINDS:
        raise SpaceError(f"{where}: type {kind!r} is not one of {sorted(KINDS)}")
    unknown = set(spec) - {"type", *KINDS[kind]}
    if unknown:
        raise SpaceError(f"{where}: unknown keys {sorted(unknown)} for type {kind!r}; allowed: {list(KINDS[kind])}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: 'choices' must be a non-empty list, got {choices!r}")
        if not all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices):
            raise SpaceError(f"{where}: each choice must be a number, string, true/false or null, got {choices!r}")
        return Parameter(name, kind, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{where}: type {kind!r} needs 'low' and 'high'")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    number = int if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise SpaceError(f"{where}: '{key}' must be a finite {kind}, got {value!r}")
    if not low < high:
        raise SpaceError(f"{where}: needs low < high, got low={low} high={high}")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got low={low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise SpaceError(f"{where}: 'step' must be a positive integer, got {step!r}")
        if (high - low) % step:
            raise SpaceError(f"{where}: high - low ({high - low}) must be a multiple of step {step}")
        if log and step > 1:
            raise SpaceError(f"{where}: Optuna cannot combine log sampling with step > 1")
    return Parameter(name, kind, low=low, high=high, step=step, log=log)


def parse_space(raw: dict, source: str = "search space") -> dict[str, Parameter]:
    """Validate a raw space mapping: known config fields, well-formed ranges, valid values."""
    from model.config import flat_fields

    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: expected a non-empty mapping of parameter name to distribution")
    allowed = set(flat_fields())
    space = {}
    for name, spec in raw.items():
        if name not in allowed:
            raise SpaceError(f"{source}: '{name}' is not a config field; searchable fields: {sorted(allowed)}")
        if name in STUDY_FIELDS:
            raise SpaceError(f"{source}: '{name}' is set by the study ({STUDY_FIELDS[name]}), not searched")
        space[name] = _parameter(name, spec, source)
    check_space(space, {}, source)
    return space


def load_space(path: Path | str | None) -> dict[str, Parameter]:
    """The default space, a built-in one by name (`extended`, `families`), or the one in a YAML (.yaml/.yml) or TOML (.toml) file."""
    if path is None or str(path) in BUILT_IN_SPACES:
        name = str(path or "default")
        return parse_space(BUILT_IN_SPACES[name], f"{name} search space")
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"--space {path}: no such space file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            raw = read_yaml(text)
        else:
            raise SpaceError(f"--space {path}: a space file must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise SpaceError(f"--space {path}: not valid {path.suffix[1:].upper()}: {error}") from error
    return parse_space(raw, str(path))


def baseline_point(space: dict[str, Parameter], fixed: dict) -> dict:
    """Trial 1: the baseline's values of the searched fields, which the space must contain."""
    baseline = baseline_config(fixed)
    point = _fields_searched(space, baseline)
    for name, value in point.items():
        parameter = space[name]
        if not parameter.contains(value):
            allowed = (
                list(parameter.choices) if parameter.type == "categorical" else f"{parameter.low}..{parameter.high}"
            )
            raise SpaceError(
                f"the search space for '{name}' ({allowed}) must contain the baseline value {value!r}, "
                "so that trial 1 is the seed's configuration"
            )
    return point


def point_of(space: dict[str, Parameter], config: dict, fixed: dict) -> dict | None:
    """The point a searcher suggests to run exactly `config` (the study's fixed fields added), or None if none does.

    The published LegNet is a point of `--space families` but not of `extended`, which has
    no `model_family` to pick it with.
    """
    point = _fields_searched(space, config)
    inside = all(space[name].contains(value) for name, value in point.items())
    return point if inside and same_trial({**fixed, **point}, config) else None


def _fields_searched(space: dict[str, Parameter], config: dict) -> dict:
    """A full config's values of the space's parameters that its family draws."""
    return {name: config[name] for name in applicable(space, config.get("model_family", "mini_enformer"))}


# Above this many combinations the space is checked one parameter at a time.
MAX_COMBINATIONS_CHECKED = 20_000


def check_space(space: dict[str, Parameter], fixed: dict, source: str = "search space") -> None:
    """Every point the space can propose, with the study's fixed fields, must make a valid config.

    Interacting fields (channels and num_heads, say) are checked together: every
    combination of the representative values while there are at most
    MAX_COMBINATIONS_CHECKED, else each parameter against the baseline's others.
    """
    from model import split_config

    baseline = baseline_config(fixed)
    for point in _points_to_check(space):
        try:
            split_config({**baseline, **point})
        except (ValueError, TypeError) as error:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise SpaceError(f"{source}: the point {shown} makes an invalid config: {error}") from error


def _points_to_check(space: dict[str, Parameter]):
    """Representative points, per family when the family is searched (its fields and the shared ones)."""
    import itertools

    families = space["model_family"].choices if "model_family" in space else (None,)
    for family in families:
        names = applicable(space, family) if family else list(space)
        values = {name: space[name].values_to_check() for name in names}
        if family:
            values["model_family"] = [family]
        if math.prod(len(v) for v in values.values()) <= MAX_COMBINATIONS_CHECKED:
            yield from (dict(zip(values, combination)) for combination in itertools.product(*values.values()))
        else:
            fixed_family = {"model_family": family} if family else {}
            yield from ({**fixed_family, name: value} for name, options in values.items() for value in options)


def applicable(space: dict[str, Parameter], family: str) -> list[str]:
    """The space's parameters a trial of `family` draws: the family itself, its own fields, the shared ones."""
    from model.config import family_fields

    owners = family_fields()
    return [name for name in space if owners.get(name, family) == family]


class FamilySpace:
    """A space over families as an Optuna define-by-run function: the family first, then what applies to it.

    Picklable, as Ray keeps the searcher with the study's state for --resume.
    """

    def __init__(self, space: dict[str, Parameter]):
        self.space = space

    def __call__(self, trial) -> None:
        family = self.space["model_family"].suggest(trial)
        for name in applicable(self.space, family):
            if name != "model_family":
                self.space[name].suggest(trial)


def restrict_to_data(space: dict[str, Parameter], fixed: dict, facts) -> tuple[dict[str, Parameter], list[str]]:
    """The space without the values that cannot be built on this data (data_prep's DataFacts), and each dropped value.

    Each value is tried with the baseline's other fields (a value of a family's field
    with that family): the DREAM-only ingredients on a table, a mini-Enformer deeper
    than a short window allows. Combinations are left to the trainable's own check.
    """
    import dataclasses

    from model import split_config
    from model.config import unbuildable

    baseline = baseline_config(fixed)
    kept, dropped = {}, []
    for name, parameter in space.items():
        if parameter.type == "float":
            kept[name] = parameter
            continue
        values = parameter.values_to_check()
        family = _family_of_field(space, name)
        reasons = {}
        for value in values:
            point = {**baseline, **({"model_family": family} if family else {}), name: value}
            try:
                reasons[value] = unbuildable(split_config(point), facts)
            except (ValueError, TypeError):
                reasons[value] = None  # an invalid point: check_space names it

        good = [value for value in values if reasons[value] is None]
        if not good:
            raise SpaceError(f"search space: no value of '{name}' can be built on this data: {reasons[values[0]]}")
        dropped += [f"{name}={value!r}: {reasons[value]}" for value in values if reasons[value] is not None]
        if parameter.type == "categorical":
            kept[name] = dataclasses.replace(parameter, choices=tuple(good))
        else:
            kept[name] = dataclasses.replace(parameter, low=min(good), high=max(good))
    return kept, dropped


def _family_of_field(space: dict[str, Parameter], name: str) -> str | None:
    """The family a searched field belongs to, when the space searches families and the field is one family's."""
    from model.config import family_fields

    return family_fields().get(name) if "model_family" in space else None
