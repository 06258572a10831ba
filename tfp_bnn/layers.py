"""Registered Bayesian layers: thin subclasses of TFP's Dense/Conv variational layers.

They keep the Keras constructor (units/filters, activation, use_bias, initializers, padding,
strides, ...) and add only what Bayes needs: ``prior``, ``posterior`` and ``kl_weight``.

    kernel ~ q(kernel) = N(mu, softplus(rho)^2)   (mean field)
    outputs = activation(op(inputs, kernel) + bias)
    add_loss(kl_weight * KL(q || prior))           # kl_weight = 1/N gives -ELBO/N with the NLL

What differs from the TFP parents:
* ``kl_weight`` is a non-trainable variable of the layer (saved with it; callbacks anneal it);
* the KL uses the prior's closed form or its Monte Carlo estimate (`tfp_bnn.priors`);
* ``get_config`` holds plain numbers and strings: no marshalled Python bytecode in saved files;
* inside `tfp_bnn.sampling.mc_sampling` the layer draws S independent weight sets in one
  batched computation (used by `tfp_bnn.predict` and the SavedModel export).

Example:
    >>> layer = DenseFlipout(64, activation="relu", prior="normal", kl_weight=1 / 120)
"""
import math

from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras, tfp

__all__ = [
    "BayesianLayer", "DenseFlipout", "DenseReparameterization", "DenseLocalReparameterization",
    "Conv1DFlipout", "Conv2DFlipout", "Conv3DFlipout", "Conv1DReparameterization",
    "Conv2DReparameterization", "Conv3DReparameterization", "Convolution1DFlipout",
    "Convolution2DFlipout", "Convolution3DFlipout", "Convolution1DReparameterization",
    "Convolution2DReparameterization", "Convolution3DReparameterization", "bayesian_layers",
]

_register = tf_keras.saving.register_keras_serializable(package="tfp_bnn")


def _sample(dist):
    return dist.sample()


def _check_kl_weight(kl_weight):
    try:
        ok = float(kl_weight) > 0 and math.isfinite(float(kl_weight))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"kl_weight must be a positive number. Received: kl_weight={kl_weight!r}")
    return float(kl_weight)


