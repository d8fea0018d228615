"""KerasTuner's tuners, with what tuning loss weights needs added.

Every tuner of KerasTuner (RandomSearch, BayesianOptimization, Hyperband)
runs `mtk.tuning.MultiTaskHyperModel`; the subclasses here add
`best_loss_weights`, `best_model` and `trials_table` (`LossWeightTunerMixin`)
and stop the search at the first epoch when the objective is never logged.
"""

import keras_tuner
from keras_tuner.engine.metrics_tracking import infer_metric_direction
from keras_tuner.engine.trial import TrialStatus
from keras_tuner.errors import FatalValueError

from mtk.evaluation import VAL_PREFIX
from mtk.evaluation import format_table
from mtk.tuning.hypermodel import loss_weights_of
from mtk.tuning.score import OBJECTIVE


class LossWeightTunerMixin:
    """What `mtk.tuning.tune_loss_weights` adds to a KerasTuner tuner.

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
        return loss_weights_of(self._best_trial().hyperparameters)

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
            for head, weight in loss_weights_of(trial.hyperparameters).items():
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
