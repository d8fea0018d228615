"""Tabular multi-task learning: click, conversion and spend from one table.

What it shows, offline, in about a minute on 2 CPU cores:

1. Data. A synthetic impressions log of known structure
   (`mtk.data.clicks.click_table`: age, country, device, a 1,000-value
   city id; click, conversion, spend), or your own CSV files with the same
   columns (``--csv``, ``--test-csv``). The synthetic table is split and
   written to CSV files; files are streamed with `mtk.data.from_csv`
   (``--in-memory`` reads them with pandas and `mtk.data.from_dataframe`
   instead: the same batches).
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
        help="training CSV file or glob with click_table's columns (default: "
             "the synthetic table, split and written to --output-dir/csv)")
    parser.add_argument("--test-csv", default=None,
                        help="held-out CSV file or glob (with --csv)")
    parser.add_argument("--adapt-rows", type=int, default=10000,
                        help="rows of the first training file the "
                             "FeatureSpace adapts on")
    parser.add_argument("--rows", type=int, default=20000,
                        help="rows of the synthetic table")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--in-memory", action="store_true",
                        help="read the files with pandas and from_dataframe "
                             "instead of streaming them with from_csv")
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
    if bool(args.csv) != bool(args.test_csv):
        parser.error("--csv and --test-csv go together")
    return args


def load_table(args, out):
    """``(paths, adapt_df)``: train / test CSV files, and rows to adapt on.

    The synthetic table is split and written to ``--output-dir/csv``; your
    files (``--csv``, ``--test-csv``) are streamed as they are, never read
    whole: the FeatureSpace adapts on the first ``--adapt-rows`` rows.
    """
    import pandas as pd

    oracle = None
    if not args.csv:
        df = clicks.click_table(args.rows, seed=args.seed,
                                with_probabilities=True)
        split = int(round(len(df) * (1 - args.test_fraction)))
        oracle = df.iloc[split:]
        df = df.drop(columns=["click_probability", "conversion_probability"])
        csv_dir = out / "csv"
        csv_dir.mkdir(parents=True, exist_ok=True)
        paths = {"train": str(csv_dir / "train.csv"),
                 "test": str(csv_dir / "test.csv")}
        df.iloc[:split].to_csv(paths["train"], index=False)
        df.iloc[split:].to_csv(paths["test"], index=False)
    else:
        paths = {"train": args.csv, "test": args.test_csv}
    first = sorted(glob.glob(paths["train"]))
    if not first:
        raise FileNotFoundError(f"--csv {paths['train']!r} matches no file.")
    adapt_df = pd.read_csv(first[0], nrows=args.adapt_rows,
                           keep_default_na=False, na_values=[""])
    return paths, adapt_df, oracle


def oracle_aucs(model, test, oracle):
    """Click and conversion AUC of the model and of the true probabilities.

    On the held-out rows of the synthetic table; conversion on clicked rows
    only (where it counts). The true probabilities are the best any model
    can do.
    """
    from sklearn.metrics import roc_auc_score

    predicted = model.predict(test.map(lambda x, y: x), verbose=0)
    clicked = oracle["clicked"].to_numpy() == 1
    rows = []
    for head, label, truth, mask in (
        ("click", "clicked", "click_probability", slice(None)),
        ("conversion", "converted", "conversion_probability", clicked),
    ):
        y = oracle[label].to_numpy()[mask]
        if len(set(y)) < 2:  # too few held-out rows for an AUC
            continue
        rows.append({
            "head": head,
            "model AUC": roc_auc_score(y, predicted[head][:, 0][mask]),
            "true-probability AUC": roc_auc_score(y, oracle[truth].to_numpy()[mask]),
        })
    return rows


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    out = pathlib.Path(args.output_dir)
    progress = Progress(4)

    progress("Reading the table" + ("" if args.csv else
             f" (synthetic click log, {args.rows} rows, known structure)"))
    paths, adapt_df, oracle = load_table(args, out)
    space = clicks.click_feature_space(adapt_df)

    progress(f"Building a tabular trunk ({args.hidden_units}) with "
             f"sharing={args.sharing!r}")
    model = mtk.build_multitask_model(
        mtk.trunks.tabular(space, hidden_units=tuple(args.hidden_units)),
        clicks.click_heads(), sharing=args.sharing,
        learning_rate=args.learning_rate)
    common = dict(features=space, tasks=clicks.CLICK_TASKS, heads=model,
                  batch_size=args.batch_size)

    def pipeline(name, **kwargs):
        if args.in_memory:
            import pandas as pd

            frame = pd.concat(
                [pd.read_csv(f, keep_default_na=False, na_values=[""])
                 for f in sorted(glob.glob(paths[name]))], ignore_index=True)
            return mtk.data.from_dataframe(frame, **common, **kwargs)
        return mtk.data.from_csv(paths[name], **common, **kwargs)

    train = pipeline("train", sample_weights=clicks.CLICK_WEIGHTS,
                     shuffle=True, seed=args.seed)
    test = pipeline("test")

    progress(f"Training {args.epochs} epochs on {paths['train']} "
             f"({'in memory' if args.in_memory else 'streamed from CSV'})")
    mtk.check_training_data(model, train)
    history = model.fit(train, epochs=args.epochs, verbose=args.verbose)

    progress(f"Evaluating on {paths['test']}; writing outputs to {out}")
    report = mtk.evaluation.write_report(model, test, out, history=history)
    print("\n" + mtk.evaluation.format_reports({"test": report["metrics"]}) + "\n")
    if oracle is not None:
        aucs = oracle_aucs(model, test, oracle)
        print(mtk.evaluation.format_table(
            aucs, title="Against the generator's true probabilities "
                        "(conversion: clicked rows)") + "\n")
        report["extra"] = {"oracle_auc": aucs}
    results = {
        "data": args.csv or f"mtk.data.clicks.click_table({args.rows}, "
                            f"seed={args.seed})",
        "train": paths["train"], "test": paths["test"],
        "sharing": args.sharing,
    }
    return save_outputs(model, out, report, results, progress=progress)


if __name__ == "__main__":
    main()
