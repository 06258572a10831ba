"""The training path (`plain_call`) of the Bayesian layers, written from the posterior variables.

Moments against the closed form, Flipout's per-example independence, gradients, the ops one
training call builds (one softplus per weight tensor, shared with the KL; one sign draw), and
seeded reproducibility.
"""
import collections
import math

import numpy as np
import pytest

from tfp_bnn import bayesian
from tfp_bnn import layers as bl
from tfp_bnn import posteriors
from tfp_bnn._keras import tf, tf_keras

SIGMA = 0.3
DRAWS = 4000


def _draws(layer, x, n=DRAWS):
    """[n, *output] outputs of n training calls of ``layer`` on the one batch ``x``."""
    fn = tf.function(lambda: tf.map_fn(lambda _: layer(x), tf.range(n),
                                       fn_output_signature=tf.float32))
    return fn().numpy()


def _assert_moments(ys, mean, var):
    """Sample mean within 5 standard errors of ``mean``; sample variance within 5 standard
    errors of ``var`` (sd of a Normal sample variance: var sqrt(2 / n))."""
    n = len(ys)
    np.testing.assert_array_less(np.abs(ys.mean(0) - mean), 5 * np.sqrt(var / n))
    np.testing.assert_allclose(ys.var(0), var, rtol=5 * math.sqrt(2 / n))


def _conv(x, w):
    return tf.nn.convolution(x, w, padding="VALID").numpy()


@pytest.mark.parametrize("layer_cls", [bl.Conv2DFlipout, bl.Conv2DReparameterization],
                         ids=lambda c: c.__name__)
def test_conv_training_call_moments_match_the_posterior(layer_cls):
    """y = conv(x, W) + b, W ~ N(mu, sigma^2): E y = conv(x, mu) + b, Var y = conv(x^2, sigma^2)
    at every output position and filter (27 outputs, 5-sigma bounds)."""
    layer = layer_cls(3, 3, kernel_initializer="random_normal", bias_initializer="ones",
                      posterior=posteriors.MeanField(init_scale=SIGMA))
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 5, 5, 2)), tf.float32)
    layer(x)
    mu = layer.kernel_posterior.distribution.loc
    mean = _conv(x, mu)[0] + 1.0
    var = _conv(tf.square(x), tf.fill(tf.shape(mu), SIGMA ** 2))[0]
    _assert_moments(_draws(layer, x)[:, 0], mean, var)


@pytest.mark.parametrize("layer_cls", [bl.DepthwiseConv2DFlipout,
                                       bl.DepthwiseConv2DReparameterization],
                         ids=lambda c: c.__name__)
def test_kernel_layer_training_call_moments_match_the_posterior(layer_cls):
    """The same closed form for a KernelLayer kind: a depthwise 3x3 convolution."""
    layer = layer_cls(3, depthwise_initializer="random_normal", bias_initializer="ones",
                      posterior=posteriors.MeanField(init_scale=SIGMA))
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 4, 4, 2)), tf.float32)
    layer(x)
    mu = layer._loc("depthwise_kernel")

    def depthwise(inputs, w):
        return tf.nn.depthwise_conv2d(inputs, w, [1, 1, 1, 1], "VALID").numpy()[0]

    mean = depthwise(x, mu) + 1.0
    var = depthwise(tf.square(x), tf.fill(tf.shape(mu), SIGMA ** 2))
    _assert_moments(_draws(layer, x)[:, 0], mean, var)


@pytest.mark.parametrize("make, x", [
    (lambda: bl.DenseFlipout(4, posterior=posteriors.MeanField(init_scale=SIGMA)),
     np.tile([[1.0, -2.0, 0.5]], (2, 1))),
    (lambda: bl.Conv2DFlipout(2, 3, posterior=posteriors.MeanField(init_scale=SIGMA)),
     np.tile(np.linspace(-1, 1, 18).reshape(1, 3, 3, 2), (2, 1, 1, 1))),
], ids=["DenseFlipout", "Conv2DFlipout"])
def test_flipout_perturbations_of_two_examples_are_uncorrelated(make, x):
    """Two copies of one example in a batch: Flipout's independent signs per example make
    their outputs uncorrelated (|r| < 5/sqrt(n), the 5-sigma bound of a zero correlation);
    signs shared by the batch would make r = 1, as the reparameterisation estimator's one
    kernel draw per call does (its copies are equal)."""
    layer = make()
    x = tf.constant(x, tf.float32)
    ys = _draws(layer, x).reshape(DRAWS, 2, -1)
    for j in range(ys.shape[-1]):
        r = np.corrcoef(ys[:, 0, j], ys[:, 1, j])[0, 1]
        assert abs(r) < 5 / math.sqrt(DRAWS), (j, r)
    same = bl.DenseReparameterization(4)
    y = same(tf.constant(np.tile([[1.0, -2.0, 0.5]], (2, 1)), tf.float32)).numpy()
    np.testing.assert_array_equal(y[0], y[1])


