"""Noise.SHARED: one weight perturbation per pass, Flipout signs per row.

Every row's weights are an exact posterior draw, so each copy's pre-activations have the exact
marginal moments (closed forms below); two copies of one pass are uncorrelated.
"""
import os

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import layers, posteriors, sampling
from tfp_bnn._keras import tf, tf_keras

PASSES, S = 600, 2


def _passes(layer, x):
    """[PASSES, S, B, ...] outputs of the layer in SHARED mode, one fresh seed per pass."""
    @tf.function
    def one(seed):
        with sampling.mc_sampling(S, seed=seed, noise="shared"):
            y = layer(tf.tile(x, [S] + [1] * (x.shape.rank - 1)))
        return tf.reshape(y, [S, x.shape[0]] + y.shape[1:].as_list())

    return np.stack([one(tf.constant([i, 7], tf.int64)).numpy() for i in range(PASSES)])


def _posterior(layer, rng):
    q = layer.kernel_posterior.distribution
    q.loc.assign(rng.normal(size=q.loc.shape).astype("f4"))
    rho = np.log(np.expm1(rng.uniform(0.2, 0.6, size=q.loc.shape))).astype("f4")
    q.scale.pretransformed_input.assign(rho)
    return q.loc.numpy(), q.scale.numpy()


def _check_moments(y, mean, var):
    flat = y.reshape(PASSES * S, *y.shape[2:])
    n = flat.shape[0]
    # Mean within 5 standard errors; variance within 5 of its standard errors (normal data).
    np.testing.assert_array_less(np.abs(flat.mean(0) - mean), 5 * np.sqrt(var / n) + 1e-6)
    np.testing.assert_array_less(np.abs(flat.var(0) - var), 5 * var * np.sqrt(2 / n) + 1e-6)
    # Two copies of one pass: uncorrelated (|r| within 5 / sqrt(PASSES)).
    a, b = y[:, 0] - mean, y[:, 1] - mean
    r = (a * b).mean(0) / var
    assert np.abs(r).max() < 5 / np.sqrt(PASSES)


def test_dense_weight_space_rows_have_the_exact_moments_and_copies_are_uncorrelated():
    rng = np.random.default_rng(0)
    layer = layers.DenseReparameterization(3)
    x = tf.constant(rng.normal(size=(2, 4, 5)), tf.float32)  # rank 3: weight space
    layer(x)
    loc, scale = _posterior(layer, rng)
    y = _passes(layer, x)
    _check_moments(y, x.numpy() @ loc, np.square(x.numpy()) @ np.square(scale))


def test_conv_rows_have_the_exact_moments():
    rng = np.random.default_rng(1)
    layer = layers.Conv2DFlipout(2, 3, padding="same")
    x = tf.constant(rng.normal(size=(1, 4, 4, 2)), tf.float32)
    layer(x)
    loc, scale = _posterior(layer, rng)
    conv = lambda a, k: tf.nn.conv2d(a, k, 1, "SAME").numpy()  # noqa: E731
    _check_moments(_passes(layer, x), conv(x, loc), conv(tf.square(x), np.square(scale)))


def test_depthwise_rows_have_the_exact_moments():
    rng = np.random.default_rng(2)
    layer = layers.DepthwiseConv2DFlipout(3, padding="same")
    x = tf.constant(rng.normal(size=(1, 4, 4, 2)), tf.float32)
    layer(x)
    q = layer.weight_posteriors()[0][1].distribution
    q.loc.assign(rng.normal(size=q.loc.shape).astype("f4"))
    q.scale.pretransformed_input.assign(np.full(q.loc.shape, np.log(np.expm1(0.4)), "f4"))
    dw = lambda a, k: tf.nn.depthwise_conv2d(a, k, [1] * 4, "SAME").numpy()  # noqa: E731
    _check_moments(_passes(layer, x), dw(x, q.loc), dw(tf.square(x), np.full(q.loc.shape, 0.16, "f4")))


def test_one_normal_per_weight_and_seeded_reproducible():
    layer = layers.Conv2DReparameterization(4, 3)
    x = tf.ones([2, 6, 6, 3])
    layer(x)
    seed = tf.constant([3, 4], tf.int64)
    run = tf.function(lambda: sampling.sample_outputs(layer, x, 10, seed=seed, noise="shared"))
    graph = run.get_concrete_function().graph
    sizes = [int(np.prod(op.outputs[0].shape)) for op in graph.get_operations()
             if op.type == "StatelessRandomUniformV2" and op.outputs[0].dtype == tf.float32]
    assert sizes == [2 * (3 * 3 * 3 * 4 // 2)]  # one draw of the kernel's 108 normals, not 10x
    np.testing.assert_array_equal(run(), run())
    # Beyond FOLD_MAX_ROWS rows per copy two convolutions over all S*B rows cost more than the
    # exact draws: the exact path, S x 108 normals.
    big = tf.ones([17, 6, 6, 3])
    graph = tf.function(lambda: sampling.sample_outputs(
        layer, big, 10, seed=seed, noise="shared")).get_concrete_function().graph
    sizes = [int(np.prod(op.outputs[0].shape)) for op in graph.get_operations()
             if op.type == "StatelessRandomUniformV2" and op.outputs[0].dtype == tf.float32]
    assert sizes == [10 * 3 * 3 * 3 * 4]


def test_export_with_shared_noise_serves_and_says_so(tmp_path):
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([tf_keras.Input((6, 6, 1), name="image"),
                                 tf_keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf_keras.layers.Flatten(), tf_keras.layers.Dense(3)])
    bnn = tfp_bnn.bayesify(model, num_train_examples=100,
                           posterior=posteriors.MeanField(init_scale=0.1))
    path = tfp_bnn.export_savedmodel(bnn, tmp_path / "m", noise="shared")
    loaded = tf.saved_model.load(path)
    assert loaded.noise.numpy() == b"shared"
    out = loaded.signatures["serving_default"](image=tf.ones([5, 6, 6, 1]))
    np.testing.assert_allclose(out["probabilities"].numpy().sum(-1), 1.0, rtol=1e-5)
    assert (out["variance"].numpy() > 0).all()
    assert tf.saved_model.load(tfp_bnn.export_savedmodel(bnn, tmp_path / "e")).noise.numpy() \
        == b"exact"
    with pytest.raises(ValueError, match="noise.*'independent'"):
        tfp_bnn.export_savedmodel(bnn, tmp_path / "bad", noise="independent")
    assert not os.path.exists(tmp_path / "bad")


def test_einsum_dense_with_a_bayesian_bias_on_two_axes_has_the_exact_moments():
    rng = np.random.default_rng(3)
    layer = layers.EinsumDenseReparameterization(
        "abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de",
        posterior=posteriors.MeanField(bayesian_bias=True))
    x = tf.constant(rng.normal(size=(1, 3, 4)), tf.float32)
    layer(x)
    (_, qk, _), (_, qb, _) = layer.weight_posteriors()
    for q in (qk, qb):
        q.distribution.loc.assign(rng.normal(size=q.distribution.loc.shape).astype("f4"))
        q.distribution.scale.pretransformed_input.assign(
            np.full(q.distribution.loc.shape, np.log(np.expm1(0.3)), "f4"))
    mean = np.einsum("abc,cde->abde", x, qk.distribution.loc) + qb.distribution.loc.numpy()
    var = np.einsum("abc,cde->abde", np.square(x), np.full(qk.distribution.loc.shape, 0.09)) \
        + 0.09
    _check_moments(_passes(layer, x), mean, var)
