"""Tests of mtk.adaptation and mtk.layers.GradientReversal: the papers'
formulas on hand-made cases, training (fit, fit_transfer, balancing methods,
MirroredStrategy), saving and serving, and bad input."""

import math
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import run_model_saving_test
from testing import run_python
from testing import run_serialization_test

import mtk
from mtk.adaptation import CORAL
from mtk.adaptation import DANN
from mtk.adaptation import MMD

FEATURES = 6


def dense_trunk():
    return keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(8, activation="relu", name="d1")],
        name="source")


def heads():
    return [mtk.heads.Classification("item", num_classes=3),
            mtk.heads.Regression("price")]


def build(adaptation, loss_weighting="static", optimizer=None, **kwargs):
    keras.utils.set_random_seed(0)
    return mtk.build_multitask_model(
        dense_trunk(), heads=heads(), trunk_weights=None, freeze_trunk=False,
        adaptation=adaptation, loss_weighting=loss_weighting,
        optimizer=optimizer or keras.optimizers.SGD(0.1), **kwargs)


def data(n=16, seed=0, target_from=8):
    """Source rows (labelled, domain 0) then target rows (unlabelled, shifted,
    domain 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    x[target_from:] = 2.0 * x[target_from:] + 1.0
    y = {"item": rng.integers(0, 3, n), "price": rng.normal(size=n).astype("float32"),
         "domain": (np.arange(n) >= target_from).astype("int64")}
    y["item"][target_from:] = -1
    y["price"][target_from:] = np.nan
    return x, y


def trunk_weights(model):
    return np.concatenate([w.numpy().ravel() for w in model.trunk.weights])


# === Formulas on hand-made cases ===


def test_gradient_reversal_gradient_is_minus_lambda_times_upstream():
    layer = mtk.layers.GradientReversal(lambda_=0.3)
    x = tf.constant([[1.0, -2.0, 3.0]])
    upstream = tf.constant([[0.5, 4.0, -1.0]])

    @tf.function
    def forward_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return y, tape.gradient(y, x, output_gradients=upstream)

    y, gradient = forward_and_gradient(x)
    np.testing.assert_array_equal(y, x)  # identity forward
    np.testing.assert_allclose(gradient, -0.3 * upstream.numpy(), rtol=1e-6)
    # Set during training: the same traced function reads the new value.
    layer.set_lambda(2.0)
    _, gradient = forward_and_gradient(x)
    np.testing.assert_allclose(gradient, -2.0 * upstream.numpy(), rtol=1e-6)
    assert forward_and_gradient.experimental_get_tracing_count() == 1
    revived = run_serialization_test(mtk.layers.GradientReversal(lambda_=0.3))
    assert float(revived.lambda_.numpy()) == pytest.approx(0.3)


def test_dann_schedule_is_the_papers():
    f = mtk.adaptation.dann_lambda
    assert f(0.0) == 0.0
    assert f(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert f(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)  # 0.99991
    assert f(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.46212


def test_coral_on_a_hand_computed_covariance():
    # Source rows (0,0), (2,2), (4,1): mean (2,1); deviations (-2,-1), (0,1),
    # (2,0); sums of products / (n-1)=2: C_s = [[4, 1], [1, 1]].
    source = np.array([[0, 0], [2, 2], [4, 1]], "float32")
    # Target rows (1,1), (1,3): mean (1,2), deviations (0,-1), (0,1):
    # C_t = [[0, 0], [0, 2]].
    target = np.array([[1, 1], [1, 3]], "float32")
    # ||C_s - C_t||_F^2 = 16 + 1 + 1 + 1 = 19; / (4 d^2) = 19 / 16.
    assert float(mtk.adaptation.coral(source, target)) == pytest.approx(19 / 16)
    np.testing.assert_allclose(np.cov(source.T), [[4, 1], [1, 1]])


def test_mmd_with_a_known_kernel_on_three_points():
    source = np.array([[0.0, 0.0], [1.0, 0.0]])
    target = np.array([[0.0, 2.0]])
    # Squared distances: s1-s2 1, s1-t 4, s2-t 5. k = exp(-d^2 / 2)
    # (kernels=[2], bandwidth=1). Biased estimate:
    # (2 + 2 e^-0.5) / 4 + 1 - 2 (e^-2 + e^-2.5) / 2.
    expected = (2 + 2 * np.exp(-0.5)) / 4 + 1 - (np.exp(-2) + np.exp(-2.5))
    got = mtk.adaptation.mmd(source, target, kernels=[2.0], bandwidth=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Two kernels average; bandwidth=None uses the mean squared distance of
    # the distinct pairs: (1 + 4 + 5) / 3.
    scale = 10 / 3

    def biased(m):
        k = lambda d: np.exp(-d / (m * scale))  # noqa: E731
        return (2 + 2 * k(1)) / 4 + 1 - (k(4) + k(5))

    got = mtk.adaptation.mmd(source, target, kernels=[0.5, 1.0], bandwidth=None)
    assert float(got) == pytest.approx((biased(0.5) + biased(1.0)) / 2, rel=1e-6)
    assert float(mtk.adaptation.mmd(source, source)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", [CORAL(), MMD(), DANN()], ids=["coral", "mmd", "dann"])
@pytest.mark.parametrize("domains", [[0] * 8, [1] * 8, [0] * 7 + [1]],
                         ids=["source_only", "target_only", "one_target_row"])
def test_batches_without_both_domains_give_finite_losses(method, domains):
    method.setup((None, 4))
    features = tf.Variable(np.random.default_rng(0).normal(size=(8, 4)), dtype="float32")
    with tf.GradientTape() as tape:
        loss = method.loss(features, tf.constant(domains))
    gradient = tape.gradient(loss, features)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(gradient.numpy()))
    # CORAL needs two rows of each domain; MMD one; DANN needs none.
    if isinstance(method, CORAL) or (isinstance(method, MMD) and len(set(domains)) == 1):
        assert float(loss) == 0.0
        assert not np.any(gradient.numpy())
    else:
        assert float(loss) > 0.0


# === Training ===


@pytest.mark.parametrize("method", ["dann", "coral", "mmd"])
def test_fit_trains_logs_and_moves_the_trunk_towards_alignment(method):
    x, y = data(32)
    model = build(method)
    names = model.log_names()
    logs = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert sorted(logs) == sorted(names)
    own = {"dann": ["domain_loss", "domain_accuracy", "domain_lambda"],
           "coral": ["coral_loss"], "mmd": ["mmd_loss"]}[method]
    assert set(own) <= set(logs)
    assert all(np.isfinite(v).all() for v in logs.values())
    assert all(v[0] > 0 for k, v in logs.items() if k in own)
    if method == "dann":
        # The schedule's value at the last step: epoch 1, step 1 of 2 epochs.
        assert logs["domain_lambda"][-1] == pytest.approx(
            mtk.adaptation.dann_lambda(0.75), rel=1e-5)
        assert logs["domain_lambda"][0] == pytest.approx(
            mtk.adaptation.dann_lambda(0.25), rel=1e-5)


def test_the_adaptation_loss_alone_moves_the_trunk():
    """A target-only batch: no task label, so any trunk update comes from the
    adaptation loss, and its direction lowers the alignment loss."""
    x, y = data(16, target_from=0)
    y["domain"][:8] = 0  # half source, all unlabelled
    model = build(CORAL(weight=100.0))
    before = trunk_weights(model)
    first = model.fit(x, y, batch_size=16, epochs=3, verbose=0).history["coral_loss"]
    assert np.abs(trunk_weights(model) - before).max() > 0
    assert first[-1] < first[0]


@pytest.mark.parametrize("loss_weighting", [
    "uncertainty",  # loss level, learned parameters
    "gradnorm",  # gradients at the shared features
    "pcgrad",  # gradient level: the trunk's update is replaced
    mtk.weighting.MGDA(rep_grad=True),  # gradient level at the features
], ids=["uncertainty", "gradnorm", "pcgrad", "mgda_rep_grad"])
def test_every_balancing_path_keeps_the_adaptation_gradient(loss_weighting):
    """No task label in the batch, so the trunk's update is the adaptation
    loss's alone: the same under every method (none may drop it)."""
    x, y = data(16, target_from=0)
    y["domain"][:8] = 0

    def trunk_update(weighting):
        model = build(CORAL(weight=100.0), loss_weighting=weighting)
        before = trunk_weights(model)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        return trunk_weights(model) - before

    reference = trunk_update("static")
    update = trunk_update(loss_weighting)
    assert np.abs(reference).max() > 1e-4
    np.testing.assert_allclose(update, reference, atol=1e-5)


