import keras
import numpy as np
import pytest

import mtk
from conftest import as_dataset
from testing import run_model_saving_test
from conftest import image_batch
from mtk.trunks import get_trunk


def _bn_layers(model):
    return [l for l in get_trunk(model)._flatten_layers()
            if isinstance(l, keras.layers.BatchNormalization)]


def test_freeze_and_unfreeze_counts(tiny_model):
    model = tiny_model
    trunk = get_trunk(model)
    head_vars = sum(len(model.get_layer(n).trainable_weights)
                    for n in ("item", "flag", "tags", "price"))
    assert len(model.trainable_weights) == head_vars  # built frozen

    layers = [l for l in trunk.layers if not isinstance(l, keras.layers.InputLayer)]
    assert mtk.unfreeze_trunk(model, "top:10") == 10
    is_bn = [isinstance(l, keras.layers.BatchNormalization) for l in layers]
    assert [l.trainable for l in layers] == (
        [False] * (len(layers) - 10) + [not bn for bn in is_bn[-10:]])
    top_vars = sum(len(l.weights) for l in layers[-10:]
                   if not isinstance(l, keras.layers.BatchNormalization))
    assert top_vars > 0
    assert len(model.trainable_weights) == head_vars + top_vars

    mtk.unfreeze_trunk(model, "all")
    non_bn_vars = sum(len(l.weights) for l in trunk._flatten_layers()
                      if not l._layers and not isinstance(l, keras.layers.BatchNormalization))
    assert len(model.trainable_weights) == head_vars + non_bn_vars
    assert all(not bn.trainable for bn in _bn_layers(model))

    name = layers[-3].name
    assert mtk.unfreeze_trunk(model, f"from:{name}") == 3

    mtk.freeze_trunk(model)
    assert len(model.trainable_weights) == head_vars


@pytest.mark.parametrize("spec, message", [
    ("from:nope", "unfreeze='from:nope' names no layer"),
    ("top:0", "use 'top:N' with 1 <= N"),
    ("top:100000", "use 'top:N' with 1 <= N"),
    ("half", "unfreeze must be"),
])
def test_unfreeze_spec_that_names_no_layer(tiny_model, spec, message):
    with pytest.raises(ValueError, match=message):
        mtk.unfreeze_trunk(tiny_model, spec)


@pytest.mark.slow
def test_fit_transfer_two_phases_keeps_batchnorm_in_inference_mode(tiny_model):
    model = tiny_model
    x, y = image_batch(16)
    ds = as_dataset(x, y)
    trunk = get_trunk(model)
    bn_stats = [(bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy())
                for bn in _bn_layers(model)]
    assert bn_stats
    trunk_before = [w.copy() for w in trunk.get_weights()]
    learning_rates = []

    class RecordLR(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            learning_rates.append(float(self.model.optimizer.learning_rate))

    history = mtk.fit_transfer(
        model, ds, validation_data=ds, frozen_epochs=2, finetune_epochs=1,
        unfreeze="all", finetune_learning_rate=1e-4, callbacks=[RecordLR()],
        verbose=0)

    assert history.phase_boundary == 2
    assert history.params["phase_boundary"] == 2
    assert history.epoch == [0, 1, 2]
    for key in ("loss", "item_loss", "val_price_mae", "val_flag_auc", "tags_accuracy"):
        assert len(history.history[key]) == 3
        assert np.all(np.isfinite(history.history[key]))
    assert learning_rates == pytest.approx([1e-3, 1e-3, 1e-4])
    # Phase 2 trained the trunk...
    assert any(not np.array_equal(a, b) for a, b in zip(trunk_before, trunk.get_weights()))
    # ...but every BatchNormalization kept its statistics (inference mode).
    for bn, (mean, var) in zip(_bn_layers(model), bn_stats):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), var)
    # Same losses, weights and metrics after the recompile.
    assert model.get_compile_config()["loss_weights"] == {
        "item": 1.0, "flag": 1.0, "tags": 1.0, "price": 1.0}


