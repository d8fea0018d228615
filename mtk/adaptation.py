"""Domain adaptation: train on labelled source data so that the model also
works on an unlabelled (or barely labelled) target domain.

``build_multitask_model(..., adaptation=...)`` takes one method:

- `DANN` (Ganin et al., JMLR 2016): a domain classifier behind a
  `mtk.layers.GradientReversal` layer on the shared features. The classifier
  learns to tell the domains apart; the reversed gradient teaches the trunk
  features it cannot tell apart. Strong when the shift is large (new sensor,
  new rendering); costs one small extra head.
- `CORAL` (Sun & Saenko, ECCV-W 2016, "Deep CORAL"): aligns the covariances
  of the source and target features of each batch. No extra parameters,
  nearly free; for shifts in feature statistics (lighting, colour).
- `MMD` (Long et al., ICML 2015, "DAN"): a multi-kernel maximum mean
  discrepancy between the source and target features of each batch. Aligns
  the whole distribution, not only second moments; the cost grows with the
  batch size squared.

Data: every example carries a domain label under the key ``"domain"`` of
its labels dict (0: source, 1: target; `DANN` takes ``num_domains``
domains). Target examples are examples whose task labels are all missing:
`mtk.data.with_domain` adds the domain label, `mtk.data.mix` interleaves the
source and target pipelines and fills in the missing task labels.

The method is a layer the model owns (``model.adaptation``), like the
balancing method: saved in the ``.keras`` file, never in the call graph, so
`mtk.export` serves the task heads only. It adds its loss to the training
objective in `mtk.MultiTaskModel`'s step (outside the balancing method's
combination; under gradient-level balancing its gradient is added to the
balanced trunk update) and logs it: ``domain_loss``, ``domain_accuracy`` and
``domain_lambda`` for DANN, ``coral_loss`` / ``mmd_loss`` for the
alignments (also on validation data that carries domain labels). ``loss``
stays the heads' weighted losses, comparable with ``val_loss``.

Under tf.distribute, DANN's loss is a mean over the global batch; CORAL and
MMD compare each replica's own source and target rows, and the replicas'
values are averaged.
"""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtk.layers import GradientReversal
from mtk.losses import MaskedLoss
from mtk.model import LatestValue
from mtk.model import _num_replicas
from mtk.model import replica_sum
from mtk.weighting.base import check_integer
from mtk.weighting.base import check_positive

DOMAIN_KEY = "domain"


def dann_lambda(progress, gamma=10.0):
    """The DANN paper's schedule: ``2 / (1 + exp(-gamma * p)) - 1``.

    Ganin et al. (JMLR 2016, Sec. 5.2.2) raise the gradient reversal factor
    from 0 to nearly 1 over training progress ``p`` in [0, 1], so that the
    domain classifier's noisy early gradients do not disturb the features.

    Example:

    >>> [round(mtk.adaptation.dann_lambda(p), 4) for p in (0.0, 0.5, 1.0)]
    [0.0, 0.9866, 0.9999]
    """
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


def coral(source, target):
    """The CORAL loss of two feature batches: ``||C_s - C_t||_F^2 / (4 d^2)``.

    ``C`` is each batch's feature covariance with Bessel's correction (Sun &
    Saenko 2016, Eq. 1-3); ``d`` the feature size. Both batches need at least
    two rows.

    Example:

    >>> source = np.array([[0.0, 0.0], [2.0, 0.0]], "float32")  # C_s = [[2, 0], [0, 0]]
    >>> target = np.array([[0.0, 0.0], [0.0, 2.0]], "float32")  # C_t = [[0, 0], [0, 2]]
    >>> float(mtk.adaptation.coral(source, target))  # (4 + 4) / (4 * 2**2)
    0.5
    """
    return _masked_coral(*_stacked(source, target))


