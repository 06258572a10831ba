"""tfp_bnn.callbacks.SWAG: moments equal numpy moments of the snapshots, the sampler's covariance,
per-call sampling model against its closed-form output moments, batch-norm recompute and the
pre-drawn bank, bad input."""
import math

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.baselines.swag import SWAGDense, recompute_batchnorm

RNG = np.random.default_rng(0)
X = RNG.random((32, 4)).astype(np.float32)
Y = (X[:, 0] * 3).astype(np.int64)


def _flat(model):
    return np.concatenate([w.numpy().ravel() for w in model.trainable_weights]).astype(np.float64)


class _Recorder(tf_keras.callbacks.Callback):
    def __init__(self, start, freq):
        super().__init__()
        self.start, self.freq, self.snapshots = start, freq, []

    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.start and (epoch - self.start) % self.freq == 0:
            self.snapshots.append(_flat(self.model))


def _model(batchnorm=False):
    layers = [tf_keras.Input((4,)), tf_keras.layers.Dense(8, activation="relu")]
    if batchnorm:
        layers.append(tf_keras.layers.BatchNormalization())
    layers.append(tf_keras.layers.Dense(3))
    model = tf_keras.Sequential(layers, name="net")
    model.compile(tf_keras.optimizers.SGD(0.5),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def trained():
    tf_keras.utils.set_random_seed(0)
    model = _model()
    swag = tfp_bnn.callbacks.SWAG(start_epoch=2, max_rank=3, update_freq=2)
    recorder = _Recorder(2, 2)
    model.fit(X, Y, epochs=11, batch_size=8, verbose=0, callbacks=[swag, recorder])
    return model, swag, np.stack(recorder.snapshots)


def test_moments_equal_numpy_moments_of_the_snapshots(trained):
    _, swag, snaps = trained
    assert swag.num_snapshots == len(snaps) == 5  # epochs 2, 4, 6, 8, 10
    np.testing.assert_allclose(swag.mean, snaps.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(swag.variance, snaps.var(axis=0), rtol=1e-9, atol=1e-12)
    # The last K deviations, each from the running mean right after its snapshot.
    running = np.cumsum(snaps, axis=0) / np.arange(1, len(snaps) + 1)[:, None]
    np.testing.assert_allclose(swag.deviations, (snaps - running)[-3:], rtol=1e-9, atol=1e-12)


def test_sampler_covariance_is_diag_plus_low_rank(trained):
    _, swag, _ = trained
    draws = np.stack([swag.sample_weights(scale=0.5, seed=i) for i in range(4000)])
    k = len(swag.deviations)
    expected = 0.25 * (swag.variance / 2 + np.sum(swag.deviations ** 2, 0) / (2 * (k - 1)))
    np.testing.assert_allclose(draws.mean(0), swag.mean, atol=4 * np.sqrt(expected.max() / 4000))
    big = expected > 1e-6
    np.testing.assert_allclose(draws.var(0)[big], expected[big], rtol=0.15)


def test_scale_zero_is_swa(trained):
    model, swag, _ = trained
    swa = swag.sample_model(scale=0.0)
    np.testing.assert_allclose(_flat(swa), swag.mean, rtol=1e-6, atol=1e-7)
    assert swa is not model and not np.allclose(_flat(model), swag.mean)
    per_call = swag.as_model(scale=0.0)
    np.testing.assert_allclose(per_call(X).numpy(), swa(X).numpy(), rtol=1e-5, atol=1e-6)


# rows < inputs: diagonal term in output space, else in weight space; rank 0: SWAG-Diagonal.
@pytest.mark.parametrize("rows,rank", [(3, 3), (8, 3), (8, 0)])
def test_per_call_model_output_moments_match_closed_form(rows, rank):
    tf_keras.utils.set_random_seed(1)
    linear = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)], name="lin")
    swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=rank)
    for _ in range(5):
        for w in linear.trainable_weights:
            w.assign(w + 0.3 * tf.random.normal(w.shape))
        swag.collect(linear)
    model = swag.as_model(scale=1.0)
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "SWAGNoise", "SWAGDense"]
    x = X[:rows]
    samples = tfp_bnn.predict(model, x, num_samples=20000, seed=0, return_samples=True).samples
    mean, var, dev = swag.mean, swag.variance, swag.deviations
    kernel, bias = mean[:8].reshape(4, 2), mean[8:]
    diag = (x ** 2) @ var[:8].reshape(4, 2) + var[8:]
    if rank:
        low = np.einsum("bi,kio->kbo", x, dev[:, :8].reshape(3, 4, 2)) + dev[:, None, 8:]
        expected = diag / 2 + np.sum(low ** 2, 0) / (2 * 2)
    else:
        expected = diag
    np.testing.assert_allclose(samples.mean(0), x @ kernel + bias, atol=0.05)
    np.testing.assert_allclose(samples.var(0), expected, rtol=0.06)
    np.testing.assert_allclose(sampling.mean_outputs(model, x).numpy(), x @ kernel + bias,
                               rtol=1e-5, atol=1e-5)


