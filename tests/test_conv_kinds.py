"""tfp_bnn.conv_kinds: depthwise, separable, grouped and transposed Bayesian convolutions.

Each kind x estimator passes the layer contract (the four priors rotate over the kinds, so that
every estimator x prior pair is run), its MEAN mode is the Keras layer with the posterior means, its
SAMPLE mode uses exact per-sample kernels, and the Flipout and Reparameterization outputs have
the per-example moments of a Monte Carlo of explicit kernel draws through the Keras layer.
"""
import numpy as np
import pytest

from layer_contract import run_layer_test
from tfp_bnn import conv_kinds as ck
from tfp_bnn import posteriors, sampling
from tfp_bnn._keras import tf, tf_keras

PRIORS = ["normal", "laplace", "scale_mixture", "learned_normal"]
_L = tf_keras.layers

# (name, Keras class, Bayesian Flipout / Reparameterization, kwargs, input shape, output shape,
#  kernel names)
KINDS = [
    ("depthwise2d", _L.DepthwiseConv2D, (ck.DepthwiseConv2DFlipout,
                                         ck.DepthwiseConv2DReparameterization),
     dict(kernel_size=3, depth_multiplier=2, padding="same", strides=2), (2, 6, 6, 3),
     (2, 3, 3, 6), ["depthwise_kernel"]),
    ("depthwise1d", _L.DepthwiseConv1D, (ck.DepthwiseConv1DFlipout,
                                         ck.DepthwiseConv1DReparameterization),
     dict(kernel_size=3, dilation_rate=2), (2, 7, 3), (2, 3, 3), ["depthwise_kernel"]),
    ("separable2d", _L.SeparableConv2D, (ck.SeparableConv2DFlipout,
                                         ck.SeparableConv2DReparameterization),
     dict(filters=4, kernel_size=3, depth_multiplier=2), (2, 6, 6, 3), (2, 4, 4, 4),
     ["depthwise_kernel", "pointwise_kernel"]),
    ("separable1d", _L.SeparableConv1D, (ck.SeparableConv1DFlipout,
                                         ck.SeparableConv1DReparameterization),
     dict(filters=4, kernel_size=3, padding="causal"), (2, 7, 3), (2, 7, 4),
     ["depthwise_kernel", "pointwise_kernel"]),
    ("grouped2d", _L.Conv2D, (ck.GroupedConv2DFlipout, ck.GroupedConv2DReparameterization),
     dict(filters=4, kernel_size=3, groups=2), (2, 6, 6, 4), (2, 4, 4, 4), ["kernel"]),
    ("grouped1d", _L.Conv1D, (ck.GroupedConv1DFlipout, ck.GroupedConv1DReparameterization),
     dict(filters=6, kernel_size=3, groups=3, padding="causal"), (2, 7, 6), (2, 7, 6),
     ["kernel"]),
    ("grouped3d", _L.Conv3D, (ck.GroupedConv3DFlipout, ck.GroupedConv3DReparameterization),
     dict(filters=4, kernel_size=2, groups=2), (2, 3, 3, 3, 4), (2, 2, 2, 2, 4), ["kernel"]),
    ("transpose2d", _L.Conv2DTranspose, (ck.Conv2DTransposeFlipout,
                                         ck.Conv2DTransposeReparameterization),
     dict(filters=3, kernel_size=3, strides=2, padding="same"), (2, 3, 3, 2), (2, 6, 6, 3),
     ["kernel"]),
    ("transpose1d", _L.Conv1DTranspose, (ck.Conv1DTransposeFlipout,
                                         ck.Conv1DTransposeReparameterization),
     dict(filters=3, kernel_size=3, strides=2, output_padding=1), (2, 4, 2), (2, 10, 3),
     ["kernel"]),
    ("transpose3d", _L.Conv3DTranspose, (ck.Conv3DTransposeFlipout,
                                         ck.Conv3DTransposeReparameterization),
     dict(filters=2, kernel_size=2, strides=2), (2, 2, 2, 2, 2), (2, 4, 4, 4, 2), ["kernel"]),
]
IDS = [k[0] for k in KINDS]


