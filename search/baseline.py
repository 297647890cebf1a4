"""The study's reference trials, defined once: the seed's baseline and the published LegNet.

The baseline is the seed's configuration with the study's fixed fields; the LegNet
reference is the challenge winner with its own recipe (model.config.LEGNET_RECIPE)
and the study's fixed fields that its recipe leaves open (epochs, seed). A trial is a
reference exactly when its config equals one (execution settings aside); the search
starts from the baseline, ASHA never stops a reference, and trial runs are named
against them.
"""

from __future__ import annotations

from pathlib import Path

# How a trial runs, not what it computes: setting them keeps a run the baseline.
EXECUTION_FIELDS = ("jit_compile", "mixed_precision")


def seed_config() -> dict:
    """The seed's full configuration: the mini-Enformer, the seed's ingredients and recipe, every field at its default."""
    from model import split_config

    return split_config({}).to_flat()


def baseline_config(fixed: dict) -> dict:
    """The baseline: the seed's configuration with the study's fixed fields. The one definition.

    A trial is the baseline exactly when its resolved config equals this; the search
    starts from it (its searched fields are trial 1's point) and the baseline command
    trains it.
    """
    return {**seed_config(), **fixed}


def legnet_reference(fixed: dict) -> dict:
    """The published LegNet as the study runs it: every field as published but the study's epochs and seed.

    Every field is spelled out, so the study's other fixed fields (a `--set` for its
    searched trials, which Ray merges into every trial's config) never change it.
    """
    from model import LEGNET_RECIPE, split_config

    study_fields = ("epochs", "seed", *EXECUTION_FIELDS)
    published = {k: v for k, v in split_config(LEGNET_RECIPE).to_flat().items() if k not in study_fields}
    return {**published, **{k: v for k, v in fixed.items() if k in study_fields}}


# The reference trials by the name their runs carry, each from the study's fixed fields.
REFERENCES = {"baseline": baseline_config, "legnet": legnet_reference}


def reference_of(config: dict, fixed: dict) -> str | None:
    """Which reference trial a config is ("baseline", "legnet"), or None for a searched trial."""
    return next((name for name, reference in REFERENCES.items() if same_trial(config, reference(fixed))), None)


def same_trial(config: dict, other: dict) -> bool:
    """Whether two configs train the same trial (defaults filled in, execution settings aside)."""
    return not _differences(config, other)


def changed_fields(config: dict, fixed: dict) -> dict:
    """The fields where a trial's config differs from the study's baseline, execution settings aside."""
    return _differences(config, baseline_config(fixed))


def _differences(config: dict, reference: dict) -> dict:
    """Resolved fields (defaults filled in, other families' fields left out) where `config` differs from `reference`."""
    from model import split_config

    resolved, wanted = split_config(config).to_flat(), split_config(reference).to_flat()
    return {key: value for key, value in resolved.items() if key not in EXECUTION_FIELDS and wanted.get(key) != value}



class TrialNaming:
    """A trial's run name and tags, from the study's one definition of the baseline."""

    def __init__(self, config):
        self.fixed = dict(config.fixed)
        self.search = bool(config.space)
        self.derived_from = config.derived_from

    def __call__(self, trial_config: dict, number: int) -> tuple[str, dict]:
        reference = reference_of(trial_config, self.fixed)
        if reference == "baseline":
            return "baseline", {"baseline": "true", "run_kind": "baseline", "trial_number": str(number)}
        tags = {"baseline": "false", "trial_number": str(number)}
        if reference == "legnet":
            return "legnet-reference", {**tags, "run_kind": "reference", "reference": "legnet"}
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


class SeedNaming:
    """Run names and tags of the extra-seed trials: `best-seed-2`, `baseline-seed-1`, from `(role, config)` points."""

    def __init__(self, points: list[tuple[str, dict]]):
        self.points = points

    def role_of(self, trial_config: dict) -> str:
        """Whose config the trial retrains: `best` or `baseline`."""
        return next(role for role, config in self.points if same_trial(trial_config, config))

    def __call__(self, trial_config: dict, number: int) -> tuple[str, dict]:
        role = self.role_of(trial_config)
        return f"{role}-seed-{trial_config['seed']}", {"baseline": "false", "run_kind": "confirm_seed", "confirms": role}


def trial_params(trial_config: dict) -> dict:
    """Every resolved field of the trial's family, ingredients and training, defaults included."""
    from model import split_config

    return split_config(trial_config).to_flat()


