"""Weight priors for Bayesian layers: small serialisable classes, also accepted as strings.

Each prior is used in two ways:

* as TFP's ``kernel_prior_fn``: ``prior(dtype, shape, name, trainable, add_variable_fn)`` returns
  the prior distribution over a weight tensor (creating variables only for learned priors);
* to compute ``KL(q || p)`` for a mean-field Normal posterior ``q`` through ``prior.kl(q, p, w)``,
  in closed form where one exists and by a one-sample Monte Carlo estimate
  ``log q(w) - log p(w)`` otherwise.

Priors are configuration, not closures: ``get_config`` returns plain numbers, so a saved model
holds no marshalled Python bytecode.

Example:
    >>> from tfp_bnn import priors
    >>> type(priors.get("normal")).__name__                   # Normal(loc=0, scale=1)
    'Normal'
    >>> priors.get({"class_name": "ScaleMixture", "config": {"pi": 0.25}}).get_config()["pi"]
    0.25
    >>> type(priors.get(priors.Laplace(scale=0.1))).__name__
    'Laplace'
"""
import math

from tfp_bnn import options
from tfp_bnn._keras import tf, tfd, tfp
from tfp_bnn.posteriors import inverse_softplus

__all__ = ["Prior", "Normal", "ScaleMixture", "Laplace", "LearnedNormal", "LogUniform",
           "GroupNormalJeffreys", "log_alpha", "sparse_vd_kl", "get", "serialize", "PRIORS"]

_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


def _normal_parts(q):
    """loc and scale tensors of a mean-field posterior ``Independent(Normal)``."""
    base = q.distribution if isinstance(q, tfd.Independent) else q
    if not isinstance(base, tfd.Normal):
        raise TypeError(f"tfp_bnn priors need a Normal posterior; got {type(base).__name__}.")
    return base.loc, base.scale


def _entropy_normal(scale):
    return _HALF_LOG_2PI_E + tf.math.log(scale)


class Prior:
    """Base class. Subclasses implement ``distribution`` and ``kl``."""

    analytic_kl = True
    # Whether a weight's own log alpha says it can be removed (`tfp_bnn.compress`).
    prunable = False
    # A prior over one multiplicative scale per output unit / filter, or None: where set,
    # `bayesify` follows each hidden Dense/Conv by a `tfp_bnn.sparse.UnitScale` with it.
    unit_prior = None

    def __call__(self, dtype, shape, name, trainable, add_variable_fn):
        return self.distribution(dtype, shape, name, trainable, add_variable_fn)

    def distribution(self, dtype, shape, name, trainable, add_variable_fn):
        raise NotImplementedError

    def kl(self, q, p, sample=None):
        """Sum over weights of KL(q || p); ``sample`` is a draw from q (used by MC estimates)."""
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


class _FixedLocScale(Prior):
    """A fixed prior of a location-scale ``family``, the same (loc, scale) for every weight."""

    family = None  # the tfd class

    def __init__(self, loc=0.0, scale=1.0):
        self.loc = options.number("loc", loc)
        self.scale = options.number("scale", scale, 0, strict=True)

    def distribution(self, dtype, shape, name, trainable, add_variable_fn):
        dist = self.family(loc=tf.fill(shape, tf.constant(self.loc, dtype)),
                           scale=tf.constant(self.scale, dtype))
        return tfd.Independent(dist, reinterpreted_batch_ndims=len(shape))

    def get_config(self):
        return {"loc": self.loc, "scale": self.scale}


class Normal(_FixedLocScale):
    """Fixed isotropic Normal prior ``w ~ N(loc, scale^2)`` with the closed-form KL.

        KL(N(m, s) || N(m0, s0)) = log(s0 / s) + (s^2 + (m - m0)^2) / (2 s0^2) - 1/2

    Args:
        loc: prior mean.
        scale: prior standard deviation, > 0.
    """

    family = tfd.Normal

    def kl(self, q, p, sample=None):
        loc, scale = _normal_parts(q)
        # tf.constant, not tf.cast: a Python float cast from float32 would lose float64 precision.
        return normal_kl(loc, scale, tf.constant(self.loc, loc.dtype),
                         tf.constant(self.scale, loc.dtype))


