"""MGDA, CAGrad, Nash-MTL and UPGrad: each against its paper's definition on
hand-made gradients (the method sees only their Gramian), then through
`build_multitask_model` and `model.fit`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import minimize

import mtk
from mtk.weighting import min_norm
from mtk.weighting.min_norm import CAGrad
from mtk.weighting.min_norm import MGDA
from mtk.weighting.min_norm import NashMTL
from mtk.weighting.min_norm import UPGrad
from testing import run_model_saving_test
from testing import run_serialization_test

CLASSES = (MGDA, CAGrad, NashMTL, UPGrad)


def _weights(weighting, gradients, losses=None):
    """``w`` from ``weighting`` for the rows of ``gradients`` (numpy)."""
    gradients = np.asarray(gradients, "float64")
    count = len(gradients)
    if not weighting.built:
        weighting.setup([f"t{i}" for i in range(count)])
    losses = np.ones(count) if losses is None else losses
    weights = weighting.gramian_weights(
        tf.constant(gradients @ gradients.T, "float32"), tf.constant(losses, "float32"))
    return np.asarray(weights, "float64")


def _gradients(count, dim=12, seed=0, conflict=True):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(count, dim)) * rng.uniform(0.2, 3.0, (count, 1))
    if conflict:
        g[1] = -0.7 * g[0] + 0.3 * g[1]
    return g


def _on_simplex(count, objective, seed=0, starts=6):
    """scipy's minimum of ``objective`` over the simplex (several starts)."""
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        result = minimize(
            objective, rng.dirichlet(np.ones(count)), method="SLSQP",
            bounds=[(0.0, 1.0)] * count,
            constraints={"type": "eq", "fun": lambda w: 1.0 - w.sum()},
            options={"ftol": 1e-15, "maxiter": 1000})
        if best is None or result.fun < best.fun:
            best = result
    return best


# === MGDA ===
def test_mgda_two_tasks_is_the_closed_form_min_norm_point():
    g = _gradients(2, seed=1)
    g1, g2 = g
    # Algorithm 1: gamma = (g2 - g1) . g2 / |g1 - g2|^2, clipped to [0, 1].
    gamma = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0.0, 1.0)
    expected = gamma * g1 + (1.0 - gamma) * g2
    w = _weights(MGDA(), g)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(w @ g, expected, rtol=1e-4, atol=1e-5)
    # One gradient inside the other's half-space: the smaller one wins.
    w = _weights(MGDA(), [[1.0, 0.0], [3.0, 1.0]])
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("count, seed", [(3, 0), (4, 1), (6, 2), (10, 3)])
def test_mgda_is_the_min_norm_point_and_improves_every_task(count, seed):
    g = _gradients(count, seed=seed)
    g[:, 0] += 3.0  # a shared component: the hull does not contain 0
    gramian = g @ g.T
    w = _weights(MGDA(), g)
    assert np.all(w >= -1e-7)
    np.testing.assert_allclose(w.sum(), 1.0, atol=1e-5)
    reference = _on_simplex(count, lambda v: v @ gramian @ v, seed=seed)
    scale = np.trace(gramian) / count
    assert w @ gramian @ w <= reference.fun + 1e-4 * scale
    d = w @ g
    # The min-norm point d satisfies g_i . d >= |d|^2 > 0 for every task.
    assert np.linalg.norm(d) > 0.1
    assert np.all(g @ d >= (1.0 - 1e-2) * d @ d)


def test_mgda_is_zero_when_the_hull_contains_zero():
    g = np.array([[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0], [0.0, -1.0, -0.5]])
    d = _weights(MGDA(), g) @ g
    assert np.linalg.norm(d) < 1e-3


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_mgda_normalises_like_the_official_code(normalization):
    g = _gradients(3, seed=4)
    g[:, 0] += 2.0
    losses = np.array([0.5, 2.0, 4.0])
    norms = np.linalg.norm(g, axis=1)
    scale = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    normalised = g / scale[:, None]
    expected = _on_simplex(3, lambda v: v @ normalised @ normalised.T @ v).x
    # The weights of the normalised problem, applied to the raw gradients.
    w = _weights(MGDA(normalization=normalization), g, losses)
    np.testing.assert_allclose(w, expected, atol=2e-3)


# === CAGrad ===
def _cagrad_direction(weighting, g):
    """The paper's d (undoing the K and 1 + c^2 the weights carry)."""
    w = _weights(weighting, g)
    divisor = {0: 1.0, 1: 1.0 + weighting.c ** 2, 2: 1.0 + weighting.c}[weighting.rescale]
    return w @ g * divisor / len(g)


