"""Resolving a trunk: the pretrained network every head shares.

``trunk=`` accepts:

- a keras.applications short name (`APPLICATIONS`), e.g. ``"mobilenet_v3_small"``;
- a keras-hub text preset name, or a local preset directory, including a
  local Hugging Face checkpoint directory that keras-hub converts;
- a path to a saved ``.keras`` model;
- a `keras.Model`.

`build_trunk` returns the model input and the pooled feature vector the heads
read. The trunk itself is one nested model named ``"trunk"``; the input
preprocessing it needs (the application's ``preprocess_input``, the keras-hub
tokenizer) sits in front of it inside the model, so the model takes raw
images or strings.

``trunk_weights`` means the same for every source:

- ``"pretrained"`` (default): the trunk's own pretrained weights (ImageNet for
  keras.applications, the preset's for keras-hub, as saved for a model).
  ``"imagenet"`` is accepted as a synonym for applications.
- ``None``: the same architecture, randomly initialised (training from
  scratch).
- a path to a local weights file (``.weights.h5``) to load into the trunk.
"""

import dataclasses
import os
import zipfile

import keras

from mtk.preprocessing import ApplicationPreprocessing
from mtk.preprocessing import TextPreprocessing

TRUNK_NAME = "trunk"
POOLING_NAME = "pooling"

# Short name -> (keras.applications class, module holding preprocess_input).
APPLICATIONS = {
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2"),
    "mobilenet_v3_small": ("MobileNetV3Small", "mobilenet_v3"),
    "mobilenet_v3_large": ("MobileNetV3Large", "mobilenet_v3"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet"),
    "efficientnet_b1": ("EfficientNetB1", "efficientnet"),
    "efficientnet_b2": ("EfficientNetB2", "efficientnet"),
    "efficientnet_b3": ("EfficientNetB3", "efficientnet"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "efficientnet_v2"),
    "resnet50": ("ResNet50", "resnet50"),
    "convnext_tiny": ("ConvNeXtTiny", "convnext"),
}


def get_trunk(model):
    """The model's trunk: its nested layer named ``"trunk"`` (`TRUNK_NAME`).

    Example:

    >>> mtk.trunks.get_trunk(model).name
    'trunk'
    """
    try:
        return model.get_layer(TRUNK_NAME)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named {TRUNK_NAME!r}; build it "
            "with mtk.build_multitask_model()."
        ) from None


