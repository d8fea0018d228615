"""Transfer learning: freeze, unfreeze, and the two-phase `fit_transfer`.

Phase 1 trains the heads on a frozen trunk. Phase 2 unfreezes all of the trunk
or its top part, recompiles with the same losses, loss weights and metrics and
a lower learning rate, and trains on. BatchNormalization layers stay in
inference mode throughout phase 2 (in Keras 3 a BatchNormalization layer with
``trainable=False`` normalises with its moving statistics and does not update
them), so a small target data set does not wreck the pretrained statistics.

With a `keras.callbacks.BackupAndRestore` among the callbacks, `fit_transfer`
resumes a killed run in the phase it was in: phase 1's last backup is kept
until phase 2 makes its own, and a backup made in phase 2 skips phase 1 and
restores into the unfrozen, recompiled model.
"""

import contextlib
import json
import math
import numbers
import warnings

import numpy as np
import tensorflow as tf
import keras

from mtk.heads import check_head_dict
from mtk.heads import check_label_values
from mtk.heads import check_labels
from mtk.heads import check_loss_weights
from mtk.heads import heads_of
from mtk.trunks import get_trunk
from mtk.trunks import pretrained_parts
from mtk.trunks import set_trunk_frozen


def get_optimizer(optimizer="adam", learning_rate=None):
    """A fresh Keras optimizer from a name, a config dict or an instance.

    The one place mtk turns ``optimizer=`` arguments into optimizers (the
    builder, recompiling for fine-tuning, each tuning trial).

    Args:
        optimizer: a name (``"adam"``), a serialized optimizer, or a
            `keras.optimizers.Optimizer` (copied, never shared: its state
            belongs to one model).
        learning_rate: the learning rate to set, or None to keep the
            optimizer's own.

    Example:

    >>> opt = mtk.training.get_optimizer("adam", learning_rate=1e-4)
    >>> type(opt).__name__, round(float(opt.learning_rate), 8)
    ('Adam', 0.0001)
    """
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Compile wraps the inner optimizer again under mixed_float16.
        optimizer = optimizer.inner_optimizer
    if isinstance(optimizer, keras.optimizers.Optimizer):
        config = optimizer.get_config()
        cls = type(optimizer)
    elif isinstance(optimizer, (str, dict)):
        cls = None
        config = optimizer if isinstance(optimizer, dict) else {
            "class_name": optimizer, "config": {}}
    else:
        raise TypeError(
            "optimizer must be a name, a serialized optimizer or a "
            f"keras.optimizers.Optimizer, got {optimizer!r}."
        )
    if cls is None:
        config = {"class_name": config["class_name"],
                  "config": dict(config.get("config", {}))}
        if learning_rate is not None:
            config["config"]["learning_rate"] = learning_rate
        try:
            return keras.optimizers.get(config)
        except ValueError as error:
            raise ValueError(f"Unknown optimizer {optimizer!r}: {error}") from None
    if learning_rate is not None:
        config["learning_rate"] = learning_rate
    return cls.from_config(config)


def freeze_trunk(model):
    """Freezes the trunk (phase 1). Recompile afterwards.

    Only pretrained parts freeze: a tabular trunk, and the tabular branches
    and fusion layers of a combined one, stay trainable
    (`mtk.trunks.pretrained_parts`).

    Example:

    >>> mtk.freeze_trunk(model)
    >>> model.get_layer("trunk").trainable
    False
    """
    set_trunk_frozen(get_trunk(model), True)


