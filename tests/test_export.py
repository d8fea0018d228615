"""Tests of mtk.export: TF Serving SavedModels and TFLite files."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import IMAGE_SHAPE
from conftest import four_heads
from conftest import minilm_dir
from conftest import small_cnn
from tensorflow_serving.apis import prediction_log_pb2

import mtk
import mtk.export
from mtk.export import export_saved_model
from mtk.export import export_tflite

RUN_SAVED_MODEL = os.path.join(os.path.dirname(__file__), "export_run_saved_model.py")
IMAGE_OUTPUTS = {
    "item": tf.float32,
    "item_class_id": tf.int64,
    "item_class_name": tf.string,
    "size": tf.float32,
    "size_class_id": tf.int64,
    "flag": tf.float32,
    "tags": tf.float32,
    "price": tf.float32,
}


def calibrate_batch_norm(model, x):
    """Sets every BatchNormalization's moving statistics to those of ``x``.

    A randomly initialised MobileNetV3 has moving mean 0 / variance 1, and its
    inference outputs shrink to ~1e-11: every head would then predict the same
    constant and a parity test would compare constants.
    """
    trunk = model.get_layer("trunk")
    trainable = trunk.trainable
    trunk.trainable = True
    norms = [
        layer
        for layer in trunk._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    trunk.trainable = trainable


def images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n,) + IMAGE_SHAPE).astype("float32")


def signature(path):
    return tf.saved_model.load(path).signatures["serving_default"]


def run_without_mtk(path, inputs, tmp_path, text=False):
    """Runs serving_default in a fresh Python that cannot import mtk."""
    inputs_path = os.path.join(tmp_path, "inputs.npz")
    outputs_path = os.path.join(tmp_path, "outputs.npz")
    np.savez(inputs_path, **inputs)
    command = [sys.executable, RUN_SAVED_MODEL, path, inputs_path, outputs_path]
    result = subprocess.run(
        command + (["--text"] if text else []),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(outputs_path) as outputs:
        return {key: outputs[key] for key in outputs.files}


def assert_outputs_match(got, model, x, heads, atol, rtol=0.0):
    expected = model.predict(x, verbose=0)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=atol, rtol=rtol)
    for name, head in heads.items():
        if isinstance(head, mtk.heads.Classification):
            class_id = np.argmax(expected[name], axis=-1)
            np.testing.assert_array_equal(got[f"{name}_class_id"], class_id)
            if head.class_names is not None:
                names = np.array(head.class_names, dtype=object)[class_id]
                decoded = [v.decode() for v in got[f"{name}_class_name"]]
                assert decoded == list(names)


def image_heads():
    return four_heads() + [mtk.heads.Classification("size", num_classes=3)]


@pytest.fixture(scope="module")
def image_model():
    """Uncompiled mobilenet_v3_small with five heads and non-constant outputs."""
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        "mobilenet_v3_small",
        input_shape=IMAGE_SHAPE,
        trunk_weights=None,
        heads=image_heads(),
        compile=False,
    )
    calibrate_batch_norm(model, images(16, seed=0))
    return model


@pytest.fixture(scope="module")
def image_export(image_model, tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("serving") / "items"
    path = export_saved_model(
        image_model, base_dir, warmup_inputs=images(3, seed=1)
    )
    return base_dir, path


@pytest.fixture
def small_model():
    """A compiled model on a small CNN trunk: cheap to export."""
    keras.utils.set_random_seed(0)
    return mtk.build_multitask_model(
        small_cnn(),
        trunk_output="features",
        heads=[
            mtk.heads.Classification("item", num_classes=3, class_names=list("abc")),
            mtk.heads.Regression("price"),
        ],
    )


# === SavedModel: layout, signature, parity ===


def test_signature_has_named_inputs_and_outputs(image_export):
    base_dir, path = image_export
    assert path == os.path.join(base_dir, "1")
    # Only the finished version: no temporary directory left behind.
    assert os.listdir(base_dir) == ["1"]
    serving = signature(path)
    args, kwargs = serving.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["image"]
    assert kwargs["image"].dtype == tf.float32
    assert tuple(kwargs["image"].shape) == (None,) + IMAGE_SHAPE
    outputs = serving.structured_outputs
    assert {k: v.dtype for k, v in outputs.items()} == IMAGE_OUTPUTS


@pytest.mark.slow
def test_image_export_runs_without_mtk(image_export, image_model, tmp_path):
    _, path = image_export
    x = images(16, seed=3)
    got = run_without_mtk(path, {"image": x}, tmp_path)
    assert set(got) == set(IMAGE_OUTPUTS)
    # The calibrated model predicts different classes for different images.
    assert len(set(got["item_class_id"])) > 1
    assert len(set(got["size_class_id"])) > 1
    assert_outputs_match(got, image_model, x, mtk.heads.heads_of(image_model), 1e-5)


def test_warmup_requests_are_prediction_logs_the_signature_accepts(
    image_export,
):
    base_dir, path = image_export
    warmup_path = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    records = list(tf.data.TFRecordDataset(warmup_path).as_numpy_iterator())
    assert len(records) == 3
    serving = signature(path)
    examples = images(3, seed=1)
    for record, example in zip(records, examples):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.name == "items"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["image"]
        tensor = tf.make_ndarray(request.inputs["image"])
        np.testing.assert_array_equal(tensor, example[None])
        outputs = serving(image=tf.constant(tensor))
        assert set(outputs) == set(IMAGE_OUTPUTS)


def test_uint8_input_is_cast_in_the_graph(small_model, tmp_path):
    path = export_saved_model(small_model, tmp_path / "m", input_dtype="uint8")
    serving = signature(path)
    assert serving.structured_input_signature[1]["inputs"].dtype == tf.uint8
    x = np.random.default_rng(0).integers(0, 256, (4,) + IMAGE_SHAPE, "uint8")
    got = {k: v.numpy() for k, v in serving(inputs=tf.constant(x)).items()}
    assert set(got) == {"item", "item_class_id", "item_class_name", "price"}
    assert_outputs_match(
        got, small_model, x.astype("float32"), mtk.heads.heads_of(small_model), 1e-5
    )


@pytest.mark.slow
def test_text_export_runs_without_mtk(tmp_path):
    model = mtk.build_multitask_model(
        minilm_dir(),
        sequence_length=16,
        heads=[
            mtk.heads.Classification(
                "topic", num_classes=3, class_names=["sport", "food", "tech"]
            ),
            mtk.heads.Regression("score"),
        ],
    )
    texts = [
        "the match ended in a draw",
        "a recipe for lentil soup",
        "the new phone has a faster chip",
        "",
        "a sentence that is far longer than the sixteen tokens the model "
        "reads, so the tokenizer in the graph must truncate it",
    ]
    path = export_saved_model(model, tmp_path / "text", warmup_inputs=texts[:2])
    serving = signature(path)
    kwargs = serving.structured_input_signature[1]
    assert list(kwargs) == ["text"]
    assert kwargs["text"].dtype == tf.string
    assert set(serving.structured_outputs) == {
        "topic",
        "topic_class_id",
        "topic_class_name",
        "score",
    }
    got = run_without_mtk(
        path, {"text": np.array(texts, dtype=bytes)}, tmp_path, text=True
    )
    assert_outputs_match(
        got, model, tf.constant(texts), mtk.heads.heads_of(model), 1e-5
    )
    with pytest.raises(ValueError, match="takes text"):
        export_tflite(model, tmp_path / "text.tflite")


# === SavedModel: versions and atomic writes ===


def test_versions_count_up_and_ignore_other_entries(small_model, tmp_path):
    base_dir = tmp_path / "m"
    assert export_saved_model(small_model, base_dir).endswith(os.sep + "1")
    os.makedirs(base_dir / "notes")
    assert export_saved_model(small_model, base_dir, version=7).endswith("7")
    assert export_saved_model(small_model, base_dir).endswith("8")
    assert sorted(os.listdir(base_dir)) == ["1", "7", "8", "notes"]


def test_failure_mid_export_leaves_no_version(small_model, tmp_path, monkeypatch):
    def fail(path, *args):
        # The SavedModel is written by now; fail while adding the warm-up file.
        version_dir = os.path.dirname(os.path.dirname(path))
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
        raise RuntimeError("disk full")

    monkeypatch.setattr(mtk.export, "_write_warmup_requests", fail)
    base_dir = tmp_path / "m"
    x = images(2, seed=0)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(small_model, base_dir, warmup_inputs=x)
    assert os.listdir(base_dir) == []
    monkeypatch.undo()
    assert export_saved_model(small_model, base_dir).endswith(os.sep + "1")


def test_uncompiled_model_exports(tmp_path):
    # Serving runs inference only; the image tests' model is uncompiled too.
    uncompiled = mtk.build_multitask_model(
        small_cnn(),
        trunk_output="features",
        heads=[
            mtk.heads.Classification("item", num_classes=3, class_names=list("abc")),
            mtk.heads.Regression("price"),
        ],
        compile=False,
    )
    assert not uncompiled.compiled
    path = export_saved_model(uncompiled, tmp_path / "m")
    assert set(signature(path).structured_outputs) == {
        "item",
        "item_class_id",
        "item_class_name",
        "price",
    }


# === Bad input ===


def test_existing_version_is_refused(small_model, tmp_path):
    base_dir = tmp_path / "m"
    os.makedirs(base_dir / "3")
    marker = base_dir / "3" / "keep.txt"
    marker.write_text("served")
    with pytest.raises(ValueError, match="version=3.*already exists"):
        export_saved_model(small_model, base_dir, version=3)
    assert sorted(os.listdir(base_dir)) == ["3"]
    assert os.listdir(base_dir / "3") == ["keep.txt"]


@pytest.mark.parametrize("version", ["3", 1.0, 2.5, True])
def test_non_integer_version_is_refused(small_model, tmp_path, version):
    with pytest.raises(TypeError, match="version must be an integer"):
        export_saved_model(small_model, tmp_path / "m", version=version)
    assert not os.path.exists(tmp_path / "m")


def test_negative_version_is_refused(small_model, tmp_path):
    with pytest.raises(ValueError, match="non-negative"):
        export_saved_model(small_model, tmp_path / "m", version=-1)


def test_base_dir_that_is_a_file_is_refused(small_model, tmp_path):
    path = tmp_path / "model"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match="is a file"):
        export_saved_model(small_model, path)


def test_unbuilt_model_is_refused(tmp_path):
    class Unbuilt(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="'unbuilt' is not built"):
        export_saved_model(Unbuilt(name="unbuilt"), tmp_path / "m")
    assert not os.path.exists(tmp_path / "m")


def test_model_without_heads_is_refused(tmp_path):
    plain = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2)], name="plain"
    )
    with pytest.raises(ValueError, match="'plain' has no mtk heads"):
        export_saved_model(plain, tmp_path / "m")
    with pytest.raises(TypeError, match="keras.Model"):
        export_saved_model("model.keras", tmp_path / "m")


def test_bad_warmup_inputs_and_dtype_are_refused(small_model, tmp_path):
    with pytest.raises(ValueError, match=r"warmup_inputs .*shape \(2, 8, 8, 3\)"):
        export_saved_model(
            small_model, tmp_path / "m", warmup_inputs=np.zeros((2, 8, 8, 3))
        )
    with pytest.raises(ValueError, match="warmup_inputs must be numeric"):
        export_saved_model(small_model, tmp_path / "m", warmup_inputs=["a"])
    with pytest.raises(ValueError, match="input_dtype='string'"):
        export_saved_model(small_model, tmp_path / "m", input_dtype="string")
    assert not os.path.exists(tmp_path / "m")


def test_bad_tflite_arguments_are_refused(small_model, tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_tflite(small_model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="is a directory"):
        export_tflite(small_model, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        export_tflite(small_model, tmp_path / "missing" / "m.tflite")


# === TFLite ===

# Allowed |TFLite - Keras| per output, as (mean, max) over all values, in
# units of the output's scale max(1, largest |value|). float32 kernels differ
# by rounding only; quantized weights move the outputs. Measured on this
# model (32 images): float16 mean <= 0.002, max <= 0.041; dynamic mean
# <= 0.023, max <= 0.31 (a random-init trunk with batch-calibrated norms is
# harder to quantize than a trained one).
TFLITE_TOLERANCE = {
    None: (1e-5, 1e-4),
    "float16": (0.01, 0.1),
    "dynamic": (0.05, 0.5),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.parametrize("quantize", [None, "float16", "dynamic"])
def test_tflite_matches_keras_model(image_model, tmp_path, quantize):
    path = export_tflite(image_model, tmp_path / "m.tflite", quantize=quantize)
    assert os.listdir(tmp_path) == ["m.tflite"]
    interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    assert interpreter.get_signature_list()["serving_default"] == {
        "inputs": ["image"],
        "outputs": sorted(IMAGE_OUTPUTS),
    }
    x = images(32, seed=3)
    got = runner(image=x)
    expected = image_model.predict(x, verbose=0)
    assert set(got) == set(IMAGE_OUTPUTS)
    mean_tolerance, max_tolerance = TFLITE_TOLERANCE[quantize]
    for name in expected:
        scale = max(1.0, float(np.abs(expected[name]).max()))
        difference = np.abs(got[name] - expected[name]) / scale
        assert difference.mean() <= mean_tolerance, (name, difference.mean())
        assert difference.max() <= max_tolerance, (name, difference.max())
    if quantize is None:
        # TFLite's float32 kernels round differently: ~1e-5 relative.
        assert_outputs_match(
            got, image_model, x, mtk.heads.heads_of(image_model), 1e-4, rtol=1e-5
        )
