"""Tabular multi-task learning: click, conversion and spend from one table.

What it shows, offline, in about a minute on 2 CPU cores:

1. Data. A synthetic impressions log of known structure
   (`mtk.data.clicks.click_table`: age, country, device, a 1,000-value
   city id; click, conversion, spend), or your own CSV files with the same
   columns (``--csv``). The table is written to CSV files and streamed
   back with `mtk.data.from_csv` (``--in-memory`` reads it with
   `mtk.data.from_dataframe` instead: the same batches).
2. Tasks as an ESMM-style recommender needs them: ``click`` on every row,
   ``conversion`` counting only on clicked rows (a per-head sample weight
   from the ``clicked`` column), ``spend`` where known (empty cells are
   missing labels).
3. One model: a `keras.utils.FeatureSpace` (normalised age, one-hot
   country, hashed device, country x device cross, embedded city id) inside
   a tabular trunk, shared by the heads through MMoE (``--sharing``).
4. Outputs in ``--output-dir``: per-head metrics on a held-out split,
   plots, ``model.keras`` and a TF Serving SavedModel that takes raw feature
   values, one named input per column (a request row reads
   ``{"age": 41, "country": "DE", "device": "ios", "city_id": 7}``).

    python recipes/tabular_multitask.py --help
"""

import argparse
import glob
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import Progress  # noqa: E402
from common import require_at_least  # noqa: E402
from common import save_outputs  # noqa: E402

import mtk  # noqa: E402
import mtk.evaluation  # noqa: E402
from mtk.data import clicks  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", default="runs/tabular_multitask")
    parser.add_argument(
        "--csv", default=None,
        help="CSV file or glob with click_table's columns (default: the "
             "synthetic table, written to --output-dir/csv)")
    parser.add_argument("--rows", type=int, default=20000,
                        help="rows of the synthetic table")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--in-memory", action="store_true",
                        help="read the table with from_dataframe, not from_csv")
    parser.add_argument("--sharing", default="mmoe",
                        choices=("hard", "mmoe", "cgc", "ple"))
    parser.add_argument("--hidden-units", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    require_at_least(parser, args, 1, ("rows", "epochs", "batch_size"))
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be in (0, 1)")
    return args


def load_table(args, out):
    """The table, and the CSV files that hold it (train and test parts)."""
    import pandas as pd

    if args.csv:
        files = sorted(glob.glob(args.csv))
        if not files:
            raise FileNotFoundError(f"--csv {args.csv!r} matches no file.")
        df = pd.concat([pd.read_csv(f, keep_default_na=False, na_values=[""])
                        for f in files], ignore_index=True)
    else:
        df = clicks.click_table(args.rows, seed=args.seed)
    split = int(round(len(df) * (1 - args.test_fraction)))
    train, test = df.iloc[:split], df.iloc[split:]
    csv_dir = out / "csv"
    csv_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in (("train", train), ("test", test)):
        paths[name] = str(csv_dir / f"{name}.csv")
        part.to_csv(paths[name], index=False)
    return train, test, paths


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    out = pathlib.Path(args.output_dir)
    progress = Progress(4)

    progress("Reading the table" + ("" if args.csv else
             f" (synthetic click log, {args.rows} rows, known structure)"))
    train_df, test_df, paths = load_table(args, out)
    space = clicks.click_feature_space(train_df)

    progress(f"Building a tabular trunk ({args.hidden_units}) with "
             f"sharing={args.sharing!r}")
    model = mtk.build_multitask_model(
        mtk.trunks.tabular(space, hidden_units=tuple(args.hidden_units)),
        clicks.click_heads(), sharing=args.sharing,
        learning_rate=args.learning_rate)
    common = dict(features=space, tasks=clicks.CLICK_TASKS, heads=model,
                  batch_size=args.batch_size)

    def pipeline(name, frame, **kwargs):
        if args.in_memory:
            return mtk.data.from_dataframe(frame, **common, **kwargs)
        return mtk.data.from_csv(paths[name], **common, **kwargs)

    train = pipeline("train", train_df, sample_weights=clicks.CLICK_WEIGHTS,
                     shuffle=True, seed=args.seed)
    test = pipeline("test", test_df)

    progress(f"Training {args.epochs} epochs on {len(train_df)} rows "
             f"({'in memory' if args.in_memory else 'streamed from CSV'})")
    mtk.check_training_data(model, train)
    history = model.fit(train, epochs=args.epochs, verbose=args.verbose)

    progress(f"Evaluating on {len(test_df)} held-out rows; writing outputs to {out}")
    report = mtk.evaluation.write_report(model, test, out, history=history)
    print("\n" + mtk.evaluation.format_reports({"test": report["metrics"]}) + "\n")
    results = {
        "data": args.csv or f"mtk.data.clicks.click_table({args.rows}, "
                            f"seed={args.seed})",
        "train_rows": len(train_df), "test_rows": len(test_df),
        "click_rate": float(np.mean(train_df["clicked"])),
        "sharing": args.sharing,
    }
    return save_outputs(model, out, report, results, progress=progress)


if __name__ == "__main__":
    main()
