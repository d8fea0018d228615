"""Helpers the recipes (and benchmarks/multitask_transfer.py) share.

- `fashion_cnn` / `pretrain_fashion_trunk`: the offline "pretrained trunk": a
  small CNN that learned Fashion-MNIST classification (the source task), saved
  as ``.keras``, cut at its ``features`` layer by `mtk.build_multitask_model`.
- `load_multi_fashion`: MultiFashion (the `mtk.data` TFDS builder, built from
  the local Fashion-MNIST files) as numpy arrays.
- `Progress`, `EpochTimer`, `train_and_report`, `save_outputs`: progress
  lines, per-epoch training time, the recipes' fit_transfer schedule with its
  evaluation report, and the output directory every recipe writes (metrics
  JSON, plots, the ``.keras`` model and a TF Serving SavedModel).
"""

import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import mtk
import mtk.evaluation
import mtk.export
from mtk.data import FASHION_MNIST_CLASS_NAMES
from mtk.data import MultiFashionConfig
from mtk.data import load_fashion_mnist

CANVAS = 36  # MultiFashion's image size.
# Where the pretrained network is cut: its convolutional features. The layers
# above (Dense "features", then "classes") learned the source task, which
# ignores where an item is; MultiFashion's tasks depend on exactly that.
TRUNK_OUTPUT = "conv_features"


class Progress:
    """Prints numbered progress lines: ``[2/5] Pretraining the trunk``."""

    def __init__(self, steps):
        self.steps = steps
        self.done = 0
        self.started = time.time()

    def __call__(self, message):
        self.done += 1
        elapsed = time.time() - self.started
        print(f"[{self.done}/{self.steps}] ({elapsed:.0f} s) {message}", flush=True)


class EpochTimer(keras.callbacks.Callback):
    """Records each epoch's training time, validation excluded."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._recorded = False

    def on_test_begin(self, logs=None):
        # fit's validation runs after the epoch's training steps.
        if self._start is not None and not self._recorded:
            self.seconds.append(time.perf_counter() - self._start)
            self._recorded = True

    def on_epoch_end(self, epoch, logs=None):
        if not self._recorded:
            self.seconds.append(time.perf_counter() - self._start)


def fashion_cnn(input_shape=(CANVAS, CANVAS, 1), num_classes=10, name="fashion_cnn"):
    """A small CNN for grayscale images; ``conv_features`` ends the trunk.

    It flattens rather than pools the feature map: MultiFashion's tasks are
    "which item is top-left" and "which is bottom-right", so the features must
    keep where things are.
    """
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # momentum=0.9: the moving statistics settle within the few hundred
        # steps a small from-scratch run gets.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten(name=TRUNK_OUTPUT)(x)
    x = keras.layers.Dense(128, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


def place_on_canvas(items, seed, canvas=CANVAS):
    """Puts 28x28 items at random positions of a ``canvas`` square image."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(items), canvas, canvas, 1), np.uint8)
    rows = rng.integers(0, canvas - 27, len(items))
    cols = rng.integers(0, canvas - 27, len(items))
    for i, (item, r, c) in enumerate(zip(items, rows, cols)):
        out[i, r : r + 28, c : c + 28, 0] = item
    return out


