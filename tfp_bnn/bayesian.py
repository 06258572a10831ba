"""The base of every tfp_bnn Bayesian layer: prior, posterior, kl_weight, the KL, config, init.

A layer kind (Dense and Conv in `tfp_bnn.layers`, LSTM/GRU/SimpleRNN in `tfp_bnn.rnn`, and any
added later) lists its weight tensors in `BayesianLayer.weight_posteriors` and adds only its
math (the three calls of the `tfp_bnn.sampling.StochasticLayer` protocol). The base owns:

    q(w) = prod_i N(w_i; mu_i, softplus(rho_i)^2)     (`tfp_bnn.posteriors.MeanField`)
    p(w)                                              (`tfp_bnn.priors`)
    add_loss(kl_weight * KL(q || p))   once per weight tensor and forward pass of the outermost
                                       model, however often the layer is called in that pass

* ``prior`` and ``posterior`` resolved from a string, dict or instance;
* ``kl_weight``, a non-trainable variable of the layer (saved with it; callbacks anneal it);
* ``get_config`` of plain numbers and strings, and ``from_config``;
* `BayesianLayer.init_from_weights`: posterior means from a trained deterministic layer's
  weights, scales from ``init_scale`` or MOPED's ``delta * |w|``;
* `BayesianLayer.posterior_variances`, what the SavedModel export precomputes.

Example:
    >>> dense, layer = tf_keras.layers.Dense(3), tfp_bnn.layers.DenseFlipout(3, kl_weight=1 / 120)
    >>> _ = dense(tf.ones([1, 2])), layer(tf.ones([1, 2]))
    >>> layer.init_from_weights(dense.get_weights(), posteriors_lib.MeanField(moped_delta=0.1))
    >>> [name for name, _, _ in layer.weight_posteriors()], len(layer.losses)
    (['kernel', 'bias'], 1)

References:
    Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015.
    Krishnan et al., "Specifying Weight Priors in Bayesian Deep Neural Networks with Empirical
    Bayes" (MOPED), AAAI 2020.
"""
import numpy as np

from tfp_bnn import matmuls, options
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras, tfd

__all__ = ["BayesianLayer", "bayesian_layers", "register", "normal", "rademacher"]

# Registered names stay "tfp_bnn>ClassName": saved .keras files name the classes that way.
register = tf_keras.saving.register_keras_serializable(package="tfp_bnn")


