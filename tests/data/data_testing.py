"""Helpers shared by the mtk.data tests: small Fashion-MNIST files etc."""

import gzip

import keras
import numpy as np
import tensorflow_datasets as tfds

from mtk.data import fashion_mnist
from mtk.data.multi_fashion import MultiFashionConfig

TRAIN_ITEMS = 30
TEST_ITEMS = 12
TINY = MultiFashionConfig(name="tiny", train_size=24, test_size=8, seed=3)


def write_idx(path, array):
    """Writes ``array`` (uint8) as an IDX file, gzipped when path ends .gz."""
    header = (
        bytes([0, 0, 0x08, array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
    )
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def make_fashion_arrays(train_items=TRAIN_ITEMS, test_items=TEST_ITEMS, seed=0):
    """Random but distinct 28x28 items with labels covering all classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", train_items), ("test", test_items)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    return arrays


def write_fashion_files(directory, gz=True, **kwargs):
    """Writes the four Fashion-MNIST files (small) and returns their arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = make_fashion_arrays(**kwargs)
    for key, stem in fashion_mnist.FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


def tiny_trunk(input_shape):
    """A few-parameter image trunk to build test models quickly."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="tiny_trunk")


def prepare_multi_fashion(data_dir, manual_dir, config=TINY):
    """Builds MultiFashion with ``config`` from the files in ``manual_dir``."""
    builder = tfds.builder("multi_fashion", config=config, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
