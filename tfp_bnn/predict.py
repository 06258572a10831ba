"""Monte Carlo prediction: one compiled graph draws S posterior samples and summarises them.

For a classifier with per-sample logits ``z_s`` and probabilities ``p_s = softmax(z_s)``:

    probabilities       = (1/S) sum_s p_s
    predictive_entropy  = H[(1/S) sum_s p_s]                       (total)
    expected_entropy    = (1/S) sum_s H[p_s]                       (aleatoric)
    mutual_information  = predictive_entropy - expected_entropy    (epistemic, >= 0)
    mean_logits, variance = mean and variance of z_s over samples

For a regression model whose output is a mean (or, with a Gaussian head, mean and std):

    mean = (1/S) sum_s mu_s,  epistemic_variance = Var_s[mu_s],
    aleatoric_variance = (1/S) sum_s sigma_s^2,  variance = epistemic + aleatoric

Example:
    >>> pred = tfp_bnn.predict(bnn, x_test, num_samples=100, seed=0)
    >>> pred.probabilities.shape, pred.mutual_information.shape
    ((30, 3), (30,))

References:
    Depeweg et al. 2018; Kendall & Gal 2017 (aleatoric/epistemic decomposition).
"""
import dataclasses
import warnings
import weakref
from typing import Optional

import numpy as np

from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras

__all__ = ["Prediction", "predict", "classification_summary", "regression_summary",
           "output_kind", "is_stochastic"]

