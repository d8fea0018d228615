"""`tune_loss_weights`: the entry point of loss-weight tuning."""

from mtk.tuning.hypermodel import DEFAULT_WEIGHT_RANGE
from mtk.tuning.hypermodel import MultiTaskHyperModel
from mtk.tuning.distributed import CHIEF
from mtk.tuning.distributed import CHIEF_TIMEOUT
from mtk.tuning.distributed import WORKER
from mtk.tuning.distributed import chief_address
from mtk.tuning.distributed import tuner_role
from mtk.tuning.distributed import wait_for_chief
from mtk.tuning.score import OBJECTIVE
from mtk.tuning.tuners import TUNERS
from mtk.tuning.tuners import make_objective


def tune_loss_weights(
    make_model,
    train_data,
    validation_data=None,
    *,
    tuner="random",
    max_trials=10,
    epochs=3,
    objective=OBJECTIVE,
    weight_range=DEFAULT_WEIGHT_RANGE,
    pinned_head=None,
    baselines=None,
    learning_rate=1e-3,
    optimizer="adam",
    finetune_epochs=0,
    finetune_learning_rate=1e-5,
    unfreeze="all",
    directory=None,
    project_name="loss_weights",
    overwrite=False,
    distribution_strategy=None,
    executions_per_trial=1,
    seed=None,
    chief_timeout=CHIEF_TIMEOUT,
    **fit_kwargs,
):
    """Tunes the per-head loss weights of a multi-task model with KerasTuner.

    Trials live under ``directory/project_name`` as KerasTuner lays them out;
    with ``overwrite=False`` a re-run reloads the search from there and runs
    only the trials still missing (e.g. after an interruption, or with a
    larger ``max_trials``).

    The same call runs one search across processes or machines in
    KerasTuner's distributed mode (`mtk.tuning.distributed`): with
    ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT`` and
    ``KERASTUNER_TUNER_ID`` set, the process whose id is ``chief`` serves the
    search and trains nothing; every other process (a worker) waits up to
    ``chief_timeout`` seconds for the chief, then runs the trials it is handed
    until none is left. When the search is done the chief prints the trials
    table and returns the tuner; each worker prints the trials it ran and
    returns None, since the results are the chief's. A chief re-run on a
    finished search (``overwrite=False``) returns at once; a killed worker
    restarted with the same ``KERASTUNER_TUNER_ID`` re-runs only the trial it
    was killed in. A worker never deletes the project (``overwrite`` is the
    chief's). `best_model` on the chief needs the workers' checkpoints, i.e.
    a ``directory`` all of them share.

    Args:
        make_model: a function returning a fresh model from
            `mtk.build_multitask_model` (with no argument, or taking the
            trial's `keras_tuner.HyperParameters`).
        train_data: training data, as for `keras.Model.fit` (a
            `tf.data.Dataset` of ``(inputs, {head: label})``).
        validation_data: validation data; the objective is computed on it.
        tuner: ``"random"``, ``"bayesian"`` or ``"hyperband"``.
        max_trials: number of trials (random, bayesian); Hyperband sizes its
            own brackets from ``epochs``.
        epochs: training epochs per trial (frozen-trunk epochs when
            ``finetune_epochs > 0``); Hyperband's ``max_epochs``.
        objective: ``"val_multitask_score"`` (see `mtk.tuning.score`), a
            head's metric such as ``"val_item_accuracy"``, or a
            `keras_tuner.Objective`.
        weight_range: ``(min, max)`` of each loss weight, or
            ``{head: (min, max)}``.
        pinned_head: a head whose weight stays 1.0.
        baselines: ``{head: single-task metric value}`` to score Δm.
        learning_rate: a number, or a ``(min, max)`` range to tune.
        optimizer: optimizer name or instance (copied for each trial).
        finetune_epochs: fine-tuning epochs after the frozen ones (0: none).
        finetune_learning_rate: a number, or a ``(min, max)`` range.
        unfreeze: what fine-tuning unfreezes, or a list of choices to tune.
        directory: where trials are stored (default: the working directory).
        project_name: the search's sub-directory.
        overwrite: start afresh instead of resuming.
        distribution_strategy: a `tf.distribute.Strategy` each trial runs in.
        executions_per_trial: trainings per trial, averaged.
        seed: seed of the tuner's sampling.
        chief_timeout: seconds a worker of a distributed search waits for its
            chief to accept connections before raising `ConnectionError`.
        **fit_kwargs: other `keras.Model.fit` arguments (``callbacks``,
            ``verbose``, ``steps_per_epoch``, ...).

    Returns:
        The tuner (a subclass of the chosen KerasTuner tuner), after the
        search; it has `best_loss_weights()`, `best_model()` and
        `trials_table()`, and the table has been printed unless
        ``verbose=0``. None on a worker of a distributed search.

    Raises:
        ConnectionError: on a worker, when no chief answers at
            ``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`` within
            ``chief_timeout`` seconds.
        RuntimeError: ``KERASTUNER_ORACLE_IP`` is set without the other two
            variables.
        ValueError: for a bad weight range, a head name the model lacks, a
            missing ``validation_data``, or an objective that the models
            never log (before the search, listing what they log).

    Example:

    >>> import tempfile
    >>> def make_model():  # a fresh model each call, trunk trainable
    ...     return mtk.build_multitask_model(
    ...         keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...         heads=[mtk.heads.Classification("item", 3),
    ...                mtk.heads.Binary("flag")],
    ...         trunk_weights=None, freeze_trunk=False, compile=False)
    >>> x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> y = {"item": (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0),
    ...      "flag": (x[:, 2] > 0).astype("float32")}
    >>> ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    >>> tuner = mtk.tuning.tune_loss_weights(
    ...     make_model, ds, validation_data=ds, max_trials=2, epochs=1,
    ...     directory=tempfile.mkdtemp(), verbose=0)
    >>> sorted(tuner.best_loss_weights())
    ['flag', 'item']
    >>> len(tuner.trials_table(print_table=False))
    2
    """
    check_search_arguments(
        tuner, validation_data, max_trials, epochs, executions_per_trial,
        chief_timeout, finetune_epochs, fit_kwargs,
    )
    hypermodel = MultiTaskHyperModel(
        make_model,
        weight_range=weight_range,
        pinned_head=pinned_head,
        learning_rate=learning_rate,
        optimizer=optimizer,
        finetune_epochs=finetune_epochs,
        finetune_learning_rate=finetune_learning_rate,
        unfreeze=unfreeze,
        baselines=baselines,
    )
    return run_search(
        hypermodel,
        train_data,
        validation_data,
        tuner=tuner,
        max_trials=max_trials,
        epochs=epochs,
        objective=objective,
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        distribution_strategy=distribution_strategy,
        executions_per_trial=executions_per_trial,
        seed=seed,
        chief_timeout=chief_timeout,
        **fit_kwargs,
    )


