"""How tasks share the model, on MultiFashion with a pretrained image trunk.

Every sharing architecture of `mtk.sharing` trains the same two MultiFashion
tasks (class of the top-left and of the bottom-right Fashion-MNIST item on a
36x36 canvas) from the same pretrained trunk: `mtk.data.fashion_cnn`
pretrained on single Fashion-MNIST items as in the quick start, cut at its
convolutional features. Same schedule for all (`mtk.fit_transfer`: frozen
epochs, then fine-tuning), same data, same seed per round; one model per
task (hard sharing, one head) is the single-task baseline.

The table gives, mean ± std over seeds:

- each head's test accuracy, and Δm against the single-task models and
  against hard sharing (paired per seed, `mtk.evaluation.delta_m`);
- parameters;
- the median training step time and the inference time of the test set,
  as ratios to hard sharing in the same seed (runs interleave, so machine
  noise spreads evenly).

Then the cost alone on the quick start's own network (`mtk.data.quickstart_cnn`
cut at ``features``; ``--cost-rounds`` rounds, interleaved; random data and
weights, since timing does not depend on them): the median training step of
each architecture as a ratio to hard sharing's in the same round, compiled
as Keras does by default and, with ``--jit-compile``, also with XLA
(``jit_compile=True``), where many small ops of the attention branches fuse;
beside it, one image's forward floating-point operations as TensorFlow's
profiler counts them, so that what an architecture must compute is told
apart from what this machine makes of it.

    .venv/bin/python benchmarks/sharing.py                   # ~15 min on 2 cores
    .venv/bin/python benchmarks/sharing.py --seeds 1 --train-size 1000
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
from mtk.data.fashion_trunk import TRUNK_OUTPUT  # noqa: E402
from mtk.evaluation import StepTimer  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402
from mtk.evaluation import inference_seconds  # noqa: E402
from mtk.evaluation import mean_std  # noqa: E402

BLOCKS = ["block1_pool", "block2_pool"]
ARCHITECTURES = {
    "hard": lambda: "hard",
    "mmoe": lambda: mtk.sharing.MMoE(num_experts=4, expert_units=(32,)),
    "cgc": lambda: mtk.sharing.CGC(num_shared_experts=2, num_task_experts=1,
                                   expert_units=(32,)),
    "ple": lambda: mtk.sharing.PLE(num_levels=2, num_shared_experts=2,
                                   num_task_experts=1, expert_units=(32,)),
    "mtan": lambda: mtk.sharing.MTAN(at=BLOCKS),
    "mtan_r4": lambda: mtk.sharing.MTAN(at=BLOCKS, reduction=4),
    "cross_stitch": lambda: mtk.sharing.CrossStitch(at=BLOCKS),
}


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES),
                        choices=list(ARCHITECTURES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--frozen-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--finetune-learning-rate", type=float, default=3e-4)
    parser.add_argument("--source-examples", type=int, default=30_000)
    parser.add_argument("--data-dir", default="runs/tfds")
    parser.add_argument("--cost-rounds", type=int, default=5)
    parser.add_argument("--jit-compile", action="store_true",
                        help="also time every architecture under XLA in the cost table")
    parser.add_argument("--cost-only", action="store_true",
                        help="skip the MultiFashion quality runs")
    args = parser.parse_args()
    if "hard" not in args.architectures:
        args.architectures.insert(0, "hard")  # the ratios' reference
    return args


def dataset(x, y, batch_size, shuffle_seed=None):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def run(args, trunk_path, sharing, tasks, data, seed):
    """Trains one model; its test accuracies, parameters and timings."""
    (x, y), (x_test, y_test) = data["train"], data["test"]
    keras.utils.set_random_seed(seed)
    model = mtk.build_multitask_model(
        trunk_path, trunk_output=TRUNK_OUTPUT,
        heads=mtk.data.multi_fashion_heads(tasks), sharing=sharing,
        learning_rate=args.learning_rate)
    timer = StepTimer()
    mtk.fit_transfer(
        model, dataset(x, {t: y[t] for t in tasks}, args.batch_size, seed),
        frozen_epochs=args.frozen_epochs, finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_learning_rate,
        callbacks=[timer], verbose=0)
    report = mtk.evaluation.evaluate_heads(
        model, dataset(x_test, {t: y_test[t] for t in tasks}, 512))
    return {
        "accuracy": {t: report[t]["accuracy"] for t in tasks},
        "params": model.count_params(),
        "step_s": timer.median(),
        "infer_s": inference_seconds(model, x_test),
    }


QUICKSTART_BLOCKS = ["block1_pool", "block2_pool", "block3_conv"]


def quickstart_model(sharing, jit_compile=False):
    keras.utils.set_random_seed(0)
    return mtk.build_multitask_model(
        mtk.data.quickstart_cnn(), trunk_output="features", trunk_weights=None,
        freeze_trunk=False, heads=mtk.data.multi_fashion_heads(), sharing=sharing,
        jit_compile=jit_compile)


def step_time(sharing, x, y, batch_size, jit_compile=False):
    """Median training step of the quick start's network with ``sharing``."""
    model = quickstart_model(sharing, jit_compile)
    timer = StepTimer()
    model.fit(x, y, batch_size=batch_size, epochs=3, verbose=0, callbacks=[timer])
    return timer.median()


