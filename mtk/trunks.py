"""Resolving a trunk: the pretrained network every head shares.

``trunk=`` accepts:

- a keras.applications short name (`APPLICATIONS`), e.g. ``"mobilenet_v3_small"``;
- a keras-hub text preset name, or a local preset directory, including a
  local Hugging Face checkpoint directory that keras-hub converts;
- a path to a saved ``.keras`` model;
- a `keras.Model`, with one input or several named ones (a dict of
  inputs, e.g. raw table columns);
- `tabular` (a `keras.utils.FeatureSpace` with dense layers on top) and
  `combine` (several trunks, e.g. an image and a table, read as one).

Dict inputs: a trunk with several named inputs makes a model whose input is
a dict keyed by those names (one entry per feature), and whose served
signature has one named input per feature (`mtk.export`).

What freezing acts on (`pretrained_parts`): a pretrained trunk is frozen in
phase 1 of transfer learning and unfrozen in phase 2. A tabular trunk is
trained from scratch, so it stays trainable throughout; in a combined trunk
only the pretrained branches freeze and unfreeze, while tabular branches
and the fusion layers train in both phases.

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
        input_shape: the model input's per-example shape; for a trunk with
            named inputs, a dict ``{input name: shape}``.
        input_dtype: the model input's dtype (``"string"`` for text); a dict
            ``{input name: dtype}`` for named inputs.
        input_name: the model input's name (``"image"``, ``"text"`` or
            ``"inputs"``): the serving signature's input key. Unused with
            named inputs (their names are the keys).
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
    if isinstance(parts.input_shape, dict):
        inputs = {
            name: keras.Input(
                shape=tuple(shape), dtype=parts.input_dtype[name], name=name
            )
            for name, shape in sorted(parts.input_shape.items())
        }
    else:
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
    if isinstance(trunk, (TabularTrunk, CombinedTrunk)):
        # Built by tabular() / combine(): trained from scratch, or with the
        # pretrained weights combine() already loaded.
        return _named_inputs_trunk(trunk, trunk.output)
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
    named = named_inputs(model) is not None
    if named and input_shape is not None:
        raise ValueError(
            f"input_shape={input_shape!r}: trunk {model.name!r} has named "
            f"inputs {sorted(named_inputs(model))}, whose shapes are its own; "
            "leave input_shape out."
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
    if named:
        parts = _named_inputs_trunk(model, output)
        if _weights_file(trunk_weights):
            parts.trunk.load_weights(_weights_file(trunk_weights))
        return parts
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


# === Named (dict) inputs, tabular and combined trunks ===


def named_inputs(model):
    """``{name: input}`` of a model with several or dict inputs, else None.

    Example:

    >>> age = keras.Input((1,), name="age")
    >>> country = keras.Input((1,), dtype="string", name="country")
    >>> model = keras.Model({"age": age, "country": country}, age)
    >>> sorted(mtk.trunks.named_inputs(model))
    ['age', 'country']
    """
    try:
        structure = model.input
    except (AttributeError, ValueError):  # e.g. a Sequential never called
        structure = None
    if isinstance(structure, dict):
        return dict(structure)
    if len(model.inputs or ()) <= 1:
        return None
    names = [tensor.name for tensor in model.inputs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(
            f"Trunk {model.name!r} has several inputs named {duplicated}; "
            "name each input (keras.Input(..., name=...)): the names are the "
            "model's input keys and the served features."
        )
    return dict(zip(names, model.inputs))


def _named_inputs_trunk(model, output):
    """`TrunkParts` of a trunk whose inputs are named (a dict)."""
    inputs = named_inputs(model)
    cls = type(model) if isinstance(model, Trunk) else Trunk
    trunk = cls(inputs, output, name=TRUNK_NAME)
    return TrunkParts(
        trunk,
        {name: tuple(x.shape[1:]) for name, x in inputs.items()},
        {name: keras.backend.standardize_dtype(x.dtype)
         for name, x in inputs.items()},
        None,
    )


def input_config(parts):
    """The serializable input arguments of a model over ``parts``."""
    if isinstance(parts.input_shape, dict):
        return {
            "input_shape": {k: list(v) for k, v in parts.input_shape.items()},
            "input_dtype": {
                k: keras.backend.standardize_dtype(v)
                for k, v in parts.input_dtype.items()
            },
            "input_name": None,
        }
    return {
        "input_shape": list(parts.input_shape),
        "input_dtype": keras.backend.standardize_dtype(parts.input_dtype),
        "input_name": parts.input_name,
    }


@keras.saving.register_keras_serializable(package="mtk")
class TabularTrunk(Trunk):
    """A trunk over table columns, trained from scratch (see `tabular`).

    Freezing leaves it trainable: it has nothing pretrained to keep.
    """


@keras.saving.register_keras_serializable(package="mtk")
class CombinedTrunk(Trunk):
    """Several trunks read as one representation (see `combine`).

    Its branches are nested models named ``"<key>_trunk"``; freezing acts on
    the pretrained ones only.
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Each branch revives its own flags (Trunk.from_config); re-applying
        # a branch's flag here would overwrite its layers' (a
        # BatchNormalization kept frozen inside an unfrozen branch).
        return super(Trunk, cls).from_config(config, custom_objects)


