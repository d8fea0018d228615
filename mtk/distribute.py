"""Scaling out with `tf.distribute`: strategy, precision, batch size, backup.

One call picks the strategy for the hardware at hand:

| `get_strategy(kind)`     | strategy                                  |
|--------------------------|-------------------------------------------|
| ``"cpu"``                | `tf.distribute.OneDeviceStrategy` on CPU  |
| ``"gpu"``/``"mirrored"`` | `MirroredStrategy` (see below)            |
| ``"tpu"``                | `tf.distribute.TPUStrategy`               |
| ``"multi_worker"``       | `MultiWorkerMirroredStrategy` (see below) |
| ``"auto"``               | TPU if reachable, else multi-worker if    |
|                          | ``TF_CONFIG`` lists >1 task, else GPUs if |
|                          | present, else CPU                         |

An explicit ``"gpu"`` or ``"tpu"`` where there is none raises (no silent
fallback: a job meant for accelerators should not quietly crawl on a CPU);
``"auto"`` is the kind that falls back.

Build and compile inside the strategy's scope: pass ``strategy=`` to
`mtk.build_multitask_model`, which does it for you; `mtk.compile_multitask`,
`mtk.recompile` and `mtk.fit_transfer` re-enter the scope the model was built
in (``model.distribute_strategy``).

**Batch size.** A batch that `model.fit` reads under a strategy is the
*global* batch: each step splits it over ``strategy.num_replicas_in_sync``
replicas. Batch your `tf.data` pipeline with
``global_batch_size(per_replica_batch_size, strategy)`` so each replica sees
the batch size (and memory) you tuned on one device; scale the learning rate
with the global batch if you change it.

**Multi-worker training with Keras 3.** Keras 3.15 `model.fit` under
`tf.distribute.MultiWorkerMirroredStrategy` fails (keras-team/keras#20585,
"Attempt to convert a value (PerReplica...)"), even for a one-layer model.
The cause is two calls of `tf.distribute.Strategy.reduce` in Keras' TensorFlow
trainer (``keras/src/backend/tensorflow/trainer.py``) that only
`MirroredStrategy` happens to accept:

1. ``_maybe_symbolic_build`` reduces a whole *nested* batch
   (``(inputs, labels)``) in one call; ``Strategy.reduce`` does not support
   nests (TensorFlow's own TODO in ``Strategy.reduce``), and the collective
   implementation tries to turn the tuple of `PerReplica` values into one
   tensor.
2. ``reduce_per_replica`` averages the step's logs with
   ``strategy.reduce("MEAN", value, axis=0)``; the logs are scalars, and
   reducing a scalar along axis 0 is an error
   ("Invalid reduction dimension 0 for input with 0 dimensions",
   tensorflow/tensorflow#72388).

The first call also breaks `MirroredStrategy` with two or more replicas when
the model takes strings (mtk's text trunks): averaging raw text over
replicas is not defined.

`get_strategy("multi_worker")` therefore returns
`KerasMultiWorkerMirroredStrategy`, and ``"gpu"``/``"mirrored"``
`KerasMirroredStrategy`: the TensorFlow strategies with a ``reduce`` that
also accepts what Keras passes (a nest is reduced leaf by leaf, a scalar with
an ``axis`` across replicas, and strings are returned as the first replica
holds them, since Keras only needs the batch's shapes). Everything else (the
collective all-reduce of gradients, dataset distribution, variable
mirroring) is TensorFlow's unchanged engine, and users keep calling
`model.fit` / `mtk.fit_transfer`. A plain
`tf.distribute.MultiWorkerMirroredStrategy` passed to
`mtk.build_multitask_model` is refused with a pointer here.

**Fault tolerance.** `keras.callbacks.BackupAndRestore` backs up weights and
the epoch at each epoch end (or every ``save_freq`` batches) and a restarted
`model.fit` resumes from there. Keras 3's callback writes the same files from
every worker; `mtk.distribute.BackupAndRestore` gives each worker its own
sub-directory (workers hold identical weights, so each restores its own
copy, and no shared file system is needed). `mtk.fit_transfer` resumes in
the right phase: a run killed during fine-tuning restarts fine-tuning with
the unfrozen trunk.
"""

import json
import logging
import os

import keras
import tensorflow as tf

KINDS = ("auto", "cpu", "gpu", "mirrored", "tpu", "multi_worker")

# Jobs of a MultiWorkerMirroredStrategy cluster that hold replicas.
_TRAINING_JOBS = ("chief", "worker")

_logger = logging.getLogger(__name__)


