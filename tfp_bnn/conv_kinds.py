"""Bayesian depthwise, separable, grouped and transposed convolutions (TFP has none of them).

Each class subclasses its tf_keras layer (constructor, config, output shape as Keras') and
`tfp_bnn.kernel_layer.KernelLayer` (posteriors, draws, KL), and adds only its op:

    DepthwiseConv1D/2D:  y = act(depthwise(x, D) + b)              D [k..., C, m]
    SeparableConv1D/2D:  y = act(pointwise(depthwise(x, D), P) + b) D [k..., C, m],
                                                                    P [1..., C*m, F], both Bayesian
    GroupedConv1D/2D/3D: y = act(conv(x, K; groups) + b)            K [k..., C/groups, F]
    ConvND Transpose:    y = act(conv_transpose(x, K) + b)          K [k..., F, C]

with every kernel ``~ N(mu, sigma^2)``. Flipout flips the input and output channels of each
stage (a separable convolution's two kernels are two stages, each with its own signs).

Grouped 1D/2D convolutions run natively on CPU with TF 2.21 (``tf.nn.convolution`` with a
kernel of C/groups input channels; Keras' own layer jit-compiles that op, the numbers are the
same); the CPU Conv3D has no groups, so a grouped 3D convolution is one convolution per group,
concatenated over the channels.
A GroupedConv with ``groups=1`` is an ordinary convolution (`tfp_bnn.layers.Conv2DFlipout` is
the TFP-based one).

Example:
    >>> layer = tfp_bnn.layers.DepthwiseConv2DFlipout(3, depth_multiplier=2, padding="same",
    ...                                               kl_weight=1 / 5000)
    >>> layer(tf.ones([1, 4, 4, 2])).shape
    TensorShape([1, 4, 4, 4])
    >>> tfp_bnn.layers.GroupedConv2DReparameterization(16, 3, groups=4, prior="laplace").groups
    4

References:
    Howard et al., "MobileNets", arXiv:1704.04861, 2017 (depthwise separable convolutions).
    Wen et al., "Flipout", ICLR 2018.
"""
from tfp_bnn.bayesian import register
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.kernel_layer import KernelLayer

__all__ = [
    "DepthwiseConv1DFlipout", "DepthwiseConv1DReparameterization", "DepthwiseConv2DFlipout",
    "DepthwiseConv2DReparameterization", "SeparableConv1DFlipout",
    "SeparableConv1DReparameterization", "SeparableConv2DFlipout",
    "SeparableConv2DReparameterization", "GroupedConv1DFlipout", "GroupedConv1DReparameterization",
    "GroupedConv2DFlipout", "GroupedConv2DReparameterization", "GroupedConv3DFlipout",
    "GroupedConv3DReparameterization", "Conv1DTransposeFlipout",
    "Conv1DTransposeReparameterization",
    "Conv2DTransposeFlipout", "Conv2DTransposeReparameterization", "Conv3DTransposeFlipout",
    "Conv3DTransposeReparameterization",
]


def _channels(layer, input_shape):
    axis = layer._channel_axis()
    channels = input_shape[axis]
    if channels is None:
        raise ValueError(f"{type(layer).__name__} needs a known channel dimension. "
                         f"Received: input_shape={input_shape}")
    return int(channels)


def _data_format(layer, ndim):
    spatial = {3: "W", 4: "HW", 5: "DHW"}[ndim]
    return "NC" + spatial if layer._channel_axis() == 1 else "N" + spatial + "C"


def _depthwise(layer, x, kernel, strides, padding, dilations):
    """Keras' depthwise convolution; 1D as 2D over a unit height (as tf_keras does)."""
    if layer.rank == 2:
        return tf_keras.backend.depthwise_conv2d(x, kernel, strides=strides, padding=padding,
                                                 data_format=layer.data_format,
                                                 dilation_rate=dilations)
    first = layer._channel_axis() == 1
    spatial = 2 if first else 1
    if padding == "causal":
        x = tf.pad(x, layer._compute_causal_padding(x))
        padding = "valid"
    out = tf.nn.depthwise_conv2d(
        tf.expand_dims(x, spatial), tf.expand_dims(kernel, 0),
        strides=((1, 1) + strides * 2) if first else ((1,) + strides * 2 + (1,)),
        padding=padding.upper(), dilations=(1,) + dilations, data_format=_data_format(layer, 4))
    return tf.squeeze(out, [spatial])


