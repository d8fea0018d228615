"""Shared test helpers, in the manner of keras-hub's ``TestCase``.

- `run_serialization_test`: ``get_config`` -> ``from_config`` round trip.
- `run_model_saving_test`: ``.keras`` save and safe-mode load, same class,
  same outputs.
- `run_python`: a script in a fresh interpreter whose TensorFlow sees
  ``logical_cpus`` CPU devices (two make a real MirroredStrategy on one CPU),
  for what must be configured before TensorFlow starts. The script calls
  ``report(value)`` to hand a JSON value back.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

_PRELUDE = """\
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {tests_dir!r})
from testing import use_logical_cpus
use_logical_cpus({logical_cpus})

def report(value):
    with open({out!r}, "w") as f:
        json.dump(value, f)

"""


def use_logical_cpus(count):
    """Splits the CPU into ``count`` logical devices; call before TF runs."""
    import tensorflow as tf

    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )


def run_python(source, tmp_path, *, logical_cpus=1, args=(), timeout=600):
    """Runs ``source`` in a subprocess; returns what it passed to ``report``.

    Fails the test with the script's stderr when it exits non-zero or
    reports nothing.
    """
    out = os.path.join(tmp_path, "report.json")
    script = os.path.join(tmp_path, "script.py")
    with open(script, "w") as f:
        f.write(_PRELUDE.format(tests_dir=TESTS_DIR, logical_cpus=logical_cpus, out=out))
        f.write(textwrap.dedent(source))
    result = subprocess.run(
        [sys.executable, script, *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert os.path.exists(out), "the script reported nothing:\n" + result.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def run_serialization_test(instance):
    """Checks that ``from_config(get_config())`` rebuilds an equal config.

    The config must also survive JSON, as it does inside a ``.keras`` file.
    """
    config = instance.get_config()
    revived_config = json.loads(json.dumps(keras.saving.serialize_keras_object(instance)))
    revived = keras.saving.deserialize_keras_object(revived_config)
    assert type(revived) is type(instance)
    assert json.dumps(revived.get_config(), sort_keys=True, default=str) == json.dumps(
        config, sort_keys=True, default=str)
    return revived


def run_model_saving_test(model, x, path, atol=1e-5):
    """Saves to ``.keras``, loads in safe mode; same class and predictions."""
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    expected = model.predict(x, verbose=0)
    got = loaded.predict(x, verbose=0)
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=atol)
    return loaded
