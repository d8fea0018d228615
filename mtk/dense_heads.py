"""Dense (per-pixel) heads: segmentation and per-pixel regression.

A dense head reads the trunk's feature map (not the pooled vector) and
decodes it to a map at the input's resolution (or ``output_size``) with a
light decoder:

1. a 3x3 convolution on the trunk's feature map;
2. optionally a skip connection from an earlier trunk layer (``skip=``, a
   layer name): the map is resized (bilinear) to that layer's resolution,
   concatenated with a 1x1 projection of its output and convolved again;
3. bilinear upsampling to the output size and one more 3x3 convolution;
4. a 1x1 convolution (float32) giving the per-pixel outputs.

Image-level heads (`mtk.heads.Classification`, ...) on the same model pool
the trunk's feature map for themselves. The model's trunk must end in a
feature map: cut it with ``trunk_output=`` (keras.applications names and
keras.Model trunks); a vector trunk is refused with the candidate layers.

Kinds and their missing-label sentinels:

| head              | label map per example           | missing pixel |
|-------------------|---------------------------------|---------------|
| `Segmentation`    | class ids, (H, W) or (H, W, 1)  | ignore_label  |
| `DenseRegression` | floats, (H, W, channels)        | NaN           |

A whole missing map (an image without depth) is all-sentinel and costs
nothing: no loss, no gradient, no metric update. Each loss is the mean over
the labelled pixels of the (global) batch.

Metrics, as the literature reports them:

- `Segmentation`: ``miou`` (mean intersection over union over the classes
  that occur in the labels or the predictions seen so far: a class absent
  from both is left out of the mean, not counted as 0 or 1) and
  ``pixel_accuracy``; ignored pixels count in neither.
- `DenseRegression` (depth-like): ``abs_error`` (mean |prediction - label|)
  and ``rel_error`` (mean |prediction - label| / |label|, pixels whose label
  is 0 left out).
- `DenseRegression` for directions (``unit_norm=True`` or
  ``loss="cosine"``, e.g. surface normals): ``angle_mean``,
  ``angle_median`` (to 0.1°) in degrees and the shares of pixels within
  11.25°, 22.5° and 30° (``within_11_25``, ``within_22_5``, ``within_30``).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtk.heads import Classification
from mtk.heads import Head
from mtk.heads import Regression
from mtk.heads import _as_list
from mtk.heads import _check_names
from mtk.heads import _check_num_classes
from mtk.losses import MaskedMetric
from mtk.trunks import POOLING_NAME
from mtk.trunks import Trunk
from mtk.trunks import TRUNK_NAME
from mtk.trunks import feature_map_layers
from mtk.trunks import pool_features
from mtk.trunks import trunk_inputs

ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)


def _metric_suffix(threshold):
    return f"{threshold:g}".replace(".", "_")


class DenseHead(Head):
    """Base class of heads that predict a map (see the module docstring).

    Args:
        name: the head's name.
        decoder_filters: channels of the decoder's convolutions.
        skip: the name of an earlier trunk layer (a feature map) to add as a
            skip connection, or None.
        skip_filters: channels of the skip connection's 1x1 projection.
        output_size: ``(height, width)`` of the predicted map; None (default)
            is the model input's spatial size.
        dropout: dropout rate before the output convolution.
        **kwargs: other `keras.layers.Layer` arguments.
    """

    # Read by the model: this head reads the trunk's feature map.
    reads_feature_map = True
    # Set below, once the metric names are defined.
    metric_directions = {}

    def __init__(
        self,
        name,
        decoder_filters=32,
        skip=None,
        skip_filters=16,
        output_size=None,
        dropout=0.0,
        hidden_units=(),
        hidden_activation="relu",
        **kwargs,
    ):
        if tuple(hidden_units):
            raise ValueError(
                f"Head {name!r}: dense heads have no hidden Dense layers; "
                "size the decoder with decoder_filters instead of "
                f"hidden_units={tuple(hidden_units)}."
            )
        for argument, value in (
            ("decoder_filters", decoder_filters), ("skip_filters", skip_filters)
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Head {name!r}: {argument} must be a positive integer, "
                    f"got {value!r}."
                )
        if skip is not None and not isinstance(skip, str):
            raise ValueError(
                f"Head {name!r}: skip must be the name of a trunk layer (a "
                f"string) or None, got {skip!r}."
            )
        self.decoder_filters = decoder_filters
        self.skip = skip
        self.skip_filters = skip_filters
        self.output_size = _check_output_size(name, output_size)
        super().__init__(
            name, dropout=dropout, hidden_activation=hidden_activation, **kwargs
        )

    def _make_layers(self):
        # === Layers ===
        def conv(filters, size, name):
            return keras.layers.Conv2D(
                filters, size, padding="same", activation="relu", name=name
            )

        self.decoder_conv = conv(self.decoder_filters, 3, "decoder_conv")
        if self.skip is not None:
            self.skip_project = conv(self.skip_filters, 1, "skip_project")
            self.skip_conv = conv(self.decoder_filters, 3, "skip_conv")
        self.refine_conv = conv(self.decoder_filters, 3, "refine_conv")
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout")
        self.output_conv = keras.layers.Conv2D(
            self.output_units, 1, activation=self.output_activation,
            dtype="float32", name="output",
        )

    def resolve_output_size(self, input_shape):
        """Sets ``output_size`` to the input's size unless it is set.

        Args:
            input_shape: the model input's per-example shape.
        """
        if self.output_size is not None:
            return
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or None in input_shape[:2]:
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}) predicts a map "
                "at the input's resolution, but the model input has shape "
                f"{input_shape}, not (height, width, channels) with a fixed "
                "size; give output_size=(height, width)."
            )
        self.output_size = (int(input_shape[0]), int(input_shape[1]))

    def _size(self):
        if self.output_size is None:
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}): its label maps "
                "have the model input's size, unknown until the head is in a "
                "model; give output_size=(height, width) or pass the model "
                "(not the heads) where labels are prepared (heads=model)."
            )
        return tuple(self.output_size)

    def _split(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return inputs[0], (inputs[1] if len(inputs) > 1 else None)
        return inputs, None

    def build(self, input_shape):
        if self.output_size is None:
            raise ValueError(
                f"Head {self.name!r}: output_size is unknown; build the head "
                "inside a model (mtk.build_multitask_model) or give "
                "output_size=(height, width)."
            )
        if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)
        ):
            map_shape = tuple(input_shape[0])
            skip_shape = tuple(input_shape[1]) if len(input_shape) > 1 else None
        else:
            map_shape, skip_shape = tuple(input_shape), None
        if len(map_shape) != 4:
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}) decodes a feature "
                f"map (batch, height, width, channels); got shape {map_shape}."
            )
        if (skip_shape is None) != (self.skip is None):
            raise ValueError(
                f"Head {self.name!r}: skip={self.skip!r} but the head was "
                f"called with{'out' if skip_shape is None else ''} a skip "
                "feature map."
            )
        filters = self.decoder_filters
        self.decoder_conv.build(map_shape)
        if skip_shape is not None:
            self.skip_project.build(skip_shape)
            self.skip_conv.build(
                (None, None, None, filters + self.skip_filters)
            )
        self.refine_conv.build((None, None, None, filters))
        self.output_conv.build((None, None, None, filters))

    def call(self, inputs, training=None):
        features, skip = self._split(inputs)
        x = self.decoder_conv(features)
        if skip is not None:
            x = ops.image.resize(
                x, tuple(skip.shape[1:3]), interpolation="bilinear"
            )
            x = ops.concatenate([x, self.skip_project(skip)], axis=-1)
            x = self.skip_conv(x)
        x = ops.image.resize(x, self.output_size, interpolation="bilinear")
        x = self.refine_conv(x)
        x = self.dropout_layer(x, training=training)
        return self._finish(self.output_conv(x))

    def _finish(self, outputs):
        return outputs

    def compute_output_shape(self, input_shape):
        map_shape = input_shape
        if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)
        ):
            map_shape = input_shape[0]
        return (map_shape[0],) + tuple(self.output_size) + (self.output_units,)

    # === Labels ===
    def check_label_spec(self, shape, dtype):
        shape = tuple(shape)
        if len(shape) >= 2 and shape[:2] != self._size():
            raise ValueError(
                f"Head {self.name!r} ({type(self).__name__}) predicts maps of "
                f"size {tuple(self.output_size)} (the input's resolution or "
                f"output_size=), but its label maps are {shape[:2]}; resize "
                "the labels (nearest neighbour for class ids) or set "
                "output_size."
            )
        super().check_label_spec(shape, dtype)

    def _position(self, index, shape):
        position = f"example {index[0]}"
        if len(index) >= 3:
            position += f", pixel {tuple(index[1:3])}"
        if len(index) >= 4 and shape[-1] != 1:
            position += f", channel {index[3]}"
        return position

    def get_config(self):
        config = super().get_config()
        config.pop("hidden_units", None)
        config.update(
            {
                "decoder_filters": self.decoder_filters,
                "skip": self.skip,
                "skip_filters": self.skip_filters,
                "output_size": (
                    None if self.output_size is None else list(self.output_size)
                ),
            }
        )
        return config


def _check_output_size(name, output_size):
    if output_size is None:
        return None
    try:
        size = tuple(int(s) for s in output_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"Head {name!r}: output_size must be (height, width) with "
            f"positive sizes, got {output_size!r}."
        )
    return size


@keras.saving.register_keras_serializable(package="mtk")
class Segmentation(DenseHead):
    """Semantic segmentation: a class per pixel (softmax over the classes).

    Labels are maps of class ids, shape ``(H, W)`` or ``(H, W, 1)``;
    ``ignore_label`` marks an unlabelled pixel (so does NaN in a float map);
    a map of only ``ignore_label`` is a missing map: it costs nothing. The
    loss is the
    cross-entropy averaged over labelled pixels; metrics are ``miou`` and
    ``pixel_accuracy`` (see the module docstring).

    Args:
        name: the head's name.
        num_classes: number of classes, at least 2.
        ignore_label: the class id of unlabelled pixels, outside
            ``[0, num_classes)``; 255 (Cityscapes, Pascal VOC) by default.
        class_names: optional list of ``num_classes`` names.
        **kwargs: `DenseHead` arguments (``decoder_filters``, ``skip``,
            ``output_size``, ...).

    Example:

    >>> head = mtk.heads.Segmentation("parts", num_classes=3, output_size=(8, 8))
    >>> tuple(head(keras.ops.zeros((2, 2, 2, 16))).shape)
    (2, 8, 8, 3)
    """

    output_activation = "softmax"
    label_kind = "class_id"
    primary_metric = "miou"

    def __init__(
        self, name, num_classes, ignore_label=255, class_names=None, **kwargs
    ):
        _check_num_classes(name, num_classes)
        if isinstance(ignore_label, bool) or not isinstance(
            ignore_label, (int, np.integer)
        ):
            raise ValueError(
                f"Head {name!r}: ignore_label must be an integer class id "
                f"outside [0, {num_classes}), got {ignore_label!r}."
            )
        if 0 <= ignore_label < num_classes:
            raise ValueError(
                f"Head {name!r}: ignore_label={ignore_label} is a real class "
                f"id (inside [0, num_classes={num_classes})); pixels of that "
                "class would be ignored. Use an id outside the range, e.g. "
                "255."
            )
        self.num_classes = num_classes
        self.ignore_label = int(ignore_label)
        self.class_names = _check_names(
            name, class_names, num_classes, "class_names", "num_classes"
        )
        super().__init__(name, **kwargs)

    @property
    def output_units(self):
        return self.num_classes

    def _masking(self):
        return {"label_kind": self.label_kind, "ignore_label": self.ignore_label}

    def default_loss_name(self):
        return "sparse_categorical_crossentropy"

    def delta_m_metrics(self):
        return ("miou", "pixel_accuracy")

    def default_metrics(self):
        return [
            keras.metrics.MeanIoU(
                num_classes=self.num_classes, sparse_y_pred=False, name="miou",
                dtype="float32",
            ),
            keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
        ]

    def label_shapes(self):
        size = self._size()
        return (size, size + (1,))

    # The label-value contract of Classification, per pixel, with
    # ignore_label as the missing id (NaN in a float map is missing too).
    _missing_words = "an unlabelled pixel"
    label_contract = Classification.label_contract
    _invalid_labels = Classification._invalid_labels
    _valid_label_tensor = Classification._valid_label_tensor
    _label_problem = Classification._label_problem

    @property
    def _missing_id(self):
        return self.ignore_label

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "ignore_label": self.ignore_label,
                "class_names": _as_list(self.class_names),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="mtk")
class DenseRegression(DenseHead):
    """Per-pixel real values (depth: 1 channel; surface normals: 3).

    Labels are float maps ``(H, W, channels)`` (``(H, W)`` for one channel);
    NaN marks a missing pixel (a map of only NaN is a missing map: it costs
    nothing). With ``unit_norm=True`` each pixel's prediction is scaled to
    length 1 (a direction, e.g. a surface normal); ``loss="cosine"`` is
    ``1 - cos`` between prediction and label per pixel (a pixel is missing
    when any of its channels is NaN).

    Args:
        name: the head's name.
        channels: values per pixel.
        loss: ``"mean_squared_error"`` (default), ``"mean_absolute_error"``,
            ``"huber"`` or ``"cosine"`` (needs channels >= 2).
        unit_norm: normalise each pixel's prediction to unit length (needs
            channels >= 2).
        **kwargs: `DenseHead` arguments (``decoder_filters``, ``skip``,
            ``output_size``, ...).

    Example:

    >>> head = mtk.heads.DenseRegression(
    ...     "normals", channels=3, unit_norm=True, loss="cosine", output_size=(8, 8))
    >>> out = head(keras.random.normal((1, 2, 2, 16)))
    >>> tuple(out.shape), round(float(keras.ops.norm(out[0, 0, 0])), 4)
    ((1, 8, 8, 3), 1.0)
    """

    LOSSES = Regression.LOSSES + ("cosine",)
    LABEL_LIMITS = dict(Regression.LABEL_LIMITS, cosine=1e32)

    def __init__(
        self, name, channels=1, loss="mean_squared_error", unit_norm=False,
        **kwargs,
    ):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(
                f"Head {name!r}: channels must be an integer >= 1, got "
                f"{channels!r}."
            )
        if loss not in self.LOSSES:
            raise ValueError(
                f"Head {name!r}: loss must be one of {self.LOSSES}, got "
                f"{loss!r}."
            )
        if not isinstance(unit_norm, bool):
            raise ValueError(
                f"Head {name!r}: unit_norm must be True or False, got "
                f"{unit_norm!r}."
            )
        if channels < 2 and (unit_norm or loss == "cosine"):
            raise ValueError(
                f"Head {name!r}: unit_norm and loss='cosine' compare "
                f"directions and need channels >= 2, got channels={channels}."
            )
        self.channels = channels
        self.loss = loss
        self.unit_norm = unit_norm
        super().__init__(name, **kwargs)

    @property
    def output_units(self):
        return self.channels

    @property
    def directional(self):
        """True when the head predicts directions (angle metrics)."""
        return self.unit_norm or self.loss == "cosine"

    @property
    def primary_metric(self):
        return "angle_mean" if self.directional else "abs_error"

    primary_metric_higher_is_better = False

    def _finish(self, outputs):
        if not self.unit_norm:
            return outputs
        return outputs / ops.sqrt(
            ops.maximum(ops.sum(ops.square(outputs), axis=-1, keepdims=True), 1e-12)
        )

    def get_loss(self):
        if self.loss == "cosine":
            return MaskedCosineLoss()
        return super().get_loss()

    def default_loss_name(self):
        return self.loss

    def delta_m_metrics(self):
        if self.directional:
            return tuple(m.name for m in angle_metrics())
        return ("abs_error", "rel_error")

    def default_metrics(self):
        if self.directional:
            return angle_metrics()
        return [
            keras.metrics.MeanAbsoluteError(name="abs_error"),
            RelativeError(name="rel_error"),
        ]

    def get_metrics(self, extra=()):
        if not self.directional:
            return super().get_metrics(extra)
        # Angle metrics read whole pixels: a pixel with a NaN channel is
        # missing. Extra metrics are masked per entry, as for any head.
        wrapped = super().get_metrics(extra)
        return [PixelMaskedMetric(m) for m in angle_metrics()] + wrapped[
            len(ANGLE_THRESHOLDS) + 2:
        ]

    def label_shapes(self):
        size = self._size()
        shapes = (size + (self.channels,),)
        return shapes + (size,) if self.channels == 1 else shapes

    # The label-value contract of Regression, per pixel.
    label_contract = Regression.label_contract
    _invalid_labels = Regression._invalid_labels
    _valid_label_tensor = Regression._valid_label_tensor
    _label_problem = Regression._label_problem

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "loss": self.loss,
                "unit_norm": self.unit_norm,
            }
        )
        return config


# === Losses and metrics ===
def _unit(x):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def _weighted(weight, sample_weight):
    """``weight`` times sample weights per example or per pixel."""
    if sample_weight is None:
        return weight
    sample_weight = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    if len(sample_weight.shape) != len(weight.shape):
        sample_weight = ops.reshape(
            sample_weight, (-1,) + (1,) * (len(weight.shape) - 1)
        )
    return weight * sample_weight


def _pixels_present(y_true):
    """Clean labels and a float mask of pixels whose channels are all set."""
    nan = ops.isnan(y_true)
    present = ops.logical_not(ops.any(nan, axis=-1))
    return ops.where(nan, ops.zeros_like(y_true), y_true), present


@keras.saving.register_keras_serializable(package="mtk")
class MaskedCosineLoss(keras.losses.Loss):
    """``1 - cos(prediction, label)`` per pixel, averaged over labelled pixels.

    A pixel is missing when any of its label channels is NaN. Has the
    ``sum_and_count`` of `mtk.losses.MaskedLoss`, so `mtk.MultiTaskModel`
    averages it over the global batch.

    Example:

    >>> loss = mtk.dense_heads.MaskedCosineLoss()
    >>> y = np.array([[[[1.0, 0.0], [np.nan, np.nan]]]])
    >>> p = np.array([[[[0.0, 2.0], [1.0, 0.0]]]])
    >>> float(loss(y, p))  # one labelled pixel, 90 degrees apart
    1.0
    """

    def __init__(self, name="masked_cosine", **kwargs):
        super().__init__(name=name, **kwargs)

    def sum_and_count(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        clean, present = _pixels_present(y_true)
        present = ops.cast(present, "float32")
        cosine = ops.sum(_unit(clean) * _unit(y_pred), axis=-1)
        values = _weighted((1.0 - cosine) * present, sample_weight)
        return ops.sum(values), ops.sum(present)

    def __call__(self, y_true, y_pred, sample_weight=None):
        total, count = self.sum_and_count(y_true, y_pred, sample_weight)
        mean = total / ops.maximum(count, 1.0)
        return mean / tf.distribute.get_strategy().num_replicas_in_sync

    def call(self, y_true, y_pred):
        clean, present = _pixels_present(ops.cast(y_true, "float32"))
        cosine = ops.sum(_unit(clean) * _unit(ops.cast(y_pred, "float32")), -1)
        return (1.0 - cosine) * ops.cast(present, "float32")


@keras.saving.register_keras_serializable(package="mtk")
class PixelMaskedMetric(MaskedMetric):
    """A `mtk.losses.MaskedMetric` over whole pixels of a vector map.

    A pixel is missing when any of its label channels is NaN; the wrapped
    metric sees the pixels' vectors (e.g. `AngleError`), with missing pixels
    weighted 0.

    Args:
        metric: a `keras.metrics.Metric` (or its serialized config).

    Example:

    >>> m = mtk.dense_heads.PixelMaskedMetric(mtk.dense_heads.AngleError("mean"))
    >>> m.update_state([[[[1.0, 0.0], [np.nan, 0.0]]]], [[[[1.0, 1.0], [0.0, 1.0]]]])
    >>> round(float(m.result()), 3)
    45.0
    """

    def __init__(self, metric, label_kind="float", name=None, **kwargs):
        super().__init__(metric, label_kind="float", name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        clean, present = _pixels_present(
            ops.cast(ops.convert_to_tensor(y_true), "float32")
        )
        weight = _weighted(ops.cast(present, "float32"), sample_weight)
        self.metric.update_state(clean, y_pred, sample_weight=weight)


@keras.saving.register_keras_serializable(package="mtk")
class RelativeError(keras.metrics.Metric):
    """Mean of ``|prediction - label| / |label|`` (labels equal to 0 left out).

    Depth estimation's "rel" (absolute relative error). Wrap it in
    `mtk.losses.MaskedMetric` to skip NaN labels (dense heads do).

    Example:

    >>> m = mtk.dense_heads.RelativeError()
    >>> m.update_state([[2.0], [4.0], [0.0]], [[1.0], [5.0], [3.0]])
    >>> float(m.result())  # (0.5 + 0.25) / 2
    0.375
    """

    def __init__(self, name="rel_error", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(
            shape=(), initializer="zeros", aggregation="sum", name="total")
        self.count = self.add_variable(
            shape=(), initializer="zeros", aggregation="sum", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        nonzero = ops.not_equal(y_true, 0.0)
        safe = ops.where(nonzero, y_true, ops.ones_like(y_true))
        weight = _weighted(ops.cast(nonzero, "float32"), sample_weight)
        errors = ops.abs(y_pred - y_true) / ops.abs(safe)
        self.total.assign_add(ops.cast(ops.sum(errors * weight), self.dtype))
        self.count.assign_add(ops.cast(ops.sum(weight), self.dtype))

    def result(self):
        return self.total / ops.maximum(self.count, 1e-12)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="mtk")
class AngleError(keras.metrics.Metric):
    """Angle between predicted and labelled directions per pixel, in degrees.

    Pixels whose label has a NaN channel are skipped. ``statistic`` is
    ``"mean"``, ``"median"`` (from a histogram with 0.1° bins, exact to
    0.1° and mergeable across replicas) or a threshold in degrees: the share
    of pixels whose angle is below it.

    Args:
        statistic: ``"mean"``, ``"median"`` or a threshold (float).
        name: the metric's name.

    Example:

    >>> y = np.array([[[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]])
    >>> p = np.array([[[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]])  # 0, 90, 45 degrees
    >>> m = mtk.dense_heads.AngleError("mean")
    >>> m.update_state(y, p)
    >>> round(float(m.result()), 3)
    45.0
    """

    BINS = 1800  # 0.1 degree each over [0, 180]

    def __init__(self, statistic="mean", name=None, dtype=None):
        if statistic not in ("mean", "median"):
            try:
                statistic = float(statistic)
            except (TypeError, ValueError):
                statistic = None
            if statistic is None or not 0 < statistic <= 180:
                raise ValueError(
                    "AngleError's statistic must be 'mean', 'median' or a "
                    f"threshold in (0, 180] degrees, got {statistic!r}."
                )
        if name is None:
            name = (
                f"angle_{statistic}" if isinstance(statistic, str)
                else f"within_{_metric_suffix(statistic)}"
            )
        super().__init__(name=name, dtype=dtype)
        self.statistic = statistic
        self.total = self.add_variable(
            shape=(), initializer="zeros", aggregation="sum", name="total")
        self.count = self.add_variable(
            shape=(), initializer="zeros", aggregation="sum", name="count")
        if statistic == "median":
            self.histogram = self.add_variable(
                shape=(self.BINS,), initializer="zeros", aggregation="sum",
                name="histogram")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
        clean, present = _pixels_present(y_true)
        weight = _weighted(ops.cast(present, "float32"), sample_weight)
        cosine = ops.clip(ops.sum(_unit(clean) * _unit(y_pred), axis=-1), -1.0, 1.0)
        angles = ops.arccos(cosine) * (180.0 / np.pi)
        if self.statistic == "mean":
            self.total.assign_add(ops.sum(angles * weight))
        elif self.statistic == "median":
            bins = ops.clip(
                ops.cast(ops.floor(angles * (self.BINS / 180.0)), "int32"),
                0, self.BINS - 1,
            )
            self.histogram.assign_add(tf.math.unsorted_segment_sum(
                ops.reshape(weight, (-1,)), ops.reshape(bins, (-1,)), self.BINS
            ))
        else:
            within = ops.cast(ops.less(angles, self.statistic), "float32")
            self.total.assign_add(ops.sum(within * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        count = ops.maximum(self.count, 1e-12)
        if self.statistic != "median":
            return self.total / count
        # The bin where the cumulative count reaches half, at its centre.
        cumulative = ops.cumsum(self.histogram)
        index = ops.argmax(ops.cast(cumulative >= self.count / 2.0, "int32"))
        return (ops.cast(index, "float32") + 0.5) * (180.0 / self.BINS)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)
        if self.statistic == "median":
            self.histogram.assign(ops.zeros((self.BINS,)))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "statistic": self.statistic}


def angle_metrics():
    """The surface-normal metrics: mean, median and shares within 11.25/22.5/30°.

    Example:

    >>> [m.name for m in mtk.dense_heads.angle_metrics()]
    ['angle_mean', 'angle_median', 'within_11_25', 'within_22_5', 'within_30']
    """
    return [AngleError("mean"), AngleError("median")] + [
        AngleError(t) for t in ANGLE_THRESHOLDS
    ]


# Whether larger is better, for each metric a dense head reports (Δm).
METRIC_HIGHER_IS_BETTER = {
    "miou": True,
    "pixel_accuracy": True,
    "abs_error": False,
    "rel_error": False,
    "angle_mean": False,
    "angle_median": False,
    **{f"within_{_metric_suffix(t)}": True for t in ANGLE_THRESHOLDS},
}
DenseHead.metric_directions = METRIC_HIGHER_IS_BETTER


# === Wiring: what each head reads ===
def reads_feature_map(head):
    """True for heads that decode the trunk's feature map (dense heads)."""
    return bool(getattr(head, "reads_feature_map", False))


def _connect_own_maps(sharing, parts, heads, dense):
    """Dense heads under a sharing method that gives each head its own map."""
    names = [head.name for head in dense]
    if not sharing.feature_maps:
        raise ValueError(
            f"sharing={sharing!r} gives each head a pooled vector; dense "
            f"heads {names} decode a feature map and need sharing='hard', "
            "MTAN or CrossStitch."
        )
    with_skip = [head.name for head in dense if head.skip is not None]
    if with_skip:
        raise ValueError(
            f"Dense heads {with_skip} have skip=, which only hard sharing "
            f"feeds (under {type(sharing).__name__} each head reads its own "
            "map, and the earlier layers are shared or copied); drop skip=."
        )
    connection = sharing.connect(parts, [head.name for head in heads], maps=names)
    for head in dense:
        shape = tuple(connection.features[head.name].shape)
        if len(shape) != 4:
            raise ValueError(
                f"Head {head.name!r} ({type(head).__name__}) decodes a feature "
                f"map (batch, height, width, channels), but "
                f"{type(sharing).__name__} gives it shape {shape}. Cut the "
                "trunk at a feature map with trunk_output=<layer name>; "
                f"candidates: {feature_map_layers(parts.trunk)}."
            )
        head.resolve_output_size(parts.input_shape)
    return connection


def connect_dense(sharing, parts, heads):
    """Connects dense and image-level heads to the trunk.

    Hard sharing: dense heads read the trunk's feature map (and their
    ``skip`` layer); image-level heads read its pooled vector (one pooling
    layer named ``"pooling"``). MTAN and cross-stitch, whose heads each
    read a map of their own: each dense head decodes its own map (no
    ``skip``), each image-level head pools its own.

    Args:
        sharing: the model's sharing method (hard, MTAN or cross-stitch;
            MMoE / CGC / PLE mix pooled vectors and cannot feed a decoder).
        parts: a `mtk.trunks.TrunkParts`.
        heads: the model's heads.

    Returns:
        A `mtk.sharing.base.Connection`.

    Example:

    >>> trunk = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, padding="same", name="conv")], name="trunk")
    >>> model = mtk.MultiTaskModel(trunk, [
    ...     mtk.heads.Segmentation("parts", num_classes=3),
    ...     mtk.heads.Binary("flag")])
    >>> {k: tuple(v.shape) for k, v in model.output.items()}
    {'parts': (None, 8, 8, 3), 'flag': (None, 1)}
    """
    from mtk.sharing.base import Connection
    from mtk.sharing.base import HardSharing

    dense = [head for head in heads if reads_feature_map(head)]
    if not isinstance(sharing, HardSharing):
        return _connect_own_maps(sharing, parts, heads, dense)
    trunk = parts.trunk
    if isinstance(trunk.outputs, dict) or len(trunk.outputs) != 1:
        raise ValueError(
            f"Dense heads need a trunk with one output (a feature map); "
            f"trunk {trunk.name!r} has several. Pick one with trunk_output=."
        )
    candidates = feature_map_layers(trunk)
    trunk_output = trunk.outputs[0]
    output_shape = tuple(trunk_output.shape)
    if len(output_shape) != 4:
        raise ValueError(
            f"Head {dense[0].name!r} ({type(dense[0]).__name__}) decodes a "
            f"feature map (batch, height, width, channels), but the trunk's "
            f"output has shape {output_shape}. Cut the trunk at a feature map "
            f"with trunk_output=<layer name>; candidates: {candidates}."
        )
    skips = []
    for head in dense:
        head.resolve_output_size(parts.input_shape)
        if head.skip is None or head.skip in skips:
            continue
        if head.skip not in candidates:
            raise ValueError(
                f"Head {head.name!r}: skip={head.skip!r} names no feature-map "
                f"layer of the trunk; its feature-map layers are {candidates}."
            )
        skips.append(head.skip)
    if skips:
        # One trunk model with the skip layers' outputs as further outputs.
        trunk = Trunk(
            trunk.inputs,
            [trunk_output] + [trunk.get_layer(n).output for n in skips],
            name=TRUNK_NAME,
        )
    inputs, x, mask = trunk_inputs(parts)
    outputs = trunk(x)
    feature_map, skip_maps = (
        (outputs[0], dict(zip(skips, outputs[1:]))) if skips else (outputs, {})
    )
    pooled = None
    features = {}
    for head in heads:
        if not reads_feature_map(head):
            if pooled is None:
                pooled = pool_features(feature_map, mask, name=POOLING_NAME)
            features[head.name] = pooled
        elif head.skip is None:
            features[head.name] = feature_map
        else:
            features[head.name] = [feature_map, skip_maps[head.skip]]
    return Connection(
        inputs=inputs,
        features=features,
        trunk=trunk,
        shared_layers=[trunk],
        common=feature_map,
    )
