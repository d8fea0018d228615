"""Task interference: dynamic loss weighting and gradient surgery.

Static loss weights (a compile-time dict) are the default. When tasks pull the
shared trunk in different directions or their losses live on different
scales, one of these may train better; each still trains with ``model.fit``
and `mtk.fit_transfer`, under a tf.distribute strategy too:

- ``"uncertainty"`` (Kendall, Gal & Cipolla 2018): learns one log-variance
  ``s`` per task and minimises ``sum(exp(-s) * loss + s)``. Use it when tasks
  have different noise levels or units (e.g. a regression beside a
  classifier) and you do not want to hand-tune weights.
- ``"dwa"`` (Dynamic Weight Average, Liu et al. 2019): each epoch, weights
  from how fast each task's loss fell over the last two epochs. Use it to
  keep slow-learning tasks from being left behind; it costs nothing per step.
- ``"gradnorm"`` (Chen et al. 2018): weights that push the gradient norms of
  the tasks at the last shared layer toward equal, scaled by each task's
  relative progress (``alpha``). Use it when loss scales differ by orders of
  magnitude; one extra backward pass to the shared features per task.
- ``"pcgrad"`` (Yu et al. 2020): projects each task's gradient on the shared
  (trunk) parameters off the gradients of tasks it conflicts with. Use it when
  tasks' gradients conflict (negative cosine); it costs one backward pass
  through the trunk per task, so a step takes about K times as long as a
  plain one for K tasks, and it only acts while the trunk is trainable.

Effective weights are logged every epoch as ``<head>_loss_weight`` (history
keys, progress bar). The weighting's state lives in the model (it is saved,
restored and backed up with it) but not in its call graph, so the exported
serving model is the same heads. ``val_loss`` stays the compile-time (static)
weighted sum; the per-head ``val_<head>_loss`` are unweighted.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtk.heads import heads_of

METHODS = ("static", "uncertainty", "dwa", "gradnorm", "pcgrad")
_FEATURES_KEY = "shared features"


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


class LossWeighting(keras.layers.Layer):
    """Base class: holds a weighting's state; never called in the model graph.

    Subclasses implement ``combine(losses)`` (the total training loss from a
    dict of per-head losses) and ``current_weights()``. Those that need
    per-task gradients set ``uses_gradients = True`` and implement
    ``gradients(...)``.
    """

    uses_gradients = False
    min_heads = 2

    def check_heads(self, head_names):
        """Raises if this method cannot weigh these heads."""
        if len(head_names) < self.min_heads:
            raise ValueError(
                f"loss_weighting={self.method!r} balances several tasks; the "
                f"model has {len(head_names)} head(s) ({head_names}). Use "
                "'static' for a single head."
            )

    def setup(self, head_names):
        """Creates the state variables for these heads."""
        head_names = list(head_names)
        self.check_heads(head_names)
        self.head_names = head_names
        self.build_state(len(head_names))
        self.built = True

    def build_state(self, num_heads):
        pass

    def current_weights(self):
        """Dict ``{head: effective weight}`` (tensors)."""
        raise NotImplementedError

    def combine(self, losses):
        weights = self.current_weights()
        return ops.sum(
            ops.stack([weights[name] * losses[name] for name in self.head_names])
        )

    def callbacks(self):
        """Keras callbacks the weighting needs during ``fit``."""
        return []

    @property
    def method(self):
        return _METHOD_OF_CLASS[type(self)]


@keras.saving.register_keras_serializable(package="mtk")
class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic uncertainty weights (Kendall et al. 2018).

    Minimises ``sum_i exp(-s_i) * L_i + s_i`` over the task losses ``L_i`` and
    the learned log-variances ``s_i``; the effective weight is ``exp(-s_i)``.

    Example:

    >>> weighting = mtk.weighting.UncertaintyWeighting()
    >>> weighting.setup(["a", "b"])
    >>> float(weighting.combine({"a": 2.0, "b": 3.0}))
    5.0
    """

    def build_state(self, num_heads):
        self.log_variances = self.add_weight(
            shape=(num_heads,), initializer="zeros", name="log_variances"
        )

    def current_weights(self):
        weights = ops.exp(-self.log_variances)
        return {name: weights[i] for i, name in enumerate(self.head_names)}

    def combine(self, losses):
        # The task losses arrive scaled by 1/replicas (Keras sums replica
        # gradients); scale the regulariser the same way.
        regulariser = ops.sum(self.log_variances) / _num_replicas()
        return super().combine(losses) + regulariser


