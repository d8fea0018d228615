"""Shared-bottom vs MMoE / CGC / PLE as task correlation falls: MMoE paper, Sec. 3.

Reproduces the synthetic experiment of Ma et al. (KDD 2018, "Modeling Task
Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
Section 3.2-3.3, Fig. 4): two regression tasks whose weight vectors have
cosine p (`mtk.data.mmoe_synthetic`: d = 100, c = 1, m = 10 sinusoids with
alpha, beta ~ N(0, 1), label noise variance 0.01). The paper finds that a
shared-bottom model's loss grows as p falls, while MMoE's grows much less.

Setup (per p in 1.0, 0.9, 0.5, 0.0 and per seed; the seed fixes the problem,
i.e. the weight vectors and sinusoids, and the models' initial weights; every
model of a seed sees the same data):

- Shared-Bottom: trunk Dense(h, relu) on the input, ``sharing="hard"``, h
  chosen so its parameter count is closest to MMoE's.
- MMoE: identity trunk (the experts read the input, as in the paper),
  ``mtk.sharing.MMoE(num_experts=8, expert_units=(16,))`` (the paper's 8
  experts of 16 units).
- CGC: 4 shared + 2 per-task experts of 16 units (8 experts in all, as MMoE).
- PLE: two CGC levels of the same shape.
- Single-task: one shared-bottom model (the same Dense(h) trunk) per task.

Every head is a tower Dense(8, relu) -> Dense(1) (``Regression("taskN",
hidden_units=(8,))``). Adam (learning rate 1e-3), MSE, the same epochs and
batch size for every model. The test MSE is averaged over the two tasks
(single-task: over its two models). The second table divides each model's
MSE by single-task's at the same p and seed (paired), then averages.

    .venv/bin/python benchmarks/sharing_synthetic.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/sharing_synthetic.py --seeds 1 --epochs 2   # smoke run
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import mtk  # noqa: E402

CORRELATIONS = (1.0, 0.9, 0.5, 0.0)
MODELS = ("Shared-Bottom", "MMoE", "CGC", "PLE", "Single-task")
TASKS = ("task0", "task1")
DIM = 100
TOWER_UNITS = (8,)
EXPERT_UNITS = (16,)
NUM_EXPERTS = 8


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--correlations", type=float, nargs="+", default=list(CORRELATIONS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    return parser.parse_args()


def heads(tasks=TASKS):
    return [mtk.heads.Regression(name, hidden_units=TOWER_UNITS) for name in tasks]


def dense_trunk(units):
    return keras.Sequential(
        [keras.Input((DIM,)), keras.layers.Dense(units, activation="relu")])


def identity_trunk():
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Identity()])


def sharing_of(name):
    return {
        "MMoE": mtk.sharing.MMoE(num_experts=NUM_EXPERTS, expert_units=EXPERT_UNITS),
        "CGC": mtk.sharing.CGC(num_shared_experts=4, num_task_experts=2,
                               expert_units=EXPERT_UNITS),
        "PLE": mtk.sharing.PLE(num_levels=2, num_shared_experts=4, num_task_experts=2,
                               expert_units=EXPERT_UNITS),
    }[name]


def build(trunk, head_list, sharing, args):
    return mtk.build_multitask_model(
        trunk, heads=head_list, sharing=sharing, trunk_weights=None,
        freeze_trunk=False, optimizer=keras.optimizers.Adam(args.learning_rate))


def shared_bottom_units(target, num_tasks=2):
    """The Dense width h whose shared-bottom model has closest to ``target`` parameters."""
    tower = TOWER_UNITS[0]

    def count(h):  # trunk + per task (tower + output)
        return (DIM + 1) * h + num_tasks * ((h + 1) * tower + tower + 1)

    return min(range(1, 10 * target), key=lambda h: abs(count(h) - target))


def model_makers(units, args):
    """{model name: [(make model, its tasks)]}; single-task has one model per task."""
    return {
        "Shared-Bottom": [(lambda: build(dense_trunk(units), heads(), "hard", args), TASKS)],
        **{name: [(lambda name=name: build(identity_trunk(), heads(), sharing_of(name), args),
                   TASKS)]
           for name in ("MMoE", "CGC", "PLE")},
        "Single-task": [(lambda task=task: build(dense_trunk(units), heads((task,)), "hard",
                                                 args), (task,))
                        for task in TASKS],
    }


def test_mse(model, x, y, tasks):
    predictions = model.predict(x, batch_size=1024, verbose=0)
    return {task: float(np.mean((predictions[task][:, 0] - y[task]) ** 2)) for task in tasks}


def run_one(make, tasks, data, seed, args):
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = make()
    model.fit(x, {task: y[task] for task in tasks}, epochs=args.epochs,
              batch_size=args.batch_size, shuffle=True, verbose=0)
    return test_mse(model, x_test, y_test, tasks)


def mean_std(values):
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def column(p):
    return f"p = {p:g}"


def verdict(mse, correlations):
    """Whether the paper's finding holds in ``mse[model][p]`` (lists over seeds)."""
    if not {"Shared-Bottom", "MMoE"} <= set(mse) or not {1.0, 0.0} <= set(correlations):
        return "Verdict needs Shared-Bottom, MMoE and p = 1 and p = 0."
    mean = {m: {p: float(np.mean(v)) for p, v in by_p.items()} for m, by_p in mse.items()}
    sb_rise = mean["Shared-Bottom"][0.0] - mean["Shared-Bottom"][1.0]
    mmoe_rise = mean["MMoE"][0.0] - mean["MMoE"][1.0]
    grows = sb_rise > 0
    much_less = mmoe_rise < 0.5 * sb_rise
    beats = mean["MMoE"][0.0] < mean["Shared-Bottom"][0.0]
    reproduced = grows and much_less and beats
    return (
        f"Paper's finding {'REPRODUCED' if reproduced else 'NOT reproduced'}: "
        f"from p = 1 to p = 0 Shared-Bottom's mean test MSE rises by {sb_rise:+.4f} "
        f"({'grows' if grows else 'does not grow'}), MMoE's by {mmoe_rise:+.4f} "
        f"({'less' if much_less else 'not less'} than half of Shared-Bottom's rise), "
        f"and at p = 0 MMoE {'beats' if beats else 'does not beat'} Shared-Bottom "
        f"({mean['MMoE'][0.0]:.4f} vs {mean['Shared-Bottom'][0.0]:.4f}). "
        "(Criterion: all three must hold.)"
    )


