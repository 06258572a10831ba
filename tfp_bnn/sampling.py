"""The stochastic-layer protocol and vectorised Monte Carlo through a whole model.

Every layer whose output is random at inference (the Bayesian Dense/Conv/RNN layers, MC
dropout, ensemble members, SWAG, Laplace) is a `StochasticLayer`: its ``call`` reads the active
`Context` and dispatches on its `Mode`:

    no context  -> plain_call(inputs)         an ordinary Keras call (training: one draw)
    Mode.MEAN   -> mean_call(inputs)          the posterior mean, deterministic
    Mode.SAMPLE -> sample_call(inputs, ctx)   S draws over S sample-major copies [S*B, ...]

The input batch is tiled sample-major to ``[S*B, ...]`` and the model is called once inside
`mc_sampling(S)`; the result is reshaped to ``[S, B, ...]``:

    y_s = f(x; w_s),  w_s ~ q(w) independently for s = 1..S

Layers that are not stochastic act on the ``S*B`` rows as on any batch (batch norm uses its
moving statistics). Why not simply tile the batch through the layers as they are: a
DenseReparameterization layer draws one kernel per call, so all S copies would share it
(variance exactly zero), and Flipout copies are only pseudo-independent.

A layer declares what `sample_outputs` needs to know through the protocol, never through
ad-hoc attributes: `StochasticLayer.mc_single_trace` and `StochasticLayer.mc_rows_threshold`.
Every Gaussian matmul (VI Dense, SWAG, Laplace) samples through
`tfp_bnn.matmuls.gaussian_matmul`, which makes the one output-space / weight-space choice.

Example:
    >>> model = tfp_bnn.bayesify(tf_keras.Sequential([tf_keras.Input((2,)),
    ...                                               tf_keras.layers.Dense(3)]), kl_weight=1.0)
    >>> x, seed = tf.ones([4, 2]), tf.constant([0, 1], tf.int64)
    >>> with mc_sampling(10, seed=seed):
    ...     y = model(tf.tile(x, [10, 1]))          # [10 * B, ...]: copy s uses draw s
    >>> sample_outputs(model, x, 10, seed=seed).shape
    TensorShape([10, 4, 3])
    >>> a, b = sample_outputs(model, x, 10, seed), sample_outputs(model, x, 10, seed)
    >>> bool(tf.reduce_all(a == b))                 # seeded: reproducible
    True
    >>> is_stochastic(model), [type(l).__name__ for l in stochastic_layers(model)]
    (True, ['DenseFlipout'])
"""
import contextlib
import functools
import math
import threading

from tfp_bnn import copies, options
from tfp_bnn._keras import tf
from tfp_bnn.options import Mode, Noise

__all__ = ["Mode", "Noise", "Context", "StochasticLayer", "mc_sampling", "current",
           "stochastic_layers", "is_stochastic", "sample_outputs", "mean_outputs",
           "standard_normal", "few_rows", "shared_pays", "add_per_copy", "split_copies",
           "merge_copies", "SHARED_MAX_ROWS", "FRESH"]

_STATE = threading.local()

# seed=FRESH: fresh random numbers in every process, whatever the global seed was when the graph
# was traced (a SavedModel's replicas must not replay one stream).
FRESH = "fresh"


