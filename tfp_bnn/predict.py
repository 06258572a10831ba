"""Monte Carlo prediction: one compiled graph draws S posterior samples and summarises them.

The model's task (`tfp_bnn.tasks`: declared, read from its compiled loss or its output layer,
or passed as ``task=``) picks the summary of the ``[S, B, ...]`` output samples. A classifier
("multiclass": C logits; "binary": one logit, ``p(y=1) = sigmoid(z)``), with ``p_s`` the
per-sample class probabilities ([B, 2] for binary: p(y=0), p(y=1)):

    probabilities       = (1/S) sum_s p_s
    predictive_entropy  = H[(1/S) sum_s p_s]                       (total)
    expected_entropy    = (1/S) sum_s H[p_s]                       (aleatoric)
    mutual_information  = predictive_entropy - expected_entropy    (epistemic, >= 0)
    mean_logits, logit_variance = mean and variance of z_s over samples

A regression model whose output is a mean ("regression") or, with a Gaussian head, mean and
std ("gaussian"):

    mean = (1/S) sum_s mu_s,  epistemic_variance = Var_s[mu_s],
    aleatoric_variance = (1/S) sum_s sigma_s^2,  variance = epistemic + aleatoric

`predict` takes a tf_keras model or any method's result (`tfp_bnn.methods`): a
`DeepEnsemble` after fit, a `laplace` result, a `SWAG` callback after fit, a `distill` result.

Example:
    >>> tf_keras.utils.set_random_seed(0)
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    >>> bnn = tfp_bnn.bayesify(model, num_train_examples=100)
    >>> x_test = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    >>> pred = tfp_bnn.predict(bnn, x_test, num_samples=100, seed=0)
    >>> pred.task, pred.probabilities.shape, pred.mutual_information.shape
    ('multiclass', (30, 3), (30,))

References:
    Depeweg et al. 2018; Kendall & Gal 2017 (aleatoric/epistemic decomposition).
"""
import dataclasses
import warnings
import weakref
from typing import Optional

import numpy as np

from tfp_bnn import methods, options, safety, sampling, tasks
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.options import Task

__all__ = ["Prediction", "NonFiniteOutputError", "predict", "summarize", "classification_summary",
           "regression_summary", "is_stochastic"]

