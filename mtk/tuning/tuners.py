"""KerasTuner's tuners, with what tuning loss weights needs added.

Every tuner of KerasTuner (RandomSearch, BayesianOptimization, Hyperband)
runs `mtk.tuning.MultiTaskHyperModel`; the subclasses here add
`best_loss_weights`, `best_model` and `trials_table` (`LossWeightTunerMixin`)
and stop the search at the first epoch when the objective is never logged.
"""

import json
import os
import types

import keras_tuner
import tensorflow as tf
from keras_tuner.engine.metrics_tracking import infer_metric_direction
from keras_tuner.engine.trial import TrialStatus
from keras_tuner.errors import FatalValueError

from mtk.evaluation import VAL_PREFIX
from mtk.evaluation import format_table
from mtk.tuning.distributed import CHIEF
from mtk.tuning.distributed import WORKER
from mtk.tuning.distributed import chief_address
from mtk.tuning.distributed import tuner_role
from mtk.tuning.hypermodel import loss_weights_of
from mtk.tuning.hypermodel import WEIGHT_PREFIX
from mtk.tuning.score import OBJECTIVE
from mtk.tuning.space import COST_OBJECTIVE
from mtk.tuning.space import STEP_TIME
from mtk.tuning.space import described


# Hyperparameters shown as table columns, labels of discrete choices.
CHOICE_COLUMNS = ("loss_weighting", "sharing", "unfreeze", "epochs", "finetune_epochs")


