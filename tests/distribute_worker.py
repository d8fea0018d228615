"""Subprocess worker for tests/test_distribute.py.

Strategies that need TensorFlow configured before it starts (logical CPU
devices, TF_CONFIG clusters) and runs that kill themselves cannot share the
pytest process, so the tests run this script and read what it writes.

Modes:
    mirrored: fit_transfer under MirroredStrategy on two logical CPUs; then
        a string-input model's fit, which writes ``<out>/<name>.text.json``.
    multi_worker: fit_transfer under get_strategy("multi_worker"), TF_CONFIG
        from the environment.
    backup: fit_transfer on one device.
    (--loss-weighting picks the balancing method; default static;
    --tabular adds a table branch: a `mtk.trunks.combine` trunk of the image
    CNN and a `mtk.trunks.tabular` FeatureSpace over ``age`` / ``country``,
    fed dict batches.)
    upstream: plain Keras `model.fit` of a one-layer model under a plain
        `tf.distribute.MultiWorkerMirroredStrategy`; writes the error it
        raises (keras-team/keras#20585) to ``<out>/<name>.error.txt``.

Each writes the initial and trained weights to ``<out>/<name>.init.npz`` and
``<out>/<name>.npz`` and appends one JSON line per epoch begun to
``<out>/<name>.epochs.jsonl`` (epoch, trunk trainable). With --backup it
trains with `mtk.distribute.BackupAndRestore`; --kill-epoch E makes it kill
itself (os._exit) after the --kill-batch-th batch of epoch E; --reference
also trains the same model on one device, without callbacks, and writes
``<out>/<name>.single.npz``.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

from testing import use_logical_cpus

KILLED_EXIT_CODE = 17
IMAGE_SHAPE = (16, 16, 3)
GLOBAL_BATCH = 16
FROZEN_EPOCHS = 2
FINETUNE_EPOCHS = 2


def table(n=32):
    rng = np.random.default_rng(1)
    return {"age": rng.uniform(18, 80, n).astype("float32"),
            "country": rng.choice(["DE", "FR", "US"], n).astype(object)}


def data(n=32, seed=0, tabular=False):
    """Images and labels, missing unevenly across the halves of each batch
    (the replicas' shares): the masked losses average over the global batch,
    so replicas and one device still agree."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n,) + IMAGE_SHAPE).astype("float32")
    if tabular:
        x = {"image": x, **table(n)}
    y = {
        "item": rng.integers(0, 4, n),
        "flag": rng.integers(0, 2, n).astype("float32"),
        "price": rng.normal(size=n).astype("float32"),
    }
    y["item"][0:5] = -1
    y["flag"][[9, 10, 11, 20]] = np.nan
    y["price"][[16, 17, 18, 19, 20, 21]] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)