@keras.saving.register_keras_serializable(package="mtk")
class Trunk(keras.Model):
    """The shared trunk: a functional model whose trainable flags survive saving.

    Layers that create their sub-layers in ``build()`` (keras-hub's
    transformer blocks) come back from ``keras.saving.load_model`` with those
    sub-layers trainable even when the layer itself was frozen, so a loaded,
    frozen text model would train its trunk. Reviving re-applies each layer's
    own flag, which Keras propagates to its sub-layers and variables.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        trunk = super().from_config(config, custom_objects)
        # Assigning an unchanged value is skipped by Layer.__setattr__, so
        # call the property's setter itself: it propagates the flag.
        for layer in trunk.layers:
            keras.layers.Layer.trainable.fset(layer, layer.trainable)
        return trunk


@dataclasses.dataclass
class TrunkParts:
    """A resolved trunk: what a model puts between its input and its heads.

    Attributes:
        trunk: the pretrained network, a `Trunk` named ``"trunk"``.
        input_shape: the model input's per-example shape.
        input_dtype: the model input's dtype (``"string"`` for text).
        input_name: the model input's name (``"image"``, ``"text"`` or
            ``"inputs"``): the serving signature's input key.
        preprocessing: the layer between the raw input and the trunk, or None.
    """

    trunk: keras.Model
    input_shape: tuple
    input_dtype: str
    input_name: str
    preprocessing: keras.layers.Layer = None


def trunk_features(parts):
    """Connects a resolved trunk: input -> preprocessing -> trunk -> pooling.

    Args:
        parts: a `TrunkParts`.

    Returns:
        ``(inputs, features)``: the input tensor and the pooled
        ``(batch, dim)`` features every head reads.
    """
    inputs, x, mask = trunk_inputs(parts)
    return inputs, pool_features(parts.trunk(x), mask)


def trunk_inputs(parts):
    """The model input and what the trunk reads: input -> preprocessing.

    Args:
        parts: a `TrunkParts`.

    Returns:
        ``(inputs, x, mask)``: the model's input tensor, the trunk's input
        (preprocessed) and, for text, the padding mask to pool with (else
        None).

    Example:

    >>> parts = mtk.trunks.resolve_trunk(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None)
    >>> inputs, x, mask = mtk.trunks.trunk_inputs(parts)
    >>> inputs.name, x.shape, mask is None
    ('image', (None, 32, 32, 3), True)
    """
    inputs = keras.Input(
        shape=tuple(parts.input_shape), dtype=parts.input_dtype,
        name=parts.input_name,
    )
    x = inputs if parts.preprocessing is None else parts.preprocessing(inputs)
    # Text preprocessing returns token ids with their padding mask: pool
    # over real tokens only (the sentence embedding of sentence-transformers).
    mask = x.get("padding_mask") if isinstance(x, dict) else None
    return inputs, x, mask


def build_trunk(*args, **kwargs):
    """The input and pooled features of a trunk (see `resolve_trunk`).

    Example:

    >>> inputs, features = mtk.trunks.build_trunk(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None)
    >>> features.shape
    (None, 576)
    """
    return trunk_features(resolve_trunk(*args, **kwargs))


def resolve_trunk(
    trunk,
    input_shape=None,
    trunk_weights="pretrained",
    trunk_output=None,
    sequence_length=None,
):
    """Resolves ``trunk=`` into the parts of a multi-task model's shared part.

    Args:
        trunk: see the module docstring.
        input_shape: per-example input shape for image trunks; required for
            keras.applications, checked against the model for model trunks.
        trunk_weights: ``"pretrained"``, ``None`` or a weights file path.
        trunk_output: for keras.applications and model trunks, the name of
            the layer whose output becomes the features (the model is cut
            there), e.g. a feature map for dense heads.
        sequence_length: for text trunks, the token sequence length.

    Returns:
        A `TrunkParts`.

    Example:

    >>> parts = mtk.trunks.resolve_trunk(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None)
    >>> parts.trunk.name, parts.input_name
    ('trunk', 'image')
    """
    _check_weights_argument(trunk_weights)
    if trunk_output is not None and not (
        isinstance(trunk, keras.Model)
        or (isinstance(trunk, str) and trunk.endswith(".keras"))
        or (isinstance(trunk, str) and trunk in APPLICATIONS)
    ):
        raise ValueError(
            "trunk_output cuts a keras.applications, keras.Model or .keras "
            f"trunk at a named layer; it does not apply to trunk={trunk!r}."
        )
    if isinstance(trunk, keras.Model):
        return _model_trunk(trunk, input_shape, trunk_weights, trunk_output)
    if not isinstance(trunk, (str, os.PathLike)):
        raise TypeError(
            "trunk must be a keras.applications name, a keras-hub preset name "
            "or directory, a .keras path or a keras.Model; got "
            f"{type(trunk).__name__}."
        )
    trunk = os.fspath(trunk)
    if trunk in APPLICATIONS:
        return _application_trunk(trunk, input_shape, trunk_weights, trunk_output)
    if trunk.endswith(".keras"):
        model = load_keras_file(trunk, argument="trunk")
        return _model_trunk(model, input_shape, trunk_weights, trunk_output)
    if os.path.isdir(trunk) or _is_keras_hub_preset(trunk):
        return _keras_hub_text_trunk(trunk, trunk_weights, sequence_length)
    raise ValueError(
        f"Unknown trunk {trunk!r}. Known keras.applications names: "
        f"{sorted(APPLICATIONS)}. Also accepted: a keras-hub preset name "
        "(keras_hub.models.Backbone.presets), a local preset or Hugging Face "
        "checkpoint directory, a .keras file, or a keras.Model."
    )


_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def load_keras_file(path, argument="path", **kwargs):
    """Loads a saved ``.keras`` model, saying what is wrong with a bad file.

    `keras.saving.load_model` answers "File not found" for a file that exists
    but is empty, truncated or not a ``.keras`` archive; this names the
    argument and the actual fault.

    Args:
        path: the ``.keras`` file.
        argument: the argument that named it, for the messages.
        **kwargs: passed to `keras.saving.load_model`.

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: if the file is not a loadable ``.keras`` archive.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "empty.keras")
    >>> open(path, "wb").close()
    >>> mtk.trunks.load_keras_file(path, argument="trunk")
    Traceback (most recent call last):
    ...
    ValueError: trunk='...empty.keras' is empty (0 bytes), not a saved Keras model; ...
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}={path!r}: no such .keras file.")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(
            f"{argument}={path!r} is empty (0 bytes), not a saved Keras "
            "model; was the save or copy interrupted? Save it again with "
            "model.save()."
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if not zipfile.is_zipfile(path):
        if head.startswith(_ZIP_MAGIC):
            fault = (
                "a damaged or truncated zip archive (its end is missing: was "
                "the save or copy interrupted?)"
            )
        elif head.startswith(_HDF5_MAGIC):
            fault = (
                "an HDF5 file (a legacy .h5 model or a .weights.h5 file), not "
                "a .keras archive"
            )
        else:
            fault = "not a Keras file (a .keras file is a zip archive)"
        raise ValueError(f"{argument}={path!r} ({size} bytes) is {fault}.")
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            raise ValueError(
                f"{argument}={path!r} is a zip archive but not a saved Keras "
                "model: it holds no config.json."
            )
    try:
        return keras.saving.load_model(path, **kwargs)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as error:
        raise ValueError(
            f"{argument}={path!r} is a damaged .keras archive: {error}"
        ) from error


