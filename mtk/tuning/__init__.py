"""Tuning per-head loss weights with KerasTuner.

The training loss of a multi-task model is the weighted sum of its heads'
losses, so the validation loss cannot rank loss weights: a tuner minimising
``val_loss`` just shrinks every weight. mtk ranks trials by a score that does
not depend on the weights, logged each epoch as ``val_multitask_score``: the
mean over heads of each head's primary validation metric
(`mtk.heads.Head.primary_metric`) normalised against a reference.

- With ``baselines={head: value}`` (each head's metric when trained on its
  own), the score is Δm of the multi-task literature (Maninis et al. 2019,
  Vandenhende et al. 2021) as a fraction: the mean over heads of
  ``(metric - baseline) / |baseline|``, sign flipped for lower-is-better
  metrics. Above 0, the multi-task model beats its single-task baselines on
  average.
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

Every tuner of KerasTuner (RandomSearch, BayesianOptimization, Hyperband)
runs `MultiTaskHyperModel`; `tune_loss_weights` wraps them in thin
subclasses that add `best_loss_weights`, `best_model` and `trials_table` and
stop the search at the first epoch when the objective is never logged.
"""

import dataclasses
import inspect
import numbers
import warnings

import keras
import keras_tuner
import numpy as np
import tensorflow as tf
from keras_tuner.engine.metrics_tracking import infer_metric_direction
from keras_tuner.engine.trial import TrialStatus
from keras_tuner.errors import FatalValueError

from mtk.builder import compile_multitask
from mtk.heads import heads_of
from mtk.training import check_unfreeze
from mtk.training import fit_transfer
from mtk.training import get_trunk

SCORE_NAME = "multitask_score"
OBJECTIVE = "val_" + SCORE_NAME
DEFAULT_WEIGHT_RANGE = (0.05, 20.0)
WEIGHT_PREFIX = "loss_weight_"

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


# Primary metric -> (its value for a perfect model, its chance level): the
# metric of the best constant prediction on the present (non-missing) labels.
_CHANCE = {
    "accuracy": (1.0, _majority_accuracy),
    "mae": (0.0, _median_mae),
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
        sign = 1.0 if self.higher_is_better else -1.0
        return sign * (value - self.reference) / abs(self.reference)


def _metric_log_names(heads):
    # Keras names the metrics of a one-output model without the output name.
    if len(heads) == 1:
        return {name: head.primary_metric for name, head in heads.items()}
    return {name: f"{name}_{head.primary_metric}" for name, head in heads.items()}


def _check_baselines(baselines, heads):
    if not isinstance(baselines, dict):
        raise TypeError(
            f"baselines must be a dict {{head name: metric value}}, got "
            f"{type(baselines).__name__}."
        )
    unknown = sorted(set(baselines) - set(heads))
    if unknown:
        raise FatalValueError(
            f"baselines names heads {unknown} that the model lacks; its heads "
            f"are {sorted(heads)}."
        )
    missing = sorted(set(heads) - set(baselines))
    if missing:
        raise FatalValueError(
            f"baselines lacks heads {missing}; give each head's single-task "
            "metric, or no baselines to score against chance."
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
    log_names = _metric_log_names(heads)
    if baselines is not None:
        _check_baselines(baselines, heads)
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
    is the same whatever the loss weights are (see the module docstring for
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
            "val_" + ref.log_name
            for ref in self.references
            if "val_" + ref.log_name not in logs
        ]
        if missing:
            raise FatalValueError(
                f"{OBJECTIVE} needs the validation metrics {missing}, which "
                f"are not logged (is validation_data given?); logged: "
                f"{sorted(logs)}."
            )
        parts = [
            ref.normalise(float(logs["val_" + ref.log_name]))
            for ref in self.references
        ]
        return float(np.mean(parts))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[OBJECTIVE] = self.score(logs)


def _check_range(argument, value):
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, numbers.Real) for v in value)
    ):
        raise ValueError(
            f"{argument} must be a (min, max) pair of numbers, got {value!r}."
        )
    low, high = float(value[0]), float(value[1])
    if low <= 0:
        raise ValueError(
            f"{argument}={tuple(value)}: min must be > 0 (values are sampled "
            "log-uniformly)."
        )
    if low > high:
        raise ValueError(f"{argument}={tuple(value)}: min {low} > max {high}.")
    return low, high