def _trunk_layers(trunk):
    return [
        layer
        for layer in trunk.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def _unfreeze_start(layers, unfreeze):
    """Index of the first trunk layer that ``unfreeze`` makes trainable."""
    names = [layer.name for layer in layers]
    if unfreeze == "all":
        return 0
    if isinstance(unfreeze, int) and not isinstance(unfreeze, bool):
        unfreeze = f"top:{unfreeze}"
    if isinstance(unfreeze, str) and unfreeze.startswith("top:"):
        count = unfreeze[len("top:") :]
        if not count.isdigit() or not 1 <= int(count) <= len(layers):
            raise ValueError(
                f"unfreeze={unfreeze!r}: the trunk has {len(layers)} layers; "
                f"use 'top:N' with 1 <= N <= {len(layers)}."
            )
        return len(layers) - int(count)
    if isinstance(unfreeze, str) and unfreeze.startswith("from:"):
        name = unfreeze[len("from:") :]
        if name not in names:
            raise ValueError(
                f"unfreeze={unfreeze!r} names no layer of the trunk; its "
                f"layers are {names}."
            )
        return names.index(name)
    raise ValueError(
        f"unfreeze must be 'all', 'top:N', 'from:<layer name>' or an int N; "
        f"got {unfreeze!r}."
    )


def check_unfreeze(model, unfreeze):
    """Raises a ValueError if ``unfreeze`` names no part of the trunk.

    Example:

    >>> mtk.training.check_unfreeze(model, "top:5")
    >>> mtk.training.check_unfreeze(model, "from:no_such_layer")
    Traceback (most recent call last):
    ...
    ValueError: unfreeze='from:no_such_layer' names no layer of the trunk; ...
    """
    _unfreeze_start(_trunk_layers(_unfreeze_target(model, unfreeze)), unfreeze)


def _unfreeze_target(model, unfreeze):
    """The trunk part whose layers ``unfreeze`` counts: the pretrained one."""
    trunk = get_trunk(model)
    parts = pretrained_parts(trunk)
    if len(parts) == 1:
        return parts[0]
    if unfreeze != "all":
        raise ValueError(
            f"unfreeze={unfreeze!r} counts the layers of one pretrained "
            f"trunk, but trunk {trunk.name!r} has {len(parts)} pretrained "
            f"parts ({[p.name for p in parts]}); use unfreeze='all'."
        )
    return trunk


def unfreeze_trunk(model, unfreeze="all"):
    """Makes the trunk, or its top part, trainable (phase 2).

    BatchNormalization layers anywhere in the trunk stay frozen, i.e. in
    inference mode. Recompile afterwards (`recompile`).

    Args:
        model: a model from `mtk.build_multitask_model`.
        unfreeze: ``"all"``; ``"top:N"`` (or the int N) for the last N layers
            of the trunk; ``"from:<layer name>"`` for that layer and all
            after it.

    Returns:
        The number of trunk layers made trainable.

    Example:

    >>> mtk.unfreeze_trunk(model, "top:20")
    20
    """
    trunk = get_trunk(model)
    target = _unfreeze_target(model, unfreeze)
    layers = _trunk_layers(target)
    start = _unfreeze_start(layers, unfreeze)
    trunk.trainable = True
    if target is not trunk or not pretrained_parts(trunk):
        # A combined trunk: its one pretrained branch is counted (the other
        # parts are trainable throughout); a tabular trunk: all trainable.
        target.trainable = True
    for index, layer in enumerate(layers):
        layer.trainable = index >= start
    # _flatten_layers reaches BatchNormalization nested in sub-layers too.
    for part in pretrained_parts(trunk):
        for layer in part._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return len(layers) - start


def recompile(model, learning_rate=None):
    """Recompiles a model after its trainable state changed.

    Keeps the losses, loss weights, metrics and other compile settings; the
    optimizer restarts from the same configuration, with ``learning_rate``
    when one is given.

    Args:
        model: a compiled model.
        learning_rate: the new learning rate, or None to keep it.

    Example:

    >>> _ = mtk.unfreeze_trunk(model)
    >>> mtk.recompile(model, learning_rate=1e-5)
    """
    if not model.compiled:
        raise ValueError(
            f"Model {model.name!r} is not compiled; compile it first (e.g. "
            "mtk.compile_multitask(model))."
        )
    config = model.get_compile_config()
    # Under a tf.distribute strategy the new optimizer's variables must be
    # created in the scope the model was built in. get_optimizer unwraps the
    # LossScaleOptimizer of mixed_float16; compile wraps the copy again.
    with model.distribute_strategy.scope():
        config["optimizer"] = keras.optimizers.serialize(
            get_optimizer(model.optimizer, learning_rate)
        )
        model.compile_from_config(config)


def check_training_data(model, x, y=None, *, source=None):
    """Checks inputs and labels against the model before any training.

    Shapes, dtypes and label keys come from the data's spec; a model with
    named inputs is checked feature by feature (a missing feature, a string
    column for a numeric input or the reverse, floats for an integer input),
    naming the feature. Label values are
    checked against each head's contract (`mtk.heads.Head.check_label_values`):
    in-memory arrays whole, a `tf.data.Dataset` on its first batch (one batch
    is read; later batches are the training loop's to guard, see
    `TerminateOnNonFinite`). A dataset that caches after a ``prefetch``
    (e.g. ``tfds.load(...).cache()``) is not read here: a partial read can
    leave TensorFlow's cache holding only part of it, so its label values
    are checked by the training step, batch by batch.

    Args:
        model: a model from `mtk.build_multitask_model`.
        x: a `tf.data.Dataset` of ``(inputs, {head: label})`` batches, or
            the inputs as arrays (then ``y`` holds the labels dict).
        y: labels dict of arrays when ``x`` is not a dataset.
        source: the argument the data came from, for the messages (e.g.
            ``"validation_data"``); None for the training data.

    Raises:
        TypeError: when the labels are not a dict keyed by head name.
        ValueError: naming the head or input at fault, or saying that the
            data is empty. A bad label value raises its subclass
            `mtk.heads.LabelValueError`.

    Example:

    >>> x, y = np.zeros((4, 32, 32, 3), "float32"), {
    ...     "item": np.array([0, 1, 2, 4]), "flag": np.ones(4, "float32"),
    ...     "tags": np.zeros((4, 3), "float32"), "price": np.zeros(4, "float32")}
    >>> mtk.check_training_data(model, x, y)
    Traceback (most recent call last):
    ...
    mtk.heads.LabelValueError: Head 'item' (Classification): label 4 at example 3 is not a class id in [0, 4); use -1 for a missing label.
    """
    heads = heads_of(model)
    of_source = f" of {source}" if source else ""
    # Domain labels (mtk.adaptation) are no head's: checked on their own.
    adaptation = getattr(model, "adaptation", None)
    argument = f"{source}'s labels" if source else "labels"
    if adaptation is not None and not isinstance(x, tf.data.Dataset):
        y, domains = adaptation.split_labels(y, source is None, argument)
        if domains is not None:
            adaptation.check_domain_values(domains, where=of_source.strip())
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(
                f"The dataset{of_source} must yield (inputs, labels) or "
                "(inputs, labels, sample_weights) tuples; its element_spec is "
                f"{spec}."
            )
        input_spec, label_spec = spec[0], spec[1]
        if adaptation is not None:
            label_spec, domain_spec = adaptation.split_labels(
                label_spec, source is None, argument)
            if domain_spec is not None:
                adaptation.check_domain_spec(domain_spec, argument)
    else:
        input_spec = _array_spec(x)
        check_head_dict(f"{source}'s labels" if source else "y", y, heads)
        label_spec = {key: _array_spec(value) for key, value in y.items()}
    _check_inputs(model, input_spec)
    check_labels(
        heads, label_spec, argument=f"{source}'s labels" if source else "labels"
    )
    empty = (
        f"{source or 'The training data'} is empty: fit would run no "
        "training step"
    )
    if isinstance(x, tf.data.Dataset):
        if int(x.cardinality()) == 0:
            raise ValueError(f"{empty} (the dataset has 0 batches).")
        if _caches_read_ahead(x):
            # Reading one batch could cut the cache: the step's label
            # guards check every batch instead.
            return
        # One batch from the pipeline (also when its size is unknown).
        batch = next(iter(x.take(1)), None)
        if batch is None:
            raise ValueError(f"{empty} (the dataset yields no batches).")
        labels = {name: value.numpy() for name, value in batch[1].items()}
        where = f"of the first batch{of_source}"
        if adaptation is not None:
            labels, domains = adaptation.split_labels(labels, False)
            if domains is not None:
                adaptation.check_domain_values(domains, where=where)
        check_label_values(heads, labels, where=where)
    else:
        sizes = [input_spec.shape[0]] + [s.shape[0] for s in label_spec.values()]
        if 0 in sizes:
            raise ValueError(f"{empty} (0 examples).")
        check_label_values(heads, y, where=of_source.strip() or None)


def _caches_read_ahead(dataset):
    """Whether ``dataset`` caches what a ``prefetch`` before the cache reads.

    A partial read can leave such a cache holding a cut copy (why: see
    `mtk.data.tfds_pipeline.cache_whole`); ``tfds.load(...).cache()`` is
    one. A cardinality assertion between the two, as ``cache_whole`` puts,
    makes it safe. tf.data has no public way to walk a pipeline; when its
    private ``_inputs`` is gone, pipelines count as safe.
    """

    def inputs(d):
        return list(getattr(d, "_inputs", list)())

    def prefetches(d):
        stack = inputs(d)
        while stack:
            d = stack.pop()
            if type(d).__name__ == "_AssertCardinalityDataset":
                continue
            if type(d).__name__ == "_PrefetchDataset":
                return True
            stack.extend(inputs(d))
        return False

    stack = [dataset]
    while stack:
        d = stack.pop()
        if type(d).__name__ == "CacheDataset" and prefetches(d):
            return True
        stack.extend(inputs(d))
    return False


def check_learning_rate(learning_rate, argument="learning_rate"):
    """Raises a ValueError unless ``learning_rate`` is a finite number > 0.

    A `keras.optimizers.schedules.LearningRateSchedule` is accepted as is.

    Args:
        learning_rate: the value to check.
        argument: the argument's name, for the message.

    Example:

    >>> mtk.training.check_learning_rate(1e-4, "finetune_learning_rate")
    >>> mtk.training.check_learning_rate(-1e-3, "finetune_learning_rate")
    Traceback (most recent call last):
    ...
    ValueError: finetune_learning_rate must be a finite number > 0, got -0.001.
    """
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, numbers.Real)
        or not math.isfinite(learning_rate)
        or learning_rate <= 0
    ):
        raise ValueError(
            f"{argument} must be a finite number > 0, got {learning_rate!r}."
        )


