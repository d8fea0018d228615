"""Tune the loss weights of a two-task MultiFashion model with KerasTuner, offline.

MultiFashion puts two Fashion-MNIST items on one 36x36 canvas, overlapping;
the heads ``left`` and ``right`` name the class of each. The dataset is built
by `mtk.data` from the local Fashion-MNIST files (no download) into the TFDS
``--data-dir``.

A small CNN trunk, shared by both heads, is trained from scratch in every
trial. (With a frozen trunk and Adam the weights would change nothing: each
head's parameters only see their own loss, and Adam undoes a constant scale
of a gradient. To tune on a pretrained trunk, give ``--finetune-epochs``.)
`mtk.tuning.tune_loss_weights` searches one weight per head against
``val_multitask_score`` (each head's validation accuracy as skill over chance,
averaged; it does not change when all weights are scaled), on a validation
split carved from the training images. Trials are stored in
``--output-dir/lw``; running the script again resumes the search and only runs
the trials still missing (``--trials 8`` adds four; ``--overwrite`` restarts).

It prints the trials table, the best weights and the best model's accuracy on
the test split.

    python recipes/tune_loss_weights.py                 # ~2-4 min on 2 cores
    python recipes/tune_loss_weights.py --tuner bayesian --trials 10
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import mtk  # noqa: E402
from mtk import tuning  # noqa: E402
from mtk.data import from_tfds  # noqa: E402
from mtk.data import multi_fashion_heads  # noqa: E402
from mtk.data.multi_fashion import TASKS  # noqa: E402


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--output-dir", default="runs/tune_loss_weights",
                        help="KerasTuner keeps the trials in OUTPUT_DIR/lw")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data_dir; None: TFDS's default")
    parser.add_argument("--config", default="small", choices=("small", "paper"),
                        help="MultiFashion size: small (12k) or paper (120k)")
    parser.add_argument("--train-examples", type=int, default=3000,
                        help="training images, from the train split")
    parser.add_argument("--val-examples", type=int, default=1000,
                        help="validation images (the next ones of the train "
                             "split) on which trials are scored")
    parser.add_argument("--tuner", default="random",
                        choices=sorted(tuning.TUNERS), help="KerasTuner tuner")
    parser.add_argument("--trials", type=int, default=4,
                        help="trials (random, bayesian)")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per trial (Hyperband: max epochs)")
    parser.add_argument("--finetune-epochs", type=int, default=0,
                        help="fine-tuning epochs after --epochs (0: none)")
    parser.add_argument("--weight-range", type=float, nargs=2,
                        default=(0.05, 20.0), metavar=("MIN", "MAX"),
                        help="range of each loss weight (log-uniform)")
    parser.add_argument("--pinned-head", default="left",
                        help="head whose weight stays 1.0 ('' for none): "
                             "with Adam only the ratio of weights matters")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="examples per batch")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of initialisation, shuffling and tuner")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the search afresh instead of resuming")
    parser.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2),
                        help="Keras fit verbosity")
    args = parser.parse_args(argv)
    for name in ("train_examples", "val_examples", "trials", "epochs",
                 "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def cnn_trunk():
    inputs = keras.Input((36, 36, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, x, name="cnn")


def main(argv=None):
    args = parse_args(argv)
    tfds.disable_progress_bar()
    name = f"multi_fashion/{args.config}"
    n_train, n_val = args.train_examples, args.val_examples
    common = dict(tasks=TASKS, heads=multi_fashion_heads(), data_dir=args.data_dir,
                  batch_size=args.batch_size, seed=args.seed)
    train_ds = from_tfds(name, split=f"train[:{n_train}]", shuffle=True,
                         cache=True, **common)
    val_ds = from_tfds(name, split=f"train[{n_train}:{n_train + n_val}]",
                       cache=True, **common)
    test_ds = from_tfds(name, split="test", **common)

    def make_model():
        keras.utils.set_random_seed(args.seed)
        return mtk.build_multitask_model(
            cnn_trunk(), heads=multi_fashion_heads(), trunk_weights=None,
            freeze_trunk=args.finetune_epochs > 0, compile=False,
        )

    print(f"Tuning the loss weights of heads {list(TASKS)}: {args.tuner}, "
          f"{args.trials} trials x {args.epochs} epochs on {n_train} "
          f"{name} images, scored on {n_val} others", flush=True)
    tuner = tuning.tune_loss_weights(
        make_model, train_ds, validation_data=val_ds, tuner=args.tuner,
        max_trials=args.trials, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        weight_range=tuple(args.weight_range), seed=args.seed,
        pinned_head=args.pinned_head or None, directory=args.output_dir, project_name="lw",
        overwrite=args.overwrite, verbose=args.verbose,
    )
    if args.verbose == 0:
        tuner.trials_table()  # tune_loss_weights prints it when verbose.
    weights = tuner.best_loss_weights()
    print("\nbest loss weights:",
          ", ".join(f"{k}={v:.3g}" for k, v in sorted(weights.items())))
    model = tuner.best_model()
    result = model.evaluate(test_ds, return_dict=True, verbose=0)
    print("best model on the test split: "
          + ", ".join(f"{head} accuracy {result[head + '_accuracy']:.4f}"
                      for head in TASKS))
    return tuner


if __name__ == "__main__":
    main()
