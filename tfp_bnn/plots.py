"""Uncertainty figures: reliability diagrams, accuracy vs retained data, OOD score histograms.

Every function returns a `matplotlib.figure.Figure` built without pyplot: no backend is forced,
no window opens, and nothing is kept in pyplot's figure registry, so a loop over many models
does not grow memory. With ``path`` given, the figure is also saved as a PNG at 120 dpi.
The numbers come from `tfp_bnn.metrics`, where they are tested:

    reliability_diagram          metrics.calibration_bins, metrics.expected_calibration_error
    entropy_vs_accuracy          metrics.accuracy_vs_retained
    uncertainty_histogram        metrics.ood_auroc
    reliability_curves_with_bands metrics.reliability_curve_bootstrap

Example:
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])   # e.g. Prediction.probabilities
    >>> fig = reliability_diagram(probs, [0, 1, 1], path="reliability.png")
    >>> fig = uncertainty_histogram([0.1, 0.2, 0.3], [0.5, 0.6], path="ood.png")
    >>> import os; os.path.isfile("reliability.png") and os.path.isfile("ood.png")
    True

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (reliability diagrams).
    Filos et al., "A Systematic Comparison of Bayesian Deep Learning Robustness in Diabetic
    Retinopathy Tasks", 2019 (accuracy against retained data).
"""
import numpy as np
from matplotlib.figure import Figure

from tfp_bnn import metrics

__all__ = ["reliability_diagram", "entropy_vs_accuracy", "uncertainty_histogram",
           "reliability_curves_with_bands"]