def mmd(source, target, kernels=(1.0,), bandwidth=1.0):
    """The biased (V-statistic) estimate of the squared MMD of two batches.

    ``mean k(s, s') + mean k(t, t') - 2 mean k(s, t)`` over all pairs, the
    same point included (Gretton et al. 2012, Eq. 5), with the multi-kernel
    ``k(x, y) = mean_m exp(-||x - y||^2 / (kernels[m] * bandwidth))`` of
    Long et al. 2015 (equal kernel weights). ``bandwidth=None`` sets it to
    the mean squared distance between the distinct rows of both batches
    (not differentiated), as common DAN implementations do. Never negative;
    zero for identical batches.

    Example:

    >>> # k = exp(-d^2): k(s1, s2) = k(0, 1) = e^-1, k(s, t) = k(0, 2), k(1, 2).
    >>> source, target = np.array([[0.0], [1.0]]), np.array([[2.0]])
    >>> expected = ((2 + 2 * np.exp(-1)) / 4 + 1
    ...             - 2 * (np.exp(-4) + np.exp(-1)) / 2)
    >>> bool(np.isclose(float(mtk.adaptation.mmd(source, target)), expected))
    True
    """
    return _masked_mmd(*_stacked(source, target), kernels, bandwidth)


def _stacked(source, target):
    """Both batches as one, with the 0/1 masks of their rows."""
    source = ops.convert_to_tensor(source, "float32")
    target = ops.convert_to_tensor(target, "float32")
    in_source = ops.concatenate([
        ops.ones((ops.shape(source)[0],), "float32"),
        ops.zeros((ops.shape(target)[0],), "float32"),
    ])
    return ops.concatenate([source, target]), in_source, 1.0 - in_source


def _masked_coral(features, source, target):
    """CORAL between the rows marked by the 0/1 masks; 0 unless each side
    has 2 rows (no NaN, no NaN gradient)."""
    d = ops.cast(ops.shape(features)[-1], "float32")

    def covariance(mask):
        count = ops.sum(mask)
        weights = mask[:, None]
        mean = ops.sum(features * weights, axis=0) / ops.maximum(count, 1.0)
        centered = (features - mean) * weights
        return ops.matmul(ops.transpose(centered), centered) / ops.maximum(
            count - 1.0, 1.0
        ), count

    c_source, n_source = covariance(source)
    c_target, n_target = covariance(target)
    value = ops.sum(ops.square(c_source - c_target)) / (4.0 * d * d)
    defined = ops.logical_and(n_source >= 2.0, n_target >= 2.0)
    return ops.where(defined, value, 0.0)


def _masked_mmd(features, source, target, kernels, bandwidth):
    """Biased MMD^2 between the rows marked by the 0/1 masks; 0 unless both
    sides have a row."""
    squares = ops.sum(ops.square(features), axis=-1)
    distances = ops.maximum(
        squares[:, None] + squares[None, :]
        - 2.0 * ops.matmul(features, ops.transpose(features)),
        0.0,
    )
    if bandwidth is None:
        used = ops.maximum(source, target)
        pairs = used[:, None] * used[None, :]
        count = ops.sum(used)
        bandwidth = ops.stop_gradient(
            ops.sum(distances * pairs) / ops.maximum(count * count - count, 1.0)
        )
        bandwidth = ops.where(bandwidth > 0.0, bandwidth, 1.0)
    kernel = ops.mean(
        ops.stack([ops.exp(-distances / (m * bandwidth)) for m in kernels]),
        axis=0,
    )

    def mean_kernel(a, b):
        return ops.sum(kernel * (a[:, None] * b[None, :])) / ops.maximum(
            ops.sum(a) * ops.sum(b), 1.0
        )

    value = (
        mean_kernel(source, source)
        + mean_kernel(target, target)
        - 2.0 * mean_kernel(source, target)
    )
    defined = ops.logical_and(ops.sum(source) >= 1.0, ops.sum(target) >= 1.0)
    return ops.where(defined, ops.maximum(value, 0.0), 0.0)