def _fixed_or_range(argument, value):
    """A positive number (fixed) or a (min, max) range, checked."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{argument} must be > 0, got {value!r}.")
        return float(value)
    return _check_range(argument, value)


def _float_hp(hp, name, spec):
    if isinstance(spec, float):
        return spec
    low, high = spec
    if low == high:
        return hp.Fixed(name, low)
    return hp.Float(name, low, high, sampling="log")


class MultiTaskHyperModel(keras_tuner.HyperModel):
    """Search space of per-head loss weights for a multi-task model.

    Each trial builds a fresh model with ``make_model()`` and compiles it with
    one loss weight per head, drawn log-uniformly (hyperparameters
    ``loss_weight_<head>``), and optionally tuned learning rates and trunk
    unfreezing. ``make_model(hp)``, when it takes an argument, may define
    more hyperparameters itself, e.g. head dropout:
    ``mtk.heads.Binary("flag", dropout=hp.Float("dropout", 0.0, 0.5))``.

    `fit` trains with `mtk.fit_transfer` when ``finetune_epochs > 0``
    (``epochs`` frozen, then ``finetune_epochs`` unfrozen), with
    `keras.Model.fit` otherwise, and logs ``val_multitask_score`` (see
    `MultiTaskScore`); it returns the History, from which the tuner reads its
    objective.

    Loss weights trade tasks off only through the parameters the heads share,
    the trunk: train it (``freeze_trunk=False`` in ``make_model``) or give
    ``finetune_epochs``. On a frozen trunk each head learns from its own loss
    alone, and Adam cancels a constant scale of that loss.

    Args:
        make_model: a function returning a fresh model from
            `mtk.build_multitask_model`, called with no argument or with the
            trial's `keras_tuner.HyperParameters`.
        weight_range: ``(min, max)`` of every head's loss weight, or a dict
            ``{head: (min, max)}`` (heads not in it use ``(0.05, 20.0)``).
        pinned_head: a head whose weight stays 1.0 as the reference. With
            Adam, scaling all weights by one constant hardly changes
            training, so pinning one removes a redundant direction.
        learning_rate: learning rate of (the first phase of) training: a
            number, or a ``(min, max)`` range to tune.
        optimizer: optimizer name, or an instance whose class and config are
            copied for each trial.
        finetune_epochs: epochs of fine-tuning with the trunk unfrozen after
            the frozen ``epochs``; 0 trains in one phase.
        finetune_learning_rate: the fine-tuning learning rate: a number or a
            ``(min, max)`` range.
        unfreeze: what fine-tuning unfreezes (see `mtk.unfreeze_trunk`), or a
            list of such choices to tune.
        baselines: optional ``{head: single-task metric value}``: the score
            is then Δm against them, otherwise skill over chance.

    Example:

    >>> import keras_tuner
    >>> def make_model():
    ...     return mtk.build_multitask_model(
    ...         keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...         heads=[mtk.heads.Classification("item", 3),
    ...                mtk.heads.Binary("flag")],
    ...         trunk_weights=None, freeze_trunk=False)
    >>> hypermodel = mtk.tuning.MultiTaskHyperModel(make_model, pinned_head="item")
    >>> hp = keras_tuner.HyperParameters()
    >>> model = hypermodel.build(hp)
    >>> sorted(hp.values)
    ['loss_weight_flag', 'loss_weight_item']
    """

    def __init__(
        self,
        make_model,
        *,
        weight_range=DEFAULT_WEIGHT_RANGE,
        pinned_head=None,
        learning_rate=1e-3,
        optimizer="adam",
        finetune_epochs=0,
        finetune_learning_rate=1e-5,
        unfreeze="all",
        baselines=None,
        name=None,
    ):
        super().__init__(name=name)
        if not callable(make_model):
            raise TypeError(
                f"make_model must be a function returning a model, got "
                f"{make_model!r}."
            )
        self.make_model = make_model
        self._takes_hp = _takes_argument(make_model)
        if isinstance(weight_range, dict):
            self.weight_range = {
                head: _check_range(f"weight_range[{head!r}]", value)
                for head, value in weight_range.items()
            }
        else:
            self.weight_range = _check_range("weight_range", weight_range)
        if pinned_head is not None and not isinstance(pinned_head, str):
            raise TypeError(
                f"pinned_head must be a head name, got {pinned_head!r}."
            )
        if isinstance(self.weight_range, dict) and pinned_head in self.weight_range:
            raise ValueError(
                f"Head {pinned_head!r} is pinned_head (weight 1.0) and has a "
                "weight_range; give one or the other."
            )
        self.pinned_head = pinned_head
        self.learning_rate = _fixed_or_range("learning_rate", learning_rate)
        if not isinstance(optimizer, (str, keras.optimizers.Optimizer)):
            raise TypeError(
                f"optimizer must be a name or a keras.optimizers.Optimizer, "
                f"got {optimizer!r}."
            )
        self.optimizer = optimizer
        if not isinstance(finetune_epochs, int) or finetune_epochs < 0:
            raise ValueError(
                f"finetune_epochs must be an integer >= 0, got "
                f"{finetune_epochs!r}."
            )
        self.finetune_epochs = finetune_epochs
        self.finetune_learning_rate = _fixed_or_range(
            "finetune_learning_rate", finetune_learning_rate
        )
        choices = unfreeze if isinstance(unfreeze, (list, tuple)) else [unfreeze]
        if not choices:
            raise ValueError("unfreeze is an empty list; give one choice or more.")
        # KerasTuner choices are of one type; fit_transfer reads "top:N" as N.
        self.unfreeze = [
            f"top:{u}" if isinstance(u, int) and not isinstance(u, bool) else u
            for u in choices
        ]
        if baselines is not None and not isinstance(baselines, dict):
            raise TypeError(
                f"baselines must be a dict {{head name: metric value}}, got "
                f"{type(baselines).__name__}."
            )
        self.baselines = baselines
        self._references = None
        self._references_for = None

    def build(self, hp):
        model = self.make_model(hp) if self._takes_hp else self.make_model()
        try:
            heads = heads_of(model)
        except ValueError as error:
            raise FatalValueError(f"make_model(): {error}") from None
        self._check_head_names(heads)
        if self.baselines is not None:
            _check_baselines(self.baselines, heads)
        if not get_trunk(model).trainable and not self.finetune_epochs:
            warnings.warn(
                "make_model() returns a frozen trunk and finetune_epochs=0: "
                "no parameter is shared between heads, so loss weights cannot "
                "trade one task off against another (with Adam they change "
                "nothing at all). Build with freeze_trunk=False or give "
                "finetune_epochs.",
                stacklevel=2,
            )
        if self.finetune_epochs:
            for choice in self.unfreeze:
                try:
                    check_unfreeze(model, choice)
                except ValueError as error:
                    raise FatalValueError(str(error)) from None

        weights = {}
        for name in heads:
            if name == self.pinned_head:
                weights[name] = hp.Fixed(WEIGHT_PREFIX + name, 1.0)
            else:
                weights[name] = _float_hp(
                    hp, WEIGHT_PREFIX + name, self._range_of(name)
                )
        learning_rate = _float_hp(hp, "learning_rate", self.learning_rate)
        if self.finetune_epochs:
            _float_hp(hp, "finetune_learning_rate", self.finetune_learning_rate)
            if len(self.unfreeze) > 1:
                hp.Choice("unfreeze", self.unfreeze)
        compile_multitask(
            model,
            optimizer=self._optimizer(learning_rate),
            loss_weights=weights,
        )
        return model

    def fit(self, hp, model, *args, **kwargs):
        validation_data = kwargs.get("validation_data")
        if validation_data is None:
            raise FatalValueError(
                "MultiTaskHyperModel.fit needs validation_data=: the "
                f"{OBJECTIVE} is computed on it."
            )
        callbacks = [self._score_callback(model, validation_data)]
        callbacks += list(kwargs.pop("callbacks", None) or [])
        # Recompiling after (un)freezing must happen in the model's strategy
        # scope; KerasTuner only enters it around build().
        with model.distribute_strategy.scope():
            if not self.finetune_epochs:
                return model.fit(*args, callbacks=callbacks, **kwargs)
            if "initial_epoch" in kwargs:
                raise FatalValueError(
                    "finetune_epochs > 0 runs its own two-phase epoch schedule; "
                    "a tuner that sets initial_epoch (Hyperband) cannot run it."
                )
            return fit_transfer(
                model,
                *args,
                frozen_epochs=kwargs.pop("epochs", 1),
                finetune_epochs=self.finetune_epochs,
                unfreeze=_value(hp, "unfreeze", self.unfreeze[0]),
                finetune_learning_rate=_value(
                    hp, "finetune_learning_rate", self.finetune_learning_rate
                ),
                callbacks=callbacks,
                **kwargs,
            )

    def head_metrics(self):
        """``{head: log name of its primary validation metric}``."""
        if self._references is not None:
            return {r.head: "val_" + r.log_name for r in self._references}
        hp = keras_tuner.HyperParameters()
        model = self.make_model(hp) if self._takes_hp else self.make_model()
        names = _metric_log_names(heads_of(model))
        return {head: "val_" + name for head, name in names.items()}

    def _check_head_names(self, heads):
        named = []
        if self.pinned_head is not None:
            named.append(("pinned_head", self.pinned_head))
        if isinstance(self.weight_range, dict):
            named += [("weight_range", head) for head in self.weight_range]
        for argument, head in named:
            if head not in heads:
                raise FatalValueError(
                    f"{argument} names head {head!r}, which the model lacks; "
                    f"its heads are {sorted(heads)}."
                )

    def _range_of(self, head):
        if isinstance(self.weight_range, dict):
            return self.weight_range.get(head, DEFAULT_WEIGHT_RANGE)
        return self.weight_range

    def _optimizer(self, learning_rate):
        if isinstance(self.optimizer, str):
            return keras.optimizers.get(
                {"class_name": self.optimizer,
                 "config": {"learning_rate": learning_rate}}
            )
        config = self.optimizer.get_config()
        config["learning_rate"] = learning_rate
        return self.optimizer.__class__.from_config(config)

    def _score_callback(self, model, validation_data):
        # Chance levels need one pass over the validation labels: do it once
        # per search, not once per trial.
        if self._references is None or self._references_for is not validation_data:
            self._references = score_references(
                model, validation_data, self.baselines
            )
            self._references_for = validation_data
        return MultiTaskScore(self._references)


def _value(hp, name, spec):
    return hp.get(name) if name in hp else spec


def _takes_argument(function):
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return bool(positional)


class LossWeightTunerMixin:
    """What `tune_loss_weights` adds to a KerasTuner tuner.

    - The search stops at the end of the first epoch, listing the logged
      metric names, when the objective is not among them (KerasTuner alone
      would mark every trial invalid and fail after the whole search).
    - `best_loss_weights`, `best_model` and `trials_table`.
    """

    def on_epoch_end(self, trial, model, epoch, logs=None):
        super().on_epoch_end(trial, model, epoch, logs=logs)
        logs = logs or {}
        if not self.oracle.objective.has_value(logs):
            raise FatalValueError(
                f"The objective {self.oracle.objective.name!r} is not logged; "
                f"logged metrics are {sorted(logs)}. Use {OBJECTIVE!r} or one "
                "of the val_ metrics."
            )

    def best_loss_weights(self):
        """The best trial's loss weights, ``{head: weight}``."""
        return _loss_weights(self._best_trial().hyperparameters)

    def best_model(self):
        """The best trial's model, with the weights of its best epoch."""
        self._best_trial()
        return self.get_best_models(1)[0]

    def trials_table(self, print_table=True):
        """One row per finished trial: weights, head metrics and objective.

        Args:
            print_table: also print the table.

        Returns:
            A list of dicts, in trial order, with keys ``trial``,
            ``weight_<head>`` for each head, each head's primary validation
            metric (e.g. ``val_item_accuracy``), the objective's name and
            ``best`` (True for the best trial). ``pandas.DataFrame(rows)``
            turns it into a data frame.
        """
        objective = self.oracle.objective
        head_metrics = self.hypermodel.head_metrics()
        trials = [
            trial
            for trial in self.oracle.trials.values()
            if trial.status == TrialStatus.COMPLETED and trial.score is not None
        ]
        trials.sort(key=lambda trial: trial.trial_id)
        best = self.oracle.get_best_trials(1)
        best_id = best[0].trial_id if best else None
        rows = []
        for trial in trials:
            row = {"trial": trial.trial_id}
            for head, weight in _loss_weights(trial.hyperparameters).items():
                row[f"weight_{head}"] = weight
            for name in head_metrics.values():
                row[name] = (
                    trial.metrics.get_last_value(name)
                    if trial.metrics.exists(name)
                    else None
                )
            row[objective.name] = trial.score
            row["best"] = trial.trial_id == best_id
            rows.append(row)
        if print_table:
            print(format_table(rows, title=f"{objective}, {len(rows)} trials"))
        return rows

    def _best_trial(self):
        best = self.oracle.get_best_trials(1)
        if not best:
            raise ValueError(
                f"No trial of project {self.project_dir!r} has finished; run "
                "the search first."
            )
        return best[0]


