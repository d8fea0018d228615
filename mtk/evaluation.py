"""Per-head evaluation: metrics, Δm against single-task baselines, plots.

What the recipes and benchmarks report about a multi-task model:

- `evaluate_heads`: the model's own compiled metrics, one dict per head.
- `delta_m`: the multi-task performance measure of Maninis et al. (2019,
  "Attentive Single-Tasking of Multiple Tasks") and Vandenhende et al. (2021,
  "Multi-Task Learning for Dense Prediction Tasks: A Survey"): the mean
  relative gain, in percent, of the multi-task model over single-task
  baselines, each task's sign set by whether its metric is better high or low.
- `confusion_matrices`: one per Classification / Binary head, skipping
  examples whose label is missing.
- `format_table`: rows (flat dicts) as a Markdown table, what every recipe,
  benchmark and the tuner print; `format_reports` lays several reports side
  by side with it.
- `split_log_keys` / `log_key`: Keras's ``[val_]<head>_<metric>`` log keys,
  parsed and built in one place.
- `EpochTimer`: a callback recording each epoch's training time.
- `plot_history`, `plot_confusion_matrix`, `plot_loss_weights`: PNG files
  (matplotlib, drawn without pyplot, so no display or backend is needed).
- `write_report`: all of the above for one model into one directory.
"""

import json
import numbers
import os
import time

import keras
import numpy as np

from mtk.heads import Binary
from mtk.heads import Classification
from mtk.heads import heads_of

VAL_PREFIX = "val_"
LOSS_WEIGHT_SUFFIX = "_loss_weight"
MAX_LABELLED_CLASSES = 30


def split_log_keys(keys, head_names):
    """Maps Keras log keys to ``{head: {metric: key}}``.

    Keras names a multi-output model's logs ``<head>_<metric>``, and leaves
    the head out for a one-output model (one head name and no key prefixed
    with it: every key is that head's). Keys that belong to no head (the
    total ``loss``) are left out. A key matches the longest head name it
    starts with, so heads ``item`` and ``item_color`` do not collide.

    Args:
        keys: log keys without the ``val_`` prefix.
        head_names: the model's head names.

    Returns:
        A dict ``{head name: {metric name: log key}}``.

    Example:

    >>> mtk.evaluation.split_log_keys(["loss", "a_loss", "a_accuracy", "a_b_mae"], ["a", "a_b"])
    {'a': {'loss': 'a_loss', 'accuracy': 'a_accuracy'}, 'a_b': {'mae': 'a_b_mae'}}
    >>> mtk.evaluation.split_log_keys(["loss", "accuracy"], ["flag"])
    {'flag': {'loss': 'loss', 'accuracy': 'accuracy'}}
    """
    head_names = list(head_names)
    mapping = {name: {} for name in head_names}
    if len(head_names) == 1 and not any(
        key.startswith(head_names[0] + "_") for key in keys
    ):
        mapping[head_names[0]] = {key: key for key in keys}
        return mapping
    by_length = sorted(head_names, key=len, reverse=True)
    for key in keys:
        for name in by_length:
            if key.startswith(name + "_"):
                mapping[name][key[len(name) + 1 :]] = key
                break
    return mapping


def log_key(head, metric, head_names, validation=False):
    """The Keras log key of one head's metric: `split_log_keys` inverted.

    Args:
        head: the head's name.
        metric: the metric's name, e.g. ``"accuracy"``.
        head_names: the model's head names (a one-head model's keys carry
            no head name).
        validation: prefix ``val_``, as `keras.Model.fit` names the metrics
            of its validation data.

    Example:

    >>> mtk.evaluation.log_key("item", "accuracy", ["item", "flag"], validation=True)
    'val_item_accuracy'
    >>> mtk.evaluation.log_key("item", "accuracy", ["item"])
    'accuracy'
    """
    key = metric if len(list(head_names)) == 1 else f"{head}_{metric}"
    return VAL_PREFIX + key if validation else key


