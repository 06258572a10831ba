"""Bayesian EinsumDense and MultiHeadAttention (its four projections Bayesian EinsumDense).

EinsumDense (`tfp_bnn.kernel_layer.KernelLayer` on tf_keras' layer):

    W ~ N(mu, sigma^2);   y = act(einsum(equation, x, W) + b)

Flipout's signs, for an equation ``x_spec,w_spec->y_spec`` whose input's first axis (or
``...``) is the batch: the input gets one sign per example and per value of the input axes that
the kernel carries too, the output one per example and per value of the output axes the kernel
carries; every other axis (a sequence, the rest of ``...``) shares the example's signs:

    y = einsum(x, mu) + einsum(x * s_in, sigma * eps) * s_out
      = einsum(x, mu + (sigma * eps) * E_b),   E_b = s_in[b, x & w axes] s_out[b, y & w axes]

so each example sees one exact kernel draw (pseudo-independent of the other examples) shared by
its positions, as the model does. That factorisation exists when the batch axis appears in the
output and not in the kernel, which holds for every equation of a batched projection
(``"abc,cd->abd"``, MultiHeadAttention's ``"abc,cde->abde"`` and ``"abcd,cde->abe"``). For
another equation a Flipout layer takes the reparameterisation draw (one kernel draw per call)
instead; `EinsumDenseFlipout.flipout_factorizes` says which.

The S-sample path is one einsum over the S stacked kernels: ``"z" + x_spec, "z" + w_spec ->
"z" + y_spec`` on the sample-major input reshaped to [S, B, ...].

MultiHeadAttention is tf_keras' own layer (masks, ``attention_mask``, ``use_causal_mask``,
``return_attention_scores``, ``attention_axes``, dropout on the scores unchanged) whose query,
key, value and output projections are built as Bayesian EinsumDense layers; each adds its KL
once per forward pass.

Example:
    >>> dense = tfp_bnn.layers.EinsumDenseFlipout("abc,cd->abd", output_shape=(None, 8),
    ...                                           bias_axes="d")
    >>> dense(tf.ones([2, 5, 4])).shape
    TensorShape([2, 5, 8])
    >>> mha = tfp_bnn.layers.MultiHeadAttentionFlipout(num_heads=2, key_dim=4, kl_weight=1 / 5000)
    >>> x = tf.ones([2, 5, 6])
    >>> mha(x, x).shape, len(mha.losses)
    (TensorShape([2, 5, 6]), 4)

References:
    Wen et al., "Flipout", ICLR 2018.
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
"""
import string

from tfp_bnn import options
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn.bayesian import register
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.kernel_layer import (UNSUPPORTED_OPTIONS, KernelLayer, drop_weight_options,
                                  refuse_weight_options)

__all__ = ["EinsumDenseFlipout", "EinsumDenseReparameterization", "MultiHeadAttentionFlipout",
           "MultiHeadAttentionReparameterization"]


def _split_equation(equation):
    inputs, output = equation.replace(" ", "").split("->")
    x_spec, w_spec = inputs.split(",")
    return x_spec, w_spec, output


class _EinsumDense(KernelLayer):
    mc_single_trace = False  # one batched einsum, no loop

    def _uses_bias(self):
        return self.bias_axes is not None

    def _analyze(self, input_shape):
        from tf_keras.src.layers.core.einsum_dense import _analyze_einsum_string

        return _analyze_einsum_string(self.equation, self.bias_axes, input_shape,
                                      self.partial_output_shape)

    def _kernel_shapes(self, input_shape):
        kernel, _, self.full_output_shape = self._analyze(input_shape)
        return {"kernel": tuple(kernel)}

    def _bias_shape(self, input_shape):
        return tuple(self._analyze(input_shape)[1])

    def _stages(self):
        return [("kernel", lambda x, k: tf.einsum(self.equation, x, k))]

    def _add_bias(self, outputs, bias):
        return outputs + bias

    @property
    def flipout_factorizes(self):
        """Whether this equation's kernel noise factors into per-example input and output
        signs (see the module docstring)."""
        return self._flipout_factorizes()

    def _flipout_factorizes(self):
        x_spec, w_spec, y_spec = _split_equation(self.equation)
        if x_spec.startswith("..."):
            return "..." in y_spec
        return x_spec[0] in y_spec and x_spec[0] not in w_spec

    def _sign_shape(self, t, side):
        x_spec, w_spec, y_spec = _split_equation(self.equation)
        spec = x_spec if side == "in" else y_spec
        shape = [tf.shape(t)[0]] + [1] * (t.shape.rank - 1)
        # Named axes from the right: '...' covers the batch and any axes between.
        named = spec.replace("...", "")
        offset = t.shape.rank - len(named)
        for i, letter in enumerate(named):
            if letter in w_spec and offset + i > 0:
                shape[offset + i] = t.shape[offset + i]
        return tf.stack(shape)

    def _sample_op(self, xs, kernels, bias, rows=(None, None)):
        x_spec, w_spec, y_spec = _split_equation(self.equation)
        z = next(c for c in string.ascii_letters if c not in self.equation)
        out = tf.einsum(f"{z}{x_spec},{z}{w_spec}->{z}{y_spec}", xs, kernels["kernel"])
        if bias is not None:
            if self._has_bias_noise():  # [S, *bias]: line it up with [S, B, ..., *bias]
                bias = tf.reshape(bias, tf.concat(
                    [[tf.shape(bias)[0]], [1] * (out.shape.rank - bias.shape.rank),
                     tf.shape(bias)[1:]], 0))
            out = out + bias
        return self.activation(out) if self.activation is not None else out