def test_cagrad_with_c_zero_is_the_mean_gradient():
    g = _gradients(3, seed=5)
    np.testing.assert_allclose(_cagrad_direction(CAGrad(c=0.0), g), g.mean(0), atol=1e-5)
    # The weights themselves: the summed gradient, divided by 1 + c^2 = 1.
    np.testing.assert_allclose(_weights(CAGrad(c=0.0), g), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_two_tasks_matches_a_grid_search_of_the_dual(c):
    g = _gradients(2, seed=6)
    g0 = g.mean(0)
    # The dual over the simplex, w = (s, 1 - s), on a fine grid.
    s = np.linspace(0.0, 1.0, 200001)[:, None]
    gw = s * g[0] + (1.0 - s) * g[1]
    values = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
    best = gw[np.argmin(values)]
    expected = g0 + c * np.linalg.norm(g0) / np.linalg.norm(best) * best
    got = _cagrad_direction(CAGrad(c=c, rescale=0), g)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.linalg.norm(g0))


@pytest.mark.parametrize("count, seed", [(3, 7), (5, 8)])
def test_cagrad_direction_maximises_the_worst_improvement_in_its_ball(count, seed):
    c = 0.5
    g = _gradients(count, seed=seed)
    g0 = g.mean(0)
    radius = c * np.linalg.norm(g0)
    d = _cagrad_direction(CAGrad(c=c, rescale=0), g)
    # On the ball's boundary, and no point of the ball does better on the
    # worst task (Eq. 2: max_d min_i g_i . d with |d - g0| <= c |g0|).
    np.testing.assert_allclose(np.linalg.norm(d - g0), radius, rtol=1e-4)
    rng = np.random.default_rng(seed)
    samples = rng.normal(size=(20000, g.shape[1]))
    samples = g0 + radius * samples / np.linalg.norm(samples, axis=1, keepdims=True)
    assert np.min(g @ d) >= np.max(np.min(samples @ g.T, axis=1)) - 1e-4 * np.linalg.norm(g0) ** 2
    # And its dual weights match scipy's.
    gramian = g @ g.T
    dual = _on_simplex(count, lambda v: v @ gramian.mean(1) + radius * np.sqrt(
        max(v @ gramian @ v, 1e-30)), seed=seed)
    w, _ = min_norm.cagrad_weights(tf.constant(gramian, "float32"), c)
    got = np.asarray(w, "float64")
    assert got @ gramian.mean(1) + radius * np.sqrt(got @ gramian @ got) <= (
        dual.fun + 1e-4 * np.trace(gramian) / count)


def test_cagrad_rescale_options():
    g = _gradients(3, seed=9)
    raw = _weights(CAGrad(c=0.4, rescale=0), g)
    np.testing.assert_allclose(_weights(CAGrad(c=0.4, rescale=1), g), raw / 1.16, rtol=1e-5)
    np.testing.assert_allclose(_weights(CAGrad(c=0.4, rescale=2), g), raw / 1.4, rtol=1e-5)


# === Nash-MTL ===
@pytest.mark.parametrize("count, seed", [(2, 0), (3, 1), (5, 2), (8, 3)])
def test_nash_weights_solve_the_bargaining_equation(count, seed):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(count, 20)) * rng.uniform(0.05, 5.0, (count, 1))
    if count > 2:
        g[2] = 0.9 * g[0] + 0.1 * g[2]  # nearly collinear tasks
    gramian = g @ g.T
    alpha = np.asarray(min_norm.nash_bargaining_weights(
        tf.constant(gramian, "float32"), reg_eps=0.0), "float64")
    assert np.all(alpha > 0)
    np.testing.assert_allclose(gramian @ alpha, 1.0 / alpha, rtol=2e-3)
    # Each task gains g_i . d = 1 / alpha_i, and |d|^2 = K.
    np.testing.assert_allclose(np.sum((alpha @ g) ** 2), count, rtol=2e-3)
    # NashMTL solves it for G G^T / |G G^T|_F, as the official code does.
    normalised = gramian / np.linalg.norm(gramian)
    w = _weights(NashMTL(max_norm=0.0), g)
    # To the official code's stopping tolerance, |M a - 1 / a| < 1e-3.
    assert np.linalg.norm(normalised @ w - 1.0 / w) < 1e-3 * np.linalg.norm(1.0 / w)


