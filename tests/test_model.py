"""MultiTaskModel: the one model class and the training step all methods share."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from conftest import as_dataset
from conftest import four_heads
from conftest import image_batch
from conftest import small_cnn
from mtk.weighting import dwa_weights
from testing import run_python
from testing import run_serialization_test

METHODS = mtk.weighting.METHODS


def _pair_data(n=64, seed=0):
    """Two regression targets on very different scales, some labels missing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = {"small": (x.sum(1) * 0.1).astype("float32"),
         "large": (10 * x[:, 0] + x[:, 1] ** 2).astype("float32")}
    return x, y


def _pair_model(method, **kwargs):
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(16, activation="relu")], name="trunk")
    kwargs.setdefault("optimizer", keras.optimizers.SGD(0.05))
    return mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("small"), mtk.heads.Regression("large")],
        freeze_trunk=False, loss_weighting=method, **kwargs)


def test_the_builder_always_returns_one_class(tiny_model):
    assert type(tiny_model) is mtk.MultiTaskModel
    assert tiny_model.trunk is tiny_model.get_layer("trunk")
    assert list(tiny_model.heads) == ["item", "flag", "tags", "price"]
    assert all(tiny_model.heads[n] is tiny_model.get_layer(n) for n in tiny_model.heads)
    assert isinstance(tiny_model.loss_weighting, mtk.weighting.StaticWeighting)


def test_config_holds_the_constructor_arguments(tiny_model):
    config = tiny_model.get_config()
    assert {"trunk", "heads", "input_shape", "input_dtype", "input_name",
            "preprocessing", "loss_weighting", "sharing"} <= set(config)
    assert "layers" not in config  # not revived as a generic functional graph
    revived = run_serialization_test(tiny_model)
    assert list(revived.heads) == list(tiny_model.heads)
    assert revived.heads["item"].class_names == list("abcd")


def test_compile_takes_head_losses_and_default_metrics():
    model = _pair_model("static", compile=False)
    model.compile(optimizer="adam")  # plain Keras compile works
    x, y = _pair_data()
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "small_loss", "large_loss", "small_mae", "large_mae"} <= set(logs)
    with pytest.raises(ValueError, match="takes no loss: each head carries its own"):
        model.compile(optimizer="adam", loss="mse")


@pytest.mark.parametrize("method, loss_weights", [
    ("static", {"small": 3.0, "large": 0.5}), ("uncertainty", None), ("pcgrad", None)])
def test_loss_and_val_loss_mean_the_same_for_every_method(method, loss_weights):
    model = _pair_model(method, loss_weights=loss_weights)
    x, y = _pair_data()
    history = model.fit(x, y, batch_size=64, epochs=1, verbose=0,
                        validation_data=(x, y)).history
    weights = loss_weights or {"small": 1.0, "large": 1.0}
    for prefix in ("", "val_"):
        expected = sum(weights[h] * history[f"{prefix}{h}_loss"][0] for h in weights)
        assert history[f"{prefix}loss"][0] == pytest.approx(expected, rel=1e-5)


def test_dwa_continues_its_history_into_fine_tuning():
    x, y = _pair_data(n=256)
    model = _pair_model("dwa")
    history = mtk.fit_transfer(model, x, y=y, batch_size=32, frozen_epochs=2,
                               finetune_epochs=2, finetune_learning_rate=0.01,
                               verbose=0).history
    for epoch in (2, 3):  # phase 2's epochs weigh by phase 1's (and 2's) losses
        expected = dwa_weights(
            [history["small_loss"][epoch - 1], history["large_loss"][epoch - 1]],
            [history["small_loss"][epoch - 2], history["large_loss"][epoch - 2]])
        got = [history["small_loss_weight"][epoch], history["large_loss_weight"][epoch]]
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # A restart of the history would give weights of 1 at epoch 2.
    assert abs(history["small_loss_weight"][2] - 1.0) > 1e-3


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


