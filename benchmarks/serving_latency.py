"""Does one K-head SavedModel answer a request faster than K single-head ones?

Exports, with `mtk.export.export_saved_model`,

  (a) one model: a trunk shared by K classification heads, and
  (b) K models: the same trunk architecture with one of those heads each,

loads them with `tf.saved_model.load` (as a server would) and times the
``serving_default`` signature answering the same request: (a) once, (b) once
per model, in turn. Prints the median latency per request at each batch size
and the ratio (a)/(b); the goal is <= 1.2/K (sharing the trunk should make
the K answers cost about one model's worth).

Trunks are randomly initialised (no download); latency does not depend on the
weights' values. Rounds alternate (a) and (b) to even out background load.

    python benchmarks/serving_latency.py              # ~2-4 minutes on 2 cores
    python benchmarks/serving_latency.py --heads 8 --image-size 224 --requests 50
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402
from mtk.export import export_saved_model  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--heads",
        type=int,
        default=4,
        help="K: number of heads / single-head models (default 4)",
    )
    parser.add_argument(
        "--trunk",
        default="mobilenet_v3_small",
        help="keras.applications trunk name (mtk.trunks.APPLICATIONS)",
    )
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--requests",
        type=int,
        default=20,
        help="timed requests per model and round (default 20)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating (a)/(b) rounds (default 3)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed requests per model and batch size",
    )
    parser.add_argument(
        "--export-dir",
        default=None,
        help="where to write the SavedModels (default: a temporary directory)",
    )
    return parser.parse_args()


def build(trunk, image_size, heads):
    return mtk.build_multitask_model(
        trunk,
        input_shape=(image_size, image_size, 3),
        trunk_weights=None,
        heads=heads,
        compile=False,
    )


def export_models(args, export_dir):
    """Returns the serving signatures of (a) and of each model of (b)."""
    names = [f"task_{i}" for i in range(args.heads)]
    multi = build(
        args.trunk,
        args.image_size,
        [mtk.heads.Classification(name, num_classes=10) for name in names],
    )
    multi_path = export_saved_model(multi, os.path.join(export_dir, "multi"))
    single_paths = []
    for name in names:
        single = build(
            args.trunk,
            args.image_size,
            [mtk.heads.Classification(name, num_classes=10)],
        )
        single_paths.append(
            export_saved_model(single, os.path.join(export_dir, name))
        )

    def load(path):
        return tf.saved_model.load(path).signatures["serving_default"]

    return load(multi_path), [load(path) for path in single_paths]


def median_latency(signatures, images, requests):
    """Median seconds for one request answered by every signature in turn."""
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        for signature in signatures:
            outputs = signature(image=images)
            # Signatures run eagerly; .numpy() waits for the result.
            next(iter(outputs.values())).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    args = parse_args()
    if args.heads < 2:
        raise SystemExit("--heads must be at least 2.")
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export_dir or tmp
        print(
            f"Exporting 1 model with {args.heads} heads and {args.heads} "
            f"single-head models ({args.trunk}, {args.image_size}x"
            f"{args.image_size}) to {export_dir} ..."
        )
        multi, singles = export_models(args, export_dir)

        rng = np.random.default_rng(0)
        rows = []
        for batch_size in args.batch_sizes:
            images = tf.constant(
                rng.uniform(
                    0, 255, (batch_size, args.image_size, args.image_size, 3)
                ).astype("float32")
            )
            for signature in [multi] + singles:
                for _ in range(args.warmup):
                    signature(image=images)
            multi_times, single_times = [], []
            for _ in range(args.rounds):
                multi_times.append(
                    median_latency([multi], images, args.requests)
                )
                single_times.append(
                    median_latency(singles, images, args.requests)
                )
            rows.append(
                (
                    batch_size,
                    statistics.median(multi_times),
                    statistics.median(single_times),
                )
            )

    goal = 1.2 / args.heads
    print()
    table = []
    for batch_size, multi_time, single_time in rows:
        ratio = multi_time / single_time
        table.append({
            "batch": batch_size,
            "(a) 1 model, K heads": f"{multi_time * 1e3:.2f} ms",
            "(b) K models, 1 head": f"{single_time * 1e3:.2f} ms",
            "ratio": f"{ratio:.3f}",
            "goal met": "yes" if ratio <= goal else "no",
        })
    print(format_table(
        table, title=f"K = {args.heads}; goal: ratio (a)/(b) <= 1.2/K = {goal:.3f}"
    ))


if __name__ == "__main__":
    main()