def main():
    args = parse_args()
    started = time.time()
    # Parameter budgets: the shared bottom's width matches MMoE's parameter count.
    mmoe_params = build(identity_trunk(), heads(), sharing_of("MMoE"), args).count_params()
    units = shared_bottom_units(mmoe_params)
    makers = model_makers(units, args)
    counts = {name: sum(make().count_params() for make, _ in makers[name])
              for name in args.models}
    print(f"Shared-Bottom width h = {units}; parameters: "
          + ", ".join(f"{name} {count}" for name, count in counts.items())
          + " (Single-task: its two models together)", flush=True)
    print(f"{args.train_size} train / {args.test_size} test examples, {args.epochs} epochs, "
          f"batch {args.batch_size}, Adam lr {args.learning_rate:g}, seeds 0..{args.seeds - 1}",
          flush=True)

    mse = {name: {p: [] for p in args.correlations} for name in args.models}
    for p in args.correlations:
        for seed in range(args.seeds):
            problem = mtk.data.MMoESynthetic(p, dim=DIM, c=1.0, m=10, noise_std=0.1,
                                             seed=seed)
            data = (problem.sample(args.train_size, sample_seed=0),
                    problem.sample(args.test_size, sample_seed=1))
            for name in args.models:
                per_task = {}
                for make, tasks in makers[name]:
                    per_task.update(run_one(make, tasks, data, seed, args))
                mse[name][p].append(float(np.mean([per_task[t] for t in TASKS])))
                print(f"p={p:g} seed={seed} {name:<13} test MSE "
                      + " ".join(f"{t} {v:.4f}" for t, v in per_task.items())
                      + f" mean {mse[name][p][-1]:.4f}  ({time.time() - started:.0f} s)",
                      flush=True)

    rows = [{"model": name, **{column(p): mean_std(mse[name][p]) for p in args.correlations}}
            for name in args.models]
    print("\n" + mtk.evaluation.format_table(
        rows, title=f"Test MSE, mean of the two tasks (mean ± std over {args.seeds} seeds)"))
    if "Single-task" in args.models:
        rows = [{"model": name, **{column(p): mean_std(
                    np.array(mse[name][p]) / np.array(mse["Single-task"][p]))
                    for p in args.correlations}}
                for name in args.models if name != "Single-task"]
        print("\n" + mtk.evaluation.format_table(
            rows, title="Test MSE / single-task's at the same p and seed (paired; < 1: "
                        "sharing helps)"))
    print("\n" + verdict(mse, args.correlations))
    print(f"Total {time.time() - started:.0f} s.", flush=True)


if __name__ == "__main__":
    main()
