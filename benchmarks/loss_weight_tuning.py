"""Equal loss weights vs weights tuned by mtk.tuning, on held-out test images.

Tasks derived from Fashion-MNIST (local files, no network), on one small CNN
trained from scratch with its trunk shared by all heads:

  item         which of the 10 classes          Classification (accuracy)
  is_footwear  sandal, sneaker or ankle boot    Binary (accuracy)
  coverage     share of the 28x28 canvas the    Regression (mae): values in
               item covers (pixels > 25)        [0, 1], so its MSE loss is
                                                far below item's
                                                cross-entropy

For each seed: `mtk.tuning.tune_loss_weights` searches the weights (random
search, --trials trials of --epochs epochs, item's weight pinned to 1.0,
objective val_multitask_score on a validation split carved from the training
images). Then two models are trained from the same initialisation on the same
data for the same epochs, one with equal weights (1.0 each) and one with the
tuned weights, and both are evaluated on Fashion-MNIST's test images. The
table gives mean +- std over the seeds and of the paired differences.

    python benchmarks/loss_weight_tuning.py                 # ~5-10 min on 2 cores
    python benchmarks/loss_weight_tuning.py --tasks item,is_footwear
    python benchmarks/loss_weight_tuning.py --seeds 5 --trials 12 --train 10000
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
from mtk import tuning  # noqa: E402
from mtk.data import load_fashion_mnist  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402

FOOTWEAR = (5, 7, 9)  # Sandal, Sneaker, Ankle boot
TASKS = ("item", "is_footwear", "coverage")


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help=f"comma-separated heads among {', '.join(TASKS)}",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="seeds (tuning + both final trainings each)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=10,
        help="tuning trials per seed (default 10)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs of every training, trials included",
    )
    parser.add_argument(
        "--train", type=int, default=3000, help="training images (default 3000)"
    )
    parser.add_argument(
        "--val",
        type=int,
        default=2000,
        help="validation images for the tuner (default 2000)",
    )
    parser.add_argument(
        "--test", type=int, default=5000, help="test images (default 5000)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--weight-range",
        type=float,
        nargs=2,
        default=(0.01, 10.0),
        metavar=("MIN", "MAX"),
    )
    parser.add_argument(
        "--pinned-head",
        default="item",
        help="head whose weight stays 1.0 ('' for none)",
    )
    parser.add_argument(
        "--tuner", default="random", choices=sorted(tuning.TUNERS)
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory holding the Fashion-MNIST .gz files",
    )
    args = parser.parse_args()
    args.tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = set(args.tasks) - set(TASKS)
    if unknown or len(args.tasks) < 2:
        parser.error(f"--tasks: give two or more of {TASKS}, got {args.tasks}")
    if args.pinned_head and args.pinned_head not in args.tasks:
        parser.error(f"--pinned-head {args.pinned_head!r} is not in --tasks")
    return args


def labels_of(images, classes):
    return {
        "item": classes.astype("int64"),
        "is_footwear": np.isin(classes, FOOTWEAR).astype("float32"),
        "coverage": (images > 25).mean(axis=(1, 2)).astype("float32"),
    }


def heads_for(tasks):
    make = {
        "item": lambda: mtk.heads.Classification("item", num_classes=10),
        "is_footwear": lambda: mtk.heads.Binary("is_footwear"),
        "coverage": lambda: mtk.heads.Regression("coverage"),
    }
    return [make[name]() for name in tasks]


def cnn_trunk():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, x, name="cnn")


def datasets(args, seed):
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(args.data_dir)
    # One fixed sample of images for every seed.
    rng = np.random.default_rng(0)
    picked = rng.permutation(len(x_train))[: args.train + args.val]
    train_idx, val_idx = picked[: args.train], picked[args.train :]
    test_idx = rng.permutation(len(x_test))[: args.test]

    def make(images, classes, shuffle):
        y = labels_of(images, classes)
        y = {task: y[task] for task in args.tasks}
        ds = tf.data.Dataset.from_tensor_slices((images[..., None], y)).cache()
        if shuffle:
            # One order per seed, the same in every epoch, trial and final
            # training: runs of a seed differ in their loss weights only.
            ds = ds.shuffle(len(images), seed=seed,
                            reshuffle_each_iteration=False)
        return ds.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

    return (
        make(x_train[train_idx], y_train[train_idx], shuffle=True),
        make(x_train[val_idx], y_train[val_idx], shuffle=False),
        make(x_test[test_idx], y_test[test_idx], shuffle=False),
    )


def model_maker(tasks, seed):
    def make_model():
        # Every trial and both final models start from the same weights.
        keras.utils.set_random_seed(seed)
        return mtk.build_multitask_model(
            cnn_trunk(),
            heads=heads_for(tasks),
            trunk_weights=None,
            freeze_trunk=False,
            compile=False,
        )

    return make_model


def train_and_test(make_model, weights, train_ds, test_ds, epochs):
    model = make_model()
    mtk.compile_multitask(model, loss_weights=weights)
    model.fit(train_ds, epochs=epochs, verbose=0)
    result = model.evaluate(test_ds, return_dict=True, verbose=0)
    score = tuning.MultiTaskScore.from_model(model, validation_data=test_ds)
    metrics = {ref.head: result[ref.log_name] for ref in score.references}
    metrics["score"] = score.score({"val_" + k: v for k, v in result.items()})
    return metrics


def mean_std(values):
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def main():
    args = parse_args()
    work_dir = tempfile.mkdtemp(prefix="mtk_lw_bench_")
    results = {"equal": [], "tuned": []}
    tuned_weights = []
    seconds = {"search": 0.0, "final": 0.0}
    for seed in range(args.seeds):
        train_ds, val_ds, test_ds = datasets(args, seed)
        make_model = model_maker(args.tasks, seed)
        start = time.perf_counter()
        tuner = tuning.tune_loss_weights(
            make_model,
            train_ds,
            validation_data=val_ds,
            tuner=args.tuner,
            max_trials=args.trials,
            epochs=args.epochs,
            weight_range=tuple(args.weight_range),
            seed=seed,
            pinned_head=args.pinned_head or None,
            directory=work_dir,
            project_name=f"seed_{seed}",
            overwrite=True,
            verbose=0,
        )
        seconds["search"] += time.perf_counter() - start
        weights = tuner.best_loss_weights()
        tuned_weights.append(weights)
        start = time.perf_counter()
        for label, w in (
            ("equal", {task: 1.0 for task in args.tasks}),
            ("tuned", weights),
        ):
            results[label].append(
                train_and_test(make_model, w, train_ds, test_ds, args.epochs)
            )
        seconds["final"] += time.perf_counter() - start
        print(
            f"seed {seed}: tuned weights "
            + ", ".join(f"{k}={v:.3g}" for k, v in sorted(weights.items()))
            + f"; test score equal {results['equal'][-1]['score']:.4f}, "
            f"tuned {results['tuned'][-1]['score']:.4f}",
            flush=True,
        )

    metric_names = {
        "item": "accuracy",
        "is_footwear": "accuracy",
        "coverage": "mae",
    }
    print(
        f"\n{args.train} train / {args.val} val / {args.test} test images, "
        f"{args.epochs} epochs per training, {args.trials} {args.tuner} trials "
        f"per seed, weight range {tuple(args.weight_range)}, pinned head "
        f"{args.pinned_head or 'none'}, "
        f"{args.seeds} seeds, {os.cpu_count()} CPUs\n"
    )
    rows = []
    for key in list(args.tasks) + ["score"]:
        equal = [r[key] for r in results["equal"]]
        tuned = [r[key] for r in results["tuned"]]
        label = (
            "multitask score (skill over chance)"
            if key == "score"
            else f"{key} {metric_names[key]}"
        )
        rows.append({
            "test metric": label,
            "equal weights": mean_std(equal),
            "tuned weights": mean_std(tuned),
            "tuned - equal (paired)": mean_std([t - e for t, e in zip(tuned, equal)]),
        })
    print(format_table(rows))
    print("\ntuned weights per seed:")
    for seed, weights in enumerate(tuned_weights):
        print(
            f"  seed {seed}: "
            + ", ".join(f"{k}={v:.3g}" for k, v in sorted(weights.items()))
        )
    diffs = [
        t["score"] - e["score"]
        for t, e in zip(results["tuned"], results["equal"])
    ]
    winner = "tuned" if statistics.fmean(diffs) > 0 else "equal"
    print(
        f"\nhigher mean test score: {winner} weights "
        f"({sum(d > 0 for d in diffs)}/{len(diffs)} seeds favour tuned)"
    )
    print(
        f"time: search {seconds['search']:.0f} s, final trainings "
        f"{seconds['final']:.0f} s (search / one final training: "
        f"{seconds['search'] / (seconds['final'] / 2):.1f}x)"
    )


if __name__ == "__main__":
    main()
