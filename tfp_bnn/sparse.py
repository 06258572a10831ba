"""Group sparsity: one Bayesian multiplicative scale per unit or filter (Louizos et al. 2017).

`UnitScale` is a Bayesian layer kind on the one base (`tfp_bnn.bayesian.BayesianLayer`) whose
only weight tensor is the vector z of per-channel scales; it adds only its op:

    y[..., j] = z_j * x[..., j],    z_j ~ q(z_j) = N(mu_j, sigma_j^2),   mu_j starts at 1
    training: one draw of z per example (the local reparameterisation of a per-channel
              multiplicative noise: the examples of a batch independent, as in the paper)
    KL: the layer's prior on z, log-uniform for the group normal-Jeffreys prior

`tfp_bnn.bayesify(model, prior="group_normal_jeffreys")` puts one after every hidden Dense and
Conv layer (after its activation: z scales the unit's output, so ``z_j = 0`` silences unit j
whatever the activation); the output layer keeps its units. `tfp_bnn.compress` reads
``log alpha_z = log sigma^2 - log mu^2``: above the threshold unit j is off and leaves both
layers, else its mean scale is folded into the next layer's kernel.

Example:
    >>> layer = UnitScale(kl_weight=0.01)
    >>> layer(tf.ones([2, 3])).shape, len(layer.losses)
    (TensorShape([2, 3]), 1)

References:
    Louizos, Ullrich & Welling, "Bayesian Compression for Deep Learning", NeurIPS 2017.
"""
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import options, sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.bayesian import BayesianLayer, register

__all__ = ["UnitScale", "unit_scale_after"]


@register
class UnitScale(BayesianLayer, tf_keras.layers.Layer):
    """Multiply each channel of the input by its own Bayesian scale z (see the module docstring).

    Args:
        axis: the channel axis (-1; 1 for channels_first convolutions).
        prior: the prior over z (default log-uniform).
        posterior: `tfp_bnn.posteriors.MeanField` (its ``init_scale`` is sigma of z at the start).
        kl_weight: the KL multiplier (1/N for -ELBO/N).
    """

    def __init__(self, axis=-1, prior="log_uniform", posterior=None, kl_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.axis = options.integer("axis", axis)
        self._bayes_init(prior, posterior, kl_weight, False, "ones", "zeros")
        self.activation = None

    def build(self, input_shape):
        channels = tf.TensorShape(input_shape)[self.axis]
        if channels is None:
            raise ValueError(f"UnitScale needs a known channel dimension on axis {self.axis}. "
                             f"Received: input_shape={input_shape}")
        shape = (int(channels),)
        q = posteriors_lib.normal_posterior(self.dtype, shape, "scale_posterior", self.trainable,
                                            self.add_weight, "ones", self.posterior.init_scale)
        p = self.prior(self.dtype, shape, "scale_prior", self.trainable, self.add_weight)
        self._parts = [("scale", q, p)]
        self._build_kl_weight()
        self.built = True

    def weight_posteriors(self):
        return list(self._parts)

    def _broadcast(self, z, rank):
        """[..., C] scales shaped to multiply a rank-``rank`` input on `axis` (leading axes
        kept)."""
        axis = self.axis % rank
        lead = z.shape.rank - 1
        return tf.reshape(z, tf.concat([tf.shape(z)[:lead], [1] * (axis - lead), [-1],
                                        [1] * (rank - axis - 1)], 0))

    # --- the three calls of the sampling protocol -----------------------------------------------
    def mean_call(self, inputs, **kwargs):
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        return x * self._broadcast(self._loc("scale"), x.shape.rank)

    def plain_call(self, inputs, **kwargs):
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        loc = self._loc("scale")
        eps = tf.random.normal(tf.stack([tf.shape(x)[0], loc.shape[0]]), dtype=x.dtype)
        z = loc + self._scale("scale") * eps  # [B, C]: one draw per example
        name, q, p = self._parts[0]
        self._add_kl(f"{name}_kl_loss", q, p)
        return x * self._broadcast(z, x.shape.rank)

    def sample_call(self, inputs, ctx, **kwargs):
        """Copy s of the batch (sample-major rows) is scaled by the s-th draw of z."""
        x = tf.convert_to_tensor(inputs, dtype=self.dtype)
        z = self._draws("scale", ctx, x.dtype)  # [S, C]
        xs = sampling.split_copies(x, ctx.num_samples)
        return sampling.merge_copies(xs * self._broadcast(z[:, tf.newaxis], x.shape.rank + 1))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = tf_keras.layers.Layer.get_config(self)
        config.update({"axis": self.axis, "prior": priors_lib.serialize(self.prior),
                       "posterior": self.posterior.get_config(), "kl_weight": self.base_kl_weight})
        return config


UNIT_INIT_SCALE = 0.1


def unit_scale_after(layer, new, prior, kl_weight):
    """The call `bayesify` puts in place of hidden Dense/Conv ``layer`` (converted to ``new``)
    under a prior with a `tfp_bnn.priors.Prior.unit_prior`: ``new`` then a `UnitScale`."""
    data_format = getattr(new, "data_format", "channels_last")
    # sigma_z = 0.1 at mu_z = 1: log alpha_z = -4.6 starts inside the KL's clip range [-8, 8]
    # (the kernels' small init_scale would start it at the clip, where its gradient is 0).
    scale = UnitScale(axis=1 if data_format == "channels_first" else -1, prior=prior.unit_prior,
                      posterior=posteriors_lib.MeanField(init_scale=UNIT_INIT_SCALE),
                      kl_weight=kl_weight, name=f"{layer.name}_unit_scale", dtype=new.dtype)

    def call(*args, **kwargs):
        return scale(new(*args, **kwargs))

    return call