DEFAULT_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The fixed result of `predict`: numpy arrays; fields of the other kind of task are None."""

    task: Task  # multiclass, binary, regression or gaussian
    num_samples: int
    # classification (C = 2 for a binary classifier, whose logits are [B, 1])
    mean_logits: Optional[np.ndarray] = None  # [B, C] (binary: [B, 1])
    logit_variance: Optional[np.ndarray] = None  # [B, C] (binary: [B, 1]) variance of the logits
    probabilities: Optional[np.ndarray] = None  # [B, C]
    predictive_entropy: Optional[np.ndarray] = None  # [B]
    expected_entropy: Optional[np.ndarray] = None  # [B]
    mutual_information: Optional[np.ndarray] = None  # [B]
    # regression
    mean: Optional[np.ndarray] = None  # [B, D]
    variance: Optional[np.ndarray] = None  # [B, D] total predictive variance
    epistemic_variance: Optional[np.ndarray] = None  # [B, D]
    aleatoric_variance: Optional[np.ndarray] = None  # [B, D]
    # conformal (a `tfp_bnn.conformal` model): sets, or intervals, at its level alpha
    prediction_sets: Optional[np.ndarray] = None  # bool [B, C]
    interval_lower: Optional[np.ndarray] = None  # [B, D]
    interval_upper: Optional[np.ndarray] = None  # [B, D]
    # only with return_samples=True: [S, B, C] logits (or [S, B, ...] regression outputs)
    samples: Optional[np.ndarray] = None

    @property
    def is_classification(self):
        return Task(self.task).is_classification

    @property
    def predicted_class(self):
        if self.probabilities is None:
            raise AttributeError("predicted_class exists only for classification predictions.")
        return np.argmax(self.probabilities, axis=-1)

    @property
    def aleatoric(self):
        """Per-example aleatoric uncertainty (expected entropy, or mean aleatoric variance)."""
        if self.is_classification:
            return self.expected_entropy
        return self.aleatoric_variance.mean(axis=-1)

    @property
    def epistemic(self):
        """Per-example epistemic uncertainty (mutual information, or epistemic variance)."""
        if self.is_classification:
            return self.mutual_information
        return self.epistemic_variance.mean(axis=-1)


# ---------------------------------------------------------------------------------------------
# In-graph summaries (the SavedModel export calls the same `summarize`, with exact=False)
# ---------------------------------------------------------------------------------------------
def summarize(samples, task, exact=True, probabilities=False):
    """Summary dict of ``[S, B, ...]`` model-output samples for ``task`` (see module doc).

    Args:
        samples: the per-sample outputs (logits, means, or means and stds of a Gaussian head).
        task: a `tfp_bnn.options.Task` or its string.
        exact: shift the sample means by the first sample, so S equal samples give exactly 0
            variance and mutual information; False takes plain means (the served graph's fast
            path: fewer ops per request).
        probabilities: a classifier's samples are probabilities (a softmax or sigmoid output
            layer, `tfp_bnn.tasks.outputs_probabilities`), not logits.
    """
    return tasks.get(task, probabilities).summary(samples, exact)


def classification_summary(logit_samples):
    """Decompose ``[S, B, C]`` multiclass logit samples (`summarize` with "multiclass")."""
    return summarize(logit_samples, Task.MULTICLASS)


def regression_summary(mean_samples, scale_samples=None):
    """Decompose ``[S, B, D]`` means (and optional predicted std devs) of a regression model."""
    if scale_samples is None:
        return summarize(mean_samples, Task.REGRESSION)
    samples = tf.concat([tf.cast(mean_samples, tf.float32), tf.cast(scale_samples, tf.float32)],
                        axis=-1)
    return summarize(samples, Task.GAUSSIAN)


def is_stochastic(model):
    """Whether the model has a layer whose output is random at inference."""
    return sampling.is_stochastic(model)


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
_FUNCTIONS = weakref.WeakKeyDictionary()
_WARNED = weakref.WeakSet()


def _mc_function(model, num_samples, task, return_samples, stochastic=True):
    cache = _FUNCTIONS.setdefault(model, {})
    key = (num_samples, task, return_samples, stochastic)
    if key not in cache:
        # A weak reference: the cache is keyed weakly on the model, and a value that held the
        # model strongly would keep every model ever predicted on alive.
        model_ref = weakref.ref(model)
        probabilities = tasks.outputs_probabilities(model)

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
            out = summarize(samples, task, probabilities=probabilities)
            if return_samples:
                out["samples"] = samples
            return out
        # TF's retracing warning counts traces per Python code object: one traced function
        # per model (the design of this cache) reads as "retracing" from the fifth model on, as
        # in the Iris job's five seeds. TF sets the same flag on the functions it restores.
        run._omit_frequent_tracing_warning = True
        cache[key] = run
    return cache[key]


def _post_hoc_function(post, return_samples, probabilities):
    """The summary of a post-hoc method (calibrate, conformal) over the model's samples.

    Eager, on the samples of `_mc_function`: every calibrated or conformal object of a model
    shares that model's compiled MC graph, and its own few summary ops cost no trace (a traced
    function per object made TensorFlow warn of retracing after five objects).
    """
    def base(samples, exact):
        return summarize(samples, post.task, exact, probabilities)

    def run(samples, seed, alpha=None):
        out = post.summary(samples, base, True, alpha, seed)
        if return_samples:
            out["samples"] = samples
        return out
    return run


class NonFiniteOutputError(ValueError):
    """`predict` met an example whose outputs are not finite in float32; ``index`` is its row."""

    def __init__(self, message, index):
        super().__init__(message)
        self.index = index


def _check_outputs(out, offset):
    """Raise `NonFiniteOutputError` for the first example of a batch with a NaN or inf output.

    Inputs that are finite but huge (1e30) overflow float32 inside the network; the summary
    would hold NaN or inf. Returns the batch's number of examples.
    """
    rows = None
    for key, value in out.items():
        if key == "samples" or value.dtype.kind != "f":
            continue
        finite = np.isfinite(value.reshape(len(value), -1)).all(axis=1)
        rows = len(value)
        if not finite.all():
            first = offset + int(np.argmin(finite))
            raise NonFiniteOutputError(
                f"The model's {key} is not finite for example {first} of x ({int((~finite).sum())} "
                f"of this batch): its inputs are too far outside what float32 arithmetic in this "
                "model can handle; predict returns finite numbers or raises.", first)
    return rows or 0


def _check_batch(model, batch, num_samples=None):
    """The batch as the model's input dtype(s); with ``num_samples``, also its sample memory."""
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
    if num_samples is not None:
        safety.check_sample_memory(model, num_samples, len(out[0]))
    return out if len(out) > 1 else out[0]


def _as_arrays(x):
    """A table (pandas DataFrame or Series) or nested lists of numbers as numpy arrays."""
    if hasattr(x, "to_numpy") and not isinstance(x, (np.ndarray, tf.Tensor)):
        return x.to_numpy()
    if isinstance(x, (list, tuple)) and x and all(hasattr(a, "to_numpy") for a in x):
        return [a.to_numpy() for a in x]  # several inputs, one table each
    if isinstance(x, (list, tuple)) and x and not isinstance(x[0], (np.ndarray, tf.Tensor)):
        try:
            return np.asarray(x)  # rows of numbers: one input
        except ValueError:
            raise ValueError("x is a list whose rows differ in length; pass a numpy array "
                             "[N, ...] (or a list of arrays for several inputs).") from None
    return x


