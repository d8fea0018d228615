"""Choices of *how* to multi-task, and the cost a trial is charged.

`mtk.tuning.MultiTaskHyperModel` turns the balancing methods and sharing
architectures it is given into ``hp.Choice`` hyperparameters over labels
(`method_choices`, `sharing_choices`): a name labels itself, a configured
object (``mtk.sharing.MMoE(num_experts=4)``) is labelled by its class and
the arguments that differ from the defaults. Each trial gets a fresh copy
(`fresh`): a balancing method or expert layer belongs to one model.

`TrialCost` logs each trial's median training step time (``step_time_ms``)
and, with a ``cost_weight``, the cost-aware objective
``val_cost_aware_score`` = ``val_multitask_score`` − ``cost_weight`` × step
time in milliseconds.
"""

import time

import keras
import numpy as np

from mtk import sharing as sharing_lib
from mtk import weighting
from mtk.tuning.score import OBJECTIVE

# The equal-weights baseline (always in a search over methods), and static
# weights drawn per trial (``loss_weights=True`` in the search).
STATIC = "static"
TUNED_STATIC = "static:tuned"
HARD = "hard"
STEP_TIME = "step_time_ms"
COST_OBJECTIVE = "val_cost_aware_score"


def _label(owner, choice, defaults_of):
    config = choice.get_config()
    try:
        defaults = defaults_of(type(choice)).get_config()
    except TypeError:  # Arguments without defaults (MTAN's at=...).
        defaults = {}
    changed = {
        key: value
        for key, value in config.items()
        if key not in ("name", "trainable", "dtype") and defaults.get(key, object()) != value
    }
    arguments = ",".join(f"{key}={value!r}" for key, value in changed.items())
    return f"{owner}({arguments})".replace(" ", "")


def method_choices(choices):
    """``{label: method}`` from balancing method names or objects, checked.

    The equal-weights ``"static"`` comes first, added when missing: careful
    comparisons (Kurin et al. 2022, Xin et al. 2022) find that tuned equal
    weights are hard to beat, so a search must be able to say so.

    Example:

    >>> sorted(mtk.tuning.space.method_choices(["famo", mtk.weighting.DynamicWeightAverage(temperature=4.0)]))
    ['dwa(temperature=4.0)', 'famo', 'static']
    >>> mtk.tuning.space.method_choices(["famoo"])
    Traceback (most recent call last):
    ...
    ValueError: search['loss_weighting'] names unknown method 'famoo'; known methods: ['static', ...
    """
    labelled = {STATIC: STATIC}
    for choice in _as_list("loss_weighting", choices):
        if isinstance(choice, str):
            if choice not in weighting.METHODS and choice != TUNED_STATIC:
                raise ValueError(
                    f"search['loss_weighting'] names unknown method {choice!r}; "
                    f"known methods: {list(weighting.METHODS)} (or "
                    "mtk.weighting objects)."
                )
            label = choice
        elif isinstance(choice, weighting.LossWeighting):
            if choice.built:
                raise ValueError(
                    f"search['loss_weighting']: {choice.name!r} already belongs "
                    "to a model; give an unused object (each trial gets a copy)."
                )
            label = _label(choice.method, choice, lambda cls: cls())
        else:
            raise ValueError(
                f"search['loss_weighting'] holds {choice!r}, neither a method "
                f"name ({list(weighting.METHODS)}) nor an mtk.weighting object."
            )
        _add(labelled, "loss_weighting", label, choice)
    return labelled


def sharing_choices(choices):
    """``{label: architecture}`` from sharing names or objects, checked.

    Hard sharing, the cheapest baseline, comes first, added when missing.

    Example:

    >>> list(mtk.tuning.space.sharing_choices(["mmoe", mtk.sharing.CGC(num_task_experts=1)]))
    ['hard', 'mmoe', 'cgc(num_task_experts=1)']
    """
    labelled = {HARD: HARD}
    for choice in _as_list("sharing", choices):
        if isinstance(choice, str):
            try:
                sharing_lib.get_sharing(choice)
            except ValueError as error:
                raise ValueError(
                    f"search['sharing'] names {choice!r}: {error}"
                ) from None
            label = choice.lower().replace("-", "_")
        elif isinstance(choice, sharing_lib.Sharing):
            label = _label(choice.name, choice, lambda cls: cls())
        else:
            raise ValueError(
                f"search['sharing'] holds {choice!r}, neither an architecture "
                f"name ({sorted(sharing_lib.METHODS)}) nor an mtk.sharing object."
            )
        _add(labelled, "sharing", label, choice)
    return labelled


def _as_list(key, choices):
    choices = list(choices) if isinstance(choices, (list, tuple)) else [choices]
    if not choices:
        raise ValueError(f"search[{key!r}] is empty; give one choice or more.")
    return choices


def _add(labelled, key, label, choice):
    # Equal labels mean equal configurations: one choice.
    labelled.setdefault(label, choice)


def fresh(choice):
    """A copy of a choice for one model (names are returned as they are)."""
    if choice == TUNED_STATIC:
        return STATIC
    if isinstance(choice, str):
        return choice
    return type(choice).from_config(choice.get_config())


class TrialCost(keras.callbacks.Callback):
    """Logs a trial's median training step time, and the cost-aware score.

    Each epoch end adds ``step_time_ms``, the median wall time of the
    training steps so far (the first step of each ``fit`` call, which traces
    the step, is left out when others exist), and, when ``cost_weight > 0``,
    ``val_cost_aware_score`` = ``val_multitask_score`` − ``cost_weight`` ×
    ``step_time_ms``. Put it after `mtk.tuning.MultiTaskScore` and before the
    tuner's callbacks. Unlike `mtk.evaluation.StepTimer` it times the first
    epoch too: tuning trials often have only one.
    """

    def __init__(self, cost_weight=0.0):
        super().__init__()
        self.cost_weight = cost_weight
        self.first = []  # The first step of each fit call.
        self.seconds = []
        self._start = None
        self._first_of_fit = True

    def on_train_begin(self, logs=None):
        self._first_of_fit = True

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self._start
        (self.first if self._first_of_fit else self.seconds).append(elapsed)
        self._first_of_fit = False

    def median_ms(self):
        times = self.seconds or self.first
        return 1000.0 * float(np.median(times)) if times else float("nan")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs[STEP_TIME] = self.median_ms()
        if self.cost_weight and OBJECTIVE in logs:
            logs[COST_OBJECTIVE] = logs[OBJECTIVE] - self.cost_weight * logs[STEP_TIME]
