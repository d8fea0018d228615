"""TFDS datasets → the ``(inputs, {head: label})`` pipelines mtk trains on."""

import difflib

import tensorflow as tf
import tensorflow_datasets as tfds

from mtk.data import labels as labels_lib
from mtk.data.dense import MapAugmentation
from mtk.heads import Head

AUTOTUNE = tf.data.AUTOTUNE
# Shuffle buffer for ``shuffle=True``: big enough to mix well after TFDS's
# file shuffling, small enough for large images (shuffle=<int> to change).
DEFAULT_SHUFFLE_BUFFER = 1024
# cache="auto" keeps decoded splits up to this size in memory.
AUTO_CACHE_BYTES = 1 << 30


def from_tfds(
    name,
    split="train",
    *,
    tasks,
    heads=None,
    inputs="image",
    data_dir=None,
    image_size=None,
    shuffle=False,
    batch_size=32,
    drop_remainder=False,
    cache="auto",
    augment=None,
    seed=None,
    with_info=False,
    download=True,
    builder_kwargs=None,
    download_and_prepare_kwargs=None,
    read_config=None,
):
    """Turns a TFDS dataset into a multi-task training pipeline.

    The pipeline yields ``(inputs, {head name: label})``, the form a model
    from `mtk.build_multitask_model` trains on. Labels come in each head's
    canonical form (see `mtk.data.labels`), so pipelines from several
    datasets can be combined with `mtk.data.mix`. Every argument is checked
    when the pipeline is built, before any training.

    Args:
        name: a TFDS dataset name, optionally with config and version
            (``"celeb_a"``, ``"multi_fashion/small:1.0.0"``).
        split: a TFDS split, slices included (``"train[:10%]"``).
        tasks: dict ``{head: source}``. A key is an `mtk.heads.Head` or the
            name of one of ``heads``; a source is a top-level feature key or
            a function of the example dict (the decoded TFDS example)
            returning the label. A flat dict of scalars (CelebA's
            ``attributes``) becomes a vector in sorted key order.
        heads: the model (from `mtk.build_multitask_model`) or list of heads
            the pipeline is for. Needed when ``tasks`` keys are names; heads
            without a task get the missing-label sentinel, so the pipeline
            fits the whole model.
        inputs: feature key or function of the example giving the model
            input.
        data_dir: TFDS data directory (TFDS's default when None).
        image_size: ``(height, width)`` or one int: resize images to it
            (bilinear), keeping their dtype; dense heads' label maps are
            resized with it (nearest neighbour: class ids and NaN stay).
        shuffle: ``True`` to shuffle files and examples (buffer of
            `DEFAULT_SHUFFLE_BUFFER`), or an int buffer size.
        batch_size: examples per batch; None yields unbatched examples (as
            `mtk.data.mix` needs).
        drop_remainder: drop the last, smaller batch.
        cache: ``"auto"`` (default) caches decoded, resized examples in
            memory when the split's decoded size is known and below
            `AUTO_CACHE_BYTES`, so epochs after the first do not decode
            again (on a small machine decoding competes with training);
            ``True`` caches in memory, a path caches in that file, ``False``
            never caches. Augmentation runs after the cache.
        augment: function of one example's input returning the augmented
            input (e.g. ``keras.layers.RandomFlip("horizontal")``), or an
            `mtk.data.MapAugmentation`, which flips and crops the image and
            its label maps together; applied after caching and shuffling,
            before batching.
        seed: seed of file and example shuffling.
        with_info: also return the `tfds.core.DatasetInfo` (class names via
            ``info.features[key].names``, split sizes via ``info.splits``).
        download: prepare the dataset in ``data_dir`` when it is not there.
        builder_kwargs: extra arguments of `tfds.builder` (e.g. ``config=``).
        download_and_prepare_kwargs: extra arguments of
            ``builder.download_and_prepare`` (e.g. ``download_config=``).
        read_config: a `tfds.ReadConfig` (default: TFDS's, seeded by
            ``seed``).

    Returns:
        A `tf.data.Dataset`, or ``(dataset, info)`` when ``with_info``.

    Raises:
        ValueError: for an unknown dataset, a task or input key that is not
            a feature (listing the features), a task whose labels do not fit
            its head (naming both), or an unknown head name.
        FileNotFoundError: when the dataset is not prepared in ``data_dir``
            and preparing it fails (e.g. no network); says where it looked
            and how to prepare it.

    Example:

    >>> import tempfile
    >>> from mtk.data import MultiFashionConfig
    >>> from mtk.data import from_tfds
    >>> from mtk.heads import Classification
    >>> heads = [Classification("left", 10), Classification("right", 10)]
    >>> ds = from_tfds(
    ...     "multi_fashion", split="train[:8]", heads=heads,
    ...     tasks={"left": "label_left", "right": "label_right"},
    ...     data_dir=tempfile.mkdtemp(), batch_size=4,
    ...     builder_kwargs={"config": MultiFashionConfig(
    ...         name="doc", train_size=16, test_size=4)})  # doctest: +ELLIPSIS
    Downloading and preparing dataset ...
    Dataset multi_fashion downloaded and prepared to ...
    >>> images, labels = next(iter(ds))
    >>> images.shape, sorted(labels), labels["left"].dtype.name
    (TensorShape([4, 36, 36, 1]), ['left', 'right'], 'int64')
    """
    head_tasks, all_heads = _resolve_tasks(tasks, heads)
    image_size = _image_size(image_size)
    builder = _builder(name, data_dir, builder_kwargs or {})
    features = builder.info.features
    for key, source in [("inputs", inputs)] + [
        (f"tasks[{n!r}]", s) for n, (_, s) in head_tasks.items()
    ]:
        if not callable(source) and source not in features:
            raise ValueError(
                f"{key}: {source!r} is not a feature of {builder.name}; its "
                f"features are: {', '.join(features.keys())}."
            )
    _prepare(builder, download, download_and_prepare_kwargs or {})

    if read_config is None and seed is not None:
        read_config = tfds.ReadConfig(shuffle_seed=seed)
    dataset = builder.as_dataset(
        split=split, shuffle_files=bool(shuffle), read_config=read_config
    )
    missing = {
        n: labels_lib.head_missing_label(h)
        for n, h in all_heads.items()
        if n not in head_tasks
    }

    def to_example(example):
        x = _get(example, inputs)
        if image_size is not None:
            x = _resize(x, image_size, inputs)
        y = {
            n: labels_lib.to_label(
                _resize_map(_get(example, s), image_size, head), head, s
            )
            for n, (head, s) in head_tasks.items()
        }
        y.update(missing)
        return x, y

    # Tracing the map here runs the shape/dtype checks of every task.
    dataset = dataset.map(to_example, num_parallel_calls=AUTOTUNE)
    if cache == "auto":
        cache = _decoded_bytes(dataset, builder, split) < AUTO_CACHE_BYTES
    if cache:
        dataset = cache_whole(dataset, "" if cache is True else cache)
    if shuffle:
        buffer = DEFAULT_SHUFFLE_BUFFER if shuffle is True else int(shuffle)
        dataset = dataset.shuffle(buffer, seed=seed)
    if isinstance(augment, MapAugmentation):
        # Images and their label maps, transformed together.
        dataset = dataset.map(augment, num_parallel_calls=AUTOTUNE)
    elif augment is not None:
        dataset = dataset.map(
            lambda x, y: (augment(x), y), num_parallel_calls=AUTOTUNE
        )
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.prefetch(AUTOTUNE)
    return (dataset, builder.info) if with_info else dataset


