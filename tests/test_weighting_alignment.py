"""IMTL, GradVac, Aligned-MTL and GradDrop against their papers' formulas."""

import doctest

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from mtk.weighting import alignment
from mtk.weighting.alignment import IMTL
from mtk.weighting.alignment import AlignedMTL
from mtk.weighting.alignment import GradDrop
from mtk.weighting.alignment import GradVac
from testing import run_model_saving_test
from testing import run_python
from testing import run_serialization_test


def _gradients(k=3, p=6, seed=0, scales=(1.0, 5.0, 0.2)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(k, p)) * np.array(scales[:k])[:, None]).astype("float32")


def _weights(method, g, setup=True):
    if setup:
        method.setup([f"t{i}" for i in range(len(g))])
    gramian = tf.constant(g.astype("float64") @ g.T.astype("float64"), "float32")
    return method.shared_direction(gramian, tf.ones(len(g))).numpy()


# === IMTL ===

def test_imtl_gives_equal_projections_onto_every_unit_gradient():
    compared = 0
    for seed in range(5):
        g = _gradients(seed=seed)
        w = _weights(IMTL(), g)
        d = w @ g
        units = g / np.linalg.norm(g, axis=1, keepdims=True)
        projections = units @ d
        np.testing.assert_allclose(projections, projections[0], rtol=1e-3)
        assert projections[0] > 0
        # The paper's closed form: alpha_{2:K} = g_1 U^T (D U^T)^-1.
        D, U = g[0] - g[1:], units[0] - units[1:]
        rest = g[0] @ U.T @ np.linalg.inv(D @ U.T)
        alpha = np.concatenate([[1 - rest.sum()], rest])
        if (units @ (alpha @ g))[0] > 0:  # else see test_imtl_never_points_uphill
            np.testing.assert_allclose(w, alpha, rtol=2e-3, atol=1e-4)
            compared += 1
    assert compared >= 3


def test_imtl_never_points_uphill():
    # Gradients where the paper's sum(alpha) = 1 makes every projection negative.
    rng = np.random.default_rng(0)
    for _ in range(20000):
        g = rng.normal(size=(3, 4)) * np.exp(2 * rng.normal(size=(3, 1)))
        m = g @ g.T
        if np.linalg.solve(m, np.sqrt(np.diag(m))).sum() < 0:
            break
    g = g.astype("float32")
    w = alignment.imtl_weights(tf.constant(g @ g.T)).numpy()
    projections = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (w @ g)
    np.testing.assert_allclose(projections, projections[0], rtol=1e-3)
    assert projections[0] > 0
    np.testing.assert_allclose(w.sum(), -1.0, rtol=1e-4)


def test_imtl_ignores_a_task_without_gradient_and_survives_zero_gradients():
    g = _gradients()
    g[1] = 0.0  # all its labels missing
    w = _weights(IMTL(), g)
    assert w[1] == 0.0
    d = w @ g
    np.testing.assert_allclose(d @ g[0] / np.linalg.norm(g[0]),
                               d @ g[2] / np.linalg.norm(g[2]), rtol=1e-3)
    np.testing.assert_allclose(_weights(IMTL(), np.zeros((3, 4), "float32")), [1 / 3] * 3)


# === GradVac ===

def _gradvac_reference(g, targets, beta):
    """Algorithm 1 on explicit vectors, tasks in order."""
    targets = targets.copy()
    edited = []
    for i in range(len(g)):
        gi = g[i].astype("float64").copy()
        for j in range(len(g)):
            if j == i:
                continue
            gj = g[j].astype("float64")
            phi = gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj))
            t = targets[i, j]
            if phi < t:
                gi = gi + np.linalg.norm(gi) * (
                    t * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - t**2)
                ) / (np.linalg.norm(gj) * np.sqrt(1 - t**2)) * gj
                np.testing.assert_allclose(
                    gi @ gj / (np.linalg.norm(gi) * np.linalg.norm(gj)), t, atol=1e-9)
            targets[i, j] = (1 - beta) * t + beta * phi
        edited.append(gi)
    return np.array(edited), targets