class _KerasReduceMixin:
    """``reduce`` that also takes what Keras 3's TensorFlow trainer passes.

    Values TensorFlow accepts are reduced exactly as TensorFlow does. In
    addition (see the module docstring):

    - a nest is reduced leaf by leaf;
    - a scalar with an ``axis`` is reduced across replicas (it has no axis);
    - a value that cannot be summed (strings, e.g. the raw text a text trunk
      takes) is returned as the first local replica holds it: Keras reduces
      a batch only to learn its shapes and dtypes before the first step.
    """

    def reduce(self, reduce_op, value, axis=None):
        def reduce_one(leaf):
            local = tf.convert_to_tensor(self.experimental_local_results(leaf)[0])
            if not (local.dtype.is_floating or local.dtype.is_integer):
                return local
            leaf_axis = None if local.shape.rank == 0 else axis
            return super(_KerasReduceMixin, self).reduce(
                reduce_op, leaf, axis=leaf_axis
            )

        return tf.nest.map_structure(reduce_one, value)


class KerasMultiWorkerMirroredStrategy(
    _KerasReduceMixin, tf.distribute.MultiWorkerMirroredStrategy
):
    """`tf.distribute.MultiWorkerMirroredStrategy` that Keras 3 can fit with.

    Identical to its parent except that ``reduce`` also takes the values
    Keras 3's trainer passes it (see the module docstring). Create it with
    `get_strategy` (``"multi_worker"`` or ``"auto"``) at program start-up:
    collective ops must be configured before TensorFlow runs anything else.
    """


class KerasMirroredStrategy(_KerasReduceMixin, tf.distribute.MirroredStrategy):
    """`tf.distribute.MirroredStrategy` that Keras 3 can fit text models with.

    With two or more replicas, Keras 3 `model.fit` averages a first batch
    over replicas to build the model, which fails for string inputs; this
    strategy's ``reduce`` returns strings as they are (see the module
    docstring). Otherwise identical to its parent.
    """