def normal_kl(loc, scale, prior_loc, prior_scale):
    """Sum of elementwise KL(N(loc, scale) || N(prior_loc, prior_scale))."""
    return tf.reduce_sum(
        tf.math.log(prior_scale) - tf.math.log(scale)
        + (tf.square(scale) + tf.square(loc - prior_loc)) / (2.0 * tf.square(prior_scale))
        - 0.5)


class LearnedNormal(Prior):
    """Empirical-Bayes Normal prior ``w ~ N(0, s^2)`` whose scale ``s`` is trained with the ELBO.

    One scalar scale per weight tensor, parameterised as ``s = softplus(rho)``; the KL is the
    closed form of :class:`Normal` with the current ``s``.

    Args:
        init_scale: starting prior standard deviation, > 0.
    """

    def __init__(self, init_scale=1.0):
        self.init_scale = options.number("init_scale", init_scale, 0, strict=True)

    def distribution(self, dtype, shape, name, trainable, add_variable_fn):
        rho = add_variable_fn(
            name=name + "_untransformed_scale", shape=(), dtype=dtype, trainable=trainable,
            initializer=tf.constant_initializer(float(inverse_softplus(self.init_scale))))
        # DeferredTensor: the distribution built once in build() follows every update of rho.
        scale = tfp.util.DeferredTensor(rho, tf.nn.softplus)
        return tfd.Independent(tfd.Normal(loc=tf.zeros(shape, dtype), scale=scale),
                               reinterpreted_batch_ndims=len(shape))

    def kl(self, q, p, sample=None):
        loc, scale = _normal_parts(q)
        return normal_kl(loc, scale, tf.zeros((), loc.dtype),
                         tf.convert_to_tensor(p.distribution.scale))

    def get_config(self):
        return {"init_scale": self.init_scale}


class Laplace(_FixedLocScale):
    """Laplace prior ``w ~ Laplace(loc, scale)`` (sparsity-inducing), with the closed-form KL.

        KL(N(m, s) || Laplace(m0, b)) = -H[N(m, s)] + log(2 b) + E|w - m0| / b
        E|w - m0| = s sqrt(2/pi) exp(-d^2 / (2 s^2)) + d erf(d / (s sqrt 2)),  d = m - m0

    Args:
        loc: prior location.
        scale: prior scale b, > 0.
    """

    family = tfd.Laplace

    def kl(self, q, p, sample=None):
        loc, scale = _normal_parts(q)
        b = tf.constant(self.scale, loc.dtype)
        d = loc - tf.constant(self.loc, loc.dtype)
        abs_mean = (scale * math.sqrt(2.0 / math.pi) * tf.exp(-tf.square(d) / (2.0 * tf.square(scale)))
                    + d * tf.math.erf(d / (scale * math.sqrt(2.0))))
        return tf.reduce_sum(-_entropy_normal(scale) + tf.math.log(2.0 * b) + abs_mean / b)


