"""Monitoring a deployed model: drift and quality against a reference profile.

`mtk.export.export_saved_model` with ``reference_data=`` writes a *reference
profile* beside the model, ``assets.extra/mtk_reference.json`` (TF Serving
ignores ``assets.extra``): what the served model's outputs and inputs looked
like on held-out data. This module compares new traffic with it.

Traffic comes from a `tf.data.Dataset` or arrays run through the export's
``serving_default`` signature (`observe`), or from the request logs TF
Serving writes when logging is on (`read_prediction_logs`): TFRecord files of
``tensorflow.serving.PredictionLog`` protos, whose ``predict_log`` holds the
request's inputs and the response's outputs.

What is summarized ("features", one number per example each):

- per head: Classification: ``class`` (predicted class, categorical) and
  ``confidence`` (its probability); Binary: ``score``; MultiLabel:
  ``score[<label>]`` per label; Regression: ``value`` (``value[i]`` per unit);
- per input: images: per-image ``mean`` and ``std`` of the pixel values
  (``height``/``width`` when the signature leaves them open); text:
  ``length`` (characters) and ``words``; tables (``(batch, columns)``):
  ``column[i]``; scalars: ``value``. A model with named inputs (e.g. a
  tabular trunk over a ``keras.utils.FeatureSpace``) is summarized per
  input: numeric features by their ``value``, string features by the
  frequencies of their ``category`` (the reference's 20 most frequent
  values and ``(other)``), image inputs as above.

Probabilities are binned in ten bins of width 0.1; other values in the
reference's deciles (open-ended outer bins), so each bin holds about a tenth
of the reference.

Without labels, per feature: the population stability index
``PSI = sum((q - p) * ln(q / p))`` over the bins (proportions floored at
1e-4), the Jensen-Shannon distance (base 2, in [0, 1]) and the shift of the
mean; a head's or input's PSI and JS are the largest over its features.
With labels (any subset of heads, joined by request id): accuracy
(Classification; Binary and MultiLabel at threshold 0.5, MultiLabel over all
label entries) with a Wilson score 95 % interval, or mean absolute error
(Regression) with a normal-approximation 95 % interval, next to the
reference's value.

Default thresholds (`DEFAULT_THRESHOLDS`): ``psi=0.2``, the usual rule of
thumb for a significant shift (Siddiqi, *Credit Risk Scorecards*, 2006;
Yurdakul, *Statistical properties of the population stability index*, 2018:
< 0.1 no change, 0.1-0.2 moderate, > 0.2 significant); ``metric_drop=0.0``:
a head is flagged when its whole 95 % interval lies worse than the reference
value by more than ``metric_drop`` (a significant drop at the 5 % level).
``js`` (Jensen-Shannon distance) and ``confidence`` (absolute shift of the
mean confidence of a Classification head) are reported and can be gated,
but have no default: there is no established cut-off for them.
"""

import csv
import json
import math
import os
import struct

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

PROFILE_FILE = os.path.join("assets.extra", "mtk_reference.json")
PROFILE_FORMAT = "mtk.monitoring.profile"
PROFILE_VERSION = 2  # 2: "inputs" (a list, for named-input models); 1: "input"
SIGNATURE_NAME = "serving_default"
HEAD_KINDS = ("Classification", "Binary", "MultiLabel", "Regression")
DEFAULT_THRESHOLDS = {
    "psi": 0.2,
    "js": None,
    "confidence": None,
    "metric_drop": 0.0,
}
# Ten bins of width 0.1 over [0, 1] for probabilities (interior edges).
PROBABILITY_EDGES = [round(0.1 * i, 1) for i in range(1, 10)]
DECILES = [0.1 * i for i in range(1, 10)]
PROPORTION_FLOOR = 1e-4
Z_95 = 1.959963984540054
MAX_TABLE_COLUMNS = 64
MAX_CATEGORIES = 20
OTHER_CATEGORY = "(other)"


# === Describing the served model ===


def describe_model(model, input_dtype=None):
    """What a profile records about a model: its inputs and its heads.

    Args:
        model: a built mtk model.
        input_dtype: the served input dtype of a one-input model (as in
            `mtk.export.export_saved_model`); defaults to the model's.

    Returns:
        ``{"inputs": [{"name", "dtype", "shape", "kind"}, ...], "heads":
        {name: {"kind", "units", "names"}}}``, JSON-serializable: the
        inputs as the serving signature takes them (a named ``(1,)`` feature
        is a column of scalars).

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> mtk.monitoring.describe_model(model)["heads"]
    {'flag': {'kind': 'Binary', 'units': 1, 'names': None}}
    """
    from mtk import heads as heads_module

    heads = {}
    for name, head in heads_module.heads_of(model).items():
        kind = next(
            (k for k in HEAD_KINDS if isinstance(head, getattr(heads_module, k))),
            None,
        )
        if kind is None:
            raise ValueError(
                f"Head {name!r} is a {type(head).__name__}, which monitoring "
                f"does not know; it summarizes {HEAD_KINDS}."
            )
        names = getattr(head, "class_names", None) or getattr(
            head, "label_names", None
        )
        heads[name] = {
            "kind": kind,
            "units": int(head.output_units),
            "names": list(names) if names else None,
        }
    from mtk.export import serving_input_specs

    served = serving_input_specs(model, input_dtype)
    named = isinstance(served, dict)
    inputs = []
    for spec in served.values() if named else [served]:
        description = {
            "name": spec.name,
            "dtype": spec.dtype.name,
            "shape": [None if d is None else int(d) for d in spec.shape],
        }
        description["kind"] = input_kind(description, named=named)
        inputs.append(description)
    return {"inputs": inputs, "heads": heads}


def upgrade_profile(profile):
    """A profile in this version's layout (version 1 had one ``"input"``).

    Example:

    >>> old = {"version": 1, "input": {"name": "image", "kind": "image"}, "heads": []}
    >>> new = mtk.monitoring.upgrade_profile(old)
    >>> new["version"] == mtk.monitoring.PROFILE_VERSION, mtk.monitoring.input_names(new)
    (True, ['image'])
    """
    if "input" in profile and "inputs" not in profile:
        profile = dict(profile)
        profile["inputs"] = [profile.pop("input")]
        profile["version"] = PROFILE_VERSION
    return profile


def input_names(model):
    """The names of a model description's (or profile's) inputs.

    Example:

    >>> mtk.monitoring.input_names({"inputs": [{"name": "age"}, {"name": "country"}]})
    ['age', 'country']
    """
    return [spec["name"] for spec in model["inputs"]]


# === Features: one number per example ===


def _unit_names(head, prefix):
    if head["units"] == 1 and head["kind"] != "MultiLabel":
        return [prefix]
    names = head["names"] or [str(i) for i in range(head["units"])]
    return [f"{prefix}[{n}]" for n in names]


def head_features(head, outputs):
    """``{feature: values (n,)}`` of one head's outputs ``(n, units)``."""
    outputs = _rows(outputs, head["units"])
    kind = head["kind"]
    if kind == "Classification":
        return {
            "class": np.argmax(outputs, axis=-1).astype(np.float64),
            "confidence": np.max(outputs, axis=-1),
        }
    prefix = "value" if kind == "Regression" else "score"
    names = _unit_names(head, prefix)
    return {name: outputs[:, i] for i, name in enumerate(names)}