def test_batchnorm_recomputed_and_bank_model():
    tf_keras.utils.set_random_seed(2)
    model = _model(batchnorm=True)
    swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=2)
    model.fit(X, Y, epochs=3, batch_size=8, verbose=0, callbacks=[swag])
    with pytest.raises(ValueError, match="BatchNormalization: pass bn_x="):
        swag.sample_model()
    sample = swag.sample_model(seed=0, bn_x=X)
    bn = sample.layers[1]
    features = tf_keras.Model(sample.inputs, bn.input)(X).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), features.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), features.var(0), rtol=1e-4, atol=1e-6)
    bank = swag.as_model(bn_x=X, num_draws=3)
    pred = tfp_bnn.predict(bank, X, num_samples=3, return_samples=True)
    draws = bank.layers[-1].members
    np.testing.assert_array_equal(pred.samples, np.stack([m(X, training=False).numpy()
                                                          for m in draws]))
    assert (pred.mutual_information > 0).all()


def test_recompute_batchnorm_refuses_nested_models():
    inner = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.BatchNormalization()])
    outer = tf_keras.Sequential([tf_keras.Input((4,)), inner, tf_keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="nested model"):
        recompute_batchnorm(outer, X)


def test_samples_before_any_snapshot_say_when_collection_starts():
    model = _model()
    swag = tfp_bnn.callbacks.SWAG(start_epoch=5)
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[swag])
    for ask in (swag.sample_model, swag.as_model, lambda: swag.mean):
        with pytest.raises(ValueError, match=r"no snapshot yet: collection starts at the end of "
                                             r"epoch index start_epoch=5"):
            ask()


@pytest.mark.parametrize("kwargs,match", [
    ({"start_epoch": -1}, "start_epoch must be an integer >= 0"),
    ({"start_epoch": 1.5}, "start_epoch must be an integer >= 0"),
    ({"start_epoch": 0, "max_rank": -1}, "max_rank must be an integer >= 0"),
    ({"start_epoch": 0, "update_freq": 0}, "update_freq must be a positive integer"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfp_bnn.callbacks.SWAG(**kwargs)


def test_bad_scale_and_layer_config_round_trip(trained):
    _, swag, _ = trained
    with pytest.raises(ValueError, match=r"scale must be a non-negative number\. "
                                         r"Received: scale=-1"):
        swag.sample_model(scale=-1)
    layer = SWAGDense(3, rank=2, scale=0.5, activation="relu")
    back = SWAGDense.from_config(layer.get_config())
    assert (back.units, back.rank, back.scale, back.c1, back.c2) == (3, 2, 0.5, 0.5 / math.sqrt(2),
                                                                     0.5 / math.sqrt(2))
