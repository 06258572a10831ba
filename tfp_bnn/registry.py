"""Custom layers the graph replay rebuilds: layer class -> builder of an equivalent tf_keras layer.

`tfp_bnn.replay` rebuilds built-in Keras layers from their configs. A custom layer class (a
user's own Keras 3 layer, or one Keras ships inside an application module) needs a builder:

    builder(source_layer) -> a new, unbuilt tf_keras layer computing the same function

The replay calls the builder once per source layer, calls the new layer where the source was
called, and copies the source's weights into it in order (their shapes must match). Keras's
application layers are registered here: InceptionResNetV2's ``CustomScaleLayer``, ConvNeXt's
``LayerScale`` and ``StochasticDepth`` (Keras 3 and tf_keras classes alike), rebuilt as the
registered `CustomScale`, `LayerScale`, `StochasticDepth` below so the rebuilt model also
loads from ``.keras`` without custom objects.

Example:
    >>> import keras
    >>> class Scale(keras.layers.Layer):                  # a user's Keras 3 layer
    ...     def __init__(self, factor, **kw): super().__init__(**kw); self.factor = factor
    ...     def call(self, x): return x * self.factor
    >>> tfp_bnn.register_layer(Scale, lambda layer: tf_keras.layers.Rescaling(
    ...     layer.factor, name=layer.name))
    >>> x = keras.Input((4,))
    >>> model_with_scale = keras.Model(x, keras.layers.Dense(2)(Scale(0.5)(x)))
    >>> bnn = tfp_bnn.bayesify(model_with_scale, num_train_examples=1000)
    >>> [type(l).__name__ for l in bnn.layers[1:]]
    ['Rescaling', 'DenseFlipout']
"""
import inspect

from tfp_bnn._keras import tf, tf_keras

__all__ = ["register_layer", "builder_for", "CustomScale", "LayerScale", "StochasticDepth"]

_PACKAGE = "tfp_bnn"
# "module.QualName" of the source class -> builder; keyed by name so that registering Keras 3's
# own classes does not import Keras 3.
_BUILDERS = {}


def _key(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def register_layer(layer_class, builder):
    """Teach `bayesify` (and every replay) to rebuild ``layer_class`` as a tf_keras layer.

    Args:
        layer_class: the custom Keras 3 or tf_keras layer class (matched exactly, not its
            subclasses: a subclass may compute something else).
        builder: ``builder(source_layer) -> tf_keras layer``, a new unbuilt layer computing the
            same function with the same weights in the same order (the replay copies them).

    Example:
        >>> import keras
        >>> class MyScale(keras.layers.Layer):
        ...     def __init__(self, factor, **kw): super().__init__(**kw); self.factor = factor
        ...     def call(self, x): return x * self.factor
        >>> tfp_bnn.register_layer(MyScale, lambda l: tf_keras.layers.Rescaling(l.factor,
        ...                                                                    name=l.name))
    """
    if not inspect.isclass(layer_class):
        raise ValueError("layer_class must be a layer class. "
                         f"Received: layer_class={layer_class!r}")
    if not callable(builder):
        raise ValueError("builder must be callable(source_layer) -> tf_keras layer. "
                         f"Received: builder={builder!r}")
    _BUILDERS[_key(layer_class)] = builder


def builder_for(layer):
    """The registered builder for ``layer``'s exact class, or None."""
    return _BUILDERS.get(_key(type(layer)))


# ---------------------------------------------------------------------------------------------
# The layers Keras ships with its applications, as registered tf_keras layers
# ---------------------------------------------------------------------------------------------
@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class CustomScale(tf_keras.layers.Layer):
    """``inputs[0] + scale * inputs[1]`` (InceptionResNetV2's residual scaling)."""

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        return inputs[0] + inputs[1] * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class LayerScale(tf_keras.layers.Layer):
    """``x * gamma`` with a learned per-channel gamma (ConvNeXt; Touvron et al. 2021)."""

    def __init__(self, init_values, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.init_values, self.projection_dim = float(init_values), int(projection_dim)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma", shape=(self.projection_dim,),
            initializer=tf_keras.initializers.Constant(self.init_values), trainable=True)
        super().build(input_shape)

    def call(self, x):
        return x * tf.cast(self.gamma, x.dtype)

    def get_config(self):
        return {**super().get_config(), "init_values": self.init_values,
                "projection_dim": self.projection_dim}


@tf_keras.saving.register_keras_serializable(package=_PACKAGE)
class StochasticDepth(tf_keras.layers.Layer):
    """Drop the whole residual branch of an example with probability ``drop_path_rate``.

        training:  x * floor(keep + u) / keep,  u ~ U(0, 1) per example,  keep = 1 - rate
        inference: x

    References:
        Huang et al. 2016, Deep Networks with Stochastic Depth.
    """

    def __init__(self, drop_path_rate, **kwargs):
        super().__init__(**kwargs)
        self.drop_path_rate = float(drop_path_rate)

    def call(self, x, training=None):
        if not training or self.drop_path_rate == 0.0:
            return x
        keep = 1.0 - self.drop_path_rate
        shape = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
        mask = tf.floor(keep + tf.random.uniform(shape, dtype=x.dtype))
        return x / keep * mask

    def get_config(self):
        return {**super().get_config(), "drop_path_rate": self.drop_path_rate}


def _common(layer):
    return dict(name=layer.name, trainable=layer.trainable)


for _module in ("keras.src.applications", "tf_keras.src.applications"):
    _BUILDERS[f"{_module}.inception_resnet_v2.CustomScaleLayer"] = (
        lambda layer: CustomScale(layer.scale, **_common(layer)))
    _BUILDERS[f"{_module}.convnext.LayerScale"] = (
        lambda layer: LayerScale(layer.init_values, layer.projection_dim, **_common(layer)))
    _BUILDERS[f"{_module}.convnext.StochasticDepth"] = (
        lambda layer: StochasticDepth(layer.drop_path_rate, **_common(layer)))
