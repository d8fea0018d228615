"""Loss-level balancing: methods that change how per-head losses add up.

One backward pass, so a step costs what a static-weights step costs.
"""

import keras
import tensorflow as tf
from keras import ops

from mtk.weighting.base import LossWeighting
from mtk.weighting.base import check_positive


@keras.saving.register_keras_serializable(package="mtk")
class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic uncertainty weights (Kendall, Gal & Cipolla 2018).

    Minimises ``sum_i exp(-s_i) * L_i + s_i`` over the task losses ``L_i`` and
    learned log-variances ``s_i`` (the form most implementations use of the
    paper's Eq. 7, with ``s = log sigma^2``); the effective weight is
    ``exp(-s_i)``, and its optimum for fixed losses is ``s_i = log L_i``,
    i.e. weight ``1 / L_i``. Use it for tasks with different noise levels or
    units (a regression beside a classifier); it costs nothing per step.

    The ``s_i`` are trained by their own Adam optimizer at ``learning_rate``,
    not by the model's: at the model's 1e-3 (or 1e-5 while fine-tuning) they
    would barely move.

    Args:
        learning_rate: learning rate of the log-variances' optimizer.

    Example:

    >>> weighting = mtk.weighting.UncertaintyWeighting()
    >>> weighting.setup(["a", "b"])
    >>> float(weighting.combine({"a": 2.0, "b": 3.0}))  # s = 0: plain sum
    5.0
    """

    method = "uncertainty"
    default_learning_rate = 0.02

    def build_state(self, num_heads):
        self.log_variances = self.add_weight(
            shape=(num_heads,), initializer="zeros", trainable=False,
            name="log_variances",
        )

    @property
    def learned_variables(self):
        return [self.log_variances]

    def current_weights(self):
        weights = ops.exp(-ops.convert_to_tensor(self.log_variances))
        return {name: weights[i] for i, name in enumerate(self.head_names)}

    def combine(self, losses):
        return super().combine(losses) + ops.sum(self.log_variances)


def dwa_weights(previous, before_previous, temperature=2.0):
    """Dynamic Weight Average weights from two epochs of task losses.

    ``w_i = K * softmax_i(r / T)`` with ``r_i = L_i(t-1) / L_i(t-2)``
    (Liu, Johns & Davison 2019, Eq. 4).

    Args:
        previous: each task's loss in the last epoch.
        before_previous: the same one epoch earlier.
        temperature: ``T``; larger values give more even weights.

    Returns:
        A list of K weights that sum to K.

    Example:

    >>> [round(w, 4) for w in mtk.weighting.dwa_weights([1.0, 1.0], [2.0, 1.0])]
    [0.8756, 1.1244]
    """
    ratios = tf.constant(previous, "float64") / tf.constant(
        before_previous, "float64"
    )
    weights = len(previous) * tf.nn.softmax(ratios / temperature)
    return [float(w) for w in weights]


@keras.saving.register_keras_serializable(package="mtk")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average (Liu, Johns & Davison 2019).

    Weights are 1 for the first two epochs, then `dwa_weights` of the
    per-head mean training losses of the two epochs before. Use it to keep
    slow-learning tasks from being left behind; it costs nothing per step.
    The loss history lives in variables, so it carries over
    `mtk.fit_transfer`'s fine-tuning phase and a run resumed from a backup.

    Args:
        temperature: the softmax temperature ``T`` (the paper uses 2).
    """

    method = "dwa"

    def __init__(self, temperature=2.0, **kwargs):
        check_positive("DynamicWeightAverage", "temperature", temperature)
        super().__init__(**kwargs)
        self.temperature = temperature

    def build_state(self, num_heads):
        self.task_weights = self.add_state("task_weights", (num_heads,), "ones")
        # Rows: the epoch before last, the last epoch.
        self.loss_history = self.add_state("loss_history", (2, num_heads))
        self.epochs_seen = self.add_state("epochs_seen", ())

    def current_weights(self):
        return {name: self.task_weights[i] for i, name in enumerate(self.head_names)}

    def end_epoch(self, losses):
        history = self.loss_history.numpy()
        history = [history[1].tolist(), [losses[name] for name in self.head_names]]
        self.loss_history.assign(history)
        self.epochs_seen.assign(self.epochs_seen + 1.0)
        if float(self.epochs_seen.numpy()) >= 2:
            self.task_weights.assign(
                dwa_weights(history[1], history[0], self.temperature)
            )

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config
