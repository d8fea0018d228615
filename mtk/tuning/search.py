"""`tune_multitask`: a search over *how* to multi-task, and its cost.

The space is `mtk.tuning.MultiTaskHyperModel`'s, given as one ``search``
dict (`SEARCH_KEYS`): balancing methods, sharing architectures, static loss
weights, learning rates, unfreezing. Trials are ranked by the
weight-independent ``val_multitask_score`` (or Δm against baselines), each
logs its median step time, and `plot_search` draws score against step time
with the Pareto front a user picks from.
"""

from mtk.evaluation import _figure
from mtk.tuning.distributed import CHIEF_TIMEOUT
from mtk.tuning.hypermodel import DEFAULT_WEIGHT_RANGE
from mtk.tuning.hypermodel import MultiTaskHyperModel
from mtk.tuning.score import OBJECTIVE
from mtk.tuning.space import COST_OBJECTIVE
from mtk.tuning.space import STEP_TIME
from mtk.tuning.tune import check_search_arguments
from mtk.tuning.tune import run_search

# What a search dict may hold, and what each key means.
SEARCH_KEYS = {
    "loss_weighting": "balancing methods: names from mtk.weighting.METHODS or objects",
    "sharing": "sharing architectures: names from mtk.sharing.METHODS or objects",
    "loss_weights": "True (or a (min, max) range): also draw static loss weights",
    "learning_rate": "a number, or a (min, max) range",
    "finetune_learning_rate": "a number, or a (min, max) range",
    "unfreeze": "what fine-tuning unfreezes, or a list of choices",
    "epochs": "a list of epoch counts (of the frozen phase, with fine-tuning)",
    "finetune_epochs": "a list of fine-tuning epoch counts (0: no fine-tuning)",
}


def check_search(search):
    """Checks a search dict's keys and that it searches something.

    Returns:
        The `MultiTaskHyperModel` keyword arguments it stands for. The
        values themselves are checked there (unknown methods and
        architectures raise, listing the known ones).

    Example:

    >>> mtk.tuning.check_search({"sharing": ["mmoe"], "loss_weights": True})
    {'sharing': ['mmoe'], 'tune_weights': True}
    >>> mtk.tuning.check_search({"balancing": ["famo"]})
    Traceback (most recent call last):
    ...
    ValueError: Unknown search key 'balancing'; the keys are ['loss_weighting', 'sharing', 'loss_weights', 'learning_rate', 'finetune_learning_rate', 'unfreeze', 'epochs', 'finetune_epochs'].
    """
    if not isinstance(search, dict):
        raise TypeError(
            f"search must be a dict such as {{'loss_weighting': ['static', "
            f"'famo'], 'sharing': ['hard', 'mmoe']}}, got {search!r}."
        )
    for key in search:
        if key not in SEARCH_KEYS:
            raise ValueError(
                f"Unknown search key {key!r}; the keys are {list(SEARCH_KEYS)}."
            )
    for key in ("loss_weighting", "sharing", "unfreeze", "epochs", "finetune_epochs"):
        if isinstance(search.get(key), (list, tuple)) and not search[key]:
            raise ValueError(f"search[{key!r}] is empty; give one choice or more.")
    loss_weights = search.get("loss_weights", False)
    kwargs = {
        key: search[key]
        for key in ("loss_weighting", "sharing", "learning_rate",
                    "finetune_learning_rate", "unfreeze", "epochs",
                    "finetune_epochs")
        if key in search
    }
    if isinstance(loss_weights, bool):
        kwargs["tune_weights"] = loss_weights
    else:
        kwargs["tune_weights"] = True
        kwargs["weight_range"] = loss_weights
    searched = (
        "loss_weighting" in kwargs
        or "sharing" in kwargs
        or kwargs["tune_weights"]
        or any(
            isinstance(search.get(key), (list, tuple))
            for key in ("learning_rate", "finetune_learning_rate")
        )
        or any(
            isinstance(search.get(key), (list, tuple)) and len(search[key]) > 1
            for key in ("unfreeze", "epochs", "finetune_epochs")
        )
    )
    if not searched:
        raise ValueError(
            f"The search space {search!r} is empty: nothing in it is chosen "
            "per trial. Give e.g. {'loss_weighting': ['static', 'famo'], "
            "'sharing': ['hard', 'mmoe']}; the keys are "
            f"{list(SEARCH_KEYS)}."
        )
    return kwargs


