"""`tfp_bnn.calibrate`: fitted values against the ones that generated the labels, the calibrated
summary against its formula on a BNN's own samples, the export, bad input.

Most tests use "identity" models whose outputs are their inputs (logits, or mean and std):
labels drawn from a known calibrated law then pin down the fitted temperature, vector scaling
and variance scale, with no training.
"""
import warnings

import numpy as np
import pytest
from scipy import optimize

import tfp_bnn
from tfp_bnn import calibration, metrics
from tfp_bnn._keras import tf, tf_keras


def _identity(width, name, task=None):
    model = tf_keras.Sequential([tf_keras.Input((width,)),
                                 tf_keras.layers.Dense(width, use_bias=False,
                                                       kernel_initializer="identity")],
                                name=name)
    if task is not None:
        tfp_bnn.tasks.declare(model, task)
    return model


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _draw(probs, rng):
    return (rng.uniform(size=(len(probs), 1)) > np.cumsum(probs, -1)).sum(-1)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no stochastic layer.*")
        yield


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(4000, 4)).astype(np.float32)
    return z, _draw(_softmax(z / 2.0), rng)  # the model is overconfident: T = 2 calibrates it


def test_temperature_recovers_the_generating_temperature(logits):
    z, y = logits
    cal = tfp_bnn.calibrate(_identity(4, "logits"), z, y, num_samples=1)
    assert cal.temperature == pytest.approx(2.0, abs=0.12)
    before, after = cal.validation_nll
    assert before == pytest.approx(metrics.nll(_softmax(z), y), rel=1e-5)
    assert after == pytest.approx(metrics.nll(_softmax(z / cal.temperature), y), rel=1e-5)
    # The minimum of NLL + (log T)^2 / (2 n) (log T ~ N(0, 1)): 1 % either way is worse.
    def objective(t):
        return metrics.nll(_softmax(z / t), y) + np.log(t) ** 2 / (2 * len(y))

    for t in (cal.temperature * 1.01, cal.temperature / 1.01):
        assert objective(t) > objective(cal.temperature)
    pred = tfp_bnn.predict(cal, z[:50], num_samples=1)
    np.testing.assert_allclose(pred.probabilities, _softmax(z[:50] / cal.temperature),
                               rtol=1e-4, atol=1e-6)
    p = pred.probabilities
    np.testing.assert_allclose(pred.predictive_entropy, -np.sum(p * np.log(p), -1), rtol=1e-4)


def test_both_targets_agree_when_every_sample_is_the_same(logits):
    # softmax(log softmax(z) / T) = softmax(z / T): on equal samples the two places coincide.
    z, y = logits
    model = _identity(4, "logits_both")
    a = tfp_bnn.calibrate(model, z, y, num_samples=1, target="predictive")
    b = tfp_bnn.calibrate(model, z, y, num_samples=2, target="samples")
    assert b.target is tfp_bnn.options.CalibrationTarget.SAMPLES
    assert a.temperature == pytest.approx(b.temperature, rel=1e-3)


def test_vector_scaling_recovers_weights_and_bias():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(8000, 3)).astype(np.float32)
    w, b = np.array([0.5, 1.0, 2.0]), np.array([0.3, -0.2, 0.0])
    log_p = np.log(_softmax(z))
    y = _draw(_softmax(w * log_p + b), rng)
    cal = tfp_bnn.calibrate(_identity(3, "vec"), z, y, method="vector", num_samples=1)
    # The MAP fit (scipy's BFGS on the same objective: NLL plus the standard-normal prior on
    # the step from w = 1/T, b = 0; softmax ignores a common shift of b), near the generating
    # values.
    lp = np.log(_softmax(z.astype(np.float64)))
    temp = tfp_bnn.calibrate(_identity(3, "vec_t"), z, y, num_samples=1)
    start = np.r_[np.full(3, 1 / temp.temperature), np.zeros(3)]

    def objective(theta):
        logit = theta[:3] * lp + theta[3:]
        nll = -np.mean(logit[np.arange(len(y)), y] - np.log(np.exp(logit).sum(-1)))
        return nll + np.sum((theta - start) ** 2) / (2 * len(y))

    mle = optimize.minimize(objective, start, method="BFGS").x
    np.testing.assert_allclose(cal.weights, mle[:3], atol=2e-3)
    np.testing.assert_allclose(cal.bias - cal.bias.mean(), mle[3:] - mle[3:].mean(), atol=2e-3)
    np.testing.assert_allclose(cal.weights, w, atol=0.25)
    np.testing.assert_allclose(cal.bias - cal.bias.mean(), b - b.mean(), atol=0.25)
    assert cal.validation_nll[1] < cal.validation_nll[0]
    # Vector scaling fits at least as well as temperature (it contains it).
    assert cal.validation_nll[1] <= temp.validation_nll[1] + 1e-6
    probs = calibration.vector_scale(_softmax(z[:5]), cal.weights, cal.bias).numpy()
    np.testing.assert_allclose(probs, _softmax(cal.weights * log_p[:5] + cal.bias), rtol=1e-4)