class Context:
    """What the stochastic layers of one model call compute (see `mc_sampling`).

    Attributes:
        num_samples: S, a Python int or a scalar int32 tensor.
        seed: None, an int64 [2] tensor (stateless draws) or `FRESH`.
        mode: `Mode.SAMPLE` or `Mode.MEAN`.
        variances: ``{id(layer): (kernel variance, bias variance or None)}``: sigma^2 computed
            once by the caller (the export), used instead of the layers' softplus(rho)^2.
        rows: static bounds ``(lo, hi)``, lo <= B < hi, on the rows per sample (None: unknown):
            a layer whose best code path depends on B decides at trace time when they settle it.
        noise: `Noise.EXACT` (S independent weight draws) or `Noise.SHARED` (one weight
            perturbation per pass, Flipout signs per row; see `shared_matmul`).
    """

    def __init__(self, num_samples, seed=None, mode=Mode.SAMPLE, variances=None,
                 rows=(None, None), noise=Noise.EXACT):
        self.num_samples = num_samples
        self.seed = seed
        self.mode = options.choice("mode", mode, Mode)
        self.noise = options.choice("noise", noise, Noise)
        self.variances = variances or {}
        self.rows = rows
        self._draws = 0

    def next_index(self):
        """Reserve a draw index: a layer choosing between code paths (tf.cond branches, or a
        static choice when shapes are known) gives both the same stream, so a seeded result does
        not depend on which path a trace took."""
        self._draws += 1
        return self._draws

    def normal(self, shape, dtype, index=None, large=True):
        """A standard-normal draw; stateless (reproducible) when the context has a seed.

        ``large``: by Box-Muller (`standard_normal`), which pays for its larger graph on draws
        of thousands of numbers (weights); False: TF's normal op (a few numbers per row).
        """
        seed = self._seed(self.next_index() if index is None else index)
        if large:
            return standard_normal(shape, dtype, seed)
        if isinstance(seed, tuple):
            return tf.raw_ops.RandomStandardNormal(shape=shape, dtype=dtype, seed=seed[0],
                                                   seed2=seed[1])
        return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)

    def rademacher(self, shape, dtype, index):
        """Random signs +-1 from the stream of draw ``index`` (a stream apart from its normals)."""
        seed = self._seed(index, _SIGN_STREAM)
        if isinstance(seed, tuple):
            bits = tf.raw_ops.RandomUniformInt(shape=shape, minval=tf.constant(0),
                                               maxval=tf.constant(2), seed=seed[0],
                                               seed2=seed[1])
        else:
            bits = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32)
        return tf.cast(2 * bits - 1, dtype)

    def _seed(self, index, stream=0):
        """The seed of draw ``index``: op seeds ``(seed, seed2)`` without a context seed, else the
        context's seed folded with ``index`` (and ``stream``, when not 0) for stateless ops.

        Op seeds: ``(0, 0)`` for FRESH or when no global seed is set, which TF replaces by a
        random seed per kernel instance, for every stream (a non-zero ``seed2`` alone would fix
        the stream: every process and every sign op would replay one sequence); under a global
        seed, the op seed TF derives, offset by ``stream``."""
        if self.seed is None or isinstance(self.seed, str):
            seed, seed2 = (0, 0) if self.seed == FRESH else tf.compat.v1.get_seed(None)
            if not seed and not seed2:
                return 0, 0  # a random seed per kernel: every stream apart already
            return seed or 0, (seed2 or 0) + stream
        seed = tf.random.experimental.stateless_fold_in(self.seed, index)
        return tf.random.experimental.stateless_fold_in(seed, stream) if stream else seed


_SIGN_STREAM = 7919  # folded into a draw's seed for its signs


def standard_normal(shape, dtype, seed):
    """N(0, 1) draws by Box-Muller from uniforms: about half the CPU cost of TF's normal ops.

        z_1 = r cos(2 pi u_2),  z_2 = r sin(2 pi u_2),  r = sqrt(-2 log(1 - u_1)),  u ~ U[0, 1)

    gives two independent standard normals per pair of uniforms (exact for exact uniforms; the
    float32 uniforms' 2^-23 grid truncates |z| at about 5.6, as TF's own normal kernels do).
    Measured on 2 CPU cores (TF 2.21, 10k draws): 4.6 ns per normal against 9.4 ns for
    ``tf.random.stateless_normal`` and 9.2 ns for ``tf.random.normal``, whose kernels transform
    one sample at a time; Monte Carlo through a model is bound by these draws (S x kernel size).

    Args:
        shape: the output shape (a list or an int32 tensor).
        dtype: a float dtype; half precision is drawn in float32 and cast.
        seed: an int64 [2] tensor (stateless, reproducible), or a pair of Python ints as op
            seeds (``(0, 0)``: a random seed per kernel instance; None entries count as 0).

    Example:
        >>> z = standard_normal([100000], tf.float32, tf.constant([1, 2], tf.int64))
        >>> round(float(tf.math.reduce_mean(z)), 1), round(float(tf.math.reduce_std(z)), 1)
        (0.0, 1.0)
    """
    dtype = tf.as_dtype(dtype)
    draw = dtype if dtype in (tf.float32, tf.float64) else tf.float32
    size = tf.reduce_prod(tf.cast(shape, tf.int32)) if not isinstance(shape, (list, tuple)) \
        else math.prod(shape) if all(isinstance(d, int) for d in shape) \
        else tf.reduce_prod(tf.stack(shape))
    # A static even factor (a kernel's [S, in, out] with in * out even) makes the size even: no
    # slice of the last number, the same numbers with fewer ops in a served graph.
    even = isinstance(shape, (list, tuple)) and any(isinstance(d, int) and d % 2 == 0
                                                    for d in shape)
    half = (size + 1) // 2
    if isinstance(seed, tuple):
        u = tf.raw_ops.RandomUniform(shape=tf.stack([2, half]), dtype=draw, seed=seed[0] or 0,
                                     seed2=seed[1] or 0)
    else:
        u = tf.random.stateless_uniform(tf.stack([2, half]), seed=seed, dtype=draw)
    u1, u2 = tf.unstack(u)
    # log(1 - u), not log1p(-u): Grappler fuses Neg + Log1p into a _UnaryOpsComposition node
    # that took ~80 us for 6k numbers on the CPU (Sub + Log: ~15 us); 1 - u is exact here.
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u1))
    # sin(t) = cos(t - pi/2): both halves from one Cos over [2, n/2] angles, no ConcatV2 copy.
    phases = tf.constant([[0.0], [math.pi / 2]], draw)
    z = tf.reshape(radius * tf.cos((2.0 * math.pi) * u2 - phases), [-1])
    if even or isinstance(size, int) and size % 2 == 0:
        z = tf.reshape(z, shape)
    else:
        z = tf.reshape(z[:size], shape)
    return z if draw == dtype else tf.cast(z, dtype)


