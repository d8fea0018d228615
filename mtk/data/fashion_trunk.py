"""An offline "pretrained trunk": a small CNN that learned Fashion-MNIST.

No ImageNet weights can be downloaded on the machines mtk is built on, so
recipes and benchmarks that show transfer learning pretrain their own trunk
on a source task from the local Fashion-MNIST files: `fashion_cnn`, trained
by `pretrain_fashion_trunk` to classify single items placed at random on a
MultiFashion-sized canvas, saved as ``.keras`` and cut at `TRUNK_OUTPUT` by
``mtk.build_multitask_model(path, trunk_output=TRUNK_OUTPUT, ...)``.
"""

import time

import keras
import numpy as np

from mtk.data.fashion_mnist import load_fashion_mnist
from mtk.data.multi_fashion import CANVAS_SIZE

# Where the pretrained network is cut: its convolutional features. The layers
# above (Dense "features", then "classes") learned the source task, which
# ignores where an item is; MultiFashion's tasks depend on exactly that.
TRUNK_OUTPUT = "conv_features"


def _conv_blocks(input_shape, filters):
    """Pixels 0-255 -> rescale -> (conv, BN, ReLU, max-pool) per filter count.

    The blocks' outputs are named ``block1_pool``, ``block2_pool``, ...: where
    `mtk.sharing.MTAN` / ``CrossStitch`` attach.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for block, count in enumerate(filters, start=1):
        x = keras.layers.Conv2D(count, 3, padding="same", use_bias=False)(x)
        # momentum=0.9: the moving statistics settle within the few hundred
        # steps a small from-scratch run gets (0.99 would not, and a scratch
        # baseline would look worse than it is).
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    return inputs, x


def fashion_cnn(input_shape=(CANVAS_SIZE, CANVAS_SIZE, 1), num_classes=10,
                name="fashion_cnn"):
    """A small CNN for grayscale images; `TRUNK_OUTPUT` ends the trunk.

    It flattens rather than pools the feature map: MultiFashion's tasks are
    "which item is top-left" and "which is bottom-right", so the features must
    keep where things are.

    Example:

    >>> net = mtk.data.fashion_cnn()
    >>> net.get_layer(mtk.data.fashion_trunk.TRUNK_OUTPUT).output.shape
    (None, 2592)
    """
    inputs, x = _conv_blocks(input_shape, (16, 32))
    x = keras.layers.Flatten(name=TRUNK_OUTPUT)(x)
    x = keras.layers.Dense(128, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


def quickstart_cnn(num_classes=5, name="source_cnn"):
    """The quick start's source network for 28x28 Fashion-MNIST images.

    Its ``features`` layer (a 64-unit global average pool) ends the trunk
    (``trunk_output="features"``); ``source_classes`` learned the source task.
    The named block outputs (``block1_pool``, ``block2_pool``,
    ``block3_conv``) are where `mtk.sharing.MTAN` / ``CrossStitch`` attach.

    Example:

    >>> mtk.data.quickstart_cnn().get_layer("features").output.shape
    (None, 64)
    """
    inputs, x = _conv_blocks((28, 28, 1), (32, 64))
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu",
                            name="block3_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="source_classes")(x)
    return keras.Model(inputs, outputs, name=name)


def place_on_canvas(items, seed, canvas=CANVAS_SIZE):
    """Puts 28x28 items at random positions of a ``canvas`` square image.

    Example:

    >>> images = mtk.data.fashion_trunk.place_on_canvas(
    ...     np.full((2, 28, 28), 7, np.uint8), seed=0)
    >>> images.shape, int(images.sum()) == 2 * 28 * 28 * 7
    ((2, 36, 36, 1), True)
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((len(items), canvas, canvas, 1), np.uint8)
    rows = rng.integers(0, canvas - 27, len(items))
    cols = rng.integers(0, canvas - 27, len(items))
    for i, (item, r, c) in enumerate(zip(items, rows, cols)):
        out[i, r : r + 28, c : c + 28, 0] = item
    return out


def pretrain_fashion_trunk(
    path,
    *,
    examples=30_000,
    epochs=2,
    seed=0,
    data_dir=None,
    batch_size=128,
    verbose=0,
):
    """Trains `fashion_cnn` on Fashion-MNIST classification and saves it.

    The source task: one Fashion-MNIST item per image, at a random position
    of a 36x36 canvas (MultiFashion's size), 10 classes. Only Fashion-MNIST's
    training images are used; MultiFashion's test canvases are built from its
    test images, which the trunk never sees.

    Args:
        path: where to save the ``.keras`` model.
        examples: number of training images used.
        epochs: training epochs.
        seed: seed of the image draw, placement and initialisation.
        data_dir: directory with the Fashion-MNIST files (searched first).
        batch_size: batch size.
        verbose: `keras.Model.fit` verbosity.

    Returns:
        ``(path, seconds, test accuracy on single items)``.
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x_train), min(examples, len(x_train)), replace=False)
    images = place_on_canvas(x_train[idx], seed)
    test_images = place_on_canvas(x_test, seed + 1)
    keras.utils.set_random_seed(seed)
    net = fashion_cnn()
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    net.fit(
        images.astype("float32"), y_train[idx], batch_size=batch_size,
        epochs=epochs, shuffle=True, verbose=verbose,
    )
    seconds = time.perf_counter() - start
    accuracy = net.evaluate(
        test_images.astype("float32"), y_test, batch_size=512, verbose=0
    )[1]
    net.save(path)
    return str(path), seconds, float(accuracy)
