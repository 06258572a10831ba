"""tfp_bnn.mc_dropout: outputs vary per call, rate -> 0 gives the deterministic net, placements,
existing Dropout kept on, seeded reproducibility, Keep-fraction closed form, bad input."""
import math

import keras
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.baselines.mc_dropout import MCDropout

X = np.random.default_rng(0).random((6, 4)).astype(np.float32)


def _mlp(dropout=None):
    layers = [tf_keras.Input((4,)), tf_keras.layers.Dense(8, activation="relu")]
    if dropout:
        layers.append(tf_keras.layers.Dropout(dropout))
    layers += [tf_keras.layers.Dense(8, activation="relu"), tf_keras.layers.Dense(3)]
    return tf_keras.Sequential(layers, name="mlp")


def _keras3_mlp():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])


def _classes(model):
    return [type(l).__name__ for l in model.layers]


def test_outputs_vary_across_calls_and_predict_is_seeded():
    mcd = tfp_bnn.mc_dropout(_mlp(), rate=0.5)
    assert not np.allclose(mcd(X).numpy(), mcd(X).numpy())
    a = tfp_bnn.predict(mcd, X, num_samples=20, seed=3, return_samples=True)
    b = tfp_bnn.predict(mcd, X, num_samples=20, seed=3)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert a.samples.std(axis=0).min() > 0  # every example's logits vary across samples
    assert (a.mutual_information > 0).all()


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_rate_to_zero_equals_deterministic_and_source_unchanged(flavour):
    source = _mlp() if flavour == "tf_keras" else _keras3_mlp()
    before = [np.array(w) for w in source.get_weights()]
    mcd = tfp_bnn.mc_dropout(source, rate=1e-7)
    reference = np.asarray(source(X))
    pred = tfp_bnn.predict(mcd, X, num_samples=10, seed=0, return_samples=True)
    np.testing.assert_allclose(pred.samples, np.broadcast_to(reference, pred.samples.shape),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sampling.mean_outputs(mcd, X).numpy(), reference, rtol=1e-6,
                               atol=1e-6)
    for w, b in zip(source.get_weights(), before):
        np.testing.assert_array_equal(np.asarray(w), b)
    assert not any(isinstance(l, MCDropout) for l in getattr(source, "layers", []))


@pytest.mark.parametrize("where,expected", [
    ("before_dense", ["InputLayer", "Dense", "MCDropout", "Dense", "MCDropout", "Dense"]),
    ("after_dense", ["InputLayer", "Dense", "MCDropout", "Dense", "MCDropout", "Dense"]),
    ("all", ["InputLayer", "MCDropout", "Dense", "MCDropout", "Dense", "MCDropout", "Dense"]),
])
def test_placements(where, expected):
    mcd = tfp_bnn.mc_dropout(_mlp(), rate=0.2, where=where)
    assert _classes(mcd) == expected
    assert all(l.rate == 0.2 for l in mcd.layers if isinstance(l, MCDropout))


def test_existing_dropout_kept_on_with_its_rate():
    mcd = tfp_bnn.mc_dropout(_mlp(dropout=0.3), rate=0.1, where="none")
    drops = [l for l in mcd.layers if isinstance(l, MCDropout)]
    assert [l.rate for l in drops] == [0.3]
    assert not np.allclose(mcd(X).numpy(), mcd(X).numpy())


def test_keep_fraction_and_scaling_from_the_context_stream():
    layer = MCDropout(0.25)
    ones = tf.ones([40000, 1])
    with sampling.mc_sampling(4, tf.constant([1, 2], tf.int64)):
        out = layer(ones).numpy()
    assert abs((out == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(out[out > 0], 1 / 0.75, rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.02  # inverted dropout keeps the mean


def test_saved_and_reloaded_model_keeps_dropout_on(tmp_path):
    mcd = tfp_bnn.mc_dropout(_mlp(), rate=0.3)
    mcd.save(tmp_path / "m.keras")
    back = tf_keras.models.load_model(tmp_path / "m.keras")
    assert _classes(back) == _classes(mcd)
    np.testing.assert_array_equal(sampling.mean_outputs(back, X).numpy(),
                                  sampling.mean_outputs(mcd, X).numpy())


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, math.nan, "0.1x", True, None])
def test_rate_outside_open_unit_interval_is_refused(rate):
    with pytest.raises(ValueError, match=r"rate must be a number strictly between 0 and 1\. "
                                         r"Received: rate="):
        tfp_bnn.mc_dropout(_mlp(), rate=rate)


def test_bad_placement_and_nothing_to_drop():
    with pytest.raises(ValueError, match=r"Unknown placement: where='everywhere'"):
        tfp_bnn.mc_dropout(_mlp(), where="everywhere")
    with pytest.raises(ValueError, match=r"where='none'.*without any dropout"):
        tfp_bnn.mc_dropout(_mlp(), where="none")
    with pytest.raises(ValueError, match=r"model must be a tf_keras or Keras 3 Model"):
        tfp_bnn.mc_dropout("not a model")