def read_tf_config(environ=None):
    """Reads and checks ``TF_CONFIG``, the cluster description of a job.

    Args:
        environ: the environment mapping to read (default `os.environ`).

    Returns:
        The parsed dict (``{"cluster": {...}, "task": {...}}``), or None
        when ``TF_CONFIG`` is unset or empty.

    Raises:
        ValueError: naming the field at fault, e.g.
            ``TF_CONFIG["task"]["index"]``.

    Example:

    >>> config = mtk.distribute.read_tf_config({"TF_CONFIG": '{'
    ...     '"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},'
    ...     '"task": {"type": "worker", "index": 1}}'})
    >>> config["task"]
    {'type': 'worker', 'index': 1}
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}.") from None
    if not isinstance(config, dict):
        raise ValueError(
            "TF_CONFIG must be a JSON object with 'cluster' and 'task' "
            f"fields, got {type(config).__name__}."
        )
    cluster = config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            'TF_CONFIG["cluster"] must map job names ("chief", "worker") to '
            f"lists of 'host:port' addresses, got {cluster!r}."
        )
    for job, addresses in cluster.items():
        field = f"TF_CONFIG[\"cluster\"][{job!r}]"
        if job not in _TRAINING_JOBS:
            raise ValueError(
                f"{field}: mtk runs MultiWorkerMirroredStrategy, whose "
                f"clusters have jobs {_TRAINING_JOBS}; got job {job!r}."
            )
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(
                f"{field} must be a non-empty list of 'host:port' strings, "
                f"got {addresses!r}."
            )
        for index, address in enumerate(addresses):
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit():
                raise ValueError(
                    f"{field}[{index}] must be a 'host:port' string, got "
                    f"{address!r}."
                )
    if len(cluster.get("chief", ())) > 1:
        raise ValueError(
            'TF_CONFIG["cluster"]["chief"] lists '
            f"{len(cluster['chief'])} addresses; a cluster has one chief."
        )
    task = config.get("task")
    if not isinstance(task, dict):
        raise ValueError(
            'TF_CONFIG["task"] must be an object like {"type": "worker", '
            f'"index": 0}}, got {task!r}.'
        )
    task_type = task.get("type")
    if task_type not in cluster:
        raise ValueError(
            f'TF_CONFIG["task"]["type"] is {task_type!r}, which is not a job '
            f"of the cluster ({sorted(cluster)})."
        )
    index = task.get("index")
    count = len(cluster[task_type])
    if isinstance(index, bool) or not isinstance(index, int) or not (
        0 <= index < count
    ):
        raise ValueError(
            f'TF_CONFIG["task"]["index"] must be an integer in [0, {count}) '
            f"for job {task_type!r}, got {index!r}."
        )
    return config


def num_workers(environ=None):
    """The number of training tasks (chief + workers) ``TF_CONFIG`` lists.

    1 when ``TF_CONFIG`` is unset.
    """
    config = read_tf_config(environ)
    if config is None:
        return 1
    return sum(len(config["cluster"].get(job, ())) for job in _TRAINING_JOBS)


def _tpu_name():
    """The TPU to connect to, or None when none is reachable.

    Only cheap local checks (``TPU_NAME``, TPU devices of this host): asking
    a cloud metadata server would stall machines without one.
    """
    if os.environ.get("TPU_NAME"):
        return os.environ["TPU_NAME"]
    if tf.config.list_physical_devices("TPU"):
        return "local"
    return None


def _connect_tpu(name):
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _resolve_kind(kind):
    """The concrete kind ``"auto"`` stands for on this machine / cluster."""
    if kind != "auto":
        return kind
    if _tpu_name() is not None:
        return "tpu"
    if num_workers() > 1:
        return "multi_worker"
    if tf.config.list_physical_devices("GPU"):
        return "gpu"
    return "cpu"


def get_strategy(kind="auto", *, devices=None, verbose=True):
    """Creates the `tf.distribute` strategy for this machine or cluster.

    Call it first thing in the program (multi-worker and TPU strategies must
    be set up before TensorFlow runs other ops), then build the model with
    ``mtk.build_multitask_model(..., strategy=strategy)``.

    Args:
        kind: ``"auto"`` (TPU when reachable, else MultiWorkerMirrored when
            ``TF_CONFIG`` lists more than one task, else Mirrored over the
            GPUs when there are any, else one CPU device), or one of
            ``"cpu"``, ``"gpu"`` (= ``"mirrored"``), ``"tpu"``,
            ``"multi_worker"``. The TPU is ``TPU_NAME`` or this host's.
            ``"multi_worker"`` without ``TF_CONFIG`` runs a one-worker
            cluster.
        devices: for ``"gpu"``/``"mirrored"``, the devices to mirror over
            (default: all GPUs), e.g. ``["/cpu:0", "/cpu:1"]`` for logical
            CPU devices.
        verbose: print the one-line summary (it is always logged at INFO
            level on the ``mtk.distribute`` logger).

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: for an unknown ``kind``, ``devices`` with another kind,
            a malformed ``TF_CONFIG`` (naming the field), or ``"gpu"`` /
            ``"tpu"`` where there is none.

    Example:

    >>> strategy = mtk.distribute.get_strategy("cpu")
    mtk.distribute: OneDeviceStrategy on CPU; 1 replica(s) in sync.
    >>> model = mtk.build_multitask_model(
    ...     "mobilenet_v3_small", input_shape=(32, 32, 3), trunk_weights=None,
    ...     heads=[mtk.heads.Binary("flag")], strategy=strategy)
    >>> model.distribute_strategy is strategy
    True
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown strategy kind={kind!r}; expected one of {KINDS}.")
    if devices is not None and kind not in ("gpu", "mirrored"):
        raise ValueError(
            f"devices= is for kind='gpu'/'mirrored', not kind={kind!r}."
        )
    tf_config = read_tf_config()
    kind = _resolve_kind(kind)

    if kind == "cpu":
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        where = "CPU"
    elif kind in ("gpu", "mirrored"):
        if devices is None and not tf.config.list_physical_devices("GPU"):
            raise ValueError(
                f"kind={kind!r} but TensorFlow sees no GPU; use kind='auto' "
                "or 'cpu', or pass devices= (e.g. logical CPU devices)."
            )
        strategy = KerasMirroredStrategy(devices)
        where = ", ".join(strategy.extended.worker_devices)
    elif kind == "tpu":
        name = _tpu_name()
        if name is None:
            raise ValueError(
                "kind='tpu' but no TPU is reachable: TPU_NAME is unset and "
                "this host has no TPU devices. Use kind='auto' to fall back."
            )
        strategy = _connect_tpu(name)
        where = f"TPU {name!r}"
    else:
        strategy = KerasMultiWorkerMirroredStrategy()
        if tf_config is None:
            where = "1 worker (no TF_CONFIG)"
        else:
            task = tf_config["task"]
            where = (
                f"{num_workers()} workers, this is {task['type']} "
                f"{task['index']}"
            )
    line = (
        f"mtk.distribute: {type(strategy).__name__} on {where}; "
        f"{strategy.num_replicas_in_sync} replica(s) in sync."
    )
    _logger.info(line)
    if verbose:
        print(line)
    return strategy


