"""`build_multitask_model`: a pretrained trunk with named heads, compiled."""

import contextlib
import numbers

import keras

from mtk.distribute import check_strategy
from mtk.heads import Head
from mtk.heads import heads_of
from mtk.trunks import TRUNK_NAME
from mtk.trunks import build_trunk
from mtk.weighting import MultiTaskModel
from mtk.weighting import get_loss_weighting


def build_multitask_model(
    trunk,
    heads,
    *,
    input_shape=None,
    trunk_weights="pretrained",
    trunk_output=None,
    sequence_length=None,
    freeze_trunk=True,
    compile=True,
    optimizer="adam",
    learning_rate=1e-3,
    loss_weights=None,
    metrics=None,
    name="multitask",
    strategy=None,
    loss_weighting="static",
    **compile_kwargs,
):
    """Builds a functional multi-task model: one shared trunk, named heads.

    The model's outputs are a dict keyed by head name; labels, losses, loss
    weights and metrics use the same keys. The trunk is the nested layer
    ``model.get_layer("trunk")``; preprocessing it needs is inside the model.

    Args:
        trunk: a keras.applications short name (see
            `mtk.trunks.APPLICATIONS`), a keras-hub text preset name or
            local preset / Hugging Face checkpoint directory, a ``.keras``
            path, or a `keras.Model`.
        heads: list of `mtk.heads.Head` objects with distinct names.
        input_shape: per-example input shape (needed by keras.applications).
        trunk_weights: ``"pretrained"`` (default; ``"imagenet"`` too),
            ``None`` for random init, or a local weights file.
        trunk_output: cut a model trunk at this layer name.
        sequence_length: token sequence length of text trunks.
        freeze_trunk: start with the trunk frozen (phase 1 of transfer
            learning). ``False`` builds it trainable, e.g. to train from
            scratch.
        compile: compile the model; ``False`` returns it uncompiled.
        optimizer: optimizer name or instance.
        learning_rate: learning rate when ``optimizer`` is a name.
        loss_weights: dict ``{head name: weight}``; missing heads weigh 1.0.
        metrics: dict ``{head name: [extra metrics]}`` added to each head's
            own metrics.
        name: the model's name.
        strategy: a `tf.distribute.Strategy` (see
            `mtk.distribute.get_strategy`); the model's variables and
            optimizer are created in its scope and `model.fit` distributes
            over it. None: the current strategy (none by default).
        loss_weighting: how task losses are weighted while training:
            ``"static"`` (the ``loss_weights`` dict), ``"uncertainty"``,
            ``"dwa"``, ``"gradnorm"``, ``"pcgrad"``, or an
            `mtk.weighting.LossWeighting` object for its parameters (see
            `mtk.weighting`). Non-static methods return an
            `mtk.weighting.MultiTaskModel`.
        **compile_kwargs: passed to `keras.Model.compile` (e.g.
            ``jit_compile``, ``steps_per_execution``).

    Returns:
        A `keras.Model`.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Classification("item", num_classes=10),
    ...            mtk.heads.Binary("is_footwear")],
    ...     loss_weights={"item": 1.0, "is_footwear": 0.5})
    >>> sorted(model.output_names)
    ['is_footwear', 'item']
    """
    heads = _check_heads(heads)
    weighting = get_loss_weighting(loss_weighting)
    if weighting is not None:
        weighting.check_heads([head.name for head in heads])
    if compile:
        # Fail on bad compile arguments before the (slow) trunk is built.
        _check_loss_weights(loss_weights, heads)
        _check_metrics(metrics, heads)
    if strategy is not None:
        check_strategy(strategy)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        if strategy is not None and isinstance(trunk, keras.Model):
            trunk = _copy_into_scope(trunk, strategy)
        inputs, features = build_trunk(
            trunk,
            input_shape=input_shape,
            trunk_weights=trunk_weights,
            trunk_output=trunk_output,
            sequence_length=sequence_length,
        )
        outputs = {head.name: head(features) for head in heads}
        if weighting is None:
            model = keras.Model(inputs, outputs, name=name)
        else:
            model = MultiTaskModel(
                inputs, outputs, name=name, loss_weighting=weighting
            )
    model.get_layer(TRUNK_NAME).trainable = not freeze_trunk
    if compile:
        compile_multitask(
            model,
            optimizer=optimizer,
            learning_rate=learning_rate,
            loss_weights=loss_weights,
            metrics=metrics,
            **compile_kwargs,
        )
    return model