class Adaptation(keras.layers.Layer):
    """Base class of the adaptation methods (owned by `mtk.MultiTaskModel`).

    Subclasses implement `build_parts(feature_shape)` (their layers and
    trackers) and `step_loss(features, domains)`.

    Args:
        weight: the weight of the method's loss in the objective, >= 0.
        num_domains: domain labels are ``0 .. num_domains - 1``; 0 is the
            source (the labelled data).
        domain_key: the labels dict key of the domain labels.
        **kwargs: `keras.layers.Layer` arguments.
    """

    def __init__(self, weight=1.0, num_domains=2, domain_key=DOMAIN_KEY,
                 **kwargs):
        kwargs.setdefault("name", "adaptation")
        super().__init__(**kwargs)
        owner = type(self).__name__
        check_positive(owner, "weight", weight, allow_zero=True)
        check_integer(owner, "num_domains", num_domains, minimum=2)
        if not isinstance(domain_key, str) or not domain_key:
            raise ValueError(
                f"{owner}: domain_key must be a non-empty string, got "
                f"{domain_key!r}."
            )
        self.weight = float(weight)
        self.num_domains = num_domains
        self.domain_key = domain_key
        self._warned_no_target = False

    # === Set-up (called by the model) ===
    def check_heads(self, head_names):
        """Raises if a head's labels would be taken for domain labels."""
        if self.domain_key in head_names:
            raise ValueError(
                f"{type(self).__name__}(domain_key={self.domain_key!r}) reads "
                f"the domain labels under the key of head {self.domain_key!r}; "
                "rename the head or pass another domain_key."
            )

    def setup(self, feature_shape):
        """Creates the method's layers and trackers for these features."""
        if len(feature_shape) != 2:
            raise ValueError(
                f"{type(self).__name__} adapts one feature vector per example; "
                f"the shared features have shape {tuple(feature_shape)}."
            )
        self.targets_seen = self.add_weight(
            shape=(), initializer="zeros", trainable=False, aggregation="sum",
            name="targets_seen",
        )
        self.build_parts(tuple(feature_shape))
        self.built = True

    def build_parts(self, feature_shape):
        raise NotImplementedError

    def log_names(self):
        """The names the method logs (``val_`` + name for validation data)."""
        return [m.name for m in self.metrics]

    def callbacks(self):
        """Callbacks `MultiTaskModel.fit` adds (schedules, the no-target warning)."""
        return [_NoTargetWarning(self)]

    # === Labels ===
    def split_labels(self, labels, required=True, argument="labels"):
        """``(task labels, domain labels)`` from a labels dict.

        Raises:
            ValueError: when ``required`` and the domain labels are missing.
        """
        if isinstance(labels, dict) and self.domain_key in labels:
            labels = dict(labels)
            return labels, labels.pop(self.domain_key)
        if required:
            raise ValueError(
                f"{type(self).__name__} trains on domain labels, but the "
                f"{argument} have no {self.domain_key!r} key. Give every "
                "example one (0: source, 1: target): "
                "mtk.data.with_domain(dataset, domain) on each source, then "
                "mtk.data.mix([...], heads=model)."
            )
        return labels, None

    def check_domain_spec(self, spec, argument="labels"):
        """Raises unless a (batched) domain label spec holds integer ids."""
        dtype = tf.as_dtype(spec.dtype)
        if not dtype.is_integer or tuple(spec.shape[1:]) not in ((), (1,)):
            raise ValueError(
                f"{type(self).__name__}: {argument}[{self.domain_key!r}] must "
                "be one integer domain id per example; got "
                f"{dtype.name} {tuple(spec.shape)}."
            )

    def check_domain_values(self, domains, where=None):
        """Raises unless every domain label is in ``[0, num_domains)``."""
        domains = np.asarray(domains).reshape(-1)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(
                (domains >= 0) & (domains < self.num_domains)
                & (domains == np.floor(domains))
            ))
        if bad.size:
            at = f"example {bad[0]}" + (f" {where}" if where else "")
            raise ValueError(
                f"{type(self).__name__}: domain label {domains[bad[0]]} at "
                f"{at} is not in [0, {self.num_domains}) (0: source, 1: "
                f"target; num_domains={self.num_domains})."
            )

    # === Per step ===
    def loss(self, features, domains, check=True, training=True):
        """This replica's share of the weighted adaptation loss for a batch.

        Updates the method's trackers and the count of target examples seen.

        Args:
            features: the shared features, ``(batch, d)``.
            domains: the batch's domain labels, ``(batch,)`` or ``(batch, 1)``.
            check: guard the domain labels with an assertion (off under XLA).
            training: False for validation data: its target examples do not
                count as seen by training.
        """
        domains = ops.reshape(ops.cast(domains, "int32"), (-1,))
        if check:
            valid = ops.all(
                ops.logical_and(domains >= 0, domains < self.num_domains)
            )
            guard = tf.debugging.Assert(
                valid,
                [f"{type(self).__name__}: a domain label in this batch is not "
                 f"in [0, {self.num_domains}). Domain labels:", domains],
                summarize=20,
            )
            with tf.control_dependencies([guard]):
                domains = tf.identity(domains)
        if training:
            self.targets_seen.assign_add(
                ops.sum(ops.cast(domains >= 1, "float32"))
            )
        value = self.step_loss(ops.cast(features, "float32"), domains)
        return ops.cast(self.weight, "float32") * value

    def step_loss(self, features, domains):
        raise NotImplementedError

    def __repr__(self):
        config = self.get_config()
        arguments = ", ".join(
            f"{k}={v!r}" for k, v in config.items()
            if k not in ("name", "trainable", "dtype")
        )
        return f"{type(self).__name__}({arguments})"

    def get_config(self):
        config = super().get_config()
        config.update({
            "weight": self.weight,
            "num_domains": self.num_domains,
            "domain_key": self.domain_key,
        })
        return config


