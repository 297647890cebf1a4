"""A study's settings: every default, every check of what the user gave, and what a resume may change.

`StudyConfig` holds the settings and checks each one alone; `validate_study` checks
them together with the files, the space, the storage location, the MLflow store and an
existing study, all before Ray starts or a model is fitted. The command line takes its
defaults from here, so `--help` and a study built in Python agree.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from model.config import is_int
from search.space import Parameter

BACKENDS = ("tensorflow", "jax")
SCHEDULERS = ("asha", "none")
DEFAULT_NUM_TRIALS = 20
DEFAULT_STORAGE = "ray_results"
# A search of this many trials or more retrains its best and baseline configs with this
# many extra seeds (`--confirm-seeds`), so its test figures show training noise too.
CONFIRM_SEEDS = 2
CONFIRM_FROM_TRIALS = 16
# The embedded synthetic data set, and the `--quick` runs (about 5 minutes each on 2 CPU cores).
EMBEDDED = {"n": 200_000, "eval_size": 10_000, "epochs": 10, "batch_size": 10_000}
QUICK = {"n": 24_000, "eval_size": 4_000, "epochs": 4, "batch_size": 256}
QUICK_SEARCH = {"n": 12_000, "eval_size": 2_000, "epochs": 3, "batch_size": 256, "num_trials": 4, "max_concurrent": 2}
# Written beside Ray Tune's own state: what a resume is compared with.
SETTINGS_FILE = "dream_hpo_study.json"


class StudyError(ValueError):
    """A study that cannot start as given; the message names the flag or file, the value and what is allowed."""


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study needs besides the trial configs themselves.

    `fixed` holds the config fields every trial shares (the study's epochs, seed,
    batch size, and `--set` fields of a search): the baseline is the seed with them.
    `overrides` change the one trial of a baseline-command study away from the
    baseline (`--set`, `--config`): such a run is a variant, and says where it came from.
    """

    name: str
    data_dir: Path
    experiment: str = "dream-hpo"
    tracking_uri: str | None = None
    address: str | None = None
    storage_path: str | None = None
    shared_storage: bool = False
    space: dict[str, Parameter] | None = None
    num_trials: int = 1
    max_concurrent: int | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float = 1.0
    scheduler: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 3
    seed: int = 0
    resume: bool = False
    fixed: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    derived_from: str | None = None
    max_failures: int = 2
    register_as: str | None = "dream-hpo-best"
    ensemble_size: int = 25  # greedy ensemble selection's picks (search.ensemble)
    confirm_seeds: int | None = None  # None: CONFIRM_SEEDS for searches of CONFIRM_FROM_TRIALS trials or more, else 0
    legnet_reference: bool = True
    backend: str = "tensorflow"
    verbose: bool = False

    def __post_init__(self):
        def require(ok: bool, flag: str, value, allowed: str):
            if not ok:
                raise StudyError(f"{flag} {value!r}: {allowed}")

        require(self.backend in BACKENDS, "--backend", self.backend, f"must be one of {list(BACKENDS)}")
        require(
            self.backend != "jax" or importlib.util.find_spec("jax") is not None,
            "--backend",
            self.backend,
            "needs JAX: pip install 'dream-hpo[jax]' (with jax[cuda12] for GPUs)",
        )
        require(is_int(self.num_trials) and self.num_trials >= 1, "--num-trials", self.num_trials, "must be >= 1")
        require(
            self.max_concurrent is None or (is_int(self.max_concurrent) and self.max_concurrent >= 1),
            "--max-concurrent",
            self.max_concurrent,
            "must be >= 1 (leave it out to run as many as resources allow)",
        )
        require(
            self.gpus_per_trial is None or (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0),
            "--gpus-per-trial",
            self.gpus_per_trial,
            "must be >= 0 (fractions pack trials on one GPU)",
        )
        require(
            math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0,
            "--cpus-per-trial",
            self.cpus_per_trial,
            "must be > 0",
        )
        require(self.scheduler in SCHEDULERS, "--scheduler", self.scheduler, f"must be one of {list(SCHEDULERS)}")
        require(is_int(self.grace_period) and self.grace_period >= 1, "--grace-period", self.grace_period, "must be >= 1")
        require(
            is_int(self.reduction_factor) and self.reduction_factor >= 2,
            "--reduction-factor",
            self.reduction_factor,
            "must be >= 2 (ASHA keeps 1/F of the trials at each rung)",
        )
        require(
            is_int(self.ensemble_size) and self.ensemble_size >= 0,
            "--ensemble-size",
            self.ensemble_size,
            "must be >= 0 (0 or 1: no ensemble)",
        )
        require(
            self.confirm_seeds is None or is_int(self.confirm_seeds) and self.confirm_seeds >= 0,
            "--confirm-seeds",
            self.confirm_seeds,
            "must be >= 0 (0: no extra seeds)",
        )
        epochs = self.fixed.get("epochs", 1)
        require(is_int(epochs) and epochs >= 1, self.epochs_flag, epochs, "must be >= 1")
        require(bool(self.name) and self.name not in {".", ".."}, "--name", self.name, "must be a non-empty name")
        require(
            "/" not in self.name and "\\" not in self.name and "\0" not in self.name and self.name.isprintable(),
            "--name",
            self.name,
            "names a directory of the study's results: any printable characters but / and \\",
        )
        if self.space is None and self.num_trials != 1:
            raise StudyError("a study without a search space runs exactly one trial (the baseline)")
        if self.space and self.overrides:
            raise StudyError("a search sets its shared fields with `fixed`; `overrides` belong to one-trial studies")

    @property
    def searched(self) -> bool:
        return bool(self.space)

    @property
    def max_epochs(self) -> int:
        from search.baseline import baseline_config

        return baseline_config(self.fixed)["epochs"]

    @property
    def references(self) -> list[dict]:
        """The reference trials a search runs besides its own (the baseline is its first): the published LegNet."""
        from search.baseline import legnet_reference

        return [legnet_reference(self.fixed)] if self.searched and self.legnet_reference else []

    @property
    def total_trials(self) -> int:
        """Trials Ray runs: the search's (the baseline included) and the extra references."""
        return self.num_trials + len(self.references)

    @property
    def seeds_to_confirm(self) -> int:
        """Extra seeds the best and the baseline configs are retrained with once the search has chosen."""
        if not self.searched:
            return 0
        if self.confirm_seeds is not None:
            return self.confirm_seeds
        return CONFIRM_SEEDS if self.num_trials >= CONFIRM_FROM_TRIALS else 0

    @property
    def epochs_flag(self) -> str:
        return "--max-epochs" if self.space else "--epochs"

    @property
    def uses_asha(self) -> bool:
        return self.searched and self.scheduler == "asha"


