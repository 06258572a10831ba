"""tfp_bnn.priors: KL(q || p) against closed forms and NumPy Monte Carlo; parsing and errors."""
import math

import numpy as np
import pytest

from tfp_bnn import layers as bl
from tfp_bnn import priors
from tfp_bnn._keras import tf, tfd

# A mean-field posterior with means near and far from 0 and scales small and large.
LOC = np.array([0.0, 0.3, -1.2, 2.5, 0.05, -0.4])
SCALE = np.array([0.05, 0.5, 1.3, 0.2, 0.01, 2.0])


def _q(loc=LOC, scale=SCALE, dtype=tf.float64):
    return tfd.Independent(tfd.Normal(tf.constant(loc, dtype), tf.constant(scale, dtype)), 1)


def _np_normal_kl(m, s, m0, s0):
    return np.log(s0 / s) + (s ** 2 + (m - m0) ** 2) / (2 * s0 ** 2) - 0.5


def _np_mixture_log_prob(w, pi, s1, s2):
    lp1 = np.log(pi) - np.log(s1) - 0.5 * np.log(2 * np.pi) - 0.5 * (w / s1) ** 2
    lp2 = np.log(1 - pi) - np.log(s2) - 0.5 * np.log(2 * np.pi) - 0.5 * (w / s2) ** 2
    return np.logaddexp(lp1, lp2)


def _np_normal_log_prob(w, m, s):
    return -np.log(s) - 0.5 * np.log(2 * np.pi) - 0.5 * ((w - m) / s) ** 2


def _softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def _dist(prior, shape):
    """The prior as a layer sees it (fixed priors create no variables)."""
    return prior(tf.float64, shape, "kernel_prior", True, None)


# --- closed forms -----------------------------------------------------------------------------
@pytest.mark.parametrize("loc0, scale0", [(0.0, 1.0), (0.2, 0.7), (-1.0, 3.0)])
def test_normal_kl_is_the_closed_form(loc0, scale0):
    prior = priors.Normal(loc=loc0, scale=scale0)
    got = prior.kl(_q(), _dist(prior, LOC.shape))
    want = _np_normal_kl(LOC, SCALE, loc0, scale0).sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-12)
    # ... and TFP's registered KL agrees.
    np.testing.assert_allclose(float(got), float(tfd.kl_divergence(_q(), _dist(prior, LOC.shape))),
                               rtol=1e-10)


def test_normal_kl_is_zero_at_the_prior():
    prior = priors.Normal(loc=0.3, scale=0.4)
    q = _q(np.full(4, 0.3), np.full(4, 0.4))
    assert abs(float(prior.kl(q, _dist(prior, [4])))) < 1e-12


def test_laplace_kl_closed_form_matches_numpy_monte_carlo():
    prior = priors.Laplace(loc=0.1, scale=0.6)
    rng = np.random.default_rng(1)
    n = 400_000
    for m, s in zip(LOC, SCALE):
        got = float(prior.kl(_q([m], [s]), _dist(prior, [1])))
        w = rng.normal(m, s, size=n)
        log_ratio = (_np_normal_log_prob(w, m, s)
                     - (-np.log(2 * 0.6) - np.abs(w - 0.1) / 0.6))
        est, se = log_ratio.mean(), log_ratio.std() / math.sqrt(n)
        assert abs(got - est) < 5 * se + 1e-6, (m, s, got, est, se)


def test_laplace_kl_at_zero_mean_by_hand():
    # d = 0: E|w| = s sqrt(2/pi); KL = -(1/2) log(2 pi e s^2) + log(2 b) + s sqrt(2/pi) / b
    s, b = 0.5, 2.0
    want = (-0.5 * math.log(2 * math.pi * math.e * s * s) + math.log(2 * b)
            + s * math.sqrt(2 / math.pi) / b)
    got = priors.Laplace(scale=b).kl(_q([0.0], [s]), None)
    np.testing.assert_allclose(float(got), want, rtol=1e-12)


def test_learned_normal_kl_uses_the_current_learned_scale():
    prior = priors.LearnedNormal(init_scale=0.8)
    created = {}

    def add_variable(name, shape, dtype, trainable, initializer):
        created[name] = tf.Variable(initializer(shape, dtype), trainable=trainable, name=name)
        return created[name]

    p = prior(tf.float64, list(LOC.shape), "kernel_prior", True, add_variable)
    (rho,) = created.values()
    assert list(created) == ["kernel_prior_untransformed_scale"] and rho.trainable
    np.testing.assert_allclose(_softplus(rho.numpy()), 0.8, rtol=1e-12)
    np.testing.assert_allclose(float(prior.kl(_q(), p)), _np_normal_kl(LOC, SCALE, 0, 0.8).sum(),
                               rtol=1e-12)
    rho.assign(-0.3)  # the same distribution object follows the variable
    np.testing.assert_allclose(float(prior.kl(_q(), p)),
                               _np_normal_kl(LOC, SCALE, 0, _softplus(-0.3)).sum(), rtol=1e-12)


# --- scale mixture (Monte Carlo KL) ------------------------------------------------------------
def test_scale_mixture_log_prob_is_the_mixture_density_and_stable():
    prior = priors.ScaleMixture(pi=0.3, scale1=1.5, scale2=math.exp(-6))
    w = np.array([0.0, 1e-3, -0.02, 1.0, -7.0, 40.0])  # 40 sigma1 and 16000 sigma2 out
    got = prior.log_prob(tf.constant(w)).numpy()
    np.testing.assert_allclose(got, _np_mixture_log_prob(w, 0.3, 1.5, math.exp(-6)), rtol=1e-12)
    assert np.all(np.isfinite(got))
    # The distribution handed to TFP as kernel_prior has the same density.
    p = _dist(prior, [6])
    np.testing.assert_allclose(float(p.log_prob(w)), got.sum(), rtol=1e-10)


