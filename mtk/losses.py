"""Losses and metrics that skip missing labels.

Multi-task data is often partially labelled: an example from a pets data set
has no label for a cars head. mtk marks such labels with one sentinel per
label kind and every loss and metric here ignores them:

- ``"class_id"`` labels (integer class ids, `Classification` heads): ``-1``
  (and NaN, when the class ids come as a float array, e.g. a pandas column
  with gaps).
- ``"float"`` labels (`Binary`, `MultiLabel` entries, `Regression`,
  `DenseRegression` pixels): ``NaN``.
- ``"class_id"`` labels with an ``ignore_label`` (`Segmentation` maps): that
  label (255 by default) marks an unlabelled pixel.

A missing label contributes no loss and no metric update; the loss of a batch
is the mean over the labels that are present, so it does not shrink when a
batch happens to hold few labelled examples.
"""

import keras
import tensorflow as tf
from keras import ops

MISSING_CLASS_ID = -1
MISSING_FLOAT = float("nan")

LABEL_KINDS = ("class_id", "float")

# Element-wise losses by name, computed on labels that are already cleaned of
# sentinels. Each returns one value per label entry.
_ELEMENTWISE_LOSSES = {
    "sparse_categorical_crossentropy": lambda y, p: (
        keras.losses.sparse_categorical_crossentropy(y, p)
    ),
    "binary_crossentropy": lambda y, p: keras.losses.binary_crossentropy(
        ops.expand_dims(y, -1), ops.expand_dims(p, -1)
    ),
    "mean_squared_error": lambda y, p: ops.square(y - p),
    "mean_absolute_error": lambda y, p: ops.abs(y - p),
    "huber": lambda y, p: keras.losses.huber(
        ops.expand_dims(y, -1), ops.expand_dims(p, -1)
    ),
}


def _check_label_kind(label_kind):
    if label_kind not in LABEL_KINDS:
        raise ValueError(
            f"Unknown label_kind {label_kind!r}; expected one of {LABEL_KINDS}."
        )


def split_missing(y_true, y_pred, label_kind, ignore_label=None):
    """Returns ``(clean_y_true, present)`` for a batch of labels.

    ``present`` is a float mask (1 = labelled, 0 = missing) with the shape of
    the label entries; ``clean_y_true`` has every sentinel replaced by a valid
    placeholder so that losses stay finite before masking.

    Args:
        y_true: labels, possibly with sentinels.
        y_pred: the head's predictions (used for shapes only).
        label_kind: ``"class_id"`` or ``"float"``.
        ignore_label: for ``"class_id"`` labels, one more class id that
            marks a missing label (a segmentation map's unlabelled pixels).
    """
    _check_label_kind(label_kind)
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if label_kind == "class_id":
        # Accept (batch,) and (batch, 1) class ids.
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        if "float" in keras.backend.standardize_dtype(y_true.dtype):
            # NaN in a float array of class ids is missing, like -1 (casting
            # NaN to an integer is undefined and differs between devices).
            y_true = ops.where(ops.isnan(y_true), -1.0, y_true)
        y_true = ops.cast(y_true, "int32")
        present = ops.greater_equal(y_true, 0)
        if ignore_label is not None:
            present = ops.logical_and(
                present, ops.not_equal(y_true, int(ignore_label))
            )
        clean = ops.where(present, y_true, ops.zeros_like(y_true))
    else:
        y_true = ops.cast(y_true, y_pred.dtype)
        # Accept (batch,) targets for single-unit heads.
        if len(y_true.shape) == len(y_pred.shape) - 1:
            y_true = ops.expand_dims(y_true, -1)
        present = ops.logical_not(ops.isnan(y_true))
        clean = ops.where(present, y_true, ops.zeros_like(y_true))
    return clean, ops.cast(present, y_pred.dtype)


def masked_sum_and_count(
    loss, label_kind, y_true, y_pred, sample_weight=None, ignore_label=None
):
    """A batch's summed loss over present labels, and how many are present.

    The parts of a masked mean: a head's loss is ``sum / count``. Kept apart so
    that a training step under tf.distribute can add the counts of all
    replicas and divide by the **global** number of labels.

    Args:
        loss: name of the element-wise loss (see `MaskedLoss`).
        label_kind: ``"class_id"`` or ``"float"``.
        y_true: labels, possibly with sentinels.
        y_pred: the head's predictions.
        sample_weight: optional per-example weights; they scale each
            example's loss, not the count.
        ignore_label: see `split_missing`.

    Returns:
        ``(sum, count)``: float32 scalars.

    Example:

    >>> total, count = mtk.losses.masked_sum_and_count(
    ...     "mean_squared_error", "float", [[1.0], [float("nan")]], [[3.0], [0.0]])
    >>> float(total), float(count)
    (4.0, 1.0)
    """
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    clean, present = split_missing(y_true, y_pred, label_kind, ignore_label)
    values = ops.cast(_ELEMENTWISE_LOSSES[loss](clean, y_pred), "float32")
    weighted = values * present
    if sample_weight is not None:
        sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
        # One weight per example, applied to each of its label entries.
        sample_weight = ops.reshape(
            sample_weight, (-1,) + (1,) * (len(weighted.shape) - 1)
        )
        weighted = weighted * sample_weight
    return ops.sum(weighted), ops.sum(present)