def test_gradvac_edits_and_targets_follow_algorithm_1():
    method = GradVac(beta=0.5, shuffle=False)
    method.setup(["a", "b", "c"])
    targets = np.zeros((3, 3))
    edits = 0
    for step in range(4):
        # Alternate agreeing and conflicting gradients so that targets rise
        # and then trigger edits of gradients still positively aligned.
        g = _gradients(seed=step, scales=(1.0, 2.0, 0.5))
        g[1] = g[0] * (1 if step % 2 == 0 else -0.3) + 0.3 * g[1]
        expected, targets = _gradvac_reference(g, targets, 0.5)
        edits += int(not np.allclose(expected, g, atol=1e-6))
        w = _weights(method, g, setup=False)
        np.testing.assert_allclose(w @ g, expected.sum(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(method.targets.numpy(), targets, atol=1e-5)
    assert edits >= 2
    assert method.last_weights.numpy().tolist() == pytest.approx(w.tolist())


def test_gradvac_survives_zero_gradients():
    method = GradVac(beta=0.5)
    w = _weights(method, np.zeros((3, 4), "float32"))
    np.testing.assert_array_equal(w, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(method.targets.numpy(), np.zeros((3, 3)))
    # Targets at 1 (long-identical gradients) keep the edit finite.
    method.targets.assign(np.ones((3, 3), "float32"))
    w = _weights(method, _gradients(), setup=False)
    assert np.all(np.isfinite(w))


# === Aligned-MTL ===

@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_aligned_mtl_sums_the_aligned_gradients_of_an_svd(scale_mode):
    g = _gradients(k=4, p=7, scales=(1.0, 5.0, 0.2, 2.0))
    u, s, vt = np.linalg.svd(g.T.astype("float64"), full_matrices=False)
    sigma = {"min": s.min(), "median": np.sort(s)[(len(s) - 1) // 2],
             "rmse": np.sqrt(np.mean(s**2))}[scale_mode]
    aligned = sigma * u @ vt  # columns: orthogonal, each of norm sigma
    np.testing.assert_allclose(aligned.T @ aligned, sigma**2 * np.eye(4), atol=1e-9)
    w = _weights(AlignedMTL(scale_mode=scale_mode), g)
    np.testing.assert_allclose(w @ g, aligned.sum(1), rtol=1e-3, atol=1e-4)


def test_aligned_mtl_handles_rank_deficiency_without_nan():
    g = _gradients(k=3, p=5)
    g[2] = g[0] + g[1]  # rank 2
    u, s, vt = np.linalg.svd(g.T.astype("float64"), full_matrices=False)
    u, s, vt = u[:, :2], s[:2], vt[:2]
    w = _weights(AlignedMTL(), g)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w @ g, (s.min() * u @ vt).sum(1), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(_weights(AlignedMTL(), np.zeros((3, 4), "float32")), [1.0] * 3)


# === GradDrop ===

def _graddrop_reference(rows, uniform, leak):
    signal = rows.sum(1)  # (K, d)
    purity = 0.5 * (1 + signal.sum(0) / np.abs(signal).sum(0))
    keep = np.where(uniform < purity, signal > 0, signal < 0)  # (K, d)
    factors = leak + (1 - leak) * keep
    return purity, keep, (factors[:, None] * rows).sum(0), factors


def test_graddrop_keeps_one_sign_per_coordinate_with_probability_p():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 4, 6)).astype("float32")
    method = GradDrop(seed=7)
    method.setup(["a", "b", "c"])
    purity, _ = alignment.sign_purity(tf.constant(rows))
    for step in range(3):
        uniform = tf.random.stateless_uniform((6,), seed=tf.constant([7, step], "int64")).numpy()
        expected_p, keep, expected, factors = _graddrop_reference(rows, uniform, 0.0)
        np.testing.assert_allclose(purity, expected_p, rtol=1e-5)
        got = method.feature_direction(tf.constant(rows), None, tf.ones(3)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # Each coordinate keeps one sign: the kept batch sums never disagree.
        kept_signal = np.where(keep, rows.sum(1), 0.0)
        assert np.all((kept_signal >= 0).all(0) | (kept_signal <= 0).all(0))
        share = (np.abs(rows) * factors[:, None]).sum((1, 2)) / np.abs(rows).sum((1, 2))
        np.testing.assert_allclose(method.last_weights.numpy(), share, rtol=1e-5)
    assert int(method.step.numpy()) == 3
    # Over many draws a coordinate keeps the positive side with probability P:
    # task a pushes +p, task b -(1 - p), so P = p.
    p = np.repeat(np.array([0.2, 0.5, 0.9], "float32"), 2000)
    rows = tf.constant(np.stack([p, p - 1])[:, None, :])
    np.testing.assert_allclose(alignment.sign_purity(rows)[0].numpy(), p, atol=1e-6)
    uniform = tf.random.stateless_uniform(p.shape, seed=(1, 2))
    direction = alignment.sign_dropout(rows, uniform)[0].numpy()[0]
    positive = (direction > 0).reshape(3, 2000).mean(1)
    np.testing.assert_allclose(positive, [0.2, 0.5, 0.9], atol=0.03)


def test_graddrop_leak_one_is_the_plain_sum_and_leak_per_task():
    rows = np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32")
    method = GradDrop(leak=1.0, seed=0)
    method.setup(["a", "b"])
    got = method.feature_direction(tf.constant(rows), None, tf.ones(2)).numpy()
    np.testing.assert_allclose(got, rows.sum(0), rtol=1e-6)
    np.testing.assert_allclose(method.last_weights.numpy(), [1.0, 1.0])
    # Leak 1 for task a only: a passes whole, b is masked.
    uniform = tf.random.stateless_uniform((4,), seed=tf.constant([0, 0], "int64")).numpy()
    _, keep, _, _ = _graddrop_reference(rows, uniform, 0.0)
    method = GradDrop(leak=[1.0, 0.0], seed=0)
    method.setup(["a", "b"])
    got = method.feature_direction(tf.constant(rows), None, tf.ones(2)).numpy()
    np.testing.assert_allclose(got, rows[0] + keep[1] * rows[1], rtol=1e-5, atol=1e-6)


def test_graddrop_uses_the_sign_of_the_features_and_survives_zeros():
    rows = tf.constant([[[1.0], [1.0]], [[-1.0], [2.0]]])  # K=2, batch=2, d=1
    # With features (+, -) the batch sums become (0, -3): P = 0.
    purity, _ = alignment.sign_purity(rows, tf.constant([[1.0], [-1.0]]))
    np.testing.assert_allclose(purity.numpy(), [0.0])
    method = GradDrop(seed=0)
    method.setup(["a", "b"])
    got = method.feature_direction(tf.zeros((2, 3, 4)), None, tf.ones(2)).numpy()
    np.testing.assert_array_equal(got, np.zeros((3, 4)))
    np.testing.assert_array_equal(method.last_weights.numpy(), [1.0, 1.0])


# === Graph and XLA ===

def test_weights_compile_with_xla():
    g = tf.constant(_gradients(k=3, p=5))
    gramian = tf.matmul(g, g, transpose_b=True)

    @tf.function(jit_compile=True)
    def compiled(gramian, rows):
        coefficients, targets = alignment.gradvac_coefficients(
            gramian, tf.fill((3, 3), 0.5), 0.1, shuffle=False)
        return (alignment.imtl_weights(gramian), alignment.aligned_mtl_weights(gramian),
                coefficients, alignment.sign_dropout(rows, tf.fill((4,), 0.5))[0])

    rows = tf.random.stateless_normal((3, 2, 4), seed=(0, 1))
    results = compiled(gramian, rows)
    eager = (alignment.imtl_weights(gramian), alignment.aligned_mtl_weights(gramian),
             alignment.gradvac_coefficients(gramian, tf.fill((3, 3), 0.5), 0.1, False)[0],
             alignment.sign_dropout(rows, tf.fill((4,), 0.5))[0])
    for a, b in zip(results, eager):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)
    zeros = compiled(tf.zeros((3, 3)), tf.zeros((3, 2, 4)))
    assert all(np.all(np.isfinite(z.numpy())) for z in zeros)


# === Training through the public API ===

def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = rng.normal(size=(3, 4)).astype("float32")
    y = {"t0": x @ w[0], "t1": -(x @ w[0]) + 0.5 * x @ w[1],
         "t2": (x @ w[2] > 0).astype("float32")}
    return x, y


def _model(weighting):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    return mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1"),
                      mtk.heads.Binary("t2")],
        freeze_trunk=False, loss_weighting=weighting)


