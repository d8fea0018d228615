"""Tests for mtk.distribute and training under tf.distribute strategies.

Strategies that need TensorFlow configured before it starts (two logical CPU
devices, a TF_CONFIG cluster of two processes on 127.0.0.1) and runs that
kill themselves run in subprocesses of tests/distribute_worker.py.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
import mtk.distribute
from conftest import IMAGE_SHAPE
from conftest import small_cnn
from mtk.distribute import KerasMultiWorkerMirroredStrategy

WORKER = os.path.join(os.path.dirname(__file__), "distribute_worker.py")
KILLED_EXIT_CODE = 17  # distribute_worker.KILLED_EXIT_CODE
FROZEN_EPOCHS, FINETUNE_EPOCHS = 2, 2  # distribute_worker's schedule
# Replicas and one device sum the same float32 gradients in another order.
WEIGHTS_ATOL = 1e-5


def tf_config(workers, index):
    return json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    )


@pytest.fixture
def no_accelerators(monkeypatch):
    """A machine without GPU, TPU or cluster, whatever runs the tests."""
    real = tf.config.list_physical_devices
    monkeypatch.setattr(
        tf.config,
        "list_physical_devices",
        lambda kind=None: [] if kind in ("GPU", "TPU") else real(kind),
    )
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("TF_CONFIG", raising=False)


@pytest.fixture
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


# === Strategy selection ===


def test_auto_on_cpu_is_one_device_and_says_so(no_accelerators, capsys):
    strategy = mtk.distribute.get_strategy()
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0
    assert "OneDeviceStrategy" in line and "1 replica" in line


def test_auto_resolution(no_accelerators, monkeypatch):
    resolve = mtk.distribute._resolve_kind
    assert resolve("auto") == "cpu"
    monkeypatch.setenv(
        "TF_CONFIG", tf_config(["127.0.0.1:1", "127.0.0.1:2"], 0)
    )
    assert resolve("auto") == "multi_worker"
    monkeypatch.setenv("TF_CONFIG", tf_config(["127.0.0.1:1"], 0))
    assert resolve("auto") == "cpu"  # a one-task cluster is one machine
    monkeypatch.setattr(
        tf.config,
        "list_physical_devices",
        lambda kind=None: ["a GPU"] if kind == "GPU" else [],
    )
    assert resolve("auto") == "gpu"
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert resolve("auto") == "tpu"
    assert resolve("cpu") == "cpu"


def test_unknown_kind():
    with pytest.raises(ValueError, match="kind='gpus'"):
        mtk.distribute.get_strategy("gpus")


@pytest.mark.parametrize("kind", ["gpu", "mirrored"])
def test_gpu_where_there_is_none(no_accelerators, kind):
    with pytest.raises(ValueError, match=f"kind='{kind}'.*no GPU"):
        mtk.distribute.get_strategy(kind)


def test_tpu_where_there_is_none(no_accelerators):
    with pytest.raises(ValueError, match="kind='tpu'.*no TPU"):
        mtk.distribute.get_strategy("tpu")


def test_devices_only_for_mirrored():
    with pytest.raises(ValueError, match="devices= is for"):
        mtk.distribute.get_strategy("cpu", devices=["/cpu:0"])


@pytest.mark.parametrize(
    "config, field",
    [
        ("{not json", "not valid JSON"),
        ('["worker"]', "JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', r'TF_CONFIG\["cluster"\]'),
        (
            '{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}',
            r"TF_CONFIG\[\"cluster\"\]\['worker'\]\[0\]",
        ),
        (
            '{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}',
            r"TF_CONFIG\[\"cluster\"\]\['ps'\]",
        ),
        ('{"cluster": {"worker": ["h:1"]}}', r'TF_CONFIG\["task"\]'),
        (
            '{"cluster": {"worker": ["h:1"]}, "task": {"type": "chief", "index": 0}}',
            r'TF_CONFIG\["task"\]\["type"\]',
        ),
        (
            '{"cluster": {"worker": ["h:1", "h:2"]}, "task": {"type": "worker", "index": 2}}',
            r'TF_CONFIG\["task"\]\["index"\]',
        ),
    ],
)
def test_malformed_tf_config_names_the_field(monkeypatch, config, field):
    monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(ValueError, match=field):
        mtk.distribute.get_strategy("auto")


def test_plain_multi_worker_strategy_is_refused_before_building():
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # Stands in for a TF_CONFIG cluster, which one process cannot join.
    strategy.extended._in_multi_worker_mode = lambda: True
    with pytest.raises(ValueError, match="keras-team/keras#20585"):
        mtk.build_multitask_model(
            "no-such-trunk", heads=[mtk.heads.Binary("flag")], strategy=strategy
        )


def test_keras_multi_worker_reduce_takes_what_keras_passes():
    strategy = KerasMultiWorkerMirroredStrategy()
    # What Keras' trainer passes: a nest, and scalars with axis=0.
    values = {"loss": tf.constant(2.0), "batch": tf.constant([1.0, 3.0])}
    reduced = strategy.reduce("MEAN", values, axis=0)
    assert float(reduced["loss"]) == 2.0
    assert float(reduced["batch"]) == 2.0  # axis 0 is still reduced
    texts = tf.constant(["raw", "text"])
    assert strategy.reduce("MEAN", (texts,), axis=None)[0] is texts
    # The parent strategy rejects the scalar (tensorflow#72388).
    with pytest.raises(Exception, match="dimension"):
        tf.distribute.MultiWorkerMirroredStrategy.reduce(
            strategy, "MEAN", values["loss"], axis=0
        )


# === Scope, precision, batch size ===


def test_build_and_fit_transfer_create_variables_in_scope():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    source = small_cnn()  # built outside the scope, like a user's network
    model = mtk.build_multitask_model(
        source,
        trunk_weights="pretrained",
        heads=[mtk.heads.Classification("item", 4), mtk.heads.Regression("price")],
        strategy=strategy,
    )
    assert model.distribute_strategy is strategy
    # The trunk is an in-scope copy that keeps the source's weights.
    np.testing.assert_array_equal(
        model.get_layer("trunk").get_layer("conv_a").kernel.numpy(),
        source.get_layer("conv_a").kernel.numpy(),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8,) + IMAGE_SHAPE).astype("float32")
    y = {"item": rng.integers(0, 4, 8), "price": rng.normal(size=8).astype("float32")}
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    mtk.fit_transfer(model, dataset, frozen_epochs=1, finetune_epochs=1, verbose=0)
    # Phase 2's optimizer was recompiled: its slots cover the trunk too.
    assert len(model.optimizer.variables) > 2 * len(model.trainable_weights)
    created_in_scope = strategy.extended.variable_created_in_scope
    assert all(created_in_scope(v.value) for v in model.weights)
    assert all(created_in_scope(v.value) for v in model.optimizer.variables)


def test_precision_policy_per_device(no_accelerators, monkeypatch, float32_policy):
    cpu = mtk.distribute.get_strategy("cpu", verbose=False)
    assert mtk.distribute.set_precision_policy(cpu) == "float32"
    assert mtk.distribute.set_precision_policy("auto") == "float32"
    gpu = tf.distribute.MirroredStrategy(["/cpu:0"])
    monkeypatch.setattr(
        gpu.extended, "_devices", ("/job:localhost/replica:0/task:0/device:GPU:0",)
    )
    assert mtk.distribute.set_precision_policy(gpu) == "mixed_float16"
    assert keras.mixed_precision.global_policy().name == "mixed_float16"
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert mtk.distribute.set_precision_policy("auto") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="strategy must be"):
        mtk.distribute.set_precision_policy("gpu")


def test_mixed_float16_keeps_float32_outputs_and_finite_loss(float32_policy):
    keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        small_cnn(),
        trunk_weights=None,
        heads=[mtk.heads.Classification("item", 4), mtk.heads.Binary("flag")],
    )
    assert model.get_layer("trunk").compute_dtype == "float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8,) + IMAGE_SHAPE).astype("float32")
    y = {"item": rng.integers(0, 4, 8), "flag": rng.integers(0, 2, 8).astype("float32")}
    y["item"][0] = -1  # a missing label
    outputs = model.predict(x, verbose=0)
    assert {name: str(v.dtype) for name, v in outputs.items()} == {
        "item": "float32",
        "flag": "float32",
    }
    history = mtk.fit_transfer(
        model, x, y=y, batch_size=4, frozen_epochs=1, finetune_epochs=1,
        finetune_learning_rate=1e-4, verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    # recompile kept loss scaling and applied the fine-tuning rate.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isclose(float(model.optimizer.learning_rate), 1e-4)


def test_global_batch_size():
    strategy = mtk.distribute.get_strategy("cpu", verbose=False)
    assert mtk.distribute.global_batch_size(32, strategy) == 32
    assert mtk.distribute.global_batch_size(5) == 5  # default strategy
    with pytest.raises(ValueError, match="per_replica_batch_size"):
        mtk.distribute.global_batch_size(0, strategy)


def test_backup_dir_per_worker(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert mtk.distribute.BackupAndRestore(str(tmp_path)).backup_dir == str(tmp_path)
    monkeypatch.setenv("TF_CONFIG", tf_config(["h:1", "h:2"], 1))
    callback = mtk.distribute.BackupAndRestore(str(tmp_path), save_freq=2)
    assert isinstance(callback, keras.callbacks.BackupAndRestore)
    assert callback.backup_dir == str(tmp_path / "worker_1")
    assert callback.save_freq == 2


class Interrupt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch:
            raise RuntimeError("interrupted")


def test_batch_backups_of_a_resumed_run_record_its_epoch(tmp_path):
    x, y = np.ones((8, 2), "float32"), np.ones((8, 1), "float32")
    metadata = tmp_path / "training_metadata.json"
    for _ in range(2):  # interrupted at epoch 2, resumed, interrupted again
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        backup = mtk.distribute.BackupAndRestore(str(tmp_path), save_freq=1)
        with pytest.raises(RuntimeError, match="interrupted"):
            model.fit(x, y, batch_size=4, epochs=4, verbose=0,
                      callbacks=[backup, Interrupt(2)])
        # Keras' own callback would record epoch 0 the second time.
        assert json.loads(metadata.read_text())["epoch"] == 2


# === Subprocess runs ===


def run_worker(args, tmp_path, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, WORKER, *args, "--out", str(tmp_path)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cluster(args, tmp_path, ports, first_args=()):
    """Runs two workers on 127.0.0.1; returns [(returncode, output)].

    ``first_args`` are extra arguments of worker 0.
    """
    workers = [f"127.0.0.1:{port}" for port in ports]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, *args, *(first_args if i == 0 else ()),
             "--out", str(tmp_path), "--name", f"w{i}"],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                 "TF_CONFIG": tf_config(workers, i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return [(proc.returncode, out) for proc, out in zip(procs, outputs)]


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def load_weights(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def assert_same_weights(a, b, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def assert_trained(path_prefix):
    init, final = load_weights(path_prefix + ".init.npz"), load_weights(path_prefix + ".npz")
    assert max(float(np.abs(a - b).max()) for a, b in zip(init, final)) > 1e-3


def epochs_begun(path_prefix):
    with open(path_prefix + ".epochs.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(tmp_path):
    result = run_worker(["mirrored", "--reference"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy" in result.stdout and "2 replica(s)" in result.stdout
    prefix = str(tmp_path / "run")
    assert_trained(prefix)
    assert_same_weights(
        load_weights(prefix + ".npz"), load_weights(prefix + ".single.npz"), WEIGHTS_ATOL
    )
    assert [e["trunk"] for e in epochs_begun(prefix)] == [False] * 2 + [True] * 2
    # Raw-string inputs (text trunks) train on two replicas too.
    with open(prefix + ".text.json") as f:
        assert np.isfinite(json.load(f)["loss"][0])


@pytest.mark.slow
def test_upstream_keras_still_fails_with_plain_multi_worker_strategy(tmp_path):
    """Why KerasMultiWorkerMirroredStrategy exists (keras-team/keras#20585).

    When this fails, Keras fit works under a plain
    MultiWorkerMirroredStrategy: mtk's subclass may then be retired.
    """
    for returncode, output in run_cluster(["upstream"], tmp_path, free_ports(2)):
        assert returncode == 0, output[-3000:]
    error = (tmp_path / "w0.error.txt").read_text()
    assert "Attempt to convert a value (PerReplica" in error


@pytest.mark.slow
@pytest.mark.parametrize("method", ["static", "upgrad"])
def test_two_workers_on_localhost_train_identical_weights(tmp_path, method):
    """Gradient-level methods too: UPGrad all-reduces the task Jacobian."""
    results = run_cluster(
        ["multi_worker", "--loss-weighting", method], tmp_path, free_ports(2),
        first_args=["--reference"],
    )
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    assert "2 workers, this is worker 0; 2 replica(s)" in results[0][1]
    w0, w1 = load_weights(tmp_path / "w0.npz"), load_weights(tmp_path / "w1.npz")
    assert_trained(str(tmp_path / "w0"))
    assert_same_weights(w0, w1, atol=0)  # all-reduce: bit-identical
    # Two workers on a global batch of 16 = one device on the same batches.
    assert_same_weights(w0, load_weights(tmp_path / "w0.single.npz"), WEIGHTS_ATOL)
    for name in ("w0", "w1"):
        assert [e["trunk"] for e in epochs_begun(str(tmp_path / name))] == (
            [False] * FROZEN_EPOCHS + [True] * FINETUNE_EPOCHS
        )


@pytest.mark.slow
def test_two_workers_train_a_combined_image_and_table_trunk(tmp_path):
    """Dict batches (image + raw table columns) over a 2-worker cluster;
    the FeatureSpace's lookup table lives on each worker."""
    results = run_cluster(["multi_worker", "--tabular"], tmp_path, free_ports(2),
                          first_args=["--reference"])
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    w0, w1 = load_weights(tmp_path / "w0.npz"), load_weights(tmp_path / "w1.npz")
    assert_trained(str(tmp_path / "w0"))
    assert_same_weights(w0, w1, atol=0)
    assert_same_weights(w0, load_weights(tmp_path / "w0.single.npz"), WEIGHTS_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill_epoch", [FROZEN_EPOCHS, FROZEN_EPOCHS + 1], ids=["phase2_first", "phase2_second"]
)
def test_killed_run_resumes_from_backup(tmp_path, kill_epoch):
    killed = run_worker(["backup", "--backup", "--kill-epoch", str(kill_epoch)], tmp_path)
    assert killed.returncode == KILLED_EXIT_CODE, killed.stderr[-3000:]
    prefix = str(tmp_path / "run")
    assert [e["epoch"] for e in epochs_begun(prefix)] == list(range(kill_epoch + 1))
    assert not os.path.exists(prefix + ".npz")

    resumed = run_worker(["backup", "--backup", "--reference"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Skipping variable loading" not in resumed.stderr
    begun = epochs_begun(prefix)[kill_epoch + 1 :]
    # Epochs finished before the kill are not redone; phase 2 resumes with
    # the trunk unfrozen.
    assert begun == [
        {"epoch": e, "trunk": True}
        for e in range(kill_epoch, FROZEN_EPOCHS + FINETUNE_EPOCHS)
    ]
    # Resuming gives what an uninterrupted run gives.
    assert_same_weights(
        load_weights(prefix + ".npz"), load_weights(prefix + ".single.npz"), WEIGHTS_ATOL
    )
    assert not os.path.exists(tmp_path / "backup")  # deleted when done


@pytest.mark.slow
def test_killed_cluster_resumes_from_backup(tmp_path):
    kill_epoch = FROZEN_EPOCHS + 1
    args = ["multi_worker", "--backup"]
    for returncode, output in run_cluster(
        args + ["--kill-epoch", str(kill_epoch)], tmp_path, free_ports(2)
    ):
        assert returncode == KILLED_EXIT_CODE, output[-3000:]
    # Each worker backs up to its own directory.
    assert sorted(os.listdir(tmp_path / "backup")) == ["worker_0", "worker_1"]

    # A restarted job may get other addresses; the backups are per task.
    results = run_cluster(args, tmp_path, free_ports(2), first_args=["--reference"])
    for returncode, output in results:
        assert returncode == 0, output[-3000:]
    for name in ("w0", "w1"):
        begun = epochs_begun(str(tmp_path / name))[kill_epoch + 1 :]
        assert begun == [
            {"epoch": e, "trunk": True}
            for e in range(kill_epoch, FROZEN_EPOCHS + FINETUNE_EPOCHS)
        ]
    w0, w1 = load_weights(tmp_path / "w0.npz"), load_weights(tmp_path / "w1.npz")
    assert_same_weights(w0, w1, atol=0)
    assert_same_weights(w0, load_weights(tmp_path / "w0.single.npz"), WEIGHTS_ATOL)


RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "distributed_training.py")


@pytest.mark.slow
def test_recipe_runs_on_one_machine(tmp_path):
    result = subprocess.run(
        [sys.executable, RECIPE, "--synthetic", "--train-examples", "128",
         "--test-examples", "64", "--per-replica-batch-size", "32",
         "--frozen-epochs", "1", "--finetune-epochs", "1",
         "--output-dir", str(tmp_path), "--verbose", "0"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["replicas"] == 1 and results["epochs_run"] == 2
    assert results["global_batch_size"] == 32
    assert (tmp_path / "model.keras").is_file()