def test_scale_mixture_kl_for_a_given_sample_is_log_q_minus_log_p():
    prior = priors.ScaleMixture(pi=0.5, scale1=1.0, scale2=0.1)
    w = LOC + SCALE * np.random.default_rng(2).normal(size=LOC.shape)
    got = float(prior.kl(_q(), None, sample=tf.constant(w)))
    # -H[q] - log p(w): the entropy is exact, the cross term is the one-sample estimate.
    neg_entropy = -(0.5 * np.log(2 * np.pi * np.e * SCALE ** 2)).sum()
    want = neg_entropy - _np_mixture_log_prob(w, 0.5, 1.0, 0.1).sum()
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("layer_cls", [bl.DenseFlipout, bl.DenseReparameterization,
                                       bl.DenseLocalReparameterization])
def test_scale_mixture_layer_kl_is_finite_and_unbiased(layer_cls):
    """The mean of the layer's one-sample KL losses matches a 100k-sample NumPy estimate."""
    prior = priors.ScaleMixture(pi=0.25, scale1=1.0, scale2=0.05)
    kl_weight = 0.5
    layer = layer_cls(3, prior=prior, kl_weight=kl_weight)
    x = tf.ones([2, 4])
    layer(x)
    loc = layer.kernel_posterior.distribution.loc.numpy().astype(np.float64)
    scale = tf.convert_to_tensor(layer.kernel_posterior.distribution.scale).numpy()
    scale = scale.astype(np.float64)

    calls = 200
    step = tf.function(lambda: (layer(x), tf.add_n(layer.losses))[1])
    draws = np.array([float(step()) for _ in range(calls)]) / kl_weight
    assert np.all(np.isfinite(draws))

    rng = np.random.default_rng(3)
    w = loc + scale * rng.normal(size=(100_000,) + loc.shape)
    per_draw = (_np_normal_log_prob(w, loc, scale) - _np_mixture_log_prob(w, 0.25, 1.0, 0.05))
    per_draw = per_draw.reshape(len(w), -1).sum(axis=1)
    big = per_draw.mean()
    tol = 5 * per_draw.std() / math.sqrt(calls) + 5 * per_draw.std() / math.sqrt(len(w))
    assert abs(draws.mean() - big) < tol, (draws.mean(), big, tol)
    assert draws.std() > 0  # it really is Monte Carlo, not a constant


# --- parsing, serialisation, errors ------------------------------------------------------------
@pytest.mark.parametrize("identifier, want", [
    ("normal", priors.Normal()),
    ("Laplace", priors.Laplace()),
    ("scale-mixture", priors.ScaleMixture()),
    ("learned_normal", priors.LearnedNormal()),
    ({"class_name": "ScaleMixture", "config": {"pi": 0.25}}, priors.ScaleMixture(pi=0.25)),
    ({"class_name": "Normal", "config": {"scale": 0.1}}, priors.Normal(scale=0.1)),
])
def test_get_resolves_strings_dicts_and_instances(identifier, want):
    got = priors.get(identifier)
    assert got == want and type(got) is type(want)
    assert priors.get(want) is want


@pytest.mark.parametrize("prior", [priors.Normal(0.1, 0.2), priors.Laplace(-0.3, 4.0),
                                   priors.ScaleMixture(0.7, 2.0, 0.01), priors.LearnedNormal(0.3)])
def test_serialize_round_trip_is_plain_numbers(prior):
    config = priors.serialize(prior)
    assert all(isinstance(v, float) for v in config["config"].values())
    assert priors.get(config) == prior
    assert type(prior).from_config(prior.get_config()) == prior


def test_unknown_prior_string_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        priors.get("cauchy")
    msg = str(e.value)
    assert "prior='cauchy'" in msg
    for name in ("normal", "laplace", "scale_mixture", "learned_normal"):
        assert name in msg


def test_unknown_prior_class_name_in_dict():
    with pytest.raises(ValueError, match=r"prior.*Horseshoe.*Valid.*Normal"):
        priors.get({"class_name": "Horseshoe", "config": {}})


def test_prior_of_a_wrong_type():
    with pytest.raises(ValueError, match=r"prior=3\.5"):
        priors.get(3.5)


@pytest.mark.parametrize("make, arg, value", [
    (lambda: priors.Normal(scale=0.0), "scale", "0.0"),
    (lambda: priors.Normal(scale=-1), "scale", "-1"),
    (lambda: priors.Laplace(scale=-0.5), "scale", "-0.5"),
    (lambda: priors.LearnedNormal(init_scale=0), "init_scale", "0"),
    (lambda: priors.ScaleMixture(scale2=0.0), "scale2", "0.0"),
    (lambda: priors.ScaleMixture(scale1=float("nan")), "scale1", "nan"),
    (lambda: priors.Normal(scale="big"), "scale", "'big'"),
])
def test_prior_scale_must_be_positive(make, arg, value):
    with pytest.raises(ValueError, match=rf"positive.*Received: {arg}={value}"):
        make()


@pytest.mark.parametrize("pi", [0.0, 1.0, 1.5, -0.1])
def test_scale_mixture_pi_must_be_in_unit_interval(pi):
    with pytest.raises(ValueError, match=rf"pi must be in \(0, 1\)\. Received: pi={pi}"):
        priors.ScaleMixture(pi=pi)


def test_bad_prior_config_in_dict_names_the_prior():
    with pytest.raises(ValueError, match=r"Bad config for prior=.*sigma"):
        priors.get({"class_name": "Normal", "config": {"sigma": 1.0}})
    with pytest.raises(ValueError, match=r"Received: scale=-2"):
        priors.get({"class_name": "Normal", "config": {"scale": -2}})
