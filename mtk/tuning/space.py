"""Choices of *how* to multi-task, and the cost a trial is charged.

`mtk.tuning.MultiTaskHyperModel` turns the balancing methods and sharing
architectures it is given into ``hp.Choice`` hyperparameters over labels
(`method_choices`, `sharing_choices`): a name labels itself, a configured
object (``mtk.sharing.MMoE(num_experts=4)``) is labelled by its class and
the arguments that differ from the defaults. Each trial gets a fresh copy
(`fresh`): a balancing method or expert layer belongs to one model.
`Tunable` wraps a choice whose own parameters the trial draws too (a
method's temperature, an architecture's number of experts).

`TrialCost` logs each trial's median training step time (``step_time_ms``)
and, with a ``cost_weight``, the cost-aware objective
``val_cost_aware_score`` = ``val_multitask_score`` − ``cost_weight`` × step
time in milliseconds.
"""

import numbers
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
# How a searched key's name becomes an object (to draw a Tunable's values).
RESOLVE = {
    "loss_weighting": weighting.get_loss_weighting,
    "sharing": sharing_lib.get_sharing,
}


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
    return _choices("loss_weighting", choices, STATIC, _method_label)


def sharing_choices(choices):
    """``{label: architecture}`` from sharing names or objects, checked.

    Hard sharing, the cheapest baseline, comes first, added when missing.

    Example:

    >>> list(mtk.tuning.space.sharing_choices(["mmoe", mtk.sharing.CGC(num_task_experts=1)]))
    ['hard', 'mmoe', 'cgc(num_task_experts=1)']
    """
    return _choices("sharing", choices, HARD, _sharing_label)


def _choices(key, choices, baseline, label_of):
    labelled = {baseline: baseline}
    for choice in _as_list(key, choices):
        if isinstance(choice, Tunable):
            label = choice.check(key, label_of(choice.choice), RESOLVE[key])
        else:
            label = label_of(choice)
        # Equal labels mean equal configurations: one choice.
        labelled.setdefault(label, choice)
    return labelled


def _method_label(choice):
    if isinstance(choice, str):
        if choice not in weighting.METHODS and choice != TUNED_STATIC:
            raise ValueError(
                f"search['loss_weighting'] names unknown method {choice!r}; "
                f"known methods: {list(weighting.METHODS)} (or "
                "mtk.weighting objects)."
            )
        return choice
    if isinstance(choice, weighting.LossWeighting):
        if choice.built:
            raise ValueError(
                f"search['loss_weighting']: {choice.name!r} already belongs "
                "to a model; give an unused object (each trial gets a copy)."
            )
        return _label(choice.method, choice, lambda cls: cls())
    raise ValueError(
        f"search['loss_weighting'] holds {choice!r}, neither a method "
        f"name ({list(weighting.METHODS)}) nor an mtk.weighting object."
    )


def _sharing_label(choice):
    if isinstance(choice, str):
        try:
            sharing_lib.get_sharing(choice)
        except ValueError as error:
            raise ValueError(f"search['sharing'] names {choice!r}: {error}") from None
        return choice.lower().replace("-", "_")
    if isinstance(choice, sharing_lib.Sharing):
        return _label(choice.name, choice, lambda cls: cls())
    raise ValueError(
        f"search['sharing'] holds {choice!r}, neither an architecture "
        f"name ({sorted(sharing_lib.METHODS)}) nor an mtk.sharing object."
    )


