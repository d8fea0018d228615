"""Prediction heads: one named output of a multi-task model each.

A head is a Keras layer: optional hidden `Dense` layers and dropout, then an
output `Dense` kept in float32 (stable losses under mixed precision). The
layer carries the head's name, so ``model.get_layer("item")`` returns the head
with its settings (class names, loss, metrics), also after
``keras.saving.load_model``. Each head owns its default loss and metrics, and
both skip missing labels (see `mtk.losses`).

Kinds and their missing-label sentinels:

| head             | label per example      | missing |
|------------------|------------------------|---------|
| `Classification` | class id, shape ()     | -1      |
| `Binary`         | 0./1., shape () or (1,)| NaN     |
| `MultiLabel`     | 0./1., (num_labels,)   | NaN     |
| `Regression`     | float, (units,)        | NaN     |

Dense heads (`Segmentation`, `DenseRegression`, defined in `mtk.dense_heads`)
predict a map per example and read the trunk's feature map; their labels are
maps with a sentinel per pixel (ignore_label, NaN).

Each head also owns the contract of its label *values* (`Head.check_label_values`
on numpy arrays before training, `Head.labels_valid` on a batch tensor inside a
training step): class ids are whole numbers in ``[0, num_classes)`` or -1 (a
NaN in a float array of class ids is missing too); Binary and MultiLabel
labels are 0, 1 or NaN (any value in ``[0, 1]`` with ``soft_labels=True``);
Regression labels are finite or NaN, and small enough that their loss fits in
float32. Every violation reads the same (`format_label_error`).
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

from mtk.losses import MaskedLoss
from mtk.losses import MaskedMetric

RESERVED_NAMES = ("trunk", "pooling", "sharing", "task_attention", "trunk_tail")

# Whether larger is better, for the metrics mtk's heads report (Δm's sign).
METRIC_HIGHER_IS_BETTER = {
    "loss": False,
    "accuracy": True,
    "auc": True,
    "mae": False,
}


class LabelValueError(ValueError):
    """A label value that its head cannot train on (raised before training).

    Attributes:
        head: the head's name.
        value: the first bad label value.
        index: its index in the checked labels array (a tuple).
    """

    def __init__(self, message, head=None, value=None, index=None):
        super().__init__(message)
        self.head = head
        self.value = value
        self.index = index


def format_label_error(head, value, position, problem):
    """The one message for a label value that breaks its head's contract.

    Args:
        head: the `Head`.
        value: the bad value, as it should be printed.
        position: where it is, e.g. ``"example 17"``.
        problem: what is wrong and what to do, e.g. ``"is not finite; use NaN
            for a missing label."``.

    Example:

    >>> mtk.heads.format_label_error(
    ...     mtk.heads.Regression("price"), "inf", "example 17",
    ...     "is not finite; use NaN for a missing label.")
    "Head 'price' (Regression): label inf at example 17 is not finite; use NaN for a missing label."
    """
    return (
        f"Head {head.name!r} ({type(head).__name__}): label {value} at "
        f"{position} {problem}"
    )


class Head(keras.layers.Layer):
    """Base class of all heads.

    Subclasses set ``output_activation``, ``label_kind`` and implement
    ``output_units``, ``default_loss_name()``, ``default_metrics()``,
    ``label_shapes()`` and the label-value contract: ``label_contract()``,
    ``_invalid_labels()`` (numpy), ``_valid_label_tensor()`` (TensorFlow) and
    ``_label_problem()``.

    Args:
        name: the head's name: the key of its output, labels, loss and metrics.
        hidden_units: sizes of hidden `Dense` layers before the output layer.
        dropout: dropout rate applied before the output layer.
        hidden_activation: activation of the hidden layers.
    """

    output_activation = None
    label_kind = "float"
    # The metric that sums up the head (used by tuning and reports) and
    # whether larger values of it are better.
    primary_metric = None
    primary_metric_higher_is_better = True

    def __init__(
        self,
        name,
        hidden_units=(),
        dropout=0.0,
        hidden_activation="relu",
        **kwargs,
    ):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"Head name must be a Python identifier string, got {name!r}."
            )
        if name in RESERVED_NAMES:
            raise ValueError(
                f"Head name {name!r} clashes with a layer mtk reserves "
                f"({', '.join(RESERVED_NAMES)}); choose another name."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"Head {name!r}: dropout must be in [0, 1), got {dropout}."
            )
        hidden_units = tuple(int(u) for u in hidden_units)
        if any(u < 1 for u in hidden_units):
            raise ValueError(
                f"Head {name!r}: hidden_units must be positive, "
                f"got {hidden_units}."
            )
        super().__init__(name=name, **kwargs)
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.hidden_activation = hidden_activation

        self._make_layers()

    def _make_layers(self):
        # === Layers ===
        self.hidden_layers = [
            keras.layers.Dense(
                units, activation=self.hidden_activation, name=f"hidden_{i}"
            )
            for i, units in enumerate(self.hidden_units)
        ]
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout")
        self.output_dense = keras.layers.Dense(
            self.output_units,
            activation=self.output_activation,
            dtype="float32",
            name="output",
        )

    @property
    def output_units(self):
        raise NotImplementedError

    def build(self, input_shape):
        shape = input_shape
        for layer in self.hidden_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.output_dense.build(shape)

    def call(self, features, training=None):
        x = features
        for layer in self.hidden_layers:
            x = layer(x)
        x = self.dropout_layer(x, training=training)
        return self.output_dense(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_units,)

    # Further metric directions a head kind adds to METRIC_HIGHER_IS_BETTER.
    metric_directions = {}

    def metric_higher_is_better(self, metric):
        """Whether larger values of this head's metric ``metric`` are better.

        Example:

        >>> mtk.heads.Regression("price").metric_higher_is_better("mae")
        False
        """
        directions = {**METRIC_HIGHER_IS_BETTER, **self.metric_directions}
        if metric == self.primary_metric:
            return bool(self.primary_metric_higher_is_better)
        if metric not in directions:
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}): the direction of "
                f"metric {metric!r} is unknown (known: {sorted(directions)}); "
                "say it with higher_is_better=."
            )
        return directions[metric]

    def delta_m_metrics(self):
        """The metrics Δm averages for this head: its primary metric."""
        return (self.primary_metric,)

    # === Training contract ===
    def get_loss(self):
        """A fresh masked loss object for this head."""
        return MaskedLoss(self.default_loss_name(), **self._masking())

    def get_metrics(self, extra=()):
        """Fresh masked metric objects for this head.

        Args:
            extra: further `keras.metrics.Metric` objects to track, masked
                the same way.
        """
        metrics = self.default_metrics()
        for metric in extra:
            if not isinstance(metric, keras.metrics.Metric):
                raise TypeError(
                    f"Head {self.name!r}: extra metrics must be "
                    f"keras.metrics.Metric objects, got {metric!r}."
                )
            metrics.append(metric)
        return [MaskedMetric(metric, **self._masking()) for metric in metrics]

    def _masking(self):
        """How this head's labels mark a missing label (`mtk.losses`)."""
        return {"label_kind": self.label_kind}

    def default_loss_name(self):
        raise NotImplementedError

    def default_metrics(self):
        raise NotImplementedError

    def label_shapes(self):
        """Per-example label shapes this head accepts."""
        raise NotImplementedError

    def check_label_spec(self, shape, dtype):
        """Raises a ValueError naming this head if labels cannot fit it.

        Args:
            shape: the per-example label shape (batch dimension removed).
            dtype: the label dtype (a `tf.DType` or a dtype string).
        """
        shape = tuple(shape)
        dtype_name = getattr(dtype, "name", str(dtype))
        if dtype_name in ("string", "bool") or dtype_name.startswith("complex"):
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}) needs numeric "
                f"labels, got dtype {dtype_name}."
            )
        if shape not in self.label_shapes():
            expected = " or ".join(str(s) for s in self.label_shapes())
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}) expects labels "
                f"of shape {expected} per example, got {shape}."
            )

    # === Label values ===
    def check_label_values(self, labels, where=None):
        """Raises a `LabelValueError` if a label value breaks this head's contract.

        Vectorised numpy over the whole array: cheap enough to run on every
        in-memory label array before training.

        Args:
            labels: the head's labels for a batch or a whole data set, shape
                ``(examples,) + label shape`` (a numpy array or anything
                ``np.asarray`` takes, an eager tensor included).
            where: what the labels are, appended to the example index in the
                message, e.g. ``"of the first batch"``.

        Example:

        >>> head = mtk.heads.Regression("price")
        >>> head.check_label_values(np.array([1.5, np.nan, -2.0]))
        >>> head.check_label_values(np.array([1.5, np.inf]))
        Traceback (most recent call last):
        ...
        mtk.heads.LabelValueError: Head 'price' (Regression): label inf at example 1 is not finite; use NaN for a missing label.
        """
        error = self.label_value_error(labels, where=where)
        if error is not None:
            raise error

    def label_value_error(self, labels, where=None):
        """The `LabelValueError` for the first bad label, or None if all are valid.

        The formatter behind `check_label_values`; a training step that saw
        `labels_valid` turn False can call it on that batch's labels for a
        message naming the value and example.

        Args:
            labels: as for `check_label_values`.
            where: as for `check_label_values`.
        """
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = labels.reshape(1)
        if labels.dtype.kind not in "biuf":
            # Other dtypes are check_label_spec's to reject.
            return None
        if labels.dtype.kind in "bu":
            # Signed, so that comparisons with -1 mean what they say.
            labels = labels.astype(np.int64)
        elif labels.dtype == np.float16:
            # Limits such as 1e16 would round to inf in float16.
            labels = labels.astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            invalid = self._invalid_labels(labels)
        if not invalid.any():
            return None
        index = tuple(int(i) for i in np.argwhere(invalid)[0])
        count = int(np.count_nonzero(invalid))
        value = labels[index]
        position = self._position(index, labels.shape)
        if where:
            position += f" {where}"
        if count > 1:
            position += f" (the first of {count} invalid labels)"
        return LabelValueError(
            format_label_error(
                self, str(value), position, self._label_problem(value)
            ),
            head=self.name,
            value=value.item(),
            index=index,
        )

    def _position(self, index, shape):
        """Where the bad label at ``index`` of an array of ``shape`` is."""
        position = f"example {index[0]}"
        if len(index) > 1 and shape[1:] != (1,):
            position += f", entry {index[1]}"
            names = self._entry_names()
            if names is not None:
                position += f" ({names[index[1]]!r})"
        return position

    def labels_valid(self, labels):
        """A scalar boolean tensor: True when every label of the batch is valid.

        TensorFlow ops only, so it runs inside a `tf.function` training step
        (e.g. in a `tf.debugging.Assert`, or returned with the step's logs);
        `label_value_error` then formats the message for the batch.

        Args:
            labels: the head's label tensor for a batch.

        Example:

        >>> head = mtk.heads.Classification("item", num_classes=4)
        >>> bool(head.labels_valid(tf.constant([0, 3, -1])))
        True
        >>> bool(head.labels_valid(tf.constant([0, 4])))
        False
        """
        labels = tf.convert_to_tensor(labels)
        if labels.dtype.is_integer or labels.dtype.is_bool:
            labels = tf.cast(labels, tf.int64)
        elif labels.dtype in (tf.float16, tf.bfloat16):
            labels = tf.cast(labels, tf.float32)
        elif not labels.dtype.is_floating:
            raise TypeError(
                f"Head {self.name!r} ({type(self).__name__}) needs numeric "
                f"labels, got dtype {labels.dtype.name}."
            )
        return tf.reduce_all(self._valid_label_tensor(labels))

    def label_contract(self):
        """The valid label values of this head, in words."""
        raise NotImplementedError

    def _invalid_labels(self, labels):
        """numpy: a boolean array, True where a label breaks the contract."""
        raise NotImplementedError

    def _valid_label_tensor(self, labels):
        """TensorFlow: a boolean tensor, True where a label is valid.

        ``labels`` is int64 or a floating dtype.
        """
        raise NotImplementedError

    def _label_problem(self, value):
        """What is wrong with one bad value (numpy scalar), and the remedy."""
        raise NotImplementedError

    def _entry_names(self):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_units": list(self.hidden_units),
                "dropout": self.dropout,
                "hidden_activation": self.hidden_activation,
            }
        )
        return config


