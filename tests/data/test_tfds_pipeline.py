import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mtk.data import from_tfds
from mtk.heads import Binary
from mtk.heads import Classification
from mtk.heads import MultiLabel
from mtk.heads import Regression

from .data_testing import TINY

CELEB_A_EXAMPLES = 6
LANDMARKS = (
    "lefteye_x",
    "lefteye_y",
    "righteye_x",
    "righteye_y",
    "nose_x",
    "nose_y",
    "leftmouth_x",
    "leftmouth_y",
    "rightmouth_x",
    "rightmouth_y",
)


def landmarks(example):
    return tf.stack([example["landmarks"][k] for k in LANDMARKS])


def celeb_a_heads():
    return [
        MultiLabel("attributes", num_labels=40),
        Regression("landmarks", units=10),
        Binary("smiling"),
    ]


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=CELEB_A_EXAMPLES):
        yield


def multi_fashion(builder, **kwargs):
    """from_tfds on the prepared tiny MultiFashion, two class-id heads."""
    kwargs.setdefault(
        "heads", [Classification("left", 10), Classification("right", 10)]
    )
    kwargs.setdefault("tasks", {"left": "label_left", "right": "label_right"})
    return from_tfds(
        "multi_fashion",
        data_dir=builder.data_dir_root,
        builder_kwargs={"config": TINY},
        **kwargs,
    )


def test_celeb_a_multi_label_and_landmarks(mock_tfds):
    heads = celeb_a_heads()
    ds = from_tfds(
        "celeb_a",
        split="train[:50%]",
        heads=heads,
        tasks={
            "attributes": "attributes",
            "landmarks": landmarks,
            "smiling": lambda ex: ex["attributes"]["Smiling"],
        },
        image_size=(64, 48),
        batch_size=4,
    )
    images, labels = ds.element_spec
    assert images.shape.as_list() == [None, 64, 48, 3]
    assert images.dtype == tf.uint8
    assert labels["attributes"].shape.as_list() == [None, 40]
    assert labels["landmarks"].shape.as_list() == [None, 10]
    assert labels["smiling"].shape.as_list() == [None]
    assert {s.dtype for s in labels.values()} == {tf.float32}

    raw = list(tfds.as_numpy(tfds.load("celeb_a", split="train[:50%]")))
    got = list(tfds.as_numpy(ds.unbatch()))
    assert len(got) == len(raw) > 0
    names = sorted(raw[0]["attributes"])
    for (image, labels), example in zip(got, raw, strict=True):
        assert image.shape == (64, 48, 3)
        np.testing.assert_array_equal(
            labels["attributes"], [example["attributes"][n] for n in names]
        )
        np.testing.assert_array_equal(
            labels["landmarks"], [example["landmarks"][k] for k in LANDMARKS]
        )
        assert labels["smiling"] == example["attributes"]["Smiling"]


def test_unbatched_and_heads_without_task_get_sentinels(mock_tfds):
    heads = celeb_a_heads() + [Classification("identity", 10)]
    ds = from_tfds(
        "celeb_a",
        heads=heads,
        tasks={"smiling": lambda ex: ex["attributes"]["Smiling"]},
        batch_size=None,
    )
    image, labels = next(iter(ds))
    assert image.shape == (218, 178, 3)
    assert sorted(labels) == sorted(h.name for h in heads)
    assert labels["identity"].numpy() == -1
    assert np.isnan(labels["attributes"].numpy()).all()
    assert np.isnan(labels["landmarks"].numpy()).all()
    assert labels["smiling"].numpy() in (0.0, 1.0)


def test_head_objects_as_keys_and_model_as_heads(mock_tfds):
    head = Binary("smiling")
    by_object = from_tfds(
        "celeb_a",
        tasks={head: lambda ex: ex["attributes"]["Smiling"]},
        batch_size=None,
    )
    assert list(by_object.element_spec[1]) == ["smiling"]
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no mtk heads"):
        from_tfds("celeb_a", tasks={"smiling": "attributes"}, heads=model)


def test_split_slices_batching_and_info(tiny_multi_fashion):
    builder, arrays = tiny_multi_fashion
    ds, info = multi_fashion(
        builder, split="train[:25%]", batch_size=4, with_info=True
    )
    assert info.features["label_left"].names[0] == "T-shirt/top"
    batches = list(tfds.as_numpy(ds))
    assert [len(x) for x, _ in batches] == [4, 2]
    dropped = multi_fashion(
        builder, split="train[:25%]", batch_size=4, drop_remainder=True
    )
    assert [len(x) for x, _ in tfds.as_numpy(dropped)] == [4]
    x, y = batches[0]
    assert x.dtype == np.uint8 and y["left"].dtype == np.int64
    assert set(y["left"]) <= set(arrays["train_labels"])


def items(ds):
    """An unbatched pipeline's examples as comparable tuples."""
    return [(x.tobytes(), y["left"], y["right"]) for x, y in tfds.as_numpy(ds)]


