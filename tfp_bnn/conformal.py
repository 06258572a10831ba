"""Split conformal prediction: sets and intervals with a finite-sample coverage guarantee.

`conformal` scores a calibration set the user holds out (never the training data) and keeps
the sorted scores. For a new x the prediction set (classification) or interval (regression)
is every label whose score is at most the finite-sample quantile

    q(alpha) = s_(k),  k = ceil((n + 1)(1 - alpha))   (the k-th smallest of n calibration scores)

so that ``P(y in C(x)) >= 1 - alpha`` for exchangeable data (and ``<= 1 - alpha + 1/(n+1)`` with
continuous, randomised scores). Scores, with ``p`` the (calibrated) predictive probabilities,
``rank(y)`` the 1-based rank of p_y among the classes in descending order (ties by class index),
``u ~ U(0, 1)`` per example (u = 1 for ``randomized=False``):

    "lac":  s = 1 - p_y
    "aps":  s = sum_{j ranked above y} p_j + u p_y                          (Romano et al. 2020)
    "raps": s = aps + lam * max(0, rank(y) - k_reg)                          (Angelopoulos et al.)
    "normalized": s = |y - mean| / std, std = sqrt(epistemic + aleatoric variance);
                  C(x) = [mean - q std, mean + q std]
    "cqr" (Gaussian head): with z = Phi^-1(1 - alpha/2), s = |y - mean| - z std;
                  C(x) = mean -+ max(z std + q, 0)                          (Romano et al. 2019)

The scores and sets are TF ops over the summary tensors: `tfp_bnn.predict` computes them in its
compiled graph, `tfp_bnn.export_savedmodel` in the served one (outputs ``prediction_set`` or
``interval_lower``/``interval_upper``, and a ``predict_with_alpha`` signature taking ``alpha``).
Regression outputs are calibrated each on its own (one q per output dimension).

Example (a model that outputs its input as logits, labels drawn from its softmax):
    >>> model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(
    ...     3, use_bias=False, kernel_initializer="identity")])
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(scale=2.0, size=(300, 3)).astype(np.float32)
    >>> y = np.array([rng.choice(3, p=np.exp(r) / np.exp(r).sum()) for r in z])
    >>> conf = tfp_bnn.conformal(model, z[:200], y[:200], alpha=0.1, num_samples=1)  # APS
    >>> p = tfp_bnn.predict(conf, z[200:], num_samples=1, seed=0)
    >>> round(tfp_bnn.metrics.empirical_coverage(p.prediction_sets, y[200:]), 2)
    0.91
    >>> p.prediction_sets[:2]
    array([[ True, False,  True],
           [ True, False, False]])

References:
    Vovk et al., "Algorithmic Learning in a Random World", 2005; Lei et al., "Distribution-free
    predictive inference for regression", JASA 2018 (split conformal). Romano, Sesia & Candes,
    "Classification with Valid and Adaptive Coverage", NeurIPS 2020 (APS). Angelopoulos et al.,
    "Uncertainty Sets for Image Classifiers using Conformal Prediction", ICLR 2021 (RAPS).
    Romano, Patterson & Candes, "Conformalized Quantile Regression", NeurIPS 2019 (CQR).
    Sadinle et al., "Least Ambiguous Set-Valued Classifiers", JASA 2019 (LAC).
"""
import math

import numpy as np

from tfp_bnn import calibration, methods, options, sampling, tasks
from tfp_bnn._keras import tf
from tfp_bnn.options import ConformalScore, Task
from tfp_bnn.predict import predict as mc_predict

__all__ = ["Conformal", "conformal", "quantile_index", "conformal_quantile", "class_scores",
           "prediction_sets", "intervals", "calibration_scores", "minimum_calibration_size",
           "SERVED_CLASSIFICATION", "SERVED_REGRESSION"]