def check_strategy(strategy):
    """Raises if ``strategy`` cannot train Keras 3 models.

    A plain `tf.distribute.MultiWorkerMirroredStrategy` in multi-worker mode
    fails in `model.fit` (keras-team/keras#20585); use
    `get_strategy` ("multi_worker"), which returns
    `KerasMultiWorkerMirroredStrategy`.

    Args:
        strategy: a `tf.distribute.Strategy`.
    """
    if not isinstance(strategy, tf.distribute.Strategy):
        raise TypeError(
            "strategy must be a tf.distribute.Strategy (see "
            f"mtk.distribute.get_strategy), got {strategy!r}."
        )
    if (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and not isinstance(strategy, KerasMultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    ):
        raise ValueError(
            "strategy is a plain tf.distribute.MultiWorkerMirroredStrategy, "
            "which Keras 3 model.fit cannot train with (keras-team/keras"
            "#20585); create it with mtk.distribute.get_strategy("
            "'multi_worker')."
        )


def _device_kind(strategy):
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU"
    devices = strategy.extended.worker_devices
    if any("GPU" in device.upper() for device in devices):
        return "GPU"
    return "CPU"


PRECISION_POLICIES = {
    "GPU": "mixed_float16",
    "TPU": "mixed_bfloat16",
    "CPU": "float32",
}


def set_precision_policy(strategy="auto"):
    """Sets Keras' global dtype policy for the hardware the model trains on.

    mixed_float16 on GPUs, mixed_bfloat16 on TPUs, float32 on CPUs. Call it
    before building the model. mtk heads compute their outputs in float32
    whatever the policy, so losses stay numerically stable; under
    mixed_float16 `keras.Model.compile` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer`.

    Args:
        strategy: a `tf.distribute.Strategy` (its devices decide), or
            ``"auto"``: a reachable TPU, else a visible GPU, else CPU.

    Returns:
        The policy name that was set.

    Example:

    >>> mtk.distribute.set_precision_policy(
    ...     mtk.distribute.get_strategy("cpu", verbose=False))
    'float32'
    """
    if isinstance(strategy, str):
        if strategy != "auto":
            raise ValueError(
                "strategy must be a tf.distribute.Strategy or 'auto', got "
                f"{strategy!r}."
            )
        if _tpu_name() is not None:
            device = "TPU"
        elif tf.config.list_physical_devices("GPU"):
            device = "GPU"
        else:
            device = "CPU"
    else:
        check_strategy(strategy)
        device = _device_kind(strategy)
    policy = PRECISION_POLICIES[device]
    keras.mixed_precision.set_global_policy(policy)
    return policy


def global_batch_size(per_replica_batch_size, strategy=None):
    """The batch size to give the input pipeline: per replica × replicas.

    Args:
        per_replica_batch_size: examples each replica processes per step.
        strategy: a `tf.distribute.Strategy` (default: the current one).

    Returns:
        ``per_replica_batch_size * strategy.num_replicas_in_sync``.

    Example:

    >>> mtk.distribute.global_batch_size(
    ...     32, mtk.distribute.get_strategy("cpu", verbose=False))
    32
    """
    if (
        isinstance(per_replica_batch_size, bool)
        or not isinstance(per_replica_batch_size, int)
        or per_replica_batch_size < 1
    ):
        raise ValueError(
            "per_replica_batch_size must be a positive integer, got "
            f"{per_replica_batch_size!r}."
        )
    strategy = strategy or tf.distribute.get_strategy()
    return per_replica_batch_size * strategy.num_replicas_in_sync


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore`, safe on every worker of a cluster.

    On one machine it backs up to ``backup_dir``. In a cluster
    (``TF_CONFIG``) each task backs up to ``backup_dir/<job>_<index>``, so
    workers never write the same file; their weights are identical, so each
    restores from its own copy and no shared file system is needed.

    It also records the right epoch in batch-level backups (``save_freq``
    an int) of a resumed run: Keras 3.15's callback only learns the epoch at
    an epoch's end, so such a backup made before the first epoch of a
    resumed run ends says epoch 0, and the next restart would start over.

    Args:
        backup_dir: directory for the backups; keep it across restarts.
        **kwargs: other `keras.callbacks.BackupAndRestore` arguments
            (``save_freq``, ``double_checkpoint``, ``delete_checkpoint``).

    Example:

    >>> import tempfile
    >>> callback = mtk.distribute.BackupAndRestore(
    ...     tempfile.mkdtemp(), save_freq=100)
    >>> callback.save_freq
    100
    """

    def __init__(self, backup_dir, **kwargs):
        config = read_tf_config()
        if config is not None and num_workers() > 1:
            task = config["task"]
            backup_dir = os.path.join(backup_dir, f"{task['type']}_{task['index']}")
        super().__init__(backup_dir, **kwargs)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch
