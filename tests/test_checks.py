"""Bad label values, non-finite losses and bad hyper-parameters fail early.

Every case asserts the error type, that the message names the head or
argument, and (for training) that no training step ran.
"""

import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from conftest import four_heads
from mtk.heads import LabelValueError
from mtk.training import NonFiniteLossError
from mtk.training import TerminateOnNonFinite

NAN = float("nan")
INF = float("inf")


def _heads():
    return {
        "item": mtk.heads.Classification("item", num_classes=4),
        "flag": mtk.heads.Binary("flag"),
        "soft": mtk.heads.Binary("soft", soft_labels=True),
        "tags": mtk.heads.MultiLabel("tags", num_labels=3, label_names=list("rgb")),
        "price": mtk.heads.Regression("price"),
        "size": mtk.heads.Regression("size", units=2, loss="huber"),
    }


VALID = [
    ("item", np.array([0, 3, -1, 2])),
    ("item", np.array([[0], [3], [-1]], "int32")),
    ("item", np.array([0.0, 3.0, -1.0, NAN])),  # NaN class id = missing
    ("item", np.array([0, 3], "uint8")),
    ("flag", np.array([0.0, 1.0, NAN])),
    ("flag", np.array([[0], [1]], "int64")),
    ("flag", np.array([True, False])),
    ("soft", np.array([0.0, 0.3, 1.0, NAN])),
    ("tags", np.array([[0.0, 1.0, NAN], [1.0, 1.0, 0.0]])),
    ("price", np.array([1e15, -3.5, NAN, 0.0], "float32")),
    ("price", np.array([7, -2], "int64")),
    ("size", np.array([[1e30, NAN], [0.0, -1.0]])),
]

# (head, labels, message): one case per head kind and per way to break it.
INVALID = [
    ("item", np.array([0, 1, -2]), r"label -2 at example 2 is not a class id in \[0, 4\); use -1"),
    ("item", np.array([0, 4, 1]), r"label 4 at example 1 is not a class id in \[0, 4\)"),
    ("item", np.array([[1], [9]]), r"label 9 at example 1 is not a class id"),
    ("item", np.array([0.0, 2.5]), r"label 2.5 at example 1 is not a whole number; class ids are whole numbers in \[0, 4\)"),
    ("item", np.array([INF, 0.0]), r"label inf at example 0 is not a whole number"),
    ("item", np.array([0, 200], "uint8"), r"label 200 at example 1 is not a class id"),
    ("flag", np.array([0.0, 2.0]), r"label 2.0 at example 1 is not 0 or 1; use NaN for a missing label \(or soft_labels=True"),
    ("flag", np.array([0, -1]), r"label -1 at example 1 is not 0 or 1"),
    ("flag", np.array([0.5]), r"label 0.5 at example 0 is not 0 or 1"),
    ("soft", np.array([0.5, 1.5]), r"label 1.5 at example 1 is not in \[0, 1\]; use NaN"),
    ("soft", np.array([-INF]), r"label -inf at example 0 is not in \[0, 1\]"),
    ("tags", np.array([[0.0, 1.0, 0.0], [1.0, NAN, 2.0]]), r"label 2.0 at example 1, entry 2 \('b'\) is not 0 or 1"),
    ("tags", np.array([[-1.0, 1.0, 0.0]]), r"label -1.0 at example 0, entry 0 \('r'\) is not 0 or 1"),
    ("price", np.array([0.0, INF]), r"label inf at example 1 is not finite; use NaN for a missing label\.$"),
    ("price", np.array([[0.0], [-INF]]), r"label -inf at example 1 is not finite"),
    ("price", np.array([1e30, 0.0], "float32"), r"label 1e\+30 at example 0 is too large for mean_squared_error"),
    ("price", np.array([7, 10**17], "int64"), r"label 100000000000000000 at example 1 is too large"),
    ("price", np.array([INF], "float16"), r"label inf at example 0 is not finite"),
    ("size", np.array([[0.0, 0.0], [0.0, INF]]), r"label inf at example 1, entry 1 is not finite"),
]