SERVED_CLASSIFICATION = {"prediction_set": "prediction_sets"}
SERVED_REGRESSION = {"interval_lower": "interval_lower", "interval_upper": "interval_upper"}
# ceil() of (n + 1)(1 - alpha) forgives this much float error: (n + 1)(1 - alpha) that is an
# integer in exact arithmetic (n = 9, alpha = 0.1) must not round up to the next rank.
_CEIL_SLACK = 1e-9
# Folded into predict's seed for the randomised scores' u: independent of the layers' draws.
_UNIFORM_STREAM = 0x7FFF_FFFF


def minimum_calibration_size(alpha):
    """The smallest n with ``ceil((n + 1)(1 - alpha)) <= n``: ``ceil((1 - alpha) / alpha)``."""
    alpha = options.probability("alpha", alpha)
    return max(1, int(math.ceil((1.0 - alpha) / alpha - _CEIL_SLACK)))


def quantile_index(n, alpha):
    """``k = ceil((n + 1)(1 - alpha))`` as a TF int (may exceed n: then q is +inf)."""
    alpha = tf.cast(alpha, tf.float64)
    return tf.cast(tf.math.ceil((tf.cast(n, tf.float64) + 1.0) * (1.0 - alpha) - _CEIL_SLACK),
                   tf.int32)


def conformal_quantile(sorted_scores, alpha):
    """``q = s_(k)`` of scores sorted ascending along axis 0 (``[n]`` or ``[n, D]``), +inf when
    k > n (TF ops; ``alpha`` a Python float or a scalar tensor)."""
    scores = tf.convert_to_tensor(sorted_scores)
    n = tf.shape(scores)[0]
    k = quantile_index(n, alpha)
    q = tf.gather(scores, tf.clip_by_value(k - 1, 0, n - 1), axis=0)
    return tf.where(k > n, tf.constant(np.inf, scores.dtype), q)


