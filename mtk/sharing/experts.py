"""Mixtures of experts on the trunk's features: MMoE, CGC and PLE.

All three are one layer, `ExpertNetwork`: groups of small MLP experts on
the trunk's pooled features and one softmax gate per head that mixes the
experts the head may read. MMoE has shared experts only; CGC adds experts
of each task's own; PLE stacks CGC levels, with a shared gate per level
feeding the next level's shared experts.
"""

import numpy as np
import keras
from keras import ops

from mtk.sharing.base import Connection
from mtk.sharing.base import Sharing
from mtk.trunks import trunk_features

SHARING_LAYER_NAME = "sharing"


def _check_count(method, argument, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"{method}({argument}={value!r}): must be an integer >= {minimum}."
        )
    return int(value)


def _check_units(method, units):
    units = (units,) if isinstance(units, (int, np.integer)) else tuple(units)
    if not units or any(
        isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1
        for u in units
    ):
        raise ValueError(
            f"{method}(expert_units={units!r}): give one or more layer sizes, "
            "each a positive integer, e.g. (64,)."
        )
    return tuple(int(u) for u in units)


def _check_non_negative(method, argument, value):
    if isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(
            f"{method}({argument}={value!r}): must be a finite number >= 0."
        )
    return float(value)


@keras.saving.register_keras_serializable(package="mtk")
class ExpertNetwork(keras.layers.Layer):
    """Progressive layered extraction: the layer behind MMoE, CGC and PLE.

    At each level, shared experts read the shared input and each head's own
    experts read that head's input; head ``t``'s gate (a softmax over the
    shared experts and ``t``'s own) mixes their outputs into ``t``'s input
    of the next level. Below the last level a shared gate mixes all experts
    into the next shared input. Experts of a group are computed together
    (one einsum per layer).

    Args:
        head_names: the heads, one gate each.
        num_levels: extraction levels (1 for MMoE and CGC).
        num_shared_experts: shared experts per level.
        num_task_experts: experts of each head's own per level (0 for MMoE).
        expert_units: each expert's layer sizes.
        expert_activation: the experts' activation.
        load_balancing: weight of the gates' load-balancing loss (0 for
            none): the squared coefficient of variation of each gate's
            per-expert importance over the batch (Shazeer et al. 2017,
            "Outrageously Large Neural Networks", Eq. 6), summed over gates.
            Under tf.distribute it is computed on each replica's batch, as
            the paper computes it per batch, so N replicas regularise N
            smaller batches (the task losses, by contrast, are exact).

    Returns (when called on ``(batch, dim)`` features):
        ``(features, gates)``: dicts by head name of the ``(batch, units)``
        features the head reads and the ``(batch, experts)`` weights of its
        last-level gate.

    Example:

    >>> layer = mtk.sharing.ExpertNetwork(
    ...     ["a", "b"], num_shared_experts=2, num_task_experts=1, expert_units=(4,))
    >>> features, gates = layer(np.ones((3, 6), "float32"))
    >>> tuple(features["a"].shape), tuple(gates["a"].shape)
    ((3, 4), (3, 3))
    """

    def __init__(
        self,
        head_names,
        num_levels=1,
        num_shared_experts=4,
        num_task_experts=0,
        expert_units=(64,),
        expert_activation="relu",
        load_balancing=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.head_names = list(head_names)
        self.num_levels = num_levels
        self.num_shared_experts = num_shared_experts
        self.num_task_experts = num_task_experts
        self.expert_units = tuple(expert_units)
        self.expert_activation = expert_activation
        self.activation = keras.activations.get(expert_activation)
        self.load_balancing = load_balancing

    # === Layers ===
    def _experts(self, prefix, count, dim):
        """Stacked weights of ``count`` experts: [(kernel, bias), ...]."""
        weights = []
        for i, units in enumerate(self.expert_units):
            # Glorot for each expert's own (dim, units) kernel: Keras' glorot
            # on the stacked (count, dim, units) shape would count the
            # experts into the fans and start them sqrt(count) too small.
            limit = float(np.sqrt(6.0 / (dim + units)))
            kernel = self.add_weight(
                shape=(count, dim, units),
                initializer=keras.initializers.RandomUniform(-limit, limit),
                name=f"{prefix}_kernel_{i}",
            )
            bias = self.add_weight(
                shape=(count, units), initializer="zeros", name=f"{prefix}_bias_{i}"
            )
            weights.append((kernel, bias))
            dim = units
        return weights

    def _gate(self, name, dim, count):
        gate = keras.layers.Dense(count, activation="softmax", name=name)
        gate.build((None, dim))
        return gate

    def build(self, input_shape):
        dim = input_shape[-1]
        units = self.expert_units[-1]
        self.levels = []
        for level in range(self.num_levels):
            width = dim if level == 0 else units
            last = level == self.num_levels - 1
            self.levels.append({
                "shared": self._experts(
                    f"level{level}_shared", self.num_shared_experts, width),
                "task": {
                    name: self._experts(
                        f"level{level}_{name}", self.num_task_experts, width)
                    for name in self.head_names
                } if self.num_task_experts else {},
                "gates": {
                    name: self._gate(
                        f"level{level}_{name}_gate", width,
                        self.num_shared_experts + self.num_task_experts)
                    for name in self.head_names
                },
                "shared_gate": None if last else self._gate(
                    f"level{level}_shared_gate", width,
                    self.num_shared_experts
                    + self.num_task_experts * len(self.head_names)),
            })

    @property
    def shared_weights(self):
        """The weights of the shared experts (every task's gradient reaches them)."""
        return [
            w for level in self.levels for pair in level["shared"] for w in pair
        ]

    # === Forward ===
    def _run_experts(self, weights, x):
        """``(batch, dim)`` -> ``(batch, experts, units)``."""
        h = None
        for i, (kernel, bias) in enumerate(weights):
            if i == 0:
                h = ops.einsum("bd,edu->beu", x, kernel)
            else:
                h = ops.einsum("bed,edu->beu", h, kernel)
            h = self.activation(h + bias)
        return h

    def _mix(self, gate, x, experts, gates_out, key):
        weights = gate(x)
        gates_out[key] = weights
        return ops.einsum("be,beu->bu", weights, experts)

    def call(self, features, training=None):
        shared_x = features
        task_x = {name: features for name in self.head_names}
        gates = {}
        for level_index, level in enumerate(self.levels):
            shared = self._run_experts(level["shared"], shared_x)
            own = {
                name: self._run_experts(level["task"][name], task_x[name])
                for name in level["task"]
            }
            new_task_x = {}
            for name in self.head_names:
                experts = shared if name not in own else ops.concatenate(
                    [shared, own[name]], axis=1)
                new_task_x[name] = self._mix(
                    level["gates"][name], task_x[name], experts, gates,
                    (level_index, name))
            if level["shared_gate"] is not None:
                experts = ops.concatenate(
                    [shared] + [own[name] for name in self.head_names if name in own],
                    axis=1)
                shared_x = self._mix(
                    level["shared_gate"], shared_x, experts, gates,
                    (level_index, None))
            task_x = new_task_x
        if training and self.load_balancing:
            self.add_loss(self.load_balancing * ops.sum(ops.stack([
                load_balancing_loss(weights) for weights in gates.values()
            ])))
        last = self.num_levels - 1
        return task_x, {name: gates[(last, name)] for name in self.head_names}

    def expert_names(self, head_name):
        """The names of the experts head ``head_name``'s last gate mixes."""
        return [f"shared_{i}" for i in range(self.num_shared_experts)] + [
            f"{head_name}_{i}" for i in range(self.num_task_experts)
        ]

    # === Config ===
    def get_config(self):
        config = super().get_config()
        config.update({
            "head_names": self.head_names,
            "num_levels": self.num_levels,
            "num_shared_experts": self.num_shared_experts,
            "num_task_experts": self.num_task_experts,
            "expert_units": list(self.expert_units),
            "expert_activation": self.expert_activation,
            "load_balancing": self.load_balancing,
        })
        return config


def load_balancing_loss(gate_weights):
    """Squared coefficient of variation of a gate's per-expert importance.

    Importance is each expert's gate weight summed over the batch (Shazeer
    et al. 2017, Eq. 6); the loss is 0 when every expert gets the same share
    and grows as one expert takes over (expert collapse).

    Example:

    >>> float(mtk.sharing.load_balancing_loss([[0.5, 0.5], [0.5, 0.5]]))
    0.0
    >>> round(float(mtk.sharing.load_balancing_loss([[1.0, 0.0], [1.0, 0.0]])), 3)
    1.0
    """
    gate_weights = ops.cast(ops.convert_to_tensor(gate_weights), "float32")
    importance = ops.sum(gate_weights, axis=0)
    mean = ops.mean(importance)
    return ops.var(importance) / (ops.square(mean) + 1e-10)


class _ExpertSharing(Sharing):
    """Shared base of MMoE, CGC and PLE: build an `ExpertNetwork`."""

    def _network_arguments(self):
        raise NotImplementedError

    def connect(self, parts, head_names, maps=()):
        inputs, features = trunk_features(parts)
        network = ExpertNetwork(
            head_names, name=SHARING_LAYER_NAME, **self._network_arguments())
        per_head, _ = network(features)
        return Connection(
            inputs=inputs,
            features=per_head,
            trunk=parts.trunk,
            shared_layers=[parts.trunk, network],
            common=features,
        )


@keras.saving.register_keras_serializable(package="mtk")
class MMoE(_ExpertSharing):
    """Multi-gate mixture of experts (Ma et al., KDD 2018, Eq. 5-6).

    ``num_experts`` MLP experts read the trunk's pooled features; head ``k``
    reads ``sum_i g_k(x)_i f_i(x)`` with its own softmax gate
    ``g_k(x) = softmax(W_k x)``. Use it when tasks are loosely related (a
    shared bottom makes them interfere); it costs the experts' MLPs on the
    pooled features, small beside an image trunk.

    Args:
        num_experts: number of shared experts (the paper uses 8).
        expert_units: each expert's layer sizes.
        expert_activation: the experts' activation.
        load_balancing: weight of the load-balancing loss on the gates (0:
            none); see `load_balancing_loss`.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Regression("a"), mtk.heads.Regression("b")],
    ...     sharing=mtk.sharing.MMoE(num_experts=4, expert_units=(16,)),
    ...     trunk_weights=None)
    >>> {name: tuple(x.shape) for name, x in model.predict(np.zeros((2, 6)), verbose=0).items()}
    {'a': (2, 1), 'b': (2, 1)}
    """

    name = "mmoe"

    def __init__(self, num_experts=8, expert_units=(64,), expert_activation="relu",
                 load_balancing=0.0):
        self.num_experts = _check_count("MMoE", "num_experts", num_experts, 1)
        self.expert_units = _check_units("MMoE", expert_units)
        self.expert_activation = expert_activation
        keras.activations.get(expert_activation)
        self.load_balancing = _check_non_negative(
            "MMoE", "load_balancing", load_balancing)

    def _network_arguments(self):
        return dict(num_levels=1, num_shared_experts=self.num_experts,
                    num_task_experts=0, expert_units=self.expert_units,
                    expert_activation=self.expert_activation,
                    load_balancing=self.load_balancing)

    def get_config(self):
        return {"num_experts": self.num_experts,
                "expert_units": list(self.expert_units),
                "expert_activation": self.expert_activation,
                "load_balancing": self.load_balancing}


@keras.saving.register_keras_serializable(package="mtk")
class PLE(_ExpertSharing):
    """Progressive layered extraction (Tang et al., RecSys 2020, Eq. 2-6).

    Each level has ``num_shared_experts`` shared experts and
    ``num_task_experts`` experts of each task's own; a task's gate mixes
    the shared experts and its own (customized gate control, CGC), and
    below the last level a shared gate mixes all experts into the next
    level's shared input. Separating task experts from shared ones keeps a
    task from being swamped by the others ("seesaw"); each level costs
    ``num_shared_experts + K * num_task_experts`` expert MLPs.

    Args:
        num_levels: extraction levels (1 is CGC).
        num_shared_experts: shared experts per level.
        num_task_experts: experts of each task's own per level.
        expert_units: each expert's layer sizes.
        expert_activation: the experts' activation.
        load_balancing: weight of the load-balancing loss on the gates.

    Example:

    >>> mtk.sharing.PLE(num_levels=2, num_shared_experts=2, num_task_experts=1)
    PLE(num_levels=2, num_shared_experts=2, num_task_experts=1, expert_units=[64], expert_activation='relu', load_balancing=0.0)
    """

    name = "ple"

    def __init__(self, num_levels=2, num_shared_experts=2, num_task_experts=2,
                 expert_units=(64,), expert_activation="relu",
                 load_balancing=0.0):
        method = type(self).__name__
        self.num_levels = _check_count(method, "num_levels", num_levels, 1)
        self.num_shared_experts = _check_count(
            method, "num_shared_experts", num_shared_experts, 0)
        self.num_task_experts = _check_count(
            method, "num_task_experts", num_task_experts, 0)
        if self.num_shared_experts + self.num_task_experts < 1:
            raise ValueError(
                f"{method}: num_shared_experts + num_task_experts must be >= 1 "
                "(each gate needs an expert to mix)."
            )
        self.expert_units = _check_units(method, expert_units)
        self.expert_activation = expert_activation
        keras.activations.get(expert_activation)
        self.load_balancing = _check_non_negative(
            method, "load_balancing", load_balancing)

    def _network_arguments(self):
        return dict(num_levels=self.num_levels,
                    num_shared_experts=self.num_shared_experts,
                    num_task_experts=self.num_task_experts,
                    expert_units=self.expert_units,
                    expert_activation=self.expert_activation,
                    load_balancing=self.load_balancing)

    def get_config(self):
        return {"num_levels": self.num_levels,
                "num_shared_experts": self.num_shared_experts,
                "num_task_experts": self.num_task_experts,
                "expert_units": list(self.expert_units),
                "expert_activation": self.expert_activation,
                "load_balancing": self.load_balancing}


@keras.saving.register_keras_serializable(package="mtk")
class CGC(PLE):
    """Customized gate control: one level of `PLE` (Tang et al. 2020, Sec. 4.2).

    Shared experts plus experts of each task's own, one gate per task over
    the shared experts and its own.

    Args:
        num_shared_experts: shared experts.
        num_task_experts: experts of each task's own.
        expert_units: each expert's layer sizes.
        expert_activation: the experts' activation.
        load_balancing: weight of the load-balancing loss on the gates.

    Example:

    >>> mtk.sharing.CGC(num_shared_experts=2, num_task_experts=1).num_levels
    1
    """

    name = "cgc"

    def __init__(self, num_shared_experts=2, num_task_experts=2,
                 expert_units=(64,), expert_activation="relu",
                 load_balancing=0.0):
        super().__init__(1, num_shared_experts, num_task_experts, expert_units,
                         expert_activation, load_balancing)

    def get_config(self):
        config = super().get_config()
        del config["num_levels"]
        return config


def expert_usage(model, data, steps=None):
    """Each head's mean gate weight per expert over ``data``.

    A head whose weight sits on one expert has collapsed onto it; gates that
    all pick the same experts share as much as hard sharing does.

    Args:
        model: an `mtk.MultiTaskModel` built with `MMoE`, `CGC` or `PLE`.
        data: inputs: an array, or a `tf.data.Dataset` of inputs or
            ``(inputs, labels)`` batches.
        steps: batches to read from a dataset (None: all).

    Returns:
        dict ``{head: {expert name: mean weight}}`` for each head's
        last-level gate (weights sum to 1 per head).

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Regression("a"), mtk.heads.Regression("b")],
    ...     sharing=mtk.sharing.MMoE(num_experts=2), trunk_weights=None)
    >>> usage = mtk.sharing.expert_usage(model, np.ones((4, 6)))
    >>> sorted(usage["a"]), round(sum(usage["a"].values()), 4)
    (['shared_0', 'shared_1'], 1.0)
    """
    try:
        layer = model.get_layer(SHARING_LAYER_NAME)
    except ValueError:
        layer = None
    if not isinstance(layer, ExpertNetwork):
        raise ValueError(
            f"Model {model.name!r} has no gates: expert_usage reads the gates "
            "of sharing=mtk.sharing.MMoE, CGC or PLE; this model uses "
            f"{getattr(model, 'sharing', 'hard')!r}."
        )
    # Keras keeps a layer's nested output flat; restore (features, gates).
    template = {name: 0 for name in layer.head_names}
    _, gates = keras.tree.pack_sequence_as((template, template), layer.output)
    probe = keras.Model(model.inputs, gates)
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        data = data.map(lambda *batch: batch[0])
        if steps is not None:
            data = data.take(steps)
    outputs = probe.predict(data, verbose=0)
    return {
        name: dict(zip(layer.expert_names(name),
                       np.mean(outputs[name], axis=0).astype(float).tolist()))
        for name in layer.head_names
    }


def plot_expert_usage(usage, path, title=None):
    """Plots `expert_usage` as one bar chart per head; writes ``path`` (PNG).

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "usage.png")
    >>> mtk.sharing.plot_expert_usage(
    ...     {"a": {"shared_0": 0.9, "shared_1": 0.1}}, path)
    >>> os.path.getsize(path) > 0
    True
    """
    from mtk.evaluation import _figure

    names = list(usage)
    figure = _figure(1, len(names))
    for axis, name in zip(figure.subplots(1, len(names), squeeze=False)[0], names):
        experts = list(usage[name])
        axis.bar(range(len(experts)), [usage[name][e] for e in experts])
        axis.set_xticks(range(len(experts)), experts, rotation=45, ha="right")
        axis.set_ylim(0, 1)
        axis.set_title(name)
        axis.set_ylabel("mean gate weight")
    if title:
        figure.suptitle(title)
    figure.savefig(path)