def _decoded_bytes(dataset, builder, split):
    """Memory the decoded examples of ``split`` take; inf when unknown."""
    per_example = 0
    for spec in tf.nest.flatten(dataset.element_spec):
        if not spec.shape.is_fully_defined() or spec.dtype == tf.string:
            return float("inf")
        per_example += spec.shape.num_elements() * spec.dtype.size
    try:
        return per_example * builder.info.splits[split].num_examples
    except (KeyError, ValueError):  # No split sizes recorded (e.g. mocks).
        return float("inf")


def _resolve_tasks(tasks, heads):
    """Returns ``({name: (head, source)}, {name: head of every head})``."""
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "tasks must be a non-empty dict {head: feature key or function}, "
            f"got {tasks!r}."
        )
    known = {} if heads is None else labels_lib.heads_by_name(heads)
    head_tasks = {}
    for key, source in tasks.items():
        head = key if not isinstance(key, str) else known.get(key)
        if head is None:
            raise ValueError(
                f"tasks key {key!r} names no head: heads= gives "
                f"{sorted(known) or 'none'}. Pass the Head objects as keys "
                "or heads= (a list of heads or the model)."
            )
        if not isinstance(head, Head):
            raise TypeError(
                f"tasks keys must be heads or head names, got {key!r}."
            )
        if not (isinstance(source, str) or callable(source)):
            raise TypeError(
                f"tasks[{head.name!r}] must be a feature key or a function "
                f"of the example, got {source!r}."
            )
        head_tasks[head.name] = (head, source)
    all_heads = dict(known)
    all_heads.update({n: h for n, (h, _) in head_tasks.items()})
    return head_tasks, all_heads


