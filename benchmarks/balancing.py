"""Task balancing methods vs equal and tuned static weights, on three problems.

Every method of `mtk.weighting.METHODS` (gradient-level ones also with
``rep_grad=True`` where it is the paper's variant: MGDA-UB) trains the same
model from the same initial weights within a seed (`mtk.weighting.compare`);
the table gives each head's test metric (mean ± std over seeds), Δm against
equal static weights (paired per seed) and the median step time relative to
static. "static (tuned)" uses loss weights found once per problem by
`mtk.tune_loss_weights` (random search on a validation split of the training
data), the baseline careful studies found hardest to beat (Kurin et al. 2022;
Xin et al. 2022).

Problems, all offline:

- ``multi_fashion``: MultiFashion (two Fashion-MNIST items on a 36x36 canvas,
  Sener & Koltun 2018), left and right item class; a balanced pair.
- ``fashion_trio``: Fashion-MNIST item class (10-way), coarse group (tops,
  bottoms, footwear, bags) and ink coverage in percent (Regression, MSE in
  the hundreds): losses on very different scales.
- ``conflict``: a synthetic regression pair whose task weight vectors have
  cosine -0.8 (plus sinusoidal terms and noise, as in the MMoE paper's
  synthetic data, Ma et al. 2018, Sec. 3): controlled gradient conflict.

    .venv/bin/python benchmarks/balancing.py                 # ~40 min on 2 cores
    .venv/bin/python benchmarks/balancing.py --problems conflict --seeds 2
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402

PROBLEMS = ("multi_fashion", "fashion_trio", "conflict")
# Coarse groups of the Fashion-MNIST classes: tops, bottoms, footwear, bags.
GROUP_OF_CLASS = np.array([0, 1, 0, 0, 0, 2, 0, 2, 3, 2])


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--methods", nargs="+", default=list(mtk.weighting.METHODS),
                        choices=mtk.weighting.METHODS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--tuning-trials", type=int, default=8)
    parser.add_argument("--data-dir", default="runs/tfds")
    return parser.parse_args()


def mlp(input_dim):
    inputs = keras.Input((input_dim,))
    x = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, outputs, name="mlp")


def multi_fashion(args):
    splits = mtk.data.load_multi_fashion(args.train_size, args.test_size, args.data_dir)
    heads = lambda: mtk.data.multi_fashion_heads()  # noqa: E731
    return splits, lambda: mtk.data.lenet((36, 36, 1)), heads


def fashion_trio(args):
    (x, labels), (x_test, labels_test) = mtk.data.load_fashion_mnist()

    def task_labels(images, classes):
        return {"item": classes.astype("int64"),
                "group": GROUP_OF_CLASS[classes].astype("int64"),
                "ink": (100.0 * (images > 0).mean(axis=(1, 2))).astype("float32")}

    rng = np.random.default_rng(0)
    train = rng.choice(len(x), args.train_size, replace=False)
    test = rng.choice(len(x_test), args.test_size, replace=False)
    splits = {
        "train": (x[train, ..., None].astype("float32"), task_labels(x[train], labels[train])),
        "test": (x_test[test, ..., None].astype("float32"),
                 task_labels(x_test[test], labels_test[test])),
    }
    heads = lambda: [mtk.heads.Classification("item", 10),  # noqa: E731
                     mtk.heads.Classification("group", 4),
                     mtk.heads.Regression("ink")]
    return splits, lambda: mtk.data.lenet((28, 28, 1)), heads


def conflict(args, cosine=-0.8, dim=16):
    problem = mtk.data.MMoESynthetic(cosine, dim=dim, c=1.0, m=10, noise_std=0.1, seed=0)
    splits = {"train": problem.sample(args.train_size, sample_seed=0),
              "test": problem.sample(args.test_size, sample_seed=1)}
    heads = lambda: [mtk.heads.Regression("task0"), mtk.heads.Regression("task1")]  # noqa: E731
    return splits, lambda: mlp(dim), heads


def dataset(x, y, batch_size=128, shuffle_seed=None):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed)
    return ds.batch(batch_size)


def tuned_weights(make_model, x, y, args, name):
    """Loss weights from a random search on a validation split of the training data."""
    cut = int(0.8 * len(x))
    train = dataset(x[:cut], {k: v[:cut] for k, v in y.items()}, shuffle_seed=0)
    val = dataset(x[cut:], {k: v[cut:] for k, v in y.items()})
    tuner = mtk.tune_loss_weights(
        lambda: make_model("static"), train, validation_data=val, tuner="random",
        max_trials=args.tuning_trials, epochs=args.epochs, weight_range=(0.01, 10.0),
        directory=tempfile.mkdtemp(prefix=f"balancing_{name}_"), seed=0, verbose=0)
    return tuner.best_loss_weights()


def methods_to_compare(args, weights):
    methods = list(args.methods)
    if "static" in methods:
        methods.insert(methods.index("static") + 1,
                       ("static (tuned)",
                        lambda: mtk.weighting.StaticWeighting(loss_weights=weights)))
    if "mgda" in methods:
        methods.insert(methods.index("mgda") + 1,
                       ("mgda (rep_grad: MGDA-UB)",
                        lambda: mtk.weighting.MGDA(rep_grad=True)))
    return methods


def print_against_tuned(rows, model):
    """Δm of every method against tuned static weights, paired per seed."""
    tuned = next(row for row in rows if row["method"] == "static (tuned)")["runs"]
    directions = mtk.evaluation.higher_is_better(model)
    table = []
    for row in rows:
        if row["method"] == "static (tuned)":
            continue
        deltas = [mtk.evaluation.delta_m(run["metrics"], base["metrics"], directions)
                  for run, base in zip(row["runs"], tuned)]
        table.append({"method": row["method"],
                      "Δm vs tuned static (%)": f"{np.mean(deltas):+.2f} ± {np.std(deltas):.2f}",
                      "seeds better": f"{sum(d > 0 for d in deltas)}/{len(deltas)}"})
    print(mtk.evaluation.format_table(
        table, title="Against tuned static weights, paired per seed"), flush=True)


def main():
    args = parse_args()
    started = time.time()
    for name in args.problems:
        splits, trunk, heads = globals()[name](args)
        (x, y), (x_test, y_test) = splits["train"], splits["test"]

        def make_model(loss_weighting):
            return mtk.build_multitask_model(trunk(), heads=heads(), freeze_trunk=False,
                                             loss_weighting=loss_weighting)

        weights = tuned_weights(make_model, x, y, args, name) if "static" in args.methods else {}
        print(f"\n## {name}: tuned static weights "
              f"{ {k: round(v, 3) for k, v in weights.items()} }", flush=True)
        rows = mtk.weighting.compare(
            make_model, dataset(x, y, shuffle_seed=0), dataset(x_test, y_test),
            methods_to_compare(args, weights), seeds=args.seeds, epochs=args.epochs,
            baseline="static" if "static" in args.methods else None)
        if weights:
            print_against_tuned(rows, make_model("static"))
        print(f"({name}: {args.train_size} train / {args.test_size} test, "
              f"{args.epochs} epochs, batch 128; {time.time() - started:.0f} s so far)",
              flush=True)


if __name__ == "__main__":
    main()
