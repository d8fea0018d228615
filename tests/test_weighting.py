import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from conftest import as_dataset
from conftest import assert_save_load_roundtrip
from conftest import four_heads
from conftest import image_batch
from conftest import small_cnn
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


def _regression_model(loss_weighting, learning_rate=0.01):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(32, activation="relu")])
    return mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting=loss_weighting, learning_rate=learning_rate)


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
def test_uncertainty_learns_the_noise_levels():
    x, y = _regression_data(noise=(0.1, 1.0))
    model = _regression_model("uncertainty", learning_rate=0.03)
    model.fit(x, y, batch_size=64, epochs=40, verbose=0)
    s = model.loss_weighting.log_variances.numpy()
    # The optimum of exp(-s) L + s is s = log(L): the noisier task gets the
    # larger log-variance, about log(1.0**2 / 0.1**2) = 4.6 apart.
    assert s[1] > s[0]
    assert 2.0 < s[1] - s[0] < 6.0


@pytest.mark.slow
def test_gradnorm_balances_very_different_loss_scales():
    x, y = _regression_data(scales=(1.0, 30.0))
    model = _regression_model(mtk.weighting.GradNorm(alpha=0.5, learning_rate=0.05))
    history = model.fit(x, y, batch_size=64, epochs=5, verbose=0).history
    w0, w1 = history["t0_loss_weight"][-1], history["t1_loss_weight"][-1]
    # The large-scale task's gradients dominate: GradNorm shrinks its weight.
    assert w0 > 1.0 > w1
    assert w0 + w1 == pytest.approx(2.0, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["uncertainty", "dwa", "gradnorm", "pcgrad"])
def test_dynamic_weighting_trains_saves_and_loads(method, tmp_path):
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        small_cnn(), trunk_weights=None, heads=four_heads(), loss_weighting=method)
    assert isinstance(model, mtk.weighting.MultiTaskModel)
    x, y = image_batch(16)
    history = mtk.fit_transfer(model, as_dataset(x, y), frozen_epochs=1,
                               finetune_epochs=1, verbose=0)
    for head in ("item", "flag", "tags", "price"):
        assert len(history.history[f"{head}_loss_weight"]) == 2
        assert np.all(np.isfinite(history.history[f"{head}_loss"]))
    loaded = assert_save_load_roundtrip(model, x, str(tmp_path / f"{method}.keras"))
    assert type(loaded.loss_weighting) is type(model.loss_weighting)
    for a, b in zip(model.loss_weighting.weights, loaded.loss_weighting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The weighting is state beside the graph, not an output, also when served.
    assert sorted(loaded.output_names) == ["flag", "item", "price", "tags"]
    served = tf.saved_model.load(mtk.export_saved_model(model, str(tmp_path / "serving")))
    outputs = served.signatures["serving_default"](inputs=tf.constant(x[:2]))
    assert sorted(outputs) == ["flag", "item", "item_class_id", "item_class_name", "price", "tags"]


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
     r"no \(non-nested\) layer named 'nope'.*GradNorm\(shared_layer=...\)"),
])
def test_bad_weighting_arguments(kwargs, message):
    kwargs.setdefault("heads", [mtk.heads.Binary("a"), mtk.heads.Regression("b")])
    with pytest.raises(ValueError, match=message):
        mtk.build_multitask_model(small_cnn(), **kwargs)


_MIRRORED_SCRIPT = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np, mtk
strategy = mtk.distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False)
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = {"t0": x.sum(1), "t1": 10 * x[:, 0]}
results = {}
for method in ("uncertainty", "dwa", "gradnorm", "pcgrad"):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu")])
    model = mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("t0"), mtk.heads.Regression("t1")],
        freeze_trunk=False, loss_weighting=method, strategy=strategy)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(ds, epochs=3, verbose=0).history
    results[method] = {k: [float(v) for v in vs] for k, vs in history.items()}
json.dump(results, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_dynamic_weighting_trains_under_mirrored_strategy(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "history.json"
    script = tmp_path / "mirrored_weighting.py"
    script.write_text(_MIRRORED_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    histories = json.loads(out.read_text())
    for method, history in histories.items():
        assert np.all(np.isfinite(history["loss"])), method
        assert history["loss"][-1] < history["loss"][0], method
        assert len(history["t0_loss_weight"]) == 3, method
    # DWA's weights come from the epoch losses, as on one device.
    dwa = histories["dwa"]
    np.testing.assert_allclose(
        [dwa["t0_loss_weight"][2], dwa["t1_loss_weight"][2]],
        dwa_weights([dwa["t0_loss"][1], dwa["t1_loss"][1]],
                    [dwa["t0_loss"][0], dwa["t1_loss"][0]]), rtol=1e-5)
