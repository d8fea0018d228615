"""Mixing pipelines whose examples label different heads."""

import tensorflow as tf

from mtk.data import labels as labels_lib


def mix(
    datasets,
    weights=None,
    heads=None,
    *,
    seed=None,
    stop_on_empty_dataset=False,
):
    """Interleaves unbatched pipelines into one, filling in missing labels.

    Each example keeps the labels its source gives; every other head gets the
    missing-label sentinel (-1 for class ids, NaN for floats), so that losses
    and metrics skip it. Sampling is `tf.data.Dataset.sample_from_datasets`.
    Batch the result.

    Args:
        datasets: list of unbatched `tf.data.Dataset` of ``(inputs,
            {head name: label})``, e.g. from `mtk.data.from_tfds` with
            ``batch_size=None``. Inputs must agree in shape and dtype.
        weights: sampling probability of each dataset (normalized); equal
            when None.
        heads: the model or list of heads the mix is for: every head gets a
            label (sentinel where no source labels it) and labels are checked
            against their heads. When None, the heads are the union of the
            sources' label keys.
        seed: seed of the sampling.
        stop_on_empty_dataset: stop when any dataset runs out, keeping the
            proportions; by default sampling goes on with the others.

    Returns:
        An unbatched `tf.data.Dataset` of ``(inputs, {head name: label})``.

    Raises:
        ValueError: naming the dataset at fault when inputs differ in shape or
            dtype, a label does not fit its head (or the same head in another
            dataset), a dataset looks batched, or weights do not match.

    Example:

    >>> import tensorflow as tf
    >>> from mtk.data import mix
    >>> species = tf.constant([0, 1, 1, 0], tf.int64)
    >>> pets = tf.data.Dataset.from_tensor_slices(
    ...     (tf.zeros((4, 8, 8, 3)), {"species": species}))
    >>> cars = tf.data.Dataset.from_tensor_slices(
    ...     (tf.ones((4, 8, 8, 3)), {"is_sedan": tf.ones((4,))}))
    >>> mixed = mix([pets, cars], weights=[0.5, 0.5], seed=0)
    >>> _, labels = next(iter(mixed.batch(8)))
    >>> sorted(labels), labels["species"].shape
    (['is_sedan', 'species'], TensorShape([8]))
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("mix() needs at least one dataset.")
    for i, dataset in enumerate(datasets):
        spec = getattr(dataset, "element_spec", None)
        if not (
            isinstance(spec, tuple)
            and len(spec) == 2
            and isinstance(spec[1], dict)
        ):
            raise ValueError(
                f"datasets[{i}] must yield (inputs, {{head name: label}}), "
                f"got element_spec {spec!r}."
            )
    # Labels first: a batched source is easiest to tell from its labels.
    specs = _label_specs(datasets, heads)
    _check_inputs(datasets)
    weights = _check_weights(weights, len(datasets))

    by_name = {} if heads is None else labels_lib.heads_by_name(heads)

    def fill(x, y):
        return x, {
            name: y[name] if name in y else (
                labels_lib.head_missing_label(by_name[name]) if name in by_name
                else labels_lib.missing_label(spec)
            )
            for name, spec in specs.items()
        }

    filled = [
        d.map(fill, num_parallel_calls=tf.data.AUTOTUNE) for d in datasets
    ]
    return tf.data.Dataset.sample_from_datasets(
        filled,
        weights=weights,
        seed=seed,
        stop_on_empty_dataset=stop_on_empty_dataset,
    )


def with_domain(dataset, domain, key="domain"):
    """Adds a domain label to every example of an unbatched pipeline.

    The data stream of domain adaptation (`mtk.adaptation`): the labelled
    source gets domain 0, unlabelled target examples domain 1, then `mix`
    interleaves them and gives the target examples the missing-label
    sentinel for every task. Batch the mix.

    Args:
        dataset: an unbatched `tf.data.Dataset` of ``(inputs, {head:
            label})``, or of inputs alone (unlabelled data).
        domain: the domain id, an integer >= 0 (0: source, 1: target).
        key: the labels key (the adaptation method's ``domain_key``).

    Returns:
        An unbatched `tf.data.Dataset` of ``(inputs, {..., key: domain})``,
        the domain an int64 scalar.

    Example:

    >>> import tensorflow as tf
    >>> from mtk.data import mix, with_domain
    >>> source = tf.data.Dataset.from_tensor_slices(
    ...     (tf.zeros((4, 8)), {"item": tf.constant([0, 1, 2, 0], tf.int64)}))
    >>> target = tf.data.Dataset.from_tensor_slices(tf.ones((4, 8)))
    >>> stream = mix([with_domain(source, 0), with_domain(target, 1)], seed=0)
    >>> _, labels = next(iter(stream.batch(8)))
    >>> sorted(labels), sorted(labels["domain"].numpy().tolist())
    (['domain', 'item'], [0, 0, 0, 0, 1, 1, 1, 1])
    """
    if isinstance(domain, bool) or not isinstance(domain, int) or domain < 0:
        raise ValueError(
            f"with_domain: domain must be an integer >= 0 (0: source, 1: "
            f"target), got {domain!r}."
        )
    spec = getattr(dataset, "element_spec", None)
    labelled = isinstance(spec, tuple) and len(spec) == 2
    if labelled and not isinstance(spec[1], dict):
        raise ValueError(
            "with_domain: the dataset must yield inputs alone or (inputs, "
            f"{{head name: label}}), got element_spec {spec!r}."
        )
    if labelled and key in spec[1]:
        raise ValueError(f"with_domain: the dataset already labels {key!r}.")
    if isinstance(spec, tuple) and not labelled:
        raise ValueError(
            "with_domain: the dataset must yield inputs alone or (inputs, "
            f"{{head name: label}}), got element_spec {spec!r}."
        )
    value = tf.constant(domain, tf.int64)
    if labelled:
        return dataset.map(lambda x, y: (x, {**y, key: value}))
    return dataset.map(lambda x: (x, {key: value}))


def _check_inputs(datasets):
    first = datasets[0].element_spec[0]
    for i, dataset in enumerate(datasets[1:], start=1):
        spec = dataset.element_spec[0]
        if (
            not (
                isinstance(spec, tf.TensorSpec)
                and isinstance(first, tf.TensorSpec)
            )
            or spec.shape != first.shape
            or spec.dtype != first.dtype
        ):
            raise ValueError(
                f"datasets[{i}] yields inputs {_describe(spec)} but "
                f"datasets[0] yields {_describe(first)}; every source of a "
                "mix must give the model the same inputs (e.g. the same "
                "image_size= in from_tfds, and the same dtype)."
            )


def _label_specs(datasets, heads):
    """``{head name: label spec}`` of the mix, checked across datasets."""
    specs, origins = {}, {}
    if heads is not None:
        for name, head in labels_lib.heads_by_name(heads).items():
            specs[name], origins[name] = labels_lib.label_spec(head), "heads"
        # A model with domain adaptation (mtk.adaptation) takes domain labels.
        domain_key = getattr(getattr(heads, "adaptation", None), "domain_key", None)
        if domain_key is not None:
            specs[domain_key] = tf.TensorSpec((), tf.int64)
            origins[domain_key] = "the model's adaptation"
    for i, dataset in enumerate(datasets):
        for name, spec in dataset.element_spec[1].items():
            if not spec.shape.is_fully_defined():
                raise ValueError(
                    f"datasets[{i}] labels head {name!r} with shape "
                    f"{tuple(spec.shape)}, which looks batched: mix unbatched "
                    "pipelines (from_tfds(..., batch_size=None)) and batch "
                    "the mix."
                )
            if name not in specs:
                if heads is not None:
                    raise ValueError(
                        f"datasets[{i}] labels {name!r}, which is not one of "
                        f"heads ({sorted(specs)})."
                    )
                specs[name], origins[name] = spec, f"datasets[{i}]"
            expected = specs[name]
            if (spec.shape, spec.dtype) != (expected.shape, expected.dtype):
                raise ValueError(
                    f"datasets[{i}] gives head {name!r} labels "
                    f"{_describe(spec)}, but {origins[name]} says the head "
                    f"takes {_describe(expected)}."
                )
    return specs


def _check_weights(weights, count):
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(
            f"weights has {len(weights)} entries for {count} datasets."
        )
    if min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"weights must be non-negative with a positive sum, got {weights}."
        )
    return weights


def _describe(spec):
    if isinstance(spec, tf.TensorSpec):
        return f"{spec.dtype.name} {tuple(spec.shape)}"
    return repr(spec)