@keras.saving.register_keras_serializable(package="mtk")
class DANN(Adaptation):
    """Domain-adversarial training (Ganin et al., JMLR 2016).

    A domain classifier (``hidden_units`` ReLU layers, then a softmax over
    ``num_domains``) reads the shared features through a
    `mtk.layers.GradientReversal` layer. Its cross-entropy over every
    example's domain label is added to the objective: the classifier
    minimises it, the trunk (through the reversal) maximises it. Adaptation
    works when ``domain_accuracy`` sinks towards chance (1 / num_domains)
    while the task losses keep falling.

    Args:
        weight: weight of the domain loss, >= 0.
        hidden_units: the classifier's hidden layers (the paper's MNIST
            network: one of 100).
        lambda_: a fixed reversal factor >= 0, or None (default) for the
            paper's schedule ``2 / (1 + exp(-gamma * p)) - 1`` over the
            progress ``p`` of each `fit` (epochs and steps; with data of
            unknown length, whole epochs until the first epoch's steps are
            counted; `fit_transfer`'s fine-tuning phase goes on from where
            its frozen phase's epochs end), set before every step.
        gamma: the schedule's steepness (the paper's 10).
        num_domains: number of domains (labels ``0 .. num_domains - 1``).
        domain_key: the labels dict key of the domain labels.
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> trunk = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8)], name="trunk")
    >>> model = mtk.build_multitask_model(
    ...     trunk, heads=[mtk.heads.Binary("flag")], trunk_weights=None,
    ...     freeze_trunk=False, adaptation=mtk.adaptation.DANN())
    >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    >>> y = {"flag": np.array([1, 0, 1, 0] + [np.nan] * 4, "float32"),
    ...      "domain": np.array([0] * 4 + [1] * 4)}
    >>> sorted(model.fit(x, y, epochs=1, verbose=0).history)
    ['accuracy', 'auc', 'domain_accuracy', 'domain_lambda', 'domain_loss', 'loss']
    """

    def __init__(self, weight=1.0, hidden_units=(100,), lambda_=None,
                 gamma=10.0, num_domains=2, domain_key=DOMAIN_KEY, **kwargs):
        super().__init__(weight=weight, num_domains=num_domains,
                         domain_key=domain_key, **kwargs)
        hidden_units = [int(u) for u in hidden_units]
        if any(u < 1 for u in hidden_units):
            raise ValueError(
                f"DANN: hidden_units must be positive, got {hidden_units}."
            )
        if lambda_ is not None:
            check_positive("DANN", "lambda_", lambda_, allow_zero=True)
            lambda_ = float(lambda_)
        check_positive("DANN", "gamma", gamma)
        self.hidden_units = hidden_units
        self.lambda_ = lambda_
        self.gamma = float(gamma)

    def build_parts(self, feature_shape):
        self.reversal = GradientReversal(
            lambda_=0.0 if self.lambda_ is None else self.lambda_,
            name="gradient_reversal",
        )
        self.classifier = keras.Sequential(
            [keras.Input(feature_shape[1:])]
            + [keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")
               for i, units in enumerate(self.hidden_units)]
            + [keras.layers.Dense(self.num_domains, activation="softmax",
                                  dtype="float32", name="domain")],
            name="domain_classifier",
        )
        self._domain_loss = MaskedLoss(
            "sparse_categorical_crossentropy", label_kind="class_id"
        )
        self.loss_tracker = keras.metrics.Mean(name="domain_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(
            name="domain_accuracy"
        )
        self.lambda_tracker = LatestValue(name="domain_lambda")

    def domain_probabilities(self, features):
        """The domain classifier's softmax output for shared features."""
        return self.classifier(self.reversal(features))

    def step_loss(self, features, domains):
        probabilities = self.domain_probabilities(features)
        total, count = self._domain_loss.sum_and_count(domains, probabilities)
        # As the heads' losses: the value is the global batch's mean, the
        # gradient this replica's share of it.
        totals = replica_sum(ops.stop_gradient(ops.stack([total, count])))
        global_count = ops.maximum(totals[1], 1.0)
        share = total / global_count
        value = totals[0] / global_count
        self.loss_tracker.update_state(value)
        self.accuracy.update_state(domains, probabilities)
        self.lambda_tracker.update_state(self.reversal.lambda_)
        return share + ops.stop_gradient(value - share)

    def callbacks(self):
        schedule = [] if self.lambda_ is not None else [_DANNSchedule(self)]
        return schedule + super().callbacks()

    def get_config(self):
        config = super().get_config()
        config.update({
            "hidden_units": list(self.hidden_units),
            "lambda_": self.lambda_,
            "gamma": self.gamma,
        })
        return config