def _as_list(names):
    # Layer attributes may be wrapped by TensorFlow's tracking; configs hold
    # plain lists.
    return None if names is None else list(names)


def _check_num_classes(head_name, num_classes, hint=""):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"Head {head_name!r}: num_classes must be an integer >= 2, got "
            f"{num_classes!r}{hint}."
        )


def _check_names(head_name, names, count, argument, count_argument):
    if names is None:
        return None
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(
            f"Head {head_name!r}: {argument} has {len(names)} entries but "
            f"{count_argument}={count}."
        )
    return names


@keras.saving.register_keras_serializable(package="mtk")
class Classification(Head):
    """Single-label classification over ``num_classes`` classes (softmax).

    Labels are integer class ids; -1 marks a missing label.

    Args:
        name: the head's name.
        num_classes: number of classes, at least 2.
        class_names: optional list of ``num_classes`` names (used by export
            and reports).
        **kwargs: `Head` arguments (hidden_units, dropout, ...).

    Example:

    >>> head = mtk.heads.Classification("item", num_classes=3, class_names=["a", "b", "c"])
    >>> tuple(head(keras.ops.zeros((2, 8))).shape)
    (2, 3)
    """

    output_activation = "softmax"
    label_kind = "class_id"
    primary_metric = "accuracy"

    def __init__(self, name, num_classes, class_names=None, **kwargs):
        _check_num_classes(name, num_classes, " (use Binary for a yes/no task)")
        self.num_classes = num_classes
        self.class_names = _check_names(
            name, class_names, num_classes, "class_names", "num_classes"
        )
        super().__init__(name, **kwargs)

    @property
    def output_units(self):
        return self.num_classes

    def default_loss_name(self):
        return "sparse_categorical_crossentropy"

    def default_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def label_shapes(self):
        return ((), (1,))

    # The class id that marks a missing label, and what it marks (the
    # contract below also serves `Segmentation`, whose id is ignore_label).
    _missing_id = -1
    _missing_words = "a missing label"

    def label_contract(self):
        return (
            f"class ids are whole numbers in [0, {self.num_classes}), "
            f"{self._missing_id} for {self._missing_words}"
        )

    def _invalid_labels(self, labels):
        in_range = (labels >= 0) & (labels < self.num_classes)
        if labels.dtype.kind == "i":
            return ~(in_range | (labels == self._missing_id))
        # In a float array of class ids NaN marks a missing label too.
        whole = labels == np.floor(labels)
        return ~(
            (whole & in_range) | (labels == self._missing_id) | np.isnan(labels)
        )

    def _valid_label_tensor(self, labels):
        in_range = (labels >= 0) & (labels < self.num_classes)
        missing = tf.equal(labels, tf.cast(self._missing_id, labels.dtype))
        if labels.dtype.is_integer:
            return in_range | missing
        whole = tf.equal(labels, tf.floor(labels))
        return (whole & in_range) | missing | tf.math.is_nan(labels)

    def _label_problem(self, value):
        if not float(value).is_integer():
            return f"is not a whole number; {self.label_contract()}."
        return (
            f"is not a class id in [0, {self.num_classes}); use "
            f"{self._missing_id} for {self._missing_words}."
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "class_names": _as_list(self.class_names),
            }
        )
        return config