def tune_multitask(
    make_model,
    train_data,
    validation_data=None,
    *,
    search,
    tuner="random",
    max_trials=10,
    epochs=3,
    objective=OBJECTIVE,
    cost_weight=0.0,
    pinned_head=None,
    baselines=None,
    optimizer="adam",
    finetune_epochs=0,
    directory=None,
    project_name="multitask",
    overwrite=False,
    distribution_strategy=None,
    executions_per_trial=1,
    seed=None,
    chief_timeout=CHIEF_TIMEOUT,
    **fit_kwargs,
):
    """Searches how to multi-task: balancing, sharing, weights, schedule.

    Each trial calls ``make_model(loss_weighting=..., sharing=...)`` (only
    the keywords the search chooses; ``make_model(hp, ...)`` also gets the
    trial's `keras_tuner.HyperParameters`) with a fresh copy of the chosen
    method and architecture, compiles the model, trains it and logs
    ``val_multitask_score`` and ``step_time_ms``. Everything else is as in
    `tune_loss_weights`: KerasTuner's tuners, resuming, distributed mode.

    The baselines are always in the space: equal static weights
    (``"static"``; careful comparisons find tuned equal weights hard to
    beat) and hard sharing (``"hard"``).

    Args:
        make_model: a function returning a fresh, uncompiled model from
            ``mtk.build_multitask_model(..., loss_weighting=loss_weighting,
            sharing=sharing, compile=False)``.
        train_data: training data, as for `keras.Model.fit`.
        validation_data: validation data; the objective is computed on it.
        search: the space, a dict with keys from `SEARCH_KEYS`:
            ``loss_weighting`` (method names or `mtk.weighting` objects, e.g.
            ``mtk.weighting.DynamicWeightAverage(temperature=4.0)``),
            ``sharing`` (names or objects, e.g.
            ``mtk.sharing.PLE(num_levels=2)``), ``loss_weights`` (True or a
            weight range: static weights drawn per head, the choice
            ``"static:tuned"``), ``learning_rate`` /
            ``finetune_learning_rate`` (numbers or ranges), ``unfreeze`` (a
            choice or a list), ``epochs`` / ``finetune_epochs`` (lists of
            epoch counts per phase). A method's parameter or an
            architecture's size is searched with `mtk.tuning.Tunable`, e.g.
            ``Tunable("mmoe", num_experts=[2, 4, 8])``.
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        max_trials: number of trials (random, bayesian).
        epochs: training epochs per trial (frozen-trunk epochs when
            ``finetune_epochs > 0``); Hyperband's ``max_epochs``.
        objective: ``"val_multitask_score"`` or a head's metric.
        cost_weight: 0 reports step times only; > 0 ranks trials by
            ``val_cost_aware_score`` = ``val_multitask_score`` −
            ``cost_weight`` × median step time in ms (objective must be
            ``"val_multitask_score"``).
        pinned_head: a head whose drawn weight stays 1.0.
        baselines: ``{head: single-task metric value}`` to score Δm.
        optimizer: optimizer name or instance (copied for each trial).
        finetune_epochs: fine-tuning epochs after the frozen ones (0: none).
        directory, project_name, overwrite, distribution_strategy,
        executions_per_trial, seed, chief_timeout, **fit_kwargs: as in
            `tune_loss_weights`.

    Returns:
        The tuner, after the search: `best_config()` gives the best trial's
        method, architecture and values, `trials_table()` a row per trial
        with them and its step time, `best_model()` the model; plot it with
        `plot_search`. None on a worker of a distributed search.

    Raises:
        ValueError: an unknown search key, method or architecture (listing
            the known ones), an empty space, and what `tune_loss_weights`
            rejects.
        TypeError: ``make_model`` does not take the keywords the search
            chooses.

    Example:

    >>> import tempfile
    >>> def make_model(loss_weighting, sharing):
    ...     return mtk.build_multitask_model(
    ...         keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...         heads=[mtk.heads.Classification("item", 3),
    ...                mtk.heads.Binary("flag")],
    ...         trunk_weights=None, freeze_trunk=False, compile=False,
    ...         loss_weighting=loss_weighting, sharing=sharing)
    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> y = {"item": (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0),
    ...      "flag": (x[:, 2] > 0).astype("float32")}
    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    >>> tuner = mtk.tuning.tune_multitask(
    ...     make_model, ds, validation_data=ds, max_trials=2, epochs=1,
    ...     search={"loss_weighting": ["famo"], "sharing": ["mmoe"]},
    ...     directory=tempfile.mkdtemp(), verbose=0, seed=1)
    >>> sorted(tuner.best_config())
    ['loss_weighting', 'sharing']
    >>> rows = tuner.trials_table(print_table=False)
    >>> [row["step_time_ms"] > 0 for row in rows]
    [True, True]
    """
    hypermodel_kwargs = check_search(search)
    if "finetune_epochs" in hypermodel_kwargs and finetune_epochs:
        raise ValueError(
            f"finetune_epochs={finetune_epochs!r} and search['finetune_epochs']"
            " both set the fine-tuning epochs; give one."
        )
    finetune_epochs = hypermodel_kwargs.pop("finetune_epochs", finetune_epochs)
    if tuner == "hyperband" and "epochs" in hypermodel_kwargs:
        raise ValueError(
            "tuner='hyperband' sets each trial's epochs itself; search "
            "'epochs' with tuner='random' or 'bayesian'."
        )
    check_search_arguments(
        tuner, validation_data, max_trials, epochs, executions_per_trial,
        chief_timeout, finetune_epochs, fit_kwargs,
    )
    if cost_weight and objective != OBJECTIVE:
        raise ValueError(
            f"cost_weight penalises {OBJECTIVE!r}; objective={objective!r} "
            "cannot be combined with it."
        )
    hypermodel = MultiTaskHyperModel(
        make_model,
        pinned_head=pinned_head,
        optimizer=optimizer,
        finetune_epochs=finetune_epochs,
        baselines=baselines,
        cost_weight=cost_weight,
        **{"weight_range": DEFAULT_WEIGHT_RANGE, **hypermodel_kwargs},
    )
    return run_search(
        hypermodel,
        train_data,
        validation_data,
        tuner=tuner,
        max_trials=max_trials,
        epochs=epochs,
        objective=COST_OBJECTIVE if cost_weight else objective,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=distribution_strategy,
        executions_per_trial=executions_per_trial,
        seed=seed,
        chief_timeout=chief_timeout,
        **fit_kwargs,
    )


