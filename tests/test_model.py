"""Tests for the model package: architecture, training pieces, metrics, saving."""

import os
import re
import subprocess
import sys
import textwrap
from importlib import import_module
from pathlib import Path

import keras
import numpy as np
import pytest

import model
from model import (
    BaseOneHot,
    ModelConfig,
    RelativeMultiHeadAttention,
    TrainConfig,
    build_model,
    build_training_model,
    compile_for_training,
    core_model,
    export_serving,
    load_model,
    make_optimizer,
    mse,
    pearson,
    poisson,
    poisson_loss,
    save_model,
    set_precision,
    spearman,
)
from model.layers import relative_position_basis, relative_position_index
from model.metrics import average_ranks
from model.saving import REGISTERING_MODULES
from model.mini_enformer import exponential_linspace_int, tower_filters

REPO = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(channels=48, transformer_layers=1)
FAST = TrainConfig(jit_compile=False, batch_size=32)


def trainable_count(layer) -> int:
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def random_codes(n, length=85, seed=0):
    return np.random.default_rng(seed).integers(0, 5, size=(n, length), dtype=np.uint8)


@pytest.fixture
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


# ---- architecture -----------------------------------------------------------


def design_doc_parameter_count(config: ModelConfig, tower: list[int]) -> int:
    """Trainable parameters by the formulas of the design doc (mini_enformer.md), part by part.

    Conv blocks are BatchNorm (scale, offset) on their input, then a biased conv;
    attention has bias-free q/k/v, a biased output, a relative projection from
    C/heads basis features to heads x key size, and two heads x key size biases.
    """
    c, q, heads, key = config.channels, config.channels // 4, config.num_heads, config.key_size

    def conv_block(width_in, filters, width):
        return 2 * width_in + width_in * width * filters + filters

    stem = 4 * config.stem_width * q + q + conv_block(q, q, 1)
    conv_tower, width_in = 0, q
    for filters in tower:
        conv_tower += conv_block(width_in, filters, config.tower_width) + conv_block(filters, filters, 1)
        width_in = filters
    attention = 2 * c + 2 * c * heads * key + c * c + (c * c + c) + (c // heads) * heads * key + 2 * heads * key
    mlp = 2 * c + (c * 2 * c + 2 * c) + (2 * c * c + c)
    length = 85  # the crop the seed reads
    for _ in range(len(tower) + 1):  # every tower block and the final pointwise halve it, rounding up
        length = -(-length // 2)
    head = length * c + 1
    return stem + conv_tower + config.transformer_layers * (attention + mlp) + conv_block(c, c, 1) + head


def test_baseline_parameter_counts_per_part():
    assert design_doc_parameter_count(ModelConfig(), [64, 64, 128, 192]) == 1_995_617
    core = build_model(ModelConfig())
    parts = {name: trainable_count(core.get_layer(name)) for name in ("stem", "conv_tower", "transformer", "final_pointwise", "head")}
    assert parts == {
        "stem": 3_456,
        "conv_tower": 223_584,
        "transformer": 1_730_560,
        "final_pointwise": 37_440,
        "head": 577,
    }
    assert trainable_count(core) == 1_995_617
    assert core.get_layer("conv_tower").output.shape == (None, 6, 192)
    assert core.get_layer("final_pointwise").output.shape == (None, 3, 192)


def test_attention_weight_shapes_match_the_design():
    layer = RelativeMultiHeadAttention(num_heads=8, key_size=64, attention_dropout=0.05, positional_dropout=0.01)
    layer.build((None, 6, 192))
    sizes = {w.path.split("/")[-1]: int(np.prod(w.shape)) for w in layer.trainable_weights}
    assert sizes == {
        "query": 98_304,
        "key": 98_304,
        "value": 36_864,
        "output_kernel": 36_864,
        "output_bias": 192,
        "relative_position": 12_288,
        "content_bias": 512,
        "position_bias": 512,
    }


def test_attention_output_starts_at_zero_so_residuals_start_as_identity():
    layer = RelativeMultiHeadAttention(num_heads=2, key_size=8, attention_dropout=0.0, positional_dropout=0.0)
    out = layer(np.random.default_rng(0).normal(size=(2, 5, 12)).astype("float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), np.zeros((2, 5, 12)))


def test_tower_filters_follow_the_seed_and_end_at_channels():
    assert exponential_linspace_int(48, 192, 4, 32) == [64, 64, 128, 192]
    assert tower_filters(192, 4) == [64, 64, 128, 192]
    # 144 rounds to 128 and 48/4 rounds to 0; the tower must still end at channels.
    assert tower_filters(144, 4) == [32, 64, 96, 144]
    assert tower_filters(48, 4) == [32, 32, 32, 48]
    assert tower_filters(96, 1) == [96]


def test_relative_position_index_points_at_key_minus_query():
    # Row i, column j picks basis row (j - i) + (T - 1), i.e. distance j - i.
    np.testing.assert_array_equal(relative_position_index(3), [[2, 3, 4], [1, 2, 3], [0, 1, 2]])


def reference_attention(layer, x):
    """Enformer's attention written out plainly in NumPy: heads split, relative shift by pad and reshape."""
    w = {v.path.split("/")[-1]: keras.ops.convert_to_numpy(v) for v in layer.weights}
    b, t, c = x.shape
    h, k_size, v_size = layer.num_heads, layer.key_size, c // layer.num_heads

    def heads(a, size):
        return a.reshape(b, t, h, size).transpose(0, 2, 1, 3)

    q = heads(x @ w["query"], k_size) * k_size**-0.5
    k, v = heads(x @ w["key"], k_size), heads(x @ w["value"], v_size)
    r_k = (relative_position_basis(t, v_size) @ w["relative_position"]).reshape(1, 2 * t - 1, h, k_size).transpose(0, 2, 1, 3)
    content = (q + w["content_bias"]) @ k.transpose(0, 1, 3, 2)
    by_distance = (q + w["position_bias"]) @ r_k.transpose(0, 1, 3, 2)  # (b, h, t, 2t - 1)
    # Transformer-XL's relative shift: column j of row i becomes distance j - i.
    shifted = np.pad(by_distance, [(0, 0), (0, 0), (0, 0), (1, 0)]).reshape(b, h, 2 * t, t)[:, :, 1:]
    relative = shifted.reshape(b, h, t, 2 * t - 1)[..., :t]
    logits = content + relative
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = (weights @ v).transpose(0, 2, 1, 3).reshape(b, t, h * v_size)
    return attended @ w["output_kernel"] + w["output_bias"]


@pytest.mark.parametrize("heads, key_size, length, channels", [(8, 64, 6, 192), (2, 8, 5, 12)])
def test_attention_matches_a_plain_reference(heads, key_size, length, channels):
    layer = RelativeMultiHeadAttention(num_heads=heads, key_size=key_size, attention_dropout=0.3, positional_dropout=0.3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, length, channels)).astype("float32")
    layer.build(x.shape)
    # Random weights everywhere, the zero-initialised output projection included, so every term shows.
    layer.set_weights([rng.normal(scale=0.3, size=w.shape).astype("float32") for w in layer.get_weights()])
    expected = reference_attention(layer, x.astype("float64"))
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)


def test_relative_position_basis_is_sign_symmetric():
    basis = relative_position_basis(85, 24)
    assert basis.shape == (169, 24)
    # One read-only array per (length, size), shared by every attention layer.
    assert relative_position_basis(85, 24) is basis and not basis.flags.writeable
    centre = 84
    np.testing.assert_allclose(basis[centre + 10, :12], basis[centre - 10, :12])
    np.testing.assert_allclose(basis[centre + 10, 12:], -basis[centre - 10, 12:])
    np.testing.assert_array_equal(basis[centre, 12:], 0.0)
    # Exponentials are 1 at distance 0; central masks are 1 where 2**k - 1 (1, 3, 7, 15) > distance 5.
    np.testing.assert_allclose(basis[centre, :4], 1.0)
    np.testing.assert_array_equal(basis[centre + 5, 4:8], [0, 0, 1, 1])


def test_base_one_hot_maps_n_to_zero_row():
    codes = np.array([[0, 1, 2, 3, 4]], dtype=np.uint8)
    out = keras.ops.convert_to_numpy(BaseOneHot()(codes))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], np.vstack([np.eye(4), np.zeros(4)]))