def test_fit_transfer_on_a_mixed_stream(recwarn):
    x, y = data(32)
    model = build(DANN(hidden_units=(4,)))
    task = {"item": y["item"], "price": y["price"][:, None]}  # canonical shapes
    source = tf.data.Dataset.from_tensor_slices((x[:16], {k: v[:16] for k, v in task.items()}))
    target = tf.data.Dataset.from_tensor_slices(x[16:])
    stream = mtk.data.mix(
        [mtk.data.with_domain(source, 0), mtk.data.with_domain(target, 1)],
        heads=model, seed=0).batch(8)
    _, labels = next(iter(stream))
    assert sorted(labels) == ["domain", "item", "price"]
    history = mtk.fit_transfer(model, stream, validation_data=stream,
                               frozen_epochs=1, finetune_epochs=1, verbose=0)
    assert len(history.history["domain_loss"]) == 2
    # Validation data with domain labels: the classifier's accuracy there.
    assert 0.0 < history.history["val_domain_accuracy"][-1] <= 1.0
    # Phase 2 goes on from where phase 1's epochs end (p = 1/2; a stream of
    # unknown length moves p once per epoch in its first epoch).
    assert history.history["domain_lambda"] == pytest.approx(
        [0.0, mtk.adaptation.dann_lambda(0.5)])
    assert not [w for w in recwarn if "nothing to adapt to" in str(w.message)]