def _builder(name, data_dir, builder_kwargs):
    try:
        return tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    except tfds.core.registered.DatasetNotFoundError as error:
        base = name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"TensorFlow Datasets does not know a dataset named {name!r}."
            f"{hint} `tfds.list_builders()` lists the known ones; mtk's own "
            "(multi_fashion) register when `mtk.data` is imported."
        ) from error


def _prepare(builder, download, download_and_prepare_kwargs):
    if builder.is_prepared():
        return
    how = (
        "Prepare it where the network is reachable with `tfds build "
        f"{builder.name} --data_dir DIR` (or `tfds.builder({builder.name!r}, "
        "data_dir=DIR).download_and_prepare()`) and copy DIR here, then pass "
        "data_dir=DIR; datasets built from manual files read them from "
        f"{builder.data_dir_root}/downloads/manual."
    )
    where = (
        f"Dataset {builder.name!r} is not prepared in {builder.data_dir_root} "
        f"(looked for {builder.data_dir})"
    )
    if not download:
        raise FileNotFoundError(f"{where} and download=False. {how}")
    try:
        builder.download_and_prepare(**download_and_prepare_kwargs)
    except Exception as error:
        # Offline downloads fail with many error types (DNS, HTTP, manual
        # files missing); all mean the same to the user.
        raise FileNotFoundError(
            f"{where} and preparing it failed: {type(error).__name__}: "
            f"{error}\n{how}"
        ) from error


def _get(example, source):
    return source(example) if callable(source) else example[source]


def _image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(
            f"image_size must be (height, width) or one int, got {image_size}."
        )
    return image_size


def _resize_map(value, image_size, head):
    """A dense head's label map resized to ``image_size`` (nearest)."""
    if image_size is None or not getattr(head, "reads_feature_map", False):
        return value
    value = tf.convert_to_tensor(value)
    if value.shape.rank not in (2, 3):
        return value  # to_label names the wrong shape
    squeeze = value.shape.rank == 2
    resized = tf.image.resize(
        value[..., tf.newaxis] if squeeze else value, image_size,
        method="nearest",
    )
    return resized[..., 0] if squeeze else resized


def _resize(image, image_size, inputs):
    if image.shape.rank != 3 or not (
        image.dtype.is_integer or image.dtype.is_floating
    ):
        raise ValueError(
            f"image_size={image_size} resizes images (height, width, "
            f"channels), but inputs ({labels_lib.describe_source(inputs)}) "
            f"gives {image.dtype.name} "
            f"tensors of shape {tuple(image.shape)}."
        )
    resized = tf.image.resize(image, image_size)
    if image.dtype.is_integer:
        return tf.saturate_cast(tf.round(resized), image.dtype)
    return tf.cast(resized, image.dtype)


def cache_whole(dataset, filename=""):
    """``dataset.cache(filename)`` that can only ever keep the whole dataset.

    A read stopped early (a first-batch check, a ``take``) cancels the
    pipeline, and TensorFlow's ``prefetch`` then reports the end of the
    data; ``cache`` takes that as the end and keeps the cut copy for every
    later epoch (TensorFlow 2.21; TFDS datasets end in a ``prefetch``).
    With the count known, the cache reads through a cardinality assertion,
    so a short read fails instead of being kept.

    Example:

    >>> ds = mtk.data.tfds_pipeline.cache_whole(
    ...     tf.data.Dataset.range(12).prefetch(2)).batch(8).prefetch(2)
    >>> _ = next(iter(ds.take(1)))
    >>> sum(len(batch) for batch in ds)
    12
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"cache_whole(dataset=...) takes a tf.data.Dataset, got "
            f"{type(dataset).__name__}."
        )
    count = int(dataset.cardinality())
    if count >= 0:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    return dataset.cache(filename)