def _kind(name):
    return type(_heads()[name]).__name__


@pytest.mark.parametrize("name, labels", VALID)
def test_valid_labels_pass_both_checks(name, labels):
    head = _heads()[name]
    head.check_label_values(labels)
    assert head.label_value_error(labels) is None
    assert bool(head.labels_valid(tf.constant(labels))) is True


@pytest.mark.parametrize("name, labels, message", INVALID)
def test_invalid_labels_name_head_value_and_example(name, labels, message):
    head = _heads()[name]
    with pytest.raises(LabelValueError, match=rf"^Head '{name}' \({_kind(name)}\): {message}") as info:
        head.check_label_values(labels)
    assert info.value.head == name
    assert isinstance(info.value, ValueError)
    # The in-step guard agrees on a tensor, eagerly and in a tf.function.
    assert bool(head.labels_valid(tf.constant(labels))) is False
    guard = tf.function(head.labels_valid)
    assert bool(guard(tf.constant(labels))) is False


def test_labels_valid_is_a_graph_op_on_unknown_batch_sizes():
    heads = _heads()
    item = heads["item"]
    guard = tf.function(
        item.labels_valid,
        input_signature=[tf.TensorSpec((None,), tf.int64)],
    )
    assert bool(guard(tf.constant([0, 1, -1], tf.int64)))
    assert not bool(guard(tf.constant([0, 4], tf.int64)))
    result = heads["price"].labels_valid(tf.constant([1.0, NAN]))
    assert result.shape == () and result.dtype == tf.bool
    with pytest.raises(TypeError, match="'price' .*numeric"):
        heads["price"].labels_valid(tf.constant(["a"]))


def test_label_error_reports_where_and_how_many():
    head = _heads()["price"]
    labels = np.zeros(40, "float32")
    labels[[17, 20, 33]] = INF
    error = head.label_value_error(labels, where="of the first batch")
    assert str(error) == (
        "Head 'price' (Regression): label inf at example 17 of the first batch "
        "(the first of 3 invalid labels) is not finite; use NaN for a missing label."
    )
    assert error.index == (17,) and error.value == INF


def test_soft_labels_round_trip_through_config():
    for head in (mtk.heads.Binary("b", soft_labels=True),
                 mtk.heads.MultiLabel("m", num_labels=2, soft_labels=True)):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(head))
        assert restored.soft_labels is True
        restored.check_label_values(np.array([[0.25, 0.75]]).reshape(-1, head.output_units))
    assert mtk.heads.Binary("b").get_config()["soft_labels"] is False
    with pytest.raises(ValueError, match="'b': soft_labels must be True or False"):
        mtk.heads.Binary("b", soft_labels="yes")


def test_nan_class_id_is_missing_in_loss_and_metric():
    loss = mtk.losses.MaskedLoss("sparse_categorical_crossentropy", "class_id")
    pred = np.array([[0.5, 0.5], [0.99, 0.01]], "float32")
    assert float(loss(np.array([0.0, NAN]), pred)) == pytest.approx(np.log(2), rel=1e-5)
    metric = mtk.losses.MaskedMetric(
        keras.metrics.SparseCategoricalAccuracy(), label_kind="class_id")
    metric.update_state(np.array([1.0, NAN]), pred)
    assert float(metric.result()) == 0.0  # only the labelled, wrong example


@pytest.mark.parametrize("weights, message", [
    ({"price": NAN}, r"loss_weights\['price'\] must be a finite number >= 0, got nan"),
    ({"price": INF}, r"loss_weights\['price'\] must be a finite number >= 0, got inf"),
    ({"price": -1.0}, r"loss_weights\['price'\] must be a finite number >= 0"),
    ({"price": "1"}, r"loss_weights\['price'\] must be a finite number"),
    ({"price": True}, r"loss_weights\['price'\] must be a finite number"),
    ({"prize": 1.0}, r"names head\(s\) \['prize'\]"),
])
def test_check_loss_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        mtk.heads.check_loss_weights(weights, ["item", "price"])


