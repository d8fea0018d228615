"""Tests of mtk.sharing: hard, MMoE, CGC, PLE, MTAN and cross-stitch."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SHAPE
from testing import run_model_saving_test
from testing import run_python
from testing import run_serialization_test

import mtk
from mtk.sharing import CGC
from mtk.sharing import MMoE
from mtk.sharing import MTAN
from mtk.sharing import PLE
from mtk.sharing import CrossStitch
from mtk.sharing import CrossStitchUnit
from mtk.sharing import ExpertNetwork
from mtk.sharing import TaskAttention

SHAPE = (16, 16, 3)


def conv_trunk(batch_norm=True):
    """A small functional CNN with named blocks and BatchNormalization."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="block1")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="block2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    return keras.Model(inputs, x, name="source")


def residual_trunk():
    inputs = keras.Input(SHAPE)
    a = keras.layers.Conv2D(3, 3, padding="same", name="inner")(inputs)
    x = keras.layers.Add(name="add")([a, inputs])
    x = keras.layers.Conv2D(4, 3, name="out")(x)
    return keras.Model(inputs, x)


# Every architecture, small; the ids name them in test reports.
ARCHITECTURES = {
    "hard": "hard",
    "mmoe": MMoE(num_experts=3, expert_units=(8,)),
    "cgc": CGC(num_shared_experts=2, num_task_experts=1, expert_units=(8,)),
    "ple": PLE(num_levels=2, num_shared_experts=2, num_task_experts=1,
               expert_units=(8, 8)),
    "mtan": MTAN(at=["relu1"], reduction=2),
    "cross_stitch": CrossStitch(at=["relu1"]),
}


def heads():
    return [mtk.heads.Classification("item", num_classes=3),
            mtk.heads.Regression("price")]


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n,) + SHAPE).astype("float32")
    y = {"item": rng.integers(0, 3, n), "price": rng.normal(size=n).astype("float32")}
    y["item"][::4] = -1  # missing labels
    y["price"][1::3] = np.nan
    return x, y


