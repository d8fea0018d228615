import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtk.data import fashion_mnist
from mtk.data.multi_fashion import MultiFashion
from mtk.data.multi_fashion import MultiFashionConfig
from mtk.data.multi_fashion import load_multi_fashion
from mtk.data.multi_fashion import multi_fashion_heads
from mtk.data.multi_fashion import overlay
from mtk.data.multi_fashion import pair_indices

from .data_testing import TINY
from .data_testing import prepare_multi_fashion


def examples(builder, split):
    return list(tfds.as_numpy(builder.as_dataset(split=split)))


def test_overlay_places_items_top_left_and_bottom_right():
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 256, (2, 28, 28), np.uint8)
    canvas = overlay(left, right)[..., 0]
    assert canvas.shape == (36, 36) and canvas.dtype == np.uint8
    np.testing.assert_array_equal(canvas[:8, :28], left[:8])
    np.testing.assert_array_equal(canvas[:28, :8], left[:, :8])
    np.testing.assert_array_equal(canvas[28:, 8:], right[20:])
    np.testing.assert_array_equal(canvas[8:, 28:], right[:, 20:])
    np.testing.assert_array_equal(
        canvas[8:28, 8:28], np.maximum(left[8:, 8:], right[:20, :20])
    )
    assert not canvas[:8, 28:].any() and not canvas[28:, :8].any()


def test_pair_indices_balanced_distinct_and_seeded():
    left, right = pair_indices(num_items=7, size=30, seed=5)
    counts = np.bincount(left, minlength=7)
    assert counts.max() - counts.min() <= 1
    assert (left != right).all() and right.min() >= 0 and right.max() < 7
    again = pair_indices(num_items=7, size=30, seed=5)
    np.testing.assert_array_equal(again[0], left)
    np.testing.assert_array_equal(again[1], right)
    other = pair_indices(num_items=7, size=30, seed=6)
    assert not np.array_equal(other[1], right)


def test_registered_with_paper_sizes_by_default():
    assert "multi_fashion" in tfds.list_builders()
    builder = tfds.builder("multi_fashion")
    assert isinstance(builder, MultiFashion)
    assert builder.builder_config.name == "paper"
    assert (
        builder.builder_config.train_size,
        builder.builder_config.test_size,
    ) == (
        120_000,
        20_000,
    )
    small = tfds.builder("multi_fashion/small").builder_config
    assert small.train_size < 120_000 and small.test_size < 20_000


def test_builds_overlays_of_source_items(tiny_multi_fashion):
    builder, arrays = tiny_multi_fashion
    features = builder.info.features
    assert features["image"].shape == (36, 36, 1)
    for key in ("label_left", "label_right"):
        assert features[key].names == list(fashion_mnist.CLASS_NAMES)
    assert builder.info.splits["train"].num_examples == TINY.train_size
    assert builder.info.splits["test"].num_examples == TINY.test_size
    for split, size in (("train", TINY.train_size), ("test", TINY.test_size)):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        found = examples(builder, split)
        assert len(found) == size
        for example in found:
            canvas = example["image"][..., 0]
            # The corners hold one item each: recover which items they are.
            (i,) = np.flatnonzero(
                (images[:, :8, :8] == canvas[:8, :8]).all(axis=(1, 2))
            )
            (j,) = np.flatnonzero(
                (images[:, 20:, 20:] == canvas[28:, 28:]).all(axis=(1, 2))
            )
            assert i != j
            np.testing.assert_array_equal(
                example["image"], overlay(images[i], images[j])
            )
            assert example["label_left"] == labels[i]
            assert example["label_right"] == labels[j]


def test_deterministic_given_seed(tmp_path, fashion_files, tiny_multi_fashion):
    directory, _ = fashion_files
    builder, _ = tiny_multi_fashion
    again = prepare_multi_fashion(tmp_path / "again", directory)
    reseeded = prepare_multi_fashion(
        tmp_path / "reseeded",
        directory,
        MultiFashionConfig(name="tiny", train_size=24, test_size=8, seed=4),
    )

    def pairs(b):
        return sorted(
            (e["image"].tobytes(), e["label_left"], e["label_right"])
            for e in examples(b, "train")
        )

    assert pairs(again) == pairs(builder)
    assert pairs(reseeded) != pairs(builder)


def test_finds_source_files_in_standard_places(
    tmp_path, fashion_files, monkeypatch
):
    directory, _ = fashion_files
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", str(directory))
    builder = tfds.builder("multi_fashion", config=TINY, data_dir=tmp_path)
    builder.download_and_prepare()
    assert len(examples(builder, "test")) == TINY.test_size


def test_missing_source_files_say_where_to_put_them(tmp_path):
    builder = tfds.builder("multi_fashion", config=TINY, data_dir=tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        builder.download_and_prepare()
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert fashion_mnist.DEBIAN_DIR in message
    assert str(tmp_path / "downloads" / "manual") in message


def test_load_multi_fashion_arrays_match_the_tfds_examples(tmp_path, fashion_files):
    directory, arrays = fashion_files
    splits = load_multi_fashion(10, 6, data_dir=tmp_path, manual_dir=directory)
    builder = tfds.builder(
        "multi_fashion", data_dir=str(tmp_path),
        config=MultiFashionConfig(name="n10x6", train_size=10, test_size=6),
    )
    for split, size in (("train", 10), ("test", 6)):
        images, labels = splits[split]
        assert images.shape == (size, 36, 36, 1) and images.dtype == np.float32
        assert sorted(labels) == ["left", "right"]
        found = examples(builder, split)
        np.testing.assert_array_equal(images, [e["image"] for e in found])
        np.testing.assert_array_equal(labels["left"], [e["label_left"] for e in found])
        np.testing.assert_array_equal(labels["right"], [e["label_right"] for e in found])
        assert labels["left"].dtype == np.int64
    # The label ids are those of the source items: 10 classes, the heads' size.
    assert [h.name for h in multi_fashion_heads()] == list(splits["train"][1])
