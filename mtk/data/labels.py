"""Label tensors in the form each head kind trains on.

A pipeline yields one label per head and example, in one canonical form per
head kind, so that pipelines from different sources can be mixed and their
labels batched:

| label kind (`Head.label_kind`) | dtype   | shape                   | missing |
|--------------------------------|---------|-------------------------|---------|
| ``"class_id"`` (Classification)| int64   | ()                      | -1      |
| ``"float"`` (Binary)           | float32 | ()                      | NaN     |
| ``"float"`` (MultiLabel)       | float32 | (num_labels,)           | NaN     |
| ``"float"`` (Regression)       | float32 | (units,)                | NaN     |
| ``"class_id"`` (Segmentation)  | int64   | (H, W)                  | ignore_label |
| ``"float"`` (DenseRegression)  | float32 | (H, W, channels)        | NaN     |

The canonical shape is the head's first entry of ``label_shapes()``.
"""

import keras
import tensorflow as tf

from mtk import losses
from mtk.heads import Head
from mtk.heads import heads_of


def heads_by_name(heads, argument="heads"):
    """Normalizes the ways a user names a model's heads to ``{name: Head}``.

    Args:
        heads: a model from `mtk.build_multitask_model`, or a list of
            `mtk.heads.Head` objects.
        argument: the argument's name, for error messages.

    Returns:
        A dict ``{head name: Head}`` in the given order.
    """
    if isinstance(heads, keras.Model):
        return heads_of(heads)
    if isinstance(heads, Head):
        heads = [heads]
    by_name = {}
    for head in heads:
        if not isinstance(head, Head):
            raise TypeError(
                f"{argument} must be a model built by mtk or a list of "
                f"mtk.heads.Head objects; got an element {head!r}."
            )
        if head.name in by_name:
            raise ValueError(f"{argument} has two heads named {head.name!r}.")
        by_name[head.name] = head
    return by_name


def label_spec(head):
    """The canonical per-example label `tf.TensorSpec` of a head.

    Args:
        head: an `mtk.heads.Head`.

    Returns:
        A `tf.TensorSpec`: int64 for class ids, float32 otherwise.

    Example:

    >>> from mtk.data import label_spec
    >>> from mtk.heads import MultiLabel
    >>> label_spec(MultiLabel("attributes", num_labels=40))
    TensorSpec(shape=(40,), dtype=tf.float32, name=None)
    """
    dtype = tf.int64 if head.label_kind == "class_id" else tf.float32
    return tf.TensorSpec(head.label_shapes()[0], dtype)


def missing_label(spec):
    """A label tensor that marks "no label" for labels of ``spec``.

    Args:
        spec: a canonical label `tf.TensorSpec` (integer: class ids, floating:
            everything else).

    Returns:
        A tensor of ``spec``'s shape and dtype filled with the sentinel:
        -1 for integer class ids, NaN for floats.
    """
    if spec.dtype.is_integer:
        value = losses.MISSING_CLASS_ID
    elif spec.dtype.is_floating:
        value = losses.MISSING_FLOAT
    else:
        raise ValueError(
            f"No missing-label sentinel for labels of dtype {spec.dtype.name}; "
            "labels must be integer class ids or floats."
        )
    return tf.fill(spec.shape, tf.constant(value, spec.dtype))


def head_missing_label(head):
    """The label of ``head`` that marks "no label" (a whole missing map for
    dense heads): `missing_label` of its spec, or a `Segmentation` head's
    ``ignore_label``.

    Example:

    >>> from mtk.data.labels import head_missing_label
    >>> from mtk.heads import Segmentation
    >>> head_missing_label(Segmentation("seg", 3, output_size=(1, 2))).numpy()
    array([[255, 255]])
    """
    spec = label_spec(head)
    ignore_label = getattr(head, "ignore_label", None)
    if ignore_label is None:
        return missing_label(spec)
    return tf.fill(spec.shape, tf.constant(ignore_label, spec.dtype))


def to_label(value, head, source):
    """Converts one example's label tensor(s) to the head's canonical form.

    A flat dict of scalars (like CelebA's ``attributes``) is stacked into a
    vector in sorted key order. Booleans and integers become float32 for
    float heads; class ids become int64. Called while tracing a
    ``tf.data`` map, so shape and dtype errors surface when the pipeline is
    built, before any training.

    Args:
        value: a tensor, or a flat dict of scalar tensors.
        head: the `mtk.heads.Head` the label is for.
        source: how the label was made (a feature key or function), for
            error messages.

    Returns:
        A tensor matching `label_spec(head)`.

    Raises:
        ValueError: naming the head and the source when the dtype or shape
            cannot be a label of the head.
    """
    where = f"tasks[{head.name!r}] ({describe_source(source)})"
    kind = f"head {head.name!r} ({type(head).__name__})"
    if isinstance(value, dict):
        entries = tf.nest.flatten(value)
        if not all(
            isinstance(v, tf.Tensor) and v.shape.rank == 0 for v in entries
        ):
            raise ValueError(
                f"{where} gives a dict that is not flat scalars, which "
                f"{kind} cannot take; map it to one tensor with a function."
            )
        value = tf.stack(entries)
    value = tf.convert_to_tensor(value)
    dtype = value.dtype
    spec = label_spec(head)
    if spec.dtype.is_integer:
        if not dtype.is_integer:
            raise ValueError(
                f"{where} gives {dtype.name} labels, but {kind} needs "
                "integer class ids."
            )
    elif not (dtype.is_bool or dtype.is_integer or dtype.is_floating):
        raise ValueError(
            f"{where} gives {dtype.name} labels, but {kind} needs numbers "
            "(bool, integer or float)."
        )
    shape = value.shape
    accepted = [tf.TensorShape(s) for s in head.label_shapes()]
    if not any(shape.is_compatible_with(s) for s in accepted):
        expected = " or ".join(str(tuple(s)) for s in head.label_shapes())
        raise ValueError(
            f"{where} gives labels of shape {tuple(shape)} per example, but "
            f"{kind} expects {expected}."
        )
    return tf.reshape(tf.cast(value, spec.dtype), spec.shape)


def describe_source(source):
    """How a task or input source reads in error messages."""
    if callable(source):
        return f"function {getattr(source, '__name__', repr(source))}"
    return f"feature {source!r}"