def _feature_kind(head, feature):
    if head["kind"] == "Classification" and feature == "class":
        return "categorical"
    if head["kind"] == "Regression":
        return "quantile"
    return "probability"


def input_kind(input_spec, named=False):
    """``"image"``, ``"text"``, ``"category"``, ``"table"`` or ``"scalar"``.

    A description's own ``"kind"`` wins. One string input is text; a string
    feature among named inputs is a category (e.g. a country code).
    """
    if "kind" in input_spec:
        return input_spec["kind"]
    rank = len(input_spec["shape"]) - 1
    if input_spec["dtype"] == "string":
        return "category" if named and rank == 0 else "text"
    if rank >= 2:
        return "image"
    return "table" if rank == 1 else "scalar"


def _texts(batch):
    """A batch of strings (bytes or str) as Python strings, one per example."""
    return [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        for v in np.asarray(batch, dtype=object).reshape(-1)
    ]


def input_features(input_spec, batch):
    """``{feature: values (n,)}`` summarizing a batch of one input."""
    kind = input_kind(input_spec)
    if kind == "category":
        return {"category": np.array(_texts(batch), dtype=object)}
    if kind == "text":
        texts = _texts(batch)
        return {
            "length": np.array([len(t) for t in texts], dtype=np.float64),
            "words": np.array([len(t.split()) for t in texts], dtype=np.float64),
        }
    values = np.asarray(batch, dtype=np.float64)
    n = len(values)
    if kind == "scalar":
        return {"value": values.reshape(n)}
    if kind == "table":
        columns = min(values.shape[1], MAX_TABLE_COLUMNS)
        return {f"column[{i}]": values[:, i] for i in range(columns)}
    flat = values.reshape(n, -1)
    features = {"mean": flat.mean(axis=1), "std": flat.std(axis=1)}
    for axis, name in ((1, "height"), (2, "width")):
        if input_spec["shape"][axis] is None:
            features[name] = np.full(n, values.shape[axis], dtype=np.float64)
    return features


# === Summaries and distances ===


def summarize(values, kind, categories=None, edges=None):
    """A feature's distribution, as a profile stores it.

    Args:
        values: one number per example.
        kind: ``"categorical"`` (``categories`` names the values 0..k-1),
            ``"category"`` (string values: counted per category, values not
            in ``categories`` as ``"(other)"``), ``"probability"`` (ten bins
            over [0, 1]) or ``"quantile"``.
        categories: category names of a categorical feature; for
            ``"category"`` by default the `MAX_CATEGORIES` most frequent
            values (then ``"(other)"``).
        edges: interior bin edges; by default the probability bins, or the
            deciles of ``values`` for ``"quantile"``.

    Returns:
        A JSON-serializable dict with ``counts`` over the bins, ``edges``
        (or ``categories``), ``mean``, ``std`` and ``quantiles`` (5, 25, 50,
        75, 95 %).

    Example:

    >>> s = mtk.monitoring.summarize(np.array([0.05, 0.5, 0.95]), "probability")
    >>> s["counts"]
    [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    """
    if kind == "category":
        return _summarize_categories(values, categories)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    summary = {"kind": kind, "examples": int(len(values))}
    if kind == "categorical":
        summary["categories"] = list(categories)
        summary["counts"] = np.bincount(
            values.astype(np.int64), minlength=len(categories)
        ).tolist()
        return summary
    if edges is None:
        if kind == "probability":
            edges = PROBABILITY_EDGES
        elif len(values):
            edges = np.unique(np.quantile(values, DECILES)).tolist()
        else:
            edges = []
    summary["edges"] = [float(e) for e in edges]
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, "right")
    summary["counts"] = np.bincount(bins, minlength=len(edges) + 1).tolist()
    if len(values):
        summary["mean"] = float(values.mean())
        summary["std"] = float(values.std())
        summary["quantiles"] = np.quantile(
            values, [0.05, 0.25, 0.5, 0.75, 0.95]
        ).tolist()
    return summary


def _summarize_categories(values, categories=None):
    values = np.asarray(values, dtype=object).reshape(-1)
    if categories is None:
        found, counts = np.unique(values.astype(str), return_counts=True)
        # Most frequent first, ties by name, so a profile is reproducible.
        order = sorted(range(len(found)), key=lambda i: (-counts[i], found[i]))
        categories = [str(found[i]) for i in order[:MAX_CATEGORIES]]
        categories.append(OTHER_CATEGORY)
    index = {c: i for i, c in enumerate(categories[:-1])}
    other = len(categories) - 1
    codes = [index.get(str(v), other) for v in values]
    return {
        "kind": "category",
        "examples": int(len(values)),
        "categories": list(categories),
        "counts": np.bincount(codes, minlength=len(categories)).tolist(),
    }


