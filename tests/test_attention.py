"""tfp_bnn.attention: Bayesian EinsumDense and MultiHeadAttention; every new kind exported.

EinsumDense passes the layer contract over estimator x prior, equals Keras' layer in MEAN mode,
uses exact per-sample kernels in SAMPLE mode (one einsum), and its Flipout/Reparameterization
outputs have the per-example moments of explicit kernel draws, the covariance across an
example's positions included (they share one kernel). MultiHeadAttention keeps Keras' masks and
scores, adds its four KL terms once per pass, saves and loads; a model with every new kind
exports and runs in a fresh process without TFP.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

import tfp_bnn
from layer_contract import assert_same_variables, run_layer_test
from tfp_bnn import attention as at
from tfp_bnn import conv_kinds as ck
from tfp_bnn import posteriors, sampling
from tfp_bnn._keras import tf, tf_keras

PRIORS = ["normal", "laplace", "scale_mixture", "learned_normal"]
# (equation, output_shape, bias_axes, input shape, output shape)
EQUATIONS = [
    ("abc,cd->abd", (None, 3), "d", (2, 5, 4), (2, 5, 3)),
    ("abc,cde->abde", (None, 2, 3), "de", (2, 5, 4), (2, 5, 2, 3)),
    ("...b,bc->...c", 3, "c", (2, 4), (2, 3)),
]
CLASSES = {True: at.EinsumDenseFlipout, False: at.EinsumDenseReparameterization}


def _weights(prior):
    names = ["kernel_posterior_loc", "kernel_posterior_untransformed_scale"]
    return names + (["kernel_prior_untransformed_scale"] if prior == "learned_normal" else []) \
        + ["bias_posterior_loc"]


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("flipout", [True, False], ids=["flipout", "reparameterization"])
def test_einsum_dense_contract(flipout, prior, tmp_path):
    eq, out, bias, shape, out_shape = EQUATIONS[PRIORS.index(prior) % len(EQUATIONS)]
    run_layer_test(CLASSES[flipout], dict(equation=eq, output_shape=out, bias_axes=bias,
                                          activation="relu", prior=prior, kl_weight=0.3),
                   input_shape=shape, expected_output_shape=out_shape,
                   expected_trainable_weights=_weights(prior), expected_num_losses=1,
                   tmp_path=tmp_path)


def _pair(j, flipout, **extra):
    eq, out, bias, shape, _ = EQUATIONS[j]
    x = np.random.default_rng(j).normal(size=shape).astype(np.float32)
    keras_layer = tf_keras.layers.EinsumDense(eq, output_shape=out, bias_axes=bias,
                                              activation="tanh", bias_initializer="random_normal")
    keras_layer(x)
    bayes = CLASSES[flipout](eq, output_shape=out, bias_axes=bias, activation="tanh",
                             kl_weight=1.0, **extra)
    bayes(x)
    return keras_layer, bayes, x


@pytest.mark.parametrize("j", range(len(EQUATIONS)), ids=[e[0] for e in EQUATIONS])
def test_einsum_mean_is_keras_and_sample_copy_s_uses_draw_s(j):
    keras_layer, bayes, x = _pair(j, j % 2 == 0,
                                  posterior=posteriors.MeanField(init_scale=0.2,
                                                                 bayesian_bias=True))
    bayes.init_from_weights(keras_layer.get_weights(), posteriors.MeanField(
        moped_delta=0.2, bayesian_bias=True))
    with sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(bayes(x), keras_layer(x), rtol=1e-6, atol=1e-6)
    s, seed = 3, tf.constant([1, 2], tf.int64)
    with sampling.mc_sampling(s, seed=seed):
        y = bayes(np.concatenate([x] * s)).numpy().reshape((s,) + tuple(keras_layer(x).shape))
    draws = []
    for index, (_, q, _) in enumerate(bayes.weight_posteriors(), start=1):
        loc, scale = q.distribution.loc, q.distribution.scale
        eps = sampling.standard_normal([s] + loc.shape.as_list(), tf.float32,
                                       tf.random.experimental.stateless_fold_in(seed, index))
        draws.append((loc + scale * eps).numpy())
    for k in range(s):
        keras_layer.set_weights([d[k] for d in draws])
        np.testing.assert_allclose(y[k], keras_layer(x), rtol=1e-5, atol=1e-5)


N = 2000


@tf.function
def _explicit(keras_layer, x, loc, scale):
    out = tf.TensorArray(tf.float32, size=N)
    for n in tf.range(N):
        keras_layer.kernel.assign(loc + scale * tf.random.normal(tf.shape(loc)))
        out = out.write(n, keras_layer(x))
    return out.stack()


def _moments(y):
    """Per-entry mean, variance, covariance of positions 0 and 1, and their standard errors."""
    n = len(y)
    c = y - y.mean(0)
    prod = c[:, :, 0] * c[:, :, 1]
    return ((y.mean(0), np.sqrt(y.var(0) / n)),
            (y.var(0), np.sqrt(np.maximum((c ** 4).mean(0) - y.var(0) ** 2, 1e-12) / n)),
            (prod.mean(0), np.sqrt(prod.var(0) / n)))


@pytest.mark.parametrize("flipout", [True, False], ids=["flipout", "reparameterization"])
def test_einsum_moments_and_position_covariance_match_explicit_draws(flipout):
    """z-tests at 5 sigma; the covariance between an example's positions is what a sign per
    position (TFP's DenseFlipout on a sequence) would get wrong: it would be 0 here."""
    tf.random.set_seed(7)
    keras_layer, bayes, x = _pair(1, flipout, posterior=posteriors.MeanField(init_scale=0.4))
    keras_layer.set_weights([q.distribution.loc.numpy() for _, q, _ in bayes.weight_posteriors()])
    x = x + 1.0  # positions with a common component: a clearly non-zero covariance
    expected = _explicit(keras_layer, x, bayes._loc("kernel"), bayes._scale("kernel")).numpy()
    got = tf.function(lambda: tf.map_fn(lambda _: bayes(x), tf.range(N),
                                        fn_output_signature=tf.float32))().numpy()
    for (a, sa), (b, sb) in zip(_moments(got), _moments(expected)):
        np.testing.assert_array_less(np.abs(a - b), 5 * np.sqrt(sa ** 2 + sb ** 2) + 1e-6)
    _, _, (cov, se) = _moments(expected)
    assert np.max(np.abs(cov) / se) > 10  # the covariance test has something to see


def test_einsum_flipout_sign_rule():
    """The batch axis in the output and not in the kernel: signs exist; otherwise the
    reparameterisation draw, and the layer says so."""
    assert at.EinsumDenseFlipout("abc,cd->abd", output_shape=(None, 3)).flipout_factorizes
    assert at.EinsumDenseFlipout("...b,bc->...c", output_shape=3).flipout_factorizes
    layer = at.EinsumDenseFlipout("ab,ab->ab", output_shape=(3,), bias_axes=None, kl_weight=1.0)
    assert not layer.flipout_factorizes
    y = layer(tf.ones([2, 3]))
    assert y.shape == (2, 3) and len(layer.losses) == 1


# --- MultiHeadAttention -----------------------------------------------------------------------
Q = np.random.default_rng(3).normal(size=(2, 5, 6)).astype(np.float32)
V = np.random.default_rng(4).normal(size=(2, 4, 6)).astype(np.float32)
MASK = np.random.default_rng(5).random((2, 5, 4)) > 0.3


@pytest.mark.parametrize("cls", [at.MultiHeadAttentionFlipout,
                                 at.MultiHeadAttentionReparameterization],
                         ids=lambda c: c.__name__)
def test_attention_mean_is_keras_with_masks_and_scores(cls):
    keras_layer = tf_keras.layers.MultiHeadAttention(2, 3, value_dim=2, output_shape=5,
                                                     bias_initializer="random_normal")
    keras_layer(Q, V)
    bayes = cls(2, 3, value_dim=2, output_shape=5, kl_weight=0.5)
    bayes(Q, V)
    bayes.init_from_weights(keras_layer.get_weights())
    for kwargs in (dict(attention_mask=MASK), dict(use_causal_mask=True)):
        want, want_scores = keras_layer(Q, V, return_attention_scores=True, **kwargs)
        with sampling.mc_sampling(1, mode="mean"):
            got, scores = bayes(Q, V, return_attention_scores=True, **kwargs)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-7)
    # sampled: a real draw, and the mask still zeroes the masked scores
    _, scores = bayes(Q, V, attention_mask=MASK, return_attention_scores=True)
    assert np.all(scores.numpy()[np.broadcast_to(~MASK[:, None], scores.shape)] == 0)
    assert not np.allclose(bayes(Q, V), bayes(Q, V))


