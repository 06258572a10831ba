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
"""
import contextlib
import threading

from tfp_bnn._keras import tf

__all__ = ["mc_sampling", "current", "sample_outputs", "mean_outputs"]

_STATE = threading.local()


class _Context:
    def __init__(self, num_samples, seed, mode):
        self.num_samples = num_samples
        self.seed = seed
        self.mode = mode
        self._draws = 0

    def normal(self, shape, dtype):
        """A standard-normal draw; stateless (reproducible) when the context has a seed."""
        self._draws += 1
        if self.seed is None:
            return tf.random.normal(shape, dtype=dtype)
        seed = tf.random.experimental.stateless_fold_in(self.seed, self._draws)
        return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)


@contextlib.contextmanager
def mc_sampling(num_samples, seed=None, mode="sample"):
    """Within this context Bayesian layers treat their input as S sample-major copies.

    Args:
        num_samples: S, a Python int or a scalar int32 tensor.
        seed: None or an int64 tensor of shape [2] for stateless, reproducible draws.
        mode: "sample" (S posterior draws) or "mean" (posterior means, S is ignored).
    """
    previous = getattr(_STATE, "ctx", None)
    _STATE.ctx = _Context(num_samples, seed, mode)
    try:
        yield _STATE.ctx
    finally:
        _STATE.ctx = previous


def current():
    """The active `_Context`, or None outside `mc_sampling`."""
    return getattr(_STATE, "ctx", None)


def _tile(x, num_samples):
    multiples = tf.concat([[num_samples], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
    return tf.tile(x, multiples)


def _split(y, num_samples):
    shape = tf.shape(y)
    return tf.reshape(y, tf.concat([[num_samples, shape[0] // num_samples], shape[1:]], 0))


def sample_outputs(model, inputs, num_samples, seed=None):
    """Call ``model`` once on S tiled copies of ``inputs``; outputs come back as ``[S, B, ...]``.

    ``inputs`` and the returned outputs keep the model's structure (a tensor, or a list for
    several inputs/outputs). Meant to be called inside a tf.function.
    """
    tiled = tf.nest.map_structure(lambda t: _tile(tf.convert_to_tensor(t), num_samples), inputs)
    with mc_sampling(num_samples, seed, "sample"):
        outputs = model(tiled, training=False)
    return tf.nest.map_structure(lambda t: _split(t, num_samples), outputs)


def mean_outputs(model, inputs):
    """One pass with every Bayesian layer at its posterior mean."""
    with mc_sampling(1, None, "mean"):
        return model(inputs, training=False)