@pytest.mark.parametrize("make, shape", [
    (lambda: bl.DenseFlipout(3, posterior=posteriors.MeanField(bayesian_bias=True)), (4, 5)),
    (lambda: bl.DenseReparameterization(3), (4, 5)),
    (lambda: bl.DenseLocalReparameterization(3), (4, 5)),
    (lambda: bl.Conv2DFlipout(3, 3), (2, 5, 5, 2)),
    (lambda: bl.Conv1DReparameterization(3, 2), (2, 6, 2)),
    (lambda: bl.SeparableConv2DFlipout(3, 3), (2, 5, 5, 2)),
], ids=["DenseFlipout", "DenseReparameterization", "DenseLocalReparameterization",
        "Conv2DFlipout", "Conv1DReparameterization", "SeparableConv2DFlipout"])
def test_gradients_of_the_training_loss_reach_every_posterior_variable(make, shape):
    layer = make()
    x = tf.constant(np.random.default_rng(2).normal(size=shape), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(x))) + tf.add_n(layer.losses)
    grads = tape.gradient(loss, layer.trainable_variables)
    for v, g in zip(layer.trainable_variables, grads):
        assert g is not None, v.name
        assert float(tf.reduce_max(tf.abs(g))) > 0, v.name


def _op_counts(layer, x):
    """Op types of one traced training call of ``layer`` with its KL."""
    fn = tf.function(lambda t: layer(t) + tf.add_n(layer.losses))
    graph = fn.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    return collections.Counter(op.type for op in graph.get_operations())


@pytest.mark.parametrize("make, shape, tensors, sign_draws", [
    (lambda: bl.DenseFlipout(3), (4, 5), 1, 1),
    (lambda: bl.DenseFlipout(3, posterior=posteriors.MeanField(bayesian_bias=True)), (4, 5),
     2, 1),
    (lambda: bl.DenseReparameterization(3), (4, 5), 1, 0),
    (lambda: bl.Conv2DFlipout(3, 3), (2, 5, 5, 2), 1, 1),
    (lambda: bl.SeparableConv2DFlipout(3, 3), (2, 5, 5, 2), 2, 4),
], ids=["DenseFlipout", "DenseFlipout-bayesian-bias", "DenseReparameterization",
        "Conv2DFlipout", "SeparableConv2DFlipout"])
def test_one_softplus_per_weight_tensor_and_one_int_draw_per_sign_draw(make, shape, tensors,
                                                                       sign_draws):
    """The KL reads the call's sigma instead of the DeferredTensor again (which would read rho
    anew: a softplus more per use), and the signs come from plain RandomUniformInt ops (no
    seed-sanitising stateless ops of tfp.random.rademacher). A Dense or Conv layer draws its
    input and output signs as one tensor; a KernelLayer draws them per stage and side."""
    layer = make()
    x = tf.zeros(shape)
    layer(x)
    ops = _op_counts(layer, x)
    assert ops["Softplus"] == tensors
    assert ops["RandomUniformInt"] == sign_draws
    assert ops["StatelessRandomUniformIntV2"] == 0


@pytest.mark.parametrize("make, shape", [
    (lambda: bl.DenseFlipout(3, seed=11), (4, 5)),
    (lambda: bl.Conv2DFlipout(2, 3, seed=11), (2, 5, 5, 2)),
    (lambda: bl.DepthwiseConv2DFlipout(3, seed=11), (2, 5, 5, 2)),
], ids=["DenseFlipout", "Conv2DFlipout", "DepthwiseConv2DFlipout"])
def test_seeded_training_draws_repeat_under_the_global_seed(make, shape):
    """With the layer's seed and `tf_keras.utils.set_random_seed`, a fresh program repeats every
    training draw; consecutive calls still draw anew."""
    x = tf.constant(np.random.default_rng(3).normal(size=shape), tf.float32)

    def run():
        tf_keras.utils.set_random_seed(5)
        layer = make()
        return layer(x).numpy(), layer(x).numpy()

    (a1, a2), (b1, b2) = run(), run()
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_rademacher_signs_are_independent_fair_coins():
    """The byte-table draw: every sign +-1, each column's mean and each pair's correlation
    within 5 standard errors (1/sqrt(n)) of 0 over 16 columns, i.e. two bytes' worth, so a
    table row that repeated or fixed a bit would fail; an odd shape keeps its size."""
    n = 20000
    s = bayesian.rademacher([n, 16], tf.float32, seed=4).numpy()
    assert set(np.unique(s)) == {-1.0, 1.0}
    bound = 5 / math.sqrt(n)
    np.testing.assert_array_less(np.abs(s.mean(0)), bound)
    r = np.corrcoef(s.T)[np.triu_indices(16, 1)]
    np.testing.assert_array_less(np.abs(r), bound)
    assert bayesian.rademacher(tf.constant([3, 1, 5]), tf.float64).shape == (3, 1, 5)
