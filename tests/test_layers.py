"""tfp_bnn.layers: the layer contract over layer x estimator x prior, KL losses, moments."""
import math

import numpy as np
import pytest

from layer_contract import run_layer_test
from tfp_bnn import layers as bl
from tfp_bnn import posteriors, priors
from tfp_bnn._keras import tf, tf_keras

DENSE = [bl.DenseFlipout, bl.DenseReparameterization, bl.DenseLocalReparameterization]
PRIORS = ["normal", "laplace", "scale_mixture", "learned_normal"]
KERNEL = ["kernel_posterior_loc", "kernel_posterior_untransformed_scale"]


def _kernel_weights(prior, bias=True):
    names = list(KERNEL)
    if prior == "learned_normal":
        names.append("kernel_prior_untransformed_scale")
    return names + (["bias_posterior_loc"] if bias else [])


def _np_softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


# --- the contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("layer_cls", DENSE, ids=lambda c: c.__name__)
def test_dense_layer_contract(layer_cls, prior, tmp_path):
    run_layer_test(layer_cls, dict(units=3, activation="relu", prior=prior, kl_weight=0.25),
                   input_shape=(5, 4), expected_output_shape=(5, 3),
                   expected_trainable_weights=_kernel_weights(prior), expected_num_losses=1,
                   tmp_path=tmp_path)


def test_dense_layer_contract_bayesian_bias_learned_prior(tmp_path):
    weights = ["kernel_posterior_loc", "kernel_posterior_untransformed_scale",
               "kernel_prior_untransformed_scale", "bias_posterior_loc",
               "bias_posterior_untransformed_scale", "bias_prior_untransformed_scale"]
    run_layer_test(bl.DenseLocalReparameterization,
                   dict(units=2, prior="learned_normal", kl_weight=0.5,
                        posterior=posteriors.MeanField(bayesian_bias=True)),
                   input_shape=(3, 6), expected_output_shape=(3, 2),
                   expected_trainable_weights=weights, expected_num_losses=2, tmp_path=tmp_path)


def test_dense_layer_contract_without_bias_on_a_sequence(tmp_path):
    run_layer_test(bl.DenseFlipout, dict(units=2, use_bias=False, prior="laplace", kl_weight=1.0),
                   input_shape=(2, 3, 4), expected_output_shape=(2, 3, 2),
                   expected_trainable_weights=KERNEL, expected_num_losses=1, tmp_path=tmp_path)


