"""Face attributes and landmarks from one model: CelebA on an ImageNet trunk.

Two heads on one keras.applications trunk (``--trunk``, ImageNet weights):

- ``attributes``: the 40 binary CelebA attributes (`mtk.heads.MultiLabel`,
  names in TFDS's sorted order: ``5_o_Clock_Shadow`` ... ``Young``);
- ``landmarks``: the 5 facial landmarks (eyes, nose, mouth corners) as 10
  coordinates (`mtk.heads.Regression`), divided by the image width/height so
  they stay valid after resizing (0..1).

The data comes from TFDS ``celeb_a`` (train / validation / test splits),
which needs the network (or a prepared ``--tfds-dir``). The model is trained
frozen, then fine-tuned (`mtk.fit_transfer`); the output directory gets
``results.json``, ``history.png``, ``model.keras`` and a TF Serving
SavedModel in ``saved_model/1``.

``--smoke`` runs the same code on `tfds.testing.mock_data` (random images and
labels) with a randomly initialised trunk, offline, in seconds. It proves the
wiring only: its metrics are meaningless, and it says so.

    python recipes/face_attributes.py --smoke          # offline wiring check
    python recipes/face_attributes.py --trunk efficientnet_b0 --image-size 160
"""

import argparse
import contextlib
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
from mtk.data import from_tfds  # noqa: E402

LANDMARKS = (
    "lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y",
)
# CelebA's aligned images are 178 wide, 218 high.
CELEB_A_WIDTH, CELEB_A_HEIGHT = 178.0, 218.0
SMOKE_BANNER = """\
############################################################################
# SMOKE TEST: tfds.testing.mock_data (random images and labels), random    #
# trunk weights. This proves the wiring only (data -> model -> training -> #
# evaluation -> export). The metrics below are MEANINGLESS.                #
############################################################################"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--smoke", action="store_true",
                        help="run on TFDS mock data with a random trunk (offline)")
    parser.add_argument("--output-dir", default="runs/face_attributes")
    parser.add_argument("--tfds-dir", default=None,
                        help="TFDS data directory (TFDS's default when unset)")
    parser.add_argument("--trunk", default=None,
                        help="keras.applications trunk (default: efficientnet_b0; "
                        "mobilenet_v3_small with --smoke)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square image size (default: 160; 64 with --smoke)")
    parser.add_argument("--train-split", default="train",
                        help='TFDS split to train on, e.g. "train[:10%%]"')
    parser.add_argument("--mock-examples", type=int, default=64,
                        help="--smoke: examples per mock split")
    common.add_schedule_arguments(parser, frozen_epochs=2, finetune_epochs=3,
                                  batch_size=32, learning_rate=1e-3,
                                  finetune_learning_rate=1e-5)
    parser.add_argument("--unfreeze", default="top:20",
                        help='what fine-tuning unfreezes: "all", "top:N", "from:<layer>"')
    args = parser.parse_args(argv)
    if args.trunk is None:
        args.trunk = "mobilenet_v3_small" if args.smoke else "efficientnet_b0"
    if args.image_size is None:
        args.image_size = 64 if args.smoke else 160
    common.require_at_least(parser, args, 1, ("image_size", "batch_size", "mock_examples"))
    common.require_at_least(parser, args, 0, ("frozen_epochs", "finetune_epochs"))
    return args


def landmarks(example):
    """The 10 landmark coordinates, divided by the image width / height."""
    return tf.stack([
        tf.cast(example["landmarks"][key], tf.float32)
        / (CELEB_A_WIDTH if key.endswith("_x") else CELEB_A_HEIGHT)
        for key in LANDMARKS
    ])


def make_heads(attribute_names):
    return [
        mtk.heads.MultiLabel("attributes", num_labels=len(attribute_names),
                             label_names=attribute_names),
        mtk.heads.Regression("landmarks", units=len(LANDMARKS)),
    ]


def pipelines(args, heads):
    kwargs = {
        "tasks": {"attributes": "attributes", "landmarks": landmarks},
        "heads": heads, "data_dir": args.tfds_dir,
        "image_size": args.image_size, "batch_size": args.batch_size,
    }
    train = from_tfds("celeb_a", args.train_split, shuffle=True, seed=args.seed, **kwargs)
    validation = from_tfds("celeb_a", "validation", **kwargs)
    test = from_tfds("celeb_a", "test", **kwargs)
    # keras.applications trunks take float pixels 0-255.
    return [ds.map(lambda x, y: (tf.cast(x, "float32"), y))
            for ds in (train, validation, test)]


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    progress = common.Progress(4)
    if args.smoke:
        print(SMOKE_BANNER, flush=True)
    mock = (tfds.testing.mock_data(num_examples=args.mock_examples)
            if args.smoke else contextlib.nullcontext())
    with mock:
        progress("Loading CelebA with TFDS" + (" (MOCK DATA)" if args.smoke else
                                                " (downloads when needed)"))
        attribute_names = sorted(tfds.builder(
            "celeb_a", data_dir=args.tfds_dir).info.features["attributes"].keys())
        heads = make_heads(attribute_names)
        train, validation, test = pipelines(args, heads)

        progress(f"Building the model: {args.trunk} trunk "
                 f"({'random init' if args.smoke else 'ImageNet weights'}), "
                 f"{args.image_size}x{args.image_size} images, heads attributes "
                 "(40 labels) + landmarks (10 values)")
        model = mtk.build_multitask_model(
            args.trunk, heads=heads,
            input_shape=(args.image_size, args.image_size, 3),
            trunk_weights=None if args.smoke else "imagenet",
            learning_rate=args.learning_rate)

        report, train_seconds = common.train_and_report(
            model, train, test, args, out, progress, validation=validation)
        warmup = next(iter(test))[0][:4].numpy()
    results = common.save_outputs(
        model, out, report,
        {"smoke": args.smoke, "train_seconds": train_seconds,
         "attribute_names": attribute_names, "landmarks": list(LANDMARKS),
         "settings": vars(args)},
        warmup_inputs=warmup, progress=progress)
    if args.smoke:
        print(SMOKE_BANNER)
    return results


if __name__ == "__main__":
    main()
