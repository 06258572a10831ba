"""Bayesian layers TFP lacks, on a tf_keras parent: kernels of any shape, one op, three calls.

A layer kind (`tfp_bnn.conv_kinds`, `tfp_bnn.attention`) subclasses `KernelLayer` and the
tf_keras layer it replaces (which keeps Keras' constructor, config and output shapes), names its
kernel tensors and writes only its op ``op(x, kernels)``; this module adds the posteriors, the
draws and the KL (through `tfp_bnn.bayesian.BayesianLayer`):

    W_k ~ q(W_k) = N(mu_k, sigma_k^2)          for every kernel k (and the bias, if Bayesian)
    reparameterisation:  y = act(op(x, mu + sigma * eps) + b)       one draw per call
    Flipout, per stage:  h' = f(h, mu) + f(h * s_in, sigma * eps) * s_out
    SAMPLE (S draws):    y_s = act(op(x_s, W_s) + b_s) over the S sample-major copies

Flipout (Wen et al. 2018) holds because every stage ``f`` is linear in its kernel and scales
each input channel and each output channel on its own: multiplying the input channels by signs
``s_in`` and the output channels by ``s_out`` equals using the kernel ``delta * (s_in s_out^T)``
over its (input channel, output channel) axes, and ``delta * E`` has the law of ``delta`` for
any fixed sign pattern E. So each example gets its own exact draw of the kernel, pseudo-
independent of the others; the signs are shared by all positions of one example, which keep
one kernel as in the model. A layer with two kernels (separable convolutions) is two stages.

The S-sample path folds the S draws into the channels of one grouped op where the kind
declares how (`KernelLayer._fold_axes`, `tfp_bnn.stacking`), else runs the op once per draw in
one ``tf.map_fn``; a kind with a batched op (EinsumDense: one einsum over the S stacked
kernels) overrides `KernelLayer._sample_op`.

Example:
    >>> layer = tfp_bnn.layers.SeparableConv2DFlipout(4, 3, kl_weight=0.01)
    >>> _ = layer(tf.ones([1, 5, 5, 2]))
    >>> [name for name, _, _ in layer.weight_posteriors()], len(layer.losses)
    (['depthwise_kernel', 'pointwise_kernel', 'bias'], 2)

References:
    Wen et al., "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches",
    ICLR 2018.
"""
from tfp_bnn import bayesian, options
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import sampling, stacking
from tfp_bnn._keras import tf
from tfp_bnn.bayesian import BayesianLayer

__all__ = ["KernelLayer", "UNSUPPORTED_OPTIONS", "refuse_weight_options", "drop_weight_options"]

# Keras constructor options a weight distribution has no use for: a value other than None is
# refused (bayesify leaves them out; the prior is the regulariser).
UNSUPPORTED_OPTIONS = ("kernel_regularizer", "bias_regularizer", "kernel_constraint",
                       "bias_constraint", "depthwise_regularizer", "pointwise_regularizer",
                       "depthwise_constraint", "pointwise_constraint")


def refuse_weight_options(layer_name, kwargs):
    """A ValueError naming the first `UNSUPPORTED_OPTIONS` key of ``kwargs`` that is not None."""
    for key in UNSUPPORTED_OPTIONS:
        if kwargs.get(key) is not None:
            raise ValueError(f"{layer_name} has weight distributions, not weights: {key} must "
                             f"be None (use the prior). Received: {key}={kwargs[key]!r}")


def drop_weight_options(config):
    """``config`` without the `UNSUPPORTED_OPTIONS` keys that are None (they are implied)."""
    for key in UNSUPPORTED_OPTIONS:
        if config.get(key, 0) is None:
            del config[key]
    return config