def evaluate_heads(model, dataset, **evaluate_kwargs):
    """Evaluates a model and groups its compiled metrics by head.

    Args:
        model: a compiled model from `mtk.build_multitask_model`.
        dataset: evaluation data yielding ``(inputs, {head: label})`` batches.
            Missing labels are skipped by the heads' metrics.
        **evaluate_kwargs: other `keras.Model.evaluate` arguments
            (``steps``, ...). ``verbose`` defaults to 0.

    Returns:
        A dict ``{head name: {metric name: float}}``; each head's dict holds
        its (unweighted) ``loss`` and its metrics, e.g. ``accuracy``.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag"), mtk.heads.Regression("price")],
    ...     trunk_weights=None)
    >>> ds = tf.data.Dataset.from_tensor_slices((np.ones((8, 4)), {
    ...     "flag": np.ones(8), "price": np.zeros(8)})).batch(4)
    >>> report = mtk.evaluation.evaluate_heads(model, ds)
    >>> sorted(report["flag"]), sorted(report["price"])
    (['accuracy', 'auc', 'loss'], ['loss', 'mae'])
    """
    if not model.compiled:
        raise ValueError(
            f"model {model.name!r} is not compiled; evaluate_heads reports "
            "the compiled metrics (see mtk.compile_multitask)."
        )
    heads = heads_of(model)
    evaluate_kwargs.setdefault("verbose", 0)
    logs = model.evaluate(dataset, return_dict=True, **evaluate_kwargs)
    mapping = split_log_keys(list(logs), list(heads))
    return {
        head: {
            metric: float(logs[key])
            for metric, key in keys.items()
            if not metric.endswith(LOSS_WEIGHT_SUFFIX.lstrip("_"))
        }
        for head, keys in mapping.items()
    }


def primary_metrics(model, report):
    """Each head's primary metric (`Head.primary_metric`) from a report.

    Args:
        model: the model the report is about (its heads name the metrics).
        report: a dict from `evaluate_heads`.

    Returns:
        A dict ``{head name: value}``.
    """
    values = {}
    for name, head in heads_of(model).items():
        if name not in report or head.primary_metric not in report[name]:
            raise ValueError(
                f"report lacks head {name!r}'s primary metric "
                f"{head.primary_metric!r}; it has {report.get(name)}."
            )
        values[name] = report[name][head.primary_metric]
    return values


def higher_is_better(model):
    """``{head name: whether its primary metric is better when higher}``."""
    return {
        name: bool(head.primary_metric_higher_is_better)
        for name, head in heads_of(model).items()
    }


def delta_m(metrics, baselines, higher_is_better):
    """Δm: mean relative gain over single-task baselines, in percent.

    ``Δm = 100 / T * Σ_i (-1)^{l_i} (M_mt,i - M_st,i) / M_st,i`` over the T
    tasks, where ``l_i`` is 1 when lower values of task i's metric are better
    (an error) and 0 when higher are (an accuracy). Positive: the multi-task
    model is better on average.

    Args:
        metrics: ``{task: value}`` of the multi-task model.
        baselines: ``{task: value}`` of the single-task models, same keys.
        higher_is_better: ``{task: bool}``, or one bool for all tasks.

    Returns:
        Δm as a float (percent).

    Example:

    >>> gain = mtk.evaluation.delta_m(
    ...     {"a": 0.9, "b": 2.0}, {"a": 0.8, "b": 2.5}, {"a": True, "b": False})
    >>> round(gain, 4)  # (+12.5% on a, +20% on b) / 2
    16.25
    """
    if set(metrics) != set(baselines):
        raise ValueError(
            f"metrics and baselines must name the same tasks; metrics has "
            f"{sorted(metrics)}, baselines has {sorted(baselines)}."
        )
    if not metrics:
        raise ValueError("metrics is empty; Δm needs at least one task.")
    if isinstance(higher_is_better, bool):
        higher_is_better = {task: higher_is_better for task in metrics}
    missing = set(metrics) - set(higher_is_better)
    if missing:
        raise ValueError(
            f"higher_is_better lacks tasks {sorted(missing)}; it must say "
            "for each task whether its metric is better high or low."
        )
    gains = []
    for task, value in metrics.items():
        base = float(baselines[task])
        if base == 0:
            raise ValueError(
                f"baselines[{task!r}] is 0; Δm divides by the baseline."
            )
        sign = 1.0 if higher_is_better[task] else -1.0
        gains.append(sign * (float(value) - base) / abs(base))
    return 100.0 * float(np.mean(gains))


