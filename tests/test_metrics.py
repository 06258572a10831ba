"""tfp_bnn.metrics against hand-computed values, closed forms and sklearn."""
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tfp_bnn import metrics
from tfp_bnn._keras import tf, tf_keras

# Six 3-class examples, num_bins=5 (edges 0, .2, .4, .6, .8, 1):
#   p                   y  conf  pred  correct  bin
#   [.9, .05, .05]      0  0.9   0     1        4
#   [.7, .2, .1]        1  0.7   0     0        3
#   [.1, .8, .1]        1  0.8   1     1        4   (0.8 is an inner edge -> upper bin)
#   [.5, .3, .2]        0  0.5   0     1        2
#   [.2, .2, .6]        0  0.6   2     0        3   (edge -> upper bin)
#   [.4, .3, .3]        2  0.4   0     0        2   (edge -> upper bin)
# bin 2: conf (.5+.4)/2 = .45, acc 1/2 -> |.5 - .45| = .05
# bin 3: conf (.7+.6)/2 = .65, acc 0   -> .65
# bin 4: conf (.9+.8)/2 = .85, acc 1   -> .15
# ECE = 2/6 * (.05 + .65 + .15) = .85 / 3 = 0.28333...
P6 = np.array([[.9, .05, .05], [.7, .2, .1], [.1, .8, .1], [.5, .3, .2], [.2, .2, .6], [.4, .3, .3]])
Y6 = np.array([0, 1, 1, 0, 0, 2])


def _random(n=1000, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(c, 0.5), size=n), rng.integers(0, c, size=n)


def test_accuracy_nll_brier_by_hand():
    p = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]
    y = [0, 2]
    assert metrics.accuracy(p, y) == 0.5
    assert metrics.accuracy([[0.5, 0.5]], [0]) == 1.0  # ties: first class
    # -(log .7 + log .3) / 2
    assert metrics.nll(p, y) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2, rel=1e-12)
    assert metrics.nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))
    assert metrics.nll([[1.0, 0.0]], [1], eps=1e-3) == pytest.approx(-math.log(1e-3))
    # row 1: .3^2 + .2^2 + .1^2 = .14; row 2: .2^2 + .5^2 + .7^2 = .78; mean .46
    assert metrics.brier_score(p, y) == pytest.approx(0.46, rel=1e-12)
    assert metrics.brier_score([[1.0, 0.0]], [1]) == 2.0


def test_calibration_bins_and_ece_by_hand():
    bins = metrics.calibration_bins(P6, Y6, num_bins=5)
    np.testing.assert_array_equal(bins.edges, [0, .2, .4, .6, .8, 1])
    np.testing.assert_array_equal(bins.counts, [0, 0, 2, 2, 2])
    np.testing.assert_allclose(bins.confidence, [np.nan, np.nan, .45, .65, .85], rtol=1e-12)
    np.testing.assert_allclose(bins.accuracy, [np.nan, np.nan, .5, 0, 1])
    np.testing.assert_allclose(bins.centers, [.1, .3, .5, .7, .9])
    assert bins.counts.dtype.kind == "i"
    with pytest.raises(ValueError):
        bins.counts[0] = 3  # read-only
    assert metrics.expected_calibration_error(P6, Y6, num_bins=5) == pytest.approx(0.85 / 3, rel=1e-12)
    # One bin: |acc - mean conf| = |3/6 - (.9+.7+.8+.5+.6+.4)/6| = |.5 - .65| = .15
    assert metrics.expected_calibration_error(P6, Y6, num_bins=1) == pytest.approx(0.15, rel=1e-12)


@pytest.mark.parametrize("num_bins", [3, 5, 10, 15, 20])
def test_inner_edges_go_to_upper_bin(num_bins):
    k = np.arange(1, num_bins)
    conf = k / num_bins
    probs = np.stack([conf, np.zeros_like(conf)], axis=1)
    bins = metrics.calibration_bins(probs, np.zeros(len(k), int), num_bins=num_bins)
    expected = np.zeros(num_bins, int)
    expected[k] = 1
    np.testing.assert_array_equal(bins.counts, expected)


