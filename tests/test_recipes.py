"""The recipes run end to end, offline, on tiny settings, and write their outputs."""

import importlib.util
import json
import pathlib

import keras
import numpy as np
import pytest

from data.data_testing import write_fashion_files

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_outputs(out, heads, confusion_heads):
    results = json.loads((out / "results.json").read_text())
    metrics = results["evaluation"]["metrics"]
    assert sorted(metrics) == sorted(heads)
    assert sorted(results["evaluation"]["confusion"]) == sorted(confusion_heads)
    for name in confusion_heads:
        assert (out / f"confusion_{name}.png").stat().st_size > 5000
    assert (out / "history.png").stat().st_size > 5000
    assert (out / "saved_model" / "1" / "saved_model.pb").is_file()
    assert results["outputs"]["saved_model"] == str(out / "saved_model" / "1")
    return results


def assert_accuracy_agrees_with_confusion(results, heads):
    """The reported accuracy (Keras's masked metric, from `evaluate`) equals
    the one recomputed from the confusion matrix (argmax of `predict`)."""
    for head in heads:
        matrix = np.asarray(results["evaluation"]["confusion"][head])
        recomputed = np.trace(matrix) / matrix.sum()
        reported = results["evaluation"]["metrics"][head]["accuracy"]
        assert reported == pytest.approx(recomputed, abs=1e-6), head


@pytest.mark.parametrize(
    "name", ["image_multitask", "face_attributes", "text_multitask", "domain_adaptation",
             "tabular_multitask"])
def test_help_shows_defaults(name, capsys):
    recipe = load_recipe(name)
    with pytest.raises(SystemExit) as exit_info:
        recipe.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "(default:" in capsys.readouterr().out


@pytest.mark.slow
def test_image_multitask_offline_on_tiny_fashion_files(tmp_path):
    fashion_dir = tmp_path / "fashion"
    write_fashion_files(fashion_dir)
    out = tmp_path / "out"
    results = load_recipe("image_multitask").main([
        "--output-dir", str(out), "--tfds-dir", str(tmp_path / "tfds"),
        "--fashion-mnist-dir", str(fashion_dir), "--train-size", "32",
        "--test-size", "12", "--source-examples", "30", "--source-epochs", "1",
        "--frozen-epochs", "1", "--finetune-epochs", "1", "--batch-size", "8",
        "--loss-weighting", "uncertainty", "--verbose", "0",
    ])
    assert_outputs(out, ["left", "right"], ["left", "right"])
    assert (out / "loss_weights.png").stat().st_size > 5000
    assert len(results["evaluation"]["history"]["left_loss_weight"]) == 2
    for head in ("left", "right"):
        # Every test canvas labels both heads: 12 counted per matrix.
        assert np.sum(results["evaluation"]["confusion"][head]) == 12
    assert_accuracy_agrees_with_confusion(results, ["left", "right"])
    assert results["evaluation"]["phase_boundary"] == 1
    model = keras.saving.load_model(out / "model.keras")
    assert model.input_shape == (None, 36, 36, 1)


@pytest.mark.slow
def test_domain_adaptation_offline_on_tiny_fashion_files(tmp_path):
    fashion_dir = tmp_path / "fashion"
    write_fashion_files(fashion_dir)
    out = tmp_path / "out"
    results = load_recipe("domain_adaptation").main([
        "--output-dir", str(out), "--data-dir", str(fashion_dir), "--method", "dann",
        "--source-size", "16", "--target-size", "8", "--target-labels", "4",
        "--test-size", "8", "--epochs", "1", "--batch-size", "8", "--verbose", "0",
    ])
    assert sorted(results["reports"]) == [
        "dann, source", "dann, target", "source-only, source", "source-only, target"]
    assert {"domain_accuracy", "domain_lambda", "domain_loss",
            "val_item_accuracy"} <= set(results["watch"])
    assert (out / "saved_model" / "1" / "saved_model.pb").is_file()
    model = keras.saving.load_model(out / "model.keras")
    assert type(model.adaptation).__name__ == "DANN"