_NAMED_WEIGHTS = (None, "pretrained", "imagenet")


def _weights_file(trunk_weights):
    """The local weights file named by trunk_weights, or None."""
    return None if trunk_weights in _NAMED_WEIGHTS else os.fspath(trunk_weights)


def _check_weights_argument(trunk_weights):
    if trunk_weights in _NAMED_WEIGHTS:
        return
    if not isinstance(trunk_weights, (str, os.PathLike)) or not os.path.isfile(
        trunk_weights
    ):
        raise ValueError(
            "trunk_weights must be 'pretrained', 'imagenet', None or the path "
            f"of an existing weights file; got {trunk_weights!r}."
        )


def pool_features(features, mask=None, name=POOLING_NAME):
    """Pools a feature map to one vector per example (vectors pass through).

    Example:

    >>> mtk.trunks.pool_features(keras.Input((7, 7, 16))).shape
    (None, 16)
    """
    rank = len(features.shape)
    if rank == 2:
        return features
    if rank == 3:
        return keras.layers.GlobalAveragePooling1D(name=name)(
            features, mask=mask
        )
    if rank == 4:
        return keras.layers.GlobalAveragePooling2D(name=name)(features)
    raise ValueError(
        f"The trunk's output has shape {features.shape}; mtk pools outputs "
        "of rank 2 to 4. Use trunk_output= to cut the trunk at another layer."
    )


def feature_map_layers(model):
    """Names of ``model``'s layers whose output is a feature map (rank 4).

    The candidates for ``trunk_output=`` and for dense heads' ``skip=``.

    Example:

    >>> net = keras.Sequential([keras.Input((8, 8, 1)),
    ...     keras.layers.Conv2D(4, 3, name="conv"),
    ...     keras.layers.GlobalAveragePooling2D(name="pool")])
    >>> mtk.trunks.feature_map_layers(net)
    ['conv']
    """
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            output = layer.output
        except (AttributeError, ValueError):
            continue  # a layer used several times has no single output
        if not isinstance(output, (list, tuple, dict)) and len(output.shape) == 4:
            names.append(layer.name)
    return names


def _cut(model, trunk_output):
    """The output of ``model``'s layer ``trunk_output``, or an error."""
    try:
        return model.get_layer(trunk_output).output
    except ValueError:
        names = [layer.name for layer in model.layers]
        raise ValueError(
            f"trunk_output={trunk_output!r} names no layer of "
            f"{model.name!r}; its layers are {names}."
        ) from None