def default(name: str):
    """A `StudyConfig` field's default, for the command line's flags and help."""
    [found] = [f for f in fields(StudyConfig) if f.name == name]
    return found.default


def storage_path(config: StudyConfig) -> str:
    return config.storage_path or str(Path(DEFAULT_STORAGE).resolve())


def experiment_path(config: StudyConfig) -> str:
    # A string join keeps the '//' of s3:// and gs:// storage URIs, which Path would collapse.
    return f"{storage_path(config).rstrip('/')}/{config.name}"


def single_trial_config(config: StudyConfig) -> dict:
    """The one trial of a study without a space: the baseline, changed by any overrides."""
    from search.baseline import baseline_config

    return {**baseline_config(config.fixed), **config.overrides}


def validate_study(config: StudyConfig) -> dict:
    """Every check that needs no running Ray, in one pass before anything starts; returns the data's manifest.

    The data directory, the fixed fields and overrides, every point of the space with
    them, the baseline inside the space, the storage location, the MLflow store, and an
    existing study (refused without --resume, compared with the flags on --resume).
    """
    from data_prep import check_prepared
    from data_prep.prepare import DataFacts
    from model import split_config
    from model.config import unbuildable
    from search.baseline import baseline_config
    from search.cluster import check_storage_location
    from search.space import baseline_point, check_space
    from search.tracking_store import check_tracking_store

    manifest = check_prepared(config.data_dir)
    for key, value in {**config.fixed, **config.overrides}.items():
        try:
            split_config({**baseline_config({}), key: value})
        except (ValueError, TypeError) as error:
            raise StudyError(f"--set/--config {key}={value!r}: {error}") from None
    searched = sorted(set(config.fixed) & set(config.space or {}))
    if searched:
        raise StudyError(
            f"--set {searched[0]}: '{searched[0]}' is searched by this study's space; a fixed value would be "
            "ignored. Narrow the space (--space FILE) instead, or drop the --set"
        )
    trial = single_trial_config(config)
    try:
        problem = unbuildable(split_config(trial), DataFacts.of(manifest))
    except (ValueError, TypeError) as error:
        raise StudyError(f"--set/--config: the trial's config is invalid: {error}") from None
    if problem:
        what = "the baseline trial" if config.space else "the trial"
        raise StudyError(f"--data {config.data_dir}: {what} cannot train on this data: {problem}")
    check_family_fields(config, trial)
    for reference in config.references:
        try:
            split_config(reference)
        except (ValueError, TypeError) as error:
            raise StudyError(f"--set: the LegNet reference trial's config is invalid: {error}") from None
    if config.space:
        check_space(config.space, config.fixed)
        baseline_point(config.space, config.fixed)
    check_storage_location(storage_path(config))
    check_tracking_store(config.tracking_uri)
    check_existing_study(config)
    return manifest


