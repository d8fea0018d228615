import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from mtk.heads import check_labels


@pytest.mark.parametrize("head, units", [
    (mtk.heads.Classification("c", num_classes=5, hidden_units=(8,), dropout=0.2), 5),
    (mtk.heads.Binary("b"), 1),
    (mtk.heads.MultiLabel("m", num_labels=7, label_names=list("abcdefg")), 7),
    (mtk.heads.Regression("r", units=2, loss="huber"), 2),
])
def test_head_output_and_config_round_trip(head, units):
    out = head(np.zeros((3, 4), "float32"))
    assert out.shape == (3, units)
    assert str(out.dtype) in ("float32", "<dtype: 'float32'>")
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(head))
    assert type(restored) is type(head)
    assert restored.get_config() == head.get_config()


def test_output_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        head = mtk.heads.Classification("c", num_classes=3, hidden_units=(4,))
        out = head(np.zeros((2, 4), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("make, message", [
    (lambda: mtk.heads.Classification("c", num_classes=1), "'c'.*num_classes must be an integer >= 2"),
    (lambda: mtk.heads.Classification("c", num_classes=3, class_names=["a"]), "class_names has 1 entries but num_classes=3"),
    (lambda: mtk.heads.MultiLabel("m", num_labels=0), "'m'.*num_labels"),
    (lambda: mtk.heads.Regression("r", units=0), "'r'.*units"),
    (lambda: mtk.heads.Regression("r", loss="hinge"), "'r'.*loss must be one of"),
    (lambda: mtk.heads.Binary("trunk"), "'trunk' clashes"),
    (lambda: mtk.heads.Binary("has space"), "identifier"),
    (lambda: mtk.heads.Binary("b", dropout=1.5), "'b'.*dropout"),
])
def test_bad_head_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _spec(shape, dtype="float32"):
    return tf.TensorSpec((None,) + shape, dtype)


def test_check_labels_accepts_matching_specs():
    heads = {h.name: h for h in [
        mtk.heads.Classification("c", num_classes=3), mtk.heads.Binary("b"),
        mtk.heads.MultiLabel("m", num_labels=2), mtk.heads.Regression("r")]}
    check_labels(heads, {"c": _spec((), "int64"), "b": _spec((1,)),
                         "m": _spec((2,)), "r": _spec(())})


@pytest.mark.parametrize("labels, message", [
    ({"c": _spec(())}, r"labels lacks head\(s\) \['b'\]\. .*missing-label sentinel"),
    ({"c": _spec(()), "b": _spec(()), "x": _spec(())},
     r"labels names head\(s\) \['x'\] that the model lacks; its heads are \['b', 'c'\]"),
    ({"c": _spec((3,)), "b": _spec(())}, r"'c' \(Classification\) expects labels of shape \(\) or \(1,\) per example, got \(3,\)"),
    ({"c": _spec(()), "b": _spec((), "string")}, "'b' .*numeric"),
])
def test_check_labels_names_the_fault(labels, message):
    heads = {"c": mtk.heads.Classification("c", num_classes=3),
             "b": mtk.heads.Binary("b")}
    with pytest.raises(ValueError, match=message):
        check_labels(heads, labels)


def test_check_labels_rejects_a_list():
    heads = {"c": mtk.heads.Classification("c", num_classes=3),
             "b": mtk.heads.Binary("b")}
    with pytest.raises(TypeError, match=r"labels must be a dict keyed by head name \(\['b', 'c'\]\), got list"):
        check_labels(heads, [_spec(()), _spec(())])


def test_extra_metrics_must_be_metric_objects():
    with pytest.raises(TypeError, match="'b': extra metrics"):
        mtk.heads.Binary("b").get_metrics(extra=["accuracy"])