def _proportions(counts):
    counts = np.asarray(counts, dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def psi(reference_counts, current_counts):
    """Population stability index between two histograms on the same bins.

    Proportions are floored at 1e-4 so that an empty bin gives a large but
    finite value.

    Example:

    >>> round(mtk.monitoring.psi([50, 50], [80, 20]), 3)
    0.416
    """
    p = np.maximum(_proportions(reference_counts), PROPORTION_FLOOR)
    q = np.maximum(_proportions(current_counts), PROPORTION_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference_counts, current_counts):
    """Jensen-Shannon distance (base 2, 0 to 1) between two histograms.

    Example:

    >>> mtk.monitoring.js_distance([1, 0], [0, 1])
    1.0
    """
    p = _proportions(reference_counts)
    q = _proportions(current_counts)
    m = (p + q) / 2

    def kl(a):
        nonzero = a > 0
        return np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero]))

    return float(math.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


def wilson_interval(successes, n, z=Z_95):
    """Wilson score interval of a proportion (95 % by default).

    Example:

    >>> [round(v, 3) for v in mtk.monitoring.wilson_interval(45, 50)]
    [0.786, 0.957]
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


# === Metrics with labels ===


def _missing(head, labels):
    if head["kind"] == "Classification":
        return np.isnan(labels) | (labels < 0)
    return np.isnan(labels)


def _rows(values, width):
    """``values`` as ``(n, width)`` float64 (also when n is 0)."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), width)


def head_metric(head, outputs, labels):
    """A head's metric on labelled examples, with its 95 % interval.

    Args:
        head: the head's entry in a profile's ``heads``.
        outputs: the head's outputs ``(n, units)``.
        labels: labels ``(n,)`` (class ids) or ``(n, units)``; missing labels
            (-1 for Classification, NaN otherwise) are skipped.

    Returns:
        ``{"metric", "value", "labels", "ci_low", "ci_high", "interval"}``.

    Example:

    >>> head = {"kind": "Binary", "units": 1, "names": None}
    >>> m = mtk.monitoring.head_metric(
    ...     head, np.array([[0.9], [0.2], [0.7]]), np.array([1.0, 0.0, 0.0]))
    >>> m["metric"], round(m["value"], 3), m["labels"]
    ('accuracy', 0.667, 3)
    """
    outputs = _rows(outputs, head["units"])
    labels = np.asarray(labels, dtype=np.float64)
    if head["kind"] == "Classification":
        labels = labels.reshape(len(labels))
        keep = ~_missing(head, labels)
        correct = np.argmax(outputs[keep], axis=-1) == labels[keep]
    else:
        labels = _rows(labels, head["units"])
        keep = ~_missing(head, labels)
        if head["kind"] == "Regression":
            errors = np.abs(outputs - labels)[keep]
            n = int(errors.size)
            mae = float(errors.mean()) if n else float("nan")
            half = Z_95 * float(errors.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
            return {
                "metric": "mae", "value": mae, "labels": n,
                "ci_low": mae - half, "ci_high": mae + half,
                "interval": "normal approximation 95%",
            }
        correct = ((outputs >= 0.5) == (labels >= 0.5))[keep]
    n = int(correct.size)
    low, high = wilson_interval(int(correct.sum()), n)
    return {
        "metric": "accuracy",
        "value": float(correct.mean()) if n else float("nan"),
        "labels": n, "ci_low": low, "ci_high": high,
        "interval": "Wilson score 95%",
    }


# === Traffic: what the model saw and answered ===


class Traffic:
    """Observed examples: per-example features, head outputs, ids, labels.

    Built by `observe` (a dataset or arrays run through the export) or
    `read_prediction_logs` (TF Serving's logs); inputs themselves are not
    kept, only their per-example features, so memory stays small.

    Attributes:
        ids: one string id per example (its position for `observe`,
            ``"<log file>:<record>:<row>"`` for logs).
        outputs: ``{head: array (n, units)}``.
        input_features: ``{input name: {feature: array (n,)}}``.
        labels: ``{head: array}`` aligned with ``ids`` (missing labels as -1
            / NaN), for labels that came with the traffic.
        source: a description of where the traffic came from.
        records_read, records_skipped: log records read and skipped.
        problems: one line per skipped record or unreadable file part.
    """

    def __init__(self, model, source):
        self.model = model
        self.source = source
        self.ids = []
        self._outputs = {name: [] for name in model["heads"]}
        self._features = {name: {} for name in input_names(model)}
        self._labels = {}
        self.records_read = 0
        self.records_skipped = 0
        self.problems = []

    def add(self, ids, inputs, outputs, labels=None):
        """Appends a batch: ``inputs`` an array, or a dict keyed by input."""
        if not isinstance(inputs, dict):
            (name,) = input_names(self.model)
            inputs = {name: inputs}
        self.ids.extend(ids)
        for name, head in self.model["heads"].items():
            self._outputs[name].append(
                np.asarray(outputs[name], dtype=np.float32).reshape(
                    len(ids), head["units"]
                )
            )
        for spec in self.model["inputs"]:
            features = self._features[spec["name"]]
            for feature, values in input_features(spec, inputs[spec["name"]]).items():
                features.setdefault(feature, []).append(values)
        for name, values in (labels or {}).items():
            head = self.model["heads"][name]
            width = 1 if head["kind"] == "Classification" else head["units"]
            self._labels.setdefault(name, []).append(_rows(values, width))

    def __len__(self):
        return len(self.ids)

    @property
    def outputs(self):
        return {
            name: np.concatenate(parts) if parts else np.zeros((0, head["units"]), np.float32)
            for (name, parts), head in zip(self._outputs.items(), self.model["heads"].values())
        }

    @property
    def input_features(self):
        return {
            name: {feature: np.concatenate(parts) for feature, parts in features.items()}
            for name, features in self._features.items()
        }

    @property
    def labels(self):
        return {name: np.concatenate(parts) for name, parts in self._labels.items()}

    def summary(self):
        """Where the traffic came from and how much of it was readable."""
        return {
            "source": self.source,
            "examples": len(self),
            "records_read": self.records_read,
            "records_skipped": self.records_skipped,
            "problems": self.problems[:20],
        }


def _check_data_inputs(x, names, argument):
    """``{input name: batch}``; an array stands for the only input."""
    if not isinstance(x, dict):
        if len(names) != 1:
            raise ValueError(
                f"{argument} gives one array; the signature {SIGNATURE_NAME!r} "
                f"takes named inputs {sorted(names)}: give a dict of them."
            )
        return {names[0]: x}
    unknown = sorted(set(x) - set(names))
    if unknown:
        raise ValueError(
            f"{argument} has inputs {unknown} that the signature "
            f"{SIGNATURE_NAME!r} does not take; it takes {sorted(names)}."
        )
    missing = sorted(set(names) - set(x))
    if missing:
        raise ValueError(
            f"{argument} lacks inputs {missing}, which the signature "
            f"{SIGNATURE_NAME!r} takes."
        )
    return x


def _batches(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        for element in data.as_numpy_iterator():
            if isinstance(element, tuple):
                yield element[0], (element[1] if len(element) > 1 else None)
            else:
                yield element, None
        return
    x, y = (data if isinstance(data, tuple) else (data, None))
    first = next(iter(x.values())) if isinstance(x, dict) else x
    for start in range(0, len(first), batch_size):
        sl = slice(start, start + batch_size)
        xb = {k: v[sl] for k, v in x.items()} if isinstance(x, dict) else x[sl]
        yb = None if y is None else {k: np.asarray(v)[sl] for k, v in y.items()}
        yield xb, yb


def _served_array(values, spec):
    """``values`` as the signature's input ``spec`` takes them (numpy)."""
    dtype = tf.as_dtype(spec["dtype"])
    if dtype == tf.string:
        values = np.asarray(values, dtype=object)
    else:
        values = np.asarray(values).astype(dtype.as_numpy_dtype, copy=False)
    if len(spec["shape"]) == 1 and values.ndim == 2 and values.shape[1] == 1:
        values = values.reshape(-1)  # a (batch, 1) column of a named feature
    return values


def _collect(model, predict, data, source, batch_size=256, argument="data"):
    """Runs ``predict`` (a dict of served inputs -> outputs) over ``data``."""
    traffic = Traffic(model, source)
    specs = {spec["name"]: spec for spec in model["inputs"]}
    for x, y in _batches(data, batch_size):
        x = _check_data_inputs(x, list(specs), argument)
        x = {name: _served_array(x[name], spec) for name, spec in specs.items()}
        rows = {len(v) for v in x.values()}
        if len(rows) != 1:
            raise ValueError(
                f"{argument}'s inputs hold different numbers of examples: "
                + ", ".join(f"{n}: {len(v)}" for n, v in x.items()) + "."
            )
        if y is not None:
            _check_label_heads(y, model, argument)
        outputs = predict({
            name: tf.constant(v, dtype=tf.as_dtype(specs[name]["dtype"]))
            for name, v in x.items()
        })
        outputs = {name: np.asarray(outputs[name]) for name in model["heads"]}
        start = len(traffic)
        count = rows.pop()
        traffic.add([str(i) for i in range(start, start + count)], x, outputs, y)
    return traffic


def _check_label_heads(labels, model, argument):
    unknown = sorted(set(labels) - set(model["heads"]))
    if unknown:
        raise ValueError(
            f"{argument} has labels for heads {unknown} that the model does "
            f"not have; its heads are {sorted(model['heads'])}."
        )


# === Profiles ===


def profile_traffic(traffic):
    """The reference profile of observed traffic (labels give metrics).

    Example:

    >>> t = mtk.monitoring.Traffic(
    ...     {"inputs": [{"name": "inputs", "dtype": "float32", "shape": [None, 2]}],
    ...      "heads": {"flag": {"kind": "Binary", "units": 1, "names": None}}},
    ...     "example")
    >>> t.add(["0", "1"], np.ones((2, 2)), {"flag": np.array([[0.25], [0.95]])})
    >>> mtk.monitoring.profile_traffic(t)["outputs"]["flag"]["score"]["counts"]
    [0, 0, 1, 0, 0, 0, 0, 0, 0, 1]
    """
    if not len(traffic):
        raise ValueError(
            f"reference data from {traffic.source} holds no examples; a "
            "profile needs some."
        )
    model = traffic.model
    outputs = traffic.outputs
    profile = {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "examples": len(traffic),
        "inputs": model["inputs"],
        "heads": model["heads"],
        "outputs": {},
        "input_stats": {},
        "metrics": {},
    }
    for name, head in model["heads"].items():
        profile["outputs"][name] = {
            feature: summarize(
                values, _feature_kind(head, feature),
                categories=head["names"] or [str(i) for i in range(head["units"])],
            )
            for feature, values in head_features(head, outputs[name]).items()
        }
    for input_name, features in traffic.input_features.items():
        profile["input_stats"][input_name] = {
            feature: summarize(
                values, "category" if feature == "category" else "quantile")
            for feature, values in features.items()
        }
    for name, labels in traffic.labels.items():
        metric = head_metric(model["heads"][name], outputs[name], labels)
        if metric["labels"]:
            profile["metrics"][name] = {
                k: metric[k] for k in ("metric", "value", "labels")
            }
    return profile


def compute_profile(
    model, reference_data, *, input_dtype=None, batch_size=256, predict=None
):
    """Runs a Keras model on held-out data and returns its reference profile.

    `mtk.export.export_saved_model` calls this with its ``reference_data``;
    call it directly to profile a model without exporting it.

    Args:
        model: a built mtk model.
        reference_data: a `tf.data.Dataset` of inputs or ``(inputs,
            labels)`` batches (labels a dict keyed by head, missing labels
            allowed), or an array of inputs, or a tuple ``(inputs,
            labels)`` of arrays.
        input_dtype: the served input dtype of a one-input model.
        batch_size: batch size for arrays.
        predict: optional function from a batch of served inputs (one
            tensor, or a dict of them for named inputs) to the outputs dict
            (the export passes its serving function, already traced);
            defaults to the serving function of ``model``.

    Returns:
        The profile, a JSON-serializable dict.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Classification("item", 3)], trunk_weights=None)
    >>> profile = mtk.monitoring.compute_profile(model, np.ones((10, 4)))
    >>> profile["examples"], sorted(profile["outputs"]["item"])
    (10, ['class', 'confidence'])
    """
    from mtk.export import serving_function

    description = describe_model(model, input_dtype)
    if predict is None:
        # Nearly all of a profile's time is this inference pass. The traced
        # serving graph (one trace, open batch dimension) costs about 1/1.5
        # of calling the Keras model eagerly (quick start, 5,000 images).
        predict = serving_function(model, input_dtype)
    traffic = _collect(
        description, _by_input_name(predict, description), reference_data,
        "reference_data", batch_size, argument="reference_data",
    )
    return profile_traffic(traffic)


def _by_input_name(predict, model):
    """``predict`` (served inputs as the signature takes them) on a dict."""
    (name, *others) = input_names(model)
    if others:
        return predict
    return lambda inputs: predict(inputs[name])


def write_profile(profile, directory):
    """Writes ``profile`` as ``<directory>/assets.extra/mtk_reference.json``.

    Example:

    >>> import os, tempfile
    >>> path = mtk.monitoring.write_profile({"examples": 1}, tempfile.mkdtemp())
    >>> path.endswith("mtk_reference.json")
    True
    """
    path = os.path.join(directory, PROFILE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(profile, f, indent=1)
    return path


def version_dir(export_dir):
    """The version directory of an export: ``export_dir`` itself if it holds
    a SavedModel, else its highest integer-named subdirectory.

    Example:

    >>> import os, tempfile
    >>> base = tempfile.mkdtemp()
    >>> for v in ("1", "10", "2"):
    ...     os.makedirs(os.path.join(base, v))
    ...     open(os.path.join(base, v, "saved_model.pb"), "w").close()
    >>> os.path.basename(mtk.monitoring.version_dir(base))
    '10'
    """
    export_dir = os.fspath(export_dir)
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    if not os.path.isdir(export_dir):
        raise ValueError(f"export_dir={export_dir!r} is not a directory.")
    versions = [
        int(n) for n in os.listdir(export_dir)
        if n.isdigit()
        and os.path.isfile(os.path.join(export_dir, n, "saved_model.pb"))
    ]
    if not versions:
        raise ValueError(
            f"export_dir={export_dir!r} holds no SavedModel: neither "
            "saved_model.pb nor integer version directories with one."
        )
    return os.path.join(export_dir, str(max(versions)))


def load_profile(path):
    """Reads a profile from an export (base or version dir) or a JSON file.

    Example:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> open(os.path.join(d, "saved_model.pb"), "w").close()
    >>> _ = mtk.monitoring.write_profile(
    ...     {"format": "mtk.monitoring.profile", "examples": 3}, d)
    >>> mtk.monitoring.load_profile(d)["examples"]
    3
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        directory = version_dir(path)
        path = os.path.join(directory, PROFILE_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"{directory!r} has no reference profile ({PROFILE_FILE}); "
                "export with export_saved_model(..., reference_data=...)."
            )
    with open(path) as f:
        try:
            profile = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"profile {path!r} is not valid JSON: {e}") from e
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise ValueError(f"{path!r} is not an mtk reference profile.")
    return upgrade_profile(profile)


# === The served model ===


class ServedModel:
    """An export's ``serving_default`` signature and its reference profile.

    Args:
        export_dir: a base directory (its highest version is used) or a
            version directory.
        profile: a profile dict or path, instead of the export's own.

    Raises:
        ValueError: the profile does not describe this export (its heads'
            names or kinds differ: the message names them).

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> base = os.path.join(tempfile.mkdtemp(), "flags")
    >>> _ = mtk.export.export_saved_model(
    ...     model, base, reference_data=np.ones((8, 4)))
    >>> served = mtk.monitoring.ServedModel(base)
    >>> served.input_names, served.profile["examples"]
    (['inputs'], 8)
    """

    def __init__(self, export_dir, profile=None):
        self.path = version_dir(export_dir)
        if profile is None:
            profile = load_profile(self.path)
        elif not isinstance(profile, dict):
            profile = load_profile(profile)
        self.profile = upgrade_profile(profile)
        self._signature = None
        signature = self.signature
        self.input_specs = dict(signature.structured_input_signature[1])
        self.input_names = sorted(self.input_specs)
        expected = sorted(input_names(self.profile))
        if expected != self.input_names:
            raise ValueError(
                f"the reference profile is from another model than "
                f"{self.path!r}: its inputs are {expected}, the signature "
                f"takes {self.input_names}."
            )
        check_profile_matches(self.profile, signature.structured_outputs, self.path)

    @property
    def signature(self):
        if self._signature is None:
            loaded = tf.saved_model.load(self.path)
            self._loaded = loaded  # keeps the variables alive
            self._signature = loaded.signatures[SIGNATURE_NAME]
        return self._signature

    @property
    def model(self):
        return {"inputs": self.profile["inputs"], "heads": self.profile["heads"]}

    def predict(self, x):
        """The signature's outputs for a batch: a dict keyed by input name
        (an array or tensor alone stands for a one-input model's input)."""
        if not isinstance(x, dict):
            (name,) = self.input_names
            x = {name: x}
        return self.signature(**x)


def check_profile_matches(profile, outputs, where):
    """Raises ValueError naming the heads where a profile and outputs differ.

    Head names and units are compared, and kinds where the signature shows
    them: Classification heads have a ``<head>_class_id`` output; Binary,
    MultiLabel and Regression heads of equal width look alike.

    Args:
        profile: a reference profile.
        outputs: ``{output name: TensorSpec}`` of a serving signature.
        where: the export, for the message.

    Example:

    >>> profile = {"heads": {"flag": {"kind": "Binary", "units": 1}}}
    >>> mtk.monitoring.check_profile_matches(
    ...     profile, {"flag": tf.TensorSpec((None, 1))}, "demo")
    """
    problems = []
    for name, head in profile["heads"].items():
        if name not in outputs:
            problems.append(f"head {name!r} ({head['kind']}) is not an output")
            continue
        units = outputs[name].shape[-1]
        is_classification = f"{name}_class_id" in outputs
        if is_classification != (head["kind"] == "Classification"):
            kind = "Classification" if is_classification else "not Classification"
            problems.append(
                f"head {name!r} is {head['kind']} in the profile but "
                f"{kind} in the export"
            )
        elif units is not None and units != head["units"]:
            problems.append(
                f"head {name!r} has {head['units']} units in the profile but "
                f"{units} in the export"
            )
    heads = set(profile["heads"])
    extra = sorted(
        n for n in outputs
        if n not in heads
        and not any(n == f"{h}_class_id" or n == f"{h}_class_name" for h in heads)
    )
    if extra:
        problems.append(f"export heads {extra} are not in the profile")
    if problems:
        raise ValueError(
            f"the reference profile is from another model than {where!r}: "
            + "; ".join(problems) + "."
        )


def observe(served, data, *, batch_size=256):
    """Runs inputs through an export and records the traffic.

    Args:
        served: a `ServedModel` or an export directory.
        data: a `tf.data.Dataset` of inputs or ``(inputs, labels)`` batches,
            an array of inputs, a dict ``{input name: array}`` (named
            inputs: one entry each), or a tuple
            ``(inputs, labels)``; labels (a dict keyed by head) become the
            traffic's labels, with ids ``"0"``, ``"1"``, ... by position.
        batch_size: batch size for arrays.

    Returns:
        A `Traffic`.

    Raises:
        ValueError: ``data`` has inputs the signature does not take, or
            labels for heads the model lacks.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> base = os.path.join(tempfile.mkdtemp(), "flags")
    >>> _ = mtk.export.export_saved_model(
    ...     model, base, reference_data=np.ones((8, 4)))
    >>> len(mtk.monitoring.observe(base, np.zeros((5, 4))))
    5
    """
    if not isinstance(served, ServedModel):
        served = ServedModel(served)
    return _collect(
        served.model, served.predict, data, "data", batch_size, argument="data"
    )


# === TF Serving's logs ===


def _log_files(paths):
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            files.extend(
                os.path.join(path, n) for n in sorted(os.listdir(path))
                if not n.startswith(".")
                and os.path.isfile(os.path.join(path, n))
            )
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ValueError(f"log path {path!r} does not exist.")
    if not files:
        raise ValueError(f"no log files under {paths!r}.")
    return files


def _count_framed_records(path):
    """Records in a TFRecord file by its length headers (CRCs unchecked)."""
    count = 0
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        position = 0
        while position + 12 <= size:
            f.seek(position)
            (length,) = struct.unpack("<Q", f.read(8))
            position += 12 + length + 4
            count += 1
    return count


def _read_records(path):
    """Yields the records of one TFRecord file; returns how many were lost."""
    read = 0
    try:
        for batch in tf.data.TFRecordDataset(path).batch(1024).as_numpy_iterator():
            for record in batch:
                yield record
            read += len(batch)
        return 0, None
    except tf.errors.DataLossError:
        pass
    # A damaged record: read again one by one to keep what precedes it.
    records = tf.data.TFRecordDataset(path).as_numpy_iterator()
    index = 0
    try:
        for record in records:
            if index >= read:
                yield record
            index += 1
    except tf.errors.DataLossError as e:
        lost = max(_count_framed_records(path) - index, 1)
        reason = e.message.splitlines()[0]
        return lost, (
            f"{os.path.basename(path)}: record {index} and after unreadable "
            f"({reason})"
        )
    return 0, None


def read_prediction_logs(served, paths):
    """Reads TF Serving's request logs (PredictionLog TFRecord files).

    TF Serving writes these when request logging is on
    (``--logging_config_file``): one ``PredictionLog`` per logged request,
    whose ``predict_log`` holds the request's inputs and the response's
    outputs. A request may hold a batch; each row is one example with id
    ``"<file name>:<record>:<row>"``.

    Damaged data never stops the reading: records that are not a
    PredictionLog with a ``predict_log``, or lack the signature's input or a
    head's output, are skipped; a truncated or corrupted file is read up to
    the damage. The returned traffic counts what was read and skipped and
    says why (``traffic.problems``).

    Args:
        served: a `ServedModel` or an export directory.
        paths: a log file, a directory of log files, or a list of them.

    Returns:
        A `Traffic`.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> base = os.path.join(tempfile.mkdtemp(), "flags")
    >>> _ = mtk.export.export_saved_model(
    ...     model, base, reference_data=np.ones((8, 4)))
    >>> served = mtk.monitoring.ServedModel(base)
    >>> log = os.path.join(base, "requests.log")
    >>> mtk.monitoring.write_prediction_logs(served, log, np.zeros((3, 4)))
    3
    >>> len(mtk.monitoring.read_prediction_logs(served, log))
    3
    """
    if not isinstance(served, ServedModel):
        served = ServedModel(served)
    model = served.model
    traffic = Traffic(model, f"PredictionLog files {paths!r}")
    names = served.input_names
    heads = list(model["heads"])

    def empty():
        return {"ids": [], "x": {n: [] for n in names}, "out": {h: [] for h in heads}}

    pending = empty()

    def flush():
        if pending["ids"]:
            traffic.add(
                pending["ids"],
                {n: np.concatenate(v) for n, v in pending["x"].items()},
                {h: np.concatenate(v) for h, v in pending["out"].items()},
            )
        pending.update(empty())

    def skip(reason):
        traffic.records_skipped += 1
        traffic.problems.append(reason)

    log = prediction_log_pb2.PredictionLog()
    for path in _log_files(paths):
        name = os.path.basename(path)
        records = _read_records(path)
        index = 0
        while True:
            try:
                record = next(records)
            except StopIteration as stop:
                lost, problem = stop.value or (0, None)
                if lost:
                    traffic.records_skipped += lost
                    traffic.problems.append(problem)
                break
            where = f"{name}:{index}"
            index += 1
            try:
                log.ParseFromString(record)
            except DecodeError:
                skip(f"{where}: not a PredictionLog")
                continue
            if not log.HasField("predict_log"):
                skip(f"{where}: no predict_log ({log.WhichOneof('log_type')})")
                continue
            request, response = log.predict_log.request, log.predict_log.response
            if sorted(request.inputs) != names:
                skip(
                    f"{where}: request inputs {sorted(request.inputs)} are not "
                    f"the signature's {names}"
                )
                continue
            missing = [h for h in heads if h not in response.outputs]
            if missing:
                skip(f"{where}: response lacks outputs {missing}")
                continue
            try:
                x = {n: tf.make_ndarray(request.inputs[n]) for n in names}
                outputs = {h: tf.make_ndarray(response.outputs[h]) for h in heads}
            except (ValueError, TypeError) as e:
                skip(f"{where}: unreadable tensor ({e})")
                continue
            rows = len(x[names[0]])
            sizes = [len(v) for v in (*x.values(), *outputs.values())]
            if rows == 0 or any(size != rows for size in sizes):
                skip(f"{where}: inputs and outputs hold different batch sizes")
                continue
            traffic.records_read += 1
            pending["ids"].extend(f"{where}:{r}" for r in range(rows))
            for n in names:
                pending["x"][n].append(x[n])
            for h in heads:
                pending["out"][h].append(outputs[h])
            if len(pending["ids"]) >= 4096:
                flush()
    flush()
    return traffic


def write_prediction_logs(served, path, inputs, *, batch_size=1):
    """Writes PredictionLog records as TF Serving logs them, from inputs.

    Each request of ``batch_size`` examples is answered by the export's
    signature; request and response go into one ``PredictionLog``. For tests,
    demos and benchmarks: a real server writes these itself.

    Args:
        served: a `ServedModel` or an export directory.
        path: the TFRecord file to write.
        inputs: an array of inputs (one example per row), or a dict of
            them keyed by input name.
        batch_size: examples per logged request.

    Returns:
        The number of records written.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> base = os.path.join(tempfile.mkdtemp(), "flags")
    >>> _ = mtk.export.export_saved_model(
    ...     model, base, reference_data=np.ones((8, 4)))
    >>> mtk.monitoring.write_prediction_logs(
    ...     base, os.path.join(base, "log"), np.zeros((5, 4)), batch_size=2)
    3
    """
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.apis import predict_pb2

    if not isinstance(served, ServedModel):
        served = ServedModel(served)
    specs = {s["name"]: s for s in served.model["inputs"]}
    inputs = _check_data_inputs(inputs, list(specs), "inputs")
    name = os.path.basename(os.path.dirname(served.path)) or "model"
    version = os.path.basename(served.path)
    count = 0
    total = len(next(iter(inputs.values())))
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for start in range(0, total, batch_size):
            x = {
                n: _served_array(np.asarray(v[start:start + batch_size]), specs[n])
                for n, v in inputs.items()
            }
            dtypes = {n: served.input_specs[n].dtype for n in x}
            outputs = served.predict(
                {n: tf.constant(v, dtype=dtypes[n]) for n, v in x.items()})
            spec = model_pb2.ModelSpec(name=name, signature_name=SIGNATURE_NAME)
            if version.isdigit():
                spec.version.value = int(version)
            request = predict_pb2.PredictRequest(model_spec=spec)
            for n, v in x.items():
                request.inputs[n].CopyFrom(tf.make_tensor_proto(v, dtype=dtypes[n]))
            response = predict_pb2.PredictResponse(model_spec=spec)
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(
                    request=request, response=response
                )
            )
            log.log_metadata.model_spec.CopyFrom(spec)
            writer.write(log.SerializeToString())
            count += 1
    return count


# === Labels ===


def read_labels(path, heads):
    """Reads labels keyed by request id from a CSV or JSON-lines file.

    CSV: a header ``id,<head>,...``; an empty cell is a missing label;
    several values (MultiLabel, multi-unit Regression) are separated by
    spaces. JSON lines: ``{"id": ..., "<head>": value or list}`` per line.
    Not every head needs a column.

    Args:
        path: the file (``.csv``, or ``.jsonl``/``.json``).
        heads: the profile's ``heads``.

    Returns:
        ``{head: {id: value}}``.

    Raises:
        ValueError: a column names a head the model lacks, or no ``id``.

    Example:

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.csv")
    >>> with open(path, "w") as f:
    ...     _ = f.write("id,flag\\n0,1\\n1,\\n")
    >>> mtk.monitoring.read_labels(
    ...     path, {"flag": {"kind": "Binary", "units": 1}})
    {'flag': {'0': 1.0}}
    """
    path = os.fspath(path)
    rows = []
    with open(path, newline="") as f:
        if path.endswith((".jsonl", ".json")):
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"labels {path!r} line {number}: {e}") from e
        else:
            rows = list(csv.DictReader(f))
    labels = {}
    for number, row in enumerate(rows, 1):
        if "id" not in row:
            raise ValueError(f"labels {path!r} row {number} has no 'id'.")
        unknown = sorted(set(row) - {"id"} - set(heads))
        if unknown:
            raise ValueError(
                f"labels {path!r} name heads {unknown} that the model does "
                f"not have; its heads are {sorted(heads)}."
            )
        for name, value in row.items():
            if name == "id" or value is None or value == "":
                continue
            try:
                if isinstance(value, str):
                    value = [float(v) for v in value.split()]
                value = np.asarray(value, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(
                    f"labels {path!r} row {number}: head {name!r} has "
                    f"{value!r}, not a number (or space-separated numbers)."
                ) from None
            labels.setdefault(name, {})[str(row["id"])] = (
                float(value[0]) if len(value) == 1 else value.tolist()
            )
    return labels


# === Comparing ===


def resolve_thresholds(thresholds, names):
    """Per-target thresholds from ``{"psi": 0.2, "item:psi": 0.1, ...}``.

    Keys are ``<measure>`` (all heads and inputs) or ``<name>:<measure>``;
    measures are those of `DEFAULT_THRESHOLDS`; ``None`` turns a check off.

    Example:

    >>> t = mtk.monitoring.resolve_thresholds({"item:psi": 0.1}, ["item", "flag"])
    >>> t["item"]["psi"], t["flag"]["psi"]
    (0.1, 0.2)
    """
    resolved = {name: dict(DEFAULT_THRESHOLDS) for name in names}
    for key, value in sorted((thresholds or {}).items(), key=lambda kv: ":" in kv[0]):
        target, _, measure = key.rpartition(":")
        if measure not in DEFAULT_THRESHOLDS:
            raise ValueError(
                f"threshold {key!r}: unknown measure {measure!r}; measures "
                f"are {sorted(DEFAULT_THRESHOLDS)}."
            )
        if target and target not in resolved:
            raise ValueError(
                f"threshold {key!r}: no head or input named {target!r}; "
                f"there are {sorted(resolved)}."
            )
        value = None if value is None else float(value)
        for name in [target] if target else resolved:
            resolved[name][measure] = value
    return resolved


def _compare_features(reference, current, head=None):
    features = {}
    for feature, ref in reference.items():
        values = current[feature]
        kind = ref["kind"]
        now = summarize(
            values, kind, categories=ref.get("categories"), edges=ref.get("edges")
        )
        entry = {
            "psi": psi(ref["counts"], now["counts"]),
            "js": js_distance(ref["counts"], now["counts"]),
            "reference": _proportions(ref["counts"]).tolist(),
            "current": _proportions(now["counts"]).tolist(),
        }
        if kind in ("categorical", "category"):
            entry["categories"] = ref["categories"]
            entry["change"] = (
                np.asarray(entry["current"]) - np.asarray(entry["reference"])
            ).tolist()
        else:
            entry["edges"] = ref["edges"]
            entry["reference_mean"] = ref.get("mean")
            entry["current_mean"] = now.get("mean")
            if ref.get("mean") is not None and now.get("mean") is not None:
                entry["mean_shift"] = now["mean"] - ref["mean"]
        features[feature] = entry
    return features


def _join_labels(head, traffic_ids, labels):
    """Aligns ``{id: label}`` with the traffic; returns (rows, labels, unmatched)."""
    index = {i: row for row, i in enumerate(traffic_ids)}
    rows, values, unmatched = [], [], 0
    for request_id, value in labels.items():
        row = index.get(str(request_id))
        if row is None:
            unmatched += 1
            continue
        rows.append(row)
        values.append(np.asarray(value, dtype=np.float64).reshape(-1))
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, head["units"])), unmatched
    return np.asarray(rows), np.stack(values), unmatched


def compare(profile, traffic, *, labels=None, thresholds=None):
    """Compares traffic with a reference profile: drift, and quality with labels.

    Args:
        profile: a reference profile (`load_profile`).
        traffic: a `Traffic` (`observe`, `read_prediction_logs`).
        labels: optional ``{head: {request id: label}}`` (`read_labels`), for
            any subset of heads; ids the traffic lacks are counted as
            ``unmatched`` (labels may arrive before their requests are
            logged). Labels that came with the traffic are used too.
        thresholds: overrides of `DEFAULT_THRESHOLDS`, see
            `resolve_thresholds`.

    Returns:
        A JSON-serializable report: ``heads`` and ``inputs`` (per name: its
        ``psi``, ``js``, per-feature details, ``flags``), ``flagged`` (the
        names with a crossed threshold), ``thresholds`` and ``traffic``.

    Raises:
        ValueError: the traffic's heads or input differ from the profile's,
            or ``labels`` name a head the profile lacks.

    Example:

    >>> head = {"kind": "Binary", "units": 1, "names": None}
    >>> model = {"inputs": [{"name": "inputs", "dtype": "float32",
    ...                      "shape": [None, 2]}], "heads": {"flag": head}}
    >>> reference = mtk.monitoring.Traffic(model, "reference")
    >>> reference.add([str(i) for i in range(100)], np.zeros((100, 2)),
    ...               {"flag": np.linspace(0, 0.5, 100)[:, None]})
    >>> now = mtk.monitoring.Traffic(model, "now")
    >>> now.add([str(i) for i in range(100)], np.zeros((100, 2)),
    ...         {"flag": np.linspace(0.5, 1, 100)[:, None]})
    >>> report = mtk.monitoring.compare(
    ...     mtk.monitoring.profile_traffic(reference), now)
    >>> report["flagged"], report["heads"]["flag"]["psi"] > 0.2
    (['flag'], True)
    """
    heads = profile["heads"]
    if traffic.model["heads"] != heads:
        differing = sorted(
            set(heads) ^ set(traffic.model["heads"])
            | {n for n in heads if traffic.model["heads"].get(n, heads[n]) != heads[n]}
        )
        raise ValueError(
            f"the traffic's model and the profile's differ in heads {differing}."
        )
    profile = upgrade_profile(profile)
    expected, given = sorted(input_names(profile)), sorted(input_names(traffic.model))
    if given != expected:
        raise ValueError(
            f"the traffic has inputs {given}; the profile's model takes "
            f"{expected}."
        )
    all_labels = {}
    for name, values in traffic.labels.items():
        all_labels[name] = {i: v for i, v in zip(traffic.ids, values)}
    for name, values in (labels or {}).items():
        if name not in heads:
            raise ValueError(
                f"labels for head {name!r}, which the model does not have; "
                f"its heads are {sorted(heads)}."
            )
        all_labels.setdefault(name, {}).update(values)
    if not len(traffic):
        raise ValueError(
            f"the traffic holds no examples ({traffic.records_read} log "
            f"records read, {traffic.records_skipped} skipped)."
        )
    names = list(heads) + [n for n in profile["input_stats"] if n not in heads]
    limits = resolve_thresholds(thresholds, names)
    outputs = traffic.outputs
    report = {
        "traffic": traffic.summary(),
        "reference_examples": profile["examples"],
        "thresholds": limits,
        "heads": {},
        "inputs": {},
        "flagged": [],
    }
    for name, head in heads.items():
        features = _compare_features(
            profile["outputs"][name], head_features(head, outputs[name])
        )
        entry = {
            "kind": head["kind"],
            "psi": max(f["psi"] for f in features.values()),
            "js": max(f["js"] for f in features.values()),
            "features": features,
        }
        if head["kind"] == "Classification":
            entry["confidence_shift"] = features["confidence"].get("mean_shift")
        if name in all_labels:
            rows, values, unmatched = _join_labels(head, traffic.ids, all_labels[name])
            quality = head_metric(head, outputs[name][rows], values)
            quality["unmatched"] = unmatched
            reference = profile.get("metrics", {}).get(name)
            quality["reference"] = reference["value"] if reference else None
            entry["quality"] = quality
        entry["flags"] = _flags(entry, limits[name])
        report["heads"][name] = entry
    input_specs = {spec["name"]: spec for spec in profile["inputs"]}
    for name, reference in profile["input_stats"].items():
        features = _compare_features(reference, traffic.input_features[name])
        entry = {
            "kind": input_kind(input_specs[name]),
            "psi": max((f["psi"] for f in features.values()), default=0.0),
            "js": max((f["js"] for f in features.values()), default=0.0),
            "features": features,
        }
        entry["flags"] = _flags(entry, limits[name])
        report["inputs"][name] = entry
    report["flagged"] = [
        n for section in ("heads", "inputs")
        for n, e in report[section].items() if e["flags"]
    ]
    return report


def _flags(entry, limits):
    flags = []
    for measure in ("psi", "js"):
        if limits[measure] is not None and entry[measure] > limits[measure]:
            flags.append(measure)
    shift = entry.get("confidence_shift")
    if limits["confidence"] is not None and shift is not None:
        if abs(shift) > limits["confidence"]:
            flags.append("confidence")
    quality = entry.get("quality")
    drop = limits["metric_drop"]
    if drop is not None and quality and quality["reference"] is not None:
        if quality["labels"] > 1:
            if quality["metric"] == "mae":
                worse = quality["ci_low"] > quality["reference"] + drop
            else:
                worse = quality["ci_high"] < quality["reference"] - drop
            if worse:
                flags.append("metric_drop")
    return flags


def monitor(export_dir, traffic, *, labels=None, thresholds=None, profile=None):
    """Compares traffic with an export's reference profile.

    Args:
        export_dir: an export (base or version directory) with a profile.
        traffic: a `Traffic`, a `tf.data.Dataset` / arrays (run through the
            export), or PredictionLog file path(s) (a string, path or list of
            them).
        labels: ``{head: {id: label}}`` or a labels file (`read_labels`).
        thresholds: see `resolve_thresholds`.
        profile: a profile (dict or path) instead of the export's own.

    Returns:
        The report of `compare`.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> base = os.path.join(tempfile.mkdtemp(), "flags")
    >>> x = np.random.default_rng(0).normal(size=(200, 4))
    >>> _ = mtk.export.export_saved_model(model, base, reference_data=x)
    >>> mtk.monitoring.monitor(base, x)["flagged"]
    []
    >>> mtk.monitoring.monitor(base, x + 3)["flagged"]
    ['flag', 'inputs']
    """
    served = ServedModel(export_dir, profile)
    if isinstance(traffic, Traffic):
        observed = traffic
    elif isinstance(traffic, (str, os.PathLike)) or (
        isinstance(traffic, list) and traffic
        and all(isinstance(p, (str, os.PathLike)) for p in traffic)
    ):
        observed = read_prediction_logs(served, traffic)
    else:
        observed = observe(served, traffic)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(labels, served.profile["heads"])
    return compare(served.profile, observed, labels=labels, thresholds=thresholds)


# === Presenting ===


def report_rows(report):
    """One table row per head and input (for `mtk.evaluation.format_table`).

    Example:

    >>> rows = mtk.monitoring.report_rows({"heads": {}, "inputs": {}})
    >>> rows
    []
    """
    rows = []
    for section in ("heads", "inputs"):
        for name, entry in report[section].items():
            quality = entry.get("quality") or {}
            row = {
                "name": name if section == "heads" else f"input {name}",
                "kind": entry["kind"],
                "psi": entry["psi"],
                "js": entry["js"],
                "conf shift": entry.get("confidence_shift"),
                "metric": quality.get("metric"),
                "reference": quality.get("reference"),
                "now": quality.get("value"),
                "95% CI": (
                    f"{quality['ci_low']:.3f}-{quality['ci_high']:.3f}"
                    if quality.get("labels", 0) > 1 else None
                ),
                "labels": quality.get("labels"),
                "flags": ",".join(entry["flags"]) or None,
            }
            rows.append(row)
    return rows


def format_report(report):
    """The report as a table (one row per head and input) with a header line.

    Example:

    >>> print(mtk.monitoring.format_report({"heads": {}, "inputs": {},
    ...     "traffic": {"examples": 0, "records_skipped": 0},
    ...     "reference_examples": 1, "flagged": []}))
    0 examples vs 1 in the reference; flagged: none
    (no rows)
    """
    traffic = report["traffic"]
    title = (
        f"{traffic['examples']} examples vs {report['reference_examples']} in "
        f"the reference; flagged: {', '.join(report['flagged']) or 'none'}"
    )
    if traffic.get("records_skipped"):
        title += f" ({traffic['records_skipped']} log records skipped)"
    from mtk.evaluation import format_table

    return format_table(report_rows(report), title=title)


def plot_report(report, directory):
    """Writes one PNG per head and input: reference vs now, per feature.

    Args:
        report: a report from `compare`.
        directory: where to write ``<name>.png`` (created if missing).

    Returns:
        The written paths.

    Example:

    >>> import os, tempfile
    >>> mtk.monitoring.plot_report({"heads": {}, "inputs": {}}, tempfile.mkdtemp())
    []
    """
    from mtk.evaluation import _figure

    os.makedirs(directory, exist_ok=True)
    paths = []
    for section in ("heads", "inputs"):
        for name, entry in report[section].items():
            features = list(entry["features"].items())[:6]
            figure = _figure(1, len(features), width=3.6, height=2.8)
            axes = figure.subplots(1, len(features), squeeze=False)[0]
            for ax, (feature, detail) in zip(axes, features):
                ref = np.asarray(detail["reference"])
                now = np.asarray(detail["current"])
                positions = np.arange(len(ref))
                ax.bar(positions - 0.2, ref, 0.4, label="reference")
                ax.bar(positions + 0.2, now, 0.4, label="now")
                if "categories" in detail:
                    labels = detail["categories"]
                else:
                    edges = detail["edges"]
                    labels = (
                        [f"<{edges[0]:.3g}"]
                        + [f"{a:.3g}-{b:.3g}" for a, b in zip(edges, edges[1:])]
                        + [f">={edges[-1]:.3g}"]
                    ) if edges else ["all"]
                ax.set_xticks(positions, labels, rotation=60, fontsize=7)
                ax.set_title(f"{feature}: PSI {detail['psi']:.3f}", fontsize=9)
                ax.set_ylabel("share")
            axes[0].legend(fontsize=7)
            prefix = "" if section == "heads" else "input_"
            flags = f" — flagged: {', '.join(entry['flags'])}" if entry["flags"] else ""
            figure.suptitle(f"{prefix}{name}{flags}", fontsize=10)
            path = os.path.join(directory, f"{prefix}{name}.png")
            figure.savefig(path, dpi=80)
            paths.append(path)
    return paths


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report, directory):
    """Writes ``report.json``, ``report.txt`` and the plots into ``directory``.

    Example:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> sorted(os.path.basename(p) for p in mtk.monitoring.write_report(
    ...     {"heads": {}, "inputs": {}, "traffic": {"examples": 0},
    ...      "reference_examples": 1, "flagged": []}, d))
    ['report.json', 'report.txt']
    """
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, "report.json")
    with open(json_path, "w") as f:
        # Strict JSON for other tools: NaN (e.g. no labels joined) is null.
        json.dump(_finite(report), f, indent=1, allow_nan=False)
    text_path = os.path.join(directory, "report.txt")
    with open(text_path, "w") as f:
        f.write(format_report(report) + "\n")
    return [json_path, text_path] + plot_report(report, directory)
