"""tfp_bnn.posteriors: softplus parameterisation, init, from_weights and MOPED."""
import math

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import layers as bl
from tfp_bnn import posteriors
from tfp_bnn._keras import tf, tf_keras

L = tf_keras.layers


def _loc_scale(dist):
    return (tf.convert_to_tensor(dist.loc).numpy(), tf.convert_to_tensor(dist.scale).numpy())


@pytest.mark.parametrize("x", [1e-8, 1e-3, 0.05, 1.0, 19.9, 20.0, 20.1, 50.0])
def test_inverse_softplus_inverts_softplus(x):
    rho = posteriors.inverse_softplus(x)
    # Above 20 it returns rho = x, off by log1p(exp(-x)) < 2e-9: far below float32 resolution.
    np.testing.assert_allclose(np.log1p(np.exp(rho)), x, rtol=1e-10)


def test_mean_field_defaults_config_and_get():
    mf = posteriors.MeanField()
    assert mf.get_config() == {"init_scale": 0.05, "from_weights": False, "moped_delta": None,
                               "bayesian_bias": False}
    assert posteriors.get(None) == mf
    assert posteriors.get(mf) is mf
    other = posteriors.MeanField(init_scale=0.2, moped_delta=0.1, bayesian_bias=True)
    assert other.from_weights  # MOPED implies from_weights
    assert posteriors.MeanField.from_config(other.get_config()) == other
    assert posteriors.get(other.get_config()) == other
    assert posteriors.get({"config": other.get_config()}) == other