def test_training_model_shares_weights_with_its_core():
    training = build_training_model(SMALL)
    core = core_model(training)
    codes = random_codes(3)
    one_hot = np.eye(5, dtype="float32")[codes][..., :4]
    np.testing.assert_allclose(training.predict(codes, verbose=0), core.predict(one_hot, verbose=0), rtol=1e-6)
    assert trainable_count(training) == trainable_count(core)
    assert core.input_shape == (None, 85, 4)
    assert core.output_shape == (None, 1)


@pytest.mark.parametrize(
    "config, tower",
    [
        (ModelConfig(channels=96, stem_width=15, tower_width=8, transformer_layers=8), [32, 32, 64, 96]),
        (ModelConfig(channels=144, stem_width=3, tower_width=2, transformer_layers=1, pooling="average"), [32, 64, 96, 144]),
        (ModelConfig(channels=384, stem_width=7, tower_width=5, transformer_layers=2), [96, 160, 256, 384]),
    ],
    ids=["c96-s15-t8-d8", "c144-s3-t2-d1-avg", "c384-s7-t5-d2"],
)
def test_search_range_configs_have_the_design_size_and_train_every_weight(config, tower):
    training = compile_for_training(build_training_model(config), FAST)
    assert trainable_count(training) == design_doc_parameter_count(config, tower)
    codes = random_codes(4)
    targets = np.array([1.0, 2.0, 0.5, 3.0], dtype="float32")
    before = [w.numpy().copy() for w in training.trainable_weights]
    # Two steps: the attention output starts at zero, so q, k, v and the
    # pre-attention LayerNorm only receive gradient from the second step on.
    for _ in range(2):
        training.train_on_batch(codes, targets)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, training.trainable_weights))
    assert changed == len(before)