def _check_compiled(model):
    """Checks what the model was compiled with: its learning rate, loss weights."""
    if not model.compiled:
        raise ValueError(
            f"Model {model.name!r} is not compiled; compile it first (e.g. "
            "mtk.compile_multitask(model))."
        )
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    learning_rate = optimizer.get_config().get("learning_rate")
    if isinstance(learning_rate, numbers.Real):  # a schedule is a dict here
        check_learning_rate(
            float(learning_rate), "learning_rate (of the compiled optimizer)"
        )
    config = model.get_compile_config() or {}
    loss_weights = config.get("loss_weights")
    if isinstance(loss_weights, dict):
        check_loss_weights(loss_weights, list(heads_of(model)))


def _array_spec(array):
    """The `tf.TensorSpec` of an array, without copying numeric numpy data."""
    if isinstance(array, np.ndarray) and array.dtype.kind in "biuf":
        return tf.TensorSpec(array.shape, tf.as_dtype(array.dtype))
    return tf.TensorSpec.from_tensor(tf.convert_to_tensor(array))


def _check_inputs(model, spec):
    if isinstance(model.input, dict):
        return _check_named_inputs(model, spec)
    expected = model.inputs[0]
    if not isinstance(spec, tf.TensorSpec):
        raise ValueError(
            f"Model {model.name!r} takes one input tensor; the data's inputs "
            f"are {spec}."
        )
    want = tuple(expected.shape[1:])
    got = tuple(spec.shape[1:])
    shapes_fit = len(want) == len(got) and all(
        w is None or g is None or w == g for w, g in zip(want, got)
    )
    if not shapes_fit:
        raise ValueError(
            f"Input {expected.name!r} takes examples of shape {want}; the "
            f"data's are {got}."
        )
    if (expected.dtype == "string") != (spec.dtype == tf.string):
        raise ValueError(
            f"Input {expected.name!r} takes {expected.dtype} data; the data "
            f"is {spec.dtype.name}."
        )


