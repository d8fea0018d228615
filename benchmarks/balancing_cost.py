"""What each balancing method costs per training step, for K = 2, 4 and 8 tasks.

One LeNet-style trunk on 36x36 images with K 10-way heads, batch 128. Each
method trains for ``--steps`` timed steps after a warm-up epoch, in
``--rounds`` rounds with every method once per round (interleaved, so noise
from other jobs spreads evenly); the table gives the median step time as a
ratio to static weights within each round (mean ± std over rounds), and to a
hand-written Keras model of the same graph (plain ``keras.Model``, Keras' own
``train_step``, the same masked losses), which is what mtk's one training
step costs over plain Keras. The "floor" row is that model's step plus one
backward pass per task through the activations only (`FloorModel`): a lower
bound for any exact full-parameter gradient-level method. ``--memory`` also measures each method's peak
resident memory at K = 8, each in a fresh process.

    .venv/bin/python benchmarks/balancing_cost.py                  # ~15 min on 2 cores
    .venv/bin/python benchmarks/balancing_cost.py --tasks 2 --methods static uncertainty dwa
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
from mtk.evaluation import StepTimer  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402

KERAS = "keras (hand-written)"
# What any exact per-task gradient costs at least (see FloorModel).
FLOOR = "floor: K activation backward passes"
REP_GRAD = ("pcgrad", "mgda", "upgrad")  # also timed with rep_grad=True


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tasks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--methods", nargs="+", default=list(mtk.weighting.METHODS),
                        choices=mtk.weighting.METHODS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: memory probe
    return parser.parse_args()


def task_names(k):
    return [f"task{i}" for i in range(k)]


def task_outputs(features, k):
    """K 10-way heads on ``features``, as mtk builds them."""
    return {t: keras.layers.Dense(10, activation="softmax", dtype="float32", name=t)(features)
            for t in task_names(k)}


def hand_written_model(k):
    """The same graph as mtk's, as a plain Keras user would write it."""
    network = mtk.data.lenet()
    inputs = keras.Input((36, 36, 1))
    model = keras.Model(inputs, task_outputs(network(inputs), k))
    model.compile(
        optimizer="adam",
        loss={t: mtk.losses.MaskedLoss("sparse_categorical_crossentropy", "class_id")
              for t in task_names(k)},
        metrics={t: [mtk.losses.MaskedMetric(
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"), "class_id")]
            for t in task_names(k)},
    )
    return model


class FloorModel(keras.Model):
    """The hand-written model's graph and update, plus one backward pass per
    task through every layer's activations, down to the first convolution's
    output, and none through the weights. Its losses are plain (no masks,
    no metrics), so if anything it understates the floor.

    An exact per-task gradient (full-parameter MGDA, PCGrad, ...) cannot
    skip those K passes, whatever it does with the weights' gradients (a
    Gramian trick included), so this step's time is a lower bound on any
    full-parameter gradient-level method's step on this trunk.
    """

    def train_step(self, data):
        x, y = data
        names = task_names(len(y))
        with tf.GradientTape(persistent=True) as tape:
            outputs = self(x, training=True)
            losses = [keras.losses.sparse_categorical_crossentropy(y[t], outputs[t])
                      for t in names]
            losses = [tf.reduce_mean(loss) for loss in losses]
            total = tf.add_n(losses)
        rows = [tape.gradient(loss, outputs["first_activation"]) for loss in losses]
        gradients = tape.gradient(total, self.trainable_variables)
        del tape
        self.optimizer.apply(gradients, self.trainable_variables)
        # Returned, so that graph optimisation cannot prune the K passes.
        return {"rows": tf.add_n([tf.reduce_sum(r) for r in rows])}


def floor_model(k):
    """`FloorModel` on the same layers as `hand_written_model`."""
    network = mtk.data.lenet()
    inputs = keras.Input((36, 36, 1))
    x, first = inputs, None
    for layer in network.layers[1:]:
        x = layer(x)
        if first is None and isinstance(layer, keras.layers.Conv2D):
            first = x
    model = FloorModel(inputs, {"first_activation": first, **task_outputs(x, k)})
    model.compile(optimizer="adam")
    return model


def build(label, k):
    keras.utils.set_random_seed(0)
    if label == KERAS:
        return hand_written_model(k)
    if label == FLOOR:
        return floor_model(k)
    method, _, variant = label.partition(" ")
    weighting = mtk.weighting.get_loss_weighting(method)
    if variant:
        weighting = type(weighting)(rep_grad=True)
    return mtk.build_multitask_model(
        mtk.data.lenet(), heads=[mtk.heads.Classification(t, 10) for t in task_names(k)],
        freeze_trunk=False, loss_weighting=weighting)


def data(k, batch_size, steps):
    rng = np.random.default_rng(0)
    n = batch_size * steps
    x = rng.uniform(0, 255, (n, 36, 36, 1)).astype("float32")
    y = {t: rng.integers(0, 10, n) for t in task_names(k)}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()


def step_seconds(label, k, args):
    model = build(label, k)
    timer = StepTimer()
    model.fit(data(k, args.batch_size, args.steps), epochs=2, verbose=0, callbacks=[timer])
    return timer.median()


def labels_for(args):
    labels = [KERAS] + list(args.methods) + [FLOOR]
    labels += [f"{m} (rep_grad)" for m in REP_GRAD if m in args.methods]
    return labels


def peak_memory_mb(label, k, args):
    """Peak resident memory of a fresh process that trains ``label``."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps([label, k]),
         "--steps", str(args.steps), "--batch-size", str(args.batch_size)],
        capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    if args.one:
        label, k = json.loads(args.one)
        step_seconds(label, k, args)
        # VmHWM: this process's peak resident memory. (getrusage's
        # ru_maxrss is not reset by exec: it reports the parent's peak.)
        with open("/proc/self/status") as f:
            peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(peak_kb / 1024)
        return
    labels = labels_for(args)
    for k in args.tasks:
        times = {label: [] for label in labels}
        if args.rounds == 0:  # memory only
            times = {label: [float("nan")] for label in labels}
        for round_ in range(args.rounds):
            for label in labels:
                times[label].append(step_seconds(label, k, args))
                print(f"K={k} round {round_} {label}: {times[label][-1] * 1000:.1f} ms/step",
                      flush=True)
        memory = {}
        if args.memory and k == max(args.tasks):
            memory = {label: peak_memory_mb(label, k, args) for label in labels}
        rows = []
        for label in labels:
            ratio = np.divide(times[label], times["static"])
            to_keras = np.divide(times[label], times[KERAS])
            row = {"method": label,
                   "ms / step": f"{1000 * np.median(times[label]):.1f}",
                   "step / static": f"{ratio.mean():.2f} ± {ratio.std():.2f}×",
                   "step / keras": f"{to_keras.mean():.3f} ± {to_keras.std():.3f}×"}
            if memory:
                row["peak RSS (MB)"] = f"{memory[label]:.0f}"
                row["RSS / static"] = f"{memory[label] / memory['static']:.2f}×"
            rows.append(row)
        print()
        print(format_table(rows, title=(
            f"K = {k} tasks, LeNet trunk, batch {args.batch_size}, median of {args.steps} "
            f"steps, {args.rounds} rounds; ratios paired per round")), flush=True)


if __name__ == "__main__":
    main()