def delta_m_of_reports(report, baselines, model, metrics=None):
    """Δm over several metrics per head, each with its own direction.

    Dense tasks are judged on several metrics (segmentation: mIoU and pixel
    accuracy; depth: absolute and relative error; normals: angle mean,
    median and shares within 11.25/22.5/30°): as in Vandenhende et al.,
    every metric is one term of `delta_m`, signed by whether it is better
    high or low (`mtk.heads.Head.metric_higher_is_better`).

    Args:
        report: the multi-task model's `evaluate_heads` report.
        baselines: ``{head: {metric: value}}`` of the single-task models
            (e.g. each from its own `evaluate_heads`).
        model: the multi-task model (its heads give the metrics'
            directions).
        metrics: ``{head: [metric names]}``; by default each head's
            `Head.delta_m_metrics` (its primary metric for image-level
            heads).

    Returns:
        ``(delta_m, terms)``: Δm in percent, and the ``{"head/metric":
        (value, baseline, higher_is_better)}`` it averaged.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag"), mtk.heads.Regression("price")],
    ...     trunk_weights=None)
    >>> gain, _ = mtk.evaluation.delta_m_of_reports(
    ...     {"flag": {"accuracy": 0.9}, "price": {"mae": 2.0}},
    ...     {"flag": {"accuracy": 0.8}, "price": {"mae": 2.5}}, model)
    >>> round(gain, 4)
    16.25
    """
    heads = heads_of(model)
    if metrics is None:
        metrics = {name: head.delta_m_metrics() for name, head in heads.items()}
    values, base, directions = {}, {}, {}
    for name, names in metrics.items():
        if name not in heads:
            raise ValueError(
                f"metrics names head {name!r}, which the model lacks; its "
                f"heads are {sorted(heads)}."
            )
        for metric in names:
            for what, source in (("report", report), ("baselines", baselines)):
                if metric not in source.get(name, {}):
                    raise ValueError(
                        f"{what} lacks metric {metric!r} of head {name!r}; it "
                        f"has {sorted(source.get(name, {}))}."
                    )
            key = f"{name}/{metric}"
            values[key] = report[name][metric]
            base[key] = baselines[name][metric]
            directions[key] = heads[name].metric_higher_is_better(metric)
    terms = {k: (values[k], base[k], directions[k]) for k in values}
    return delta_m(values, base, directions), terms


def confusion_matrices(model, dataset):
    """Confusion matrices of the Classification and Binary heads.

    Rows are true classes, columns predicted ones (the most probable class;
    probability > 0.5 for Binary heads). Examples whose label for a head is
    missing (-1 / NaN) do not count for that head.

    Args:
        model: a model from `mtk.build_multitask_model`.
        dataset: data yielding ``(inputs, {head: label})`` batches.

    Returns:
        A dict ``{head name: int64 array (num_classes, num_classes)}``.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Classification("item", 3)], trunk_weights=None)
    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     (np.ones((5, 4)), {"item": [0, 1, 2, -1, 2]})).batch(2)
    >>> matrix = mtk.evaluation.confusion_matrices(model, ds)["item"]
    >>> matrix.shape, int(matrix.sum())
    ((3, 3), 4)
    """
    heads = {
        name: head
        for name, head in heads_of(model).items()
        if isinstance(head, (Classification, Binary))
    }
    matrices = {
        name: np.zeros((_num_classes(head),) * 2, np.int64)
        for name, head in heads.items()
    }
    if not heads:
        return matrices
    for batch in dataset:
        x, y = batch[0], batch[1]
        predictions = model.predict_on_batch(x)
        if not isinstance(predictions, dict):
            predictions = {next(iter(heads)): predictions}
        for name, head in heads.items():
            if name not in y:
                continue
            true, predicted = _class_ids(head, y[name], predictions[name])
            np.add.at(matrices[name], (true, predicted), 1)
    return matrices


def _num_classes(head):
    return head.num_classes if isinstance(head, Classification) else 2


def _class_ids(head, labels, probabilities):
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if isinstance(head, Classification):
        labels = labels.reshape(-1).astype(np.int64)
        present = labels >= 0
        predicted = probabilities.argmax(axis=-1)
    else:
        labels = labels.reshape(-1).astype(np.float64)
        present = ~np.isnan(labels)
        predicted = (probabilities.reshape(-1) > 0.5).astype(np.int64)
    return labels[present].astype(np.int64), predicted[present]