def pretrain_fashion_trunk(
    path,
    *,
    examples=30_000,
    epochs=2,
    seed=0,
    data_dir=None,
    batch_size=128,
    verbose=0,
):
    """Trains `fashion_cnn` on Fashion-MNIST classification and saves it.

    The source task: one Fashion-MNIST item per image, at a random position
    of a 36x36 canvas (MultiFashion's size), 10 classes. Only Fashion-MNIST's
    training images are used; MultiFashion's test canvases are built from its
    test images, which the trunk never sees.

    Args:
        path: where to save the ``.keras`` model.
        examples: number of training images used.
        epochs: training epochs.
        seed: seed of the image draw, placement and initialisation.
        data_dir: directory with the Fashion-MNIST files (searched first).
        batch_size: batch size.
        verbose: `keras.Model.fit` verbosity.

    Returns:
        ``(path, seconds, test accuracy on single items)``.
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x_train), min(examples, len(x_train)), replace=False)
    images = place_on_canvas(x_train[idx], seed)
    test_images = place_on_canvas(x_test, seed + 1)
    keras.utils.set_random_seed(seed)
    net = fashion_cnn()
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    net.fit(
        images.astype("float32"), y_train[idx], batch_size=batch_size,
        epochs=epochs, shuffle=True, verbose=verbose,
    )
    seconds = time.perf_counter() - start
    accuracy = net.evaluate(
        test_images.astype("float32"), y_test, batch_size=512, verbose=0
    )[1]
    net.save(path)
    return str(path), seconds, float(accuracy)


def load_multi_fashion(train_size, test_size, data_dir="runs/tfds", manual_dir=None):
    """MultiFashion as numpy arrays, built once into ``data_dir`` by TFDS.

    Args:
        train_size: training canvases.
        test_size: test canvases.
        data_dir: TFDS data directory to build into / read from.
        manual_dir: directory with the Fashion-MNIST files (else the usual
            places `mtk.data.load_fashion_mnist` searches).

    Returns:
        ``{"train": (images, {"left": ids, "right": ids}), "test": ...}``
        with float32 images (N, 36, 36, 1) and int64 class ids.
    """
    config = MultiFashionConfig(
        name=f"n{train_size}x{test_size}", train_size=train_size, test_size=test_size
    )
    builder = tfds.builder("multi_fashion", config=config, data_dir=str(data_dir))
    download_config = None
    if manual_dir is not None:
        download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    builder.download_and_prepare(download_config=download_config)
    splits = {}
    for split in ("train", "test"):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        splits[split] = (
            data["image"].astype("float32"),
            {
                "left": data["label_left"].astype("int64"),
                "right": data["label_right"].astype("int64"),
            },
        )
    return splits


def multi_fashion_heads(names=("left", "right")):
    """One 10-class head per item position."""
    return [
        mtk.heads.Classification(
            name, num_classes=10, class_names=list(FASHION_MNIST_CLASS_NAMES)
        )
        for name in names
    ]


def dataset(x, labels, batch_size, shuffle_seed=None):
    """Arrays → a batched `tf.data.Dataset` of ``(inputs, labels)``."""
    ds = tf.data.Dataset.from_tensor_slices((x, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_and_report(model, train, test, args, output_dir, progress,
                     validation=None, test_name="the test split"):
    """The recipes' schedule: `mtk.fit_transfer`, then the evaluation report.

    Trains with ``args``' frozen / fine-tuning epochs, learning rate, unfreeze
    spec (``"all"`` when the recipe has none) and verbosity, writes the plots
    and ``metrics.json`` with `mtk.evaluation.write_report` and prints the
    per-head table.

    Returns:
        ``(report, train_seconds)``.
    """
    unfreeze = getattr(args, "unfreeze", "all")
    progress(f"Training heads {sorted(mtk.heads.heads_of(model))}: "
             f"{args.frozen_epochs} epochs with the trunk frozen, then "
             f"{args.finetune_epochs} fine-tuning ({unfreeze})")
    start = time.time()
    history = mtk.fit_transfer(
        model, train, validation_data=test if validation is None else validation,
        frozen_epochs=args.frozen_epochs, finetune_epochs=args.finetune_epochs,
        unfreeze=unfreeze, finetune_learning_rate=args.finetune_learning_rate,
        verbose=args.verbose)
    train_seconds = time.time() - start
    progress(f"Evaluating on {test_name}; writing plots, the model and a "
             f"SavedModel to {output_dir}")
    report = mtk.evaluation.write_report(model, test, output_dir, history=history)
    print("\n" + mtk.evaluation.format_reports({"test": report["metrics"]}) + "\n")
    return report, train_seconds


def save_outputs(model, output_dir, report, results, warmup_inputs=None,
                 progress=None):
    """Writes what every recipe leaves behind in ``output_dir``.

    ``results.json`` (``results`` plus the evaluation report), the plots
    `mtk.evaluation.write_report` made, ``model.keras`` and a TF Serving
    SavedModel under ``saved_model/<version>``.

    Returns:
        ``results`` with the written paths added under ``"outputs"``.
    """
    out = pathlib.Path(output_dir)
    model_path = out / "model.keras"
    model.save(model_path)
    saved_model = mtk.export.export_saved_model(
        model, out / "saved_model", warmup_inputs=warmup_inputs
    )
    results = dict(results)
    results["evaluation"] = {k: v for k, v in report.items() if k != "files"}
    results["outputs"] = {
        "files": [str(p) for p in report["files"]],
        "keras_model": str(model_path),
        "saved_model": str(saved_model),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if progress is not None:
        print(f"Wrote {out / 'results.json'}, the plots and {saved_model} "
              f"({time.time() - progress.started:.0f} s in all).", flush=True)
    return results