def test_shuffle_cache_and_augment(tiny_multi_fashion, tmp_path):
    builder, _ = tiny_multi_fashion
    plain = items(multi_fashion(builder, batch_size=None))
    shuffled = items(
        multi_fashion(builder, batch_size=None, shuffle=True, seed=1)
    )
    assert sorted(shuffled) == sorted(plain) and shuffled != plain

    cache_file = tmp_path / "cache"
    cached = multi_fashion(builder, batch_size=None, cache=str(cache_file))
    assert items(cached) == plain == items(cached)
    assert list(tmp_path.glob("cache*"))

    flipped = multi_fashion(
        builder, batch_size=None, augment=tf.image.flip_left_right
    )
    for (x, *_), (flipped_x, *_) in zip(
        tfds.as_numpy(multi_fashion(builder, batch_size=None)),
        tfds.as_numpy(flipped),
        strict=True,
    ):
        np.testing.assert_array_equal(flipped_x, x[:, ::-1])
    random_flip = multi_fashion(
        builder, batch_size=8, augment=keras.layers.RandomFlip("horizontal")
    )
    assert next(iter(random_flip))[0].shape == (8, 36, 36, 1)


# === Bad input ===


def test_unknown_feature_key_lists_the_features(mock_tfds):
    with pytest.raises(ValueError) as error:
        from_tfds("celeb_a", heads=celeb_a_heads(), tasks={"smiling": "smile"})
    message = str(error.value)
    assert "tasks['smiling']" in message and "'smile'" in message
    for feature in ("attributes", "identity", "image", "landmarks"):
        assert feature in message
    with pytest.raises(ValueError, match="inputs: 'picture'.*image"):
        from_tfds(
            "celeb_a",
            heads=celeb_a_heads(),
            tasks={"smiling": "attributes"},
            inputs="picture",
        )


@pytest.mark.parametrize(
    "head, task, match",
    [
        (
            MultiLabel("attributes", 40),
            lambda ex: tf.stack(list(ex["attributes"].values())[:39]),
            r"shape \(39,\).*head 'attributes' \(MultiLabel\) expects \(40,\)",
        ),
        (
            Classification("identity", 10),
            lambda ex: tf.cast(ex["identity"]["Identity_No"], tf.float32),
            r"float32 labels.*'identity' \(Classification\) needs integer",
        ),
        (
            Binary("smiling"),
            lambda ex: tf.constant("yes"),
            r"string labels.*'smiling' \(Binary\) needs numbers",
        ),
        (
            Regression("landmarks", 5),
            "landmarks",
            r"tasks\['landmarks'\] \(feature 'landmarks'\).*\(10,\).*\(5,\)",
        ),
        (
            Binary("smiling"),
            "landmarks",
            r"tasks\['smiling'\].*\(10,\).*expects \(\) or \(1,\)",
        ),
    ],
)
def test_task_label_not_fitting_its_head(mock_tfds, head, task, match):
    with pytest.raises(ValueError, match=match):
        from_tfds("celeb_a", tasks={head: task})


def test_unknown_head_name(mock_tfds):
    with pytest.raises(ValueError, match=r"'smile'.*\['attributes'"):
        from_tfds(
            "celeb_a", heads=celeb_a_heads(), tasks={"smile": "attributes"}
        )


def test_image_size_on_non_images(mock_tfds):
    with pytest.raises(
        ValueError, match="image_size.*function landmarks.*int64.*\\(10,\\)"
    ):
        from_tfds(
            "celeb_a",
            tasks={Binary("smiling"): lambda ex: ex["attributes"]["Smiling"]},
            inputs=landmarks,
            image_size=32,
        )


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="'celeb_aa'.*Did you mean celeb_a"):
        from_tfds("celeb_aa", tasks={Binary("smiling"): "attributes"})


def test_not_prepared_and_download_off_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        from_tfds(
            "mnist",
            data_dir=tmp_path,
            tasks={Classification("digit", 10): "label"},
            download=False,
        )
    message = str(error.value)
    assert str(tmp_path / "mnist") in message
    assert "tfds build mnist" in message


def test_not_prepared_and_no_network(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve host (no network)")

    for method in ("download", "download_and_extract"):
        monkeypatch.setattr(tfds.download.DownloadManager, method, offline)
    with pytest.raises(FileNotFoundError) as error:
        from_tfds(
            "mnist",
            data_dir=tmp_path,
            tasks={Classification("digit", 10): "label"},
        )
    message = str(error.value)
    assert str(tmp_path) in message and "no network" in message
    assert "tfds build mnist --data_dir" in message


def test_multi_fashion_without_source_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="apt-get install dataset-fashion-mnist"
    ):
        from_tfds(
            "multi_fashion/small",
            data_dir=tmp_path,
            tasks={Classification("left", 10): "label_left"},
        )


def test_auto_cache_keeps_small_decoded_splits_in_memory(tiny_multi_fashion, monkeypatch):
    from mtk.data import tfds_pipeline

    builder, _ = tiny_multi_fashion
    calls = []
    original = tf.data.Dataset.cache
    monkeypatch.setattr(tf.data.Dataset, "cache",
                        lambda self, filename="": calls.append(filename) or original(self, filename))
    # TFDS may cache small datasets itself: count the calls from_tfds adds.
    plain = items(multi_fashion(builder, batch_size=None, cache=False))
    tfds_calls = len(calls)
    auto = multi_fashion(builder, batch_size=None)  # cache="auto", a tiny split
    assert len(calls) == 2 * tfds_calls + 1 and calls[-1] == ""
    assert items(auto) == plain == items(auto)
    monkeypatch.setattr(tfds_pipeline, "AUTO_CACHE_BYTES", 1)
    before = len(calls)
    multi_fashion(builder, batch_size=None)
    assert len(calls) == before + tfds_calls  # too large for the limit