class Tunable:
    """A balancing method or sharing architecture with parameters to search.

    In a ``tune_multitask`` search, ``Tunable(choice, **ranges)`` is one
    choice whose parameters each trial that picks it draws as well, under
    KerasTuner's conditional scope (named ``<label>/<parameter>`` in the
    trials table). A range is a list of values (``hp.Choice``), a ``(min,
    max)`` pair of ints (``hp.Int``) or of floats (``hp.Float``,
    log-uniform when min > 0). The other parameters keep the choice's values.

    Args:
        choice: a method or architecture name, or a configured object.
        **ranges: ``parameter=range`` for the constructor's arguments.

    Example:

    >>> import keras_tuner
    >>> temperature = mtk.tuning.Tunable("dwa", temperature=(1.0, 4.0))
    >>> experts = mtk.tuning.Tunable(mtk.sharing.MMoE(expert_units=(16,)), num_experts=[2, 4, 8])
    >>> list(mtk.tuning.space.sharing_choices([experts]))
    ['hard', 'mmoe(expert_units=[16])[num_experts]']
    >>> hp = keras_tuner.HyperParameters()
    >>> mmoe = experts.draw(hp, "mmoe(expert_units=[16])[num_experts]", mtk.sharing.get_sharing)
    >>> (mmoe.num_experts, list(mmoe.expert_units))
    (2, [16])
    >>> mtk.tuning.space.method_choices([mtk.tuning.Tunable("dwa", temperture=(1.0, 4.0))])
    Traceback (most recent call last):
    ...
    ValueError: search['loss_weighting']: Tunable('dwa') has no parameter 'temperture'; its parameters are ['temperature'].
    """

    def __init__(self, choice, **ranges):
        if isinstance(choice, Tunable):
            raise TypeError("Tunable(choice): choice is already a Tunable.")
        if not ranges:
            raise ValueError(
                f"Tunable({choice!r}) names no parameter to search; give e.g. "
                "Tunable('dwa', temperature=(1.0, 4.0)), or pass the choice "
                "itself."
            )
        self.choice = choice
        self.ranges = {name: _check_parameter_range(choice, name, spec)
                       for name, spec in ranges.items()}

    def __repr__(self):
        ranges = ", ".join(f"{k}={v!r}" for k, v in self.ranges.items())
        return f"Tunable({self.choice!r}, {ranges})"

    def check(self, key, base_label, resolve):
        """The choice's label; fails now on a parameter it lacks."""
        parameters = [
            name for name in resolve(fresh(self.choice)).get_config()
            if name not in ("name", "trainable", "dtype")
        ]
        for name in self.ranges:
            if name not in parameters:
                raise ValueError(
                    f"search[{key!r}]: Tunable({self.choice!r}) has no "
                    f"parameter {name!r}; its parameters are {parameters}."
                )
        return f"{base_label}[{','.join(self.ranges)}]"

    def draw(self, hp, label, resolve):
        """A fresh object with this trial's parameter values.

        None where the trial did not pick ``label`` (inactive parameters).
        """
        values = {name: _draw(hp, f"{label}/{name}", spec)
                  for name, spec in self.ranges.items()}
        if any(value is None for value in values.values()):
            return None
        base = resolve(fresh(self.choice))
        return type(base).from_config({**base.get_config(), **values})


def _check_parameter_range(choice, name, spec):
    if isinstance(spec, list) and spec:
        return list(spec)
    if (
        isinstance(spec, tuple)
        and len(spec) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in spec)
        and spec[0] <= spec[1]
    ):
        return spec
    raise ValueError(
        f"Tunable({choice!r}, {name}={spec!r}): a range is a non-empty list "
        "of values or a (min, max) pair of numbers with min <= max."
    )


def _draw(hp, name, spec):
    if isinstance(spec, list):
        return hp.Choice(name, spec)
    low, high = spec
    if isinstance(low, int) and isinstance(high, int):
        return hp.Int(name, low, high)
    sampling = "log" if low > 0 else "linear"
    return hp.Float(name, float(low), float(high), sampling=sampling)

def _as_list(key, choices):
    choices = list(choices) if isinstance(choices, (list, tuple)) else [choices]
    if not choices:
        raise ValueError(f"search[{key!r}] is empty; give one choice or more.")
    return choices


def described(key, values):
    """The trial's choice for ``key`` as a label with its drawn parameters.

    Example:

    >>> mtk.tuning.space.described("sharing", {"sharing": "mmoe[num_experts]", "mmoe[num_experts]/num_experts": 4})
    'mmoe(num_experts=4)'
    >>> mtk.tuning.space.described("loss_weighting", {"loss_weighting": "famo"})
    'famo'
    """
    label = values[key]
    if not isinstance(label, str):  # An epoch count.
        return label
    drawn = {
        name[len(label) + 1:]: value for name, value in values.items()
        if name.startswith(label + "/")
    }
    if not drawn or not label.endswith("]"):
        return label
    parameters = ",".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value!r}"
        for name, value in drawn.items()
    )
    base = label[:label.rindex("[")]
    if base.endswith(")"):  # A configured object: one argument list.
        return f"{base[:-1]},{parameters})"
    return f"{base}({parameters})"


def fresh(choice):
    """A copy of a choice for one model (names are returned as they are)."""
    if choice == TUNED_STATIC:
        return STATIC
    if isinstance(choice, str):
        return choice
    return type(choice).from_config(choice.get_config())


def instantiate(hp, key, labelled):
    """Draws ``key``'s choice; what ``make_model(key=...)`` gets in the trial.

    Every `Tunable`'s parameters are declared under ``hp.conditional_scope(key,
    [its label])``, as KerasTuner's conditional spaces are: the whole space
    is known from the first build, and a parameter is drawn only in the
    trials that pick its choice.
    """
    label = hp.Choice(key, list(labelled))
    for other, choice in labelled.items():
        if isinstance(choice, Tunable):
            with hp.conditional_scope(key, [other]):
                drawn = choice.draw(hp, other, RESOLVE[key])
            if other == label:
                return drawn
    return fresh(labelled[label])


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
