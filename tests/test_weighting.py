import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from conftest import as_dataset
from conftest import four_heads
from conftest import image_batch
from conftest import small_cnn
from testing import run_model_saving_test
from testing import run_python
from mtk.weighting import dwa_weights
from mtk.weighting import project_conflicting


def test_pcgrad_projection_is_analytic():
    g = tf.constant([[1.0, 0.0], [-1.0, 1.0]])
    # g1 . g2 = -1: g1' = g1 - (-1/2) g2 = (0.5, 0.5); g2' = g2 - (-1/1) g1 = (0, 1).
    for shuffle in (False, True):
        np.testing.assert_allclose(
            project_conflicting(g, shuffle=shuffle), [[0.5, 0.5], [0.0, 1.0]], atol=1e-6)
    # Gradients that do not conflict pass unchanged.
    agree = tf.constant([[1.0, 2.0], [0.5, 0.1], [3.0, -1.0]])
    np.testing.assert_allclose(project_conflicting(agree), agree, atol=1e-6)


def test_pcgrad_projected_gradients_no_longer_conflict():
    g = tf.random.stateless_normal((4, 10), seed=(1, 2))
    projected = project_conflicting(g, shuffle=False).numpy()
    # Each task's final projection is off the last task it was projected on,
    # and never points against its own original gradient.
    for i in range(4):
        assert np.dot(projected[i], g.numpy()[i]) > 0


def test_dwa_weights_follow_the_formula():
    previous, before = [0.5, 0.9, 0.2], [1.0, 1.0, 0.1]
    r = np.array(previous) / np.array(before)
    expected = 3 * np.exp(r / 2.0) / np.exp(r / 2.0).sum()
    np.testing.assert_allclose(dwa_weights(previous, before, 2.0), expected, rtol=1e-9)
    assert sum(dwa_weights([1, 2], [3, 4], temperature=0.5)) == pytest.approx(2.0)


def _regression_data(scales=(1.0, 1.0), noise=(0.0, 0.0), n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    w = rng.normal(size=(2, 4)).astype("float32")
    y = {f"t{i}": (scales[i] * x @ w[i] + rng.normal(scale=noise[i], size=n)).astype("float32")
         for i in range(2)}
    return x, y


def _regression_model(loss_weighting, **kwargs):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, activation="relu")])
    return mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting=loss_weighting, **kwargs)


def test_dwa_weights_come_from_the_logged_losses():
    x, y = _regression_data()
    model = _regression_model("dwa")
    history = model.fit(x, y, batch_size=64, epochs=4, verbose=0).history
    assert history["t0_loss_weight"][:2] == [1.0, 1.0]
    for epoch in (2, 3):
        expected = dwa_weights([history["t0_loss"][epoch - 1], history["t1_loss"][epoch - 1]],
                               [history["t0_loss"][epoch - 2], history["t1_loss"][epoch - 2]])
        got = [history["t0_loss_weight"][epoch], history["t1_loss_weight"][epoch]]
        np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.slow
def test_uncertainty_learns_the_noise_levels_at_the_default_learning_rate():
    x, y = _regression_data(noise=(0.1, 1.0), n=4096)
    model = _regression_model("uncertainty")  # the builder's default lr, 1e-3
    model.fit(x, y, batch_size=64, epochs=7, verbose=0)  # 448 steps
    s = model.loss_weighting.log_variances.numpy()
    losses = model.evaluate(x, y, batch_size=512, verbose=0, return_dict=True)
    # The optimum of exp(-s) L + s is s = log(L): the noisier task gets the
    # larger log-variance, and exp(s1 - s0) = L1 / L0 at the optimum.
    assert s[1] > s[0]
    learned = np.exp(s[1] - s[0])
    optimum = losses["t1_loss"] / losses["t0_loss"]
    assert optimum > 10  # the tasks' noise differs 10x (losses ~100x)
    assert optimum / 2 < learned < optimum * 2, (learned, optimum)


