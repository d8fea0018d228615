"""The weight-independent multi-task score that tuning ranks trials by.

The training loss of a multi-task model is the weighted sum of its heads'
losses, so the validation loss cannot rank loss weights: a tuner minimising
``val_loss`` just shrinks every weight. mtk ranks trials by a score that does
not depend on the weights, logged each epoch as ``val_multitask_score``
(`OBJECTIVE`): the mean over heads of each head's primary validation metric
(`mtk.heads.Head.primary_metric`) normalised against a reference
(`HeadReference`).

- With ``baselines={head: value}`` (each head's metric when trained on its
  own), the score is Δm of the multi-task literature
  (`mtk.evaluation.delta_m`) as a fraction instead of percent: the mean over
  heads of ``(metric - baseline) / |baseline|``, sign flipped for
  lower-is-better metrics. Above 0, the multi-task model beats its
  single-task baselines on average.
- Without baselines, each head's metric is measured as skill over chance:
  ``(metric - chance) / (perfect - chance)``, where chance is the metric of
  the best constant prediction on the validation labels (the majority class
  for accuracy, the median for mae) and perfect is 1 for accuracy, 0 for mae.
  0 means no better than a constant, 1 means perfect; each head counts by how
  much of its room for improvement the model closes.

Chance levels are a fixed property of the validation data. A reference taken
from the first trial (or epoch) would not be: it depends on that trial's
random loss weights and initialisation, makes the ranking depend on the
order of the search, and would have to be stored for a resumed search.
"""

import dataclasses
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras_tuner.errors import FatalValueError

from mtk.evaluation import VAL_PREFIX
from mtk.evaluation import delta_m
from mtk.evaluation import log_key
from mtk.heads import check_head_dict
from mtk.heads import heads_of

SCORE_NAME = "multitask_score"
OBJECTIVE = VAL_PREFIX + SCORE_NAME


def _majority_accuracy(labels, label_kind):
    if label_kind == "class_id":
        labels = labels.reshape(-1).astype("int64")
        labels = labels[labels >= 0]
        if labels.size == 0:
            return None
        return np.bincount(labels).max() / labels.size
    labels = labels.reshape(len(labels), -1).astype("float64")
    present = ~np.isnan(labels)
    if not present.any():
        return None
    positives = np.sum((labels > 0.5) & present, axis=0)
    counts = present.sum(axis=0)
    return np.maximum(positives, counts - positives).sum() / counts.sum()


def _median_mae(labels, label_kind):
    labels = labels.reshape(len(labels), -1).astype("float64")
    present = ~np.isnan(labels)
    if not present.any():
        return None
    errors = np.abs(labels - np.nanmedian(labels, axis=0))
    return errors[present].mean()


def _majority_miou(labels, label_kind, ignore_label=None):
    """mIoU of predicting the most frequent class at every labelled pixel."""
    labels = labels.reshape(-1).astype("int64")
    labels = labels[(labels >= 0) & (labels != ignore_label)]
    if labels.size == 0:
        return None
    counts = np.bincount(labels)
    # IoU of the majority class is its share; every other class present
    # scores 0; absent classes are left out of the mean (as MeanIoU does).
    return counts.max() / labels.size / np.count_nonzero(counts)


# Primary metric -> (its value for a perfect model, its chance level): the
# metric of the best constant prediction on the present (non-missing) labels.
_CHANCE = {
    "accuracy": (1.0, _majority_accuracy),
    "mae": (0.0, _median_mae),
    # Dense heads (mtk.dense_heads): a constant map.
    "miou": (1.0, _majority_miou),
    "abs_error": (0.0, _median_mae),
}


@dataclasses.dataclass(frozen=True)
class HeadReference:
    """How one head's validation metric enters the multi-task score.

    Args:
        head: the head's name.
        log_name: the metric's key in the epoch logs, without ``val_``.
        reference: the chance level or the single-task baseline.
        perfect: the metric of a perfect model (skill over chance), or None
            for Δm against a baseline.
        higher_is_better: the metric's direction.

    Example:

    >>> ref = mtk.tuning.HeadReference(
    ...     "item", "item_accuracy", reference=0.25, perfect=1.0,
    ...     higher_is_better=True)
    >>> ref.normalise(0.625)
    0.5
    """

    head: str
    log_name: str
    reference: float
    perfect: float | None
    higher_is_better: bool

    def normalise(self, value):
        """The head's share of the score for a metric value."""
        if self.perfect is not None:
            return (value - self.reference) / (self.perfect - self.reference)
        # Δm of this one head, as a fraction.
        return delta_m(
            {self.head: value}, {self.head: self.reference},
            self.higher_is_better,
        ) / 100.0


def check_baselines(baselines, heads):
    """Raises unless ``baselines`` gives every head a nonzero number."""
    check_head_dict(
        "baselines", baselines, heads, complete=True, error=FatalValueError,
        missing_hint="give each head's single-task metric, or no baselines "
        "to score against chance.",
    )
    for name, value in baselines.items():
        if not isinstance(value, numbers.Real) or value == 0:
            raise FatalValueError(
                f"baselines[{name!r}] must be a nonzero number (Δm divides "
                f"by it), got {value!r}."
            )


