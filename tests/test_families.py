"""Model families and the winners' ingredients: the registry, the padded window, channels, strands, heads, the
references and the space over families."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from data_prep.batches import WindowBatches
from data_prep.encoding import PLASMID_UPSTREAM, decode, encode_sequences, model_input, one_hot, padded_window
from model import (
    LEGNET_RECIPE,
    InputConfig,
    LegNetConfig,
    ModelConfig,
    TrainConfig,
    build_model,
    build_training_model,
    compile_for_training,
    core_model,
    save_model,
    split_config,
)
from model.config import resolved_loss
from model.strand import reverse_complement_codes

REPO = Path(__file__).resolve().parents[1]
SMALL_ENFORMER = ModelConfig(channels=48, transformer_layers=1)
SMALL_LEGNET = LegNetConfig(stem_channels=16, block_channels=(8, 8), expansion=2, kernel_width=3)
FLANK = "TGCATTTTTTTCACATC"
# Each ingredient off the seed's default, one at a time, and LegNet's whole set.
INGREDIENTS = {
    "plasmid window": InputConfig(input_window="plasmid", padded_length=120),
    "strand channel": InputConfig(strand_channel=True),
    "singleton channel": InputConfig(singleton_channel=True),
    "bins head": InputConfig(output_head="bins", num_bins=18),
    "rc averaging": InputConfig(rc_augment=True),
    "all of LegNet's": InputConfig(
        input_window="plasmid", padded_length=120, strand_channel=True, singleton_channel=True, output_head="bins"
    ),
}


def random_sequences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(60, 94, size=n)
    return [FLANK + "".join(rng.choice(list("ACGT"), size=k)) for k in lengths]


def prix_fixe_padding(sequence: str, length: int) -> str:
    """Prix Fixe's preprocess_data on one string: the plasmid up to the insert, the sequence after its flank, the
    last `length` characters."""
    return (PLASMID_UPSTREAM + sequence[len(FLANK):])[-length:]


# ---- the padded window ------------------------------------------------------------


def test_padded_window_is_prix_fixes_string_padding():
    sequences = random_sequences(40) + [FLANK + "A" * 93, FLANK + "C" * 120]  # full width, and cut at 110
    codes = encode_sequences(sequences)
    for length in (110, 150, 200):
        windows = padded_window(codes, np.arange(len(sequences)), length)
        assert windows.shape == (len(sequences), length)
        stored = [s[:110] for s in sequences]
        assert [decode(w) for w in windows] == [prix_fixe_padding(s, length) for s in stored]
    np.testing.assert_array_equal(model_input(codes, [3, 1], 150), padded_window(codes, [3, 1], 150))
    with pytest.raises(ValueError, match="a padded window is 110 to 200 bases; got 201"):
        padded_window(codes, [0], 201)


def test_batches_carry_the_padded_window_and_singleton_flags_and_never_shift_it():
    codes = encode_sequences(random_sequences(30))
    targets = np.array([float(i) if i % 3 else i + 0.25 for i in range(30)], dtype=np.float32)
    batches = WindowBatches(codes, targets, np.arange(30), 10, seed=1, augment=True, length=150, singleton=True)
    assert not batches.augment
    for index in range(len(batches)):
        (windows, flags), y = batches[index]
        rows = batches.order[index * 10 : (index + 1) * 10]
        np.testing.assert_array_equal(windows, padded_window(codes, rows, 150))
        np.testing.assert_array_equal(flags[:, 0], (targets[rows] == np.floor(targets[rows])).astype(np.float32))
        assert flags.shape == (10, 1) and 0 < flags.sum() < 10
        np.testing.assert_array_equal(y, targets[rows])


# ---- the registry and the baseline ----------------------------------------------------


def test_the_baseline_is_the_seeds_model_unchanged():
    trial = split_config({})
    assert trial.family == "mini_enformer" and trial.inputs == InputConfig() and trial.train == TrainConfig()
    training = build_training_model(trial.architecture, trial.inputs)
    core = core_model(training)
    # No wrapper, no extra channel, no expectation layer: the saved model is the seed's network itself.
    assert core is training.get_layer("mini_enformer")
    assert core.input_shape == (None, 85, 4) and core.output_shape == (None, 1)
    assert int(sum(np.prod(v.shape) for v in training.trainable_variables)) == 1_995_617
    codes = np.random.default_rng(0).integers(0, 5, size=(4, 85)).astype(np.uint8)
    np.testing.assert_allclose(training.predict(codes, verbose=0), core.predict(one_hot(codes), verbose=0), rtol=1e-6)


def test_the_published_legnet_counts_1725122_parameters_and_serves_one_hot():
    trial = split_config(LEGNET_RECIPE)
    training = build_training_model(trial.architecture, trial.inputs)
    assert [tuple(i.shape) for i in training.inputs] == [(None, 150), (None, 1)]
    assert training.output_shape == (None, 18)
    assert int(sum(np.prod(v.shape) for v in training.trainable_variables)) == 1_725_122
    served = core_model(training)
    assert served.input_shape == (None, 150, 4) and served.output_shape == (None, 1)
    assert served.get_layer("strand_averaged").layer is training.get_layer("strand_averaged").layer


@pytest.mark.parametrize("architecture", [SMALL_ENFORMER, SMALL_LEGNET], ids=["mini_enformer", "legnet"])
def test_strand_averaging_is_symmetric(architecture):
    """Without a strand channel the served model cannot tell the strands apart: a sequence and its reverse
    complement get one prediction. With the channel the network is told which strand it reads (a construct has
    an orientation in the plasmid), and what is served is the mean of its two views of the measured sequence,
    which swapping the views leaves unchanged."""
    keras.utils.set_random_seed(0)
    codes = np.random.default_rng(2).integers(0, 4, size=(6, 85)).astype(np.uint8)
    x, x_reverse = one_hot(codes), one_hot(reverse_complement_codes(codes))
    averaged = build_model(architecture, InputConfig(rc_augment=True, output_head="bins"))
    np.testing.assert_allclose(averaged.predict(x, verbose=0), averaged.predict(x_reverse, verbose=0), rtol=1e-5)

    served = build_model(architecture, InputConfig(strand_channel=True, output_head="bins"))
    network = served.get_layer("strand_averaged").layer
    with_channel = lambda seq, strand: np.concatenate([seq, np.full((*seq.shape[:2], 1), strand, np.float32)], -1)  # noqa: E731
    bins = np.arange(18, dtype=np.float32)
    forward_view = network.predict(with_channel(x, 0.0), verbose=0) @ bins
    reverse_view = network.predict(with_channel(x_reverse, 1.0), verbose=0) @ bins
    assert not np.allclose(forward_view, reverse_view)  # the network alone sees which strand it reads
    np.testing.assert_allclose(served.predict(x, verbose=0)[:, 0], (forward_view + reverse_view) / 2, rtol=1e-5)


def train_batch(inputs: InputConfig, n: int = 32):
    rng = np.random.default_rng(3)
    codes = encode_sequences(random_sequences(n, seed=3))
    targets = rng.integers(0, 17, size=n).astype(np.float32) + rng.choice([0.0, 0.5], size=n).astype(np.float32)
    batch = WindowBatches(codes, targets, np.arange(n), n, seed=0, length=inputs.length(), singleton=inputs.singleton_channel)
    return batch[0]


@pytest.mark.parametrize("ingredient", list(INGREDIENTS))
@pytest.mark.parametrize("architecture", [SMALL_ENFORMER, SMALL_LEGNET], ids=["mini_enformer", "legnet"])
def test_each_ingredient_builds_trains_a_step_and_lowers_the_loss(architecture, ingredient, tmp_path):
    inputs = INGREDIENTS[ingredient]
    keras.utils.set_random_seed(0)
    training = build_training_model(architecture, inputs)
    compile_for_training(training, TrainConfig(optimizer="adam", learning_rate=3e-3, jit_compile=False), None, resolved_loss(inputs))
    x, y = train_batch(inputs)
    # train_on_batch returns the loss before its update (in training mode, as batch norm trains).
    losses = [float(training.train_on_batch(x, y)) for _ in range(8)]
    assert losses[-1] < losses[0], losses
    served = core_model(training)
    assert served.input_shape == (None, inputs.length(), 4) and served.output_shape == (None, 1)
    windows = x[0] if isinstance(x, tuple) else x
    predicted = served.predict(one_hot(windows), verbose=0)
    assert np.all(np.isfinite(predicted))
    loaded = keras.saving.load_model(save_model(served, tmp_path / "served.keras"))
    np.testing.assert_allclose(loaded.predict(one_hot(windows), verbose=0), predicted, rtol=1e-5)


@pytest.mark.slow
def test_each_ingredient_trains_under_jax():
    pytest.importorskip("jax")
    script = textwrap.dedent(
        """
        import keras, numpy as np
        from model import InputConfig, LegNetConfig, ModelConfig, TrainConfig, build_training_model, compile_for_training
        from model.config import resolved_loss
        from tests.test_families import INGREDIENTS, SMALL_ENFORMER, SMALL_LEGNET, train_batch
        assert keras.backend.backend() == "jax"
        for architecture in (SMALL_ENFORMER, SMALL_LEGNET):
            for name, inputs in INGREDIENTS.items():
                keras.utils.set_random_seed(0)
                training = build_training_model(architecture, inputs)
                compile_for_training(training, TrainConfig(optimizer="adam", learning_rate=3e-3), None, resolved_loss(inputs))
                x, y = train_batch(inputs)
                losses = [float(training.train_on_batch(x, y)) for _ in range(8)]
                assert losses[-1] < losses[0], (type(architecture).__name__, name, losses)
        print("ok")
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "ok"


