"""Distributed multi-task transfer learning: one machine or a cluster.

The same script runs everywhere; `mtk.distribute.get_strategy` picks the
strategy from the hardware and ``TF_CONFIG``:

- one machine (no ``TF_CONFIG``): TPU if reachable, else all GPUs
  (MirroredStrategy), else the CPU;
- a cluster: set ``TF_CONFIG`` on each machine and start the script on every
  one of them (MultiWorkerMirroredStrategy, made to work with Keras 3 by
  mtk). Two workers on this machine, for a try::

      for i in 0 1; do
        TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345",
          "127.0.0.1:12346"]}, "task": {"type": "worker", "index": '$i'}}' \\
        python recipes/distributed_training.py --output-dir runs/dist_$i &
      done; wait

Tasks: Fashion-MNIST from the local files (`mtk.data.load_fashion_mnist`),
two heads: ``item`` (10 classes) and ``is_footwear`` (yes/no), trained
frozen then fine-tuned with `mtk.fit_transfer`. The default trunk is a small
CNN (random init: it learns in the fine-tuning phase, quick on CPUs);
``--trunk mobilenet_v3_small`` (any `mtk.trunks.APPLICATIONS` name) with
``--trunk-weights pretrained`` is the accelerator-sized choice (images padded
to 32x32 and repeated to RGB). ``--synthetic`` uses random images instead (a
smoke test that needs no files; its metrics mean nothing).

The pipeline is batched with the *global* batch size,
``--per-replica-batch-size`` × replicas (`mtk.distribute.global_batch_size`);
each worker reads the whole data set and keeps its shard of every batch
(auto-shard policy DATA). Training backs up to ``--backup-dir`` each epoch:
kill the job (or lose a worker) and start it again with the same command, and
it resumes where the last backup left it, in the right phase. The chief
(worker 0) writes the model and ``results.json`` to ``--output-dir``.
"""

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
import mtk.distribute  # noqa: E402
import mtk.trunks  # noqa: E402
from mtk.data import FASHION_MNIST_CLASS_NAMES  # noqa: E402
from mtk.data import load_fashion_mnist  # noqa: E402

FOOTWEAR = (5, 7, 9)  # Sandal, Sneaker, Ankle boot
GRAY_SHAPE = (28, 28, 1)
RGB_SHAPE = (32, 32, 3)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--strategy",
        default="auto",
        choices=mtk.distribute.KINDS,
        help="tf.distribute strategy kind (default: auto)",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_float16 on GPU / mixed_bfloat16 on TPU (float32 on CPU)",
    )
    parser.add_argument("--output-dir", default="runs/distributed")
    parser.add_argument(
        "--backup-dir",
        default=None,
        help="BackupAndRestore directory (default: <output-dir>/backup)",
    )
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST .gz files")
    parser.add_argument("--synthetic", action="store_true", help="random images")
    parser.add_argument("--train-examples", type=int, default=6000)
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--per-replica-batch-size", type=int, default=64)
    parser.add_argument("--frozen-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--finetune-learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--trunk",
        default="small_cnn",
        choices=("small_cnn", *mtk.trunks.APPLICATIONS),
    )
    parser.add_argument(
        "--trunk-weights",
        default=None,
        help="for keras.applications trunks: 'pretrained' (ImageNet; needs "
        "the weights or network) or a weights file; default: random init",
    )
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    for name in ("train_examples", "test_examples", "per_replica_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("frozen_epochs", "finetune_epochs"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def load_data(args):
    """((x_train, y_train), (x_test, y_test)): uint8 28x28 images, class ids."""
    if args.synthetic:
        rng = np.random.default_rng(0)
        split = [args.train_examples, args.test_examples]
        return [
            (
                rng.integers(0, 256, (n, 28, 28), dtype="uint8"),
                rng.integers(0, 10, n).astype("uint8"),
            )
            for n in split
        ]
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(args.data_dir)
    return (
        (x_train[: args.train_examples], y_train[: args.train_examples]),
        (x_test[: args.test_examples], y_test[: args.test_examples]),
    )


def small_cnn():
    """A small CNN trunk for 28x28 gray images (pixels 0-255)."""
    inputs = keras.Input(GRAY_SHAPE)
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name="small_cnn")


def dataset(images, classes, batch_size, rgb):
    """(image, {item, is_footwear}) batches of ``batch_size`` (the global one).

    Images are float 0-255, 28x28x1, or padded to 32x32 RGB when ``rgb``.
    """
    labels = {
        "item": classes.astype("int64"),
        "is_footwear": np.isin(classes, FOOTWEAR).astype("float32"),
    }

    def to_float(image, label):
        image = tf.cast(image[..., tf.newaxis], tf.float32)
        if rgb:
            image = tf.image.pad_to_bounding_box(image, 2, 2, 32, 32)
            image = tf.repeat(image, 3, axis=-1)
        return image, label

    options = tf.data.Options()
    # In-memory data has no files to shard: each worker keeps its share of
    # every global batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )


def is_chief():
    config = mtk.distribute.read_tf_config()
    if config is None:
        return True
    task = config["task"]
    return task["type"] == "chief" or (
        task["type"] == "worker"
        and task["index"] == 0
        and "chief" not in config["cluster"]
    )


def main(argv=None):
    args = parse_args(argv)
    # First: multi-worker and TPU strategies must exist before other TF ops.
    strategy = mtk.distribute.get_strategy(args.strategy)
    if args.mixed_precision:
        print(f"precision policy: {mtk.distribute.set_precision_policy(strategy)}")
    batch_size = mtk.distribute.global_batch_size(
        args.per_replica_batch_size, strategy
    )
    print(
        f"global batch size {batch_size} = {args.per_replica_batch_size} per "
        f"replica x {strategy.num_replicas_in_sync} replicas"
    )
    if args.synthetic:
        print("NOTE: --synthetic: random images; the metrics mean nothing.")
    (x_train, y_train), (x_test, y_test) = load_data(args)
    rgb = args.trunk != "small_cnn"
    train_ds = dataset(x_train, y_train, batch_size, rgb)
    test_ds = dataset(x_test, y_test, batch_size, rgb)

    model = mtk.build_multitask_model(
        args.trunk if rgb else small_cnn(),
        input_shape=RGB_SHAPE if rgb else GRAY_SHAPE,
        trunk_weights=args.trunk_weights,
        heads=[
            mtk.heads.Classification(
                "item", num_classes=10, class_names=list(FASHION_MNIST_CLASS_NAMES)
            ),
            mtk.heads.Binary("is_footwear"),
        ],
        learning_rate=args.learning_rate,
        strategy=strategy,
    )
    out = pathlib.Path(args.output_dir)
    backup_dir = args.backup_dir or str(out / "backup")
    start = time.perf_counter()
    history = mtk.fit_transfer(
        model,
        train_ds,
        validation_data=test_ds,
        frozen_epochs=args.frozen_epochs,
        finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_learning_rate,
        callbacks=[mtk.distribute.BackupAndRestore(backup_dir)],
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
    logs = model.evaluate(test_ds, verbose=0, return_dict=True)
    results = {
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": batch_size,
        "train_seconds": round(seconds, 1),
        "epochs_run": len(history.epoch),
        "test": {
            "item_accuracy": logs["item_accuracy"],
            "is_footwear_accuracy": logs["is_footwear_accuracy"],
        },
    }
    print(json.dumps(results, indent=2))
    # Every worker evaluates (evaluate is a collective step); the chief alone
    # writes, so workers never write the same files.
    if is_chief():
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model.keras")
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out / 'model.keras'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
