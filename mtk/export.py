"""Exporting a multi-task model for serving: TF Serving SavedModels, TFLite.

`export_saved_model` writes the layout TF Serving polls,
``<base_dir>/<version>/``, with one ``serving_default`` signature that takes
raw inputs (the preprocessing is in the graph) and returns named outputs.

Input (one, named after the model's input):

- ``image`` (keras.applications trunks): images ``(batch, H, W, 3)`` of pixel
  values 0-255, float32, or uint8 with ``input_dtype="uint8"``;
- ``text`` (keras-hub text trunks): strings ``(batch,)``, tokenized in the
  graph;
- ``inputs`` (model trunks): the trunk's own input.

Models with named inputs (tabular trunks, combined image + table trunks,
trunks with several named inputs) take one named input per feature, so a
TF Serving ``instances`` row reads ``{"age": 41, "country": "DE", "xray":
[...]}``: a column of scalars per table feature (shape ``(batch,)``), the
raw value the FeatureSpace in the graph expects, and images as above.
TFLite: numeric features (FeatureSpace ``float``, ``float_normalized``,
``float_rescaled``) convert; categorical ones do not (string lookups,
hashing and one-hot encoding are TensorFlow ops that TFLite's built-in op
set lacks): `export_tflite` refuses them naming the ops; serve those models
with `export_saved_model`.

Outputs, per head:

- ``<head>``: the head's output as ``model.predict`` gives it: class
  probabilities (Classification), probabilities (Binary, MultiLabel), values
  (Regression);
- ``<head>_class_id`` (Classification): int64 id of the most probable class;
- ``<head>_class_name`` (Classification with ``class_names``): that class's
  name, a string.

Text models use tensorflow-text ops (keras-hub's tokenizers): a Python
process loading the SavedModel must ``import tensorflow_text`` first to
register them. TF Serving's model server links those ops in, so it needs
nothing extra. Neither mtk nor keras-hub is needed to load or run an export.

Models need not be compiled to be exported (serving runs inference only);
they must be built mtk models with heads.
"""

import numbers
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from mtk import monitoring
from mtk.heads import Classification
from mtk.heads import heads_of

SIGNATURE_NAME = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
QUANTIZE_MODES = (None, "dynamic", "float16")
# TF Serving reads at most this many warm-up records.
MAX_WARMUP_REQUESTS = 1000