def forward_flops(sharing):
    """Floating-point operations of one image's forward pass (inference
    mode), as TensorFlow's profiler counts them in the traced graph:
    convolutions, matmuls and arithmetic; activations (ReLU, sigmoid) and
    resizing are not counted."""
    model = quickstart_model(sharing)
    forward = tf.function(lambda images: model(images, training=False))
    graph = forward.get_concrete_function(
        tf.TensorSpec((1, 28, 28, 1), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    ).with_empty_output().build()
    return tf.compat.v1.profiler.profile(graph, options=options).total_float_ops


def cost_table(args):
    """Step time per architecture / hard sharing's, rounds interleaved."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (40 * args.batch_size, 28, 28, 1)).astype("float32")
    y = {t: rng.integers(0, 10, len(x)) for t in mtk.data.multi_fashion.TASKS}
    architectures = dict(ARCHITECTURES)
    architectures["mtan"] = lambda: mtk.sharing.MTAN(at=QUICKSTART_BLOCKS)
    architectures["mtan_r4"] = lambda: mtk.sharing.MTAN(
        at=QUICKSTART_BLOCKS, reduction=4)
    architectures["cross_stitch"] = lambda: mtk.sharing.CrossStitch(at=QUICKSTART_BLOCKS)
    modes = [False, True] if args.jit_compile else [False]
    ratios = {(name, jit): [] for jit in modes for name in args.architectures}
    millis = {key: [] for key in ratios}
    for round_ in range(args.cost_rounds):
        for jit in modes:
            times = {name: step_time(architectures[name](), x, y,
                                     args.batch_size, jit_compile=jit)
                     for name in args.architectures}
            for name in args.architectures:
                ratios[name, jit].append(times[name] / times["hard"])
                millis[name, jit].append(1000 * times[name])
        print(f"cost round {round_ + 1}/{args.cost_rounds} done", flush=True)
    flops = {name: forward_flops(architectures[name]()) for name in args.architectures}
    rows = [{"sharing": name, "jit_compile": jit,
             "forward MFLOP": f"{flops[name] / 1e6:.1f}",
             "FLOP / hard": f"{flops[name] / flops['hard']:.2f}",
             "step ms": mean_std(millis[name, jit], ".1f"),
             "train step / hard": mean_std(r, ".2f")}
            for (name, jit), r in ratios.items()]
    print()
    print(format_table(rows, title=(
        "Training step time / hard sharing's, the quick start's network "
        f"(mtk.data.quickstart_cnn, 28x28) cut at 'features', 2 heads, batch "
        f"{args.batch_size}, {args.cost_rounds} rounds (MTAN and cross-stitch "
        f"at {QUICKSTART_BLOCKS})")))


def main():
    args = parse_args()
    if args.cost_only:
        cost_table(args)
        return
    tasks = list(mtk.data.multi_fashion.TASKS)
    data = mtk.data.load_multi_fashion(args.train_size, args.test_size,
                                       data_dir=args.data_dir)
    work = tempfile.mkdtemp(prefix="mtk_sharing_")
    trunk_path, seconds, accuracy = mtk.data.pretrain_fashion_trunk(
        os.path.join(work, "trunk.keras"), examples=args.source_examples)
    print(f"pretrained trunk: {accuracy:.3f} single-item accuracy in {seconds:.0f} s",
          flush=True)

    runs = {name: [] for name in args.architectures + ["single-task"]}
    for seed in range(args.seeds):
        single = {"accuracy": {}, "params": 0, "step_s": 0.0, "infer_s": 0.0}
        for task in tasks:
            result = run(args, trunk_path, "hard", [task], data, seed)
            single["accuracy"].update(result["accuracy"])
            for key in ("params", "step_s", "infer_s"):
                single[key] += result[key]  # K models: their total cost
        runs["single-task"].append(single)
        for name in args.architectures:
            start = time.perf_counter()
            result = run(args, trunk_path, ARCHITECTURES[name](), tasks, data, seed)
            runs[name].append(result)
            print(f"seed {seed} {name:<12} "
                  + " ".join(f"{t} {result['accuracy'][t]:.4f}" for t in tasks)
                  + f" step {1000 * result['step_s']:.1f} ms"
                  f" ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = []
    for name, results in runs.items():
        hard = runs["hard"]
        row = {"sharing": name}
        for task in tasks:
            row[task] = mean_std([r["accuracy"][task] for r in results], ".4f")
        for label, reference in (("single-task", runs["single-task"]), ("hard", hard)):
            row[f"Δm vs {label} (%)"] = mean_std(
                [mtk.evaluation.delta_m(r["accuracy"], b["accuracy"], True)
                 for r, b in zip(results, reference)], "+.2f")
        row["params"] = f"{int(np.mean([r['params'] for r in results])):,}"
        for key, label in (("step_s", "train step / hard"), ("infer_s", "inference / hard")):
            row[label] = mean_std([r[key] / h[key] for r, h in zip(results, hard)], ".2f")
        rows.append(row)
    print()
    print(format_table(rows, title=(
        f"MultiFashion, {args.train_size} training / {args.test_size} test images, "
        f"{args.frozen_epochs} frozen + {args.finetune_epochs} fine-tuning epochs, "
        f"{args.seeds} seeds (single-task: one model per task, costs summed)")))
    cost_table(args)


if __name__ == "__main__":
    main()
