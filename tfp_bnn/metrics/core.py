"""Calibration and evaluation metrics for (MC-averaged) predictive probabilities.

All functions take numpy array-likes: ``probabilities`` [B, C] (rows of a predictive
distribution, e.g. the mean of the Monte Carlo samples) and integer ``labels`` [B]. With
``conf_i = max_c p_ic``, ``pred_i = argmax_c p_ic`` and equal-width bins ``B_b`` on [0, 1]:

    accuracy = mean_i [pred_i == y_i]
    NLL      = -mean_i log p_i,y_i
    Brier    = mean_i sum_c (p_ic - [c == y_i])^2
    ECE      = sum_b (n_b / N) |acc_b - conf_b|  =  sum_b |sum_{i in B_b} ([pred_i == y_i] - conf_i)| / N
    AUROC    = P(s_out > s_in) + 1/2 P(s_out = s_in)

For regression, with predictive mean ``m_id`` and variance ``v_id``:

    Gaussian NLL = mean_i sum_d [0.5 log(2 pi v_id) + (y_id - m_id)^2 / (2 v_id)]
    RMSE         = sqrt(mean_id (y_id - m_id)^2)

`ExpectedCalibrationError` is the same ECE as a streaming Keras metric.

Example:
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])   # e.g. Prediction.probabilities
    >>> y_test = np.array([0, 1, 1])
    >>> round(expected_calibration_error(probs, y_test, num_bins=15), 4)
    0.3
    >>> ood_auroc([0.1, 0.2], [0.3, 0.9])                  # higher score = more uncertain
    1.0
    >>> model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(2)])
    >>> model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...               metrics=[ExpectedCalibrationError(from_logits=True)])

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    Naeini et al., "Obtaining Well Calibrated Probabilities Using Bayesian Binning", AAAI 2015.
    Brier, "Verification of Forecasts Expressed in Terms of Probability", Mon. Weather Rev. 1950.
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks", ICLR 2017.
"""
import dataclasses
import numbers

import numpy as np

from tfp_bnn._keras import tf, tf_keras

__all__ = ["accuracy", "nll", "brier_score", "gaussian_nll", "rmse", "CalibrationBins",
           "calibration_bins",
           "expected_calibration_error", "ood_auroc", "accuracy_vs_retained",
           "reliability_curve_bootstrap", "ExpectedCalibrationError", "check_probabilities",
           "check_labels"]

# Rounding lets a softmax row's maximum exceed 1 by a few ulps; anything beyond is not a probability.
_PROB_TOL = 1e-6


# ----------------------------------------------------------------------------- validation
def _check_num_bins(num_bins):
    if isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer. Received: num_bins={num_bins!r}")
    return int(num_bins)


def check_probabilities(probabilities, name="probabilities"):
    """``probabilities`` as a float64 [B, C] array in [0, 1]; otherwise a ValueError naming
    ``name`` and the value (logits, NaN, a wrong rank)."""
    try:
        p = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array [batch, classes]. "
                         f"Received: {name} of type {type(probabilities).__name__}") from None
    if p.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [batch, classes]. Received: {name}.shape={p.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one example and one class. "
                         f"Received: {name}.shape={p.shape}")
    if np.isnan(p).any():
        raise ValueError(f"{name} must not contain NaN. "
                         f"Received: {name} with {int(np.isnan(p).sum())} NaN value(s)")
    if p.min() < 0 or p.max() > 1 + _PROB_TOL:
        raise ValueError(f"{name} must lie in [0, 1] (probabilities, not logits). "
                         f"Received: {name} with min={float(p.min())!r}, max={float(p.max())!r}")
    return p


