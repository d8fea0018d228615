"""Tests of mtk.tuning: loss-weight tuning with KerasTuner."""

import glob
import json
import os
import re
import socket
import warnings

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

import mtk
from mtk import tuning
from testing import finish_python
from testing import run_python
from testing import start_python

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
    return tiny_model()


def tiny_model(**kwargs):
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
        **kwargs,
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


# KerasTuner's distributed mode: one chief serving the oracle on 127.0.0.1,
# workers asking it for trials. The same script runs in every process.
DISTRIBUTED_SCRIPT = """
import time
import keras
import test_tuning
from mtk import tuning

directory, barrier = sys.argv[1], sys.argv[2]
tuner_id = os.environ["KERASTUNER_TUNER_ID"]

class BothWorkersTrain(keras.callbacks.Callback):
    # Holds a worker's trial until the other worker trains too: without it,
    # one worker could run all four trials before the other asks for one.
    def on_train_begin(self, logs=None):
        open(os.path.join(barrier, tuner_id), "w").close()
        deadline = time.monotonic() + 120  # no hang if the other one died
        while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)

tuner = tuning.tune_loss_weights(
    test_tuning.make_model, test_tuning.vector_data(),
    validation_data=test_tuning.vector_data(32, seed=1),
    max_trials=4, epochs=1, directory=directory, overwrite=False,
    callbacks=[BothWorkersTrain()], chief_timeout=120)
report({"returned": None} if tuner is None else {
    "weights": tuner.best_loss_weights(),
    "rows": tuner.trials_table(print_table=False),
})
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kerastuner_env(tuner_id, port):
    return {
        "KERASTUNER_TUNER_ID": tuner_id,
        "KERASTUNER_ORACLE_IP": "127.0.0.1",
        "KERASTUNER_ORACLE_PORT": str(port),
    }


@pytest.mark.slow
def test_distributed_search_chief_and_two_workers_on_localhost(tmp_path):
    directory, barrier = tmp_path / "search", tmp_path / "barrier"
    barrier.mkdir()
    port = free_port()
    names = ("chief", "worker0", "worker1")
    processes = {
        name: start_python(DISTRIBUTED_SCRIPT, tmp_path, name=name,
                           args=[directory, barrier], env=kerastuner_env(name, port))
        for name in names
    }
    results = {name: finish_python(processes[name], timeout=300) for name in names}
    for name, (returncode, _, output) in results.items():
        assert returncode == 0, f"{name}:\n{output[-4000:]}"

    # The chief printed the table and returned the best of the four trials.
    _, chief, chief_output = results["chief"]
    assert tuning.OBJECTIVE in chief_output and "4 trials" in chief_output
    rows = chief["rows"]
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3"]
    (best,) = [row for row in rows if row["best"]]
    assert best[tuning.OBJECTIVE] == max(row[tuning.OBJECTIVE] for row in rows)
    assert chief["weights"] == {h: best["weight_" + h] for h in HEADS}

    # Each worker ran some of them, and together all of them, once.
    ran = {}
    for name in ("worker0", "worker1"):
        returncode, worker_report, output = results[name]
        assert worker_report == {"returned": None}  # results are the chief's
        (line,) = re.findall(rf"Worker '{name}' ran trials ([\d, ]+);", output)
        ran[name] = line.split(", ")
    assert all(ran.values()), ran
    assert sorted(ran["worker0"] + ran["worker1"]) == ["0", "1", "2", "3"]
    trial_files = sorted(glob.glob(str(directory / "loss_weights" / "trial_*" / "trial.json")))
    assert len(trial_files) == 4
    before = [open(f).read() for f in trial_files]

    # Re-running the chief on the finished search serves nothing (no worker
    # would come: KerasTuner's chief would wait forever) and re-runs no trial.
    again = start_python(DISTRIBUTED_SCRIPT, tmp_path, name="chief_again",
                         args=[directory, barrier], env=kerastuner_env("chief", port))
    returncode, resumed, output = finish_python(again, timeout=300)
    assert returncode == 0, output[-4000:]
    assert "is complete; not serving it" in output
    assert resumed == chief
    assert [open(f).read() for f in trial_files] == before
    assert all(json.loads(text)["status"] == "COMPLETED" for text in before)


def test_worker_without_a_reachable_chief_fails_within_chief_timeout(
    tmp_path, monkeypatch
):
    # A port bound but not listening on 127.0.0.1: every connection is refused.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        for key, value in kerastuner_env("worker0", port).items():
            monkeypatch.setenv(key, value)
        assert tuning.tuner_role() == "worker"
        with pytest.raises(ConnectionError) as error:
            tune(tmp_path, chief_timeout=1.5, callbacks=[count_epochs()])
    message = str(error.value)
    for part in (f"127.0.0.1:{port}", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT",
                 "KERASTUNER_TUNER_ID", "'worker0'", "1.5 s"):
        assert part in message
    assert not EPOCHS  # no trial started


def test_tuner_role_reads_kerastuner_environment(monkeypatch):
    for key in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert tuning.tuner_role() is None
    for key, value in kerastuner_env("chief", 8000).items():
        monkeypatch.setenv(key, value)
    assert tuning.tuner_role() == "chief"
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner3")
    assert tuning.tuner_role() == "worker"
    monkeypatch.delenv("KERASTUNER_ORACLE_PORT")
    with pytest.raises(RuntimeError, match="KERASTUNER_ORACLE_PORT"):
        tuning.tuner_role()


def test_a_restarted_chief_runs_no_trial_twice(tmp_path, monkeypatch):
    for key, value in kerastuner_env("chief", free_port()).items():
        monkeypatch.setenv(key, value)  # nothing serves: no search() here

    def chief(overwrite):
        return tuning.TUNERS["random"](
            tuning.MultiTaskHyperModel(make_model),
            objective=tuning.make_objective(tuning.OBJECTIVE),
            max_trials=3, directory=str(tmp_path), overwrite=overwrite)

    def report_done(oracle, trial_id):
        oracle.update_trial(trial_id, {tuning.OBJECTIVE: 0.5})
        trial = oracle.get_trial(trial_id)
        trial.status = keras_tuner.engine.trial.TrialStatus.COMPLETED
        oracle.end_trial(trial)

    first = chief(overwrite=True)
    first.save()  # as KerasTuner's chief does before it serves
    assert first.oracle.create_trial("worker0").trial_id == "0"
    assert first.oracle.create_trial("worker1").trial_id == "1"
    # The chief is killed and restarted; both workers go on.
    oracle = chief(overwrite=False).oracle
    report_done(oracle, "0")
    assert oracle.create_trial("worker0").trial_id == "2"  # not "1": worker1 has it
    # worker1, killed as well and restarted, gets its unfinished trial back.
    assert oracle.create_trial("worker1").trial_id == "1"
    report_done(oracle, "1")
    report_done(oracle, "2")
    assert oracle.create_trial("worker1").status == "STOPPED"
    assert oracle.create_trial("worker0").status == "STOPPED"
    assert [oracle.get_trial(t).score for t in "012"] == [0.5, 0.5, 0.5]


# === Searching how to multi-task ===


def make_model_how(loss_weighting="static", sharing="hard"):
    """The tiny model of make_model, with the searched method and sharing."""
    BUILDS.append((loss_weighting, sharing))
    return tiny_model(loss_weighting=loss_weighting, sharing=sharing)


def search_how(tmp_path, **kwargs):
    options = dict(
        validation_data=vector_data(32, seed=1),
        max_trials=4,
        epochs=1,
        search={"loss_weighting": ["static", "famo"], "sharing": ["hard", "mmoe"]},
        directory=str(tmp_path),
        seed=3,
        verbose=0,
    )
    options.update(kwargs)
    return tuning.tune_multitask(make_model_how, vector_data(), **options)


def test_search_over_methods_and_sharing(tmp_path):
    tuner = search_how(tmp_path)
    rows = tuner.trials_table(print_table=False)
    assert len(rows) == 4
    built = [(type(w).__name__ if not isinstance(w, str) else w, s)
             for w, s in BUILDS]
    for row in rows:
        assert row["loss_weighting"] in ("static", "famo")
        assert row["sharing"] in ("hard", "mmoe")
        assert row["step_time_ms"] > 0
        assert np.isfinite(row[tuning.OBJECTIVE])
        # The trial's model was built with what its row says.
        assert (row["loss_weighting"], row["sharing"]) in built
        assert not any(key.startswith("weight_") for key in row)  # all 1
    assert {(r["loss_weighting"], r["sharing"]) for r in rows} != {
        (rows[0]["loss_weighting"], rows[0]["sharing"])
    }  # the space is explored
    (best,) = [row for row in rows if row["best"]]
    assert best[tuning.OBJECTIVE] == max(r[tuning.OBJECTIVE] for r in rows)
    assert tuner.best_config() == {
        "loss_weighting": best["loss_weighting"],
        "sharing": best["sharing"],
    }
    path = tuning.plot_search(tuner, str(tmp_path / "search.png"))
    assert os.path.getsize(path) > 1000


def test_configured_objects_and_tuned_static_weights(tmp_path):
    tuner = search_how(
        tmp_path,
        max_trials=3,
        search={
            "loss_weighting": [mtk.weighting.FAMO(weight_decay=0.01)],
            "sharing": [mtk.sharing.MMoE(num_experts=2, expert_units=[4])],
            "loss_weights": (0.5, 2.0),
        },
    )
    hypermodel = tuner.hypermodel
    assert list(hypermodel.choices["loss_weighting"]) == [
        "static", "famo(weight_decay=0.01)", "static:tuned"
    ]
    label = "mmoe(num_experts=2,expert_units=[4])"
    assert list(hypermodel.choices["sharing"]) == ["hard", label]
    # Each trial gets its own copy of a configured object.
    copies = [hypermodel.choice("sharing", label) for _ in range(2)]
    assert copies[0] is not copies[1] and copies[0].num_experts == 2
    for row in tuner.trials_table(print_table=False):
        weights = {k: v for k, v in row.items() if k.startswith("weight_")}
        if row["loss_weighting"] == "static:tuned":
            assert len(weights) == 3 and all(0.5 <= w <= 2.0 for w in weights.values())
        else:
            assert weights == {}
    # Weights are drawn under "static:tuned" only, with static weighting.
    for label, drawn in (("static:tuned", 3), ("famo(weight_decay=0.01)", 0)):
        hp = keras_tuner.HyperParameters()
        hp.Choice("loss_weighting", list(hypermodel.choices["loss_weighting"]))
        hp.values["loss_weighting"] = label
        model = hypermodel.build(hp)
        weights = tuning.hypermodel.loss_weights_of(hp)
        assert len(weights) == drawn
        assert all(0.5 <= w <= 2.0 for w in weights.values())
        expected = "StaticWeighting" if drawn else "FAMO"
        assert type(model.loss_weighting).__name__ == expected


def test_cost_weight_ranks_by_the_cost_aware_score(tmp_path):
    tuner = search_how(tmp_path, max_trials=2, cost_weight=0.5)
    assert tuner.oracle.objective.name == tuning.COST_OBJECTIVE
    for row in tuner.trials_table(print_table=False):
        assert row[tuning.COST_OBJECTIVE] == pytest.approx(
            row[tuning.OBJECTIVE] - 0.5 * row["step_time_ms"], abs=1e-4
        )


def test_pareto_front():
    points = [(0.5, 1.0), (0.7, 2.0), (0.6, 3.0), (0.4, 0.5), (0.7, 2.5)]
    assert tuning.pareto_front(points) == [3, 0, 1]
    assert tuning.pareto_front(points, maximize=False) == [3]


@pytest.mark.parametrize(
    "search, match",
    [
        ({}, "empty"),
        ({"loss_weights": False}, "empty"),
        ({"sharing": []}, r"search\['sharing'\] is empty"),
        ({"balancing": ["famo"]}, "Unknown search key 'balancing'.*loss_weighting"),
        ({"loss_weighting": ["famoo"]}, "unknown method 'famoo'.*'uncertainty'"),
        ({"sharing": ["moe"]}, "'moe'.*Known names.*'mmoe'"),
        ({"sharing": ["mtan"]}, "MTAN\\(at="),
        ({"loss_weighting": [3]}, "neither a method name"),
    ],
)
def test_bad_search_spaces_fail_before_any_trial(tmp_path, search, match):
    with pytest.raises(ValueError, match=match):
        search_how(tmp_path, search=search)
    assert BUILDS == [] and trial_dirs(tmp_path, "multitask") == []


def test_make_model_must_take_the_searched_keywords(tmp_path):
    with pytest.raises(TypeError, match=r"sharing=\.\.\."):
        tuning.tune_multitask(
            make_model, vector_data(), vector_data(32, seed=1),
            search={"sharing": ["mmoe"]}, directory=str(tmp_path),
        )
    with pytest.raises(ValueError, match="cost_weight"):
        search_how(tmp_path, cost_weight=1.0, objective="val_price_mae")


def test_fine_tuning_schedule_is_searched(tmp_path):
    tuner = search_how(
        tmp_path,
        max_trials=1,
        finetune_epochs=1,
        search={"unfreeze": ["all", 1], "finetune_learning_rate": (1e-5, 1e-3)},
        callbacks=[count_epochs()],
    )
    config = tuner.best_config()
    assert config["unfreeze"] in ("all", "top:1")
    assert 1e-5 <= config["finetune_learning_rate"] <= 1e-3
    assert EPOCHS == [0, 1]  # frozen epoch, then fine-tuning epoch
    assert BUILDS[-1] == ("static", "hard")  # make_model's own defaults


def test_tunable_parameters_and_epochs_per_phase_are_searched(tmp_path):
    temperature = tuning.Tunable("dwa", temperature=(1.0, 4.0))
    experts = tuning.Tunable(
        mtk.sharing.MMoE(expert_units=[4]), num_experts=[2, 3]
    )
    tuner = search_how(
        tmp_path,
        max_trials=4,
        search={"loss_weighting": [temperature], "sharing": [experts],
                "epochs": [1, 2], "finetune_epochs": [0, 1]},
        callbacks=[count_epochs()],
    )
    rows = tuner.trials_table(print_table=False)
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    assert len(rows) == len(trials) == 4
    epochs_run = 0
    # Before the trials KerasTuner builds to learn the space (a build per
    # conditional branch); the trials' own builds come last.
    for row, trial, (method, sharing) in zip(rows, trials, BUILDS[-4:]):
        values = trial.hyperparameters.values
        # The model was built with the drawn values, and the row shows them.
        if values["loss_weighting"] == "dwa[temperature]":
            drawn = values["dwa[temperature]/temperature"]
            assert 1.0 <= drawn <= 4.0 and method.temperature == drawn
            assert row["loss_weighting"] == f"dwa(temperature={drawn:.3g})"
        else:
            assert method == "static" and row["loss_weighting"] == "static"
        label = "mmoe(expert_units=[4])[num_experts]"
        if values["sharing"] == label:
            assert sharing.num_experts == values[label + "/num_experts"]
            assert list(sharing.expert_units) == [4]  # the object's other values
            assert row["sharing"] == (
                f"mmoe(expert_units=[4],num_experts={sharing.num_experts})"
            )
        else:
            assert sharing == "hard"
        assert row["epochs"] == values["epochs"] in (1, 2)
        assert row["finetune_epochs"] == values["finetune_epochs"] in (0, 1)
        epochs_run += values["epochs"] + values["finetune_epochs"]
    assert len(EPOCHS) == epochs_run  # each trial trained what it drew
    assert {r["loss_weighting"] == "static" for r in rows} == {True, False}
    assert {r["sharing"] == "hard" for r in rows} == {True, False}
    assert len({(r["epochs"], r["finetune_epochs"]) for r in rows}) > 1
    # A Tunable's parameters exist only in the trials that pick it.
    assert all(
        ("dwa[temperature]/temperature" in t.hyperparameters.values)
        == (t.hyperparameters.values["loss_weighting"] == "dwa[temperature]")
        for t in trials
    )
    best = tuner.get_best_hyperparameters()[0]
    if best["loss_weighting"] != "static":
        assert tuner.hypermodel.choice(
            "loss_weighting", best["loss_weighting"], best
        ).temperature == best["dwa[temperature]/temperature"]


def test_tunable_and_epoch_search_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"no parameter 'experts'.*'num_experts'"):
        search_how(tmp_path, search={"sharing": [tuning.Tunable("mmoe", experts=[2])]})
    with pytest.raises(ValueError, match="names no parameter"):
        tuning.Tunable("dwa")
    with pytest.raises(ValueError, match=r"temperature=\(4\.0, 1\.0\)"):
        tuning.Tunable("dwa", temperature=(4.0, 1.0))
    with pytest.raises(ValueError, match="unknown method 'dwaa'"):
        search_how(tmp_path, search={"loss_weighting": [
            tuning.Tunable("dwaa", temperature=[1.0])]})
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 1"):
        search_how(tmp_path, search={"epochs": [0, 2]})
    with pytest.raises(ValueError, match="give one"):
        search_how(tmp_path, search={"finetune_epochs": [0, 1]}, finetune_epochs=2)
    with pytest.raises(ValueError, match="hyperband"):
        search_how(tmp_path, search={"epochs": [1, 2]}, tuner="hyperband")
    assert not BUILDS  # nothing was built
