"""tfp_bnn.predict: the uncertainty decomposition by hand, the vectorised sampler against the plain
loop of model calls, fresh draws per sample, seeds, input kinds and bad input."""
import dataclasses
import gc
import math
import re
import warnings
import weakref

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import posteriors
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.predict import Prediction, classification_summary, regression_summary, summarize

ESTIMATORS = ["flipout", "reparameterization", "local_reparameterization"]
WIDE = posteriors.MeanField(init_scale=0.3)  # large enough that the logit variance is clearly > 0


def _np(summary):
    return {k: v.numpy() for k, v in summary.items()}


def _entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _mlp(estimator, in_dim=4, units=3, hidden=8, seed=0, task=None):
    tf_keras.utils.set_random_seed(seed)
    layers = [tf_keras.Input((in_dim,))]
    if hidden:
        layers.append(tf_keras.layers.Dense(hidden, activation="tanh"))
    layers.append(tf_keras.layers.Dense(units))
    return tfp_bnn.bayesify(tf_keras.Sequential(layers), estimator=estimator, kl_weight=1.0,
                            posterior=WIDE, task=task)


def _cnn(estimator, seed=0):
    tf_keras.utils.set_random_seed(seed)
    model = tf_keras.Sequential([
        tf_keras.Input((6, 6, 1)), tf_keras.layers.Conv2D(2, 3, activation="tanh"),
        tf_keras.layers.Flatten(), tf_keras.layers.Dense(3)])
    return tfp_bnn.bayesify(model, estimator=estimator, kl_weight=1.0, posterior=WIDE)


def _x(n=10, shape=(4,), seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


@pytest.fixture(scope="module")
def flipout_mlp():
    return _mlp("flipout")


@pytest.fixture(scope="module")
def deterministic():
    tf_keras.utils.set_random_seed(1)
    return tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])