def test_uncertainty_keeps_adapting_while_fine_tuning():
    x, y = _regression_data(noise=(0.1, 1.0), n=1024)
    model = _regression_model("uncertainty")
    mtk.recompile(model, learning_rate=1e-5)  # fit_transfer's phase 2 rate
    before = model.loss_weighting.log_variances.numpy().copy()
    model.fit(x, y, batch_size=64, epochs=4, verbose=0)  # 64 steps
    moved = np.abs(model.loss_weighting.log_variances.numpy() - before).max()
    # At the model's 1e-5, Adam moves a parameter at most ~64 * 1e-5.
    assert moved > 0.3


@pytest.mark.slow
def test_gradnorm_balances_very_different_loss_scales():
    x, y = _regression_data(scales=(1.0, 30.0))
    model = _regression_model(mtk.weighting.GradNorm(alpha=0.5, learning_rate=0.05))
    history = model.fit(x, y, batch_size=64, epochs=5, verbose=0).history
    w0, w1 = history["t0_loss_weight"][-1], history["t1_loss_weight"][-1]
    # The large-scale task's gradients dominate: GradNorm shrinks its weight.
    assert w0 > 1.0 > w1
    assert w0 + w1 == pytest.approx(2.0, rel=1e-4)


# One method per kind of state a method keeps beside the graph: none, learned
# variables with their own optimizer, epoch-end history, a features view,
# Gramian weights, assigned state, features-level gradients. Serving traces
# model.call only; every method's training and .keras round trip is tested
# in its family's file (tests/test_weighting_*.py).
STATE_KINDS = ["static", "uncertainty", "dwa", "gradnorm", "pcgrad", "famo", "upgrad",
               "graddrop"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("method", STATE_KINDS)
def test_methods_train_save_load_and_serve_heads_only(method, tmp_path):
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        small_cnn(), trunk_weights=None, heads=four_heads(), loss_weighting=method)
    assert isinstance(model, mtk.MultiTaskModel)
    assert model.loss_weighting.method == method
    x, y = image_batch(16)
    history = mtk.fit_transfer(model, as_dataset(x, y), frozen_epochs=1,
                               finetune_epochs=1, verbose=0)
    for head in ("item", "flag", "tags", "price"):
        assert np.all(np.isfinite(history.history[f"{head}_loss"]))
        logged = history.history.get(f"{head}_loss_weight")
        assert (logged is None) == (method == "static")
    loaded = run_model_saving_test(model, x, str(tmp_path / f"{method}.keras"))
    assert type(loaded.loss_weighting) is type(model.loss_weighting)
    for a, b in zip(model.loss_weighting.weights, loaded.loss_weighting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The loaded model trains on (its compile config and state came back).
    loaded.fit(as_dataset(x, y), epochs=1, verbose=0)
    # The weighting is state beside the graph, not an output, also when served.
    assert sorted(loaded.output_names) == ["flag", "item", "price", "tags"]
    served = tf.saved_model.load(mtk.export_saved_model(model, str(tmp_path / "serving")))
    outputs = served.signatures["serving_default"](inputs=tf.constant(x[:2]))
    assert sorted(outputs) == ["flag", "item", "item_class_id", "item_class_name", "price", "tags"]
    interpreter = tf.lite.Interpreter(
        model_path=mtk.export_tflite(model, str(tmp_path / "m.tflite")))
    assert interpreter.get_signature_list()["serving_default"]["outputs"] == sorted(outputs)


def test_pcgrad_step_applies_the_projected_trunk_gradient():
    x, y = _regression_data(n=64)
    y["t1"] = -y["t0"]  # conflicting tasks
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    model = mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting="pcgrad", optimizer=keras.optimizers.SGD(0.1))
    shared = model.get_layer("trunk").trainable_weights
    before = [v.numpy().copy() for v in shared]
    per_task = []
    for name in ("t0", "t1"):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)[name]
            loss = mtk.heads.heads_of(model)[name].get_loss()(y[name], pred)
        per_task.append(tf.concat([tf.reshape(g, [-1]) for g in tape.gradient(loss, shared)], 0))
    per_task = tf.stack(per_task)
    assert float(tf.reduce_sum(per_task[0] * per_task[1])) < 0  # they do conflict
    expected = tf.reduce_sum(project_conflicting(per_task, shuffle=False), 0).numpy()
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    step = np.concatenate([(b - v.numpy()).ravel() for b, v in zip(before, shared)]) / 0.1
    np.testing.assert_allclose(step, expected, rtol=1e-4, atol=1e-6)
    # The plain sum would differ: the projection changed the update.
    assert not np.allclose(step, tf.reduce_sum(per_task, 0).numpy(), atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss_weighting="softmax"), "Unknown loss_weighting 'softmax'"),
    (dict(loss_weighting="uncertainty", heads=[mtk.heads.Binary("only")]),
     r"balances several tasks; the model has 1 head\(s\)"),
    (dict(loss_weighting=mtk.weighting.GradNorm(shared_layer="nope")),
     r"GradNorm\(shared_layer='nope'\) names no \(non-nested\) layer of the model"),
    (dict(loss_weighting="dwa", loss_weights={"a": 2.0}),
     r"loss_weights fixes each head's weight, but loss_weighting='dwa' sets the weights itself"),
])
def test_bad_weighting_arguments(kwargs, message):
    kwargs.setdefault("heads", [mtk.heads.Binary("a"), mtk.heads.Regression("b")])
    with pytest.raises(ValueError, match=message):
        mtk.build_multitask_model(small_cnn(), **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: mtk.weighting.DynamicWeightAverage(temperature=0),
     "DynamicWeightAverage: temperature must be a finite number > 0, got 0"),
    (lambda: mtk.weighting.UncertaintyWeighting(learning_rate=float("inf")),
     "UncertaintyWeighting: learning_rate must be a finite number > 0, got inf"),
    (lambda: mtk.weighting.GradNorm(alpha=-1.0), "GradNorm: alpha must be a finite number >= 0"),
])
def test_bad_method_parameters_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_weighting_object_serves_one_model():
    weighting = mtk.weighting.UncertaintyWeighting()
    _regression_model(weighting)
    with pytest.raises(ValueError, match="already belongs to a model"):
        _regression_model(weighting)


