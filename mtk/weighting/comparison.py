"""Choosing a balancing method by evidence: `compare` them on your data.

Careful studies (Kurin et al. 2022; Xin et al. 2022) found that few methods
beat well-tuned equal weights. `compare` trains the same model once per
method and seed on your data and prints what you need to choose: each head's
test metric, Δm against a baseline method (paired per seed), and the median
training step time as a ratio to the baseline's.
"""

import keras
import numpy as np

from mtk.evaluation import StepTimer
from mtk.evaluation import delta_m
from mtk.evaluation import evaluate_heads
from mtk.evaluation import format_table
from mtk.evaluation import higher_is_better
from mtk.evaluation import mean_std
from mtk.evaluation import primary_metrics
from mtk.weighting.base import LossWeighting


def _labelled(methods):
    """``[(label, factory)]``: names, or callables returning a method object."""
    from mtk.weighting import METHODS
    from mtk.weighting import get_loss_weighting

    labelled = []
    for method in methods:
        if isinstance(method, str):
            get_loss_weighting(method)  # unknown names fail before training
            labelled.append((method, lambda m=method: m))
        elif isinstance(method, tuple) and len(method) == 2 and callable(method[1]):
            labelled.append(method)
        elif callable(method):
            probe = method()
            if not isinstance(probe, LossWeighting):
                raise TypeError(
                    f"compare: a method factory must return an "
                    f"mtk.weighting.LossWeighting, got {probe!r}."
                )
            labelled.append((probe.method, method))
        else:
            raise TypeError(
                f"compare: methods are names from {list(METHODS)}, callables "
                f"returning a LossWeighting, or (label, callable); got {method!r}."
            )
    labels = [label for label, _ in labelled]
    if len(set(labels)) != len(labels):
        raise ValueError(f"compare: method labels must be distinct, got {labels}.")
    return labelled


def compare(make_model, train_data, test_data, methods=("static",), *, seeds=3,
            epochs=3, baseline=None, verbose=1, **fit_kwargs):
    """Trains one model per balancing method and seed; reports the evidence.

    Args:
        make_model: ``make_model(loss_weighting)`` returns a fresh compiled
            model from `mtk.build_multitask_model(..., loss_weighting=...)`;
            the seed is set (`keras.utils.set_random_seed`) before each call,
            so every method starts from the same weights within a seed.
        train_data: training data for `keras.Model.fit`.
        test_data: held-out data for `mtk.evaluation.evaluate_heads`.
        methods: method names (`mtk.weighting.METHODS`), callables returning
            an `mtk.weighting.LossWeighting` (e.g.
            ``lambda: mtk.weighting.MGDA(rep_grad=True)``), or
            ``(label, callable)`` pairs.
        seeds: seeds per method; each seed trains every method once
            (interleaved, so machine noise spreads evenly).
        epochs: training epochs per run.
        baseline: the label Δm and step times are relative to (default:
            the first method).
        verbose: 1 prints a line per run and the table; 0 prints nothing.
        **fit_kwargs: other `keras.Model.fit` arguments.

    Returns:
        A list of rows, one per method: the table's cells, and under
        ``"runs"`` each seed's metrics and median step time.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype("float32")
    >>> y = {"a": x[:, 0], "b": 10 * x[:, 1]}
    >>> def make_model(loss_weighting):
    ...     return mtk.build_multitask_model(
    ...         keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...         heads=[mtk.heads.Regression("a"), mtk.heads.Regression("b")],
    ...         freeze_trunk=False, loss_weighting=loss_weighting)
    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    >>> rows = mtk.weighting.compare(make_model, ds, ds, ["static", "dwa"],
    ...                              seeds=2, epochs=2, verbose=0)
    >>> [row["method"] for row in rows]
    ['static', 'dwa']
    """
    labelled = _labelled(methods)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"compare: seeds must be an integer >= 1, got {seeds!r}.")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 2:
        raise ValueError(
            f"compare: epochs must be an integer >= 2 (the first epoch traces "
            f"the step and is not timed), got {epochs!r}."
        )
    labels = [label for label, _ in labelled]
    baseline = labels[0] if baseline is None else baseline
    if baseline not in labels:
        raise ValueError(f"compare: baseline {baseline!r} is not among {labels}.")
    runs = {label: [] for label in labels}
    directions = None
    for seed in range(seeds):
        for label, factory in labelled:
            keras.utils.set_random_seed(seed)
            model = make_model(factory())
            timer = StepTimer()
            callbacks = list(fit_kwargs.pop("callbacks", [])) + [timer]
            model.fit(train_data, epochs=epochs, verbose=0, callbacks=callbacks,
                      **fit_kwargs)
            fit_kwargs["callbacks"] = callbacks[:-1]
            metrics = primary_metrics(model, evaluate_heads(model, test_data))
            directions = directions or higher_is_better(model)
            runs[label].append({"metrics": metrics, "step_seconds": timer.median()})
            if verbose:
                shown = {h: round(v, 4) for h, v in metrics.items()}
                print(f"compare: seed {seed} {label}: {shown}, "
                      f"{timer.median() * 1000:.1f} ms/step", flush=True)
    rows = []
    for label in labels:
        base = runs[baseline]
        row = {"method": label}
        for head in runs[label][0]["metrics"]:
            row[head] = mean_std([r["metrics"][head] for r in runs[label]], ".4f")
        row[f"Δm vs {baseline} (%)"] = mean_std(
            [delta_m(r["metrics"], b["metrics"], directions)
             for r, b in zip(runs[label], base)], "+.2f")
        row[f"step / {baseline}"] = mean_std(
            [r["step_seconds"] / b["step_seconds"]
             for r, b in zip(runs[label], base)], ".2f") + "×"
        row["runs"] = runs[label]
        rows.append(row)
    if verbose:
        print(format_table(
            [{k: v for k, v in row.items() if k != "runs"} for row in rows],
            title=f"{seeds} seed(s), {epochs} epochs; Δm and step time paired "
                  "per seed"))
    return rows
