"""MultiFashion: a two-task image benchmark as a TFDS dataset builder.

MultiFashion is the Fashion-MNIST variant of MultiMNIST used by Sener &
Koltun (2018, "Multi-Task Learning as Multi-Objective Optimization") and Lin
et al. (2019, "Pareto Multi-Task Learning"): two Fashion-MNIST items on one
36x36 canvas, one shifted to the top-left corner and one to the bottom-right
corner, overlapping in the middle (the pixel-wise maximum). The two tasks are
the classes of the two items.

Importing this module registers the builder as ``"multi_fashion"``, so
``tfds.load("multi_fashion", data_dir=...)`` and ``tfds.builder`` find it.
It is built from the local Fashion-MNIST files (see `mtk.data.fashion_mnist`)
and never downloads.

`load_multi_fashion` builds a variant of any size and returns it as numpy
arrays; `multi_fashion_heads` gives the matching heads (`TASKS` maps them to
the dataset's label features).

Dense configs (``dense=True``, e.g. ``"dense_small"``) also emit per-pixel
maps, built offline the same way: ``segmentation`` (36, 36), 0 for
background and 1 + the Fashion-MNIST class of the item that shows at the
pixel (the brighter one where they overlap: the "top" item), and
``layers`` (36, 36, 2), each item's own intensity before overlaying (what a
per-pixel regression head un-mixes). `multi_fashion_dense_heads` and
`DENSE_TASKS` fit them.
"""

import dataclasses

import keras
import numpy as np
import tensorflow_datasets as tfds

from mtk.data import fashion_mnist
from mtk.heads import Classification

CANVAS_SIZE = 36
# Top-left corner of each 28x28 item on the canvas.
LEFT_OFFSET = (0, 0)
RIGHT_OFFSET = (CANVAS_SIZE - 28, CANVAS_SIZE - 28)
# Head name -> the dataset's label feature (``tasks=`` of `mtk.data.from_tfds`).
TASKS = {"left": "label_left", "right": "label_right"}
# Classes of the dense configs' segmentation map: background, then items.
SEGMENTATION_CLASS_NAMES = ("background",) + tuple(fashion_mnist.CLASS_NAMES)


def layer_intensities(example):
    """A dense example's ``layers`` as float32 in [0, 1] (``tasks=`` source)."""
    import tensorflow as tf

    return tf.cast(example["layers"], tf.float32) / 255.0


# ``tasks=`` of `mtk.data.from_tfds` for a dense config and
# `multi_fashion_dense_heads`.
DENSE_TASKS = {
    "segmentation": "segmentation", "layers": layer_intensities, **TASKS,
}

_CITATION = """\
@inproceedings{sener2018multi,
  title={Multi-Task Learning as Multi-Objective Optimization},
  author={Sener, Ozan and Koltun, Vladlen},
  booktitle={Advances in Neural Information Processing Systems},
  year={2018}
}
@inproceedings{lin2019pareto,
  title={Pareto Multi-Task Learning},
  author={Lin, Xi and Zhen, Hui-Ling and Li, Zhenhua and Zhang, Qingfu and
          Kwong, Sam},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
"""


@dataclasses.dataclass
class MultiFashionConfig(tfds.core.BuilderConfig):
    """Sizes and seed of one MultiFashion variant.

    Args:
        name: the config name (``"multi_fashion/<name>"``).
        train_size: number of training canvases, drawn from Fashion-MNIST's
            training images.
        test_size: number of test canvases, drawn from its test images.
        seed: seed of the random pairing; equal seeds give equal datasets.
        dense: also emit the per-pixel ``segmentation`` and ``layers`` maps.
    """

    train_size: int = 120_000
    test_size: int = 20_000
    seed: int = 0
    dense: bool = False