def check_labels(labels, num_examples, num_classes, name="labels"):
    """``labels`` as int64 class indices [B] for B examples of C classes (integral floats
    accepted); otherwise a ValueError naming ``name`` and the value."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices. Received: {name}.shape={y.shape}")
    if y.shape[0] != num_examples:
        raise ValueError(f"{name} must have one entry per row of probabilities. "
                         f"Received: len({name})={y.shape[0]}, len(probabilities)={num_examples}")
    # Integral floats (e.g. labels read back from a float tensor) are accepted; 0.5 is not.
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y)))):
        raise ValueError(f"{name} must be integer class indices. "
                         f"Received: {name}={y[:5].tolist()!r}{'...' if y.size > 5 else ''} (dtype {y.dtype})")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"{name} must be integers in [0, {num_classes}). "
                         f"Received: {name} containing {np.unique(y[bad])[:5].tolist()}")
    return y


def _check_scores(scores, name, length=None):
    try:
        s = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D numeric array. "
                         f"Received: {name} of type {type(scores).__name__}") from None
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array. Received: {name}.shape={s.shape}")
    if np.isnan(s).any():
        raise ValueError(f"{name} must not contain NaN. "
                         f"Received: {name} with {int(np.isnan(s).sum())} NaN value(s)")
    if length is not None and s.shape[0] != length:
        raise ValueError(f"{name} must have one entry per row of probabilities. "
                         f"Received: len({name})={s.shape[0]}, len(probabilities)={length}")
    return s


def _prepare(probabilities, labels):
    p = check_probabilities(probabilities)
    return p, check_labels(labels, p.shape[0], p.shape[1])


# ----------------------------------------------------------------------------- point metrics
def accuracy(probabilities, labels):
    """Fraction of examples whose argmax class (first on ties) equals the label."""
    p, y = _prepare(probabilities, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def nll(probabilities, labels, eps=1e-12):
    """Mean negative log-likelihood ``-mean_i log max(p_i,y_i, eps)`` of the predictive.

    ``eps`` keeps a zero probability on the true class finite (it contributes -log eps).
    """
    p, y = _prepare(probabilities, labels)
    if not (isinstance(eps, numbers.Real) and 0 < eps < 1):
        raise ValueError(f"eps must be a number in (0, 1). Received: eps={eps!r}")
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], eps))))


def brier_score(probabilities, labels):
    """Mean over examples of ``sum_c (p_c - onehot_c)^2`` (0 is perfect, 2 is the maximum)."""
    p, y = _prepare(probabilities, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# ----------------------------------------------------------------------------- regression
def _regression_arrays(mean, targets, name="mean"):
    m = np.asarray(mean, dtype=np.float64)
    m = m[:, None] if m.ndim == 1 else m
    t = np.asarray(targets, dtype=np.float64)
    if m.ndim != 2 or t.size != m.size:
        raise ValueError(f"{name} must be [B] or [B, D] with one target per value. "
                         f"Received: {name}.shape={m.shape}, targets.shape={t.shape}")
    return m, t.reshape(m.shape)


def gaussian_nll(mean, variance, targets):
    """Mean over examples of ``-log N(y | mean, variance)``, summed over the D outputs.

    For a BNN pass the MC mean and total (aleatoric + epistemic) variance: the NLL of the
    moment-matched Gaussian predictive. Variances are floored at 1e-12.
    """
    m, y = _regression_arrays(mean, targets)
    v, _ = _regression_arrays(variance, targets, "variance")
    v = np.maximum(v, 1e-12)
    return float(np.mean(np.sum(0.5 * np.log(2 * np.pi * v) + (y - m) ** 2 / (2 * v), axis=-1)))


def rmse(mean, targets):
    """Root mean squared error over all examples and outputs."""
    m, y = _regression_arrays(mean, targets)
    return float(np.sqrt(np.mean((y - m) ** 2)))


# ----------------------------------------------------------------------------- calibration
@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationBins:
    """Per-bin statistics of a reliability diagram (read-only numpy arrays).

    Attributes:
        edges: [num_bins + 1] bin edges ``k / num_bins``, k = 0..num_bins.
        confidence: [num_bins] mean max-probability in each bin, NaN for an empty bin.
        accuracy: [num_bins] fraction correct in each bin, NaN for an empty bin.
        counts: [num_bins] number of examples in each bin (int).
    """
    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def centers(self):
        return 0.5 * (self.edges[:-1] + self.edges[1:])


def _edges(num_bins):
    # k / n is the correctly rounded value of the literal a user writes (0.6, not linspace's
    # 3 * 0.2 = 0.6000000000000001), so "a confidence on an edge" means what it says.
    return np.arange(num_bins + 1) / num_bins


def _bin_index(conf, edges):
    # Bin b is [edges[b], edges[b+1]): a confidence on an inner edge goes to the upper bin; 1.0
    # (and the few-ulp overshoot of float32 softmax) goes into the last bin, 0 into the first.
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, len(edges) - 2)


def _bin_sums(p, y, num_bins):
    """edges, counts, sum of confidences and number correct per bin."""
    edges = _edges(num_bins)
    conf = p.max(axis=1)
    idx = _bin_index(conf, edges)
    counts = np.bincount(idx, minlength=num_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=num_bins)
    correct_sum = np.bincount(idx, weights=(p.argmax(axis=1) == y).astype(np.float64), minlength=num_bins)
    return edges, counts, conf_sum, correct_sum


def calibration_bins(probabilities, labels, num_bins=15):
    """Equal-width bins on [0, 1] over the max probability (the reliability-diagram data).

        b(i) = b such that edges[b] <= conf_i < edges[b+1]   (conf_i = 1 goes into the last bin)
        conf_b = mean_{i in b} conf_i,   acc_b = mean_{i in b} [argmax p_i == y_i]

    Args:
        probabilities: [B, C] predictive probabilities.
        labels: [B] integer labels in [0, C).
        num_bins: number of equal-width bins, a positive integer.

    Returns:
        A `CalibrationBins`; empty bins have NaN confidence and accuracy and count 0.

    Example:
        >>> calibration_bins([[0.9, 0.1], [0.3, 0.7]], [0, 0], num_bins=5).counts
        array([0, 0, 0, 1, 1])
    """
    num_bins = _check_num_bins(num_bins)
    p, y = _prepare(probabilities, labels)
    edges, counts, conf_sum, correct_sum = _bin_sums(p, y, num_bins)
    denom = np.maximum(counts, 1)
    fields = dict(edges=edges,
                  confidence=np.where(counts > 0, conf_sum / denom, np.nan),
                  accuracy=np.where(counts > 0, correct_sum / denom, np.nan),
                  counts=counts.astype(np.int64))
    for a in fields.values():
        a.setflags(write=False)
    return CalibrationBins(**fields)


def expected_calibration_error(probabilities, labels, num_bins=15):
    """Expected calibration error over equal-width confidence bins (see `calibration_bins`).

        ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - sum_{i in b} conf_i| / N

    Example:
        >>> round(expected_calibration_error([[0.9, 0.1], [0.3, 0.7]], [0, 0], num_bins=5), 6)
        0.4
    """
    num_bins = _check_num_bins(num_bins)
    p, y = _prepare(probabilities, labels)
    _, _, conf_sum, correct_sum = _bin_sums(p, y, num_bins)
    return float(np.sum(np.abs(correct_sum - conf_sum)) / p.shape[0])


def ood_auroc(scores_in, scores_out):
    """AUROC of detecting out-of-distribution inputs (positives) by an uncertainty score.

        AUROC = U / (n_in n_out) = P(s_out > s_in) + 1/2 P(s_out = s_in)

    with U the Mann-Whitney statistic from mid-ranks, so ties count 1/2 exactly.

    Args:
        scores_in: [n_in] scores of in-distribution examples (higher = more uncertain).
        scores_out: [n_out] scores of out-of-distribution examples.

    Example:
        >>> ood_auroc([0.1, 0.5], [0.5, 0.9])   # pairs: 1, 1, 1/2, 1 -> 0.875
        0.875
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    values, inverse, counts = np.unique(np.concatenate([s_in, s_out]),
                                        return_inverse=True, return_counts=True)
    # Mid-rank of each distinct value: ranks before it + (count + 1) / 2.
    mid_rank = np.cumsum(counts) - counts + (counts + 1) / 2.0
    n_in, n_out = len(s_in), len(s_out)
    rank_sum_out = mid_rank[inverse[n_in:]].sum()
    u = rank_sum_out - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def accuracy_vs_retained(probabilities, labels, uncertainty, fractions=None):
    """Accuracy on the most certain fraction of the data, for each retained fraction.

        acc(f) = mean of [pred_i == y_i] over the ceil(f N) examples of lowest uncertainty

    Examples are sorted by ``uncertainty`` ascending with a stable sort (ties keep data order).

    Args:
        probabilities: [B, C] predictive probabilities.
        labels: [B] integer labels.
        uncertainty: [B] score, higher = less certain (e.g. predictive entropy).
        fractions: retained fractions in (0, 1]; default 0.1, 0.2, ..., 1.0.

    Returns:
        ``(fractions, accuracies)``, two float arrays of the same length.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
        >>> y, entropy = np.array([0, 1, 1, 1]), np.array([0.3, 0.7, 0.5, 0.69])
        >>> fractions, acc = accuracy_vs_retained(probs, y, entropy, fractions=[0.5, 1.0])
        >>> fractions.tolist(), acc.tolist()        # the 2 most certain are right; 1 of the rest
        ([0.5, 1.0], [1.0, 0.5])
    """
    p, y = _prepare(probabilities, labels)
    u = _check_scores(uncertainty, "uncertainty", length=p.shape[0])
    f = np.arange(1, 11) / 10.0 if fractions is None else np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or np.isnan(f).any() or (f <= 0).any() or (f > 1).any():
        raise ValueError(f"fractions must be a non-empty 1-D array of values in (0, 1]. "
                         f"Received: fractions={fractions!r}")
    correct = (p.argmax(axis=1) == y)[np.argsort(u, kind="stable")]
    # The tolerance stops 0.55 * 100 = 55.00000000000001 from rounding up to 56 examples.
    keep = np.maximum(1, np.ceil(f * len(y) - 1e-9).astype(np.int64))
    cumulative = np.cumsum(correct)
    return f, cumulative[keep - 1] / keep


