"""The contract every balancing method follows, and static weights.

A method is a `LossWeighting` layer owned by `mtk.MultiTaskModel`
(``model.loss_weighting``). It never sits in the model's call graph, so it is
saved, backed up and restored with the model but never served. The model's
one training step (`mtk.model`) hands it float32 per-head losses whose values
are the masked means over the **global** batch (identical on every replica)
and whose gradients are this replica's share, so a method may combine them in
any differentiable way and stay exact under tf.distribute.

- Loss-level methods implement `combine(losses)`: one backward pass.
- Gradient-level methods subclass `GradientWeighting` and implement
  `gramian_weights(gramian, losses)`: from the ``(K, K)`` Gramian of the
  task gradients (``G G^T``, inner products between tasks' gradients), the
  weights ``w`` of the shared update ``G^T w``. The step computes each
  task's gradient of the shared (trunk) parameters, sums them over replicas,
  and applies ``G^T w``; with ``rep_grad=True`` it takes the gradients at the
  shared features instead (one trunk backward pass, as MGDA-UB does) and
  backpropagates ``sum_i w_i L_i`` into the trunk. Heads always get their own
  task's gradient.
- Methods that watch gradients at the shared features (GradNorm) set
  ``needs_feature_gradients = True`` and implement `observe_feature_gradients`.
- Parameters a method learns by gradient (``learned_variables``) are trained by
  the method's own optimizer at its own ``learning_rate``, independent of the
  model's, so they keep adapting while the model fine-tunes at 1e-5.
- `end_epoch(losses)` runs at the end of each training epoch (DWA).
"""

import math

import keras
from keras import ops


class LossWeighting(keras.layers.Layer):
    """Base class of the balancing methods.

    Args:
        learning_rate: learning rate of the method's own optimizer, for
            methods with ``learned_variables``.
        **kwargs: `keras.layers.Layer` arguments.
    """

    #: Registered method name (``loss_weighting="..."``).
    method = None
    #: Whether the method aggregates per-task gradients of shared parameters.
    gradient_level = False
    #: Whether the method needs per-task gradient norms at the shared features.
    needs_feature_gradients = False
    #: Whether compile-time ``loss_weights`` mean something to the method.
    accepts_loss_weights = False
    #: Default learning rate of the method's own optimizer (if it learns).
    default_learning_rate = None
    min_heads = 2

    def __init__(self, learning_rate=None, **kwargs):
        kwargs.setdefault("name", "loss_weighting")
        super().__init__(**kwargs)
        if learning_rate is None:
            learning_rate = self.default_learning_rate
        if learning_rate is not None:
            check_positive(type(self).__name__, "learning_rate", learning_rate)
        self.learning_rate = learning_rate
        self.head_names = None
        self.optimizer = None

    # === Set-up (called by the model) ===
    def check_heads(self, head_names):
        """Raises if this method cannot weigh these heads."""
        if len(head_names) < self.min_heads:
            raise ValueError(
                f"loss_weighting={self.method!r} balances several tasks; the "
                f"model has {len(head_names)} head(s) ({list(head_names)}). "
                "Use 'static' for a single head."
            )

    def setup(self, head_names):
        """Creates the method's state for these heads, and its optimizer."""
        head_names = list(head_names)
        self.check_heads(head_names)
        self.head_names = head_names
        self.build_state(len(head_names))
        if self.learned_variables:
            self.optimizer = keras.optimizers.Adam(
                self.learning_rate, name="loss_weighting_optimizer"
            )
            self.optimizer.build(self.learned_variables)
        self.built = True

    def build_state(self, num_heads):
        """Creates state variables (override)."""

    def add_state(self, name, shape, initializer="zeros", dtype=None):
        """A state variable the step assigns (not trained by any optimizer).

        Every replica assigns the same value, so ``aggregation="mean"`` keeps
        the mirrored copies equal.
        """
        return self.add_weight(
            shape=shape, initializer=initializer, dtype=dtype, trainable=False,
            aggregation="mean", name=name,
        )

    @property
    def learned_variables(self):
        """Variables the method learns by gradient with its own optimizer.

        They are created with ``trainable=False`` so that the model's
        optimizer (and ``model.trainable_weights``) leaves them alone.
        """
        return []

    # === Per step ===
    def current_weights(self):
        """Dict ``{head: effective weight}`` (float32 tensors), logged as
        ``<head>_loss_weight``; None for methods that log none."""
        raise NotImplementedError

    def combine(self, losses):
        """The training objective from ``{head: float32 loss}``."""
        weights = self.current_weights()
        return ops.sum(
            ops.stack([weights[name] * losses[name] for name in self.head_names])
        )


    def observe_feature_gradients(self, losses, norms):
        """Sees each task's gradient norm at the shared features, per step."""
        raise NotImplementedError

    def end_epoch(self, losses):
        """Sees the epoch's mean training loss per head (Python floats)."""

    def get_config(self):
        config = super().get_config()
        if self.learning_rate is not None:
            config["learning_rate"] = self.learning_rate
        return config


class RecordedWeights(LossWeighting):
    """Base class of methods whose weights are computed each step.

    The step's effective weights are kept in ``last_weights`` (saved with the
    model) and logged as ``<head>_loss_weight``.
    """

    def build_state(self, num_heads):
        self.last_weights = self.add_state("last_weights", (num_heads,), "ones")

    def record(self, weights):
        """Keeps this step's effective weights for logging."""
        self.last_weights.assign(ops.stop_gradient(ops.cast(weights, "float32")))

    def current_weights(self):
        return {name: self.last_weights[i] for i, name in enumerate(self.head_names)}