class FeatureAlignment(Adaptation):
    """An alignment loss between the source (domain 0) and target (domain
    >= 1) rows of each replica's batch; zero when a side has too few rows."""

    loss_name = None

    def build_parts(self, feature_shape):
        self.loss_tracker = keras.metrics.Mean(name=self.loss_name)

    def step_loss(self, features, domains):
        source = ops.cast(domains == 0, "float32")
        target = ops.cast(domains >= 1, "float32")
        value = self.discrepancy(features, source, target)
        self.loss_tracker.update_state(value)
        # Each replica aligns its own rows; the optimizer sums the replicas'
        # gradients, so each contributes its share of their mean.
        return value / _num_replicas()

    def discrepancy(self, features, source, target):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="mtk")
class CORAL(FeatureAlignment):
    """Deep CORAL (Sun & Saenko 2016): align feature covariances.

    Adds ``weight * ||C_s - C_t||_F^2 / (4 d^2)`` (`coral`) between the
    covariances of each batch's source and target features. The paper
    weighs it so that it ends up about as large as the classification loss.

    Args:
        weight: the loss weight, >= 0.
        num_domains: number of domains; every domain >= 1 counts as target.
        domain_key: the labels dict key of the domain labels.
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> mtk.adaptation.get_adaptation("coral")
    CORAL(weight=1.0, num_domains=2, domain_key='domain')
    """

    loss_name = "coral_loss"

    def discrepancy(self, features, source, target):
        return _masked_coral(features, source, target)



