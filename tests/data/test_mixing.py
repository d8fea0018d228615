import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import mtk
from mtk.data import from_tfds
from mtk.data import mix
from mtk.heads import Binary
from mtk.heads import Classification
from mtk.heads import MultiLabel

from .data_testing import tiny_trunk

IMAGE_SIZE = (32, 32)


def pets_and_cars_heads():
    return [
        Classification("pet", 2),
        Classification("car", 196),
        Binary("is_car"),
    ]


def synthetic(n, labels, value=0.0, shape=(8, 8, 3)):
    """An unbatched (inputs, labels) dataset of n constant images."""
    return tf.data.Dataset.from_tensor_slices(
        (tf.fill((n, *shape), value), labels)
    )


def pets(n=40):
    return synthetic(
        n,
        {"pet": np.arange(n) % 2, "is_car": np.zeros(n, np.float32)},
        value=0.0,
    )


def cars(n=40):
    return synthetic(
        n,
        {"car": np.arange(n) % 196, "is_car": np.ones(n, np.float32)},
        value=1.0,
    )


def first_batch(dataset, size):
    return next(iter(tfds.as_numpy(dataset.batch(size))))


def test_fills_labels_a_source_lacks_with_sentinels():
    x, y = first_batch(mix([pets(), cars()], seed=0), 40)
    assert sorted(y) == ["car", "is_car", "pet"]
    from_cars = x[:, 0, 0, 0] == 1.0
    assert 0 < from_cars.sum() < 40
    assert (y["pet"][from_cars] == -1).all() and (
        y["pet"][~from_cars] >= 0
    ).all()
    assert (y["car"][~from_cars] == -1).all() and (
        y["car"][from_cars] >= 0
    ).all()
    np.testing.assert_array_equal(y["is_car"], from_cars.astype(np.float32))


def test_heads_add_unlabelled_heads_and_fix_specs():
    heads = pets_and_cars_heads() + [MultiLabel("tags", 3)]
    _, y = first_batch(mix([pets(), cars()], heads=heads, seed=0), 16)
    assert y["tags"].shape == (16, 3) and np.isnan(y["tags"]).all()
    with pytest.raises(
        ValueError, match=r"datasets\[1\] labels 'car'.*not one of heads"
    ):
        mix(
            [pets(), cars()], heads=[Classification("pet", 2), Binary("is_car")]
        )


def test_weights_set_the_proportions():
    x, _ = first_batch(mix([pets(400), cars(400)], weights=[1, 0], seed=0), 100)
    assert (x[:, 0, 0, 0] == 0.0).all()
    x, _ = first_batch(mix([pets(400), cars(400)], weights=[3, 1], seed=0), 400)
    assert abs((x[:, 0, 0, 0] == 1.0).mean() - 0.25) < 0.07


@pytest.mark.parametrize(
    "second, match",
    [
        (
            synthetic(4, {"car": np.zeros(4, np.int64)}, shape=(9, 8, 3)),
            r"datasets\[1\] yields inputs float32 \(9, 8, 3\) but "
            r"datasets\[0\] yields float32 \(8, 8, 3\)",
        ),
        (
            tf.data.Dataset.from_tensor_slices(
                (
                    tf.zeros((4, 8, 8, 3), tf.uint8),
                    {"car": np.zeros(4, np.int64)},
                )
            ),
            r"datasets\[1\] yields inputs uint8 .*float32",
        ),
        (cars().batch(4), r"datasets\[1\] labels head '\w+'.*looks batched"),
        (
            synthetic(4, {"pet": np.zeros(4, np.float32)}),
            r"datasets\[1\] gives head 'pet' labels float32 \(\), but "
            r"datasets\[0\] says the head takes int64 \(\)",
        ),
        (tf.data.Dataset.range(3), r"datasets\[1\] must yield \(inputs"),
    ],
)
def test_bad_sources(second, match):
    with pytest.raises(ValueError, match=match):
        mix([pets(), second])


def test_bad_weights():
    with pytest.raises(ValueError, match="weights has 1 entries for 2"):
        mix([pets(), cars()], weights=[1])
    with pytest.raises(ValueError, match="non-negative"):
        mix([pets(), cars()], weights=[1, -1])


def test_labels_of_wrong_spec_for_heads():
    with pytest.raises(
        ValueError, match=r"'is_car' labels float32 \(\).*heads says.*\(3,\)"
    ):
        mix(
            [pets(), cars()],
            heads=[
                Classification("pet", 2),
                Classification("car", 196),
                MultiLabel("is_car", 3),
            ],
        )


def test_missing_labels_get_zero_loss_weight():
    heads = pets_and_cars_heads()
    # Cars without "is_car" labels, so every head has missing labels (-1 for
    # class ids, NaN for the binary head).
    unlabelled_cars = synthetic(40, {"car": np.arange(40) % 196}, value=1.0)
    x, y = first_batch(mix([pets(), unlabelled_cars], heads=heads, seed=1), 32)
    rng = np.random.default_rng(0)
    for head in heads:
        units = head.output_units
        logits = rng.normal(size=(32, units)).astype(np.float32)
        preds = tf.Variable(
            tf.nn.softmax(logits) if units > 1 else tf.sigmoid(logits)
        )
        labels = y[head.name]
        present = labels >= 0 if labels.dtype == np.int64 else ~np.isnan(labels)
        assert 0 < present.sum() < 32
        loss = head.get_loss()
        with tf.GradientTape() as tape:
            mixed = loss(labels, preds)
        grads = tape.gradient(mixed, preds).numpy()
        only_labelled = loss(labels[present], tf.boolean_mask(preds, present))
        np.testing.assert_allclose(
            mixed.numpy(), only_labelled.numpy(), rtol=1e-6
        )
        assert np.isfinite(mixed.numpy())
        assert (grads[~present] == 0).all() and (grads[present] != 0).any()


@pytest.mark.slow
def test_cats_dogs_and_cars_train_a_three_head_model():
    heads = pets_and_cars_heads()
    with tfds.testing.mock_data(num_examples=24):
        common = dict(heads=heads, image_size=IMAGE_SIZE, batch_size=None)
        pets_ds = from_tfds(
            "cats_vs_dogs",
            split="train[:80%]",
            tasks={"pet": "label", "is_car": lambda ex: 0.0},
            **common,
        )
        cars_ds = from_tfds(
            "cars196",
            tasks={"car": "label", "is_car": lambda ex: 1.0},
            **common,
        )
        mixed = mix([pets_ds, cars_ds], weights=[0.5, 0.5], seed=0)
        # Fixed examples, so that evaluate() and predict() see the same data.
        x, y = first_batch(mixed, 48)
    model = mtk.build_multitask_model(
        tiny_trunk((*IMAGE_SIZE, 3)), heads=heads, freeze_trunk=False
    )
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    mtk.check_training_data(model, data)
    history = model.fit(data, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()

    results = model.evaluate(data, verbose=0, return_dict=True)
    preds = model.predict(x, verbose=0)
    for name in ("pet", "car"):
        present = y[name] >= 0
        assert 0 < present.sum() < len(present)
        hits = preds[name][present].argmax(-1) == y[name][present]
        assert results[f"{name}_accuracy"] == pytest.approx(
            hits.mean(), abs=1e-6
        )
    hits = (preds["is_car"][:, 0] > 0.5) == (y["is_car"] == 1.0)
    assert results["is_car_accuracy"] == pytest.approx(hits.mean(), abs=1e-6)