@contextlib.contextmanager
def mc_sampling(num_samples, seed=None, mode=Mode.SAMPLE, variances=None, rows=(None, None),
                noise=Noise.EXACT):
    """Within this context stochastic layers treat their input as S sample-major copies.

    Args:
        num_samples: S, a Python int or a scalar int32 tensor.
        seed: None (tf.random.normal's seeding), an int64 tensor of shape [2] for stateless,
            reproducible draws, or `FRESH`.
        mode: `Mode.SAMPLE` / "sample" (S posterior draws) or `Mode.MEAN` / "mean" (posterior
            means, S is ignored).
        variances: optional ``{layer: (kernel_variance, bias_variance_or_None)}`` posterior
            variances to use instead of the layers' softplus(rho)^2.
        rows: static bounds ``(lo, hi)`` with lo <= B < hi on the rows per sample, if known.
        noise: `Noise.EXACT` / "exact" (S independent weight draws, the default) or
            `Noise.SHARED` / "shared" (one perturbation per pass; see `Context`).
    """
    previous = getattr(_STATE, "ctx", None)
    _STATE.ctx = Context(num_samples, seed, mode,
                         {id(k): v for k, v in (variances or {}).items()}, rows, noise)
    try:
        yield _STATE.ctx
    finally:
        _STATE.ctx = previous


def current():
    """The active `Context`, or None outside `mc_sampling`."""
    return getattr(_STATE, "ctx", None)


