"""Loss balancing: methods that transform or reweigh the per-head losses.

Random Loss Weighting, the Geometric Loss Strategy, FAMO, DB-MTL's loss-scale
balancing and Smooth Tchebycheff scalarisation. Each is one backward pass (a
step costs what a static-weights step costs) and keeps its state in
variables, so it is saved with the model, restored by ``BackupAndRestore``
and carried over `mtk.fit_transfer`'s phases.

The logged ``<head>_loss_weight`` is each epoch's last step's effective
weight. A head with no labels in a batch has loss 0 that step. These methods leave
such a head out of the step's combination (its logged weight is 0) instead
of taking the logarithm of 0 or letting it decide the others' weights.
"""

import random

import keras
import tensorflow as tf
from keras import ops

from mtk.weighting.base import RecordedWeights
from mtk.weighting.base import check_choice
from mtk.weighting.base import check_integer
from mtk.weighting.base import check_positive


class _RecordedWeights(RecordedWeights):
    """`RecordedWeights` with the per-head losses as one vector."""

    def _stack(self, losses):
        return ops.stack(
            [ops.cast(losses[name], "float32") for name in self.head_names]
        )


def _present(values):
    """1 for heads with a loss this step, 0 for heads with none (loss 0)."""
    return ops.cast(ops.greater(values, 0.0), "float32")


