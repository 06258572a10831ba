"""The one module that imports Keras: tf_keras (Keras 2, what TFP's layers are built on) and,
lazily, Keras 3 (only to recognise and read Keras 3 input models).

Everything else in tfp_bnn imports `tf_keras` from here, so the package never depends on the
TF_USE_LEGACY_KERAS environment variable.
"""
import sys

# TF_USE_LEGACY_KERAS is left as the user set it. TFP builds its layers on tf_keras whenever
# tf.keras is Keras 3 (the default since TF 2.16, and keras>=3 is a dependency); setting the
# variable here would turn the user's own tf.keras into tf_keras, and break TFP's import when
# tf_keras (hence TensorFlow) was imported before tfp_bnn.

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

from tf_keras.src.engine.functional import Functional  # noqa: E402  (public as tf_keras.Model(inputs, outputs))

tfd = tfp.distributions

__all__ = ["tf", "tf_keras", "tfp", "tfd", "Functional", "is_tf_keras_model", "is_keras3_model", "keras3"]


def keras3():
    """Return the Keras 3 module if it has been imported, else None.

    An object can only be a Keras 3 model once ``keras`` (or ``tf.keras``) was imported, so this
    never imports it: that would cost seconds (it pulls in its own dependencies) for every
    tf_keras-only user.
    """
    keras = sys.modules.get("keras")
    version = getattr(keras, "__version__", "")
    return keras if version.startswith("3") else None


def is_tf_keras_model(obj):
    return isinstance(obj, tf_keras.Model)


def is_keras3_model(obj):
    k3 = keras3()
    return k3 is not None and isinstance(obj, k3.Model)