def build(sharing, batch_norm=True, **kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("trunk_weights", None)
    return mtk.build_multitask_model(
        conv_trunk(batch_norm), heads=heads(), sharing=sharing, **kwargs)


# === Formulas on hand-made cases ===


def _dense(x, kernel, bias):
    return x @ kernel + bias


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mmoe_is_the_gated_sum_of_its_experts():
    """Ma et al. 2018, Eq. 5-6: y_k = sum_i softmax(W_k x)_i f_i(x)."""
    rng = np.random.default_rng(1)
    layer = ExpertNetwork(["a", "b"], num_shared_experts=3, expert_units=(4,))
    x = rng.normal(size=(5, 6)).astype("float32")
    features, gates = layer(x)
    kernel, bias = layer.levels[0]["shared"][0]
    experts = np.maximum(np.einsum("bd,edu->beu", x, kernel.numpy()) + bias.numpy(), 0)
    for name in ("a", "b"):
        gate = layer.levels[0]["gates"][name]
        g = _softmax(_dense(x, gate.kernel.numpy(), gate.bias.numpy()))
        np.testing.assert_allclose(gates[name], g, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            features[name], np.einsum("be,beu->bu", g, experts), rtol=1e-5, atol=1e-6)
    # Different gates: the heads read different mixtures.
    assert not np.allclose(features["a"], features["b"])


def _perturb(weights):
    for w in weights:
        w.assign(w.numpy() + 1.0)


def test_cgc_heads_read_shared_experts_and_only_their_own():
    """Tang et al. 2020, Eq. 2: task k's gate mixes shared experts and k's own."""
    x = np.random.default_rng(2).normal(size=(4, 6)).astype("float32")
    layer = ExpertNetwork(["a", "b"], num_shared_experts=2, num_task_experts=1,
                          expert_units=(4,))
    before, gates = layer(x)
    assert gates["a"].shape == (4, 3)  # 2 shared + 1 own
    _perturb(layer.levels[0]["task"]["b"][0])
    after, _ = layer(x)
    np.testing.assert_allclose(after["a"], before["a"])  # b's experts: not a's
    assert not np.allclose(after["b"], before["b"])
    _perturb(layer.shared_weights)
    assert not np.allclose(layer(x)[0]["a"], before["a"])


def test_ple_shares_task_experts_through_the_shared_gate():
    """Tang et al. 2020, Eq. 6: below the last level a shared gate mixes all
    experts, so with two levels task b's first-level experts reach head a."""
    x = np.random.default_rng(3).normal(size=(4, 6)).astype("float32")
    layer = ExpertNetwork(["a", "b"], num_levels=2, num_shared_experts=2,
                          num_task_experts=1, expert_units=(4,))
    before, _ = layer(x)
    assert layer.levels[0]["shared_gate"].units == 2 + 2 * 1
    assert layer.levels[1]["shared_gate"] is None
    _perturb(layer.levels[0]["task"]["b"][0])
    assert not np.allclose(layer(x)[0]["a"], before["a"])


def test_load_balancing_loss_is_added_in_training_only():
    x = np.random.default_rng(4).normal(size=(8, 6)).astype("float32")
    layer = ExpertNetwork(["a"], num_shared_experts=3, expert_units=(4,),
                          load_balancing=0.5)
    _, gates = layer(x, training=True)
    expected = 0.5 * float(mtk.sharing.load_balancing_loss(gates["a"]))
    assert expected > 0
    assert [float(v) for v in layer.losses] == pytest.approx([expected], rel=1e-5)
    layer(x, training=False)
    assert layer.losses == []
    # Shazeer et al. 2017, Eq. 6, on a hand-made gate: importance (3, 1).
    cv_squared = np.var([3.0, 1.0]) / np.mean([3.0, 1.0]) ** 2
    assert float(mtk.sharing.load_balancing_loss(
        [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) == pytest.approx(cv_squared)


def test_cross_stitch_unit_mixes_per_channel():
    """Misra et al. 2016, Eq. 1: x̃_t = sum_s alpha_ts x_s, per channel."""
    unit = CrossStitchUnit(same=0.8)
    xs = [np.full((2, 3), v, "float32") for v in (1.0, 2.0, 4.0)]
    outs = unit(xs)
    alpha = unit.alpha.numpy()
    np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-6)  # rows sum to 1
    assert alpha[0, 0, 0] == pytest.approx(0.8) and alpha[0, 1, 0] == pytest.approx(0.1)
    alpha[0, 2, 1] = 3.0  # one channel of one pair
    unit.alpha.assign(alpha)
    outs = unit(xs)
    np.testing.assert_allclose(outs[0][:, 0], 0.8 * 1 + 0.1 * 2 + 0.1 * 4, rtol=1e-6)
    np.testing.assert_allclose(outs[0][:, 1], 0.8 * 1 + 0.1 * 2 + 3.0 * 4, rtol=1e-6)
    np.testing.assert_allclose(outs[2][:, 2], 0.1 * 1 + 0.1 * 2 + 0.8 * 4, rtol=1e-6)


def test_task_attention_masks_the_shared_map():
    """Liu et al. 2019, Eq. 1 at the first level: â = sigmoid(g(p)) * p."""
    p = np.random.default_rng(5).normal(size=(2, 4, 4, 3)).astype("float32")
    layer = TaskAttention(["a"])
    attended = layer([p])["a"]
    conv_a, bn_a, conv_b, bn_b = layer.branches["a"][0]["mask"]
    mask = tf.sigmoid(bn_b(conv_b(tf.nn.relu(bn_a(conv_a(p))))))
    np.testing.assert_allclose(attended, mask * p, rtol=1e-5, atol=1e-6)
    ratio = np.asarray(attended) / p
    assert (ratio > 0).all() and (ratio < 1).all()


def test_task_attention_reduction_narrows_the_branches_only():
    """reduction=4: the mask's hidden conv and f_j are c // 4 wide, the mask
    itself stays c wide; level 2 is Eq. 1 on [p_2, f_2(â_1)]."""
    rng = np.random.default_rng(6)
    p1 = rng.normal(size=(2, 8, 8, 8)).astype("float32")
    p2 = rng.normal(size=(2, 4, 4, 16)).astype("float32")
    layer = TaskAttention(["a"], reduction=4)
    attended = layer([p1, p2])["a"]
    first, second = layer.branches["a"]
    conv_prev, bn_prev, resize = second["previous"]
    conv_a, bn_a, conv_b, bn_b = second["mask"]
    assert tuple(first["mask"][0].kernel.shape) == (1, 1, 8, 2)
    assert tuple(conv_prev.kernel.shape) == (3, 3, 8, 4)
    assert tuple(conv_a.kernel.shape) == (1, 1, 16 + 4, 4)
    assert tuple(conv_b.kernel.shape) == (1, 1, 4, 16)
    f1 = first["mask"]
    a1 = tf.sigmoid(f1[3](f1[2](tf.nn.relu(f1[1](f1[0](p1)))))) * p1
    previous = tf.nn.relu(bn_prev(conv_prev(resize(a1))))
    hidden = tf.nn.relu(bn_a(conv_a(tf.concat([p2, previous], -1))))
    np.testing.assert_allclose(
        attended, tf.sigmoid(bn_b(conv_b(hidden))) * p2, rtol=1e-5, atol=1e-6)
    assert TaskAttention.from_config(layer.get_config()).reduction == 4


# === Models ===


def test_cross_stitch_copies_start_from_the_same_weights():
    """Every head's copy starts from the trunk's weights, and the units'
    rows sum to 1, so before training each head reads the trunk's output."""
    source = conv_trunk()
    model = mtk.build_multitask_model(
        source, heads=heads(), sharing=CrossStitch(at=["block1", "relu1"]))
    x, _ = data(4)
    expected = source(x)
    for output in model.trunk(x):
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)
    # Two copies of the trunk's weights plus one unit per cut.
    assert len(model.trunk.weights) == 2 * len(source.weights) + 2


def test_mtan_runs_the_trunk_once():
    source = conv_trunk()
    model = mtk.build_multitask_model(source, heads=heads(), sharing=MTAN(at=["relu1"]))
    assert {id(w) for w in model.trunk.weights} == {id(w) for w in source.weights}
    assert model.get_layer("task_attention").head_names == ["item", "price"]


@pytest.mark.filterwarnings("ignore:UPGrad balances")
@pytest.mark.parametrize("key", ARCHITECTURES)
def test_each_architecture_trains_frozen_then_fine_tuned_and_saves(key, tmp_path):
    """fit_transfer with missing labels and a gradient-level method; the trunk
    is untouched in phase 1 and trained in phase 2; .keras in safe mode."""
    sharing = ARCHITECTURES[key]
    model = build(sharing, loss_weighting="upgrad")
    assert model.trunk is model.get_layer("trunk")  # what freezing acts on
    x, y = data()
    trunk_before = [w.numpy().copy() for w in model.trunk.weights]
    # Phase 1 alone first: nothing in the trunk moves (BatchNormalization's
    # statistics included).
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for before, w in zip(trunk_before, model.trunk.weights):
        np.testing.assert_array_equal(before, w.numpy(), err_msg=w.path)
    history = mtk.fit_transfer(model, x, y=y, batch_size=16, frozen_epochs=1,
                               finetune_epochs=1, finetune_learning_rate=1e-2,
                               verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.array_equal(b, w.numpy())
               for b, w in zip(trunk_before, model.trunk.weights))
    assert "item_loss_weight" in history.history
    loaded = run_model_saving_test(model, x[:4], tmp_path / "model.keras")
    assert type(loaded.sharing) is type(mtk.sharing.get_sharing(sharing))
    assert loaded.sharing.get_config() == mtk.sharing.get_sharing(sharing).get_config()
    run_serialization_test(mtk.sharing.get_sharing(sharing))


@pytest.mark.parametrize("key", ["mmoe", "ple", "mtan", "cross_stitch"])
def test_each_architecture_exports_the_named_heads(key, tmp_path):
    model = build(ARCHITECTURES[key], compile=False)
    x, _ = data(4)
    path = mtk.export_saved_model(model, tmp_path / "serving")
    outputs = tf.saved_model.load(path).signatures["serving_default"](
        inputs=tf.constant(x))
    assert sorted(outputs) == ["item", "item_class_id", "price"]
    expected = model.predict(x, verbose=0)
    for name in ("item", "price"):
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-4, atol=1e-5)
    tflite = mtk.export_tflite(model, tmp_path / "model.tflite")
    interpreter = tf.lite.Interpreter(model_path=tflite)
    runner = interpreter.get_signature_runner()
    got = runner(inputs=x)
    for name in ("item", "price"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-3, atol=1e-4)


