"""Runs an exported SavedModel in a process where mtk cannot be imported.

Used by tests/test_export.py as a child process, the way a model server that
knows nothing of mtk would run the export:

    python tests/export_run_saved_model.py SAVED_MODEL_DIR INPUTS.npz OUT.npz [--text]

INPUTS.npz holds one array per signature input key; OUT.npz receives one
array per signature output key. mtk and keras-hub are made unimportable; for
image models Keras is too. Text models need ``import tensorflow_text`` for
the tokenizer ops (TF Serving's binary has them built in), and
tensorflow-text itself imports Keras through ``tf.keras``.
"""

import os
import sys


def main():
    saved_model_dir, inputs_path, outputs_path = sys.argv[1:4]
    text = "--text" in sys.argv[4:]
    blocked = {"mtk", "keras_hub"} if text else {"mtk", "keras_hub", "keras"}
    # A None entry makes `import name` raise ImportError and
    # importlib.util.find_spec(name) return None, as if it were not installed.
    for name in blocked:
        sys.modules[name] = None
    try:
        import mtk  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("mtk was importable; the test would prove nothing.")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    if text:
        import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    serving = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    with np.load(inputs_path) as inputs:
        feed = {key: tf.constant(inputs[key]) for key in inputs.files}
    outputs = serving(**feed)
    # Strings as fixed-width bytes: .npz cannot hold object arrays unpickled.
    np.savez(
        outputs_path,
        **{
            key: value.numpy().astype(bytes) if value.dtype == tf.string
            else value.numpy()
            for key, value in outputs.items()
        },
    )
    loaded = sorted(
        m for m, module in sys.modules.items()
        if module is not None and m.split(".")[0] in blocked
    )
    if loaded:
        sys.exit(f"blocked modules were loaded: {loaded}")


if __name__ == "__main__":
    main()