class BayesianLayer(sampling.StochasticLayer):
    """Mixin of every tfp_bnn Bayesian layer (see the module docstring); first in the bases.

    A subclass calls `_bayes_init` in its constructor and `_build_kl_weight` at the end of its
    ``build``, implements `weight_posteriors`, and adds each KL through `_add_kl`.
    """

    def _bayes_init(self, prior, posterior, kl_weight, use_bias, kernel_initializer,
                    bias_initializer):
        self.prior = priors_lib.get(prior)
        self.posterior = posteriors_lib.get(posterior)
        self.base_kl_weight = options.number("kl_weight", kl_weight, 0.0, strict=True)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf_keras.initializers.get(bias_initializer)

    def _build_kl_weight(self):
        self.kl_weight = self.add_weight(
            name="kl_weight", shape=(), dtype=tf.float32, trainable=False,
            initializer=tf_keras.initializers.Constant(self.base_kl_weight))

    def weight_posteriors(self):
        """``[(name, q, p or None)]`` for every weight tensor, in the order of the deterministic
        layer's ``get_weights()`` (kernel first, bias last); ``p`` is None for a point-estimate
        (deterministic) bias."""
        raise NotImplementedError(f"{type(self).__name__} must list its weight posteriors")

    # --- the loss -------------------------------------------------------------------------
    def kl_divergence(self, samples=None):
        """KL(q || p) summed over the Bayesian weight tensors (unweighted).

        ``samples``: ``{name: w}`` draws for priors without a closed form (one-sample MC).
        """
        samples = samples or {}
        return tf.add_n([self.prior.kl(q, p, samples.get(name))
                         for name, q, p in self.weight_posteriors() if p is not None])

    def _add_kl(self, name, posterior, prior, sample=None, scale=None):
        """Add ``kl_weight * KL(q || p)`` of one weight tensor once per forward pass.

        A layer shared by two branches is called twice in one pass, but its posterior is one
        set of weights: the ELBO holds its KL once. Keras clears a layer's call losses at the
        start of every outermost call (per thread, so per replica under tf.distribute); the
        loss added earlier in this pass is still in that list, so a later call adds nothing.

        ``scale``: sigma = softplus(rho) as the call computed it. The KL then reads that tensor:
        each read of the DeferredTensor scale reads rho anew, and Grappler merges no two
        variable reads, so the KL's log(sigma) and sigma^2 were two more softplus ops (and two
        sigmoids in the gradient) per weight tensor, the largest cost of a training step.
        """
        if posterior is None or prior is None:
            return
        added = getattr(self._thread_local, "tfp_bnn_kl", {})
        if any(loss is added.get(name) for loss in self._eager_losses):
            return
        if scale is not None:
            posterior = tfd.Independent(tfd.Normal(posterior.distribution.loc, scale),
                                        posterior.reinterpreted_batch_ndims)
        kl = self.prior.kl(posterior, prior, sample)
        loss = tf.identity(tf.cast(self.kl_weight, kl.dtype) * kl, name=name)
        self.add_loss(loss)
        self._thread_local.tfp_bnn_kl = {**added, name: loss}

    # --- posterior parameters ---------------------------------------------------------------
    def _bias_posterior(self):
        found = [q for name, q, _ in self.weight_posteriors() if name == "bias"]
        return found[0] if found else None

    def _has_bias_noise(self):
        bias = self._bias_posterior()
        return bias is not None and isinstance(bias.distribution, tfd.Normal)

    def _kernels(self):
        return [(name, q) for name, q, _ in self.weight_posteriors() if name != "bias"]

    def posterior_variances(self):
        """(sigma^2 of the kernels stacked on axis 0, bias sigma^2 or None).

        What `sampling.mc_sampling(variances=)` takes: one Dense or Conv kernel as it is, an
        RNN's input and recurrent kernels as ``[F + U, k*U]``.
        """
        kernels = [tf.square(tf.convert_to_tensor(q.distribution.scale))
                   for _, q in self._kernels()]
        bias = (tf.square(tf.convert_to_tensor(self._bias_posterior().distribution.scale))
                if self._has_bias_noise() else None)
        return (kernels[0] if len(kernels) == 1 else tf.concat(kernels, 0)), bias

    def _given_variance(self, name, ctx):
        """sigma^2 of weight tensor ``name`` handed in by ``ctx.variances``, or None."""
        given = ctx.variances.get(id(self)) if ctx is not None else None
        if given is None:
            return None
        if name == "bias":
            return given[1]
        kernels = self._kernels()
        if len(kernels) == 1:
            return given[0]
        start = 0
        for other, q in kernels:
            rows = q.distribution.loc.shape[0]
            if other == name:
                return given[0][start:start + rows]
            start += rows
        raise KeyError(name)

    def _loc(self, name):
        return tf.convert_to_tensor(self._posterior(name).distribution.loc)

    def _scale(self, name, ctx=None):
        """sigma of one weight tensor: sqrt of a handed-in variance, else softplus(rho)."""
        given = self._given_variance(name, ctx)
        if given is not None:
            return tf.sqrt(given)
        return tf.convert_to_tensor(self._posterior(name).distribution.scale)

    def _variance(self, name, ctx=None):
        given = self._given_variance(name, ctx)
        return given if given is not None else tf.square(self._scale(name))

    def _draws(self, name, ctx, dtype, index=None):
        """``[S, *shape]`` independent draws of weight tensor ``name`` (S = ctx.num_samples):
        ``mu + sigma * eps``, ``eps`` from the context's stream ``index``."""
        loc = self._loc(name)
        eps = ctx.normal(tf.concat([[ctx.num_samples], tf.shape(loc)], 0), dtype, index)
        return loc + self._scale(name, ctx) * eps

    def _sample_bias(self, ctx, dtype):
        """The bias of S copies: ``[S, ...]`` draws of a Bayesian bias, the point bias of a
        deterministic one, or None without a bias."""
        if self._has_bias_noise():
            return self._draws("bias", ctx, dtype)
        return self._loc("bias") if self._bias_posterior() is not None else None

    def _bias_per_copy(self, out, ctx, channel_axis=-1):
        """Sample-major ``out`` [S*B, ...] plus the bias: row block s gets draw s of a Bayesian
        bias, every row the point bias otherwise (`Noise.SHARED`'s one-perturbation path)."""
        bias = self._sample_bias(ctx, out.dtype)
        if bias is None:
            return out
        if self._has_bias_noise():
            return sampling.add_per_copy(out, bias, ctx.num_samples, channel_axis)
        return self._add_bias(out, bias)

    def _gaussian(self, name, ctx):
        """`matmuls.Gaussian` of one tensor: sigma and sigma^2 built only where used."""
        return matmuls.Gaussian(self._loc(name), lambda: self._scale(name, ctx),
                                 lambda: self._variance(name, ctx))

    def _posterior(self, name):
        for other, q, _ in self.weight_posteriors():
            if other == name:
                return q
        raise KeyError(name)

    # --- init from trained weights ----------------------------------------------------------
    def init_from_weights(self, weights, posterior=None):
        """Posterior means from a deterministic layer's ``get_weights()``; scales per posterior.

            mu = w,   sigma = moped_delta * |w|  (MOPED)  or  init_scale

        The layer must be built. Only Normal posteriors get a scale (a deterministic bias keeps
        just its value).

        Args:
            weights: arrays in the order of `weight_posteriors` (Keras' kernel[, recurrent
                kernel][, bias]).
            posterior: the `tfp_bnn.posteriors.MeanField` whose scales to use; default the
                layer's own.

        Example:
            >>> dense, bayes = tf_keras.layers.Dense(2), tfp_bnn.layers.DenseReparameterization(2)
            >>> _ = dense(tf.ones([1, 3])), bayes(tf.ones([1, 3]))
            >>> moped = posteriors_lib.MeanField(moped_delta=0.1)
            >>> bayes.init_from_weights(dense.get_weights(), moped)
            >>> q = bayes.kernel_posterior.distribution
            >>> np.allclose(q.loc, dense.kernel), np.allclose(q.scale, 0.1 * np.abs(dense.kernel))
            (True, True)
        """
        posterior = self.posterior if posterior is None else posteriors_lib.get(posterior)
        parts = self.weight_posteriors()
        if len(weights) != len(parts):
            raise ValueError(f"Layer {self.name!r} expects {len(parts)} source weights "
                             f"({', '.join(name for name, _, _ in parts)}). "
                             f"Received: {len(weights)} arrays")
        for (name, q, _), w in zip(parts, weights):
            dist = q.distribution
            if tuple(dist.loc.shape) != tuple(w.shape):
                raise ValueError(f"Layer {self.name!r}: {name} has shape {tuple(dist.loc.shape)}. "
                                 f"Received: an array of shape {tuple(w.shape)}")
            dist.loc.assign(w)
            if isinstance(dist, tfd.Normal):
                rho = posteriors_lib.inverse_softplus(posterior.scale_for(w))
                dist.scale.pretransformed_input.assign(rho.astype(dist.loc.dtype.as_numpy_dtype))

    # --- config -------------------------------------------------------------------------------
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


