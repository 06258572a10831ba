"""Registered Bayesian layers: thin subclasses of TFP's Dense/Conv variational layers.

They keep the Keras constructor (units/filters, activation, use_bias, initializers, padding,
strides, ...) and add only what Bayes needs: ``prior``, ``posterior`` and ``kl_weight``.

    kernel ~ q(kernel) = N(mu, softplus(rho)^2)   (mean field)
    outputs = activation(op(inputs, kernel) + bias)
    add_loss(kl_weight * KL(q || prior))           # kl_weight = 1/N gives -ELBO/N with the NLL

What differs from the TFP parents comes from the one Bayesian base, `tfp_bnn.bayesian`:
* ``kl_weight`` is a non-trainable variable of the layer (saved with it; callbacks anneal it);
* the KL uses the prior's closed form or its Monte Carlo estimate (`tfp_bnn.priors`), once per
  forward pass of the outermost model even for a layer shared by two branches;
* ``get_config`` holds plain numbers and strings: no marshalled Python bytecode in saved files;
* ``init_from_weights``: posterior means from a trained Keras layer (MOPED scales);
* the training call (`_TFPLayer.plain_call`) is written from mu and softplus(rho), not
  through TFP's distribution objects: one softplus per weight tensor, shared with the KL, and
  one sign draw per Flipout layer (BENCHMARKS.md, "Training step");
* inside `tfp_bnn.sampling.mc_sampling` the layer draws S independent weight sets in one
  batched computation (used by `tfp_bnn.predict` and the SavedModel export): a Dense layer
  through `tfp_bnn.matmuls.gaussian_matmul`, a convolution as one grouped convolution over
  the S draws (`tfp_bnn.stacking`).

Example:
    >>> layer = DenseFlipout(64, activation="relu", prior="normal", kl_weight=1 / 120)
    >>> layer(tf.ones((2, 4))).shape
    TensorShape([2, 64])
"""
from tfp_bnn import bayesian, matmuls, options
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import sampling, stacking
from tfp_bnn._keras import tf, tf_keras, tfp
from tfp_bnn.bayesian import BayesianLayer, bayesian_layers
from tfp_bnn.rnn import (
    GRUFlipout, GRUReparameterization, LSTMFlipout, LSTMReparameterization, SimpleRNNFlipout,
    SimpleRNNReparameterization)

__all__ = [
    "BayesianLayer", "DenseFlipout", "DenseReparameterization", "DenseLocalReparameterization",
    "Conv1DFlipout", "Conv2DFlipout", "Conv3DFlipout", "Conv1DReparameterization",
    "Conv2DReparameterization", "Conv3DReparameterization", "Convolution1DFlipout",
    "Convolution2DFlipout", "Convolution3DFlipout", "Convolution1DReparameterization",
    "Convolution2DReparameterization", "Convolution3DReparameterization", "bayesian_layers",
    # The recurrent layers live in tfp_bnn/rnn.py; re-exported so one module lists them all.
    "LSTMFlipout", "LSTMReparameterization", "GRUFlipout", "GRUReparameterization",
    "SimpleRNNFlipout", "SimpleRNNReparameterization",
]

_register = bayesian.register


def _sample(dist):
    return dist.sample()