def check_family_fields(config: StudyConfig, trial: dict) -> None:
    """A --set field of a family's architecture must reach a trial of that family, or it would be ignored.

    The LegNet reference keeps the published architecture, so only the baseline's
    family and the families the space searches count.
    """
    from model.config import family_fields

    families = {trial.get("model_family", "mini_enformer")}
    if config.space and "model_family" in config.space:
        families |= set(config.space["model_family"].choices)
    owners = family_fields()
    for key in sorted({**config.fixed, **config.overrides}.keys() | (config.space or {}).keys()):
        if key in owners and owners[key] not in families:
            flag = "--space" if key in (config.space or {}) else "--set/--config"
            raise StudyError(
                f"{flag} {key}: a field of the {owners[key]} family, and no trial of this study is one "
                f"(families trained: {sorted(families)}). Add --set model_family={owners[key]}, or search "
                "model_family (--space families)"
            )


def check_existing_study(config: StudyConfig) -> None:
    """A new study must not reuse a name; a resumed one must exist and keep the settings it started with."""
    from ray import tune

    exists = tune.Tuner.can_restore(experiment_path(config))
    if config.resume and not exists:
        raise StudyError(f"--resume --name {config.name}: nothing to resume at {experiment_path(config)}")
    if exists and not config.resume:
        raise StudyError(
            f"--name {config.name}: a study of that name already exists at {experiment_path(config)}; "
            "pass --resume to continue it or another --name to start a new one"
        )
    if config.resume:
        saved = read_settings(config)
        changed = settings_changed(saved, recorded_settings(config)) if saved is not None else []
        if changed:
            shown = "; ".join(f"{flag} was {old}, now {new}" for flag, old, new in changed)
            raise StudyError(
                f"--resume --name {config.name}: these flags differ from the study's: {shown}. "
                "Resume with the study's values, or start a new study with another --name"
            )


def recorded_settings(config: StudyConfig) -> dict:
    """What a resume must keep, by the flag that sets it: what trials compute, how they are chosen, where they log.

    Resources (--gpus-per-trial, --cpus-per-trial), --address, --register-as,
    --ensemble-size and --confirm-seeds may change on resume: they take effect from the
    resumed driver on.
    """
    from search.tracking_store import resolve_tracking_uri

    settings = {
        "--data": str(Path(config.data_dir).resolve()),
        "--experiment": config.experiment,
        "--tracking-uri": resolve_tracking_uri(config.tracking_uri),
        "--backend": config.backend,
    }
    if config.space:
        settings.update({
            "--space": {name: parameter.to_spec() for name, parameter in sorted(config.space.items())},
            "--num-trials": config.num_trials,
            "--max-concurrent": config.max_concurrent,
            "--scheduler": config.scheduler,
            "--no-legnet-reference": not config.legnet_reference,
        })
    if config.uses_asha:
        settings.update({"--grace-period": config.grace_period, "--reduction-factor": config.reduction_factor})
    named = {"epochs": config.epochs_flag, "seed": "--seed", "batch_size": "--batch-size"}
    for key, value in sorted(config.fixed.items()):
        settings[named.get(key, f"--set {key}")] = value
    for key, value in sorted(config.overrides.items()):
        settings[f"--set/--config {key}"] = value
    return json.loads(json.dumps(settings))


def settings_changed(saved: dict, now: dict) -> list[tuple[str, str, str]]:
    """(flag, saved value, new value) for each setting that differs; 'unset' where one side lacks it."""

    def shown(settings: dict, flag: str) -> str:
        if flag not in settings:
            return "unset"
        value = settings[flag]
        return "a different space" if flag == "--space" else json.dumps(value)

    return [
        (flag, shown(saved, flag), shown(now, flag))
        for flag in sorted(set(saved) | set(now))
        if saved.get(flag, ...) != now.get(flag, ...)
    ]


def _settings_file(config: StudyConfig):
    """(pyarrow file system, path) of the settings file; local paths and s3:// or gs:// URIs alike."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(f"{experiment_path(config)}/{SETTINGS_FILE}")


def read_settings(config: StudyConfig) -> dict | None:
    """The settings the study started with, or None for a study started without a settings file."""
    import pyarrow.fs

    filesystem, path = _settings_file(config)
    if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_settings(config: StudyConfig) -> None:
    """Record a new study's settings beside Ray Tune's state, for a later --resume to compare."""
    filesystem, path = _settings_file(config)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(json.dumps(recorded_settings(config), indent=2, sort_keys=True).encode())
