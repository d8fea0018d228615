import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
import mtk.evaluation as evaluation

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def identity_model():
    """Features = inputs (3 values); heads with hand-set weights.

    ``item`` predicts the argmax of the input, ``flag`` predicts 1 when the
    first input is > 0.5, ``price`` predicts the first input.
    """
    trunk = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
    model = mtk.build_multitask_model(
        trunk,
        heads=[
            mtk.heads.Classification("item", 3, class_names=["a", "b", "c"]),
            mtk.heads.Binary("flag"),
            mtk.heads.Regression("price"),
        ],
    )
    model.get_layer("item").output_dense.set_weights(
        [10 * np.eye(3, dtype="float32"), np.zeros(3, "float32")]
    )
    model.get_layer("flag").output_dense.set_weights(
        [np.array([[20.0], [0.0], [0.0]], "float32"), np.array([-10.0], "float32")]
    )
    model.get_layer("price").output_dense.set_weights(
        [np.array([[1.0], [0.0], [0.0]], "float32"), np.zeros(1, "float32")]
    )
    return model


def identity_data():
    # Predicted item: 0, 1, 1, 2, 0, 2; predicted flag: 1, 0, 0, 0, 1, 0.
    x = np.array(
        [[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]],
        "float32",
    )
    y = {
        "item": np.array([0, 1, 2, 2, -1, 0]),
        "flag": np.array([1, 0, 1, np.nan, 1, 0], "float32"),
        "price": np.array([1.0, 0.5, np.nan, 0.0, 3.0, 0.0], "float32"),
    }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def test_delta_m_on_hand_made_numbers():
    # +12.5% on a (higher better), +20% on b (lower better), -10% on c.
    metrics = {"a": 0.9, "b": 2.0, "c": 0.72}
    baselines = {"a": 0.8, "b": 2.5, "c": 0.8}
    higher = {"a": True, "b": False, "c": True}
    assert evaluation.delta_m(metrics, baselines, higher) == pytest.approx(
        (12.5 + 20.0 - 10.0) / 3
    )
    assert evaluation.delta_m({"a": 0.4}, {"a": 0.5}, True) == pytest.approx(-20.0)
    assert evaluation.delta_m(baselines, baselines, higher) == 0.0


def test_delta_m_rejects_mismatched_tasks_and_zero_baseline():
    with pytest.raises(ValueError, match="same tasks"):
        evaluation.delta_m({"a": 1.0}, {"b": 1.0}, True)
    with pytest.raises(ValueError, match="lacks tasks \\['b'\\]"):
        evaluation.delta_m({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0}, {"a": True})
    with pytest.raises(ValueError, match="baselines\\['a'\\] is 0"):
        evaluation.delta_m({"a": 1.0}, {"a": 0.0}, True)


def test_split_log_keys_longest_head_name_wins():
    keys = ["loss", "item_loss", "item_accuracy", "item_color_loss", "item_color_accuracy"]
    assert evaluation.split_log_keys(keys, ["item", "item_color"]) == {
        "item": {"loss": "item_loss", "accuracy": "item_accuracy"},
        "item_color": {"loss": "item_color_loss", "accuracy": "item_color_accuracy"},
    }
    # One head: unprefixed logs (a one-output model) are all its own...
    assert evaluation.split_log_keys(["loss", "accuracy"], ["item"]) == {
        "item": {"loss": "loss", "accuracy": "accuracy"}
    }
    # ...prefixed ones are picked out of a multi-head log.
    assert evaluation.split_log_keys(keys, ["item_color"]) == {
        "item_color": {"loss": "item_color_loss", "accuracy": "item_color_accuracy"}
    }