class _TFPLayer(BayesianLayer):
    """What Dense and Conv share: the TFP parent builds the variables, `plain_call` the rest."""

    _estimator = options.Estimator.REPARAMETERIZATION
    seed = None  # the Flipout kinds take it as a constructor argument (TFP's)

    def _tfp_fns(self, use_bias, posterior):
        """Keyword arguments for the TFP parent: bound methods, never lambdas."""
        bayesian_bias = posteriors_lib.get(posterior).bayesian_bias
        return dict(
            kernel_posterior_fn=self._kernel_posterior_fn,
            kernel_posterior_tensor_fn=_sample,
            kernel_prior_fn=self._kernel_prior_fn,
            kernel_divergence_fn=_sample,  # only a marker: TFP's call never runs (plain_call)
            bias_posterior_fn=self._bias_posterior_fn if use_bias else None,
            bias_posterior_tensor_fn=_sample,
            bias_prior_fn=self._bias_prior_fn if (use_bias and bayesian_bias) else None,
            bias_divergence_fn=_sample,
        )

    # --- builders called by the TFP parent's build() -------------------------------------
    def _kernel_posterior_fn(self, dtype, shape, name, trainable, add_variable_fn):
        # self.add_weight, not TFP's deprecated add_variable.
        return posteriors_lib.normal_posterior(dtype, shape, name, trainable, self.add_weight,
                                               self.kernel_initializer, self.posterior.init_scale)

    def _kernel_prior_fn(self, dtype, shape, name, trainable, add_variable_fn):
        return self.prior(dtype, shape, name, trainable, self.add_weight)

    def _bias_posterior_fn(self, dtype, shape, name, trainable, add_variable_fn):
        if self.posterior.bayesian_bias:
            return posteriors_lib.normal_posterior(dtype, shape, name, trainable, self.add_weight,
                                                   self.bias_initializer, self.posterior.init_scale)
        return posteriors_lib.deterministic_posterior(dtype, shape, name, trainable,
                                                      self.add_weight, self.bias_initializer)

    def _bias_prior_fn(self, dtype, shape, name, trainable, add_variable_fn):
        return self.prior(dtype, shape, name, trainable, self.add_weight)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_kl_weight()
        self.built = True

    def weight_posteriors(self):
        parts = [("kernel", self.kernel_posterior, self.kernel_prior)]
        if self.bias_posterior is not None:
            parts.append(("bias", self.bias_posterior, self.bias_prior))
        return parts

    # --- the three calls of the sampling protocol ---------------------------------------------
    def plain_call(self, inputs, **kwargs):
        """One draw per call (the training path), written from the posterior variables.

            reparameterisation:  y = op(x, mu + sigma * eps)                       eps ~ N(0, I)
            Flipout:             y = op(x, mu) + op(x * s_in, sigma * eps) * s_out
            local reparam.:      y = x mu + sqrt(x^2 sigma^2) * z                    z ~ N(0, I)
            then  y = activation(y + b),  add_loss(kl_weight * KL(q || p))  once per pass

        sigma = softplus(rho) is computed once per call, and Flipout's input and output signs
        (per example; per example and channel for a convolution) come from one random draw
        (`bayesian.rademacher`). TFP's own call builds Normal and Independent objects,
        draws each sign vector through its own seed ops and reads the DeferredTensor scale at
        every use. The op seeds derive from the layer's ``seed`` (Flipout kinds), as TFP's do.
        """
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        loc, scale = self._loc("kernel"), self._scale("kernel")
        kernel_sample = None
        if self._estimator is options.Estimator.LOCAL_REPARAMETERIZATION:
            mean = self._op(x, loc)
            std = tf.sqrt(self._op(tf.square(x), tf.square(scale)))
            outputs = mean + std * tf.random.normal(tf.shape(mean), dtype=x.dtype,
                                                    seed=self._op_seed(0))
        else:
            delta = scale * bayesian.normal(loc.shape.as_list(), x.dtype, self._op_seed(0))
            kernel_sample = loc + delta  # what a Monte Carlo KL reads; pruned where unused
            if self._estimator is options.Estimator.FLIPOUT:
                s_in, s_out = self._flipout_signs(x, loc)
                outputs = self._op(x, loc) + self._op(x * s_in, delta) * s_out
            else:
                outputs = self._op(x, kernel_sample)
        bias = bias_scale = None
        if self.bias_posterior is not None:
            bias = self._loc("bias")
            if self._has_bias_noise():
                bias_scale = self._scale("bias")
                bias = bias + bias_scale * bayesian.normal(bias.shape.as_list(), x.dtype,
                                                           self._op_seed(2))
            outputs = self._add_bias(outputs, bias)
        self._add_kl("divergence_kernel", self.kernel_posterior, self.kernel_prior,
                     kernel_sample, scale)
        self._add_kl("divergence_bias", self.bias_posterior, self.bias_prior, bias, bias_scale)
        return self._activate(outputs)

    def _op_seed(self, salt):
        # One op seed per draw: two ops with the same op seed would draw the same numbers.
        return None if self.seed is None else self.seed + salt

    def mean_call(self, inputs, **kwargs):
        inputs = tf.convert_to_tensor(inputs, dtype=self.dtype)
        outputs = self._op(inputs, self._loc("kernel"))
        if self.bias_posterior is not None:
            outputs = self._add_bias(outputs, self._loc("bias"))
        return self._activate(outputs)

    def sample_call(self, inputs, ctx, **kwargs):
        return self._mc_forward(tf.convert_to_tensor(inputs, dtype=self.dtype), ctx)

    def _activate(self, outputs):
        return self.activation(outputs) if self.activation is not None else outputs