def test_check_loss_weights_accepts_finite_non_negative():
    mtk.heads.check_loss_weights(None, ["a"])
    mtk.heads.check_loss_weights({"a": 0, "b": 2.5, "c": np.float32(1)}, list("abc"))
    with pytest.raises(TypeError, match="dict keyed by head name"):
        mtk.heads.check_loss_weights([1.0], ["a"])


@pytest.mark.parametrize("value", [0, -0.01, NAN, INF, "fast", None, True])
def test_check_learning_rate(value):
    with pytest.raises(ValueError, match="finetune_learning_rate must be a finite number > 0"):
        mtk.training.check_learning_rate(value, "finetune_learning_rate")


def test_check_learning_rate_accepts_schedules():
    mtk.training.check_learning_rate(1e-5)
    mtk.training.check_learning_rate(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9))


# --- Before training: fit_transfer on a tiny dense model ---

def _model(**kwargs):
    keras.utils.set_random_seed(0)
    return mtk.build_multitask_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
        heads=four_heads(), trunk_weights=None, **kwargs)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = {
        "item": rng.integers(0, 4, n),
        "flag": rng.integers(0, 2, n).astype("float32"),
        "tags": rng.integers(0, 2, (n, 3)).astype("float32"),
        "price": rng.normal(size=n).astype("float32"),
    }
    y["item"][::3] = -1
    y["flag"][1::4] = NAN
    y["price"][::5] = NAN
    return x, y


