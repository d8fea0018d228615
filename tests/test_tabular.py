"""Tables and several inputs: tabular / combined trunks, DataFrame and CSV
pipelines, named-input export, and the checks that name the culprit."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import mtk
from testing import run_model_saving_test
from testing import run_python

FS = keras.utils.FeatureSpace
RUN_SAVED_MODEL = os.path.join(os.path.dirname(__file__), "export_run_saved_model.py")
ROWS = 24
IMAGE = (16, 16, 3)


def make_table(n=ROWS, seed=0):
    """A small click / conversion table with empty label cells."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.uniform(18, 80, n).round(1),
        "country": rng.choice(["DE", "FR", "US"], n),
        "city_id": rng.integers(0, 40, n),
        "device": rng.choice(["ios", "android", "web"], n),
        "clicked": rng.integers(0, 2, n).astype(float),
        "converted": rng.integers(0, 2, n).astype(float),
        "segment": rng.choice(["a", "b", "c"], n),
        "tier": rng.integers(0, 3, n).astype(float),
        "spend": rng.normal(50, 10, n).round(2),
    })
    df.loc[::5, "spend"] = np.nan
    df.loc[1::4, "tier"] = np.nan
    df.loc[2::7, "segment"] = None
    df.loc[3::6, "converted"] = np.nan
    return df


def make_feature_space(df):
    fs = FS(
        {
            "age": FS.float_normalized(),
            "country": FS.string_categorical(),
            "city_id": FS.integer_categorical(output_mode="int"),
            "device": FS.string_hashed(num_bins=8),
        },
        crosses=[FS.cross(("country", "device"), crossing_dim=8)],
        output_mode="dict",
    )
    fs.adapt({
        "age": df["age"].to_numpy("float32"),
        "country": df["country"].to_numpy(object),
        "city_id": df["city_id"].to_numpy("int32"),
        "device": df["device"].to_numpy(object),
    })
    return fs


def heads():
    return [
        mtk.heads.Binary("click"),
        mtk.heads.Binary("conversion"),
        mtk.heads.Classification("segment", 3, class_names=["a", "b", "c"]),
        mtk.heads.Classification("tier", 3),
        mtk.heads.Regression("spend"),
    ]


TASKS = {"click": "clicked", "conversion": "converted", "segment": "segment",
         "tier": "tier", "spend": lambda c: c["spend"] / 10.0}
# ESMM-style: conversion only counts on clicked rows.
WEIGHTS = {"conversion": "clicked"}


@pytest.fixture(scope="module")
def table():
    return make_table()


@pytest.fixture(scope="module")
def feature_space(table):
    return make_feature_space(table)


@pytest.fixture(scope="module")
def tabular_model(feature_space, table):
    keras.utils.set_random_seed(0)
    model = mtk.build_multitask_model(
        mtk.trunks.tabular(feature_space, hidden_units=(16,)), heads(),
        sharing=mtk.sharing.MMoE(num_experts=2, expert_units=(8,)),
    )
    ds = mtk.data.from_dataframe(table, features=feature_space, tasks=TASKS,
                                 heads=model, sample_weights=WEIGHTS,
                                 batch_size=8)
    model.fit(ds, epochs=1, verbose=0)
    return model


def tiny_cnn():
    inputs = keras.Input(IMAGE)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def nan_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.nan_to_num(a), np.nan_to_num(b))
    else:
        np.testing.assert_array_equal(a, b)


def as_columns(rows, signature):
    """TF Serving's row format ("instances") as the batched tensors it feeds:
    one column per input, in the signature's dtype (JSON numbers have none).
    """
    specs = signature.structured_input_signature[1]
    assert sorted(rows[0]) == sorted(specs)
    return {
        key: np.asarray([row[key] for row in rows],
                        dtype=bytes if spec.dtype == tf.string
                        else spec.dtype.as_numpy_dtype)
        for key, spec in specs.items()
    }


# === Pipelines ===