def test_expert_usage_shows_a_collapsed_gate():
    model = build(MMoE(num_experts=3, expert_units=(4,)), compile=False)
    gate = model.get_layer("sharing").levels[0]["gates"]["item"]
    gate.kernel.assign(np.zeros(gate.kernel.shape))
    gate.bias.assign([10.0, 0.0, 0.0])  # item's gate sits on expert 0
    x, y = data(8)
    usage = mtk.sharing.expert_usage(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
    assert usage["item"]["shared_0"] > 0.99
    assert max(usage["price"].values()) < 0.99
    assert sum(usage["price"].values()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="no gates"):
        mtk.sharing.expert_usage(build("hard", compile=False), x)


def test_load_balancing_spreads_a_collapsed_gate():
    """From a gate collapsed on one expert, the regulariser spreads it.

    The trunk stays frozen, so its BatchNormalization reads the same
    statistics in training and in `expert_usage`'s inference."""
    spread = {}
    for weight in (0.0, 5.0):
        model = build(MMoE(num_experts=3, expert_units=(4,), load_balancing=weight),
                      optimizer=keras.optimizers.SGD(0.5))
        for name in ("item", "price"):
            gate = model.get_layer("sharing").levels[0]["gates"][name]
            gate.bias.assign([3.0, 0.0, 0.0])
        x, y = data(64)
        model.fit(x, y, batch_size=64, epochs=20, verbose=0)
        spread[weight] = max(mtk.sharing.expert_usage(model, x)["price"].values())
    assert spread[0.0] > 0.9 and spread[5.0] < spread[0.0] - 0.3, spread


def test_tuning_works_with_a_sharing_architecture(tmp_path):
    x, y = data()

    def make_model():
        return build(MMoE(num_experts=2, expert_units=(4,)), compile=False)

    result = mtk.tune_loss_weights(
        make_model, (x, y), (x, y), max_trials=2, epochs=1,
        directory=tmp_path, seed=0, batch_size=16, verbose=0)
    assert result is not None


# === Bad input ===


@pytest.mark.parametrize("make, match", [
    (lambda: MMoE(num_experts=0), r"MMoE\(num_experts=0\)"),
    (lambda: MMoE(expert_units=(8, 0)), r"expert_units"),
    (lambda: MMoE(load_balancing=-1), r"load_balancing"),
    (lambda: PLE(num_levels=0), r"num_levels"),
    (lambda: CGC(num_shared_experts=0, num_task_experts=0), r"num_shared_experts \+ num_task_experts"),
    (lambda: MTAN(at=[]), r"MTAN\(at=\[\]\)"),
    (lambda: MTAN(at=["relu1"], reduction=0), r"MTAN\(reduction=0\)"),
    (lambda: mtk.sharing.get_sharing("mtan"), r"MTAN\(at="),
    (lambda: mtk.sharing.get_sharing("soft"), r"Unknown sharing='soft'.*'mmoe'"),
    (lambda: mtk.heads.Binary("sharing"), r"'sharing' clashes with a layer mtk reserves"),
])
def test_bad_arguments_name_the_fault(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_layers_name_the_fault():
    with pytest.raises(ValueError, match=r"'nope' names no layer.*'block1'"):
        build(MTAN(at=["nope"]))
    with pytest.raises(ValueError, match=r"in the trunk's order.*\['block1', 'block2'\]"):
        build(CrossStitch(at=["block2", "block1"]))
    with pytest.raises(ValueError, match=r"cannot be cut at 'inner'.*bypasses"):
        mtk.build_multitask_model(residual_trunk(), heads=heads(),
                                  sharing=CrossStitch(at=["inner"]))
    vector = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(name="flat"),
                               keras.layers.Dense(4, name="dense")])
    with pytest.raises(ValueError, match=r"layer 'flat' outputs shape \(None, 768\).*feature maps"):
        mtk.build_multitask_model(vector, heads=heads(), sharing=MTAN(at=["flat"]))
    flat = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(name="flat")])
    model = mtk.build_multitask_model(flat, heads=heads(), sharing=MTAN(at=["conv"]))
    assert model.get_layer("item").input.shape == (None, 14 * 14 * 4)  # flattened per head
    with pytest.raises(ValueError, match=r"layers \['dense'\] after 'conv' have weights"):
        mtk.build_multitask_model(
            keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Flatten(name="flat"), keras.layers.Dense(4, name="dense")]),
            heads=heads(), sharing=MTAN(at=["conv"]))
    sequence = keras.Sequential([keras.Input((10, 4)), keras.layers.Dense(4, name="d")])
    with pytest.raises(ValueError, match=r"MTAN works on the feature maps of an image trunk.*\(None, 10, 4\)"):
        mtk.build_multitask_model(sequence, heads=heads(), sharing=MTAN(at=["d"]))


