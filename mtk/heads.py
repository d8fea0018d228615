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
"""

import keras

from mtk.losses import MaskedLoss
from mtk.losses import MaskedMetric

RESERVED_NAMES = ("trunk", "pooling")


class Head(keras.layers.Layer):
    """Base class of all heads.

    Subclasses set ``output_activation``, ``label_kind`` and implement
    ``output_units``, ``default_loss_name()``, ``default_metrics()`` and
    ``label_shapes()``.

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

        # === Layers ===
        self.hidden_layers = [
            keras.layers.Dense(
                units, activation=hidden_activation, name=f"hidden_{i}"
            )
            for i, units in enumerate(hidden_units)
        ]
        self.dropout_layer = keras.layers.Dropout(dropout, name="dropout")
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

    # === Training contract ===
    def get_loss(self):
        """A fresh masked loss object for this head."""
        return MaskedLoss(self.default_loss_name(), label_kind=self.label_kind)

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
        return [
            MaskedMetric(metric, label_kind=self.label_kind)
            for metric in metrics
        ]

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
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Head {name!r}: num_classes must be an integer >= 2, got "
                f"{num_classes!r} (use Binary for a yes/no task)."
            )
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

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "class_names": _as_list(self.class_names),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="mtk")
class Binary(Head):
    """A yes/no task: one sigmoid unit. Labels are 0/1 floats, NaN = missing.

    Example:

    >>> head = mtk.heads.Binary("is_footwear")
    >>> tuple(head(keras.ops.zeros((2, 8))).shape)
    (2, 1)
    """

    output_activation = "sigmoid"
    primary_metric = "accuracy"

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


@keras.saving.register_keras_serializable(package="mtk")
class MultiLabel(Head):
    """Several independent yes/no labels (one sigmoid each).

    Labels are float vectors of 0/1 of length ``num_labels``; a NaN entry is a
    missing label and the entries beside it still count.

    Args:
        name: the head's name.
        num_labels: number of labels, at least 1.
        label_names: optional list of ``num_labels`` names.
        **kwargs: `Head` arguments.

    Example:

    >>> head = mtk.heads.MultiLabel("attributes", num_labels=4)
    >>> tuple(head(keras.ops.zeros((2, 8))).shape)
    (2, 4)
    """

    output_activation = "sigmoid"
    primary_metric = "accuracy"

    def __init__(self, name, num_labels, label_names=None, **kwargs):
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(
                f"Head {name!r}: num_labels must be an integer >= 1, got "
                f"{num_labels!r}."
            )
        self.num_labels = num_labels
        self.label_names = _check_names(
            name, label_names, num_labels, "label_names", "num_labels"
        )
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

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_labels": self.num_labels,
                "label_names": _as_list(self.label_names),
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


def check_labels(heads, label_spec):
    """Checks a batched label structure against the heads before training.

    Args:
        heads: dict ``{name: Head}``, as from `heads_of`.
        label_spec: the labels part of a batched dataset's ``element_spec``:
            a dict ``{head name: tf.TensorSpec}``.

    Raises:
        TypeError: when the labels are not a dict keyed by head name.
        ValueError: naming the head that lacks labels, the label key that
            matches no head, or the head whose labels have the wrong shape.
    """
    check_head_dict(
        "labels", label_spec, heads, complete=True,
        missing_hint="Give every head a label; mark unknown ones with the "
        "missing-label sentinel (-1 for Classification, NaN otherwise).",
    )
    for name, spec in label_spec.items():
        heads[name].check_label_spec(spec.shape[1:], spec.dtype)