def test_dataframe_and_csv_give_the_same_batches(table, feature_space, tmp_path):
    # Two files, read in order: the CSV stream is the table, batch by batch
    # (one file with Windows line ends).
    table.iloc[:13].to_csv(tmp_path / "part-0.csv", index=False)
    table.iloc[13:].to_csv(tmp_path / "part-1.csv", index=False,
                           lineterminator="\r\n")
    kwargs = dict(features=feature_space, tasks=TASKS, heads=heads(),
                  sample_weights=WEIGHTS, batch_size=5)
    from_df = list(mtk.data.from_dataframe(table, **kwargs))
    from_csv = list(mtk.data.from_csv(str(tmp_path / "part-*.csv"), **kwargs))
    assert len(from_df) == len(from_csv) == 5
    for df_batch, csv_batch in zip(from_df, from_csv):
        for df_part, csv_part in zip(df_batch, csv_batch):
            assert sorted(df_part) == sorted(csv_part)
            for key in df_part:
                nan_equal(df_part[key].numpy(), csv_part[key].numpy())
    x, y, w = (tf.nest.map_structure(lambda *t: np.concatenate(t), *from_df))
    # Raw values in, labels in each head's canonical form with sentinels.
    assert x["country"].dtype == object and x["city_id"].dtype == np.int32
    np.testing.assert_array_equal(np.isnan(y["spend"][:, 0]), table["spend"].isna())
    assert y["tier"].dtype == np.int64
    np.testing.assert_array_equal(y["tier"] == -1, table["tier"].isna())
    np.testing.assert_array_equal(y["segment"] == -1, table["segment"].isna())
    assert y["segment"][0] == "abc".index(table["segment"][0])
    np.testing.assert_allclose(y["spend"][:, 0], table["spend"] / 10, rtol=1e-6)
    np.testing.assert_array_equal(w["conversion"], table["clicked"])
    np.testing.assert_array_equal(w["click"], np.ones(ROWS, "float32"))


def test_shuffled_pipelines_give_every_row_once_per_epoch(table, tmp_path):
    table.to_csv(tmp_path / "t.csv", index=False)
    kwargs = dict(features=["age"], tasks=TASKS, heads=heads(), batch_size=7,
                  shuffle=True, seed=0)
    for ds in (mtk.data.from_dataframe(table, **kwargs),
               mtk.data.from_csv(str(tmp_path / "t.csv"), **kwargs)):
        epochs = [np.concatenate([x["age"].numpy() for x, _ in ds])
                  for _ in range(2)]
        for ages in epochs:
            np.testing.assert_array_equal(np.sort(ages),
                                          np.sort(table["age"].astype("float32")))
        assert not np.array_equal(epochs[0], epochs[1])


def test_image_path_column_is_loaded_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = str(tmp_path / f"{i}.png")
        keras.utils.save_img(path, rng.integers(0, 255, (20, 24, 3)).astype("uint8"))
        paths.append(path)
    df = pd.DataFrame({"scan": paths, "age": [1.0, 2.0, 3.0], "sick": [1, 0, None]})
    df.to_csv(tmp_path / "scans.csv", index=False)
    kwargs = dict(features=["age"], images={"xray": "scan"}, image_size=(16, 16),
                  tasks={mtk.heads.Binary("sick"): "sick"})
    x, y = next(iter(mtk.data.from_dataframe(df, **kwargs)))
    x_csv, _ = next(iter(mtk.data.from_csv(str(tmp_path / "scans.csv"), **kwargs)))
    np.testing.assert_array_equal(x["xray"], x_csv["xray"])
    assert x["xray"].shape == (3, 16, 16, 3) and x["xray"].dtype == tf.float32
    expected = tf.image.resize(keras.utils.load_img(paths[0]), (16, 16))
    np.testing.assert_allclose(x["xray"][0], expected, atol=1e-4)
    nan_equal(y["sick"].numpy(), np.array([1, 0, np.nan], "float32"))


