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

# CPU cost of one standard-normal draw and of one multiply-add, in elementwise-op units
# (measured with TF 2.21 on 2 cores: ~10 ns per normal, ~1 ns per element, ~0.15 ns per MAC).
_NORMAL_COST, _MAC_COST = 10.0, 0.15


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
        """Add ``kl_weight * KL`` once per forward pass of the outermost model.

        A layer shared by two branches is called twice in one pass, but its posterior is one
        set of weights: the ELBO holds its KL once. Keras clears a layer's call losses at the
        start of every outermost call (per thread, so per replica under tf.distribute); the
        loss added earlier in this pass is still in that list, so a later call adds nothing.
        """
        if posterior is None or prior is None:
            return
        added = getattr(self._thread_local, "tfp_bnn_kl", {})
        if any(loss is added.get(name) for loss in self._eager_losses):
            return
        kl = self.prior.kl(posterior, prior, posterior_tensor)
        loss = tf.identity(tf.cast(self.kl_weight, kl.dtype) * kl, name=name)
        self.add_loss(loss)
        self._thread_local.tfp_bnn_kl = {**added, name: loss}

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
            return self._activate(outputs)
        return self._mc_forward(inputs, ctx)  # activated: a layer may fuse it with its op

    def _activate(self, outputs):
        return self.activation(outputs) if self.activation is not None else outputs

    def _kernel_loc(self):
        return tf.convert_to_tensor(self.kernel_posterior.distribution.loc)

    def _bias_loc(self):
        return tf.convert_to_tensor(self.bias_posterior.distribution.loc)

    def _has_bias_noise(self):
        return self.bias_posterior is not None and self.posterior.bayesian_bias

    def posterior_variances(self):
        """(kernel sigma^2, bias sigma^2 or None): what `sampling.mc_sampling(variances=)` takes."""
        kernel = tf.square(tf.convert_to_tensor(self.kernel_posterior.distribution.scale))
        bias = (tf.square(tf.convert_to_tensor(self.bias_posterior.distribution.scale))
                if self._has_bias_noise() else None)
        return kernel, bias

    # Scale and variance are built where they are used, inside the branch that needs them, so
    # a graph computes only one of softplus(rho), softplus(rho)^2 or sqrt(precomputed sigma^2).
    def _kernel_scale(self, ctx):
        given = ctx.variances.get(id(self))
        if given is not None:
            return tf.sqrt(given[0])
        return tf.convert_to_tensor(self.kernel_posterior.distribution.scale)

    def _kernel_variance(self, ctx):
        given = ctx.variances.get(id(self))
        return given[0] if given is not None else tf.square(self._kernel_scale(ctx))

    def _bias_scale(self, ctx):
        given = ctx.variances.get(id(self))
        if given is not None:
            return tf.sqrt(given[1])
        return tf.convert_to_tensor(self.bias_posterior.distribution.scale)

    def _bias_variance(self, ctx):
        given = ctx.variances.get(id(self))
        return given[1] if given is not None else tf.square(self._bias_scale(ctx))

    def _bias_draws(self, ctx, num_samples, dtype, index=None):
        """[S, units] draws of a Bayesian bias."""
        loc = self._bias_loc()
        eps = ctx.normal(tf.stack([num_samples, loc.shape[0]]), dtype, index)
        return loc + self._bias_scale(ctx) * eps

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
        # BiasAdd, not AddV2: Grappler fuses MatMul + BiasAdd (+ Relu) into one kernel.
        return tf.nn.bias_add(outputs, bias)

    def _mc_forward(self, x, ctx):
        """S samples of ``x W + b`` for sample-major rows ``x``: [S*B, in] or [S*B, ..., in].

        Rank-2 input: either S weight draws [S, in, out] and one batched matmul (S*in*out
        normals), or output space (local reparameterisation, S*B*out normals): per example
        exactly N(x mu + mu_b, x^2 sigma^2 + sigma_b^2), examples independent. The layer takes
        the cheaper one: output space while B < `mc_rows_threshold` (decided at trace time when
        `sampling.sample_outputs` traced a regime of B, else by a tf.cond). Rank > 2: weight
        space, so the positions of one example share the kernel.
        """
        s = ctx.num_samples
        # Fixed draw indices (output space, weight space, bias): a seeded result is the same
        # whichever path a trace takes (a tf.cond, or a static choice when B is known).
        index = ctx.next_index(), ctx.next_index(), ctx.next_index()
        if x.shape.rank != 2:
            return self._activate(self._weight_space(x, ctx, index))
        lo, hi = ctx.rows  # static bounds on B from `sampling.sample_outputs`
        rows, s_static = x.shape[0], s if isinstance(s, int) else tf.get_static_value(s)
        if rows is not None and s_static is not None:  # eager, or a fully static graph
            lo, hi = rows // s_static, rows // s_static + 1
        threshold = self.mc_rows_threshold()
        if hi is not None and hi <= threshold:
            return self._activate(self._output_space(x, ctx, index))
        if lo is not None and lo >= threshold:
            return self._activate(self._weight_space(x, ctx, index))
        return self._activate(tf.cond(tf.shape(x)[0] < s * threshold,
                                      lambda: self._output_space(x, ctx, index),
                                      lambda: self._weight_space(x, ctx, index)))

    def mc_rows_threshold(self):
        """Rows per sample B from which weight space is cheaper than output space (rank 2).

        Per sample, output space costs B*out normals, B*in squares and 2*B*in*out multiply-adds;
        weight space in*out normals, 2*in*out elementwise ops to build the kernel and B*in*out
        multiply-adds. They cost the same at

            B* = in*out*(c_normal + 2) / (c_normal*out + in + c_mac*in*out)

        (B* is about ``in`` for narrow layers, far below it for wide ones such as a Dense on a
        flattened image, where the squares and the second matmul dominate).
        """
        i, o = self._kernel_loc().shape[0], self.units
        cost_per_row = _NORMAL_COST * o + i + _MAC_COST * i * o
        return max(1, math.ceil(i * o * (_NORMAL_COST + 2) / cost_per_row))

    def _output_space(self, x, ctx, index):
        mean = tf.matmul(x, self._kernel_loc())
        if self.bias_posterior is not None:
            mean = tf.nn.bias_add(mean, self._bias_loc())
        var = tf.matmul(tf.square(x), self._kernel_variance(ctx))
        if self._has_bias_noise():
            var = tf.nn.bias_add(var, self._bias_variance(ctx))
        return mean + tf.sqrt(var) * ctx.normal(tf.shape(mean), x.dtype, index[0])

    def _weight_space(self, x, ctx, index):
        s = ctx.num_samples
        loc = self._kernel_loc()
        in_dim = loc.shape[0]
        kernel = loc + self._kernel_scale(ctx) * ctx.normal(
            tf.stack([s, in_dim, self.units]), x.dtype, index[1])
        out = tf.matmul(tf.reshape(x, tf.stack([s, -1, in_dim])), kernel)  # [S, M, units]
        if self._has_bias_noise():
            out = out + self._bias_draws(ctx, s, x.dtype, index[2])[:, tf.newaxis, :]
        # Back to sample-major rows: [S*B, units], or [S*B, ..., units] for higher rank.
        lead = ([-1] if x.shape.rank == 2 else
                [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])])
        out = tf.reshape(out, tf.stack(lead + [self.units]) if len(lead) > 1 else [-1, self.units])
        if self.bias_posterior is not None and not self._has_bias_noise():
            out = tf.nn.bias_add(out, self._bias_loc())
        return out

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
    mc_single_trace = True  # see `sampling.sample_outputs`

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
        return tf.nn.bias_add(outputs, bias, data_format=(
            "NC..." if self.data_format == "channels_first" else "N...C"))

    def _mc_forward(self, x, ctx):
        """S convolutions of sample-major ``x`` [S*B, ...], one independent kernel draw each.

        Measured on 2 CPU cores (8x8 images, batch 256, S = 10): a loop of S plain convolutions
        over [B, ...] slices costs S times one convolution (the floor); a grouped convolution
        with the samples in the channels was 1.3-4x slower, and one convolution over all S*B
        rows is no cheaper (it cannot use S kernels). So: tf.map_fn over the S draws.
        """
        s = ctx.num_samples
        loc = self._kernel_loc()
        shape = tf.shape(x)
        xs = tf.reshape(x, tf.concat([[s, shape[0] // s], shape[1:]], 0))
        kernels = loc + self._kernel_scale(ctx) * ctx.normal(
            tf.concat([[s], tf.shape(loc)], 0), x.dtype)
        if self._has_bias_noise():
            biases = self._bias_draws(ctx, s, x.dtype)  # [S, filters]
            elems = (xs, kernels, biases)
        else:
            bias = self._bias_loc() if self.bias_posterior is not None else None
            elems = (xs, kernels)

        def one_sample(a):
            # Conv + BiasAdd + activation in the loop body: Grappler fuses them (_FusedConv2D),
            # as in the deterministic graph, instead of two more passes over [S*B, ...].
            out = self._op(a[0], a[1])
            b = a[2] if len(a) > 2 else bias
            return self._activate(out if b is None else self._add_bias(out, b))

        out = tf.map_fn(one_sample, elems, fn_output_signature=x.dtype)
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


# Bayesian recurrent layers live in their own module (tfp_bnn/rnn.py); re-exported here.
from tfp_bnn.rnn import (  # noqa: E402
    GRUFlipout, GRUReparameterization, LSTMFlipout, LSTMReparameterization, SimpleRNNFlipout,
    SimpleRNNReparameterization)

__all__ += ["LSTMFlipout", "LSTMReparameterization", "GRUFlipout", "GRUReparameterization",
            "SimpleRNNFlipout", "SimpleRNNReparameterization"]