def reliability_curve_bootstrap(probabilities, labels, num_bins=15, n_boot=1000, seed=0):
    """Per-bin accuracy with a 95 % percentile bootstrap band (examples resampled).

        acc_b = correct_b / n_b;   band = [2.5 %, 97.5 %] quantiles of acc_b over resamples

    Resampling N examples with replacement only matters through how many land in each
    (bin, correct) cell, so each resample is drawn directly as those multinomial counts: the
    same distribution as resampling examples, at O(n_boot * num_bins) cost.

    Args:
        probabilities, labels, num_bins: as in `calibration_bins`.
        n_boot: number of bootstrap resamples, a positive integer.
        seed: seed of the numpy generator.

    Returns:
        ``(bin_centers, mean_acc, lo, hi)``, each [num_bins]: ``mean_acc`` is the per-bin
        accuracy of the data itself (the point estimate); all three are NaN for an empty bin.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
        >>> centers, acc, lo, hi = reliability_curve_bootstrap(probs, [0, 1, 1, 0], num_bins=2,
        ...                                                    n_boot=100)
        >>> centers.tolist(), acc.tolist()
        ([0.25, 0.75], [nan, 0.75])
    """
    num_bins = _check_num_bins(num_bins)
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer. Received: n_boot={n_boot!r}")
    p, y = _prepare(probabilities, labels)
    edges, counts, _, correct_sum = _bin_sums(p, y, num_bins)
    n = p.shape[0]
    cells = np.concatenate([correct_sum, counts - correct_sum]) / n   # [correct | wrong] per bin
    draws = np.random.default_rng(seed).multinomial(n, cells / cells.sum(), size=n_boot)
    boot_correct, boot_counts = draws[:, :num_bins], draws[:, :num_bins] + draws[:, num_bins:]
    boot_acc = np.where(boot_counts > 0, boot_correct / np.maximum(boot_counts, 1), np.nan)
    lo = np.full(num_bins, np.nan)
    hi = np.full(num_bins, np.nan)
    for b in np.flatnonzero(counts):   # a bin with data is non-empty in some resample
        lo[b], hi[b] = np.nanpercentile(boot_acc[:, b], [2.5, 97.5])
    mean_acc = np.where(counts > 0, correct_sum / np.maximum(counts, 1), np.nan)
    return 0.5 * (edges[:-1] + edges[1:]), mean_acc, lo, hi