def _ds(x, y, batch_size=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


class _Untrained:
    """Asserts that no training step ran on ``model`` (weights, optimizer)."""

    def __init__(self, model):
        self.model = model
        self.weights = [w.copy() for w in model.get_weights()]

    def check(self):
        assert int(self.model.optimizer.iterations) == 0
        for a, b in zip(self.weights, self.model.get_weights()):
            np.testing.assert_array_equal(a, b)


BAD_TRAINING_LABELS = [
    ("item", 5, -2, r"label -2 at example 5 .*is not a class id in \[0, 4\)"),
    ("item", 6, 2.5, r"label 2.5 at example 6 .*is not a whole number"),
    ("item", 7, 4, r"label 4 at example 7 .*is not a class id in \[0, 4\)"),
    ("flag", 2, 2.0, r"label 2.0 at example 2 .*is not 0 or 1"),
    ("flag", 3, -1.0, r"label -1.0 at example 3 .*is not 0 or 1"),
    ("tags", 4, 2.0, r"label 2.0 at example 4, entry 0 .*is not 0 or 1"),
    ("price", 7, INF, r"label inf at example 7 .*is not finite"),
    ("price", 1, 1e30, r"label 1e\+30 at example 1 .*too large"),
]


def _poison(y, name, index, value):
    y = {k: v.copy() for k, v in y.items()}
    if name == "item" and not float(value).is_integer():
        y[name] = y[name].astype("float32")
    if y[name].ndim == 2:
        y[name][index, 0] = value
    else:
        y[name][index] = value
    return y


@pytest.mark.parametrize("name, index, value, message", BAD_TRAINING_LABELS)
@pytest.mark.parametrize("as_dataset", [True, False])
def test_bad_label_value_fails_before_training(name, index, value, message, as_dataset):
    model = _model()
    untrained = _Untrained(model)
    x, y = _data()
    y = _poison(y, name, index, value)
    kind = type(model.get_layer(name)).__name__
    where = "of the first batch " if as_dataset else ""
    data = {"x": _ds(x, y)} if as_dataset else {"x": x, "y": y, "batch_size": 8}
    with pytest.raises(LabelValueError, match=rf"^Head '{name}' \({kind}\): {message}") as info:
        mtk.fit_transfer(model, frozen_epochs=1, finetune_epochs=1, verbose=0, **data)
    assert (where in str(info.value)) and info.value.head == name
    untrained.check()


@pytest.mark.parametrize("kwargs, build, message", [
    ({"finetune_learning_rate": -1e-3}, {}, "finetune_learning_rate must be a finite number > 0, got -0.001"),
    ({"finetune_learning_rate": "fast"}, {}, "finetune_learning_rate must be a finite number > 0, got 'fast'"),
    ({"finetune_learning_rate": NAN}, {}, "finetune_learning_rate must be a finite number > 0, got nan"),
    # An optimizer object skips the builder's check of learning_rate=.
    ({}, {"optimizer": lambda: keras.optimizers.Adam(-0.01)},
     r"learning_rate \(of the compiled optimizer\) must be a finite number > 0"),
    ({"frozen_epochs": True}, {}, "frozen_epochs must be an integer >= 0, got True"),
    ({"finetune_epochs": 1.5}, {}, "finetune_epochs must be an integer >= 0, got 1.5"),
])
def test_bad_hyper_parameter_fails_before_training(kwargs, build, message):
    model = _model(**{k: v() if callable(v) else v for k, v in build.items()})
    untrained = _Untrained(model)
    x, y = _data()
    schedule = {"frozen_epochs": 1, "finetune_epochs": 1}
    schedule.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mtk.fit_transfer(model, _ds(x, y), verbose=0, **schedule)
    untrained.check()


@pytest.mark.parametrize("build, message", [
    ({"learning_rate": -0.01}, "learning_rate must be a finite number > 0, got -0.01"),
    ({"loss_weights": {"price": NAN}}, r"loss_weights\['price'\] must be a finite number >= 0, got nan"),
    ({"loss_weights": {"flag": INF}}, r"loss_weights\['flag'\] must be a finite number >= 0, got inf"),
])
def test_bad_compile_arguments_fail_before_the_trunk_is_built(build, message, monkeypatch):
    built = []
    monkeypatch.setattr(mtk.builder, "resolve_trunk", lambda *a, **k: built.append(1))
    with pytest.raises(ValueError, match=message):
        _model(**build)
    assert not built


def _validation_cases():
    x, y = _data(8, seed=1)
    lacking = {k: v for k, v in y.items() if k != "tags"}
    bad = _poison(y, "price", 3, INF)
    return {
        "lacks a head (dataset)": (
            _ds(x, lacking), ValueError,
            r"validation_data's labels lacks head\(s\) \['tags'\]"),
        "lacks a head (arrays)": (
            (x, lacking), ValueError,
            r"validation_data's labels lacks head\(s\) \['tags'\]"),
        "bad value (dataset)": (
            _ds(x, bad), LabelValueError,
            r"Head 'price' \(Regression\): label inf at example 3 of the first "
            r"batch of validation_data is not finite"),
        "bad value (arrays)": (
            (x, bad), LabelValueError,
            r"Head 'price' \(Regression\): label inf at example 3 of "
            r"validation_data is not finite"),
        "empty": (
            _ds(x, y).take(0), ValueError,
            r"validation_data is empty: fit would run no training step"),
        "input shape": (
            (x[:, :3], y), ValueError, r"takes examples of shape \(4,\)"),
    }


@pytest.mark.parametrize("case", sorted(_validation_cases()))
def test_bad_validation_data_fails_before_training(case):
    validation_data, error, message = _validation_cases()[case]
    model = _model()
    untrained = _Untrained(model)
    with pytest.raises(error, match=message):
        mtk.fit_transfer(model, _ds(*_data()), validation_data=validation_data,
                         frozen_epochs=1, finetune_epochs=1, verbose=0)
    untrained.check()


@pytest.mark.parametrize("case", ["zero batches", "filtered to nothing", "zero examples"])
def test_empty_training_data_fails_before_training(case):
    model = _model()
    untrained = _Untrained(model)
    x, y = _data()
    if case == "zero batches":
        data, message = {"x": _ds(x, y).take(0)}, r"the dataset has 0 batches"
    elif case == "filtered to nothing":
        ds = _ds(x, y).filter(lambda inputs, labels: False)
        assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY
        data, message = {"x": ds}, r"the dataset yields no batches"
    else:
        data = {"x": x[:0], "y": {k: v[:0] for k, v in y.items()}}
        message = r"0 examples"
    with pytest.raises(ValueError, match=rf"The training data is empty: fit would run no training step \({message}\)"):
        mtk.fit_transfer(model, frozen_epochs=2, finetune_epochs=0, verbose=0, **data)
    untrained.check()


def test_good_data_still_trains_with_validation_tuple():
    model = _model()
    x, y = _data()
    history = mtk.fit_transfer(model, x, y=y, batch_size=8,
                               validation_data=_data(8, seed=1),
                               frozen_epochs=1, finetune_epochs=1, verbose=0)
    assert history.epoch == [0, 1]
    assert np.isfinite(history.history["val_loss"]).all()


# --- During training: the non-finite loss guard ---

def _blowing_up_dataset(state, bad_epoch=1, bad_step=2, steps=4, batch_size=4):
    """Good batches, except one input feature of inf at (bad_epoch, bad_step).

    The first batch is clean, so the checks before training pass. Labels
    that break a head's contract are stopped by the training step itself,
    and valid labels cannot overflow the loss, so a corrupted input is the
    realistic way a loss goes non-finite.
    """
    x, y = _data(steps * batch_size)

    def batches():
        for step in range(steps):
            s = slice(step * batch_size, (step + 1) * batch_size)
            labels = {k: v[s].copy() for k, v in y.items()}
            inputs = x[s].copy()
            if state["epoch"] == bad_epoch and step == bad_step:
                inputs[1, 0] = np.inf
            yield inputs, labels

    spec = (tf.TensorSpec((None, 4), tf.float32),
            {"item": tf.TensorSpec((None,), tf.int64),
             "flag": tf.TensorSpec((None,), tf.float32),
             "tags": tf.TensorSpec((None, 3), tf.float32),
             "price": tf.TensorSpec((None,), tf.float32)})
    return tf.data.Dataset.from_generator(batches, output_signature=spec)


class _EpochState(keras.callbacks.Callback):
    """Tells the generator the epoch, and snapshots files after each epoch."""

    def __init__(self, state, paths):
        super().__init__()
        self.state, self.paths = state, paths
        self.snapshots = []

    def on_epoch_begin(self, epoch, logs=None):
        self.state["epoch"] = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.snapshots.append({p: open(p, "rb").read() for p in self.paths()})


class _StepSnapshots(keras.callbacks.Callback):
    """Records a file's bytes after each training step."""

    def __init__(self, path):
        super().__init__()
        self.path, self.epoch, self.snapshots = path, None, []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.snapshots.append(((self.epoch, batch), open(self.path, "rb").read()))


def _files_under(*dirs):
    def paths():
        return sorted(os.path.join(root, f) for d in dirs
                      for root, _, files in os.walk(d) for f in files)
    return paths


def test_fit_transfer_stops_at_non_finite_loss_and_keeps_saved_files(tmp_path):
    model = _model()
    state = {"epoch": 0}
    backup_dir, ckpt_dir = tmp_path / "backup", tmp_path / "ckpt"
    ckpt_dir.mkdir()
    snapshot = _EpochState(state, _files_under(backup_dir, ckpt_dir))
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        keras.callbacks.ModelCheckpoint(
            str(ckpt_dir / "model.weights.h5"), save_weights_only=True),
        snapshot,
        # Saves after every step: the guard, put first, raises before it.
        keras.callbacks.ModelCheckpoint(
            str(tmp_path / "every_step.weights.h5"), save_weights_only=True,
            save_freq=1),
        _StepSnapshots(str(tmp_path / "every_step.weights.h5")),
    ]
    with pytest.raises(NonFiniteLossError) as info:
        mtk.fit_transfer(model, _blowing_up_dataset(state), frozen_epochs=3,
                         finetune_epochs=1, callbacks=callbacks, verbose=0)
    message = str(info.value)
    assert message.startswith("Heads 'flag' (Binary), 'item' (Classification), "
                              "'price' (Regression), 'tags' (MultiLabel): their losses")
    assert "at epoch 2, step 3 (phase 1, trunk frozen)" in message
    assert (info.value.heads, info.value.epoch, info.value.step) == (
        ["flag", "item", "price", "tags"], 1, 2)
    assert isinstance(info.value, FloatingPointError)
    # The blow-up reached the training state in memory (Adam's moments)...
    assert not all(np.isfinite(keras.ops.convert_to_numpy(v)).all()
                   for v in model.optimizer.variables)
    # ...but what epoch 1 saved is byte for byte what is on disk now.
    assert len(snapshot.snapshots) == 1
    saved = snapshot.snapshots[0]
    assert any(p.endswith("model.weights.h5") for p in saved)
    assert any("backup" in p for p in saved)
    assert saved == {p: open(p, "rb").read() for p in _files_under(backup_dir, ckpt_dir)()}
    # And the saved weights are the good ones.
    # The step-wise checkpoint last saved after step 2 of epoch 2, not step 3.
    step, content = callbacks[-1].snapshots[-1]
    assert step == (1, 1)
    assert (tmp_path / "every_step.weights.h5").read_bytes() == content
    for path in (ckpt_dir / "model.weights.h5", tmp_path / "every_step.weights.h5"):
        good = _model()
        good.load_weights(str(path))
        assert all(np.isfinite(w).all() for w in good.get_weights())


