"""Gaussian matmuls: S samples of ``x W_s + b_s`` in output space or weight space.

Every Gaussian matmul of the package (the VI Dense layers, SWAG, Laplace) samples through
`gaussian_matmul`, which makes the one output-space / weight-space choice per layer and batch
size from static shapes (`output_space_threshold`), and through `shared_matmul` under
`Noise.SHARED` (one perturbation, Flipout sign flips per row) where
`tfp_bnn.sampling.shared_pays`:

    output space (local reparameterisation):  y = x mu + sqrt(x^2 sigma^2) * z,   z ~ N(0, I)
    weight space:                             y_s = x_s (mu + sigma * E_s),     E_s ~ N(0, I)
    shared:                                   y = x mu + ((x * r) (sigma * E)) * s,  one E

Rows are sample-major (`tfp_bnn.sampling`): copy s of the batch uses draw s.

Example:
    >>> x = tf.ones([2 * 3, 4])                        # S = 2 copies of a batch of 3
    >>> kernel = Gaussian(tf.zeros([4, 5]), lambda: tf.ones([4, 5]))
    >>> with sampling.mc_sampling(2, seed=tf.constant([0, 1], tf.int64)) as ctx:
    ...     y = gaussian_matmul(x, ctx, kernel)
    >>> y.shape
    TensorShape([6, 5])

References:
    Kingma, Salimans & Welling, "Variational Dropout and the Local Reparameterization Trick",
    NeurIPS 2015.
    Wen et al., "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches",
    ICLR 2018.
"""
import math

from tfp_bnn import sampling
from tfp_bnn._keras import tf
from tfp_bnn.options import Noise

__all__ = ["Gaussian", "gaussian_matmul", "output_space_threshold", "shared_matmul"]

# CPU cost of one standard-normal draw and of one multiply-add, in elementwise-op units
# (measured with TF 2.21 on 2 cores: ~10 ns per normal, ~1 ns per element, ~0.15 ns per MAC).
_NORMAL_COST, _MAC_COST = 10.0, 0.15


def output_space_threshold(in_dim, out_dim):
    """Rows per sample B from which weight space is cheaper than output space.

    Per sample, output space costs B*out normals, B*in squares and 2*B*in*out multiply-adds;
    weight space in*out normals, 2*in*out elementwise ops to build the kernel and B*in*out
    multiply-adds. They cost the same at

        B* = in*out*(c_normal + 2) / (c_normal*out + in + c_mac*in*out)

    (B* is about ``in`` for narrow layers, far below it for wide ones such as a Dense on a
    flattened image, where the squares and the second matmul dominate).
    """
    cost_per_row = _NORMAL_COST * out_dim + in_dim + _MAC_COST * in_dim * out_dim
    return max(1, math.ceil(in_dim * out_dim * (_NORMAL_COST + 2) / cost_per_row))


class Gaussian:
    """A weight tensor ``W_s = loc + shift_s + scale * E``, ``E ~ N(0, I)`` per sample s.

    Args:
        loc: the mean, [in, out] (a kernel) or [out] (a bias).
        scale: a callable returning sigma (same shape as ``loc``), or None (no noise).
        variance: a callable returning sigma^2; defaults to ``scale()^2``. Callables, so that
            a graph builds only the one the chosen code path uses.
        shift: an optional per-sample offset [S, *loc.shape] (SWAG's low-rank term).
    """

    def __init__(self, loc, scale=None, variance=None, shift=None):
        self.loc, self.shift = loc, shift
        self.scale = scale
        self.variance = variance or (lambda: tf.square(scale()))


def gaussian_matmul(x, ctx, kernel, bias=None):
    """S samples of ``x W_s + b_s`` for the sample-major rows of ``x``: [S*B, in] -> [S*B, out].

    Two exact ways, chosen by cost (`output_space_threshold`) for rank-2 ``x``:

        weight space:  W_s = loc + shift_s + sigma * E_s, one [in, out] draw per sample
        output space:  x W_s ~ N(x (loc + shift_s), x^2 sigma^2 + sigma_b^2) per row (local
                       reparameterisation: every example its own draw, examples independent)

    The choice is static when ``x``'s batch or ``ctx.rows`` settle it, else a tf.cond. Rank > 2
    (``[S*B, ..., in]``) always takes weight space: the positions of one example share a kernel.
    The draw indices are reserved before the choice, so a seeded result does not depend on the
    path a trace took.

    Args:
        x: sample-major inputs.
        ctx: the active `tfp_bnn.sampling.Context` (SAMPLE mode).
        kernel: `Gaussian` [in, out].
        bias: None, a deterministic [out] tensor, or a `Gaussian` [out].

    Returns:
        The pre-activations ``[S*B, ..., out]``.
    """
    index = ctx.next_index(), ctx.next_index(), ctx.next_index()
    if x.shape.rank != 2:
        return _weight_space(x, ctx, kernel, bias, index)
    in_dim, out_dim = kernel.loc.shape
    s = ctx.num_samples
    lo, hi = ctx.rows
    rows, s_static = x.shape[0], s if isinstance(s, int) else tf.get_static_value(s)
    if rows is not None and s_static is not None:  # eager, or a fully static graph
        lo, hi = rows // s_static, rows // s_static + 1
    threshold = output_space_threshold(in_dim, out_dim)
    if hi is not None and hi <= threshold:
        return _output_space(x, ctx, kernel, bias, index)
    if lo is not None and lo >= threshold:
        return _weight_space(x, ctx, kernel, bias, index)
    return tf.cond(tf.shape(x)[0] < s * threshold,
                   lambda: _output_space(x, ctx, kernel, bias, index),
                   lambda: _weight_space(x, ctx, kernel, bias, index))


