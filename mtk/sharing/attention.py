"""MTAN: task-specific attention over the shared trunk's feature maps."""

import keras
from keras import ops

from mtk.sharing.base import Connection
from mtk.sharing.base import Sharing
from mtk.sharing.base import check_functional_trunk
from mtk.sharing.base import check_layer_names
from mtk.sharing.base import derived_trunk
from mtk.sharing.base import pooled
from mtk.trunks import trunk_inputs

ATTENTION_LAYER_NAME = "task_attention"


def _batch_norm(name):
    # Synchronised: under tf.distribute the attention masks normalise with
    # the global batch's statistics, so N replicas train as one device does.
    return keras.layers.BatchNormalization(synchronized=True, name=name)


@keras.saving.register_keras_serializable(package="mtk")
class TaskAttention(keras.layers.Layer):
    """One attention module per head and feature map (MTAN's task branches).

    For head ``t`` and the shared feature map ``p_j`` at level ``j``
    (Liu et al. 2019, Eq. 1): the mask
    ``a_j = sigmoid(BN(conv1x1(relu(BN(conv1x1([p_j, f_j(â_{j-1})]))))))``
    and the attended map ``â_j = a_j * p_j``, where ``f_j`` brings the
    previous attended map to ``p_j``'s size and channels (resize, 3x3 conv,
    BN, ReLU: the paper convolves before pooling; resizing first runs the
    convolution at the smaller size, a quarter of the cost for a stride-2
    block); at the first level the mask reads ``p_1`` alone.

    Args:
        head_names: the heads, one branch each.
        reduction: the mask's hidden 1x1 convolution and ``f_j`` output
            ``c // reduction`` channels (at least 1) instead of ``c``; 1 is
            the paper's SegNet-MTAN, 4 the bottleneck of ResNet-50 MTANs
            (as LibMTL builds them).

    Returns (when called on a list of ``(batch, h, w, c)`` maps):
        dict ``{head: (batch, h, w, c)}`` of each head's attended last map.

    Example:

    >>> layer = mtk.sharing.TaskAttention(["a", "b"])
    >>> maps = [np.ones((2, 8, 8, 4), "float32"), np.ones((2, 4, 4, 6), "float32")]
    >>> {name: tuple(x.shape) for name, x in layer(maps).items()}
    {'a': (2, 4, 4, 6), 'b': (2, 4, 4, 6)}
    """

    def __init__(self, head_names, reduction=1, **kwargs):
        super().__init__(**kwargs)
        self.head_names = list(head_names)
        self.reduction = _check_reduction(reduction)

    def build(self, input_shape):
        self.branches = {}
        for name in self.head_names:
            levels = []
            for j, shape in enumerate(input_shape):
                height, width, channels = shape[1:]
                hidden = max(1, channels // self.reduction)
                level = {
                    "mask": [
                        keras.layers.Conv2D(hidden, 1, name=f"{name}_{j}_conv_a"),
                        _batch_norm(name=f"{name}_{j}_bn_a"),
                        keras.layers.Conv2D(channels, 1, name=f"{name}_{j}_conv_b"),
                        _batch_norm(name=f"{name}_{j}_bn_b"),
                    ],
                    "previous": None if j == 0 else [
                        keras.layers.Conv2D(hidden, 3, padding="same",
                                            name=f"{name}_{j}_conv_prev"),
                        _batch_norm(name=f"{name}_{j}_bn_prev"),
                        keras.layers.Resizing(height, width, name=f"{name}_{j}_resize"),
                    ],
                }
                levels.append(level)
            self.branches[name] = levels

    def call(self, feature_maps, training=None):
        outputs = {}
        for name in self.head_names:
            attended = None
            for level, shared in zip(self.branches[name], feature_maps):
                x = shared
                if attended is not None:
                    conv, norm, resize = level["previous"]
                    # Resized first: the 3x3 convolution then runs at the
                    # (smaller) size of this level's map.
                    previous = ops.relu(norm(conv(resize(attended)), training=training))
                    x = ops.concatenate([shared, previous], axis=-1)
                conv_a, bn_a, conv_b, bn_b = level["mask"]
                hidden = ops.relu(bn_a(conv_a(x), training=training))
                mask = ops.sigmoid(bn_b(conv_b(hidden), training=training))
                attended = mask * shared
            outputs[name] = attended
        return outputs

    def get_config(self):
        config = super().get_config()
        config["head_names"] = self.head_names
        config["reduction"] = self.reduction
        return config


def _check_reduction(reduction):
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(
            f"MTAN(reduction={reduction!r}): the attention branches' width "
            "divisor must be an integer >= 1 (1: as wide as each map)."
        )
    return reduction


@keras.saving.register_keras_serializable(package="mtk")
class MTAN(Sharing):
    """Multi-task attention network (Liu et al., CVPR 2019, "End-to-End
    Multi-Task Learning with Attention", Sec. 3).

    The trunk runs once and is shared; each head has a small attention
    branch (`TaskAttention`) that learns a soft mask over the trunk's
    feature maps at the named layers, each level also reading the branch's
    previous attended map. The trunk's output, when it is a feature map, is
    always the last level; otherwise weight-free layers after the last named
    one (e.g. ``Flatten``) run on each head's attended map. Use it on
    image trunks when tasks need different parts of the same features; it
    costs two 1x1 and one 3x3 convolution per head and level, on top of one
    trunk pass: on a small trunk each head's branches cost about as much as
    the trunk. ``reduction=4`` narrows the branches' convolutions 4-fold
    (the mask's element-wise work per head stays).

    Args:
        at: names of trunk layers whose outputs are feature maps
            ``(batch, h, w, c)``, in the trunk's order (input to output).
        reduction: the attention branches' hidden width is each map's
            channels divided by this (`TaskAttention`); 1 (default) is the
            paper's SegNet-MTAN.

    Example:

    >>> trunk = keras.Sequential([
    ...     keras.Input((16, 16, 3)),
    ...     keras.layers.Conv2D(8, 3, strides=2, name="block1"),
    ...     keras.layers.Conv2D(8, 3, strides=2, name="block2")])
    >>> model = mtk.build_multitask_model(
    ...     trunk, heads=[mtk.heads.Binary("a"), mtk.heads.Binary("b")],
    ...     sharing=mtk.sharing.MTAN(at=["block1"]), trunk_weights=None)
    >>> sorted(model.predict(np.zeros((2, 16, 16, 3)), verbose=0))
    ['a', 'b']
    """

    name = "mtan"
    feature_maps = True

    def __init__(self, at, reduction=1):
        if isinstance(at, str):
            at = [at]
        if not at or not all(isinstance(name, str) for name in at):
            raise ValueError(
                f"MTAN(at={at!r}): name one or more trunk layers whose outputs "
                "are feature maps."
            )
        self.at = list(at)
        self.reduction = _check_reduction(reduction)

    def connect(self, parts, head_names, maps=()):
        check_functional_trunk("MTAN", parts)
        trunk = parts.trunk
        at = check_layer_names("MTAN", self.at, trunk)
        levels = [trunk.get_layer(name).output for name in at]
        output = trunk.outputs[0]
        if levels[-1] is not output and len(output.shape) == 4:
            levels.append(output)
        for name, tensor in zip(at + ["(trunk output)"], levels):
            if len(tensor.shape) != 4:
                raise ValueError(
                    f"MTAN(at=...): layer {name!r} outputs shape "
                    f"{tuple(tensor.shape)}; MTAN attends over feature maps "
                    "(batch, height, width, channels). Name convolutional "
                    "layers (or blocks) of the trunk."
                )
        tail = _weightless_tail(trunk, levels[-1], at[-1])
        shared_trunk = derived_trunk(trunk, levels)
        inputs, x, mask = trunk_inputs(parts)
        attention = TaskAttention(
            head_names, reduction=self.reduction, name=ATTENTION_LAYER_NAME)
        attended = attention(list(shared_trunk(x)))
        if tail is not None:
            attended = {name: tail(attended[name]) for name in head_names}
        return Connection(
            inputs=inputs,
            features=pooled([attended[n] for n in head_names], mask, head_names, maps),
            trunk=shared_trunk,
            shared_layers=[shared_trunk],
        )

    def get_config(self):
        return {"at": list(self.at), "reduction": self.reduction}


def _weightless_tail(trunk, last_map, last_name):
    """The trunk's layers after the last attended map, run on each head's map.

    Only weight-free layers (flatten, pooling, activations) are allowed there:
    layers with weights would sit outside the model's ``"trunk"`` and escape
    freezing. None when the last attended map is the trunk's output.
    """
    output = trunk.outputs[0]
    if last_map is output:
        return None
    tail = keras.Model(last_map, output, name="trunk_tail")
    weighted = [layer.name for layer in tail.layers if layer.weights]
    if weighted:
        raise ValueError(
            f"MTAN(at=...): the trunk's layers {weighted} after {last_name!r} "
            "have weights, and the trunk's output is no feature map to attend "
            "over. Cut the trunk at a feature map (trunk_output=<layer>) or "
            "at a weight-free layer after the last one in at= (e.g. Flatten)."
        )
    return tail