class _ZeroOneLabels:
    """The label contract of sigmoid heads: 0, 1 or NaN; [0, 1] if soft."""

    def label_contract(self):
        if self.soft_labels:
            return "labels are numbers in [0, 1], NaN for a missing label"
        return "labels are 0 or 1, NaN for a missing label"

    def _invalid_labels(self, labels):
        if self.soft_labels:
            valid = (labels >= 0) & (labels <= 1)
        else:
            valid = (labels == 0) | (labels == 1)
        if labels.dtype.kind == "f":
            valid |= np.isnan(labels)
        return ~valid

    def _valid_label_tensor(self, labels):
        if self.soft_labels:
            valid = (labels >= 0) & (labels <= 1)
        else:
            valid = tf.equal(labels, 0) | tf.equal(labels, 1)
        if labels.dtype.is_floating:
            valid |= tf.math.is_nan(labels)
        return valid

    def _label_problem(self, value):
        if self.soft_labels:
            return "is not in [0, 1]; use NaN for a missing label."
        return (
            "is not 0 or 1; use NaN for a missing label (or soft_labels=True "
            "for probabilities in [0, 1])."
        )


def _check_soft_labels(name, soft_labels):
    if not isinstance(soft_labels, bool):
        raise ValueError(
            f"Head {name!r}: soft_labels must be True or False, got "
            f"{soft_labels!r}."
        )
    return soft_labels