def _validation_labels(validation_data, names):
    """The validation labels as ``{head: array}``."""
    if isinstance(validation_data, tf.data.Dataset):
        spec = validation_data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise FatalValueError(
                "validation_data must yield (inputs, labels) tuples; its "
                f"element_spec is {spec}."
            )
        batches = {name: [] for name in names}
        labels_only = validation_data.map(lambda *element: element[1])
        for labels in labels_only.as_numpy_iterator():
            for name in names:
                if name in labels:
                    batches[name].append(labels[name])
        return {
            name: np.concatenate(parts) for name, parts in batches.items() if parts
        }
    if isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2:
        labels = validation_data[1]
        if isinstance(labels, dict):
            return {
                name: np.asarray(labels[name]) for name in names if name in labels
            }
    raise FatalValueError(
        "validation_data must be a tf.data.Dataset of (inputs, {head: label}) "
        "or an (x, {head: label}) tuple to compute chance levels; got "
        f"{type(validation_data).__name__}. Give baselines= instead."
    )


def score_references(model, validation_data=None, baselines=None):
    """The per-head references of the multi-task score.

    Args:
        model: a model from `mtk.build_multitask_model`.
        validation_data: the data the score is computed on; its labels give
            the chance levels when ``baselines`` is None.
        baselines: optional dict ``{head: single-task metric value}`` for Δm.

    Returns:
        A list of `HeadReference`, one per head.

    Raises:
        ValueError: naming the head whose reference cannot be formed.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Classification("item", 3),
    ...            mtk.heads.Regression("price")], trunk_weights=None)
    >>> refs = mtk.tuning.score_references(
    ...     model, baselines={"item": 0.8, "price": 2.0})
    >>> [(r.log_name, r.reference) for r in refs]
    [('item_accuracy', 0.8), ('price_mae', 2.0)]
    """
    heads = heads_of(model)
    log_names = {
        name: log_key(name, head.primary_metric, heads)
        for name, head in heads.items()
    }
    if baselines is not None:
        check_baselines(baselines, heads)
        return [
            HeadReference(
                head=name,
                log_name=log_names[name],
                reference=float(baselines[name]),
                perfect=None,
                higher_is_better=head.primary_metric_higher_is_better,
            )
            for name, head in heads.items()
        ]
    if validation_data is None:
        raise FatalValueError(
            "The multi-task score needs validation_data (its labels give each "
            "head's chance level) or baselines={head: value}."
        )
    for name, head in heads.items():
        if head.primary_metric not in _CHANCE:
            raise FatalValueError(
                f"Head {name!r}: no chance level is known for its primary "
                f"metric {head.primary_metric!r}; give baselines={{head: "
                "value}} for every head."
            )
    labels = _validation_labels(validation_data, list(heads))
    references = []
    for name, head in heads.items():
        perfect, chance_of = _CHANCE[head.primary_metric]
        chance = None
        if name in labels:
            if head.primary_metric == "miou":
                chance = chance_of(labels[name], head.label_kind, head.ignore_label)
            else:
                chance = chance_of(labels[name], head.label_kind)
        if chance is None:
            raise FatalValueError(
                f"Head {name!r}: the validation data holds no labels for it, "
                "so it cannot be scored."
            )
        if np.isclose(chance, perfect):
            raise FatalValueError(
                f"Head {name!r}: a constant prediction already reaches "
                f"{head.primary_metric}={chance:.4g} on the validation labels "
                "(they hold one value), so the head cannot be scored; use "
                "more varied validation data or give baselines=."
            )
        references.append(
            HeadReference(
                head=name,
                log_name=log_names[name],
                reference=float(chance),
                perfect=perfect,
                higher_is_better=head.primary_metric_higher_is_better,
            )
        )
    return references


class MultiTaskScore(keras.callbacks.Callback):
    """Logs the weight-independent ``val_multitask_score`` at each epoch end.

    The score only reads the heads' validation metrics, never a loss, so it
    is the same whatever the loss weights are (see `mtk.tuning.score` for
    the formula). Put it before callbacks that read the score (KerasTuner's,
    `keras.callbacks.EarlyStopping(monitor="val_multitask_score",
    mode="max")`): Keras calls callbacks in order with one logs dict.

    Args:
        references: a list of `HeadReference`, as from `score_references`.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Classification("item", 3),
    ...            mtk.heads.Regression("price")], trunk_weights=None)
    >>> score = mtk.tuning.MultiTaskScore.from_model(
    ...     model, baselines={"item": 0.5, "price": 2.0})
    >>> score.score({"val_item_accuracy": 0.75, "val_price_mae": 1.0})
    0.5
    """

    def __init__(self, references):
        super().__init__()
        self.references = list(references)

    @classmethod
    def from_model(cls, model, validation_data=None, baselines=None):
        """The callback for a model; arguments as for `score_references`."""
        return cls(score_references(model, validation_data, baselines))

    def score(self, logs):
        """The score for one epoch's logs (a dict of metric values)."""
        missing = [
            VAL_PREFIX + ref.log_name
            for ref in self.references
            if VAL_PREFIX + ref.log_name not in logs
        ]
        if missing:
            raise FatalValueError(
                f"{OBJECTIVE} needs the validation metrics {missing}, which "
                f"are not logged (is validation_data given?); logged: "
                f"{sorted(logs)}."
            )
        parts = [
            ref.normalise(float(logs[VAL_PREFIX + ref.log_name]))
            for ref in self.references
        ]
        return float(np.mean(parts))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[OBJECTIVE] = self.score(logs)

