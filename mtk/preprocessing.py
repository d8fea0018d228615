"""Input preprocessing layers that live inside the model.

Keeping preprocessing in the graph means a saved or served model takes raw
inputs: images as pixel values 0-255, text as strings.
"""

import importlib

import keras


@keras.saving.register_keras_serializable(package="mtk")
class ApplicationPreprocessing(keras.layers.Layer):
    """Applies a keras.applications module's own ``preprocess_input``.

    Args:
        module: the keras.applications module, e.g. ``"resnet50"`` or
            ``"mobilenet_v2"``.

    Example:

    >>> layer = mtk.preprocessing.ApplicationPreprocessing("mobilenet_v2")
    >>> float(layer(keras.ops.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0])
    1.0
    """

    def __init__(self, module, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._preprocess_input = importlib.import_module(
            f"keras.applications.{module}"
        ).preprocess_input

    def call(self, images):
        # preprocess_input works on floats; served models may get uint8.
        return self._preprocess_input(keras.ops.cast(images, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"module": self.module})
        return config


@keras.saving.register_keras_serializable(package="mtk")
class TextPreprocessing(keras.layers.Layer):
    """Runs a keras-hub text preprocessor (tokenizer + packer) in the graph.

    keras-hub's preprocessors cannot infer their symbolic outputs, so a plain
    functional model holding one trains but fails to load from ``.keras``.
    This wrapper declares the output spec (token ids, padding mask, segment
    ids of ``sequence_length``), which makes save and load round-trip.

    Args:
        preprocessor: a `keras_hub.models.TextClassifierPreprocessor` (or its
            serialized config).

    Example:

    >>> import keras_hub  # model_dir: a local BERT preset or checkpoint dir
    >>> preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
    ...     model_dir, sequence_length=8)
    >>> layer = mtk.preprocessing.TextPreprocessing(preprocessor)
    >>> layer(tf.constant(["hello world"]))["token_ids"].shape
    TensorShape([1, 8])
    """

    def __init__(self, preprocessor, **kwargs):
        super().__init__(**kwargs)
        if isinstance(preprocessor, dict):
            preprocessor = keras.saving.deserialize_keras_object(preprocessor)
        self.preprocessor = preprocessor

    def build(self, input_shape=None):
        # The tokenizer holds no weights; its vocabulary comes with it.
        self.built = True

    def call(self, text):
        return self.preprocessor(text)

    def compute_output_spec(self, text):
        shape = tuple(text.shape) + (self.preprocessor.sequence_length,)
        return {
            "token_ids": keras.KerasTensor(shape, dtype="int32"),
            "padding_mask": keras.KerasTensor(shape, dtype="bool"),
            "segment_ids": keras.KerasTensor(shape, dtype="int32"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "preprocessor": keras.saving.serialize_keras_object(
                    self.preprocessor
                )
            }
        )
        return config
