"""`MultiTaskHyperModel`: the search space of per-head loss weights."""

import contextlib
import inspect
import numbers
import warnings

import keras_tuner
from keras_tuner.errors import FatalValueError

from mtk.builder import compile_multitask
from mtk.evaluation import VAL_PREFIX
from mtk.evaluation import log_key
from mtk.heads import check_head_dict
from mtk.heads import heads_of
from mtk.training import check_unfreeze
from mtk.training import fit_transfer
from mtk.training import get_optimizer
from mtk.trunks import get_trunk
from mtk.tuning.score import OBJECTIVE
from mtk.tuning.score import MultiTaskScore
from mtk.tuning.score import check_baselines
from mtk.tuning.score import score_references
from mtk.tuning.space import COST_OBJECTIVE
from mtk.tuning.space import STEP_TIME
from mtk.tuning.space import TUNED_STATIC
from mtk.tuning.space import TrialCost
from mtk.tuning.space import instantiate
from mtk.tuning.space import method_choices
from mtk.tuning.space import sharing_choices

DEFAULT_WEIGHT_RANGE = (0.05, 20.0)
WEIGHT_PREFIX = "loss_weight_"


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
    `mtk.tuning.MultiTaskScore`); it returns the History, from which the tuner reads its
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
        optimizer: optimizer name, serialized optimizer, or an instance
            whose class and config are copied for each trial
            (`mtk.training.get_optimizer`).
        finetune_epochs: epochs of fine-tuning with the trunk unfrozen after
            the frozen ``epochs``; 0 trains in one phase. A list of such
            counts is searched (``hp.Choice("finetune_epochs", ...)``).
        epochs: None (the tuner's ``epochs``), or a list of epoch counts to
            search for (the frozen phase of) training,
            ``hp.Choice("epochs", ...)``.
        finetune_learning_rate: the fine-tuning learning rate: a number or a
            ``(min, max)`` range.
        unfreeze: what fine-tuning unfreezes (see `mtk.unfreeze_trunk`), or a
            list of such choices to tune.
        baselines: optional ``{head: single-task metric value}``: the score
            is then Δm against them, otherwise skill over chance.
        loss_weighting: balancing methods to choose from (names from
            `mtk.weighting.METHODS` or configured objects), searched as the
            ``hp.Choice("loss_weighting", ...)`` of their labels and passed
            to ``make_model(loss_weighting=...)``; the equal-weights
            ``"static"`` is always one. None: ``make_model`` decides, and
            loss weights are tuned as above.
        sharing: sharing architectures to choose from (names from
            `mtk.sharing.METHODS` or objects such as
            ``mtk.sharing.PLE(num_levels=2)``), passed to
            ``make_model(sharing=...)``; ``"hard"`` is always one.
        tune_weights: draw loss weights (True, as described above), or
            keep them all 1 (False). With ``loss_weighting`` given, weights
            are drawn under one more choice, ``"static:tuned"`` (static
            weighting), next to ``"static"`` (all weights 1).
        cost_weight: > 0 also logs ``val_cost_aware_score`` =
            ``val_multitask_score`` − ``cost_weight`` × median step time in
            ms; every trial logs ``step_time_ms`` (`mtk.tuning.space.TrialCost`).

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
        epochs=None,
        finetune_learning_rate=1e-5,
        unfreeze="all",
        baselines=None,
        loss_weighting=None,
        sharing=None,
        tune_weights=True,
        cost_weight=0.0,
        name=None,
    ):
        super().__init__(name=name)
        if not callable(make_model):
            raise TypeError(
                f"make_model must be a function returning a model, got "
                f"{make_model!r}."
            )
        self.make_model = make_model
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
        get_optimizer(optimizer)  # Fails now on a bad name or type.
        self.optimizer = optimizer
        self.finetune_epoch_choices = _epoch_choices(
            "finetune_epochs", finetune_epochs, minimum=0
        )
        # The most any trial fine-tunes: 0 means no trial does.
        self.finetune_epochs = max(self.finetune_epoch_choices)
        self.epoch_choices = (
            None if epochs is None else _epoch_choices("epochs", epochs, minimum=1)
        )
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
                f"baselines must be a dict keyed by head name, got "
                f"{type(baselines).__name__}."
            )
        self.baselines = baselines
        # {"loss_weighting": {label: choice}, "sharing": {...}}: what
        # make_model is called with, one hp.Choice each.
        self.choices = {}
        if loss_weighting is not None:
            self.choices["loss_weighting"] = method_choices(loss_weighting)
            if tune_weights:
                self.choices["loss_weighting"][TUNED_STATIC] = TUNED_STATIC
        if sharing is not None:
            self.choices["sharing"] = sharing_choices(sharing)
        _check_keywords(make_model, self.choices)
        # make_model(loss_weighting="static", sharing="hard") does not take
        # hp, whether or not the search chooses those two.
        self._takes_hp = _takes_argument(
            make_model, exclude=("loss_weighting", "sharing")
        )
        self.tune_weights = bool(tune_weights)
        if (
            not isinstance(cost_weight, numbers.Real)
            or isinstance(cost_weight, bool)
            or cost_weight < 0
        ):
            raise ValueError(
                f"cost_weight must be a number >= 0, got {cost_weight!r}."
            )
        self.cost_weight = float(cost_weight)
        self._references = None
        self._references_for = None
        # Filled in by build(): every log name a trial will have.
        self.logged_names = None

    def choice(self, key, label, hp=None):
        """A fresh copy of the choice labelled ``label`` for ``key``.

        ``key`` is ``"loss_weighting"`` or ``"sharing"``; what
        ``make_model`` gets in the trial where ``hp[key] == label``. A
        `mtk.tuning.Tunable` takes its parameters from ``hp`` (e.g.
        ``tuner.get_best_hyperparameters()[0]``), or their first values.
        """
        if label not in self.choices.get(key, {}):
            raise ValueError(
                f"No {key} choice is labelled {label!r}; the labels are "
                f"{list(self.choices.get(key, {}))}."
            )
        if hp is None:
            hp = keras_tuner.HyperParameters()
        else:
            hp = hp.copy()
        hp.values[key] = label
        return instantiate(hp, key, self.choices[key])

    def _make(self, hp):
        kwargs = {
            key: instantiate(hp, key, labelled)
            for key, labelled in self.choices.items()
        }
        if self._takes_hp:
            return self.make_model(hp, **kwargs)
        return self.make_model(**kwargs)

    def build(self, hp):
        model = self._make(hp)
        try:
            heads = heads_of(model)
        except ValueError as error:
            raise FatalValueError(f"make_model(): {error}") from None
        self._check_head_names(heads)
        if self.baselines is not None:
            check_baselines(self.baselines, heads)
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
        if "loss_weighting" in self.choices and self.tune_weights:
            # Weights are drawn for static weighting only (the others set
            # their own): inactive, and None, in the other trials.
            scope = hp.conditional_scope("loss_weighting", [TUNED_STATIC])
        else:
            scope = contextlib.nullcontext()
        with scope:
            for name in heads if self.tune_weights else ():
                if name == self.pinned_head:
                    weight = hp.Fixed(WEIGHT_PREFIX + name, 1.0)
                else:
                    weight = _float_hp(
                        hp, WEIGHT_PREFIX + name, self._range_of(name)
                    )
                if weight is not None:
                    weights[name] = weight
        learning_rate = _float_hp(hp, "learning_rate", self.learning_rate)
        if self.epoch_choices is not None:
            hp.Choice("epochs", self.epoch_choices)
        if len(self.finetune_epoch_choices) > 1:
            hp.Choice("finetune_epochs", self.finetune_epoch_choices)
        if self.finetune_epochs:
            _float_hp(hp, "finetune_learning_rate", self.finetune_learning_rate)
            if len(self.unfreeze) > 1:
                hp.Choice("unfreeze", self.unfreeze)
        compile_multitask(
            model,
            optimizer=get_optimizer(self.optimizer, learning_rate),
            loss_weights=weights or None,
        )
        # What a trial will log (checked against the objective before the
        # search: a name never logged would only fail after an epoch).
        names = model.log_names()
        self.logged_names = sorted(
            set(names)
            | {"val_" + n for n in names}
            | {OBJECTIVE, STEP_TIME}
            | ({COST_OBJECTIVE} if self.cost_weight else set())
        )
        return model

    def fit(self, hp, model, *args, **kwargs):
        validation_data = kwargs.get("validation_data")
        if validation_data is None:
            raise FatalValueError(
                "MultiTaskHyperModel.fit needs validation_data=: the "
                f"{OBJECTIVE} is computed on it."
            )
        callbacks = [
            self._score_callback(model, validation_data),
            TrialCost(self.cost_weight),
        ]
        callbacks += list(kwargs.pop("callbacks", None) or [])
        if "epochs" in hp:
            kwargs["epochs"] = hp.get("epochs")
        finetune_epochs = _value(hp, "finetune_epochs", self.finetune_epochs)
        # Recompiling after (un)freezing must happen in the model's strategy
        # scope; KerasTuner only enters it around build().
        with model.distribute_strategy.scope():
            if not finetune_epochs:
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
                finetune_epochs=finetune_epochs,
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
            return {r.head: VAL_PREFIX + r.log_name for r in self._references}
        model = self._make(keras_tuner.HyperParameters())
        heads = heads_of(model)
        return {
            name: log_key(name, head.primary_metric, heads, validation=True)
            for name, head in heads.items()
        }

    def _check_head_names(self, heads):
        if self.pinned_head is not None and self.pinned_head not in heads:
            raise FatalValueError(
                f"pinned_head names head {self.pinned_head!r}, which the "
                f"model lacks; its heads are {sorted(heads)}."
            )
        if isinstance(self.weight_range, dict):
            check_head_dict(
                "weight_range", self.weight_range, heads, error=FatalValueError
            )

    def _range_of(self, head):
        if isinstance(self.weight_range, dict):
            return self.weight_range.get(head, DEFAULT_WEIGHT_RANGE)
        return self.weight_range

    def _score_callback(self, model, validation_data):
        # Chance levels need one pass over the validation labels: do it once
        # per search, not once per trial.
        if self._references is None or self._references_for is not validation_data:
            self._references = score_references(
                model, validation_data, self.baselines
            )
            self._references_for = validation_data
        return MultiTaskScore(self._references)


