import keras
import numpy as np
import pytest

import mtk
from mtk.losses import MaskedLoss
from mtk.losses import MaskedMetric

NAN = np.nan

# (head, labels with missing entries, predictions)
CASES = {
    "classification": (
        mtk.heads.Classification("c", num_classes=3),
        np.array([0, -1, 2, 1, -1]),
        np.array(
            [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1],
             [0.3, 0.3, 0.4]], "float32"),
    ),
    "binary": (
        mtk.heads.Binary("b"),
        np.array([1.0, NAN, 0.0, 1.0, NAN], "float32"),
        np.array([[0.9], [0.2], [0.3], [0.4], [0.6]], "float32"),
    ),
    "multilabel": (
        mtk.heads.MultiLabel("m", num_labels=2),
        np.array([[1, NAN], [0, 1], [NAN, NAN], [1, 0], [0, 0]], "float32"),
        np.array([[0.8, 0.1], [0.3, 0.7], [0.5, 0.5], [0.4, 0.2], [0.1, 0.9]],
                 "float32"),
    ),
    "regression": (
        mtk.heads.Regression("r"),
        np.array([1.0, NAN, 3.0, -2.0, NAN], "float32"),
        np.array([[1.5], [9.0], [2.0], [0.0], [7.0]], "float32"),
    ),
}


def _present_rows(labels):
    """Rows with at least one label, and labels with missing rows removed."""
    if labels.dtype.kind == "f":
        missing = np.isnan(labels).reshape(len(labels), -1).all(axis=1)
    else:
        missing = labels < 0
    return ~missing


@pytest.mark.parametrize("kind", sorted(CASES))
def test_missing_labels_change_neither_loss_nor_metrics(kind):
    head, labels, preds = CASES[kind]
    keep = _present_rows(labels)
    loss = head.get_loss()
    # Dropping fully-missing rows changes neither the loss...
    np.testing.assert_allclose(
        float(loss(labels, preds)), float(loss(labels[keep], preds[keep])),
        rtol=1e-6)
    # ...nor any metric.
    for masked, filtered in zip(head.get_metrics(), head.get_metrics()):
        masked.update_state(labels, preds)
        filtered.update_state(labels[keep], preds[keep])
        np.testing.assert_allclose(
            float(masked.result()), float(filtered.result()), rtol=1e-6)


def test_loss_is_mean_over_present_labels():
    loss = MaskedLoss("mean_squared_error", label_kind="float")
    value = loss(np.array([[1.0], [NAN], [NAN], [5.0]], "float32"),
                 np.array([[3.0], [0.0], [0.0], [1.0]], "float32"))
    assert float(value) == pytest.approx((4.0 + 16.0) / 2)


def test_missing_entry_of_multilabel_keeps_its_neighbours():
    loss = MaskedLoss("mean_squared_error", label_kind="float")
    value = loss(np.array([[1.0, NAN]], "float32"),
                 np.array([[0.0, 100.0]], "float32"))
    assert float(value) == pytest.approx(1.0)


def test_all_missing_batch_gives_zero_loss_and_no_metric_update():
    loss = MaskedLoss("sparse_categorical_crossentropy", label_kind="class_id")
    preds = np.full((2, 3), 1 / 3, "float32")
    assert float(loss(np.array([-1, -1]), preds)) == 0.0
    metric = MaskedMetric(keras.metrics.SparseCategoricalAccuracy(),
                          label_kind="class_id")
    metric.update_state(np.array([-1, -1]), preds)
    assert float(metric.metric.count) == 0.0


def test_sample_weight_still_applies_with_mask():
    metric = MaskedMetric(keras.metrics.BinaryAccuracy(), label_kind="float")
    metric.update_state(np.array([[1.0], [1.0], [NAN]], "float32"),
                        np.array([[0.9], [0.1], [0.9]], "float32"),
                        sample_weight=np.array([3.0, 1.0, 1.0], "float32"))
    assert float(metric.result()) == pytest.approx(0.75)


@pytest.mark.parametrize("obj", [
    MaskedLoss("huber", label_kind="float"),
    MaskedMetric(keras.metrics.AUC(name="auc"), label_kind="float"),
])
def test_serialization_round_trip(obj):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj)
    assert restored.get_config() == obj.get_config()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        MaskedLoss("hinge", label_kind="float")
    with pytest.raises(ValueError, match="label_kind"):
        MaskedLoss("huber", label_kind="int")
