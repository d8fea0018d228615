"""Tables → the ``(inputs, {head: label})`` pipelines mtk trains on.

`from_dataframe` reads a pandas DataFrame held in memory; `from_csv` streams
CSV files of any size (TensorFlow's CSV parser, a batch at a time). Both
build the same batches from the same table (one shared batch function):

- inputs: a dict ``{feature: column}`` of raw values (scalars per example,
  what a `mtk.trunks.tabular` trunk's FeatureSpace reads), plus images
  loaded and resized from path columns (``images=``);
- labels: a dict ``{head: label}`` in each head's canonical form
  (`mtk.data.labels`); an empty cell is the head's missing-label sentinel
  (-1 for Classification, NaN otherwise), and heads without a task get the
  sentinel throughout;
- with ``sample_weights=``, a third element ``{head: weight}`` (an empty
  weight cell weighs 0; heads without a weight column weigh 1), e.g. a
  conversion head that only counts on clicked rows (ESMM).

Everything is checked before any training, naming the culprit: a feature
the FeatureSpace or model expects but the table lacks, a column of the
wrong type, an empty cell in a feature with no default, duplicate column
names, a task column that does not fit its head, and (a warning) a task
column that is also a feature. Unseen categories are the FeatureSpace's to
handle (its out-of-vocabulary index or hash bucket).
"""

import csv
import glob
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from mtk import losses
from mtk.data import labels as labels_lib
from mtk.data.tfds_pipeline import _image_size
from mtk.data.tfds_pipeline import _resolve_tasks
from mtk.heads import check_label_values

AUTOTUNE = tf.data.AUTOTUNE
# Rows of the first CSV file read up front to infer and check column types.
CSV_SAMPLE_ROWS = 1000
# Lines of a CSV file that travel through tf.data as one element.
CSV_BLOCK_ROWS = 1024
_DTYPES = {"float32": tf.float32, "int32": tf.int32, "int64": tf.int64,
           "string": tf.string}