@keras.saving.register_keras_serializable(package="mtk")
class Binary(_ZeroOneLabels, Head):
    """A yes/no task: one sigmoid unit. Labels are 0/1 floats, NaN = missing.

    Args:
        name: the head's name.
        soft_labels: accept any label in [0, 1] (a probability, e.g. from
            label smoothing or several annotators) instead of only 0 and 1.
            The loss takes soft labels as they are; the accuracy and AUC
            metrics are meant for 0/1 labels.
        **kwargs: `Head` arguments.

    Example:

    >>> head = mtk.heads.Binary("is_footwear")
    >>> tuple(head(keras.ops.zeros((2, 8))).shape)
    (2, 1)
    """

    output_activation = "sigmoid"
    primary_metric = "accuracy"

    def __init__(self, name, soft_labels=False, **kwargs):
        self.soft_labels = _check_soft_labels(name, soft_labels)
        super().__init__(name, **kwargs)

    @property
    def output_units(self):
        return 1

    def default_loss_name(self):
        return "binary_crossentropy"

    def default_metrics(self):
        return [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
        ]

    def label_shapes(self):
        return ((), (1,))

    def get_config(self):
        config = super().get_config()
        config.update({"soft_labels": self.soft_labels})
        return config


@keras.saving.register_keras_serializable(package="mtk")
class MultiLabel(_ZeroOneLabels, Head):
    """Several independent yes/no labels (one sigmoid each).

    Labels are float vectors of 0/1 of length ``num_labels``; a NaN entry is a
    missing label and the entries beside it still count.

    Args:
        name: the head's name.
        num_labels: number of labels, at least 1.
        label_names: optional list of ``num_labels`` names.
        soft_labels: accept any label in [0, 1] instead of only 0 and 1 (see
            `Binary`).
        **kwargs: `Head` arguments.

    Example:

    >>> head = mtk.heads.MultiLabel("attributes", num_labels=4)
    >>> tuple(head(keras.ops.zeros((2, 8))).shape)
    (2, 4)
    """

    output_activation = "sigmoid"
    primary_metric = "accuracy"

    def __init__(
        self, name, num_labels, label_names=None, soft_labels=False, **kwargs
    ):
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(
                f"Head {name!r}: num_labels must be an integer >= 1, got "
                f"{num_labels!r}."
            )
        self.num_labels = num_labels
        self.label_names = _check_names(
            name, label_names, num_labels, "label_names", "num_labels"
        )
        self.soft_labels = _check_soft_labels(name, soft_labels)
        super().__init__(name, **kwargs)

    @property
    def output_units(self):
        return self.num_labels

    def default_loss_name(self):
        return "binary_crossentropy"

    def default_metrics(self):
        return [
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
        ]

    def label_shapes(self):
        return ((self.num_labels,),)

    def _entry_names(self):
        return _as_list(self.label_names)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_labels": self.num_labels,
                "label_names": _as_list(self.label_names),
                "soft_labels": self.soft_labels,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="mtk")
