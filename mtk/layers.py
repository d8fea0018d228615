"""Keras layers mtk adds to what `keras.layers` has.

- `GradientReversal`: the identity forward, the gradient times ``-lambda``
  backward (Ganin et al. JMLR 2016), the layer behind `mtk.adaptation.DANN`'s
  domain classifier.
"""

import keras
from keras import ops

from mtk.weighting.base import check_positive


@keras.saving.register_keras_serializable(package="mtk")
class GradientReversal(keras.layers.Layer):
    """Identity forward; multiplies the gradient by ``-lambda_`` backward.

    Put between shared features and a domain classifier, it makes the
    features *maximise* the classifier's loss while the classifier minimises
    it (the gradient reversal layer of Ganin et al., JMLR 2016). Built on
    `keras.ops.custom_gradient`.

    ``lambda_`` is a non-trainable variable (saved with the model), so it can
    change during training without retracing: `set_lambda` (or
    ``layer.lambda_.assign``); `mtk.adaptation.DANN` sets it each step from
    its schedule.

    Args:
        lambda_: the initial factor, a number >= 0.
        **kwargs: `keras.layers.Layer` arguments.

    Example:

    >>> layer = mtk.layers.GradientReversal(lambda_=0.5)
    >>> x = tf.constant([1.0, -2.0])
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(x)
    ...     y = layer(x)
    ...     loss = tf.reduce_sum(3.0 * y)
    >>> y.numpy().tolist(), tape.gradient(loss, x).numpy().tolist()
    ([1.0, -2.0], [-1.5, -1.5])
    """

    def __init__(self, lambda_=1.0, **kwargs):
        super().__init__(**kwargs)
        check_positive("GradientReversal", "lambda_", lambda_, allow_zero=True)
        self.initial_lambda = float(lambda_)
        self.lambda_ = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_lambda),
            trainable=False,
            # Every replica assigns the same value.
            aggregation="only_first_replica",
            name="lambda",
        )
        self.supports_masking = True

    def set_lambda(self, value):
        """Sets the factor for the next steps (a number >= 0)."""
        check_positive("GradientReversal", "lambda_", value, allow_zero=True)
        self.lambda_.assign(float(value))

    def call(self, inputs):
        # A tensor, not the variable, inside the custom gradient: the
        # backward pass reads this step's value.
        factor = ops.cast(ops.convert_to_tensor(self.lambda_), inputs.dtype)

        @ops.custom_gradient
        def reverse(x):
            def grad(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return ops.negative(factor) * upstream

            return ops.copy(x), grad

        return reverse(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["lambda_"] = self.initial_lambda
        return config