DEFAULT_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The fixed result of `predict`: numpy arrays; fields of the other task are None."""

    task: str  # "classification" or "regression"
    num_samples: int
    # classification
    mean_logits: Optional[np.ndarray] = None  # [B, C]
    variance: Optional[np.ndarray] = None  # [B, C] logit variance, or [B, D] total variance
    probabilities: Optional[np.ndarray] = None  # [B, C]
    predictive_entropy: Optional[np.ndarray] = None  # [B]
    expected_entropy: Optional[np.ndarray] = None  # [B]
    mutual_information: Optional[np.ndarray] = None  # [B]
    # regression
    mean: Optional[np.ndarray] = None  # [B, D]
    epistemic_variance: Optional[np.ndarray] = None  # [B, D]
    aleatoric_variance: Optional[np.ndarray] = None  # [B, D]
    # only with return_samples=True: [S, B, C] logits (or [S, B, ...] regression outputs)
    samples: Optional[np.ndarray] = None

    @property
    def predicted_class(self):
        if self.probabilities is None:
            raise AttributeError("predicted_class exists only for classification predictions.")
        return np.argmax(self.probabilities, axis=-1)

    @property
    def aleatoric(self):
        """Per-example aleatoric uncertainty (expected entropy, or mean aleatoric variance)."""
        if self.task == "classification":
            return self.expected_entropy
        return self.aleatoric_variance.mean(axis=-1)

    @property
    def epistemic(self):
        """Per-example epistemic uncertainty (mutual information, or epistemic variance)."""
        if self.task == "classification":
            return self.mutual_information
        return self.epistemic_variance.mean(axis=-1)


# ---------------------------------------------------------------------------------------------
# In-graph summaries (shared with the SavedModel export)
# ---------------------------------------------------------------------------------------------
def _entropy(p):
    # xlogy(p, p) = p log p, and 0 where p == 0.
    return -tf.reduce_sum(tf.math.xlogy(p, p), axis=-1)


def _sample_mean(t):
    # Shifted by the first sample: S equal samples (a deterministic model) give exactly that
    # sample back, so their variance and mutual information are exactly 0, not float round-off.
    return t[0] + tf.reduce_mean(t - t[0], axis=0)


def _moments(t):
    """Mean and (biased) variance over the sample axis 0, both exact for equal samples."""
    d = t - t[0]
    mean_d = tf.reduce_mean(d, axis=0)
    return t[0] + mean_d, tf.reduce_mean(tf.square(d - mean_d), axis=0)


def classification_summary(logit_samples):
    """Decompose ``[S, B, C]`` logit samples; returns a dict of tensors (see module doc)."""
    z = tf.convert_to_tensor(logit_samples)
    z = tf.cast(z, tf.float32)
    probs_s = tf.nn.softmax(z, axis=-1)
    probs = _sample_mean(probs_s)
    total = _entropy(probs)
    aleatoric = _sample_mean(_entropy(probs_s))
    mean_logits, var = _moments(z)
    return {
        "mean_logits": mean_logits,
        "variance": var,
        "probabilities": probs,
        "predictive_entropy": total,
        "expected_entropy": aleatoric,
        # Jensen: total >= aleatoric; clip the float round-off below zero.
        "mutual_information": tf.maximum(total - aleatoric, 0.0),
    }


def regression_summary(mean_samples, scale_samples=None):
    """Decompose ``[S, B, D]`` means (and optional predicted std devs) of a regression model."""
    mu = tf.cast(tf.convert_to_tensor(mean_samples), tf.float32)
    mean, epistemic = _moments(mu)
    if scale_samples is None:
        aleatoric = tf.zeros_like(mean)
    else:
        aleatoric = _sample_mean(tf.square(tf.cast(scale_samples, tf.float32)))
    return {"mean": mean, "epistemic_variance": epistemic, "aleatoric_variance": aleatoric,
            "variance": epistemic + aleatoric}


def output_kind(model):
    """'classification', 'regression' or 'gaussian' (mean and std from a Gaussian head).

    A layer may declare ``predictive_output = "gaussian"`` (tfp_bnn.heads); otherwise one output
    unit means regression and several mean classification logits.
    """
    last = model.layers[-1] if model.layers else None
    declared = getattr(last, "predictive_output", None)
    if declared is not None:
        return declared
    units = model.outputs[0].shape[-1]
    return "regression" if units == 1 else "classification"


def summarize(samples, kind):
    """Summary dict for ``[S, B, ...]`` model-output samples of the given kind."""
    if kind == "classification":
        return classification_summary(samples)
    if kind == "gaussian":
        mean, scale = tf.split(samples, 2, axis=-1)
        return regression_summary(mean, scale)
    if kind == "regression":
        return regression_summary(samples)
    raise ValueError(f"Unknown output kind {kind!r}")


def is_stochastic(model):
    """Whether the model has a layer whose output is random at inference."""
    from tfp_bnn.layers import bayesian_layers
    if bayesian_layers(model):
        return True
    return any(getattr(l, "stochastic", False) for l in model._flatten_layers(include_self=False))


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
_FUNCTIONS = weakref.WeakKeyDictionary()
_WARNED = weakref.WeakSet()


def _mc_function(model, num_samples, kind, return_samples, stochastic=True):
    cache = _FUNCTIONS.setdefault(model, {})
    key = (num_samples, kind, return_samples, stochastic)
    if key not in cache:
        # A weak reference: the cache is keyed weakly on the model, and a value that held the
        # model strongly would keep every model ever predicted on alive.
        model_ref = weakref.ref(model)

        @tf.function(reduce_retracing=True)
        def run(inputs, seed):
            if stochastic:
                samples = sampling.sample_outputs(model_ref(), inputs, num_samples, seed)
            else:
                # One pass repeated S times: S tiled rows through a matmul can differ in the last
                # bit, and the documented variance of a deterministic model is exactly 0.
                samples = tf.nest.map_structure(
                    lambda t: tf.repeat(t[tf.newaxis], num_samples, axis=0),
                    model_ref()(inputs, training=False))
            if isinstance(samples, (list, tuple)):
                samples = samples[0]
            out = summarize(samples, kind)
            if return_samples:
                out["samples"] = samples
            return out
        cache[key] = run
    return cache[key]


def _check_batch(model, batch):
    arrays = batch if isinstance(batch, (list, tuple)) else [batch]
    if len(arrays) != len(model.inputs):
        raise ValueError(f"x has {len(arrays)} input arrays; the model expects "
                         f"{len(model.inputs)}.")
    out = []
    for arr, spec in zip(arrays, model.inputs):
        arr = np.asarray(arr)
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"x must be numeric. Received an array of dtype {arr.dtype}.")
        expected = tuple(spec.shape[1:])
        if arr.ndim != len(expected) + 1 or any(
                e is not None and e != r for e, r in zip(expected, arr.shape[1:])):
            raise ValueError(f"x has the wrong shape: the model expects (batch,) + {expected}, "
                             f"received {arr.shape}.")
        # inf is refused too: it turns into NaN logits (inf - inf) just as silently.
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"x contains NaN or infinite values ({int(np.isnan(arr).sum())} NaN, "
                             f"{int(np.isinf(arr).sum())} inf); predict refuses to return NaN "
                             "uncertainties.")
        out.append(arr.astype(spec.dtype.as_numpy_dtype if hasattr(spec.dtype, "as_numpy_dtype")
                              else spec.dtype))
    return out if len(out) > 1 else out[0]


def _batches(x, batch_size):
    """Yield numpy input batches from arrays, a tf.data.Dataset or an iterable of batches."""
    if isinstance(x, tf.data.Dataset):
        for element in x.as_numpy_iterator():
            yield element[0] if isinstance(element, tuple) else element
        return
    if isinstance(x, (np.ndarray, tf.Tensor)) or (
            isinstance(x, (list, tuple)) and x and isinstance(x[0], (np.ndarray, tf.Tensor))):
        arrays = [np.asarray(a) for a in (x if isinstance(x, (list, tuple)) else [x])]
        n = len(arrays[0])
        for start in range(0, n, batch_size):
            part = [a[start:start + batch_size] for a in arrays]
            yield part if len(part) > 1 else part[0]
        return
    if hasattr(x, "__iter__"):
        for element in x:
            yield element[0] if isinstance(element, tuple) else element
        return
    raise ValueError("x must be a numpy array (or a list of arrays for several inputs), a "
                     f"tf.data.Dataset or an iterable of batches. Received: x of type {type(x).__name__}")


def _num_batches(x, batch_size):
    """How many batches `_batches` yields, or None when unknown (a generator)."""
    if isinstance(x, tf.data.Dataset):
        n = int(x.cardinality())
        return n if n >= 0 else None
    if isinstance(x, (np.ndarray, tf.Tensor)):
        return -(-len(x) // batch_size)
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (np.ndarray, tf.Tensor)):
        return -(-len(x[0]) // batch_size)
    return None


def predict(model, x, num_samples=100, batch_size=None, seed=None, return_samples=False,
            verbose="auto"):
    """Monte Carlo predictive distribution of ``model`` on ``x`` (S samples in one graph).

    Args:
        model: a tf_keras model (from `bayesify`, `mc_dropout`, ...). Deterministic models work
            too: every sample is equal and the variance is 0 (a warning says so once).
        x: a numpy array, a list of arrays (several inputs), a tf.data.Dataset of batches
            (``x`` or ``(x, y)`` elements) or an iterable of such batches.
        num_samples: S, posterior samples per example (>= 1).
        batch_size: examples per graph call for array input (default 256).
        seed: an int makes the result reproducible run to run.
        return_samples: also return the ``[S, B, ...]`` per-sample outputs.
        verbose: "auto" shows a Keras progress bar when there are several batches (counted
            from an array's length or a dataset's cardinality; a generator gets none); 0 or 1.

    Returns:
        `Prediction`.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"model must be a tf_keras Model. Received: model={model!r}")
    stochastic = is_stochastic(model)
    if not stochastic and model not in _WARNED:
        _WARNED.add(model)
        warnings.warn(f"model {model.name!r} has no stochastic layer: all Monte Carlo samples "
                      "are equal and the predictive variance is 0.", UserWarning, stacklevel=2)
    kind = output_kind(model)
    fn = _mc_function(model, int(num_samples), kind, bool(return_samples), stochastic)
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)

    total = _num_batches(x, batch_size)
    show = (verbose == "auto" and (total or 0) > 1) or verbose == 1
    bar = tf_keras.utils.Progbar(total, unit_name="batch") if show else None

    parts = []
    for i, batch in enumerate(_batches(x, batch_size)):
        batch = _check_batch(model, batch)
        seed_t = None if seed is None else tf.constant([int(seed), i], tf.int64)
        out = fn(batch, seed_t)
        parts.append({k: v.numpy() for k, v in out.items()})
        if bar is not None:
            bar.update(i + 1)
    if not parts:
        raise ValueError("x is empty: no batch to predict on.")
    merged = {k: np.concatenate([p[k] for p in parts], axis=1 if k == "samples" else 0)
              for k in parts[0]}
    task = "classification" if kind == "classification" else "regression"
    return Prediction(task=task, num_samples=int(num_samples), **merged)
