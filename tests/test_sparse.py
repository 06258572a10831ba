"""Sparse variational dropout and the group normal-Jeffreys prior: KL, layers, selection."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

import tfp_bnn
from tfp_bnn import priors, sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.sparse import UnitScale

from layer_contract import run_layer_test

EULER_GAMMA = 0.5772156649015329


def _neg_kl_exact(alpha):
    """-KL(N(theta, alpha theta^2) || log-uniform) up to the constant that sends it to 0 as
    alpha -> inf (Molchanov et al. eq. 8): 0.5 log alpha - E_{e ~ N(1, alpha)} log|e| + C,
    C = -(gamma + log 2) / 2 (the limit of the first two terms), by adaptive quadrature."""
    sd = math.sqrt(alpha)
    density = stats.norm(1.0, sd).pdf
    lo, hi = 1.0 - 12.0 * sd, 1.0 + 12.0 * sd
    pieces = [(lo, 0.0), (0.0, hi)] if lo < 0.0 else [(lo, hi)]
    expect = sum(integrate.quad(lambda e: math.log(abs(e)) * density(e), a, b, limit=400,
                                epsabs=1e-11)[0] for a, b in pieces)
    return 0.5 * math.log(alpha) - expect - 0.5 * (EULER_GAMMA + math.log(2.0))


@pytest.mark.parametrize("log_alpha", [-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0])
def test_kl_approximation_against_the_numerical_integral(log_alpha):
    # Molchanov et al. fit eq. 14 to this integral; their stated fit is within 0.01 (we see
    # < 0.008 over this range), far below the KL's own change of ~0.5 per unit of log alpha.
    approx = float(priors.sparse_vd_kl(tf.constant(log_alpha, tf.float64)))
    assert approx == pytest.approx(-_neg_kl_exact(math.exp(log_alpha)), abs=0.01)


def test_kl_is_the_sum_over_weights_of_eq_14_with_clipped_log_alpha():
    loc = tf.constant([0.5, -0.1, 1e-9, 2.0], tf.float64)
    scale = tf.constant([0.05, 0.1, 0.3, 1e-6], tf.float64)
    q = tfp_bnn._keras.tfd.Independent(tfp_bnn._keras.tfd.Normal(loc, scale), 1)
    la = np.clip(2 * np.log(scale.numpy()) - 2 * np.log(np.abs(loc.numpy())), -8, 8)
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    expected = np.sum(-(k1 / (1 + np.exp(-(k2 + k3 * la))) - 0.5 * np.log1p(np.exp(-la)) - k1))
    assert float(priors.LogUniform().kl(q, None)) == pytest.approx(expected, rel=1e-12)
    assert la[2] == 8.0 and la[3] == -8.0  # the clip acts at both ends


def _normal_kl_mc(loc, scale, n=400_000, seed=0):
    """KL(N(loc, scale) || N(0, 1)) by Monte Carlo: E_q[log q - log p]."""
    w = np.random.default_rng(seed).normal(loc, scale, size=(n,) + np.shape(loc))
    return np.sum(np.mean(stats.norm(loc, scale).logpdf(w) - stats.norm(0, 1).logpdf(w), 0))


def test_group_prior_kernel_kl_is_normal_0_1_by_monte_carlo():
    # Louizos et al. eq. 9: with p(w|z) = N(0, z^2) and q(w|z) = N(z m, z^2 s^2) the kernels'
    # KL does not depend on z: KL(N(m, s^2) || N(0, 1)). MC sd here is ~1e-3.
    loc, scale = np.array([0.3, -1.2, 0.0]), np.array([0.2, 0.5, 1.5])
    q = tfp_bnn._keras.tfd.Independent(tfp_bnn._keras.tfd.Normal(loc, scale), 1)
    assert float(priors.GroupNormalJeffreys().kl(q, None)) == pytest.approx(
        _normal_kl_mc(loc, scale), abs=0.01)
    assert isinstance(priors.GroupNormalJeffreys.unit_prior, priors.LogUniform)


@pytest.mark.parametrize("name,cls", [("log_uniform", priors.LogUniform),
                                      ("group_normal_jeffreys", priors.GroupNormalJeffreys)])
def test_priors_resolve_and_serialise(name, cls):
    prior = priors.get(name)
    assert type(prior) is cls
    assert priors.get(priors.serialize(prior)) == prior


def test_unit_scale_keeps_the_layer_contract(tmp_path):
    run_layer_test(UnitScale, {"kl_weight": 0.01}, (4, 5, 3), (4, 5, 3),
                   ["scale_posterior_loc", "scale_posterior_untransformed_scale"], 1, tmp_path)


def test_unit_scale_sample_copy_s_uses_draw_s():
    layer = UnitScale(kl_weight=1.0)
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    layer(x)
    seed = tf.constant([5, 6], tf.int64)
    with sampling.mc_sampling(3, seed):
        y = layer(tf.tile(x, [3, 1, 1])).numpy().reshape(3, 2, 3, 4)
    ratio = y / x[None]  # each copy is x times its own z, the same for every example and position
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1], ratio.shape), rtol=1e-4)
    assert np.std(ratio[:, 0, 0], axis=0).min() > 0  # the three draws differ
    np.testing.assert_allclose(sampling.mean_outputs(tf_keras.Sequential([layer]), x), x)


@pytest.mark.parametrize("estimator", ["flipout", "reparameterization",
                                       "local_reparameterization"])
def test_log_uniform_selects_sparse_vd_on_every_dense(estimator):
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(5, activation="relu"),
                                 tf_keras.layers.Dense(2)])
    bnn = tfp_bnn.bayesify(model, estimator=estimator, prior="log_uniform", kl_weight=0.1)
    layers = tfp_bnn.layers.bayesian_layers(bnn)
    assert [type(l.prior) for l in layers] == [priors.LogUniform] * 2
    bnn(np.ones((3, 4), np.float32))
    expected = sum(float(l.kl_divergence()) for l in layers) * 0.1
    assert float(tf.add_n(bnn.losses)) == pytest.approx(expected, rel=1e-5)


def test_group_prior_puts_unit_scales_after_hidden_layers_only():
    model = tf_keras.Sequential([
        tf_keras.Input((6, 6, 1)), tf_keras.layers.Conv2D(3, 3, activation="relu"),
        tf_keras.layers.Flatten(), tf_keras.layers.Dense(4, activation="relu"),
        tf_keras.layers.Dense(2)])
    bnn = tfp_bnn.bayesify(model, prior="group_normal_jeffreys", kl_weight=0.1)
    scales = [l for l in bnn.layers if isinstance(l, UnitScale)]
    assert [l.name for l in scales] == ["conv2d_unit_scale", "dense_unit_scale"]
    assert [l.weight_posteriors()[0][1].distribution.loc.shape[0] for l in scales] == [3, 4]
    bnn(np.ones((2, 6, 6, 1), np.float32))
    assert len(bnn.losses) == 3 + 2  # three kernels, two unit scales


def test_log_alpha_of_a_weight_trained_on_pure_noise_grows_and_it_is_pruned():
    # Feature 0 carries the target, feature 1 is noise independent of it: the ELBO sends
    # log alpha of the noise weight up past the threshold and leaves the signal weight kept.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 2)).astype("float32")
    y = (2.0 * x[:, :1] + 0.1 * rng.normal(size=(512, 1))).astype("float32")
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(1, use_bias=False)])
    bnn = tfp_bnn.bayesify(model, estimator="local_reparameterization", prior="log_uniform",
                           posterior=tfp_bnn.posteriors.MeanField(init_scale=0.01),
                           num_train_examples=len(x), task="regression")
    layer = tfp_bnn.layers.bayesian_layers(bnn)[0]
    q = layer.kernel_posterior.distribution

    def log_alpha():
        return priors.log_alpha(q.loc, q.scale).numpy()[:, 0]

    before = log_alpha()
    bnn.compile(tf_keras.optimizers.Adam(0.03), "mse")
    bnn.fit(x, y, epochs=60, batch_size=128, verbose=0)
    after = log_alpha()
    assert after[1] > 3.0 > before[1] + 2.0
    assert after[0] < -3.0
    report = tfp_bnn.compress(bnn, threshold=3.0).report
    assert report["layers"][0]["weights_kept"] == 1 and report["nonzero_fraction"] == 0.5