def test_evaluate_heads_matches_hand_computed_metrics():
    model = identity_model()
    report = evaluation.evaluate_heads(model, identity_data())
    assert sorted(report) == ["flag", "item", "price"]
    # item: 5 labelled, predictions 0,1,1,2,_,2 vs 0,1,2,2,_,0 -> 3/5.
    assert report["item"]["accuracy"] == pytest.approx(3 / 5)
    # flag: 5 labelled, predictions 1,0,0,_,1,0 vs 1,0,1,_,1,0 -> 4/5.
    assert report["flag"]["accuracy"] == pytest.approx(4 / 5)
    # price: predictions 1,0,_,0,1,0 vs 1,.5,_,0,3,0 -> |errors| 0,.5,0,2,0.
    assert report["price"]["mae"] == pytest.approx(2.5 / 5, abs=1e-6)
    assert set(report["flag"]) == {"loss", "accuracy", "auc"}
    assert evaluation.primary_metrics(model, report) == {
        "item": report["item"]["accuracy"],
        "flag": report["flag"]["accuracy"],
        "price": report["price"]["mae"],
    }
    assert evaluation.higher_is_better(model) == {
        "item": True, "flag": True, "price": False,
    }


def test_evaluate_heads_one_head_model_has_unprefixed_logs():
    model = mtk.build_multitask_model(
        keras.Sequential([keras.Input((3,)), keras.layers.Identity()]),
        heads=[mtk.heads.Classification("item", 3)],
    )
    model.get_layer("item").output_dense.set_weights(
        [10 * np.eye(3, dtype="float32"), np.zeros(3, "float32")]
    )
    x = np.eye(3, dtype="float32")
    ds = tf.data.Dataset.from_tensor_slices((x, {"item": np.array([0, 1, 0])})).batch(3)
    report = evaluation.evaluate_heads(model, ds)
    assert list(report) == ["item"]
    assert report["item"]["accuracy"] == pytest.approx(2 / 3)


def test_evaluate_heads_needs_compiled_model():
    model = mtk.build_multitask_model(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
        heads=[mtk.heads.Binary("flag")], compile=False,
    )
    with pytest.raises(ValueError, match="not compiled"):
        evaluation.evaluate_heads(model, identity_data())