def test_user_model_fit_with_guard_names_the_head():
    model = _model()
    state = {"epoch": 0}
    with pytest.raises(NonFiniteLossError, match=r"^Heads 'flag' \(Binary\), .*'price' "
                       r"\(Regression\), .*: their losses went non-finite \(.*\) at epoch 1, "
                       r"step 2 \(counted from 1"):
        model.fit(_blowing_up_dataset(state, bad_epoch=0, bad_step=1), epochs=2, verbose=0,
                  callbacks=[TerminateOnNonFinite(), _EpochState(state, lambda: [])])


def test_fit_transfer_puts_the_users_guard_first():
    order = []

    class Guard(TerminateOnNonFinite):
        def on_train_batch_end(self, batch, logs=None):
            order.append("guard")
            super().on_train_batch_end(batch, logs)

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            order.append("spy")

    mtk.fit_transfer(_model(), _ds(*_data()), frozen_epochs=1, finetune_epochs=0,
                     callbacks=[Spy(), Guard()], verbose=0)
    assert order == ["guard", "spy"] * 2


@pytest.mark.parametrize("logs, message", [
    ({"loss": NAN, "a_loss": 1.0, "b_loss": NAN}, r"^Head 'b' \(Binary\): its loss went non-finite \(nan\) at epoch 3, step 5"),
    ({"loss": INF, "a_loss": INF, "b_loss": NAN}, r"^Heads 'a' \(Regression\), 'b' \(Binary\): their losses went non-finite \(inf, nan\)"),
    ({"loss": NAN, "a_loss": 1.0, "b_loss": 2.0}, r"^The total loss went non-finite \(nan\) at epoch 3, step 5.*loss weights"),
    ({"loss": np.float32(1.0), "a_loss": np.array(INF, "float32"), "b_loss": 0.0}, r"^Head 'a' \(Regression\)"),
])
def test_guard_names_heads_from_logs(logs, message):
    model = mtk.build_multitask_model(
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]),
        heads=[mtk.heads.Regression("a"), mtk.heads.Binary("b")], trunk_weights=None)
    guard = TerminateOnNonFinite()
    guard.set_model(model)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(3, {"loss": 1.0, "a_loss": 0.5, "b_loss": 0.5})
    with pytest.raises(NonFiniteLossError, match=message):
        guard.on_train_batch_end(4, logs)


