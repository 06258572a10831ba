"""Gaussian output heads: a network that predicts a mean and a standard deviation per output.

Both heads output ``[B, 2*units] = concat(mean, std)`` and are registered as output layers of
the "gaussian" task (`tfp_bnn.tasks.register_output_layer`), so `tfp_bnn.predict` and
`tfp_bnn.export_savedmodel` split their samples into the aleatoric and epistemic parts (Kendall
& Gal 2017):

    GaussianHead          (heteroscedastic)  input [B, 2u] = (loc, raw)
                          mean = loc,  std = softplus(raw) + min_scale          (per example)
    HomoscedasticGaussian                    input [B, u] = loc
                          mean = loc,  std = softplus(rho) + min_scale          (one per output)

    aleatoric_variance = (1/S) sum_s std_s^2,   epistemic_variance = Var_s[mean_s]

Train either with `tfp_bnn.losses.GaussianNLL`. The heads are ordinary tf_keras layers, so
`tfp_bnn.bayesify` copies them unchanged (with HomoscedasticGaussian's learned scale) and makes
the Dense layer in front of them Bayesian.

Example:
    >>> model = tf_keras.Sequential([tf_keras.Input((13,)),
    ...                              tf_keras.layers.Dense(50, activation="relu"),
    ...                              tf_keras.layers.Dense(2),      # loc, raw scale
    ...                              tfp_bnn.heads.GaussianHead()])
    >>> bnn = tfp_bnn.bayesify(model, num_train_examples=100)
    >>> bnn.compile("adam", tfp_bnn.losses.GaussianNLL())
    >>> pred = tfp_bnn.predict(bnn, np.zeros((5, 13), np.float32), num_samples=10, seed=0)
    >>> pred.task, pred.mean.shape, bool((pred.aleatoric_variance > 0).all())
    ('gaussian', (5, 1), True)

References:
    Nix & Weigend, "Estimating the mean and variance of the target probability distribution",
    ICNN 1994. Kendall & Gal, "What Uncertainties Do We Need in Bayesian Deep Learning for
    Computer Vision?", NeurIPS 2017.
"""
import math

from tfp_bnn import tasks
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.options import Task
from tfp_bnn.posteriors import inverse_softplus

__all__ = ["GaussianHead", "HomoscedasticGaussian"]

_register = tf_keras.saving.register_keras_serializable(package="tfp_bnn")


def _check_units(units):
    if isinstance(units, bool) or not isinstance(units, int) or units <= 0:
        raise ValueError(f"units must be a positive integer. Received: units={units!r}")
    return units


def _check_scale(name, value, allow_zero):
    try:
        v = float(value)
        ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, bool):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} number. Received: {name}={value!r}")
    return v


@_register
class GaussianHead(tf_keras.layers.Layer):
    """Heteroscedastic Gaussian head: ``concat(loc, softplus(raw) + min_scale)``.

    Put it after a ``Dense(2 * units)``: the first ``units`` inputs are the mean, the last
    ``units`` the raw (pre-softplus) scale.

    Args:
        units: number of regression outputs (the input has ``2 * units`` features).
        min_scale: floor added to the standard deviation (>= 0), which keeps the NLL finite.
    """

    def __init__(self, units=1, min_scale=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.units = _check_units(units)
        self.min_scale = _check_scale("min_scale", min_scale, allow_zero=True)

    def build(self, input_shape):
        last = tf.TensorShape(input_shape)[-1]
        if last is not None and last != 2 * self.units:
            raise ValueError(f"GaussianHead(units={self.units}) needs {2 * self.units} input "
                             f"features (loc and raw scale per output); received input_shape="
                             f"{tuple(tf.TensorShape(input_shape).as_list())}. Put a "
                             f"Dense({2 * self.units}) in front of it.")
        super().build(input_shape)

    def call(self, inputs):
        loc, raw = tf.split(inputs, 2, axis=-1)
        scale = tf.nn.softplus(raw) + tf.cast(self.min_scale, inputs.dtype)
        return tf.concat([loc, scale], axis=-1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "min_scale": self.min_scale})
        return config


@_register
class HomoscedasticGaussian(tf_keras.layers.Layer):
    """Homoscedastic Gaussian head: the input is the mean, one learned std per output.

    The std is ``softplus(rho) + min_scale`` with one trainable ``rho`` per output (weight
    ``untransformed_scale``), the same for every example.

    Args:
        units: number of regression outputs (the input has ``units`` features).
        init_scale: the std at initialisation (> 0).
        min_scale: floor added to the std (>= 0).
    """

    def __init__(self, units=1, init_scale=1.0, min_scale=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.units = _check_units(units)
        self.init_scale = _check_scale("init_scale", init_scale, allow_zero=False)
        self.min_scale = _check_scale("min_scale", min_scale, allow_zero=True)

    def build(self, input_shape):
        last = tf.TensorShape(input_shape)[-1]
        if last is not None and last != self.units:
            raise ValueError(f"HomoscedasticGaussian(units={self.units}) needs {self.units} "
                             f"input features (the means); received input_shape="
                             f"{tuple(tf.TensorShape(input_shape).as_list())}.")
        rho = float(inverse_softplus(max(self.init_scale - self.min_scale, 1e-12)))
        self.untransformed_scale = self.add_weight(
            name="untransformed_scale", shape=(self.units,), trainable=True,
            initializer=tf_keras.initializers.Constant(rho))
        super().build(input_shape)

    @property
    def scale(self):
        """The current standard deviation per output, ``[units]``."""
        return tf.nn.softplus(self.untransformed_scale) + self.min_scale

    def call(self, inputs):
        scale = tf.cast(self.scale, inputs.dtype)
        return tf.concat([inputs, tf.ones_like(inputs) * scale], axis=-1)

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape)
        return shape[:-1].concatenate([2 * self.units])

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "init_scale": self.init_scale,
                       "min_scale": self.min_scale})
        return config


for _head in (GaussianHead, HomoscedasticGaussian):
    tasks.register_output_layer(_head, lambda layer: Task.GAUSSIAN)
