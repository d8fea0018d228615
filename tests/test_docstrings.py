"""Runs the `Example:` blocks of mtk's docstrings, so they stay true."""

import doctest
import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import mtk
from conftest import as_dataset
from conftest import four_heads
from conftest import image_batch
from conftest import minilm_dir
from conftest import IMAGE_SHAPE

MODULES = [
    "mtk.adaptation",
    "mtk.data.dense",
    "mtk.data.fashion_mnist",
    "mtk.data.fashion_shift",
    "mtk.dense_heads",
    "mtk.data.fashion_trunk",
    "mtk.data.labels",
    "mtk.data.mixing",
    "mtk.data.multi_fashion",
    "mtk.data.synthetic",
    "mtk.data.tables",
    "mtk.data.clicks",
    "mtk.data.tfds_pipeline",
    "mtk.distribute",
    "mtk.evaluation",
    "mtk.export",
    "mtk.losses",
    "mtk.heads",
    "mtk.layers",
    "mtk.model",
    "mtk.monitor",
    "mtk.monitoring",
    "mtk.preprocessing",
    "mtk.sharing",
    "mtk.sharing.attention",
    "mtk.sharing.base",
    "mtk.sharing.cross_stitch",
    "mtk.sharing.experts",
    "mtk.trunks",
    "mtk.builder",
    "mtk.training",
    "mtk.tuning.distributed",
    "mtk.tuning.hypermodel",
    "mtk.tuning.score",
    "mtk.tuning.search",
    "mtk.tuning.space",
    "mtk.tuning.tune",
    "mtk.tuning.tuners",
    "mtk.weighting",
    "mtk.weighting.alignment",
    "mtk.weighting.base",
    "mtk.weighting.comparison",
    "mtk.weighting.gradient_level",
    "mtk.weighting.loss_balancing",
    "mtk.weighting.loss_level",
    "mtk.weighting.min_norm",
]


def _namespace():
    keras.utils.set_random_seed(0)
    x, y = image_batch(8)
    return {
        "mtk": mtk, "keras": keras, "np": np, "tf": tf,
        "model": mtk.build_multitask_model(
            "mobilenet_v3_small", input_shape=IMAGE_SHAPE, trunk_weights=None,
            heads=four_heads()),
        "train_ds": as_dataset(x, y), "val_ds": as_dataset(x, y),
        "model_dir": minilm_dir(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    namespace = _namespace()
    tests = [t for t in doctest.DocTestFinder().find(module, globs=namespace) if t.examples]
    assert tests, f"{module_name} has no docstring examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