@keras.saving.register_keras_serializable(package="mtk")
class RandomLossWeighting(_RecordedWeights):
    """Random Loss Weighting (Lin et al., TMLR 2022).

    "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning", Sec. 3 (RLW): every step draws fresh weights
    ``w = softmax(lambda)`` with ``lambda ~ N(0, I)`` (the paper's default
    distribution) and minimises ``sum_i w_i L_i``. Use it as the litmus test
    a dynamic method should beat (the paper finds it matches most of them);
    it costs one draw of K numbers per step.

    The draws come from a stateless generator keyed by ``seed`` and a step
    counter kept in a variable: every replica draws the same weights, and a
    run resumed from a backup or a saved model continues the same sequence.
    The logged ``<head>_loss_weight`` is the step's ``w_i``.

    Args:
        distribution: ``"normal"`` (standard normal, the paper's default) or
            ``"uniform"`` (``U(0, 1)``, also in the paper), passed through
            the softmax.
        seed: integer seed of the draws. None picks one from Python's
            `random` (which `keras.utils.set_random_seed` seeds); the config
            records it.

    Example:

    >>> weighting = mtk.weighting.loss_balancing.RandomLossWeighting(seed=1)
    >>> weighting.setup(["a", "b"])
    >>> objective = weighting.combine({"a": 1.0, "b": 1.0})
    >>> round(float(objective), 4)  # the weights sum to 1
    1.0
    """

    method = "rlw"
    DISTRIBUTIONS = ("normal", "uniform")

    def __init__(self, distribution="normal", seed=None, **kwargs):
        check_choice("RandomLossWeighting", "distribution", distribution,
                      self.DISTRIBUTIONS)
        if seed is None:
            seed = random.randrange(2**31 - 1)
        check_integer("RandomLossWeighting", "seed", seed)
        if seed >= 2**31:
            raise ValueError(
                f"RandomLossWeighting: seed must be an integer < 2**31, got {seed!r}."
            )
        super().__init__(**kwargs)
        self.distribution = distribution
        self.seed = seed

    def build_state(self, num_heads):
        super().build_state(num_heads)
        self.steps = self.add_state("steps", (), "zeros")

    def draw(self, step):
        """The raw draws ``lambda`` of a step (before the softmax).

        Args:
            step: the step's index (a scalar).

        Returns:
            A ``(K,)`` float32 tensor.
        """
        seed = ops.stack([
            ops.convert_to_tensor(self.seed, "int32"),
            ops.cast(step, "int32"),
        ])
        shape = (len(self.head_names),)
        if self.distribution == "uniform":
            return tf.random.stateless_uniform(shape, seed=seed, dtype="float32")
        return tf.random.stateless_normal(shape, seed=seed, dtype="float32")

    def combine(self, losses):
        step = ops.convert_to_tensor(self.steps)
        weights = ops.softmax(self.draw(step))
        self.record(weights)
        self.steps.assign(step + 1.0)
        return ops.sum(weights * self._stack(losses))

    def get_config(self):
        config = super().get_config()
        config.update({"distribution": self.distribution, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package="mtk")
class GeometricLossStrategy(_RecordedWeights):
    """Geometric Loss Strategy (Chennupati et al., CVPR-W 2019).

    "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy
    for Multi-Task Learning", Sec. 3 (geometric loss strategy): minimise the
    geometric mean of the K task losses, ``(prod_i L_i) ** (1 / K)``. Its
    gradient weighs task i by ``G / (K L_i)`` (``G`` the geometric mean), so
    every task is scaled by its own loss: use it when the losses' units or
    scales differ (it is scale-invariant per task). It costs nothing per step.

    The logged ``<head>_loss_weight`` is that effective weight
    ``dG/dL_i = G / (K L_i)``. Heads with loss 0 this step (no labels) are
    left out: the mean is over the other heads.

    Example:

    >>> weighting = mtk.weighting.loss_balancing.GeometricLossStrategy()
    >>> weighting.setup(["a", "b"])
    >>> float(weighting.combine({"a": 1.0, "b": 4.0}))
    2.0
    """

    method = "gls"

    def combine(self, losses):
        values = self._stack(losses)
        present = _present(values)
        count = ops.sum(present)
        logs = present * ops.log(ops.maximum(values, 1e-30))
        mean = ops.exp(ops.sum(logs) / ops.maximum(count, 1.0))
        objective = ops.where(count > 0.0, mean, 0.0)
        value = ops.stop_gradient(objective)
        self.record(
            present * value / (ops.maximum(count, 1.0) * ops.maximum(values, 1e-30))
        )
        return objective


@keras.saving.register_keras_serializable(package="mtk")
class FAMO(_RecordedWeights):
    """Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023).

    "FAMO: Fast Adaptive Multitask Optimization", Algorithm 1. Task logits
    ``xi`` (initially 0) give ``z = softmax(xi)``; the model follows
    ``sum_i c z_i / L_i * grad L_i`` with ``c = 1 / sum_i (z_i / L_i)``
    (the gradient of ``sum_i z_i log L_i / c`` with ``c`` held constant), so
    every task's loss falls at a rate set by ``z``. ``xi`` then moves against
    ``delta = J_z(xi)^T (log L(t-1) - log L(t))`` (``J_z`` the softmax's
    Jacobian) plus the decay ``gamma * xi``: tasks whose loss fell less gain
    weight. Use it to make tasks' losses fall at even rates; it costs K
    numbers of state and nothing per step (no per-task gradients).

    Step timing: Algorithm 1 compares the losses before and after the
    model's update; the official code and LibMTL get the latter by running
    the updated model again on the **same** batch (an extra forward pass,
    without gradients) right after the update. mtk's step does not
    re-evaluate: at step t it updates ``xi`` from the previous step's losses
    and this step's (the next batch), before weighting this step's losses.
    So ``xi`` lags one step and the change of log-losses also carries
    batch-to-batch noise, in exchange for no extra pass.

    Like the official code, ``xi`` takes Adam steps (``logits_optimizer=
    "adam"``, L2 decay added to the gradient as PyTorch's ``weight_decay``);
    ``"sgd"`` gives Algorithm 1's plain step ``xi -= lr * (delta + gamma xi)``.
    Losses are floored by 1e-8 as in the official code; its optional loss
    lower bounds are 0 here. Clip the model's gradients (the official
    experiments use norm 1) with the model optimizer's ``clipnorm``.

    The logged ``<head>_loss_weight`` is ``c z_i / L_i`` (they sum to 1). A
    head with loss 0 this step is left out of ``c`` and of ``xi``'s update.
    ``xi``, the previous losses and Adam's moments live in variables.

    Args:
        learning_rate: step size of ``xi`` (the paper's ``beta``; 0.025 in
            the official code and LibMTL).
        weight_decay: the decay ``gamma`` of ``xi`` (1e-3, the paper's and
            LibMTL's value for most benchmarks; the official code's default
            is 0.01, used for Cityscapes).
        logits_optimizer: ``"adam"`` (official code) or ``"sgd"`` (Algorithm 1).

    Example:

    >>> weighting = mtk.weighting.loss_balancing.FAMO()
    >>> weighting.setup(["a", "b"])
    >>> _ = weighting.combine({"a": 1.0, "b": 3.0})
    >>> [round(float(w), 4) for w in weighting.current_weights().values()]
    [0.75, 0.25]
    """

    method = "famo"
    default_learning_rate = 0.025
    OPTIMIZERS = ("adam", "sgd")
    EPSILON = 1e-8
    BETA_1 = 0.9
    BETA_2 = 0.999

    def __init__(self, weight_decay=1e-3, logits_optimizer="adam", **kwargs):
        check_positive("FAMO", "weight_decay", weight_decay, allow_zero=True)
        check_choice("FAMO", "logits_optimizer", logits_optimizer, self.OPTIMIZERS)
        super().__init__(**kwargs)
        self.weight_decay = weight_decay
        self.logits_optimizer = logits_optimizer

    def build_state(self, num_heads):
        super().build_state(num_heads)
        self.logits = self.add_state("logits", (num_heads,), "zeros")
        self.previous_losses = self.add_state("previous_losses", (num_heads,), "zeros")
        self.steps = self.add_state("steps", (), "zeros")
        self.first_moment = self.add_state("first_moment", (num_heads,), "zeros")
        self.second_moment = self.add_state("second_moment", (num_heads,), "zeros")

    def logits_gradient(self, previous, current):
        """``delta``: the gradient that ``xi`` descends (without the decay).

        Args:
            previous: ``(K,)`` losses of the previous step.
            current: ``(K,)`` losses of this step.
        """
        both = _present(previous) * _present(current)
        change = both * (
            ops.log(previous + self.EPSILON) - ops.log(current + self.EPSILON)
        )
        z = ops.softmax(ops.convert_to_tensor(self.logits))
        # J^T change with J = diag(z) - z z^T (the softmax's Jacobian).
        return z * (change - ops.sum(z * change))

    def _update_logits(self, current):
        steps = ops.convert_to_tensor(self.steps)
        logits = ops.convert_to_tensor(self.logits)
        gradient = (
            self.logits_gradient(ops.convert_to_tensor(self.previous_losses), current)
            + self.weight_decay * logits
        )
        if self.logits_optimizer == "sgd":
            step = self.learning_rate * gradient
        else:
            # Adam at update number t = steps (step 0 has no update).
            t = ops.maximum(steps, 1.0)
            first = self.BETA_1 * self.first_moment + (1.0 - self.BETA_1) * gradient
            second = (self.BETA_2 * self.second_moment
                      + (1.0 - self.BETA_2) * ops.square(gradient))
            first_hat = first / (1.0 - ops.power(self.BETA_1, t))
            second_hat = second / (1.0 - ops.power(self.BETA_2, t))
            step = self.learning_rate * first_hat / (ops.sqrt(second_hat) + 1e-8)
            update = steps > 0.0
            self.first_moment.assign(ops.where(update, first, self.first_moment))
            self.second_moment.assign(ops.where(update, second, self.second_moment))
        self.logits.assign(ops.where(steps > 0.0, logits - step, logits))

    def combine(self, losses):
        stacked = self._stack(losses)
        values = ops.stop_gradient(stacked)
        self._update_logits(values)
        self.previous_losses.assign(values)
        self.steps.assign(self.steps + 1.0)

        present = _present(values)
        z = ops.softmax(ops.convert_to_tensor(self.logits))
        shifted = stacked + self.EPSILON
        inverse_c = ops.sum(present * z / ops.stop_gradient(shifted))
        c = 1.0 / ops.maximum(inverse_c, 1e-30)
        self.record(present * c * z / (values + self.EPSILON))
        return c * ops.sum(present * z * ops.log(shifted))

    def get_config(self):
        config = super().get_config()
        config.update({
            "weight_decay": self.weight_decay,
            "logits_optimizer": self.logits_optimizer,
        })
        return config


@keras.saving.register_keras_serializable(package="mtk")
class DualBalancing(_RecordedWeights):
    """DB-MTL's loss-scale balancing (Lin et al. 2023).

    "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029), Sec. 3.1:
    minimise ``sum_i log(L_i + epsilon)``, whose gradient weighs task i by
    ``1 / (L_i + epsilon)``: every task's loss counts relative to its own
    scale. Use it when the losses' scales differ by orders of magnitude; it
    costs nothing per step.

    Only the loss-scale part. DB-MTL's gradient-magnitude part (each task's
    gradient of the shared parameters, smoothed by an EMA, rescaled to the
    largest task's norm) is not included; it needs per-task gradients.

    The logged ``<head>_loss_weight`` is ``1 / (L_i + epsilon)``, 0 for a head
    with loss 0 this step (no labels), which is left out.

    Args:
        epsilon: added to each loss before the logarithm (1e-8 in LibMTL's
            DB-MTL, by the paper's authors).

    Example:

    >>> weighting = mtk.weighting.loss_balancing.DualBalancing()
    >>> weighting.setup(["a", "b"])
    >>> round(float(weighting.combine({"a": 1.0, "b": float(np.e)})), 4)
    1.0
    """

    method = "db_mtl"

    def __init__(self, epsilon=1e-8, **kwargs):
        check_positive("DualBalancing", "epsilon", epsilon)
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def combine(self, losses):
        stacked = self._stack(losses)
        present = _present(ops.stop_gradient(stacked))
        self.record(present / (ops.stop_gradient(stacked) + self.epsilon))
        return ops.sum(present * ops.log(stacked + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config


@keras.saving.register_keras_serializable(package="mtk")
class SmoothTchebycheff(_RecordedWeights):
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024).

    "Smooth Tchebycheff Scalarization for Multi-Objective Optimization",
    Sec. 3: ``g(x) = mu log sum_i exp(lambda_i (f_i(x) - z_i*) / mu)``, a
    smooth maximum of the preference-weighted gaps to a reference point.
    For multi-task learning the official code (``STCH_MTL``, also in LibMTL)
    takes ``f_i = log L_i`` and ``z_i* = log`` of task i's mean loss over one
    epoch, and multiplies by K; this class does the same::

        warm-up, epochs 1 .. warmup_epochs + 1:  sum_i log L_i
        (the last of them also averages each task's losses: n_i)
        after:  K mu log sum_i exp(lambda_i log(L_i / n_i) / mu)

    (the official code's ``+ 1e-20`` inside the logarithms too). Smaller
    ``mu`` puts the weight on the worst task relative to its warm-up loss
    (the Tchebycheff max); larger ``mu`` spreads it. Use it for a preference
    ``lambda`` over tasks that also reaches non-convex parts of the Pareto
    front, or to keep the worst task from lagging; it costs nothing per step,
    but needs ``warmup_epochs + 1`` epochs before it acts. Epochs count over
    all ``fit`` calls (and fit_transfer's phases).

    The logged ``<head>_loss_weight`` is ``d objective / d L_i``: ``1 / L_i``
    during the warm-up, then ``K lambda_i s_i / L_i`` with ``s`` the softmax
    inside the log-sum-exp. A head with loss 0 this step (no labels) is left
    out (weight 0), and out of the averages ``n_i``.

    Args:
        mu: the smoothing ``mu`` (1.0, the official code's default).
        warmup_epochs: epochs of plain ``sum_i log L_i`` before the epoch
            that measures the reference losses (4, the official default).
        preference: dict ``{head: lambda}`` of positive preferences, rescaled
            to mean 1 (heads left out get 1). Default: uniform (all 1, as in
            the official code).

    Example:

    >>> weighting = mtk.weighting.loss_balancing.SmoothTchebycheff(warmup_epochs=0)
    >>> weighting.setup(["a", "b"])
    >>> _ = weighting.combine({"a": 2.0, "b": 4.0})  # measures n = (2, 4)
    >>> weighting.end_epoch({"a": 2.0, "b": 4.0})
    >>> round(float(weighting.combine({"a": 2.0, "b": 4.0})), 4)  # 2 log 2
    1.3863
    """

    method = "stch"
    EPSILON = 1e-20

    def __init__(self, mu=1.0, warmup_epochs=4, preference=None, **kwargs):
        check_positive("SmoothTchebycheff", "mu", mu)
        check_integer("SmoothTchebycheff", "warmup_epochs", warmup_epochs)
        if preference is not None:
            if not isinstance(preference, dict):
                raise ValueError(
                    "SmoothTchebycheff: preference must be a dict {head: weight} "
                    f"or None, got {preference!r}."
                )
            for name, value in preference.items():
                check_positive("SmoothTchebycheff", f"preference[{name!r}]", value)
            preference = dict(preference)
        super().__init__(**kwargs)
        self.mu = mu
        self.warmup_epochs = warmup_epochs
        self.preference = preference

    def check_heads(self, head_names):
        super().check_heads(head_names)
        unknown = sorted(set(self.preference or {}) - set(head_names))
        if unknown:
            raise ValueError(
                f"SmoothTchebycheff: preference names {unknown}, which are not "
                f"heads of the model ({list(head_names)})."
            )

    def build_state(self, num_heads):
        super().build_state(num_heads)
        self.epochs_seen = self.add_state("epochs_seen", (), "zeros")
        self.loss_sums = self.add_state("loss_sums", (num_heads,), "zeros")
        self.loss_counts = self.add_state("loss_counts", (num_heads,), "zeros")
        # n_i: 0 until measured.
        self.reference_losses = self.add_state("reference_losses", (num_heads,), "zeros")

    def preference_vector(self):
        """The ``(K,)`` preferences ``lambda``, rescaled to mean 1."""
        given = self.preference or {}
        values = [float(given.get(name, 1.0)) for name in self.head_names]
        mean = sum(values) / len(values)
        return ops.convert_to_tensor([v / mean for v in values], "float32")

    def combine(self, losses):
        stacked = self._stack(losses)
        values = ops.stop_gradient(stacked)
        present = _present(values)
        epochs = ops.convert_to_tensor(self.epochs_seen)

        measuring = ops.equal(epochs, float(self.warmup_epochs))
        self.loss_sums.assign(
            self.loss_sums + ops.where(measuring, present * values, 0.0))
        self.loss_counts.assign(
            self.loss_counts + ops.where(measuring, present, 0.0))

        # Warm-up: sum_i log L_i.
        warmup = ops.sum(present * ops.log(stacked + self.EPSILON))
        warmup_weights = present / (values + self.EPSILON)

        # Afterwards: K mu logsumexp(lambda log(L / n) / mu).
        reference = ops.convert_to_tensor(self.reference_losses)
        reference = ops.where(reference > 0.0, reference, 1.0)
        preference = self.preference_vector()
        logits = preference * ops.log(stacked / reference + self.EPSILON) / self.mu
        logits = ops.where(present > 0.0, logits, -1e30)
        count = float(len(self.head_names))
        smooth = count * self.mu * ops.logsumexp(logits)
        shares = present * ops.softmax(ops.stop_gradient(logits))
        smooth_weights = (
            count * preference * shares / (values + self.EPSILON * reference)
        )

        active = epochs > float(self.warmup_epochs)
        any_present = ops.sum(present) > 0.0
        objective = ops.where(
            any_present, ops.where(active, smooth, warmup), 0.0)
        self.record(ops.where(active, smooth_weights, warmup_weights))
        return objective

    def end_epoch(self, losses):
        """Counts epochs; after the measuring epoch, fixes the ``n_i``."""
        epochs = float(self.epochs_seen.numpy()) + 1.0
        self.epochs_seen.assign(epochs)
        if epochs == self.warmup_epochs + 1:
            sums, counts = self.loss_sums.numpy(), self.loss_counts.numpy()
            reference = [s / c if c > 0 else 1.0 for s, c in zip(sums, counts)]
            self.reference_losses.assign(reference)

    def get_config(self):
        config = super().get_config()
        config.update({
            "mu": self.mu,
            "warmup_epochs": self.warmup_epochs,
            "preference": self.preference,
        })
        return config
