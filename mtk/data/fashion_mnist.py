"""Fashion-MNIST from local files, found without network.

The original Fashion-MNIST distribution is four gzipped IDX files. They are
on many machines already: Debian's ``dataset-fashion-mnist`` package installs
them in ``/usr/share/datasets/fashion-mnist/`` and
``keras.datasets.fashion_mnist.load_data()`` caches them in
``$KERAS_HOME/datasets/fashion-mnist/`` (``~/.keras`` by default). mtk reads
them from there, so neither `load_fashion_mnist` nor the MultiFashion builder
needs a download.
"""

import gzip
import os
import pathlib

import keras
import numpy as np

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

HOW_TO_GET = (
    "Install the files with `apt-get update && apt-get install "
    "dataset-fashion-mnist` (Debian/Ubuntu), or pass data_dir= a directory "
    f"holding {', '.join(f + '.gz' for f in FILES.values())}."
)

# IDX type byte -> numpy dtype (big-endian where it matters).
_IDX_DTYPES = {
    0x08: np.dtype("uint8"),
    0x09: np.dtype("int8"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path):
    """Reads one IDX file (gzipped or not) into a numpy array.

    Args:
        path: path of an IDX file; a ``.gz`` suffix means gzip.

    Returns:
        The array, with the shape and dtype the file header declares.

    Raises:
        ValueError: naming the file if its header or size is not valid IDX.

    Example:

    >>> import pathlib
    >>> import tempfile
    >>> from mtk.data.fashion_mnist import read_idx
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
    >>> _ = path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 9]))
    >>> read_idx(path).tolist()
    [7, 2, 9]
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtype = _IDX_DTYPES.get(data[2])
    if dtype is None:
        raise ValueError(f"{path}: unknown IDX data type byte {data[2]:#x}.")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    shape = tuple(np.frombuffer(data, ">u4", count=ndim, offset=4).tolist())
    expected = header_size + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes) but "
            f"the file holds {len(data)} bytes."
        )
    array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def search_dirs(data_dir=None):
    """The directories searched for the Fashion-MNIST files, in order.

    Args:
        data_dir: a directory to search first, if given.

    Returns:
        A list of `pathlib.Path`: ``data_dir``, the Keras cache
        (``$KERAS_HOME`` or ``~/.keras``, then ``datasets/fashion-mnist``)
        and Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    keras_home = os.environ.get("KERAS_HOME", os.path.join("~", ".keras"))
    dirs = [
        pathlib.Path(keras_home, "datasets", "fashion-mnist").expanduser(),
        pathlib.Path(DEBIAN_DIR),
    ]
    if data_dir is not None:
        dirs.insert(0, pathlib.Path(data_dir).expanduser())
    return dirs


def find_files(data_dir=None):
    """Finds the four Fashion-MNIST files without network.

    Args:
        data_dir: a directory to search before the standard places.

    Returns:
        A dict ``{"train_images": path, ...}`` (keys as in `FILES`) from the
        first searched directory that holds all four files, gzipped or not;
        ``None`` when no directory does.
    """
    for directory in search_dirs(data_dir):
        paths = {}
        for key, stem in FILES.items():
            for name in (stem + ".gz", stem):
                if (directory / name).is_file():
                    paths[key] = directory / name
                    break
        if len(paths) == len(FILES):
            return paths
    return None


def read_files(paths):
    """Reads the files `find_files` found.

    Args:
        paths: a dict as returned by `find_files`.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``, uint8 numpy arrays of
        shapes (n, 28, 28) and (n,).
    """
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[split + '_images']} holds {len(images)} images but "
                f"{paths[split + '_labels']} holds {len(labels)} labels."
            )
    return (
        (arrays["train_images"], arrays["train_labels"]),
        (arrays["test_images"], arrays["test_labels"]),
    )


def not_found_message(data_dir=None):
    """The error text for missing files: where mtk looked and what to do."""
    looked = "\n".join(f"  - {d}" for d in search_dirs(data_dir))
    return f"Fashion-MNIST files not found. Looked in:\n{looked}\n{HOW_TO_GET}"


def load_fashion_mnist(data_dir=None):
    """Loads Fashion-MNIST, offline when the files are on the machine.

    Looks for the original gzipped IDX files in ``data_dir`` (if given), the
    Keras cache (``~/.keras/datasets/fashion-mnist``) and Debian's
    ``/usr/share/datasets/fashion-mnist``, in that order. When none holds
    them it falls back to ``keras.datasets.fashion_mnist.load_data()``, which
    downloads them when online.

    Args:
        data_dir: a directory holding the four files, searched first.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 arrays of shapes
        (60000, 28, 28), (60000,), (10000, 28, 28) and (10000,), as
        ``keras.datasets.fashion_mnist.load_data()`` returns them. Class
        names are in `CLASS_NAMES`.

    Raises:
        FileNotFoundError: listing every directory searched and how to get
            the files, when no directory holds them and Keras cannot
            download them.

    Example:

    >>> from mtk.data import load_fashion_mnist
    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    >>> x_train.shape, x_train.dtype.name, y_test.shape
    ((60000, 28, 28), 'uint8', (10000,))
    """
    paths = find_files(data_dir)
    if paths is not None:
        return read_files(paths)
    try:
        return keras.datasets.fashion_mnist.load_data()
    except Exception as error:
        raise FileNotFoundError(
            f"{not_found_message(data_dir)}\nKeras could not download them "
            f"either: {type(error).__name__}: {error}"
        ) from error