@pytest.mark.slow
def test_face_attributes_smoke_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    results = load_recipe("face_attributes").main([
        "--smoke", "--output-dir", str(out), "--mock-examples", "8",
        "--image-size", "32", "--batch-size", "4", "--frozen-epochs", "1",
        "--finetune-epochs", "1", "--verbose", "0",
    ])
    assert "SMOKE TEST" in capsys.readouterr().out
    assert results["smoke"] is True
    assert_outputs(out, ["attributes", "landmarks"], [])
    metrics = results["evaluation"]["metrics"]
    assert set(metrics["attributes"]) == {"loss", "accuracy", "auc"}
    assert set(metrics["landmarks"]) == {"loss", "mae"}
    assert len(results["attribute_names"]) == 40


@pytest.mark.slow
def test_text_multitask_on_the_example_file(tmp_path):
    recipe = load_recipe("text_multitask")
    out = tmp_path / "out"
    results = recipe.main([
        # No fine-tuning epoch: tracing MiniLM's backward pass again would
        # double the test's time; fit_transfer's phase 2 is tested elsewhere.
        "--output-dir", str(out), "--frozen-epochs", "1", "--finetune-epochs", "0",
        "--sequence-length", "16", "--verbose", "0",
    ])
    assert_outputs(out, ["spam", "topic", "sentiment"], ["spam", "topic", "sentiment"])
    texts, _, labels = recipe.read_tsv(recipe.EXAMPLE_DATA)
    n_test = round(0.25 * len(texts))
    # spam is labelled on every row; topic and sentiment miss some labels.
    assert np.sum(results["evaluation"]["confusion"]["spam"]) == n_test
    assert np.sum(results["evaluation"]["confusion"]["topic"]) <= n_test
    # Missing labels are skipped alike by the metrics and the matrices.
    assert_accuracy_agrees_with_confusion(results, ["spam", "topic", "sentiment"])


@pytest.mark.slow
def test_tabular_multitask_offline_streams_csv(tmp_path):
    out = tmp_path / "out"
    results = load_recipe("tabular_multitask").main([
        "--output-dir", str(out), "--rows", "300", "--epochs", "1",
        "--batch-size", "64", "--hidden-units", "8", "--verbose", "0",
    ])
    assert_outputs(out, ["click", "conversion", "spend"], ["click", "conversion"])
    assert (out / "csv" / "train.csv").is_file()
    model = keras.saving.load_model(out / "model.keras")
    assert sorted(model.input) == ["age", "city_id", "country", "device"]
    assert results["train"] == str(out / "csv" / "train.csv")


def test_read_tsv_heads_labels_and_errors(tmp_path):
    recipe = load_recipe("text_multitask")
    path = tmp_path / "tasks.tsv"
    path.write_text("text\tspam\ttopic\nwin money\t1\tads\nhello\t0\t\nbill\t\tbilling\n")
    texts, heads, labels = recipe.read_tsv(path)
    assert texts == ["win money", "hello", "bill"]
    assert [type(h).__name__ for h in heads] == ["Binary", "Classification"]
    assert heads[1].class_names == ["ads", "billing"]
    np.testing.assert_array_equal(labels["spam"], [1.0, 0.0, np.nan])
    np.testing.assert_array_equal(labels["topic"], [0, -1, 1])

    path.write_text("text\tspam\ttopic\nwin money\t1\n")
    with pytest.raises(ValueError, match="line 2: 2 columns"):
        recipe.read_tsv(path)
    path.write_text("text\tspam\nwin\t1\nlose\t0\n")
    with pytest.raises(ValueError, match="two or more tasks"):
        recipe.read_tsv(path)
    path.write_text("text\tspam\ttopic\nwin\t1\tads\nlose\t0\tads\n")
    with pytest.raises(ValueError, match="task 'topic' has 1 distinct"):
        recipe.read_tsv(path)