class Regression(Head):
    """Real-valued targets (linear output). NaN marks a missing target.

    Args:
        name: the head's name.
        units: number of values predicted per example.
        loss: ``"mean_squared_error"`` (default), ``"mean_absolute_error"``
            or ``"huber"``.
        **kwargs: `Head` arguments.

    Example:

    >>> head = mtk.heads.Regression("price")
    >>> tuple(head(keras.ops.zeros((2, 8))).shape)
    (2, 1)
    """

    primary_metric = "mae"
    primary_metric_higher_is_better = False
    LOSSES = ("mean_squared_error", "mean_absolute_error", "huber")
    # The largest |label| each loss takes: its loss over a batch (and its
    # gradient) must stay finite in float32, whose largest value is ~3.4e38.
    LABEL_LIMITS = {
        "mean_squared_error": 1e16,
        "mean_absolute_error": 1e32,
        "huber": 1e32,
    }

    def __init__(self, name, units=1, loss="mean_squared_error", **kwargs):
        if not isinstance(units, int) or units < 1:
            raise ValueError(
                f"Head {name!r}: units must be an integer >= 1, got {units!r}."
            )
        if loss not in self.LOSSES:
            raise ValueError(
                f"Head {name!r}: loss must be one of {self.LOSSES}, got "
                f"{loss!r}."
            )
        self.units = units
        self.loss = loss
        super().__init__(name, **kwargs)

    @property
    def output_units(self):
        return self.units

    def default_loss_name(self):
        return self.loss

    def default_metrics(self):
        return [keras.metrics.MeanAbsoluteError(name="mae")]

    def label_shapes(self):
        return ((self.units,), ()) if self.units == 1 else ((self.units,),)

    def label_contract(self):
        return (
            f"labels are finite numbers of magnitude <= "
            f"{self.LABEL_LIMITS[self.loss]:g}, NaN for a missing label"
        )

    def _invalid_labels(self, labels):
        if labels.dtype.kind == "f":
            return ~(np.abs(labels) <= self.LABEL_LIMITS[self.loss]) & ~np.isnan(
                labels
            )
        return np.abs(labels.astype(np.float64)) > self.LABEL_LIMITS[self.loss]

    def _valid_label_tensor(self, labels):
        if labels.dtype.is_integer:
            labels = tf.cast(labels, tf.float64)
        limit = self.LABEL_LIMITS[self.loss]
        return (tf.abs(labels) <= limit) | tf.math.is_nan(labels)

    def _label_problem(self, value):
        if not np.isfinite(value):
            return "is not finite; use NaN for a missing label."
        return (
            f"is too large for {self.loss} in float32 (|label| must be <= "
            f"{self.LABEL_LIMITS[self.loss]:g}); rescale the targets."
        )

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "loss": self.loss})
        return config


