"""The search space: which config fields a study varies, and over what ranges.

A space maps field names of `ModelConfig`/`TrainConfig` to a distribution, so a
trial's config is just a config. Users replace the default with a YAML or TOML file
of the same shape; every range is checked before anything starts.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

# The seed's baseline, 192/5/4/4 with lr 0.01: always trial 0 of a search.
BASELINE_POINT = {
    "channels": 192,
    "stem_width": 5,
    "tower_width": 4,
    "transformer_layers": 4,
    "learning_rate": 0.01,
}

DEFAULT_SPACE = {
    "channels": {"type": "int", "low": 96, "high": 384, "step": 48},
    "stem_width": {"type": "int", "low": 3, "high": 15},
    "tower_width": {"type": "int", "low": 2, "high": 8},
    "transformer_layers": {"type": "int", "low": 1, "high": 8},
    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
}

KINDS = {"int": ("low", "high", "step", "log"), "float": ("low", "high", "log"), "categorical": ("choices",)}


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

    def to_spec(self) -> dict:
        """The file form of this parameter, as a user would write it."""
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        spec = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        return spec | ({"step": self.step} if self.step else {})

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
    """Validate a raw space mapping against the config fields and their constraints."""
    from model import ModelConfig, TrainConfig, split_config

    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{source}: expected a non-empty mapping of parameter name to distribution")
    allowed = set(ModelConfig.fields()) | set(TrainConfig.fields())
    space = {}
    for name, spec in raw.items():
        if name not in allowed:
            raise SpaceError(f"{source}: '{name}' is not a config field; searchable fields: {sorted(allowed)}")
        if name in {"epochs", "seed"}:
            raise SpaceError(f"{source}: '{name}' is set by the study (--max-epochs, --seed), not searched")
        space[name] = _parameter(name, spec, source)
    for parameter in space.values():
        for value in parameter.values_to_check():
            point = dict(BASELINE_POINT, **{parameter.name: value})
            try:
                split_config(point)
            except (ValueError, TypeError) as error:
                raise SpaceError(
                    f"{source}: parameter '{parameter.name}' allows {value!r}, which makes an invalid config: {error}"
                ) from error
    return space


def load_space(path: Path | None) -> dict[str, Parameter]:
    """The default space, or the one in a YAML (.yaml/.yml) or TOML (.toml) file."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "default search space")
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such space file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix in {".yaml", ".yml"}:
            raw = yaml.safe_load(text)
        else:
            raise SpaceError(f"{path}: a space file must end in .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise SpaceError(f"{path}: not valid {path.suffix[1:].upper()}: {error}") from error
    return parse_space(raw, str(path))


def baseline_point(space: dict[str, Parameter], fixed: dict) -> dict:
    """Trial 0: the seed's baseline on the searched fields, which the space must contain.

    Searched fields the seed did not name (batch size, dropout) take the study's fixed
    value or the config default, so trial 0 trains exactly as the baseline command does.
    """
    from model import ModelConfig, TrainConfig

    defaults = {**ModelConfig().to_dict(), **TrainConfig().to_dict(), **fixed, **BASELINE_POINT}
    point = {name: defaults[name] for name in space}
    for name, value in point.items():
        parameter = space[name]
        inside = (
            value in parameter.choices
            if parameter.type == "categorical"
            else parameter.low <= value <= parameter.high
            and (not parameter.step or (value - parameter.low) % parameter.step == 0)
        )
        if not inside:
            raise SpaceError(
                f"the search space for '{name}' must contain the baseline value {value!r} "
                "so that trial 0 is the seed's configuration"
            )
    return point