def check_search_arguments(
    tuner, validation_data, max_trials, epochs, executions_per_trial,
    chief_timeout, finetune_epochs, fit_kwargs,
):
    """Checks the arguments of a search before anything is built."""
    if tuner not in TUNERS:
        raise ValueError(
            f"tuner must be one of {sorted(TUNERS)}, got {tuner!r}."
        )
    if validation_data is None:
        raise ValueError(
            "validation_data is required: the objective is a validation metric."
        )
    for argument, value in (
        ("max_trials", max_trials),
        ("epochs", epochs),
        ("executions_per_trial", executions_per_trial),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{argument} must be an integer >= 1, got {value!r}.")
    if (
        not isinstance(chief_timeout, (int, float))
        or isinstance(chief_timeout, bool)
        or not chief_timeout > 0
    ):
        raise ValueError(
            f"chief_timeout must be a number of seconds > 0, got {chief_timeout!r}."
        )
    for key in ("epochs", "initial_epoch", "validation_split", "x", "y"):
        if key in fit_kwargs:
            raise ValueError(
                f"The search sets {key} itself; remove it from the "
                "fit arguments."
            )
    if tuner == "hyperband" and finetune_epochs:
        raise ValueError(
            "tuner='hyperband' sets each trial's epochs itself, which a "
            "two-phase schedule (finetune_epochs > 0) cannot follow; use "
            "tuner='random' or 'bayesian'."
        )


def run_search(
    hypermodel,
    train_data,
    validation_data,
    *,
    tuner,
    max_trials,
    epochs,
    objective,
    directory,
    project_name,
    overwrite,
    distribution_strategy,
    executions_per_trial,
    seed,
    chief_timeout,
    **fit_kwargs,
):
    """Runs a `MultiTaskHyperModel` search with a `TUNERS` tuner.

    What `tune_loss_weights` and `mtk.tuning.tune_multitask` share: the
    tuner, the check that the objective is logged, KerasTuner's distributed
    roles, and the printed table. Returns the tuner (None on a worker).
    """
    role = tuner_role()
    budget = {"max_epochs": epochs} if tuner == "hyperband" else {
        "max_trials": max_trials
    }
    search = TUNERS[tuner](
        hypermodel,
        objective=make_objective(objective),
        seed=seed,
        directory=directory,
        project_name=project_name,
        # Workers share the chief's project (on one machine, its very
        # directory): deleting it is for the chief alone.
        overwrite=overwrite and role != WORKER,
        distribution_strategy=distribution_strategy,
        executions_per_trial=executions_per_trial,
        **budget,
    )
    # KerasTuner built one model to learn a new search's space: what it logs
    # tells whether the objective ever will be. (A resumed search builds
    # none; its objective was checked when it started, and the tuner still
    # stops at the first epoch if an objective is not logged.)
    name = search.oracle.objective.name
    if hypermodel.logged_names is not None and name not in hypermodel.logged_names:
        raise ValueError(
            f"The objective {name!r} is never logged; the models log "
            f"{hypermodel.logged_names}. Use {OBJECTIVE!r} or one of the val_ "
            "metrics."
        )
    verbose = fit_kwargs.get("verbose", 1) != 0
    if role == WORKER:
        wait_for_chief(chief_timeout)
    if role == CHIEF and search.search_finished():
        # KerasTuner's chief would serve until a worker asks for a trial,
        # i.e. forever when none comes: there is nothing left to hand out.
        if verbose:
            print(f"The search in {search.project_dir} is complete; not serving it.")
    else:
        if role == CHIEF and verbose:
            print(
                f"Chief: serving the search at {chief_address()} until the "
                "workers have run every trial."
            )
        search.search(
            train_data, validation_data=validation_data, epochs=epochs, **fit_kwargs
        )
    if role == WORKER:
        if verbose:
            print(
                f"Worker {search.tuner_id!r} ran trials "
                f"{', '.join(search.ran_trials) or 'none'}; the chief at "
                f"{chief_address()} holds the results."
            )
        return None
    search.trials_table(print_table=verbose)
    return search
