"""The sharing contract, and hard parameter sharing (the default).

A sharing method decides what each head reads. `MultiTaskModel` hands it the
resolved trunk (`mtk.trunks.TrunkParts`) and the head names; its
``connect`` returns a `Connection`: the model input, one feature tensor per
head, the tensor every head depends on (where there is one) and the layers
whose weights all tasks share. The nested layer named ``"trunk"`` in the
connection is what freezing and fine-tuning act on.

A sharing method is a small serializable object holding its constructor
arguments; the layers it creates live in the model's graph, so their
weights are saved with the model.
"""

import dataclasses

import keras

from mtk.trunks import TRUNK_NAME
from mtk.trunks import Trunk
from mtk.trunks import pool_features
from mtk.trunks import trunk_features


@dataclasses.dataclass
class Connection:
    """What a sharing method puts between the model input and the heads.

    Attributes:
        inputs: the model's input tensor.
        features: dict ``{head name: tensor}``, what each head reads.
        trunk: the nested `keras.Model` named ``"trunk"`` in the graph
            (frozen in phase 1, unfrozen in phase 2).
        shared_layers: layers whose trainable weights every task's gradient
            reaches; gradient-level balancing methods act on them.
        common: the one tensor every head's features derive from, where
            gradients at "the shared representation" are taken (GradNorm,
            ``rep_grad``); None when the heads share no single tensor.
    """

    inputs: object
    features: dict
    trunk: keras.Model
    shared_layers: list
    common: object = None


class Sharing:
    """Base class of sharing methods.

    Subclasses implement ``connect(parts, head_names)`` and ``get_config()``
    (their constructor arguments). Those whose heads read a feature map of
    their own (``feature_maps = True``: MTAN, cross-stitch) also take
    ``maps``, the heads (dense ones) that get that map rather than its
    pooled vector.
    """

    name = None
    feature_maps = False

    def connect(self, parts, head_names, maps=()):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


@keras.saving.register_keras_serializable(package="mtk")
class HardSharing(Sharing):
    """Hard parameter sharing: every head reads the trunk's pooled features.

    The default, and the cheapest: one trunk pass for all tasks. Tasks that
    are only loosely related may interfere (see `MMoE` and the others).

    Example:

    >>> mtk.sharing.get_sharing("hard")
    HardSharing()
    """

    name = "hard"

    def connect(self, parts, head_names, maps=()):
        inputs, features = trunk_features(parts)
        return Connection(
            inputs=inputs,
            features={name: features for name in head_names},
            trunk=parts.trunk,
            shared_layers=[parts.trunk],
            common=features,
        )


def trunk_layer_names(trunk):
    """The names of the trunk's layers, inputs excluded, in graph order."""
    return [
        layer.name for layer in trunk.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def check_layer_names(method, at, trunk):
    """``at`` as a list of trunk layer names in graph order, or an error.

    The error for a wrong name lists the trunk's layers, and the order is
    the trunk's: the i-th name must come before the (i+1)-th.

    Example:

    >>> trunk = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d1"),
    ...                           keras.layers.Dense(2, name="d2")])
    >>> mtk.sharing.base.check_layer_names("MTAN", ["d2", "d1"], trunk)
    Traceback (most recent call last):
    ...
    ValueError: MTAN(at=['d2', 'd1']): layers must be named in the trunk's order (input to output): ['d1', 'd2'].
    """
    if isinstance(at, str):
        at = [at]
    at = list(at)
    if not at:
        raise ValueError(f"{method}(at=[]): name at least one trunk layer.")
    names = trunk_layer_names(trunk)
    for name in at:
        if name not in names:
            raise ValueError(
                f"{method}(at=...): {name!r} names no layer of the trunk "
                f"{trunk.name!r}; its layers are {names}."
            )
    positions = [names.index(name) for name in at]
    if len(set(positions)) != len(positions):
        raise ValueError(f"{method}(at={at}): a layer is named twice.")
    if positions != sorted(positions):
        raise ValueError(
            f"{method}(at={at}): layers must be named in the trunk's order "
            f"(input to output): {sorted(at, key=names.index)}."
        )
    return at


def check_functional_trunk(method, parts):
    """Raises unless the trunk is a functional image model with one input."""
    trunk = parts.trunk
    if parts.input_dtype == "string" or isinstance(
        trunk.inputs, dict
    ) or len(trunk.inputs) != 1 or len(trunk.inputs[0].shape) != 4:
        raise ValueError(
            f"{method} works on the feature maps of an image trunk (one input "
            "of shape (batch, height, width, channels), e.g. a "
            "keras.applications name or a convolutional keras.Model); trunk "
            f"{trunk.name!r} takes {_describe_inputs(trunk)}. Use "
            "sharing='hard', mtk.sharing.MMoE, CGC or PLE, which read the "
            "pooled features of any trunk."
        )


def _describe_inputs(trunk):
    inputs = trunk.inputs
    if isinstance(inputs, dict):
        return f"a dict of inputs {sorted(inputs)}"
    return ", ".join(str(tuple(x.shape)) for x in inputs) + (
        "" if len(inputs) == 1 else f" ({len(inputs)} inputs)"
    )


def pooled(tensors, mask, head_names, maps=()):
    """One pooled vector per head, each pooling layer named after its head.

    The heads in ``maps`` (dense heads) get their tensor as it is.
    """
    return {
        name: tensor if name in maps
        else pool_features(tensor, mask, name=f"{name}_pooling")
        for name, tensor in zip(head_names, tensors)
    }


def derived_trunk(trunk, outputs):
    """A trunk model named ``"trunk"`` over ``trunk``'s layers, with ``outputs``.

    It shares the original trunk's layers and weights (nothing is copied).
    """
    return Trunk(trunk.inputs, outputs, name=TRUNK_NAME)