_DOC = """EinsumDense with a mean-field kernel posterior, trained by {estimator}.

The tf_keras ``EinsumDense`` constructor (equation, output_shape, activation, bias_axes,
initializers), plus ``prior``, ``posterior``, ``kl_weight`` and ``seed``; see `tfp_bnn.attention`
for the Flipout sign rule.
"""


@register
class EinsumDenseFlipout(_EinsumDense, tf_keras.layers.EinsumDense):
    __doc__ = _DOC.format(estimator="Flipout (signs per example over the kernel's axes)")
    _flipout = True


@register
class EinsumDenseReparameterization(_EinsumDense, tf_keras.layers.EinsumDense):
    __doc__ = _DOC.format(estimator="reparameterisation (one kernel draw per call)")


class _BayesianAttention:
    """tf_keras MultiHeadAttention whose projections are `_dense_cls` layers."""

    _dense_cls = None

    def __init__(self, *args, prior="normal", posterior=None, kl_weight=1.0, seed=None,
                 **kwargs):
        refuse_weight_options(type(self).__name__, kwargs)
        super().__init__(*args, **kwargs)
        self.prior = priors_lib.get(prior)
        self.posterior = posteriors_lib.get(posterior)
        self.base_kl_weight = options.number("kl_weight", kl_weight, 0.0, strict=True)
        self.seed = seed

    def _build_from_signature(self, query, value, key=None):
        """Keras' projections, then each replaced by its Bayesian twin and built (so that a
        loaded model finds their variables before its first call)."""
        super()._build_from_signature(query, value, key)
        value_shape = self._value_shape
        with tf.init_scope():
            for i, (attr, shape) in enumerate((
                    ("_query_dense", self._query_shape), ("_key_dense", self._key_shape),
                    ("_value_dense", value_shape),
                    ("_output_dense", self._query_shape[:-1].concatenate(
                        [self._num_heads, self._value_dim])))):
                config = getattr(self, attr).get_config()
                for option in UNSUPPORTED_OPTIONS:
                    config.pop(option, None)
                dense = self._dense_cls(
                    **config, prior=self.prior, posterior=self.posterior,
                    kl_weight=self.base_kl_weight,
                    seed=None if self.seed is None else self.seed + 1000 * i)
                # Keras scopes a layer's variables in __call__; a direct build needs it here
                # ('query/kernel_posterior_loc', as Keras' projections are named).
                with tf.name_scope(f"{self.name}/{dense.name}/"):
                    dense.build(shape)
                setattr(self, attr, dense)

    def projections(self):
        """The query, key, value and output `EinsumDense` layers (built on the first call)."""
        return [self._query_dense, self._key_dense, self._value_dense, self._output_dense]

    def init_from_weights(self, weights, posterior=None):
        """Posterior means (and scales) from a Keras MultiHeadAttention's ``get_weights()``:
        its kernel[, bias] per projection, in query, key, value, output order."""
        start = 0
        for dense in self.projections():
            n = len(dense.weight_posteriors())
            dense.init_from_weights(weights[start:start + n], posterior)
            start += n
        if start != len(weights):
            raise ValueError(f"Layer {self.name!r} expects {start} source weights. "
                             f"Received: {len(weights)} arrays")

    @classmethod
    def from_config(cls, config):
        # Keras' from_config pops the shapes out of the dict it is given: give it a copy.
        return super().from_config(dict(config))

    def get_config(self):
        config = drop_weight_options(super().get_config())
        for key in ("query_shape", "key_shape", "value_shape"):
            if config.get(key) is not None:  # plain lists: the config stays JSON
                config[key] = tf.TensorShape(config[key]).as_list()
        config.update({"prior": priors_lib.serialize(self.prior),
                       "posterior": self.posterior.get_config(),
                       "kl_weight": self.base_kl_weight, "seed": self.seed})
        return config


_MHA_DOC = """tf_keras MultiHeadAttention with Bayesian query/key/value/output projections
(`{dense}`).

The tf_keras constructor (num_heads, key_dim, value_dim, dropout, use_bias, output_shape,
attention_axes, initializers), plus ``prior``, ``posterior``, ``kl_weight`` and ``seed`` for
the projections; calls, masks and ``return_attention_scores`` as Keras'.
"""


@register
class MultiHeadAttentionFlipout(_BayesianAttention, tf_keras.layers.MultiHeadAttention):
    __doc__ = _MHA_DOC.format(dense="EinsumDenseFlipout")
    _dense_cls = EinsumDenseFlipout


@register
class MultiHeadAttentionReparameterization(_BayesianAttention,
                                           tf_keras.layers.MultiHeadAttention):
    __doc__ = _MHA_DOC.format(dense="EinsumDenseReparameterization")
    _dense_cls = EinsumDenseReparameterization


# {Bayesian class name: the tf_keras class it stands in for}: what bayesify maps.
KERAS_EQUIVALENT = {cls.__name__: parent for cls, parent in (
    (EinsumDenseFlipout, "EinsumDense"), (EinsumDenseReparameterization, "EinsumDense"),
    (MultiHeadAttentionFlipout, "MultiHeadAttention"),
    (MultiHeadAttentionReparameterization, "MultiHeadAttention"))}