def build(strategy=None, loss_weighting="static", tabular=False):
    import keras

    import mtk

    keras.utils.set_random_seed(0)
    inputs = keras.Input(IMAGE_SHAPE)
    x = keras.layers.Conv2D(8, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU(name="relu_a")(x)
    x = keras.layers.Conv2D(8, 3, name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    trunk = keras.Model(inputs, x, name="source_net")
    if tabular:
        # The FeatureSpace is adapted outside the strategy's scope too.
        FS = keras.utils.FeatureSpace
        space = FS({"age": FS.float_normalized(),
                    "country": FS.string_categorical()}, output_mode="concat")
        space.adapt(tf.data.Dataset.from_tensor_slices(table()).batch(8))
        trunk = mtk.trunks.combine(
            {"image": trunk, "record": mtk.trunks.tabular(space, hidden_units=(8,))})
    # The trunk is built outside the strategy's scope, as a user's
    # pretrained network is.
    return mtk.build_multitask_model(
        trunk,
        trunk_weights="pretrained",
        heads=[
            mtk.heads.Classification("item", num_classes=4),
            mtk.heads.Binary("flag"),
            mtk.heads.Regression("price"),
        ],
        learning_rate=1e-2,
        loss_weighting=loss_weighting,
        strategy=strategy,
    )


def fit_string_model(strategy, path):
    """Fits a model that takes raw strings, as mtk's text trunks do."""
    import keras

    with strategy.scope():
        inputs = keras.Input((), dtype="string")
        x = keras.layers.StringLookup(vocabulary=["a", "b"], output_mode="one_hot")(
            inputs
        )
        model = keras.Model(inputs, keras.layers.Dense(1)(x))
        model.compile("sgd", "mse")
    texts = tf.constant(["a", "b", "c", "a"] * 4)
    dataset = tf.data.Dataset.from_tensor_slices((texts, tf.ones(16))).batch(8)
    history = model.fit(dataset, epochs=1, verbose=0)
    with open(path, "w") as f:
        json.dump(history.history, f)


def fit_with_plain_multi_worker_strategy(path):
    """The upstream failure, as a new user meets it."""
    import keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    x = np.ones((32, 4), "float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, x[:, :1])).batch(16)
    try:
        model.fit(dataset, epochs=1, verbose=0)
        error = ""
    except Exception as e:  # the failure is the result
        error = f"{type(e).__name__}: {e}"
    with open(path, "w") as f:
        f.write(error)
    return 0


def epoch_logger(path):
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            trainable = self.model.get_layer("trunk").trainable
            with open(path, "a") as f:
                f.write(json.dumps({"epoch": epoch, "trunk": trainable}) + "\n")

    return EpochLog()


def killer(kill_epoch, kill_batch):
    import keras

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == kill_batch:
                os._exit(KILLED_EXIT_CODE)

    return Kill()


def train(model, callbacks=(), tabular=False):
    import mtk

    mtk.fit_transfer(
        model,
        data(tabular=tabular),
        frozen_epochs=FROZEN_EPOCHS,
        finetune_epochs=FINETUNE_EPOCHS,
        finetune_learning_rate=1e-3,
        callbacks=list(callbacks),
        verbose=0,
    )
    return [w.numpy() for w in model.weights]


def save(path, weights):
    np.savez(path, *weights)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", choices=("mirrored", "multi_worker", "backup", "upstream")
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="run")
    parser.add_argument("--backup", action="store_true")
    parser.add_argument("--kill-epoch", type=int)
    parser.add_argument("--kill-batch", type=int, default=0)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--loss-weighting", default="static")
    parser.add_argument("--tabular", action="store_true")
    args = parser.parse_args(argv)
    prefix = os.path.join(args.out, args.name)

    if args.mode == "upstream":
        return fit_with_plain_multi_worker_strategy(prefix + ".error.txt")
    if args.mode == "mirrored":
        use_logical_cpus(2)
    import mtk.distribute

    callbacks = [epoch_logger(prefix + ".epochs.jsonl")]
    if args.mode == "mirrored":
        strategy = mtk.distribute.get_strategy(
            "mirrored", devices=["/cpu:0", "/cpu:1"]
        )
    elif args.mode == "multi_worker":
        strategy = mtk.distribute.get_strategy("multi_worker")
    else:
        strategy = None
    if args.backup:
        callbacks.append(
            mtk.distribute.BackupAndRestore(os.path.join(args.out, "backup"))
        )
    if args.kill_epoch is not None:
        callbacks.append(killer(args.kill_epoch, args.kill_batch))

    model = build(strategy, args.loss_weighting, args.tabular)
    save(prefix + ".init.npz", [w.numpy() for w in model.weights])
    save(prefix + ".npz", train(model, callbacks, args.tabular))
    if args.mode == "mirrored":
        fit_string_model(strategy, prefix + ".text.json")
    if args.reference:
        save(prefix + ".single.npz", train(
            build(loss_weighting=args.loss_weighting, tabular=args.tabular),
            tabular=args.tabular))
    return 0


if __name__ == "__main__":
    sys.exit(main())