def test_methods_at_the_shared_features_need_one_common_tensor():
    with pytest.raises(ValueError, match=r"GradNorm takes gradients at the features.*CrossStitch"):
        build(CrossStitch(at=["relu1"]), loss_weighting="gradnorm")
    # MMoE: the experts read one tensor, the trunk's features.
    assert build(MMoE(num_experts=2), loss_weighting=mtk.weighting.PCGrad(rep_grad=True))


# === Mixed precision and MirroredStrategy ===

DISTRIBUTED_SCRIPT = """
import keras, numpy as np, tensorflow as tf, mtk
from test_sharing import ARCHITECTURES, build, data

def first_update(key, strategy=None, policy="float32"):
    keras.mixed_precision.set_global_policy(policy)
    try:
        optimizer = keras.optimizers.SGD(0.05)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=2.0 ** 8)
        scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
        with scope:
            # No BatchNormalization: a training step normalises with each
            # replica's own batch statistics (Keras' BatchNormalization is not
            # synchronised), which is another update by design.
            model = build(ARCHITECTURES[key], batch_norm=False, freeze_trunk=False,
                          optimizer=optimizer,
                          strategy=strategy, loss_weighting="mgda")
        before = [w.numpy().copy() for w in model.trainable_weights]
        x, y = data(16)
        logs = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
                         epochs=1, verbose=0).history
        update = np.concatenate([(w.numpy() - b).ravel()
                                 for w, b in zip(model.trainable_weights, before)])
        return float(logs["loss"][0]), update
    finally:
        keras.mixed_precision.set_global_policy("float32")

mirrored = mtk.distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False)
result = {}
for key in ARCHITECTURES:
    loss, one = first_update(key)
    loss2, two = first_update(key, mirrored)
    _, mixed = first_update(key, policy="mixed_float16")
    norm = np.linalg.norm(one)
    result[key] = {"loss": [loss, loss2], "norm": float(norm),
                   "replicas": float(np.linalg.norm(two - one) / norm),
                   "mixed": float(np.linalg.norm(mixed - one) / norm)}
report(result)
"""


@pytest.mark.slow
def test_two_replicas_and_mixed_precision_match_one_float32_replica(tmp_path):
    """Per architecture, MGDA's first update: 2 logical CPUs give the same as
    one; mixed_float16 within 2 % (float16 activations) of float32."""
    results = run_python(DISTRIBUTED_SCRIPT, tmp_path, logical_cpus=2)
    assert sorted(results) == sorted(ARCHITECTURES)
    for key, r in results.items():
        assert r["norm"] > 1e-3, key
        assert r["loss"][1] == pytest.approx(r["loss"][0], rel=1e-5), key
        assert r["replicas"] < 1e-4, (key, r)
        assert r["mixed"] < 0.02, (key, r)
