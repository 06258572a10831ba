"""Uncertainty a user can act on: calibration beyond equal-width bins, selective prediction,
OOD detection, prediction sets and intervals, regression calibration.

Same inputs as `tfp_bnn.metrics.core` (``probabilities`` [B, C], integer ``labels`` [B]), plus
per-example uncertainty scores, prediction sets [B, C] and interval ends:

    ACE            = sum_b (n_b / N) |acc_b - conf_b|  over equal-mass confidence bins
    classwise-ECE  = (1/C) sum_c sum_b (n_bc / N) |freq_bc - conf_bc|  (bins on p_c)
    risk(k)        = errors among the k most certain / k,  AURC = (1/N) sum_k risk(k)
    AUPR           = average precision of OOD (positive) vs in-distribution by the score
    FPR@95TPR      = fraction of in-distribution scores >= the threshold keeping 95 % of OOD
    coverage       = mean_i [y_i in C(x_i)],  set size = mean_i |C(x_i)|
    PICP           = mean_i [lower_i <= y_i <= upper_i],  MPIW = mean_i (upper_i - lower_i)
    CRPS(N(m, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)],  z = (y - m) / s
    CRPS(samples, y)   = (1/S) sum_s |x_s - y| - 1/(2 S^2) sum_{s,t} |x_s - x_t|
    calibration curve: observed(p) = mean_i [Phi((y_i - m_i) / s_i) <= p] against p
    miscalibration area = int_0^1 |observed(p) - p| dp

References: Nixon et al., "Measuring Calibration in Deep Learning", CVPR-W 2019 (ACE); Kull
et al., "Beyond temperature scaling", NeurIPS 2019 (classwise-ECE); Geifman & El-Yaniv,
"Selective classification for deep neural networks", NeurIPS 2017, and Geifman et al., "Bias-
reduced uncertainty estimation", ICLR 2019 (risk-coverage, AURC); Gneiting & Raftery,
"Strictly proper scoring rules", JASA 2007 (CRPS); Kuleshov et al., "Accurate uncertainties for
deep learning using calibrated regression", ICML 2018 (regression calibration curve).
"""
import numpy as np

from tfp_bnn._keras import tf
# Validators shared by the subpackage's two modules (underscored: not public API).
from tfp_bnn.metrics.core import (_bin_index, _check_num_bins, _check_scores, _edges, _prepare,
                                  _regression_arrays, accuracy, calibration_bins, check_labels)
from tfp_bnn.options import integer, number

__all__ = ["adaptive_calibration_error", "classwise_calibration_error", "risk_coverage_curve",
           "aurc", "ood_aupr", "fpr_at_95_tpr", "set_size", "empirical_coverage", "picp",
           "mean_interval_width", "crps_gaussian", "crps_samples",
           "regression_calibration_curve", "miscalibration_area"]


def adaptive_calibration_error(probabilities, labels, num_bins=15):
    """Calibration error over equal-mass confidence bins (ACE).

        sort by conf_i; split into num_bins groups of N / num_bins examples (sizes differ by
        at most one); ACE = sum_b (n_b / N) |acc_b - conf_b|

    Equal-width bins leave most bins empty for a confident model, so its ECE rests on one or
    two bins; equal-mass bins weigh every part of the confidence range by its data.

    Example:
        >>> adaptive_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1], num_bins=2)
        0.35
    """
    num_bins = _check_num_bins(num_bins)
    p, y = _prepare(probabilities, labels)
    conf = p.max(axis=1)
    order = np.argsort(conf, kind="stable")
    correct = (p.argmax(axis=1) == y).astype(np.float64)[order]
    total = 0.0
    for part_conf, part_correct in zip(np.array_split(conf[order], num_bins),
                                       np.array_split(correct, num_bins)):
        total += abs(part_correct.sum() - part_conf.sum())
    return float(total / p.shape[0])


def classwise_calibration_error(probabilities, labels, num_bins=15):
    """Class-wise ECE: each class's probability against its frequency, averaged over classes.

        classwise-ECE = (1/C) sum_c sum_b |sum_{i in B_bc} ([y_i == c] - p_ic)| / N

    with ``B_bc`` the equal-width bin of ``p_ic`` (as in `calibration_bins`).

    Example:
        >>> round(classwise_calibration_error([[0.9, 0.1], [0.3, 0.7]], [0, 0], num_bins=5), 6)
        0.4
    """
    num_bins = _check_num_bins(num_bins)
    p, y = _prepare(probabilities, labels)
    edges = _edges(num_bins)
    total = 0.0
    for c in range(p.shape[1]):
        idx = _bin_index(p[:, c], edges)
        hits = np.bincount(idx, weights=(y == c).astype(np.float64), minlength=num_bins)
        mass = np.bincount(idx, weights=p[:, c], minlength=num_bins)
        total += np.abs(hits - mass).sum()
    return float(total / (p.shape[0] * p.shape[1]))