@keras.saving.register_keras_serializable(package="mtk")
class MaskedLoss(keras.losses.Loss):
    """A loss that ignores labels marked missing.

    Its value is the mean over the labels present in the batch (sample
    weights scale each example's term). `mtk.MultiTaskModel` uses the same
    sum and count (`masked_sum_and_count`), with the count taken over the
    global batch under tf.distribute; on its own this object works in any
    Keras model.

    Args:
        loss: name of the element-wise loss, one of
            ``"sparse_categorical_crossentropy"``, ``"binary_crossentropy"``,
            ``"mean_squared_error"``, ``"mean_absolute_error"``, ``"huber"``.
        label_kind: ``"class_id"`` (sentinel -1) or ``"float"`` (sentinel NaN).
        ignore_label: for ``"class_id"`` labels, a further sentinel (see
            `split_missing`).

    Example:

    >>> loss = mtk.losses.MaskedLoss("mean_squared_error", label_kind="float")
    >>> float(loss([[1.0], [float("nan")]], [[3.0], [100.0]]))
    4.0
    """

    def __init__(self, loss, label_kind, name=None, ignore_label=None, **kwargs):
        if loss not in _ELEMENTWISE_LOSSES:
            raise ValueError(
                f"Unknown loss {loss!r}; expected one of "
                f"{sorted(_ELEMENTWISE_LOSSES)}."
            )
        _check_label_kind(label_kind)
        super().__init__(name=name or f"masked_{loss}", **kwargs)
        self.loss = loss
        self.label_kind = label_kind
        self.ignore_label = ignore_label

    def sum_and_count(self, y_true, y_pred, sample_weight=None):
        """``(sum, count)`` of this loss over present labels."""
        return masked_sum_and_count(
            self.loss, self.label_kind, y_true, y_pred, sample_weight,
            self.ignore_label,
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        total, count = self.sum_and_count(y_true, y_pred, sample_weight)
        mean = total / ops.maximum(count, 1.0)
        # Keras sums the replicas' gradients: each replica's loss is its share.
        return mean / tf.distribute.get_strategy().num_replicas_in_sync

    def call(self, y_true, y_pred):
        # Per-entry values for code that calls `call` directly (unreduced).
        clean, present = split_missing(
            y_true, y_pred, self.label_kind, self.ignore_label
        )
        return _ELEMENTWISE_LOSSES[self.loss](clean, y_pred) * present

    def get_config(self):
        config = super().get_config()
        config.update({"loss": self.loss, "label_kind": self.label_kind})
        if self.ignore_label is not None:
            config["ignore_label"] = self.ignore_label
        return config


@keras.saving.register_keras_serializable(package="mtk")
class MaskedMetric(keras.metrics.Metric):
    """Wraps a Keras metric so that missing labels do not update it.

    Missing entries get sample weight 0. For ``"float"`` labels the entries are
    flattened first, so one missing entry of a multi-label target does not
    discard the entries beside it.

    Args:
        metric: a `keras.metrics.Metric` instance (or its serialized config).
        label_kind: ``"class_id"`` (sentinel -1) or ``"float"`` (sentinel NaN).
        ignore_label: for ``"class_id"`` labels, a further sentinel (see
            `split_missing`).

    Example:

    >>> m = mtk.losses.MaskedMetric(keras.metrics.BinaryAccuracy(), label_kind="float")
    >>> m.update_state([[1.0], [float("nan")]], [[0.9], [0.9]])
    >>> float(m.result())
    1.0
    """

    def __init__(self, metric, label_kind, name=None, ignore_label=None, **kwargs):
        if not isinstance(metric, keras.metrics.Metric):
            metric = keras.metrics.deserialize(metric)
        _check_label_kind(label_kind)
        super().__init__(name=name or metric.name, **kwargs)
        self.metric = metric
        self.label_kind = label_kind
        self.ignore_label = ignore_label

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        clean, present = split_missing(
            y_true, y_pred, self.label_kind, self.ignore_label
        )
        if self.label_kind == "float":
            clean = ops.reshape(clean, (-1, 1))
            y_pred = ops.reshape(y_pred, (-1, 1))
            if sample_weight is not None:
                # Per-example weights apply to each of the example's entries.
                sample_weight = ops.broadcast_to(
                    ops.reshape(ops.cast(sample_weight, present.dtype), (-1, 1)),
                    ops.shape(present),
                )
            present = ops.reshape(present, (-1,))
            if sample_weight is not None:
                sample_weight = ops.reshape(sample_weight, (-1,))
        if sample_weight is not None:
            # One weight per example, also over a label map's pixels.
            sample_weight = ops.reshape(
                ops.cast(sample_weight, present.dtype),
                (-1,) + (1,) * (len(present.shape) - 1),
            )
            present = present * sample_weight
        self.metric.update_state(clean, y_pred, sample_weight=present)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "metric": keras.metrics.serialize(self.metric),
                "label_kind": self.label_kind,
            }
        )
        if self.ignore_label is not None:
            config["ignore_label"] = self.ignore_label
        return config
