"""Domain adaptation: labelled source images, unlabelled target images, offline.

What it shows, in a couple of minutes on 2 CPU cores:

1. The shift. Source: labelled Fashion-MNIST. Target: other Fashion-MNIST
   images re-rendered on random colour textures, as MNIST-M re-renders MNIST
   (`mtk.data.fashion_mnist_m`); their labels are not used for training.
   Two heads: ``item`` (10 classes) and ``is_footwear``.
2. Source-only: the DANN paper's small CNN (`mtk.data.dann_cnn`) trained on
   the source alone, evaluated on both domains: the gap to close.
3. Adapted: the same network and schedule with ``--method`` (``coral``,
   ``mmd`` or ``dann``, `mtk.adaptation`) on a stream of source and
   unlabelled target examples (`mtk.data.with_domain` + `mtk.data.mix`).
   ``--target-labels`` labelled target images are the validation data:
   the only target labels a real project would have, used to watch, not to
   train.

How to tell that it works: the target metrics on those few labels
(``val_item_accuracy``) rise above source-only's while the source metrics
hold; for DANN, the domain classifier's accuracy (``domain_accuracy``)
sinks towards chance (0.5), since the shared features no longer tell the
domains apart. A falling ``coral_loss`` / ``mmd_loss`` only says that the
features were aligned, not that the heads got better: check the target
metrics.

It prints a table of both models on the target and source test images and
writes ``results.json``, the plots, the adapted ``model.keras`` (domain head
included) and a TF Serving SavedModel (task heads only) to
``--output-dir``.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import Progress  # noqa: E402
from common import require_at_least  # noqa: E402
from common import save_outputs  # noqa: E402

import mtk  # noqa: E402
import mtk.evaluation  # noqa: E402

METHODS = {
    "coral": lambda args: mtk.adaptation.CORAL(weight=args.weight or 100.0),
    "mmd": lambda args: mtk.adaptation.MMD(weight=args.weight or 1.0),
    "dann": lambda args: mtk.adaptation.DANN(weight=args.weight or 1.0),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", default="runs/domain_adaptation")
    parser.add_argument("--data-dir", default=None,
                        help="directory with the Fashion-MNIST .gz files "
                        "(searched first)")
    parser.add_argument("--method", default="coral", choices=sorted(METHODS))
    parser.add_argument("--weight", type=float, default=None,
                        help="the method's loss weight (default: coral 100, "
                        "mmd 1, dann 1)")
    parser.add_argument("--source-size", type=int, default=3000)
    parser.add_argument("--target-size", type=int, default=3000)
    parser.add_argument("--target-labels", type=int, default=200,
                        help="labelled target images for validation only")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="examples per domain and step")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    require_at_least(parser, args, 1, ("source_size", "target_size",
                                       "target_labels", "test_size", "epochs",
                                       "batch_size"))
    if args.weight is not None and args.weight < 0:
        parser.error("--weight must be >= 0")
    return args


def heads():
    return [mtk.heads.Classification(
                "item", num_classes=10,
                class_names=list(mtk.data.FASHION_MNIST_CLASS_NAMES)),
            mtk.heads.Binary("is_footwear")]


def examples(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))


def build(adaptation, args):
    keras.utils.set_random_seed(args.seed)
    return mtk.build_multitask_model(
        mtk.data.dann_cnn(), heads=heads(), trunk_weights=None,
        freeze_trunk=False, adaptation=adaptation,
        learning_rate=args.learning_rate)


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(4)

    progress("Loading Fashion-MNIST and rendering the target domain")
    splits = mtk.data.load_fashion_shift(
        args.source_size, args.target_size + args.target_labels,
        args.test_size, seed=args.seed, data_dir=args.data_dir)
    x_target, y_target = splits["target"]
    unlabelled = x_target[:args.target_size]
    few = (x_target[args.target_size:],
           {k: v[args.target_size:] for k, v in y_target.items()})
    source = examples(*splits["source"]).shuffle(10_000, seed=args.seed)
    steps = max(1, args.source_size // args.batch_size)
    test = {split: examples(*splits[split]).batch(256)
            for split in ("target_test", "source_test")}

    progress(f"Source-only: {args.epochs} epochs of {steps} steps on the "
             "source images")
    baseline = build(None, args)
    baseline.fit(source.repeat().batch(args.batch_size), epochs=args.epochs,
                 steps_per_epoch=steps, verbose=args.verbose)

    progress(f"Adapted ({args.method}): the same schedule on source + "
             f"unlabelled target images; {args.target_labels} labelled "
             "target images for validation")
    model = build(METHODS[args.method](args), args)
    stream = mtk.data.mix(
        [mtk.data.with_domain(source.repeat(), 0),
         mtk.data.with_domain(tf.data.Dataset.from_tensor_slices(unlabelled)
                              .shuffle(10_000, seed=args.seed).repeat(), 1)],
        heads=model, seed=args.seed).batch(2 * args.batch_size)
    # With domain labels, validation logs the domain head / alignment too.
    validation = mtk.data.with_domain(examples(*few), 1).batch(256)
    history = model.fit(stream, validation_data=validation, epochs=args.epochs,
                        steps_per_epoch=steps, verbose=args.verbose)

    progress("Evaluating both models on the test images of both domains")
    reports = {}
    for name, net in (("source-only", baseline), (args.method, model)):
        for split, ds in test.items():
            reports[f"{name}, {split.replace('_test', '')}"] = (
                mtk.evaluation.evaluate_heads(net, ds))
    table = mtk.evaluation.format_reports(reports)
    logs = history.history
    watch = {key: [round(v, 4) for v in logs[key]] for key in logs
             if key.startswith(("domain_", "coral_", "mmd_"))
             or key == "val_item_accuracy"}
    print("\n" + table + "\n")
    for key, values in watch.items():
        print(f"{key} by epoch: {values}")
    report = mtk.evaluation.write_report(model, test["target_test"], out,
                                         history=history)
    save_outputs(model, out, report, {
        "method": args.method, "table": reports, "watch": watch,
        "args": vars(args)}, progress=progress)
    return {"reports": reports, "watch": watch}


if __name__ == "__main__":
    main()
