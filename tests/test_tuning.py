"""Tests of mtk.tuning: loss-weight tuning with KerasTuner."""

import glob
import os
import warnings

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

import mtk
from mtk import tuning
from testing import run_python

HEADS = ("item", "flag", "price")
# Models are built, trials counted: module-level so KerasTuner's deep copies
# of callbacks still append here.
BUILDS = []
EPOCHS = []


def vector_data(n=64, seed=0, batch_size=16):
    """Eight features; each head's label depends on some of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = {
        "item": ((x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)),
        "flag": (x[:, 2] > 0).astype("float32"),
        "price": (x[:, 3] + 0.5 * x[:, 4]).astype("float32"),
    }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def make_model():
    """A tiny trainable-trunk model with three head kinds."""
    BUILDS.append(1)
    keras.utils.set_random_seed(len(BUILDS))
    trunk = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu")],
        name="mlp",
    )
    return mtk.build_multitask_model(
        trunk,
        heads=[
            mtk.heads.Classification("item", num_classes=3),
            mtk.heads.Binary("flag"),
            mtk.heads.Regression("price"),
        ],
        trunk_weights=None,
        freeze_trunk=False,
        compile=False,
    )


@pytest.fixture(autouse=True)
def _reset_counters():
    BUILDS.clear()
    EPOCHS.clear()


def count_epochs():
    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: EPOCHS.append(epoch)
    )


def trial_dirs(directory, project="loss_weights"):
    return sorted(glob.glob(os.path.join(directory, project, "trial_*")))


def tune(tmp_path, **kwargs):
    options = dict(
        validation_data=vector_data(32, seed=1),
        max_trials=2,
        epochs=1,
        directory=str(tmp_path),
        seed=0,
        verbose=0,
    )
    options.update(kwargs)
    return tuning.tune_loss_weights(make_model, vector_data(), **options)


# === The score ===


def test_score_is_invariant_to_scaling_all_loss_weights():
    model = make_model()
    val = vector_data(32, seed=1)
    score = tuning.MultiTaskScore.from_model(model, validation_data=val)
    weights = {"item": 0.5, "flag": 2.0, "price": 3.0}
    logs = {}
    for scale in (1.0, 10.0):
        # Same model variables, only the compiled loss weights change.
        mtk.compile_multitask(
            model, loss_weights={k: scale * w for k, w in weights.items()}
        )
        result = model.evaluate(val, return_dict=True, verbose=0)
        logs[scale] = {"val_" + key: value for key, value in result.items()}
    assert logs[10.0]["val_loss"] == pytest.approx(10 * logs[1.0]["val_loss"], rel=1e-4)
    assert logs[10.0]["val_loss"] != pytest.approx(logs[1.0]["val_loss"], rel=0.1)
    assert score.score(logs[10.0]) == pytest.approx(score.score(logs[1.0]), abs=1e-7)


def test_score_is_skill_over_chance_from_validation_labels():
    model = make_model()
    x = np.zeros((8, 8), "float32")
    y = {
        # Majority class 0 in 3 of the 4 present labels (-1 is missing).
        "item": np.array([0, 0, 0, 2, -1, -1, -1, -1]),
        # 2 of 3 present labels are 1.
        "flag": np.array([1, 1, 0] + [np.nan] * 5, "float32"),
        # Median 2 -> mean absolute deviation (1 + 0 + 3) / 3.
        "price": np.array([1, 2, 5] + [np.nan] * 5, "float32"),
    }
    score = tuning.MultiTaskScore.from_model(model, validation_data=(x, y))
    chance = {ref.head: ref.reference for ref in score.references}
    assert chance == pytest.approx({"item": 0.75, "flag": 2 / 3, "price": 4 / 3})
    logs = {
        "val_item_accuracy": 0.875,  # half-way from chance to perfect: 0.5
        "val_flag_accuracy": 2 / 3,  # chance: 0
        "val_price_mae": 1 / 3,  # a quarter of chance's error: 0.75
    }
    assert score.score(logs) == pytest.approx((0.5 + 0.0 + 0.75) / 3)
    logs["val_item_accuracy"] = 0.75
    assert score.score(logs) == pytest.approx(0.25)


def test_score_with_baselines_is_delta_m():
    model = make_model()
    score = tuning.MultiTaskScore.from_model(
        model, baselines={"item": 0.8, "flag": 0.5, "price": 2.0}
    )
    logs = {
        "val_item_accuracy": 0.88,  # +10 %
        "val_flag_accuracy": 0.45,  # -10 %
        "val_price_mae": 1.0,  # error halved: +50 %
    }
    assert score.score(logs) == pytest.approx((0.1 - 0.1 + 0.5) / 3)


def test_score_callback_logs_the_objective_during_fit():
    model = make_model()
    mtk.compile_multitask(model)
    val = vector_data(32, seed=1)
    score = tuning.MultiTaskScore.from_model(model, validation_data=val)
    history = model.fit(
        vector_data(), validation_data=val, epochs=2, callbacks=[score], verbose=0
    )
    values = history.history[tuning.OBJECTIVE]
    assert len(values) == 2
    last = {key: series[-1] for key, series in history.history.items()}
    assert values[-1] == pytest.approx(score.score(last))


@pytest.mark.parametrize(
    "baselines, match",
    [
        ({"item": 0.8, "flag": 0.5}, r"baselines lacks head\(s\) \['price'\]"),
        ({"item": 0.8, "flag": 0.5, "price": 1.0, "size": 1.0},
         r"baselines names head\(s\) \['size'\] that the model lacks"),
        ({"item": 0.0, "flag": 0.5, "price": 1.0}, r"baselines\['item'\]"),
    ],
)
def test_bad_baselines_name_the_head(baselines, match):
    with pytest.raises(ValueError, match=match):
        tuning.score_references(make_model(), baselines=baselines)


def test_constant_validation_labels_cannot_be_scored():
    x = np.zeros((4, 8), "float32")
    y = {
        "item": np.array([1, 1, 1, 1]),
        "flag": np.array([0, 1, 0, 1], "float32"),
        "price": np.array([0, 1, 2, 3], "float32"),
    }
    with pytest.raises(ValueError, match="Head 'item'.*one value"):
        tuning.score_references(make_model(), validation_data=(x, y))


@pytest.mark.parametrize(
    "name, direction",
    [
        ("val_multitask_score", "max"),
        ("val_item_accuracy", "max"),
        ("val_is_footwear_auc", "max"),
        ("val_price_mae", "min"),
        ("val_price_loss", "min"),
    ],
)
def test_objective_direction(name, direction):
    objective = tuning.make_objective(name)
    assert (objective.name, objective.direction) == (name, direction)


# === The search ===


def test_random_search_returns_weights_for_every_head(tmp_path, capsys):
    tuner = tune(tmp_path, pinned_head="item", weight_range=(0.1, 10.0), verbose=1)
    assert isinstance(tuner, keras_tuner.RandomSearch)
    weights = tuner.best_loss_weights()
    assert sorted(weights) == sorted(HEADS)
    assert weights["item"] == 1.0
    assert all(0.1 <= weights[h] <= 10.0 for h in ("flag", "price"))

    rows = tuner.trials_table(print_table=False)
    assert len(rows) == 2 and len(trial_dirs(tmp_path)) == 2
    for row in rows:
        assert {"val_item_accuracy", "val_flag_accuracy", "val_price_mae"} <= set(row)
        assert np.isfinite(row[tuning.OBJECTIVE])
    best = [row for row in rows if row["best"]]
    assert len(best) == 1
    assert best[0][tuning.OBJECTIVE] == max(r[tuning.OBJECTIVE] for r in rows)
    assert tuning.OBJECTIVE in capsys.readouterr().out  # the printed table

    # The best model holds the weights of the best trial's best epoch.
    val = vector_data(32, seed=1)
    model = tuner.best_model()
    result = model.evaluate(val, return_dict=True, verbose=0)
    score = tuning.MultiTaskScore.from_model(model, validation_data=val)
    logs = {"val_" + key: value for key, value in result.items()}
    assert score.score(logs) == pytest.approx(best[0][tuning.OBJECTIVE], abs=1e-5)


def test_resume_skips_finished_trials(tmp_path):
    first = tune(tmp_path, max_trials=1)
    (done,) = first.trials_table(print_table=False)
    BUILDS.clear()

    resumed = tune(tmp_path, max_trials=2, callbacks=[count_epochs()])
    rows = resumed.trials_table(print_table=False)
    assert [row["trial"] for row in rows] == [done["trial"], "1"]
    assert rows[0] == {**done, "best": rows[0]["best"]}  # not re-run
    assert len(BUILDS) == 1 and len(EPOCHS) == 1  # one new trial only
    assert len(trial_dirs(tmp_path)) == 2


def test_transfer_knobs_and_make_model_hp_are_tuned(tmp_path):
    def make_model_hp(hp):
        hp.Float("head_dropout", 0.0, 0.5)
        return make_model()

    tuner = tuning.tune_loss_weights(
        make_model_hp,
        vector_data(),
        validation_data=vector_data(32, seed=1),
        max_trials=1,
        epochs=1,
        finetune_epochs=1,
        learning_rate=(1e-4, 1e-2),
        finetune_learning_rate=(1e-5, 1e-3),
        unfreeze=["all", 1],
        directory=str(tmp_path),
        callbacks=[count_epochs()],
        verbose=0,
    )
    values = tuner.get_best_hyperparameters()[0].values
    assert {"head_dropout", "learning_rate", "finetune_learning_rate"} <= set(values)
    assert values["unfreeze"] in ("all", "top:1")
    assert 1e-4 <= values["learning_rate"] <= 1e-2
    assert EPOCHS == [0, 1]  # frozen epoch, then fine-tuning epoch


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bayesian", "hyperband"])
def test_other_keras_tuner_tuners(tmp_path, kind):
    tuner = tune(tmp_path, tuner=kind, max_trials=2, epochs=2)
    expected = {
        "bayesian": keras_tuner.BayesianOptimization,
        "hyperband": keras_tuner.Hyperband,
    }[kind]
    assert isinstance(tuner, expected)
    assert sorted(tuner.best_loss_weights()) == sorted(HEADS)
    assert tuner.trials_table(print_table=False)


@pytest.mark.slow
def test_head_metric_objective(tmp_path):
    tuner = tune(tmp_path, objective="val_price_mae")
    assert tuner.oracle.objective.direction == "min"
    rows = tuner.trials_table(print_table=False)
    (best,) = [row for row in rows if row["best"]]
    assert best["val_price_mae"] == min(row["val_price_mae"] for row in rows)


def test_frozen_trunk_without_finetuning_warns():
    def make_frozen_model():
        model = make_model()
        mtk.freeze_trunk(model)
        return model

    hypermodel = tuning.MultiTaskHyperModel(make_frozen_model)
    with pytest.warns(UserWarning, match="frozen trunk and finetune_epochs=0"):
        hypermodel.build(keras_tuner.HyperParameters())
    finetuned = tuning.MultiTaskHyperModel(make_frozen_model, finetune_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finetuned.build(keras_tuner.HyperParameters())


# === Bad input ===


@pytest.mark.parametrize(
    "weight_range, match",
    [
        ((0.0, 10.0), r"min must be > 0"),
        ((-1.0, 10.0), r"min must be > 0"),
        ((5.0, 1.0), r"min 5.0 > max 1.0"),
        ({"flag": (2.0, 1.0)}, r"weight_range\['flag'\].*min 2.0 > max 1.0"),
        ((1.0,), r"\(min, max\) pair"),
    ],
)
def test_bad_weight_range_fails_before_any_trial(tmp_path, weight_range, match):
    with pytest.raises(ValueError, match=match):
        tune(tmp_path, weight_range=weight_range)
    assert BUILDS == [] and trial_dirs(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"pinned_head": "size"}, r"pinned_head names head 'size'.*\['flag', 'item', 'price'\]"),
        ({"weight_range": {"size": (0.1, 1.0)}},
         r"weight_range names head\(s\) \['size'\].*\['flag', 'item', 'price'\]"),
        ({"baselines": {"item": 0.5, "flag": 0.5}}, r"baselines lacks head\(s\) \['price'\]"),
    ],
)
def test_unknown_head_fails_before_any_trial(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tune(tmp_path, **kwargs)
    assert trial_dirs(tmp_path) == [] and EPOCHS == []


def test_objective_never_logged_fails_before_any_trial(tmp_path):
    with pytest.raises(ValueError, match="'val_nope_accuracy' is never logged") as error:
        tune(
            tmp_path,
            objective="val_nope_accuracy",
            max_trials=3,
            epochs=3,
            callbacks=[count_epochs()],
        )
    assert "'val_item_accuracy'" in str(error.value)  # lists what is logged
    assert EPOCHS == [] and trial_dirs(tmp_path) == []


def test_log_names_are_what_fit_logs(tmp_path):
    model = make_model()
    mtk.compile_multitask(model)
    history = model.fit(vector_data(), validation_data=vector_data(32, seed=1),
                        epochs=1, verbose=0).history
    names = model.log_names()
    assert sorted(history) == sorted(names + ["val_" + n for n in names])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"validation_data": None}, "validation_data is required"),
        ({"tuner": "grid"}, "tuner must be one of"),
        ({"max_trials": 0}, "max_trials must be"),
        ({"tuner": "hyperband", "finetune_epochs": 1}, "hyperband"),
        ({"unfreeze": "top:99", "finetune_epochs": 1}, "top:99"),
        ({"learning_rate": (1e-2, 1e-4)}, "learning_rate"),
    ],
)
def test_other_bad_arguments_fail_before_training(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tune(tmp_path, callbacks=[count_epochs()], **kwargs)
    assert EPOCHS == []


# === Distribution ===

MIRRORED_SCRIPT = """
import tensorflow as tf
import test_tuning
from mtk import tuning

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
built_in = []
def make_model():
    built_in.append(tf.distribute.get_strategy())
    return test_tuning.make_model()

tuner = tuning.tune_loss_weights(
    make_model, test_tuning.vector_data(),
    validation_data=test_tuning.vector_data(32, seed=1),
    max_trials=1, epochs=1, finetune_epochs=1, directory=sys.argv[1],
    distribution_strategy=strategy, verbose=0)
(row,) = tuner.trials_table(print_table=False)
model = tuner.best_model()
report({
    "built_in_strategy": built_in[-1] is strategy,
    "best_model_strategy": model.distribute_strategy is strategy,
    "replicas": strategy.num_replicas_in_sync,
    "weights": sorted(tuner.best_loss_weights()),
    "score": float(row[tuning.OBJECTIVE]),
})
"""


@pytest.mark.slow
def test_tuner_runs_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    result = run_python(MIRRORED_SCRIPT, tmp_path, logical_cpus=2, args=[tmp_path],
                        timeout=300)
    assert result["built_in_strategy"] and result["best_model_strategy"]
    assert result["replicas"] == 2
    assert result["weights"] == ["flag", "item", "price"]
    assert np.isfinite(result["score"])