class ScaleMixture(Prior):
    """Scale mixture of two zero-mean Normals (Blundell et al. 2015), KL by Monte Carlo.

        p(w) = pi N(w; 0, scale1^2) + (1 - pi) N(w; 0, scale2^2)
        KL(q || p) ~= -H[q] - log p(w),  w ~ q

    Args:
        pi: weight of the first component, in (0, 1).
        scale1: standard deviation of the first (wide) component, > 0.
        scale2: standard deviation of the second (narrow) component, > 0.

    References:
        Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015.
    """

    analytic_kl = False

    def __init__(self, pi=0.5, scale1=1.0, scale2=math.exp(-6.0)):
        pi_f = options.number("pi", pi)
        if not 0.0 < pi_f < 1.0:
            raise ValueError(f"pi must be in (0, 1). Received: pi={pi!r}")
        self.pi = pi_f
        self.scale1 = options.number("scale1", scale1, 0, strict=True)
        self.scale2 = options.number("scale2", scale2, 0, strict=True)

    def distribution(self, dtype, shape, name, trainable, add_variable_fn):
        mix = tfd.Categorical(probs=tf.constant([self.pi, 1.0 - self.pi], dtype))
        comps = tfd.Normal(loc=tf.zeros([2], dtype), scale=tf.constant([self.scale1, self.scale2], dtype))
        # Elementwise mixture broadcast over the weight shape.
        dist = tfd.MixtureSameFamily(mix, comps)
        dist = tfd.Sample(dist, sample_shape=shape)
        return dist

    def log_prob(self, w):
        """Elementwise log-density, computed stably with logsumexp."""
        w = tf.convert_to_tensor(w)
        dtype = w.dtype
        s1, s2 = tf.constant(self.scale1, dtype), tf.constant(self.scale2, dtype)
        lp1 = math.log(self.pi) - tf.math.log(s1) - 0.5 * math.log(2 * math.pi) - 0.5 * tf.square(w / s1)
        lp2 = (math.log(1.0 - self.pi) - tf.math.log(s2) - 0.5 * math.log(2 * math.pi)
               - 0.5 * tf.square(w / s2))
        return tf.reduce_logsumexp(tf.stack([lp1, lp2]), axis=0)

    def kl(self, q, p, sample=None):
        if sample is None:
            sample = q.sample()
        _, scale = _normal_parts(q)
        return -tf.reduce_sum(_entropy_normal(scale)) - tf.reduce_sum(self.log_prob(sample))

    def get_config(self):
        return {"pi": self.pi, "scale1": self.scale1, "scale2": self.scale2}


# Molchanov et al. 2017, eq. 14.
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695
# Their range: beyond it the approximation is flat, and the gradient of a clipped log alpha is
# zero, so a weight cannot drift to sigma/theta ratios no float32 round-trip can hold.
LOG_ALPHA_RANGE = (-8.0, 8.0)


def log_alpha(loc, scale):
    """log alpha = log sigma^2 - log theta^2, clipped to `LOG_ALPHA_RANGE` (Molchanov et al.)."""
    loc, scale = tf.convert_to_tensor(loc), tf.convert_to_tensor(scale)
    tiny = tf.constant(1e-16, loc.dtype)  # theta = 0 exactly: alpha is +inf, clipped to 8
    raw = 2.0 * tf.math.log(scale) - tf.math.log(tf.square(loc) + tiny)
    return tf.clip_by_value(raw, *LOG_ALPHA_RANGE)


def sparse_vd_kl(log_alpha_value):
    """Elementwise KL(N(theta, alpha theta^2) || log-uniform), Molchanov et al. eq. 14.

        -KL ~= k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1
        k1, k2, k3 = 0.63576, 1.87320, 1.48695

    The constant makes the KL 0 as alpha -> inf (the improper prior's KL is defined up to it).
    """
    la = tf.convert_to_tensor(log_alpha_value)
    return _K1 - _K1 * tf.sigmoid(_K2 + _K3 * la) + 0.5 * tf.math.softplus(-la)


