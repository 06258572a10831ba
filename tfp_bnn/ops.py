"""Keras 3 operations and activations as TensorFlow, for models rebuilt in tf_keras.

A Keras 3 Functional model records operations on tensors (``x + y``, ``x * 0.5``,
``keras.ops.mean(x, axis=1)``, ``x[:, 0]``) as graph nodes that are not layers. `tfp_bnn.replay`
rebuilds each one as an `Operation` layer: a registered tf_keras layer whose config is the
operation's name, its constructor attributes and its constant call arguments (tensors marked by
position) -- plain JSON, no closures, so the rebuilt model saves, loads and exports like any
tf_keras model. `TABLE` is the one translation: Keras 3 operation -> TensorFlow function with the
Keras signature

    TABLE["numpy.Mean"](x, axis=1, keepdims=False) == tf.reduce_mean(x, 1, False)

keyed by the operation's module and class (``keras.src.ops.numpy.Mean`` -> "numpy.Mean").

`activation` translates Keras 3 activation names: those tf_keras lacks (``hard_silu``,
``leaky_relu``, ...) and those it spells with another meaning (Keras 3 ``hard_sigmoid`` is
relu6(x + 3) / 6, tf_keras's is clip(0.2 x + 0.5, 0, 1)) become functions registered here.

Example:
    >>> import keras
    >>> x = keras.Input((3,))
    >>> k3 = keras.Model(x, keras.ops.mean(x * 0.5, axis=1))
    >>> tf_model = tfp_bnn.replay.replay(k3)   # two Operation layers: multiply, mean
    >>> float(tf_model(np.ones((1, 3), "float32"))[0])
    0.5
"""
import json

import numpy as np

from tfp_bnn._keras import tf, tf_keras

__all__ = ["TABLE", "Operation", "operation_key", "activation", "ACTIVATIONS"]

_PACKAGE = "tfp_bnn"


# ---------------------------------------------------------------------------------------------
# Activations Keras 3 has and tf_keras lacks (or defines differently)
# ---------------------------------------------------------------------------------------------
def _registered(fn):
    return tf_keras.saving.register_keras_serializable(package=_PACKAGE)(fn)


@_registered
def hard_sigmoid(x):
    """Keras 3's hard sigmoid: relu6(x + 3) / 6."""
    return tf.nn.relu6(x + 3.0) / 6.0


@_registered
def hard_silu(x):
    """x * relu6(x + 3) / 6 (Keras 3 ``hard_silu`` and ``hard_swish``)."""
    return x * hard_sigmoid(x)


@_registered
def leaky_relu(x, negative_slope=0.2):
    return tf.nn.leaky_relu(x, alpha=negative_slope)


@_registered
def relu6(x):
    return tf.nn.relu6(x)


@_registered
def log_softmax(x, axis=-1):
    return tf.nn.log_softmax(x, axis=axis)


@_registered
def log_sigmoid(x):
    return tf.math.log_sigmoid(x)


@_registered
def celu(x, alpha=1.0):
    return tf.maximum(x, 0.0) + alpha * tf.math.expm1(tf.minimum(x, 0.0) / alpha)


@_registered
def glu(x, axis=-1):
    a, b = tf.split(x, 2, axis=axis)
    return a * tf.sigmoid(b)


@_registered
def hard_tanh(x):
    return tf.clip_by_value(x, -1.0, 1.0)


@_registered
def hard_shrink(x, threshold=0.5):
    return tf.where(tf.abs(x) > threshold, x, tf.zeros_like(x))


@_registered
def soft_shrink(x, threshold=0.5):
    return tf.sign(x) * tf.maximum(tf.abs(x) - threshold, 0.0)


@_registered
def tanh_shrink(x):
    return x - tf.tanh(x)


@_registered
def squareplus(x, b=4.0):
    return (x + tf.sqrt(tf.square(x) + b)) / 2.0


@_registered
def sparse_plus(x):
    return tf.where(x <= -1.0, tf.zeros_like(x),
                    tf.where(x >= 1.0, x, tf.square(x + 1.0) / 4.0))