def heads_of(model):
    """The heads of a model built by mtk, in output order.

    Args:
        model: a model from `mtk.build_multitask_model` (or loaded from one).

    Returns:
        A dict ``{head name: Head layer}``.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> list(mtk.heads.heads_of(model))
    ['flag']
    """
    heads = {}
    for layer in model.layers:
        if isinstance(layer, Head):
            heads[layer.name] = layer
    if not heads:
        raise ValueError(
            f"Model {model.name!r} has no mtk heads; build it with "
            "mtk.build_multitask_model()."
        )
    return heads


def check_head_dict(
    argument, value, head_names, *, complete=False, error=ValueError,
    missing_hint=None,
):
    """Raises unless ``value`` is a dict keyed by head names.

    The one check behind every per-head argument (labels, ``loss_weights``,
    ``metrics``, tuning ``baselines``, ...): a list would be matched to heads
    by position and can land on the wrong head.

    Args:
        argument: the argument's name, for the message.
        value: the value to check.
        head_names: the model's head names.
        complete: also require a key for every head.
        error: the exception type for unknown or missing keys (a non-dict
            always raises TypeError).
        missing_hint: a sentence added to the message for missing keys,
            saying what to give instead.

    Example:

    >>> mtk.heads.check_head_dict("loss_weights", {"price": 2.0}, ["item", "price"])
    >>> mtk.heads.check_head_dict("loss_weights", {"prize": 2.0}, ["item", "price"])
    Traceback (most recent call last):
    ...
    ValueError: loss_weights names head(s) ['prize'] that the model lacks; its heads are ['item', 'price'].
    """
    names = sorted(head_names)
    if not isinstance(value, dict):
        raise TypeError(
            f"{argument} must be a dict keyed by head name ({names}), got "
            f"{type(value).__name__}. A list or tuple would be matched to "
            "heads by position and can land on the wrong head."
        )
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise error(
            f"{argument} names head(s) {unknown} that the model lacks; its "
            f"heads are {names}."
        )
    missing = sorted(set(names) - set(value))
    if complete and missing:
        hint = f" {missing_hint}" if missing_hint else ""
        raise error(f"{argument} lacks head(s) {missing}.{hint}")