class _Depthwise(KernelLayer):
    _kernel_specs = (("depthwise_kernel", "depthwise_initializer"),)

    def _kernel_shapes(self, input_shape):
        c = _channels(self, input_shape)
        return {"depthwise_kernel": tuple(self.kernel_size) + (c, self.depth_multiplier)}

    def _bias_shape(self, input_shape):
        return (_channels(self, input_shape) * self.depth_multiplier,)

    def _fold_axes(self):
        return {"depthwise_kernel": -2}

    def _stages(self):
        return [("depthwise_kernel", lambda x, k: _depthwise(
            self, x, k, tuple(self.strides), self.padding, tuple(self.dilation_rate)))]


class _Separable(KernelLayer):
    _kernel_specs = (("depthwise_kernel", "depthwise_initializer"),
                     ("pointwise_kernel", "pointwise_initializer"))

    def _kernel_shapes(self, input_shape):
        c, m = _channels(self, input_shape), self.depth_multiplier
        return {"depthwise_kernel": tuple(self.kernel_size) + (c, m),
                "pointwise_kernel": (1,) * self.rank + (c * m, self.filters)}

    def _bias_shape(self, input_shape):
        return (self.filters,)

    def _fold_axes(self):
        return {"depthwise_kernel": -2, "pointwise_kernel": -1}

    def _stages(self):
        # tf.nn.separable_conv2d is this depthwise op followed by a VALID 1x1 convolution.
        def pointwise(x, kernel):
            return tf.nn.convolution(x, kernel, padding="VALID",
                                     data_format=_data_format(self, self.rank + 2))

        return [("depthwise_kernel", lambda x, k: _depthwise(
                    self, x, k, tuple(self.strides), self.padding, tuple(self.dilation_rate))),
                ("pointwise_kernel", pointwise)]