def test_pcgrad_coefficients_reproduce_the_projection():
    g = tf.random.stateless_normal((4, 7), seed=(3, 4))
    coefficients = mtk.weighting.gradient_level.pcgrad_coefficients(
        tf.matmul(g, g, transpose_b=True), shuffle=False)
    # The reference: Algorithm 1 on explicit vectors, in task order.
    expected = []
    for i in range(4):
        gi = g.numpy()[i].copy()
        for j in range(4):
            gj = g.numpy()[j]
            if j != i and gi @ gj < 0:
                gi -= (gi @ gj) / (gj @ gj) * gj
        expected.append(gi)
    np.testing.assert_allclose(coefficients.numpy() @ g.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_rep_grad_moves_the_trunk_along_the_features_direction():
    x, y = _regression_data(n=64)
    y["t1"] = -y["t0"]  # conflicting tasks
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    model = mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting=mtk.weighting.PCGrad(rep_grad=True, shuffle=False),
        optimizer=keras.optimizers.SGD(0.1))
    shared = model.get_layer("trunk").trainable_weights
    before = [v.numpy().copy() for v in shared]
    heads = mtk.heads.heads_of(model)
    with tf.GradientTape(persistent=True) as tape:
        features = trunk(x)
        losses = [heads[n].get_loss()(y[n], heads[n](features)) for n in ("t0", "t1")]
    rows = [tf.reshape(tape.gradient(loss, features), [-1]) for loss in losses]
    gramian = tf.matmul(tf.stack(rows), tf.stack(rows), transpose_b=True)
    assert float(gramian[0, 1]) < 0  # the tasks conflict at the features
    weights = tf.reduce_sum(
        mtk.weighting.gradient_level.pcgrad_coefficients(gramian, shuffle=False), 0)
    per_task = [tape.gradient(loss, shared) for loss in losses]
    expected = [weights[0] * a + weights[1] * b for a, b in zip(*per_task)]
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    for b, v, e in zip(before, shared, expected):
        np.testing.assert_allclose((b - v.numpy()) / 0.1, e.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.loss_weighting.last_weights.numpy(), weights, rtol=1e-5)