def class_scores(probabilities, score, u=None, k_reg=1, lam=0.0):
    """The conformal score of every label, ``[B, C]`` (TF ops; see module doc).

    Args:
        probabilities: [B, C] predictive probabilities.
        score: "lac", "aps" or "raps".
        u: [B] uniforms of the randomised APS/RAPS scores; None gives u = 1 (deterministic).
        k_reg, lam: the RAPS penalty ``lam * max(0, rank - k_reg)``.
    """
    score = options.choice("score", score, ConformalScore)
    p = tf.cast(probabilities, tf.float32)
    if score is ConformalScore.LAC:
        return 1.0 - p
    # Stable: tied classes rank by index, the same order for calibration and prediction.
    order = tf.argsort(p, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # 0-based rank of each class
    above = tf.gather(tf.cumsum(tf.gather(p, order, batch_dims=1), axis=-1, exclusive=True),
                      rank, batch_dims=1)
    weight = tf.ones_like(p[:, :1]) if u is None else tf.cast(u, tf.float32)[:, tf.newaxis]
    out = above + weight * p
    if score is ConformalScore.RAPS:
        out += lam * tf.cast(tf.maximum(rank + 1 - k_reg, 0), tf.float32)
    return out


def prediction_sets(probabilities, q, score, u=None, k_reg=1, lam=0.0):
    """``C(x) = {y : score(x, y) <= q}`` as a bool [B, C] tensor (arguments as `class_scores`).

    Deterministic APS/RAPS (``u`` None) add the top class when that set is empty (its score,
    p_top, exceeds q): a superset of a valid set keeps the coverage guarantee, and the set is
    never empty (MAPIE's ``include_last_label`` in the case where the last label is the first).
    """
    sets = class_scores(probabilities, score, u, k_reg, lam) <= q
    score = options.choice("score", score, ConformalScore)
    if u is None and score is not ConformalScore.LAC:
        p = tf.cast(probabilities, tf.float32)
        top = tf.one_hot(tf.argmax(p, axis=-1), tf.shape(p)[-1], on_value=True,
                         off_value=False)
        sets = sets | top
    return sets


def intervals(mean, variance, q, score, alpha=None):
    """``(lower, upper)`` [B, D] of the "normalized" or "cqr" score at quantile ``q`` [D] (TF ops).

        normalized: mean -+ q std;   cqr: mean -+ max(Phi^-1(1 - alpha/2) std + q, 0)

    A negative CQR q empties the interval where ``z std < -q``; it is returned as the point
    ``[mean, mean]`` (a superset of the empty set, so coverage is unchanged for continuous y)
    rather than an inverted interval.
    """
    score = options.choice("score", score, ConformalScore)
    std = tf.sqrt(tf.cast(variance, tf.float32))
    if score is ConformalScore.CQR:
        half = tf.maximum(_normal_quantile(alpha) * std + q, 0.0)
    else:
        half = q * std
    mean = tf.cast(mean, tf.float32)
    return mean - half, mean + half


def _uniform(rows, seed):
    """[rows] U(0, 1) draws: stateless under predict's seed, fresh per process when served."""
    shape = tf.reshape(rows, [1])
    if seed is None:
        return tf.random.uniform(shape)
    if isinstance(seed, str) and seed == sampling.FRESH:
        # Op seeds 0, 0: a random seed per kernel instance, whatever the global seed was at
        # export (server replicas must not replay one stream).
        return tf.raw_ops.RandomUniform(shape=shape, dtype=tf.float32, seed=0, seed2=0)
    return tf.random.stateless_uniform(
        shape, seed=tf.random.experimental.stateless_fold_in(seed, _UNIFORM_STREAM))


class Conformal:
    """A split-conformal predictor fitted on a calibration set; built by `conformal`.

    `tfp_bnn.predict` and `tfp_bnn.export_savedmodel` take it wherever they take the model (the
    `tfp_bnn.methods.PostHoc` protocol); predictions gain ``prediction_sets`` or
    ``interval_lower``/``interval_upper``.

    Attributes:
        model: the wrapped model, method or `tfp_bnn.calibration.Calibrated` (not changed).
        task: the model's `Task`.
        score: the `ConformalScore`.
        alpha: the miscoverage level the sets are built for (``predict(..., alpha=)`` and the
            served ``predict_with_alpha`` signature take another one).
        randomized: APS/RAPS with u ~ U(0, 1) (exact coverage) or u = 1 (conservative).
        k_reg, lam: the RAPS penalty.
        scores: the sorted calibration scores, [n] (classification) or [n, D] ("normalized");
            for "cqr" the residuals ``|y - mean|``, [n, D], beside ``stds``.
        stds: the calibration stds, [n, D] ("cqr" only), else None.
        quantile: q at ``alpha`` (a float, or [D] for regression).
        num_samples: S of the calibration predictions.
    """

    def __init__(self, model, task, score, alpha, scores, stds=None, randomized=True, k_reg=1,
                 lam=0.0, num_samples=None):
        self.model = model
        self.task = task
        self.score = score
        self.alpha = alpha
        self.scores = scores
        self.stds = stds
        self.randomized = randomized
        self.k_reg = k_reg
        self.lam = lam
        self.num_samples = num_samples
        self.quantile = self._quantile(alpha).numpy()

    def as_model(self):
        return methods.predictive_model(self.model, "model")

    def checked_alpha(self, alpha):
        """``alpha`` as a float, refused when outside (0, 1) or too small for the calibration
        set (the quantile index would pass n: an infinite, useless quantile)."""
        alpha = options.probability("alpha", alpha)
        n = len(self.scores)
        if n < minimum_calibration_size(alpha):
            raise ValueError(f"alpha={alpha} needs at least {minimum_calibration_size(alpha)} "
                             f"calibration examples; the conformal model has {n}.")
        return alpha

    @property
    def served(self):
        inner = methods.post_hoc(self.model)
        base = inner.served if inner is not None else tasks.get(self.task).served
        extra = SERVED_CLASSIFICATION if self.score.is_classification else SERVED_REGRESSION
        return {**base, **extra}

    def _quantile(self, alpha):
        if self.score is ConformalScore.CQR:
            scores = tf.constant(self.scores) - _normal_quantile(alpha) * tf.constant(self.stds)
            return conformal_quantile(tf.sort(scores, axis=0), alpha)
        return conformal_quantile(tf.constant(self.scores), alpha)

    def summary(self, samples, summarize, exact=True, alpha=None, seed=None):
        """The wrapped model's summary plus the sets or intervals at ``alpha`` (TF ops).

        Args:
            samples: the model's ``[S, B, ...]`` output samples.
            summarize: ``summarize(samples, exact)``, the caller's summary of the model's
                samples (`tfp_bnn.predict.summarize` for its task).
            exact: as in `tfp_bnn.predict.summarize`.
            alpha: None (``self.alpha``) or a scalar (a float64 tensor in the served graph).
            seed: None, predict's int64 [2] seed, or `tfp_bnn.sampling.FRESH` (served): the
                draws of the randomised APS/RAPS u.
        """
        inner = methods.post_hoc(self.model)
        out = dict(inner.summary(samples, summarize, exact) if inner is not None
                   else summarize(samples, exact))
        alpha = self.alpha if alpha is None else alpha
        q = self._quantile(alpha)
        if self.score.is_classification:
            p = out["probabilities"]
            u = _uniform(tf.shape(p)[0], seed) if self.randomized else None
            out["prediction_sets"] = prediction_sets(p, q, self.score, u, self.k_reg, self.lam)
        else:
            out["interval_lower"], out["interval_upper"] = intervals(
                out["mean"], out["variance"], q, self.score, alpha)
        return out

    def get_config(self, with_scores=False):
        """The fitted values as a JSON-clean dict (saved with an export).

        Args:
            with_scores: also the calibration ``scores`` (and ``stds``) and ``num_samples``:
                everything `from_config` needs to rebuild the predictor at any alpha.
        """
        inner = methods.post_hoc(self.model)
        q = np.asarray(self.quantile, np.float64)
        config = {"conformal": self.score.value, "task": self.task.value, "alpha": self.alpha,
                  "quantile": q.tolist(), "calibration_size": int(self.scores.shape[0]),
                  "randomized": self.randomized, "k_reg": self.k_reg, "lam": self.lam,
                  "calibrated": None if inner is None else inner.get_config()}
        if with_scores:
            # float32 -> float64 -> JSON -> float32 is exact, so the rebuilt q is the same.
            config.update(scores=np.asarray(self.scores, np.float64).tolist(),
                          stds=None if self.stds is None
                          else np.asarray(self.stds, np.float64).tolist(),
                          num_samples=self.num_samples)
        return config

    @classmethod
    def from_config(cls, model, config):
        """The `Conformal` of ``model`` from ``get_config(with_scores=True)`` (no refit).

        A config whose ``calibrated`` entry is set wraps ``model`` in
        `tfp_bnn.calibration.Calibrated.from_config` first (or checks that ``model`` is that
        calibration already).

        Example:
            >>> model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(
            ...     3, use_bias=False, kernel_initializer="identity")])
            >>> z = np.random.default_rng(1).normal(scale=2.0, size=(20, 3)).astype(np.float32)
            >>> conf = conformal(model, z, z.argmax(1), score="lac", num_samples=1)
            >>> again = Conformal.from_config(model, conf.get_config(with_scores=True))
            >>> bool(again.quantile == conf.quantile)
            True
        """
        if isinstance(model, Conformal):
            raise ValueError(f"model is already conformal ({model!r}): pass the model it "
                             "wraps. Received: model of type Conformal")
        if not isinstance(config, dict) or config.get("scores") is None:
            raise ValueError("config must be a dict from Conformal.get_config(with_scores=True) "
                             "(with the calibration scores). Received: "
                             f"{type(config).__name__} without 'scores'")
        saved = config.get("calibrated")
        inner = methods.post_hoc(model)
        if inner is None and saved is not None:
            model = calibration.Calibrated.from_config(model, saved)
        elif inner is not None and inner.get_config() != saved:
            raise ValueError(f"model is calibrated as {inner.get_config()}; the config was "
                             f"fitted on {saved}.")
        score = options.choice("conformal", config.get("conformal"), ConformalScore,
                               what="conformal score")
        task = options.choice("task", config.get("task"), Task)
        resolved = (calibration.saved_task(model, task) if inner is None and saved is None
                    else model.task)
        if resolved is not task:
            raise ValueError(f"config is for task {task.value!r}; the model's task is "
                             f"{resolved.value!r}.")
        _check_score(score, task)
        scores = np.asarray(config["scores"], np.float32)
        stds = None if config.get("stds") is None else np.asarray(config["stds"], np.float32)
        if score is ConformalScore.CQR and (stds is None or stds.shape != scores.shape):
            raise ValueError("score='cqr' needs 'stds' of the shape of 'scores'. Received: "
                             f"stds={None if stds is None else stds.shape}, "
                             f"scores={scores.shape}")
        num_samples = config.get("num_samples")
        return cls(model=model, task=task, score=score,
                   alpha=options.probability("alpha", config.get("alpha")), scores=scores,
                   stds=stds, randomized=_boolean("randomized", config.get("randomized")),
                   k_reg=options.integer("k_reg", config.get("k_reg"), minimum=0),
                   lam=options.number("lam", config.get("lam"), minimum=0.0),
                   num_samples=None if num_samples is None else int(num_samples))

    def __repr__(self):
        return (f"Conformal(score={self.score.value!r}, alpha={self.alpha}, "
                f"n={self.scores.shape[0]}, quantile={np.round(self.quantile, 4).tolist()})")


def _normal_quantile(alpha):
    """``Phi^-1(1 - alpha / 2)`` in float32 (tf.math.ndtri is a core op)."""
    return tf.cast(tf.math.ndtri(1.0 - tf.cast(alpha, tf.float64) / 2.0), tf.float32)


def _default_score(task):
    return ConformalScore.APS if Task(task).is_classification else ConformalScore.NORMALIZED


def _check_score(score, task):
    if score.is_classification != Task(task).is_classification:
        kind = "classification" if score.is_classification else "regression"
        valid = (["lac", "aps", "raps"] if Task(task).is_classification
                 else ["normalized", "cqr"])
        raise ValueError(f"score={score.value!r} is a {kind} score; the model's task is "
                         f"{Task(task).value!r}. Valid: {valid}")
    if score is ConformalScore.CQR and task is not Task.GAUSSIAN:
        raise ValueError(f"score='cqr' needs the quantiles of a Gaussian head (task 'gaussian'); "
                         f"the model's task is {Task(task).value!r}. Use score='normalized'.")


def conformal(model, x_cal, y_cal, alpha=0.1, score=None, randomized=True, k_reg=1, lam=0.01,
              num_samples=100, seed=0, batch_size=None, task=None):
    """Fit split conformal prediction on a held-out calibration set (see module doc).

        s_i = score(x_i, y_i) on the calibration set;  q = s_(ceil((n+1)(1-alpha)))
        C(x) = {y : score(x, y) <= q}     =>     P(y in C(x)) >= 1 - alpha

    Args:
        model: anything `tfp_bnn.predict` takes, or a `tfp_bnn.calibrate` result (the scores are
            then those of the calibrated predictive); not changed.
        x_cal, y_cal: the calibration set: held out from training and from any validation set
            the model was tuned on, exchangeable with the test data. At least
            `minimum_calibration_size` (alpha) examples.
        alpha: the miscoverage level in (0, 1); sets cover with probability >= 1 - alpha.
        score: None ("aps" for classification, "normalized" for regression), "lac", "aps",
            "raps", "normalized" or "cqr" (Gaussian head).
        randomized: APS/RAPS with u ~ U(0, 1) (exact coverage, possibly empty sets) or u = 1
            (never empty, over-covers).
        k_reg, lam: the RAPS penalty ``lam * max(0, rank - k_reg)``.
        num_samples: S of the calibration predictions; predict with the same S.
        seed: seed of the calibration predictions and of the calibration u (None: unseeded).
        batch_size: as in `tfp_bnn.predict`.
        task: None (the model's own task) or a `tfp_bnn.Task`, as in `tfp_bnn.predict`.

    Returns:
        A `Conformal`, accepted by `tfp_bnn.predict` and `tfp_bnn.export_savedmodel`.

    Example:
        >>> model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(
        ...     3, use_bias=False, kernel_initializer="identity")])     # logits in, logits out
        >>> z = np.random.default_rng(1).normal(scale=2.0, size=(20, 3)).astype(np.float32)
        >>> conf = conformal(model, z, z.argmax(1), alpha=0.1, score="lac", num_samples=1)
        >>> str(conf.score), conf.scores.shape                     # 20 sorted scores
        ('lac', (20,))
    """
    if isinstance(model, Conformal):
        raise ValueError(f"model is already conformal ({model!r}): pass the model (or its "
                         "calibrate result) it wraps. Received: model of type Conformal")
    alpha = options.probability("alpha", alpha)
    randomized = _boolean("randomized", randomized)
    k_reg = options.integer("k_reg", k_reg, minimum=0)
    lam = options.number("lam", lam, minimum=0.0)
    inner = methods.post_hoc(model)
    resolved = (tasks.resolve(methods.predictive_model(model, "model"), task) if inner is None
                else inner.task)
    if task is not None and options.choice("task", task, Task) is not resolved:
        raise ValueError(f"task={task!r} differs from the calibrated model's task "
                         f"{resolved.value!r}.")
    score = (_default_score(resolved) if score is None
             else options.choice("score", score, ConformalScore, what="conformal score"))
    _check_score(score, resolved)

    pred = mc_predict(model, x_cal, num_samples=num_samples, seed=seed, batch_size=batch_size,
                      verbose=0, task=resolved)
    n = len(pred.probabilities if pred.is_classification else pred.mean)
    needed = minimum_calibration_size(alpha)
    if n < needed:
        raise ValueError(f"x_cal has {n} examples; alpha={alpha} needs at least {needed} (the "
                         "rank ceil((n + 1)(1 - alpha)) must be <= n), or a larger alpha.")
    y = calibration._targets(y_cal, pred, "y_cal")
    if pred.is_classification:
        u = (np.random.default_rng(seed).uniform(size=n).astype(np.float32) if randomized
             else None)
        fitted = calibration_scores(score, y, probabilities=pred.probabilities, u=u,
                                    k_reg=k_reg, lam=lam)
    else:
        if not (pred.variance > 0).all():
            raise ValueError(
                f"score={score.value!r} divides by the predictive std, which is 0 for "
                f"{int((pred.variance <= 0).sum())} calibration value(s): the model has no "
                "stochastic layer and no Gaussian head.")
        fitted = calibration_scores(score, y, mean=pred.mean, variance=pred.variance)
    return Conformal(model=model, task=resolved, score=score, alpha=alpha,
                     randomized=randomized, k_reg=k_reg, lam=lam, num_samples=int(num_samples),
                     **fitted)


def calibration_scores(score, y, probabilities=None, mean=None, variance=None, u=None, k_reg=1,
                       lam=0.0):
    """The calibration set's scores as `Conformal` keeps them: ``{"scores": ..., "stds": ...}``.

    Classification: the sorted scores of the true labels, [n] (``class_scores`` at y).
    "normalized": the sorted ``|y - mean| / std``, [n, D]. "cqr": the residuals
    ``|y - mean|`` and the stds, [n, D] each, unsorted (its score depends on alpha).
    """
    score = options.choice("score", score, ConformalScore)
    if score.is_classification:
        every = class_scores(probabilities, score, u, k_reg, lam).numpy()
        return {"scores": np.sort(every[np.arange(len(y)), y])}
    std = np.sqrt(np.asarray(variance, np.float32))
    residual = np.abs(np.asarray(y, np.float32) - np.asarray(mean, np.float32))
    if score is ConformalScore.CQR:
        return {"scores": residual, "stds": std}
    return {"scores": np.sort(residual / std, axis=0)}


def _boolean(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")
    return bool(value)
