"""Fixtures for mtk.data tests.

Tests never read the machine's real Fashion-MNIST files unless they ask for
them: the autouse fixture points the Keras cache and the Debian directory at
empty places, and the small IDX files are written by the tests.
"""

import pytest

from mtk.data import fashion_mnist

from .data_testing import prepare_multi_fashion
from .data_testing import write_fashion_files


@pytest.fixture(autouse=True)
def no_machine_fashion_files(tmp_path_factory, monkeypatch):
    """Hides the machine's Keras cache and Debian files from the search."""
    empty = tmp_path_factory.mktemp("empty")
    monkeypatch.setenv("KERAS_HOME", str(empty / "keras_home"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(empty / "debian"))


@pytest.fixture(scope="session")
def fashion_files(tmp_path_factory):
    """``(directory, arrays)`` of small gzipped Fashion-MNIST files."""
    directory = tmp_path_factory.mktemp("fashion")
    return directory, write_fashion_files(directory)


@pytest.fixture(scope="session")
def tiny_multi_fashion(tmp_path_factory, fashion_files):
    """A prepared tiny MultiFashion: ``(builder, source arrays)``."""
    directory, arrays = fashion_files
    data_dir = tmp_path_factory.mktemp("tfds")
    return prepare_multi_fashion(data_dir, directory), arrays