def check_loss_weights(loss_weights, head_names, argument="loss_weights"):
    """Raises unless ``loss_weights`` maps head names to finite numbers >= 0.

    A NaN or infinite weight turns every weight of the model into NaN at the
    first step; a negative one makes training maximise that head's loss.

    Args:
        loss_weights: dict ``{head name: weight}``, or None (equal weights).
        head_names: the model's head names.
        argument: the argument's name, for the message.

    Example:

    >>> mtk.heads.check_loss_weights({"price": 0.5}, ["item", "price"])
    >>> mtk.heads.check_loss_weights({"price": float("nan")}, ["item", "price"])
    Traceback (most recent call last):
    ...
    ValueError: loss_weights['price'] must be a finite number >= 0, got nan.
    """
    if loss_weights is None:
        return
    check_head_dict(argument, loss_weights, head_names)
    for name, weight in loss_weights.items():
        if (
            isinstance(weight, bool)
            or not isinstance(weight, numbers.Real)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ValueError(
                f"{argument}[{name!r}] must be a finite number >= 0, got "
                f"{weight!r}."
            )


def check_labels(heads, label_spec, argument="labels"):
    """Checks a batched label structure against the heads before training.

    Args:
        heads: dict ``{name: Head}``, as from `heads_of`.
        label_spec: the labels part of a batched dataset's ``element_spec``:
            a dict ``{head name: tf.TensorSpec}``.
        argument: what the labels are, for the messages (e.g.
            ``"validation_data's labels"``).

    Raises:
        TypeError: when the labels are not a dict keyed by head name.
        ValueError: naming the head that lacks labels, the label key that
            matches no head, or the head whose labels have the wrong shape.
    """
    check_head_dict(
        argument, label_spec, heads, complete=True,
        missing_hint="Give every head a label; mark unknown ones with the "
        "missing-label sentinel (-1 for Classification, NaN otherwise).",
    )
    for name, spec in label_spec.items():
        heads[name].check_label_spec(spec.shape[1:], spec.dtype)


def check_label_values(heads, labels, where=None):
    """Checks every head's label values (`Head.check_label_values`).

    Args:
        heads: dict ``{name: Head}``, as from `heads_of`.
        labels: dict ``{head name: array}``, keys already checked
            (`check_labels`).
        where: as for `Head.check_label_values`.

    Raises:
        LabelValueError: naming the head, the value and its example.

    Example:

    >>> heads = {"item": mtk.heads.Classification("item", num_classes=4)}
    >>> mtk.heads.check_label_values(heads, {"item": np.array([0, 3, -2])})
    Traceback (most recent call last):
    ...
    mtk.heads.LabelValueError: Head 'item' (Classification): label -2 at example 2 is not a class id in [0, 4); use -1 for a missing label.
    """
    for name, values in labels.items():
        heads[name].check_label_values(values, where=where)


# Dense (per-pixel) heads live in their own module; they are heads too.
from mtk.dense_heads import DenseRegression  # noqa: E402
from mtk.dense_heads import Segmentation  # noqa: E402