def _loss_weights(hp):
    return {
        name[len(WEIGHT_PREFIX):]: value
        for name, value in hp.values.items()
        if name.startswith(WEIGHT_PREFIX)
    }


def format_table(rows, title=None):
    """A list of flat dicts as a Markdown table (numbers to 4 significant digits).

    Example:

    >>> print(mtk.tuning.format_table([{"trial": "00", "score": 0.51234}]))
    | trial | score  |
    |-------|--------|
    | 00    | 0.5123 |
    """

    def cell(value):
        if isinstance(value, bool):
            return "*" if value else ""
        if isinstance(value, numbers.Real):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    if not rows:
        return (title + "\n" if title else "") + "(no finished trials)"
    columns = list(rows[0])
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)
    ]
    lines = [title] if title else []
    lines.append(
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    )
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append(
            "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"
        )
    return "\n".join(lines)


class LossWeightRandomSearch(LossWeightTunerMixin, keras_tuner.RandomSearch):
    """`keras_tuner.RandomSearch` with the `LossWeightTunerMixin` methods."""


class LossWeightBayesianOptimization(
    LossWeightTunerMixin, keras_tuner.BayesianOptimization
):
    """`keras_tuner.BayesianOptimization` with the `LossWeightTunerMixin` methods."""


class LossWeightHyperband(LossWeightTunerMixin, keras_tuner.Hyperband):
    """`keras_tuner.Hyperband` with the `LossWeightTunerMixin` methods."""


