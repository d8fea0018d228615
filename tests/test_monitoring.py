"""Tests of mtk.monitoring and its command line, mtk.monitor.

One small model, trained once per module on synthetic 8x8 images whose class
is the bright quadrant and whose flag is a faint checkerboard: the image mean
does not depend on either, and the trunk normalizes each image, so a
brightness shift moves the input statistics and leaves the outputs alone.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

import mtk
from mtk import monitoring
from mtk.monitor import main

SHAPE = (8, 8, 1)
UNIFORM = (0.25, 0.25, 0.25, 0.25)
SKEWED = (0.55, 0.15, 0.15, 0.15)
CHECKERBOARD = (np.indices(SHAPE[:2]).sum(axis=0) % 2 * 2 - 1)[..., None]


def images(n, seed, class_prior=UNIFORM, brightness=0.0, noise=0.0):
    """Images with labels: class = bright quadrant, flag = checkerboard."""
    rng = np.random.default_rng(seed)
    item = rng.choice(4, size=n, p=class_prior)
    flag = rng.integers(0, 2, n)
    x = rng.uniform(20, 60, (n,) + SHAPE)
    for i, c in enumerate(item):
        row, col = divmod(c, 2)
        x[i, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 80
    x += 15 * flag[:, None, None, None] * CHECKERBOARD
    x += brightness + rng.normal(0, noise, x.shape) if noise else brightness
    labels = {"item": item.astype("int64"), "flag": flag.astype("float32")}
    return x.astype("float32"), labels


@pytest.fixture(scope="module")
def trained_model():
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.LayerNormalization(axis=(1, 2, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
        ]
    )
    model = mtk.build_multitask_model(
        trunk,
        heads=[
            mtk.heads.Classification("item", 4, class_names=list("abcd")),
            mtk.heads.Binary("flag"),
        ],
        trunk_weights=None,
        freeze_trunk=False,
        learning_rate=1e-2,
    )
    x, y = images(2000, seed=1)
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def export(trained_model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("exports") / "shapes")
    x, y = images(1000, seed=2)
    reference = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    mtk.export_saved_model(trained_model, base, reference_data=reference)
    return base


@pytest.fixture(scope="module")
def served(export):
    return monitoring.ServedModel(export)


def write_logs(served, path, x, batch_size, corrupt_at=()):
    """PredictionLog records as TF Serving writes them, with the protos."""
    spec = model_pb2.ModelSpec(name="shapes", signature_name="serving_default")
    with tf.io.TFRecordWriter(path) as writer:
        for index, start in enumerate(range(0, len(x), batch_size)):
            batch = x[start:start + batch_size]
            if index in corrupt_at:
                writer.write(b"\xff\xff not a PredictionLog")
                continue
            outputs = served.signature(inputs=tf.constant(batch))
            request = predict_pb2.PredictRequest(model_spec=spec)
            request.inputs["inputs"].CopyFrom(tf.make_tensor_proto(batch))
            response = predict_pb2.PredictResponse(model_spec=spec)
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(
                    request=request, response=response
                )
            )
            log.log_metadata.model_spec.CopyFrom(spec)
            writer.write(log.SerializeToString())


# === The profile written at export ===


def test_export_writes_the_profile_beside_the_model(export, served):
    path = os.path.join(monitoring.version_dir(export), monitoring.PROFILE_FILE)
    with open(path) as f:
        profile = json.load(f)
    assert profile["examples"] == 1000
    assert profile["heads"]["item"] == {
        "kind": "Classification", "units": 4, "names": ["a", "b", "c", "d"]
    }
    assert sorted(profile["outputs"]["item"]) == ["class", "confidence"]
    assert sorted(profile["input_stats"]["inputs"]) == ["mean", "std"]
    # Labels came with the reference data: the trained model is accurate.
    assert profile["metrics"]["item"]["labels"] == 1000
    assert profile["metrics"]["item"]["value"] > 0.9
    assert profile["metrics"]["flag"]["value"] > 0.9
    assert sum(profile["outputs"]["item"]["class"]["counts"]) == 1000
    # The version dir holds nothing half-written beside it.
    assert sorted(os.listdir(export)) == ["1"]


def test_profile_at_export_is_what_the_saved_model_serves(served):
    x, y = images(1000, seed=2)
    reference = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    again = monitoring.profile_traffic(monitoring.observe(served, reference))
    assert again == served.profile
    report = monitoring.compare(
        served.profile, monitoring.observe(served, reference)
    )
    assert report["flagged"] == []
    assert report["heads"]["item"]["psi"] == 0.0
    # Labels that come with a dataset are joined by position.
    assert report["heads"]["item"]["quality"]["labels"] == 1000
    assert report["heads"]["item"]["quality"]["value"] == pytest.approx(
        served.profile["metrics"]["item"]["value"]
    )


def test_bad_reference_data_leaves_no_version(trained_model, tmp_path):
    base = tmp_path / "shapes"
    x, _ = images(10, seed=3)
    with pytest.raises(ValueError, match="'pixels'.*'inputs'"):
        mtk.export_saved_model(
            trained_model, base, reference_data={"pixels": x}
        )
    assert not base.exists() or os.listdir(base) == []


def test_profile_of_other_kinds(tmp_path):
    trunk = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model = mtk.build_multitask_model(
        trunk,
        heads=[
            mtk.heads.MultiLabel("tags", 2, label_names=["x", "y"]),
            mtk.heads.Regression("price", units=2),
        ],
        trunk_weights=None,
    )
    x = np.random.default_rng(0).normal(size=(50, 3))
    profile = monitoring.compute_profile(model, x)
    assert sorted(profile["outputs"]["tags"]) == ["score[x]", "score[y]"]
    assert sorted(profile["outputs"]["price"]) == ["value[0]", "value[1]"]
    value = profile["outputs"]["price"]["value[0]"]
    # Decile bins: about a tenth of the reference in each.
    assert len(value["counts"]) == 10 and max(value["counts"]) <= 6
    assert sorted(profile["input_stats"]["inputs"]) == [
        "column[0]", "column[1]", "column[2]"
    ]


def test_regression_head_drift_and_error_interval():
    head = {"kind": "Regression", "units": 1, "names": None}
    model = {"inputs": [{"name": "x", "dtype": "float32", "shape": [None]}],
             "heads": {"price": head}}
    rng = np.random.default_rng(0)

    def traffic(shift, n=2000):
        t = monitoring.Traffic(model, "synthetic")
        values = rng.normal(shift, 1.0, (n, 1))
        labels = {"price": values[:, 0] + rng.normal(0, 0.5, n)}
        t.add([str(i) for i in range(n)], rng.normal(size=n), {"price": values}, labels)
        return t

    profile = monitoring.profile_traffic(traffic(0.0))
    assert len(profile["outputs"]["price"]["value"]["edges"]) == 9
    assert profile["metrics"]["price"]["metric"] == "mae"
    same = monitoring.compare(profile, traffic(0.0))
    moved = monitoring.compare(profile, traffic(1.0))
    assert same["flagged"] == [] and moved["flagged"] == ["price"]
    assert moved["heads"]["price"]["features"]["value"]["mean_shift"] == (
        pytest.approx(1.0, abs=0.1)
    )
    quality = same["heads"]["price"]["quality"]
    # MAE of N(0, 0.5) noise is 0.5 * sqrt(2 / pi) ~ 0.399.
    assert quality["ci_low"] < 0.399 < quality["ci_high"]
    assert quality["interval"] == "normal approximation 95%"


def test_text_input_statistics():
    spec = {"name": "text", "dtype": "string", "shape": [None]}
    features = monitoring.input_features(spec, np.array([b"one two", b"three"]))
    np.testing.assert_array_equal(features["length"], [7, 5])
    np.testing.assert_array_equal(features["words"], [2, 1])


# === Measures ===


def test_psi_and_js_of_identical_and_disjoint_histograms():
    assert monitoring.psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert monitoring.js_distance([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert monitoring.js_distance([5, 0], [0, 5]) == pytest.approx(1.0)
    # Textbook value: 0.5 -> 0.8 and 0.5 -> 0.2.
    expected = 0.3 * np.log(0.8 / 0.5) + (-0.3) * np.log(0.2 / 0.5)
    assert monitoring.psi([50, 50], [80, 20]) == pytest.approx(expected)


def test_wilson_interval_matches_the_formula_and_covers():
    low, high = monitoring.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        low, high = monitoring.wilson_interval(rng.binomial(60, 0.8), 60)
        covered += low <= 0.8 <= high
    assert 0.92 <= covered / 400 <= 0.98


# === Controlled shifts ===


@pytest.mark.parametrize(
    "case, prior, brightness, noise, expected",
    [
        ("no shift", UNIFORM, 0.0, 0.0, []),
        ("label-prior shift", SKEWED, 0.0, 0.0, ["item"]),
        ("covariate shift", UNIFORM, 60.0, 0.0, ["inputs"]),
        # Noise drowns the faint checkerboard (the flag's signal), not the
        # bright quadrant (the item's): the flag head and the input move.
        ("noise", UNIFORM, 0.0, 30.0, ["flag", "inputs"]),
    ],
)
def test_report_flags_exactly_the_shifted_part(
    served, case, prior, brightness, noise, expected
):
    x, _ = images(
        1000, seed=10, class_prior=prior, brightness=brightness, noise=noise
    )
    report = monitoring.compare(served.profile, monitoring.observe(served, x))
    assert report["flagged"] == expected, case
    for name in expected:
        section = "inputs" if name == "inputs" else "heads"
        assert report[section][name]["flags"] == ["psi"]
        assert report[section][name]["psi"] > 0.2
    if case == "noise":
        std = report["inputs"]["inputs"]["features"]["std"]
        assert std["mean_shift"] > 10
        assert report["heads"]["item"]["psi"] < 0.1
    if case == "label-prior shift":
        change = report["heads"]["item"]["features"]["class"]["change"]
        assert change[0] > 0.2 and all(c < -0.05 for c in change[1:])
    if case == "covariate shift":
        mean = report["inputs"]["inputs"]["features"]["mean"]
        assert mean["mean_shift"] == pytest.approx(60.0, abs=0.5)
        assert report["heads"]["item"]["psi"] < 0.01


def test_labels_for_some_heads_joined_by_id(served, tmp_path):
    x, y = images(400, seed=11)
    traffic = monitoring.observe(served, x)
    good = {str(i): int(y["item"][i]) for i in range(0, 400, 2)}
    report = monitoring.compare(served.profile, traffic, labels={"item": good})
    quality = report["heads"]["item"]["quality"]
    assert quality["labels"] == 200 and quality["metric"] == "accuracy"
    assert quality["interval"] == "Wilson score 95%"
    assert quality["ci_low"] < quality["value"] <= quality["ci_high"]
    assert "quality" not in report["heads"]["flag"]
    assert report["flagged"] == []

    # Late labels for requests not seen yet are counted, not joined; wrong
    # predictions (labels shifted by one class) are a significant drop.
    wrong = {str(i): (int(y["item"][i]) + 1) % 4 for i in range(100)}
    wrong["late-request"] = 0
    report = monitoring.compare(served.profile, traffic, labels={"item": wrong})
    quality = report["heads"]["item"]["quality"]
    assert quality["labels"] == 100 and quality["unmatched"] == 1
    assert report["heads"]["item"]["flags"] == ["metric_drop"]
    assert report["flagged"] == ["item"]

    # Labels that join nothing: no metric (NaN), written as JSON null.
    report = monitoring.compare(
        served.profile, traffic, labels={"flag": {"late": 1.0}}
    )
    assert report["heads"]["flag"]["quality"]["labels"] == 0
    monitoring.write_report(report, str(tmp_path))
    with open(tmp_path / "report.json") as f:
        strict = json.load(f, parse_constant=lambda c: pytest.fail(c))
    assert strict["heads"]["flag"]["quality"]["value"] is None


def test_thresholds_per_head(served):
    x, _ = images(1000, seed=10, class_prior=SKEWED)
    traffic = monitoring.observe(served, x)
    report = monitoring.compare(
        served.profile, traffic, thresholds={"item:psi": 5.0, "flag:psi": 1e-9}
    )
    assert report["flagged"] == ["flag"]
    assert report["thresholds"]["item"]["psi"] == 5.0
    assert report["thresholds"]["inputs"]["psi"] == 0.2
    with pytest.raises(ValueError, match="'colour'"):
        monitoring.compare(served.profile, traffic, thresholds={"colour:psi": 1})
    with pytest.raises(ValueError, match="'spread'"):
        monitoring.compare(served.profile, traffic, thresholds={"spread": 1})


# === TF Serving's logs ===


def test_prediction_logs_give_the_same_report_as_the_dataset(served, tmp_path):
    x, _ = images(600, seed=12, class_prior=SKEWED)
    path = str(tmp_path / "requests.log")
    write_logs(served, path, x, batch_size=8)
    from_logs = monitoring.read_prediction_logs(served, path)
    assert from_logs.records_read == 75 and from_logs.records_skipped == 0
    assert from_logs.ids[:2] == ["requests.log:0:0", "requests.log:0:1"]
    from_data = monitoring.observe(served, x, batch_size=8)
    a = monitoring.compare(served.profile, from_logs)
    b = monitoring.compare(served.profile, from_data)
    a.pop("traffic"), b.pop("traffic")
    assert a == b
    assert a["flagged"] == ["item"]


def test_damaged_logs_are_read_up_to_the_damage(served, tmp_path):
    x, _ = images(40, seed=13)
    logs = tmp_path / "logs"
    logs.mkdir()
    write_logs(served, str(logs / "a.log"), x, batch_size=2, corrupt_at=(3,))
    write_logs(served, str(logs / "b.log"), x, batch_size=2)
    with open(logs / "b.log", "rb") as f:
        data = f.read()
    with open(logs / "b.log", "wb") as f:
        f.write(data[: len(data) - 100])  # the last record is cut short
    write_logs(served, str(logs / "c.log"), x, batch_size=2)
    data = bytearray((logs / "c.log").read_bytes())
    record = len(data) // 20
    data[5 * record + record // 2] ^= 0xFF  # inside record 5: CRC mismatch
    (logs / "c.log").write_bytes(bytes(data))

    traffic = monitoring.read_prediction_logs(served, str(logs))
    # a: 19 of 20, b: 19 of 20, c: 5 of 20 (records 5-19 past the damage).
    assert traffic.records_read == 19 + 19 + 5
    assert traffic.records_skipped == 1 + 1 + 15
    problems = "\n".join(traffic.problems)
    assert "a.log:3: not a PredictionLog" in problems
    assert "b.log: record 19 and after unreadable" in problems
    assert "c.log: record 5 and after unreadable" in problems
    assert len(traffic) == 2 * (19 + 19 + 5)


def test_cli_writes_a_report_from_damaged_logs(export, served, tmp_path, capsys):
    x, _ = images(40, seed=14)
    log = str(tmp_path / "requests.log")
    write_logs(served, log, x, batch_size=2, corrupt_at=(0,))
    out = str(tmp_path / "report")
    assert main([export, log, "--out", out]) in (0, 1)
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["traffic"]["records_read"] == 19
    assert report["traffic"]["records_skipped"] == 1
    assert "1 log records skipped" in capsys.readouterr().err


def test_unreadable_logs_only_are_an_error_that_keeps_the_counts(
    export, tmp_path, capsys
):
    log = str(tmp_path / "garbage.log")
    with tf.io.TFRecordWriter(log) as writer:
        writer.write(b"\xff\xff")
    out = str(tmp_path / "report")
    assert main([export, log, "--out", out]) == 2
    assert "no examples (0 log records read, 1 skipped)" in capsys.readouterr().err
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["traffic"]["records_skipped"] == 1


# === Bad input ===


def test_profile_from_another_model_names_the_heads(export):
    trunk = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten()])
    other = mtk.build_multitask_model(
        trunk,
        heads=[
            mtk.heads.Regression("item"),
            mtk.heads.Classification("colour", 3),
        ],
        trunk_weights=None,
    )
    profile = monitoring.compute_profile(other, np.zeros((4,) + SHAPE))
    with pytest.raises(ValueError, match="another model") as error:
        monitoring.ServedModel(export, profile)
    message = str(error.value)
    assert "head 'item' is Regression in the profile but Classification" in message
    assert "head 'colour' (Classification) is not an output" in message
    assert "['flag']" in message

    renamed = dict(monitoring.load_profile(export))
    renamed["inputs"] = [dict(renamed["inputs"][0], name="pixels")]
    with pytest.raises(ValueError, match=r"inputs are \['pixels'\].*takes \['inputs'\]"):
        monitoring.ServedModel(export, renamed)


def test_profile_of_the_first_format_still_reads(export, served):
    """Version 1 profiles held one "input"; they load as version 2."""
    legacy = dict(monitoring.load_profile(export), version=1)
    legacy["input"] = {k: v for k, v in legacy.pop("inputs")[0].items() if k != "kind"}
    x, _ = images(50, seed=16)
    now = monitoring.observe(monitoring.ServedModel(export, legacy), x)
    assert (monitoring.compare(legacy, now)["inputs"]["inputs"]["psi"]
            == pytest.approx(monitoring.compare(served.profile, now)["inputs"]["inputs"]["psi"]))


def test_traffic_with_inputs_the_signature_does_not_take(export, served, tmp_path, capsys):
    x, _ = images(4, seed=15)
    with pytest.raises(ValueError, match=r"\['pixels'\].*serving_default.*'inputs'"):
        monitoring.observe(served, {"pixels": x})
    arrays = str(tmp_path / "now.npz")
    np.savez(arrays, pixels=x)
    assert main([export, arrays, "--out", str(tmp_path / "r")]) == 2
    assert "['pixels']" in capsys.readouterr().err


def test_labels_for_an_unknown_head(served, tmp_path):
    x, _ = images(10, seed=16)
    traffic = monitoring.observe(served, x)
    with pytest.raises(ValueError, match="'colour'.*\\['flag', 'item'\\]"):
        monitoring.compare(served.profile, traffic, labels={"colour": {"0": 1}})
    path = tmp_path / "labels.csv"
    path.write_text("id,item,colour\n0,1,2\n")
    with pytest.raises(ValueError, match=r"\['colour'\]"):
        monitoring.read_labels(str(path), served.profile["heads"])


# === Command line ===


def test_cli_exit_status_and_outputs(export, tmp_path, capsys):
    x, y = images(500, seed=17, class_prior=SKEWED)
    np.save(tmp_path / "now.npy", x)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "id,item\n" + "".join(f"{i},{y['item'][i]}\n" for i in range(0, 500, 5))
    )
    out = tmp_path / "report"
    status = main(
        [export, str(tmp_path / "now.npy"), "--labels", str(labels),
         "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert status == 1
    assert "flagged: item" in printed and "| item " in printed
    assert sorted(os.listdir(out)) == [
        "flag.png", "input_inputs.png", "item.png", "report.json", "report.txt"
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["heads"]["item"]["quality"]["labels"] == 100

    status = main(
        [export, str(tmp_path / "now.npy"), "--threshold", "item:psi=5",
         "--out", str(out)]
    )
    assert status == 0


def test_cli_help_and_version_dir(export, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "--threshold" in capsys.readouterr().out
    assert monitoring.version_dir(export) == monitoring.version_dir(
        os.path.join(export, "1")
    )


@pytest.mark.slow
def test_python_dash_m_entry_point(export, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "mtk.monitor", "--help"],
        capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: python -m mtk.monitor" in result.stdout
    assert "--threshold" in result.stdout
