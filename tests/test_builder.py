import keras
import numpy as np
import pytest

import mtk
from conftest import IMAGE_SHAPE
from conftest import four_heads
from conftest import small_cnn


def test_model_contract(tiny_model):
    model = tiny_model
    assert isinstance(model, keras.Model)
    out = model(np.zeros((2,) + IMAGE_SHAPE, "float32"))
    assert isinstance(out, dict)
    assert sorted(out) == ["flag", "item", "price", "tags"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "item": (2, 4), "flag": (2, 1), "tags": (2, 3), "price": (2, 1)}
    trunk = model.get_layer("trunk")
    assert isinstance(trunk, keras.Model)
    assert trunk.trainable is False  # phase 1 by default
    for name in out:
        assert isinstance(model.get_layer(name), mtk.heads.Head)
    assert model.compiled
    assert model.get_compile_config()["loss_weights"] == {
        "item": 1.0, "flag": 1.0, "tags": 1.0, "price": 1.0}


def test_compile_options_and_uncompiled():
    model = mtk.build_multitask_model(
        small_cnn(), heads=[mtk.heads.Binary("flag"), mtk.heads.Regression("price")],
        freeze_trunk=False, optimizer=keras.optimizers.SGD(0.1),
        loss_weights={"price": 0.1},
        metrics={"price": [keras.metrics.RootMeanSquaredError(name="rmse")]})
    assert model.get_layer("trunk").trainable is True
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.get_compile_config()["loss_weights"] == {"flag": 1.0, "price": 0.1}
    x = np.zeros((4,) + IMAGE_SHAPE, "float32")
    logs = model.evaluate(x, {"flag": np.ones(4, "float32"), "price": np.ones(4, "float32")},
                          verbose=0, return_dict=True)
    assert "price_rmse" in logs and "flag_auc" in logs

    uncompiled = mtk.build_multitask_model(
        small_cnn(), heads=[mtk.heads.Binary("flag")], compile=False)
    assert not uncompiled.compiled
    mtk.compile_multitask(uncompiled, loss_weights={"flag": 2.0})
    assert uncompiled.get_compile_config()["loss_weights"] == {"flag": 2.0}


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(heads=[mtk.heads.Binary("a"), mtk.heads.Binary("a")]), ValueError, "'a' is used twice"),
    (dict(heads=[]), ValueError, "heads is empty"),
    (dict(heads=["a"]), TypeError, "mtk.heads.Head"),
    (dict(heads=[mtk.heads.Binary("a")], loss_weights={"b": 1.0}), ValueError, r"loss_weights names head\(s\) \['b'\]"),
    (dict(heads=[mtk.heads.Binary("a")], loss_weights={"a": -1}), ValueError, r"loss_weights\['a'\] must be a finite number >= 0, got -1"),
    (dict(heads=[mtk.heads.Binary("a")], loss_weights={"a": float("nan")}), ValueError, r"loss_weights\['a'\] must be a finite number >= 0, got nan"),
    (dict(heads=[mtk.heads.Binary("a")], loss_weights=[1.0]), TypeError, "dict keyed by head name"),
    (dict(heads=[mtk.heads.Binary("a")], learning_rate=-0.01), ValueError, "learning_rate"),
    (dict(heads=[mtk.heads.Binary("a")], metrics={"b": []}), ValueError, r"metrics names head\(s\) \['b'\]"),
])
def test_bad_builder_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        mtk.build_multitask_model(small_cnn(), **kwargs)


def test_head_objects_are_not_shared_between_models():
    head = mtk.heads.Binary("a")
    mtk.build_multitask_model(small_cnn(), heads=[head])
    with pytest.raises(ValueError, match="'a' already belongs to a model"):
        mtk.build_multitask_model(small_cnn(), heads=[head])


def test_heads_of_rejects_plain_models():
    with pytest.raises(ValueError, match="no mtk heads"):
        mtk.heads.heads_of(small_cnn())


def test_input_shape_must_fit_model_trunk():
    with pytest.raises(ValueError, match=r"input_shape=\(64, 64, 3\) does not fit"):
        mtk.build_multitask_model(small_cnn(), heads=four_heads(), input_shape=(64, 64, 3))
