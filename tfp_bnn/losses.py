"""Likelihood losses for Gaussian heads, and multi-task weighting by learned task uncertainty.

`GaussianNLL`, per example (summed over the ``D`` outputs), for ``y_pred = [mean, std]``:

    nll = sum_d (y_d - mu_d)^2 / (2 sigma_d^2) + log sigma_d + 0.5 log(2 pi)

The constant ``0.5 log(2 pi)`` per output IS included by default (``include_constant=True``),
so the loss is exactly ``-log N(y | mu, sigma^2)`` and a test NLL reads as a negative
log-likelihood in nats. Reduced over the batch by Keras (a mean by default).

`MultiTaskUncertaintyWeighting` (Kendall, Gal & Cipolla 2018) combines T task losses with one
learned log-variance ``s_t = log sigma_t^2`` per task:

    regression      0.5 exp(-s_t) L_t + 0.5 s_t     (= L_t / (2 sigma_t^2) + log sigma_t)
    classification      exp(-s_t) L_t + 0.5 s_t     (= L_t / sigma_t^2     + log sigma_t)
    simple              exp(-s_t) L_t +     s_t     (the common simplified form)

    total = sum_t term_t

For a regression task ``L_t`` is the squared error ``||y - f(x)||^2`` (mean over the batch);
for fixed ``L_t`` the optimum is ``s_t = log L_t`` (regression and simple) or
``log(2 L_t)`` (classification).

Example:
    >>> y_pred = tf.constant([[0.0, 1.0]])                 # mean 0, std 1
    >>> float(tfp_bnn.losses.GaussianNLL()([[0.0]], y_pred))  # 0.5 log(2 pi)
    0.9189...
    >>> weighting = tfp_bnn.losses.MultiTaskUncertaintyWeighting(
    ...     task_types=["regression", "classification"])
    >>> float(weighting([2.0, 1.0]))    # s = 0: 0.5 * 2 + 1 (inside a GradientTape in training)
    2.0

References:
    Nix & Weigend 1994; Kendall & Gal, NeurIPS 2017. Kendall, Gal & Cipolla, "Multi-Task
    Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.
"""
import math

from tfp_bnn import options
from tfp_bnn._keras import tf, tf_keras

__all__ = ["GaussianNLL", "gaussian_nll", "MultiTaskUncertaintyWeighting", "TASK_TYPES"]

_register = tf_keras.saving.register_keras_serializable(package="tfp_bnn")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

# task type -> (factor on exp(-s) L, factor on s)
TASK_TYPES = {"regression": (0.5, 0.5), "classification": (1.0, 0.5), "simple": (1.0, 1.0)}


def gaussian_nll(y_true, y_pred, include_constant=True):
    """Per-example Gaussian NLL ``[...]`` for ``y_pred = concat(mean, std)`` (summed over D)."""
    y_pred = tf.convert_to_tensor(y_pred)
    last = y_pred.shape[-1]
    if last is not None and last % 2:
        raise ValueError("y_pred must hold [mean, std] concatenated on the last axis (an even "
                         f"number of columns, from a tfp_bnn.heads layer). Received: "
                         f"y_pred.shape={tuple(y_pred.shape.as_list())}")
    mean, std = tf.split(y_pred, 2, axis=-1)
    y_true = tf.cast(y_true, y_pred.dtype)
    if y_true.shape.rank is not None and y_true.shape.rank == mean.shape.rank - 1:
        y_true = y_true[..., tf.newaxis]  # y of shape [B] for one output
    z = (y_true - mean) / std
    nll = 0.5 * tf.square(z) + tf.math.log(std)
    if include_constant:
        nll = nll + tf.constant(_HALF_LOG_2PI, nll.dtype)
    return tf.reduce_sum(nll, axis=-1)


