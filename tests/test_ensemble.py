"""tfp_bnn.DeepEnsemble: members as MC samples (the ensemble mean equals the members' average
exactly), members differ, plain and "mean" calls, Keras 3 members, save/load, bad input."""
import keras
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.baselines.ensemble import ensemble_model
from tfp_bnn.predict import classification_summary

RNG = np.random.default_rng(0)
X = RNG.random((24, 4)).astype(np.float32)
Y = (X[:, 0] * 3).astype(np.int64)


def _build():
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(8, activation="relu"),
                                 tf_keras.layers.Dense(3)])
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def ensemble():
    ens = tfp_bnn.DeepEnsemble(_build, num_members=3, seed=0)
    ens.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    return ens


def _member_logits(ens):
    return np.stack([m(X, training=False).numpy() for m in ens.members])


def test_ensemble_mean_equals_members_average_exactly(ensemble):
    model = ensemble.as_model()
    pred = tfp_bnn.predict(model, X, num_samples=3, return_samples=True)
    logits = _member_logits(ensemble)
    np.testing.assert_array_equal(pred.samples, logits)  # sample s is member s, each once
    exact = classification_summary(logits)["probabilities"].numpy()
    np.testing.assert_array_equal(pred.probabilities, exact)
    average = tf.nn.softmax(logits).numpy().mean(axis=0)
    np.testing.assert_allclose(pred.probabilities, average, rtol=1e-6, atol=1e-7)
    # S = 2M: every member exactly twice, so the same mean.
    twice = tfp_bnn.predict(model, X, num_samples=6).probabilities
    np.testing.assert_allclose(twice, pred.probabilities, rtol=1e-6, atol=1e-7)


def test_num_samples_not_a_multiple_of_members_warns(ensemble):
    with pytest.warns(UserWarning, match=r"num_samples=4 is not a multiple of the 3 ensemble"):
        tfp_bnn.predict(ensemble.as_model(), X, num_samples=4)


def test_bayesian_members_are_refused():
    bnn = tfp_bnn.bayesify(_build(), kl_weight=1.0)
    with pytest.raises(ValueError, match="must be deterministic networks"):
        ensemble_model([bnn, _build()])


def test_members_differ_by_seed_and_data_order(ensemble):
    weights = [m.get_weights()[0] for m in ensemble.members]
    assert not np.allclose(weights[0], weights[1]) and not np.allclose(weights[1], weights[2])


def test_plain_call_is_one_member_and_mean_mode_averages_logits(ensemble):
    model = ensemble.as_model()
    logits = _member_logits(ensemble)
    out = model(X).numpy()
    assert any(np.allclose(out, l, atol=1e-6) for l in logits)
    np.testing.assert_allclose(sampling.mean_outputs(model, X).numpy(), logits.mean(0),
                               rtol=1e-5, atol=1e-6)


def test_keras3_members_are_rebuilt():
    members = [keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for _ in range(2)]
    model = ensemble_model(members)
    pred = tfp_bnn.predict(model, X, num_samples=2, return_samples=True)
    np.testing.assert_allclose(pred.samples, np.stack([np.asarray(m(X)) for m in members]),
                               rtol=1e-6, atol=1e-6)


def test_save_and_load_round_trip(ensemble, tmp_path):
    model = ensemble.as_model()
    model.save(tmp_path / "ens.keras")
    back = tf_keras.models.load_model(tmp_path / "ens.keras")
    np.testing.assert_array_equal(tfp_bnn.predict(back, X, num_samples=3).probabilities,
                                  tfp_bnn.predict(model, X, num_samples=3).probabilities)


@pytest.mark.parametrize("num_members", [1, 0, -2, 2.5, True, "5"])
def test_fewer_than_two_members_is_refused(num_members):
    with pytest.raises(ValueError, match=r"num_members must be an integer >= 2.*Received: "
                                         r"num_members="):
        tfp_bnn.DeepEnsemble(_build, num_members=num_members)


def test_other_bad_input():
    with pytest.raises(ValueError, match="build_fn must be a callable"):
        tfp_bnn.DeepEnsemble("model", num_members=2)
    with pytest.raises(ValueError, match=r"no trained members: call fit"):
        tfp_bnn.DeepEnsemble(_build, num_members=2).as_model()
    with pytest.raises(ValueError, match="uncompiled"):
        tfp_bnn.DeepEnsemble(lambda: tf_keras.Sequential([tf_keras.Input((4,)),
                                                          tf_keras.layers.Dense(3)]),
                             num_members=2).fit(X, Y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_model([_build()])
    other = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="share input and output shapes"):
        ensemble_model([_build(), other])
