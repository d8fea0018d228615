"""`build_multitask_model`: a pretrained trunk with named heads, compiled."""

import contextlib
import tempfile

import keras

from mtk.adaptation import get_adaptation
from mtk.distribute import check_strategy
from mtk.heads import check_head_dict
from mtk.heads import heads_of
from mtk.model import MultiTaskModel
from mtk.model import check_heads
from mtk.model import check_loss_weights
from mtk.sharing import get_sharing
from mtk.training import check_learning_rate
from mtk.training import get_optimizer
from mtk.trunks import resolve_trunk
from mtk.trunks import set_trunk_frozen
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
    sharing="hard",
    adaptation=None,
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
            path, a `keras.Model` (with one input or several named ones),
            or a `mtk.trunks.tabular` / `mtk.trunks.combine` trunk.
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
            `mtk.weighting`). ``loss_weights`` belong to ``"static"``; other
            methods set the weights themselves and refuse them.
        sharing: how the heads read the trunk (see `mtk.sharing`):
            ``"hard"`` (default: all read the pooled features), ``"mmoe"``,
            ``"cgc"``, ``"ple"``, or an object for its parameters, e.g.
            ``mtk.sharing.MMoE(num_experts=8)``,
            ``mtk.sharing.MTAN(at=[...])``,
            ``mtk.sharing.CrossStitch(at=[...])`` (the last two name trunk
            layers).
        adaptation: domain adaptation on the features every head reads,
            trained on unlabelled target-domain examples (see
            `mtk.adaptation`): ``mtk.adaptation.DANN(...)``, ``CORAL(...)``,
            ``MMD(...)`` or their lower-case names. Training-only: the
            served model has the task heads only.
        **compile_kwargs: passed to `keras.Model.compile` (e.g.
            ``jit_compile``, ``steps_per_execution``).

    Returns:
        An `mtk.MultiTaskModel` (a functional `keras.Model`).

    Example:

    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Classification("item", num_classes=10),
    ...            mtk.heads.Binary("is_footwear")],
    ...     loss_weights={"item": 1.0, "is_footwear": 0.5})
    >>> sorted(model.output_names)
    ['is_footwear', 'item']
    """
    heads = check_heads(heads)
    weighting = get_loss_weighting(loss_weighting)
    names = [head.name for head in heads]
    weighting.check_heads(names)
    sharing = get_sharing(sharing)
    adaptation = get_adaptation(adaptation)
    if adaptation is not None:
        adaptation.check_heads(names)
    if compile:
        # Fail on bad compile arguments before the (slow) trunk is built.
        check_loss_weights(loss_weights, names, weighting)
        if metrics is not None:
            check_head_dict("metrics", metrics, names)
        if isinstance(optimizer, (str, dict)):
            check_learning_rate(learning_rate)
    if strategy is not None:
        check_strategy(strategy)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        if strategy is not None and isinstance(trunk, keras.Model):
            trunk = _copy_into_scope(trunk, strategy)
        parts = resolve_trunk(
            trunk,
            input_shape=input_shape,
            trunk_weights=trunk_weights,
            trunk_output=trunk_output,
            sequence_length=sequence_length,
        )
        model = MultiTaskModel(
            parts.trunk,
            heads,
            input_shape=parts.input_shape,
            input_dtype=parts.input_dtype,
            input_name=parts.input_name,
            preprocessing=parts.preprocessing,
            loss_weighting=weighting,
            sharing=sharing,
            adaptation=adaptation,
            name=name,
        )
    # Pretrained parts only: tabular parts train from scratch in any phase.
    set_trunk_frozen(model.trunk, freeze_trunk)
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
    # Each layer's state travels as a .keras file carries it: its variables
    # (a Normalization layer then recomputes its mean and variance), and its
    # assets (a lookup layer's vocabulary). With `set_weights` alone a copied
    # FeatureSpace would skip normalising and its tables stay empty
    # ("Table not initialized" in fit).
    for original, copied in zip(model._flatten_layers(), copy._flatten_layers()):
        store = {}
        original.save_own_variables(store)
        copied.load_own_variables(store)
        if hasattr(original, "save_assets"):
            with tempfile.TemporaryDirectory() as assets:
                original.save_assets(assets)
                copied.load_assets(assets)
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
    if not isinstance(model, MultiTaskModel):
        raise TypeError(
            "compile_multitask compiles an mtk.MultiTaskModel (from "
            f"mtk.build_multitask_model); got {type(model).__name__}."
        )
    heads = heads_of(model)
    if metrics is not None:
        check_head_dict("metrics", metrics, list(heads))
    if isinstance(optimizer, (str, dict)):
        check_learning_rate(learning_rate)
    # The optimizer's and metrics' variables belong to the strategy the model
    # was built under (the default strategy when there is none).
    with model.distribute_strategy.scope():
        if isinstance(optimizer, (str, dict)):
            optimizer = get_optimizer(optimizer, learning_rate)
        model.compile(
            optimizer=optimizer,
            loss_weights=loss_weights,
            metrics={
                name: head.get_metrics(extra=(metrics or {}).get(name, ()))
                for name, head in heads.items()
            },
            **compile_kwargs,
        )