TUNERS = {
    "random": LossWeightRandomSearch,
    "bayesian": LossWeightBayesianOptimization,
    "hyperband": LossWeightHyperband,
}


def make_objective(objective):
    """A `keras_tuner.Objective` from a name, with its direction inferred.

    ``"val_multitask_score"`` is maximised; for ``"val_<head>_<metric>"`` the
    direction is that of ``<metric>`` (KerasTuner's inference).

    Example:

    >>> mtk.tuning.make_objective("val_item_accuracy").direction
    'max'
    >>> mtk.tuning.make_objective("val_price_mae").direction
    'min'
    """
    if isinstance(objective, keras_tuner.Objective):
        return objective
    if not isinstance(objective, str):
        raise TypeError(
            f"objective must be a metric name or a keras_tuner.Objective, got "
            f"{objective!r}."
        )
    if objective == OBJECTIVE:
        return keras_tuner.Objective(objective, "max")
    parts = objective.removeprefix("val_").split("_")
    # Try "item_accuracy", then "accuracy": head names may hold underscores.
    for start in range(len(parts)):
        direction = infer_metric_direction("_".join(parts[start:]))
        if direction is not None:
            return keras_tuner.Objective(objective, direction)
    raise ValueError(
        f"Cannot tell whether objective {objective!r} is to be minimised or "
        f"maximised; pass keras_tuner.Objective({objective!r}, 'max' or 'min')."
    )