# === Tabular trunk: preprocessing inside, saving, serving ===


def test_tabular_model_saves_in_safe_mode_and_serves_raw_rows(
        tabular_model, table, tmp_path):
    x = {k: table[k].to_numpy(object if table[k].dtype == object else None)
         for k in ("age", "country", "city_id", "device")}
    x["age"], x["city_id"] = x["age"].astype("float32"), x["city_id"].astype("int32")
    assert not any(isinstance(layer, keras.layers.Lambda)
                   for layer in tabular_model._flatten_layers())
    run_model_saving_test(tabular_model, x, str(tmp_path / "tabular.keras"))

    path = mtk.export.export_saved_model(tabular_model, str(tmp_path / "serving"))
    serving = tf.saved_model.load(path).signatures["serving_default"]
    assert sorted(serving.structured_input_signature[1]) == [
        "age", "city_id", "country", "device"]
    # TF Serving "instances" rows: one raw value per feature; "XX" is a
    # country the FeatureSpace never saw (its out-of-vocabulary index).
    rows = [{"age": 41.0, "country": "DE", "city_id": 3, "device": "ios"},
            {"age": 23.5, "country": "XX", "city_id": 99, "device": "tv"}]
    columns = as_columns(rows, serving)
    served = serving(**{k: tf.constant(v) for k, v in columns.items()})
    expected = tabular_model.predict(
        {k: tf.constant(v) for k, v in columns.items()}, verbose=0)
    for name in expected:
        np.testing.assert_allclose(served[name], expected[name], atol=1e-5)
    assert served["segment_class_name"].shape == (2,)


def test_warmup_requests_fill_every_named_input(tabular_model, table, tmp_path):
    warmup = {"age": table["age"].to_numpy("float32")[:3],
              "country": table["country"].to_numpy(object)[:3],
              "city_id": table["city_id"].to_numpy("int64")[:3],
              "device": table["device"].to_numpy(object)[:3]}
    path = mtk.export.export_saved_model(
        tabular_model, str(tmp_path / "clicks"), warmup_inputs=warmup)
    records = list(tf.data.TFRecordDataset(os.path.join(
        path, "assets.extra", "tf_serving_warmup_requests")).as_numpy_iterator())
    assert len(records) == 3
    serving = tf.saved_model.load(path).signatures["serving_default"]
    expected = tabular_model.predict(
        {k: tf.constant(v) for k, v in as_columns(
            [{k: v[i] for k, v in warmup.items()} for i in range(3)],
            serving).items()}, verbose=0)
    for i, record in enumerate(records):
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        assert request.model_spec.name == "clicks"
        assert sorted(request.inputs) == ["age", "city_id", "country", "device"]
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        assert inputs["country"].tolist() == [warmup["country"][i].encode()]
        assert inputs["city_id"].dtype == np.int32  # the signature's dtype
        served = serving(**{k: tf.constant(v) for k, v in inputs.items()})
        np.testing.assert_allclose(served["spend"], expected["spend"][i:i + 1],
                                   atol=1e-5)


@pytest.mark.parametrize("warmup, match", [
    (np.zeros((2, 4)), r"must be a dict of batches keyed by them"),
    ({"age": [1.0]}, r"lacks the model's inputs \['city_id', 'country', 'device'\]"),
    ({"age": [1.0], "city_id": [1], "country": ["DE"], "device": ["ios"],
      "zip": [1]}, r"has inputs \['zip'\] the model does not take"),
    ({"age": [1.0, 2.0], "city_id": [1], "country": ["DE"], "device": ["ios"]},
     r"different numbers of examples"),
    ({"age": ["old"], "city_id": [1], "country": ["DE"], "device": ["ios"]},
     r"must be numeric for input 'age'"),
])
def test_bad_named_warmup_inputs_name_the_input(tabular_model, tmp_path, warmup, match):
    with pytest.raises(ValueError, match=match):
        mtk.export.export_saved_model(tabular_model, str(tmp_path / "m"),
                                      warmup_inputs=warmup)
    assert not (tmp_path / "m").exists() or not os.listdir(tmp_path / "m")


