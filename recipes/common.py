"""Helpers the recipes share (benchmarks import mtk only, never this file).

- `add_schedule_arguments`, `require_at_least`: the command-line options
  every fit_transfer recipe has (epochs of both phases, batch size, learning
  rates, seed, verbosity) and their range checks.
- `Progress`: numbered progress lines.
- `dataset`: arrays as a batched `tf.data.Dataset`.
- `train_and_report`, `save_outputs`: the recipes' fit_transfer schedule
  with its evaluation report, and the output directory every recipe writes
  (metrics JSON, plots, the ``.keras`` model and a TF Serving SavedModel).

What benchmarks need too lives in mtk: `mtk.data.load_multi_fashion`,
`mtk.data.pretrain_fashion_trunk`, `mtk.evaluation.EpochTimer`.
"""

import json
import pathlib
import time

import tensorflow as tf

import mtk
import mtk.evaluation
import mtk.export


def add_schedule_arguments(parser, *, frozen_epochs, finetune_epochs,
                           batch_size, learning_rate, finetune_learning_rate):
    """Adds the `mtk.fit_transfer` schedule options, with a recipe's defaults.

    ``--frozen-epochs``, ``--finetune-epochs``, ``--batch-size``,
    ``--learning-rate`` (phase 1: the trunk frozen, heads only),
    ``--finetune-learning-rate``, ``--seed`` and ``--verbose``.
    """
    parser.add_argument("--frozen-epochs", type=int, default=frozen_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=finetune_epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--learning-rate", type=float, default=learning_rate,
                        help="phase 1 (trunk frozen: heads only)")
    parser.add_argument("--finetune-learning-rate", type=float,
                        default=finetune_learning_rate)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))


def require_at_least(parser, args, minimum, names):
    """Exits through ``parser.error`` when an option in ``names`` is < minimum."""
    for name in names:
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}")


class Progress:
    """Prints numbered progress lines: ``[2/5] Pretraining the trunk``."""

    def __init__(self, steps):
        self.steps = steps
        self.done = 0
        self.started = time.time()

    def __call__(self, message):
        self.done += 1
        elapsed = time.time() - self.started
        print(f"[{self.done}/{self.steps}] ({elapsed:.0f} s) {message}", flush=True)


def dataset(x, labels, batch_size, shuffle_seed=None):
    """Arrays → a batched `tf.data.Dataset` of ``(inputs, labels)``."""
    ds = tf.data.Dataset.from_tensor_slices((x, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_and_report(model, train, test, args, output_dir, progress,
                     validation=None, test_name="the test split"):
    """The recipes' schedule: `mtk.fit_transfer`, then the evaluation report.

    Trains with ``args``' frozen / fine-tuning epochs, learning rate, unfreeze
    spec (``"all"`` when the recipe has none) and verbosity, writes the plots
    and ``metrics.json`` with `mtk.evaluation.write_report` and prints the
    per-head table.

    Returns:
        ``(report, train_seconds)``.
    """
    unfreeze = getattr(args, "unfreeze", "all")
    progress(f"Training heads {sorted(mtk.heads.heads_of(model))}: "
             f"{args.frozen_epochs} epochs with the trunk frozen, then "
             f"{args.finetune_epochs} fine-tuning ({unfreeze})")
    start = time.time()
    history = mtk.fit_transfer(
        model, train, validation_data=test if validation is None else validation,
        frozen_epochs=args.frozen_epochs, finetune_epochs=args.finetune_epochs,
        unfreeze=unfreeze, finetune_learning_rate=args.finetune_learning_rate,
        verbose=args.verbose)
    train_seconds = time.time() - start
    progress(f"Evaluating on {test_name}; writing plots, the model and a "
             f"SavedModel to {output_dir}")
    report = mtk.evaluation.write_report(model, test, output_dir, history=history)
    print("\n" + mtk.evaluation.format_reports({"test": report["metrics"]}) + "\n")
    return report, train_seconds


def save_outputs(model, output_dir, report, results, warmup_inputs=None,
                 progress=None):
    """Writes what every recipe leaves behind in ``output_dir``.

    ``results.json`` (``results`` plus the evaluation report), the plots
    `mtk.evaluation.write_report` made, ``model.keras`` and a TF Serving
    SavedModel under ``saved_model/<version>``.

    Returns:
        ``results`` with the written paths added under ``"outputs"``.
    """
    out = pathlib.Path(output_dir)
    model_path = out / "model.keras"
    model.save(model_path)
    saved_model = mtk.export.export_saved_model(
        model, out / "saved_model", warmup_inputs=warmup_inputs
    )
    results = dict(results)
    results["evaluation"] = {k: v for k, v in report.items() if k != "files"}
    results["outputs"] = {
        "files": [str(p) for p in report["files"]],
        "keras_model": str(model_path),
        "saved_model": str(saved_model),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if progress is not None:
        print(f"Wrote {out / 'results.json'}, the plots and {saved_model} "
              f"({time.time() - progress.started:.0f} s in all).", flush=True)
    return results