def _output_space(x, ctx, kernel, bias, index):
    s = ctx.num_samples
    mean = tf.matmul(x, kernel.loc)
    if kernel.shift is not None:
        in_dim, out_dim = kernel.loc.shape
        mean += tf.reshape(tf.matmul(tf.reshape(x, tf.stack([s, -1, in_dim])), kernel.shift),
                           [-1, out_dim])
    var = tf.matmul(tf.square(x), kernel.variance())
    noisy_bias = isinstance(bias, Gaussian) and bias.scale is not None
    if noisy_bias:
        var = tf.nn.bias_add(var, bias.variance())
    out = mean + tf.sqrt(var) * ctx.normal(tf.shape(mean), x.dtype, index[0], large=False)
    # The bias comes last, as a BiasAdd after the noise: MatMul + BiasAdd + AddV2 + Relu is a
    # pattern Grappler's remapper fuses into a node it cannot build on CPU (TF 2.21: "Node ...
    # has an empty op name", and the whole function goes unoptimised).
    if isinstance(bias, Gaussian):
        out = tf.nn.bias_add(out, bias.loc)
        if bias.shift is not None:
            out = sampling.add_per_copy(out, bias.shift, s)
    elif bias is not None:
        out = tf.nn.bias_add(out, bias)
    return out


def _weight_space(x, ctx, kernel, bias, index):
    if ctx.noise is Noise.SHARED and kernel.shift is None and sampling.shared_pays(x, ctx):
        return shared_matmul(x, ctx, kernel, bias, index)
    s = ctx.num_samples
    in_dim, out_dim = kernel.loc.shape
    w = kernel.loc + kernel.scale() * ctx.normal([s, in_dim, out_dim], x.dtype, index[1])
    if kernel.shift is not None:
        w += kernel.shift
    out = tf.matmul(tf.reshape(x, tf.stack([s, -1, in_dim])), w)  # [S, M, out]
    if isinstance(bias, Gaussian):
        b = bias.loc
        if bias.scale is not None:
            b = b + bias.scale() * ctx.normal(tf.stack([s, out_dim]), x.dtype, index[2])
        if bias.shift is not None:
            b = b + bias.shift
        out += b[:, tf.newaxis, :] if b.shape.rank == 2 else b
    # Back to sample-major rows: [S*B, out], or [S*B, ..., out] for higher rank.
    lead = ([-1] if x.shape.rank == 2 else
            [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])])
    out = tf.reshape(out, tf.stack(lead + [out_dim]) if len(lead) > 1 else [-1, out_dim])
    if bias is not None and not isinstance(bias, Gaussian):
        out = tf.nn.bias_add(out, bias)
    return out


def shared_matmul(x, ctx, kernel, bias, index):
    """`Noise.SHARED`: one kernel perturbation for all S*B rows, sign-flipped per row (Flipout).

        y_r = x_r mu + ((x_r * a_r) (sigma * E)) * b_r,   E ~ N(0, I) [in, out] once per pass,
        a_r in {-1, 1}^in, b_r in {-1, 1}^out per row r (per example of a [S*B, ..., in] input)

    Row r uses the kernel ``mu + sigma * E * a_r b_r^T``, an exact posterior draw for any fixed
    signs (Wen et al. 2018); the copies are pseudo-independent: uncorrelated pre-activations,
    but one E. Costs in*out normals instead of S*in*out. A Bayesian bias keeps S exact draws.
    """
    in_dim, out_dim = kernel.loc.shape
    delta = kernel.scale() * ctx.normal([in_dim, out_dim], x.dtype, index[1])
    sign_shape = tf.concat([tf.shape(x)[:1], [1] * (x.shape.rank - 2), [in_dim + out_dim]], 0)
    signs_in, signs_out = tf.split(ctx.rademacher(sign_shape, x.dtype, index[1]),
                                   [in_dim, out_dim], axis=-1)
    out = _matmul(x, kernel.loc) + _matmul(x * signs_in, delta) * signs_out
    if isinstance(bias, Gaussian):
        s = ctx.num_samples
        b = bias.loc
        if bias.scale is not None:
            b = b + bias.scale() * ctx.normal(tf.stack([s, out_dim]), x.dtype, index[2])
            out = sampling.add_per_copy(out, b, s)
        else:
            out = tf.nn.bias_add(out, b)
    elif bias is not None:
        out = tf.nn.bias_add(out, bias)
    return out


def _matmul(x, w):
    return tf.matmul(x, w) if x.shape.rank == 2 else tf.tensordot(x, w, [[x.shape.rank - 1], [0]])
