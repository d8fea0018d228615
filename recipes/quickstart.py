"""Quick start: transfer + multi-task learning on Fashion-MNIST, offline.

What it shows, in a few minutes on 2 CPU cores:

1. Source task. A small CNN learns the five clothing classes of
   Fashion-MNIST (T-shirt/top, Trouser, Pullover, Dress, Coat) from 30,000
   images, and is saved as a ``.keras`` file: the "pretrained trunk".
2. Target tasks, on the other five classes (Sandal, Shirt, Sneaker, Bag,
   Ankle boot), with only ``--target-examples`` labelled images:
   ``item`` (which of the five) and ``is_footwear`` (yes/no).
3. One multi-task model on the saved trunk (cut at its ``features`` layer),
   trained frozen, then fine-tuned unfrozen, with `mtk.fit_transfer`.
4. Baselines: one single-task model per head, same architecture, trained from
   scratch for the same number of epochs.

It prints a per-head table on the test images of the target classes with
Δm (the mean relative gain over the baselines), and writes ``results.json``,
``metrics.json``, the plots (per-head curves with the phase boundary,
confusion matrices) and the multi-task model to ``--output-dir``.

Run ``make demo`` (or ``python recipes/quickstart.py --help``).
"""

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys

import keras
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import add_schedule_arguments  # noqa: E402
from common import dataset  # noqa: E402
from common import require_at_least  # noqa: E402

import mtk  # noqa: E402
import mtk.evaluation  # noqa: E402
from mtk.data import FASHION_MNIST_CLASS_NAMES  # noqa: E402
from mtk.data import load_fashion_mnist  # noqa: E402

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
FOOTWEAR = (5, 7, 9)  # Sandal, Sneaker, Ankle boot


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", default="runs/quickstart")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with the Fashion-MNIST .gz files (searched first)",
    )
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--target-examples", type=int, default=300)
    add_schedule_arguments(parser, frozen_epochs=3, finetune_epochs=3,
                           batch_size=32, learning_rate=1e-2,
                           finetune_learning_rate=3e-4)
    args = parser.parse_args(argv)
    require_at_least(parser, args, 1, ("source_epochs", "frozen_epochs",
                                       "finetune_epochs", "target_examples",
                                       "batch_size"))
    return args


def target_labels(y):
    """The two target tasks from Fashion-MNIST class ids of target images."""
    item = np.searchsorted(TARGET_CLASSES, y).astype("int64")
    is_footwear = np.isin(y, FOOTWEAR).astype("float32")
    return {"item": item, "is_footwear": is_footwear}


def make_heads(names=("item", "is_footwear")):
    heads = {
        "item": lambda: mtk.heads.Classification(
            "item",
            num_classes=len(TARGET_CLASSES),
            class_names=[FASHION_MNIST_CLASS_NAMES[c] for c in TARGET_CLASSES],
        ),
        "is_footwear": lambda: mtk.heads.Binary("is_footwear"),
    }
    return [heads[name]() for name in names]


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    print("[1/5] Loading Fashion-MNIST from local files", flush=True)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(args.data_dir)
    x_train, x_test = x_train[..., None], x_test[..., None]

    source = np.isin(y_train, SOURCE_CLASSES)
    print(
        f"[2/5] Pretraining the trunk on the source task: "
        f"{source.sum()} images of {len(SOURCE_CLASSES)} clothing classes",
        flush=True,
    )
    net = mtk.data.quickstart_cnn(len(SOURCE_CLASSES))
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    net.fit(
        dataset(x_train[source], y_train[source], 128, shuffle_seed=args.seed),
        epochs=args.source_epochs,
        verbose=args.verbose,
    )
    trunk_path = str(out / "source_trunk.keras")
    net.save(trunk_path)

    # Target data: a small labelled sample of the other five classes.
    rng = np.random.default_rng(args.seed)
    target_idx = np.flatnonzero(np.isin(y_train, TARGET_CLASSES))
    target_idx = rng.choice(target_idx, args.target_examples, replace=False)
    test_mask = np.isin(y_test, TARGET_CLASSES)
    train_x, train_y = x_train[target_idx], target_labels(y_train[target_idx])
    test_x, test_y = x_test[test_mask], target_labels(y_test[test_mask])
    train_ds = dataset(train_x, train_y, args.batch_size, shuffle_seed=args.seed)
    test_ds = dataset(test_x, test_y, 256)

    print(
        f"[3/5] Multi-task transfer: heads item + is_footwear on "
        f"{args.target_examples} target images; {args.frozen_epochs} epochs "
        f"frozen, then {args.finetune_epochs} fine-tuning",
        flush=True,
    )
    # Only the small heads train in phase 1, so they take a larger step.
    model = mtk.build_multitask_model(
        trunk_path,
        trunk_output="features",
        heads=make_heads(),
        learning_rate=args.learning_rate,
    )
    t0 = time.time()
    history = mtk.fit_transfer(
        model,
        train_ds,
        validation_data=test_ds,
        frozen_epochs=args.frozen_epochs,
        finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_learning_rate,
        verbose=args.verbose,
    )
    multitask_seconds = time.time() - t0
    report = mtk.evaluation.write_report(model, test_ds, out, history=history)
    multitask = report["metrics"]

    epochs = args.frozen_epochs + args.finetune_epochs
    print(
        f"[4/5] Baselines: one single-task model per head, same architecture, "
        f"from scratch, {epochs} epochs",
        flush=True,
    )
    baselines = {}
    baseline_seconds = 0.0
    for name in ("item", "is_footwear"):
        baseline = mtk.build_multitask_model(
            trunk_path,
            trunk_output="features",
            trunk_weights=None,
            freeze_trunk=False,
            heads=make_heads([name]),
        )
        t0 = time.time()
        baseline.fit(
            dataset(train_x, {name: train_y[name]}, args.batch_size, args.seed),
            epochs=epochs,
            verbose=0,
        )
        baseline_seconds += time.time() - t0
        baselines.update(mtk.evaluation.evaluate_heads(
            baseline, dataset(test_x, {name: test_y[name]}, 256)
        ))

    print("[5/5] Results on the test images of the target classes\n", flush=True)
    table = mtk.evaluation.format_reports(
        {"mtk transfer": multitask, "scratch 1-task": baselines}
    )
    gain = mtk.evaluation.delta_m(
        mtk.evaluation.primary_metrics(model, multitask),
        mtk.evaluation.primary_metrics(model, baselines),
        mtk.evaluation.higher_is_better(model),
    )
    table += f"\n\nDelta-m of mtk transfer vs the scratch baselines: {gain:+.2f}%"
    print(table)
    model_path = out / "multitask.keras"
    model.save(model_path)
    results = {
        "multitask_transfer": multitask,
        "single_task_scratch": baselines,
        "delta_m_percent": gain,
        "plots": [str(f) for f in report["files"] if str(f).endswith(".png")],
        "train_seconds": {
            "multitask_transfer": multitask_seconds,
            "single_task_scratch_total": baseline_seconds,
        },
        "history": history.history,
        "phase_boundary": history.phase_boundary,
        "settings": vars(args),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.txt").write_text(table + "\n")
    print(
        f"\nSaved the model to {model_path} and the results to "
        f"{out / 'results.json'} ({time.time() - started:.0f} s in all)."
    )
    return results


if __name__ == "__main__":
    main()