def overlay(left_item, right_item):
    """Puts two 28x28 items on one canvas: top-left and bottom-right.

    Args:
        left_item: uint8 array (28, 28), placed at the top-left corner.
        right_item: uint8 array (28, 28), placed at the bottom-right corner.

    Returns:
        A uint8 array (36, 36, 1): where the items overlap, the brighter
        pixel wins.

    Example:

    >>> import numpy as np
    >>> from mtk.data.multi_fashion import overlay
    >>> canvas = overlay(np.full((28, 28), 9, np.uint8),
    ...                  np.full((28, 28), 5, np.uint8))
    >>> canvas.shape, canvas[0, 0, 0], canvas[20, 20, 0], canvas[35, 35, 0]
    ((36, 36, 1), np.uint8(9), np.uint8(9), np.uint8(5))
    """
    canvas = np.zeros((2, CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    for layer, item, (row, col) in (
        (0, left_item, LEFT_OFFSET),
        (1, right_item, RIGHT_OFFSET),
    ):
        canvas[layer, row : row + 28, col : col + 28] = item
    return canvas.max(axis=0)[..., np.newaxis]


def dense_maps(left_item, right_item, left_class, right_class):
    """The per-pixel labels of one canvas (see the module docstring).

    Returns:
        ``(segmentation, layers)``: uint8 (36, 36) class map (0 background,
        1 + class of the item showing at the pixel, the brighter one where
        they overlap, the left one on ties) and uint8 (36, 36, 2) intensity
        of each item's own layer.

    Example:

    >>> import numpy as np
    >>> from mtk.data.multi_fashion import dense_maps
    >>> seg, layers = dense_maps(np.full((28, 28), 9, np.uint8),
    ...                          np.full((28, 28), 5, np.uint8), 0, 3)
    >>> seg[0, 0], seg[20, 20], seg[35, 35], layers.shape
    (np.uint8(1), np.uint8(1), np.uint8(4), (36, 36, 2))
    """
    layers = np.zeros((CANVAS_SIZE, CANVAS_SIZE, 2), np.uint8)
    for layer, item, (row, col) in (
        (0, left_item, LEFT_OFFSET),
        (1, right_item, RIGHT_OFFSET),
    ):
        layers[row : row + 28, col : col + 28, layer] = item
    left, right = layers[..., 0], layers[..., 1]
    segmentation = np.where(
        (left == 0) & (right == 0), 0,
        np.where(left >= right, left_class + 1, right_class + 1),
    ).astype(np.uint8)
    return segmentation, layers


def pair_indices(num_items, size, seed):
    """Draws ``size`` (left, right) pairs of distinct item indices.

    Every item appears as the left item equally often (up to one), in a
    random order; the right item is uniform among the other items.

    Args:
        num_items: number of source items.
        size: number of pairs.
        seed: seed of the draw.

    Returns:
        Two int arrays of length ``size``: left and right indices.
    """
    rng = np.random.default_rng(seed)
    left = rng.permutation(np.resize(np.arange(num_items), size))
    # Draw from the other num_items - 1 items, then skip over `left`.
    right = rng.integers(0, num_items - 1, size)
    right = right + (right >= left)
    return left, right


class MultiFashion(tfds.core.GeneratorBasedBuilder):
    """MultiFashion: two overlapping Fashion-MNIST items per image.

    Features: ``image`` (36, 36, 1) uint8, ``label_left`` (class of the
    top-left item) and ``label_right`` (class of the bottom-right item), both
    `tfds.features.ClassLabel` with the Fashion-MNIST class names. Splits:
    ``train`` (pairs of Fashion-MNIST training items) and ``test`` (pairs of
    test items).

    Configs: ``"paper"`` (default; 120,000 train / 20,000 test, the sizes
    Sener & Koltun and Lin et al. used) and ``"small"`` (12,000 / 2,000).
    Other sizes: pass ``config=MultiFashionConfig(name=..., train_size=...,
    test_size=...)`` to `tfds.builder` (or ``builder_kwargs`` of `tfds.load`).

    The source files come from ``manual_dir`` when it holds them (TFDS's
    ``download_config=tfds.download.DownloadConfig(manual_dir=...)``, by
    default ``<data_dir>/downloads/manual``), else from the places
    `mtk.data.load_fashion_mnist` searches.

    Example:

    >>> import tempfile
    >>> import tensorflow_datasets as tfds
    >>> from mtk.data import MultiFashionConfig  # Registers multi_fashion.
    >>> builder = tfds.builder(
    ...     "multi_fashion",
    ...     config=MultiFashionConfig(name="doc", train_size=8, test_size=4),
    ...     data_dir=tempfile.mkdtemp())
    >>> builder.download_and_prepare()  # doctest: +ELLIPSIS
    Downloading and preparing dataset ...
    Dataset multi_fashion downloaded and prepared to ...
    >>> example = next(iter(builder.as_dataset(split="test")))
    >>> example["image"].shape, builder.info.features["label_left"].names[0]
    (TensorShape([36, 36, 1]), 'T-shirt/top')
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        MultiFashionConfig(name="paper", train_size=120_000, test_size=20_000),
        MultiFashionConfig(name="small", train_size=12_000, test_size=2_000),
        MultiFashionConfig(
            name="dense_small", train_size=12_000, test_size=2_000, dense=True
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional. Put the four Fashion-MNIST files "
        f"({', '.join(f + '.gz' for f in fashion_mnist.FILES.values())}) in "
        "manual_dir. Without them the builder uses the files in the Keras "
        "cache or /usr/share/datasets/fashion-mnist "
        "(`apt-get install dataset-fashion-mnist`)."
    )

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(CANVAS_SIZE, CANVAS_SIZE, 1)),
            "label_left": tfds.features.ClassLabel(
                names=fashion_mnist.CLASS_NAMES
            ),
            "label_right": tfds.features.ClassLabel(
                names=fashion_mnist.CLASS_NAMES
            ),
        }
        if self.builder_config.dense:
            features["segmentation"] = tfds.features.Tensor(
                shape=(CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8
            )
            features["layers"] = tfds.features.Tensor(
                shape=(CANVAS_SIZE, CANVAS_SIZE, 2), dtype=np.uint8
            )
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Two Fashion-MNIST items on a 36x36 canvas: one at the "
                "top-left, one at the bottom-right (MultiMNIST-style)."
            ),
            features=tfds.features.FeaturesDict(features),
            homepage="https://github.com/Xi-L/ParetoMTL",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        manual_dir = _manual_dir(dl_manager)
        paths = fashion_mnist.find_files(manual_dir)
        if paths is None:
            raise FileNotFoundError(
                "multi_fashion is built from the local Fashion-MNIST files. "
                f"{fashion_mnist.not_found_message(manual_dir)}\nOr put them "
                "in the builder's manual_dir (by default "
                f"{self.data_dir_root}/downloads/manual)."
            )
        train, test = fashion_mnist.read_files(paths)
        config = self.builder_config
        # Distinct seeds per split, both derived from the config's seed.
        return {
            "train": self._generate_examples(
                train, config.train_size, (config.seed, 0)
            ),
            "test": self._generate_examples(
                test, config.test_size, (config.seed, 1)
            ),
        }

    def _generate_examples(self, items, size, seed):
        images, labels = items
        left, right = pair_indices(len(images), size, seed)
        dense = self.builder_config.dense
        for index, (i, j) in enumerate(zip(left, right, strict=True)):
            example = {
                "image": overlay(images[i], images[j]),
                "label_left": int(labels[i]),
                "label_right": int(labels[j]),
            }
            if dense:
                example["segmentation"], example["layers"] = dense_maps(
                    images[i], images[j], int(labels[i]), int(labels[j])
                )
            yield index, example


def _manual_dir(dl_manager):
    # `dl_manager.manual_dir` raises when the directory is absent or empty;
    # here the manual files are optional.
    try:
        return dl_manager.manual_dir
    except AssertionError:
        return None


def lenet(input_shape=(36, 36, 1), name="lenet"):
    """A LeNet-style CNN, the shared network of the MultiMNIST / MultiFashion
    papers (Sener & Koltun 2018): two 5x5 convolutions with max pooling and
    a 64-unit dense layer, on raw pixels 0-255.

    Example:

    >>> mtk.data.lenet().output.shape
    (None, 64)
    """
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(16, 5, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 5, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, outputs, name=name)


def multi_fashion_heads(names=tuple(TASKS)):
    """One 10-class head per item position, named after `TASKS`.

    Example:

    >>> [(h.name, h.num_classes) for h in mtk.data.multi_fashion_heads()]
    [('left', 10), ('right', 10)]
    """
    return [
        Classification(
            name, num_classes=10, class_names=list(fashion_mnist.CLASS_NAMES)
        )
        for name in names
    ]


def multi_fashion_dense_heads(decoder_filters=32, skip=None):
    """Heads for a dense config: segmentation, layer intensities, both items.

    Example:

    >>> [type(h).__name__ for h in mtk.data.multi_fashion_dense_heads()]
    ['Segmentation', 'DenseRegression', 'Classification', 'Classification']
    """
    from mtk.heads import DenseRegression
    from mtk.heads import Segmentation

    return [
        Segmentation(
            "segmentation", num_classes=len(SEGMENTATION_CLASS_NAMES),
            class_names=list(SEGMENTATION_CLASS_NAMES),
            decoder_filters=decoder_filters, skip=skip,
        ),
        DenseRegression(
            "layers", channels=2, loss="mean_absolute_error",
            decoder_filters=decoder_filters, skip=skip,
        ),
    ] + multi_fashion_heads()


def load_multi_fashion(
    train_size, test_size, data_dir=None, manual_dir=None, dense=False
):
    """MultiFashion as numpy arrays, built once into ``data_dir`` by TFDS.

    Args:
        train_size: training canvases.
        test_size: test canvases.
        data_dir: TFDS data directory to build into / read from (None:
            TFDS's default).
        manual_dir: directory with the Fashion-MNIST files (else the places
            `mtk.data.load_fashion_mnist` searches).
        dense: also return the ``segmentation`` (int64 (N, 36, 36)) and
            ``layers`` (float32 (N, 36, 36, 2) in [0, 1]) maps, for
            `multi_fashion_dense_heads`.

    Returns:
        ``{"train": (images, {"left": ids, "right": ids}), "test": ...}``
        with float32 images (N, 36, 36, 1), pixels 0-255, and int64 class
        ids: what ``model.fit(x, y)`` takes for `multi_fashion_heads`.
    """
    config = MultiFashionConfig(
        name=f"{'dense_' if dense else ''}n{train_size}x{test_size}",
        train_size=train_size, test_size=test_size, dense=dense,
    )
    builder = tfds.builder(
        "multi_fashion", config=config,
        data_dir=None if data_dir is None else str(data_dir),
    )
    download_config = None
    if manual_dir is not None:
        download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    builder.download_and_prepare(download_config=download_config)
    splits = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        labels = {
            head: data[feature].astype("int64") for head, feature in TASKS.items()
        }
        if dense:
            labels["segmentation"] = data["segmentation"].astype("int64")
            labels["layers"] = data["layers"].astype("float32") / 255.0
        splits[split] = (data["image"].astype("float32"), labels)
    return splits