# ---- training ---------------------------------------------------------------


def test_poisson_loss_matches_the_metric_and_does_not_broadcast():
    y = np.array([0.0, 1.0, 4.0], dtype="float32")
    p = np.array([[0.5], [1.0], [2.0]], dtype="float32")
    expected = np.mean([0.5, 1.0 - np.log(1.0 + 1e-7), 2.0 - 4.0 * np.log(2.0 + 1e-7)])
    loss = float(keras.ops.convert_to_numpy(poisson_loss(y, p)))
    assert loss == pytest.approx(expected, rel=1e-6)
    assert poisson(y, p) == pytest.approx(expected, rel=1e-9)


def test_make_optimizer_follows_the_seed_by_default():
    sgd = make_optimizer(TrainConfig())
    assert isinstance(sgd, keras.optimizers.SGD)
    assert (float(sgd.learning_rate), sgd.momentum, sgd.nesterov) == (pytest.approx(0.01), 0.9, False)
    assert sgd.weight_decay is None and sgd.clipnorm is None and sgd.global_clipnorm is None
    adamw = make_optimizer(TrainConfig(optimizer="adamw", weight_decay=1e-4))
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 1e-4
    assert isinstance(make_optimizer(TrainConfig(optimizer="adam")), keras.optimizers.Adam)