def class_names(head):
    """Display names of a Classification / Binary head's classes."""
    if isinstance(head, Binary):
        return ["0", "1"]
    if head.class_names:
        return list(head.class_names)
    return [str(i) for i in range(head.num_classes)]


def mean_std(values, fmt=".3f"):
    """``"mean ± std"`` of ``values`` (population std), for result tables.

    Example:

    >>> mtk.evaluation.mean_std([1.0, 2.0, 3.0], ".2f")
    '2.00 ± 0.82'
    >>> mtk.evaluation.mean_std([1.5, 2.5], "+.1f")
    '+2.0 ± 0.5'
    """
    values = np.asarray(list(values), float)
    return f"{values.mean():{fmt}} ± {values.std():{fmt.lstrip('+')}}"


def format_table(rows, title=None):
    """Rows of flat dicts as a Markdown table.

    The one table formatter of mtk: the tuner's trials table, the recipes'
    per-head reports (`format_reports`) and the benchmarks' results print
    with it. Columns are the rows' keys, in order of first appearance.
    Floats show 4 significant digits, integers and strings as they are,
    True as ``*`` (False and None as an empty cell).

    Args:
        rows: a list of dicts ``{column: value}``.
        title: an optional line above the table.

    Returns:
        The table as a string.

    Example:

    >>> print(mtk.evaluation.format_table([{"trial": "00", "score": 0.51234}]))
    | trial | score  |
    |-------|--------|
    | 00    | 0.5123 |
    """

    def cell(value):
        if isinstance(value, bool):
            return "*" if value else ""
        if isinstance(value, numbers.Integral):
            return str(value)
        if isinstance(value, numbers.Real):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = [title] if title else []
    if not rows:
        return "\n".join(lines + ["(no rows)"])
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)
    ]
    lines.append(
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    )
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append(
            "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"
        )
    return "\n".join(lines)


def format_reports(reports, metrics=None, title=None):
    """Several per-head reports side by side, as a `format_table` table.

    Args:
        reports: ``{column title: report}``, each report a dict from
            `evaluate_heads` (``{head: {metric: value}}``). Rows are taken
            from the first report; values show 4 decimals, ``-`` where a
            report lacks one.
        metrics: optional list of metric names to show (default: all but
            ``loss``).
        title: an optional line above the table.

    Returns:
        The table as a string.

    Example:

    >>> print(mtk.evaluation.format_reports(
    ...     {"multi-task": {"a": {"accuracy": 0.9}},
    ...      "single-task": {"a": {"accuracy": 0.8}}}))
    | head | metric   | multi-task | single-task |
    |------|----------|------------|-------------|
    | a    | accuracy | 0.9000     | 0.8000      |
    """
    if not reports:
        raise ValueError("reports is empty; give {column title: report}.")
    titles = list(reports)
    rows = []
    for head, values in reports[titles[0]].items():
        for metric in values:
            if (metrics is None and metric == "loss") or (
                metrics is not None and metric not in metrics
            ):
                continue
            row = {"head": head, "metric": metric}
            for column in titles:
                value = reports[column].get(head, {}).get(metric)
                row[column] = "-" if value is None else f"{value:.4f}"
            rows.append(row)
    return format_table(rows, title=title)


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's training time, validation excluded.

    After `keras.Model.fit`, ``seconds`` holds one float per epoch: the time
    from the epoch's start to its last training step (validation, which
    `fit` runs after the training steps, is not counted).

    Example:

    >>> timer = mtk.evaluation.EpochTimer()
    >>> _ = model.fit(train_ds, epochs=2, callbacks=[timer], verbose=0)
    >>> len(timer.seconds), all(s > 0 for s in timer.seconds)
    (2, True)
    """

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._start = None
        self._recorded = False

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._recorded = False

    def on_test_begin(self, logs=None):
        # fit's validation runs after the epoch's training steps.
        if self._start is not None and not self._recorded:
            self.seconds.append(time.perf_counter() - self._start)
            self._recorded = True

    def on_epoch_end(self, epoch, logs=None):
        if not self._recorded:
            self.seconds.append(time.perf_counter() - self._start)
            self._recorded = True


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of each training step after the first epoch.

    The first epoch traces and compiles the step, so it is left out;
    ``median()`` is robust to other jobs sharing the machine.

    Example:

    >>> timer = mtk.evaluation.StepTimer()
    >>> _ = model.fit(train_ds, epochs=2, callbacks=[timer], verbose=0)
    >>> len(timer.seconds) > 0 and timer.median() > 0
    True
    """

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._epoch = 0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch > 0:
            self.seconds.append(time.perf_counter() - self._start)

    def median(self):
        """The median step time in seconds (NaN before any step was timed)."""
        return float(np.median(self.seconds)) if self.seconds else float("nan")