def dwa_weights(previous, before_previous, temperature=2.0):
    """Dynamic Weight Average weights from two epochs of task losses.

    ``w_i = K * softmax_i(r / T)`` with ``r_i = L_i(t-1) / L_i(t-2)``.

    Args:
        previous: list of each task's loss in the last epoch.
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
    per-head training losses of the two epochs before.

    Args:
        temperature: the softmax temperature ``T`` (the paper uses 2).
    """

    def __init__(self, temperature=2.0, **kwargs):
        if temperature <= 0:
            raise ValueError(
                f"DynamicWeightAverage: temperature must be > 0, got "
                f"{temperature}."
            )
        super().__init__(**kwargs)
        self.temperature = temperature

    def build_state(self, num_heads):
        self.task_weights = self.add_weight(
            shape=(num_heads,),
            initializer="ones",
            trainable=False,
            name="task_weights",
        )

    def current_weights(self):
        return {name: self.task_weights[i] for i, name in enumerate(self.head_names)}

    def callbacks(self):
        return [_DWACallback(self)]

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config


class _DWACallback(keras.callbacks.Callback):
    """Sets DWA's weights at each epoch end from the logged head losses."""

    def __init__(self, weighting):
        super().__init__()
        self.weighting = weighting
        self.loss_history = []

    def on_epoch_end(self, epoch, logs=None):
        names = self.weighting.head_names
        self.loss_history.append([float(logs[f"{name}_loss"]) for name in names])
        if len(self.loss_history) >= 2:
            self.weighting.task_weights.assign(
                dwa_weights(
                    self.loss_history[-1],
                    self.loss_history[-2],
                    self.weighting.temperature,
                )
            )


@keras.saving.register_keras_serializable(package="mtk")
class GradNorm(LossWeighting):
    """GradNorm (Chen et al. 2018): balance gradient norms across tasks.

    Each step, with ``g_i`` the norm of task i's loss gradient at the output of
    the last shared layer, ``G_i = w_i * g_i`` is pulled toward
    ``mean(G) * r_i ** alpha``, where ``r_i`` is task i's loss relative to its
    first-step loss, divided by the mean of those ratios. The weights then
    renormalise to sum to the number of tasks.

    Args:
        alpha: how strongly tasks that lag behind get larger weights (the
            paper uses 0.12 to 3; 1.5 is a common default).
        learning_rate: step size of the weight updates.
        shared_layer: name of the last shared layer, whose output the
            gradient norms are measured at. Default: the layer whose output
            all heads read (the pooled trunk features).
    """

    uses_gradients = True

    def __init__(self, alpha=1.5, learning_rate=0.025, shared_layer=None, **kwargs):
        if alpha < 0 or learning_rate <= 0:
            raise ValueError(
                "GradNorm: alpha must be >= 0 and learning_rate > 0, got "
                f"alpha={alpha}, learning_rate={learning_rate}."
            )
        super().__init__(**kwargs)
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.shared_layer = shared_layer

    def build_state(self, num_heads):
        # Replicas apply the same update; "mean" keeps mirrored copies equal.
        self.task_weights = self.add_weight(
            shape=(num_heads,), initializer="ones", trainable=False,
            aggregation="mean", name="task_weights",
        )
        self.initial_losses = self.add_weight(
            shape=(num_heads,), initializer="zeros", trainable=False,
            aggregation="mean", name="initial_losses",
        )

    def current_weights(self):
        return {name: self.task_weights[i] for i, name in enumerate(self.head_names)}

    def shared_features(self, model):
        """The symbolic output of the last shared layer in ``model``'s graph."""
        if self.shared_layer is None:
            # By default: the features every head reads.
            inputs = {id(head.input) for head in heads_of(model).values()}
            if len(inputs) == 1:
                return next(iter(heads_of(model).values())).input
            raise ValueError(
                "GradNorm measures gradients at the last shared layer, but "
                "the heads do not read one common layer; name it with "
                "mtk.weighting.GradNorm(shared_layer=<layer name>)."
            )
        names = [
            layer.name for layer in model.layers
            if not isinstance(layer, keras.Model)
        ]
        if self.shared_layer not in names:
            raise ValueError(
                "GradNorm measures gradients at the last shared layer, but "
                f"the model has no (non-nested) layer named "
                f"{self.shared_layer!r}. Name one with "
                f"mtk.weighting.GradNorm(shared_layer=...), one of {names}."
            )
        return model.get_layer(self.shared_layer).output

    def update(self, losses, shared_gradient_norms):
        """One GradNorm step on the weights (the targets held constant)."""
        losses = ops.stack([losses[name] for name in self.head_names])
        losses = ops.cast(ops.stop_gradient(losses), "float32")
        first = ops.all(ops.equal(self.initial_losses, 0.0))
        self.initial_losses.assign(
            ops.where(first, losses, self.initial_losses)
        )
        relative = losses / ops.maximum(self.initial_losses, 1e-12)
        relative = relative / ops.mean(relative)
        norms = shared_gradient_norms
        weighted = self.task_weights * norms
        target = ops.mean(weighted) * ops.power(relative, self.alpha)
        # d/dw_i of sum_i |w_i g_i - target_i| with the target constant.
        grad = ops.sign(weighted - target) * norms
        weights = ops.maximum(self.task_weights - self.learning_rate * grad, 1e-3)
        count = float(len(self.head_names))
        self.task_weights.assign(weights * count / ops.sum(weights))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "learning_rate": self.learning_rate,
                "shared_layer": self.shared_layer,
            }
        )
        return config