def raw_features(table):
    """The tabular model's raw inputs, one column per feature, as served."""
    return {"age": table["age"].to_numpy("float32"),
            "country": table["country"].to_numpy(object),
            "city_id": table["city_id"].to_numpy("int32"),
            "device": table["device"].to_numpy(object)}


def test_named_input_model_is_profiled_and_monitored_per_feature(
        tabular_model, tmp_path):
    reference = raw_features(make_table(400, seed=1))
    labels = {"click": make_table(400, seed=1)["clicked"].to_numpy("float32")}
    base = str(tmp_path / "clicks")
    mtk.export.export_saved_model(
        tabular_model, base, reference_data=(reference, labels))
    profile = mtk.monitoring.load_profile(base)
    assert [s["name"] for s in profile["inputs"]] == ["age", "city_id", "country", "device"]
    assert {s["name"]: s["kind"] for s in profile["inputs"]} == {
        "age": "scalar", "city_id": "scalar", "country": "category",
        "device": "category"}
    country = profile["input_stats"]["country"]["category"]
    # The reference's categories by frequency, then "(other)".
    counts = pd.Series(reference["country"]).value_counts()
    assert country["categories"] == sorted(counts.index, key=lambda c: (-counts[c], c)) + ["(other)"]
    assert country["counts"] == sorted(counts.tolist(), reverse=True) + [0]
    age = profile["input_stats"]["age"]["value"]
    np.testing.assert_allclose(age["mean"], reference["age"].mean(), rtol=1e-5)
    assert profile["metrics"]["click"]["labels"] == 400

    served = mtk.monitoring.ServedModel(base)
    same = raw_features(make_table(400, seed=2))
    assert mtk.monitoring.compare(profile, mtk.monitoring.observe(served, same))[
        "flagged"] == []
    # Only French visitors, and some from a country never seen: country
    # drifts; age, city and device do not.
    shifted = dict(same, country=np.where(
        np.arange(400) % 10 == 0, "XX", "FR").astype(object))
    report = mtk.monitoring.compare(profile, mtk.monitoring.observe(served, shifted))
    assert "country" in report["flagged"]
    assert not {"age", "city_id", "device"} & set(report["flagged"])
    change = dict(zip(report["inputs"]["country"]["features"]["category"]["categories"],
                      report["inputs"]["country"]["features"]["category"]["current"]))
    assert change["(other)"] == pytest.approx(0.1)

    # The command line reads named inputs from one .npz (string columns as
    # fixed-width text: .npz refuses pickled objects).
    arrays = str(tmp_path / "now.npz")
    np.savez(arrays, **{k: v.astype(str) if v.dtype == object else v
                        for k, v in shifted.items()})
    from mtk.monitor import main
    assert main([base, arrays, "--out", str(tmp_path / "report")]) == 1
    assert (tmp_path / "report" / "input_country.png").exists()

    # TF Serving's logs of the same requests (several features per request)
    # give the same report.
    log = str(tmp_path / "requests.log")
    assert mtk.monitoring.write_prediction_logs(served, log, shifted, batch_size=3) == 134
    logged = mtk.monitoring.read_prediction_logs(served, log)
    assert (logged.records_read, logged.records_skipped) == (134, 0)
    from_logs = mtk.monitoring.compare(profile, logged)
    assert from_logs["flagged"] == report["flagged"]
    for section in ("heads", "inputs"):
        for name, entry in report[section].items():
            assert from_logs[section][name]["psi"] == pytest.approx(entry["psi"])


