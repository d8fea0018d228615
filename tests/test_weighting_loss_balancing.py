"""Loss-balancing methods: each paper's formula by hand, then through fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from mtk.weighting.loss_balancing import FAMO
from mtk.weighting.loss_balancing import DualBalancing
from mtk.weighting.loss_balancing import GeometricLossStrategy
from mtk.weighting.loss_balancing import RandomLossWeighting
from mtk.weighting.loss_balancing import SmoothTchebycheff
from testing import run_model_saving_test
from testing import run_python
from testing import run_serialization_test

HEADS = ["a", "b", "c"]


def _setup(weighting, heads=HEADS):
    weighting.setup(heads)
    return weighting


def _step(weighting, values):
    """``combine`` on constant losses: (objective, dObjective/dL, weights)."""
    losses = [tf.Variable(float(v)) for v in values]
    with tf.GradientTape() as tape:
        objective = weighting.combine(dict(zip(weighting.head_names, losses)))
    gradient = [0.0 if g is None else float(g) for g in tape.gradient(objective, losses)]
    weights = weighting.current_weights()
    return (float(objective), np.array(gradient),
            np.array([float(weights[n]) for n in weighting.head_names]))


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


# === Random Loss Weighting ===
@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_rlw_weights_are_a_softmax_of_stateless_draws(distribution):
    weighting = _setup(RandomLossWeighting(distribution=distribution, seed=7))
    draw = tf.random.stateless_normal if distribution == "normal" else (
        tf.random.stateless_uniform)
    values = np.array([1.0, 2.0, 4.0])
    seen = []
    for step in range(3):
        objective, gradient, weights = _step(weighting, values)
        expected = _softmax(draw((3,), seed=[7, step]).numpy().astype("float64"))
        np.testing.assert_allclose(weights, expected, rtol=1e-5)
        np.testing.assert_allclose(gradient, expected, rtol=1e-5)
        assert objective == pytest.approx(float(expected @ values), rel=1e-5)
        assert weights.sum() == pytest.approx(1.0, abs=1e-6)
        seen.append(weights)
    assert not np.allclose(seen[0], seen[1]) and not np.allclose(seen[1], seen[2])
    # The same seed repeats the sequence; another seed does not.
    again = _setup(RandomLossWeighting(distribution=distribution, seed=7))
    other = _setup(RandomLossWeighting(distribution=distribution, seed=8))
    np.testing.assert_allclose(_step(again, values)[2], seen[0], rtol=1e-6)
    assert not np.allclose(_step(other, values)[2], seen[0])


def test_rlw_seed_defaults_to_python_random_and_is_recorded():
    keras.utils.set_random_seed(3)
    first = RandomLossWeighting().seed
    keras.utils.set_random_seed(3)
    assert RandomLossWeighting().seed == first
    assert RandomLossWeighting(seed=5).get_config()["seed"] == 5


# === Geometric Loss Strategy ===
def test_gls_is_the_geometric_mean_of_the_losses():
    weighting = _setup(GeometricLossStrategy())
    values = np.array([0.5, 2.0, 4.0])
    objective, gradient, weights = _step(weighting, values)
    mean = np.prod(values) ** (1 / 3)
    assert objective == pytest.approx(mean, rel=1e-5)
    np.testing.assert_allclose(weights, mean / (3 * values), rtol=1e-5)
    np.testing.assert_allclose(gradient, weights, rtol=1e-5)
    # A head without labels (loss 0) is left out, not a zero product.
    objective, gradient, weights = _step(weighting, [0.0, 2.0, 8.0])
    assert objective == pytest.approx(4.0, rel=1e-5)
    np.testing.assert_allclose(weights, [0.0, 4.0 / (2 * 2.0), 4.0 / (2 * 8.0)], rtol=1e-5)
    np.testing.assert_allclose(gradient, weights, rtol=1e-5)


# === FAMO ===
def _famo_reference(loss_steps, lr, gamma, adam):
    """Algorithm 1 / the official code's update, in numpy (float64)."""
    eps = 1e-8
    xi, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    history = []
    previous = None
    for t, losses in enumerate(loss_steps):
        losses = np.asarray(losses, "float64")
        if previous is not None:
            z = _softmax(xi)
            change = np.log(previous + eps) - np.log(losses + eps)
            jacobian = np.diag(z) - np.outer(z, z)
            g = jacobian.T @ change + gamma * xi
            if adam:
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g**2
                m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
                xi = xi - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            else:
                xi = xi - lr * g
        z = _softmax(xi)
        c = 1.0 / np.sum(z / (losses + eps))
        history.append((xi.copy(), c * z / (losses + eps),
                        c * np.sum(z * np.log(losses + eps))))
        previous = losses
    return history


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_famo_updates_the_logits_from_consecutive_losses(optimizer):
    weighting = _setup(FAMO(learning_rate=0.5, weight_decay=0.1,
                            logits_optimizer=optimizer))
    steps = [[1.0, 2.0, 4.0], [0.5, 1.9, 3.0], [0.4, 1.5, 2.9], [0.39, 1.0, 2.0]]
    expected = _famo_reference(steps, lr=0.5, gamma=0.1, adam=optimizer == "adam")
    for losses, (xi, weights_ref, objective_ref) in zip(steps, expected):
        objective, gradient, weights = _step(weighting, losses)
        np.testing.assert_allclose(weighting.logits.numpy(), xi, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(weights, weights_ref, rtol=1e-4)
        np.testing.assert_allclose(gradient, weights, rtol=1e-4)
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)
        assert objective == pytest.approx(objective_ref, rel=1e-4)
    # Task a's loss fell fastest (x2.5), c's slowest: c gained weight.
    z = _softmax(weighting.logits.numpy())
    assert z[2] > z[1] > z[0]