class LossWeightTunerMixin:
    """What `mtk.tuning.tune_loss_weights` adds to a KerasTuner tuner.

    - The search stops at the end of the first epoch, listing the logged
      metric names, when the objective is not among them (KerasTuner alone
      would mark every trial invalid and fail after the whole search).
    - `best_loss_weights`, `best_config`, `best_model` and `trials_table`.
    - `ran_trials`: the ids of the trials this process ran, which on a
      worker of a distributed search is all it knows of the search: the
      results are the chief's (there the three methods above work; on a
      worker they raise, naming the chief).
    - Resuming a distributed search after its chief was killed runs no trial
      twice (`reload`, and the oracle's display state saved after each new
      trial); `search_finished` tells a chief not to serve a finished one.
    """

    def __init__(self, *args, **kwargs):
        self.ran_trials = []
        super().__init__(*args, **kwargs)
        # On a worker, the oracle is the chief's proxy (KerasTuner's
        # OracleClient): the chief's own tuner wraps its oracle.
        if isinstance(self.oracle, keras_tuner.Oracle):
            _make_resumable(self.oracle)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        self.ran_trials.append(trial.trial_id)

    def reload(self):
        """Reloads the search; on a chief, each running trial stays its worker's.

        KerasTuner's oracle sends the trials that were running when it
        stopped to its retry queue, for any tuner to run again. On a
        restarted chief their workers usually still run them (KerasTuner's
        client waits for the chief): each stays handed to the worker that
        had it, which reports it, or, restarted with the same
        ``KERASTUNER_TUNER_ID``, gets it again.
        """
        super().reload()
        if tuner_role() != CHIEF:
            return
        path = os.path.join(self.project_dir, "oracle.json")
        with tf.io.gfile.GFile(path) as f:
            running = json.load(f)["ongoing_trials"]
        oracle = self.oracle
        for tuner_id, trial_id in running.items():
            oracle.ongoing_trials[tuner_id] = oracle.trials[trial_id]
        oracle._retry_queue[:] = [
            trial_id for trial_id in oracle._retry_queue
            if trial_id not in running.values()
        ]

    def search_finished(self):
        """Whether a (reloaded) search has no trial left to run.

        True when ``max_trials`` trials exist and each one completed or
        failed for good (none running when the search stopped, none waiting
        for a retry). False for Hyperband, which has no ``max_trials``: its
        oracle alone knows when its brackets are done.
        """
        self._check_not_worker("search_finished")
        remaining = self.oracle.remaining_trials()
        return remaining is not None and remaining <= 0 and all(
            trial.status in (TrialStatus.COMPLETED, TrialStatus.FAILED)
            for trial in self.oracle.trials.values()
        )

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
        self._check_not_worker("best_loss_weights")
        return loss_weights_of(self._best_trial().hyperparameters)

    def best_config(self):
        """The best trial's choices: how to multi-task, and with what.

        Returns:
            A dict: ``loss_weighting`` and ``sharing`` (the labels of the
            chosen method and architecture, when searched; a name is its own
            label, and ``tuner.hypermodel.choice(key, label)`` gives the
            object), ``loss_weights`` (``{head: weight}``, when drawn in that
            trial) and every other hyperparameter of the trial by name
            (``learning_rate``, ``unfreeze``, ...).
        """
        self._check_not_worker("best_config")
        values = self._best_trial().hyperparameters.values
        config = {
            key: value for key, value in values.items()
            if not key.startswith(WEIGHT_PREFIX)
        }
        weights = loss_weights_of(self._best_trial().hyperparameters)
        if weights:
            config["loss_weights"] = weights
        return config

    def best_model(self):
        """The best trial's model, with the weights of its best epoch."""
        self._check_not_worker("best_model")
        self._best_trial()
        return self.get_best_models(1)[0]

    def trials_table(self, print_table=True):
        """One row per finished trial: weights, head metrics and objective.

        Args:
            print_table: also print the table.

        Returns:
            A list of dicts, in trial order, with keys ``trial``, the
            labels of the searched choices (``loss_weighting``, ``sharing``,
            ``unfreeze``, ``epochs``, ``finetune_epochs``, when searched; a
            `mtk.tuning.Tunable` with the values it drew), ``weight_<head>``
            for each head (when drawn in that trial), each head's primary validation
            metric (e.g. ``val_item_accuracy``), ``step_time_ms`` (median
            training step time, `mtk.tuning.space.TrialCost`),
            ``val_multitask_score`` and the objective when it is another,
            and ``best`` (True for the best trial). ``pandas.DataFrame(rows)``
            turns it into a data frame.
        """
        self._check_not_worker("trials_table")
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
            values = trial.hyperparameters.values
            for key in CHOICE_COLUMNS:
                if key in values:
                    row[key] = described(key, values)
            for head, weight in loss_weights_of(trial.hyperparameters).items():
                row[f"weight_{head}"] = weight
            for name in head_metrics.values():
                row[name] = (
                    trial.metrics.get_last_value(name)
                    if trial.metrics.exists(name)
                    else None
                )
            for name in (STEP_TIME, OBJECTIVE):
                if name != objective.name and trial.metrics.exists(name):
                    row[name] = float(trial.metrics.get_last_value(name))
            row[objective.name] = trial.score
            row["best"] = trial.trial_id == best_id
            rows.append(row)
        if print_table:
            print(format_table(rows, title=f"{objective}, {len(rows)} trials"))
        return rows

    def _check_not_worker(self, method):
        # A worker's oracle is KerasTuner's OracleClient: a proxy to the
        # chief that holds no trials (and the chief exits when the search is
        # done, so asking it afterwards would wait for an hour).
        if tuner_role() == WORKER:
            raise RuntimeError(
                f"{method}() needs the search's results, which the chief holds: "
                f"this process is worker {self.tuner_id!r} of a distributed "
                f"search (chief at {chief_address()}). Call it on the chief "
                "(KERASTUNER_TUNER_ID=chief), or, once the search is done, in "
                "a process without the KERASTUNER_ environment variables that "
                "reloads the project (overwrite=False) from its directory."
            )

    def _best_trial(self):
        best = self.oracle.get_best_trials(1)
        if not best:
            raise ValueError(
                f"No trial of project {self.project_dir!r} has finished; run "
                "the search first."
            )
        return best[0]


def _make_resumable(oracle):
    """Makes ``oracle.create_trial`` save the oracle after displaying a trial.

    KerasTuner's oracle saves itself before its display records a new
    trial's start, so a chief killed mid-search and reloaded could not
    display the end of a trial running then (a `KeyError`, which fails the
    worker reporting it): saving once more after the display fixes that.
    """
    create_trial = oracle.create_trial

    @keras_tuner.synchronized
    def create_trial_saved(oracle, tuner_id):
        trial = create_trial(tuner_id)
        if trial.status == TrialStatus.RUNNING:
            oracle.save()
        return trial

    oracle.create_trial = types.MethodType(create_trial_saved, oracle)


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
    if objective in (OBJECTIVE, COST_OBJECTIVE):
        return keras_tuner.Objective(objective, "max")
    parts = objective.removeprefix(VAL_PREFIX).split("_")
    # Try "item_accuracy", then "accuracy": head names may hold underscores.
    for start in range(len(parts)):
        direction = infer_metric_direction("_".join(parts[start:]))
        if direction is not None:
            return keras_tuner.Objective(objective, direction)
    raise ValueError(
        f"Cannot tell whether objective {objective!r} is to be minimised or "
        f"maximised; pass keras_tuner.Objective({objective!r}, 'max' or 'min')."
    )