def test_a_validation_set_classified_all_right_keeps_t_and_w_finite():
    rng = np.random.default_rng(6)
    z = rng.normal(scale=3.0, size=(30, 3)).astype(np.float32)
    y = z.argmax(1)  # every example right, with a margin: the NLL alone falls as T -> 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not at the edge of the range
        warnings.filterwarnings("ignore", message=".*no stochastic layer.*")
        temp = tfp_bnn.calibrate(_identity(3, "sep_t"), z, y, num_samples=1)
        vec = tfp_bnn.calibrate(_identity(3, "sep_v"), z, y, method="vector", num_samples=1)
    assert 0.05 < temp.temperature < 1.0
    # The NLL-only optimum is the range's floor; the prior's is inside: the NLL falls, the
    # objective does not.
    nll = lambda t: metrics.nll(_softmax(z / t), y)
    assert nll(calibration.TEMPERATURE_RANGE[0]) < nll(temp.temperature)
    # The standard-normal prior on the step from w = 1/T keeps w finite and near it (the NLL
    # alone drives every w to infinity here).
    assert np.all(np.abs(vec.weights - 1 / temp.temperature) < 10)
    assert np.all(np.isfinite(vec.bias))


def test_binary_temperature():
    rng = np.random.default_rng(2)
    z = rng.normal(scale=3.0, size=(3000, 1)).astype(np.float32)
    y = (rng.uniform(size=(3000, 1)) < 1 / (1 + np.exp(-z / 3.0))).astype(int)[:, 0]
    cal = tfp_bnn.calibrate(_identity(1, "binary", task="binary"), z, y, num_samples=1)
    assert cal.temperature == pytest.approx(3.0, abs=0.3)
    p = tfp_bnn.predict(cal, z[:10], num_samples=1).probabilities
    np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z[:10, 0] / cal.temperature)),
                               rtol=1e-4)


def test_variance_scale_is_the_closed_form_minimiser():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(3000, 1))
    sigma = rng.uniform(0.5, 2.0, size=(3000, 1))
    y = mu + 1.5 * sigma * rng.normal(size=(3000, 1))  # the head's std is 1.5x too small
    x = np.concatenate([mu, sigma], 1).astype(np.float32)
    cal = tfp_bnn.calibrate(_identity(2, "gauss", task="gaussian"), x, y, method="variance",
                            num_samples=1)
    x32 = x.astype(np.float32)
    expected = np.mean((y - x32[:, :1]) ** 2 / x32[:, 1:] ** 2)
    assert cal.variance_scale == pytest.approx(expected, rel=1e-5)
    assert cal.variance_scale == pytest.approx(2.25, rel=0.08)
    pred = tfp_bnn.predict(cal, x[:20], num_samples=1)
    np.testing.assert_allclose(pred.variance, cal.variance_scale * x32[:20, 1:] ** 2, rtol=1e-5)
    np.testing.assert_allclose(pred.aleatoric_variance, pred.variance, rtol=1e-6)
    # Calibrated: the regression calibration curve hugs the diagonal.
    area = metrics.miscalibration_area(pred.mean, np.sqrt(pred.variance), y[:20])
    assert area < metrics.miscalibration_area(x32[:20, :1], x32[:20, 1:], y[:20]) + 0.05


# ---------------------------------------------------------------------------------------------
# On a BNN's own samples: where the temperature acts
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bnn():
    tf_keras.utils.set_random_seed(5)
    source = tf_keras.Sequential([tf_keras.Input((6,)), tf_keras.layers.Dense(8, activation="tanh"),
                                  tf_keras.layers.Dense(3)])
    return tfp_bnn.bayesify(source, kl_weight=1.0,
                            posterior=tfp_bnn.posteriors.MeanField(init_scale=0.5))