def _trainable(kernels, prior):
    names = []
    for k in kernels:
        names += [f"{k}_posterior_loc", f"{k}_posterior_untransformed_scale"]
        if prior == "learned_normal":
            names.append(f"{k}_prior_untransformed_scale")
    return names + ["bias_posterior_loc"]


# --- the contract ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flipout", [True, False], ids=["flipout", "reparameterization"])
@pytest.mark.parametrize("i", range(len(KINDS)), ids=IDS)
def test_layer_contract(i, flipout, tmp_path):
    name, _, classes, kwargs, shape, out_shape, kernels = KINDS[i]
    prior = PRIORS[(i + flipout) % len(PRIORS)]  # every prior meets both estimators
    run_layer_test(classes[0 if flipout else 1],
                   dict(activation="elu", prior=prior, kl_weight=0.2, **kwargs),
                   input_shape=shape, expected_output_shape=out_shape,
                   expected_trainable_weights=_trainable(kernels, prior),
                   expected_num_losses=len(kernels), tmp_path=tmp_path)


# --- MEAN is the Keras layer; init_from_weights with MOPED scales -------------------------------
def _pair(i, flipout=True, **extra):
    """A built Keras layer with random weights and its Bayesian twin initialised from them."""
    _, keras_cls, classes, kwargs, shape, _, _ = KINDS[i]
    x = np.random.default_rng(i).normal(size=shape).astype(np.float32)
    keras_layer = keras_cls(activation="tanh", bias_initializer="random_normal", **kwargs)
    keras_layer(x)
    bayes = classes[0 if flipout else 1](activation="tanh", kl_weight=1.0, **kwargs, **extra)
    bayes(x)
    return keras_layer, bayes, x


@pytest.mark.parametrize("i", range(len(KINDS)), ids=IDS)
def test_mean_mode_is_the_keras_layer_and_moped_sets_the_scales(i):
    keras_layer, bayes, x = _pair(i, flipout=i % 2 == 0)
    weights = keras_layer.get_weights()
    bayes.init_from_weights(weights, posteriors.MeanField(moped_delta=0.1))
    with sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(bayes(x), keras_layer(x), rtol=1e-5, atol=1e-6)
    for (name, q, _), w in zip(bayes.weight_posteriors(), weights):
        np.testing.assert_array_equal(q.distribution.loc.numpy(), w)
        if name != "bias":
            np.testing.assert_allclose(q.distribution.scale.numpy(),
                                       np.maximum(0.1 * np.abs(w), posteriors.MIN_SCALE),
                                       rtol=1e-5)


# --- SAMPLE: copy s uses kernel draw s, exactly----------------------------------------------------
@pytest.mark.parametrize("i", range(len(KINDS)), ids=IDS)
def test_sample_mode_copy_s_is_the_keras_layer_with_draw_s(i):
    """The stateless draws are re-made here in the layer's order (kernels, then bias)."""
    keras_layer, bayes, x = _pair(
        i, posterior=posteriors.MeanField(init_scale=0.2, bayesian_bias=True))
    num_samples, seed = 3, tf.constant([5, 6], tf.int64)
    out_shape = (num_samples,) + tuple(keras_layer(x).shape)
    with sampling.mc_sampling(num_samples, seed=seed):
        y = bayes(np.concatenate([x] * num_samples)).numpy().reshape(out_shape)
    draws = []
    for index, (name, q, _) in enumerate(bayes.weight_posteriors(), start=1):
        loc, scale = q.distribution.loc, q.distribution.scale
        eps = sampling.standard_normal([num_samples] + loc.shape.as_list(), tf.float32,
                                       tf.random.experimental.stateless_fold_in(seed, index))
        draws.append((loc + scale * eps).numpy())
    assert not np.allclose(y[0], y[1])
    for s in range(num_samples):
        keras_layer.set_weights([d[s] for d in draws])
        np.testing.assert_allclose(y[s], keras_layer(x), rtol=1e-5, atol=1e-5)


