"""`tfp_bnn.conformal`: the quantile, the scores on hand cases, coverage as a tested guarantee over
random splits, the served graph against predict in a fresh process without TFP, bad input.

One small Bayesian classifier on scikit-learn digits and one small Bayesian Gaussian-head
regressor on a synthetic heteroscedastic set are trained once (module fixtures); their MC
predictions on a held-out pool are reused across the 50 calibration/test splits.
"""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy import stats
from sklearn.datasets import load_digits

import tfp_bnn
from tfp_bnn.conformal import (Conformal, calibration_scores, class_scores, conformal_quantile,
                               intervals, minimum_calibration_size, prediction_sets,
                               quantile_index)
from tfp_bnn import metrics
from tfp_bnn._keras import tf, tf_keras

NUM_SPLITS = 50
NUM_SAMPLES = 20


# ---------------------------------------------------------------------------------------------
# The finite-sample quantile and the scores on hand cases
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, alpha, k", [(9, 0.1, 9), (10, 0.1, 10), (19, 0.1, 18),
                                         (99, 0.1, 90), (4, 0.2, 4), (100, 0.05, 96),
                                         (5, 0.1, 6), (1000, 0.3, 701)])
def test_quantile_index_is_ceil_n_plus_1_times_1_minus_alpha(n, alpha, k):
    assert int(quantile_index(n, alpha)) == k
    assert k == math.ceil(round((n + 1) * (1 - alpha), 9))


def test_conformal_quantile_takes_the_kth_smallest_or_infinity():
    scores = np.arange(1.0, 11.0, dtype=np.float32)  # n = 10
    assert float(conformal_quantile(scores, 0.1)) == 10.0  # k = ceil(9.9)
    assert float(conformal_quantile(scores, 0.5)) == 6.0  # k = ceil(5.5)
    assert float(conformal_quantile(scores, 0.2)) == 9.0  # k = ceil(8.8)
    assert float(conformal_quantile(scores[:5], 0.1)) == np.inf  # k = 6 > 5
    # Per column for [n, D], alpha as a float64 tensor (the served input).
    two = np.stack([scores, 10 * scores], 1)
    np.testing.assert_array_equal(
        conformal_quantile(two, tf.constant(0.5, tf.float64)), [6.0, 60.0])


@pytest.mark.parametrize("alpha, n", [(0.1, 9), (0.2, 4), (0.05, 19), (0.3, 3), (0.5, 1)])
def test_minimum_calibration_size(alpha, n):
    assert minimum_calibration_size(alpha) == n
    assert int(quantile_index(n, alpha)) <= n
    assert int(quantile_index(n - 1, alpha)) > n - 1 or n == 1


def test_lac_aps_raps_scores_on_a_hand_example():
    p = np.array([[0.2, 0.5, 0.3]], np.float32)  # ranks: class 1, class 2, class 0
    np.testing.assert_allclose(class_scores(p, "lac"), [[0.8, 0.5, 0.7]])
    # Deterministic APS: the mass ranked at or above the class.
    np.testing.assert_allclose(class_scores(p, "aps"), [[1.0, 0.5, 0.8]],
                               rtol=1e-6)
    # Randomised with u: the mass above plus u p_y.
    np.testing.assert_allclose(class_scores(p, "aps", u=[0.5]),
                               [[0.8 + 0.1, 0.25, 0.5 + 0.15]], rtol=1e-6)
    # RAPS: + lam * max(0, rank - k_reg), ranks 3, 1, 2.
    np.testing.assert_allclose(class_scores(p, "raps", k_reg=1, lam=0.1),
                               [[1.0 + 0.2, 0.5, 0.8 + 0.1]], rtol=1e-6)
    np.testing.assert_allclose(class_scores(p, "raps", u=[0.0], k_reg=2, lam=1.0),
                               [[0.8 + 1.0, 0.0, 0.5]], rtol=1e-6)
    # Sets: every label with a score <= q.
    np.testing.assert_array_equal(prediction_sets(p, 0.8, "aps"),
                                  [[False, True, True]])