def test_famo_first_step_sgd_update_by_hand():
    # One update of Algorithm 1 from xi = 0: xi = -lr * J^T delta.
    weighting = _setup(FAMO(learning_rate=0.1, logits_optimizer="sgd"))
    _step(weighting, [1.0, 1.0, 1.0])
    _step(weighting, [np.exp(-1.0), 1.0, 1.0])  # delta log L = (1, 0, 0)
    # z = 1/3; J^T delta = z * (delta - z . delta) = (2/9, -1/9, -1/9).
    np.testing.assert_allclose(
        weighting.logits.numpy(), [-0.1 * 2 / 9, 0.1 / 9, 0.1 / 9], rtol=1e-4)


def test_famo_leaves_out_heads_without_labels():
    weighting = _setup(FAMO())
    _step(weighting, [1.0, 2.0, 4.0])
    objective, gradient, weights = _step(weighting, [0.0, 2.0, 4.0])
    assert np.isfinite(objective) and np.all(np.isfinite(weighting.logits.numpy()))
    assert weights[0] == 0.0 and weights.sum() == pytest.approx(1.0, abs=1e-5)
    # No change of log-loss for a, none for b and c: xi stays 0 (Adam from 0).
    np.testing.assert_allclose(weighting.logits.numpy(), 0.0, atol=1e-7)