class KernelLayer(BayesianLayer):
    """Mixin of the Bayesian layers built here; first in the bases, before the tf_keras parent.

    A subclass sets `_kernel_specs` (``(weight name, initializer attribute)`` in Keras'
    ``get_weights()`` order), implements `_kernel_shapes`, `_bias_shape` and `_stages`, and may
    override `_add_bias`, `_sign_shape` and `_sample_op`.

    Args (beyond the tf_keras parent's):
        prior: a `tfp_bnn.priors` name, dict or instance, for every kernel (and the bias with
            ``posterior.bayesian_bias``).
        posterior: `tfp_bnn.posteriors.MeanField`, its config dict, or None.
        kl_weight: the KL multiplier (1/N for -ELBO/N), a non-trainable variable.
        seed: op seed of the training path's draws (normals, Flipout signs).
    """

    _kernel_specs = (("kernel", "kernel_initializer"),)
    _flipout = False

    @property
    def mc_single_trace(self):
        """One trace of the model when the draws always loop (`sampling.sample_outputs`)."""
        return self.mc_rows_threshold() is None

    def mc_rows_threshold(self):
        return stacking.rows_threshold(self._fold_axes(), self._channel_axis() != 1)

    def __init__(self, *args, prior="normal", posterior=None, kl_weight=1.0, seed=None,
                 **kwargs):
        refuse_weight_options(type(self).__name__, kwargs)
        super().__init__(*args, **kwargs)
        initializer = getattr(self, self._kernel_specs[0][1])
        self._bayes_init(prior, posterior, kl_weight, self._uses_bias(), initializer,
                         self.bias_initializer)
        self.seed = seed

    def _uses_bias(self):
        return self.use_bias

    # --- what a kind declares -----------------------------------------------------------------
    def _kernel_shapes(self, input_shape):
        """``{name: shape}`` of the kernels for ``input_shape`` (a TensorShape)."""
        raise NotImplementedError

    def _bias_shape(self, input_shape):
        raise NotImplementedError

    def _stages(self):
        """``[(kernel name, f(x, kernel))]``: the op is their chain, each f linear in its kernel
        and channel-wise in its input and output (see the module docstring)."""
        raise NotImplementedError

    def _channel_axis(self):
        return 1 if getattr(self, "data_format", "channels_last") == "channels_first" else -1

    def _sign_shape(self, t, side):
        """The shape of the Rademacher signs of a stage's input (``side="in"``) or output ``t``
        [B, ...]: one per example and channel."""
        return stacking.channel_sign_shape(t, self._channel_axis())

    def _signs(self, t, side, salt):
        return bayesian.rademacher(self._sign_shape(t, side), t.dtype, self._op_seed(salt))

    def _op_seed(self, salt):
        # One op seed per draw: two ops with the same op seed would draw the same numbers.
        return None if self.seed is None else self.seed + salt

    def _flipout_factorizes(self):
        """Whether the op's kernel perturbation factors into input and output signs; where it
        does not, Flipout layers take the reparameterisation draw."""
        return True

    def _add_bias(self, outputs, bias):
        return tf.nn.bias_add(outputs, bias, data_format=(
            "NC..." if self._channel_axis() == 1 else "N...C"))

    # --- variables ------------------------------------------------------------------------------
    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        dtype, post = self.dtype, self.posterior
        self._parts = []
        for (name, init_attr), (_, shape) in zip(self._kernel_specs,
                                                 self._kernel_shapes(input_shape).items()):
            q = posteriors_lib.normal_posterior(
                dtype, shape, f"{name}_posterior", self.trainable, self.add_weight,
                getattr(self, init_attr), post.init_scale)
            p = self.prior(dtype, shape, f"{name}_prior", self.trainable, self.add_weight)
            self._parts.append((name, q, p))
        if self._uses_bias():
            shape = self._bias_shape(input_shape)
            if post.bayesian_bias:
                q = posteriors_lib.normal_posterior(dtype, shape, "bias_posterior",
                                                    self.trainable, self.add_weight,
                                                    self.bias_initializer, post.init_scale)
                p = self.prior(dtype, shape, "bias_prior", self.trainable, self.add_weight)
            else:
                q = posteriors_lib.deterministic_posterior(dtype, shape, "bias_posterior",
                                                           self.trainable, self.add_weight,
                                                           self.bias_initializer)
                p = None
            self._parts.append(("bias", q, p))
        self._build_kl_weight()
        self.built = True

    def weight_posteriors(self):
        return list(self._parts)

    def posterior_variances(self):
        """As the base's; two kernels of different shapes (a separable convolution's) are
        flattened and concatenated: ``[size_1 + size_2]``."""
        kernels = self._kernels()
        if len(kernels) == 1:
            return super().posterior_variances()
        variance = tf.concat([tf.reshape(tf.square(tf.convert_to_tensor(q.distribution.scale)),
                                         [-1]) for _, q in kernels], 0)
        bias = (tf.square(tf.convert_to_tensor(self._bias_posterior().distribution.scale))
                if self._has_bias_noise() else None)
        return variance, bias

    def _given_variance(self, name, ctx):
        kernels = self._kernels()
        if len(kernels) == 1 or name == "bias":
            return super()._given_variance(name, ctx)
        given = ctx.variances.get(id(self)) if ctx is not None else None
        if given is None:
            return None
        start = 0
        for other, q in kernels:
            shape = q.distribution.loc.shape
            if other == name:
                return tf.reshape(given[0][start:start + shape.num_elements()], shape)
            start += shape.num_elements()
        raise KeyError(name)

    # --- the op -----------------------------------------------------------------------------------
    def _op(self, x, kernels):
        for name, f in self._stages():
            x = f(x, kernels[name])
        return x

    def _finish(self, outputs, bias):
        if bias is not None:
            outputs = self._add_bias(outputs, bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def _names(self):
        return [name for name, _ in self._kernels()]

    # --- the three calls of the sampling protocol -----------------------------------------------
    def mean_call(self, inputs, **kwargs):
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        bias = self._loc("bias") if self._uses_bias() else None
        return self._finish(self._op(x, {n: self._loc(n) for n in self._names()}), bias)

    def plain_call(self, inputs, **kwargs):
        """One draw per call (Flipout: signs per example), the KL added once per pass."""
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        locs = {n: self._loc(n) for n in self._names()}
        # sigma = softplus(rho) once per tensor: the KL reads the same tensor (see _add_kl).
        scales = {n: self._scale(n) for n in locs}
        deltas = {n: scales[n] * bayesian.normal(loc.shape.as_list(), x.dtype,
                                                 self._op_seed(100 + i))
                  for i, (n, loc) in enumerate(locs.items())}
        if self._flipout and self._flipout_factorizes():
            out = stacking.flipout_stages(x, self._stages(), locs, deltas, self._signs)
        else:
            out = self._op(x, {n: locs[n] + deltas[n] for n in locs})
        bias = self._loc("bias") if self._uses_bias() else None
        if self._has_bias_noise():
            scales["bias"] = self._scale("bias")
            bias = bias + scales["bias"] * bayesian.normal(bias.shape.as_list(), x.dtype,
                                                           self._op_seed(99))
        samples = {n: locs[n] + deltas[n] for n in locs}
        samples["bias"] = bias
        for name, q, p in self.weight_posteriors():
            self._add_kl(f"{name}_kl_loss", q, p, samples[name], scales.get(name))
        return self._finish(out, bias)

    def sample_call(self, inputs, ctx, **kwargs):
        """S independent draws of every weight tensor; copy s of the batch uses draw s."""
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        s = ctx.num_samples
        if (ctx.noise is options.Noise.SHARED and self._flipout_factorizes()
                and sampling.shared_pays(x, ctx)):
            return self._shared_call(x, ctx)
        kernels = {name: self._draws(name, ctx, x.dtype) for name in self._names()}
        bias = self._sample_bias(ctx, x.dtype)
        out = self._sample_op(sampling.split_copies(x, s), kernels, bias, ctx.rows)
        return sampling.merge_copies(out)

    def _shared_call(self, x, ctx):
        """`Noise.SHARED`: one perturbation of every kernel, Flipout signs per row."""
        locs = {n: self._loc(n) for n in self._names()}
        deltas = {n: self._scale(n, ctx) * ctx.normal(tf.shape(loc), x.dtype)
                  for n, loc in locs.items()}
        out = stacking.shared_stages(x, ctx, self._stages(), locs, deltas, self._sign_shape)
        return self._finish(self._bias_per_copy(out, ctx, self._channel_axis()), None)

    def _sample_op(self, xs, kernels, bias, rows=(None, None)):
        """``[S, B, ...]`` outputs of S kernel draws ``{name: [S, ...]}`` (bias [S, ...] when
        Bayesian, else one tensor or None): one grouped op over the draws folded into the
        channels, or a map_fn (`tfp_bnn.stacking`); ``rows``: `sampling.Context.rows`."""
        return stacking.sample_stages(xs, self._stages(), kernels, bias, self._finish,
                                      self._fold_axes(), self._channel_axis() != 1, rows)

    def _fold_axes(self):
        """``{kernel name: axis}`` the S draws of each kernel fold into (`tfp_bnn.stacking`),
        or None where the op cannot take them as channel groups."""
        return None

    # --- config------------------------------------------------------------------------------------
    def get_config(self):
        """The tf_keras parent's config plus prior, posterior, kl_weight and seed."""
        config = super().get_config()
        config.update({"prior": priors_lib.serialize(self.prior),
                       "posterior": self.posterior.get_config(),
                       "kl_weight": self.base_kl_weight, "seed": self.seed})
        return drop_weight_options(config)

