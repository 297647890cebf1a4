"""The k-mer reference against a naive, independent computation, its cache, and the real demo file."""

import itertools
import json

import numpy as np
import pytest
from conftest import DEMO

from data_prep import prepare
from model.kmer_reference import CACHE_FILE, KMER_SIZES, N_FEATURES, fit_kmer_ridge, kmer_counts, kmer_reference, predict_kmer_ridge

KMERS = ["".join(p) for k in KMER_SIZES for p in itertools.product("ACGT", repeat=k)]


def naive_counts(sequences):
    """Per-sequence Python counting of every 4-6-mer substring without N."""
    column = {kmer: i for i, kmer in enumerate(KMERS)}
    out = np.zeros((len(sequences), len(KMERS)))
    for row, sequence in enumerate(sequences):
        for k in KMER_SIZES:
            for start in range(len(sequence) - k + 1):
                kmer = sequence[start : start + k]
                if "N" not in kmer:
                    out[row, column[kmer]] += 1
    return out


def naive_ridge(counts, y, penalty):
    """Ridge on standardised columns (population std, constant columns left at 1), solved in the dual.

    w = Z'(ZZ' + alpha I)^-1 (y - mean y) equals the primal solution the module computes
    from X'X, and needs only an n-square solve.
    """
    mean, scale = counts.mean(axis=0), counts.std(axis=0)
    scale[scale == 0] = 1
    z = (counts - mean) / scale
    w = z.T @ np.linalg.solve(z @ z.T + penalty * len(y) * np.eye(len(y)), y - y.mean())
    return lambda c: ((c - mean) / scale) @ w + y.mean()


def random_problem(n, length, seed):
    rng = np.random.default_rng(seed)
    codes = rng.choice(5, size=(n, length), p=[0.24, 0.24, 0.24, 0.24, 0.04]).astype(np.uint8)
    sequences = ["".join("ACGTN"[c] for c in row) for row in codes]
    counts = naive_counts(sequences)
    # Expression driven by a few k-mers plus noise, as a promoter library would be.
    y = counts[:, [KMERS.index("TGAC"), KMERS.index("GGGCC"), KMERS.index("TATAAA")]] @ [1.0, -0.8, 2.0]
    return codes, counts, y + rng.normal(0, 0.5, n)


def test_counts_match_naive_counting_and_skip_n():
    codes, counts, _ = random_problem(30, 40, seed=0)
    fast = kmer_counts(codes)
    assert fast.shape == (30, N_FEATURES) and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, counts)
    assert kmer_counts(np.full((1, 12), 4, np.uint8)).sum() == 0


def test_ridge_fit_and_cross_validation_match_a_direct_solve():
    codes, counts, y = random_problem(90, 30, seed=1)
    fit = fit_kmer_ridge(codes, y, folds=2, penalties=(0.01, 1.0))
    assert fit["penalty"] in (0.01, 1.0)
    np.testing.assert_allclose(predict_kmer_ridge(fit, codes), naive_ridge(counts, y, fit["penalty"])(counts), rtol=1e-6, atol=1e-8)
    # Cross-validated Pearson recomputed fold by fold from held-out predictions.
    fold_of = np.random.default_rng(0).permutation(len(y)) % 2
    for penalty in (0.01, 1.0):
        scores = []
        for fold in range(2):
            held = fold_of == fold
            predict = naive_ridge(counts[~held], y[~held], penalty)
            scores.append(np.corrcoef(predict(counts[held]), y[held])[0, 1])
        assert fit["cv_pearson"][penalty] == pytest.approx(np.mean(scores), abs=2e-3)  # float32 CV solves
    best = max(fit["cv_pearson"], key=fit["cv_pearson"].get)
    assert fit["penalty"] == best


def test_fit_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same length; got 3 and 2"):
        fit_kmer_ridge(np.zeros((3, 10), np.uint8), [1.0, 2.0])
    with pytest.raises(ValueError, match="folds must be an integer >= 2 with at least 2 rows each; got folds=5 for 6 rows"):
        fit_kmer_ridge(np.zeros((6, 10), np.uint8), np.ones(6), folds=5)


@pytest.mark.slow
def test_reference_is_cached_beside_the_data_and_refit_when_settings_change(make_synthetic_data):
    data_dir = make_synthetic_data(1_200, 3, 200)
    first = kmer_reference(data_dir, max_fit_rows=600)
    assert (first["n_fit"], first["n_train"], first["n_eval"]) == (600, 880, 200)
    assert len(first["predicted"]) == 200 and len(first["test_predicted"]) == 120 and 0.2 < first["pearson"] <= 1
    # The cached weights are the model itself: from base codes they give the cached predictions.
    from data_prep import PreparedData
    from model.kmer_reference import KmerRidge

    data = PreparedData.load(data_dir)
    model = KmerRidge.of(first)
    np.testing.assert_allclose(model.predict_codes(data.codes[data.eval_index]), first["predicted"], atol=1e-5)
    np.testing.assert_allclose(model.predict_codes(data.codes[data.test_index]), first["test_predicted"], atol=1e-5)
    cache = data_dir / CACHE_FILE
    assert json.loads(cache.read_text())["pearson"] == first["pearson"]
    modified = cache.stat().st_mtime_ns
    assert kmer_reference(data_dir, max_fit_rows=600) == first
    assert cache.stat().st_mtime_ns == modified
    refit = kmer_reference(data_dir, max_fit_rows=800)
    assert refit["n_fit"] == 800 and json.loads(cache.read_text())["n_fit"] == 800
    assert not list(data_dir.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(not DEMO.exists(), reason=f"{DEMO} is not here")
def test_real_demo_reference_beats_the_seed_baseline(tmp_path):
    prepare(DEMO, tmp_path / "demo", eval_size=637)
    reference = kmer_reference(tmp_path / "demo")
    assert reference["n_fit"] == 5_096  # 637 for validation and as many for test
    assert 0.58 < reference["pearson"] < 0.68  # 0.628 with penalty 10 when written
