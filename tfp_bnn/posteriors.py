"""Mean-field Normal posteriors: configuration (`MeanField`) and the variable builders it drives.

    q(w) = prod_i N(w_i; mu_i, sigma_i^2),    sigma_i = softplus(rho_i)

Variables per weight tensor: ``<name>_loc`` (mu) and ``<name>_untransformed_scale`` (rho).
The softplus keeps sigma positive without constraints; its inverse sets rho from a wanted sigma.

Example:
    >>> MeanField(init_scale=0.01)                       # mu from the layer's kernel_initializer
    MeanField(init_scale=0.01, from_weights=False, moped_delta=None, bayesian_bias=False)
    >>> MeanField(from_weights=True).scale_for(np.array([0.5, -2.0]))  # mu = trained weights
    array([0.05, 0.05])
    >>> MeanField(moped_delta=0.1).scale_for(np.array([0.5, -2.0]))    # MOPED: 0.1 * |w|
    array([0.05, 0.2 ])

References:
    Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015.
    Krishnan et al., "Specifying Weight Priors in Bayesian Deep Neural Networks with Empirical
    Bayes" (MOPED), AAAI 2020.
"""
import numpy as np

from tfp_bnn import options
from tfp_bnn._keras import tf, tf_keras, tfd, tfp

__all__ = ["MeanField", "get", "inverse_softplus", "normal_posterior", "deterministic_posterior"]

# Smallest sigma MOPED may set: delta*|w| is 0 for an exactly-zero weight, and log(0) breaks the KL.
MIN_SCALE = 1e-6


def inverse_softplus(x):
    """rho such that softplus(rho) = x, computed stably for small and large x (numpy)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 20.0, x, np.log(np.expm1(np.clip(x, 1e-30, 20.0))))


class MeanField:
    """Configuration of the mean-field Normal posterior that `bayesify` gives each layer.

    Args:
        init_scale: posterior standard deviation at initialisation, > 0 (0.05 is close to
            TFP's and bayesian-torch's softplus(-3)).
        from_weights: start the posterior means at the source model's trained weights.
        moped_delta: if set (> 0), MOPED initialisation: sigma = moped_delta * |w| from the source
            weights (implies ``from_weights=True``).
        bayesian_bias: give biases a Normal posterior and the layer's prior too. By default biases
            stay deterministic point estimates, as in TFP.
    """

    def __init__(self, init_scale=0.05, from_weights=False, moped_delta=None, bayesian_bias=False):
        self.init_scale = options.number("init_scale", init_scale, 0.0, strict=True)
        if moped_delta is not None:
            try:
                moped_delta = options.number("moped_delta", moped_delta, 0.0, strict=True)
            except ValueError:  # None is valid too: the message says so
                raise ValueError("moped_delta must be a positive number or None. "
                                 f"Received: moped_delta={moped_delta!r}") from None
        self.moped_delta = moped_delta
        self.from_weights = bool(from_weights) or moped_delta is not None
        self.bayesian_bias = bool(bayesian_bias)

    def get_config(self):
        return {"init_scale": self.init_scale, "from_weights": self.from_weights,
                "moped_delta": self.moped_delta, "bayesian_bias": self.bayesian_bias}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return "MeanField(" + ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()) + ")"

    def __eq__(self, other):
        return isinstance(other, MeanField) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(tuple(self.get_config().items()))

    def scale_for(self, weights):
        """sigma to start from for source ``weights``: MOPED's delta*|w|, else init_scale."""
        if self.moped_delta is None:
            return np.full(np.shape(weights), self.init_scale)
        return np.maximum(self.moped_delta * np.abs(weights), MIN_SCALE)


def get(identifier):
    """Resolve a posterior config from None (defaults), a dict or a `MeanField`."""
    if identifier is None:
        return MeanField()
    if isinstance(identifier, MeanField):
        return identifier
    if isinstance(identifier, dict):
        config = identifier.get("config", identifier)
        try:
            return MeanField(**config)
        except TypeError as e:
            raise ValueError(f"Bad posterior config: posterior={identifier!r}: {e}") from None
    raise ValueError("posterior must be None, a dict or tfp_bnn.posteriors.MeanField(...). "
                     f"Received: posterior={identifier!r}")


def normal_posterior(dtype, shape, name, trainable, add_variable_fn, loc_initializer, init_scale):
    """Create mu/rho variables and return ``Independent(Normal(mu, softplus(rho)))``."""
    loc = add_variable_fn(name=name + "_loc", shape=shape, dtype=dtype, trainable=trainable,
                          initializer=tf_keras.initializers.get(loc_initializer))
    rho = add_variable_fn(name=name + "_untransformed_scale", shape=shape, dtype=dtype,
                          trainable=trainable,
                          initializer=tf.constant_initializer(float(inverse_softplus(init_scale))))
    # A DeferredTensor keeps the scale tied to the variable (TFP's own idiom): the distribution
    # object built once in build() sees every later update of rho.
    dist = tfd.Normal(loc=loc, scale=tfp.util.DeferredTensor(rho, tf.nn.softplus))
    return tfd.Independent(dist, reinterpreted_batch_ndims=len(shape))


def deterministic_posterior(dtype, shape, name, trainable, add_variable_fn, loc_initializer):
    """A point-estimate 'posterior' (deterministic bias), as in TFP's default."""
    loc = add_variable_fn(name=name + "_loc", shape=shape, dtype=dtype, trainable=trainable,
                          initializer=tf_keras.initializers.get(loc_initializer))
    return tfd.Independent(tfd.Deterministic(loc=loc), reinterpreted_batch_ndims=len(shape))