def test_confusion_matrices_skip_missing_labels():
    matrices = evaluation.confusion_matrices(identity_model(), identity_data())
    assert sorted(matrices) == ["flag", "item"]  # Regression has none.
    # Rows true, columns predicted; the -1 label is not counted.
    np.testing.assert_array_equal(
        matrices["item"], [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    )
    # flag: (true, predicted) = (1,1), (0,0), (1,0), (1,1), (0,0); NaN skipped.
    np.testing.assert_array_equal(matrices["flag"], [[2, 0], [1, 2]])


def test_format_table_cells_and_columns():
    table = evaluation.format_table(
        [{"trial": "00", "score": 0.512345, "size": 12000, "best": True},
         {"trial": "01", "score": None, "best": False, "note": "late column"}],
        title="two trials",
    )
    assert table.splitlines() == [
        "two trials",
        "| trial | score  | size  | best | note        |",
        "|-------|--------|-------|------|-------------|",
        "| 00    | 0.5123 | 12000 | *    |             |",
        "| 01    |        |       |      | late column |",
    ]
    assert evaluation.format_table([], title="none").splitlines() == ["none", "(no rows)"]


def test_format_reports_side_by_side():
    table = evaluation.format_reports({
        "multi": {"a": {"loss": 0.3, "accuracy": 0.91}, "b": {"mae": 1.5}},
        "single": {"a": {"accuracy": 0.875}},
    })
    assert table.splitlines() == [
        "| head | metric   | multi  | single |",
        "|------|----------|--------|--------|",
        "| a    | accuracy | 0.9100 | 0.8750 |",
        "| b    | mae      | 1.5000 | -      |",
    ]
    only_loss = evaluation.format_reports({"m": {"a": {"loss": 0.3, "accuracy": 0.9}}},
                                          metrics=["loss"])
    assert only_loss.splitlines()[2] == "| a    | loss   | 0.3000 |"


def test_log_key_inverts_split_log_keys():
    heads = ["item", "item_color"]
    keys = [evaluation.log_key(h, m, heads) for h in heads for m in ("loss", "mae")]
    assert keys == ["item_loss", "item_mae", "item_color_loss", "item_color_mae"]
    assert evaluation.split_log_keys(keys, heads) == {
        "item": {"loss": "item_loss", "mae": "item_mae"},
        "item_color": {"loss": "item_color_loss", "mae": "item_color_mae"},
    }
    assert evaluation.log_key("item", "mae", ["item"], validation=True) == "val_mae"


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000  # Axes, curves and text, not an empty canvas.


def fake_history():
    return {
        "loss": [3.0, 2.0, 1.5, 1.2],
        "item_loss": [1.0, 0.8, 0.6, 0.5],
        "item_accuracy": [0.5, 0.6, 0.7, 0.8],
        "flag_loss": [2.0, 1.2, 0.9, 0.7],
        "flag_accuracy": [0.6, 0.7, 0.7, 0.9],
        "flag_auc": [0.6, 0.7, 0.8, 0.9],
        "val_item_loss": [1.1, 0.9, 0.7, 0.6],
        "val_item_accuracy": [0.4, 0.5, 0.6, 0.7],
        "item_loss_weight": [1.0, 0.8, 0.7, 0.7],
        "flag_loss_weight": [1.0, 1.2, 1.3, 1.3],
    }


def test_plot_history_and_loss_weights_write_pngs(tmp_path):
    history = fake_history()
    path = evaluation.plot_history(
        history, str(tmp_path / "history.png"), head_names=["item", "flag"],
        phase_boundary=2,
    )
    assert_png(path)
    weights = evaluation.plot_loss_weights(history, str(tmp_path / "weights.png"))
    assert_png(weights)
    assert evaluation.loss_weight_keys(history) == {
        "item": "item_loss_weight", "flag": "flag_loss_weight",
    }
    without = {k: v for k, v in history.items() if not k.endswith("_loss_weight")}
    assert evaluation.plot_loss_weights(without, str(tmp_path / "none.png")) is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(ValueError, match="head_names"):
        evaluation.plot_history(history, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no logs of heads"):
        evaluation.plot_history(
            history, str(tmp_path / "x.png"), head_names=["other", "more"]
        )
    # One head of a multi-head history: its prefixed keys only.
    assert_png(evaluation.plot_history(
        history, str(tmp_path / "flag.png"), head_names=["flag"]
    ))


def test_plot_confusion_matrix_small_and_many_classes(tmp_path):
    assert_png(evaluation.plot_confusion_matrix(
        [[5, 1], [2, 7]], str(tmp_path / "two.png"), class_names=["no", "yes"],
        title="flag",
    ))
    rng = np.random.default_rng(0)
    assert_png(evaluation.plot_confusion_matrix(
        rng.integers(0, 9, (60, 60)), str(tmp_path / "many.png")
    ))
    with pytest.raises(ValueError, match="class_names has 1 names"):
        evaluation.plot_confusion_matrix([[1, 0], [0, 1]], str(tmp_path / "x.png"), ["a"])


@pytest.mark.slow
def test_write_report_after_fit_transfer(tmp_path):
    keras.utils.set_random_seed(0)
    model = identity_model()
    history = mtk.fit_transfer(
        model, identity_data(), validation_data=identity_data(),
        frozen_epochs=1, finetune_epochs=1, verbose=0,
    )
    report = evaluation.write_report(model, identity_data(), str(tmp_path), history=history)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "confusion_flag.png", "confusion_item.png", "history.png", "metrics.json",
    ]
    for name in names[:3]:
        assert_png(tmp_path / name)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"] == evaluation.evaluate_heads(model, identity_data())
    assert saved["phase_boundary"] == 1
    assert len(saved["history"]["val_item_accuracy"]) == 2
    assert np.sum(saved["confusion"]["item"]) == 5
    assert report["metrics"] == saved["metrics"]
