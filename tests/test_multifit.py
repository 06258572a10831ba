"""tfp_bnn.multifit.MultiFit: joint training equals separate runs, the ridge closed form, a fit
continued equals one longer fit, the KL term of a bayesified model, ensembles, bad input."""
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn._keras import tf_keras
from tfp_bnn.multifit import MultiFit


def _data(n=40, f=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)[:f]
         + 0.3 * rng.normal(size=(n, 1))).astype(np.float32)
    return x, y


def _linear(seed, f=3, use_bias=True):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.Input((f,)), tf_keras.layers.Dense(1, use_bias=use_bias)])


def _mlp(seed):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(8, activation="tanh"),
                                tf_keras.layers.Dense(1)])


def test_joint_training_equals_separate_runs():
    # Full batches (the same rows for every model, whatever the draw): three networks with
    # different weight decays trained in one loop end exactly where three lone runs end.
    x, y = _data()
    decays = [0.0, 0.05, 0.5]
    joint = [_mlp(s) for s in range(3)]
    MultiFit(joint, "mse", learning_rate=0.02).fit(x, y, epochs=60, batch_size=len(x),
                                                   weight_decay=decays)
    for s, decay in enumerate(decays):
        alone = _mlp(s)
        MultiFit([alone], "mse", learning_rate=0.02).fit(x, y, epochs=60, batch_size=len(x),
                                                         weight_decay=decay)
        for a, b in zip(joint[s].get_weights(), alone.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the decays did act: the kernels shrink with the decay
    norms = [np.sum(m.get_weights()[0] ** 2) + np.sum(m.get_weights()[2] ** 2) for m in joint]
    assert norms[0] > norms[1] > norms[2]


def test_weight_decay_reaches_the_ridge_solution():
    # MSE + decay * ||w||^2 on a linear model without bias: w* = (X'X/n + decay I)^-1 X'y/n.
    x, y = _data(n=64)
    decay = 0.3
    model = _linear(0, use_bias=False)
    result = MultiFit([model], "mse", learning_rate=0.05).fit(
        x, y, epochs=1500, batch_size=len(x), weight_decay=decay)
    n = len(x)
    ridge = np.linalg.solve(x.T @ x / n + decay * np.eye(3), x.T @ y / n)
    np.testing.assert_allclose(model.get_weights()[0], ridge, atol=1e-4)
    # the reported terms are the two parts of the objective at the end
    w = model.get_weights()[0]
    assert result.data_loss[0] == pytest.approx(np.mean((x @ w - y) ** 2), rel=1e-4)
    assert result.model_loss[0] == pytest.approx(decay * np.sum(w ** 2), rel=1e-4)
    assert result.steps == 1500


def test_continued_fit_equals_one_longer_fit():
    # Mini-batches are seeded by (seed, optimizer step): 10 + 10 epochs draw the batches of 20.
    x, y = _data()
    a, b = _mlp(1), _mlp(1)
    fa, fb = MultiFit([a], "mse", 0.01), MultiFit([b], "mse", 0.01)
    fa.fit(x, y, epochs=20, batch_size=8, seed=3)
    fb.fit(x, y, epochs=10, batch_size=8, seed=3)
    fb.fit(x, y, epochs=10, batch_size=8, seed=3, reset_optimizer=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)
    # another seed draws other batches
    c = _mlp(1)
    MultiFit([c], "mse", 0.01).fit(x, y, epochs=20, batch_size=8, seed=4)
    assert not np.allclose(a.get_weights()[0], c.get_weights()[0])


def test_models_get_their_own_minibatches():
    # Two identical networks, one loop, batches smaller than the data: they drift apart.
    x, y = _data()
    twins = [_mlp(0), _mlp(0)]
    MultiFit(twins, "mse", 0.01).fit(x, y, epochs=5, batch_size=4)
    assert not np.allclose(twins[0].get_weights()[0], twins[1].get_weights()[0])


def test_model_loss_is_the_kl_term_of_a_bayesified_model():
    x, y = _data()
    base = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4),
                                tf_keras.layers.Dense(2), tfp_bnn.heads.GaussianHead()])
    bnn = tfp_bnn.bayesify(base, num_train_examples=len(x))
    # A step size of ~0 keeps the posterior where it is: the reported KL is its KL / N.
    result = MultiFit([bnn], tfp_bnn.losses.GaussianNLL(), learning_rate=1e-12).fit(
        x, y, epochs=3, batch_size=10)
    bnn(x[:2])
    kl = float(sum(np.asarray(t) for t in bnn.losses))
    assert kl > 0
    assert result.model_loss[0] == pytest.approx(kl, rel=1e-4)
    assert np.isfinite(result.data_loss[0])


def test_for_ensemble_builds_members_like_deep_ensemble_fit():
    x, y = _data()

    def build():
        net = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(1)])
        net.compile(tf_keras.optimizers.Adam(0.05), "mse")
        return net

    ensemble = tfp_bnn.DeepEnsemble(build, num_members=3, seed=7)
    trainer = MultiFit.for_ensemble(ensemble)
    assert trainer.learning_rate == pytest.approx(0.05) and len(ensemble.members) == 3
    for m, member in enumerate(ensemble.members):  # member m is build_fn() under seed + m
        tf_keras.utils.set_random_seed(7 + m)
        np.testing.assert_array_equal(member.get_weights()[0], build().get_weights()[0])
    trainer.fit(x, y, epochs=200, batch_size=8)
    pred = tfp_bnn.predict(ensemble.as_model(), x[:5], num_samples=3, return_samples=True, seed=0)
    for m, member in enumerate(ensemble.members):  # with S = M, sample m is member m
        np.testing.assert_allclose(pred.samples[m], member(x[:5]).numpy(), rtol=1e-5, atol=1e-6)
    assert np.mean((pred.mean - y[:5]) ** 2) < 0.3


def test_bad_input_is_named():
    x, y = _data()
    a, b = _linear(0), _linear(1)
    with pytest.raises(ValueError, match="distinct objects"):
        MultiFit([a, a], "mse")
    with pytest.raises(ValueError, match="one input shape"):
        MultiFit([a, _linear(0, f=2)], "mse")
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        MultiFit([a], "mse", learning_rate=0)
    trainer = MultiFit([a, b], "mse")
    with pytest.raises(ValueError, match=r"weight_decay must be one number >= 0 or one per model \(2\)"):
        trainer.fit(x, y, epochs=1, weight_decay=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="epochs must be .*Received: epochs=0"):
        trainer.fit(x, y, epochs=0)
    with pytest.raises(ValueError, match=r"the models expect \(batch,\) \+ \(3,\)"):
        trainer.fit(x[:, :2], y, epochs=1)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="must be finite"):
        trainer.fit(bad, y, epochs=1)
    with pytest.raises(ValueError, match="ensemble must be a tfp_bnn.DeepEnsemble"):
        MultiFit.for_ensemble([a, b])