class GradientWeighting(RecordedWeights):
    """Base class of gradient-level methods: a direction from task gradients.

    Subclasses implement `gramian_weights`. The shared parameters move along
    ``G^T w``, where ``G`` stacks the K task gradients; the loss weights
    logged as ``<head>_loss_weight`` are the last ``w``.

    Args:
        rep_grad: take task gradients at the shared features (the pooled trunk
            output) rather than the trunk's parameters: one backward pass
            through the trunk instead of K, the approximation MGDA-UB (Sener
            & Koltun 2018, Sec. 3.3) makes.
        **kwargs: `LossWeighting` arguments.
    """

    gradient_level = True

    def __init__(self, rep_grad=False, **kwargs):
        if not isinstance(rep_grad, bool):
            raise ValueError(
                f"{type(self).__name__}: rep_grad must be True or False, got "
                f"{rep_grad!r}."
            )
        super().__init__(**kwargs)
        self.rep_grad = rep_grad

    def gramian_weights(self, gramian, losses):
        """The weights ``w`` (``(K,)``) of the shared update ``G^T w``.

        Args:
            gramian: ``(K, K)`` float32 ``G G^T``.
            losses: ``(K,)`` float32 task losses.
        """
        raise NotImplementedError

    def shared_direction(self, gramian, losses):
        """`gramian_weights`, recorded for logging."""
        weights = ops.cast(self.gramian_weights(gramian, losses), "float32")
        self.record(weights)
        return weights

    def feature_direction(self, rows, gramian, losses):
        """With ``rep_grad``: the gradient sent back into the trunk.

        Args:
            rows: ``(K, batch, ...)`` float32 task gradients at the shared
                features (this replica's examples).
            gramian: ``(K, K)`` their Gramian over the global batch.
            losses: ``(K,)`` task losses.

        Returns:
            ``(batch, ...)``: by default ``sum_i w_i rows_i``. Methods that act
            on the features coordinate by coordinate (GradDrop) override it.
        """
        weights = self.shared_direction(gramian, losses)
        return ops.tensordot(weights, rows, axes=1)

    def combine(self, losses):
        # What the heads' own parameters follow: each its task's loss.
        return ops.sum(ops.stack([losses[name] for name in self.head_names]))

    def get_config(self):
        config = super().get_config()
        config["rep_grad"] = self.rep_grad
        return config


@keras.saving.register_keras_serializable(package="mtk")
class StaticWeighting(LossWeighting):
    """Fixed per-head weights: the compile-time ``loss_weights`` dict.

    The default, and the honest baseline: tuned static weights match or beat
    most dynamic methods in careful studies (Kurin et al. 2022; Xin et al.
    2022). Tune them with `mtk.tuning`. Heads left out of ``loss_weights``
    weigh 1.

    Args:
        loss_weights: ``{head: weight}`` to use when ``compile`` gives none
            (e.g. weights found by `mtk.tuning`); compile's ``loss_weights``
            take precedence.

    Example:

    >>> weighting = mtk.weighting.StaticWeighting(loss_weights={"a": 2.0})
    >>> weighting.setup(["a", "b"])
    >>> float(weighting.combine({"a": 1.0, "b": 3.0}))
    5.0
    """

    method = "static"
    accepts_loss_weights = True
    min_heads = 1

    def __init__(self, loss_weights=None, **kwargs):
        super().__init__(**kwargs)
        if loss_weights is not None:
            if not isinstance(loss_weights, dict):
                raise TypeError(
                    "StaticWeighting: loss_weights must be a dict keyed by head "
                    f"name, got {type(loss_weights).__name__}."
                )
            for name, weight in loss_weights.items():
                check_positive("StaticWeighting", f"loss_weights[{name!r}]",
                               weight, allow_zero=True)
            loss_weights = {name: float(w) for name, w in loss_weights.items()}
        self.default_loss_weights = loss_weights

    def setup(self, head_names):
        unknown = sorted(set(self.default_loss_weights or {}) - set(head_names))
        if unknown:
            raise ValueError(
                f"StaticWeighting: loss_weights names head(s) {unknown} that the "
                f"model lacks; its heads are {sorted(head_names)}."
            )
        super().setup(head_names)
        self.set_loss_weights(None)

    def set_loss_weights(self, loss_weights):
        """Sets the weights (``{head: weight}``; missing heads weigh 1).

        None restores the constructor's ``loss_weights`` (or all 1).
        """
        if loss_weights is None:
            loss_weights = self.default_loss_weights or {}
        self.loss_weights = {
            name: float(loss_weights.get(name, 1.0)) for name in self.head_names
        }

    def get_config(self):
        config = super().get_config()
        config["loss_weights"] = self.default_loss_weights
        return config

    def current_weights(self):
        return {
            name: ops.convert_to_tensor(weight, "float32")
            for name, weight in self.loss_weights.items()
        }


def check_positive(owner, argument, value, allow_zero=False):
    """Raises a ValueError unless ``value`` is a finite number > 0 (or >= 0)."""
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"{owner}: {argument} must be a finite number {bound}, got "
            f"{value!r}."
        )


def check_integer(owner, argument, value, minimum=0):
    """Raises a ValueError unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{owner}: {argument} must be an integer >= {minimum}, got {value!r}."
        )


def check_choice(owner, argument, value, choices):
    """Raises a ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"{owner}: {argument} must be one of {list(choices)}, got {value!r}."
        )