def test_the_two_targets_on_mc_samples(bnn):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=200)
    kw = dict(num_samples=16, seed=7, return_samples=True, verbose=0)
    base = tfp_bnn.predict(bnn, x, **kw)
    s = base.samples.astype(np.float64)
    for target in ("predictive", "samples"):
        cal = tfp_bnn.calibrate(bnn, x, y, target=target, num_samples=16)
        pred = tfp_bnn.predict(cal, x, **kw)
        np.testing.assert_array_equal(pred.samples, base.samples)  # the same draws
        t = cal.temperature
        if target == "predictive":
            expected = _softmax(np.log(_softmax(s).mean(0)) / t)
            # The decomposition is the posterior's: T acts on no single sample.
            np.testing.assert_allclose(pred.mutual_information, base.mutual_information,
                                       rtol=1e-6)
            np.testing.assert_allclose(pred.expected_entropy, base.expected_entropy, rtol=1e-6)
        else:
            expected = _softmax(s / t).mean(0)
            h = -np.sum(_softmax(s / t) * np.log(_softmax(s / t)), -1).mean(0)
            np.testing.assert_allclose(pred.expected_entropy, h, rtol=1e-4)
            np.testing.assert_allclose(pred.mean_logits, s.mean(0) / t, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pred.probabilities, expected, rtol=1e-4, atol=1e-6)
        assert not np.allclose(pred.probabilities, base.probabilities, atol=1e-3)


def test_export_serves_the_calibrated_probabilities(logits, tmp_path):
    z, y = logits
    cal = tfp_bnn.calibrate(_identity(4, "served_logits"), z[:500], y[:500], num_samples=1)
    path = tfp_bnn.export_savedmodel(cal, tmp_path / "cal", num_samples=1)
    loaded = tf.saved_model.load(path)
    assert sorted(loaded.signatures) == ["deterministic", "predict_with_samples",
                                         "serving_default"]
    name = list(loaded.signatures["serving_default"].structured_input_signature[1])[0]
    out = loaded.signatures["serving_default"](**{name: tf.constant(z[:30])})
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               tfp_bnn.predict(cal, z[:30], num_samples=1).probabilities,
                               rtol=1e-6, atol=1e-7)
    import json
    assert json.loads(loaded.post_hoc.numpy())["temperature"] == pytest.approx(cal.temperature)


def test_a_calibrated_teacher_distils_its_calibrated_probabilities(logits):
    z, y = logits
    cal = tfp_bnn.calibrate(_identity(4, "teacher"), z[:300], y[:300], num_samples=1)
    student = _identity(4, "student")
    result = tfp_bnn.distill(cal, student, z[:64], num_samples=1, epochs=1, seed=0)
    np.testing.assert_allclose(result.teacher_probabilities, _softmax(z[:64] / cal.temperature),
                               rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_calibrating_twice_is_refused(logits):
    z, y = logits
    cal = tfp_bnn.calibrate(_identity(4, "twice"), z[:100], y[:100], num_samples=1)
    with pytest.raises(ValueError, match=r"model is already calibrated \(Calibrated\("):
        tfp_bnn.calibrate(cal, z[:100], y[:100])


def test_method_target_task_and_labels_are_checked(logits):
    z, y = logits
    model = _identity(4, "checks")
    with pytest.raises(ValueError, match=r"Unknown calibration method: method='platt'. Valid: "
                                         r"\['temperature', 'vector', 'variance'\]"):
        tfp_bnn.calibrate(model, z, y, method="platt")
    with pytest.raises(ValueError, match=r"method='variance' does not calibrate a multiclass "
                                         r"model \(task 'multiclass'\). Valid: \['temperature', "
                                         r"'vector'\]"):
        tfp_bnn.calibrate(model, z, y, method="variance")
    with pytest.raises(ValueError, match=r"target applies to method='temperature' only. "
                                         r"Received: target='samples' with method='vector'"):
        tfp_bnn.calibrate(model, z, y, method="vector", target="samples")
    with pytest.raises(ValueError, match=r"Unknown calibration target: target='logits'"):
        tfp_bnn.calibrate(model, z, y, target="logits")
    bad = y[:100].copy()
    bad[0] = 4
    with pytest.raises(ValueError, match=r"y_val must be integers in \[0, 4\). Received: y_val "
                                         r"containing \[4\]"):
        tfp_bnn.calibrate(model, z[:100], bad, num_samples=1)
    with pytest.raises(ValueError, match=r"y_val must have one entry per row"):
        tfp_bnn.calibrate(model, z[:100], y[:99], num_samples=1)
    gauss = _identity(2, "gauss_checks", task="gaussian")
    with pytest.raises(ValueError, match=r"method='temperature' does not calibrate a gaussian "
                                         r"model"):
        tfp_bnn.calibrate(gauss, np.ones((10, 2), np.float32), np.zeros(10))
    with pytest.raises(ValueError, match=r"y_val must be finite"):
        tfp_bnn.calibrate(gauss, np.ones((10, 2), np.float32), np.full(10, np.nan),
                          method="variance", num_samples=1)