def test_deterministic_aps_and_raps_sets_are_never_empty():
    # p_top = 0.7 > q = 0.5: the rule {score <= q} is empty; the top class is added. Elsewhere
    # the sets are the rule's.
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.25, 0.45]], np.float32)
    for score in ("aps", "raps"):
        sets = prediction_sets(p, 0.5, score, k_reg=1, lam=0.01).numpy()
        rule = (class_scores(p, score, k_reg=1, lam=0.01) <= 0.5).numpy()
        np.testing.assert_array_equal(rule[0], [False, False, False])
        np.testing.assert_array_equal(sets, [[True, False, False], rule[1]])
        assert rule[1].any()
    # LAC and the randomised scores keep their empty sets (exact coverage).
    assert not prediction_sets(p, 0.2, "lac").numpy()[1].any()
    assert not prediction_sets(p, 0.5, "aps", u=np.ones(2) * 0.99).numpy()[0].any()


def test_tied_probabilities_rank_by_class_index():
    p = np.array([[0.4, 0.2, 0.4]], np.float32)
    np.testing.assert_allclose(class_scores(p, "aps"), [[0.4, 1.0, 0.8]],
                               rtol=1e-6)


def test_intervals_of_both_regression_scores():
    mean, var = np.array([[1.0, 2.0]]), np.array([[4.0, 1.0]])
    lo, hi = intervals(mean, var, np.array([1.5, 3.0], np.float32), "normalized")
    np.testing.assert_allclose(lo, [[1.0 - 3.0, 2.0 - 3.0]])
    np.testing.assert_allclose(hi, [[1.0 + 3.0, 2.0 + 3.0]])
    z = 1.6448536  # Phi^-1(0.95)
    lo, hi = intervals(mean, var, np.float32(-0.5), "cqr", alpha=0.1)
    np.testing.assert_allclose(lo, [[1.0 - 2 * z + 0.5, 2.0 - z + 0.5]], rtol=1e-6)
    np.testing.assert_allclose(hi, [[1.0 + 2 * z - 0.5, 2.0 + z - 0.5]], rtol=1e-6)
    # A q below -z std would invert the interval: it is the point [mean, mean] instead.
    lo, hi = intervals(mean, var, np.float32(-2.0), "cqr", alpha=0.1)
    np.testing.assert_allclose(lo, [[1.0 - 2 * z + 2.0, 2.0]], rtol=1e-6)
    np.testing.assert_allclose(hi, [[1.0 + 2 * z - 2.0, 2.0]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Trained once: a digits classifier and a heteroscedastic regressor, MC predictions on a pool
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    train, pool = order[:300], order[300:]
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([tf_keras.Input((64,)),
                                  tf_keras.layers.Dense(16, activation="relu"),
                                  tf_keras.layers.Dense(10)])
    bnn = tfp_bnn.bayesify(source, num_train_examples=len(train))
    bnn.compile(tf_keras.optimizers.Adam(0.02),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bnn.fit(x[train], y[train], epochs=30, batch_size=100, verbose=0)
    pred = tfp_bnn.predict(bnn, x[pool], num_samples=NUM_SAMPLES, seed=0, verbose=0)
    return {"model": bnn, "x": x[pool], "y": y[pool], "probabilities": pred.probabilities}


def _heteroscedastic(n, rng):
    x = rng.uniform(-3, 3, size=(n, 1)).astype(np.float32)
    y = np.sin(x) + (0.1 + 0.3 * np.abs(x)) * rng.normal(size=(n, 1))
    return x, y.astype(np.float32)


@pytest.fixture(scope="module")
def regression():
    rng = np.random.default_rng(1)
    x_train, y_train = _heteroscedastic(300, rng)
    x, y = _heteroscedastic(3000, rng)
    tf_keras.utils.set_random_seed(1)
    source = tf_keras.Sequential([tf_keras.Input((1,)),
                                  tf_keras.layers.Dense(16, activation="tanh"),
                                  tf_keras.layers.Dense(2), tfp_bnn.heads.GaussianHead()])
    bnn = tfp_bnn.bayesify(source, num_train_examples=len(x_train))
    bnn.compile(tf_keras.optimizers.Adam(0.02), tfp_bnn.losses.GaussianNLL())
    bnn.fit(x_train, y_train, epochs=30, batch_size=100, verbose=0)
    pred = tfp_bnn.predict(bnn, x, num_samples=NUM_SAMPLES, seed=0, verbose=0)
    return {"model": bnn, "x": x, "y": y, "mean": pred.mean, "variance": pred.variance}


# ---------------------------------------------------------------------------------------------
# Coverage as a guarantee: 50 random calibration/test splits
# ---------------------------------------------------------------------------------------------
def _split_law(n_cal, n_test, alpha):
    """The exact law of one split's covered count under the guarantee (continuous scores):
    BetaBinomial(n_test, n_cal + 1 - l, l), l = floor((n_cal + 1) alpha): the calibration draw
    and the test draw together (Angelopoulos & Bates 2021, section 3.2)."""
    l = math.floor((n_cal + 1) * alpha)
    return stats.betabinom(n_test, n_cal + 1 - l, l)


def _check_coverage(coverages, n_cal, n_test, alpha):
    """Mean within 0.01 of 1 - alpha; the spread that of the exact law; the splits below
    1 - alpha - 3 sd no more than that law allows.

    A split below 3 sd is not a bug: the law is skewed (P ~ 0.4 % a split here), so 50 splits
    in each of ten configurations would see one by chance. What the law makes improbable
    (P < 1e-3) is more of them than ``allowed``.
    """
    coverages = np.asarray(coverages)
    law = _split_law(n_cal, n_test, alpha)
    sd = law.std() / n_test
    assert abs(coverages.mean() - (1 - alpha)) <= 0.01, coverages.mean()
    assert 0.7 * sd < coverages.std() < 1.3 * sd, (coverages.std(), sd)
    floor = 1 - alpha - 3 * sd
    tail = law.cdf(math.ceil(floor * n_test) - 1)  # P(a split's coverage < floor)
    allowed = int(stats.binom(len(coverages), tail).isf(1e-3))
    below = int((coverages < floor).sum())
    assert below <= allowed, (below, allowed, coverages.min(), floor)


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_classification_coverage_over_50_digits_splits(digits, score, alpha):
    p, y = digits["probabilities"], digits["y"]
    n = len(y)
    n_cal = 1000
    rng = np.random.default_rng(7)
    coverages, sizes = [], []
    for _ in range(NUM_SPLITS):
        order = rng.permutation(n)
        cal, test = order[:n_cal], order[n_cal:]
        u_cal = rng.uniform(size=n_cal).astype(np.float32)
        u_test = rng.uniform(size=n - n_cal).astype(np.float32)
        fitted = calibration_scores(score, y[cal], probabilities=p[cal], u=u_cal,
                                                  k_reg=1, lam=0.01)
        q = conformal_quantile(fitted["scores"], alpha)
        sets = prediction_sets(p[test], q, score, u_test, k_reg=1, lam=0.01)
        coverages.append(metrics.empirical_coverage(sets.numpy(), y[test]))
        sizes.append(metrics.set_size(sets.numpy()))
    _check_coverage(coverages, n_cal, n - n_cal, alpha)
    assert np.mean(sizes) < 3  # informative sets: the model is far better than chance


@pytest.mark.parametrize("score", ["normalized", "cqr"])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_regression_coverage_over_50_splits(regression, score, alpha):
    mean, var, y = regression["mean"], regression["variance"], regression["y"]
    n, n_cal = len(y), 2000
    rng = np.random.default_rng(8)
    coverages = []
    for _ in range(NUM_SPLITS):
        order = rng.permutation(n)
        cal, test = order[:n_cal], order[n_cal:]
        fitted = calibration_scores(score, y[cal], mean=mean[cal],
                                                  variance=var[cal])
        conf = Conformal(None, tfp_bnn.Task.GAUSSIAN,
                                       tfp_bnn.options.ConformalScore(score), alpha, **fitted)
        lo, hi = intervals(mean[test], var[test], conf.quantile, score, alpha)
        coverages.append(metrics.picp(lo.numpy(), hi.numpy(), y[test]))
    _check_coverage(coverages, n_cal, n - n_cal, alpha)


@pytest.mark.slow  # trains a BNN on a shared UCI set: pytest -m slow tests/test_conformal.py
def test_uci_regression_coverage_when_the_shared_sets_exist():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "uci")
    if not os.path.isdir(os.path.join(root, "energy")):
        pytest.skip("the UCI sets of ../shared are not here (they are not shipped)")
    import conformal_uci  # scripts/: the same loop the benchmark runs over every shared set

    result = conformal_uci.run(os.path.join(root, "energy"), num_splits=NUM_SPLITS, epochs=30,
                               num_samples=NUM_SAMPLES, scores=("normalized",))
    for alpha, coverages in result["coverages"].items():
        _check_coverage(coverages, result["n_cal"], result["pool"] - result["n_cal"], alpha)


# ---------------------------------------------------------------------------------------------
# End to end: conformal() and predict() use the functions tested above
# ---------------------------------------------------------------------------------------------
def test_conformal_keeps_the_scores_of_its_calibration_predictions(digits):
    x, y = digits["x"][:200], digits["y"][:200]
    conf = tfp_bnn.conformal(digits["model"], x, y, alpha=0.1, score="lac",
                             num_samples=NUM_SAMPLES, seed=3)
    ref = tfp_bnn.predict(digits["model"], x, num_samples=NUM_SAMPLES, seed=3, verbose=0)
    expected = np.sort(1 - ref.probabilities[np.arange(200), y])
    np.testing.assert_allclose(conf.scores, expected, rtol=1e-6)
    assert conf.quantile == pytest.approx(expected[math.ceil(201 * 0.9) - 1])
    x_test = digits["x"][200:260]
    p = tfp_bnn.predict(conf, x_test, num_samples=NUM_SAMPLES, seed=4, verbose=0)
    base = tfp_bnn.predict(digits["model"], x_test, num_samples=NUM_SAMPLES, seed=4, verbose=0)
    np.testing.assert_allclose(p.probabilities, base.probabilities)
    np.testing.assert_array_equal(p.prediction_sets, 1 - base.probabilities <= conf.quantile)
    assert p.interval_lower is None and base.prediction_sets is None
    # Another level at predict time: q at alpha = 0.3 is smaller, the sets too.
    wide = tfp_bnn.predict(conf, x_test, num_samples=NUM_SAMPLES, seed=4, verbose=0, alpha=0.3)
    q3 = expected[math.ceil(201 * 0.7) - 1]
    np.testing.assert_array_equal(wide.prediction_sets, 1 - base.probabilities <= q3)
    assert wide.prediction_sets.sum() < p.prediction_sets.sum()


def test_randomized_aps_in_predict_is_seeded_and_contains_the_deterministic_sets(digits):
    x, y = digits["x"][:300], digits["y"][:300]
    rand = tfp_bnn.conformal(digits["model"], x, y, alpha=0.1, num_samples=NUM_SAMPLES)
    assert rand.score is tfp_bnn.options.ConformalScore.APS and rand.randomized
    x_test = digits["x"][300:400]
    a = tfp_bnn.predict(rand, x_test, num_samples=NUM_SAMPLES, seed=5, verbose=0)
    b = tfp_bnn.predict(rand, x_test, num_samples=NUM_SAMPLES, seed=5, verbose=0)
    np.testing.assert_array_equal(a.prediction_sets, b.prediction_sets)
    # u <= 1: a label's randomised score is at most its deterministic score, so at the same q
    # the randomised set holds the deterministic one, and is larger where u p_y mattered.
    det = (class_scores(a.probabilities, "aps") <= rand.quantile).numpy()
    assert (det <= a.prediction_sets).all() and (det < a.prediction_sets).any()
    other = tfp_bnn.predict(rand, x_test, num_samples=NUM_SAMPLES, seed=6, verbose=0)
    assert (other.prediction_sets != a.prediction_sets).any()  # u follows the seed


def test_regression_conformal_end_to_end(regression):
    x, y = regression["x"][:500], regression["y"][:500]
    conf = tfp_bnn.conformal(regression["model"], x, y, alpha=0.2, num_samples=NUM_SAMPLES)
    assert conf.score is tfp_bnn.options.ConformalScore.NORMALIZED
    x_test, y_test = regression["x"][500:1500], regression["y"][500:1500]
    p = tfp_bnn.predict(conf, x_test, num_samples=NUM_SAMPLES, seed=6, verbose=0)
    np.testing.assert_allclose(p.interval_upper - p.mean, conf.quantile * np.sqrt(p.variance),
                               rtol=1e-5)
    assert p.prediction_sets is None
    assert metrics.picp(p.interval_lower, p.interval_upper, y_test) == pytest.approx(0.8,
                                                                                    abs=0.04)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors naming the argument and the value
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_alpha_outside_0_1_is_refused(digits, alpha):
    with pytest.raises(ValueError, match=r"alpha must be a number strictly between 0 and 1\. "
                                         rf"Received: alpha={alpha!r}"):
        tfp_bnn.conformal(digits["model"], digits["x"][:50], digits["y"][:50], alpha=alpha)


def test_calibration_set_too_small_for_alpha(digits):
    with pytest.raises(ValueError, match=r"x_cal has 8 examples; alpha=0.1 needs at least 9"):
        tfp_bnn.conformal(digits["model"], digits["x"][:8], digits["y"][:8], alpha=0.1,
                          num_samples=2)
    conf = tfp_bnn.conformal(digits["model"], digits["x"][:9], digits["y"][:9], alpha=0.1,
                             num_samples=2)
    assert np.isfinite(conf.quantile)
    with pytest.raises(ValueError, match=r"alpha=0.05 needs at least 19 calibration examples; "
                                         "the conformal model has 9"):
        tfp_bnn.predict(conf, digits["x"][:4], num_samples=2, alpha=0.05)


def test_labels_outside_the_classes(digits):
    y = digits["y"][:50].copy()
    y[3] = 10
    with pytest.raises(ValueError, match=r"y_cal must be integers in \[0, 10\)\. "
                                         r"Received: y_cal containing \[10\]"):
        tfp_bnn.conformal(digits["model"], digits["x"][:50], y, num_samples=2)


def test_conformal_twice_and_scores_of_another_task(digits, regression):
    conf = tfp_bnn.conformal(digits["model"], digits["x"][:50], digits["y"][:50], num_samples=2)
    with pytest.raises(ValueError, match="model is already conformal"):
        tfp_bnn.conformal(conf, digits["x"][:50], digits["y"][:50])
    with pytest.raises(ValueError, match="already conformal"):
        tfp_bnn.calibrate(conf, digits["x"][:50], digits["y"][:50])
    with pytest.raises(ValueError, match=r"score='normalized' is a regression score; the model's "
                                         r"task is 'multiclass'\. Valid: \['lac', 'aps', 'raps'\]"):
        tfp_bnn.conformal(digits["model"], digits["x"][:50], digits["y"][:50],
                          score="normalized")
    with pytest.raises(ValueError, match=r"score='aps' is a classification score; the model's "
                                         r"task is 'gaussian'"):
        tfp_bnn.conformal(regression["model"], regression["x"][:50], regression["y"][:50],
                          score="aps")
    with pytest.raises(ValueError, match=r"Unknown conformal score: score='thr'"):
        tfp_bnn.conformal(digits["model"], digits["x"][:50], digits["y"][:50], score="thr")
    with pytest.raises(ValueError, match=r"alpha applies to a tfp_bnn.conformal model only"):
        tfp_bnn.predict(digits["model"], digits["x"][:5], num_samples=2, alpha=0.1)


def test_cqr_needs_a_gaussian_head():
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1)])
    model.compile("adam", "mse")
    x = np.zeros((20, 2), np.float32)
    with pytest.raises(ValueError, match=r"score='cqr' needs the quantiles of a Gaussian head "
                                         r"\(task 'gaussian'\); the model's task is 'regression'"):
        tfp_bnn.conformal(model, x, np.zeros(20), score="cqr")
    with pytest.warns(UserWarning, match="no stochastic layer"):
        with pytest.raises(ValueError, match=r"score='normalized' divides by the predictive std, "
                                             "which is 0 for 20 calibration value"):
            tfp_bnn.conformal(model, x, np.zeros(20), num_samples=2)