class LogUniform(Prior):
    """Log-uniform prior ``p(log|w|) = const`` of sparse variational dropout (Molchanov et al.).

        q(w) = N(theta, sigma^2),   alpha = sigma^2 / theta^2    (additive reparameterisation)
        KL(q || p) ~= sum_i sparse_vd_kl(clip(log alpha_i, -8, 8))          (their eq. 14)

    The posterior is the layers' mean-field Normal as it is: its mean theta and its scale sigma
    are separate variables, so sigma is not ``sqrt(alpha) * theta`` and the gradient of theta
    does not carry alpha's noise (the paper's additive reparameterisation); log sigma^2 is
    ``2 log softplus(rho)``. Weights whose log alpha ends above a threshold (3: a dropout rate
    above 0.95) are noise and `tfp_bnn.compress` removes them. Start the posterior with a small
    ``init_scale`` (0.01, say) so that training begins with every weight kept.

    References:
        Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural Networks",
        ICML 2017.
    """

    prunable = True

    def distribution(self, dtype, shape, name, trainable, add_variable_fn):
        # Improper (every density 0 up to an infinite normaliser); TFP wants a distribution
        # object, and the KL above never reads it.
        return tfd.Independent(tfd.Normal(loc=tf.zeros(shape, dtype),
                                          scale=tf.constant(math.inf, dtype)),
                               reinterpreted_batch_ndims=len(shape))

    def kl(self, q, p, sample=None):
        loc, scale = _normal_parts(q)
        return tf.reduce_sum(sparse_vd_kl(log_alpha(loc, scale)))


class GroupNormalJeffreys(Normal):
    """Group normal-Jeffreys prior (Louizos et al. 2017): a scale z per unit or filter.

        z_j ~ p(z) ∝ 1/|z|,          w~_ij ~ N(0, 1),     unit j outputs z_j act(x . w~_j + b_j)
        q(z_j) = N(mu_j, sigma_j^2),   q(w~) = N(m, s^2)
        KL = sum_j KL(q(z_j) || p(z)) + sum_ij KL(N(m, s^2) || N(0, 1))

    z_j scales unit j's output, so the next layer sees the weights ``w_jk = z_j w~_jk`` (the
    paper's z on a layer's input units); ``p(w | z) = N(0, z^2)`` with ``q(w | z) =
    N(z m, z^2 s^2)`` makes the second term free of z (their eq. 9), so the kernels keep the
    closed-form Normal KL and the unit scales take the log-uniform KL (`LogUniform`, eq. 14 of
    Molchanov et al.). `tfp_bnn.bayesify` follows every
    hidden Dense/Conv layer by a `tfp_bnn.sparse.UnitScale` holding z; the output layer keeps
    its units. A unit whose log alpha_z exceeds the threshold is off, and `tfp_bnn.compress`
    removes it from the layer and the next layer's inputs.

    References:
        Louizos, Ullrich & Welling, "Bayesian Compression for Deep Learning", NeurIPS 2017.
    """

    unit_prior = LogUniform()

    def __init__(self):
        super().__init__(loc=0.0, scale=1.0)

    def get_config(self):
        return {}


PRIORS = {
    "normal": Normal,
    "scale_mixture": ScaleMixture,
    "laplace": Laplace,
    "learned_normal": LearnedNormal,
    "log_uniform": LogUniform,
    "group_normal_jeffreys": GroupNormalJeffreys,
}
_BY_CLASS = {cls.__name__: cls for cls in PRIORS.values()}


def serialize(prior):
    return {"class_name": type(prior).__name__, "config": prior.get_config()}


def get(identifier, argument="prior"):
    """Resolve a prior from a string, a ``{"class_name", "config"}`` dict or an instance."""
    if isinstance(identifier, Prior):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower().replace("-", "_")
        if key in PRIORS:
            return PRIORS[key]()
        if identifier in _BY_CLASS:
            return _BY_CLASS[identifier]()
        raise ValueError(f"Unknown {argument}: {argument}={identifier!r}. "
                         f"Valid strings: {sorted(PRIORS)}; or a tfp_bnn.priors instance or dict.")
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        cls = _BY_CLASS.get(name) or PRIORS.get(str(name).lower())
        if cls is None:
            raise ValueError(f"Unknown {argument} class_name in {argument}={identifier!r}. "
                             f"Valid: {sorted(_BY_CLASS)}.")
        config = identifier.get("config", {})
        try:
            return cls(**config)
        except TypeError as e:
            raise ValueError(f"Bad config for {argument}={identifier!r}: {e}") from None
    raise ValueError(f"{argument} must be a string, a dict or a tfp_bnn.priors.Prior. "
                     f"Received: {argument}={identifier!r}")