# ---------------------------------------------------------------------------------------------
# The decomposition on hand-made sample arrays
# ---------------------------------------------------------------------------------------------
def test_classification_summary_by_hand():
    ln3 = math.log(3.0)
    # Example 0: two samples with probabilities [1/4, 3/4] and [3/4, 1/4].
    #   mean probabilities [1/2, 1/2]          -> total     = ln 2            = 0.693147
    #   each sample H(1/4, 3/4)                -> aleatoric = 0.562335
    #   mutual information = ln 2 - 0.562335  = 0.130812
    #   logits [0, ln3] and [ln3, 0]: mean ln3/2 each, variance (ln3/2)^2 (over S, ddof=0)
    # Example 1: both samples [0, 0]: everything epistemic is exactly 0.
    z = np.array([[[0.0, ln3], [0.0, 0.0]],
                  [[ln3, 0.0], [0.0, 0.0]]], dtype=np.float32)  # [S=2, B=2, C=2]
    out = _np(classification_summary(z))
    h_quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert h_quarter == pytest.approx(0.562335, abs=1e-6)
    np.testing.assert_allclose(out["probabilities"], [[0.5, 0.5], [0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(out["predictive_entropy"], [math.log(2), math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(out["expected_entropy"], [h_quarter, math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(out["mutual_information"], [math.log(2) - h_quarter, 0.0],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["mean_logits"], [[ln3 / 2, ln3 / 2], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(out["logit_variance"], [[(ln3 / 2) ** 2] * 2, [0, 0]], rtol=1e-6)
    assert all(v.dtype == np.float32 for v in out.values())


def test_classification_summary_matches_numpy_and_identities():
    rng = np.random.default_rng(0)
    # Wide logits so that some examples are nearly one-hot (entropy terms near 0 * log 0).
    z = (rng.normal(size=(50, 40, 5)) * rng.uniform(0.1, 20, size=(1, 40, 1))).astype(np.float32)
    out = _np(classification_summary(z))
    zd = z.astype(np.float64)
    p = np.exp(zd - zd.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out["mean_logits"], zd.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["logit_variance"], zd.var(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], p.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["predictive_entropy"], _entropy(p.mean(0)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["expected_entropy"], _entropy(p).mean(0), rtol=1e-4, atol=1e-5)
    # total = aleatoric + epistemic, MI >= 0 (Jensen), and MI is not trivially 0 here.
    np.testing.assert_allclose(out["predictive_entropy"],
                               out["expected_entropy"] + out["mutual_information"], atol=1e-5)
    assert (out["mutual_information"] >= 0).all()
    assert out["mutual_information"].max() > 0.1
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
    # Entropies stay finite where a softmax underflows to exact 0.
    assert np.isfinite(out["predictive_entropy"]).all()
    assert np.isfinite(out["expected_entropy"]).all()


@pytest.mark.parametrize("num_samples", [1, 3, 7, 100])
def test_identical_samples_give_exactly_zero_epistemic(num_samples):
    rng = np.random.default_rng(num_samples)
    one = (rng.normal(size=(1, 30, 4)) * 5).astype(np.float32)
    out = _np(classification_summary(np.repeat(one, num_samples, axis=0)))
    np.testing.assert_array_equal(out["mutual_information"], 0.0)
    np.testing.assert_array_equal(out["logit_variance"], 0.0)
    np.testing.assert_array_equal(out["mean_logits"], one[0])
    reg = _np(regression_summary(np.repeat(one, num_samples, axis=0)))
    np.testing.assert_array_equal(reg["epistemic_variance"], 0.0)
    np.testing.assert_array_equal(reg["mean"], one[0])


def test_regression_summary_by_hand():
    # means 1, 2, 6 -> mean 3, epistemic Var = (4 + 1 + 9) / 3 = 14/3
    # stds 1, 2, 2  -> aleatoric mean sigma^2 = (1 + 4 + 4) / 3 = 3
    mu = np.array([1.0, 2.0, 6.0], np.float32).reshape(3, 1, 1)
    sigma = np.array([1.0, 2.0, 2.0], np.float32).reshape(3, 1, 1)
    want = {"mean": 3.0, "epistemic_variance": 14 / 3, "aleatoric_variance": 3.0,
            "variance": 14 / 3 + 3.0}
    for out in (_np(regression_summary(mu, sigma)),
                _np(summarize(np.concatenate([mu, sigma], axis=-1), "gaussian"))):
        assert set(out) == set(want)
        for key, value in want.items():
            assert out[key].shape == (1, 1)
            assert out[key][0, 0] == pytest.approx(value, rel=1e-6), key
    plain = _np(summarize(mu, "regression"))
    assert plain["aleatoric_variance"][0, 0] == 0.0
    assert plain["variance"][0, 0] == pytest.approx(14 / 3, rel=1e-6)


def test_regression_summary_matches_numpy():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(30, 8, 2)).astype(np.float32)
    sigma = rng.uniform(0.1, 3.0, size=(30, 8, 2)).astype(np.float32)
    out = _np(regression_summary(mu, sigma))
    np.testing.assert_allclose(out["mean"], mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["epistemic_variance"], mu.var(0), rtol=1e-5)
    np.testing.assert_allclose(out["aleatoric_variance"], (sigma.astype(np.float64) ** 2).mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(out["variance"], mu.var(0) + (sigma.astype(np.float64) ** 2).mean(0),
                               rtol=1e-5)


def test_summarize_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'ordinal'"):
        summarize(np.zeros((2, 1, 3), np.float32), "ordinal")


# ---------------------------------------------------------------------------------------------
# Vectorised sampler == the plain loop of model calls, within Monte Carlo error
# ---------------------------------------------------------------------------------------------
S = 400


def _loop_samples(model, x, num_samples):
    """S calls of the model as a user calls it: each TFP layer draws fresh weights per call."""
    call = tf.function(lambda t: model(t))
    return np.stack([call(x).numpy() for _ in range(num_samples)])


def _assert_same_moments(vec, loop):
    """Per-element z-tests of mean and variance of [S, B, C] samples from two samplers."""
    n = len(vec)
    m_v, m_l = vec.mean(0), loop.mean(0)
    v_v, v_l = vec.var(0), loop.var(0)
    z_mean = (m_v - m_l) / np.sqrt((v_v + v_l) / n)
    m4_v = ((vec - m_v) ** 4).mean(0)
    m4_l = ((loop - m_l) ** 4).mean(0)
    se_var = np.sqrt((m4_v - v_v ** 2) / n + (m4_l - v_l ** 2) / n)
    z_var = (v_v - v_l) / se_var
    # The variance must be clearly non-zero, or the variance test could not fail.
    assert (v_l > 8 * se_var).all(), "posterior too narrow for a meaningful test"
    assert np.abs(z_mean).max() < 5, f"means differ: max |z| = {np.abs(z_mean).max():.2f}"
    assert np.abs(z_var).max() < 5, f"variances differ: max |z| = {np.abs(z_var).max():.2f}"


@pytest.mark.parametrize("build,estimator", [(_mlp, e) for e in ESTIMATORS]
                         + [(_cnn, "flipout"), (_cnn, "reparameterization")])
def test_vectorised_predict_matches_loop(build, estimator):
    model = build(estimator)
    shape = model.inputs[0].shape[1:]
    x = _x(5, tuple(shape), seed=2)
    pred = tfp_bnn.predict(model, x, num_samples=S, seed=3, return_samples=True)
    assert pred.samples.shape == (S, 5, 3)
    tf.random.set_seed(4)
    loop = _loop_samples(model, x, S)
    _assert_same_moments(pred.samples, loop)
    # The summary fields describe those same samples.
    np.testing.assert_allclose(pred.mean_logits, pred.samples.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.logit_variance, pred.samples.var(0), rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Each sample is a fresh weight draw
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_sample_is_a_fresh_draw(estimator):
    # One input feature, one layer: tiling the batch through the plain layer would give a single
    # value per example (reparameterization: one kernel per call) or two (flipout: mean +- one
    # shared perturbation). Independent draws give S distinct values.
    model = _mlp(estimator, in_dim=1, hidden=0)
    x = np.ones((6, 1), np.float32)
    samples = tfp_bnn.predict(model, x, num_samples=S, seed=0, return_samples=True).samples
    assert samples.shape == (S, 6, 3)
    assert not np.array_equal(samples[0, 0], samples[1, 0])
    for b in range(6):
        for c in range(3):
            assert len(np.unique(samples[:, b, c])) == S
    # Successive draws are uncorrelated: lag-1 correlation over S per example and class
    # (standard error 1/sqrt(S) = 0.05).
    d = samples - samples.mean(0)
    lag1 = (d[1:] * d[:-1]).mean(0) / d.var(0)
    assert np.abs(lag1).max() < 0.25


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_positions_of_one_example_share_the_kernel_draw(estimator):
    # layers.py: a Dense layer on [B, T, in] draws in weight space so that the T positions of one
    # example see one kernel per sample; identical positions give identical outputs.
    tf_keras.utils.set_random_seed(0)
    model = tfp_bnn.bayesify(
        tf_keras.Sequential([tf_keras.Input((5, 2)), tf_keras.layers.Dense(3)]),
        estimator=estimator, kl_weight=1.0, posterior=WIDE)
    samples = tfp_bnn.predict(model, np.ones((2, 5, 2), np.float32), num_samples=16, seed=0,
                              return_samples=True).samples
    assert samples.shape == (16, 2, 5, 3)
    np.testing.assert_array_equal(np.ptp(samples, axis=2), 0.0)  # same kernel along T
    assert (np.ptp(samples, axis=0) > 0).all()  # a new kernel per sample


@pytest.mark.parametrize("estimator", ["flipout", "reparameterization"])
def test_conv_positions_share_the_kernel_draw(estimator):
    tf_keras.utils.set_random_seed(0)
    model = tfp_bnn.bayesify(
        tf_keras.Sequential([tf_keras.Input((5, 5, 1)), tf_keras.layers.Conv2D(2, 3)]),
        estimator=estimator, kl_weight=1.0, posterior=WIDE)
    samples = tfp_bnn.predict(model, np.ones((2, 5, 5, 1), np.float32), num_samples=8, seed=0,
                              return_samples=True).samples
    assert samples.shape == (8, 2, 3, 3, 2)
    np.testing.assert_array_equal(np.ptp(samples, axis=(2, 3)), 0.0)
    assert (np.ptp(samples, axis=0) > 0).all()


# ---------------------------------------------------------------------------------------------
# Seeds, input kinds, batching, progress bar
# ---------------------------------------------------------------------------------------------
def _fields(pred):
    return {f.name: getattr(pred, f.name) for f in dataclasses.fields(pred)}


def _assert_identical(a, b):
    fa, fb = _fields(a), _fields(b)
    for key in fa:
        if isinstance(fa[key], np.ndarray):
            np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)
        else:
            assert fa[key] == fb[key], key


def test_seed_reproducible(flipout_mlp):
    x = _x()
    a = tfp_bnn.predict(flipout_mlp, x, num_samples=20, seed=7, return_samples=True)
    b = tfp_bnn.predict(flipout_mlp, x, num_samples=20, seed=7, return_samples=True)
    _assert_identical(a, b)
    c = tfp_bnn.predict(flipout_mlp, x, num_samples=20, seed=8, return_samples=True)
    assert not np.array_equal(a.samples, c.samples)
    assert np.abs(a.samples - c.samples).min() > 0  # not merely one entry apart
    u = tfp_bnn.predict(flipout_mlp, x, num_samples=20, return_samples=True)
    v = tfp_bnn.predict(flipout_mlp, x, num_samples=20, return_samples=True)
    assert not np.array_equal(u.samples, v.samples)  # seed=None: fresh draws every call


def test_seed_does_not_depend_on_call_history():
    # Run to run in one process: an identical model whose function was traced on other batch
    # shapes first gives the same seeded result.
    fresh, used = _mlp("reparameterization"), _mlp("reparameterization")
    x = _x()
    for batch_size in (3,):
        tfp_bnn.predict(used, x, num_samples=20, seed=5, batch_size=batch_size)
    a = tfp_bnn.predict(fresh, x, num_samples=20, seed=5, batch_size=4, return_samples=True)
    b = tfp_bnn.predict(used, x, num_samples=20, seed=5, batch_size=4, return_samples=True)
    _assert_identical(a, b)


def test_input_kinds_give_identical_results(flipout_mlp):
    # The seed of batch i is (seed, i): the same batches give the same draws whatever the input.
    x = _x()
    y = np.arange(10)
    ref = tfp_bnn.predict(flipout_mlp, x, num_samples=16, seed=1, batch_size=4,
                          return_samples=True)
    inputs = {
        "dataset": tf.data.Dataset.from_tensor_slices(x).batch(4),
        "dataset (x, y)": tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
        "generator": (x[i:i + 4] for i in range(0, 10, 4)),
        "generator (x, y)": ((x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)),
        "tensor": tf.constant(x),
    }
    for name, inp in inputs.items():
        pred = tfp_bnn.predict(flipout_mlp, inp, num_samples=16, seed=1, batch_size=4,
                               return_samples=True)
        try:
            _assert_identical(ref, pred)
        except AssertionError as e:
            raise AssertionError(f"input kind {name!r}: {e}") from None


def test_batch_size_splitting_keeps_shapes_and_order(flipout_mlp, deterministic):
    x = _x()
    one = tfp_bnn.predict(flipout_mlp, x, num_samples=16, seed=1, return_samples=True)
    split = tfp_bnn.predict(flipout_mlp, x, num_samples=16, seed=1, batch_size=3,
                            return_samples=True)
    for key, value in _fields(one).items():
        if isinstance(value, np.ndarray):
            assert getattr(split, key).shape == value.shape, key
    assert split.samples.shape == (16, 10, 3)
    # Batches are concatenated in order: every summary describes its own example's samples.
    np.testing.assert_allclose(split.mean_logits, split.samples.mean(0), rtol=1e-4, atol=1e-5)
    p = tf.nn.softmax(split.samples).numpy().astype(np.float64)
    np.testing.assert_allclose(split.probabilities, p.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(split.expected_entropy, _entropy(p).mean(0), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = tfp_bnn.predict(deterministic, x, num_samples=2, batch_size=3)
    np.testing.assert_allclose(det.mean_logits, deterministic(x).numpy(), rtol=1e-5, atol=1e-6)


def test_progress_bar(flipout_mlp, capsys):
    x = _x()
    tfp_bnn.predict(flipout_mlp, x, num_samples=4, batch_size=4)  # 3 batches, verbose="auto"
    assert "3/3" in capsys.readouterr().out
    tfp_bnn.predict(flipout_mlp, x, num_samples=4)  # one batch: no bar
    assert capsys.readouterr().out == ""
    tfp_bnn.predict(flipout_mlp, x, num_samples=4, batch_size=4, verbose=0)
    assert capsys.readouterr().out == ""
    tfp_bnn.predict(flipout_mlp, x, num_samples=4, verbose=1)
    assert "1/1" in capsys.readouterr().out
    tfp_bnn.predict(flipout_mlp, tf.data.Dataset.from_tensor_slices(x).batch(4), num_samples=4)
    assert "3/3" in capsys.readouterr().out  # known cardinality
    tfp_bnn.predict(flipout_mlp, (x[i:i + 4] for i in range(0, 10, 4)), num_samples=4)
    assert capsys.readouterr().out == ""  # unknown length: no bar unless verbose=1


# ---------------------------------------------------------------------------------------------
# The result structure
# ---------------------------------------------------------------------------------------------
def test_classification_prediction_structure(flipout_mlp):
    pred = tfp_bnn.predict(flipout_mlp, _x(), num_samples=8, seed=0)
    assert isinstance(pred, Prediction) and pred.task == "multiclass" and pred.is_classification
    assert pred.num_samples == 8
    shapes = {"mean_logits": (10, 3), "logit_variance": (10, 3), "probabilities": (10, 3),
              "predictive_entropy": (10,), "expected_entropy": (10,), "mutual_information": (10,)}
    for key, shape in shapes.items():
        value = getattr(pred, key)
        assert isinstance(value, np.ndarray) and value.shape == shape, key
        assert value.dtype == np.float32, key
    for key in ("mean", "variance", "epistemic_variance", "aleatoric_variance", "samples"):
        assert getattr(pred, key) is None, key
    np.testing.assert_array_equal(pred.predicted_class, pred.probabilities.argmax(-1))
    np.testing.assert_array_equal(pred.aleatoric, pred.expected_entropy)
    np.testing.assert_array_equal(pred.epistemic, pred.mutual_information)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.mean_logits = np.zeros((10, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.samples = np.zeros((8, 10, 3))


def test_regression_prediction():
    model = _mlp("flipout", units=1, task="regression")
    x = _x()
    pred = tfp_bnn.predict(model, x, num_samples=S, seed=0, return_samples=True)
    assert pred.task == "regression"
    for key in ("mean", "epistemic_variance", "aleatoric_variance", "variance"):
        value = getattr(pred, key)
        assert isinstance(value, np.ndarray) and value.shape == (10, 1), key
    for key in ("mean_logits", "logit_variance", "probabilities", "predictive_entropy",
                "expected_entropy", "mutual_information"):
        assert getattr(pred, key) is None, key
    assert pred.samples.shape == (S, 10, 1)
    np.testing.assert_array_equal(pred.aleatoric_variance, 0.0)  # a plain output has no noise
    np.testing.assert_allclose(pred.mean, pred.samples.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.epistemic_variance, pred.samples.var(0), rtol=1e-3)
    np.testing.assert_allclose(pred.variance, pred.epistemic_variance + pred.aleatoric_variance)
    assert (pred.epistemic_variance > 0).all()
    np.testing.assert_allclose(pred.epistemic, pred.epistemic_variance[:, 0])
    with pytest.raises(AttributeError, match="classification"):
        pred.predicted_class
    tf.random.set_seed(1)
    _assert_same_moments(pred.samples, _loop_samples(model, x, S))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_deterministic_model_works_with_zero_variance_and_warns_once():
    tf_keras.utils.set_random_seed(2)
    deterministic = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    x = _x()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = tfp_bnn.predict(deterministic, x, num_samples=5)
        b = tfp_bnn.predict(deterministic, x, num_samples=7)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert "no stochastic layer" in messages[0] and deterministic.name in messages[0]
    logits = deterministic(x).numpy()
    for pred in (a, b):
        np.testing.assert_array_equal(pred.logit_variance, 0.0)
        np.testing.assert_array_equal(pred.mutual_information, 0.0)
        np.testing.assert_allclose(pred.mean_logits, logits, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(pred.probabilities, tf.nn.softmax(logits).numpy(), rtol=1e-5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfp_bnn.predict(_mlp("flipout"), x, num_samples=2)
    assert not [w for w in caught if "stochastic" in str(w.message)]


@pytest.mark.parametrize("num_samples", [0, -3, 2.5, True, "10"])
def test_num_samples_must_be_a_positive_integer(flipout_mlp, num_samples):
    with pytest.raises(ValueError, match=re.escape(f"num_samples={num_samples!r}")):
        tfp_bnn.predict(flipout_mlp, _x(), num_samples=num_samples)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_batch_size_must_be_a_positive_integer(flipout_mlp, batch_size):
    with pytest.raises(ValueError, match=re.escape(f"batch_size={batch_size!r}")):
        tfp_bnn.predict(flipout_mlp, _x(), batch_size=batch_size)


def test_wrong_feature_count_names_both_shapes(flipout_mlp):
    with pytest.raises(ValueError, match=r"\(4,\).*\(10, 3\)"):
        tfp_bnn.predict(flipout_mlp, _x()[:, :3], num_samples=2)
    with pytest.raises(ValueError, match=r"\(4,\).*\(10, 4, 1\)"):
        tfp_bnn.predict(flipout_mlp, _x()[..., None], num_samples=2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_is_an_error(flipout_mlp, bad):
    x = _x()
    x[3, 2] = bad
    with pytest.raises(ValueError, match="NaN"):
        tfp_bnn.predict(flipout_mlp, x, num_samples=2)
    # Also when the bad value sits in a later batch of a dataset.
    with pytest.raises(ValueError, match="NaN"):
        tfp_bnn.predict(flipout_mlp, tf.data.Dataset.from_tensor_slices(x).batch(2), num_samples=2)


@pytest.mark.parametrize("bad", [np.array([["a", "b", "c", "d"]] * 3),
                                 np.array([[1, 2, 3, object()]], dtype=object)])
def test_non_numeric_x_is_an_error(flipout_mlp, bad):
    with pytest.raises(ValueError, match="numeric"):
        tfp_bnn.predict(flipout_mlp, bad, num_samples=2)


def test_other_bad_input(flipout_mlp):
    with pytest.raises(ValueError, match="x of type int"):
        tfp_bnn.predict(flipout_mlp, 5, num_samples=2)
    with pytest.raises(ValueError, match="empty"):
        tfp_bnn.predict(flipout_mlp, np.zeros((0, 4), np.float32), num_samples=2)
    with pytest.raises(ValueError, match="model must be a tf_keras Model"):
        tfp_bnn.predict(lambda t: t, _x(), num_samples=2)


def test_predict_does_not_keep_the_model_alive():
    model = _mlp("flipout")
    tfp_bnn.predict(model, _x(), num_samples=2)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_one_model_per_seed_does_not_warn_of_retracing(caplog):
    # Each model traces its own MC function (one per model, S and task); TF counts traces per
    # code object, so without the opt-out the sixth model's predict logs "triggered tf.function
    # retracing" (the Iris job's five seeds did).
    import logging
    caplog.set_level(logging.WARNING, logger="tensorflow")
    for seed in range(7):
        model = _mlp("flipout", hidden=0, seed=seed)
        for n in (5, 7):
            tfp_bnn.predict(model, _x(n), num_samples=3, seed=seed)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