# === DB-MTL (loss-scale part) ===
def test_db_mtl_sums_log_losses():
    weighting = _setup(DualBalancing(epsilon=1e-3))
    values = np.array([0.01, 1.0, 100.0])
    objective, gradient, weights = _step(weighting, values)
    assert objective == pytest.approx(np.log(values + 1e-3).sum(), rel=1e-5)
    np.testing.assert_allclose(weights, 1 / (values + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(gradient, weights, rtol=1e-5)
    objective, gradient, weights = _step(weighting, [0.0, 1.0, 100.0])
    assert objective == pytest.approx(np.log([1.001, 100.001]).sum(), rel=1e-5)
    assert weights[0] == 0.0


# === Smooth Tchebycheff ===
def test_stch_warms_up_on_log_losses_then_smooths_the_max():
    weighting = _setup(SmoothTchebycheff(
        mu=0.5, warmup_epochs=1, preference={"a": 1.0, "b": 2.0, "c": 3.0}))
    # Epoch 1: sum_i log L_i, nothing measured.
    objective, gradient, weights = _step(weighting, [1.0, 2.0, 4.0])
    assert objective == pytest.approx(np.log(8.0), rel=1e-5)
    np.testing.assert_allclose(weights, [1.0, 0.5, 0.25], rtol=1e-5)
    np.testing.assert_allclose(gradient, weights, rtol=1e-5)
    weighting.end_epoch({"a": 1.0, "b": 2.0, "c": 4.0})
    # Epoch 2: still the log sum; measures each head's mean loss (a head
    # without labels in a step is left out of its mean).
    _step(weighting, [2.0, 4.0, 0.0])
    _step(weighting, [4.0, 8.0, 6.0])
    weighting.end_epoch({"a": 3.0, "b": 6.0, "c": 3.0})
    np.testing.assert_allclose(weighting.reference_losses.numpy(), [3.0, 6.0, 6.0])
    # Epoch 3 on: K mu log sum exp(lambda_i log(L_i / n_i) / mu), lambda mean 1.
    values = np.array([1.5, 9.0, 3.0])
    reference = np.array([3.0, 6.0, 6.0])
    lam = np.array([1.0, 2.0, 3.0]) / 2.0
    logits = lam * np.log(values / reference + 1e-20) / 0.5
    expected = 3 * 0.5 * np.log(np.exp(logits).sum())
    expected_weights = 3 * lam * _softmax(logits) / values
    objective, gradient, weights = _step(weighting, values)
    assert objective == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5)
    np.testing.assert_allclose(gradient, weights, rtol=1e-5)
    # As mu -> 0 it is the Tchebycheff max: all weight on the worst gap.
    sharp = _setup(SmoothTchebycheff(mu=1e-3, warmup_epochs=0))
    _step(sharp, [1.0, 1.0, 1.0])
    sharp.end_epoch({})
    objective, _, weights = _step(sharp, [0.5, 2.0, 1.0])
    assert objective == pytest.approx(3 * np.log(2.0), rel=1e-3)
    np.testing.assert_allclose(weights, [0.0, 3 / 2.0, 0.0], atol=1e-6)


def test_stch_preference_must_name_heads():
    with pytest.raises(ValueError, match=r"SmoothTchebycheff: preference names \['z'\]"):
        SmoothTchebycheff(preference={"z": 1.0}).setup(["a", "b"])


# === Through the public API ===
def _regression_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = rng.normal(size=(2, 4)).astype("float32")
    y = {f"t{i}": (x @ w[i]).astype("float32") for i in range(2)}
    y["t1"][::7] = np.nan  # missing labels: batches where t1 has few
    return x, y


METHODS = [
    lambda: RandomLossWeighting(seed=1),
    GeometricLossStrategy,
    FAMO,
    DualBalancing,
    lambda: SmoothTchebycheff(warmup_epochs=0),  # acts in epoch 2
]


@pytest.mark.parametrize("jit_compile", [
    False, pytest.param(True, marks=pytest.mark.slow)], ids=["graph", "xla"])
@pytest.mark.parametrize("make", METHODS, ids=["rlw", "gls", "famo", "db_mtl", "stch"])
def test_method_trains_and_round_trips_through_keras_files(make, jit_compile, tmp_path):
    keras.utils.set_random_seed(0)
    weighting = make()
    run_serialization_test(weighting)
    model = mtk.build_multitask_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")]),
        heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting=weighting, jit_compile=jit_compile)
    x, y = _regression_data()
    history = model.fit(x, y, epochs=2, verbose=0).history
    for head in ("t0", "t1"):
        assert np.all(np.isfinite(history[f"{head}_loss"]))
        assert np.all(np.isfinite(history[f"{head}_loss_weight"]))
    assert history["loss"][1] < history["loss"][0]
    state = {v.path: v.numpy() for v in weighting.weights}
    assert state and all(np.all(np.isfinite(s)) for s in state.values())
    if isinstance(weighting, (RandomLossWeighting, FAMO)):
        assert float(weighting.steps.numpy()) == 16  # 2 epochs of 8 steps
    if jit_compile:
        return
    loaded = run_model_saving_test(model, x, str(tmp_path / "m.keras"))
    assert type(loaded.loss_weighting) is type(weighting)
    assert loaded.loss_weighting.get_config() == weighting.get_config()
    for variable in loaded.loss_weighting.weights:
        np.testing.assert_array_equal(variable.numpy(), state[variable.path])


