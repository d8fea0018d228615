"""Searching how to multi-task vs tuning loss weights only vs the default.

Three ways to get a MultiFashion model (class of the top-left and of the
bottom-right Fashion-MNIST item on a 36x36 canvas) from the same pretrained
trunk (`mtk.data.fashion_cnn` pretrained on single items, as in the quick
start), with the same schedule per trial (`mtk.fit_transfer`: frozen epochs,
then fine-tuning):

  default   one run: equal static weights, hard sharing.
  default, best of N
            the default trained --trials times from other initialisations,
            the best on validation kept: how much a search gains from
            picking the luckiest of N runs alone.
  weights   `mtk.tuning.tune_multitask(search={"loss_weights": (0.2, 5)})`:
            static weights per head, the default's learning rates.
  joint     `mtk.tuning.tune_multitask` over the balancing method (static,
            FAMO, DB-MTL, DWA with its temperature searched), the sharing
            architecture (hard, MMoE with 2 or 4 experts, CGC, cross-stitch),
            static weights and the fine-tuning learning rate.

Both searches get the same trial budget (random search, --trials trials),
ranked by ``val_multitask_score`` on a validation split of the training
canvases; the best trial's model is then scored on the test canvases. The
table gives, mean ± std over seeds: each head's test accuracy, Δm against the
default run of the same seed (paired), the best trial's median training step
time as a ratio to the default's, and the search's wall time. Then what each
search picked, per seed.

    .venv/bin/python benchmarks/multitask_search.py            # ~5 min on 2 quiet cores
    .venv/bin/python benchmarks/multitask_search.py --seeds 1 --trials 3 --train-size 1000
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import mtk  # noqa: E402
from mtk.data.fashion_trunk import TRUNK_OUTPUT  # noqa: E402
from mtk.evaluation import StepTimer  # noqa: E402
from mtk.evaluation import format_table  # noqa: E402
from mtk.evaluation import mean_std  # noqa: E402

TASKS = list(mtk.data.multi_fashion.TASKS)
BLOCKS = ["block1_pool", "block2_pool"]
EXPERTS = (32,)


def joint_space():
    """The joint search's space (fresh objects for each search)."""
    return {
        "loss_weighting": [
            "famo", "db_mtl", mtk.tuning.Tunable("dwa", temperature=(1.0, 4.0)),
        ],
        "sharing": [
            mtk.tuning.Tunable(mtk.sharing.MMoE(expert_units=EXPERTS),
                               num_experts=[2, 4]),
            mtk.sharing.CGC(num_shared_experts=2, num_task_experts=1,
                            expert_units=EXPERTS),
            mtk.sharing.CrossStitch(at=BLOCKS),
        ],
        "loss_weights": (0.2, 5.0),
        "finetune_learning_rate": (1e-4, 1e-3),
    }


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--validation-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--frozen-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--finetune-learning-rate", type=float, default=3e-4)
    parser.add_argument("--source-examples", type=int, default=30_000)
    parser.add_argument("--data-dir", default="runs/tfds")
    return parser.parse_args()


def dataset(x, y, batch_size, shuffle_seed=None):
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def model_maker(args, trunk_path):
    def make_model(loss_weighting="static", sharing="hard"):
        return mtk.build_multitask_model(
            trunk_path, trunk_output=TRUNK_OUTPUT,
            heads=mtk.data.multi_fashion_heads(), sharing=sharing,
            loss_weighting=loss_weighting, compile=False)
    return make_model


def test_accuracy(model, test):
    report = mtk.evaluation.evaluate_heads(model, test)
    return {t: report[t]["accuracy"] for t in TASKS}


def default_run(args, make_model, train, test, seed, validation=None):
    keras.utils.set_random_seed(seed)
    model = make_model()
    mtk.compile_multitask(model, optimizer=mtk.training.get_optimizer(
        "adam", args.learning_rate))
    timer = StepTimer()
    mtk.fit_transfer(
        model, train, frozen_epochs=args.frozen_epochs,
        finetune_epochs=args.finetune_epochs,
        finetune_learning_rate=args.finetune_learning_rate,
        callbacks=[timer], verbose=0)
    result = {"accuracy": test_accuracy(model, test), "step_ms": 1000 * timer.median(),
              "picked": "static / hard"}
    if validation is not None:
        result["validation"] = sum(test_accuracy(model, validation).values())
    return result