def _application_trunk(name, input_shape, trunk_weights, trunk_output=None):
    class_name, module = APPLICATIONS[name]
    if input_shape is None:
        raise ValueError(
            f"trunk={name!r} needs input_shape, e.g. (224, 224, 3)."
        )
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"trunk={name!r} takes RGB images: input_shape must be "
            f"(height, width, 3), got {input_shape}."
        )
    # A weights file is loaded below, into the trunk alone.
    weights = None if trunk_weights is None else "imagenet"
    if _weights_file(trunk_weights):
        weights = None
    application = getattr(keras.applications, class_name)
    try:
        network = application(
            include_top=False, weights=weights, input_shape=input_shape
        )
    except ValueError as error:
        raise ValueError(
            f"trunk={name!r} cannot take input_shape={input_shape}: {error}"
        ) from error
    except Exception as error:
        if weights == "imagenet" and "fetch" in str(error).lower():
            raise RuntimeError(
                f"Could not download the ImageNet weights of {name!r} (no "
                "network?). Pass trunk_weights=None to train from scratch or "
                "the path of a local weights file."
            ) from error
        raise
    # Some applications use their name argument as the variant key, so the
    # trunk is named by wrapping, not by name=.
    if trunk_output is not None:
        output = _cut(network, trunk_output)
        # A weights file holds the whole network's weights.
        if _weights_file(trunk_weights):
            network.load_weights(_weights_file(trunk_weights))
        trunk = Trunk(network.inputs, output, name=TRUNK_NAME)
    else:
        trunk = Trunk(network.inputs, network.outputs[0], name=TRUNK_NAME)
        if _weights_file(trunk_weights):
            trunk.load_weights(_weights_file(trunk_weights))
    return TrunkParts(
        trunk, input_shape, "float32", "image",
        ApplicationPreprocessing(module, name="preprocessing"),
    )


def _model_trunk(model, input_shape, trunk_weights, trunk_output):
    if len(model.inputs) != 1:
        raise ValueError(
            f"A model trunk must have one input; {model.name!r} has "
            f"{len(model.inputs)}."
        )
    if trunk_weights is None:
        # Same architecture, fresh initial weights.
        model = keras.models.clone_model(model)
    if trunk_output is not None:
        output = _cut(model, trunk_output)
    else:
        output = model.outputs[0]
        if len(model.outputs) != 1:
            raise ValueError(
                f"Model trunk {model.name!r} has {len(model.outputs)} outputs; "
                "pick one with trunk_output=<layer name>."
            )
    trunk = Trunk(model.inputs, output, name=TRUNK_NAME)
    if _weights_file(trunk_weights):
        trunk.load_weights(_weights_file(trunk_weights))
    model_shape = tuple(model.inputs[0].shape[1:])
    if input_shape is not None and not _shapes_compatible(
        tuple(input_shape), model_shape
    ):
        raise ValueError(
            f"input_shape={tuple(input_shape)} does not fit the trunk "
            f"{model.name!r}, which takes {model_shape}."
        )
    shape = tuple(input_shape) if input_shape is not None else model_shape
    return TrunkParts(trunk, shape, model.inputs[0].dtype, "inputs")


def _shapes_compatible(given, expected):
    return len(given) == len(expected) and all(
        e is None or g == e for g, e in zip(given, expected)
    )


def _is_keras_hub_preset(name):
    import keras_hub

    return name in keras_hub.models.Backbone.presets


def _keras_hub_text_trunk(preset, trunk_weights, sequence_length):
    import keras_hub

    kwargs = {}
    if sequence_length is not None:
        kwargs["sequence_length"] = sequence_length
    try:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset, **kwargs
        )
    except ValueError as error:
        raise ValueError(
            f"trunk={preset!r} is not a keras-hub text model mtk can use "
            f"(no text preprocessor for it): {error}"
        ) from error
    backbone = keras_hub.models.Backbone.from_preset(
        preset, load_weights=trunk_weights is not None
    )
    if _weights_file(trunk_weights):
        backbone.load_weights(_weights_file(trunk_weights))
    # Keep only the token-level output: layers mtk does not use (BERT's
    # pooler) would otherwise be trained without gradients, and a plain
    # functional trunk saves each layer's trainable flag.
    trunk = Trunk(
        backbone.input, backbone.output["sequence_output"], name=TRUNK_NAME
    )
    return TrunkParts(
        trunk, (), "string", "text",
        TextPreprocessing(preprocessor, name="preprocessing"),
    )
