"""Dense heads: Segmentation and DenseRegression on a feature-map trunk."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from mtk.dense_heads import AngleError
from mtk.dense_heads import PixelMaskedMetric
from testing import run_model_saving_test
from testing import run_python
from testing import run_serialization_test

SHAPE = (12, 12, 1)


def conv_trunk(name="dense_net"):
    """A tiny CNN: 12x12 -> 6x6 (conv_a) -> 3x3 feature map (conv_b) -> vector."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv_a")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def dense_heads():
    return [
        mtk.heads.Segmentation("parts", num_classes=3, skip="conv_a",
                               decoder_filters=8, skip_filters=4),
        mtk.heads.DenseRegression("depth", decoder_filters=8),
        mtk.heads.DenseRegression("normals", channels=3, unit_norm=True,
                                  loss="cosine", decoder_filters=8),
        mtk.heads.Classification("item", num_classes=2),
    ]


def dense_model(**kwargs):
    keras.utils.set_random_seed(0)
    return mtk.build_multitask_model(
        conv_trunk(), heads=dense_heads(), trunk_output="conv_b",
        trunk_weights=None, freeze_trunk=False, **kwargs)


def dense_data(n=8, seed=0):
    """Images and labels of the four `dense_heads`, with missing pixels and maps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n,) + SHAPE).astype("float32")
    normals = rng.normal(size=(n,) + SHAPE[:2] + (3,)).astype("float32")
    y = {
        "parts": rng.integers(0, 3, (n,) + SHAPE[:2]),
        "depth": rng.uniform(1, 3, (n,) + SHAPE[:2]).astype("float32"),
        "normals": normals / np.linalg.norm(normals, axis=-1, keepdims=True),
        "item": rng.integers(0, 2, n),
    }
    y["parts"][0, :3] = 255        # a few unlabelled pixels
    y["parts"][1] = 255            # a whole missing map
    y["depth"][2, 5:] = np.nan
    y["depth"][3] = np.nan         # an image without depth
    y["normals"][4, 0, 0, 1] = np.nan
    return x, y


def first(data, n):
    x, y = data
    return x[:n], {k: v[:n].copy() for k, v in y.items()}


@pytest.fixture(scope="module")
def trained():
    """One small dense model, trained two steps (shared by the slow tests)."""
    model = dense_model()
    x, y = dense_data()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    return model, x, y


# === Metrics on hand-made maps ===
def test_miou_and_pixel_accuracy_on_hand_labelled_map():
    head = mtk.heads.Segmentation("seg", num_classes=4, output_size=(2, 3))
    miou, accuracy = head.get_metrics()
    labels = np.array([[[0, 0, 1], [1, 255, 255]]])
    predicted = np.array([[[0, 1, 1], [1, 0, 2]]])  # the last two are ignored
    probabilities = np.eye(4, dtype="float32")[predicted]
    for metric in (miou, accuracy):
        metric.update_state(labels, probabilities)
    # Class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3. Class 2 is
    # predicted only at an ignored pixel and class 3 nowhere: both are absent
    # from labels and predictions and left out of the mean.
    assert float(miou.result()) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-6)
    assert float(accuracy.result()) == pytest.approx(3 / 4)


def test_abs_and_rel_error_skip_nan_pixels():
    head = mtk.heads.DenseRegression("depth", output_size=(2, 2))
    abs_error, rel_error = head.get_metrics()
    labels = np.array([[[1.0, 2.0], [np.nan, 4.0]]])
    predicted = np.array([[[2.0, 1.0], [100.0, 5.0]]])[..., None]
    for metric in (abs_error, rel_error):
        metric.update_state(labels, predicted)
    assert float(abs_error.result()) == pytest.approx(1.0)
    assert float(rel_error.result()) == pytest.approx((1 + 0.5 + 0.25) / 3)


def test_angle_metrics_on_hand_vectors():
    head = mtk.heads.DenseRegression("normals", channels=3, unit_norm=True,
                                     output_size=(1, 4))
    metrics = {m.name: m for m in head.get_metrics()}
    assert list(metrics) == ["angle_mean", "angle_median", "within_11_25",
                             "within_22_5", "within_30"]
    labels = np.array([[[[1, 0, 0], [1, 0, 0], [1, 0, 0], [np.nan, 0, 1]]]],
                      "float32")
    # 0, 90 and 45 degrees; the last pixel has a NaN channel: missing.
    predicted = np.array([[[[3, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]]],
                         "float32")
    for metric in metrics.values():
        metric.update_state(labels, predicted)
    assert float(metrics["angle_mean"].result()) == pytest.approx(45.0, abs=1e-3)
    assert float(metrics["angle_median"].result()) == pytest.approx(45.0, abs=0.1)
    assert float(metrics["within_11_25"].result()) == pytest.approx(1 / 3)
    assert float(metrics["within_30"].result()) == pytest.approx(1 / 3)
    wide = PixelMaskedMetric(AngleError(50.0))
    wide.update_state(labels, predicted)
    assert float(wide.result()) == pytest.approx(2 / 3)


# === Losses and missing labels ===
def test_segmentation_loss_is_mean_over_labelled_pixels():
    head = mtk.heads.Segmentation("seg", num_classes=3, output_size=(1, 3))
    probabilities = np.array([[[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1],
                                [0.3, 0.3, 0.4]]]], "float32")
    labels = np.array([[[0, 1, 255]]])
    total, count = head.get_loss().sum_and_count(labels, probabilities)
    assert float(count) == 2.0
    assert float(total) / float(count) == pytest.approx(
        -(np.log(0.7) + np.log(0.8)) / 2, rel=1e-5)


def test_whole_missing_map_costs_nothing():
    model = dense_model()
    x, y = first(dense_data(), 2)
    y["parts"][:] = 255
    y["depth"][0] = np.nan
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        losses, _ = model._head_losses(y, outputs, None)
    head = model.get_layer("parts")
    gradients = tape.gradient(losses["parts"], head.trainable_weights)
    assert float(losses["parts"]) == 0.0
    assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in gradients)
    # The image without depth changes neither the loss nor its gradient.
    alone = {k: v[1:] for k, v in y.items()}
    with tf.GradientTape() as tape:
        loss_alone = model._head_losses(alone, model(x[1:], training=True), None)[0]
    assert float(losses["depth"]) == pytest.approx(float(loss_alone["depth"]), rel=1e-5)
    assert float(losses["depth"]) > 0


# === Decoder and wiring ===
def test_decoder_outputs_at_input_resolution_with_skip():
    model = dense_model()
    assert {k: tuple(v.shape) for k, v in model.output.items()} == {
        "parts": (None, 12, 12, 3), "depth": (None, 12, 12, 1),
        "normals": (None, 12, 12, 3), "item": (None, 2)}
    # The skip head reads the trunk's conv_a map (6x6) beside its output.
    assert [tuple(t.shape) for t in model.trunk.outputs] == [
        (None, 3, 3, 8), (None, 6, 6, 4)]
    x, _ = first(dense_data(), 2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x)["parts"][..., 0] * np.arange(144.0).reshape(12, 12))
    head = model.get_layer("parts")
    gradient = tape.gradient(loss, head.skip_project.kernel)
    assert float(tf.reduce_max(tf.abs(gradient))) > 0
    normals = model.predict(x, verbose=0)["normals"]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)


def test_output_size_and_application_trunk_output():
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
        trunk_output="expanded_conv_2_add",
        heads=[mtk.heads.Segmentation("seg", num_classes=2, output_size=(16, 16)),
               mtk.heads.Binary("flag")])
    assert model.trunk.output.shape[1:3] == (4, 4)
    assert tuple(model.output["seg"].shape) == (None, 16, 16, 2)


def test_heads_serialize():
    for head in dense_heads()[:3]:
        run_serialization_test(head)


# === Bad input, before any training ===
def test_ignore_label_inside_class_range():
    with pytest.raises(ValueError, match="Head 'seg': ignore_label=2 is a real class"):
        mtk.heads.Segmentation("seg", num_classes=3, ignore_label=2)


def test_label_map_size_must_match_output():
    model = dense_model()
    x, y = first(dense_data(), 4)
    y["depth"] = np.zeros((4, 10, 10), "float32")
    with pytest.raises(ValueError, match=r"Head 'depth' .* label maps are \(10, 10\)"):
        mtk.check_training_data(model, x, y)
    model = mtk.build_multitask_model(
        conv_trunk(), trunk_output="conv_b", trunk_weights=None,
        heads=[mtk.heads.Segmentation("seg", num_classes=3, output_size=(6, 6))])
    with pytest.raises(ValueError, match=r"Head 'seg' .* size \(6, 6\)"):
        mtk.check_training_data(model, x, {"seg": np.zeros((4, 12, 12), "int64")})


def test_label_value_error_names_pixel():
    head = mtk.heads.Segmentation("seg", num_classes=3, output_size=(2, 2))
    with pytest.raises(mtk.heads.LabelValueError,
                       match=r"label 7 at example 0, pixel \(1, 0\)"):
        head.check_label_values(np.array([[[0, 255], [7, 1]]]))


def test_dense_head_on_vector_trunk():
    with pytest.raises(ValueError, match=r"Head 'depth' \(DenseRegression\).*"
                       r"trunk_output.*\['conv_a', 'conv_b'\]"):
        mtk.build_multitask_model(
            conv_trunk(), trunk_weights=None,
            heads=[mtk.heads.DenseRegression("depth")])


def test_unknown_skip_layer_lists_feature_maps():
    with pytest.raises(ValueError, match=r"Head 'seg': skip='conv_z'.*"
                       r"\['conv_a', 'conv_b'\]"):
        mtk.build_multitask_model(
            conv_trunk(), trunk_output="conv_b", trunk_weights=None,
            heads=[mtk.heads.Segmentation("seg", num_classes=2, skip="conv_z")])


def test_pooled_sharing_refuses_dense_heads():
    with pytest.raises(ValueError, match=r"MMoE.*dense heads \['depth'\].*MTAN"):
        mtk.build_multitask_model(
            conv_trunk(), trunk_output="conv_b", trunk_weights=None,
            sharing=mtk.sharing.MMoE(num_experts=2, expert_units=(4,)),
            heads=[mtk.heads.DenseRegression("depth"), mtk.heads.Binary("flag")])


@pytest.mark.parametrize("sharing", [
    mtk.sharing.MTAN(at=["conv_a"]), mtk.sharing.CrossStitch(at=["conv_a"])])
def test_per_head_map_sharing_feeds_dense_heads(sharing, tmp_path):
    keras.utils.set_random_seed(0)
    heads = [mtk.heads.Segmentation("parts", num_classes=3, decoder_filters=8),
             mtk.heads.DenseRegression("depth", decoder_filters=8),
             mtk.heads.Classification("item", num_classes=2)]
    model = mtk.build_multitask_model(
        conv_trunk(), heads=heads, trunk_output="conv_b", trunk_weights=None,
        freeze_trunk=False, sharing=sharing)
    # Each dense head decodes its own map: no shared "pooling" layer, and
    # the image-level head pools its own.
    assert "pooling" not in [layer.name for layer in model.layers]
    assert model.get_layer("item_pooling") is not None
    x, y = first(dense_data(), 8)
    del y["normals"]
    before = model.predict(x, verbose=0)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = model.predict(x, verbose=0)
    assert after["parts"].shape == (8,) + SHAPE[:2] + (3,)
    assert after["depth"].shape == (8,) + SHAPE[:2] + (1,)
    assert not np.allclose(before["depth"], after["depth"])  # it trained
    run_model_saving_test(model, x, str(tmp_path / "shared.keras"))


def test_fit_transfer_freezes_then_fine_tunes_the_trunk_under_dense_heads():
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        conv_trunk(), heads=dense_heads(), trunk_output="conv_b", trunk_weights=None)
    x, y = dense_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    start = model.trunk.get_weights()
    decoder = model.get_layer("parts").get_weights()[0]
    after_epoch = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: after_epoch.append(model.trunk.get_weights()))
    mtk.fit_transfer(model, ds, frozen_epochs=1, finetune_epochs=1, verbose=0,
                     callbacks=[record])
    assert len(after_epoch) == 2
    # Phase 1 trains the decoders only; phase 2 fine-tunes the trunk too.
    assert all(np.array_equal(a, b) for a, b in zip(start, after_epoch[0]))
    assert not all(np.array_equal(a, b) for a, b in zip(start, after_epoch[1]))
    assert not np.array_equal(decoder, model.get_layer("parts").get_weights()[0])


def test_per_head_map_sharing_refuses_skip():
    with pytest.raises(ValueError, match=r"Dense heads \['parts'\] have skip="):
        mtk.build_multitask_model(
            conv_trunk(), trunk_output="conv_b", trunk_weights=None,
            sharing=mtk.sharing.MTAN(at=["conv_a"]),
            heads=[mtk.heads.Segmentation("parts", 3, skip="conv_a")])


# === Training, saving, export ===
def test_trains_and_reports_metrics(trained):
    model, x, y = trained
    report = mtk.evaluation.evaluate_heads(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
    assert set(report["parts"]) == {"loss", "miou", "pixel_accuracy"}
    assert set(report["depth"]) == {"loss", "abs_error", "rel_error"}
    assert "angle_median" in report["normals"]
    assert all(np.isfinite(v) for r in report.values() for v in r.values())


def test_keras_round_trip(trained, tmp_path):
    model, x, _ = trained
    loaded = run_model_saving_test(model, x, str(tmp_path / "dense.keras"))
    assert loaded.get_layer("parts").skip == "conv_a"


def test_export_signature_and_tflite(trained, tmp_path):
    model, x, _ = trained
    path = mtk.export_saved_model(model, str(tmp_path / "serving"), version=1)
    outputs = tf.saved_model.load(path).signatures["serving_default"].structured_outputs
    assert {k: tuple(v.shape) for k, v in outputs.items() if k != "item_class_id"} == {
        "parts": (None, 12, 12, 3), "depth": (None, 12, 12, 1),
        "normals": (None, 12, 12, 3), "item": (None, 2)}
    tflite = mtk.export_tflite(model, str(tmp_path / "m.tflite"))
    runner = tf.lite.Interpreter(model_path=tflite).get_signature_runner()
    got = runner(inputs=x[:1])
    expected = model.predict(x[:1], verbose=0)
    for name in ("parts", "depth", "normals"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4)


MIRRORED = """
import keras, numpy as np, tensorflow as tf, mtk
from test_dense import conv_trunk, dense_heads, dense_data

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trunk = conv_trunk()
    model = mtk.build_multitask_model(
        trunk, heads=dense_heads(), trunk_output="conv_b", trunk_weights=None,
        freeze_trunk=False, strategy=strategy, optimizer=keras.optimizers.SGD(0.1))
    x, y = dense_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    logs = model.fit(ds, epochs=1, verbose=0).history
    return {k: v[0] for k, v in logs.items()}, [w.tolist() for w in model.get_weights()]