def test_attention_kl_once_per_pass_config_save_load_and_training(tmp_path):
    q, v = tf_keras.Input((5, 6)), tf_keras.Input((4, 6))
    layer = at.MultiHeadAttentionFlipout(2, 3, kl_weight=0.25, prior="laplace",
                                         posterior=posteriors.MeanField(init_scale=0.1),
                                         name="mha")
    model = tfp_bnn.BayesianModel([q, v], [layer(q, v), layer(v, v)])  # shared by two branches
    model([Q, V])
    dense = layer.projections()
    assert [type(d) for d in dense] == [at.EinsumDenseFlipout] * 4
    assert len(model.losses) == 4
    np.testing.assert_allclose(float(tf.add_n(model.losses)),
                               0.25 * sum(float(d.kl_divergence()) for d in dense), rtol=1e-6)
    config = layer.get_config()
    json.dumps(config)
    assert config["prior"] == tfp_bnn.priors.serialize(layer.prior) and config["kl_weight"] == 0.25
    assert at.MultiHeadAttentionFlipout.from_config(config).get_config() == config

    path = str(tmp_path / "mha.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert_same_variables(model, loaded)
    seed = tf.constant([2, 3], tf.int64)
    for mode, s in (("mean", 1), ("sample", 2)):
        with sampling.mc_sampling(s, seed=seed, mode=mode):
            want = model([np.concatenate([Q] * s), np.concatenate([V] * s)])
        with sampling.mc_sampling(s, seed=seed, mode=mode):
            got = loaded([np.concatenate([Q] * s), np.concatenate([V] * s)])
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)

    before = [w.numpy() for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        out = model([Q, V])
        loss = tf.add_n([tf.reduce_mean(tf.square(o)) for o in out]) + tf.add_n(model.losses)
    grads = tape.gradient(loss, layer.trainable_weights)
    tf_keras.optimizers.SGD(0.1).apply_gradients(zip(grads, layer.trainable_weights))
    assert len(before) == 12
    # The key bias adds a constant to each query's scores, which the softmax removes: its
    # gradient is zero in exact arithmetic (as in Keras' layer).
    key_bias = dense[1].weight_posteriors()[-1][1].distribution.loc
    for w, old in zip(layer.trainable_weights, before):
        assert w is key_bias or not np.allclose(w.numpy(), old), w.name


def test_attention_refuses_regularizers():
    with pytest.raises(ValueError, match=r"kernel_regularizer must be None.*Received"):
        at.MultiHeadAttentionFlipout(2, 3, kernel_regularizer="l2")


# --- every new kind through export_savedmodel, loaded without TFP----------------------------------
def test_every_new_kind_exports_and_runs_in_a_fresh_process_without_tfp(tmp_path):
    from test_export import FRESH

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((6, 6, 4), name="features")
    h = ck.DepthwiseConv2DFlipout(3, padding="same", kl_weight=0.1)(inputs)
    h = ck.SeparableConv2DReparameterization(4, 3, kl_weight=0.1)(h)
    h = ck.GroupedConv2DFlipout(4, 1, groups=2, kl_weight=0.1)(h)
    h = ck.Conv2DTransposeReparameterization(2, 2, strides=2, kl_weight=0.1)(h)
    h = tf_keras.layers.Reshape((16, 8))(h)
    h = at.MultiHeadAttentionFlipout(2, 2, kl_weight=0.1)(h, h)
    h = tf_keras.layers.GlobalAveragePooling1D()(h)
    outputs = at.EinsumDenseReparameterization("ab,bc->ac", output_shape=3, bias_axes="c",
                                               activation="softmax", kl_weight=0.1)(h)
    model = tfp_bnn.BayesianModel(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 4)).astype(np.float32)
    path = tfp_bnn.export_savedmodel(model, tmp_path / "kinds", num_samples=4)
    proc = subprocess.run([sys.executable, "-c", FRESH, path, json.dumps(x.tolist())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["unregistered"]
    for api in ("tf2", "v1"):
        probs = np.asarray(out[api]["serving_default"]["probabilities"])
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(out[api]["deterministic"]["probabilities"],
                                   sampling.mean_outputs(model, x), rtol=1e-4, atol=1e-6)



def test_new_kinds_round_trip_through_the_keras_savedmodel_format(tmp_path):
    inputs = tf_keras.Input((6, 6, 4))
    h = ck.SeparableConv2DFlipout(4, 3, kl_weight=0.1)(inputs)
    h = ck.GroupedConv2DReparameterization(4, 1, groups=2, kl_weight=0.1)(h)
    h = tf_keras.layers.Reshape((16, 4))(h)
    model = tfp_bnn.BayesianModel(inputs, at.MultiHeadAttentionFlipout(2, 2, kl_weight=0.1)(h, h))
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 4)).astype(np.float32)
    model(x)
    model.save(str(tmp_path / "saved"), save_format="tf")
    loaded = tf_keras.models.load_model(str(tmp_path / "saved"))
    assert [type(l) for l in loaded.layers] == [type(l) for l in model.layers]
    assert_same_variables(model, loaded)
    loaded(x)
    assert len(loaded.losses) == 2 + 1 + 4
    seed = tf.constant([4, 5], tf.int64)
    for mode, s in (("mean", 1), ("sample", 3)):
        outputs = []
        for m in (loaded, model):  # one context each: a context numbers its draws in order
            with sampling.mc_sampling(s, seed=seed, mode=mode):
                outputs.append(m(np.concatenate([x] * s)))
        np.testing.assert_array_equal(*outputs)