def _check_training(model):
    x, y = _data()
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][1] < history["loss"][0]
    for head in ("t0", "t1", "t2"):
        assert np.all(np.isfinite(history[f"{head}_loss"]))
        assert np.all(np.isfinite(history[f"{head}_loss_weight"]))
    return x


@pytest.mark.parametrize("make", [IMTL, GradVac, AlignedMTL, GradDrop])
def test_trains_saves_and_loads(make, tmp_path):
    model = _model(make())
    x = _check_training(model)
    loaded = run_model_saving_test(model, x, str(tmp_path / "m.keras"))
    assert type(loaded.loss_weighting) is make
    assert loaded.loss_weighting.get_config() == model.loss_weighting.get_config()
    for a, b in zip(model.loss_weighting.weights, loaded.loss_weighting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("make", [IMTL, GradVac, AlignedMTL])
def test_trains_with_rep_grad(make):
    _check_training(_model(make(rep_grad=True)))


def test_configs_round_trip():
    for method in (IMTL(rep_grad=True), GradVac(beta=0.3, shuffle=False),
                   AlignedMTL(scale_mode="rmse"), GradDrop(leak=[0.5, 0.0], seed=3)):
        run_serialization_test(method)
    assert GradDrop(seed=3).get_config()["rep_grad"] is True


@pytest.mark.parametrize("make, message", [
    (lambda: GradVac(beta=0), "GradVac: beta must be a finite number > 0, got 0"),
    (lambda: GradVac(beta=1.5), r"GradVac: beta must be in \(0, 1\], got 1.5"),
    (lambda: GradVac(shuffle="yes"), "GradVac: shuffle must be True or False"),
    (lambda: AlignedMTL(scale_mode="max"), "AlignedMTL: scale_mode must be one of"),
    (lambda: GradDrop(rep_grad=False), "GradDrop: rep_grad must be True"),
    (lambda: GradDrop(leak=-0.1), "GradDrop: leak must be a finite number >= 0"),
    (lambda: GradDrop(leak=[0.0, 2.0]), r"GradDrop: leak must be in \[0, 1\]"),
    (lambda: GradDrop(seed="x"), "GradDrop: seed must be an integer"),
    (lambda: IMTL(rep_grad="no"), "IMTL: rep_grad must be True or False"),
    (lambda: GradDrop(leak=[0.0, 1.0]).setup(["a", "b", "c"]),
     "GradDrop: leak has 2 values but the model has 3 heads"),
])
def test_bad_parameters_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_docstring_examples_run():
    globs = {"mtk": mtk, "np": np, "tf": tf, "keras": keras}
    tests = [t for t in doctest.DocTestFinder().find(alignment, globs=globs) if t.examples]
    assert len(tests) >= 7
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


@pytest.mark.slow
def test_two_replicas_train_like_one_device(tmp_path):
    """MirroredStrategy on two logical CPUs: same weights as one device.

    The Gramian-based methods see the global Gramian; GradDrop sums its
    batch signal over replicas and draws the same mask on each.
    """
    result = run_python("""
        import numpy as np, keras, tensorflow as tf
        import mtk
        from mtk.weighting import alignment

        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 4)).astype("float32")
        w = rng.normal(size=(3, 4)).astype("float32")
        y = {"t0": x @ w[0], "t1": -(x @ w[0]) + 0.5 * x @ w[1],
             "t2": (x @ w[2] > 0).astype("float32")}

        def train(make, strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                trunk = keras.Sequential(
                    [keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
                model = mtk.build_multitask_model(
                    trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1"),
                                  mtk.heads.Binary("t2")],
                    freeze_trunk=False, loss_weighting=make(), strategy=strategy,
                    optimizer=keras.optimizers.SGD(0.05))
            model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
            return ([v.numpy() for v in model.get_layer("trunk").weights],
                    [v.numpy() for v in model.loss_weighting.weights])

        makers = {
            "imtl": lambda: alignment.IMTL(),
            "gradvac": lambda: alignment.GradVac(beta=0.5, shuffle=False),
            "aligned_mtl": lambda: alignment.AlignedMTL(rep_grad=True),
            "graddrop": lambda: alignment.GradDrop(seed=1),
        }
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        single = tf.distribute.OneDeviceStrategy("/cpu:0")
        gaps = {}
        for name, make in makers.items():
            (a, sa), (b, sb) = train(make, mirrored), train(make, single)
            gaps[name] = [max(float(np.abs(p - q).max()) for p, q in zip(a, b)),
                          max(float(np.abs(p - q).max()) for p, q in zip(sa, sb)),
                          max(float(np.abs(p).max()) for p in a)]
        report(gaps)
    """, tmp_path, logical_cpus=2)
    for name, (weights_gap, state_gap, size) in result.items():
        assert np.isfinite(size) and size > 0, name
        assert weights_gap < 1e-4, (name, weights_gap)
        assert state_gap < 1e-4, (name, state_gap)