# Keras 3 name -> the function a tf_keras layer config names instead; names tf_keras has with
# the same meaning (relu, gelu, silu/swish, elu, selu, softmax, mish, ...) are not listed.
ACTIVATIONS = {
    "hard_sigmoid": hard_sigmoid, "hard_silu": hard_silu, "hard_swish": hard_silu,
    "leaky_relu": leaky_relu, "relu6": relu6, "log_softmax": log_softmax,
    "log_sigmoid": log_sigmoid, "celu": celu, "glu": glu, "hard_tanh": hard_tanh,
    "hard_shrink": hard_shrink, "soft_shrink": soft_shrink, "tanh_shrink": tanh_shrink,
    "squareplus": squareplus, "sparse_plus": sparse_plus, "silu": tf.nn.silu,
}


def activation(value, keras3=False):
    """What a tf_keras config names for activation ``value`` (a name, config or function).

    Args:
        value: the ``activation`` entry of a layer config (None means linear).
        keras3: whether ``value`` comes from a Keras 3 config, whose names are read in Keras 3's
            meaning.
    """
    if keras3 and isinstance(value, str) and value in ACTIVATIONS:
        fn = ACTIVATIONS[value]
        return "silu" if fn is tf.nn.silu else tf_keras.saving.get_registered_name(fn)
    try:
        return tf_keras.activations.serialize(tf_keras.activations.get(value))
    except ValueError as err:
        raise ValueError(f"Unknown activation {value!r}: neither tf_keras nor tfp_bnn.ops."
                         "ACTIVATIONS translates it.") from err


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def _like(x1, x2):
    """Both operands as tensors of one dtype (a Python/NumPy constant takes the tensor's)."""
    t1, t2 = tf.is_tensor(x1), tf.is_tensor(x2)
    if t1 and not t2:
        return x1, tf.convert_to_tensor(x2, dtype=x1.dtype)
    if t2 and not t1:
        return tf.convert_to_tensor(x1, dtype=x2.dtype), x2
    if t1 and t2 and x1.dtype != x2.dtype:
        # Keras 3 promotes int/bool to float and narrow floats to wide ones.
        wide = max((x1.dtype, x2.dtype), key=lambda d: (d.is_floating, d.size))
        return tf.cast(x1, wide), tf.cast(x2, wide)
    return x1, x2


def _binary(fn):
    return lambda x1, x2: fn(*_like(x1, x2))


def _reduce(fn):
    return lambda x, axis=None, keepdims=False, **_: fn(x, axis=axis, keepdims=keepdims)


def _unary(fn):
    return lambda x: fn(x)