def test_compare_reports_each_method_against_the_baseline(capsys):
    x, y = _regression_data(scales=(1.0, 10.0), n=128)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    built = []

    def make_model(loss_weighting):
        built.append(loss_weighting)
        return _regression_model(loss_weighting)

    rows = mtk.weighting.compare(
        make_model, ds, ds, ["static", lambda: mtk.weighting.PCGrad(rep_grad=True)],
        seeds=2, epochs=2)
    assert [row["method"] for row in rows] == ["static", "pcgrad"]
    assert len(built) == 4 and isinstance(built[1], mtk.weighting.PCGrad)
    static, pcgrad = rows
    assert static["Δm vs static (%)"] == "+0.00 ± 0.00"
    assert static["step / static"] == "1.00 ± 0.00×"
    # Δm is paired per seed: recompute it from the stored runs.
    deltas = [mtk.evaluation.delta_m(p["metrics"], s["metrics"], False)
              for p, s in zip(pcgrad["runs"], static["runs"])]
    assert pcgrad["Δm vs static (%)"].startswith(f"{np.mean(deltas):+.2f} ± ")
    assert sorted(pcgrad["runs"][0]["metrics"]) == ["t0", "t1"]
    assert "| pcgrad" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods=["static", "softmax"]), "Unknown loss_weighting 'softmax'"),
    (dict(methods=["static"], epochs=1), "epochs must be an integer >= 2"),
    (dict(methods=["static"], baseline="dwa"), r"baseline 'dwa' is not among \['static'\]"),
    (dict(methods=["static", "static"]), "labels must be distinct"),
])
def test_compare_refuses_bad_arguments_before_training(kwargs, message):
    def make_model(loss_weighting):
        raise AssertionError("trained despite bad arguments")

    with pytest.raises(ValueError, match=message):
        mtk.weighting.compare(make_model, None, None, **kwargs)


def test_gradient_methods_warn_on_a_frozen_trunk_except_in_fit_transfer_phase_1():
    x, y = _regression_data(n=32)
    model = _regression_model("upgrad")
    mtk.freeze_trunk(model)
    mtk.recompile(model)
    with pytest.warns(UserWarning, match="UPGrad balances .* the trunk is frozen"):
        model.fit(x, y, epochs=1, verbose=0)
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*trunk is frozen")
        mtk.fit_transfer(model, x, y=y, frozen_epochs=1, finetune_epochs=1, verbose=0)


def test_static_weighting_takes_fixed_weights_that_compile_overrides():
    x, y = _regression_data(n=32)
    model = _regression_model(mtk.weighting.StaticWeighting(loss_weights={"t1": 3.0}))
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["t0_loss"] + 3.0 * logs["t1_loss"], rel=1e-5)
    assert model.get_compile_config()["loss_weights"] == {"t0": 1.0, "t1": 3.0}
    mtk.compile_multitask(model, loss_weights={"t0": 2.0})
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(2.0 * logs["t0_loss"] + logs["t1_loss"], rel=1e-5)
    with pytest.raises(ValueError, match=r"loss_weights names head\(s\) \['t9'\]"):
        _regression_model(mtk.weighting.StaticWeighting(loss_weights={"t9": 1.0}))