# ---------------------------------------------------------------------------------------------
# The served graph: predict's numbers, loaded in a fresh process without TFP or tfp_bnn
# ---------------------------------------------------------------------------------------------
SERVED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    out = {}
    for path, x, alpha in json.loads(sys.argv[1]):
        loaded = tf.saved_model.load(path)
        x = tf.constant(np.asarray(x, np.float32))
        name = list(loaded.signatures["serving_default"].structured_input_signature[1])[0]
        out[path] = {
            "default": {k: v.numpy().tolist() for k, v in
                        loaded.signatures["serving_default"](**{name: x}).items()},
            "alpha": {k: v.numpy().tolist() for k, v in loaded.signatures["predict_with_alpha"](
                **{name: x, "alpha": tf.constant(alpha, tf.float64)}).items()},
            "post_hoc": json.loads(loaded.post_hoc.numpy().decode()),
            "signatures": sorted(loaded.signatures)}
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m == "tfp_bnn" or m.startswith("tfp_bnn.") for m in sys.modules), "tfp_bnn"
    print(json.dumps(out))
""")


def _deterministic_classifier():
    tf_keras.utils.set_random_seed(3)
    return tf_keras.Sequential([tf_keras.Input((64,), name="pixels"),
                                tf_keras.layers.Dense(16, activation="relu"),
                                tf_keras.layers.Dense(10)], name="det_classifier")


def _deterministic_gaussian():
    tf_keras.utils.set_random_seed(4)
    return tf_keras.Sequential([tf_keras.Input((1,), name="x"),
                                tf_keras.layers.Dense(8, activation="tanh"),
                                tf_keras.layers.Dense(2), tfp_bnn.heads.GaussianHead()],
                               name="det_gaussian")


@pytest.fixture(scope="module")
def served(digits, regression, tmp_path_factory):
    """Three exports (calibrated+conformal classifier and regressor without stochastic layers,
    whose served numbers must equal predict's exactly; a conformal BNN), served in one fresh
    process."""
    root = tmp_path_factory.mktemp("served")
    x_cls, y_cls = digits["x"], digits["y"]
    x_reg, y_reg = regression["x"], regression["y"]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no stochastic layer: said once
        cal = tfp_bnn.calibrate(_deterministic_classifier(), x_cls[:300], y_cls[:300],
                                num_samples=1)
        det_cls = tfp_bnn.conformal(cal, x_cls[300:600], y_cls[300:600], alpha=0.1,
                                    score="raps", randomized=False, num_samples=1)
        var_cal = tfp_bnn.calibrate(_deterministic_gaussian(), x_reg[:300], y_reg[:300],
                                    method="variance", num_samples=1)
        det_reg = tfp_bnn.conformal(var_cal, x_reg[300:600], y_reg[300:600], alpha=0.1,
                                    score="cqr", num_samples=1)
        bnn_lac = tfp_bnn.conformal(digits["model"], x_cls[:300], y_cls[:300], alpha=0.1,
                                    score="lac", num_samples=NUM_SAMPLES)
        cases = {}
        for name, obj, x, s in (("det_cls", det_cls, x_cls[600:640], 1),
                                ("det_reg", det_reg, x_reg[600:640], 1),
                                ("bnn_lac", bnn_lac, x_cls[600:640], NUM_SAMPLES)):
            path = tfp_bnn.export_savedmodel(obj, root / name, num_samples=s)
            cases[name] = {"path": path, "obj": obj, "x": x, "alpha": 0.25,
                           "predict": tfp_bnn.predict(obj, x, num_samples=s, seed=0, verbose=0),
                           "predict_alpha": tfp_bnn.predict(obj, x, num_samples=s, seed=0,
                                                            verbose=0, alpha=0.25)}
    request = [(c["path"], c["x"].tolist(), c["alpha"]) for c in cases.values()]
    proc = subprocess.run([sys.executable, "-c", SERVED, json.dumps(request)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for case in cases.values():
        case["served"] = out[case["path"]]
    return cases


def test_served_calibrated_sets_equal_predict_without_stochastic_layers(served):
    case = served["det_cls"]
    assert case["served"]["signatures"] == ["deterministic", "predict_with_alpha",
                                            "predict_with_samples", "serving_default"]
    for key, pred in (("default", case["predict"]), ("alpha", case["predict_alpha"])):
        out = {k: np.asarray(v) for k, v in case["served"][key].items()}
        assert "prediction_set" in out and out["prediction_set"].dtype == bool
        np.testing.assert_allclose(out["probabilities"], pred.probabilities, rtol=1e-6,
                                   atol=1e-7)
        np.testing.assert_array_equal(out["prediction_set"], pred.prediction_sets)
    # The calibration changed the probabilities the sets are built on.
    raw = tf.nn.softmax(case["obj"].as_model()(case["x"])).numpy()
    assert not np.allclose(raw, case["predict"].probabilities, atol=1e-3)
    config = case["served"]["post_hoc"]
    assert config["conformal"] == "raps" and config["alpha"] == 0.1
    assert config["calibrated"]["temperature"] == pytest.approx(
        case["obj"].model.temperature)
    assert (np.asarray(case["served"]["alpha"]["prediction_set"]).sum()
            < np.asarray(case["served"]["default"]["prediction_set"]).sum())


def test_served_intervals_equal_predict_without_stochastic_layers(served):
    case = served["det_reg"]
    for key, pred in (("default", case["predict"]), ("alpha", case["predict_alpha"])):
        out = {k: np.asarray(v) for k, v in case["served"][key].items()}
        np.testing.assert_allclose(out["variance"], pred.variance, rtol=1e-6)
        np.testing.assert_allclose(out["interval_lower"], pred.interval_lower, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(out["interval_upper"], pred.interval_upper, rtol=1e-5,
                                   atol=1e-6)
    assert case["served"]["post_hoc"]["calibrated"]["variance_scale"] == pytest.approx(
        case["obj"].model.variance_scale)


def test_served_bnn_sets_are_its_own_probabilities_thresholded(served):
    # MC draws are fresh per process when served: the sets must be those of the served
    # probabilities at the fitted quantile, and agree with predict's up to MC error.
    case = served["bnn_lac"]
    out = {k: np.asarray(v) for k, v in case["served"]["default"].items()}
    np.testing.assert_array_equal(out["prediction_set"],
                                  1 - out["probabilities"] <= case["obj"].quantile)
    agree = (out["prediction_set"] == case["predict"].prediction_sets).mean()
    assert agree > 0.95, agree