# ----------------------------------------------------------------------------- Keras metric
@tf_keras.saving.register_keras_serializable(package="tfp_bnn")
class ExpectedCalibrationError(tf_keras.metrics.Metric):
    """Streaming expected calibration error, identical to `expected_calibration_error`.

        ECE = sum_b |correct_b - sum_{i in b} conf_i| / N   (sums accumulated over batches)

    Per-bin counts, confidence sums and correct counts are kept in float64 non-trainable
    weights and binned exactly as the numpy function does.

    Args:
        num_bins: number of equal-width confidence bins.
        from_logits: ``y_pred`` holds logits (softmax is applied) instead of probabilities.
        name, dtype: as for any Keras metric.

    Example:
        >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3,
        ...                                                             activation="softmax")])
        >>> model.compile("adam", "sparse_categorical_crossentropy",
        ...               metrics=["accuracy", ExpectedCalibrationError(num_bins=15)])
        >>> ece = ExpectedCalibrationError(num_bins=5)          # the same ECE, streamed
        >>> ece.update_state([0, 0], [[0.9, 0.1], [0.3, 0.7]])
        >>> round(float(ece.result()), 6)
        0.4

    References:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    """

    def __init__(self, num_bins=15, from_logits=False, name="ece", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.num_bins = _check_num_bins(num_bins)
        self.from_logits = bool(from_logits)
        self._edges = tf.constant(_edges(self.num_bins), dtype=tf.float64)
        self.bin_counts = self.add_weight(name="bin_counts", shape=(self.num_bins,),
                                          initializer="zeros", dtype=tf.float64)
        self.confidence_sums = self.add_weight(name="confidence_sums", shape=(self.num_bins,),
                                               initializer="zeros", dtype=tf.float64)
        self.correct_sums = self.add_weight(name="correct_sums", shape=(self.num_bins,),
                                            initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = tf.cast(tf.convert_to_tensor(y_pred), tf.float64)
        y_true = tf.convert_to_tensor(y_true)
        if y_pred.shape.rank != 2:
            raise ValueError(f"y_pred must be 2-D [batch, classes]. Received: y_pred.shape={y_pred.shape}")
        if y_true.shape.rank == 2 and y_true.shape[-1] == 1:
            y_true = tf.squeeze(y_true, axis=-1)
        if y_true.shape.rank != 1:
            raise ValueError("y_true must be sparse integer labels [batch] or [batch, 1]. "
                             f"Received: y_true.shape={y_true.shape}")
        labels = tf.cast(y_true, tf.int64)
        num_classes = tf.shape(y_pred, out_type=tf.int64)[1]
        checks = [
            tf.debugging.assert_equal(tf.cast(labels, y_true.dtype), y_true,
                                      message="y_true must be integer class indices"),
            tf.debugging.assert_non_negative(labels, message="y_true must be in [0, num_classes)"),
            tf.debugging.assert_less(labels, num_classes, message="y_true must be in [0, num_classes)"),
        ]
        with tf.control_dependencies(checks):
            probs = tf.nn.softmax(y_pred, axis=-1) if self.from_logits else tf.identity(y_pred)
        conf = tf.reduce_max(probs, axis=-1)
        correct = tf.cast(tf.equal(tf.argmax(probs, axis=-1), labels), tf.float64)
        idx = tf.searchsorted(self._edges, conf, side="right") - 1
        idx = tf.clip_by_value(idx, 0, self.num_bins - 1)
        weight = tf.ones_like(conf) if sample_weight is None else \
            tf.reshape(tf.cast(sample_weight, tf.float64), [-1]) * tf.ones_like(conf)
        segment = lambda values: tf.math.unsorted_segment_sum(values * weight, idx, self.num_bins)
        return tf.group(self.bin_counts.assign_add(segment(tf.ones_like(conf))),
                        self.confidence_sums.assign_add(segment(conf)),
                        self.correct_sums.assign_add(segment(correct)))

    def result(self):
        total = tf.reduce_sum(self.bin_counts)
        ece = tf.math.divide_no_nan(tf.reduce_sum(tf.abs(self.correct_sums - self.confidence_sums)), total)
        return tf.cast(ece, self.dtype)

    def reset_state(self):
        for v in (self.bin_counts, self.confidence_sums, self.correct_sums):
            v.assign(tf.zeros_like(v))

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins, "from_logits": self.from_logits}