@pytest.mark.parametrize("layer_cls, prior, kwargs, input_shape, output_shape", [
    (bl.Conv2DFlipout, "normal", dict(kernel_size=3, padding="same", strides=2),
     (2, 8, 8, 3), (2, 4, 4, 4)),
    (bl.Conv2DReparameterization, "scale_mixture", dict(kernel_size=(3, 2), dilation_rate=2),
     (2, 8, 8, 3), (2, 4, 6, 4)),
    (bl.Conv1DFlipout, "learned_normal", dict(kernel_size=3, padding="valid"),
     (2, 7, 3), (2, 5, 4)),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_conv_layer_contract(layer_cls, prior, kwargs, input_shape, output_shape, tmp_path):
    run_layer_test(layer_cls,
                   dict(filters=4, activation="elu", prior=prior, kl_weight=0.1, **kwargs),
                   input_shape=input_shape, expected_output_shape=output_shape,
                   expected_trainable_weights=_kernel_weights(prior), expected_num_losses=1,
                   tmp_path=tmp_path)


# --- the KL loss, by hand -----------------------------------------------------------------------
@pytest.mark.parametrize("bayesian_bias", [False, True])
@pytest.mark.parametrize("layer_cls", [bl.DenseFlipout, bl.DenseReparameterization,
                                       bl.DenseLocalReparameterization, bl.Conv1DFlipout])
def test_layer_loss_is_kl_weight_times_normal_kl_formula(layer_cls, bayesian_bias):
    """KL(N(m, s) || N(m0, s0)) = log(s0/s) + (s^2 + (m - m0)^2) / (2 s0^2) - 1/2, summed."""
    m0, s0, kl_weight = 0.1, 0.5, 0.125
    args = (2,) if layer_cls is not bl.Conv1DFlipout else (2, 3)
    layer = layer_cls(*args, prior=priors.Normal(loc=m0, scale=s0), kl_weight=kl_weight,
                      posterior=posteriors.MeanField(init_scale=0.2, bayesian_bias=bayesian_bias),
                      bias_initializer="random_normal")
    x = tf.ones([3, 4]) if layer_cls is not bl.Conv1DFlipout else tf.ones([3, 5, 4])
    layer(x)
    rho = layer.kernel_posterior.distribution.scale.pretransformed_input
    rho.assign(rho + tf.random.normal(rho.shape, stddev=0.5))  # unequal scales
    layer(x)

    def np_kl(dist):
        m = dist.loc.numpy().astype(np.float64)
        s = _np_softplus(dist.scale.pretransformed_input.numpy().astype(np.float64))
        return np.sum(np.log(s0 / s) + (s ** 2 + (m - m0) ** 2) / (2 * s0 ** 2) - 0.5)

    losses = [float(v) for v in layer.losses]
    assert len(losses) == (2 if bayesian_bias else 1)
    np.testing.assert_allclose(losses[0], kl_weight * np_kl(layer.kernel_posterior.distribution),
                               rtol=2e-6)
    if bayesian_bias:
        np.testing.assert_allclose(losses[1], kl_weight * np_kl(layer.bias_posterior.distribution),
                                   rtol=2e-6)


def test_kl_weight_variable_scales_the_loss_without_rebuilding():
    layer = bl.DenseReparameterization(3, kl_weight=0.5)
    x = tf.ones([2, 4])
    call = tf.function(lambda: (layer(x), tf.add_n(layer.losses))[1])
    full = float(call())
    layer.kl_weight.assign(0.05)
    np.testing.assert_allclose(float(call()), full / 10, rtol=1e-6)


# --- estimator moments, by seeded Monte Carlo -----------------------------------------------------
@pytest.mark.parametrize("layer_cls", DENSE, ids=lambda c: c.__name__)
def test_output_moments_match_the_posterior(layer_cls):
    """For y = x.W + b with W ~ N(mu, sigma^2): E y = x.mu + b, Var y = x^2.sigma^2."""
    layer = layer_cls(2, kernel_initializer="random_normal", bias_initializer="ones", kl_weight=1.0,
                      posterior=posteriors.MeanField(init_scale=0.3))
    x_row = np.array([[1.0, -2.0, 0.5]], np.float32)
    layer(x_row)
    mu = layer.kernel_posterior.distribution.loc.numpy()
    mean = x_row @ mu + 1.0
    var = (x_row ** 2) @ np.full_like(mu, 0.09)
    if layer_cls is bl.DenseLocalReparameterization:
        # independent pre-activation draws per example: one call on many copies of the row
        ys = layer(np.repeat(x_row, 4000, axis=0)).numpy()
    else:
        # Reparameterization shares one kernel draw across the batch, and Flipout's sign flips
        # of one shared draw give copies of a row only 2^(in+1) distinct values: one row per call.
        draws = tf.function(lambda: tf.map_fn(lambda _: layer(x_row)[0], tf.range(4000),
                                               fn_output_signature=tf.float32))
        ys = draws().numpy()
    n = len(ys)
    np.testing.assert_array_less(np.abs(ys.mean(0) - mean[0]), 5 * np.sqrt(var[0] / n))
    np.testing.assert_allclose(ys.var(0), var[0], rtol=5 * math.sqrt(2 / n))


# --- constructor errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, pattern", [
    (lambda: bl.DenseFlipout(0), r"units must be a positive integer\. Received: units=0"),
    (lambda: bl.DenseReparameterization(2.5), r"Received: units=2\.5"),
    (lambda: bl.Conv2DFlipout(-1, 3), r"filters must be a positive integer\. Received: filters=-1"),
    (lambda: bl.DenseFlipout(2, kl_weight=0),
     r"kl_weight must be a positive number\. Received: kl_weight=0"),
    (lambda: bl.DenseFlipout(2, kl_weight=-1e-3), r"Received: kl_weight=-0\.001"),
    (lambda: bl.DenseFlipout(2, prior="gaussian"), r"prior='gaussian'.*normal"),
    (lambda: bl.DenseFlipout(2, prior=priors.Normal(scale=1.0), posterior="mf"),
     r"Received: posterior='mf'"),
])
def test_layer_constructor_errors_name_argument_and_value(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_bayesian_layers_are_registered_and_found_in_nested_models():
    inner = tf_keras.Sequential([tf_keras.Input((3,)), bl.DenseFlipout(2, name="a")], name="inner")
    inp = tf_keras.Input((3,))
    out = bl.DenseReparameterization(1, name="b")(inner(inp))
    model = tf_keras.Model(inp, out)
    assert [l.name for l in bl.bayesian_layers(model)] == ["a", "b"]
    for cls in [bl.DenseFlipout, bl.Conv2DReparameterization, bl.Conv3DFlipout]:
        assert tf_keras.saving.get_registered_object(f"tfp_bnn>{cls.__name__}") is cls
    assert bl.Convolution2DFlipout is bl.Conv2DFlipout
