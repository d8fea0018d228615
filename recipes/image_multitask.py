"""One image model for several tasks: a pretrained trunk, frozen then fine-tuned.

Two data sets with disjoint labels, mixed into one pipeline (each example
labels only its own task; the other head's label is missing and skipped):

- ``--dataset multi_fashion`` (default, offline): MultiFashion built from the
  local Fashion-MNIST files: heads ``left`` and ``right`` (the class of the
  top-left and the bottom-right item). The trunk is a small CNN pretrained
  here on Fashion-MNIST classification (single items), saved as ``.keras``.
  The two tasks come from one data set, so every example has both labels.
- ``--dataset cats_and_cars`` (online): TFDS ``cats_vs_dogs`` (head
  ``is_dog``, Binary) mixed with ``cars196`` (head ``car_model``, 196
  classes), on a keras.applications trunk (``--trunk``) with ImageNet
  weights, downloaded by TFDS and Keras.

Either way: `mtk.fit_transfer` trains the heads with the trunk frozen, then
fine-tunes; the output directory gets ``results.json`` (per-head test
metrics, history, settings), ``history.png`` (per-head curves, the phase
boundary marked), ``confusion_<head>.png``, ``loss_weights.png`` (with a
dynamic ``--loss-weighting``), ``model.keras`` and a TF Serving SavedModel in
``saved_model/1``.

    python recipes/image_multitask.py                 # offline, ~2 min on 2 cores
    python recipes/image_multitask.py --dataset cats_and_cars --trunk efficientnet_b0
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

import mtk  # noqa: E402
import mtk.evaluation  # noqa: E402
from mtk.data import MultiFashionConfig  # noqa: E402
from mtk.data import from_tfds  # noqa: E402
from mtk.data import mix  # noqa: E402

DATASETS = ("multi_fashion", "cats_and_cars")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dataset", default="multi_fashion", choices=DATASETS)
    parser.add_argument("--output-dir", default="runs/image_multitask")
    parser.add_argument("--tfds-dir", default=None,
                        help="TFDS data directory (TFDS's default when unset)")
    parser.add_argument(
        "--fashion-mnist-dir", default=None,
        help="multi_fashion: directory with the Fashion-MNIST .gz files "
        "(searched first)")
    parser.add_argument("--train-size", type=int, default=6000,
                        help="multi_fashion: training canvases")
    parser.add_argument("--test-size", type=int, default=2000,
                        help="multi_fashion: test canvases")
    parser.add_argument("--source-examples", type=int, default=20_000,
                        help="multi_fashion: Fashion-MNIST images to pretrain on")
    parser.add_argument("--source-epochs", type=int, default=2)
    parser.add_argument("--trunk", default="efficientnet_b0",
                        help="cats_and_cars: keras.applications trunk")
    parser.add_argument("--image-size", type=int, default=224,
                        help="cats_and_cars: images are resized to this square")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="cats_and_cars: cap on mixed training examples")
    common.add_schedule_arguments(parser, frozen_epochs=2, finetune_epochs=2,
                                  batch_size=64, learning_rate=3e-3,
                                  finetune_learning_rate=1e-4)
    parser.add_argument("--unfreeze", default="all",
                        help='what fine-tuning unfreezes: "all", "top:N", "from:<layer>"')
    parser.add_argument(
        "--loss-weighting", default="static", choices=mtk.weighting.METHODS,
        help="how the task losses are weighted (see mtk.weighting); dynamic "
        "methods add loss_weights.png")
    args = parser.parse_args(argv)
    common.require_at_least(parser, args, 1, (
        "train_size", "test_size", "source_examples", "source_epochs",
        "batch_size", "image_size"))
    common.require_at_least(parser, args, 0, ("frozen_epochs", "finetune_epochs"))
    return args


def multi_fashion(args, progress):
    """Trunk pretrained on Fashion-MNIST; MultiFashion pipelines and heads."""
    out = pathlib.Path(args.output_dir)
    progress(f"Pretraining the trunk on Fashion-MNIST classification "
             f"({args.source_examples} images, {args.source_epochs} epochs)")
    trunk, seconds, accuracy = mtk.data.pretrain_fashion_trunk(
        out / "source_trunk.keras", examples=args.source_examples,
        epochs=args.source_epochs, seed=args.seed,
        data_dir=args.fashion_mnist_dir, verbose=args.verbose)
    print(f"    source task: test accuracy {accuracy:.3f} in {seconds:.0f} s", flush=True)

    progress(f"Building MultiFashion ({args.train_size} train / {args.test_size} "
             "test canvases) with TFDS from the local Fashion-MNIST files")
    heads = mtk.data.multi_fashion_heads()
    config = MultiFashionConfig(name=f"n{args.train_size}x{args.test_size}",
                                train_size=args.train_size, test_size=args.test_size)
    kwargs = {
        "tasks": mtk.data.multi_fashion.TASKS,
        "heads": heads,
        "data_dir": args.tfds_dir,
        "batch_size": args.batch_size,
        "builder_kwargs": {"config": config},
    }
    if args.fashion_mnist_dir:
        kwargs["download_and_prepare_kwargs"] = {
            "download_config": tfds.download.DownloadConfig(
                manual_dir=args.fashion_mnist_dir)}
    train = from_tfds("multi_fashion", "train", shuffle=True, seed=args.seed,
                      cache=True, **kwargs)
    test = from_tfds("multi_fashion", "test", cache=True, **kwargs)
    model = mtk.build_multitask_model(
        trunk, heads=heads, trunk_output=mtk.data.fashion_trunk.TRUNK_OUTPUT,
        learning_rate=args.learning_rate, loss_weighting=args.loss_weighting)
    return model, train, test


def cats_and_cars(args, progress):
    """ImageNet trunk; cats_vs_dogs and cars196 mixed (needs the network)."""
    progress(f"Loading cats_vs_dogs and cars196 with TFDS (downloads when "
             f"needed), resized to {args.image_size}x{args.image_size}")
    car_names = tfds.builder("cars196", data_dir=args.tfds_dir).info.features[
        "label"].names
    heads = [
        mtk.heads.Binary("is_dog"),
        mtk.heads.Classification("car_model", len(car_names), class_names=car_names),
    ]
    kwargs = {"heads": heads, "data_dir": args.tfds_dir,
              "image_size": args.image_size, "batch_size": None}

    def pipeline(splits, shuffle):
        pets = from_tfds("cats_vs_dogs", splits[0], tasks={"is_dog": "label"},
                         shuffle=shuffle, seed=args.seed, **kwargs)
        cars = from_tfds("cars196", splits[1], tasks={"car_model": "label"},
                         shuffle=shuffle, seed=args.seed, **kwargs)
        mixed = mix([pets, cars], heads=heads, seed=args.seed)
        if shuffle and args.max_examples:
            mixed = mixed.take(args.max_examples)
        # keras.applications trunks take float pixels 0-255.
        mixed = mixed.map(lambda x, y: (tf.cast(x, "float32"), y))
        return mixed.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

    # cats_vs_dogs has only a train split: its last 10% is the test set.
    train = pipeline(("train[:90%]", "train"), shuffle=True)
    test = pipeline(("train[90%:]", "test"), shuffle=False)
    model = mtk.build_multitask_model(
        args.trunk, heads=heads, input_shape=(args.image_size, args.image_size, 3),
        trunk_weights="imagenet", learning_rate=args.learning_rate,
        loss_weighting=args.loss_weighting)
    return model, train, test


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    progress = common.Progress(4 if args.dataset == "multi_fashion" else 3)

    load = multi_fashion if args.dataset == "multi_fashion" else cats_and_cars
    model, train, test = load(args, progress)

    report, train_seconds = common.train_and_report(
        model, train, test, args, out, progress)
    results = common.save_outputs(
        model, out, report,
        {"dataset": args.dataset, "train_seconds": train_seconds,
         "settings": vars(args)},
        warmup_inputs=next(iter(test))[0][:4].numpy().astype("float32"),
        progress=progress)
    return results


if __name__ == "__main__":
    main()