def normal(shape, dtype, seed=None):
    """eps ~ N(0, I) of a training call, seeded as ``tf.random.normal(shape, seed=seed)`` is.

    Drawn by Box-Muller from uniforms (`sampling.standard_normal`): about half the CPU time of
    TF's normal op, and a training step draws one normal per weight.

    Args:
        shape: the output shape (a list, or an int32 tensor).
        dtype: the float dtype.
        seed: op seed (None: unseeded); reproducible under `tf_keras.utils.set_random_seed`.

    Example:
        >>> eps = normal([20000], tf.float32, seed=3)
        >>> abs(float(tf.math.reduce_mean(eps))) < 0.05, round(float(tf.math.reduce_std(eps)), 1)
        (True, 1.0)
    """
    return sampling.standard_normal(shape, dtype, tf.compat.v1.get_seed(seed))


# Row b holds the 8 bits of the byte b as signs: bit k set -> -1.
_BYTE_SIGNS = 1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)) & 1)


def rademacher(shape, dtype, seed=None):
    """Rademacher signs (+1 or -1, each with probability 1/2) of ``shape``: Flipout's.

        b ~ U{0, ..., 255} per 8 signs,   s_(8i+k) = 1 - 2 bit_k(b_i)

    The 8 bits of a uniform byte are 8 independent fair coins; a gather from a 256 x 8 table
    spreads them, so the draw makes an eighth of the random numbers one int per sign would.
    Signs cost as much as weight noise in a Flipout step (B x (in + out) signs per layer
    against in x out normals): on 2 CPU cores (TF 2.21) a [128, 512] draw took 0.19 ms this
    way against 0.51 ms for one RandomUniformInt per sign (`tfp.random.rademacher` adds its
    stateless seed ops to that). A layer draws its input and output signs as one tensor.

    Args:
        shape: int32 vector (or a list).
        dtype: the float dtype of the signs.
        seed: op seed (None: unseeded); reproducible under `tf_keras.utils.set_random_seed`.

    Example:
        >>> s_in, s_out = tf.split(rademacher([2, 3 + 4], tf.float32, seed=1), [3, 4], axis=-1)
        >>> s_out.shape, bool(tf.reduce_all(tf.abs(s_out) == 1.0))
        (TensorShape([2, 4]), True)
    """
    shape = tf.cast(shape, tf.int32)
    size = tf.reduce_prod(shape)
    octets = tf.random.uniform([(size + 7) // 8], 0, 256, dtype=tf.int32, seed=seed)
    signs = tf.reshape(tf.gather(tf.constant(_BYTE_SIGNS, dtype), octets), [-1])
    return tf.reshape(signs[:size], shape)


def bayesian_layers(model):
    """Every tfp_bnn Bayesian layer in ``model``, nested models included, in order."""
    return [layer for layer in sampling.stochastic_layers(model)
            if isinstance(layer, BayesianLayer)]
