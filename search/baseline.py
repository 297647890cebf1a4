"""The baseline, defined once: the seed's configuration with the study's fixed fields.

A trial is the baseline exactly when its config equals it (execution settings aside);
the search starts from it, ASHA never stops it, and trial runs are named against it.
"""

from __future__ import annotations

from pathlib import Path

# How a trial runs, not what it computes: setting them keeps a run the baseline.
EXECUTION_FIELDS = ("jit_compile", "mixed_precision")


def seed_config() -> dict:
    """The seed's full configuration: every field of ModelConfig and TrainConfig at its default."""
    from model import ModelConfig, TrainConfig

    return {**ModelConfig().to_dict(), **TrainConfig().to_dict()}


def baseline_config(fixed: dict) -> dict:
    """The baseline: the seed's configuration with the study's fixed fields. The one definition.

    A trial is the baseline exactly when its resolved config equals this; the search
    starts from it (its searched fields are trial 1's point) and the baseline command
    trains it.
    """
    return {**seed_config(), **fixed}


def is_baseline(config: dict, fixed: dict) -> bool:
    """Whether a trial's config (defaults filled in) is the study's baseline; XLA and precision aside."""
    return not changed_fields(config, fixed)


def changed_fields(config: dict, fixed: dict) -> dict:
    """The fields where a trial's config differs from the study's baseline, execution settings aside."""
    baseline = baseline_config(fixed)
    return {
        key: value
        for key, value in {**seed_config(), **config}.items()
        if key not in EXECUTION_FIELDS and baseline.get(key) != value
    }



class TrialNaming:
    """A trial's run name and tags, from the study's one definition of the baseline."""

    def __init__(self, config):
        self.fixed = dict(config.fixed)
        self.search = bool(config.space)
        self.derived_from = config.derived_from

    def __call__(self, trial_config: dict, number: int) -> tuple[str, dict]:
        if is_baseline(trial_config, self.fixed):
            return "baseline", {"baseline": "true", "run_kind": "baseline", "trial_number": str(number)}
        tags = {"baseline": "false", "trial_number": str(number)}
        if self.search:
            return f"trial-{number}", {**tags, "run_kind": "search_trial"}
        if self.derived_from:
            return f"retrain-{Path(self.derived_from).stem}", {
                **tags,
                "run_kind": "retrain",
                "derived_from": self.derived_from,
            }
        shown = ",".join(f"{k}={v}" for k, v in sorted(changed_fields(trial_config, self.fixed).items()))
        return f"baseline+{shown}", {**tags, "run_kind": "variant", "derived_from": f"baseline --set {shown}"}


def trial_params(trial_config: dict) -> dict:
    """Every resolved field of the model and training config, defaults included: the same keys for every run."""
    from model import split_config

    model_config, train_config = split_config({**baseline_config({}), **trial_config})
    return {**model_config.to_dict(), **train_config.to_dict()}