def test_zero_and_one_go_to_end_bins():
    probs = np.array([[0.0, 0.0], [1.0, 0.0], [np.float32(1.0) + 1e-7, 0.0], [0.05, 0.0]])
    bins = metrics.calibration_bins(probs, [0, 0, 0, 1], num_bins=10)
    np.testing.assert_array_equal(bins.counts, [2, 0, 0, 0, 0, 0, 0, 0, 0, 2])


def test_ece_perfectly_calibrated_and_overconfident():
    # Confidence .75 and 3 of 4 correct: calibrated. Confidence 1 and half correct: ECE .5.
    p = np.array([[.75, .25]] * 4)
    assert metrics.expected_calibration_error(p, [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-15)
    assert metrics.expected_calibration_error([[1.0, 0.0]] * 2, [0, 1]) == 0.5


def test_ood_auroc_by_hand_with_ties():
    # pairs (out, in): (.5,.1)=1, (.5,.5)=1/2, (.9,.1)=1, (.9,.5)=1 -> 3.5/4
    assert metrics.ood_auroc([0.1, 0.5], [0.5, 0.9]) == 0.875
    assert metrics.ood_auroc([1, 1, 1], [1, 1]) == 0.5
    assert metrics.ood_auroc([0, 1], [2, 3]) == 1.0
    assert metrics.ood_auroc([2, 3], [0, 1]) == 0.0
    # in [1,2,2], out [2,3]: out=2 -> 1 + 1/2 + 1/2 = 2; out=3 -> 3; 5/6
    assert metrics.ood_auroc([1, 2, 2], [2, 3]) == pytest.approx(5 / 6, rel=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    s_in = np.round(rng.normal(0.0, 1.0, 300), 1)  # rounding makes many ties
    s_out = np.round(rng.normal(0.7, 1.0, 200), 1)
    expected = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[s_in, s_out])
    assert metrics.ood_auroc(s_in, s_out) == pytest.approx(expected, rel=1e-12)


def test_accuracy_vs_retained_by_hand():
    # correct = [1, 0, 1, 1, 0]; sorted by uncertainty: idx 2, 3, 0, 4, 1 -> 1, 1, 1, 0, 0
    p = np.array([[.9, .1], [.9, .1], [.1, .9], [.1, .9], [.1, .9]])
    y = np.array([0, 1, 1, 1, 0])
    u = np.array([0.5, 0.9, 0.1, 0.3, 0.7])
    f, acc = metrics.accuracy_vs_retained(p, y, u, fractions=[0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(acc, [1, 1, 1, 0.75, 0.6])
    f, acc = metrics.accuracy_vs_retained(p, y, u)
    np.testing.assert_allclose(f, np.arange(1, 11) / 10)
    # ceil(f * 5) kept: 1, 1, 2, 2, 3, 3, 4, 4, 5, 5
    np.testing.assert_allclose(acc, [1, 1, 1, 1, 1, 1, .75, .75, .6, .6])


def test_accuracy_vs_retained_float_fraction_and_stable_ties():
    # 0.55 * 100 = 55.00000000000001 must keep 55 examples, not 56.
    p = np.tile([[.9, .1]], (100, 1))
    y = np.r_[np.zeros(55, int), np.ones(45, int)]
    _, acc = metrics.accuracy_vs_retained(p, y, np.zeros(100), fractions=[0.55, 0.56])
    np.testing.assert_allclose(acc, [1.0, 55 / 56])  # equal scores keep data order


def test_bootstrap_band_contains_estimate_and_narrows():
    p, y = _random(400, c=3, seed=3)
    centers, acc, lo, hi = metrics.reliability_curve_bootstrap(p, y, num_bins=5, n_boot=500)
    bins = metrics.calibration_bins(p, y, num_bins=5)
    np.testing.assert_allclose(centers, [.1, .3, .5, .7, .9])
    np.testing.assert_array_equal(acc, bins.accuracy)
    ok = bins.counts > 0
    assert np.isnan(acc[0]) and np.isnan(lo[0]) and np.isnan(hi[0])  # max prob >= 1/3
    assert np.all(lo[ok] <= acc[ok]) and np.all(acc[ok] <= hi[ok])
    # Same data repeated 16 times: same estimate, band about 4 times narrower.
    _, acc16, lo16, hi16 = metrics.reliability_curve_bootstrap(
        np.tile(p, (16, 1)), np.tile(y, 16), num_bins=5, n_boot=500)
    np.testing.assert_allclose(acc16, acc)
    ratio = (hi16 - lo16)[ok] / (hi - lo)[ok]
    assert np.all(ratio < 0.4) and np.all(ratio > 0.15)
    # Deterministic given the seed.
    again = metrics.reliability_curve_bootstrap(p, y, num_bins=5, n_boot=500)
    np.testing.assert_array_equal(again[2], lo)


def test_bootstrap_matches_resampling_examples():
    p, y = _random(200, c=2, seed=4)
    _, acc, lo, hi = metrics.reliability_curve_bootstrap(p, y, num_bins=4, n_boot=4000, seed=1)
    # The naive bootstrap: resample example indices.
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 200, size=(4000, 200))
    conf, correct = p.max(1)[idx], (p.argmax(1) == y)[idx]
    b = np.clip(np.floor(conf * 4).astype(int), 0, 3)
    for k in np.flatnonzero(~np.isnan(acc)):
        n = (b == k).sum(1)
        a = ((b == k) & correct).sum(1)[n > 0] / n[n > 0]
        np.testing.assert_allclose([lo[k], hi[k]], np.percentile(a, [2.5, 97.5]), atol=0.03)


def test_all_correct_bin_has_degenerate_band():
    _, acc, lo, hi = metrics.reliability_curve_bootstrap([[.95, .05]] * 10, [0] * 10, num_bins=2)
    assert (acc[1], lo[1], hi[1]) == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- Keras metric
@pytest.mark.parametrize("n, batch", [(60, 1), (1000, 13), (1000, 64), (1000, 1000)])
def test_keras_metric_equals_numpy_across_batches(n, batch):
    p, y = _random(n, c=4, seed=5)
    m = metrics.ExpectedCalibrationError(num_bins=10, dtype="float64")
    for i in range(0, len(y), batch):
        m.update_state(y[i:i + batch], p[i:i + batch])
    expected = metrics.expected_calibration_error(p, y, num_bins=10)
    assert expected > 0.01
    assert float(m.result()) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_keras_metric_edges_logits_labels_shape_and_reset():
    m = metrics.ExpectedCalibrationError(num_bins=5, dtype="float64")
    m.update_state(Y6[:3].reshape(-1, 1).astype("float32"), P6[:3])
    m.update_state(Y6[3:], P6[3:])
    assert float(m.result()) == pytest.approx(0.85 / 3, rel=1e-12)
    np.testing.assert_array_equal(m.bin_counts.numpy(), [0, 0, 2, 2, 2])
    m.reset_state()
    assert float(m.result()) == 0.0 and m.bin_counts.numpy().sum() == 0

    logits = np.random.default_rng(6).normal(size=(300, 3)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.random.default_rng(7).integers(0, 3, 300)
    ml = metrics.ExpectedCalibrationError(from_logits=True, dtype="float64")
    ml.update_state(y, logits)
    assert float(ml.result()) == pytest.approx(metrics.expected_calibration_error(probs, y), rel=1e-9)
    # Default float32 result, unit sample weights change nothing.
    m32 = metrics.ExpectedCalibrationError()
    m32.update_state(y, probs, sample_weight=np.ones(300))
    assert m32.result().dtype == tf.float32
    assert float(m32.result()) == pytest.approx(metrics.expected_calibration_error(probs, y), rel=1e-6)


def test_keras_metric_config_and_registration():
    m = metrics.ExpectedCalibrationError(num_bins=7, from_logits=True, name="my_ece")
    config = m.get_config()
    assert (config["num_bins"], config["from_logits"], config["name"]) == (7, True, "my_ece")
    clone = metrics.ExpectedCalibrationError.from_config(config)
    assert (clone.num_bins, clone.from_logits, clone.name) == (7, True, "my_ece")
    restored = tf_keras.metrics.deserialize(tf_keras.metrics.serialize(m))
    assert isinstance(restored, metrics.ExpectedCalibrationError) and restored.num_bins == 7
    assert tf_keras.saving.get_registered_object("tfp_bnn>ExpectedCalibrationError") \
        is metrics.ExpectedCalibrationError
    assert all(not w.trainable for w in m.weights) and len(m.weights) == 3


def test_keras_metric_in_compile_fit_evaluate():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int32")
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.layers.Dense(8, activation="relu", input_shape=(4,)),
                                 tf_keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy",
                  metrics=[metrics.ExpectedCalibrationError(num_bins=10)])
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert "ece" in history.history and len(history.history["ece"]) == 2
    logs = model.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    probs = model.predict(x, verbose=0)
    assert logs["ece"] == pytest.approx(metrics.expected_calibration_error(probs, y, 10), rel=1e-5)


def test_keras_metric_bad_input():
    with pytest.raises(ValueError, match="num_bins=0"):
        metrics.ExpectedCalibrationError(num_bins=0)
    m = metrics.ExpectedCalibrationError()
    with pytest.raises(ValueError, match="y_pred.shape"):
        m.update_state([0, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="y_true.shape"):
        m.update_state(np.zeros((2, 2)), [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true"):
        m.update_state([0, 2], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true"):
        m.update_state([0.5, 1.0], [[0.5, 0.5], [0.5, 0.5]])


# ----------------------------------------------------------------------------- bad input
P2 = [[0.6, 0.4], [0.3, 0.7]]
NUMPY_FUNCS = [metrics.accuracy, metrics.nll, metrics.brier_score, metrics.calibration_bins,
               metrics.expected_calibration_error,
               lambda p, y: metrics.accuracy_vs_retained(p, y, np.zeros(len(y))),
               lambda p, y: metrics.reliability_curve_bootstrap(p, y, n_boot=10)]


@pytest.mark.parametrize("func", NUMPY_FUNCS)
@pytest.mark.parametrize("probs, labels, match", [
    (P2, [0, 1, 1], r"len\(labels\)=3"),
    ([0.6, 0.4], [0], r"probabilities.shape=\(2,\)"),
    (np.zeros((0, 2)), [], r"probabilities.shape=\(0, 2\)"),
    (P2, [0, 2], r"labels.*\[0, 2\).*\[2\]"),
    (P2, [-1, 0], r"labels.*\[-1\]"),
    (P2, [0.5, 1], r"labels=\[0.5, 1.0\]"),
    (P2, ["a", "b"], "labels must be integer"),
    ([[np.nan, 1.0], [0.3, 0.7]], [0, 1], "probabilities must not contain NaN.*1 NaN"),
    ([[2.0, -1.0], [0.3, 0.7]], [0, 1], "probabilities.*min=-1.0, max=2.0"),
    ([[0.5, 0.5], [0.5]], [0, 1], "probabilities must be a numeric array"),
])
def test_bad_probabilities_and_labels(func, probs, labels, match):
    with pytest.raises(ValueError, match=match):
        func(probs, labels)


@pytest.mark.parametrize("num_bins", [0, -3, 2.5, True, "15", None])
@pytest.mark.parametrize("func", [metrics.calibration_bins, metrics.expected_calibration_error,
                                  metrics.reliability_curve_bootstrap])
def test_bad_num_bins(func, num_bins):
    with pytest.raises(ValueError, match=f"num_bins must be a positive integer. Received: num_bins={num_bins!r}"):
        func(P2, [0, 1], num_bins=num_bins)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="eps=0"):
        metrics.nll(P2, [0, 1], eps=0)
    with pytest.raises(ValueError, match="n_boot=0"):
        metrics.reliability_curve_bootstrap(P2, [0, 1], n_boot=0)
    with pytest.raises(ValueError, match=r"scores_in.shape=\(0,\)"):
        metrics.ood_auroc([], [1.0])
    with pytest.raises(ValueError, match=r"scores_out.shape=\(1, 2\)"):
        metrics.ood_auroc([1.0], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="scores_out must not contain NaN"):
        metrics.ood_auroc([1.0], [np.nan])
    with pytest.raises(ValueError, match=r"len\(uncertainty\)=3, len\(probabilities\)=2"):
        metrics.accuracy_vs_retained(P2, [0, 1], [0.1, 0.2, 0.3])
    for bad in ([0.0], [1.5], [], [[0.5]]):
        with pytest.raises(ValueError, match="fractions"):
            metrics.accuracy_vs_retained(P2, [0, 1], [0.1, 0.2], fractions=bad)