# --- moments: each estimator against explicit kernel draws through the Keras layer-----------------
N = 1500


@tf.function
def _explicit_draws(keras_layer, x, locs, scales):
    """N outputs of the Keras layer, each with kernels W = mu + sigma * eps drawn here."""
    out = tf.TensorArray(tf.float32, size=N)
    variables = keras_layer.weights[:len(locs)]
    for n in tf.range(N):
        for var, loc, scale in zip(variables, locs, scales):
            var.assign(loc + scale * tf.random.normal(tf.shape(loc)))
        out = out.write(n, keras_layer(x))
    return out.stack()


def _mean_and_var_se(y):
    """Per-entry mean, variance and their standard errors (the latter from the 4th moment)."""
    n, m, v = len(y), y.mean(0), y.var(0)
    m4 = ((y - m) ** 4).mean(0)
    return m, v, np.sqrt(v / n), np.sqrt(np.maximum(m4 - v ** 2, 1e-12) / n)


@pytest.mark.parametrize("flipout", [True, False], ids=["flipout", "reparameterization"])
@pytest.mark.parametrize("i", [0, 2, 4, 6, 7], ids=[IDS[j] for j in (0, 2, 4, 6, 7)])
def test_output_moments_match_explicit_weight_draws(i, flipout):
    """z-tests, 5 sigma, of every output's mean and variance (two examples per call, so a
    Flipout example's law is checked with another example sharing the call's base draw)."""
    tf.random.set_seed(i)
    keras_layer, bayes, x = _pair(i, flipout, posterior=posteriors.MeanField(init_scale=0.3))
    keras_layer.set_weights([q.distribution.loc.numpy() for _, q, _ in bayes.weight_posteriors()])
    locs = [bayes._loc(n) for n in bayes._names()]
    scales = [bayes._scale(n) for n in bayes._names()]
    expected = _explicit_draws(keras_layer, x, locs, scales).numpy()
    got = tf.function(lambda: tf.map_fn(lambda _: bayes(x), tf.range(N),
                                        fn_output_signature=tf.float32))().numpy()
    m1, v1, sm1, sv1 = _mean_and_var_se(got)
    m2, v2, sm2, sv2 = _mean_and_var_se(expected)
    assert v1.mean() > 1e-3  # the posterior is wide enough for the test to see a wrong law
    np.testing.assert_array_less(np.abs(m1 - m2), 5 * np.sqrt(sm1 ** 2 + sm2 ** 2) + 1e-6)
    np.testing.assert_array_less(np.abs(v1 - v2), 5 * np.sqrt(sv1 ** 2 + sv2 ** 2) + 1e-6)


def test_flipout_examples_in_one_call_get_different_kernels_reparameterization_one():
    """Two copies of one example in one call: Flipout's signs differ between them, the
    reparameterisation estimator's single draw does not."""
    _, _, classes, kwargs, shape, _, _ = KINDS[2]
    x = np.repeat(np.random.default_rng(0).normal(size=(1,) + shape[1:]), 2, 0).astype("f4")
    flip, rep = (cls(kl_weight=1.0, posterior=posteriors.MeanField(init_scale=0.3), **kwargs)
                 for cls in classes)
    y_flip, y_rep = flip(x).numpy(), rep(x).numpy()
    assert not np.allclose(y_flip[0], y_flip[1])
    np.testing.assert_array_equal(y_rep[0], y_rep[1])


def test_unsupported_options_and_bad_groups_name_the_argument():
    with pytest.raises(ValueError, match=r"kernel_regularizer must be None.*Received: "
                                         r"kernel_regularizer="):
        ck.GroupedConv2DFlipout(4, 3, groups=2, kernel_regularizer="l2")
    with pytest.raises(ValueError, match=r"depthwise_constraint must be None"):
        ck.SeparableConv2DReparameterization(4, 3, depthwise_constraint="non_neg")
    with pytest.raises(ValueError, match=r"kl_weight must be a positive number.*kl_weight=0"):
        ck.DepthwiseConv2DFlipout(3, kl_weight=0)