def risk_coverage_curve(probabilities, labels, uncertainty):
    """Selective risk against coverage: abstain on the most uncertain examples first.

        coverage_k = k / N,  risk_k = errors among the k least uncertain / k,  k = 1..N

    Examples are sorted by ``uncertainty`` ascending with a stable sort (ties keep data order).

    Returns:
        ``(coverage, risk)``, two float arrays [N].

    Example:
        >>> risk_coverage_curve([[0.9, 0.1], [0.6, 0.4]], [0, 0], [0.1, 0.5])
        (array([0.5, 1. ]), array([0., 0.]))
    """
    p, y = _prepare(probabilities, labels)
    u = _check_scores(uncertainty, "uncertainty", length=p.shape[0])
    wrong = (p.argmax(axis=1) != y)[np.argsort(u, kind="stable")]
    k = np.arange(1, len(y) + 1)
    return k / len(y), np.cumsum(wrong) / k


def aurc(probabilities, labels, uncertainty):
    """Area under the risk-coverage curve, ``(1/N) sum_k risk_k`` (lower is better).

    A perfect ranking (every error less certain than every correct prediction) with ``m``
    errors reaches ``(1/N) sum_{k=N-m+1}^{N} (k - N + m) / k``, the floor for that accuracy.

    Example:
        >>> aurc([[0.9, 0.1], [0.6, 0.4]], [0, 1], [0.1, 0.5])  # (0 + 1/2) / 2
        0.25
    """
    return float(np.mean(risk_coverage_curve(probabilities, labels, uncertainty)[1]))


def ood_aupr(scores_in, scores_out):
    """Area under the precision-recall curve of detecting OOD inputs (positives) by a score.

        AUPR = sum_t (R_t - R_{t-1}) P_t   (average precision over the distinct thresholds t)

    with precision ``P_t`` and recall ``R_t`` of "score >= t is OOD"; tied scores enter at one
    threshold together (as scikit-learn's ``average_precision_score``).

    Example:
        >>> round(ood_aupr([0.1, 0.5], [0.5, 0.9]), 6)  # t=0.9: R 1/2, P 1; t=0.5: R 1, P 2/3
        0.833333
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    scores = np.concatenate([s_out, s_in])
    positive = np.concatenate([np.ones(len(s_out)), np.zeros(len(s_in))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]  # end of each tie group
    tp = np.cumsum(positive)[last]
    precision = tp / (last + 1)
    recall = tp / len(s_out)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_95_tpr(scores_in, scores_out, tpr=0.95):
    """False-positive rate on in-distribution inputs at the threshold that flags 95 % of OOD.

        t = the largest threshold with mean_j [s_out_j >= t] >= tpr;  FPR = mean_i [s_in_i >= t]

    Example:
        >>> round(fpr_at_95_tpr([0.1, 0.5, 0.7], [0.6, 0.9]), 6)  # t = 0.6
        0.333333
    """
    s_in = _check_scores(scores_in, "scores_in")
    s_out = _check_scores(scores_out, "scores_out")
    tpr = number("tpr", tpr, 0.0, 1.0)
    # The k-th largest OOD score keeps k of them: the smallest k with k / n_out >= tpr.
    k = max(1, int(np.ceil(tpr * len(s_out) - 1e-9)))
    threshold = np.sort(s_out)[::-1][k - 1]
    return float(np.mean(s_in >= threshold))


def _check_sets(prediction_sets):
    s = np.asarray(prediction_sets)
    if s.ndim != 2 or s.shape[0] == 0 or s.dtype.kind != "b":
        raise ValueError("prediction_sets must be a boolean array [batch, classes]. Received: "
                         f"prediction_sets of dtype {s.dtype} and shape {s.shape}")
    return s


def set_size(prediction_sets):
    """Mean number of classes in a prediction set, ``mean_i |C(x_i)|``."""
    return float(_check_sets(prediction_sets).sum(axis=1).mean())


def empirical_coverage(prediction_sets, labels):
    """Fraction of examples whose label is in their prediction set, ``mean_i [y_i in C(x_i)]``.

    Example:
        >>> empirical_coverage([[True, False], [True, True]], [1, 0])
        0.5
    """
    s = _check_sets(prediction_sets)
    y = check_labels(labels, s.shape[0], s.shape[1])
    return float(s[np.arange(len(y)), y].mean())


def _interval_arrays(lower, upper, targets=None):
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    if lo.shape != hi.shape or lo.size == 0:
        raise ValueError("lower and upper must be non-empty arrays of one shape. Received: "
                         f"lower.shape={lo.shape}, upper.shape={hi.shape}")
    if np.isnan(lo).any() or np.isnan(hi).any() or (hi < lo).any():
        raise ValueError("lower must be <= upper everywhere, without NaN. Received: "
                         f"{int((hi < lo).sum())} interval(s) with upper < lower")
    if targets is None:
        return lo, hi
    y = np.asarray(targets, dtype=np.float64)
    if y.size != lo.size:
        raise ValueError("targets must hold one value per interval. Received: "
                         f"targets.shape={y.shape}, lower.shape={lo.shape}")
    return lo, hi, y.reshape(lo.shape)


def picp(lower, upper, targets):
    """Prediction-interval coverage probability, ``mean [lower <= y <= upper]`` over all values.

    Example:
        >>> picp([0.0, 0.0], [1.0, 1.0], [0.5, 2.0])
        0.5
    """
    lo, hi, y = _interval_arrays(lower, upper, targets)
    return float(np.mean((lo <= y) & (y <= hi)))


def mean_interval_width(lower, upper):
    """Mean prediction-interval width, ``mean (upper - lower)`` over all values."""
    lo, hi = _interval_arrays(lower, upper)
    return float(np.mean(hi - lo))


def _std_normal_cdf(z):
    return 0.5 * (1.0 + tf.math.erf(tf.constant(z / np.sqrt(2.0), tf.float64)).numpy())


def crps_gaussian(mean, std, targets):
    """Mean continuous ranked probability score of Gaussian predictives (closed form).

        CRPS(N(m, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)],  z = (y - m) / s

    Pass the total predictive std (``sqrt(prediction.variance)``) for a BNN. Lower is better; at
    ``s -> 0`` it is the absolute error.

    Example:
        >>> round(crps_gaussian(0.0, 1.0, 0.0), 6)   # 2 phi(0) - 1/sqrt(pi)
        0.233695
    """
    m, y = _regression_arrays(np.atleast_1d(mean), np.atleast_1d(targets))
    s, _ = _regression_arrays(np.atleast_1d(std), np.atleast_1d(targets), "std")
    if (s <= 0).any() or np.isnan(s).any():
        raise ValueError(f"std must be positive. Received: std with min={float(np.min(s))!r}")
    z = (y - m) / s
    pdf = np.exp(-0.5 * z ** 2) / np.sqrt(2 * np.pi)
    crps = s * (z * (2 * _std_normal_cdf(z) - 1) + 2 * pdf - 1 / np.sqrt(np.pi))
    return float(np.mean(crps))


def crps_samples(samples, targets):
    """Mean CRPS of the empirical distribution of predictive samples ``[S, ...]``.

        CRPS = (1/S) sum_s |x_s - y| - 1/(2 S^2) sum_{s,t} |x_s - x_t|

    The double sum costs O(S log S) per value: with ``x_(1) <= ... <= x_(S)`` sorted,
    ``sum_{s,t} |x_s - x_t| = 2 sum_i (2 i - S - 1) x_(i)``.

    Example:
        >>> crps_samples([[0.0], [2.0]], [0.0])   # (0 + 2)/2 - (2 + 2)/8
        0.5
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] == 0 or np.isnan(x).any():
        raise ValueError("samples must be a non-empty array [S, ...] without NaN. Received: "
                         f"samples.shape={x.shape}")
    y = np.asarray(targets, dtype=np.float64)
    if y.size != x[0].size:
        raise ValueError("targets must hold one value per sample column. Received: "
                         f"targets.shape={y.shape}, samples.shape={x.shape}")
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(-1)
    num = x.shape[0]
    weights = (2 * np.arange(1, num + 1) - num - 1)[:, None]
    spread = 2 * np.sum(weights * np.sort(x, axis=0), axis=0)
    return float(np.mean(np.abs(x - y).mean(axis=0) - spread / (2 * num ** 2)))