@keras.saving.register_keras_serializable(package="mtk")
class MMD(FeatureAlignment):
    """Multi-kernel maximum mean discrepancy (Long et al. 2015, DAN).

    Adds ``weight * MMD^2`` (`mmd`: the biased estimate) between each
    batch's source and target features, with Gaussian kernels of
    bandwidths ``kernels[m] * bandwidth`` averaged.

    Args:
        weight: the loss weight, >= 0.
        kernels: the kernels' bandwidth multipliers (> 0); the default, a
            factor 2 apart around 1, is the usual DAN family.
        bandwidth: the base bandwidth (> 0), or None (default) for each
            batch's mean squared distance between rows.
        num_domains: number of domains; every domain >= 1 counts as target.
        domain_key: the labels dict key of the domain labels.
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> mtk.adaptation.MMD(weight=0.5, kernels=[0.5, 1, 2]).kernels
    [0.5, 1.0, 2.0]
    """

    loss_name = "mmd_loss"

    def __init__(self, weight=1.0, kernels=(0.25, 0.5, 1.0, 2.0, 4.0),
                 bandwidth=None, num_domains=2, domain_key=DOMAIN_KEY,
                 **kwargs):
        super().__init__(weight=weight, num_domains=num_domains,
                         domain_key=domain_key, **kwargs)
        kernels = [kernels] if isinstance(kernels, (int, float)) else list(kernels)
        if not kernels:
            raise ValueError("MMD: kernels is empty; give at least one bandwidth.")
        for value in kernels:
            check_positive("MMD", "kernels", value)
        if bandwidth is not None:
            check_positive("MMD", "bandwidth", bandwidth)
            bandwidth = float(bandwidth)
        self.kernels = [float(k) for k in kernels]
        self.bandwidth = bandwidth

    def discrepancy(self, features, source, target):
        return _masked_mmd(features, source, target, self.kernels, self.bandwidth)

    def get_config(self):
        config = super().get_config()
        config.update({"kernels": list(self.kernels), "bandwidth": self.bandwidth})
        return config


METHODS = {"dann": DANN, "coral": CORAL, "mmd": MMD}


def get_adaptation(adaptation):
    """None, or an unused adaptation object from a name (`METHODS`) or object.

    Example:

    >>> mtk.adaptation.get_adaptation("dann").hidden_units
    [100]
    >>> mtk.adaptation.get_adaptation("grl")
    Traceback (most recent call last):
    ...
    ValueError: Unknown adaptation='grl'. Known names: ['coral', 'dann', 'mmd']; or pass an object: mtk.adaptation.DANN(...), CORAL(...), MMD(...).
    """
    if adaptation is None:
        return None
    if isinstance(adaptation, str) and adaptation.lower() in METHODS:
        return METHODS[adaptation.lower()]()
    if isinstance(adaptation, Adaptation):
        if adaptation.built:
            raise ValueError(
                f"{type(adaptation).__name__} already belongs to a model; "
                "create a new adaptation object for each model."
            )
        return adaptation
    raise ValueError(
        f"Unknown adaptation={adaptation!r}. Known names: {sorted(METHODS)}; "
        "or pass an object: mtk.adaptation.DANN(...), CORAL(...), MMD(...)."
    )


class _DANNSchedule(keras.callbacks.Callback):
    """Sets DANN's reversal factor before each step from the fit's progress."""

    def __init__(self, method):
        super().__init__()
        self.method = method
        self._epoch = 0
        self._steps = None  # an epoch's steps, when the data does not say
        self._last_batch = None

    def on_train_begin(self, logs=None):
        self._steps = self._last_batch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        epochs = self.params.get("epochs") or 1
        steps = self.params.get("steps") or self._steps
        within = min(1.0, batch / steps) if steps else 0.0
        progress = min(1.0, (self._epoch + within) / epochs)
        self.method.reversal.set_lambda(dann_lambda(progress, self.method.gamma))
        self._last_batch = batch

    def on_epoch_end(self, epoch, logs=None):
        if self._steps is None and self._last_batch is not None:
            self._steps = self._last_batch + 1


class _NoTargetWarning(keras.callbacks.Callback):
    """Warns once per model when a fit's first epoch saw no target example."""

    def __init__(self, method):
        super().__init__()
        self.method = method
        self._checked = False

    def on_train_begin(self, logs=None):
        self.method.targets_seen.assign(0.0)
        self._checked = False

    def on_epoch_end(self, epoch, logs=None):
        if self._checked or self.method._warned_no_target:
            return
        self._checked = True
        if float(self.method.targets_seen.numpy()) == 0.0:
            self.method._warned_no_target = True
            warnings.warn(
                f"{type(self.method).__name__}: the training data had no "
                f"target-domain example ({self.method.domain_key!r} >= 1) in "
                "its first epoch: nothing to adapt to. Mix the target data "
                "in: mtk.data.mix([mtk.data.with_domain(source, 0), "
                "mtk.data.with_domain(target, 1)], heads=model).",
                stacklevel=2,
            )
