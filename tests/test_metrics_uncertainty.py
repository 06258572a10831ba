"""Uncertainty metrics and plots beyond ECE: each against a closed form or a hand-counted case."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tfp_bnn import metrics, plots


# ------------------------------------------------------------------------------ calibration
def test_adaptive_ece_uses_equal_mass_bins():
    p = [[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.55, 0.45]]
    y = [0, 1, 0, 0]
    # sorted conf 0.55 (right), 0.6 (wrong) | 0.8 (right), 0.9 (right)
    expected = (abs(1 - (0.55 + 0.6)) + abs(2 - (0.8 + 0.9))) / 4
    assert metrics.adaptive_calibration_error(p, y, num_bins=2) == pytest.approx(expected)
    # One bin: |accuracy - mean confidence|.
    assert metrics.adaptive_calibration_error(p, y, num_bins=1) == pytest.approx(
        abs(0.75 - np.mean([0.9, 0.6, 0.8, 0.55])))


def test_adaptive_ece_measures_a_constant_overconfidence():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.9, 1.0, size=4000)
    correct = rng.uniform(size=4000) < conf - 0.05  # 5 points overconfident everywhere
    p = np.stack([1 - conf, conf], 1)
    ace = metrics.adaptive_calibration_error(p, correct.astype(int), num_bins=15)
    assert ace == pytest.approx(0.05, abs=0.012)


def test_classwise_ece_hand_case():
    p = [[0.9, 0.1], [0.3, 0.7]]
    # class 0: bins of 0.9 (hit) and 0.3 (hit): 0.1 + 0.7; class 1: 0.1 and 0.7 (no hits)
    assert metrics.classwise_calibration_error(p, [0, 0], num_bins=5) == pytest.approx(
        (0.1 + 0.7 + 0.1 + 0.7) / 4)


def test_classwise_ece_is_zero_for_perfect_class_frequencies():
    # Each bin's class-c probability equals the frequency of c among its examples.
    p = np.array([[0.5, 0.5]] * 4)
    assert metrics.classwise_calibration_error(p, [0, 1, 0, 1], num_bins=10) == pytest.approx(0)


# ------------------------------------------------------------------------------ selective
def test_risk_coverage_and_aurc_hand_case():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = [0, 0, 0, 1]  # the second is wrong
    u = [0.1, 0.2, 0.3, 0.4]
    coverage, risk = metrics.risk_coverage_curve(p, y, u)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 4])
    assert metrics.aurc(p, y, u) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_aurc_of_a_perfect_ranking_is_the_closed_form_floor():
    rng = np.random.default_rng(1)
    n, m = 200, 30
    p = np.tile([[0.7, 0.3]], (n, 1))
    y = np.zeros(n, int)
    y[:m] = 1  # m errors
    u = np.where(y == 1, 1.0 + rng.uniform(size=n), rng.uniform(size=n))  # errors last
    floor = sum((k - (n - m)) / k for k in range(n - m + 1, n + 1)) / n
    assert metrics.aurc(p, y, u) == pytest.approx(floor)
    # Errors first: risk 1 up to k = m, then m / k.
    worst = (m + sum(m / k for k in range(m + 1, n + 1))) / n
    assert metrics.aurc(p, y, -u) == pytest.approx(worst)
    # A random ranking sits near the error rate.
    assert metrics.aurc(p, y, rng.uniform(size=n)) == pytest.approx(m / n, abs=0.05)


# ------------------------------------------------------------------------------ OOD
@pytest.mark.parametrize("seed", [0, 1])
def test_ood_aupr_matches_sklearn_average_precision_with_ties(seed):
    rng = np.random.default_rng(seed)
    s_in = rng.integers(0, 5, size=40).astype(float)  # many ties
    s_out = rng.integers(2, 8, size=25).astype(float)
    expected = average_precision_score(np.r_[np.zeros(40), np.ones(25)], np.r_[s_in, s_out])
    assert metrics.ood_aupr(s_in, s_out) == pytest.approx(expected)


def test_ood_aupr_hand_case_and_perfect_separation():
    assert metrics.ood_aupr([0.1, 0.5], [0.5, 0.9]) == pytest.approx(5 / 6)
    assert metrics.ood_aupr([0.1, 0.2], [0.5, 0.9]) == pytest.approx(1.0)


def test_fpr_at_95_tpr():
    assert metrics.fpr_at_95_tpr([0.1, 0.5, 0.7], [0.6, 0.9]) == pytest.approx(1 / 3)
    s_out = np.arange(100, 200, dtype=float)  # the threshold keeping 95: 105
    s_in = np.arange(0, 110, dtype=float)     # 105..109 pass: 5 of 110
    assert metrics.fpr_at_95_tpr(s_in, s_out) == pytest.approx(5 / 110)
    with pytest.raises(ValueError, match="tpr"):
        metrics.fpr_at_95_tpr(s_in, s_out, tpr=1.5)


# ------------------------------------------------------------------------------ sets, intervals
def test_set_size_and_coverage():
    sets = np.array([[True, False, False], [True, True, False], [False, False, False]])
    assert metrics.set_size(sets) == pytest.approx(1.0)
    assert metrics.empirical_coverage(sets, [0, 2, 1]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="prediction_sets must be a boolean"):
        metrics.set_size(sets.astype(int))
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        metrics.empirical_coverage(sets, [0, 3, 1])


def test_picp_and_width():
    lo, hi = np.array([[0.0], [1.0], [2.0]]), np.array([[1.0], [3.0], [2.5]])
    assert metrics.picp(lo, hi, [1.0, 0.5, 2.5]) == pytest.approx(2 / 3)  # closed interval
    assert metrics.mean_interval_width(lo, hi) == pytest.approx((1 + 2 + 0.5) / 3)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        metrics.picp(hi, lo, [0, 0, 0])


# ------------------------------------------------------------------------------ CRPS
def test_crps_gaussian_closed_forms():
    phi0 = 1 / math.sqrt(2 * math.pi)
    assert metrics.crps_gaussian(0.0, 1.0, 0.0) == pytest.approx(2 * phi0 - 1 / math.sqrt(math.pi))
    # Location-scale: CRPS(N(m, s^2), m + s z) = s CRPS(N(0, 1), z).
    z = 1.3
    base = z * (2 * 0.5 * (1 + math.erf(z / math.sqrt(2))) - 1) + 2 * math.exp(-z * z / 2) \
        * phi0 - 1 / math.sqrt(math.pi)
    assert metrics.crps_gaussian([2.0], [3.0], [2.0 + 3.0 * z]) == pytest.approx(3.0 * base)
    # Far in the tail it approaches the absolute error minus s / sqrt(pi).
    assert metrics.crps_gaussian(0.0, 0.01, 5.0) == pytest.approx(5.0 - 0.01 / math.sqrt(math.pi),
                                                                  abs=1e-9)


def test_crps_samples_hand_cases_and_gaussian_limit():
    assert metrics.crps_samples([[0.0], [2.0]], [0.0]) == pytest.approx(0.5)
    assert metrics.crps_samples([[1.5]], [0.0]) == pytest.approx(1.5)  # one sample: |x - y|
    x = np.array([[0.0, 1.0], [3.0, 1.0], [1.0, 1.0]])  # two columns
    brute = [np.mean(np.abs(x[:, j] - t)) - np.mean(np.abs(x[:, j, None] - x[None, :, j])) / 2
             for j, t in enumerate([1.0, 0.0])]
    assert metrics.crps_samples(x, [1.0, 0.0]) == pytest.approx(np.mean(brute))
    draws = np.random.default_rng(0).normal(size=(40000, 1))
    # The empirical CRPS is biased up by E|X - X'| / (2S) ~ 1e-5: far below the MC error.
    assert metrics.crps_samples(draws, [0.0]) == pytest.approx(
        metrics.crps_gaussian(0.0, 1.0, 0.0), abs=0.01)


# ------------------------------------------------------------------------------ regression calibration
def test_regression_calibration_curve_and_area():
    # Every target at the mean: every PIT is 1/2, the curve is a step at 1/2, area 1/4.
    assert metrics.miscalibration_area([0.0, 1.0], [1.0, 2.0], [0.0, 1.0]) == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    m, s = rng.normal(size=5000), rng.uniform(0.5, 2.0, size=5000)
    y = m + s * rng.normal(size=5000)
    expected, observed = metrics.regression_calibration_curve(m, s, y)
    assert expected[0] == 0 and expected[-1] == 1 and len(expected) == 101
    assert np.abs(observed - expected).max() < 0.03  # calibrated: on the diagonal
    assert metrics.miscalibration_area(m, s, y) < 0.01
    # Twice too wide: PIT concentrates around 1/2: observed(p) = Phi(2 Phi^-1(p)).
    wide = metrics.miscalibration_area(m, 2 * s, y)
    assert 0.08 < wide < 0.12


def test_regression_calibration_rejects_non_positive_std():
    with pytest.raises(ValueError, match="std must be positive"):
        metrics.regression_calibration_curve([0.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="num_levels"):
        metrics.regression_calibration_curve([0.0], [1.0], [0.0], num_levels=0)


# ------------------------------------------------------------------------------ plots
def test_plots_draw_the_metrics(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, size=50)
    fig = plots.risk_coverage(p, y, {"entropy": -np.sum(p * np.log(p), 1)},
                              path=tmp_path / "rc.png")
    (line, _) = fig.axes[0].lines
    np.testing.assert_allclose(line.get_ydata(), metrics.risk_coverage_curve(
        p, y, -np.sum(p * np.log(p), 1))[1])
    assert (tmp_path / "rc.png").stat().st_size > 0
    m, s = rng.normal(size=40), np.ones(40)
    fig = plots.regression_calibration(m, s, m + rng.normal(size=40))
    assert "area" in fig.axes[0].get_legend().get_texts()[1].get_text()
    sets = p > 0.3
    fig = plots.set_size_histogram(sets, y)
    heights = [b.get_height() for b in fig.axes[0].patches]
    np.testing.assert_array_equal(heights, np.bincount(sets.sum(1), minlength=4))