def regression_calibration_curve(mean, std, targets, num_levels=99):
    """Expected against observed quantile coverage of Gaussian predictives.

        PIT_i = Phi((y_i - m_i) / s_i);  observed(p) = mean_i [PIT_i <= p],
        p = 0, 1/(L+1), ..., 1   (L = num_levels inner levels)

    A calibrated model lies on the diagonal; a curve above it at p < 0.5 and below at p > 0.5
    means too wide predictives (underconfident), the reverse too narrow.

    Returns:
        ``(expected, observed)``, two float arrays [num_levels + 2] including 0 and 1.

    Example:
        >>> regression_calibration_curve([0.0, 0.0], [1.0, 1.0], [-1.0, 1.0], num_levels=3)
        (array([0.  , 0.25, 0.5 , 0.75, 1.  ]), array([0. , 0.5, 0.5, 0.5, 1. ]))
    """
    num_levels = integer("num_levels", num_levels, minimum=1)
    m, y = _regression_arrays(mean, targets)
    s, _ = _regression_arrays(std, targets, "std")
    if (s <= 0).any() or np.isnan(s).any():
        raise ValueError(f"std must be positive. Received: std with min={float(np.min(s))!r}")
    pit = np.sort(_std_normal_cdf((y - m) / s).reshape(-1))
    expected = np.arange(num_levels + 2) / (num_levels + 1)
    observed = np.searchsorted(pit, expected, side="right") / pit.size
    observed[0], observed[-1] = 0.0, 1.0  # the curve runs from (0, 0) to (1, 1) by definition
    return expected, observed


def miscalibration_area(mean, std, targets, num_levels=99):
    """Area between the regression calibration curve and the diagonal (0 is calibrated).

        area = int_0^1 |observed(p) - p| dp   (trapezoid rule on `regression_calibration_curve`)

    Example:
        >>> miscalibration_area([0.0], [1.0], [0.0])   # every PIT = 1/2: area 1/4
        0.25
    """
    expected, observed = regression_calibration_curve(mean, std, targets, num_levels)
    gap = np.abs(observed - expected)
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(expected)))