def project_conflicting(gradients, shuffle=True):
    """PCGrad's projection of conflicting task gradients (Yu et al. 2020).

    For each task i, in random order over the other tasks j: when
    ``g_i . g_j < 0``, ``g_i -= (g_i . g_j) / |g_j|^2 * g_j``.

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
    count = gradients.shape[0]
    squared_norms = ops.sum(gradients * gradients, axis=1)
    projected = []
    for i in range(count):
        g = gradients[i]
        order = tf.random.shuffle(tf.range(count)) if shuffle else tf.range(count)
        for k in range(count):
            j = order[k]
            other = tf.gather(gradients, j)
            dot = ops.sum(g * other)
            conflict = ops.logical_and(ops.not_equal(j, i), ops.less(dot, 0.0))
            coefficient = ops.where(
                conflict, dot / (tf.gather(squared_norms, j) + 1e-12), 0.0
            )
            g = g - coefficient * other
        projected.append(g)
    return ops.stack(projected)


@keras.saving.register_keras_serializable(package="mtk")
class PCGrad(LossWeighting):
    """PCGrad (Yu et al. 2020): gradient surgery on the shared trunk.

    Task losses are summed with weight 1; on the trunk's trainable
    parameters each task's gradient is projected with `project_conflicting`
    before they are summed. Head parameters get their own task's gradient.
    """

    uses_gradients = True

    def current_weights(self):
        return {name: ops.ones(()) for name in self.head_names}


_METHOD_OF_CLASS = {
    UncertaintyWeighting: "uncertainty",
    DynamicWeightAverage: "dwa",
    GradNorm: "gradnorm",
    PCGrad: "pcgrad",
}
_CLASS_OF_METHOD = {method: cls for cls, method in _METHOD_OF_CLASS.items()}


def get_loss_weighting(loss_weighting):
    """Resolves a method name or `LossWeighting` object (None for static).

    Example:

    >>> type(mtk.weighting.get_loss_weighting("dwa")).__name__
    'DynamicWeightAverage'
    """
    if loss_weighting is None or loss_weighting == "static":
        return None
    if isinstance(loss_weighting, LossWeighting):
        return loss_weighting
    if isinstance(loss_weighting, str) and loss_weighting in _CLASS_OF_METHOD:
        return _CLASS_OF_METHOD[loss_weighting](name="loss_weighting")
    raise ValueError(
        f"Unknown loss_weighting {loss_weighting!r}; expected one of "
        f"{METHODS} or an mtk.weighting.LossWeighting object."
    )


@keras.saving.register_keras_serializable(package="mtk")
class MultiTaskModel(keras.Model):
    """A functional multi-task model trained with a dynamic loss weighting.

    `mtk.build_multitask_model(..., loss_weighting=...)` returns one; it is a
    functional `keras.Model` in every other respect.
    """

    def __init__(self, *args, loss_weighting=None, **kwargs):
        super().__init__(*args, **kwargs)
        # from_config revives the graph first and sets the weighting after.
        self.loss_weighting = None
        if loss_weighting is not None:
            self._set_weighting(loss_weighting)

    def _set_weighting(self, loss_weighting):
        weighting = get_loss_weighting(loss_weighting)
        if weighting is None:
            raise ValueError(
                "MultiTaskModel needs a dynamic loss_weighting; use a plain "
                "keras.Model for static weights."
            )
        heads = heads_of(self)
        weighting.setup(heads)
        # Each head's own (unweighted, masked) loss, for the dynamic total.
        self._head_loss_objects = {n: h.get_loss() for n, h in heads.items()}
        self._features_model = None
        if isinstance(weighting, GradNorm):
            # Same layers, one forward pass giving the shared features too.
            outputs = dict(zip(self.output_names, self.outputs))
            # The key is no valid head name, so it cannot clash with one.
            outputs[_FEATURES_KEY] = weighting.shared_features(self)
            self._features_model = keras.Model(self.inputs, outputs)
        self.loss_weighting = weighting

    def _task_losses(self, y, y_pred, sample_weight):
        losses = {}
        for name in self.loss_weighting.head_names:
            weight = sample_weight.get(name) if isinstance(sample_weight, dict) else sample_weight
            losses[name] = self._head_loss_objects[name](y[name], y_pred[name], weight)
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Keras' own loss keeps the per-head loss logs and, outside training,
        # is the (static) loss that evaluate() reports.
        static_total = super().compute_loss(x, y, y_pred, sample_weight, training)
        if not training:
            return static_total
        total = self.loss_weighting.combine(self._task_losses(y, y_pred, sample_weight))
        if self.losses:
            total = total + ops.sum(self.losses) / _num_replicas()
        return total

    def train_step(self, data):
        if self.loss_weighting.uses_gradients:
            logs = self._surgery_train_step(data)
        else:
            logs = super().train_step(data)
        logs = dict(logs)
        for name, weight in self.loss_weighting.current_weights().items():
            logs[f"{name}_loss_weight"] = weight
        return logs

    def _surgery_train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        weighting = self.loss_weighting
        with tf.GradientTape(persistent=True) as tape:
            if self._features_model is not None:
                y_pred = dict(self._features_model(x, training=True))
                features = y_pred.pop(_FEATURES_KEY)
            else:
                y_pred = self(x, training=True)
            total = self.compute_loss(x, y, y_pred, sample_weight, training=True)
            losses = self._task_losses(y, y_pred, sample_weight)
        # The loss tracker behind the "loss" log, as Keras' train_step does.
        self._loss_tracker.update_state(
            total * _num_replicas(), sample_weight=tf.shape(tf.nest.flatten(x)[0])[0]
        )
        variables = self.trainable_weights
        if isinstance(weighting, GradNorm):
            norms = ops.stack(
                [ops.sqrt(ops.sum(ops.square(tape.gradient(losses[n], features))))
                 for n in weighting.head_names]
            )
            gradients = tape.gradient(total, variables)
            weighting.update(losses, norms)
        else:
            gradients = self._pcgrad_gradients(tape, total, losses, variables)
        del tape
        self.optimizer.apply_gradients(
            [(g, v) for g, v in zip(gradients, variables) if g is not None]
        )
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _pcgrad_gradients(self, tape, total, losses, variables):
        shared_ids = {id(v) for v in self.get_layer("trunk").trainable_weights}
        shared = [v for v in variables if id(v) in shared_ids]
        others = [v for v in variables if id(v) not in shared_ids]
        names = self.loss_weighting.head_names
        # Heads' own parameters: each gets only its task's gradient anyway.
        by_variable = dict(zip(map(id, others), tape.gradient(total, others)))
        if shared:
            flat = []
            for name in names:
                grads = tape.gradient(losses[name], shared)
                flat.append(ops.concatenate(
                    [ops.reshape(ops.zeros_like(v) if g is None else g, (-1,))
                     for g, v in zip(grads, shared)]))
            summed = ops.sum(project_conflicting(ops.stack(flat)), axis=0)
            offset = 0
            for v in shared:
                size = int(np.prod(v.shape))
                by_variable[id(v)] = ops.reshape(summed[offset:offset + size], v.shape)
                offset += size
        return [by_variable[id(v)] for v in variables]

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or []) + self.loss_weighting.callbacks()
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["loss_weighting"] = keras.saving.serialize_keras_object(
            self.loss_weighting
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        weighting = keras.saving.deserialize_keras_object(
            config.pop("loss_weighting"), custom_objects=custom_objects
        )
        model = super().from_config(config, custom_objects)
        model._set_weighting(weighting)
        return model
