"""Is streaming CSV files what a tabular training step waits on?

Trains multi-task models on a tabular trunk (`mtk.trunks.tabular` over a
FeatureSpace: normalised, one-hot, hashed, crossed and embedded columns;
heads click / conversion / spend; a small and a larger trunk, ``--models``)
for N steps, fed

  (a)  by `mtk.data.from_csv` streaming the table from CSV files (read
       lines in blocks, parse a batch at a time with `tf.io.decode_csv`,
       label and weight columns, shuffle, prefetch on every step),
  (a') by `mtk.data.from_dataframe` over the table in memory (the same
       batch function on every step), and
  (b)  by the very same batches already in memory (the cached output of
       (a')),

and prints each feed's step time and its ratio to (b) as mean ± std over
rounds (the feeds alternate within each round; target for (a) <= 1.05, as
`benchmarks/input_pipeline.py` holds `from_tfds` to), plus the examples per
second each pipeline delivers on its own. The table is the synthetic
click log `mtk.data.clicks.click_table`. No network.

    python benchmarks/tabular_pipeline.py              # ~30 s on 2 cores
    python benchmarks/tabular_pipeline.py --rows 200000 --batch-size 1024
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
from mtk.data import clicks  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402
from mtk.evaluation import mean_std  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from input_pipeline import pipeline_rate  # noqa: E402
from input_pipeline import timed_fit  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "tabular_pipeline.txt"


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--rows", type=int, default=50000,
                        help="rows of the synthetic table (default 50000)")
    parser.add_argument("--files", type=int, default=4,
                        help="CSV files the table is split into")
    parser.add_argument("--steps", type=int, default=60,
                        help="timed training steps per run (default 60)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds; each runs every feed once")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--models", nargs="+", default=["64,32", "512,256"],
        help="the tabular trunks' hidden units, one model per entry "
             "(default: 64,32 and 512,256: a small and a larger step)")
    parser.add_argument("--output", default=str(RESULTS),
                        help="file the table is written to ('' for none)")
    return parser.parse_args()


def main():
    args = parse_args()
    keras.utils.set_random_seed(0)
    df = clicks.click_table(args.rows, seed=0)
    csv_dir = tempfile.mkdtemp(prefix="mtk_tabular_bench_")
    for i, part in enumerate(np.array_split(np.arange(len(df)), args.files)):
        df.iloc[part].to_csv(os.path.join(csv_dir, f"part-{i}.csv"), index=False)
    space = clicks.click_feature_space(df)
    heads = clicks.click_heads()
    common = dict(features=space, tasks=clicks.CLICK_TASKS, heads=heads,
                  sample_weights=clicks.CLICK_WEIGHTS,
                  batch_size=args.batch_size, shuffle=True, seed=0)
    streamed = mtk.data.from_csv(os.path.join(csv_dir, "part-*.csv"),
                                 num_parallel_reads=2, **common)
    table = mtk.data.from_dataframe(df, **common)
    memory = mtk.data.from_dataframe(df, **{**common, "shuffle": False}).cache()
    for _ in memory:  # fill the cache: (b) is batches already in memory
        pass
    feeds = {
        "(a) from_csv, streamed from CSV files": streamed.repeat(),
        "(a') from_dataframe, table in memory": table.repeat(),
        "(b) same batches in memory (cached)": memory.repeat(),
    }
    baseline = "(b) same batches in memory (cached)"
    models = {}
    for units in args.models:
        hidden = tuple(int(u) for u in units.split(","))
        model = mtk.build_multitask_model(
            mtk.trunks.tabular(space, hidden_units=hidden),
            clicks.click_heads())
        # Trace the train step once, outside the timed runs.
        model.fit(feeds[baseline], epochs=1, steps_per_epoch=5, shuffle=False,
                  verbose=0)
        models[units] = model
    means = {(units, label): [] for units in models for label in feeds}
    for _ in range(args.rounds):
        for units, model in models.items():
            for label, feed in feeds.items():
                means[units, label].append(float(np.mean(
                    timed_fit(model, feed, args.steps, args.warmup))))

    rows, verdicts = [], []
    rates = {label: pipeline_rate(feed, args.steps, args.batch_size)
             for label, feed in feeds.items()}
    for units in models:
        base = np.asarray(means[units, baseline])
        for label in feeds:
            ratios = np.asarray(means[units, label]) / base
            rows.append({
                "trunk hidden units": units,
                "feed": label,
                "step ms (mean ± std over rounds)": mean_std(
                    1e3 * np.asarray(means[units, label]), ".2f"),
                "ratio to (b)": mean_std(ratios, ".3f"),
                "median ratio": f"{statistics.median(ratios):.3f}",
                "pipeline alone ex/s": f"{rates[label]:,.0f}",
            })
        ratio = float(np.mean(np.asarray(means[units, list(feeds)[0]]) / base))
        verdicts.append(
            f"hidden units {units}: (a) / (b) = {ratio:.3f}, target <= 1.05 "
            + ("met." if ratio <= 1.05 else "NOT met.")
        )
    header = (
        f"{args.rows} rows in {args.files} CSV files, batch {args.batch_size}, "
        f"{args.rounds} rounds x {args.steps} timed steps per feed and model, "
        f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}"
    )
    text = f"{header}\n\n{format_table(rows)}\n\n" + "\n".join(verdicts) + "\n"
    print("\n" + text)
    if args.output:
        pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.output).write_text(text)
        print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