# ---- references and the space over families ---------------------------------------------


def test_references_are_recognised_from_the_study_fixed_fields():
    from search.baseline import baseline_config, legnet_reference, reference_of

    fixed = {"epochs": 3, "seed": 2, "channels": 96, "learning_rate": 0.05, "kernel_width": 5}
    reference = legnet_reference(fixed)
    assert reference_of(reference, fixed) == "legnet"
    assert reference_of(baseline_config(fixed), fixed) == "baseline"
    # The recipe wins over the study's --set; the study's epochs and seed still hold.
    resolved = split_config(reference).to_flat()
    assert resolved["learning_rate"] == 0.005 and resolved["epochs"] == 3 and resolved["seed"] == 2
    assert resolved["kernel_width"] == 7  # the published architecture, whatever the study --set
    # Ray merges the study's fixed fields under the reference's own: the reference still wins.
    assert reference_of({**fixed, **reference}, fixed) == "legnet"
    assert reference_of({**reference, "kernel_width": 9}, fixed) is None
    assert reference_of({**reference, "jit_compile": True}, fixed) == "legnet"  # execution settings aside


def test_a_space_over_families_only_proposes_valid_points_of_one_family():
    import optuna

    from model.config import family_fields
    from search.space import FamilySpace, baseline_point, load_space

    space = load_space("families")
    owners = family_fields()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True))
    study.enqueue_trial(baseline_point(space, {}))
    draw = FamilySpace(space)
    families = []
    for number in range(40):
        trial = study.ask()
        draw(trial)
        family = trial.params["model_family"]
        families.append(family)
        assert {owners[k] for k in trial.params if k in owners} <= {family}, trial.params
        resolved = split_config(trial.params)
        assert resolved.family == family
        study.tell(trial, 0.5 if family == "legnet" else 0.1 * (number % 3))
    assert families[0] == "mini_enformer" and {"mini_enformer", "legnet"} <= set(families)
    assert split_config(study.trials[0].params).to_flat() == split_config({}).to_flat()