def export_saved_model(
    model,
    base_dir,
    version=None,
    *,
    input_dtype=None,
    warmup_inputs=None,
    model_name=None,
    reference_data=None,
):
    """Writes ``model`` as version ``version`` of a TF Serving model.

    The version is written into a hidden temporary directory inside
    ``base_dir`` and renamed into place when complete, so a server polling
    ``base_dir`` never sees a half-written version; if anything fails, no
    version directory is left behind.

    Args:
        model: a built model from `mtk.build_multitask_model` (compiled or
            not) or loaded from one.
        base_dir: the model's base directory (created if missing), the one
            given to TF Serving as ``--model_base_path``.
        version: a non-negative integer; ``None`` takes the next one after
            the highest existing version (1 when there is none). An existing
            version is never overwritten.
        input_dtype: dtype of the served input. Defaults to the model's input
            dtype (float32 for images, string for text); ``"uint8"`` serves
            images as bytes 0-255, cast to float inside the graph.
        warmup_inputs: optional batch of example inputs (array of images,
            list of strings, or for a model with named inputs a dict of
            batches keyed by input name, as ``model.predict`` takes). Each
            example becomes one warm-up request in
            ``assets.extra/tf_serving_warmup_requests`` (TF Serving's
            PredictionLog TFRecord format), which TF Serving replays before
            the version takes traffic.
        model_name: the model name written into warm-up requests; defaults
            to the base directory's name (what TF Serving calls the model).
        reference_data: optional held-out data (a `tf.data.Dataset` of
            inputs or ``(inputs, labels)``, or arrays; see
            `mtk.monitoring.compute_profile`). Its reference profile (output
            and input distributions, and metrics where labels are given) is
            written to ``assets.extra/mtk_reference.json``, which TF Serving
            ignores and `mtk.monitoring` compares new traffic with.

    Returns:
        The path of the written version directory.

    Raises:
        TypeError: ``model`` is not a keras.Model, or ``version`` is not an
            integer.
        ValueError: the model is unbuilt or has no mtk heads, the version
            exists, ``base_dir`` is a file, or ``warmup_inputs`` or
            ``reference_data`` do not fit.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Classification("item", 3, class_names=list("abc"))])
    >>> base_dir = os.path.join(tempfile.mkdtemp(), "items")
    >>> path = mtk.export.export_saved_model(model, base_dir)
    >>> os.path.basename(path)
    '1'
    >>> serving = tf.saved_model.load(path).signatures["serving_default"]
    >>> sorted(serving.structured_outputs)
    ['item', 'item_class_id', 'item_class_name']
    """
    spec = _serving_spec(model, input_dtype)
    version = _check_version(version)
    base_dir = os.fspath(base_dir)
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ValueError(
            f"base_dir={base_dir!r} is a file; it must be a directory (TF "
            "Serving's model base path)."
        )
    if version is not None and os.path.exists(
        os.path.join(base_dir, str(version))
    ):
        raise ValueError(
            f"version={version}: {os.path.join(base_dir, str(version))!r} "
            "already exists; mtk never overwrites a served version. Pass "
            "another version, or None for the next one."
        )
    if warmup_inputs is not None:
        warmup_inputs = _check_warmup_inputs(warmup_inputs, spec)
    if model_name is None:
        model_name = os.path.basename(os.path.abspath(base_dir))
    profile = None
    if reference_data is not None:
        # Before anything is written: bad reference data leaves no trace.
        # The serving function itself (graph mode, traced once and reused
        # by the export): the profile describes exactly what is served.
        spec.serve = _serving_fn(spec)
        profile = monitoring.compute_profile(
            model, reference_data, input_dtype=input_dtype, predict=spec.serve,
        )

    os.makedirs(base_dir, exist_ok=True)
    if version is None:
        version = _next_version(base_dir)
    final_dir = os.path.join(base_dir, str(version))
    # TF Serving only loads directories named by an integer: the dot-named
    # temporary directory is invisible to it.
    tmp_dir = tempfile.mkdtemp(prefix=f".{version}.incomplete-", dir=base_dir)
    try:
        _write_saved_model(model, spec, tmp_dir)
        if warmup_inputs is not None:
            _write_warmup_requests(
                os.path.join(tmp_dir, WARMUP_FILE),
                warmup_inputs,
                spec,
                model_name,
            )
        if profile is not None:
            monitoring.write_profile(profile, tmp_dir)
        if os.path.exists(final_dir):
            raise ValueError(
                f"version={version}: {final_dir!r} appeared while exporting; "
                "mtk never overwrites a served version."
            )
        os.rename(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir


def export_tflite(model, path, quantize=None, *, input_dtype=None):
    """Converts an image model to a TFLite flatbuffer with named outputs.

    The TFLite model has the ``serving_default`` signature of
    `export_saved_model` (same input and output names);
    ``tf.lite.Interpreter(path).get_signature_runner()`` returns a dict
    keyed by those names.

    Args:
        model: a built mtk model with an image (or other numeric) input. Text
            trunks are refused: their tokenizer ops do not exist in TFLite.
        path: the ``.tflite`` file to write (replaced atomically if present).
        quantize: ``None`` (float32), ``"dynamic"`` (int8 weights, dynamic
            range quantization) or ``"float16"`` (float16 weights).
        input_dtype: as in `export_saved_model`.

    Returns:
        ``path``.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Binary("flag")])
    >>> path = mtk.export.export_tflite(
    ...     model, os.path.join(tempfile.mkdtemp(), "flag.tflite"),
    ...     quantize="float16")
    >>> tf.lite.Interpreter(path).get_signature_list()["serving_default"]
    {'inputs': ['image'], 'outputs': ['flag']}
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}."
        )
    spec = _serving_spec(model, input_dtype)
    if isinstance(spec.input, dict):
        strings = sorted(k for k, v in spec.input.items() if v.dtype == tf.string)
        if strings:
            raise ValueError(
                f"export_tflite: model {model.name!r} takes string features "
                f"{strings}, whose lookups need TensorFlow hash-table ops "
                "that TFLite lacks. Serve it with export_saved_model."
            )
    elif spec.input.dtype == tf.string:
        raise ValueError(
            f"export_tflite converts image models; model {model.name!r} "
            f"takes text (input {spec.input.name!r}), whose tokenizer ops "
            "TFLite lacks. Serve it with export_saved_model."
        )
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"path={path!r} is a directory; give a file path.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"path={path!r}: the directory {directory!r} does not exist."
        )

    with tempfile.TemporaryDirectory() as saved_model_dir:
        _write_saved_model(model, spec, saved_model_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=[SIGNATURE_NAME]
        )
        if quantize is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        try:
            flatbuffer = converter.convert()
        except Exception as error:
            missing = re.search(r"TF Select ops: ([^\n]*)", str(error))
            if missing is None or not isinstance(spec.input, dict):
                raise
            raise ValueError(
                f"export_tflite: model {model.name!r} uses TensorFlow ops that "
                f"TFLite lacks ({missing.group(1).strip()}), e.g. the one-hot "
                "encoding, hashing or lookups of categorical features; TFLite "
                "takes numeric features (float, float_normalized, "
                "float_rescaled). Serve it with export_saved_model."
            ) from None
    tmp_fd, tmp_path = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", dir=directory
    )
    try:
        with os.fdopen(tmp_fd, "wb") as f:
            f.write(flatbuffer)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return path


class _ServingSpec:
    """What the serving signature takes and returns, decided up front."""

    def __init__(self, model, input_spec, heads):
        self.model = model
        self.input = input_spec
        self.heads = heads
        self.serve = None


def _serving_spec(model, input_dtype):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"model must be a keras.Model built by mtk, got "
            f"{type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built; build it (e.g. with "
            "mtk.build_multitask_model) before exporting."
        )
    heads = heads_of(model)
    inputs = getattr(model, "inputs", None)
    named = isinstance(getattr(model, "input", None), dict)
    if not inputs or (len(inputs) != 1 and not named):
        raise ValueError(
            f"Model {model.name!r} must be a functional mtk model with one "
            "input to be exported."
        )
    outputs = model.outputs
    output_names = [getattr(o, "name", None) for o in outputs]
    if not isinstance(model.output, dict) or len(outputs) != len(heads):
        raise ValueError(
            f"Model {model.name!r} must output a dict keyed by head name "
            f"({sorted(heads)}); got outputs {output_names}."
        )
    for name, head in heads.items():
        for key in _extra_output_keys(head):
            if key in heads:
                raise ValueError(
                    f"Head {name!r} exports output {key!r}, which is also "
                    "the name of a head; rename one of the heads."
                )

    if named:
        return _ServingSpec(model, _named_serving_spec(model, input_dtype), heads)
    model_input = inputs[0]
    dtype = tf.as_dtype(input_dtype or model_input.dtype)
    model_dtype = tf.as_dtype(model_input.dtype)
    if (dtype == tf.string) != (model_dtype == tf.string):
        raise ValueError(
            f"input_dtype={input_dtype!r} does not fit model {model.name!r}, "
            f"whose input {model_input.name!r} is {model_dtype.name}."
        )
    if dtype != model_dtype and not (dtype.is_integer or dtype.is_floating):
        raise ValueError(
            f"input_dtype={input_dtype!r}: give a numeric dtype such as "
            "'uint8' or 'float32'."
        )
    name = model_input.name
    input_spec = tf.TensorSpec(tuple(model_input.shape), dtype, name=name)
    return _ServingSpec(model, input_spec, heads)


def serving_input_specs(model, input_dtype=None):
    """The serving signature's input: a TensorSpec, or a dict of them for a
    model with named inputs (see `export_saved_model`).

    Example:

    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Binary("flag")])
    >>> spec = mtk.export.serving_input_specs(model, input_dtype="uint8")
    >>> spec.name, spec.dtype.name, spec.shape.as_list()
    ('image', 'uint8', [None, 32, 32, 3])
    """
    return _serving_spec(model, input_dtype).input


def serving_function(model, input_dtype=None):
    """The traced function the export serves: served inputs -> outputs.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Classification("item", 3, class_names=list("abc"))])
    >>> serve = mtk.export.serving_function(model)
    >>> outputs = serve(tf.zeros((2, 32, 32, 3)))
    >>> sorted(outputs), outputs["item_class_name"].shape.as_list()
    (['item', 'item_class_id', 'item_class_name'], [2])
    """
    return _serving_fn(_serving_spec(model, input_dtype))


def _named_serving_spec(model, input_dtype):
    """One TensorSpec per named input; a column of scalars per (1,) feature."""
    if input_dtype is not None:
        raise ValueError(
            f"input_dtype={input_dtype!r} applies to one-input models; model "
            f"{model.name!r} takes named inputs {sorted(model.input)}, served "
            "with their own dtypes."
        )
    spec = {}
    for name, tensor in sorted(model.input.items()):
        shape = tuple(tensor.shape)
        if shape[1:] == (1,):
            shape = shape[:1]
        spec[name] = tf.TensorSpec(shape, tf.as_dtype(tensor.dtype), name=name)
    return spec


def _to_model_input(value, tensor):
    """A served feature as the model's input ``tensor`` takes it."""
    if value.dtype != tf.string:
        value = tf.cast(value, tensor.dtype)
    if len(value.shape) == len(tensor.shape) - 1:
        value = tf.expand_dims(value, -1)
    return value