def test_nash_orthogonal_gradients_get_inverse_norm_weights():
    g = np.diag([2.0, 0.5, 1.0])
    alpha = np.asarray(min_norm.nash_bargaining_weights(
        tf.constant(g @ g.T, "float32"), reg_eps=0.0))
    np.testing.assert_allclose(alpha, [0.5, 2.0, 1.0], rtol=1e-5)


def test_nash_clips_the_update_and_reuses_weights_between_solves():
    g = 10.0 * _gradients(3, seed=10)
    w = _weights(NashMTL(max_norm=1.0), g)
    np.testing.assert_allclose(np.linalg.norm(w @ g), 1.0, rtol=1e-4)
    small = 1e-3 * g
    w = _weights(NashMTL(max_norm=1.0), small)
    assert np.linalg.norm(w @ small) < 1.0  # short updates are left alone
    weighting = NashMTL(max_norm=0.0, update_weights_every=3)
    first = _weights(weighting, g)
    other = _gradients(3, seed=11)
    np.testing.assert_allclose(_weights(weighting, other), first)  # step 2 reuses
    np.testing.assert_allclose(_weights(weighting, other), first)  # step 3 reuses
    fresh = _weights(weighting, other)  # step 4 solves again
    np.testing.assert_allclose(fresh, _weights(NashMTL(max_norm=0.0), other), rtol=1e-5)


# === UPGrad ===
def _upgrad_reference(gramian, pref):
    """TorchJD's definition with scipy: v_i = argmin v^T M v s.t. v >= pref_i e_i."""
    count = len(gramian)
    matrix = gramian / np.trace(gramian) + 1e-4 * np.eye(count)
    total = np.zeros(count)
    for i in range(count):
        bound = np.eye(count)[i] * pref[i]
        result = minimize(
            lambda v: v @ matrix @ v, bound + 0.1, jac=lambda v: 2 * matrix @ v,
            method="L-BFGS-B", bounds=[(b, None) for b in bound],
            options={"ftol": 1e-16, "gtol": 1e-14, "maxiter": 10000})
        total += result.x
    return total


@pytest.mark.parametrize("count, seed", [(2, 0), (3, 1), (5, 2), (8, 3)])
def test_upgrad_does_not_conflict_and_matches_the_quadratic_programs(count, seed):
    g = _gradients(count, seed=seed)
    g[-1] = -0.5 * g[0] - 0.5 * g[-1]
    gramian = g @ g.T
    assert np.min(gramian) < 0
    w = _weights(UPGrad(), g)
    d = w @ g
    # TorchJD's contract: no task gradient conflicts with the update.
    assert np.all(g @ d >= -1e-3 * np.linalg.norm(g, axis=1) * np.linalg.norm(d))
    expected = _upgrad_reference(gramian, np.full(count, 1.0 / count))
    np.testing.assert_allclose(w, expected, rtol=1e-3, atol=1e-4)
    pref = np.linspace(1.0, 2.0, count)
    w = _weights(UPGrad(pref_vector=list(pref)), g)
    np.testing.assert_allclose(w, _upgrad_reference(gramian, pref), rtol=1e-3, atol=1e-4)


def test_upgrad_is_the_mean_when_gradients_do_not_conflict():
    g = np.abs(_gradients(4, seed=12, conflict=False))
    np.testing.assert_allclose(_weights(UPGrad(), g) @ g, g.mean(0), rtol=1e-5)


# === Shared properties ===
def _make_all():
    return [MGDA(), MGDA(normalization="loss+"), CAGrad(), NashMTL(), UPGrad()]


@pytest.mark.parametrize("gradients", [
    np.zeros((3, 5)),
    np.array([[1.0, 2.0, 0.0, 0.0, 0.0], [0.0] * 5, [-1.0, 0.0, 3.0, 0.0, 0.0]]),
    np.array([[1.0, 0.0, 0.0, 0.0, 0.0]] * 3),
    1e-8 * _gradients(3, dim=5),
], ids=["zero", "one_zero_task", "identical", "tiny"])
def test_degenerate_gramians_give_finite_weights(gradients):
    for weighting in _make_all():
        w = _weights(weighting, gradients, losses=np.zeros(3))
        assert np.all(np.isfinite(w)), (type(weighting).__name__, w)
        assert np.all(np.isfinite(w @ gradients))


@pytest.mark.slow
def _xla(weighting):
    """``weighting.gramian_weights`` under XLA, with the layer closed over:
    as a traced argument (a bound method's self, a default value) TensorFlow
    would treat the layer as an input of the function."""
    def weights(gramian, losses):
        return weighting.gramian_weights(gramian, losses)

    return tf.function(weights, jit_compile=True)