def _check_named_inputs(model, spec):
    """Checks dict inputs feature by feature, naming the one at fault."""
    expected = model.input
    if not isinstance(spec, dict):
        raise ValueError(
            f"Model {model.name!r} takes a dict of named inputs "
            f"{sorted(expected)}; the data's inputs are {spec}."
        )
    missing = sorted(set(expected) - set(spec))
    if missing:
        raise ValueError(
            f"Model {model.name!r} takes input(s) {missing}, which the data "
            f"lacks (it has {sorted(spec)})."
        )
    for name, tensor in expected.items():
        got, want = spec[name], tuple(tensor.shape[1:])
        shape = tuple(got.shape[1:])
        if want[-1:] == (1,) and len(shape) == len(want) - 1:
            shape = shape + (1,)  # a column of scalars, as Keras expands it
        if len(shape) != len(want) or any(
            w is not None and g is not None and w != g
            for w, g in zip(want, shape)
        ):
            raise ValueError(
                f"Input {name!r} takes examples of shape {want}; the data's "
                f"are {tuple(got.shape[1:])}."
            )
        dtype = tf.as_dtype(tensor.dtype)
        if (dtype == tf.string) != (got.dtype == tf.string) or (
            dtype.is_integer and got.dtype.is_floating
        ):
            raise ValueError(
                f"Input {name!r} takes {dtype.name} data; the data's column "
                f"is {got.dtype.name}."
            )


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (raised by `TerminateOnNonFinite`).

    Attributes:
        heads: the names of the heads whose loss went non-finite at that step
            (empty when only the total loss did).
        epoch: the epoch, counted from 0 as `keras.Model.fit` does.
        step: the step within the epoch, counted from 0.
    """

    def __init__(self, message, heads=(), epoch=None, step=None):
        super().__init__(message)
        self.heads = list(heads)
        self.epoch = epoch
        self.step = step


class TerminateOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first non-finite loss, naming the head.

    Checks ``loss`` and each head's ``<head>_loss`` in the logs at the end of
    every training step and raises a `NonFiniteLossError` naming the heads
    whose loss went non-finite and the epoch and step. Raising (instead of
    setting ``model.stop_training`` like `keras.callbacks.TerminateOnNaN`)
    ends `fit` before any epoch-end callback: a `keras.callbacks.ModelCheckpoint`
    or `keras.callbacks.BackupAndRestore` file saved earlier is not
    overwritten with NaN weights. Put it first among the callbacks, so that
    it runs before any callback that saves every N steps; `mtk.fit_transfer`
    does.

    Example:

    >>> model.fit(train_ds, epochs=1, verbose=0,
    ...           callbacks=[mtk.training.TerminateOnNonFinite()]).epoch
    [0]
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0
        # fit_transfer names the phase it runs in the message.
        self.phase = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        try:
            heads = heads_of(self.model)
        except ValueError:  # not an mtk model: whatever *_loss the logs hold
            heads = {k[: -len("_loss")]: None for k in logs if k.endswith("_loss")}
        bad = {
            name: float(logs[f"{name}_loss"])
            for name in heads
            if f"{name}_loss" in logs and not _is_finite(logs[f"{name}_loss"])
        }
        loss = logs.get("loss")
        if not bad and (loss is None or _is_finite(loss)):
            return
        at = f"at epoch {self._epoch + 1}, step {batch + 1}"
        if self.phase:
            at += f" ({self.phase})"
        at += " (counted from 1, as Keras prints them)"
        if bad:
            names = ", ".join(
                f"{name!r}"
                + (f" ({type(heads[name]).__name__})" if heads[name] else "")
                for name in bad
            )
            values = ", ".join(str(value) for value in bad.values())
            if len(bad) == 1:
                subject = f"Head {names}: its loss went non-finite ({values})"
            else:
                subject = (
                    f"Heads {names}: their losses went non-finite ({values})"
                )
            hint = (
                "Look for huge or out-of-range labels of "
                f"{'that head' if len(bad) == 1 else 'those heads'} in that "
                "batch, or lower the learning rate."
            )
        else:
            subject = f"The total loss went non-finite ({float(loss)})"
            hint = (
                "Every head's loss was finite: look at the loss weights or "
                "the loss weighting, or lower the learning rate."
            )
        raise NonFiniteLossError(
            f"{subject} {at}. Training stopped there, before any later "
            f"callback saved the model's now broken weights. {hint}",
            heads=list(bad),
            epoch=self._epoch,
            step=batch,
        )


def _is_finite(value):
    return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))


def _with_non_finite_guard(callbacks):
    """``callbacks`` with a `TerminateOnNonFinite` first (the user's, if any)."""
    callbacks = list(callbacks or ())
    guards = [c for c in callbacks if isinstance(c, TerminateOnNonFinite)]
    guard = guards[0] if guards else TerminateOnNonFinite()
    return guard, [guard] + [c for c in callbacks if c is not guard]


def fit_transfer(
    model,
    x,
    validation_data=None,
    *,
    frozen_epochs=3,
    finetune_epochs=5,
    unfreeze="all",
    finetune_learning_rate=1e-5,
    **fit_kwargs,
):
    """Trains frozen, then fine-tunes unfrozen; returns one history.

    Args:
        model: a compiled model from `mtk.build_multitask_model`.
        x: training data: a `tf.data.Dataset` of ``(inputs, {head: label})``
            batches (or inputs arrays with ``y=`` in ``fit_kwargs``).
        validation_data: as for `keras.Model.fit`.
        frozen_epochs: epochs of phase 1 (trunk frozen).
        finetune_epochs: epochs of phase 2 (trunk unfrozen).
        unfreeze: what phase 2 unfreezes: ``"all"``, ``"top:N"`` or
            ``"from:<layer name>"`` (see `unfreeze_trunk`).
        finetune_learning_rate: learning rate of phase 2.
        **fit_kwargs: other `keras.Model.fit` arguments (callbacks, verbose,
            ...). ``epochs`` and ``initial_epoch`` are set by the schedule.
            A `TerminateOnNonFinite` goes first among the callbacks.

    Before phase 1 trains, it checks the arguments, the compiled learning
    rate and loss weights, and the training and validation data
    (`check_training_data`, label values included), so that a mistake fails
    at once rather than after phase 1.

    Returns:
        A `keras.callbacks.History` covering both phases; its
        ``phase_boundary`` attribute (also ``params["phase_boundary"]``) is
        the index of the first fine-tuning epoch.

    Example:

    >>> history = mtk.fit_transfer(model, train_ds, validation_data=val_ds,
    ...                            frozen_epochs=1, finetune_epochs=1, verbose=0)
    >>> history.phase_boundary
    1
    """
    for key in ("epochs", "initial_epoch"):
        if key in fit_kwargs:
            raise ValueError(
                f"fit_transfer sets {key} itself; use frozen_epochs and "
                "finetune_epochs."
            )
    for key, value in (
        ("frozen_epochs", frozen_epochs),
        ("finetune_epochs", finetune_epochs),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be an integer >= 0, got {value!r}.")
    # Everything phase 2 needs is checked now, so that nothing fails after
    # phase 1 trained.
    check_learning_rate(finetune_learning_rate, "finetune_learning_rate")
    _check_compiled(model)
    check_training_data(model, x, fit_kwargs.get("y"))
    if isinstance(validation_data, tf.data.Dataset):
        check_training_data(model, validation_data, source="validation_data")
    elif isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
        check_training_data(
            model, validation_data[0], validation_data[1], source="validation_data"
        )
    check_unfreeze(model, unfreeze)

    guard, fit_kwargs["callbacks"] = _with_non_finite_guard(
        fit_kwargs.get("callbacks")
    )
    backup = _backup_callback(fit_kwargs["callbacks"])
    histories = []
    # A run resumed from a backup made in phase 2 skips phase 1.
    if frozen_epochs and _backed_up_epoch(backup) < frozen_epochs:
        guard.phase = "phase 1, trunk frozen"
        freeze_trunk(model)
        recompile(model)
        with _keep_backup(backup if finetune_epochs else None), \
                warnings.catch_warnings():
            # Phase 1 freezes the trunk on purpose; gradient-level balancing
            # starts with phase 2.
            warnings.filterwarnings("ignore", ".*but the trunk is frozen")
            histories.append(
                model.fit(
                    x,
                    validation_data=validation_data,
                    epochs=frozen_epochs,
                    **fit_kwargs,
                )
            )
    if finetune_epochs:
        guard.phase = "phase 2, fine-tuning"
        unfreeze_trunk(model, unfreeze)
        recompile(model, learning_rate=finetune_learning_rate)
        with warnings.catch_warnings():
            if frozen_epochs and _backed_up_epoch(backup) == frozen_epochs:
                # Restoring phase 1's last backup into phase 2: its optimizer
                # state belongs to phase 1's optimizer, which phase 2 replaces.
                warnings.filterwarnings(
                    "ignore", "Skipping variable loading for optimizer"
                )
            histories.append(
                model.fit(
                    x,
                    validation_data=validation_data,
                    initial_epoch=frozen_epochs,
                    epochs=frozen_epochs + finetune_epochs,
                    **fit_kwargs,
                )
            )
    return _merge_histories(model, histories, phase_boundary=frozen_epochs)


def _backup_callback(callbacks):
    """The `keras.callbacks.BackupAndRestore` among ``callbacks``, if any."""
    for callback in callbacks or ():
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            return callback
    return None


def _backed_up_epoch(backup):
    """The epoch a `BackupAndRestore` backup resumes at; 0 without one."""
    if backup is None or not tf.io.gfile.exists(backup._training_metadata_path):
        return 0
    with tf.io.gfile.GFile(backup._training_metadata_path) as f:
        return json.load(f)["epoch"]


@contextlib.contextmanager
def _keep_backup(backup):
    """Keeps phase 1's last backup when its `model.fit` ends.

    `BackupAndRestore` deletes its backup when `model.fit` completes. Kept,
    phase 1's final state is what a run killed early in phase 2 resumes from
    (phase 2 overwrites it at its first save and deletes it at its end).
    """
    if backup is None:
        yield
        return
    delete_checkpoint = backup.delete_checkpoint
    backup.delete_checkpoint = False
    try:
        yield
    finally:
        backup.delete_checkpoint = delete_checkpoint


def _merge_histories(model, histories, phase_boundary):
    merged = keras.callbacks.History()
    merged.set_model(model)
    merged.history = {}
    merged.epoch = []
    for history in histories:
        merged.epoch.extend(history.epoch)
        for key, values in history.history.items():
            merged.history.setdefault(key, []).extend(values)
    merged.params = dict(histories[-1].params) if histories else {}
    merged.params["phase_boundary"] = phase_boundary
    merged.phase_boundary = phase_boundary
    return merged