def from_dataframe(
    df,
    *,
    features,
    tasks,
    heads=None,
    sample_weights=None,
    defaults=None,
    images=None,
    image_size=None,
    batch_size=32,
    shuffle=False,
    seed=None,
):
    """A multi-task pipeline over a pandas DataFrame.

    Args:
        df: a `pandas.DataFrame`, one example per row.
        features: the columns the model reads: a list of column names, the
            adapted `keras.utils.FeatureSpace` of a `mtk.trunks.tabular`
            trunk (its features; their dtypes are checked), or the model
            (its named inputs, less those in ``images``).
        tasks: dict ``{head: source}``; a key is an `mtk.heads.Head` or the
            name of one of ``heads``; a source is a column name or a
            function of the batch's columns (a dict of tensors) returning
            the label, e.g. ``lambda c: c["price"] / 1000``. A
            Classification head with ``class_names`` also takes a column of
            those names.
        heads: the model or list of heads the pipeline is for; heads without
            a task get the missing-label sentinel.
        sample_weights: dict ``{head name: column or function}``: per-head
            sample weights (empty cells weigh 0, other heads 1).
        defaults: dict ``{feature: value}`` filling a feature's empty cells;
            an empty cell in a feature without one is an error.
        images: dict ``{input name: column of image file paths}``; each
            image is decoded (any format `tf.io.decode_image` reads) to RGB
            and resized to ``image_size``.
        image_size: ``(height, width)`` or one int, with ``images``.
        batch_size: examples per batch.
        shuffle: ``True`` (buffer: the whole table) or a buffer size.
        seed: seed of the shuffling.

    Returns:
        A batched `tf.data.Dataset` of ``(inputs, labels)`` or, with
        ``sample_weights``, ``(inputs, labels, weights)``.

    Raises:
        ValueError: naming the feature, column or head at fault.

    Example:

    >>> import pandas as pd
    >>> df = pd.DataFrame({"age": [41.0, 23.0], "country": ["DE", "FR"],
    ...                    "clicked": [1.0, 0.0], "spend": [12.5, None]})
    >>> ds = mtk.data.from_dataframe(
    ...     df, features=["age", "country"],
    ...     tasks={mtk.heads.Binary("click"): "clicked",
    ...            mtk.heads.Regression("spend"): "spend"})
    >>> x, y = next(iter(ds))
    >>> sorted(x), y["spend"].numpy().ravel().tolist()
    (['age', 'country'], [12.5, nan])
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"from_dataframe takes a pandas.DataFrame, got {type(df).__name__}."
        )
    _check_unique_columns(list(df.columns), "the DataFrame")
    plan = _Plan(df, features, tasks, heads, sample_weights, defaults, images,
                 image_size, where="the DataFrame")
    columns = plan.columns(df)
    plan.check_values(columns, "of the DataFrame")
    columns = {name: tf.constant(values) for name, values in columns.items()}
    rows = len(df)
    # Batches of row indices, gathered from the columns: the table is never
    # split into per-row elements (tf.data's per-element cost).
    if shuffle:
        buffer = rows if shuffle is True else int(shuffle)
        indices = tf.data.Dataset.range(rows).shuffle(buffer, seed=seed)
        indices = indices.batch(batch_size)
    else:
        indices = tf.data.Dataset.range(0, rows, batch_size).map(
            lambda start: tf.range(start, tf.minimum(start + batch_size, rows))
        )

    def gather(batch):
        return plan.examples(
            {name: tf.gather(values, batch) for name, values in columns.items()}
        )

    return indices.map(gather, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def from_csv(
    file_pattern,
    *,
    features,
    tasks,
    heads=None,
    sample_weights=None,
    defaults=None,
    images=None,
    image_size=None,
    batch_size=32,
    shuffle=False,
    seed=None,
    num_parallel_reads=1,
    shuffle_buffer_size=10000,
    field_delim=",",
):
    """The `from_dataframe` pipeline, streamed from CSV files of any size.

    Files are streamed in blocks of lines (`tf.data.TextLineDataset`,
    blocks interleaved across files) and parsed a batch at a time with
    `tf.io.decode_csv`, TensorFlow's CSV parser, vectorised: the same
    parsing as `tf.data.experimental.make_csv_dataset`, which parses and
    shuffles row by row and delivered several times fewer rows per second
    here. A quoted
    field may hold the delimiter but not a line break; blank lines are not
    allowed. Column types are
    inferred (and checked) on the first `CSV_SAMPLE_ROWS` rows of the first
    file, read with pandas; the same table as a DataFrame and as CSV gives
    the same batches (without shuffling, with ``num_parallel_reads=1``:
    files in sorted order).

    Args:
        file_pattern: a CSV path, a glob pattern, or a list of them; every
            file has the same header row.
        features, tasks, heads, sample_weights, defaults, images,
            image_size, batch_size, seed: as for `from_dataframe`.
        shuffle: shuffle the files, the blocks of lines, and the rows
            within windows of about ``shuffle_buffer_size`` rows.
        num_parallel_reads: files read at once (interleaved).
        shuffle_buffer_size: rows in the shuffle buffer.
        field_delim: the field separator.

    Returns:
        A batched `tf.data.Dataset`, as `from_dataframe`'s.

    Raises:
        ValueError: as `from_dataframe`, on the header and the sampled rows;
            an empty feature cell further on fails when the pipeline reads
            it (TensorFlow's CSV parser names the field's position).

    Example:

    >>> import os, tempfile
    >>> import pandas as pd
    >>> path = os.path.join(tempfile.mkdtemp(), "table.csv")
    >>> pd.DataFrame({"age": [41.0, 23.0], "clicked": [1.0, None]}).to_csv(
    ...     path, index=False)
    >>> ds = mtk.data.from_csv(path, features=["age"],
    ...                        tasks={mtk.heads.Binary("click"): "clicked"})
    >>> x, y = next(iter(ds))
    >>> y["click"].numpy().tolist()
    [1.0, nan]
    """
    import pandas as pd

    files = _csv_files(file_pattern)
    header = _csv_header(files[0], field_delim)
    _check_unique_columns(header, repr(files[0]))
    for path in files[1:]:
        if _csv_header(path, field_delim) != header:
            raise ValueError(
                f"CSV file {path!r} has another header than {files[0]!r}; "
                "every file must have the same columns in the same order."
            )
    sample = pd.read_csv(files[0], nrows=CSV_SAMPLE_ROWS, sep=field_delim,
                         keep_default_na=False, na_values=[""])
    where = f"the CSV file {files[0]!r}"
    plan = _Plan(sample, features, tasks, heads, sample_weights, defaults,
                 images, image_size, where=where)
    plan.check_values(plan.columns(sample),
                      f"of the first {len(sample)} rows of {files[0]!r}")
    defaults = [plan.csv_default(name) for name in header]
    lines = _csv_lines(files, batch_size, shuffle, seed, num_parallel_reads,
                       shuffle_buffer_size)

    def parse(batch):
        batch = tf.strings.regex_replace(batch, "\r$", "")  # CRLF files
        fields = tf.io.decode_csv(
            batch, defaults, field_delim=field_delim, na_value=""
        )
        return plan.examples(dict(zip(header, fields)))

    return lines.map(parse, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _csv_lines(files, batch_size, shuffle, seed, num_parallel_reads,
               shuffle_buffer_size):
    """Batches of CSV lines (headers skipped), read in blocks.

    tf.data's cost is per element: lines travel in blocks of
    `CSV_BLOCK_ROWS` (interleaved across files, shuffled, windows of blocks
    shuffled row by row), then `rebatch` cuts exact batches.
    """
    paths = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        paths = paths.shuffle(len(files), seed=seed)
    parallel = (
        {"num_parallel_calls": num_parallel_reads, "deterministic": True}
        if num_parallel_reads > 1 else {}
    )
    blocks = paths.interleave(
        lambda path: tf.data.TextLineDataset(path).skip(1).batch(CSV_BLOCK_ROWS),
        cycle_length=num_parallel_reads, **parallel,
    )
    if shuffle:
        window = max(1, -(-shuffle_buffer_size // CSV_BLOCK_ROWS))
        blocks = blocks.shuffle(4 * window, seed=seed)
        # Rows are mixed within each window of blocks; each window gets its
        # own seed, new every epoch.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        blocks = tf.data.Dataset.zip(blocks.ragged_batch(window), seeds).map(
            lambda window_lines, key: tf.random.experimental.stateless_shuffle(
                window_lines.flat_values, seed=tf.stack([key, 0])
            )
        )
    return blocks.rebatch(batch_size)


class _Plan:
    """What to read from a table and how: decided and checked on a frame."""

    def __init__(self, frame, features, tasks, heads, sample_weights,
                 defaults, images, image_size, where):
        self.where = where
        self.images = dict(images or {})
        self.image_size = _image_size(image_size)
        if self.images and self.image_size is None:
            raise ValueError(
                f"images={self.images} needs image_size=(height, width)."
            )
        self.defaults = dict(defaults or {})
        self.expected = self._expected_features(features)
        self.head_tasks, self.heads = _resolve_tasks(tasks, heads)
        self.weights = dict(sample_weights or {}) if sample_weights is not None else None
        for name in self.weights or {}:
            if name not in self.heads:
                raise ValueError(
                    f"sample_weights names {name!r}, which is no head; the "
                    f"heads are {sorted(self.heads)}."
                )
        columns = list(frame.columns)
        self._check_columns_present(columns)
        self._warn_leaks()
        unknown = sorted(set(self.defaults) - set(self.expected))
        if unknown:
            raise ValueError(
                f"defaults names {unknown}, which are not features "
                f"({sorted(self.expected)})."
            )
        self.dtypes = {
            name: self._column_dtype(frame[name]) for name in columns
        }
        self.class_tables = {}

    # === What is read ===
    def _expected_features(self, features):
        if isinstance(features, keras.utils.FeatureSpace):
            return {
                name: keras.backend.standardize_dtype(spec.dtype)
                for name, spec in features.features.items()
            }
        if isinstance(features, keras.Model):
            inputs = features.input
            if not isinstance(inputs, dict):
                raise ValueError(
                    f"features=model: model {features.name!r} takes one input "
                    "tensor, not named features; pass the feature columns."
                )
            return {
                name: keras.backend.standardize_dtype(x.dtype)
                for name, x in inputs.items() if name not in self.images
            }
        if isinstance(features, str) or not all(
            isinstance(name, str) for name in features
        ):
            raise TypeError(
                "features must be a list of column names, a FeatureSpace or "
                f"the model; got {features!r}."
            )
        return {name: None for name in features}

    def _check_columns_present(self, columns):
        known = set(columns)
        for name in self.expected:
            if name not in known:
                raise ValueError(
                    f"Feature {name!r}, which the model reads, is not a column "
                    f"of {self.where} (its columns: {columns})."
                )
        for name, column in self.images.items():
            if column not in known:
                raise ValueError(
                    f"images[{name!r}] reads column {column!r}, which is not a "
                    f"column of {self.where}."
                )
        sources = [(f"tasks[{n!r}]", s) for n, (_, s) in self.head_tasks.items()]
        sources += [(f"sample_weights[{n!r}]", s)
                    for n, s in (self.weights or {}).items()]
        for argument, source in sources:
            if isinstance(source, str) and source not in known:
                raise ValueError(
                    f"{argument} reads column {source!r}, which is not a "
                    f"column of {self.where} (its columns: {columns})."
                )

    def _warn_leaks(self):
        for name, (_, source) in self.head_tasks.items():
            if isinstance(source, str) and source in self.expected:
                warnings.warn(
                    f"tasks[{name!r}] reads column {source!r}, which is also a "
                    "feature: the model would see its own label (a leak). "
                    "Drop it from the features.",
                    stacklevel=4,
                )

    def _column_dtype(self, series):
        """The tf dtype a column is read as, checked against its feature."""
        name = series.name
        kind = series.dtype.kind
        numeric = kind in "biuf"
        if name not in self.expected:
            return tf.float32 if numeric else tf.string
        want = self.expected[name]
        if want is None:
            want = ("float32" if kind == "f" else "int64") if numeric else "string"
        want = _DTYPES.get(want, tf.as_dtype(want))
        values = series.dropna()
        if want == tf.string and numeric:
            raise ValueError(
                f"Column {name!r} of {self.where} holds numbers "
                f"({series.dtype}), but feature {name!r} takes strings; "
                "convert it (df[col].astype(str)) or declare it numeric."
            )
        if want != tf.string and not numeric:
            raise ValueError(
                f"Column {name!r} of {self.where} holds {series.dtype} values "
                f"(e.g. {values.iloc[0]!r}), but feature {name!r} takes "
                f"{want.name} numbers."
            )
        if want.is_integer and kind == "f" and not np.all(
            np.mod(values.to_numpy(), 1) == 0
        ):
            raise ValueError(
                f"Column {name!r} of {self.where} holds fractional numbers, "
                f"but feature {name!r} takes integers ({want.name})."
            )
        return want

    def columns(self, frame):
        """``{column: numpy array}`` of a frame, as the pipeline reads it."""
        result = {}
        for name, dtype in self.dtypes.items():
            series = frame[name]
            if name in self.expected:
                if name in self.defaults:
                    series = series.fillna(self.defaults[name])
                empty = series.isna().to_numpy()
                if empty.any():
                    raise ValueError(
                        f"Feature column {name!r} of {self.where} has "
                        f"{int(empty.sum())} empty cell(s) (NaN), the first at "
                        f"row {int(np.argmax(empty))}, and no default; fill "
                        f"them or pass defaults={{{name!r}: value}}."
                    )
            if dtype == tf.string:
                values = series.astype(object).where(series.notna(), "")
                result[name] = values.astype(str).to_numpy(dtype=object)
            else:
                result[name] = series.to_numpy(dtype=dtype.as_numpy_dtype,
                                               na_value=np.nan) if (
                    dtype.is_floating) else series.to_numpy(
                        dtype=dtype.as_numpy_dtype)
        return result

    def csv_default(self, name):
        """The CSV parser's default for a column: required for features."""
        dtype = self.dtypes[name]
        required = tf.constant([], dtype)  # an empty cell is an error
        if name in self.expected:
            if name not in self.defaults:
                return required
            return tf.constant([self.defaults[name]], dtype)
        if name in self.images.values():
            return required
        return tf.constant(["" if dtype == tf.string else np.nan], dtype)

    # === The batch function, shared by DataFrame and CSV pipelines ===
    def examples(self, columns):
        x = {name: columns[name] for name in sorted(self.expected)}
        for name, column in sorted(self.images.items()):
            x[name] = self._load_images(columns[column])
        x = dict(sorted(x.items()))
        batch = tf.shape(next(iter(columns.values())))[0]
        y = {}
        for name, head in self.heads.items():
            spec = labels_lib.label_spec(head)
            if name not in self.head_tasks:
                y[name] = tf.fill(
                    tf.concat([[batch], spec.shape], 0),
                    labels_lib.missing_label(tf.TensorSpec((), spec.dtype)),
                )
                continue
            source = self.head_tasks[name][1]
            value = source(columns) if callable(source) else columns[source]
            y[name] = self._to_labels(head, value, source, batch)
        if self.weights is None:
            return x, y
        weights = {}
        for name in self.heads:
            source = self.weights.get(name)
            if source is None:
                weights[name] = tf.ones([batch], tf.float32)
                continue
            value = source(columns) if callable(source) else columns[source]
            value = tf.cast(value, tf.float32)
            weights[name] = tf.where(tf.math.is_nan(value), 0.0, value)
        return x, y, weights

    def _to_labels(self, head, value, source, batch):
        spec = labels_lib.label_spec(head)
        value = tf.convert_to_tensor(value)
        where = f"tasks[{head.name!r}] ({labels_lib.describe_source(source)})"
        if value.dtype == tf.string:
            names = getattr(head, "class_names", None)
            if spec.dtype.is_floating or names is None:
                raise ValueError(
                    f"{where} gives strings, but head {head.name!r} "
                    f"({type(head).__name__}) needs numbers"
                    + ("" if spec.dtype.is_floating else
                       " (class ids, or class names with class_names=)")
                    + "."
                )
            table = self._class_table(head)
            # Empty cells are missing; an unknown name becomes -2, which
            # the head's label check rejects, naming it.
            ids = table.lookup(value)
            value = tf.where(value == "", tf.constant(-1, tf.int64), ids)
        elif spec.dtype.is_integer:
            if value.dtype.is_floating:
                value = tf.where(
                    tf.math.is_nan(value),
                    tf.constant(losses.MISSING_CLASS_ID, value.dtype), value,
                )
        elif not (value.dtype.is_floating or value.dtype.is_integer
                  or value.dtype.is_bool):
            raise ValueError(
                f"{where} gives {value.dtype.name} labels, but head "
                f"{head.name!r} needs numbers."
            )
        size = int(np.prod(spec.shape))
        if value.shape.rank is not None and value.shape.rank >= 1 and (
            value.shape[1:].num_elements() not in (None, size)
        ):
            raise ValueError(
                f"{where} gives labels of shape {tuple(value.shape[1:])} per "
                f"example, but head {head.name!r} ({type(head).__name__}) "
                f"expects {tuple(spec.shape)}."
            )
        return tf.reshape(
            tf.cast(value, spec.dtype), tf.concat([[batch], spec.shape], 0)
        )

    def _class_table(self, head):
        if head.name not in self.class_tables:
            names = list(head.class_names)
            self.class_tables[head.name] = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(names), tf.range(len(names), dtype=tf.int64)
                ),
                default_value=-2,
            )
        return self.class_tables[head.name]

    def _load_images(self, paths):
        size = self.image_size

        def load(path):
            image = tf.io.decode_image(
                tf.io.read_file(path), channels=3, expand_animations=False
            )
            return tf.image.resize(image, size)

        return tf.map_fn(
            load, paths,
            fn_output_signature=tf.TensorSpec(size + (3,), tf.float32),
        )

    # === Checks on values, before any training ===
    def check_values(self, columns, where):
        for name, (head, source) in self.head_tasks.items():
            if isinstance(source, str) and head.label_kind == "class_id":
                values = columns[source]
                names = getattr(head, "class_names", None)
                if values.dtype == object and names is not None:
                    unknown = ~np.isin(values, list(names) + [""])
                    if unknown.any():
                        row = int(np.argmax(unknown))
                        raise ValueError(
                            f"tasks[{name!r}] reads column {source!r}, whose "
                            f"value {values[row]!r} at row {row} {where} is "
                            f"not one of head {name!r}'s class names "
                            f"{list(names)}."
                        )
                if values.dtype.kind == "f":
                    fractional = ~np.isnan(values) & (np.mod(values, 1) != 0)
                    if fractional.any():
                        row = int(np.argmax(fractional))
                        raise ValueError(
                            f"tasks[{name!r}] reads column {source!r}, whose "
                            f"value {values[row]!r} at row {row} {where} is "
                            f"not a class id for head {name!r} "
                            "(Classification)."
                        )
        tensors = {k: tf.constant(v) for k, v in columns.items()}
        # Labels and weights only: images are not decoded for the check.
        plan_images, self.images = self.images, {}
        try:
            result = self.examples(tensors)
        finally:
            self.images = plan_images
        labels = {name: value.numpy() for name, value in result[1].items()}
        check_label_values(self.heads, labels, where=where)
        if self.weights is not None:
            for name, value in result[2].items():
                bad = ~np.isfinite(value.numpy()) | (value.numpy() < 0)
                if bad.any():
                    raise ValueError(
                        f"sample_weights[{name!r}]: weight "
                        f"{value.numpy()[np.argmax(bad)]!r} at row "
                        f"{int(np.argmax(bad))} {where} is not a finite "
                        "number >= 0."
                    )


def _check_unique_columns(columns, where):
    duplicated = sorted({str(c) for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(
            f"{where} has duplicate column names {duplicated}; rename them "
            "so that each feature and task column is one column."
        )


def _csv_files(file_pattern):
    patterns = [file_pattern] if isinstance(
        file_pattern, (str, os.PathLike)) else list(file_pattern)
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.fspath(pattern)))
        if not matched:
            raise FileNotFoundError(f"No CSV file matches {os.fspath(pattern)!r}.")
        files += matched
    return files


def _csv_header(path, field_delim):
    with open(path, newline="") as f:
        header = next(csv.reader(f, delimiter=field_delim), None)
    if not header:
        raise ValueError(f"CSV file {path!r} is empty: it has no header row.")
    return header
