"""Tests for LegNet (model.legnet) and the bins head (model.bins): parameter count, expectation, soft targets and KL
loss, training, saving, JAX."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

from model.bins import ExpectedBin, bin_kl_divergence, expected_bin, soft_bin_kl_loss, soft_bin_targets
from model.config import LEGNET_RECIPE, InputConfig, LegNetConfig, split_config
from model.legnet import build_network
from model.saving import save_model

REPO = Path(__file__).resolve().parents[1]
# Every knob off its default, so a formula that holds for SMALL holds for the layout, not one set of numbers.
SMALL = LegNetConfig(
    stem_channels=16,
    stem_kernel=5,
    block_channels=(12, 8),
    expansion=2,
    kernel_width=3,
    filters_per_group=4,
    se_reduction=2,
)
# LegNet's input channels and head on the 85 bp crop, so the small networks stay quick.
INPUTS = InputConfig(strand_channel=True, singleton_channel=True, output_head="bins")
PUBLISHED_INPUTS = split_config(LEGNET_RECIPE).inputs


def build_legnet(config: LegNetConfig, inputs: InputConfig = INPUTS) -> keras.Model:
    return build_network(config, inputs)


def expression_model(network: keras.Model) -> keras.Model:
    inputs = keras.Input(network.input_shape[1:])
    return keras.Model(inputs, ExpectedBin(name="expected_bin")(network(inputs)))


def trainable_count(layer) -> int:
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def random_inputs(inputs: InputConfig, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, inputs.length(), inputs.channels), dtype=np.float32)


def prix_fixe_parameter_count(config: LegNetConfig, inputs: InputConfig) -> dict[str, int]:
    """Trainable parameters of Prix Fixe's PyTorch layout, part by part.

    Bias-free convolutions, batch norm scale and offset, squeeze-and-excitation with
    biased dense layers through the block's input width // se_reduction, a biased 1x1 head.
    """
    k = config.kernel_width
    stem = inputs.channels * config.stem_kernel * config.stem_channels + 2 * config.stem_channels
    core, p = 0, config.stem_channels
    for s in config.block_channels:
        e, squeezed = config.expansion * s, p // config.se_reduction
        expand = p * e + 2 * e
        grouped = e * config.filters_per_group * k + 2 * e
        se = (e * squeezed + squeezed) + (squeezed * e + e)
        project = e * p + 2 * p
        resize = 2 * p * k * s + 2 * s
        core += expand + grouped + se + project + resize
        p = s
    head = p * inputs.num_bins + inputs.num_bins
    return {"stem": stem, "core": core, "head": head}


# ---- architecture -----------------------------------------------------------


def test_default_config_has_prix_fixe_parameter_count():
    assert prix_fixe_parameter_count(LegNetConfig(), PUBLISHED_INPUTS) == {"stem": 11_264, "core": 1_712_688, "head": 1_170}
    legnet = build_legnet(LegNetConfig(), PUBLISHED_INPUTS)
    assert {part: trainable_count(legnet.get_layer(part)) for part in ("stem", "core", "head")} == {
        "stem": 11_264,
        "core": 1_712_688,
        "head": 1_170,
    }
    assert trainable_count(legnet) == 1_725_122
    assert legnet.input_shape == (None, 150, 6)
    assert legnet.output_shape == (None, 18)
    # No pooling along the sequence: the core keeps all 150 positions at the last block's width.
    assert legnet.get_layer("core").output.shape == (None, 150, 64)


def test_every_knob_changes_the_count_as_the_layout_says():
    assert trainable_count(build_legnet(SMALL)) == sum(prix_fixe_parameter_count(SMALL, INPUTS).values())
    from model.legnet import GroupedConv1D

    grouped = [layer for layer in build_legnet(SMALL).get_layer("core").layers if isinstance(layer, GroupedConv1D)]
    # expansion 2 x (12, 8) channels, filters_per_group 4 of each group, width 3.
    assert [tuple(layer.kernel.shape) for layer in grouped] == [(3, 24, 4), (3, 16, 4)]


def test_grouped_convolution_is_keras_grouped_conv1d_with_the_same_weights():
    from model.legnet import GroupedConv1D

    x = np.random.default_rng(0).random((4, 20, 8), dtype=np.float32)
    grouped = GroupedConv1D(3, 2)
    ours = numpy(grouped(x))
    kernel = numpy(grouped.kernel)  # (width, channels, filters_per_group): input channel 2j+i -> output 2j+o
    reference = keras.layers.Conv1D(8, 3, padding="same", groups=4, use_bias=False)
    reference.build((None, 20, 8))
    weights = np.zeros((3, 2, 8), np.float32)
    for group in range(4):
        for i in range(2):
            for o in range(2):
                weights[:, i, 2 * group + o] = kernel[:, 2 * group + i, o]
    reference.set_weights([weights])
    np.testing.assert_allclose(ours, numpy(reference(x)), atol=1e-5)
    assert kernel.size == int(np.prod(reference.kernel.shape))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stem_channels": 0}, r"LegNetConfig.stem_channels must be an integer >= 1; got 0"),
        ({"expansion": True}, r"LegNetConfig.expansion must be an integer >= 1; got True"),
        ({"block_channels": ()}, r"block_channels must be a non-empty list of integers >= 1; got \(\)"),
        ({"block_channels": (64, 0)}, r"block_channels must be a non-empty list of integers >= 1; got \(64, 0\)"),
        ({"block_channels": "64"}, r"block_channels must be a non-empty list .*; got '64'"),
        ({"expansion": 1, "filters_per_group": 2, "block_channels": (8, 7)}, r"block_channels \[7\] do not divide"),
        ({"se_reduction": 8, "block_channels": (4, 16)}, r"se_reduction=8 and a width of 4"),
    ],
)
def test_invalid_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LegNetConfig(**kwargs)


def test_config_round_trips_through_a_json_dict():
    as_json = json.loads(json.dumps(SMALL.to_dict()))
    assert as_json["block_channels"] == [12, 8]
    assert LegNetConfig.from_dict(as_json) == SMALL
    with pytest.raises(ValueError, match=r"unknown keys \['channels'\]"):
        LegNetConfig.from_dict({"channels": 64})


# ---- expectation head, soft targets, loss ----------------------------------


def test_expected_bin_is_the_mean_bin_index():
    probabilities = np.zeros((4, 18), dtype=np.float32)
    probabilities[0, 0] = 1.0
    probabilities[1, 17] = 1.0
    probabilities[2, [2, 4]] = 0.5
    probabilities[3] = 1 / 18
    expected = [[0.0], [17.0], [3.0], [8.5]]
    np.testing.assert_allclose(numpy(expected_bin(probabilities)), expected, rtol=1e-6)
    np.testing.assert_allclose(numpy(ExpectedBin()(probabilities)), expected, rtol=1e-6)


def test_expression_model_shares_the_weights_and_outputs_the_expectation():
    legnet = build_legnet(SMALL)
    served = expression_model(legnet)
    x = random_inputs(INPUTS, 3)
    probabilities = legnet.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-6)
    assert served.output_shape == (None, 1)
    np.testing.assert_allclose(served.predict(x, verbose=0), (probabilities * np.arange(18)).sum(-1, keepdims=True), rtol=1e-5)
    assert trainable_count(served) == trainable_count(legnet)


def test_soft_bin_targets_sum_to_one_and_peak_at_the_nearest_bin():
    values = np.array([0.0, 3.7, 8.0, 12.2, 17.0, -3.0, 25.0], dtype=np.float32)
    targets = numpy(soft_bin_targets(values, 18))
    assert targets.shape == (7, 18)
    np.testing.assert_allclose(targets.sum(axis=-1), 1.0, atol=1e-6)
    assert targets.argmax(axis=-1).tolist() == [0, 4, 8, 12, 17, 0, 17]

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    # Mean value + 0.5, sd 0.5: value 0 puts Phi(1) on bin 0, which takes the whole lower tail.
    np.testing.assert_allclose(targets[0, :2], [phi(1.0), phi(3.0) - phi(1.0)], rtol=1e-5)
    # Value 8 is centred on bin 8, [8, 9): Phi(1) - Phi(-1) there, and the neighbours share the rest.
    np.testing.assert_allclose(targets[2, 7:10], [phi(-1) - phi(-3), phi(1) - phi(-1), phi(-1) - phi(-3)], rtol=1e-5)
    # The last bin takes the upper tail: value 17 -> [17, inf).
    np.testing.assert_allclose(targets[4, -1], phi(1.0), rtol=1e-5)
    assert numpy(soft_bin_targets(np.zeros((2, 3)), num_bins=5)).shape == (2, 3, 5)


def test_invalid_ingredients_say_what_to_change():
    with pytest.raises(ValueError, match=r"InputConfig.num_bins must be an integer >= 2; got 1"):
        InputConfig(num_bins=1)
    with pytest.raises(ValueError, match=r"InputConfig.padded_length must be in \[110, 200\].*got 100"):
        InputConfig(input_window="plasmid", padded_length=100)
    with pytest.raises(ValueError, match=r"InputConfig.output_head must be one of \['poisson', 'bins'\]; got 'mse'"):
        InputConfig(output_head="mse")


def test_kl_loss_is_zero_on_the_soft_targets_and_positive_elsewhere():
    values = np.array([[1.0], [9.5], [16.0]], dtype=np.float32)
    targets = numpy(soft_bin_targets(values[:, 0], 18))
    np.testing.assert_allclose(numpy(soft_bin_kl_loss(values, targets)), 0.0, atol=1e-6)
    np.testing.assert_allclose(numpy(bin_kl_divergence(targets, targets)), 0.0, atol=1e-6)
    uniform = np.full((3, 18), 1 / 18, dtype=np.float32)
    loss = numpy(soft_bin_kl_loss(values, uniform))
    assert loss.shape == (3,) and (loss > 0.5).all()
    # By hand: 0.5 log(0.5 / 0.25) + 0.5 log(0.5 / 0.75) = 0.5 log(4 / 3).
    np.testing.assert_allclose(numpy(bin_kl_divergence([[0.5, 0.5]], [[0.25, 0.75]])), [0.5 * math.log(4 / 3)], rtol=1e-6)
    # A bin with no target mass adds nothing, even where the prediction is zero too.
    assert numpy(bin_kl_divergence([[1.0, 0.0]], [[1.0, 0.0]])).tolist() == [0.0]


# ---- training, saving, JAX --------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SMALL after two SGD steps on the KL loss (TensorFlow), saved compiled and as its expression model."""
    keras.utils.set_random_seed(0)
    legnet = build_legnet(SMALL)
    legnet.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss=soft_bin_kl_loss)
    x = random_inputs(INPUTS, 16)
    y = np.random.default_rng(1).uniform(0, 17, size=(16, 1)).astype(np.float32)
    losses = [float(legnet.train_on_batch(x, y)) for _ in range(2)]
    root = tmp_path_factory.mktemp("legnet")
    save_model(legnet, root / "legnet.keras")
    served = expression_model(legnet)
    save_model(served, root / "expression.keras")
    np.save(root / "x.npy", x)
    np.save(root / "probabilities.npy", legnet.predict(x, verbose=0))
    np.save(root / "expression.npy", served.predict(x, verbose=0))
    return {"root": root, "losses": losses}


