"""S weight draws of a convolution as one op: the samples folded into the channels.

A Bayesian convolution in `tfp_bnn.sampling.Mode.SAMPLE` applies kernel draw s to copy s of
the batch. A convolution cannot take S kernels at once, but a grouped convolution can: fold the
S copies into the channel axis and the S kernel draws into the output channels,

    x [S, B, ..., C]      ->  [B, ..., S*C]               (the copies side by side)
    W_s [k..., C/g, F]    ->  [k..., C/g, S*F]            (groups g -> S*g)
    y = conv(x, W; groups = S*g)  [B, ..., S*F]  ->  [S, B, ..., F]

so group s*g + j of the folded op is group j of copy s with kernel s: exactly the S
convolutions, in one call. A depthwise kernel [k..., C, m] folds on its channel axis instead
([k..., S*C, m]); a separable convolution stays folded between its two stages; biases and the
activation act on the folded channels. Transposes in and out cost one pass over the activations.

Otherwise (3D and transposed convolutions, which TF's CPU kernels cannot group; channels-first
data; unknown spatial sizes; large per-example work) the S draws run as one ``tf.map_fn``.

Measured on 2 CPU cores (TF 2.21, S = 10, 3x3 kernels, op time in one tf.function; ms):

    B, H, C -> F              map_fn   folded
    1, 16, 16 -> 16           1.42     0.87
    32, 16, 16 -> 16          3.82     2.79
    256, 16, 16 -> 16         23.5     20.8
    128, 28, 32 -> 64         171      204

so the folded op is used up to `FOLD_MAX_MACS` multiply-adds per example and draw, and up to
`FOLD_MAX_ROWS` rows per copy (a layer declares that bound as its
`tfp_bnn.sampling.StochasticLayer.mc_rows_threshold`, so an export traces the small-batch regime
apart; with B unknown at trace time the loop is taken).

With `tfp_bnn.sampling.Noise.SHARED` (opt-in), `shared_stages` draws one perturbation per
kernel for all S*B rows and flips it per row with Flipout signs (Wen et al. 2018), channel-wise:

    h' = f(h, mu) + f(h * a_r, sigma * E) * b_r,   a_r, b_r in {-1, 1}^channels per row r

(K normals instead of S x K; the copies pseudo-independent, see `tfp_bnn.matmuls.shared_matmul`).

Example:
    >>> xs = tf.random.normal([3, 2, 5, 5, 4])                     # S=3 copies of B=2
    >>> kernels = tf.random.normal([3, 3, 3, 4, 6])               # S=3 draws of [3, 3, 4, 6]
    >>> conv = lambda x, k: tf.nn.convolution(x, k, padding="SAME")
    >>> y = sample_stages(xs, [("kernel", conv)], {"kernel": kernels}, None,
    ...                   lambda out, b: out, {"kernel": -1})
    >>> loop = tf.stack([conv(xs[s], kernels[s]) for s in range(3)])
    >>> y.shape, bool(tf.reduce_max(tf.abs(y - loop)) < 1e-4)
    (TensorShape([3, 2, 5, 5, 6]), True)
"""
import math

from tfp_bnn import sampling
from tfp_bnn._keras import tf

__all__ = ["sample_stages", "flipout_stages", "shared_stages",
           "channel_sign_shape", "FOLD_MAX_MACS", "FOLD_MAX_ROWS",
           "rows_threshold"]

# Per example and draw; above it the S separate convolutions of the map_fn are cheaper (their
# kernels are better tiled than one wide grouped kernel).
FOLD_MAX_MACS = 8_000_000
# Rows per copy: for larger batches the two transposes of every activation cost more than the
# loop saves (MobileNet-style CNN, B = 256: folded 36x the deterministic call, the loop ~10x).
FOLD_MAX_ROWS = 16


def sample_stages(xs, stages, kernels, bias, finish, fold_axes=None, channels_last=True,
                  rows=(None, None)):
    """``[S, B, ...]`` outputs of a chain of convolution stages, kernel draw s on copy s.

    Args:
        xs: the sample-major inputs as ``[S, B, ..., C]``.
        stages: ``[(kernel name, f(x, kernel))]``; each f must accept folded channels (a
            convolution infers its groups from the input and kernel channels).
        kernels: ``{name: [S, *kernel shape]}``, the S draws of every kernel.
        bias: None, a deterministic ``[F]`` tensor or S draws ``[S, F]``.
        finish: ``finish(outputs, bias)``: bias and activation of the layer (channels last).
        fold_axes: ``{name: axis}``, the kernel axis the draws fold into (-1: output channels
            of a regular or grouped kernel; -2: the channels of a depthwise kernel), or None
            when the op cannot be folded.
        channels_last: the layer's data format.
        rows: static bounds ``(lo, hi)``, lo <= B < hi, on the rows per copy
            (`tfp_bnn.sampling.Context.rows`); the op folds only for B <= `FOLD_MAX_ROWS`.

    Returns:
        ``[S, B, ..., F]``.
    """
    if fold_axes is not None and channels_last and _few_rows(xs, rows) and _small(xs, kernels):
        return _folded(xs, stages, kernels, bias, finish, fold_axes)
    return _loop(xs, stages, kernels, bias, finish)


def rows_threshold(fold_axes, channels_last):
    """The `tfp_bnn.sampling.StochasticLayer.mc_rows_threshold` of a layer whose S draws go
    through `sample_stages`: B from which it loops, or None when it never folds."""
    return FOLD_MAX_ROWS + 1 if fold_axes is not None and channels_last else None