# ---------------------------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------------------------
class _DenseMixin(_TFPLayer):
    """Dense-specific constructor, config and vectorised sampling."""

    _tfp_kwargs = ()

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", activity_regularizer=None, prior="normal",
                 posterior=None, kl_weight=1.0, **kwargs):
        units = options.integer("units", units, minimum=1)
        extra = {k: kwargs.pop(k) for k in self._tfp_kwargs if k in kwargs}
        super().__init__(units=units, activation=activation,
                         activity_regularizer=activity_regularizer,
                         **self._tfp_fns(use_bias, posterior), **extra, **kwargs)
        self._bayes_init(prior, posterior, kl_weight, use_bias, kernel_initializer,
                         bias_initializer)

    def _op(self, x, kernel):
        return tf.matmul(x, kernel)

    def _flipout_signs(self, x, kernel):
        # Per row, as TFP's DenseFlipout: every position of a [B, T, in] input gets its own.
        c_in, c_out = kernel.shape.as_list()
        signs = bayesian.rademacher(tf.concat([tf.shape(x)[:-1], [c_in + c_out]], 0), x.dtype,
                                    self._op_seed(1))
        return tf.split(signs, [c_in, c_out], axis=-1)

    def _add_bias(self, outputs, bias):
        # BiasAdd, not AddV2: Grappler fuses MatMul + BiasAdd (+ Relu) into one kernel.
        return tf.nn.bias_add(outputs, bias)

    def _mc_forward(self, x, ctx):
        """S samples of ``x W + b`` for sample-major rows ``x``: [S*B, in] or [S*B, ..., in].

        `matmuls.gaussian_matmul` takes weight space (S kernel draws, one batched matmul) or
        output space (local reparameterisation), whichever is cheaper for B rows per sample.
        """
        bias = None
        if self.bias_posterior is not None:
            bias = self._gaussian("bias", ctx) if self._has_bias_noise() else self._loc("bias")
        return self._activate(matmuls.gaussian_matmul(x, ctx, self._gaussian("kernel", ctx),
                                                       bias))

    def mc_rows_threshold(self):
        """B from which weight space is cheaper (`matmuls.output_space_threshold`)."""
        return matmuls.output_space_threshold(self.kernel_posterior.distribution.loc.shape[0],
                                               self.units)

    def get_config(self):
        config = self._config_base()
        config["units"] = self.units
        for k in self._tfp_kwargs:
            config[k] = getattr(self, k)
        return config


@_register
class DenseReparameterization(_DenseMixin, tfp.layers.DenseReparameterization):
    """Dense layer with a mean-field posterior, trained by the reparameterisation estimator.

    One kernel draw per call is shared by the whole batch (Kingma & Welling 2014).
    """


@_register
class DenseFlipout(_DenseMixin, tfp.layers.DenseFlipout):
    """Dense layer with a mean-field posterior, trained by the Flipout estimator.

    Flipout gives each example pseudo-independent weight perturbations (Wen et al. 2018).
    """

    _estimator = options.Estimator.FLIPOUT
    _tfp_kwargs = ("seed",)


@_register
class DenseLocalReparameterization(_DenseMixin, tfp.layers.DenseLocalReparameterization):
    """Dense layer with a mean-field posterior, trained by local reparameterisation.

    Samples pre-activations N(x.mu, x^2.sigma^2) per example (Kingma et al. 2015).
    """

    _estimator = options.Estimator.LOCAL_REPARAMETERIZATION


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------
class _ConvMixin(_TFPLayer):
    """Conv-specific constructor, config and vectorised sampling (`tfp_bnn.stacking`)."""

    _rank = None
    _tfp_kwargs = ()

    @property
    def mc_single_trace(self):
        """One trace of the model when the draws always loop (`sampling.sample_outputs`)."""
        return self.mc_rows_threshold() is None

    def mc_rows_threshold(self):
        return stacking.rows_threshold(self._fold_axes(), self.data_format == "channels_last")

    def _fold_axes(self):
        # CPU convolutions group in 1D and 2D only (`tfp_bnn.stacking`).
        return {"kernel": -1} if self.rank < 3 else None

    def __init__(self, filters, kernel_size, strides=1, padding="valid",
                 data_format="channels_last", dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 activity_regularizer=None, prior="normal", posterior=None, kl_weight=1.0,
                 **kwargs):
        filters = options.integer("filters", filters, minimum=1)
        extra = {k: kwargs.pop(k) for k in self._tfp_kwargs if k in kwargs}
        super().__init__(filters=filters, kernel_size=kernel_size, strides=strides,
                         padding=padding, data_format=data_format, dilation_rate=dilation_rate,
                         activation=activation, activity_regularizer=activity_regularizer,
                         **self._tfp_fns(use_bias, posterior), **extra, **kwargs)
        self._bayes_init(prior, posterior, kl_weight, use_bias, kernel_initializer,
                         bias_initializer)

    def _op(self, x, kernel):
        return tf.nn.convolution(
            x, kernel, strides=self.strides, padding=self.padding.upper(),
            dilations=self.dilation_rate,
            data_format=("NC" if self.data_format == "channels_first" else "N")
            + {1: "W", 2: "HW", 3: "DHW"}[self.rank]
            + ("" if self.data_format == "channels_first" else "C"))

    def _add_bias(self, outputs, bias):
        return tf.nn.bias_add(outputs, bias, data_format=(
            "NC..." if self.data_format == "channels_first" else "N...C"))

    def _flipout_signs(self, x, kernel):
        # Per example and channel, shared by every position (one kernel per example).
        c_in, c_out = kernel.shape.as_list()[-2:]
        signs = bayesian.rademacher(tf.stack([tf.shape(x)[0], c_in + c_out]), x.dtype,
                                    self._op_seed(1))
        ones = [1] * self.rank
        return [tf.reshape(s, [-1, c] + ones if self.data_format == "channels_first"
                           else [-1] + ones + [c])
                for s, c in zip(tf.split(signs, [c_in, c_out], axis=-1), (c_in, c_out))]

    def _mc_forward(self, x, ctx):
        """S convolutions of sample-major ``x`` [S*B, ...], one independent kernel draw each,
        as one grouped convolution or a map_fn (`tfp_bnn.stacking`); with `Noise.SHARED`, one
        perturbation flipped per row (`tfp_bnn.stacking.shared_stages`)."""
        s = ctx.num_samples
        loc = self._loc("kernel")
        if ctx.noise is options.Noise.SHARED and sampling.shared_pays(x, ctx):
            delta = self._scale("kernel", ctx) * ctx.normal(tf.shape(loc), x.dtype)
            axis = 1 if self.data_format == "channels_first" else -1
            out = stacking.shared_stages(x, ctx, [("kernel", self._op)], {"kernel": loc},
                                         {"kernel": delta},
                                         lambda t, side: stacking.channel_sign_shape(t, axis))
            return self._activate(self._bias_per_copy(out, ctx, axis))
        kernels = self._draws("kernel", ctx, x.dtype)
        bias = self._sample_bias(ctx, x.dtype)  # [S, filters] when Bayesian

        def finish(out, b):
            return self._activate(out if b is None else self._add_bias(out, b))

        out = stacking.sample_stages(sampling.split_copies(x, s), [("kernel", self._op)],
                                     {"kernel": kernels}, bias, finish, self._fold_axes(),
                                     self.data_format == "channels_last", ctx.rows)
        return sampling.merge_copies(out)

    def get_config(self):
        config = self._config_base()
        config.update({
            "filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
            "padding": self.padding, "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
        })
        for k in self._tfp_kwargs:
            config[k] = getattr(self, k)
        return config


