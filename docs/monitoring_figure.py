"""Draws docs/monitoring_item.png, the README's picture of a monitoring report.

A small model learns synthetic 8x8 images (class = the bright quadrant, flag =
a faint checkerboard), is exported with a reference profile, and then sees
traffic whose class mix has shifted (55 % class "a" instead of 25 %). The
report's plot of head ``item`` is copied to docs/.

    python docs/monitoring_figure.py      # ~20 s on 2 CPU cores
"""

import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import mtk  # noqa: E402
from mtk.monitor import main  # noqa: E402

CHECKERBOARD = (np.indices((8, 8)).sum(axis=0) % 2 * 2 - 1)[..., None]


def images(n, seed, prior=(0.25, 0.25, 0.25, 0.25)):
    rng = np.random.default_rng(seed)
    item = rng.choice(4, size=n, p=prior)
    flag = rng.integers(0, 2, n)
    x = rng.uniform(20, 60, (n, 8, 8, 1))
    for i, c in enumerate(item):
        row, col = divmod(c, 2)
        x[i, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 80
    x += 15 * flag[:, None, None, None] * CHECKERBOARD
    return x.astype("float32"), {"item": item, "flag": flag.astype("float32")}


def run():
    keras.utils.set_random_seed(0)
    trunk = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.LayerNormalization(axis=(1, 2, 3)),
        keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"),
    ])
    model = mtk.build_multitask_model(
        trunk, trunk_weights=None, freeze_trunk=False, learning_rate=1e-2,
        heads=[mtk.heads.Classification("item", 4, class_names=list("abcd")),
               mtk.heads.Binary("flag")])
    model.fit(*images(2000, 1), epochs=8, batch_size=64, verbose=0)
    work = tempfile.mkdtemp()
    base = os.path.join(work, "shapes")
    mtk.export_saved_model(model, base, reference_data=images(1000, 2))
    x, _ = images(1000, 10, prior=(0.55, 0.15, 0.15, 0.15))
    np.save(os.path.join(work, "now.npy"), x)
    status = main([base, os.path.join(work, "now.npy"),
                   "--out", os.path.join(work, "report")])
    print("exit status", status)
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copy(os.path.join(work, "report", "item.png"),
                os.path.join(here, "monitoring_item.png"))


if __name__ == "__main__":
    run()