def _finish(fig, path):
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _diagonal(ax):
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def reliability_diagram(probabilities, labels, num_bins=15, path=None, title=None):
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts below.

        bar_b = acc_b,  gap_b = conf_b - acc_b (shaded),  ECE = sum_b (n_b / N) |acc_b - conf_b|

    The top axis has ``num_bins`` accuracy bars (height 0 for an empty bin) and one shaded gap
    bar per non-empty bin; the bottom axis is the histogram of per-bin counts, each count
    printed above its bar.

    Args:
        probabilities: [B, C] predictive probabilities.
        labels: [B] integer labels.
        num_bins: number of equal-width confidence bins.
        path: if given, where to save the PNG.
        title: axis title; the ECE is always added on a line of its own.

    Returns:
        The Figure (two axes: reliability, counts).

    Example:
        >>> probs, y_test = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1]
        >>> len(reliability_diagram(probs, y_test, num_bins=10, path="reliability.png").axes)
        2
    """
    bins = metrics.calibration_bins(probabilities, labels, num_bins=num_bins)
    ece = metrics.expected_calibration_error(probabilities, labels, num_bins=num_bins)
    width = np.diff(bins.edges)
    left = bins.edges[:-1]
    filled = bins.counts > 0
    acc = np.nan_to_num(bins.accuracy)

    fig = Figure(figsize=(5, 6))
    ax, ax_counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(left, acc, width=width, align="edge", color="tab:blue", edgecolor="black",
           label="accuracy")
    ax.bar(left[filled], bins.confidence[filled] - acc[filled], bottom=acc[filled],
           width=width[filled], align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red",
           hatch="//", label="gap")
    _diagonal(ax)
    ax.set_ylabel("accuracy")
    # The ECE on a line of its own: appended to a long title it ran off a 6-inch figure.
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}ECE = {ece:.4f}")
    ax.legend(loc="upper left")

    ax_counts.bar(left, bins.counts, width=width, align="edge", color="gray", edgecolor="black")
    for x, w, n in zip(left, width, bins.counts):
        if n:
            ax_counts.text(x + w / 2, n, str(int(n)), ha="center", va="bottom", fontsize=7)
    ax_counts.set_ylim(0, 1.25 * max(1, bins.counts.max()))
    ax_counts.set_xlabel("confidence (max probability)")
    ax_counts.set_ylabel("count")
    fig.tight_layout()
    return _finish(fig, path)


def entropy_vs_accuracy(probabilities, labels, uncertainty, path=None, title=None):
    """Accuracy on the k % most certain examples, k = 10 %, 20 %, ..., 100 %.

        acc(k) = accuracy of the ceil(k N) examples of lowest ``uncertainty``

    A useful uncertainty gives a curve that falls as k grows: the examples the model is unsure
    about are the ones it gets wrong.

    Args:
        probabilities: [B, C] predictive probabilities.
        labels: [B] integer labels.
        uncertainty: [B] score, higher = less certain (e.g. predictive entropy).
        path: if given, where to save the PNG.
        title: axis title.

    Returns:
        The Figure (one axis, one curve).

    Example:
        >>> probs, y_test = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1]
        >>> entropy = -np.sum(probs * np.log(probs), axis=1)     # Prediction.predictive_entropy
        >>> len(entropy_vs_accuracy(probs, y_test, entropy, path="retain.png").axes)
        1
    """
    fractions, acc = metrics.accuracy_vs_retained(probabilities, labels, uncertainty)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(100 * fractions, acc, marker="o", label="retained by uncertainty")
    ax.axhline(acc[-1], color="gray", linestyle="--", linewidth=1, label="all data")
    ax.set_xlabel("retained data (%, most certain first)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 105)
    ax.set_title(title or "Accuracy vs retained data")
    ax.legend(loc="best")
    fig.tight_layout()
    return _finish(fig, path)


def uncertainty_histogram(scores_in, scores_out, path=None, label="predictive entropy", title=None):
    """Overlaid histograms of an uncertainty score in- and out-of-distribution, shared bins.

        AUROC = P(s_out > s_in) + 1/2 P(s_out = s_in)   (shown in the legend)

    Args:
        scores_in: [n_in] scores of in-distribution examples (higher = more uncertain).
        scores_out: [n_out] scores of out-of-distribution examples.
        path: if given, where to save the PNG.
        label: the x-axis label (the name of the score).
        title: axis title.

    Returns:
        The Figure (one axis, two histograms over the same bin edges, densities).

    Example:
        >>> fig = uncertainty_histogram([0.1, 0.2, 0.3], [0.5, 0.6])   # in- and out-of-distribution
        >>> len(fig.axes)
        1
    """
    auroc = metrics.ood_auroc(scores_in, scores_out)
    s_in, s_out = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=30)
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.hist(s_in, bins=edges, alpha=0.5, density=True, color="tab:blue",
            label=f"in-distribution (n={len(s_in)})")
    ax.hist(s_out, bins=edges, alpha=0.5, density=True, color="tab:orange",
            label=f"out-of-distribution (n={len(s_out)})")
    ax.set_xlabel(label)
    ax.set_ylabel("density")
    ax.set_title(title or f"{label}: in vs out of distribution")
    ax.legend(title=f"AUROC = {auroc:.3f}")
    fig.tight_layout()
    return _finish(fig, path)


def reliability_curves_with_bands(curves, num_bins=15, path=None, n_boot=1000, seed=0):
    """Several reliability curves on one axis, each with a 95 % bootstrap band.

        acc_b of the pooled examples;  band = 2.5 / 97.5 % bootstrap quantiles of acc_b

    Each entry of ``curves`` maps a method name to a list of ``(probabilities, labels)`` pairs,
    one per training seed; the examples of all seeds are pooled and resampled together
    (`metrics.reliability_curve_bootstrap`).

    Args:
        curves: ``{name: [(probabilities, labels), ...]}``, non-empty.
        num_bins: number of equal-width confidence bins.
        path: if given, where to save the PNG.
        n_boot: number of bootstrap resamples per curve.
        seed: seed of the bootstrap.

    Returns:
        The Figure (one axis: one line and one band per method, plus the diagonal).

    Example:
        >>> y = [0, 1, 1, 0]
        >>> p0 = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
        >>> p1 = np.array([[0.8, 0.2], [0.3, 0.7], [0.5, 0.5], [0.6, 0.4]])  # another seed
        >>> curves = {"BNN": [(p0, y), (p1, y)], "MC dropout": [(np.full((4, 2), 0.5), y)]}
        >>> fig = reliability_curves_with_bands(curves, n_boot=50)
        >>> len(fig.axes)
        1
    """
    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict {name: [(probabilities, labels), ...]}. "
                         f"Received: curves of type {type(curves).__name__} with "
                         f"{len(curves) if hasattr(curves, '__len__') else '?'} entries")
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    _diagonal(ax)
    for name, runs in curves.items():
        try:
            pairs = [(np.asarray(p, dtype=np.float64), np.asarray(y)) for p, y in runs]
        except (TypeError, ValueError):
            pairs = []
        if not pairs or any(p.ndim != 2 or p.shape[1] != pairs[0][0].shape[1] for p, _ in pairs):
            raise ValueError(f"curves[{name!r}] must be a non-empty list of (probabilities [B, C], "
                             "labels [B]) pairs with the same C. "
                             f"Received: curves[{name!r}] of type {type(runs).__name__}")
        probs = np.concatenate([p for p, _ in pairs])
        labels = np.concatenate([np.reshape(y, -1) for _, y in pairs])
        centers, acc, lo, hi = metrics.reliability_curve_bootstrap(
            probs, labels, num_bins=num_bins, n_boot=n_boot, seed=seed)
        ece = metrics.expected_calibration_error(probs, labels, num_bins=num_bins)
        (line,) = ax.plot(centers, acc, marker="o", label=f"{name} (ECE {100 * ece:.2f} %)")
        ax.fill_between(centers, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability, 95 % bootstrap bands")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


# ---------------------------------------------------------------------------------------------
# Selective prediction, regression calibration, conformal set sizes
#
#     risk_coverage                metrics.risk_coverage_curve, metrics.aurc
#     regression_calibration       metrics.regression_calibration_curve, miscalibration_area
#     set_size_histogram           metrics.set_size, metrics.empirical_coverage
# ---------------------------------------------------------------------------------------------
__all__ += ["risk_coverage", "regression_calibration", "set_size_histogram"]


def risk_coverage(probabilities, labels, uncertainties, path=None, title=None):
    """Selective risk against coverage, one curve per uncertainty score, AURC in the legend.

        risk(k / N) = errors among the k least uncertain / k;  AURC = (1/N) sum_k risk(k / N)

    Args:
        probabilities: [B, C] predictive probabilities.
        labels: [B] integer labels.
        uncertainties: ``{name: [B] score}`` (higher = less certain), e.g. predictive entropy
            and mutual information.
        path: if given, where to save the PNG.
        title: axis title.

    Returns:
        The Figure (one axis, one curve per score, the full-coverage risk dashed).

    Example:
        >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
        >>> fig = risk_coverage(p, [0, 1, 1], {"max prob": 1 - p.max(1)})
        >>> fig.axes[0].lines[0].get_ydata()                      # errors among the kept
        array([0. , 0. , 0.33333333])
    """
    if not isinstance(uncertainties, dict) or not uncertainties:
        raise ValueError("uncertainties must be a non-empty dict {name: [B] scores}. Received: "
                         f"uncertainties of type {type(uncertainties).__name__}")
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, score in uncertainties.items():
        coverage, risk = metrics.risk_coverage_curve(probabilities, labels, score)
        ax.plot(coverage, risk, label=f"{name} (AURC {np.mean(risk):.4f})")
    ax.axhline(risk[-1], color="gray", linestyle="--", linewidth=1, label="no abstention")
    ax.set_xlabel("coverage (fraction kept, most certain first)")
    ax.set_ylabel("risk (error rate on the kept)")
    ax.set_xlim(0, 1)
    ax.set_title(title or "Risk-coverage")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _finish(fig, path)


def regression_calibration(mean, std, targets, path=None, title=None, num_levels=99):
    """Observed against expected quantile coverage of Gaussian predictives, with its area.

        observed(p) = mean_i [Phi((y_i - m_i) / s_i) <= p];  area = int_0^1 |observed - p| dp

    Args:
        mean, std, targets: [B] or [B, D] predictive means, standard deviations, targets.
        path: if given, where to save the PNG.
        title: axis title.
        num_levels: inner quantile levels of the curve.

    Returns:
        The Figure (one axis: the curve, the diagonal, the area between them shaded).

    Example:
        >>> fig = regression_calibration([0.0, 1.0], [1.0, 1.0], [0.5, 0.2], path="calib.png")
        >>> fig.axes[0].get_legend().get_texts()[1].get_text()
        'model (area 0.1292)'
    """
    expected, observed = metrics.regression_calibration_curve(mean, std, targets, num_levels)
    area = metrics.miscalibration_area(mean, std, targets, num_levels)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    _diagonal(ax)
    ax.plot(expected, observed, color="tab:blue", label=f"model (area {area:.4f})")
    ax.fill_between(expected, expected, observed, color="tab:blue", alpha=0.2, linewidth=0)
    ax.set_xlabel("expected quantile level p")
    ax.set_ylabel("observed fraction of targets below quantile p")
    ax.set_title(title or "Regression calibration")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _finish(fig, path)


def set_size_histogram(prediction_sets, labels=None, path=None, title=None):
    """Histogram of conformal prediction-set sizes, the mean size (and coverage) in the legend.

        |C(x_i)| = number of classes in the set;  coverage = mean_i [y_i in C(x_i)]

    Args:
        prediction_sets: [B, C] boolean prediction sets (`tfp_bnn.Prediction.prediction_sets`).
        labels: optional [B] labels; with them the legend shows the empirical coverage.
        path: if given, where to save the PNG.
        title: axis title.

    Returns:
        The Figure (one axis, one bar per set size 0..C).

    Example:
        >>> fig = set_size_histogram(np.array([[True, False], [True, True]]), [1, 0])
        >>> fig.axes[0].get_legend().get_texts()[0].get_text()
        'mean size 1.50, coverage 0.500'
    """
    mean = metrics.set_size(prediction_sets)
    sets = np.asarray(prediction_sets)
    sizes = np.bincount(sets.sum(axis=1), minlength=sets.shape[1] + 1)
    legend = f"mean size {mean:.2f}"
    if labels is not None:
        legend += f", coverage {metrics.empirical_coverage(prediction_sets, labels):.3f}"
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.bar(np.arange(len(sizes)), sizes, color="tab:blue", edgecolor="black", label=legend)
    ax.set_xticks(np.arange(len(sizes)))
    ax.set_xlabel("set size (classes)")
    ax.set_ylabel("count")
    ax.set_title(title or "Prediction-set sizes")
    ax.legend(loc="best")
    fig.tight_layout()
    return _finish(fig, path)