def pretrained_parts(trunk):
    """The parts of ``trunk`` that freezing and unfreezing act on.

    A `TabularTrunk` has none (it trains from scratch, in both phases); a
    `CombinedTrunk` has its pretrained branches (not its tabular branches
    or fusion layers); any other trunk is one pretrained part.

    Example:

    >>> parts = mtk.trunks.resolve_trunk(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None)
    >>> mtk.trunks.pretrained_parts(parts.trunk) == [parts.trunk]
    True
    """
    if isinstance(trunk, TabularTrunk):
        return []
    if isinstance(trunk, CombinedTrunk):
        return [
            layer for layer in trunk.layers
            if isinstance(layer, keras.Model)
            and not isinstance(layer, TabularTrunk)
        ]
    return [trunk]


def set_trunk_frozen(trunk, frozen):
    """Freezes (or makes trainable) the pretrained parts of ``trunk``.

    Everything else in the trunk (tabular branches, fusion layers) is left
    trainable. Recompile afterwards.
    """
    parts = pretrained_parts(trunk)
    if parts != [trunk]:
        trunk.trainable = True
    for part in parts:
        part.trainable = not frozen


def tabular(
    feature_space,
    hidden_units=(64,),
    *,
    embedding_dim=8,
    activation="relu",
    dropout=0.0,
    name="tabular",
):
    """A trunk over raw table columns: a FeatureSpace, then dense layers.

    The adapted `keras.utils.FeatureSpace` does the preprocessing (numeric
    normalisation, string / integer categoricals, hashing, crosses) inside
    the model, so the model, and its export, take raw column values: one
    named input per feature. Features that the FeatureSpace encodes as
    integer indices (``output_mode="int"``, for high-cardinality columns;
    build the FeatureSpace with ``output_mode="dict"``) get an embedding.
    Unseen categories are handled as the FeatureSpace says (its
    out-of-vocabulary index, or the hash bucket).

    Args:
        feature_space: an adapted `keras.utils.FeatureSpace`.
        hidden_units: sizes of the dense layers on the encoded features.
        embedding_dim: the embedding size of integer-encoded features: an
            int, or a dict ``{feature: size}`` (others get 8).
        activation: the dense layers' activation.
        dropout: dropout rate after each dense layer (0: none).
        name: the model's name.

    Returns:
        A `TabularTrunk`: a functional model from the dict of raw inputs to
        a ``(batch, hidden_units[-1])`` feature vector, for ``trunk=`` of
        `mtk.build_multitask_model` or a branch of `combine`.

    Example:

    >>> FS = keras.utils.FeatureSpace
    >>> fs = FS({"age": FS.float_normalized(),
    ...          "country": FS.string_categorical(output_mode="int")},
    ...         output_mode="dict")
    >>> fs.adapt({"age": np.array([20.0, 40.0]),
    ...           "country": np.array(["DE", "FR"])})
    >>> trunk = mtk.trunks.tabular(fs, hidden_units=(16,))
    >>> sorted(trunk.input), trunk.output.shape
    (['age', 'country'], (None, 16))
    """
    if not isinstance(feature_space, keras.utils.FeatureSpace):
        raise TypeError(
            "tabular() takes a keras.utils.FeatureSpace, got "
            f"{type(feature_space).__name__}."
        )
    try:
        encoded = feature_space.get_encoded_features()
    except ValueError as error:
        raise ValueError(
            f"tabular(): the FeatureSpace is not ready: {error}"
        ) from error
    if isinstance(encoded, dict):
        pieces = []
        for feature in sorted(encoded):
            x = encoded[feature]
            dtype = keras.backend.standardize_dtype(x.dtype)
            if dtype == "string":
                raise ValueError(
                    f"tabular(): feature {feature!r} is still strings after "
                    "the FeatureSpace; encode it (e.g. "
                    "FeatureSpace.string_categorical())."
                )
            if "int" in dtype:
                dim = (
                    embedding_dim.get(feature, 8)
                    if isinstance(embedding_dim, dict) else embedding_dim
                )
                x = keras.layers.Embedding(
                    _cardinality(feature_space, feature), int(dim),
                    name=f"{feature}_embedding",
                )(x)
                x = keras.layers.Flatten(name=f"{feature}_embedded")(x)
            pieces.append(x)
        x = (
            keras.layers.Concatenate(name="encoded_features")(pieces)
            if len(pieces) > 1 else pieces[0]
        )
    else:
        x = encoded
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation=activation, name=f"hidden_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return TabularTrunk(feature_space.get_inputs(), x, name=name)