def _extra_output_keys(head):
    if not isinstance(head, Classification):
        return ()
    if head.class_names is None:
        return (f"{head.name}_class_id",)
    return (f"{head.name}_class_id", f"{head.name}_class_name")


def _serving_fn(spec):
    model = spec.model
    model_dtype = model.inputs[0].dtype
    named = isinstance(spec.input, dict)
    class_names = {
        name: tf.constant(list(head.class_names))
        for name, head in spec.heads.items()
        if isinstance(head, Classification) and head.class_names is not None
    }

    def serve(inputs):
        if named:
            inputs = {k: _to_model_input(v, model.input[k])
                      for k, v in sorted(inputs.items())}
        elif spec.input.dtype != tf.string:
            inputs = tf.cast(inputs, model_dtype)
        predictions = model(inputs, training=False)
        outputs = {name: predictions[name] for name in spec.heads}
        for name, head in spec.heads.items():
            if isinstance(head, Classification):
                class_id = tf.argmax(predictions[name], axis=-1)
                outputs[f"{name}_class_id"] = class_id
                if name in class_names:
                    outputs[f"{name}_class_name"] = tf.gather(
                        class_names[name], class_id
                    )
        return outputs

    # The signature's input key is the TensorSpec's name.
    return tf.function(serve, input_signature=[spec.input])