# === Saving and serving ===


def test_keras_file_keeps_the_domain_head_and_serving_has_task_heads_only(tmp_path):
    x, y = data(16)
    model = build(DANN(hidden_units=(5,), gamma=5.0))
    model.fit(x, y, epochs=1, verbose=0)
    loaded = run_model_saving_test(model, x, str(tmp_path / "m.keras"))
    assert isinstance(loaded.adaptation, DANN)
    assert loaded.adaptation.gamma == 5.0
    for a, b in zip(model.adaptation.weights, loaded.adaptation.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    features = np.random.default_rng(1).normal(size=(4, 8)).astype("float32")
    np.testing.assert_allclose(
        loaded.adaptation.domain_probabilities(features),
        model.adaptation.domain_probabilities(features), atol=1e-6)
    # Training goes on after loading (compile state and schedule restored).
    assert "domain_loss" in loaded.fit(x, y, epochs=1, verbose=0).history
    path = mtk.export_saved_model(model, str(tmp_path / "serving"), version=1)
    serving = tf.saved_model.load(path).signatures["serving_default"]
    # The task heads' outputs (a Classification head serves its class id too).
    assert sorted(serving.structured_outputs) == ["item", "item_class_id", "price"]
    assert sorted(model(x[:2])) == ["item", "price"]
    tflite = mtk.export_tflite(model, str(tmp_path / "m.tflite"))
    outputs = tf.lite.Interpreter(tflite).get_signature_list()["serving_default"]["outputs"]
    assert sorted(outputs) == ["item", "item_class_id", "price"]


def test_configs_round_trip():
    for method in (DANN(weight=0.5, hidden_units=(3, 2), lambda_=0.2),
                   CORAL(weight=2.0), MMD(kernels=(1.0, 2.0), bandwidth=0.5)):
        run_serialization_test(method)


# === Bad input ===


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"GradientReversal: lambda_ must be a finite number >= 0"):
        mtk.layers.GradientReversal(lambda_=-1.0)
    with pytest.raises(ValueError, match=r"DANN: lambda_ must be"):
        DANN(lambda_=-0.1)
    with pytest.raises(ValueError, match=r"CORAL: weight must be"):
        CORAL(weight=-1.0)
    with pytest.raises(ValueError, match=r"MMD: kernels must be"):
        MMD(kernels=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"DANN: num_domains must be an integer >= 2"):
        DANN(num_domains=1)
    with pytest.raises(ValueError, match=r"with_domain: domain must be an integer >= 0"):
        mtk.data.with_domain(tf.data.Dataset.range(3), -1)