def planted_motif_problem(n, seed):
    """Random codes with 0-3 copies of TGACTCA planted; target grows with the copy count."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(n, 85), dtype=np.uint8)
    motif = np.array([3, 2, 0, 1, 3, 1, 0], dtype=np.uint8)  # TGACTCA
    copies = rng.integers(0, 4, size=n)
    for i, k in enumerate(copies):
        for start in rng.choice(np.arange(0, 85 - 7, 8), size=k, replace=False):
            codes[i, start : start + 7] = motif
    targets = np.log1p(np.exp(copies - 1.0)) + rng.normal(0, 0.1, size=n)
    return codes, np.maximum(targets, 0.0).astype("float32")


@pytest.mark.slow
def test_planted_signal_is_learned():
    keras.utils.set_random_seed(0)
    codes, targets = planted_motif_problem(2_000, seed=1)
    test_codes, test_targets = planted_motif_problem(500, seed=2)
    training = compile_for_training(
        build_training_model(SMALL), TrainConfig(optimizer="adam", learning_rate=1e-3, jit_compile=True)
    )
    loss_before = poisson(test_targets, training.predict(test_codes, verbose=0))
    training.fit(codes, targets, batch_size=64, epochs=10, verbose=0)  # 320 steps
    predictions = training.predict(test_codes, verbose=0)
    assert poisson(test_targets, predictions) < loss_before - 0.1
    assert pearson(test_targets, predictions) > 0.6


# ---- saving -----------------------------------------------------------------


def test_keras_round_trip_and_serving_export_predict_identically(tmp_path):
    import tensorflow as tf

    training = compile_for_training(build_training_model(SMALL), FAST)
    training.train_on_batch(random_codes(8), np.linspace(0.5, 2.0, 8).astype("float32"))
    core = core_model(training)

    loaded = load_model(save_model(training, tmp_path / "training.keras"))
    codes = random_codes(5, seed=3)
    np.testing.assert_array_equal(loaded.predict(codes, verbose=0), training.predict(codes, verbose=0))
    assert loaded.loss is poisson_loss

    export_serving(core, tmp_path / "serving")
    reloaded = tf.saved_model.load(str(tmp_path / "serving"))
    new_inputs = np.eye(5, dtype="float32")[random_codes(7, seed=4)][..., :4]  # a batch size not used before
    served = reloaded.serve(tf.constant(new_inputs)).numpy()
    np.testing.assert_allclose(served, core.predict(new_inputs, verbose=0), rtol=1e-5, atol=1e-6)


def test_saving_rejects_the_wrong_artifacts(tmp_path):
    training = build_training_model(SMALL)
    with pytest.raises(ValueError, match=r"must end in '\.keras'"):
        save_model(training, tmp_path / "model.h5")
    with pytest.raises(ValueError, match=r"Pass model\.core_model\(training_model\)"):
        export_serving(training, tmp_path / "serving")


# ---- configs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 100}, r"channels must be divisible by num_heads; got channels=100, num_heads=8"),
        ({"channels": 64}, r"channels // num_heads must be divisible by 6 .* -> 8\. Use channels that are a multiple of 48"),
        ({"channels": 6, "num_heads": 1}, r"channels must be divisible by 4 .*got 6"),
        ({"stem_width": 0}, r"ModelConfig\.stem_width must be an integer >= 1; got 0"),
        ({"transformer_layers": 2.0}, r"transformer_layers must be an integer >= 1; got 2\.0"),
        ({"transformer_dropout": 1.0}, r"transformer_dropout must be in \[0, 1\); got 1\.0"),
        ({"pooling": "attention"}, r"pooling must be one of \['max', 'average'\]; got 'attention'"),
    ],
)
def test_invalid_model_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"optimizer": "rmsprop"}, r"optimizer must be one of \['sgd', 'adam', 'adamw'\]; got 'rmsprop'"),
        ({"learning_rate": 0}, r"learning_rate must be > 0; got 0"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\); got 1\.5"),
        ({"batch_size": 0}, r"batch_size must be an integer >= 1; got 0"),
        ({"mixed_precision": "yes"}, r"mixed_precision must be True, False or 'auto'; got 'yes'"),
        ({"jit_compile": 1}, r"jit_compile must be True, False or 'auto'; got 1"),
    ],
)
def test_invalid_train_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_configs_round_trip_and_reject_unknown_keys():
    config = ModelConfig(channels=96, transformer_layers=2)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({"optimizer": "adam"}) == TrainConfig(optimizer="adam")
    assert ModelConfig.fields()[:4] == ("channels", "stem_width", "tower_width", "transformer_layers")
    assert "learning_rate" in TrainConfig.fields() and "learning_rate" not in ModelConfig.fields()
    with pytest.raises(ValueError, match=r"ModelConfig got unknown keys \['learning_rate'\]; allowed keys are \['channels'"):
        ModelConfig.from_dict({"channels": 96, "learning_rate": 0.1})
    with pytest.raises(AttributeError):
        config.channels = 48


def test_split_config_sends_each_flat_key_to_its_config():
    trial = model.split_config({"channels": 96, "learning_rate": 0.1, "optimizer": "adam", "rc_augment": True})
    assert trial.architecture == ModelConfig(channels=96) and trial.family == "mini_enformer"
    assert trial.inputs == model.InputConfig(rc_augment=True)
    assert trial.train == TrainConfig(learning_rate=0.1, optimizer="adam")
    with pytest.raises(ValueError, match=r"unknown config keys \['chanels'\]; allowed: model_family, mini_enformer fields \[.*'channels'"):
        model.split_config({"chanels": 96})
    # Another family's field is that family's, not this trial's: a study's --set channels=96 leaves LegNet alone.
    legnet = model.split_config({"model_family": "legnet", "channels": 96, "kernel_width": 5})
    assert legnet.architecture == model.LegNetConfig(kernel_width=5)
    assert "channels" not in legnet.to_flat() and legnet.to_flat()["model_family"] == "legnet"
    with pytest.raises(ValueError, match=r"TrialConfig.model_family must be one of \['mini_enformer', 'legnet'\]; got 'cnn'"):
        model.split_config({"model_family": "cnn"})


# ---- precision and backends -------------------------------------------------


def test_mixed_bfloat16_keeps_the_output_float32(float32_policy_after):
    assert set_precision(TrainConfig(mixed_precision=True)) == "mixed_bfloat16"
    training = compile_for_training(build_training_model(SMALL), FAST)
    core = core_model(training)
    assert core.get_layer("transformer").compute_dtype == "bfloat16"
    assert core.output.dtype == "float32"
    # Convolutions compute in bfloat16; normalisations and activations stay float32.
    tower = {type(layer).__name__: layer.compute_dtype for layer in core.get_layer("conv_tower").layers}
    assert (tower["Conv1D"], tower["BatchNormalization"], tower["Activation"]) == ("bfloat16", "float32", "float32")
    training.train_on_batch(random_codes(4), np.ones(4, dtype="float32"))
    codes = random_codes(16, seed=1)
    mixed = training.predict(codes, verbose=0)

    assert set_precision(TrainConfig(mixed_precision=False)) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    reference = build_training_model(SMALL)
    reference.set_weights(training.get_weights())
    full = reference.predict(codes, verbose=0)
    # bfloat16 keeps 8 significant bits: within a few parts in a thousand of float32, never equal to it.
    np.testing.assert_allclose(mixed, full, rtol=2e-2)
    assert not np.array_equal(mixed, full)
    # The head computes in float32, so its predictions are not bfloat16 numbers.
    as_bfloat16 = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(mixed, "bfloat16"), "float32"))
    assert mixed.dtype == np.float32 and not np.array_equal(mixed, as_bfloat16)


@pytest.mark.slow
def test_a_model_trained_under_jax_predicts_the_same_under_tensorflow(tmp_path):
    """One step of JAX training, saved; this (TensorFlow) process loads it and predicts what JAX did."""
    pytest.importorskip("jax")
    script = textwrap.dedent(
        f"""
        import keras, numpy as np
        from model import ModelConfig, TrainConfig, build_training_model, compile_for_training, core_model, save_model
        assert keras.backend.backend() == "jax"
        training = compile_for_training(
            build_training_model(ModelConfig(channels=48, transformer_layers=1)), TrainConfig(jit_compile=True)
        )
        codes = np.random.default_rng(0).integers(0, 5, size=(4, 85), dtype=np.uint8)
        training.train_on_batch(codes, np.ones(4, dtype="float32"))
        save_model(core_model(training), "{tmp_path}/jax.keras")
        np.save("{tmp_path}/jax_predictions.npy", training.predict(codes, verbose=0))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert keras.backend.backend() == "tensorflow"
    loaded = load_model(tmp_path / "jax.keras")
    one_hot = np.eye(5, dtype="float32")[random_codes(4)][..., :4]
    np.testing.assert_allclose(
        loaded.predict(one_hot, verbose=0), np.load(tmp_path / "jax_predictions.npy"), rtol=1e-5, atol=1e-6
    )