@_register
class GaussianNLL(tf_keras.losses.Loss):
    """Negative log-likelihood of ``y`` under ``N(mean, std^2)`` from a Gaussian head.

    Args:
        include_constant: add ``0.5 log(2 pi)`` per output (default True: the exact NLL).
        reduction, name: as for any tf_keras Loss.
    """

    def __init__(self, include_constant=True, reduction=tf_keras.losses.Reduction.AUTO,
                 name="gaussian_nll"):
        super().__init__(reduction=reduction, name=name)
        self.include_constant = bool(include_constant)

    def call(self, y_true, y_pred):
        return gaussian_nll(y_true, y_pred, self.include_constant)

    def get_config(self):
        config = super().get_config()
        config["include_constant"] = self.include_constant
        return config


@_register
class MultiTaskUncertaintyWeighting(tf_keras.layers.Layer):
    """Weigh T task losses by learned homoscedastic task uncertainty; returns their sum.

    Call it on a list of T scalar losses (or a ``[T]`` tensor); it returns the combined scalar
    (see the module doc for the formula per task type). The log-variances ``s_t`` are the
    layer's trainable weight ``log_variances`` ``[T]``; train them with the network.

    Args:
        num_tasks: T (optional when ``task_types`` is a list).
        task_types: one of `TASK_TYPES` for all tasks, or a list with one per task.
        init_log_variance: starting ``s_t`` (0: every task weighted as in the plain sum's form).
    """

    def __init__(self, num_tasks=None, task_types="regression", init_log_variance=0.0,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(task_types, str):
            if num_tasks is None:
                raise ValueError("Pass num_tasks=T, or task_types as a list with one type per "
                                 f"task. Received: num_tasks=None, task_types={task_types!r}")
            task_types = [task_types] * options.integer("num_tasks", num_tasks, minimum=1)
        task_types = list(task_types)
        for t in task_types:
            if t not in TASK_TYPES:
                raise ValueError(f"Unknown task type {t!r} in task_types={task_types!r}. "
                                 f"Valid: {sorted(TASK_TYPES)}")
        if not task_types:
            raise ValueError("task_types must name at least one task. Received: task_types=[]")
        if num_tasks is not None and (options.integer("num_tasks", num_tasks, minimum=1)
                                      != len(task_types)):
            raise ValueError(f"num_tasks={num_tasks!r} but task_types has {len(task_types)} "
                             f"entries: {task_types!r}")
        init = options.number("init_log_variance", init_log_variance)
        self.task_types = task_types
        self.num_tasks = len(task_types)
        self.init_log_variance = init
        factors = [TASK_TYPES[t] for t in task_types]
        self._loss_factor = [f[0] for f in factors]
        self._s_factor = [f[1] for f in factors]

    def build(self, input_shape=None):
        self.log_variances = self.add_weight(
            name="log_variances", shape=(self.num_tasks,), trainable=True,
            initializer=tf_keras.initializers.Constant(self.init_log_variance))
        super().build(input_shape)

    def call(self, losses):
        if isinstance(losses, (list, tuple)):
            if len(losses) != self.num_tasks:
                raise ValueError(f"Expected {self.num_tasks} task losses, received "
                                 f"{len(losses)}.")
            losses = tf.stack([tf.reshape(tf.convert_to_tensor(l), []) for l in losses])
        losses = tf.cast(losses, self.log_variances.dtype)
        s = self.log_variances
        terms = (tf.constant(self._loss_factor, s.dtype) * tf.exp(-s) * losses
                 + tf.constant(self._s_factor, s.dtype) * s)
        return tf.reduce_sum(terms)

    @property
    def task_weights(self):
        """The factor in front of each ``L_t`` now: ``c_t exp(-s_t)``, ``[T]``."""
        return tf.constant(self._loss_factor, self.log_variances.dtype) * tf.exp(
            -self.log_variances)

    def get_config(self):
        config = super().get_config()
        config.update({"num_tasks": self.num_tasks, "task_types": list(self.task_types),
                       "init_log_variance": self.init_log_variance})
        return config