def test_a_head_named_like_the_domain_key_is_refused_before_the_trunk_is_built():
    with pytest.raises(ValueError, match=r"DANN\(domain_key='domain'\) reads the domain labels under the key of head 'domain'"):
        mtk.build_multitask_model(
            "no_such_trunk", heads=[mtk.heads.Binary("domain")], adaptation="dann")


def test_adaptation_needs_one_tensor_every_head_reads():
    from test_sharing import SHAPE  # noqa: F401 (the conv trunk's input)
    from test_sharing import build as build_shared

    with pytest.raises(ValueError, match=r"CORAL adapts the features every head reads.*CrossStitch"):
        build_shared(mtk.sharing.CrossStitch(at=["relu1"]), adaptation="coral")


def test_bad_domain_labels_fail_before_training():
    x, y = data(16)
    model = build("dann")
    before = trunk_weights(model)
    bad = dict(y, domain=np.where(y["domain"] == 1, 2, 0))
    with pytest.raises(ValueError, match=r"DANN: domain label 2 at example 8 is not in \[0, 2\)"):
        mtk.fit_transfer(model, x, y=bad, frozen_epochs=1, finetune_epochs=0, verbose=0)
    task_only = {k: v for k, v in y.items() if k != "domain"}
    with pytest.raises(ValueError, match=r"no 'domain' key.*mtk.data.with_domain"):
        mtk.fit_transfer(model, x, y=task_only, frozen_epochs=1, finetune_epochs=0)
    # model.fit: the step's guard stops the first bad batch before its update.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"DANN: a domain label"):
        model.fit(tf.data.Dataset.from_tensor_slices((x, bad)).batch(16), verbose=0)
    np.testing.assert_array_equal(trunk_weights(model), before)


def test_no_target_examples_warn_once():
    x, y = data(16, target_from=16)  # all source
    model = build("mmd")
    target_x, target_y = data(16, target_from=0)  # validation: target rows
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=2, verbose=0, validation_data=(target_x, target_y))
        model.fit(x, y, epochs=1, verbose=0)
    messages = [str(w.message) for w in caught if "nothing to adapt to" in str(w.message)]
    assert len(messages) == 1, messages
    assert "MMD" in messages[0]


# === MirroredStrategy on two logical CPUs ===

DISTRIBUTED_SCRIPT = """
import keras, numpy as np, tensorflow as tf, mtk
from test_adaptation import build, data

def first_step(method, strategy=None):
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        model = build(method, strategy=strategy)
    before = [w.numpy().copy() for w in model.trainable_weights]
    x, y = data(16)
    # Each replica gets 4 source and 4 target rows.
    order = np.r_[0:4, 8:12, 4:8, 12:16]
    ds = tf.data.Dataset.from_tensor_slices((x[order], {k: v[order] for k, v in y.items()}))
    logs = model.fit(ds.batch(16), epochs=1, verbose=0).history
    update = np.concatenate([(w.numpy() - b).ravel()
                             for w, b in zip(model.trainable_weights, before)])
    return {k: float(v[0]) for k, v in logs.items()}, update

mirrored = mtk.distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False)
one_logs, one = first_step("dann")
two_logs, two = first_step("dann", mirrored)
coral_logs, _ = first_step("coral", mirrored)
report({"dann": {"one": one_logs, "two": two_logs,
                 "diff": float(np.linalg.norm(two - one) / np.linalg.norm(one))},
        "coral": coral_logs})
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    result = run_python(DISTRIBUTED_SCRIPT, tmp_path, logical_cpus=2)
    dann = result["dann"]
    # DANN's loss is the global batch's mean: the same update as one device.
    assert dann["two"]["domain_loss"] == pytest.approx(dann["one"]["domain_loss"], rel=1e-5)
    assert dann["diff"] < 1e-4, dann
    # CORAL compares each replica's own rows: another (finite) estimate; the
    # heads' loss is the global batch's, as without adaptation.
    coral = result["coral"]
    assert np.isfinite(coral["coral_loss"]) and coral["coral_loss"] > 0
    assert coral["loss"] == pytest.approx(dann["one"]["loss"], rel=1e-5)