def test_rlw_logs_the_draw_of_the_last_step():
    keras.utils.set_random_seed(0)
    weighting = RandomLossWeighting(seed=11)
    model = mtk.build_multitask_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")]),
        heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting=weighting)
    x, y = _regression_data(n=64)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    expected = _softmax(tf.random.stateless_normal((2,), seed=[11, 1]).numpy())
    np.testing.assert_allclose(
        [history["t0_loss_weight"][0], history["t1_loss_weight"][0]], expected, rtol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: RandomLossWeighting(distribution="cauchy"),
     r"RandomLossWeighting: distribution must be one of \['normal', 'uniform'\]"),
    (lambda: RandomLossWeighting(seed=-1), "RandomLossWeighting: seed must be an integer >= 0"),
    (lambda: RandomLossWeighting(seed=1.5), "RandomLossWeighting: seed must be an integer"),
    (lambda: FAMO(learning_rate=0), "FAMO: learning_rate must be a finite number > 0"),
    (lambda: FAMO(weight_decay=-1e-3), "FAMO: weight_decay must be a finite number >= 0"),
    (lambda: FAMO(logits_optimizer="rmsprop"), "FAMO: logits_optimizer must be one of"),
    (lambda: DualBalancing(epsilon=0.0), "DualBalancing: epsilon must be a finite number > 0"),
    (lambda: SmoothTchebycheff(mu=float("nan")),
     "SmoothTchebycheff: mu must be a finite number > 0"),
    (lambda: SmoothTchebycheff(warmup_epochs=1.0),
     "SmoothTchebycheff: warmup_epochs must be an integer >= 0"),
    (lambda: SmoothTchebycheff(preference={"a": 0.0}),
     r"SmoothTchebycheff: preference\['a'\] must be a finite number > 0"),
    (lambda: SmoothTchebycheff(preference=[1.0, 2.0]),
     "SmoothTchebycheff: preference must be a dict"),
])
def test_bad_parameters_name_the_class_and_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_method_names():
    assert [cls.method for cls in (RandomLossWeighting, GeometricLossStrategy, FAMO,
                                   DualBalancing, SmoothTchebycheff)] == [
        "rlw", "gls", "famo", "db_mtl", "stch"]


@pytest.mark.slow
def test_methods_train_identically_on_two_replicas(tmp_path):
    """MirroredStrategy on two logical CPUs: same state as one device."""
    result = run_python("""
        import keras, numpy as np, tensorflow as tf, mtk
        from mtk.weighting import loss_balancing as lb

        rng = np.random.default_rng(0)
        x = rng.normal(size=(128, 4)).astype("float32")
        y = {"t0": x @ rng.normal(size=4).astype("float32"),
             "t1": x @ rng.normal(size=4).astype("float32")}
        y["t1"][:40] = np.nan  # uneven missing labels per replica
        makers = {
            "rlw": lambda: lb.RandomLossWeighting(seed=3),
            "gls": lb.GeometricLossStrategy,
            "famo": lb.FAMO,
            "db_mtl": lb.DualBalancing,
            "stch": lambda: lb.SmoothTchebycheff(warmup_epochs=0),
        }

        def train(name, strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
            model = mtk.build_multitask_model(
                trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
                freeze_trunk=False, loss_weighting=makers[name](), strategy=strategy,
                optimizer=keras.optimizers.SGD(0.05))
            dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
            model.fit(dataset, epochs=2, verbose=0)
            return [v.numpy().tolist() for v in model.loss_weighting.weights]

        one = tf.distribute.get_strategy()
        two = mtk.distribute.get_strategy(
            "mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False)
        report({name: [train(name, one), train(name, two)] for name in makers})
    """, tmp_path, logical_cpus=2)
    for name, (one, two) in result.items():
        for a, b in zip(one, two):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)