def _cardinality(feature_space, feature):
    layer = feature_space.preprocessors.get(feature) or feature_space.crossers.get(
        feature
    )
    if isinstance(layer, (keras.layers.StringLookup, keras.layers.IntegerLookup)):
        return layer.vocabulary_size()
    if isinstance(
        layer,
        (keras.layers.Hashing, keras.layers.HashedCrossing,
         keras.layers.Discretization),
    ):
        return layer.num_bins
    raise ValueError(
        f"tabular(): feature {feature!r} is integer-encoded by a "
        f"{type(layer).__name__}, whose number of values is unknown; give it "
        "a lookup, hashing or discretization preprocessor."
    )


def combine(
    trunks,
    *,
    input_shapes=None,
    trunk_weights="pretrained",
    hidden_units=(),
    activation="relu",
):
    """Several trunks (e.g. an image and a table) as one shared representation.

    Each branch reads its own input(s): an image trunk reads the input named
    by its key (``"xray"``), a tabular trunk its feature columns. Their
    pooled features are concatenated, then optional dense fusion layers
    follow. Each branch's preprocessing is inside the trunk.

    Freezing (phase 1 of `mtk.fit_transfer`) and unfreezing (phase 2) act on
    the pretrained branches only; tabular branches and the fusion layers
    train in both phases (`pretrained_parts`).

    Args:
        trunks: dict ``{key: trunk}``; each trunk is anything ``trunk=``
            takes (a keras.applications name, a keras-hub preset, a
            ``.keras`` path, a `keras.Model`, a `tabular` trunk).
        input_shapes: dict ``{key: input shape}`` for the branches that
            need one (keras.applications).
        trunk_weights: as for `mtk.build_multitask_model`, for the
            pretrained branches (tabular ones are trained from scratch).
        hidden_units: sizes of dense fusion layers on the concatenation.
        activation: their activation.

    Returns:
        A `CombinedTrunk` named ``"trunk"``, for ``trunk=``.

    Example:

    >>> FS = keras.utils.FeatureSpace
    >>> fs = FS({"age": FS.float_normalized()})
    >>> fs.adapt({"age": np.array([20.0, 40.0])})
    >>> trunk = mtk.trunks.combine(
    ...     {"xray": "mobilenet_v3_small",
    ...      "record": mtk.trunks.tabular(fs, hidden_units=(8,))},
    ...     input_shapes={"xray": (32, 32, 3)}, trunk_weights=None)
    >>> sorted(trunk.input), [p.name for p in mtk.trunks.pretrained_parts(trunk)]
    (['age', 'xray'], ['xray_trunk'])
    """
    if not isinstance(trunks, dict) or not trunks:
        raise ValueError(
            "combine() takes a non-empty dict {key: trunk}, e.g. {'xray': "
            f"'mobilenet_v3_small', 'record': tabular_trunk}}; got {trunks!r}."
        )
    input_shapes = dict(input_shapes or {})
    unknown = sorted(set(input_shapes) - set(trunks))
    if unknown:
        raise ValueError(
            f"input_shapes names {unknown}, which are not keys of trunks "
            f"({sorted(trunks)})."
        )
    inputs, features = {}, []
    for key, source in trunks.items():
        if isinstance(source, (TabularTrunk, CombinedTrunk)):
            parts = _named_inputs_trunk(source, source.output)
        else:
            parts = resolve_trunk(
                source, input_shape=input_shapes.get(key),
                trunk_weights=trunk_weights,
            )
        branch_class = type(parts.trunk)
        branch = branch_class(
            parts.trunk.input, parts.trunk.output, name=f"{key}_trunk"
        )
        if isinstance(parts.input_shape, dict):
            branch_inputs = {
                name: keras.Input(tuple(shape), dtype=parts.input_dtype[name],
                                  name=name)
                for name, shape in sorted(parts.input_shape.items())
            }
            x, mask = branch_inputs, None
        else:
            branch_inputs = {key: keras.Input(
                tuple(parts.input_shape), dtype=parts.input_dtype, name=key)}
            x = branch_inputs[key]
            if parts.preprocessing is not None:
                config = dict(parts.preprocessing.get_config())
                config["name"] = f"{key}_preprocessing"
                x = type(parts.preprocessing).from_config(config)(x)
            mask = x.get("padding_mask") if isinstance(x, dict) else None
        clash = sorted(set(branch_inputs) & set(inputs))
        if clash:
            raise ValueError(
                f"combine(): input(s) {clash} of branch {key!r} clash with "
                "another branch's inputs; every input (branch key of an image "
                "or text trunk, feature of a tabular one) needs its own name."
            )
        inputs.update(branch_inputs)
        features.append(
            pool_features(branch(x), mask, name=f"{key}_pooling")
        )
    x = (
        keras.layers.Concatenate(name="combined_features")(features)
        if len(features) > 1 else features[0]
    )
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation=activation, name=f"fusion_{i}")(x)
    return CombinedTrunk(dict(sorted(inputs.items())), x, name=TRUNK_NAME)
