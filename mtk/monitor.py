"""Command line: compare a deployed model's traffic with its reference profile.

    python -m mtk.monitor serving/items logs/ --labels labels.csv --out report/
    python -m mtk.monitor serving/items/3 new_images.npy --threshold item:psi=0.1

``<export dir>`` is TF Serving's base directory (its highest version is
used) or a version directory; it must hold the reference profile that
``export_saved_model(..., reference_data=...)`` writes. ``<traffic>`` is
TF Serving's request logs (PredictionLog TFRecord files, or directories of
them), or ``.npy`` / ``.npz`` arrays of inputs, which are run through the
export.

Prints one row per head and input, writes ``report.json``, ``report.txt``
and one plot per head and input into ``--out``, and exits with 1 when a
threshold is crossed (0 otherwise; 2 for bad arguments or unreadable data),
for cron jobs and CI. See `mtk.monitoring` for the measures.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from mtk import monitoring  # noqa: E402

EXIT_OK, EXIT_FLAGGED, EXIT_ERROR = 0, 1, 2


def parse_threshold(text):
    """``"psi=0.2"`` or ``"item:psi=0.1"`` (``none`` turns a check off).

    Example:

    >>> from mtk.monitor import parse_threshold
    >>> parse_threshold("item:psi=0.1"), parse_threshold("js=none")
    (('item:psi', 0.1), ('js', None))
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"--threshold {text!r}: write [<head or input>:]<measure>=<value>."
        )
    if value.lower() == "none":
        return key, None
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--threshold {text!r}: {value!r} is not a number."
        ) from None


def build_parser():
    """The argument parser of ``python -m mtk.monitor``.

    Example:

    >>> from mtk.monitor import build_parser
    >>> build_parser().parse_args(["export", "logs"]).out
    'monitoring_report'
    """
    parser = argparse.ArgumentParser(
        prog="python -m mtk.monitor",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("export_dir", help="export base or version directory")
    parser.add_argument(
        "traffic", nargs="+",
        help="PredictionLog files / directories, or one .npy/.npz of inputs",
    )
    parser.add_argument(
        "--labels", default=None,
        help="labels by request id: CSV (id,<head>,...) or JSON lines",
    )
    parser.add_argument("--out", default="monitoring_report",
                        help="report directory (default: monitoring_report)")
    parser.add_argument(
        "--threshold", action="append", type=parse_threshold, default=[],
        metavar="[NAME:]MEASURE=VALUE",
        help=(
            "override a threshold, repeatable; measures: "
            + ", ".join(f"{k} (default {v})" for k, v in
                        monitoring.DEFAULT_THRESHOLDS.items())
        ),
    )
    parser.add_argument(
        "--profile", default=None,
        help="a profile JSON to use instead of the export's own",
    )
    return parser


def _traffic(served, paths):
    if len(paths) == 1 and paths[0].endswith((".npy", ".npz")):
        if paths[0].endswith(".npy"):
            return monitoring.observe(served, np.load(paths[0]))
        with np.load(paths[0]) as arrays:
            return monitoring.observe(
                served, {k: arrays[k] for k in arrays.files}
            )
    return monitoring.read_prediction_logs(served, paths)


def main(argv=None):
    """Runs the command; returns its exit status.

    Example:

    >>> import os, tempfile
    >>> model = mtk.build_multitask_model(
    ...     keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
    ...     heads=[mtk.heads.Binary("flag")], trunk_weights=None)
    >>> base = os.path.join(tempfile.mkdtemp(), "flags")
    >>> x = np.random.default_rng(0).normal(size=(200, 4))
    >>> _ = mtk.export.export_saved_model(model, base, reference_data=x)
    >>> np.save(os.path.join(base, "now.npy"), x + 3)
    >>> from mtk.monitor import main
    >>> main([base, os.path.join(base, "now.npy"),
    ...       "--out", os.path.join(base, "report")])  # doctest: +ELLIPSIS
    200 examples vs 200 in the reference; flagged: flag, inputs
    ...
    1
    """
    args = build_parser().parse_args(argv)
    out = args.out
    traffic = None
    try:
        served = monitoring.ServedModel(args.export_dir, args.profile)
        traffic = _traffic(served, args.traffic)
        labels = None
        if args.labels:
            labels = monitoring.read_labels(args.labels, served.profile["heads"])
        report = monitoring.compare(
            served.profile, traffic, labels=labels,
            thresholds=dict(args.threshold),
        )
    except (ValueError, OSError) as e:
        print(f"mtk.monitor: error: {e}", file=sys.stderr)
        if traffic is not None:
            # What was read is worth keeping, even when no report follows.
            os.makedirs(out, exist_ok=True)
            import json

            with open(os.path.join(out, "report.json"), "w") as f:
                json.dump({"error": str(e), "traffic": traffic.summary()}, f, indent=1)
        return EXIT_ERROR
    monitoring.write_report(report, out)
    print(monitoring.format_report(report))
    skipped = report["traffic"]["records_skipped"]
    if skipped:
        print(
            f"mtk.monitor: {skipped} log records skipped, e.g. "
            f"{report['traffic']['problems'][:3]}", file=sys.stderr,
        )
    print(f"report written to {out}")
    return EXIT_FLAGGED if report["flagged"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
