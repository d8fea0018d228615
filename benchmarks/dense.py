"""Dense multi-task benchmark: segmentation + per-pixel regression + an image label.

On MultiFashion's dense configuration (`mtk.data.load_multi_fashion(...,
dense=True)`: two Fashion-MNIST items on a 36x36 canvas), three tasks:

- ``segmentation``: background or the class of the item showing at each
  pixel (11 classes; `mtk.heads.Segmentation`, mIoU and pixel accuracy);
- ``layers``: each item's own intensity per pixel, un-mixing the overlay
  (2 channels; `mtk.heads.DenseRegression`, MAE loss; absolute and relative
  error);
- ``left``: the class of the top-left item (`mtk.heads.Classification` on
  the pooled feature map; accuracy).

The trunk is `mtk.data.fashion_cnn` pretrained on single Fashion-MNIST items
(`mtk.data.pretrain_fashion_trunk`), cut at its second block's feature map
(``block2_pool``, 9x9); the dense heads' decoders take a skip connection
from ``block1_pool`` (18x18). One model with the three heads is compared
with three single-task models (same trunk, same schedule: `mtk.fit_transfer`,
frozen epochs then fine-tuning; same data and seed). The table gives, mean ±
std over seeds, every metric, Δm over all of them (`mtk.evaluation.
delta_m_of_reports`, each metric with its own direction, paired per seed),
and the multi-task model's training step and inference times as ratios to
the three single-task models' summed.

Then the decoder's cost: the median training step of the same trunk with
two image-level heads, and with the two dense heads added, on random data
(``--cost-rounds`` rounds, interleaved).

    .venv/bin/python benchmarks/dense.py                   # ~9 min on 2 cores
    .venv/bin/python benchmarks/dense.py --seeds 1 --train-size 500
    .venv/bin/python benchmarks/dense.py --cost-only --cost-rounds 5
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
from mtk.evaluation import StepTimer  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402
from mtk.evaluation import inference_seconds  # noqa: E402
from mtk.evaluation import mean_std  # noqa: E402

TASKS = ["segmentation", "layers", "left"]
TRUNK_OUTPUT = "block2_pool"
SKIP = "block1_pool"


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--frozen-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--finetune-learning-rate", type=float, default=3e-4)
    parser.add_argument("--decoder-filters", type=int, default=16)
    parser.add_argument("--source-examples", type=int, default=20_000)
    parser.add_argument("--data-dir", default="runs/tfds")
    parser.add_argument("--cost-rounds", type=int, default=3)
    parser.add_argument("--cost-only", action="store_true",
                        help="skip the MultiFashion quality runs")
    return parser.parse_args()


def heads(tasks, decoder_filters):
    every = {h.name: h for h in mtk.data.multi_fashion_dense_heads(
        decoder_filters=decoder_filters, skip=SKIP)}
    return [every[t] for t in tasks]


def dataset(x, y, batch_size, shuffle_seed=None):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def run(args, trunk_path, tasks, data, seed):
    """Trains one model on ``tasks``; its report and timings."""
    (x, y), (x_test, y_test) = data["train"], data["test"]
    keras.utils.set_random_seed(seed)
    model = mtk.build_multitask_model(
        trunk_path, trunk_output=TRUNK_OUTPUT,
        heads=heads(tasks, args.decoder_filters),
        learning_rate=args.learning_rate)
    timer = StepTimer()
    mtk.fit_transfer(
        model, dataset(x, {t: y[t] for t in tasks}, args.batch_size, seed),
        frozen_epochs=args.frozen_epochs, finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_learning_rate,
        callbacks=[timer], verbose=0)
    report = mtk.evaluation.evaluate_heads(
        model, dataset(x_test, {t: y_test[t] for t in tasks}, 256))
    return {
        "report": report, "model": model, "step_s": timer.median(),
        "infer_s": inference_seconds(model, x_test),
    }


def step_time(dense, x, y, batch_size, decoder_filters):
    """Median training step of the trunk with image-level (+ dense) heads."""
    keras.utils.set_random_seed(0)
    tasks = (["segmentation", "layers"] if dense else []) + ["left", "right"]
    model = mtk.build_multitask_model(
        mtk.data.fashion_cnn(), trunk_output=TRUNK_OUTPUT, trunk_weights=None,
        freeze_trunk=False, heads=heads(tasks, decoder_filters))
    timer = StepTimer()
    model.fit(x, {t: y[t] for t in tasks}, batch_size=batch_size, epochs=3,
              verbose=0, callbacks=[timer])
    decoder = sum(model.get_layer(t).count_params() for t in tasks[:2]) if dense else 0
    return timer.median(), model.count_params(), decoder


def cost_table(args):
    rng = np.random.default_rng(0)
    n = 30 * args.batch_size
    x = rng.uniform(0, 255, (n, 36, 36, 1)).astype("float32")
    y = {"left": rng.integers(0, 10, n), "right": rng.integers(0, 10, n),
         "segmentation": rng.integers(0, 11, (n, 36, 36)),
         "layers": rng.uniform(0, 1, (n, 36, 36, 2)).astype("float32")}
    ratios, image_ms, dense_ms = [], [], []
    for round_ in range(args.cost_rounds):
        image, params_image, _ = step_time(False, x, y, args.batch_size,
                                           args.decoder_filters)
        dense, params_dense, decoder = step_time(True, x, y, args.batch_size,
                                                 args.decoder_filters)
        ratios.append(dense / image)
        image_ms.append(1000 * image)
        dense_ms.append(1000 * dense)
        print(f"cost round {round_ + 1}/{args.cost_rounds} done", flush=True)
    rows = [
        {"model": "trunk + left, right (image-level)",
         "train step (ms)": mean_std(image_ms, ".1f"), "ratio": "1.00",
         "params": f"{params_image:,}"},
        {"model": "+ segmentation, layers (dense, skip)",
         "train step (ms)": mean_std(dense_ms, ".1f"),
         "ratio": mean_std(ratios, ".2f"),
         "params": f"{params_dense:,} (decoders {decoder:,})"},
    ]
    print()
    print(format_table(rows, title=(
        f"Decoder cost: fashion_cnn cut at {TRUNK_OUTPUT!r} (9x9x32), trained "
        f"unfrozen, 36x36 inputs, batch {args.batch_size}, decoder_filters "
        f"{args.decoder_filters}, {args.cost_rounds} rounds")))


def main():
    args = parse_args()
    if args.cost_only:
        cost_table(args)
        return
    data = mtk.data.load_multi_fashion(args.train_size, args.test_size,
                                       data_dir=args.data_dir, dense=True)
    work = tempfile.mkdtemp(prefix="mtk_dense_")
    trunk_path, seconds, accuracy = mtk.data.pretrain_fashion_trunk(
        os.path.join(work, "trunk.keras"), examples=args.source_examples)
    print(f"pretrained trunk: {accuracy:.3f} single-item accuracy in {seconds:.0f} s",
          flush=True)

    multi, single = [], []
    for seed in range(args.seeds):
        start = time.perf_counter()
        result = run(args, trunk_path, TASKS, data, seed)
        singles = [run(args, trunk_path, [t], data, seed) for t in TASKS]
        baseline = {t: s["report"][t] for t, s in zip(TASKS, singles)}
        gain, terms = mtk.evaluation.delta_m_of_reports(
            result["report"], baseline, result["model"])
        multi.append({"report": result["report"], "delta_m": gain,
                      "step": result["step_s"] / sum(s["step_s"] for s in singles),
                      "infer": result["infer_s"] / sum(s["infer_s"] for s in singles)})
        single.append({"report": baseline})
        print(f"seed {seed}: Δm {gain:+.2f} % "
              + " ".join(f"{k} {v[0]:.4f}/{v[1]:.4f}" for k, v in terms.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)

    metrics = {t: list(mtk.data.multi_fashion_dense_heads()[i].delta_m_metrics())
               for i, t in enumerate(["segmentation", "layers"])}
    metrics["left"] = ["accuracy"]
    rows = []
    for name, runs in (("single-task (3 models)", single), ("multi-task (1 model)", multi)):
        row = {"model": name}
        for task, names in metrics.items():
            for metric in names:
                row[f"{task} {metric}"] = mean_std(
                    [r["report"][task][metric] for r in runs], ".4f")
        if name.startswith("multi"):
            row["Δm (%)"] = mean_std([r["delta_m"] for r in runs], "+.2f")
            row["train step / single"] = mean_std([r["step"] for r in runs], ".2f")
            row["inference / single"] = mean_std([r["infer"] for r in runs], ".2f")
        else:
            row["Δm (%)"] = row["train step / single"] = row["inference / single"] = "—"
        rows.append(row)
    print()
    print(format_table(rows, title=(
        f"MultiFashion dense, {args.train_size} training / {args.test_size} test "
        f"images, fashion_cnn cut at {TRUNK_OUTPUT!r} with skip {SKIP!r}, "
        f"{args.frozen_epochs} frozen + {args.finetune_epochs} fine-tuning epochs, "
        f"{args.seeds} seeds (times: multi-task / the 3 single-task models summed)")))
    cost_table(args)


if __name__ == "__main__":
    main()