def _write_saved_model(model, spec, directory):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, spec.serve or _serving_fn(spec))
    archive.write_out(directory, verbose=False)


def _check_version(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise TypeError(
            f"version must be an integer (TF Serving's version directories "
            f"are integers) or None, got {version!r}."
        )
    if not 0 <= int(version) < 2**63:
        raise ValueError(
            f"version must be a non-negative int64, got {version!r}."
        )
    return int(version)


def _next_version(base_dir):
    versions = [int(n) for n in os.listdir(base_dir) if n.isdigit()]
    return max(versions, default=0) + 1


def _check_warmup_inputs(warmup_inputs, spec):
    """``{served input: batch}`` of the warm-up examples, checked."""
    if not isinstance(spec.input, dict):
        batches = {spec.input.name: _check_warmup_batch(warmup_inputs, spec.input)}
    else:
        names = sorted(spec.input)
        if not isinstance(warmup_inputs, dict):
            raise ValueError(
                f"The model takes named inputs {names}; warmup_inputs must be "
                "a dict of batches keyed by them (as model.predict takes), "
                f"got {type(warmup_inputs).__name__}."
            )
        missing = sorted(set(names) - set(warmup_inputs))
        unknown = sorted(set(warmup_inputs) - set(names), key=str)
        if missing or unknown:
            fault = (f"lacks the model's inputs {missing}" if missing else
                     f"has inputs {unknown} the model does not take")
            raise ValueError(f"warmup_inputs {fault}; its inputs are {names}.")
        batches = {name: _check_warmup_batch(warmup_inputs[name], spec.input[name])
                   for name in names}
        sizes = {name: len(batch) for name, batch in batches.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"warmup_inputs' inputs hold different numbers of examples: {sizes}."
            )
    count = len(next(iter(batches.values())))
    if not 1 <= count <= MAX_WARMUP_REQUESTS:
        raise ValueError(
            f"warmup_inputs must hold 1 to {MAX_WARMUP_REQUESTS} examples "
            f"(TF Serving's limit), got {count}."
        )
    return batches


def _check_warmup_batch(batch, tensor_spec):
    if tensor_spec.dtype == tf.string:
        if isinstance(batch, (str, bytes)):
            batch = [batch]
        examples = np.asarray(batch, dtype=object)
    else:
        examples = np.asarray(batch)
        if not (
            np.issubdtype(examples.dtype, np.number)
            or examples.dtype == np.bool_
        ):
            raise ValueError(
                f"warmup_inputs must be numeric for input "
                f"{tensor_spec.name!r}, got dtype {examples.dtype}."
            )
    expected = tensor_spec.shape[1:]
    fits = examples.ndim == len(tensor_spec.shape) and (
        expected.is_compatible_with(examples.shape[1:])
    )
    if not fits:
        raise ValueError(
            f"warmup_inputs must be a batch of inputs of shape "
            f"(n,) + {tuple(expected)} for input {tensor_spec.name!r}, got "
            f"shape {examples.shape}."
        )
    return examples


def _write_warmup_requests(path, batches, spec, model_name):
    """One PredictRequest per example, every served input filled."""
    specs = spec.input if isinstance(spec.input, dict) else {
        spec.input.name: spec.input}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    count = len(next(iter(batches.values())))
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(count):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(
                    name=model_name, signature_name=SIGNATURE_NAME
                )
            )
            for name, batch in batches.items():
                dtype = specs[name].dtype
                request.inputs[name].CopyFrom(tf.make_tensor_proto(
                    np.asarray(batch[i:i + 1], dtype=_numpy_dtype(dtype)),
                    dtype=dtype,
                ))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def _numpy_dtype(dtype):
    return object if dtype == tf.string else dtype.as_numpy_dtype