def test_fit_transfer_recompiles_with_loss_weights(tiny_model):
    mtk.compile_multitask(tiny_model, loss_weights={"price": 0.25})
    mtk.recompile(tiny_model, learning_rate=0.5)
    assert tiny_model.get_compile_config()["loss_weights"]["price"] == 0.25
    assert float(tiny_model.optimizer.learning_rate) == 0.5


def _bad_labels():
    x, y = image_batch(8)
    missing = {k: v for k, v in y.items() if k != "flag"}
    unknown = dict(y, colour=y["flag"])
    wrong_shape = dict(y, tags=y["tags"][:, :2])
    return x, {
        "missing": (missing, r"labels lacks head\(s\) \['flag'\]"),
        "unknown": (unknown, r"labels names head\(s\) \['colour'\] that the model lacks"),
        "shape": (wrong_shape, r"'tags' \(MultiLabel\) expects labels of shape \(3,\)"),
    }


@pytest.mark.parametrize("case", ["missing", "unknown", "shape", "input", "unfreeze"])
def test_bad_input_fails_before_training(tiny_model, case):
    x, cases = _bad_labels()
    _, y = image_batch(8)
    kwargs = {}
    if case in cases:
        y, message = cases[case]
    elif case == "input":
        x, message = x[:, :16, :16, :], r"takes examples of shape \(32, 32, 3\)"
    else:
        kwargs, message = {"unfreeze": "from:nope"}, "names no layer"
    before = [w.copy() for w in tiny_model.get_weights()]
    with pytest.raises(ValueError, match=message):
        mtk.fit_transfer(tiny_model, as_dataset(x, y), frozen_epochs=1,
                         finetune_epochs=1, verbose=0, **kwargs)
    for a, b in zip(before, tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_check_training_data_with_arrays(tiny_model):
    x, y = image_batch(4)
    mtk.check_training_data(tiny_model, x, y)
    with pytest.raises(TypeError, match=r"y must be a dict keyed by head name \(\['flag', 'item', 'price', 'tags'\]\)"):
        mtk.check_training_data(tiny_model, x, [y["item"]])


def test_fit_transfer_argument_errors(tiny_model):
    ds = as_dataset(*image_batch(8))
    with pytest.raises(ValueError, match="sets epochs itself"):
        mtk.fit_transfer(tiny_model, ds, epochs=3)
    with pytest.raises(ValueError, match="frozen_epochs must be"):
        mtk.fit_transfer(tiny_model, ds, frozen_epochs=-1)


@pytest.mark.slow
def test_trained_model_save_load_round_trip(tiny_model, tmp_path):
    x, y = image_batch(16)
    mtk.fit_transfer(tiny_model, as_dataset(x, y), frozen_epochs=1,
                     finetune_epochs=1, unfreeze="top:10", verbose=0)
    loaded = run_model_saving_test(tiny_model, x, str(tmp_path / "m.keras"))
    assert len(loaded.trainable_weights) == len(tiny_model.trainable_weights)
    assert loaded.get_layer("item").class_names == list("abcd")
    # The loaded model keeps training with its masked losses.
    logs = loaded.evaluate(as_dataset(x, y), verbose=0, return_dict=True)
    assert np.isfinite(logs["loss"])


def test_missing_labels_carry_no_gradient(tiny_model):
    """A head whose labels are all missing gets no update from the batch."""
    x, y = image_batch(8)
    y["price"][:] = np.nan
    mtk.compile_multitask(tiny_model, optimizer=keras.optimizers.SGD(0.1))
    price = [w.copy() for w in tiny_model.get_layer("price").get_weights()]
    item = [w.copy() for w in tiny_model.get_layer("item").get_weights()]
    logs = tiny_model.fit(as_dataset(x, y), epochs=1, verbose=0).history
    assert logs["price_loss"] == [0.0]
    for a, b in zip(price, tiny_model.get_layer("price").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in
               zip(item, tiny_model.get_layer("item").get_weights()))
