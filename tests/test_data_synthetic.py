"""The MMoE paper's synthetic regression pair (mtk.data.synthetic)."""

import numpy as np
import pytest

import mtk


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("p", [1.0, 0.9, 0.5, 0.0, -0.8])
def test_weight_vectors_have_cosine_p_and_norm_c(p):
    problem = mtk.data.MMoESynthetic(p, dim=100, c=2.5, seed=3)
    w1, w2 = problem.weights
    assert cosine(w1, w2) == pytest.approx(p, abs=1e-12)
    np.testing.assert_allclose(np.linalg.norm(problem.weights, axis=1), [2.5, 2.5])


@pytest.mark.parametrize("p", [0.9, 0.5, 0.0, -0.5])
def test_linear_parts_have_pearson_correlation_p(p):
    problem = mtk.data.MMoESynthetic(p, dim=100, seed=1)
    x, _ = problem.sample(50_000, sample_seed=0)
    z = problem.linear_parts(x)
    # Standard error of r on 50k examples is below 0.005.
    assert np.corrcoef(z.T)[0, 1] == pytest.approx(p, abs=0.02)


def test_labels_are_linear_part_plus_sinusoids_plus_noise():
    problem = mtk.data.MMoESynthetic(0.5, dim=8, m=3, noise_std=0.0, seed=2)
    x, y = problem.sample(5, sample_seed=4)
    for i, name in enumerate(("task0", "task1")):
        z = x.astype("float64") @ problem.weights[i]
        expected = z + sum(np.sin(a * z + b) for a, b in zip(problem.alphas, problem.betas))
        np.testing.assert_allclose(y[name], expected, rtol=1e-5, atol=1e-5)


def test_noise_has_the_given_standard_deviation():
    quiet = mtk.data.MMoESynthetic(0.5, noise_std=0.0, seed=0)
    noisy = mtk.data.MMoESynthetic(0.5, noise_std=0.1, seed=0)
    _, y0 = quiet.sample(20_000, sample_seed=0)
    _, y1 = noisy.sample(20_000, sample_seed=0)
    assert np.std(y1["task0"] - y0["task0"]) == pytest.approx(0.1, rel=0.03)


def test_label_correlation_falls_with_p():
    correlations = []
    for p in (1.0, 0.9, 0.5, 0.0):
        _, y = mtk.data.mmoe_synthetic(20_000, p, seed=0)
        correlations.append(np.corrcoef(y["task0"], y["task1"])[0, 1])
    assert all(a > b for a, b in zip(correlations, correlations[1:])), correlations
    assert correlations[0] > 0.95 and abs(correlations[-1]) < 0.05, correlations


def test_shapes_and_dtypes():
    x, y = mtk.data.mmoe_synthetic(7, 0.3, dim=5)
    assert x.shape == (7, 5) and x.dtype == np.float32
    assert sorted(y) == ["task0", "task1"]
    assert all(v.shape == (7,) and v.dtype == np.float32 for v in y.values())


def test_same_seeds_same_data_and_splits_share_the_problem():
    a = mtk.data.mmoe_synthetic(100, 0.5, seed=4, sample_seed=0)
    b = mtk.data.mmoe_synthetic(100, 0.5, seed=4, sample_seed=0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["task1"], b[1]["task1"])
    # Another sample of the same problem: other inputs, same weights.
    test = mtk.data.mmoe_synthetic(100, 0.5, seed=4, sample_seed=1)
    assert not np.allclose(a[0], test[0])
    problem = mtk.data.MMoESynthetic(0.5, seed=4)
    np.testing.assert_array_equal(problem.sample(100, sample_seed=0)[0], a[0])
    np.testing.assert_array_equal(problem.sample(100, sample_seed=1)[0], test[0])
    # Another problem seed: other weights.
    other = mtk.data.MMoESynthetic(0.5, seed=5)
    assert not np.allclose(problem.weights, other.weights)
    assert not np.allclose(problem.alphas, other.alphas)


@pytest.mark.parametrize("kwargs, argument", [
    (dict(correlation=1.01), "correlation"),
    (dict(correlation=-1.5), "correlation"),
    (dict(correlation=float("nan")), "correlation"),
    (dict(num_examples=0), "num_examples"),
    (dict(num_examples=2.5), "num_examples"),
    (dict(dim=1), "dim"),
    (dict(m=-1), "m"),
    (dict(noise_std=-0.1), "noise_std"),
    (dict(seed=-1), "seed"),
    (dict(sample_seed=-1), "sample_seed"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, argument):
    arguments = dict(num_examples=10, correlation=0.5) | kwargs
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        mtk.data.mmoe_synthetic(**arguments)