def _few_rows(xs, rows):
    """Whether B <= `FOLD_MAX_ROWS` is known at trace time."""
    return sampling.few_rows(xs.shape[1], rows, FOLD_MAX_ROWS)


def _small(xs, kernels):
    """Whether the per-example work is known and at most `FOLD_MAX_MACS`."""
    spatial = xs.shape[2:-1]
    if xs.shape[-1] is None or not spatial.is_fully_defined():
        return False
    positions = math.prod(spatial.as_list())
    kernel_macs = sum(math.prod(k.shape[1:].as_list()) for k in kernels.values())
    return positions * kernel_macs <= FOLD_MAX_MACS


def _swap(x, lead, middle):
    """[A, B, C] -> [B, A, C] of ``x`` viewed as [lead, middle, rest]: an Einsum, not a
    Transpose, whose oneDNN kernel took ~90 us for 5k numbers on the CPU (Einsum: ~10 us)."""
    return tf.einsum("abc->bac", tf.reshape(x, tf.stack([lead, middle, -1])))


def _fold_kernel(kernel, axis):
    """[S, d_1, ..., d_n] -> [d_1, ..., S*d_a, ..., d_n] with the draws next to axis a."""
    a = kernel.shape.rank - 1 + axis
    dims = kernel.shape[1:].as_list()
    folded = _swap(kernel, tf.shape(kernel)[0], math.prod(dims[:a]))
    return tf.reshape(folded, dims[:a] + [-1] + dims[a + 1:])


def _folded(xs, stages, kernels, bias, finish, fold_axes):
    shape = tf.shape(xs)
    s, channels = shape[0], xs.shape[-1]
    # [S, B, sp..., C] -> [B*sp, S, C] -> [B, sp..., S*C]
    x = tf.reshape(_swap(xs, s, tf.reduce_prod(shape[1:-1])),
                   tf.concat([shape[1:-1], [s * channels]], 0))
    for name, f in stages:
        x = f(x, _fold_kernel(kernels[name], fold_axes[name]))
    if bias is not None:
        bias = tf.reshape(bias, [-1]) if bias.shape.rank == 2 else tf.tile(bias, [s])
    x = finish(x, bias)
    # [B, sp'..., S*F] -> [S, B*sp', F] -> [S, B, sp'..., F]
    last = kernels[stages[-1][0]]
    out_channels = last.shape[-1]
    if fold_axes[stages[-1][0]] == -2:  # depthwise: C*m outputs per copy
        out_channels *= last.shape[-2]
    out_shape = tf.shape(x)
    y = _swap(x, tf.reduce_prod(out_shape[:-1]), s)
    return tf.reshape(y, tf.concat([[s], out_shape[:-1], [out_channels]], 0))


def _loop(xs, stages, kernels, bias, finish):
    names = sorted(kernels)
    per_sample_bias = bias is not None and bias.shape.rank == 2
    elems = (xs, [kernels[n] for n in names]) + ((bias,) if per_sample_bias else ())

    def one_sample(a):
        x, draws = a[0], dict(zip(names, a[1]))
        for name, f in stages:
            x = f(x, draws[name])
        # Op + BiasAdd + activation in the loop body: Grappler fuses them as in Keras.
        return finish(x, a[2] if per_sample_bias else bias)

    return tf.map_fn(one_sample, elems, fn_output_signature=xs.dtype)


def flipout_stages(x, stages, locs, deltas, signs):
    """Flipout through a chain of stages (Wen et al. 2018), pre-bias:

        h' = f(h, mu) + f(h * signs(h, "in", 2i), delta) * signs(p, "out", 2i + 1)   stage i

    with p the perturbation term. The training call of a layer (one draw, signs per example)
    and `Noise.SHARED` (one draw for all S*B rows, `shared_stages`) both run it.

    Args:
        x: [rows, ...] inputs.
        stages: ``[(kernel name, f(x, kernel))]``, each linear in its kernel and channel-wise.
        locs, deltas: ``{name: tensor}``, the means and the perturbation (sigma * E) of every
            kernel.
        signs: ``signs(t, side, salt)``: Rademacher signs broadcastable to ``t``, one per row
            and channel (``side`` "in" or "out"; ``salt`` numbers the draw).
    """
    for i, (name, f) in enumerate(stages):
        perturbation = f(x * signs(x, "in", 2 * i), deltas[name])
        x = f(x, locs[name]) + perturbation * signs(perturbation, "out", 2 * i + 1)
    return x


def shared_stages(x, ctx, stages, locs, deltas, sign_shape):
    """`Noise.SHARED`: `flipout_stages` over the sample-major rows ``x`` [S*B, ...] with one
    perturbation ``deltas[name]`` per kernel and the signs from ``ctx``'s stream.

    ``sign_shape(t, side)``: the shape of the signs of stage tensor ``t`` (one per row and
    channel; `channel_sign_shape` for convolutions).
    """
    return flipout_stages(x, stages, locs, deltas, lambda t, side, salt: ctx.rademacher(
        sign_shape(t, side), t.dtype, ctx.next_index()))


def channel_sign_shape(t, channel_axis=-1):
    """[rows, 1, ..., C, ..., 1]: one sign per row and channel of ``t``."""
    axis = channel_axis % t.shape.rank
    shape = [tf.shape(t)[0]] + [1] * (t.shape.rank - 1)
    shape[axis] = t.shape[axis] if t.shape[axis] is not None else tf.shape(t)[axis]
    return tf.stack(shape)