one, w_one = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
two, w_two = run(mtk.distribute.get_strategy(
    "mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False))
gap = max(float(np.max(np.abs(np.array(a) - np.array(b)))) for a, b in zip(w_one, w_two))
report({"one": one, "two": two, "gap": gap})
"""


def test_mirrored_two_cpus_matches_one_device(tmp_path):
    result = run_python(MIRRORED, tmp_path, logical_cpus=2)
    for key in ("loss", "parts_loss", "depth_loss", "normals_loss", "parts_miou"):
        assert result["two"][key] == pytest.approx(result["one"][key], rel=1e-4), key
    assert result["gap"] < 1e-5


def test_delta_m_over_dense_metrics_with_directions():
    model = dense_model()
    report = {
        "parts": {"miou": 0.6, "pixel_accuracy": 0.9},
        "depth": {"abs_error": 0.4, "rel_error": 0.2},
        "normals": {"angle_mean": 20.0, "angle_median": 15.0,
                    "within_11_25": 0.4, "within_22_5": 0.6, "within_30": 0.7},
        "item": {"accuracy": 0.8},
    }
    baselines = {
        "parts": {"miou": 0.5, "pixel_accuracy": 0.9},   # +20 %, 0
        "depth": {"abs_error": 0.5, "rel_error": 0.2},   # +20 % (lower), 0
        "normals": {"angle_mean": 25.0, "angle_median": 15.0,  # +20 %, 0
                    "within_11_25": 0.5, "within_22_5": 0.6, "within_30": 0.7},  # -20 %
        "item": {"accuracy": 0.8},
    }
    gain, terms = mtk.evaluation.delta_m_of_reports(report, baselines, model)
    assert len(terms) == 2 + 2 + 5 + 1
    assert terms["depth/abs_error"][2] is False and terms["parts/miou"][2] is True
    assert gain == pytest.approx(100 * (0.2 + 0.2 + 0.2 - 0.2) / 10)
    with pytest.raises(ValueError, match="baselines lacks metric 'miou' of head 'parts'"):
        mtk.evaluation.delta_m_of_reports(
            report, {**baselines, "parts": {}}, model)


# === Data: MultiFashion dense config, TFDS mappings, joint augmentation ===
def multi_fashion_dense_model():
    inputs = keras.Input((36, 36, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c1")(inputs)
    trunk = keras.Model(inputs, x, name="tiny")
    return mtk.build_multitask_model(
        trunk, heads=mtk.data.multi_fashion_dense_heads(decoder_filters=4),
        trunk_weights=None)


def test_multi_fashion_dense_config(tmp_path):
    import tensorflow_datasets as tfds

    model = multi_fashion_dense_model()
    ds = mtk.data.from_tfds(
        "multi_fashion", split="train", heads=model,
        tasks=mtk.data.multi_fashion.DENSE_TASKS, data_dir=str(tmp_path),
        batch_size=6, builder_kwargs={"config": mtk.data.MultiFashionConfig(
            name="dense_test", train_size=6, test_size=2, dense=True)})
    x, y = next(iter(ds))
    assert y["segmentation"].shape == (6, 36, 36) and y["layers"].shape == (6, 36, 36, 2)
    image, seg = x.numpy()[..., 0], y["segmentation"].numpy()
    layers = np.round(y["layers"].numpy() * 255)
    np.testing.assert_array_equal(layers.max(-1), image)   # the overlay is the max
    np.testing.assert_array_equal(seg == 0, image == 0)    # background
    for i in range(6):
        left, right = int(y["left"][i]) + 1, int(y["right"][i]) + 1
        top = np.where(layers[i, ..., 0] >= layers[i, ..., 1], left, right)
        np.testing.assert_array_equal(seg[i][image[i] > 0], top[image[i] > 0])
    model.fit(ds, epochs=1, verbose=0)
    assert tfds.builder("multi_fashion", data_dir=str(tmp_path), config=mtk.data.MultiFashionConfig(
        name="dense_test", train_size=6, test_size=2, dense=True)).info.features["layers"].shape == (36, 36, 2)


def test_nyu_depth_v2_mapping_with_mock_data():
    import tensorflow_datasets as tfds

    head = mtk.heads.DenseRegression("depth", output_size=(24, 32))
    with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = next(iter(tfds.load("nyu_depth_v2", split="train")))
        ds = mtk.data.from_tfds(
            "nyu_depth_v2", tasks=mtk.data.NYU_DEPTH_V2_TASKS, heads=[head],
            image_size=(24, 32), batch_size=2)
        x, y = next(iter(ds))
    assert x.shape == (2, 24, 32, 3) and y["depth"].shape == (2, 24, 32, 1)
    assert y["depth"].dtype == tf.float32 and raw["depth"].shape == (480, 640)
    head.check_label_values(y["depth"].numpy())


def test_cityscapes_mapping_with_mock_data():
    import tensorflow_datasets as tfds

    head = mtk.heads.Segmentation(
        "segmentation", num_classes=19, output_size=(16, 32),
        class_names=list(mtk.data.CITYSCAPES_CLASS_NAMES))
    with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = next(iter(tfds.load("cityscapes/semantic_segmentation", split="train")))
        x, y = next(iter(mtk.data.from_tfds(
            "cityscapes/semantic_segmentation", inputs="image_left",
            tasks=mtk.data.CITYSCAPES_TASKS, heads=[head], batch_size=1,
            image_size=(16, 32))))
    label_ids = raw["segmentation_label"].numpy()[..., 0]
    got = mtk.data.dense.cityscapes_train_ids(raw).numpy()
    expected = np.full(label_ids.shape, 255)
    for label_id, train_id in {7: 0, 8: 1, 26: 13, 33: 18}.items():
        expected[label_ids == label_id] = train_id
    known = np.isin(label_ids, [7, 8, 26, 33]) | ~np.isin(
        label_ids, list(mtk.data.dense._CITYSCAPES_TRAIN_IDS))
    assert known.any() and (got[known] != 255).any()
    np.testing.assert_array_equal(got[known], expected[known])
    assert x.shape == (1, 16, 32, 3) and y["segmentation"].shape == (1, 16, 32)
    head.check_label_values(y["segmentation"].numpy())


def test_augmentation_flips_image_and_maps_together():
    heads = [mtk.heads.Segmentation("seg", num_classes=20, output_size=(4, 5)),
             mtk.heads.DenseRegression("normals", channels=3, output_size=(4, 5)),
             mtk.heads.Binary("flag")]
    augment = mtk.data.MapAugmentation(heads, negate_on_flip={"normals": 0}, seed=3)
    ids = np.arange(20).reshape(4, 5)
    image = tf.constant(ids[..., None], tf.float32)
    normals = np.stack([ids, ids, ids], -1).astype("float32")
    labels = {"seg": tf.constant(ids, tf.int64), "normals": tf.constant(normals),
              "flag": tf.constant(1.0)}
    flips = 0
    for _ in range(16):
        x, y = augment(image, labels)
        np.testing.assert_array_equal(x.numpy()[..., 0], y["seg"].numpy())
        flipped = not np.array_equal(y["seg"].numpy(), ids)
        flips += flipped
        sign = -1.0 if flipped else 1.0
        np.testing.assert_array_equal(y["normals"][..., 0], sign * x.numpy()[..., 0])
        np.testing.assert_array_equal(y["normals"][..., 1], x.numpy()[..., 0])
        assert float(y["flag"]) == 1.0
    assert 0 < flips < 16
    crop = mtk.data.MapAugmentation(heads, flip=False, crop_scale=(0.5, 0.5), seed=0)
    x, y = crop(image, {**labels, "normals": tf.where(
        tf.constant(ids[..., None] == 7), np.nan, normals)})
    assert y["seg"].shape == (4, 5) and x.shape == (4, 5, 1)
    assert set(np.unique(y["seg"])) <= set(range(20))   # nearest: ids stay ids
    with pytest.raises(ValueError, match=r"negate_on_flip\['seg'\]"):
        mtk.data.MapAugmentation(heads, negate_on_flip={"seg": 0})


@pytest.mark.parametrize("method", ["gradnorm", "pcgrad"])
def test_balancing_methods_train_dense_heads(method):
    """Gradients at the feature map (GradNorm) and per-task trunk gradients."""
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        conv_trunk(), trunk_output="conv_b", trunk_weights=None,
        freeze_trunk=False, loss_weighting=method,
        heads=[mtk.heads.Segmentation("parts", num_classes=3, decoder_filters=4),
               mtk.heads.Classification("item", num_classes=2)])
    x, y = first(dense_data(), 8)
    y = {"parts": y["parts"], "item": y["item"]}
    before = model.trunk.get_layer("conv_b").kernel.numpy().copy()
    logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert all(np.isfinite(v[0]) for v in logs.values())
    assert not np.array_equal(before, model.trunk.get_layer("conv_b").kernel.numpy())


def test_tuning_score_chance_levels_of_dense_heads():
    model = dense_model()
    x, y = dense_data()
    with pytest.raises(Exception, match=r"Head 'normals': no chance level .*angle_mean"):
        mtk.tuning.score_references(model, validation_data=(x, y))
    heads = [h for h in dense_heads() if h.name != "normals"]
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        conv_trunk(), heads=heads, trunk_output="conv_b", trunk_weights=None)
    y = {k: v for k, v in y.items() if k != "normals"}
    y["item"] = np.arange(8) % 2
    refs = {r.head: r for r in mtk.tuning.score_references(model, validation_data=(x, y))}
    parts = y["parts"][(y["parts"] != 255)]
    counts = np.bincount(parts)
    assert refs["parts"].reference == pytest.approx(counts.max() / parts.size / 3)
    assert refs["parts"].log_name == "parts_miou" and refs["parts"].perfect == 1.0
    assert refs["depth"].log_name == "depth_abs_error" and not refs["depth"].higher_is_better
    assert refs["depth"].reference > 0
