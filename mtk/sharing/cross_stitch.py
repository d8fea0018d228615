"""Cross-stitch networks: one trunk copy per task, mixed at named layers."""

import keras
from keras import ops

from mtk.sharing.base import Connection
from mtk.sharing.base import Sharing
from mtk.sharing.base import check_functional_trunk
from mtk.sharing.base import check_layer_names
from mtk.sharing.base import pooled
from mtk.trunks import TRUNK_NAME
from mtk.trunks import Trunk
from mtk.trunks import trunk_inputs


@keras.saving.register_keras_serializable(package="mtk")
class CrossStitchUnit(keras.layers.Layer):
    """Mixes K tasks' activations: ``x̃_t = sum_s alpha[t, s] * x_s``.

    Misra et al. 2016, Eq. 1, with one ``alpha`` matrix per channel;
    initialised to ``same`` on the diagonal and ``(1 - same) / (K - 1)``
    elsewhere (the paper's (0.9, 0.1) for two tasks), so each row sums to 1.

    Args:
        same: the initial weight of a task's own activation.

    Example:

    >>> unit = mtk.sharing.CrossStitchUnit()
    >>> a, b = unit([np.ones((1, 2), "float32"), np.zeros((1, 2), "float32")])
    >>> np.asarray(a, "float64").round(2).tolist(), np.asarray(b, "float64").round(2).tolist()
    ([[0.9, 0.9]], [[0.1, 0.1]])
    """

    def __init__(self, same=0.9, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= same <= 1.0:
            raise ValueError(f"CrossStitchUnit(same={same!r}): must be in [0, 1].")
        self.same = float(same)

    def build(self, input_shape):
        tasks, channels = len(input_shape), input_shape[0][-1]
        other = (1.0 - self.same) / max(tasks - 1, 1)
        initial = [[self.same if t == s else other for s in range(tasks)]
                   for t in range(tasks)]

        def initializer(shape, dtype=None):
            return ops.broadcast_to(
                ops.convert_to_tensor(initial, "float32")[:, :, None], shape)

        self.alpha = self.add_weight(
            shape=(tasks, tasks, channels), initializer=initializer, name="alpha")

    def call(self, inputs):
        stacked = ops.stack(inputs, axis=0)  # (K, batch, ..., C)
        alpha = ops.cast(self.alpha, stacked.dtype)
        return [
            ops.sum(alpha[t][(slice(None),) + (None,) * (len(stacked.shape) - 2)]
                    * stacked, axis=0)
            for t in range(len(inputs))
        ]

    def get_config(self):
        config = super().get_config()
        config["same"] = self.same
        return config


@keras.saving.register_keras_serializable(package="mtk")
class CrossStitch(Sharing):
    """Cross-stitch networks (Misra et al., CVPR 2016).

    Each head gets its own copy of the trunk, every copy starting from the
    same (pretrained) weights; after each named layer a `CrossStitchUnit`
    mixes the copies' activations with learned per-channel weights. The
    trunk model named ``"trunk"`` holds the copies and the units, so
    freezing and fine-tuning act on all of them. Use it when tasks are
    different enough that hard sharing hurts and K trunks fit your budget:
    it costs about K times the trunk's parameters and step time.

    Args:
        at: names of trunk layers after which the copies are mixed, in the
            trunk's order. Every path from the input to the output must pass
            through each of them (a block's output, not a layer inside a
            residual block).
        same: a unit's initial weight of a task's own activation.

    Example:

    >>> trunk = keras.Sequential([
    ...     keras.Input((8, 8, 3)),
    ...     keras.layers.Conv2D(4, 3, name="conv1"),
    ...     keras.layers.Conv2D(4, 3, name="conv2")])
    >>> model = mtk.build_multitask_model(
    ...     trunk, heads=[mtk.heads.Binary("a"), mtk.heads.Binary("b")],
    ...     sharing=mtk.sharing.CrossStitch(at=["conv1"]), trunk_weights=None)
    >>> len(model.trunk.weights) == 2 * len(trunk.weights) + 1  # 2 copies, 1 unit
    True
    """

    name = "cross_stitch"
    feature_maps = True

    def __init__(self, at, same=0.9):
        if isinstance(at, str):
            at = [at]
        if not at or not all(isinstance(name, str) for name in at):
            raise ValueError(
                f"CrossStitch(at={at!r}): name one or more trunk layers."
            )
        if not 0.0 <= same <= 1.0:
            raise ValueError(f"CrossStitch(same={same!r}): must be in [0, 1].")
        self.at = list(at)
        self.same = float(same)

    def connect(self, parts, head_names, maps=()):
        check_functional_trunk("CrossStitch", parts)
        source = parts.trunk
        at = check_layer_names("CrossStitch", self.at, source)
        # One copy per head, each with the source's (pretrained) weights.
        copies = []
        for name in head_names:
            copy = keras.models.clone_model(source)
            copy.set_weights(source.get_weights())
            copies.append(copy)
        inputs, x, mask = trunk_inputs(parts)
        trunk_input = keras.Input(
            shape=tuple(source.inputs[0].shape[1:]), dtype=source.inputs[0].dtype,
            name="trunk_input")
        activations = [trunk_input] * len(head_names)
        cuts = at if at[-1] == _last_layer_name(source) else at + [None]
        start = [None] * len(head_names)
        for level, (previous, cut) in enumerate(zip([None] + cuts, cuts)):
            for t, (name, copy) in enumerate(zip(head_names, copies)):
                begin = copy.inputs[0] if start[t] is None else start[t]
                end = copy.outputs[0] if cut is None else copy.get_layer(cut).output
                segment = _segment(begin, end, f"{name}_part{level}", previous, at)
                activations[t] = segment(activations[t])
                start[t] = end
            if cut is not None and len(head_names) > 1:
                activations = CrossStitchUnit(
                    self.same, name=f"cross_stitch_{level}")(activations)
        stitched = Trunk(trunk_input, activations, name=TRUNK_NAME)
        return Connection(
            inputs=inputs,
            features=pooled(stitched(x), mask, head_names, maps),
            trunk=stitched,
            shared_layers=[stitched],
        )

    def get_config(self):
        return {"at": list(self.at), "same": self.same}


def _last_layer_name(model):
    return model.outputs[0]._keras_history.operation.name


def _segment(begin, end, name, cut, at):
    """The part of a copy between two cuts, as a model."""
    try:
        return keras.Model(begin, end, name=name)
    except ValueError as error:
        raise ValueError(
            f"CrossStitch(at={at}): the trunk cannot be cut at {cut!r}: a "
            "connection bypasses it (e.g. a residual or skip connection). Name "
            "layers that every path from input to output passes through, such "
            f"as the output of a block. ({error})"
        ) from None