def _conv_class(parent, doc, estimator):
    name = parent.__name__

    class _Layer(_ConvMixin, parent):
        __doc__ = doc
        _estimator = estimator
        _tfp_kwargs = ("seed",) if estimator is options.Estimator.FLIPOUT else ()

    _Layer.__name__ = _Layer.__qualname__ = name
    return _register(_Layer)


_FLIPOUT_DOC = "{}D convolution with a mean-field posterior, trained by Flipout (Wen et al. 2018)."
_REPARAM_DOC = ("{}D convolution with a mean-field posterior, trained by the reparameterisation "
                "estimator (one kernel draw per call).")
_FLIP, _REPARAM = options.Estimator.FLIPOUT, options.Estimator.REPARAMETERIZATION
Conv1DFlipout = _conv_class(tfp.layers.Convolution1DFlipout, _FLIPOUT_DOC.format(1), _FLIP)
Conv2DFlipout = _conv_class(tfp.layers.Convolution2DFlipout, _FLIPOUT_DOC.format(2), _FLIP)
Conv3DFlipout = _conv_class(tfp.layers.Convolution3DFlipout, _FLIPOUT_DOC.format(3), _FLIP)
Conv1DReparameterization = _conv_class(tfp.layers.Convolution1DReparameterization,
                                       _REPARAM_DOC.format(1), _REPARAM)
Conv2DReparameterization = _conv_class(tfp.layers.Convolution2DReparameterization,
                                       _REPARAM_DOC.format(2), _REPARAM)
Conv3DReparameterization = _conv_class(tfp.layers.Convolution3DReparameterization,
                                       _REPARAM_DOC.format(3), _REPARAM)
Convolution1DFlipout, Convolution2DFlipout, Convolution3DFlipout = (
    Conv1DFlipout, Conv2DFlipout, Conv3DFlipout)
Convolution1DReparameterization = Conv1DReparameterization
Convolution2DReparameterization = Conv2DReparameterization
Convolution3DReparameterization = Conv3DReparameterization

# The kinds TFP lacks live in tfp_bnn/conv_kinds.py and tfp_bnn/attention.py (on
# tfp_bnn.kernel_layer.KernelLayer); re-exported so that one module lists every Bayesian layer.
from tfp_bnn import attention as _attention  # noqa: E402
from tfp_bnn import conv_kinds as _conv_kinds  # noqa: E402
from tfp_bnn.attention import *  # noqa: E402,F401,F403
from tfp_bnn.conv_kinds import *  # noqa: E402,F401,F403

__all__ += _conv_kinds.__all__ + _attention.__all__