# === Plots ===


def inference_seconds(model, x, batch_size=256, repeats=3):
    """Median wall time of ``model.predict(x)`` over ``repeats`` runs.

    One short prediction first traces the function, so tracing is not
    timed; the median is robust to other jobs sharing the machine.

    Example:

    >>> seconds = mtk.evaluation.inference_seconds(model, np.zeros((8, 32, 32, 3)))
    >>> seconds > 0
    True
    """
    model.predict(x[:batch_size], batch_size=batch_size, verbose=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(x, batch_size=batch_size, verbose=0)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _figure(rows, cols, width=4.0, height=3.0):
    # A bare Figure with an Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _history_dict(history):
    return dict(getattr(history, "history", history))


def plot_history(history, path, head_names=None, phase_boundary=None):
    """Plots per-head training and validation curves, one row per head.

    Each row shows the head's loss and each of its metrics over epochs,
    training solid, validation dashed. A vertical line marks where
    fine-tuning started (`mtk.fit_transfer`'s ``history.phase_boundary``).

    Args:
        history: a `keras.callbacks.History` (e.g. from `mtk.fit_transfer`)
            or its ``history`` dict.
        path: the PNG file to write.
        head_names: the model's head names; by default those of
            ``history.model``.
        phase_boundary: index of the first fine-tuning epoch; by default
            ``history.phase_boundary`` when present. No line when it is
            None, 0 or past the last epoch (no fine-tuning ran).

    Returns:
        ``path``.
    """
    logs = _history_dict(history)
    if head_names is None:
        model = getattr(history, "model", None)
        if model is None:
            raise ValueError(
                "plot_history needs head_names when history has no model "
                "(e.g. a plain dict)."
            )
        head_names = list(heads_of(model))
    if phase_boundary is None:
        phase_boundary = getattr(history, "phase_boundary", None)
    train_keys = [
        k for k in logs if not k.startswith(VAL_PREFIX)
        and not k.endswith(LOSS_WEIGHT_SUFFIX)
    ]
    mapping = split_log_keys(train_keys, head_names)
    mapping = {head: keys for head, keys in mapping.items() if keys}
    if not mapping:
        raise ValueError(
            f"history has no logs of heads {list(head_names)}; its keys are "
            f"{sorted(logs)}."
        )
    cols = max(len(keys) for keys in mapping.values())
    figure = _figure(len(mapping), cols)
    axes = figure.subplots(len(mapping), cols, squeeze=False)
    for row, (head, keys) in enumerate(mapping.items()):
        for col in range(cols):
            ax = axes[row][col]
            if col >= len(keys):
                ax.set_visible(False)
                continue
            # The loss first, then the metrics.
            metric, key = sorted(keys.items(), key=lambda kv: kv[0] != "loss")[col]
            epochs = np.arange(1, len(logs[key]) + 1)
            ax.plot(epochs, logs[key], "o-", label="training")
            if VAL_PREFIX + key in logs:
                ax.plot(
                    epochs, logs[VAL_PREFIX + key], "s--", label="validation"
                )
            if 0 < (phase_boundary or 0) < len(epochs):
                ax.axvline(
                    phase_boundary + 0.5, color="gray", linestyle=":",
                    label="fine-tuning starts",
                )
            ax.set_title(f"{head}: {metric}")
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path


def plot_confusion_matrix(matrix, path, class_names=None, title=None):
    """Plots one confusion matrix (rows true, columns predicted) as a PNG.

    Cells are shaded by the fraction of their row (recall per class) and,
    up to `MAX_LABELLED_CLASSES` classes, labelled with counts and names.

    Args:
        matrix: square array of counts, e.g. from `confusion_matrices`.
        path: the PNG file to write.
        class_names: names of the classes (default: their ids).
        title: the figure title.

    Returns:
        ``path``.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square, got shape {matrix.shape}.")
    n = matrix.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(n)]
    if len(class_names) != n:
        raise ValueError(
            f"class_names has {len(class_names)} names for a {n}x{n} matrix."
        )
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = matrix / np.maximum(totals, 1)
    # Past MAX_LABELLED_CLASSES, names and counts would not fit: shading only.
    labelled = n <= MAX_LABELLED_CLASSES
    size = max(3.5, 0.55 * min(n, MAX_LABELLED_CLASSES) + 1.5)
    figure = _figure(1, 1, width=size + 0.8, height=size)
    ax = figure.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, label="fraction of true class")
    if labelled:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                ax.text(
                    j, i, str(matrix[i, j]), ha="center", va="center",
                    fontsize="small",
                    color="white" if fractions[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted" if labelled else "predicted class id")
    ax.set_ylabel("true" if labelled else "true class id")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title + ': ' if title else ''}accuracy {accuracy:.3f}")
    figure.savefig(path, dpi=100)
    return path


def loss_weight_keys(history):
    """``{head: log key}`` of the loss weights a history logged, if any."""
    return {
        key[: -len(LOSS_WEIGHT_SUFFIX)]: key
        for key in _history_dict(history)
        if key.endswith(LOSS_WEIGHT_SUFFIX) and not key.startswith(VAL_PREFIX)
    }


def plot_loss_weights(history, path, phase_boundary=None):
    """Plots the per-head loss weights a dynamic weighting logged.

    Models with ``loss_weighting`` other than ``"static"`` (see
    `mtk.weighting`) log ``<head>_loss_weight`` each epoch.

    Args:
        history: a `keras.callbacks.History` or its ``history`` dict.
        path: the PNG file to write.
        phase_boundary: as in `plot_history`.

    Returns:
        ``path``, or None (nothing written) when the history has no loss
        weights.
    """
    keys = loss_weight_keys(history)
    if not keys:
        return None
    logs = _history_dict(history)
    if phase_boundary is None:
        phase_boundary = getattr(history, "phase_boundary", None)
    figure = _figure(1, 1, width=5.0, height=3.5)
    ax = figure.subplots()
    for head, key in sorted(keys.items()):
        ax.plot(np.arange(1, len(logs[key]) + 1), logs[key], "o-", label=head)
    if 0 < (phase_boundary or 0) < len(logs[key]):
        ax.axvline(phase_boundary + 0.5, color="gray", linestyle=":",
                   label="fine-tuning starts")
    ax.set_title("loss weights")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path


def write_report(model, dataset, output_dir, history=None, extra=None):
    """Evaluates a model and writes metrics and plots to a directory.

    Writes ``metrics.json`` (per-head metrics, confusion matrices and
    ``extra``), ``history.png`` and ``loss_weights.png`` when a history is
    given (the latter when it logged loss weights), and
    ``confusion_<head>.png`` per Classification / Binary head.

    Args:
        model: a compiled model from `mtk.build_multitask_model`.
        dataset: evaluation data yielding ``(inputs, {head: label})``.
        output_dir: directory to write to (created if missing).
        history: optional `keras.callbacks.History` of the training.
        extra: optional JSON-serializable dict stored under ``"extra"``.

    Returns:
        A dict with ``metrics`` (as `evaluate_heads`), ``confusion`` (lists)
        and ``files`` (the paths written).
    """
    os.makedirs(output_dir, exist_ok=True)
    metrics = evaluate_heads(model, dataset)
    matrices = confusion_matrices(model, dataset)
    heads = heads_of(model)
    files = []
    if history is not None:
        files.append(plot_history(
            history, os.path.join(output_dir, "history.png"), list(heads)
        ))
        weights = plot_loss_weights(
            history, os.path.join(output_dir, "loss_weights.png")
        )
        if weights:
            files.append(weights)
    for name, matrix in matrices.items():
        files.append(plot_confusion_matrix(
            matrix, os.path.join(output_dir, f"confusion_{name}.png"),
            class_names=class_names(heads[name]), title=name,
        ))
    result = {
        "metrics": metrics,
        "confusion": {name: m.tolist() for name, m in matrices.items()},
        "files": files,
    }
    if history is not None:
        result["history"] = {
            k: [float(v) for v in values]
            for k, values in _history_dict(history).items()
        }
        result["phase_boundary"] = getattr(history, "phase_boundary", None)
    if extra is not None:
        result["extra"] = extra
    path = os.path.join(output_dir, "metrics.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    result["files"].append(path)
    return result
