"""`MultiTaskModel`: the one multi-task model class, and its training step.

A `MultiTaskModel` is a functional `keras.Model`: raw input ->
preprocessing -> the trunk (one nested layer named ``"trunk"``) -> pooled
features -> one head per task (dense heads, `mtk.dense_heads`, read the
trunk's feature map instead). Its outputs are a dict keyed by head name.
``model.trunk``, ``model.heads`` (dict by name) and ``model.loss_weighting``
are its parts; `mtk.build_multitask_model` resolves them from short names.

One training step serves every balancing method (`mtk.weighting`):

1. Each head's masked loss is its summed loss over present labels divided by
   the number of labels present in the **global** batch (the counts are
   summed over tf.distribute replicas), so one device and N replicas give
   the same loss and the same update on the same global batch.
2. The method combines the float32 per-head losses (loss level), or
   aggregates the per-task gradients of the trunk's parameters (gradient
   level); GradNorm also sees per-task gradient norms at the shared
   features.
3. The optimizer's loss scaling is applied before any gradient is taken
   (mixed precision), and the method's own learned parameters (e.g.
   uncertainty's log-variances) are updated by its own optimizer.

``loss`` and ``val_loss`` are the same quantity for every method: the heads'
losses weighted by the compile-time ``loss_weights`` (1 each under a dynamic
method) plus regularisation losses. ``<head>_loss`` is each head's unweighted
masked loss; dynamic methods also log ``<head>_loss_weight``.
"""

import inspect
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtk.dense_heads import connect_dense
from mtk.dense_heads import reads_feature_map
from mtk.heads import Head
from mtk.heads import check_head_dict
from mtk.heads import check_loss_weights as check_loss_weight_values
from mtk.losses import MaskedMetric
from mtk.sharing import get_sharing
from mtk.trunks import TRUNK_NAME
from mtk.trunks import TrunkParts
from mtk.trunks import input_config
from mtk.trunks import named_inputs
from mtk.weighting import get_loss_weighting

# Output keys of the shared features in the internal features view; they are
# no valid head names (head names are identifiers), so they cannot clash.
_FEATURES_KEY = "shared features"
_ADAPTED_KEY = "adapted features"


def check_heads(heads):
    """A list of distinct, unused `mtk.heads.Head` objects, or an error.

    Example:

    >>> [h.name for h in mtk.model.check_heads(mtk.heads.Binary("flag"))]
    ['flag']
    """
    if isinstance(heads, Head):
        heads = [heads]
    heads = list(heads)
    if not heads:
        raise ValueError("heads is empty; give at least one mtk.heads.Head.")
    names = []
    for head in heads:
        if not isinstance(head, Head):
            raise TypeError(
                "heads must be mtk.heads.Head objects (Classification, Binary, "
                "MultiLabel, Regression, Segmentation, DenseRegression); got "
                f"{head!r}."
            )
        if head.name in names:
            raise ValueError(
                f"Head name {head.name!r} is used twice; head names must be "
                "distinct."
            )
        if head.built:
            raise ValueError(
                f"Head {head.name!r} already belongs to a model; create a new "
                "head object for each model."
            )
        names.append(head.name)
    return heads


def check_loss_weights(loss_weights, head_names, loss_weighting):
    """Raises unless ``loss_weights`` fit the heads and the balancing method.

    Example:

    >>> mtk.model.check_loss_weights({"a": 2.0}, ["a", "b"], "uncertainty")
    Traceback (most recent call last):
    ...
    ValueError: loss_weights fixes each head's weight, but loss_weighting='uncertainty' sets the weights itself. ...
    """
    if loss_weights is None:
        return
    check_loss_weight_values(loss_weights, head_names)
    method = getattr(loss_weighting, "method", loss_weighting)
    accepts = getattr(loss_weighting, "accepts_loss_weights", method == "static")
    if not accepts:
        raise ValueError(
            f"loss_weights fixes each head's weight, but "
            f"loss_weighting={method!r} sets the weights itself. Choose one: "
            "drop loss_weights, or use loss_weighting='static' (and tune the "
            "static weights with mtk.tuning)."
        )