@pytest.mark.parametrize("kwargs, pattern", [
    ({"init_scale": 0}, r"Received: init_scale=0$"),
    ({"init_scale": -0.1}, r"Received: init_scale=-0\.1"),
    ({"init_scale": "wide"}, r"Received: init_scale='wide'"),
    ({"moped_delta": 0.0},
     r"moped_delta must be a positive number or None\. Received: moped_delta=0\.0"),
    ({"moped_delta": float("inf")}, r"Received: moped_delta=inf"),
])
def test_mean_field_rejects_bad_values(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        posteriors.MeanField(**kwargs)


def test_posterior_get_rejects_other_types_and_bad_keys():
    with pytest.raises(ValueError, match=r"Received: posterior='mean_field'"):
        posteriors.get("mean_field")
    with pytest.raises(ValueError, match=r"posterior=.*sigma"):
        posteriors.get({"sigma": 0.1})


def test_scale_for_is_init_scale_or_moped():
    w = np.array([[0.5, -2.0], [0.0, 1e-9]])
    np.testing.assert_array_equal(posteriors.MeanField(init_scale=0.3).scale_for(w),
                                  np.full((2, 2), 0.3))
    np.testing.assert_array_equal(posteriors.MeanField(moped_delta=0.1).scale_for(w),
                                  [[0.05, 0.2], [posteriors.MIN_SCALE, posteriors.MIN_SCALE]])


@pytest.mark.parametrize("bayesian_bias", [False, True])
def test_untrained_posterior_equals_its_init(bayesian_bias):
    layer = bl.DenseReparameterization(
        3, kernel_initializer=tf_keras.initializers.Constant(0.25),
        bias_initializer=tf_keras.initializers.Constant(-0.5), kl_weight=1.0,
        posterior=posteriors.MeanField(init_scale=0.07, bayesian_bias=bayesian_bias))
    layer.build((None, 4))
    loc, scale = _loc_scale(layer.kernel_posterior.distribution)
    np.testing.assert_array_equal(loc, np.full((4, 3), 0.25, np.float32))
    np.testing.assert_allclose(scale, 0.07, rtol=1e-6)
    bias_dist = layer.bias_posterior.distribution
    np.testing.assert_array_equal(tf.convert_to_tensor(bias_dist.loc), np.full(3, -0.5, np.float32))
    if bayesian_bias:
        np.testing.assert_allclose(tf.convert_to_tensor(bias_dist.scale), 0.07, rtol=1e-6)
        assert layer.bias_prior is not None
    else:
        # A point estimate: every draw is the mean, and there is no bias prior (no bias KL).
        np.testing.assert_array_equal(bias_dist.sample(), np.full(3, -0.5, np.float32))
        assert layer.bias_prior is None


@pytest.fixture(scope="module")
def trained_source():
    """A small tf_keras conv + dense model with non-trivial weights, one kernel entry exactly 0."""
    model = tf_keras.Sequential([
        tf_keras.Input((6, 6, 2)),
        L.Conv2D(3, 3, activation="relu", name="conv"),
        L.Flatten(name="flat"),
        L.Dense(4, activation="tanh", name="hidden"),
        L.Dense(2, name="out"),
    ], name="source")
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    kernel, bias = model.get_layer("out").get_weights()
    kernel[0, 0] = 0.0
    model.get_layer("out").set_weights([kernel, bias])
    return model


@pytest.mark.parametrize("estimator", ["flipout", "reparameterization"])
def test_from_weights_means_equal_source_weights(trained_source, estimator):
    bnn = tfp_bnn.bayesify(trained_source, estimator=estimator, kl_weight=0.1,
                           posterior=posteriors.MeanField(init_scale=0.02, from_weights=True))
    for name in ("conv", "hidden", "out"):
        kernel, bias = trained_source.get_layer(name).get_weights()
        layer = bnn.get_layer(name)
        loc, scale = _loc_scale(layer.kernel_posterior.distribution)
        np.testing.assert_array_equal(loc, kernel)
        np.testing.assert_allclose(scale, 0.02, rtol=1e-5)
        bias_loc = tf.convert_to_tensor(layer.bias_posterior.distribution.loc)
        np.testing.assert_array_equal(bias_loc, bias)


def test_without_from_weights_means_are_freshly_initialised(trained_source):
    bnn = tfp_bnn.bayesify(trained_source, kl_weight=0.1)
    loc, _ = _loc_scale(bnn.get_layer("hidden").kernel_posterior.distribution)
    assert not np.allclose(loc, trained_source.get_layer("hidden").get_weights()[0])
    limit = math.sqrt(6 / (loc.shape[0] + loc.shape[1]))  # glorot_uniform, as the source asked
    assert np.abs(loc).max() <= limit


@pytest.mark.parametrize("bayesian_bias", [False, True])
def test_moped_sigma_is_delta_times_abs_weight(trained_source, bayesian_bias):
    delta = 0.1
    bnn = tfp_bnn.bayesify(trained_source, kl_weight=0.1,
                           posterior=posteriors.MeanField(moped_delta=delta,
                                                          bayesian_bias=bayesian_bias))
    for name in ("conv", "hidden", "out"):
        kernel, bias = trained_source.get_layer(name).get_weights()
        layer = bnn.get_layer(name)
        loc, scale = _loc_scale(layer.kernel_posterior.distribution)
        np.testing.assert_array_equal(loc, kernel)
        want = np.maximum(delta * np.abs(kernel), posteriors.MIN_SCALE)
        # float32 rho through softplus: relative error of a few ulps
        np.testing.assert_allclose(scale, want, rtol=1e-5)
        bias_dist = layer.bias_posterior.distribution
        np.testing.assert_array_equal(tf.convert_to_tensor(bias_dist.loc), bias)
        if bayesian_bias:
            want_bias = np.maximum(delta * np.abs(bias), posteriors.MIN_SCALE)
            np.testing.assert_allclose(tf.convert_to_tensor(bias_dist.scale), want_bias, rtol=1e-5)
    # the exactly-zero weight gets the floor, keeping log(sigma) in the KL finite
    _, scale = _loc_scale(bnn.get_layer("out").kernel_posterior.distribution)
    np.testing.assert_allclose(scale[0, 0], posteriors.MIN_SCALE, rtol=1e-5)
    bnn(np.ones((1, 6, 6, 2), np.float32))
    assert all(np.isfinite(loss.numpy()) for loss in bnn.losses)
