"""Training throughput: 1 worker vs 2 workers on this machine.

Trains the same multi-task model (small CNN trunk, unfrozen, two heads) with
`mtk.distribute.get_strategy("multi_worker")` as

  (1) one worker process (TF_CONFIG: a one-task cluster), and
  (2) two worker processes on 127.0.0.1 (TF_CONFIG per process),

at the same per-replica batch size (so (2) processes twice the examples per
step, the usual data-parallel setting), and prints examples/second after
warm-up steps and the ratio (2)/(1). A ratio near 2 means the second worker
doubles throughput; on one machine both workers share its cores, so expect
much less there: the run shows the all-reduce and process overhead, not a
cluster's speed-up. Data are random images held in memory (throughput only).

    python benchmarks/multiworker_throughput.py            # ~2-3 minutes on 2 cores
    python benchmarks/multiworker_throughput.py --steps 100 --per-replica-batch-size 128
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps")
    parser.add_argument("--per-replica-batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    # Internal: run as one worker of a cluster and write its timing.
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.per_replica_batch_size < 1:
        parser.error(
            "--steps, --warmup and --per-replica-batch-size must be >= 1"
        )
    return args


def run_worker(args):
    """One worker: train warmup + steps batches, time the last ``steps``."""
    import mtk.distribute

    strategy = mtk.distribute.get_strategy("multi_worker", verbose=False)

    import keras
    import numpy as np
    import tensorflow as tf

    import mtk

    batch = mtk.distribute.global_batch_size(
        args.per_replica_batch_size, strategy
    )
    steps = args.warmup + args.steps
    shape = (args.image_size, args.image_size, 3)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch,) + shape).astype("float32")
    y = {
        "item": rng.integers(0, 10, batch),
        "flag": rng.integers(0, 2, batch).astype("float32"),
    }
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch)
        .cache()
        .repeat()
        .take(steps)
        .with_options(options)
    )

    inputs = keras.Input(shape)
    h = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64, 128):
        h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(
            h
        )
        h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    trunk = keras.Model(inputs, h, name="cnn")
    model = mtk.build_multitask_model(
        trunk,
        trunk_weights=None,
        freeze_trunk=False,
        heads=[mtk.heads.Classification("item", 10), mtk.heads.Binary("flag")],
        strategy=strategy,
    )

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch_index, logs=None):
            if batch_index == args.warmup:
                self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    timer = Timer()
    model.fit(dataset, epochs=1, callbacks=[timer], verbose=0)
    with open(args.worker_out, "w") as f:
        json.dump({"seconds": timer.seconds, "global_batch": batch}, f)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_cluster(args, workers, out_dir):
    """Starts ``workers`` processes on 127.0.0.1; returns worker 0's timing."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = []
    for index in range(workers):
        tf_config = {
            "cluster": {"worker": addresses},
            "task": {"type": "worker", "index": index},
        }
        out = os.path.join(out_dir, f"{workers}_{index}.json")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker-out",
                    out,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--per-replica-batch-size",
                    str(args.per_replica_batch_size),
                    "--image-size",
                    str(args.image_size),
                ],
                env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, stderr = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a worker failed:\n{stderr[-3000:]}")
    with open(os.path.join(out_dir, f"{workers}_0.json")) as f:
        return json.load(f)


def main():
    args = parse_args()
    if args.worker_out:
        run_worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as out_dir:
        for workers in (1, 2):
            timing = run_cluster(args, workers, out_dir)
            examples = timing["global_batch"] * args.steps
            rows.append(
                (workers, timing["global_batch"], examples / timing["seconds"])
            )
    base = rows[0][2]
    print(
        f"{args.steps} timed steps after {args.warmup} warm-up, "
        f"{args.per_replica_batch_size} examples per replica per step, "
        f"{os.cpu_count()} CPU cores\n"
    )
    from mtk.evaluation import format_table  # Here: workers import mtk themselves.

    print(format_table([
        {"workers": w, "global batch": b, "examples/s": f"{eps:.1f}",
         "vs 1 worker": f"{eps / base:.2f}x"}
        for w, b, eps in rows
    ]))


if __name__ == "__main__":
    main()