def _moveaxis(x, source, destination):
    rank = x.shape.rank
    src = [s % rank for s in np.atleast_1d(source)]
    dst = [d % rank for d in np.atleast_1d(destination)]
    order = [i for i in range(rank) if i not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return tf.transpose(x, order)


def _swapaxes(x, axis1, axis2):
    order = list(range(x.shape.rank))
    order[axis1], order[axis2] = order[axis2], order[axis1]
    return tf.transpose(x, order)


def _where(condition, x1=None, x2=None):
    if x1 is None and x2 is None:
        return tf.where(condition)
    x1, x2 = _like(x1, x2)
    return tf.where(tf.cast(condition, tf.bool), x1, x2)


def _squeeze(x, axis=None):
    return tf.squeeze(x, axis=axis)


def _tril(x, k=0):
    # band_part(x, lower, upper) keeps i - j <= lower and j - i <= upper (-1: all).
    band = tf.linalg.band_part
    return band(x, -1, k) if k >= 0 else x - band(x, -k - 1, -1)


def _triu(x, k=0):
    band = tf.linalg.band_part
    return x - band(x, -1, k - 1) if k > 0 else band(x, -k, -1)


def _pad(x, constant_values=None, pad_width=None, mode="constant"):
    return tf.pad(x, pad_width, mode=mode.upper(), constant_values=constant_values or 0)


TABLE = {
    # arithmetic and comparison operators (x + y, x * 0.5, x > 0, -x, ...)
    "numpy.Add": _binary(tf.add), "numpy.Subtract": _binary(tf.subtract),
    "numpy.Multiply": _binary(tf.multiply), "numpy.Divide": _binary(tf.divide),
    "numpy.TrueDivide": _binary(tf.divide), "numpy.FloorDivide": _binary(tf.math.floordiv),
    "numpy.Mod": _binary(tf.math.floormod), "numpy.Power": _binary(tf.pow),
    "numpy.Maximum": _binary(tf.maximum), "numpy.Minimum": _binary(tf.minimum),
    "numpy.Matmul": _binary(tf.linalg.matmul),
    "numpy.Dot": _binary(lambda a, b: tf.tensordot(a, b, 1)),
    "numpy.Logaddexp": _binary(lambda a, b: tf.reduce_logsumexp(tf.stack([a, b]), axis=0)),
    "numpy.Equal": _binary(tf.equal), "numpy.NotEqual": _binary(tf.not_equal),
    "numpy.Greater": _binary(tf.greater), "numpy.GreaterEqual": _binary(tf.greater_equal),
    "numpy.Less": _binary(tf.less), "numpy.LessEqual": _binary(tf.less_equal),
    "numpy.LogicalAnd": _binary(tf.logical_and), "numpy.LogicalOr": _binary(tf.logical_or),
    "numpy.LogicalXor": _binary(tf.math.logical_xor), "numpy.LogicalNot": _unary(tf.logical_not),
    "numpy.Negative": _unary(tf.negative), "numpy.Absolute": _unary(tf.abs),
    "numpy.Abs": _unary(tf.abs), "numpy.Where": _where,
    # elementwise math
    "numpy.Square": _unary(tf.square), "numpy.Sqrt": _unary(tf.sqrt),
    "numpy.Exp": _unary(tf.exp), "numpy.Expm1": _unary(tf.math.expm1),
    "numpy.Log": _unary(tf.math.log), "numpy.Log1p": _unary(tf.math.log1p),
    "numpy.Reciprocal": _unary(tf.math.reciprocal), "numpy.Sign": _unary(tf.sign),
    "numpy.Floor": _unary(tf.floor), "numpy.Ceil": _unary(tf.math.ceil),
    "numpy.Round": lambda x, decimals=0: (tf.round(x * 10.0 ** decimals) / 10.0 ** decimals
                                          if decimals else tf.round(x)),
    "numpy.Sin": _unary(tf.sin), "numpy.Cos": _unary(tf.cos), "numpy.Tan": _unary(tf.tan),
    "numpy.Tanh": _unary(tf.tanh), "numpy.Isnan": _unary(tf.math.is_nan),
    "numpy.Isfinite": _unary(tf.math.is_finite),
    "numpy.Clip": lambda x, x_min, x_max: tf.clip_by_value(x, x_min, x_max),
    "math.Rsqrt": _unary(tf.math.rsqrt), "math.Erf": _unary(tf.math.erf),
    # reductions
    "numpy.Mean": _reduce(tf.reduce_mean), "numpy.Sum": _reduce(tf.reduce_sum),
    "numpy.Max": _reduce(tf.reduce_max), "numpy.Min": _reduce(tf.reduce_min),
    "numpy.Prod": _reduce(tf.reduce_prod), "numpy.Std": _reduce(tf.math.reduce_std),
    "numpy.Var": _reduce(tf.math.reduce_variance), "numpy.Any": _reduce(tf.reduce_any),
    "numpy.All": _reduce(tf.reduce_all), "math.Logsumexp": _reduce(tf.reduce_logsumexp),
    "numpy.Argmax": lambda x, axis=None, keepdims=False: (
        tf.argmax(tf.reshape(x, [-1]) if axis is None else x, axis=axis or 0)),
    "numpy.Cumsum": lambda x, axis=None, dtype=None: tf.cumsum(
        tf.reshape(x, [-1]) if axis is None else x, axis=axis or 0),
    "nn.Moments": lambda x, axes, keepdims=False, synchronized=False: tf.nn.moments(
        x, axes, keepdims=keepdims),
    # shape, indexing and concatenation
    "numpy.Reshape": lambda x, newshape: tf.reshape(x, newshape),
    "numpy.Transpose": lambda x, axes=None: tf.transpose(x, axes),
    "numpy.ExpandDims": lambda x, axis: tf.expand_dims(x, axis),
    "numpy.Squeeze": _squeeze, "numpy.Ravel": lambda x: tf.reshape(x, [-1]),
    "numpy.Concatenate": lambda xs, axis=0: tf.concat(list(xs), axis=axis),
    "numpy.Stack": lambda x, axis=0: tf.stack(list(x), axis=axis),
    "numpy.Tile": lambda x, repeats: tf.tile(x, repeats),
    "numpy.Repeat": lambda x, repeats, axis=None: tf.repeat(x, repeats, axis=axis),
    "numpy.Flip": lambda x, axis=None: tf.reverse(x, list(np.atleast_1d(
        range(x.shape.rank) if axis is None else axis))),
    "numpy.Roll": lambda x, shift, axis=None: tf.roll(x, shift, axis),
    "numpy.Swapaxes": _swapaxes, "numpy.Moveaxis": _moveaxis,
    "numpy.BroadcastTo": lambda x, shape: tf.broadcast_to(x, shape),
    "numpy.Pad": _pad,
    "numpy.GetItem": lambda x, key: x[key],
    "numpy.Take": lambda x, indices, axis=None: tf.gather(
        tf.reshape(x, [-1]) if axis is None else x, indices, axis=axis or 0),
    "numpy.Einsum": lambda *operands, subscripts: tf.einsum(subscripts, *operands),
    "numpy.Tensordot": lambda x1, x2, axes=2: tf.tensordot(x1, x2, axes),
    "numpy.OnesLike": lambda x, dtype=None: tf.ones_like(x, dtype=dtype),
    "numpy.ZerosLike": lambda x, dtype=None: tf.zeros_like(x, dtype=dtype),
    "numpy.Tril": _tril, "numpy.Triu": _triu,
    "core.Cast": lambda x, dtype: tf.cast(x, dtype),
    "core.ConvertToTensor": lambda x, dtype=None, sparse=None, ragged=None: (
        tf.cast(x, dtype) if dtype else tf.identity(x)),
    "core.StopGradient": _unary(tf.stop_gradient),
    "nn.OneHot": lambda x, num_classes, axis=-1, dtype=None, sparse=False: tf.one_hot(
        tf.cast(x, tf.int32), num_classes, axis=axis, dtype=dtype or tf.float32),
    # activations (keras.ops.relu(x), ...) and normalisation
    "nn.Relu": _unary(tf.nn.relu), "nn.Relu6": _unary(tf.nn.relu6),
    "nn.Sigmoid": _unary(tf.sigmoid), "nn.Softplus": _unary(tf.nn.softplus),
    "nn.Softsign": _unary(tf.nn.softsign), "nn.Silu": _unary(tf.nn.silu),
    "nn.Elu": lambda x, alpha=1.0: tf.where(x > 0, x, alpha * tf.math.expm1(x)),
    "nn.Selu": _unary(tf.nn.selu),
    "nn.Gelu": lambda x, approximate=True: tf.nn.gelu(x, approximate=approximate),
    "nn.LeakyRelu": lambda x, negative_slope=0.2: leaky_relu(x, negative_slope),
    "nn.HardSigmoid": _unary(hard_sigmoid), "nn.HardSilu": _unary(hard_silu),
    "nn.Softmax": lambda x, axis=-1: tf.nn.softmax(x, axis=axis),
    "nn.LogSoftmax": lambda x, axis=-1: tf.nn.log_softmax(x, axis=axis),
    "nn.LogSigmoid": _unary(log_sigmoid), "nn.Celu": celu, "nn.Glu": glu,
    "nn.HardTanh": _unary(hard_tanh), "nn.HardShrink": hard_shrink,
    "nn.SoftShrink": soft_shrink, "nn.TanhShrink": _unary(tanh_shrink),
    "nn.Squareplus": squareplus, "nn.SparsePlus": _unary(sparse_plus),
    "nn.Normalize": lambda x, axis=-1, order=2, epsilon=None: x / tf.maximum(
        tf.norm(x, ord=order, axis=axis, keepdims=True), epsilon or 1e-12),
}


def operation_key(operation):
    """The `TABLE` key of a Keras 3 operation: "numpy.Add" for keras.src.ops.numpy.Add."""
    return f"{type(operation).__module__.rsplit('.', 1)[-1]}.{type(operation).__name__}"


# ---------------------------------------------------------------------------------------------
# Constant arguments as JSON (tensors marked by their position in the layer's inputs)
# ---------------------------------------------------------------------------------------------
def _encode(obj, tensors):
    if tf.is_tensor(obj) or hasattr(obj, "_keras_history"):
        tensors.append(obj)
        return {"__": "tensor", "v": len(tensors) - 1}
    if isinstance(obj, slice):
        return {"__": "slice", "v": [_encode(v, tensors) for v in (obj.start, obj.stop,
                                                                   obj.step)]}
    if obj is Ellipsis:
        return {"__": "ellipsis"}
    if isinstance(obj, (np.ndarray, np.generic)):
        return {"__": "array", "v": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, tuple):
        return {"__": "tuple", "v": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        return {"__": "dict", "v": {k: _encode(v, tensors) for k, v in obj.items()}}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"cannot hold the constant argument {obj!r} (type {type(obj).__name__}) "
                     "in a layer config")


def _decode(obj, tensors):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tag, value = obj["__"], obj.get("v")
    if tag == "tensor":
        return tensors[value]
    if tag == "slice":
        return slice(*[_decode(v, tensors) for v in value])
    if tag == "ellipsis":
        return Ellipsis
    if tag == "array":
        return np.asarray(value, dtype=obj["dtype"])
    if tag == "tuple":
        return tuple(_decode(v, tensors) for v in value)
    return {k: _decode(v, tensors) for k, v in value.items()}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class Operation(tf_keras.layers.Layer):
    """One Keras 3 operation as a tf_keras layer: ``TABLE[op](*args, **attributes)``.

    Args:
        op: the `TABLE` key ("numpy.Add", "nn.Gelu", ...).
        arguments: the JSON form of the call's ``[args, kwargs]``, each tensor replaced by its
            position in the layer's input list.
        attributes: the operation's constructor arguments (``axis``, ``keepdims``, ...).
    """

    def __init__(self, op, arguments, attributes=None, **kwargs):
        # Inputs keep their dtype (int indices, bool masks, float64 models): no autocast.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if op not in TABLE:
            raise ValueError(f"op={op!r} is not in tfp_bnn.ops.TABLE")
        self.op = op
        # JSON text, not lists and dicts: a layer would wrap those for tracking, and the
        # wrappers are not JSON.
        self._arguments = json.dumps(arguments)
        self._attributes = json.dumps(attributes or {})
        self.supports_masking = True

    @classmethod
    def of(cls, op, args, kwargs, attributes, name):
        """The layer for a call ``op(*args, **kwargs)`` and its tensor inputs (in order)."""
        tensors = []
        arguments = _encode([list(args), dict(kwargs)], tensors)
        return cls(op, arguments, _encode(dict(attributes), []), name=name), tensors

    def call(self, inputs):
        return self._run(inputs)

    # The translations branch on Python values only (dtypes, static shapes, attributes):
    # AutoGraph would convert every TABLE entry at each symbolic call for nothing.
    @tf.autograph.experimental.do_not_convert
    def _run(self, inputs):
        # A functional model hands a layer called on a one-tensor list that tensor alone.
        tensors = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        args, kwargs = _decode(json.loads(self._arguments), tensors)
        return TABLE[self.op](*args, **kwargs, **_decode(json.loads(self._attributes), []))

    def compute_mask(self, inputs, mask=None):
        # A Keras 3 operation propagates no mask; neither does its rebuild.
        return None

    def get_config(self):
        config = super().get_config()
        config.pop("autocast", None)
        config.update(op=self.op, arguments=json.loads(self._arguments),
                      attributes=json.loads(self._attributes))
        return config
