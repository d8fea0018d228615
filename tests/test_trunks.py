import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from conftest import IMAGE_SHAPE
from testing import run_model_saving_test
from conftest import minilm_dir
from conftest import small_cnn
from mtk.preprocessing import ApplicationPreprocessing
from mtk.trunks import APPLICATIONS
from mtk.trunks import build_trunk


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_every_application_builds_with_its_own_preprocessing(name):
    inputs, features = build_trunk(name, input_shape=IMAGE_SHAPE, trunk_weights=None)
    assert len(features.shape) == 2
    model = keras.Model(inputs, features)
    trunk = model.get_layer("trunk")
    x = np.random.default_rng(0).uniform(0, 255, (2,) + IMAGE_SHAPE).astype("float32")
    module = __import__(f"keras.applications.{APPLICATIONS[name][1]}",
                        fromlist=["preprocess_input"])
    # The model applies exactly the application's preprocess_input before the trunk.
    pooled = keras.ops.mean(trunk(module.preprocess_input(x.copy())), axis=(1, 2))
    np.testing.assert_allclose(model(x), pooled, rtol=1e-4, atol=1e-4)


def test_resnet_preprocessing_is_caffe_style():
    x = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype("float32")
    got = ApplicationPreprocessing("resnet50")(x)
    expected = x[..., ::-1] - np.array([103.939, 116.779, 123.68], "float32")
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_local_weights_file_is_loaded(tmp_path):
    keras.utils.set_random_seed(1)
    source = mtk.build_multitask_model(
        "mobilenet_v3_small", input_shape=IMAGE_SHAPE, trunk_weights=None,
        heads=[mtk.heads.Binary("a")])
    path = str(tmp_path / "trunk.weights.h5")
    source.get_layer("trunk").save_weights(path)
    keras.utils.set_random_seed(2)
    fresh = mtk.build_multitask_model(
        "mobilenet_v3_small", input_shape=IMAGE_SHAPE, trunk_weights=None,
        heads=[mtk.heads.Binary("a")])
    loaded = mtk.build_multitask_model(
        "mobilenet_v3_small", input_shape=IMAGE_SHAPE, trunk_weights=path,
        heads=[mtk.heads.Binary("a")])
    want = source.get_layer("trunk").get_weights()
    assert not all(np.array_equal(a, b) for a, b in
                   zip(want, fresh.get_layer("trunk").get_weights()))
    for a, b in zip(want, loaded.get_layer("trunk").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unknown_trunk_lists_known_names():
    with pytest.raises(ValueError, match="Unknown trunk 'resnet9000'.*mobilenet_v3_small"):
        build_trunk("resnet9000", input_shape=IMAGE_SHAPE)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(32, 32, 1), trunk_weights=None), r"RGB images.*\(32, 32, 1\)"),
    (dict(input_shape=None, trunk_weights=None), "needs input_shape"),
    # ImageNet weights need inputs of at least 32x32: checked before any download.
    (dict(input_shape=(16, 16, 3)), r"cannot take input_shape=\(16, 16, 3\)"),
])
def test_input_shape_the_trunk_cannot_take(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_trunk("resnet50", **kwargs)


def test_bad_trunk_weights():
    with pytest.raises(ValueError, match="trunk_weights must be"):
        build_trunk("resnet50", input_shape=IMAGE_SHAPE, trunk_weights="nope.h5")


def test_model_trunk_cut_at_layer_keeps_weights(tmp_path):
    source = small_cnn()
    path = str(tmp_path / "source.keras")
    source.save(path)
    for trunk in (source, path):
        model = mtk.build_multitask_model(
            trunk, trunk_output="features", heads=[mtk.heads.Binary("a")])
        cut = model.get_layer("trunk")
        assert cut.output.shape == (None, 8)  # the "features" layer, not the logits
        for a, b in zip(cut.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_model_trunk_errors():
    with pytest.raises(ValueError, match="trunk_output='nope' names no layer.*conv_a"):
        build_trunk(small_cnn(), trunk_output="nope")
    with pytest.raises(ValueError, match="trunk_output cuts a keras.applications"):
        build_trunk(minilm_dir(), trunk_output="x")
    with pytest.raises(ValueError, match="trunk_output='x' names no layer.*conv1"):
        build_trunk("resnet50", input_shape=IMAGE_SHAPE, trunk_output="x",
                    trunk_weights=None)
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        build_trunk("missing.keras")


def test_model_trunk_from_scratch_reinitialises():
    source = small_cnn()
    model = mtk.build_multitask_model(
        source, trunk_weights=None, heads=[mtk.heads.Binary("a")])
    kernel = model.get_layer("trunk").get_layer("conv_a").kernel
    assert kernel is not source.get_layer("conv_a").kernel
    assert not np.array_equal(kernel.numpy(), source.get_layer("conv_a").kernel.numpy())


def _cosine(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.slow
def test_minilm_text_trunk_from_packaged_checkpoint(tmp_path):
    model = mtk.build_multitask_model(
        minilm_dir(), sequence_length=16,
        heads=[mtk.heads.Binary("spam"), mtk.heads.Classification("topic", 3)])
    assert model.inputs[0].dtype == "string"
    features = keras.Model(model.inputs, model.get_layer("pooling").output)
    a, b, c = features.predict(tf.constant(
        ["A man is eating food.", "A man is eating a meal.",
         "The stock market fell sharply today."]), verbose=0)
    # Pretrained sentence embeddings: paraphrases are closer than unrelated text.
    assert _cosine(a, b) > _cosine(a, c) + 0.3
    out = model.predict(tf.constant(["win money now", "see you at lunch"]), verbose=0)
    assert out["spam"].shape == (2, 1) and out["topic"].shape == (2, 3)
    text = tf.constant(["hello there", "cheap pills"])
    for unfreeze in (None, "top:2"):  # frozen, then partly unfrozen
        if unfreeze:
            mtk.unfreeze_trunk(model, unfreeze)
        loaded = run_model_saving_test(model, text, str(tmp_path / "text.keras"))
        # Trainable flags survive loading, down to the transformer blocks' sub-layers.
        assert len(loaded.trainable_weights) == len(model.trainable_weights)


@pytest.mark.slow
def test_minilm_from_scratch_is_not_pretrained():
    model = mtk.build_multitask_model(
        minilm_dir(), sequence_length=8, trunk_weights=None,
        heads=[mtk.heads.Binary("spam")])
    pretrained = mtk.build_multitask_model(
        minilm_dir(), sequence_length=8, heads=[mtk.heads.Binary("spam")])
    a = model.get_layer("trunk").get_layer("token_embedding").get_weights()[0]
    b = pretrained.get_layer("trunk").get_layer("token_embedding").get_weights()[0]
    assert a.shape == b.shape and not np.allclose(a, b)