def _epoch_choices(argument, value, minimum):
    """A list of epoch counts (one number: a list of one), checked."""
    choices = list(value) if isinstance(value, (list, tuple)) else [value]
    if not choices or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum
        for v in choices
    ):
        raise ValueError(
            f"{argument} must be an integer >= {minimum} or a non-empty list "
            f"of them, got {value!r}."
        )
    return sorted(set(choices))


def _value(hp, name, spec):
    return hp.get(name) if name in hp else spec


def _check_keywords(make_model, choices):
    """make_model must accept a keyword for each searched choice."""
    try:
        parameters = inspect.signature(make_model).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        return
    missing = [
        key
        for key in choices
        if key not in parameters
        or parameters[key].kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
        )
    ]
    if missing:
        raise TypeError(
            f"The search chooses {missing}, so make_model is called with "
            f"{', '.join(k + '=...' for k in missing)}, which it does not "
            "take; pass them on to mtk.build_multitask_model(..., "
            "loss_weighting=loss_weighting, sharing=sharing)."
        )


def _takes_argument(function, exclude=()):
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        and p.name not in exclude
    ]
    return bool(positional)



def loss_weights_of(hp):
    """The loss weights in a trial's hyperparameters, ``{head: weight}``."""
    return {
        name[len(WEIGHT_PREFIX):]: value
        for name, value in hp.values.items()
        if name.startswith(WEIGHT_PREFIX)
    }