class BayesianLayer:
    """Mixin holding what every tfp_bnn Bayesian layer shares: prior, posterior, KL weight."""

    def _bayes_init(self, prior, posterior, kl_weight, use_bias, kernel_initializer,
                    bias_initializer):
        self.prior = priors_lib.get(prior)
        self.posterior = posteriors_lib.get(posterior)
        self.base_kl_weight = _check_kl_weight(kl_weight)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf_keras.initializers.get(bias_initializer)

    def _tfp_fns(self, use_bias, posterior):
        """Keyword arguments for the TFP parent: bound methods, never lambdas."""
        bayesian_bias = posteriors_lib.get(posterior).bayesian_bias
        return dict(
            kernel_posterior_fn=self._kernel_posterior_fn,
            kernel_posterior_tensor_fn=_sample,
            kernel_prior_fn=self._kernel_prior_fn,
            kernel_divergence_fn=_sample,  # only a marker: _apply_divergence below does the work
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
        self.kl_weight = self.add_weight(
            name="kl_weight", shape=(), dtype=tf.float32, trainable=False,
            initializer=tf_keras.initializers.Constant(self.base_kl_weight))
        self.built = True

    # --- the loss -------------------------------------------------------------------------
    def kl_divergence(self):
        """KL(q || p) summed over this layer's Bayesian weights (unweighted; MC for some priors)."""
        total = self.prior.kl(self.kernel_posterior, self.kernel_prior,
                              getattr(self, "kernel_posterior_tensor", None))
        if self.bias_prior is not None:
            total += self.prior.kl(self.bias_posterior, self.bias_prior,
                                   getattr(self, "bias_posterior_tensor", None))
        return total

    def _apply_divergence(self, divergence_fn, posterior, prior, posterior_tensor, name):
        if posterior is None or prior is None:
            return
        kl = self.prior.kl(posterior, prior, posterior_tensor)
        self.add_loss(tf.identity(tf.cast(self.kl_weight, kl.dtype) * kl, name=name))

    # --- forward ----------------------------------------------------------------------------
    def call(self, inputs):
        ctx = sampling.current()
        if ctx is None:
            return super().call(inputs)
        inputs = tf.convert_to_tensor(inputs, dtype=self.dtype)
        if ctx.mode == "mean":
            outputs = self._op(inputs, self.kernel_posterior.distribution.loc)
            if self.bias_posterior is not None:
                outputs = self._add_bias(outputs, self._bias_loc())
        else:
            outputs = self._mc_forward(inputs, ctx)
        return self.activation(outputs) if self.activation is not None else outputs

    def _kernel_loc_scale(self):
        dist = self.kernel_posterior.distribution
        return tf.convert_to_tensor(dist.loc), tf.convert_to_tensor(dist.scale)

    def _bias_loc(self):
        return tf.convert_to_tensor(self.bias_posterior.distribution.loc)

    def _bias_draws(self, ctx, num_samples, dtype):
        """[S, units] bias draws (or the point estimate broadcast), or None without bias."""
        if self.bias_posterior is None:
            return None
        loc = self._bias_loc()
        if not self.posterior.bayesian_bias:
            return loc[tf.newaxis]
        scale = tf.convert_to_tensor(self.bias_posterior.distribution.scale)
        eps = ctx.normal(tf.concat([[num_samples], tf.shape(loc)], 0), dtype)
        return loc + scale * eps

    def _config_base(self):
        config = tf_keras.layers.Layer.get_config(self)
        config.update({
            "activation": tf_keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": tf_keras.initializers.serialize(self.bias_initializer),
            "activity_regularizer": tf_keras.regularizers.serialize(self.activity_regularizer)
            if self.activity_regularizer is not None else None,
            "prior": priors_lib.serialize(self.prior),
            "posterior": self.posterior.get_config(),
            "kl_weight": self.base_kl_weight,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("activity_regularizer") is not None:
            config["activity_regularizer"] = tf_keras.regularizers.deserialize(
                config["activity_regularizer"])
        return cls(**config)


# ---------------------------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------------------------
class _DenseMixin(BayesianLayer):
    """Dense-specific constructor, config and vectorised sampling."""

    _tfp_kwargs = ()

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", activity_regularizer=None, prior="normal",
                 posterior=None, kl_weight=1.0, **kwargs):
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"units must be a positive integer. Received: units={units!r}")
        extra = {k: kwargs.pop(k) for k in self._tfp_kwargs if k in kwargs}
        super().__init__(units=units, activation=activation,
                         activity_regularizer=activity_regularizer,
                         **self._tfp_fns(use_bias, posterior), **extra, **kwargs)
        self._bayes_init(prior, posterior, kl_weight, use_bias, kernel_initializer,
                         bias_initializer)

    def _op(self, x, kernel):
        return tf.matmul(x, kernel)

    def _add_bias(self, outputs, bias):
        return outputs + bias

    def _mc_forward(self, x, ctx):
        s = ctx.num_samples
        loc, scale = self._kernel_loc_scale()
        in_dim = loc.shape[0]
        shape = tf.shape(x)
        x3 = tf.reshape(x, [s, -1, in_dim])  # [S, M, in]; M = B (or B*T for sequences)
        rows = tf.shape(x3)[1]

        def weight_space():
            kernel = loc + scale * ctx.normal(tf.concat([[s], tf.shape(loc)], 0), x.dtype)
            return tf.einsum("smi,sio->smo", x3, kernel)

        def output_space():
            # Local reparameterisation: exact per-example samples of x.W, drawing S*M*out normals.
            mean = tf.einsum("smi,io->smo", x3, loc)
            std = tf.sqrt(tf.einsum("smi,io->smo", tf.square(x3), tf.square(scale)))
            return mean + std * ctx.normal(tf.shape(mean), x.dtype)

        if x.shape.rank == 2:
            # Draw whichever needs fewer normals: S*M*out (output space) or S*in*out (weights).
            out = tf.cond(rows < in_dim, output_space, weight_space)
        else:
            # Positions of one example share a kernel: only weight-space draws keep them coupled.
            out = weight_space()
        bias = self._bias_draws(ctx, s, x.dtype)
        if bias is not None:
            out = out + bias[:, tf.newaxis, :]
        return tf.reshape(out, tf.concat([shape[:-1], [self.units]], 0))

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

    _tfp_kwargs = ("seed",)


@_register
class DenseLocalReparameterization(_DenseMixin, tfp.layers.DenseLocalReparameterization):
    """Dense layer with a mean-field posterior, trained by local reparameterisation.

    Samples pre-activations N(x.mu, x^2.sigma^2) per example (Kingma et al. 2015).
    """


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------
class _ConvMixin(BayesianLayer):
    """Conv-specific constructor, config and vectorised sampling (S convolutions via map_fn)."""

    _rank = None
    _tfp_kwargs = ()

    def __init__(self, filters, kernel_size, strides=1, padding="valid",
                 data_format="channels_last", dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 activity_regularizer=None, prior="normal", posterior=None, kl_weight=1.0,
                 **kwargs):
        if not isinstance(filters, int) or isinstance(filters, bool) or filters <= 0:
            raise ValueError(f"filters must be a positive integer. Received: filters={filters!r}")
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
        if self.data_format == "channels_first":
            return outputs + tf.reshape(bias, [-1] + [1] * self.rank)
        return outputs + bias

    def _mc_forward(self, x, ctx):
        s = ctx.num_samples
        loc, scale = self._kernel_loc_scale()
        shape = tf.shape(x)
        xs = tf.reshape(x, tf.concat([[s, shape[0] // s], shape[1:]], 0))
        kernels = loc + scale * ctx.normal(tf.concat([[s], tf.shape(loc)], 0), x.dtype)
        # Measured on 2 CPU cores: map_fn runs at the cost of S plain convolutions (the floor);
        # a grouped convolution over S*C channels was 4x slower.
        out = tf.map_fn(lambda a: self._op(a[0], a[1]), (xs, kernels),
                        fn_output_signature=x.dtype)
        bias = self._bias_draws(ctx, s, x.dtype)
        if bias is not None:
            if self.data_format == "channels_first":
                bias = tf.reshape(bias, tf.concat([tf.shape(bias)[:1], [1, -1], [1] * self.rank], 0))
            else:
                bias = tf.reshape(bias, tf.concat([tf.shape(bias)[:1], [1] * (self.rank + 1), [-1]], 0))
            out = out + bias
        out_shape = tf.shape(out)
        return tf.reshape(out, tf.concat([[out_shape[0] * out_shape[1]], out_shape[2:]], 0))

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


def _conv_class(parent, doc):
    name = parent.__name__

    class _Layer(_ConvMixin, parent):
        __doc__ = doc
        _tfp_kwargs = ("seed",) if "Flipout" in name else ()

    _Layer.__name__ = _Layer.__qualname__ = name
    return _register(_Layer)


_FLIPOUT_DOC = "{}D convolution with a mean-field posterior, trained by Flipout (Wen et al. 2018)."
_REPARAM_DOC = ("{}D convolution with a mean-field posterior, trained by the reparameterisation "
                "estimator (one kernel draw per call).")
Conv1DFlipout = _conv_class(tfp.layers.Convolution1DFlipout, _FLIPOUT_DOC.format(1))
Conv2DFlipout = _conv_class(tfp.layers.Convolution2DFlipout, _FLIPOUT_DOC.format(2))
Conv3DFlipout = _conv_class(tfp.layers.Convolution3DFlipout, _FLIPOUT_DOC.format(3))
Conv1DReparameterization = _conv_class(tfp.layers.Convolution1DReparameterization,
                                       _REPARAM_DOC.format(1))
Conv2DReparameterization = _conv_class(tfp.layers.Convolution2DReparameterization,
                                       _REPARAM_DOC.format(2))
Conv3DReparameterization = _conv_class(tfp.layers.Convolution3DReparameterization,
                                       _REPARAM_DOC.format(3))
Convolution1DFlipout, Convolution2DFlipout, Convolution3DFlipout = (
    Conv1DFlipout, Conv2DFlipout, Conv3DFlipout)
Convolution1DReparameterization = Conv1DReparameterization
Convolution2DReparameterization = Conv2DReparameterization
Convolution3DReparameterization = Conv3DReparameterization


def bayesian_layers(model):
    """Every tfp_bnn Bayesian layer in ``model``, nested models included, in order."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, BayesianLayer):
            found.append(layer)
    return found
