"""Shared test helpers, in the manner of keras-hub's ``TestCase``.

- `run_serialization_test`: ``get_config`` -> ``from_config`` round trip.
- `run_model_saving_test`: ``.keras`` save and safe-mode load, same class,
  same outputs.
- `run_python`: a script in a fresh interpreter whose TensorFlow sees
  ``logical_cpus`` CPU devices (two make a real MirroredStrategy on one CPU),
  for what must be configured before TensorFlow starts. The script calls
  ``report(value)`` to hand a JSON value back.
- `start_python` / `finish_python`: the same, for scripts that must run at
  the same time (a KerasTuner chief and its workers).
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


def _write_script(source, tmp_path, name, logical_cpus, report_name=None):
    out = os.path.join(tmp_path, report_name or f"{name}.json")
    script = os.path.join(tmp_path, f"{name}.py")
    with open(script, "w") as f:
        f.write(_PRELUDE.format(tests_dir=TESTS_DIR, logical_cpus=logical_cpus, out=out))
        f.write(textwrap.dedent(source))
    return script, out


def start_python(source, tmp_path, *, name, args=(), env=None, logical_cpus=1):
    """Starts ``source`` in a subprocess and returns it, without waiting.

    Its output goes to ``tmp_path/<name>.log``; ``env`` adds environment
    variables. Hand the process to `finish_python`.
    """
    script, out = _write_script(source, tmp_path, name, logical_cpus)
    log = open(os.path.join(tmp_path, f"{name}.log"), "w")
    process = subprocess.Popen(
        [sys.executable, script, *map(str, args)],
        stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )
    process.log_path, process.report_path = log.name, out
    log.close()
    return process


def finish_python(process, timeout=600):
    """Waits for a `start_python` process: ``(returncode, report, output)``.

    ``report`` is what the script passed to ``report`` (None if nothing);
    the process is killed if it runs past ``timeout``.
    """
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with open(process.log_path) as f:
        output = f.read()
    report = None
    if os.path.exists(process.report_path):
        with open(process.report_path) as f:
            report = json.load(f)
    return process.returncode, report, output


def run_python(source, tmp_path, *, logical_cpus=1, args=(), timeout=600):
    """Runs ``source`` in a subprocess; returns what it passed to ``report``.

    Fails the test with the script's stderr when it exits non-zero or
    reports nothing.
    """
    script, out = _write_script(
        source, tmp_path, "script", logical_cpus, report_name="report.json")
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
