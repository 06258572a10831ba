"""Vectorised Monte Carlo through a whole model: S weight draws in one graph.

The input batch is tiled sample-major to ``[S*B, ...]`` and the model is called once inside
`mc_sampling(S)`. Each Bayesian layer sees the context and draws S independent weight sets (or,
for a Dense layer on a flat batch, samples its pre-activations in output space when that needs
fewer random numbers; both give exact per-example samples). Layers that are not Bayesian act on
the ``S*B`` rows as on any batch, so dropout masks are independent per copy and batch norm uses
its moving statistics. The result is reshaped to ``[S, B, ...]``.

    y_s = f(x; w_s),  w_s ~ q(w) independently for s = 1..S

With ``mode="mean"`` the layers use the posterior means (the cheap deterministic path).

Why not simply tile the batch through the layers as they are: a DenseReparameterization layer
draws one kernel per call, so all S copies would share it (variance exactly zero), and Flipout
copies are only pseudo-independent.

``variances`` lets a caller hand the layers posterior variances computed once (the SavedModel
export stores sigma^2 instead of the softplus parameter, so a served call skips the softplus).
"""
import contextlib
import functools
import threading

from tfp_bnn._keras import tf

__all__ = ["mc_sampling", "current", "sample_outputs", "mean_outputs", "FRESH"]

_STATE = threading.local()

# seed=FRESH: fresh random numbers in every process, whatever the global seed was when the graph
# was traced (a SavedModel's replicas must not replay one stream).
FRESH = "fresh"


class _Context:
    def __init__(self, num_samples, seed, mode, variances=None, rows=(None, None)):
        self.num_samples = num_samples
        self.seed = seed
        self.mode = mode
        # {id(layer): (kernel variance, bias variance or None)}: precomputed sigma^2 (export).
        self.variances = variances or {}
        # Static bounds [lo, hi) on B, the rows per sample (None: unknown): a layer whose best
        # code path depends on B decides at trace time when the bounds settle it.
        self.rows = rows
        self._draws = 0

    def next_index(self):
        """Reserve a draw index: a layer choosing between code paths (tf.cond branches, or a
        static choice when shapes are known) gives both the same stream, so a seeded result does
        not depend on which path a trace took."""
        self._draws += 1
        return self._draws

    def normal(self, shape, dtype, index=None):
        """A standard-normal draw; stateless (reproducible) when the context has a seed."""
        if index is None:
            index = self.next_index()
        if self.seed is None or isinstance(self.seed, str):
            # tf.random.normal's op and seeding without its "* stddev + mean" (two ops per draw);
            # FRESH: op seeds 0, 0, which TF replaces by a random seed per kernel instance.
            seed, seed2 = (0, 0) if self.seed == FRESH else tf.compat.v1.get_seed(None)
            return tf.raw_ops.RandomStandardNormal(shape=shape, dtype=dtype, seed=seed or 0,
                                                   seed2=seed2 or 0)
        seed = tf.random.experimental.stateless_fold_in(self.seed, index)
        return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)


@contextlib.contextmanager
def mc_sampling(num_samples, seed=None, mode="sample", variances=None, rows=(None, None)):
    """Within this context Bayesian layers treat their input as S sample-major copies.

    Args:
        num_samples: S, a Python int or a scalar int32 tensor.
        seed: None (tf.random.normal's seeding), an int64 tensor of shape [2] for stateless,
            reproducible draws, or `FRESH`.
        mode: "sample" (S posterior draws) or "mean" (posterior means, S is ignored).
        variances: optional ``{layer: (kernel_variance, bias_variance_or_None)}`` posterior
            variances to use instead of the layers' softplus(rho)^2.
        rows: static bounds ``(lo, hi)`` with lo <= B < hi on the rows per sample, if known.
    """
    previous = getattr(_STATE, "ctx", None)
    _STATE.ctx = _Context(num_samples, seed, mode,
                          {id(k): v for k, v in (variances or {}).items()}, rows)
    try:
        yield _STATE.ctx
    finally:
        _STATE.ctx = previous


def current():
    """The active `_Context`, or None outside `mc_sampling`."""
    return getattr(_STATE, "ctx", None)


def _tile(x, num_samples):
    # Static multiples when the rank is known: no Rank/Fill/Concat ops in a served graph.
    if x.shape.rank is not None:
        return tf.tile(x, tf.stack([num_samples] + [1] * (x.shape.rank - 1)))
    multiples = tf.concat([[num_samples], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
    return tf.tile(x, multiples)


def _split(y, num_samples):
    if y.shape.rank is not None:
        return tf.reshape(y, tf.stack([num_samples, -1] + [
            d if d is not None else tf.shape(y)[i + 1] for i, d in enumerate(y.shape[1:])]))
    shape = tf.shape(y)
    return tf.reshape(y, tf.concat([[num_samples, shape[0] // num_samples], shape[1:]], 0))


# More regimes would trace the model more times into one graph (a larger SavedModel).
MAX_REGIMES = 4


def _row_thresholds(model):
    """Sorted batch sizes at which some layer switches its sampling code path.

    Empty when a layer asks for a single trace (``mc_single_trace``: a convolution's loop is
    large in a SavedModel and its cost dwarfs a per-layer tf.cond).
    """
    found = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if getattr(layer, "mc_single_trace", False):
            return []
        threshold = getattr(layer, "mc_rows_threshold", None)
        if callable(threshold) and threshold() is not None:
            found.add(int(threshold()))
    return sorted(found)


def sample_outputs(model, inputs, num_samples, seed=None, variances=None):
    """Call ``model`` once on S tiled copies of ``inputs``; outputs come back as ``[S, B, ...]``.

    ``inputs`` and the returned outputs keep the model's structure (a tensor, or a list for
    several inputs/outputs). Meant to be called inside a tf.function. ``variances``: see
    `mc_sampling`.

    When B is not static and some layer's best path depends on it (a Dense layer samples in
    output space while B < its input width), the model is traced once per regime of B and one
    ``tf.switch_case`` picks the regime: one branch op per call instead of a tf.cond per layer
    (the conds cost more than the layers themselves at batch 1 on a CPU).
    """
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    tiled = tf.nest.map_structure(lambda t: _tile(t, num_samples), inputs)

    def run(rows):
        with mc_sampling(num_samples, seed, "sample", variances, rows):
            outputs = model(tiled, training=False)
        return tf.nest.map_structure(lambda t: _split(t, num_samples), outputs)

    first = tf.nest.flatten(inputs)[0]
    batch = first.shape[0]
    thresholds = _row_thresholds(model)
    if batch is not None:
        return run((batch, batch + 1))
    if not thresholds or len(thresholds) >= MAX_REGIMES:
        return run((None, None))
    bounds = [0] + thresholds + [None]
    branches = [functools.partial(run, (lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    regime = tf.reduce_sum(tf.cast(tf.shape(first)[0] >= thresholds, tf.int32))
    return tf.switch_case(regime, branches)


def mean_outputs(model, inputs):
    """One pass with every Bayesian layer at its posterior mean."""
    with mc_sampling(1, None, "mean"):
        return model(inputs, training=False)
