"""Is the input pipeline what a training step waits on?

Trains one small two-head model on MultiFashion for N steps, fed

  (a)  by `mtk.data.from_tfds` with its defaults (``cache="auto"``: a split
       this small is cached decoded in memory), once its first epoch has
       filled the cache (what later epochs see),
  (a') by `mtk.data.from_tfds(..., cache=False)` reading the prepared TFDS
       records (read, parse, PNG-decode, shuffle, batch, prefetch on every
       step: the worst case, e.g. a split too large to cache), and
  (b)  by the very same examples already in memory
       (`tf.data.Dataset.from_tensor_slices(...).batch().cache()`),

and prints the step times, their ratio to (b) (target <= 1.05) and the
examples per second each pipeline delivers on its own.

The dataset is built once from the local Fashion-MNIST files (Debian's
`dataset-fashion-mnist`, the Keras cache or --fashion-dir) into a temporary
TFDS data_dir (or --data-dir, reused when already prepared). No network.

    python benchmarks/input_pipeline.py              # ~1-2 minutes on 2 cores
    python benchmarks/input_pipeline.py --steps 500 --batch-size 256
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import mtk  # noqa: E402
from mtk.data import from_tfds  # noqa: E402
from mtk.data import multi_fashion_heads  # noqa: E402
from mtk.data.multi_fashion import TASKS  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=60,
        help="timed training steps per run (default 60)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="untimed steps at the start of each run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating (a)/(b) runs, to even out noise",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--config",
        default="small",
        help="multi_fashion config: small (12k) or paper (120k)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data_dir (default: a temporary directory)",
    )
    parser.add_argument(
        "--fashion-dir",
        default=None,
        help="directory holding the Fashion-MNIST .gz files",
    )
    return parser.parse_args()


def small_cnn():
    """The trunk: a small CNN, a realistic CPU step for 36x36 images."""
    inputs = keras.Input((36, 36, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(
            x
        )
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step (end to end, data wait included)."""

    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def step_times(self, skip):
        return np.diff(self.ends)[skip:]


def timed_fit(model, dataset, steps, warmup):
    timer = StepTimer()
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=warmup + steps,
        callbacks=[timer],
        shuffle=False,
        verbose=0,
    )
    return timer.step_times(warmup)


def pipeline_rate(dataset, batches, batch_size):
    iterator = iter(dataset)
    next(iterator)  # Start-up (file opening, shuffle buffer) is not counted.
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    args = parse_args()
    tfds.disable_progress_bar()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="mtk_bench_")
    name = f"multi_fashion/{args.config}"
    heads = multi_fashion_heads()
    prepare = {}
    if args.fashion_dir:
        prepare["download_config"] = tfds.download.DownloadConfig(
            manual_dir=args.fashion_dir
        )
    common = dict(
        heads=heads,
        tasks=TASKS,
        data_dir=data_dir,
        download_and_prepare_kwargs=prepare,
    )

    start = time.perf_counter()
    train = dict(
        split="train",
        shuffle=True,
        seed=0,
        batch_size=args.batch_size,
        drop_remainder=True,
        **common,
    )
    # (a) the defaults; timed once the first epoch filled the cache.
    cached, info = from_tfds(name, with_info=True, **train)
    print(f"prepared {name} in {data_dir} ({time.perf_counter() - start:.1f}s)")
    for _ in cached:
        pass
    # (a') reads and decodes the TFDS records on every step: no cache of
    # ours, and TFDS's own in-memory cache of small datasets switched off.
    records = from_tfds(
        name,
        read_config=tfds.ReadConfig(try_autocache=False, shuffle_seed=0),
        cache=False,
        **train,
    )
    # (b) the same examples, already in memory.
    x, y = next(
        iter(
            tfds.as_numpy(
                from_tfds(
                    name,
                    split="train",
                    batch_size=info.splits["train"].num_examples,
                    **common,
                )
            )
        )
    )
    memory = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(args.batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    feeds = {
        "(a) from_tfds defaults (cache='auto'), warm": cached.repeat(),
        "(a') from_tfds(cache=False), records decoded each step": records.repeat(),
        "(b) same tensors in memory": memory,
    }

    model = mtk.build_multitask_model(
        small_cnn(), heads=heads, freeze_trunk=False
    )
    # Trace the train step once, outside the timed runs.
    model.fit(memory, epochs=1, steps_per_epoch=5, shuffle=False, verbose=0)
    times = {label: [] for label in feeds}
    # (a) and (b) alternate; the decoding feed runs after them, so its
    # background decoding threads cannot slow the feeds being compared.
    worst_case = [label for label in feeds if label.startswith("(a')")]
    for labels in ([l for l in feeds if l not in worst_case], worst_case):
        for _ in range(args.rounds):
            for label in labels:
                times[label].extend(
                    timed_fit(model, feeds[label], args.steps, args.warmup)
                )

    print(
        f"\n{len(x)} examples of {name}, batch {args.batch_size}, "
        f"{args.rounds} x {args.steps} timed steps per feed, "
        f"{os.cpu_count()} CPUs\n"
    )
    memory_times = times["(b) same tensors in memory"]
    rows = []
    for label, feed in feeds.items():
        mean = statistics.fmean(times[label])
        median = statistics.median(times[label])
        rows.append({
            "feed": label,
            "mean step ms": f"{1e3 * mean:.2f}",
            "median step ms": f"{1e3 * median:.2f}",
            "ratio of means": f"{mean / statistics.fmean(memory_times):.3f}",
            "ratio of medians": f"{median / statistics.median(memory_times):.3f}",
            "pipeline alone ex/s":
                f"{pipeline_rate(feed, args.steps, args.batch_size):,.0f}",
        })
    print(format_table(rows))
    print("\nratios are to (b); target <= 1.05")


if __name__ == "__main__":
    main()
