"""tfp_bnn.tempering.select_kl_multiplier: the chosen multiplier is the argmin of the validation
NLL recomputed by hand, every candidate trains with KL weight m / N, ties go to the first
multiplier of the grid, bad input."""
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import tempering
from tfp_bnn._keras import tf_keras

RNG = np.random.default_rng(0)
X = RNG.random((48, 3)).astype(np.float32)
Y = (X[:, 0] * 3).astype(np.int64)
X_FIT, Y_FIT, X_VAL, Y_VAL = X[:36], Y[:36], X[36:], Y[36:]


def _build():
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(8, activation="tanh"),
                                 tf_keras.layers.Dense(3)], name="tiny")
    bnn = tfp_bnn.bayesify(model, num_train_examples=len(X_FIT))
    bnn.compile(tf_keras.optimizers.Adam(1e-2),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return bnn


def test_chosen_multiplier_is_the_argmin_of_the_validation_nll_by_hand():
    grid = (1.0, 0.01)
    sel = tempering.select_kl_multiplier(_build, X_FIT, Y_FIT, X_VAL, Y_VAL, multipliers=grid,
                                         num_samples=20, seed=3, epochs=3, batch_size=12)
    assert list(sel.val_nll) == list(grid)
    assert sel.multiplier == min(grid, key=lambda m: sel.val_nll[m])
    assert all(w == pytest.approx(sel.multiplier / len(X_FIT))
               for w in tfp_bnn.kl_weights(sel.model).values())
    pred = tfp_bnn.predict(sel.model, X_VAL, num_samples=20, seed=3, verbose=0)
    by_hand = -np.mean(np.log(pred.probabilities[np.arange(len(Y_VAL)), Y_VAL]))
    assert sel.val_nll[sel.multiplier] == pytest.approx(by_hand, rel=1e-6)


def test_each_candidate_trains_with_kl_weight_m_over_n_and_ties_go_first(monkeypatch):
    scores = {0.5: 0.7, 0.2: 0.3, 0.1: 0.3}
    seen = []

    def fake_nll(model, x_val, y_val, num_samples, seed):
        (weight,) = set(tfp_bnn.kl_weights(model).values())
        m = min(scores, key=lambda k: abs(k / len(X_FIT) - weight))
        assert weight == pytest.approx(m / len(X_FIT))
        seen.append(m)
        return scores[m]

    monkeypatch.setattr(tempering, "validation_nll", fake_nll)
    sel = tempering.select_kl_multiplier(_build, X_FIT, Y_FIT, X_VAL, Y_VAL,
                                         multipliers=list(scores), epochs=1)
    assert seen == [0.5, 0.2, 0.1]
    assert sel.multiplier == 0.2 and sel.val_nll == scores
    assert all(w == pytest.approx(0.2 / len(X_FIT)) for w in tfp_bnn.kl_weights(sel.model).values())


@pytest.mark.parametrize("kwargs,match", [
    ({"multipliers": ()}, r"non-empty sequence of positive numbers\. Received: multipliers=\[\]"),
    ({"multipliers": (1.0, -0.1)}, r"positive numbers\. Received: multipliers=\[1\.0, -0\.1\]"),
    ({"multipliers": ("a",)}, r"multipliers must be a sequence of positive numbers"),
    ({"x_val": None}, r"needs validation data\. Received: x_val=None"),
    ({"y_val": None}, r"Received: y_val=None"),
    ({"y_val": Y_VAL[:3]}, r"len\(x_val\)=12, len\(y_val\)=3"),
])
def test_bad_inputs(kwargs, match):
    args = {"x_val": X_VAL, "y_val": Y_VAL, **kwargs}
    with pytest.raises(ValueError, match=match):
        tempering.select_kl_multiplier(_build, X_FIT, Y_FIT, epochs=1, **args)


def test_build_without_bayesian_layers_is_refused():
    def plain():
        m = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(3)], name="plain")
        m.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m
    with pytest.raises(ValueError, match=r"Bayesian layers.*'plain'"):
        tempering.select_kl_multiplier(plain, X_FIT, Y_FIT, X_VAL, Y_VAL, epochs=1)
