"""Dynamic loss weighting vs equal static weights on MultiFashion.

For each method (static, uncertainty, dwa, gradnorm, pcgrad) and seed, trains
the same small CNN from scratch with two heads (the classes of the left and
right item), then prints test accuracy per task (mean ± std over seeds), Δm
against static equal weights (the mean relative change of the task
accuracies, in %), and the median training step time as a ratio to static,
all measured in this one run.

    .venv/bin/python benchmarks/loss_weighting.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/loss_weighting.py --help
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "recipes"))

import common  # noqa: E402  (recipes/common.py)

import mtk  # noqa: E402

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
    return keras.Model(inputs, outputs, name="lenet")


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
    model = mtk.build_multitask_model(
        trunk(),
        heads=[mtk.heads.Classification(t, num_classes=10) for t in TASKS],
        freeze_trunk=False,
        loss_weighting=method,
    )
    timer = StepTimer()
    x, y = splits["train"]
    model.fit(
        x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
        callbacks=[timer],
    )
    logs = model.evaluate(*splits["test"], batch_size=512, verbose=0, return_dict=True)
    # The median step: robust to the other jobs that share these cores.
    return [logs[f"{t}_accuracy"] for t in TASKS], float(np.median(timer.times))


def main():
    args = parse_args()
    splits = common.load_multi_fashion(args.train_size, args.test_size, args.data_dir)
    results = {}
    # Methods interleave within each seed, so machine noise spreads evenly.
    for seed in range(args.seeds):
        for method in args.methods:
            accuracy, step = run(method, seed, splits, args)
            results.setdefault(method, []).append((accuracy, step))
            print(f"{method:12s} seed {seed}: accuracy {np.round(accuracy, 4).tolist()}, "
                  f"{step * 1000:.1f} ms/step", flush=True)

    static_acc = np.mean([a for a, _ in results["static"]], axis=0)
    static_step = np.mean([s for _, s in results["static"]])
    print(f"\nMultiFashion {args.train_size} train / {args.test_size} test, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.seeds} seeds; "
          "Δm and step time relative to static")
    print("| method | left acc | right acc | Δm vs static | step time / static |")
    print("|---|---|---|---|---|")
    for method, runs in results.items():
        acc = np.array([a for a, _ in runs])
        delta = 100 * np.mean((acc - static_acc) / static_acc, axis=1)
        step = np.mean([s for _, s in runs]) / static_step
        cells = [f"{acc[:, i].mean():.4f} ± {acc[:, i].std():.4f}" for i in range(2)]
        print(f"| {method} | {cells[0]} | {cells[1]} | "
              f"{delta.mean():+.2f}% ± {delta.std():.2f} | {step:.2f}× |")


if __name__ == "__main__":
    main()
