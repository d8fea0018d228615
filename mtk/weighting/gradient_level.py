"""Gradient-level balancing: methods that look at per-task gradients.

GradNorm watches each task's gradient norm at the shared features and moves
the loss weights; PCGrad changes the gradient of the shared (trunk)
parameters itself. Under tf.distribute the step sums per-task gradients (and
squared norms) over replicas first, so the method sees the global batch's.
"""

import keras
import tensorflow as tf
from keras import ops

from mtk.weighting.base import GradientWeighting
from mtk.weighting.base import LossWeighting
from mtk.weighting.base import check_positive


@keras.saving.register_keras_serializable(package="mtk")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al. 2018): balance gradient norms across tasks.

    Each step, with ``g_i`` the norm of task i's loss gradient at the output of
    the last shared layer, ``G_i = w_i * g_i`` is pulled toward
    ``mean(G) * r_i ** alpha`` (the paper's Eq. 2), where ``r_i`` is task i's
    loss relative to its first-step loss, divided by the mean of those
    ratios. The weights then renormalise to sum to the number of tasks. Use it
    when loss scales differ by orders of magnitude; one extra backward pass to
    the shared features per task.

    Args:
        alpha: how strongly tasks that lag behind get larger weights (the
            paper uses 0.12 to 3; 1.5 is a common default).
        learning_rate: step size of the weight updates (plain gradient
            descent on the paper's ``L_grad``).
        shared_layer: name of the last shared layer, whose output the
            gradient norms are measured at. Default: the features all heads
            read (the pooled trunk output).
    """

    method = "gradnorm"
    needs_feature_gradients = True
    default_learning_rate = 0.025

    def __init__(self, alpha=1.5, shared_layer=None, **kwargs):
        check_positive("GradNorm", "alpha", alpha, allow_zero=True)
        super().__init__(**kwargs)
        self.alpha = alpha
        self.shared_layer = shared_layer

    def build_state(self, num_heads):
        self.task_weights = self.add_state("task_weights", (num_heads,), "ones")
        self.initial_losses = self.add_state("initial_losses", (num_heads,))

    def current_weights(self):
        return {name: self.task_weights[i] for i, name in enumerate(self.head_names)}

    def observe_feature_gradients(self, losses, norms):
        """One GradNorm step on the weights (the targets held constant).

        Args:
            losses: ``(K,)`` float32 task losses of this step.
            norms: ``(K,)`` float32 gradient norms at the shared features.
        """
        first = ops.all(ops.equal(self.initial_losses, 0.0))
        self.initial_losses.assign(ops.where(first, losses, self.initial_losses))
        relative = losses / ops.maximum(self.initial_losses, 1e-12)
        relative = relative / ops.mean(relative)
        weighted = self.task_weights * norms
        target = ops.mean(weighted) * ops.power(relative, self.alpha)
        # d/dw_i of sum_i |w_i g_i - target_i| with the target constant.
        grad = ops.sign(weighted - target) * norms
        weights = ops.maximum(self.task_weights - self.learning_rate * grad, 1e-3)
        count = float(len(self.head_names))
        self.task_weights.assign(weights * count / ops.sum(weights))

    def get_config(self):
        config = super().get_config()
        config.update({"alpha": self.alpha, "shared_layer": self.shared_layer})
        return config


def project_conflicting(gradients, shuffle=True):
    """PCGrad's projection of conflicting task gradients (Yu et al. 2020).

    For each task i, in random order over the other tasks j: when
    ``g_i . g_j < 0``, ``g_i -= (g_i . g_j) / |g_j|^2 * g_j`` (Algorithm 1).

    Args:
        gradients: a ``(K, P)`` tensor: one flattened gradient per task.
        shuffle: visit the other tasks in random order (as the paper does).

    Returns:
        The ``(K, P)`` projected gradients.

    Example:

    >>> g = mtk.weighting.project_conflicting(
    ...     tf.constant([[1.0, 0.0], [-1.0, 1.0]]), shuffle=False)
    >>> g.numpy().tolist()
    [[0.5, 0.5], [0.0, 1.0]]
    """
    coefficients = pcgrad_coefficients(
        ops.matmul(gradients, ops.transpose(gradients)), shuffle=shuffle
    )
    return ops.matmul(coefficients, gradients)


def pcgrad_coefficients(gramian, shuffle=True):
    """PCGrad's projected gradients as combinations of the originals.

    Each projection subtracts a multiple of another task's gradient, so the
    projected ``g_i'`` is ``sum_j C_ij g_j``; the dot products it needs are
    those of the Gramian, kept up to date as ``g_i'`` changes.

    Args:
        gramian: ``(K, K)`` inner products of the task gradients.
        shuffle: visit the other tasks in random order.

    Returns:
        The ``(K, K)`` coefficients ``C``.
    """
    count = gramian.shape[0]
    identity = ops.eye(count, dtype=gramian.dtype)
    rows = []
    for i in range(count):
        row = identity[i]  # g_i' as a combination of the g_j
        order = tf.random.shuffle(tf.range(count)) if shuffle else tf.range(count)
        for k in range(count):
            j = order[k]
            dot = ops.sum(row * tf.gather(gramian, j))  # g_i' . g_j
            conflict = ops.logical_and(ops.not_equal(j, i), ops.less(dot, 0.0))
            coefficient = ops.where(
                conflict, dot / (tf.gather(tf.gather(gramian, j), j) + 1e-12), 0.0
            )
            row = row - coefficient * tf.gather(identity, j)
        rows.append(row)
    return ops.stack(rows)


@keras.saving.register_keras_serializable(package="mtk")
class PCGrad(GradientWeighting):
    """PCGrad (Yu et al. 2020): gradient surgery on the shared trunk.

    On the trunk's trainable parameters each task's gradient is projected
    with `project_conflicting` before they are summed: the update is
    ``G^T w`` with ``w`` the column sums of `pcgrad_coefficients`. Head
    parameters get their own task's gradient. Use it when tasks' gradients
    conflict (negative cosine); it costs one backward pass through the trunk
    per task (one in all with ``rep_grad=True``), and only acts while the
    trunk is trainable.

    Args:
        shuffle: visit the other tasks in random order (the paper's choice).
        rep_grad: see `mtk.weighting.base.GradientWeighting`.
    """

    method = "pcgrad"

    def __init__(self, shuffle=True, **kwargs):
        super().__init__(**kwargs)
        self.shuffle = shuffle

    def gramian_weights(self, gramian, losses):
        return ops.sum(pcgrad_coefficients(gramian, self.shuffle), axis=0)

    def get_config(self):
        config = super().get_config()
        config["shuffle"] = self.shuffle
        return config