def test_a_family_field_no_trial_uses_is_refused_before_ray(tmp_path):
    from search.settings import StudyConfig, StudyError, check_family_fields
    from search.space import load_space

    config = StudyConfig(name="s", data_dir=tmp_path, space=load_space("default"), num_trials=2, fixed={"kernel_width": 5})
    with pytest.raises(StudyError, match=r"--set/--config kernel_width: a field of the legnet family, and no trial"):
        check_family_fields(config, {})
    families = StudyConfig(name="s", data_dir=tmp_path, space=load_space("families"), num_trials=2, fixed={"kernel_width": 5})
    check_family_fields(families, {})


def test_with_references_hands_the_reference_out_after_the_baseline_and_keeps_it_from_optuna():
    from ray.tune.search import Searcher

    from search.scheduler import WithReferences

    class Recording(Searcher):
        def __init__(self):
            super().__init__(metric="m", mode="max")
            self.told, self.count = [], 0

        def suggest(self, trial_id):
            self.count += 1
            return {"point": self.count}

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.told.append(trial_id)

    inner = Recording()
    searcher = WithReferences(inner, [{"model_family": "legnet"}])
    assert [searcher.suggest(f"t{i}") for i in range(4)] == [
        {"point": 1}, {"model_family": "legnet"}, {"point": 2}, {"point": 3}
    ]
    for trial_id in ("t0", "t1", "t2"):
        searcher.on_trial_complete(trial_id, {"m": 1.0})
    assert inner.told == ["t0", "t2"]
    restored = WithReferences(Recording(), [{"model_family": "legnet"}])
    restored.set_state(searcher.get_state())
    assert restored.suggest("t9") == {"point": 1} and restored.reference_ids == {"t1"}