def pareto_front(points, maximize=True):
    """Indices of the points no other point beats in both score and cost.

    Args:
        points: ``(score, cost)`` pairs; lower cost is better.
        maximize: whether a higher score is better.

    Returns:
        The indices of the non-dominated points, cheapest first.

    Example:

    >>> mtk.tuning.pareto_front([(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.4, 0.5)])
    [3, 0, 1]
    """
    sign = 1.0 if maximize else -1.0
    keyed = [(cost, -sign * score, i) for i, (score, cost) in enumerate(points)]
    front, best = [], None
    for cost, negated, i in sorted(keyed):
        if best is None or negated < best:
            front.append(i)
            best = negated
    return front


def plot_search(tuner, path, title=None):
    """Plots each trial's score against its step time, Pareto front marked.

    The front holds the trials that no other trial beats in both score and
    step time: the choices worth their cost. Each front point is labelled
    with its trial's method and architecture.

    Args:
        tuner: a tuner from `tune_multitask` (or `tune_loss_weights`).
        path: the PNG file to write.
        title: the plot's title (default: the objective and trial count).

    Returns:
        ``path``.
    """
    rows = [
        row for row in tuner.trials_table(print_table=False)
        if row.get(STEP_TIME) is not None
    ]
    if not rows:
        raise ValueError(
            "No finished trial logged its step time; run the search first."
        )
    objective = tuner.oracle.objective
    if OBJECTIVE in rows[0]:
        score_name, maximize = OBJECTIVE, True
    else:
        score_name, maximize = objective.name, objective.direction == "max"
    points = [(row[score_name], row[STEP_TIME]) for row in rows]
    front = pareto_front(points, maximize=maximize)
    figure = _figure(1, 1, width=5.5, height=4.0)
    ax = figure.subplots()
    ax.scatter([c for _, c in points], [s for s, _ in points], color="gray",
               alpha=0.6, label="trials")
    ax.plot([points[i][1] for i in front], [points[i][0] for i in front], "o-",
            color="tab:red", label="Pareto front")
    for i in front:
        label = " / ".join(
            str(rows[i][key]) for key in ("loss_weighting", "sharing")
            if key in rows[i]
        ) or f"trial {rows[i]['trial']}"
        ax.annotate(label, (points[i][1], points[i][0]), fontsize="x-small",
                    xytext=(4, 4), textcoords="offset points")
    best = [i for i, row in enumerate(rows) if row["best"]]
    if best:
        ax.scatter([points[best[0]][1]], [points[best[0]][0]], marker="*",
                   s=160, color="gold", edgecolor="black", zorder=3,
                   label="best (objective)")
    ax.set_xlabel("median step time (ms)")
    ax.set_ylabel(score_name)
    ax.set_title(title or f"{objective.name}, {len(rows)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path
