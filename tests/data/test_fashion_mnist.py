import os
import pathlib

import keras
import numpy as np
import pytest

from mtk.data import fashion_mnist
from mtk.data import load_fashion_mnist

from .data_testing import write_fashion_files
from .data_testing import write_idx


def assert_loaded(loaded, arrays):
    (x_train, y_train), (x_test, y_test) = loaded
    for got, key in (
        (x_train, "train_images"),
        (y_train, "train_labels"),
        (x_test, "test_images"),
        (y_test, "test_labels"),
    ):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[key])


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_read_idx_round_trips_gzipped_and_plain(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), np.uint8)
    write_idx(tmp_path / name, array)
    got = fashion_mnist.read_idx(tmp_path / name)
    np.testing.assert_array_equal(got, array)
    got[0, 0, 0] = 1  # A writable copy, like keras' arrays.


def test_read_idx_rejects_bad_files_naming_them(tmp_path):
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x07")
    with pytest.raises(ValueError, match="bad-magic.*magic"):
        fashion_mnist.read_idx(bad_magic)
    truncated = tmp_path / "truncated"
    write_idx(truncated, np.zeros((4, 2), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"truncated.*\(4, 2\)"):
        fashion_mnist.read_idx(truncated)


@pytest.mark.parametrize("gz", [True, False])
def test_loads_from_data_dir(tmp_path, gz):
    arrays = write_fashion_files(tmp_path, gz=gz)
    assert_loaded(load_fashion_mnist(data_dir=tmp_path), arrays)


def test_finds_the_keras_cache_and_prefers_data_dir(tmp_path):
    cache = pathlib.Path(os.environ["KERAS_HOME"], "datasets", "fashion-mnist")
    cached = write_fashion_files(cache, seed=1)
    assert_loaded(load_fashion_mnist(), cached)
    given = write_fashion_files(tmp_path / "mine", seed=2)
    assert_loaded(load_fashion_mnist(data_dir=tmp_path / "mine"), given)


def test_finds_the_debian_directory(tmp_path, monkeypatch):
    arrays = write_fashion_files(tmp_path / "debian", seed=4)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(tmp_path / "debian"))
    assert_loaded(load_fashion_mnist(), arrays)


def test_falls_back_to_keras_when_no_files(monkeypatch):
    keras_arrays = (
        (np.ones((1, 28, 28), np.uint8), np.zeros(1, np.uint8)),
    ) * 2
    monkeypatch.setattr(
        keras.datasets.fashion_mnist, "load_data", lambda: keras_arrays
    )
    assert load_fashion_mnist() is keras_arrays


def test_not_found_lists_every_place_and_how_to_get_files(
    tmp_path, monkeypatch
):
    def offline():
        raise OSError("no network")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_fashion_mnist(data_dir=tmp_path / "nowhere")
    message = str(error.value)
    for directory in fashion_mnist.search_dirs(tmp_path / "nowhere"):
        assert str(directory) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data_dir" in message and "no network" in message


@pytest.mark.skipif(
    not pathlib.Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (extra check only)",
)
def test_real_debian_files(monkeypatch):
    monkeypatch.setattr(
        fashion_mnist, "DEBIAN_DIR", "/usr/share/datasets/fashion-mnist"
    )
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    # Fashion-MNIST is balanced: 6000 / 1000 items per class.
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