# ---- metrics ----------------------------------------------------------------


def test_pearson_and_spearman_against_hand_computed_values():
    y = [1.0, 2.0, 3.0, 4.0]
    p = [1.0, 3.0, 2.0, 5.0]
    # Centered y = (-1.5, -0.5, 0.5, 1.5), p = (-1.75, 0.25, -0.75, 2.25): 5.5 / sqrt(5 * 8.75).
    assert pearson(y, p) == pytest.approx(5.5 / np.sqrt(5 * 8.75))
    # Ranks of p are 1, 3, 2, 4: 1 - 6 * 2 / (4 * 15) = 0.8.
    assert spearman(y, p) == pytest.approx(0.8)
    assert spearman(y, np.exp(p)) == pytest.approx(0.8)
    assert mse(y, p) == pytest.approx((0 + 1 + 1 + 1) / 4)


def test_spearman_averages_tied_ranks():
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
    # Ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))


def test_correlations_of_constant_predictions_are_nan():
    assert np.isnan(pearson([1, 2, 3], [2, 2, 2]))
    assert np.isnan(spearman([1, 2, 3], [2, 2, 2]))
    with pytest.raises(ValueError, match="same size; got 3 and 2"):
        pearson([1, 2, 3], [1, 2])


def test_every_exported_name_is_its_home_modules_object():
    for name in model.__all__:
        home = import_module(model._HOMES[name])
        assert getattr(model, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="module 'model' has no attribute 'fit'"):
        model.fit


def test_configs_metrics_and_the_predict_batch_size_load_without_keras():
    """A study's driver and the CLI's parser use these; none may start TensorFlow."""
    script = (
        "import sys\nimport model\nfrom model import ModelConfig, pearson\nfrom model.inference import DEFAULT_BATCH_SIZE\n"
        "print(sorted(name for name in ('keras', 'tensorflow', 'jax') if name in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr[-3000:]


def test_saving_imports_every_module_that_registers_keras_objects():
    """So a .keras file loads in a fresh process whatever it holds; the fresh-process loads are in test_predict."""
    registering = {
        f"model.{path.stem}"
        for path in (REPO / "model").glob("*.py")
        if re.search(r"^@keras\.saving\.register_keras_serializable", path.read_text(), flags=re.M)
    }
    assert registering == set(REGISTERING_MODULES)