def replica_sum(value):
    """Sums a tensor over the replicas in sync (the identity for one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _flatten(gradients, variables):
    return ops.concatenate(
        [
            ops.reshape(
                ops.zeros(v.shape, "float32") if g is None else ops.cast(g, "float32"),
                (-1,),
            )
            for g, v in zip(gradients, variables)
        ]
    )


def _unflatten(flat, variables):
    gradients, offset = [], 0
    for v in variables:
        size = int(np.prod(v.shape))
        gradients.append(
            ops.cast(ops.reshape(flat[offset:offset + size], v.shape), v.dtype)
        )
        offset += size
    return gradients


@keras.saving.register_keras_serializable(package="mtk")
class MultiTaskModel(keras.Model):
    """A shared trunk with one named head per task, trained as one model.

    Args:
        trunk: the shared network, a `keras.Model` named ``"trunk"`` (e.g.
            `mtk.trunks.Trunk`); `mtk.build_multitask_model` makes one from a
            keras.applications name, a keras-hub preset, a ``.keras`` file or
            a model.
        heads: `mtk.heads.Head` objects with distinct names.
        input_shape: the raw input's per-example shape (default: the
            trunk's input shape); a dict ``{name: shape}`` for a trunk with
            named inputs (default: the trunk's, so the model's input is the
            same dict).
        input_dtype: the raw input's dtype (default: the trunk's); a dict
            for named inputs.
        input_name: the input's name, the serving signature's input key.
        preprocessing: a layer between the raw input and the trunk (e.g.
            `mtk.preprocessing.ApplicationPreprocessing`), or None.
        loss_weighting: the balancing method: a name from
            `mtk.weighting.METHODS` or an `mtk.weighting.LossWeighting`.
        sharing: how heads read the trunk: ``"hard"`` (default), a name
            from `mtk.sharing.METHODS` or an `mtk.sharing.Sharing` object
            (`mtk.sharing.MMoE`, ``CGC``, ``PLE``, ``MTAN``,
            ``CrossStitch``). ``model.trunk`` is then the nested model the
            method builds from ``trunk`` (e.g. one copy per head for
            cross-stitch).
        adaptation: None, or a domain adaptation method on the features
            every head reads (`mtk.adaptation`: ``DANN``, ``CORAL``,
            ``MMD``, or their lower-case names). Training-only: it is no
            output of the model.
        **kwargs: `keras.Model` arguments (``name``, ``trainable``).

    Example:

    >>> trunk = keras.Sequential(
    ...     [keras.Input((4,)), keras.layers.Dense(8)], name="trunk")
    >>> model = mtk.MultiTaskModel(
    ...     trunk, [mtk.heads.Regression("price"), mtk.heads.Binary("flag")],
    ...     loss_weighting="uncertainty")
    >>> model.compile(optimizer="adam")
    >>> sorted(model.heads), model.trunk.name
    (['flag', 'price'], 'trunk')
    """

    def __init__(
        self,
        trunk,
        heads,
        *,
        input_shape=None,
        input_dtype=None,
        input_name="inputs",
        preprocessing=None,
        loss_weighting="static",
        sharing="hard",
        adaptation=None,
        **kwargs,
    ):
        from mtk.adaptation import get_adaptation  # it imports this module

        heads = check_heads(heads)
        adaptation = get_adaptation(adaptation)
        if adaptation is not None:
            adaptation.check_heads([head.name for head in heads])
        weighting = get_loss_weighting(loss_weighting)
        weighting.check_heads([head.name for head in heads])
        sharing = get_sharing(sharing)
        if not isinstance(trunk, keras.Model) or trunk.name != TRUNK_NAME:
            raise ValueError(
                f"trunk must be a keras.Model named {TRUNK_NAME!r} (found by "
                "model.get_layer('trunk') for freezing and fine-tuning); got "
                f"{trunk!r}. mtk.build_multitask_model(trunk=...) wraps any "
                "keras.Model."
            )
        named = named_inputs(trunk) if preprocessing is None else None
        if named is not None and input_shape is None:
            # A trunk with named inputs (a table's columns, a combined
            # trunk): the model takes the same dict.
            input_shape = {k: tuple(x.shape[1:]) for k, x in named.items()}
            input_dtype = {k: x.dtype for k, x in named.items()}
        if input_shape is None:
            if preprocessing is not None:
                raise ValueError(
                    "input_shape is needed with preprocessing: the raw input's "
                    "shape differs from the trunk's."
                )
            input_shape = tuple(trunk.inputs[0].shape[1:])
        if input_dtype is None:
            input_dtype = trunk.inputs[0].dtype if preprocessing is None else "float32"
        if not isinstance(input_shape, dict):
            input_shape = tuple(input_shape)
        else:
            clash = sorted(set(input_shape) & {head.name for head in heads})
            if clash:
                raise ValueError(
                    f"Head(s) {clash} have the name of an input feature; "
                    "inputs and outputs share one namespace (the served "
                    "signature's keys): rename the head(s)."
                )
        parts = TrunkParts(
            trunk, input_shape, input_dtype, input_name, preprocessing
        )

        # === Functional model ===
        if any(reads_feature_map(head) for head in heads):
            # Dense heads decode the feature map; image-level ones pool it.
            connection = connect_dense(sharing, parts, heads)
        else:
            connection = sharing.connect(parts, [head.name for head in heads])
        inputs = connection.inputs
        outputs = {head.name: head(connection.features[head.name]) for head in heads}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Parts and training state ===
        self.trunk = connection.trunk
        self.sharing = sharing
        # The trunk as given (the config's), when the method derived another.
        object.__setattr__(self, "_source_trunk", trunk)
        object.__setattr__(self, "_shared_layers", list(connection.shared_layers))
        self.preprocessing = preprocessing
        self.heads = {head.name: head for head in heads}
        self._input_config = input_config(parts)
        weighting.setup(list(self.heads))
        self.loss_weighting = weighting
        # Each head's own (unweighted, masked) loss, built once.
        self._head_loss_objects = {n: h.get_loss() for n, h in self.heads.items()}
        # A one-head model logs as a one-output Keras model does: its "loss"
        # is the head's.
        self._head_loss_trackers = [
            keras.metrics.Mean(name=f"{name}_loss") for name in self.heads
        ] if len(self.heads) > 1 else []
        # Dynamic methods log their weights; as metrics, so that Keras reads
        # every log at epoch end across replicas (it falls back to averaging
        # per-replica step logs when a step returns keys no metric has).
        self._loss_weight_trackers = (
            [] if weighting.method == "static"
            else [LatestValue(name=f"{name}_loss_weight") for name in self.heads]
        )
        self._loss_weights = {name: 1.0 for name in self.heads}
        # A view of the same layers that also returns the shared features,
        # for methods that need gradients there. Not tracked: its layers are
        # this model's.
        view = {}
        if weighting.needs_feature_gradients or getattr(weighting, "rep_grad", False):
            shared_layer = getattr(weighting, "shared_layer", None)
            if connection.common is None and shared_layer is None:
                raise ValueError(
                    f"{type(weighting).__name__} takes gradients at the features "
                    f"every head reads, but sharing={sharing!r} gives each head "
                    "its own features with no one tensor in common. Use a "
                    "gradient-level method without rep_grad, a loss-level "
                    "method, or hard / MMoE / CGC / PLE sharing."
                )
            view[_FEATURES_KEY] = self._shared_features(
                connection.common, shared_layer
            )
        if adaptation is not None:
            if connection.common is None:
                raise ValueError(
                    f"{type(adaptation).__name__} adapts the features every "
                    f"head reads, but sharing={sharing!r} gives each head its "
                    "own features with no one tensor in common. Use hard / "
                    "MMoE / CGC / PLE sharing."
                )
            view[_ADAPTED_KEY] = connection.common
            adaptation.setup(tuple(connection.common.shape))
        # Training-only, never served: saved with the model as the balancing
        # method is.
        self.adaptation = adaptation
        features_model = keras.Model(inputs, {**outputs, **view}) if view else None
        object.__setattr__(self, "_features_model", features_model)

    def _shared_features(self, features, layer_name):
        if layer_name is None:
            return features
        names = [
            layer.name for layer in self.layers
            if not isinstance(layer, (keras.Model, Head))
        ]
        if layer_name not in names:
            raise ValueError(
                f"{type(self.loss_weighting).__name__}(shared_layer="
                f"{layer_name!r}) names no (non-nested) layer of the model; "
                f"its layers are {names}."
            )
        return self.get_layer(layer_name).output

    # === Compilation ===
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None,
                metrics=None, **kwargs):
        """`keras.Model.compile`, with each head's masked loss built in.

        Args:
            optimizer: as for `keras.Model.compile`.
            loss: must be None: each head carries its loss (e.g.
                ``Regression("price", loss="huber")``).
            loss_weights: dict ``{head: weight}`` for the ``"static"``
                method (missing heads weigh 1); other methods set weights
                themselves and refuse it.
            metrics: dict ``{head: [keras.metrics.Metric]}``; heads left out
                get their default metrics. Every metric skips missing labels.
            **kwargs: other `keras.Model.compile` arguments (``jit_compile``,
                ``steps_per_execution``, ...).
        """
        if loss is not None:
            raise ValueError(
                "MultiTaskModel.compile takes no loss: each head carries its "
                "own masked loss (e.g. mtk.heads.Regression('price', "
                "loss='huber')), and loss_weighting= sets how they combine."
            )
        names = list(self.heads)
        check_loss_weights(loss_weights, names, self.loss_weighting)
        if self.loss_weighting.accepts_loss_weights:
            self.loss_weighting.set_loss_weights(loss_weights)
            self._loss_weights = dict(self.loss_weighting.loss_weights)
        else:
            self._loss_weights = {name: 1.0 for name in names}
        metrics = self._head_metrics(metrics)
        self._metric_names = {h: [m.name for m in ms] for h, ms in metrics.items()}
        super().compile(
            optimizer=optimizer,
            loss=None,
            # Recorded for get_compile_config (recompile, saving, tuning).
            loss_weights=(
                dict(self._loss_weights)
                if self.loss_weighting.accepts_loss_weights else None
            ),
            metrics=metrics,
            **kwargs,
        )

    def log_names(self):
        """The names `fit` logs for training data (``val_`` + name for
        validation data), as Keras names them: ``<head>_<metric>`` with
        several heads, the bare metric with one.

        Example:

        >>> model = mtk.build_multitask_model(
        ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
        ...     heads=[mtk.heads.Binary("flag"), mtk.heads.Regression("price")],
        ...     trunk_weights=None, loss_weighting="dwa")
        >>> model.log_names()
        ['loss', 'flag_loss', 'price_loss', 'flag_accuracy', 'flag_auc', 'price_mae', 'flag_loss_weight', 'price_loss_weight']
        """
        if not self.compiled:
            raise ValueError(
                f"Model {self.name!r} is not compiled; what it logs depends on "
                "its compiled metrics."
            )
        several = len(self.heads) > 1
        names = ["loss"] + [tracker.name for tracker in self._head_loss_trackers]
        for head, metrics in self._metric_names.items():
            names += [f"{head}_{m}" if several else m for m in metrics]
        names += [tracker.name for tracker in self._loss_weight_trackers]
        return names + (self.adaptation.log_names() if self.adaptation else [])

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _head_metrics(self, metrics):
        metrics = {} if metrics is None else metrics
        check_head_dict("metrics", metrics, list(self.heads))
        result = {}
        for name, head in self.heads.items():
            given = metrics.get(name)
            if given is None:
                result[name] = head.get_metrics()
                continue
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            result[name] = [
                m if isinstance(m, MaskedMetric) else head.get_metrics(extra=[m])[-1]
                for m in given
            ]
        return result

    # === Training step ===
    def _forward(self, x, training):
        """Outputs, shared features (for the balancing method) and adapted
        features (for the adaptation method); None where not needed."""
        if self._features_model is None:
            return self(x, training=training), None, None
        outputs = dict(self._features_model(x, training=training))
        return (outputs, outputs.pop(_FEATURES_KEY, None),
                outputs.pop(_ADAPTED_KEY, None))

    def _split_domains(self, y, required=True):
        """``(task labels, domain labels or None)``."""
        if self.adaptation is None:
            return y, None
        return self.adaptation.split_labels(y, required=required)

    def _adaptation_loss(self, adapted, domains, training=True):
        if self.adaptation is None:
            return ops.zeros((), "float32")
        return self.adaptation.loss(
            adapted, domains, check=not self.jit_compile, training=training)

    def _head_losses(self, y, y_pred, sample_weight):
        """Per-head losses over the global batch.

        Returns:
            ``(losses, values)``: ``losses`` maps each head to a float32
            scalar whose value is the head's masked mean over the global
            batch and whose gradient is this replica's share of it;
            ``values`` is the ``(K,)`` vector of those values.
        """
        if not isinstance(y, dict):
            check_head_dict("labels", y, list(self.heads))
        sums, counts = [], []
        for name in self.heads:
            if name not in y:
                check_head_dict("labels", y, list(self.heads), complete=True)
        guards = self._label_guards(y)
        if guards:
            # Everything that reads a label, the update too, waits for them.
            with tf.control_dependencies(guards):
                y = {name: tf.identity(y[name]) for name in self.heads}
        for name in self.heads:
            weight = (
                sample_weight.get(name) if isinstance(sample_weight, dict)
                else sample_weight
            )
            total, count = self._head_loss_objects[name].sum_and_count(
                y[name], y_pred[name], weight
            )
            sums.append(total)
            counts.append(count)
        sums, counts = ops.stack(sums), ops.stack(counts)
        num_heads = len(self.heads)
        # One all-reduce for the global sums and label counts of all heads.
        totals = replica_sum(ops.stop_gradient(ops.concatenate([sums, counts])))
        global_counts = ops.maximum(totals[num_heads:], 1.0)
        values = totals[:num_heads] / global_counts
        shares = sums / global_counts
        # Value: the global mean; gradient: this replica's share (replicas'
        # gradients are summed). Any combination f(losses) is then exact.
        losses = shares + ops.stop_gradient(values - shares)
        return {name: losses[i] for i, name in enumerate(self.heads)}, values

    def _label_guards(self, y):
        """Checks each batch's labels against its head's contract, in the step.

        The data is checked whole (arrays) or on its first batch (tf.data)
        before training; this catches a later batch that breaks the
        contract, naming the head, before its loss is computed. XLA has no
        assertions: under ``jit_compile=True`` only the up-front checks run.
        """
        if self.jit_compile:
            return []
        return [
            tf.debugging.Assert(
                head.labels_valid(y[name]),
                # No quotes: TensorFlow escapes them in the error it prints.
                [f"Head {name} ({type(head).__name__}): a label in this batch "
                 f"breaks the contract of the head: {head.label_contract()}. "
                 "Labels:",
                 y[name]],
                summarize=20,
            )
            for name, head in self.heads.items()
        ]

    def _regularization(self):
        if not self.losses:
            return ops.zeros((), "float32")
        return ops.sum(
            ops.stack([ops.cast(ops.sum(loss), "float32") for loss in self.losses])
        )

    def _track_losses(self, x, values, regularization):
        batch_size = ops.shape(tf.nest.flatten(x)[0])[0]
        weights = ops.convert_to_tensor(
            [self._loss_weights[name] for name in self.heads], "float32"
        )
        self._loss_tracker.update_state(
            ops.sum(weights * values) + regularization, sample_weight=batch_size
        )
        for i, tracker in enumerate(self._head_loss_trackers):
            tracker.update_state(values[i], sample_weight=batch_size)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        """This replica's training objective: the method's combination.

        Summing its gradients over replicas gives the gradient of the
        objective on the global batch.
        """
        losses, _ = self._head_losses(y, y_pred, sample_weight)
        return (
            ops.cast(self.loss_weighting.combine(losses), "float32")
            + self._regularization() / _num_replicas()
        )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, domains = self._split_domains(y)
        weighting = self.loss_weighting
        learned = list(weighting.learned_variables)
        persistent = weighting.gradient_level or weighting.needs_feature_gradients
        with tf.GradientTape(persistent=persistent) as tape:
            for variable in learned:
                tape.watch(variable.value)
            y_pred, features, adapted = self._forward(x, training=True)
            losses, values = self._head_losses(y, y_pred, sample_weight)
            regularization = self._regularization()
            # Outside the balancing method's combination: its own weight.
            adaptation_loss = self._adaptation_loss(adapted, domains)
            objective = (
                ops.cast(weighting.combine(losses), "float32")
                + regularization / _num_replicas()
                + adaptation_loss
            )
            # Mixed precision: gradients are taken of the scaled loss.
            scaled = self.optimizer.scale_loss(objective)
        scale = ops.cast(self.optimizer.scale_loss(ops.ones((), "float32")), "float32")

        if weighting.needs_feature_gradients:
            squares = [
                ops.sum(ops.square(
                    ops.cast(tape.gradient(losses[name], features,
                                           output_gradients=scale), "float32")
                    / scale
                ))
                for name in weighting.head_names
            ]
            norms = ops.sqrt(replica_sum(ops.stack(squares)))
            weighting.observe_feature_gradients(ops.stop_gradient(values), norms)

        variables = list(self.trainable_weights)
        shared = self._shared_variables(variables) if weighting.gradient_level else []
        direct = [v for v in variables if not any(v is s for s in shared)]
        gradients = tape.gradient(scaled, direct + [v.value for v in learned])
        by_variable = dict(zip(map(id, direct), gradients[:len(direct)]))
        if shared:
            shared_gradients = self._shared_gradients(
                tape, losses, values, features, shared, scale)
            if self.losses:  # regularisers of trunk layers still apply
                shared_gradients = [
                    g if r is None else g + ops.cast(r, g.dtype)
                    for g, r in zip(shared_gradients, tape.gradient(
                        regularization, shared,
                        output_gradients=scale / _num_replicas()))
                ]
            if self.adaptation is not None:  # so does the adaptation loss
                shared_gradients = [
                    g if a is None else g + ops.cast(a, g.dtype)
                    for g, a in zip(shared_gradients, tape.gradient(
                        adaptation_loss, shared, output_gradients=scale))
                ]
            by_variable.update(zip(map(id, shared), shared_gradients))
        del tape
        if variables:
            self.optimizer.apply_gradients(
                [(by_variable[id(v)], v) for v in variables
                 if by_variable[id(v)] is not None]
            )
        if learned:
            # Identical on every replica (they depend on global loss values):
            # divide by the replica count that the optimizer's sum multiplies.
            unscale = scale * _num_replicas()
            weighting.optimizer.apply_gradients(
                [(g / unscale, v) for g, v in zip(gradients[len(direct):], learned)]
            )

        self._track_losses(x, values, regularization)
        if self._loss_weight_trackers:
            weights = weighting.current_weights()
            for name, tracker in zip(self.heads, self._loss_weight_trackers):
                tracker.update_state(weights[name])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _shared_gradients(self, tape, losses, values, features, shared, scale):
        """Gradient-level methods: the trunk's gradients along ``G^T w``.

        Task gradients are taken of the scaled losses (no float16
        underflow) and unscaled in float32 before the method sees them.
        """
        weighting = self.loss_weighting
        names = weighting.head_names
        if weighting.rep_grad:
            # Gradients at the shared features: one row per task, each
            # replica holding its own examples' part.
            rows = [
                ops.cast(tape.gradient(losses[n], features, output_gradients=scale),
                         "float32") / scale
                for n in names
            ]
            flat = ops.stack([ops.reshape(r, (-1,)) for r in rows])
            gramian = replica_sum(ops.matmul(flat, ops.transpose(flat)))
            direction = weighting.feature_direction(
                ops.stack(rows), gramian, ops.stop_gradient(values))
            return tape.gradient(
                features, shared,
                output_gradients=ops.cast(direction * scale, features.dtype))
        task_gradients = replica_sum(ops.stack([
            _flatten(tape.gradient(losses[n], shared, output_gradients=scale), shared)
            for n in names
        ])) / scale
        gramian = ops.matmul(task_gradients, ops.transpose(task_gradients))
        weights = weighting.shared_direction(gramian, ops.stop_gradient(values))
        # G^T w is the global gradient; the optimizer sums the replicas'.
        direction = ops.matmul(weights[None, :], task_gradients)[0]
        return _unflatten(direction * scale / _num_replicas(), shared)

    def _shared_variables(self, variables):
        shared_ids = {
            id(v) for layer in self._shared_layers
            for v in getattr(layer, "shared_weights", layer.trainable_weights)
            if v.trainable
        }
        return [v for v in variables if id(v) in shared_ids]

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, domains = self._split_domains(y, required=False)
        if domains is None:
            y_pred = self(x, training=False)
        else:  # the adaptation's logs on validation data too
            y_pred, _, adapted = self._forward(x, training=False)
            self._adaptation_loss(adapted, domains, training=False)
        _, values = self._head_losses(y, y_pred, sample_weight)
        self._track_losses(x, values, self._regularization())
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, with the balancing method's epoch hook first.

        The hook runs before any user callback, so a backup or checkpoint
        written at the end of an epoch holds the method's updated state.
        """
        arguments = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        arguments = dict(arguments.arguments)
        arguments.pop("self")
        arguments.update(arguments.pop("kwargs", {}))
        arguments["callbacks"] = (
            [_EpochEnd(self.loss_weighting)]
            + (self.adaptation.callbacks() if self.adaptation else [])
            + list(arguments.get("callbacks") or [])
        )
        weighting = self.loss_weighting
        if weighting.gradient_level and not self._shared_variables(
            self.trainable_weights
        ):
            warnings.warn(
                f"{type(weighting).__name__} balances the task gradients of the "
                "trunk, but the trunk is frozen: nothing to balance, each head "
                "trains on its own loss until the trunk is unfrozen.",
                stacklevel=2,
            )
        return super().fit(**arguments)

    # === Config ===
    def get_config(self):
        def without_build_config(config):
            # Revived heads must be unbuilt, as fresh ones are.
            return {k: v for k, v in config.items() if k != "build_config"}

        return {
            "name": self.name,
            "trainable": self.trainable,
            "trunk": keras.saving.serialize_keras_object(self._source_trunk),
            "heads": [
                without_build_config(keras.saving.serialize_keras_object(head))
                for head in self.heads.values()
            ],
            **self._input_config,
            "preprocessing": (
                None if self.preprocessing is None
                else keras.saving.serialize_keras_object(self.preprocessing)
            ),
            "loss_weighting": keras.saving.serialize_keras_object(
                self.loss_weighting
            ),
            "sharing": keras.saving.serialize_keras_object(self.sharing),
            "adaptation": (
                None if self.adaptation is None
                else without_build_config(
                    keras.saving.serialize_keras_object(self.adaptation))
            ),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)

        def revive(value):
            return keras.saving.deserialize_keras_object(
                value, custom_objects=custom_objects
            )

        config["trunk"] = revive(config["trunk"])
        config["heads"] = [revive(head) for head in config["heads"]]
        config["loss_weighting"] = revive(config["loss_weighting"])
        if config.get("sharing") is not None:
            config["sharing"] = revive(config["sharing"])
        if config.get("preprocessing") is not None:
            config["preprocessing"] = revive(config["preprocessing"])
        if config.get("adaptation") is not None:
            config["adaptation"] = revive(config["adaptation"])
        return cls(**config)


class LatestValue(keras.metrics.Metric):
    """A metric whose result is the last value given (the same on all replicas).

    Example:

    >>> metric = mtk.model.LatestValue(name="weight")
    >>> metric.update_state(0.5)
    >>> metric.update_state(2.0)
    >>> float(metric.result())
    2.0
    """

    def __init__(self, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.latest = self.add_variable(
            shape=(), initializer="zeros", aggregation="mean", name="latest"
        )

    def update_state(self, value):
        self.latest.assign(ops.cast(value, self.dtype))

    def result(self):
        # An op, not a bare variable read: under MultiWorkerMirroredStrategy
        # Keras reduces the step's logs and needs each value placed on the
        # replica's device.
        return tf.identity(self.latest)

    def reset_state(self):
        self.latest.assign(0.0)


class _EpochEnd(keras.callbacks.Callback):
    """Hands each epoch's per-head mean training loss to the method."""

    def __init__(self, weighting):
        super().__init__()
        self.weighting = weighting

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        losses = {name: float(logs[f"{name}_loss"]) for name in self.weighting.head_names
                  if f"{name}_loss" in logs}
        if len(losses) == len(self.weighting.head_names):
            self.weighting.end_epoch(losses)