def tune_loss_weights(
    make_model,
    train_data,
    validation_data=None,
    *,
    tuner="random",
    max_trials=10,
    epochs=3,
    objective=OBJECTIVE,
    weight_range=DEFAULT_WEIGHT_RANGE,
    pinned_head=None,
    baselines=None,
    learning_rate=1e-3,
    optimizer="adam",
    finetune_epochs=0,
    finetune_learning_rate=1e-5,
    unfreeze="all",
    directory=None,
    project_name="loss_weights",
    overwrite=False,
    distribution_strategy=None,
    executions_per_trial=1,
    seed=None,
    **fit_kwargs,
):
    """Tunes the per-head loss weights of a multi-task model with KerasTuner.

    Trials live under ``directory/project_name`` as KerasTuner lays them out;
    with ``overwrite=False`` a re-run reloads the search from there and runs
    only the trials still missing (e.g. after an interruption, or with a
    larger ``max_trials``).

    Args:
        make_model: a function returning a fresh model from
            `mtk.build_multitask_model` (with no argument, or taking the
            trial's `keras_tuner.HyperParameters`).
        train_data: training data, as for `keras.Model.fit` (a
            `tf.data.Dataset` of ``(inputs, {head: label})``).
        validation_data: validation data; the objective is computed on it.
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        max_trials: number of trials (random, bayesian); Hyperband sizes its
            own brackets from ``epochs``.
        epochs: training epochs per trial (frozen-trunk epochs when
            ``finetune_epochs > 0``); Hyperband's ``max_epochs``.
        objective: ``"val_multitask_score"`` (see the module docstring), a
            head's metric such as ``"val_item_accuracy"``, or a
            `keras_tuner.Objective`.
        weight_range: ``(min, max)`` of each loss weight, or
            ``{head: (min, max)}``.
        pinned_head: a head whose weight stays 1.0.
        baselines: ``{head: single-task metric value}`` to score Δm.
        learning_rate: a number, or a ``(min, max)`` range to tune.
        optimizer: optimizer name or instance (copied for each trial).
        finetune_epochs: fine-tuning epochs after the frozen ones (0: none).
        finetune_learning_rate: a number, or a ``(min, max)`` range.
        unfreeze: what fine-tuning unfreezes, or a list of choices to tune.
        directory: where trials are stored (default: the working directory).
        project_name: the search's sub-directory.
        overwrite: start afresh instead of resuming.
        distribution_strategy: a `tf.distribute.Strategy` each trial runs in.
        executions_per_trial: trainings per trial, averaged.
        seed: seed of the tuner's sampling.
        **fit_kwargs: other `keras.Model.fit` arguments (``callbacks``,
            ``verbose``, ``steps_per_epoch``, ...).

    Returns:
        The tuner (a subclass of the chosen KerasTuner tuner), after the
        search; it has `best_loss_weights()`, `best_model()` and
        `trials_table()`, and the table has been printed unless
        ``verbose=0``.

    Raises:
        ValueError: for a bad weight range, a head name the model lacks, a
            missing ``validation_data``, or, at the first epoch, an
            objective that is never logged.

    Example:

    >>> import tempfile
    >>> def make_model():  # a fresh model each call, trunk trainable
    ...     return mtk.build_multitask_model(
    ...         keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...         heads=[mtk.heads.Classification("item", 3),
    ...                mtk.heads.Binary("flag")],
    ...         trunk_weights=None, freeze_trunk=False, compile=False)
    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> y = {"item": (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0),
    ...      "flag": (x[:, 2] > 0).astype("float32")}
    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    >>> tuner = mtk.tuning.tune_loss_weights(
    ...     make_model, ds, validation_data=ds, max_trials=2, epochs=1,
    ...     directory=tempfile.mkdtemp(), verbose=0)
    >>> sorted(tuner.best_loss_weights())
    ['flag', 'item']
    >>> len(tuner.trials_table(print_table=False))
    2
    """
    if tuner not in TUNERS:
        raise ValueError(
            f"tuner must be one of {sorted(TUNERS)}, got {tuner!r}."
        )
    if validation_data is None:
        raise ValueError(
            "validation_data is required: the objective is a validation metric."
        )
    for argument, value in (
        ("max_trials", max_trials),
        ("epochs", epochs),
        ("executions_per_trial", executions_per_trial),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{argument} must be an integer >= 1, got {value!r}.")
    for key in ("epochs", "initial_epoch", "validation_split", "x", "y"):
        if key in fit_kwargs:
            raise ValueError(
                f"tune_loss_weights sets {key} itself; remove it from the "
                "fit arguments."
            )
    if tuner == "hyperband" and finetune_epochs:
        raise ValueError(
            "tuner='hyperband' sets each trial's epochs itself, which a "
            "two-phase schedule (finetune_epochs > 0) cannot follow; use "
            "tuner='random' or 'bayesian'."
        )
    hypermodel = MultiTaskHyperModel(
        make_model,
        weight_range=weight_range,
        pinned_head=pinned_head,
        learning_rate=learning_rate,
        optimizer=optimizer,
        finetune_epochs=finetune_epochs,
        finetune_learning_rate=finetune_learning_rate,
        unfreeze=unfreeze,
        baselines=baselines,
    )
    budget = {"max_epochs": epochs} if tuner == "hyperband" else {
        "max_trials": max_trials
    }
    search = TUNERS[tuner](
        hypermodel,
        objective=make_objective(objective),
        seed=seed,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=distribution_strategy,
        executions_per_trial=executions_per_trial,
        **budget,
    )
    search.search(
        train_data, validation_data=validation_data, epochs=epochs, **fit_kwargs
    )
    search.trials_table(print_table=fit_kwargs.get("verbose", 1) != 0)
    return search