def test_one_training_step_on_the_kl_loss_lowers_it(trained):
    before, after = trained["losses"]
    assert after < before, trained["losses"]
    assert np.isfinite(before) and before > 0


def run_fresh(script: str, backend: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_saved_legnet_loads_in_a_fresh_process_and_predicts_the_same(trained):
    root = trained["root"]
    result = run_fresh(
        f"""
        import numpy as np
        from model.saving import load_model
        x = np.load("{root}/x.npy")
        legnet, served = load_model("{root}/legnet.keras"), load_model("{root}/expression.keras")
        np.testing.assert_allclose(legnet.predict(x, verbose=0), np.load("{root}/probabilities.npy"), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(served.predict(x, verbose=0), np.load("{root}/expression.npy"), rtol=1e-5)
        print(legnet.loss.__name__, served.get_layer("expected_bin").__class__.__name__)
        """,
        backend="tensorflow",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["soft_bin_kl_loss", "ExpectedBin"]


@pytest.mark.slow
def test_legnet_builds_trains_and_predicts_under_jax(trained):
    """The same code under JAX; the TensorFlow-trained model loads there and predicts what TensorFlow did."""
    pytest.importorskip("jax")
    root = trained["root"]
    result = run_fresh(
        f"""
        import keras, numpy as np
        from model.bins import ExpectedBin, soft_bin_kl_loss
        from model.config import InputConfig, LegNetConfig
        from model.legnet import build_network
        from model.saving import load_model
        assert keras.backend.backend() == "jax"
        config = LegNetConfig.from_dict({json.dumps(SMALL.to_dict())})
        x = np.load("{root}/x.npy")
        legnet = build_network(config, InputConfig.from_dict({INPUTS.to_dict()!r}))
        def expression_model(network):
            inputs = keras.Input(network.input_shape[1:])
            return keras.Model(inputs, ExpectedBin()(network(inputs)))
        legnet.compile(optimizer="sgd", loss=soft_bin_kl_loss)
        loss = float(legnet.train_on_batch(x, np.linspace(0, 17, len(x), dtype="float32")))
        probabilities = legnet.predict(x, verbose=0)
        assert probabilities.shape == (len(x), 18) and np.isfinite(loss), (probabilities.shape, loss)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(
            expression_model(legnet).predict(x, verbose=0)[:, 0], probabilities @ np.arange(18), rtol=1e-5
        )
        served = load_model("{root}/expression.keras")
        np.testing.assert_allclose(served.predict(x, verbose=0), np.load("{root}/expression.npy"), rtol=1e-5)
        print("ok")
        """,
        backend="jax",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "ok"