def test_named_input_traffic_missing_a_feature_is_refused(tabular_model, table, tmp_path):
    base = str(tmp_path / "clicks")
    mtk.export.export_saved_model(
        tabular_model, base, reference_data=raw_features(table))
    x = raw_features(table)
    del x["device"]
    with pytest.raises(ValueError, match=r"lacks inputs \['device'\]"):
        mtk.monitoring.observe(base, x)
    with pytest.raises(ValueError, match=r"one array.*named inputs \['age', 'city_id'"):
        mtk.monitoring.observe(base, x["age"])
    with pytest.raises(ValueError, match="different numbers of examples: age: 24, city_id: 24, country: 3,"):
        mtk.monitoring.observe(base, dict(raw_features(table), country=x["country"][:3]))


def test_tflite_converts_numeric_features_and_refuses_categorical(
        tabular_model, table, tmp_path):
    with pytest.raises(ValueError, match=r"string features \['country', 'device'\]"):
        mtk.export.export_tflite(tabular_model, str(tmp_path / "m.tflite"))
    x = {"age": table["age"].to_numpy("float32"),
         "income": table["spend"].fillna(0).to_numpy("float32"),
         "city_id": table["city_id"].to_numpy("int32")}
    numeric = FS({"age": FS.float_normalized(), "income": FS.float_rescaled(0.1)})
    numeric.adapt({k: x[k] for k in ("age", "income")})
    model = mtk.build_multitask_model(mtk.trunks.tabular(numeric, (4,)), heads())
    runner = tf.lite.Interpreter(mtk.export.export_tflite(
        model, str(tmp_path / "numeric.tflite"))).get_signature_runner()
    served = runner(age=x["age"][:1], income=x["income"][:1])
    expected = model.predict({k: x[k][:1] for k in ("age", "income")}, verbose=0)
    for name in expected:
        np.testing.assert_allclose(served[name], expected[name], atol=1e-5)
    one_hot = FS({"age": FS.float(), "city_id": FS.integer_categorical()})
    one_hot.adapt({k: x[k] for k in ("age", "city_id")})
    model = mtk.build_multitask_model(mtk.trunks.tabular(one_hot, (4,)), heads())
    with pytest.raises(ValueError, match="TensorFlow ops that TFLite lacks"):
        mtk.export.export_tflite(model, str(tmp_path / "one_hot.tflite"))


# === Multi-modal: image + record ===


