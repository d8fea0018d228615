"""Balancing methods vs equal static weights on MultiFashion, and their cost.

For each seed, trains the same small CNN from scratch with two heads (the
classes of the left and right item) once per method, plus once as a
hand-written Keras model of the same graph (plain ``keras.Model``, Keras' own
``train_step``, the same masked losses): the reference for what mtk's one
training step costs. Prints test accuracy per task (mean ± std over seeds),
Δm against static equal weights, and the median training step time as a
ratio to static and to the hand-written model, each ratio taken within a
seed (paired) and then averaged over seeds.

    .venv/bin/python benchmarks/loss_weighting.py            # ~12 min on 2 cores
    .venv/bin/python benchmarks/loss_weighting.py --help
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import mtk  # noqa: E402
from mtk.evaluation import delta_m  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402

KERAS = "keras (hand-written)"
METHODS = ("static", "uncertainty", "dwa", "gradnorm", "pcgrad")
TASKS = ("left", "right")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", default="runs/tfds")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    return parser.parse_args()


def trunk():
    """A LeNet-style CNN, as the MultiMNIST / MultiFashion papers use."""
    inputs = keras.Input((36, 36, 1))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(16, 5, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 5, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, outputs, name="trunk")


def hand_written_model():
    """The same graph as mtk's, as a plain Keras user would write it."""
    network = trunk()
    inputs = keras.Input((36, 36, 1))
    features = network(inputs)
    outputs = {
        task: keras.layers.Dense(10, activation="softmax", dtype="float32", name=task)(features)
        for task in TASKS
    }
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={t: mtk.losses.MaskedLoss("sparse_categorical_crossentropy", "class_id")
              for t in TASKS},
        metrics={t: [mtk.losses.MaskedMetric(keras.metrics.SparseCategoricalAccuracy(
            name="accuracy"), "class_id")] for t in TASKS},
    )
    return model


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step after the first (tracing) epoch."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch > 0:
            self.times.append(time.perf_counter() - self.start)


def run(method, seed, splits, args):
    keras.utils.set_random_seed(seed)
    if method == KERAS:
        model = hand_written_model()
    else:
        model = mtk.build_multitask_model(
            trunk(),
            heads=[mtk.heads.Classification(t, num_classes=10) for t in TASKS],
            freeze_trunk=False,
            loss_weighting=method,
        )
    timer = StepTimer()
    x, y = splits["train"]
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
              callbacks=[timer])
    logs = model.evaluate(*splits["test"], batch_size=512, verbose=0, return_dict=True)
    # The median step: robust to the other jobs that share these cores.
    return {t: logs[f"{t}_accuracy"] for t in TASKS}, float(np.median(timer.times))


def mean_std(values, fmt):
    return f"{np.mean(values):{fmt}} ± {np.std(values):{fmt.lstrip('+')}}"


def main():
    args = parse_args()
    splits = mtk.data.load_multi_fashion(args.train_size, args.test_size, args.data_dir)
    methods = [KERAS] + [m for m in args.methods if m != "static"]
    methods.insert(1, "static")
    accuracy = {m: [] for m in methods}
    steps = {m: [] for m in methods}
    # Methods interleave within each seed, so machine noise spreads evenly.
    for seed in range(args.seeds):
        for method in methods:
            acc, step = run(method, seed, splits, args)
            accuracy[method].append(acc)
            steps[method].append(step)
            print(f"{method:22s} seed {seed}: accuracy "
                  f"{[round(acc[t], 4) for t in TASKS]}, {step * 1000:.1f} ms/step",
                  flush=True)

    rows = []
    for method in methods:
        deltas = [delta_m(acc, base, higher_is_better=True)
                  for acc, base in zip(accuracy[method], accuracy["static"])]
        rows.append({
            "method": method,
            **{f"{t} acc": mean_std([a[t] for a in accuracy[method]], ".4f") for t in TASKS},
            "Δm vs static (%)": mean_std(deltas, "+.2f"),
            "step / static": mean_std(
                np.divide(steps[method], steps["static"]), ".3f") + "×",
            "step / keras": mean_std(
                np.divide(steps[method], steps[KERAS]), ".3f") + "×",
        })
    print()
    print(format_table(rows, title=(
        f"MultiFashion {args.train_size} train / {args.test_size} test, {args.epochs} "
        f"epochs, batch {args.batch_size}, {args.seeds} seeds; ratios paired per seed")))


if __name__ == "__main__":
    main()