def _batches(x, batch_size):
    """Yield numpy input batches from arrays, a tf.data.Dataset or an iterable of batches."""
    x = _as_arrays(x)
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
    x = _as_arrays(x)
    if isinstance(x, tf.data.Dataset):
        n = int(x.cardinality())
        return n if n >= 0 else None
    if isinstance(x, (np.ndarray, tf.Tensor)):
        return -(-len(x) // batch_size)
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (np.ndarray, tf.Tensor)):
        return -(-len(x[0]) // batch_size)
    return None


def _post_hoc_task(post, task):
    """A calibrated or conformal model's task: the one it was fitted for."""
    if task is not None and options.choice("task", task, Task) is not post.task:
        raise ValueError(f"task={task!r} differs from the task {post.task.value!r} the "
                         f"{type(post).__name__} model was fitted for.")
    return post.task


def _conformal_alpha(post, alpha):
    """``alpha`` as a float64 tensor for a conformal model (None: its own level)."""
    if alpha is None:
        return None
    if post is None or post.alpha is None:
        raise ValueError("alpha applies to a tfp_bnn.conformal model only. Received: "
                         f"alpha={alpha!r} for a model without conformal sets or intervals")
    return tf.constant(post.checked_alpha(alpha), tf.float64)


def predict(model, x, num_samples=100, batch_size=None, seed=None, return_samples=False,
            verbose="auto", task=None, alpha=None):
    """Monte Carlo predictive distribution of ``model`` on ``x`` (S samples in one graph).

    Args:
        model: a tf_keras model (from `bayesify`, `mc_dropout`, ...) or a method's result that
            `tfp_bnn.methods.predictive_model` accepts (`DeepEnsemble` after fit, `laplace`,
            `SWAG` after fit, `distill`). Deterministic models work too: every sample is equal
            and the variance is 0 (a warning says so once).
        x: a numpy array, a list of arrays (several inputs), a tf.data.Dataset of batches
            (``x`` or ``(x, y)`` elements) or an iterable of such batches.
        num_samples: S, posterior samples per example (>= 1).
        batch_size: examples per graph call for array input (default 256).
        seed: an int in [0, 2**63 - 1] makes the result reproducible run to run. It is
            folded with the batch index (batch ``i`` draws with ``(seed, i)``), so the same
            seed with another ``batch_size`` draws other, equally valid, samples.
        return_samples: also return the ``[S, B, ...]`` per-sample outputs.
        verbose: "auto" shows a Keras progress bar when there are several batches (counted
            from an array's length or a dataset's cardinality; a generator gets none); 0 or 1.
        task: None (the model's own task, `tfp_bnn.tasks.resolve`) or "multiclass", "binary",
            "regression", "gaussian".
        alpha: for a `tfp_bnn.conformal` model, the miscoverage level of its sets or
            intervals (None: the level it was fitted with).

    Returns:
        `Prediction`: finite numbers only.

    Raises:
        NonFiniteOutputError (a ValueError) naming the first example whose outputs are NaN or
        inf: finite inputs far outside the training range (1e30) overflow float32 inside the
        network. ValueError when S x batch x the widest layer exceeds the available memory.
    """
    seed = options.seed("seed", seed)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    post = methods.post_hoc(model)
    alpha_t = _conformal_alpha(post, alpha)
    model = methods.predictive_model(model, "model")
    task = tasks.resolve(model, task) if post is None else _post_hoc_task(post, task)
    stochastic = is_stochastic(model)
    if not stochastic and model not in _WARNED:
        _WARNED.add(model)
        warnings.warn(f"model {model.name!r} has no stochastic layer: all Monte Carlo samples "
                      "are equal and the predictive variance is 0.", UserWarning, stacklevel=2)
    fn = _mc_function(model, int(num_samples), task, bool(return_samples) or post is not None,
                      stochastic)
    post_fn = (None if post is None else
               _post_hoc_function(post, bool(return_samples), tasks.outputs_probabilities(model)))
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)

    total = _num_batches(x, batch_size)
    show = (verbose == "auto" and (total or 0) > 1) or verbose == 1
    bar = tf_keras.utils.Progbar(total, unit_name="batch") if show else None

    parts, seen = [], 0
    for i, batch in enumerate(_batches(x, batch_size)):
        batch = _check_batch(model, batch, num_samples if i == 0 else None)
        seed_t = None if seed is None else tf.constant([int(seed), i], tf.int64)
        out = fn(batch, seed_t)
        if post_fn is not None:
            out = post_fn(out["samples"], seed_t, *([] if alpha_t is None else [alpha_t]))
        parts.append({k: v.numpy() for k, v in out.items()})
        seen += _check_outputs(parts[-1], seen)
        if bar is not None:
            bar.update(i + 1)
    if not parts:
        raise ValueError("x is empty: no batch to predict on.")
    merged = {k: np.concatenate([p[k] for p in parts], axis=1 if k == "samples" else 0)
              for k in parts[0]}
    return Prediction(task=task, num_samples=int(num_samples), **merged)