def _copy_into_scope(model, strategy):
    """``model``, or a copy with its weights whose variables ``strategy`` owns.

    Call inside ``strategy.scope()``. A model built outside the scope has
    variables the strategy does not mirror, and `model.fit` rejects them.
    """
    owned = strategy.extended.variable_created_in_scope
    if all(owned(weight.value) for weight in model.weights):
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def compile_multitask(
    model,
    optimizer="adam",
    learning_rate=1e-3,
    loss_weights=None,
    metrics=None,
    **compile_kwargs,
):
    """Compiles a multi-task model with each head's masked loss and metrics.

    Args:
        model: a model from `build_multitask_model`.
        optimizer: optimizer name or instance.
        learning_rate: learning rate when ``optimizer`` is a name.
        loss_weights: dict ``{head name: weight}``; missing heads weigh 1.0.
        metrics: dict ``{head name: [extra metrics]}``.
        **compile_kwargs: passed to `keras.Model.compile`.

    Example:

    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Binary("flag")], compile=False)
    >>> mtk.compile_multitask(model, loss_weights={"flag": 2.0})
    >>> model.compiled
    True
    """
    heads = heads_of(model)
    head_list = list(heads.values())
    _check_loss_weights(loss_weights, head_list)
    _check_metrics(metrics, head_list)
    weights = {name: 1.0 for name in heads}
    weights.update(loss_weights or {})
    # The optimizer's and metrics' variables belong to the strategy the model
    # was built under (the default strategy when there is none).
    with model.distribute_strategy.scope():
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(
                {"class_name": optimizer, "config": {"learning_rate": learning_rate}}
            )
        model.compile(
            optimizer=optimizer,
            loss={name: head.get_loss() for name, head in heads.items()},
            loss_weights=weights,
            metrics={
                name: head.get_metrics(extra=(metrics or {}).get(name, ()))
                for name, head in heads.items()
            },
            **compile_kwargs,
        )


def _check_heads(heads):
    if isinstance(heads, Head):
        heads = [heads]
    heads = list(heads)
    if not heads:
        raise ValueError("heads is empty; give at least one mtk.heads.Head.")
    names = []
    for head in heads:
        if not isinstance(head, Head):
            raise TypeError(
                "heads must be mtk.heads.Head objects (Classification, Binary, "
                f"MultiLabel, Regression); got {head!r}."
            )
        if head.name in names:
            raise ValueError(
                f"Head name {head.name!r} is used twice; head names must be "
                "distinct."
            )
        if head.built:
            raise ValueError(
                f"Head {head.name!r} already belongs to a model; create a new "
                "head object for each model."
            )
        names.append(head.name)
    return heads


def _check_loss_weights(loss_weights, heads):
    if loss_weights is None:
        return
    names = [head.name for head in heads]
    if not isinstance(loss_weights, dict):
        raise TypeError(
            "loss_weights must be a dict keyed by head name "
            f"({names}), got {type(loss_weights).__name__}."
        )
    for key, weight in loss_weights.items():
        if key not in names:
            raise ValueError(
                f"loss_weights names head {key!r}, which the model lacks; "
                f"heads are {names}."
            )
        if not isinstance(weight, numbers.Real) or weight < 0:
            raise ValueError(
                f"loss_weights[{key!r}] must be a number >= 0, got {weight!r}."
            )


def _check_metrics(metrics, heads):
    if metrics is None:
        return
    names = [head.name for head in heads]
    if not isinstance(metrics, dict):
        raise TypeError(
            f"metrics must be a dict keyed by head name ({names}), got "
            f"{type(metrics).__name__}."
        )
    for key in metrics:
        if key not in names:
            raise ValueError(
                f"metrics names head {key!r}, which the model lacks; heads "
                f"are {names}."
            )