class StochasticLayer:
    """Mixin of every layer whose output is random at inference; put it first in the bases.

    ``call`` dispatches on the active `Context` to one of three methods a layer implements:

    * ``plain_call(inputs, **kwargs)``: no context, an ordinary Keras call (default: one draw);
    * ``mean_call(inputs, **kwargs)``: `Mode.MEAN`, the posterior mean (deterministic);
    * ``sample_call(inputs, ctx, **kwargs)``: `Mode.SAMPLE`, ``inputs`` holds S sample-major
      copies of the batch and copy s sees the s-th independent draw.

    ``kwargs`` are what Keras passes the call (``training``, ``mask``, an RNN's
    ``initial_state``). Capabilities `sample_outputs` reads are declared here, with defaults.
    Keras's shape-inference call (building a Functional model) takes ``mean_call``, so it
    must return what ``plain_call`` would, in shape and dtype.
    """

    # A layer whose MC graph is a loop (a convolution's map_fn, an RNN's while loop) is large in a
    # SavedModel and costs more than a per-layer tf.cond: the model is traced once, not per
    # regime of B.
    mc_single_trace = False

    def mc_rows_threshold(self):
        """Rows per sample B at which this layer's sampling code path switches, or None."""
        return None

    def call(self, inputs, *args, **kwargs):
        return self._dispatch(inputs, *args, **kwargs)

    # Every branch below is Python-level (the context, the mode, static shapes) and the
    # data-dependent choices are explicit tf.conds, so AutoGraph has nothing to convert; skipping
    # it makes each symbolic call (bayesify's rebuild, every trace of fit/predict/export)
    # several times cheaper. (On `call` itself the decorator would hide its signature from
    # Keras's call spec.)
    @tf.autograph.experimental.do_not_convert
    def _dispatch(self, inputs, *args, **kwargs):
        ctx = current()
        if ctx is None:
            if _inferring_signature():
                # Only the output's shape and dtype survive this call, and the mean path has
                # them at a tenth of the graph (no draws, no KL): bayesify's rebuild of a deep
                # network gets about twice as fast.
                return self.mean_call(inputs, *args, **kwargs)
            return self.plain_call(inputs, *args, **kwargs)
        if ctx.mode is Mode.MEAN:
            return self.mean_call(inputs, *args, **kwargs)
        return self.sample_call(inputs, ctx, *args, **kwargs)

    def plain_call(self, inputs, **kwargs):
        """By default one posterior sample: `sample_call` with S = 1, unseeded (a layer with a
        training-time estimator of its own, Flipout say, overrides this)."""
        return self.sample_call(inputs, Context(1), **kwargs)

    def mean_call(self, inputs, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement mean_call")

    def sample_call(self, inputs, ctx, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement sample_call")


def _inferring_signature():
    """Whether Keras is calling a layer only to infer its output signature.

    tf_keras builds a Functional model by calling each layer on placeholders in a throwaway
    FuncGraph named ``<layer>_scratch_graph`` (``Layer._infer_output_signature``) and keeps
    nothing of that call but the outputs' shapes and dtypes; losses added there are dropped
    when the layer is next called for real.
    """
    return getattr(tf.compat.v1.get_default_graph(), "name", "").endswith("_scratch_graph")


def stochastic_layers(model):
    """Every `StochasticLayer` in ``model``, nested models included, in order."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, StochasticLayer)]


def is_stochastic(model):
    """Whether ``model`` has a layer whose output is random at inference."""
    return bool(stochastic_layers(model))


# ---------------------------------------------------------------------------------------------
# Whole-model sampling
# ---------------------------------------------------------------------------------------------
def _tile(x, num_samples):
    # Static multiples when the rank is known: no Rank/Fill/Concat ops in a served graph.
    if x.shape.rank is not None:
        return tf.tile(x, tf.stack([num_samples] + [1] * (x.shape.rank - 1)))
    multiples = tf.concat([[num_samples], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
    return tf.tile(x, multiples)


def _inner_dims(t):
    """``t``'s dims after the first, static where known: a served graph gets no Shape ops for
    them."""
    return [d if d is not None else tf.shape(t)[i + 1] for i, d in enumerate(t.shape[1:])]


def split_copies(y, num_samples):
    """Sample-major ``y`` [S*B, ...] as [S, B, ...] (`merge_copies` undoes it)."""
    if y.shape.rank is not None:
        return tf.reshape(y, tf.stack([num_samples, -1] + _inner_dims(y)))
    shape = tf.shape(y)
    return tf.reshape(y, tf.concat([[num_samples, shape[0] // num_samples], shape[1:]], 0))


def merge_copies(y):
    """``y`` [S, B, ...] as the sample-major rows [S*B, ...] (`split_copies` undoes it)."""
    if y.shape.rank is not None:
        return tf.reshape(y, tf.stack([-1] + _inner_dims(y)[1:]))
    shape = tf.shape(y)
    return tf.reshape(y, tf.concat([[shape[0] * shape[1]], shape[2:]], 0))


def add_per_copy(out, bias, num_samples, channel_axis=-1):
    """``out`` [S*B, ...] plus ``bias`` [S, *bias shape] (row block s gets bias s): the bias on
    the trailing axes (channels last, Dense, EinsumDense) or on ``channel_axis``."""
    rank = out.shape.rank
    blocks = split_copies(out, num_samples)
    dims = bias.shape[1:].as_list()
    if channel_axis % rank == rank - 1:
        lined = [-1] + [1] * (rank - len(dims)) + dims
    else:
        lined = [-1] + [1] * rank
        lined[channel_axis % rank + 1] = dims[0]
    return merge_copies(blocks + tf.reshape(bias, lined))


def few_rows(per_copy, rows, bound):
    """Whether B <= ``bound`` rows per copy is known at trace time: from the static rows per
    copy ``per_copy`` (None: unknown), else from the regime bounds ``rows`` (lo <= B < hi)."""
    if per_copy is not None:
        return per_copy <= bound
    return rows[1] is not None and rows[1] - 1 <= bound


# Rows per copy up to which `Noise.SHARED` is cheaper than exact draws (see `shared_pays`).
SHARED_MAX_ROWS = 16


def shared_pays(x, ctx):
    """Whether `Noise.SHARED` is cheaper than exact draws for the sample-major rows ``x``.

    Shared noise runs a layer's op twice over all S*B rows (mean and flipped perturbation)
    where exact draws run it once per draw over B rows, and saves (S - 1) x K normals: that pays
    for small batches only. Measured (served graphs, 2 CPU cores, S = 10): the 4-64-64-3 MLP at
    B = 256 took 6.8 ms shared against 2.1 ms exact. So at most `SHARED_MAX_ROWS` rows per copy,
    known at trace time (static shapes, or the regime bounds ``ctx.rows``); else exact draws.
    """
    s = ctx.num_samples if isinstance(ctx.num_samples, int) else tf.get_static_value(
        ctx.num_samples)
    per_copy = x.shape[0] // s if x.shape[0] is not None and s is not None else None
    return few_rows(per_copy, ctx.rows, SHARED_MAX_ROWS)


# More regimes would trace the model more times into one graph (a larger SavedModel).
MAX_REGIMES = 4


def _row_thresholds(model, noise=Noise.EXACT):
    """Sorted batch sizes at which some layer switches its sampling code path (none when a layer
    asks for a single trace); shared noise switches at ``SHARED_MAX_ROWS + 1`` (`shared_pays`)."""
    found = {SHARED_MAX_ROWS + 1} if noise is Noise.SHARED else set()
    for layer in stochastic_layers(model):
        if layer.mc_single_trace:
            return []
        threshold = layer.mc_rows_threshold()
        if threshold is not None:
            found.add(int(threshold))
    return sorted(found)


# Layer classes whose inference-time call is deterministic unless called with training=True.
_KNOWN_MODULES = ("tf_keras.", "tfp_bnn.")


def _needs_copies(layer):
    """Whether ``layer``'s output may differ between Monte Carlo copies of the same input."""
    return any(isinstance(sub, StochasticLayer) or not type(sub).__module__.startswith(
        _KNOWN_MODULES) for sub in layer._flatten_layers(include_self=True, recursive=True))


def sample_outputs(model, inputs, num_samples, seed=None, variances=None, noise=Noise.EXACT):
    """Call ``model`` once on S tiled copies of ``inputs``; outputs come back as ``[S, B, ...]``.

    ``inputs`` and the returned outputs keep the model's structure (a tensor, or a list for
    several inputs/outputs). Meant to be called inside a tf.function. ``variances`` and
    ``noise``: see `mc_sampling`. The layers before the first random one run once on the B
    rows, not on S copies (`tfp_bnn.copies`): a deterministic trunk costs one pass.

    When B is not static and some layer's best path depends on it (a Dense layer samples in
    output space while B < its `StochasticLayer.mc_rows_threshold`), the model is traced once
    per regime of B and one ``tf.switch_case`` picks the regime: one branch op per call instead
    of a tf.cond per layer (the conds cost more than the layers themselves at batch 1 on a CPU).
    """
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    # The layers before the first random one run once, on B rows (`tfp_bnn.copies`).
    walk = copies.plan(model, _needs_copies)
    tiled = None if walk else tf.nest.map_structure(lambda t: _tile(t, num_samples), inputs)

    def run(rows):
        with mc_sampling(num_samples, seed, Mode.SAMPLE, variances, rows, noise):
            if walk is not None:
                outputs = walk.call(inputs, num_samples, _tile)
            else:
                outputs = model(tiled, training=False)
        return tf.nest.map_structure(lambda t: split_copies(t, num_samples), outputs)

    first = tf.nest.flatten(inputs)[0]
    batch = first.shape[0]
    thresholds = _row_thresholds(model, options.choice("noise", noise, Noise))
    if batch is not None:
        return run((batch, batch + 1))
    if not thresholds or len(thresholds) >= MAX_REGIMES:
        return run((None, None))
    bounds = [0] + thresholds + [None]
    branches = [functools.partial(run, (lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    regime = tf.reduce_sum(tf.cast(tf.shape(first)[0] >= thresholds, tf.int32))
    return tf.switch_case(regime, branches)


def mean_outputs(model, inputs):
    """One pass with every stochastic layer at its posterior mean."""
    with mc_sampling(1, None, Mode.MEAN):
        return model(inputs, training=False)
