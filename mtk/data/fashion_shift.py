"""An offline domain shift: Fashion-MNIST -> "Fashion-MNIST-M".

The DANN paper's MNIST -> MNIST-M shift (Ganin et al., JMLR 2016, Sec.
5.2.2) blends each digit with a random colour patch of a natural photo
(BSDS500) by absolute difference: ``|digit - patch|`` per channel. No photos
are on the machines mtk is built on, so `fashion_mnist_m` blends
Fashion-MNIST items the same way with random smooth colour textures
(uniform noise on a coarse grid, bilinearly upsampled, plus fine noise,
scaled to [0, 0.5]): the background takes the texture's colours, the item
its inverted colours.
A network trained on the grey originals loses much of its accuracy there.

`load_fashion_shift` returns the source (grey, as RGB) and target
(re-rendered) splits with two heads' labels, ``item`` (10 classes) and
``is_footwear``; `dann_cnn` is the DANN paper's MNIST feature extractor.
"""

import keras
import numpy as np

from mtk.data.fashion_mnist import load_fashion_mnist

FOOTWEAR = (5, 7, 9)  # Sandal, Sneaker, Ankle boot


def fashion_mnist_m(images, seed=0, grid=4, fine_noise=0.15, strength=0.5):
    """Re-renders grey 28x28 images on textured colour backgrounds.

    Per image, a texture ``T`` (values in [0, strength], 3 channels): uniform noise
    on a ``grid`` x ``grid`` lattice, bilinearly upsampled, plus uniform
    noise of amplitude ``fine_noise`` per pixel, clipped. The result is
    ``|x - T|`` with ``x`` the image in [0, 1] (MNIST-M's blending).

    Args:
        images: uint8 array ``(n, 28, 28)`` (or ``(n, 28, 28, 1)``).
        seed: seed of the textures.
        grid: the texture's coarse resolution.
        fine_noise: amplitude of the per-pixel noise.
        strength: the texture's largest value. MNIST-M's full range (1.0)
            turns Fashion-MNIST's large filled items into their negatives on
            bright backgrounds: a source-only network falls to chance
            (9 % item accuracy in a 3-epoch probe). 0.5 keeps items brighter
            than their background, a shift of MNIST-M's size.

    Returns:
        uint8 array ``(n, 28, 28, 3)``.

    Example:

    >>> grey = np.zeros((2, 28, 28), "uint8"); grey[:, 10:18, 10:18] = 255
    >>> rendered = mtk.data.fashion_mnist_m(grey)
    >>> rendered.shape, rendered.dtype.name
    ((2, 28, 28, 3), 'uint8')
    >>> bool(rendered[:, :4, :4].mean() > 40)  # the black background is coloured
    True
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    n, height, width = images.shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (n, grid, grid, 3)).astype("float32")
    # Bilinear upsampling of the lattice to the image size.
    rows = np.linspace(0, grid - 1, height)
    cols = np.linspace(0, grid - 1, width)
    r0 = np.minimum(np.floor(rows).astype(int), grid - 2)
    c0 = np.minimum(np.floor(cols).astype(int), grid - 2)
    fr = (rows - r0)[None, :, None, None]
    fc = (cols - c0)[None, None, :, None]

    def at(r, c):
        return coarse[:, r][:, :, c]

    texture = (
        at(r0, c0) * (1 - fr) * (1 - fc) + at(r0 + 1, c0) * fr * (1 - fc)
        + at(r0, c0 + 1) * (1 - fr) * fc + at(r0 + 1, c0 + 1) * fr * fc
    )
    texture += rng.uniform(-fine_noise, fine_noise, texture.shape)
    texture = strength * np.clip(texture, 0.0, 1.0)
    x = images.astype("float32")[..., None] / 255.0
    return np.round(np.abs(x - texture) * 255.0).astype("uint8")


def _labels(classes):
    return {
        "item": classes.astype("int64"),
        "is_footwear": np.isin(classes, FOOTWEAR).astype("float32"),
    }


def load_fashion_shift(source_size=6000, target_size=6000, test_size=2000,
                       seed=0, data_dir=None):
    """Fashion-MNIST (source) and `fashion_mnist_m` (target) splits.

    Source and target training images are disjoint draws from Fashion-MNIST's
    training set (the target's labels are for the target-supervised ceiling
    and evaluation only); both test splits render the same test images.

    Args:
        source_size: labelled source training examples.
        target_size: target training examples.
        test_size: test examples per domain.
        seed: seed of the draws and textures.
        data_dir: where the Fashion-MNIST files are (see
            `mtk.data.load_fashion_mnist`).

    Returns:
        A dict with ``"source"``, ``"target"``, ``"source_test"`` and
        ``"target_test"``, each ``(images, {"item": ..., "is_footwear":
        ...})`` with uint8 RGB images ``(n, 28, 28, 3)``.

    Example:

    >>> splits = mtk.data.load_fashion_shift(100, 50, 20)
    >>> [splits[k][0].shape[0] for k in ("source", "target", "target_test")]
    [100, 50, 20]
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    if source_size + target_size > len(x_train) or test_size > len(x_test):
        raise ValueError(
            f"source_size + target_size ({source_size + target_size}) must be "
            f"<= {len(x_train)} and test_size ({test_size}) <= {len(x_test)}."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_train))
    source, target = order[:source_size], order[source_size:source_size + target_size]
    test = rng.permutation(len(x_test))[:test_size]

    def grey(images):
        return np.repeat(images[..., None], 3, axis=-1)

    return {
        "source": (grey(x_train[source]), _labels(y_train[source])),
        "target": (fashion_mnist_m(x_train[target], seed=seed + 1),
                   _labels(y_train[target])),
        "source_test": (grey(x_test[test]), _labels(y_test[test])),
        "target_test": (fashion_mnist_m(x_test[test], seed=seed + 2),
                        _labels(y_test[test])),
    }


def dann_cnn(input_shape=(28, 28, 3), name="dann_cnn"):
    """The DANN paper's MNIST feature extractor, ending in 100 features.

    Pixels 0-255 -> conv 32 5x5 -> max-pool -> conv 48 5x5 -> max-pool ->
    dense 100 (ReLU), the shared features heads and adaptation read
    (Ganin et al. 2016, Fig. 4, with the first label-predictor layer as the
    feature layer).

    Example:

    >>> mtk.data.dann_cnn().output.shape
    (None, 100)
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(32, 5, activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(48, 5, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(100, activation="relu", name="features")(x)
    return keras.Model(inputs, x, name=name)
