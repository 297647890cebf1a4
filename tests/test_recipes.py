"""Training recipes: optimizers, schedules, the batch cap, reverse-complement, bootstrap intervals."""

import keras
import numpy as np
import pytest

from model import (
    InputConfig,
    ModelConfig,
    StrandAveraged,
    TrainConfig,
    build_training_model,
    compile_for_training,
    core_model,
    export_serving,
    learning_rate_schedule,
    load_model,
    paired_pearson_difference,
    pearson,
    pearson_interval,
    poisson,
    resolve_batch_size,
    reverse_complement_codes,
    save_model,
    set_precision,
)
from model.strand import reverse_complement
from model.training import ONE_CYCLE_END, ONE_CYCLE_START

SMALL = ModelConfig(channels=48, transformer_layers=1)


def random_codes(n, length=85, seed=0):
    return np.random.default_rng(seed).integers(0, 5, size=(n, length), dtype=np.uint8)


def one_hot(codes):
    return np.eye(5, dtype="float32")[codes][..., :4]


def rate(schedule, step) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


# ---- configs ----------------------------------------------------------------


def test_the_default_recipe_takes_the_seeds_sgd_steps():
    """Poisson loss, SGD with plain momentum 0.9 at a constant 0.01, no decay, no clipping: two steps by hand.

    The gradients are large (norm above 1), so clipping would show; the second step
    shows momentum (Nesterov would look ahead) and a rate that stays constant.
    """
    x = np.array([[1.0, 2.0, -1.0], [0.5, -3.0, 2.0], [-2.0, 1.0, 4.0], [3.0, 0.0, -2.0]], dtype="float32")
    y = np.array([4.0, 0.0, 9.0, 2.0], dtype="float32")
    linear = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="softplus")])
    weights = [np.array([[0.2], [-0.1], [0.3]], dtype="float32"), np.array([0.1], dtype="float32")]
    linear.set_weights(weights)
    compile_for_training(linear, TrainConfig())

    w, b = (v.astype("float64") for v in weights)
    velocity = [np.zeros_like(w), np.zeros_like(b)]
    for _ in range(2):
        z = x @ w + b
        p = np.log1p(np.exp(z))
        # d/dz of mean(p - y log(p + eps)), with dp/dz = sigmoid(z)
        dz = (1 - y[:, None] / (p + 1e-7)) / len(y) / (1 + np.exp(-z))
        gradients = [x.T @ dz, dz.sum(axis=0)]
        assert np.linalg.norm(np.concatenate([g.ravel() for g in gradients])) > 1
        velocity = [0.9 * v - 0.01 * g for v, g in zip(velocity, gradients)]
        w, b = w + velocity[0], b + velocity[1]
        linear.train_on_batch(x, y)
    np.testing.assert_allclose(linear.get_weights()[0], w, rtol=1e-5)
    np.testing.assert_allclose(linear.get_weights()[1], b, rtol=1e-5)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (TrainConfig, {"lr_schedule": "cosine"}, r"lr_schedule must be one of \['constant', 'one_cycle', 'warmup_cosine'\]; got 'cosine'"),
        (TrainConfig, {"warmup_fraction": 1.0}, r"TrainConfig\.warmup_fraction must be in \[0, 1\); got 1\.0"),
        (TrainConfig, {"weight_decay": -0.1}, r"weight_decay must be >= 0; got -0\.1"),
        (InputConfig, {"rc_augment": 1}, r"InputConfig\.rc_augment must be True or False; got 1"),
    ],
)
def test_invalid_recipes_say_what_to_change(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# ---- batch size -------------------------------------------------------------


def test_batch_is_capped_so_an_epoch_has_32_steps():
    assert resolve_batch_size(10_000, 5_733) == 179  # the DREAM demo: 5,733 // 32
    assert resolve_batch_size(128, 5_733) == 128
    assert resolve_batch_size(10_000, 6_729_000) == 10_000  # the full DREAM set is unaffected
    assert resolve_batch_size(10_000, 20) == 1
    assert resolve_batch_size(10_000, 640, min_steps=8) == 80
    with pytest.raises(ValueError, match="training split is empty"):
        resolve_batch_size(10_000, 0)


# ---- schedules --------------------------------------------------------------


def test_constant_schedule_is_the_plain_rate_and_needs_no_step_count():
    assert learning_rate_schedule(TrainConfig(), None) == 0.01


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    schedule = learning_rate_schedule(
        TrainConfig(lr_schedule="warmup_cosine", learning_rate=0.002, warmup_fraction=0.1, epochs=10), 10
    )
    assert rate(schedule, 0) == pytest.approx(0.0)
    assert rate(schedule, 5) == pytest.approx(0.001)
    assert rate(schedule, 10) == pytest.approx(0.002)
    assert rate(schedule, 55) == pytest.approx(0.001, rel=1e-4)  # halfway through the cosine
    assert rate(schedule, 100) == pytest.approx(0.0, abs=1e-9)


def test_one_cycle_starts_low_peaks_at_the_warmup_and_ends_near_zero():
    schedule = learning_rate_schedule(
        TrainConfig(lr_schedule="one_cycle", learning_rate=0.01, warmup_fraction=0.3, epochs=5), 20
    )
    assert rate(schedule, 0) == pytest.approx(0.01 * ONE_CYCLE_START)
    assert rate(schedule, 15) == pytest.approx((0.01 * ONE_CYCLE_START + 0.01) / 2, rel=1e-5)
    assert rate(schedule, 30) == pytest.approx(0.01)
    assert rate(schedule, 65) == pytest.approx((0.01 + 0.01 * ONE_CYCLE_END) / 2, rel=1e-5)
    assert rate(schedule, 100) == pytest.approx(0.01 * ONE_CYCLE_END, rel=1e-4)
    assert rate(schedule, 500) == pytest.approx(0.01 * ONE_CYCLE_END, rel=1e-4)


def test_schedules_need_the_number_of_steps():
    with pytest.raises(ValueError, match=r"lr_schedule 'one_cycle' needs steps_per_epoch, an integer >= 1; got None"):
        learning_rate_schedule(TrainConfig(lr_schedule="one_cycle"), None)


def test_one_cycle_round_trips_with_a_compiled_training_model(tmp_path):
    training = compile_for_training(
        build_training_model(SMALL), TrainConfig(lr_schedule="one_cycle", jit_compile=False, epochs=2), steps_per_epoch=3
    )
    training.train_on_batch(random_codes(4), np.ones(4, dtype="float32"))
    loaded = load_model(save_model(training, tmp_path / "training.keras"))
    schedule = loaded.optimizer.get_config()["learning_rate"]
    assert schedule["class_name"] == "OneCycle"
    assert schedule["config"] == {"peak": 0.01, "total_steps": 6, "warmup_steps": 1}
    # The step counter travels with the optimizer, so the curve continues where it was.
    assert float(loaded.optimizer.learning_rate) == pytest.approx(float(training.optimizer.learning_rate))
    assert float(training.optimizer.learning_rate) == pytest.approx(0.01)


def planted_motif_problem(n, seed):
    """Random codes with 0-3 copies of TGACTCA planted; the target grows with the copy count."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(n, 85), dtype=np.uint8)
    motif = np.array([3, 2, 0, 1, 3, 1, 0], dtype=np.uint8)
    copies = rng.integers(0, 4, size=n)
    for i, k in enumerate(copies):
        for start in rng.choice(np.arange(0, 85 - 7, 8), size=k, replace=False):
            codes[i, start : start + 7] = motif
    return codes, (copies + rng.normal(0, 0.1, size=n)).clip(0).astype("float32")


@pytest.mark.parametrize(
    "recipe",
    [
        {"optimizer": "sgd", "learning_rate": 0.01},
        {"optimizer": "sgd", "learning_rate": 0.01, "lr_schedule": "warmup_cosine"},
        {"optimizer": "adam", "learning_rate": 0.002, "lr_schedule": "one_cycle"},
        {"optimizer": "adamw", "learning_rate": 0.002, "weight_decay": 0.01, "lr_schedule": "one_cycle"},
        {"optimizer": "adamw", "learning_rate": 0.002, "weight_decay": 0.01, "lr_schedule": "warmup_cosine"},
    ],
    ids=lambda r: "-".join(str(v) for v in r.values()),
)
def test_each_optimizer_and_schedule_lowers_the_loss(recipe):
    keras.utils.set_random_seed(0)
    codes, targets = planted_motif_problem(256, seed=1)
    train = TrainConfig(jit_compile=False, epochs=4, **recipe)
    training = compile_for_training(build_training_model(SMALL), train, steps_per_epoch=8)
    before = poisson(targets, training.predict(codes, verbose=0))
    training.fit(codes, targets, batch_size=32, epochs=train.epochs, verbose=0, shuffle=False)
    assert int(training.optimizer.iterations.numpy()) == 32
    assert poisson(targets, training.predict(codes, verbose=0)) < before - 0.05


# ---- reverse complement -----------------------------------------------------


def test_reverse_complement_of_codes_and_one_hot():
    codes = np.array([[0, 0, 1, 4, 2, 3]], dtype=np.uint8)  # AACNGT
    np.testing.assert_array_equal(reverse_complement_codes(codes), [[0, 1, 4, 2, 3, 3]])  # ACNGTT
    many = random_codes(50)
    np.testing.assert_array_equal(reverse_complement_codes(reverse_complement_codes(many)), many)
    flipped = keras.ops.convert_to_numpy(reverse_complement(one_hot(many)))
    np.testing.assert_array_equal(flipped, one_hot(reverse_complement_codes(many)))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reverse_complement(flipped)), one_hot(many))


def test_strand_averaged_model_is_strand_symmetric_and_round_trips(tmp_path):
    import tensorflow as tf

    config = ModelConfig(channels=48, transformer_layers=1)
    keras.utils.set_random_seed(0)
    training = compile_for_training(build_training_model(config, InputConfig(rc_augment=True)), TrainConfig(jit_compile=False))
    training.train_on_batch(random_codes(8), np.linspace(0.5, 2.0, 8).astype("float32"))
    codes = random_codes(6, seed=3)
    forward = training.predict(codes, verbose=0)
    np.testing.assert_allclose(forward, training.predict(reverse_complement_codes(codes), verbose=0), rtol=1e-6)

    core = core_model(training)
    inner = core.get_layer("strand_averaged").layer
    single = inner.predict(one_hot(codes), verbose=0)
    reverse = inner.predict(one_hot(reverse_complement_codes(codes)), verbose=0)
    assert not np.allclose(single, reverse)  # the inner model alone is not symmetric
    np.testing.assert_allclose(forward, (single + reverse) / 2, rtol=1e-5)

    loaded = load_model(save_model(core, tmp_path / "core.keras"))
    np.testing.assert_array_equal(loaded.predict(one_hot(codes), verbose=0), core.predict(one_hot(codes), verbose=0))
    export_serving(core, tmp_path / "serving")
    reloaded = tf.saved_model.load(str(tmp_path / "serving"))  # kept: its functions need it alive
    served = reloaded.serve(tf.constant(one_hot(codes))).numpy()
    np.testing.assert_allclose(served, forward, rtol=1e-5, atol=1e-6)


def test_strand_averaged_model_keeps_float32_under_mixed_precision():
    try:
        set_precision(TrainConfig(mixed_precision=True))
        training = compile_for_training(build_training_model(ModelConfig(channels=48, transformer_layers=1), InputConfig(rc_augment=True)), TrainConfig(jit_compile=False))
        inner = core_model(training).get_layer("strand_averaged").layer
        assert inner.get_layer("transformer").compute_dtype == "bfloat16"
        training.train_on_batch(random_codes(4), np.ones(4, dtype="float32"))
        codes = random_codes(6, seed=3)
        both = training.predict(codes, verbose=0)
        single = inner.predict(one_hot(codes), verbose=0)
        reverse = inner.predict(one_hot(reverse_complement_codes(codes)), verbose=0)
        # Averaged in float32: a bfloat16 mean would be off by up to 2**-9 of the value.
        assert both.dtype == np.float32 and not np.allclose(single, reverse, rtol=1e-3)
        np.testing.assert_allclose(both, (single + reverse) / 2, rtol=1e-6)
        np.testing.assert_allclose(training.predict(reverse_complement_codes(codes), verbose=0), both, rtol=1e-6)
    finally:
        set_precision(TrainConfig(mixed_precision=False))


def test_training_draws_a_seeded_random_strand_per_example():
    inner = keras.Sequential([keras.Input((85, 4)), keras.layers.Flatten(), keras.layers.Dense(1)])
    codes = np.repeat(random_codes(1), 400, axis=0)
    forward = inner.predict(one_hot(codes[:1]), verbose=0)[0, 0]
    reverse = inner.predict(one_hot(reverse_complement_codes(codes[:1])), verbose=0)[0, 0]

    def strands(layer):
        out = keras.ops.convert_to_numpy(layer(one_hot(codes), training=True))[:, 0]
        is_reverse = np.isclose(out, reverse, rtol=1e-5)
        assert np.all(is_reverse | np.isclose(out, forward, rtol=1e-5))
        return is_reverse

    first, second = StrandAveraged(inner, seed=7), StrandAveraged(inner, seed=7)
    drawn = strands(first)
    assert 150 < drawn.sum() < 250
    np.testing.assert_array_equal(strands(second), drawn)  # same seed, same strands
    # A resumed trial restores the generator's state and draws what the original drew next.
    second.seed_generator.state.assign(first.seed_generator.state.numpy())
    np.testing.assert_array_equal(strands(second), strands(first))
    assert "seed_generator" in first.seed_generator.state.path
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(one_hot(codes[:2]), training=False))[:, 0], [(forward + reverse) / 2] * 2, rtol=1e-5
    )


# ---- bootstrap intervals ----------------------------------------------------


def correlated(n, rho, seed):
    """y and a predictor with population correlation rho."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    return y, rho * y + np.sqrt(1 - rho**2) * rng.normal(size=n)


def test_pearson_interval_covers_the_true_correlation_with_the_textbook_width():
    rho, n = 0.6, 5_000
    y, p = correlated(n, rho, seed=1)
    interval = pearson_interval(y, p)
    assert interval["estimate"] == pytest.approx(pearson(y, p))
    assert interval["low"] < rho < interval["high"]
    assert interval["low"] < interval["estimate"] < interval["high"]
    expected_width = 2 * 1.96 * (1 - rho**2) / np.sqrt(n)  # 0.0355
    assert interval["high"] - interval["low"] == pytest.approx(expected_width, rel=0.15)
    assert pearson_interval(y, p) == interval  # fixed seed: reproducible
    assert pearson_interval(y, p, seed=1) != interval


def test_paired_difference_is_exact_for_identical_predictors_and_covers_a_known_gap():
    rng = np.random.default_rng(2)
    n = 5_000
    y = rng.normal(size=n)
    shared, own_a, own_b = rng.normal(size=(3, n))
    # corr(y, a) = 0.6 and corr(y, b) = 0.5 in the population; their errors share a component.
    a = 0.6 * y + 0.8 * (0.8 * shared + 0.6 * own_a)
    b = 0.5 * y + np.sqrt(0.75) * (0.8 * shared + 0.6 * own_b)
    difference = paired_pearson_difference(y, a, b)
    assert difference["estimate"] == pytest.approx(pearson(y, a) - pearson(y, b))
    assert difference["low"] < 0.1 < difference["high"]
    assert difference["low"] > 0  # a is better, and the paired interval says so
    single = pearson_interval(y, a)
    assert difference["high"] - difference["low"] < single["high"] - single["low"]
    same = paired_pearson_difference(y, a, a)
    assert (same["estimate"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="same size; got 3 and 2"):
        pearson_interval([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="resamples must be an integer >= 2; got 1"):
        pearson_interval([1, 2, 3], [1, 3, 2], resamples=1)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\); got 95"):
        pearson_interval([1, 2, 3], [1, 3, 2], level=95)