def test_compiled_with_xla_as_in_eager():
    g = _gradients(4, seed=13)
    gramian = tf.constant(g @ g.T, "float32")
    losses = tf.constant([1.0, 2.0, 0.5, 1.0])
    for weighting in _make_all():
        weighting.setup(["a", "b", "c", "d"])
        eager = weighting.gramian_weights(gramian, losses)
        compiled = _xla(weighting)(gramian, losses)
        np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", [
    MGDA(normalization="l2", max_iters=50, rep_grad=True),
    CAGrad(c=0.3, rescale=2, max_iters=40),
    NashMTL(max_norm=2.0, update_weights_every=5, optim_niter=10),
    UPGrad(pref_vector=[1.0, 2.0, 3.0], norm_eps=0.0, reg_eps=1e-3, max_iters=7),
], ids=lambda w: type(w).__name__)
def test_config_round_trip(weighting):
    revived = run_serialization_test(weighting)
    assert revived.get_config() == weighting.get_config()


@pytest.mark.parametrize("make, message", [
    (lambda: MGDA(normalization="max"), r"MGDA: normalization must be one of"),
    (lambda: MGDA(max_iters=0), "MGDA: max_iters must be an integer >= 1, got 0"),
    (lambda: CAGrad(c=-0.1), "CAGrad: c must be a finite number >= 0, got -0.1"),
    (lambda: CAGrad(rescale=3), "CAGrad: rescale must be 0, 1 or 2, got 3"),
    (lambda: CAGrad(max_iters=2.5), "CAGrad: max_iters must be an integer >= 1"),
    (lambda: NashMTL(max_norm=float("nan")), "NashMTL: max_norm must be a finite number >= 0"),
    (lambda: NashMTL(update_weights_every=0), "NashMTL: update_weights_every must be an integer"),
    (lambda: NashMTL(optim_niter=True), "NashMTL: optim_niter must be an integer"),
    (lambda: UPGrad(reg_eps=0.0), "UPGrad: reg_eps must be a finite number > 0, got 0.0"),
    (lambda: UPGrad(norm_eps=-1.0), "UPGrad: norm_eps must be a finite number >= 0"),
    (lambda: UPGrad(pref_vector=[1.0, -1.0]), "UPGrad: pref_vector must be a finite number >= 0"),
    (lambda: UPGrad(pref_vector=[0.0, 0.0]), "UPGrad: pref_vector must have a positive entry"),
    (lambda: UPGrad(pref_vector=[1.0, 1.0]).setup(["a", "b", "c"]),
     r"UPGrad: pref_vector has 2 entries; the model has 3 heads"),
    (lambda: MGDA(rep_grad="yes"), "MGDA: rep_grad must be True or False"),
])
def test_bad_parameters_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# === Training through the public API ===
def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = rng.normal(size=(3, 4)).astype("float32")
    y = {
        "t0": (x @ w[0]).astype("float32"),
        "t1": (x @ w[1] - x @ w[0]).astype("float32"),  # partly conflicting
        "t2": (x @ w[2] > 0).astype("float32"),
    }
    return x, y


def _model(weighting):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    return mtk.build_multitask_model(
        trunk,
        heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1"), mtk.heads.Binary("t2")],
        freeze_trunk=False, loss_weighting=weighting,
        optimizer=keras.optimizers.Adam(0.01))


@pytest.mark.parametrize("rep_grad", [False, True], ids=["params", "rep_grad"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_trains_with_fit_and_saves(cls, rep_grad, tmp_path):
    x, y = _data()
    model = _model(cls(rep_grad=rep_grad))
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"]))
    assert history["loss"][1] < history["loss"][0]
    for name in ("t0", "t1", "t2"):
        assert np.isfinite(history[f"{name}_loss_weight"]).all()
    logged = [history[f"{name}_loss_weight"][-1] for name in ("t0", "t1", "t2")]
    np.testing.assert_allclose(logged, model.loss_weighting.last_weights.numpy(), rtol=1e-5)
    if rep_grad:
        return
    loaded = run_model_saving_test(model, x[:8], str(tmp_path / "model.keras"))
    assert type(loaded.loss_weighting) is cls
    assert loaded.loss_weighting.get_config() == model.loss_weighting.get_config()
    for a, b in zip(model.loss_weighting.weights, loaded.loss_weighting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