class _Grouped(KernelLayer):
    def _kernel_shapes(self, input_shape):
        c = _channels(self, input_shape)
        if c % self.groups:
            raise ValueError(f"{type(self).__name__}: the input channels ({c}) must be a "
                             f"multiple of groups. Received: groups={self.groups}")
        return {"kernel": tuple(self.kernel_size) + (c // self.groups, self.filters)}

    def _bias_shape(self, input_shape):
        return (self.filters,)

    def _fold_axes(self):
        # The CPU Conv3D has no groups (see conv below); S*groups groups in 1D and 2D.
        return {"kernel": -1} if self.rank < 3 else None

    def _stages(self):
        def conv(x, kernel):
            if self._is_causal:
                x = tf.pad(x, self._compute_causal_padding(x))
            if self.rank < 3 or self.groups == 1:
                return self.convolution_op(x, kernel)
            # TF 2.21's CPU Conv3D has no groups ("input and filter must have the same depth"):
            # one convolution per group of channels, concatenated; the same sums.
            axis = self._channel_axis()
            return tf.concat([self.convolution_op(part, k) for part, k in zip(
                tf.split(x, self.groups, axis=axis), tf.split(kernel, self.groups, axis=-1))],
                axis=axis)

        return [("kernel", conv)]


class _Transpose(KernelLayer):
    def _kernel_shapes(self, input_shape):
        return {"kernel": tuple(self.kernel_size) + (self.filters,
                                                      _channels(self, input_shape))}

    def _bias_shape(self, input_shape):
        return (self.filters,)

    def _stages(self):
        return [("kernel", self._transpose)]

    def _transpose(self, x, kernel):
        """Keras' transposed convolution: the output length from deconv_output_length."""
        from tf_keras.src.utils import conv_utils

        first = self._channel_axis() == 1
        spatial = list(range(2, 2 + self.rank)) if first else list(range(1, 1 + self.rank))
        shape = tf.shape(x)
        pads = self.output_padding or (None,) * self.rank
        dilations = tuple(getattr(self, "dilation_rate", (1,) * self.rank))
        lengths = [conv_utils.deconv_output_length(
            x.shape[a] if x.shape[a] is not None else shape[a], self.kernel_size[i],
            padding=self.padding, output_padding=pads[i], stride=self.strides[i],
            dilation=dilations[i]) for i, a in enumerate(spatial)]
        dims = [shape[0]] + ([self.filters] + lengths if first else lengths + [self.filters])
        strides = (1, 1) + tuple(self.strides) if first else (1,) + tuple(self.strides) + (1,)
        out = tf.nn.conv_transpose(x, kernel, tf.stack(dims), strides,
                                   padding=self.padding.upper(),
                                   data_format=_data_format(self, self.rank + 2),
                                   dilations=list(dilations) if self.rank < 3 else None)
        return out


_DOC = """{what}, with a mean-field posterior, trained by {estimator}.

The tf_keras ``{parent}`` constructor, plus ``prior``, ``posterior``, ``kl_weight`` and
``seed`` (see `tfp_bnn.kernel_layer.KernelLayer`); ``get_weights()`` order as Keras' (posterior
means first), so `init_from_weights` takes the Keras layer's ``get_weights()``.
"""
_ESTIMATORS = {True: "Flipout (signs per example, Wen et al. 2018)",
               False: "reparameterisation (one kernel draw per call)"}

# {Bayesian class name: the tf_keras class it stands in for}: what bayesify maps.
KERAS_EQUIVALENT = {}


def _pair(mixin, parent, name, what):
    """The Flipout and the Reparameterization class of one kind, registered."""
    made = []
    for flipout, suffix in ((True, "Flipout"), (False, "Reparameterization")):
        cls = type(name + suffix, (mixin, parent), {
            "_flipout": flipout, "__module__": __name__,
            "__doc__": _DOC.format(what=what, estimator=_ESTIMATORS[flipout],
                                   parent=parent.__name__)})
        KERAS_EQUIVALENT[cls.__name__] = parent.__name__
        made.append(register(cls))
    return made


_layers = tf_keras.layers
DepthwiseConv1DFlipout, DepthwiseConv1DReparameterization = _pair(
    _Depthwise, _layers.DepthwiseConv1D, "DepthwiseConv1D", "1D depthwise convolution")
DepthwiseConv2DFlipout, DepthwiseConv2DReparameterization = _pair(
    _Depthwise, _layers.DepthwiseConv2D, "DepthwiseConv2D", "2D depthwise convolution")
SeparableConv1DFlipout, SeparableConv1DReparameterization = _pair(
    _Separable, _layers.SeparableConv1D, "SeparableConv1D",
    "1D separable convolution (depthwise and pointwise kernels both Bayesian)")
SeparableConv2DFlipout, SeparableConv2DReparameterization = _pair(
    _Separable, _layers.SeparableConv2D, "SeparableConv2D",
    "2D separable convolution (depthwise and pointwise kernels both Bayesian)")
GroupedConv1DFlipout, GroupedConv1DReparameterization = _pair(
    _Grouped, _layers.Conv1D, "GroupedConv1D", "1D convolution with ``groups`` channel groups")
GroupedConv2DFlipout, GroupedConv2DReparameterization = _pair(
    _Grouped, _layers.Conv2D, "GroupedConv2D", "2D convolution with ``groups`` channel groups")
GroupedConv3DFlipout, GroupedConv3DReparameterization = _pair(
    _Grouped, _layers.Conv3D, "GroupedConv3D", "3D convolution with ``groups`` channel groups")
Conv1DTransposeFlipout, Conv1DTransposeReparameterization = _pair(
    _Transpose, _layers.Conv1DTranspose, "Conv1DTranspose", "1D transposed convolution")
Conv2DTransposeFlipout, Conv2DTransposeReparameterization = _pair(
    _Transpose, _layers.Conv2DTranspose, "Conv2DTranspose", "2D transposed convolution")
Conv3DTransposeFlipout, Conv3DTransposeReparameterization = _pair(
    _Transpose, _layers.Conv3DTranspose, "Conv3DTranspose", "3D transposed convolution")
del _layers
