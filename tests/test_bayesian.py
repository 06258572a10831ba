"""tfp_bnn.bayesian, the base of every Bayesian layer: the KL enters once per forward pass (a
shared layer included), and init_from_weights puts the source weights and MOPED scales in place,
for every layer kind."""
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import bayesian, posteriors
from tfp_bnn import layers as bl
from tfp_bnn._keras import tf, tf_keras

KL_WEIGHT = 0.25
SCALE = posteriors.MeanField(init_scale=0.2, bayesian_bias=True)

# kind: (Bayesian layer, its Keras twin, input shape without batch, Bayesian weight tensors)
KINDS = {
    "Dense": (lambda: bl.DenseFlipout(3, kl_weight=KL_WEIGHT, posterior=SCALE),
              lambda: tf_keras.layers.Dense(3), (4,), 2),
    "Conv": (lambda: bl.Conv1DReparameterization(2, 3, kl_weight=KL_WEIGHT, posterior=SCALE),
             lambda: tf_keras.layers.Conv1D(2, 3), (6, 2), 2),
    "LSTM": (lambda: bl.LSTMFlipout(3, kl_weight=KL_WEIGHT, posterior=SCALE),
             lambda: tf_keras.layers.LSTM(3), (5, 2), 3),
    "GRU": (lambda: bl.GRUReparameterization(3, kl_weight=KL_WEIGHT, posterior=SCALE),
            lambda: tf_keras.layers.GRU(3), (5, 2), 3),
    "SimpleRNN": (lambda: bl.SimpleRNNFlipout(3, kl_weight=KL_WEIGHT, posterior=SCALE),
                  lambda: tf_keras.layers.SimpleRNN(3), (5, 2), 3),
}


def _closed_form_kl(layer):
    """sum over Bayesian tensors of KL(N(mu, s^2) || N(0, 1)), from the variables in numpy."""
    total = 0.0
    for _, q, p in layer.weight_posteriors():
        assert p is not None  # bayesian_bias: every tensor has the prior
        mu = q.distribution.loc.numpy().astype(np.float64)
        s = np.log1p(np.exp(q.distribution.scale.pretransformed_input.numpy().astype(np.float64)))
        total += np.sum(0.5 * (s ** 2 + mu ** 2) - np.log(s) - 0.5)
    return total


def _shared_model(kind):
    """One layer object called on two branches of one Functional model."""
    make, _, shape, _ = KINDS[kind]
    layer = make()
    a, b = tf_keras.Input(shape), tf_keras.Input(shape)
    out = tf_keras.layers.Concatenate()([tf_keras.layers.Flatten()(layer(a)),
                                         tf_keras.layers.Flatten()(layer(b))])
    return tf_keras.Model([a, b], out), layer


@pytest.mark.parametrize("kind", list(KINDS))
def test_shared_layer_adds_its_kl_once_per_pass(kind):
    tf_keras.utils.set_random_seed(0)
    model, layer = _shared_model(kind)
    shape, tensors = KINDS[kind][2], KINDS[kind][3]
    x = np.random.default_rng(0).normal(size=(4,) + shape).astype("float32")
    expected = KL_WEIGHT * _closed_form_kl(layer)
    assert expected > 1.0  # large enough that a second copy could not hide in the tolerance
    for _ in range(2):  # losses are replaced by the next pass, not accumulated
        model([x, x])
        assert len(model.losses) == tensors
        np.testing.assert_allclose(float(tf.add_n(model.losses)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(layer.kl_divergence()), expected / KL_WEIGHT, rtol=1e-5)

    # Inside a compiled training step as well: the loss Keras minimises holds the KL once.
    @tf.function
    def step(inputs):
        model(inputs, training=True)
        return tf.add_n(model.losses)

    np.testing.assert_allclose(float(step([x, x])), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_init_from_weights_sets_means_and_moped_scales(kind):
    tf_keras.utils.set_random_seed(1)
    make, twin, shape, tensors = KINDS[kind]
    source, layer = twin(), make()
    x = np.zeros((1,) + shape, np.float32)
    source(x), layer(x)
    weights = [w + np.float32(0.3) for w in source.get_weights()]  # no exact zeros
    moped = posteriors.MeanField(moped_delta=0.1, bayesian_bias=True)
    layer.init_from_weights(weights, moped)
    parts = layer.weight_posteriors()
    assert len(parts) == len(weights) == tensors
    for (name, q, _), w in zip(parts, weights):
        np.testing.assert_array_equal(q.distribution.loc.numpy(), w, err_msg=name)
        np.testing.assert_allclose(q.distribution.scale.numpy(), 0.1 * np.abs(w), rtol=1e-4,
                                   err_msg=name)
    # At its posterior mean the layer computes what the source does with those weights.
    source.set_weights(weights)
    with tfp_bnn.sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(layer(x + 1.0).numpy(), source(x + 1.0).numpy(), rtol=1e-5,
                                   atol=1e-6)
    with pytest.raises(ValueError, match=rf"expects {tensors} source weights .*Received: 1 arrays"):
        layer.init_from_weights(weights[:1])


def test_deterministic_bias_gets_its_value_and_no_scale():
    layer = bl.DenseReparameterization(2, kl_weight=1.0,
                                       posterior=posteriors.MeanField(init_scale=0.05))
    layer(np.zeros((1, 3), np.float32))
    kernel, bias = np.full((3, 2), 0.5, np.float32), np.array([1.0, -2.0], np.float32)
    layer.init_from_weights([kernel, bias], posteriors.MeanField(init_scale=0.01))
    np.testing.assert_allclose(layer.kernel_posterior.distribution.scale.numpy(), 0.01, rtol=1e-5)
    np.testing.assert_array_equal(layer.bias_posterior.distribution.loc.numpy(), bias)
    assert [name for name, _, p in layer.weight_posteriors() if p is None] == ["bias"]
    with pytest.raises(ValueError, match=r"kernel has shape \(3, 2\)\. Received: an array of "
                                         r"shape \(2, 2\)"):
        layer.init_from_weights([kernel[:2], bias])


def test_every_layer_kind_inherits_the_one_base():
    for cls in (bl.DenseFlipout, bl.DenseLocalReparameterization, bl.Conv2DFlipout,
                bl.Conv3DReparameterization, bl.LSTMFlipout, bl.GRUFlipout,
                bl.SimpleRNNReparameterization):
        assert issubclass(cls, bayesian.BayesianLayer)
        assert issubclass(cls, tfp_bnn.sampling.StochasticLayer)
    assert bl.BayesianLayer is bayesian.BayesianLayer
    assert bl.bayesian_layers is bayesian.bayesian_layers