def test_the_legnet_reference_is_one_of_optunas_points_where_the_space_holds_it(tmp_path):
    from search.baseline import reference_of
    from search.scheduler import WithReferences
    from search.settings import StudyConfig
    from search.space import load_space
    from search.study import tune_config

    def searcher(space: str, **fixed):
        fixed = {"epochs": 3, **fixed}
        config = StudyConfig(name="s", data_dir=tmp_path, space=load_space(space), num_trials=4, fixed=fixed)
        return tune_config(config).search_alg, fixed

    families, fixed = searcher("families")
    assert not isinstance(families, WithReferences)  # TPE learns from the reference as from the baseline
    assert [reference_of({**fixed, **point}, fixed) for point in families._points_to_evaluate] == ["baseline", "legnet"]
    # `extended` cannot pick LegNet, and a --set the recipe overrides moves it off the space.
    for outside, fixed in (searcher("extended"), searcher("families", padded_length=120)):
        assert isinstance(outside, WithReferences) and reference_of(outside.pending[0], fixed) == "legnet"
        assert [reference_of({**fixed, **p}, fixed) for p in outside.searcher._points_to_evaluate] == ["baseline"]


# ---- a registered LegNet in a fresh process ---------------------------------------------


@pytest.mark.slow
def test_a_registered_legnet_predicts_from_a_fresh_process(tmp_path):
    import json

    import mlflow

    from model.inference import predict_codes
    from search.serving import log_sequence_model

    trial = split_config({**LEGNET_RECIPE, "stem_channels": 16, "block_channels": [8, 8], "expansion": 2})
    keras.utils.set_random_seed(1)
    served = build_model(trial.architecture, trial.inputs)
    path = save_model(served, tmp_path / "legnet.keras")
    sequences = random_sequences(5, seed=9)
    expected = predict_codes(served, encode_sequences(sequences))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("families")
    with mlflow.start_run() as run:
        pass
    logged = log_sequence_model(run.info.run_id, [path])
    mlflow.register_model(logged.model_uri, "legnet-test")
    script = textwrap.dedent(
        f"""
        import json, mlflow, pandas as pd
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model("models:/legnet-test/1")
        print(json.dumps([float(v) for v in model.predict(pd.DataFrame({{"sequence": {sequences!r}}}))]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]), expected, rtol=1e-5)


# ---- a study with the LegNet reference and a space over families ------------------------


@pytest.mark.slow
def test_a_search_over_families_runs_the_legnet_reference_beside_the_baseline(tmp_path, make_synthetic_data):
    from mlflow.tracking import MlflowClient

    from search.report import trial_table
    from search.settings import StudyConfig
    from search.space import parse_space
    from search.study import run_study
    from search.tracking import STUDY_KEY_TAG, study_key

    data = make_synthetic_data(700, seed=5, eval_size=200)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = parse_space(
        {
            "model_family": {"type": "categorical", "choices": ["mini_enformer", "legnet"]},
            "learning_rate": {"type": "float", "low": 0.001, "high": 0.02, "log": True},
            "stem_channels": {"type": "categorical", "choices": [16, 32]},
        }
    )
    result = run_study(
        StudyConfig(
            name="families", data_dir=data, experiment="tests", tracking_uri=tracking_uri,
            storage_path=str(tmp_path / "ray_results"), gpus_per_trial=0, space=space, num_trials=3,
            max_concurrent=2, scheduler="asha", grace_period=1, reduction_factor=2, ensemble_size=0,
            fixed={"epochs": 2, "batch_size": 64, "seed": 0, "jit_compile": False, "channels": 48,
                   "transformer_layers": 1, "block_channels": [8, 8]},
            register_as=None,
        ),
        progress=lambda m: None,
    )
    assert len(result.trials) == 4  # three of the search, the baseline first, and the reference
    [legnet] = [t for t in result.trials if t.legnet_reference]
    assert legnet.epochs_trained == 2 and not legnet.baseline  # never stopped early
    assert legnet.config["model_family"] == "legnet" and legnet.config["learning_rate"] == 0.005
    others = [t for t in result.trials if not t.legnet_reference and t.interval is not None]
    assert others and all(t.vs_legnet is not None for t in others)
    assert any(line.rstrip().endswith("[LegNet reference]") or "[LegNet reference]" in line for line in trial_table(result))
    assert "vs LegNet [95% CI]" in trial_table(result)[0]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.{STUDY_KEY_TAG} = '{study_key('families')}'")
    reference_runs = [r for r in runs if r.data.tags.get("run_kind") == "reference"]
    assert [r.info.run_name for r in reference_runs] == ["legnet-reference"]
    params = reference_runs[0].data.params
    assert params["model_family"] == "legnet" and params["strand_channel"] == "True" and "channels" not in params
    assert int(params["trainable_parameters"]) == 1_725_122  # the published architecture, whatever --set says
    # Every searched trial is one family's point: no field of the other family in its params.
    for trial in result.trials:
        family = trial.config.get("model_family", "mini_enformer")
        assert ("stem_channels" in trial.searched) == (family == "legnet")