@pytest.mark.parametrize("method", ["uncertainty", "dwa"])
def test_weighting_state_is_backed_up_and_restored(method, tmp_path):
    x, y = _pair_data(n=128)
    whole = _pair_model(method)
    whole.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False)

    resumed = _pair_model(method)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        resumed.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False,
                    callbacks=[backup, _Interrupt(2)])
    resumed = _pair_model(method)  # a new process would rebuild the model
    resumed.fit(x, y, batch_size=32, epochs=4, verbose=0, shuffle=False,
                callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(whole.loss_weighting.weights, resumed.loss_weighting.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    if whole.loss_weighting.optimizer is not None:
        assert int(resumed.loss_weighting.optimizer.iterations) == 16


@pytest.mark.parametrize("method", ["static", "uncertainty", "gradnorm", "pcgrad"])
def test_jit_compile_gives_the_same_step(method):
    x, y = _pair_data()
    results = []
    for jit in (False, True):
        model = _pair_model(method, jit_compile=jit)
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _trained_variables(model):
    return model.trainable_weights + list(model.loss_weighting.learned_variables)


@pytest.mark.slow
def test_mixed_float16_updates_match_float32():
    """Every method's first update under mixed_float16 is within 1 % of float32's.

    A step that forgot the loss scale would apply gradients 1/256 the size
    (the scale below); one that mixed dtypes would fail to trace. Keras'
    default initial scale (32768) overflows float16 on this step, and the
    optimizer rightly skips it, so the test starts at 256.
    """
    x, y = _pair_data(n=64)
    relative = {}
    for method in METHODS:
        updates = []
        for policy in ("float32", "mixed_float16"):
            keras.mixed_precision.set_global_policy(policy)
            try:
                optimizer = keras.optimizers.SGD(0.05)
                if policy == "mixed_float16":
                    optimizer = keras.optimizers.LossScaleOptimizer(
                        optimizer, initial_scale=2.0 ** 8)
                model = _pair_model(method, optimizer=optimizer)
                before = [v.numpy().copy() for v in _trained_variables(model)]
                model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
                assert int(model.optimizer.iterations) == 1  # not skipped
                updates.append(np.concatenate(
                    [(v.numpy() - b).ravel()
                     for v, b in zip(_trained_variables(model), before)]))
            finally:
                keras.mixed_precision.set_global_policy("float32")
        reference, mixed = updates
        relative[method] = np.linalg.norm(mixed - reference) / np.linalg.norm(reference)
    assert all(np.isfinite(list(relative.values())))
    assert max(relative.values()) < 0.01, relative


REPLICA_SCRIPT = """
import keras, numpy as np, tensorflow as tf, mtk

def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = {"small": (0.1 * x.sum(1)).astype("float32"),
         "large": (10 * x[:, 0]).astype("float32")}
    # Unequal missing labels per replica: replica 0 gets examples 0-7.
    y["small"][[0, 1, 2, 3, 4, 5]] = np.nan
    y["large"][[9, 10, 11]] = np.nan
    return x, y

def step(method, strategy):
    method = method() if callable(method) else method
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trunk = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu")], name="trunk")
    model = mtk.build_multitask_model(
        trunk, heads=[mtk.heads.Regression("small"), mtk.heads.Regression("large")],
        freeze_trunk=False, loss_weighting=method, strategy=strategy,
        optimizer=keras.optimizers.SGD(0.1))
    before = [w.copy() for w in model.get_weights()]
    x, y = data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    logs = model.fit(ds, epochs=1, verbose=0).history
    update = [(a - b).tolist() for a, b in zip(model.get_weights(), before)]
    return {"logs": {k: v[0] for k, v in logs.items()}, "update": update}

mirrored = mtk.distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False)
# The builder's default optimizer (Adam, by name) under a strategy, with
# fit called outside the strategy's scope, as the README shows.
keras.utils.set_random_seed(0)
with mirrored.scope():
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)], name="trunk")
default = mtk.build_multitask_model(
    trunk, heads=[mtk.heads.Regression("small"), mtk.heads.Regression("large")],
    freeze_trunk=False, strategy=mirrored)
x, y = data()
default_loss = default.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"][0]

methods = {m: m for m in mtk.weighting.METHODS}
methods["pcgrad_rep"] = lambda: mtk.weighting.PCGrad(rep_grad=True)
report({"default_optimizer_loss": default_loss,
        "methods": {name: {"one": step(method, tf.distribute.get_strategy()),
                           "two": step(method, mirrored)}
                    for name, method in methods.items()}})
"""


@pytest.mark.slow
def test_one_and_two_replicas_give_the_same_loss_and_update(tmp_path):
    results = run_python(REPLICA_SCRIPT, tmp_path, logical_cpus=2)
    # The labels really are unequal per replica: averaging per-replica means
    # would give another loss than the global mean.
    small = np.array([np.nan] * 6 + [1.0] * 10)
    assert np.isnan(small[:8]).sum() != np.isnan(small[8:]).sum()
    assert np.isfinite(results["default_optimizer_loss"])
    for method, runs in results["methods"].items():
        one, two = runs["one"], runs["two"]
        for key, value in one["logs"].items():
            assert two["logs"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (method, key)
        for a, b in zip(one["update"], two["update"]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=method)
        assert max(np.abs(np.array(u)).max() for u in one["update"]) > 1e-3, method


def test_per_replica_means_would_differ_on_the_replica_test_batch():
    """Guards the test above: on its batch the two averages disagree."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = 0.1 * x.sum(1)
    present = np.ones(16, bool)
    present[:6] = False
    error = (y - 0.5) ** 2  # any prediction
    global_mean = error[present].mean()
    per_replica = np.mean([error[:8][present[:8]].mean(), error[8:][present[8:]].mean()])
    assert abs(global_mean - per_replica) > 0.01 * global_mean


def test_a_model_trains_with_its_own_trunk_and_loads_back(tmp_path):
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(small_cnn(), trunk_weights=None,
                                      heads=four_heads(), freeze_trunk=False)
    x, y = image_batch(16)
    model.fit(as_dataset(x, y), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is mtk.MultiTaskModel
    assert json.dumps(loaded.get_config(), sort_keys=True, default=str) == json.dumps(
        model.get_config(), sort_keys=True, default=str)


@pytest.mark.parametrize("head, bad", [
    (lambda: mtk.heads.Classification("item", num_classes=3), 7),
    (lambda: mtk.heads.Binary("item"), 2.0),
    (lambda: mtk.heads.Regression("item"), np.inf),
])
def test_a_later_batch_that_breaks_a_label_contract_stops_the_step(head, bad):
    """The up-front checks read the first batch; the step guards the rest."""
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)], name="trunk")
    model = mtk.build_multitask_model(trunk, heads=[head(), mtk.heads.Regression("other")],
                                      freeze_trunk=False, optimizer=keras.optimizers.SGD(0.1))
    x = np.ones((16, 4), "float32")
    labels = np.zeros(16, "float32")
    labels[12] = bad  # in the second batch of 8
    y = {"item": labels, "other": np.zeros(16, "float32")}
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    mtk.check_training_data(model, ds.take(1))  # the first batch is fine
    after_first = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: after_first.append(model.get_weights()))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"Head item \({type(model.heads['item']).__name__}\): "
                             "a label in this batch breaks the contract of the head"):
        model.fit(ds, epochs=1, verbose=0, callbacks=[record])
    assert len(after_first) == 1
    for a, b in zip(after_first[0], model.get_weights()):  # no update from the bad batch
        np.testing.assert_array_equal(a, b)