def best_default_run(args, make_model, train, validation, test, seed):
    """The default trained --trials times (other initialisations), the best
    on validation kept: what a search's best-of-N selection alone gives."""
    runs = [default_run(args, make_model, train, test, 1000 * (seed + 1) + i, validation)
            for i in range(args.trials)]
    best = max(range(len(runs)), key=lambda i: runs[i]["validation"])
    return {**runs[best], "picked": f"static / hard, init {best + 1} of {len(runs)}"}


def searched_run(args, make_model, search, train, validation, test, seed, name):
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    tuner = mtk.tuning.tune_multitask(
        make_model, train, validation_data=validation, search=search,
        max_trials=args.trials, epochs=args.frozen_epochs,
        finetune_epochs=args.finetune_epochs, optimizer=keras.optimizers.Adam(
            args.learning_rate),
        directory=tempfile.mkdtemp(prefix=f"mtk_search_{name}_"), seed=seed,
        verbose=0)
    seconds = time.perf_counter() - start
    rows = tuner.trials_table(print_table=False)
    (best,) = [row for row in rows if row["best"]]
    parts = [str(best[key]) for key in ("loss_weighting", "sharing") if key in best]
    weights = {k[len("weight_"):]: v for k, v in best.items() if k.startswith("weight_")}
    if weights:
        parts.append("weights " + ",".join(f"{h}:{w:.2f}" for h, w in weights.items()))
    if "finetune_learning_rate" in tuner.best_config():
        parts.append(f"ft_lr {tuner.best_config()['finetune_learning_rate']:.1e}")
    picked = " / ".join(parts)
    return {"accuracy": test_accuracy(tuner.best_model(), test),
            "step_ms": best["step_time_ms"], "search_s": seconds, "picked": picked}


def main():
    args = parse_args()
    data = mtk.data.load_multi_fashion(
        args.train_size + args.validation_size, args.test_size, data_dir=args.data_dir)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    n = args.train_size
    work = tempfile.mkdtemp(prefix="mtk_multitask_search_")
    trunk_path, seconds, accuracy = mtk.data.pretrain_fashion_trunk(
        os.path.join(work, "trunk.keras"), examples=args.source_examples)
    print(f"pretrained trunk: {accuracy:.3f} single-item accuracy in {seconds:.0f} s",
          flush=True)
    make_model = model_maker(args, trunk_path)
    test = dataset(x_test, y_test, 512)
    validation = dataset(x[n:], {t: y[t][n:] for t in TASKS}, 512)

    runs = {"default": [], "default, best of N": [], "weights": [], "joint": []}
    for seed in range(args.seeds):
        train = dataset(x[:n], {t: y[t][:n] for t in TASKS}, args.batch_size, seed)
        for name in runs:
            start = time.perf_counter()
            if name == "default":
                result = default_run(args, make_model, train, test, seed)
            elif name == "default, best of N":
                result = best_default_run(args, make_model, train, validation, test, seed)
            else:
                search = ({"loss_weights": (0.2, 5.0),
                           "finetune_learning_rate": args.finetune_learning_rate}
                          if name == "weights" else joint_space())
                result = searched_run(args, make_model, search, train, validation,
                                      test, seed, name)
            runs[name].append(result)
            print(f"seed {seed} {name:<18} "
                  + " ".join(f"{t} {result['accuracy'][t]:.4f}" for t in TASKS)
                  + f" step {result['step_ms']:.1f} ms picked {result['picked']}"
                  f" ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = []
    for name, results in runs.items():
        row = {"run": name}
        for task in TASKS:
            row[f"{task} accuracy"] = mean_std([r["accuracy"][task] for r in results], ".4f")
        row["Δm vs default (%)"] = mean_std(
            [mtk.evaluation.delta_m(r["accuracy"], d["accuracy"], True)
             for r, d in zip(results, runs["default"])], "+.2f")
        row["step / default"] = mean_std(
            [r["step_ms"] / d["step_ms"] for r, d in zip(results, runs["default"])], ".2f")
        row["search time (s)"] = (
            mean_std([r["search_s"] for r in results], ".0f") if "search_s" in results[0] else "")
        rows.append(row)
    print()
    print(format_table(rows, title=(
        f"MultiFashion, {args.train_size} training / {args.validation_size} validation / "
        f"{args.test_size} test canvases, {args.frozen_epochs} frozen + "
        f"{args.finetune_epochs} fine-tuning epochs per run, {args.trials} random "
        f"trials per search, {args.seeds} seeds")))
    print()
    print(format_table(
        [{"seed": seed, **{name: runs[name][seed]["picked"] for name in runs}}
         for seed in range(args.seeds)],
        title="What each run used (best trial of each search)"))


if __name__ == "__main__":
    main()