# --- Damaged .keras files ---

def _damaged_files(tmp_path):
    good = tmp_path / "good.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)]).save(good)
    data = good.read_bytes()
    files = {
        "zero bytes": (b"", r"is empty \(0 bytes\), not a saved Keras model"),
        "truncated": (data[: len(data) // 2], r"is a damaged or truncated zip archive"),
        "text": (b"not a model at all", r"is not a Keras file \(a .keras file is a zip archive\)"),
        "hdf5": (b"\x89HDF\r\n\x1a\n" + bytes(64), r"is an HDF5 file"),
    }
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("notes.txt", "hello")
    files["zip without config"] = ((tmp_path / "other.zip").read_bytes(),
                                   r"is a zip archive but not a saved Keras model")
    corrupted = bytearray(data)
    offset = zipfile.ZipFile(good).getinfo("model.weights.h5").header_offset
    for i in range(offset + 200, offset + 400):
        corrupted[i] ^= 0xFF
    files["corrupted member"] = (bytes(corrupted), r"is a damaged .keras archive: Bad CRC-32")
    return files


@pytest.mark.parametrize("case", ["zero bytes", "truncated", "text", "hdf5",
                                  "zip without config", "corrupted member"])
def test_damaged_keras_trunk_is_named_as_damaged(tmp_path, case):
    content, message = _damaged_files(tmp_path)[case]
    path = tmp_path / "trunk.keras"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^trunk='{path}'.*{message}") as info:
        mtk.build_multitask_model(str(path), heads=[mtk.heads.Binary("b")])
    assert "File not found" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        mtk.trunks.load_keras_file(path, argument="model_path")


def test_missing_keras_trunk_is_still_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such .keras file"):
        mtk.build_multitask_model(str(tmp_path / "nope.keras"), heads=[mtk.heads.Binary("b")])


# A pipeline that caches what a prefetch read ahead: read in part, TensorFlow
# 2.21 can keep a cut copy in the cache (here most reads did without a guard).
PARTIAL_READS = 30


def _read_ahead(x, y):
    slow = lambda x, y: (x + 0 * tf.reduce_sum(tf.random.uniform((100, 100))), y)
    return tf.data.Dataset.from_tensor_slices((x, y)).map(slow).prefetch(2)


def _examples(ds):
    return sum(int(tf.shape(batch[0])[0]) for batch in ds)


def test_cache_whole_is_never_cut_by_a_partial_read():
    x, y = _data(12)
    for _ in range(PARTIAL_READS):
        ds = mtk.data.tfds_pipeline.cache_whole(_read_ahead(x, y)).batch(8).prefetch(2)
        next(iter(ds.take(1)))
        assert _examples(ds) == 12


def test_cache_whole_names_a_dataset_that_is_not_one():
    with pytest.raises(TypeError, match=r"cache_whole\(dataset=...\) takes a tf.data.Dataset, got ndarray"):
        mtk.data.tfds_pipeline.cache_whole(np.zeros(3))


def test_first_batch_check_leaves_a_read_ahead_cache_whole():
    model, (x, y) = _model(), _data(12)
    for _ in range(PARTIAL_READS):
        ds = _read_ahead(x, y).cache().batch(8)
        mtk.check_training_data(model, ds)
        assert _examples(ds) == 12
    # Not read up front, its labels are still checked: by the step.
    ds = _read_ahead(x, _poison(y, "item", 1, 9)).cache().batch(8)
    mtk.check_training_data(model, ds)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Head item"):
        model.fit(ds, epochs=1, verbose=0)