def test_multimodal_trains_freezing_only_the_image_part_saves_and_serves(
        feature_space, table, tmp_path):
    keras.utils.set_random_seed(1)
    trunk = mtk.trunks.combine(
        {"xray": tiny_cnn(),
         "record": mtk.trunks.tabular(feature_space, hidden_units=(8,))},
        hidden_units=(8,))
    model = mtk.build_multitask_model(trunk, heads(), learning_rate=1e-2)
    branches = {layer.name: layer for layer in model.trunk.layers
                if isinstance(layer, keras.Model)}
    assert sorted(branches) == ["record_trunk", "xray_trunk"]
    assert not branches["xray_trunk"].trainable
    assert branches["record_trunk"].trainable

    rng = np.random.default_rng(0)
    base = mtk.data.from_dataframe(table, features=feature_space, tasks=TASKS,
                                   heads=model, sample_weights=WEIGHTS,
                                   batch_size=8)
    images = rng.uniform(0, 255, (ROWS,) + IMAGE).astype("float32")
    images_ds = tf.data.Dataset.from_tensor_slices(images).batch(8)
    ds = tf.data.Dataset.zip(base, images_ds).map(
        lambda e, image: ({**e[0], "xray": image}, e[1], e[2]))

    def weights_of(name):
        return [w.numpy().copy() for w in branches[name].weights]

    before = {n: weights_of(n) for n in branches}
    seen = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {n: weights_of(n) for n in branches}

    history = mtk.fit_transfer(model, ds, frozen_epochs=1, finetune_epochs=1,
                               finetune_learning_rate=1e-2, verbose=0,
                               callbacks=[Snapshot()])
    assert history.phase_boundary == 1

    def changed(a, b):
        return any(not np.array_equal(x, y) for x, y in zip(a, b))

    # Phase 1: the image trunk is frozen, the record trunk trains.
    assert not changed(before["xray_trunk"], seen[0]["xray_trunk"])
    assert changed(before["record_trunk"], seen[0]["record_trunk"])
    # Phase 2: both train, BatchNormalization stays in inference mode.
    assert changed(seen[0]["xray_trunk"], seen[1]["xray_trunk"])
    assert changed(seen[0]["record_trunk"], seen[1]["record_trunk"])
    assert not branches["xray_trunk"].get_layer("bn").trainable

    x = next(iter(ds))[0]
    loaded = run_model_saving_test(model, x, str(tmp_path / "multimodal.keras"))
    flags = [(layer.name, layer.trainable) for layer in model._flatten_layers()]
    assert flags == [(layer.name, layer.trainable)
                     for layer in loaded._flatten_layers()]

    # The export answers TF-Serving-style dict rows as model.predict does,
    # in a process where neither mtk nor Keras can be imported.
    path = mtk.export.export_saved_model(
        model, str(tmp_path / "serving"),
        reference_data={k: v.numpy() for k, v in x.items()})
    profile = mtk.monitoring.load_profile(path)
    assert {s["name"]: s["kind"] for s in profile["inputs"]} == {
        "age": "scalar", "city_id": "scalar", "country": "category",
        "device": "category", "xray": "image"}
    assert sorted(profile["input_stats"]["xray"]) == ["mean", "std"]
    rows = [{"age": float(x["age"][i]), "country": x["country"][i].numpy().decode(),
             "city_id": int(x["city_id"][i]), "device": x["device"][i].numpy().decode(),
             "xray": x["xray"][i].numpy().tolist()} for i in range(3)]
    columns = as_columns(
        rows, tf.saved_model.load(path).signatures["serving_default"])
    np.savez(tmp_path / "in.npz", **columns)
    subprocess.run(
        [sys.executable, RUN_SAVED_MODEL, path, str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")],
        check=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    expected = model.predict({k: v[:3] for k, v in x.items()}, verbose=0)
    with np.load(tmp_path / "out.npz") as served:
        for name in expected:
            np.testing.assert_allclose(served[name], expected[name], atol=1e-5)


def test_copy_into_a_strategy_keeps_the_feature_space_state(feature_space, table):
    """A trunk built outside the strategy is copied into its scope: the copy
    normalises and looks up categories as the original does (set_weights
    alone left Normalization unfinalised and the lookup tables empty)."""
    trunk = mtk.trunks.tabular(feature_space, hidden_units=(8,))
    x = {"age": table["age"].to_numpy("float32"),
         "country": table["country"].to_numpy(object),
         "city_id": table["city_id"].to_numpy("int32"),
         "device": table["device"].to_numpy(object)}
    expected = trunk(x)
    model = mtk.build_multitask_model(
        trunk, heads(), strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert model.trunk is not trunk  # a copy whose variables the strategy owns
    np.testing.assert_allclose(model.trunk(x), expected, rtol=1e-6, atol=1e-6)


MIRRORED_SCRIPT = """
import keras, numpy as np, tensorflow as tf, mtk
from test_tabular import (ROWS, IMAGE, TASKS, WEIGHTS, heads, make_feature_space,
                          make_table, tiny_cnn)

table = make_table()
feature_space = make_feature_space(table)  # adapted outside any strategy
images = np.random.default_rng(0).uniform(0, 255, (ROWS,) + IMAGE).astype("float32")

def first_update(kind, strategy=None):
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        keras.utils.set_random_seed(0)
        record = mtk.trunks.tabular(feature_space, hidden_units=(8,))
        trunk = record if kind == "tabular" else mtk.trunks.combine(
            {"xray": tiny_cnn(), "record": record}, hidden_units=(8,))
        model = mtk.build_multitask_model(trunk, heads(), learning_rate=1e-2)
    ds = mtk.data.from_dataframe(table, features=feature_space, tasks=TASKS,
                                 heads=model, sample_weights=WEIGHTS,
                                 batch_size=ROWS)
    if kind == "combined":
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensors(images)).map(
            lambda e, image: ({**e[0], "xray": image}, e[1], e[2]))
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.fit(ds, epochs=1, verbose=0).history["loss"][0]
    update = np.concatenate([(w.numpy() - b).ravel()
                             for w, b in zip(model.trainable_weights, before)])
    return loss, update

mirrored = mtk.distribute.get_strategy(
    "mirrored", devices=["/cpu:0", "/cpu:1"], verbose=False)
result = {}
for kind in ("tabular", "combined"):
    one_loss, one = first_update(kind)
    two_loss, two = first_update(kind, mirrored)
    result[kind] = {"one": one_loss, "two": two_loss, "norm": float(np.linalg.norm(one)),
                    "diff": float(np.linalg.norm(two - one) / np.linalg.norm(one))}
report(result)
"""


@pytest.mark.slow
def test_tabular_and_combined_trunks_train_alike_on_two_replicas(tmp_path):
    # Dict batches split across 2 logical CPUs; the FeatureSpace's lookup
    # tables and statistics were made outside the strategy's scope.
    result = run_python(MIRRORED_SCRIPT, tmp_path, logical_cpus=2)
    for kind, r in result.items():
        assert r["norm"] > 0, kind
        assert r["two"] == pytest.approx(r["one"], rel=1e-5), (kind, r)
        assert r["diff"] < 1e-4, (kind, r)


# === Checks that name the culprit, before any training ===


def test_feature_the_feature_space_expects_is_missing(table, feature_space):
    with pytest.raises(ValueError, match="Feature 'device'.*not a column"):
        mtk.data.from_dataframe(table.drop(columns="device"),
                                features=feature_space, tasks=TASKS, heads=heads())


def test_column_of_the_wrong_type(table, feature_space):
    bad = table.assign(city_id=table["city_id"].astype(str))
    with pytest.raises(ValueError, match="Column 'city_id'.*takes int32"):
        mtk.data.from_dataframe(bad, features=feature_space, tasks=TASKS,
                                heads=heads())
    bad = table.assign(country=np.arange(ROWS))
    with pytest.raises(ValueError, match="Column 'country'.*takes strings"):
        mtk.data.from_dataframe(bad, features=feature_space, tasks=TASKS,
                                heads=heads())


def test_nan_in_a_feature_without_default(table, feature_space):
    bad = table.copy()
    bad.loc[4, "age"] = np.nan
    with pytest.raises(ValueError, match="Feature column 'age'.*row 4.*defaults"):
        mtk.data.from_dataframe(bad, features=feature_space, tasks=TASKS,
                                heads=heads())
    ds = mtk.data.from_dataframe(bad, features=feature_space, tasks=TASKS,
                                 heads=heads(), defaults={"age": 40.0})
    x, _ = next(iter(ds.unbatch().skip(4)))
    assert float(x["age"]) == 40.0


def test_empty_feature_cell_in_csv_without_default(table, feature_space, tmp_path):
    bad = table.copy()
    bad.loc[2, "country"] = None
    bad.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="Feature column 'country'.*row 2"):
        mtk.data.from_csv(str(tmp_path / "t.csv"), features=feature_space,
                          tasks=TASKS, heads=heads())


def test_duplicate_column_names(table, tmp_path):
    dup = pd.concat([table, table[["age"]]], axis=1)
    with pytest.raises(ValueError, match=r"duplicate column names \['age'\]"):
        mtk.data.from_dataframe(dup, features=["age"], tasks=TASKS, heads=heads())
    dup.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match=r"duplicate column names \['age'\]"):
        mtk.data.from_csv(str(tmp_path / "dup.csv"), features=["age"],
                          tasks=TASKS, heads=heads())


@pytest.mark.parametrize("column, values, match", [
    ("clicked", 2.0, "Head 'click'.*label 2.0"),
    ("tier", 1.5, "tasks\\['tier'\\] reads column 'tier'.*1.5.*class id"),
    ("segment", "z", "value 'z' at row 3.*not one of head 'segment'"),
])
def test_task_column_that_does_not_fit_its_head(table, column, values, match):
    bad = table.copy()
    bad.loc[3, column] = values
    with pytest.raises(ValueError, match=match):
        mtk.data.from_dataframe(bad, features=["age"], tasks=TASKS, heads=heads())


def test_task_column_that_is_also_a_feature_warns_of_a_leak(table):
    with pytest.warns(UserWarning, match="tasks\\['click'\\] reads column "
                      "'clicked', which is also a feature"):
        mtk.data.from_dataframe(table, features=["age", "clicked"],
                                tasks=TASKS, heads=heads())


def test_model_data_missing_a_named_input(tabular_model, table):
    ds = mtk.data.from_dataframe(table, features=["age", "country", "city_id"],
                                 tasks=TASKS, heads=tabular_model)
    with pytest.raises(ValueError, match=r"input\(s\) \['device'\]"):
        mtk.check_training_data(tabular_model, ds)
    ds = mtk.data.from_dataframe(
        table.assign(city_id=table["city_id"] + 0.5), tasks=TASKS,
        features=["age", "country", "city_id", "device"], heads=tabular_model)
    with pytest.raises(ValueError, match="Input 'city_id' takes int32"):
        mtk.check_training_data(tabular_model, ds)


def test_unfitted_feature_space_and_clashing_names_are_refused(feature_space):
    spend = FS({"spend": FS.float()})
    with pytest.raises(ValueError, match=r"Head\(s\) \['spend'\] have the name"):
        mtk.build_multitask_model(mtk.trunks.tabular(spend, (4,)), heads())
    fresh = FS({"age": FS.float_normalized()})
    with pytest.raises(ValueError, match="not ready.*adapt"):
        mtk.trunks.tabular(fresh)
    tab = mtk.trunks.tabular(feature_space, hidden_units=(4,))
    with pytest.raises(ValueError, match=r"input\(s\) \['age'\]"):
        mtk.trunks.combine({"age": tiny_cnn(), "record": tab})


def test_model_with_several_named_inputs_is_a_dict_input_trunk(tmp_path):
    vitals, labs = keras.Input((3,), name="vitals"), keras.Input((2,), name="labs")
    joined = keras.layers.Concatenate()([vitals, labs])
    trunk = keras.Model([vitals, labs], keras.layers.Dense(4)(joined))
    model = mtk.build_multitask_model(trunk, [mtk.heads.Binary("sick")])
    assert sorted(model.input) == ["labs", "vitals"]
    # A keras.Model trunk counts as pretrained: frozen in phase 1.
    assert not model.get_layer("trunk").trainable
    x = {"vitals": np.ones((2, 3), "float32"), "labs": np.zeros((2, 2), "float32")}
    run_model_saving_test(model, x, str(tmp_path / "m.keras"))


def test_unfreeze_top_n_counts_the_pretrained_branch_of_a_combined_trunk(
        feature_space):
    trunk = mtk.trunks.combine(
        {"xray": tiny_cnn(),
         "record": mtk.trunks.tabular(feature_space, hidden_units=(4,))})
    model = mtk.build_multitask_model(trunk, [mtk.heads.Binary("sick")])
    assert mtk.unfreeze_trunk(model, "top:1") == 1
    branches = {layer.name: layer for layer in model.trunk.layers
                if isinstance(layer, keras.Model)}
    xray = [(layer.name, layer.trainable) for layer in branches["xray_trunk"].layers[1:]]
    assert xray == [("conv", False), ("bn", False), ("gap", True)]
    assert all(w.trainable for w in branches["record_trunk"].trainable_weights)
    assert branches["record_trunk"].trainable_weights
    with pytest.raises(ValueError, match="names no layer of the trunk"):
        mtk.unfreeze_trunk(model, "from:hidden_0")  # a tabular layer
