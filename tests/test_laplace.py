"""tfp_bnn.laplace: the posterior precision against the GGN computed by hand, structures against
each other, the tuned prior maximises the evidence, the sampled predictive against the linearised
variance, probit, regression, Keras 3 input, bad input."""
import keras
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf_keras

RNG = np.random.default_rng(0)
X = RNG.random((40, 3)).astype(np.float32)
Y = (X[:, 0] * 3).astype(np.int64)
Y_REG = (2 * X[:, :1] + 0.1 * RNG.standard_normal((40, 1))).astype(np.float32)


def _net(units):
    tf_keras.utils.set_random_seed(0)
    return tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(5, activation="tanh"),
                                tf_keras.layers.Dense(units)], name="tiny")


@pytest.fixture(scope="module")
def classifier():
    return _net(3)


def _features(model, x):
    w1, b1 = model.layers[0].get_weights()
    phi = np.tanh(x.astype(np.float64) @ w1 + b1)
    return np.hstack([phi, np.ones((len(x), 1))])


def _theta(model):
    w2, b2 = model.layers[1].get_weights()
    return np.vstack([w2, b2[None]]).astype(np.float64)


def test_diag_posterior_precision_is_prior_plus_ggn_diagonal_by_hand(classifier):
    la = tfp_bnn.laplace(classifier, X, Y, hessian="diag", prior_precision=2.0)
    phi = _features(classifier, X)
    f = phi @ _theta(classifier)
    p = np.exp(f) / np.exp(f).sum(1, keepdims=True)
    by_hand = np.zeros((6, 3))
    for n in range(len(X)):  # diag of sum_n (phi phi^T) kron (diag(p) - p p^T)
        by_hand += np.outer(phi[n] ** 2, p[n] * (1 - p[n]))
    np.testing.assert_allclose(la.posterior_precision, 2.0 + by_hand, rtol=1e-5)
    assert la.prior_precision == 2.0


def test_regression_diag_precision_by_hand():
    model = _net(1)
    la = tfp_bnn.laplace(model, X, Y_REG, hessian="diag", prior_precision=0.5,
                         likelihood="regression")
    phi = _features(model, X)
    sigma2 = np.mean((Y_REG - phi @ _theta(model)) ** 2)
    assert la.sigma_noise == pytest.approx(np.sqrt(sigma2), rel=1e-5)
    np.testing.assert_allclose(la.posterior_precision[:, 0], 0.5 + (phi ** 2).sum(0) / sigma2,
                               rtol=1e-5)
    pred = tfp_bnn.predict(la.as_model(), X[:4], num_samples=50, seed=0)
    np.testing.assert_allclose(pred.aleatoric_variance[:, 0], sigma2, rtol=1e-5)
    assert (pred.epistemic_variance > 0).all()


def test_structures_agree(classifier):
    full = tfp_bnn.laplace(classifier, X, Y, hessian="full", prior_precision=1.0)
    diag = tfp_bnn.laplace(classifier, X, Y, hessian="diag", prior_precision=1.0)
    np.testing.assert_allclose(np.diag(full.posterior_precision).reshape(6, 3),
                               diag.posterior_precision, rtol=1e-10)
    # On one example KFAC is exact: A kron G = (phi phi^T) kron Lambda.
    kron1 = tfp_bnn.laplace(classifier, X[:1], Y[:1], hessian="kron", prior_precision=1.0)
    full1 = tfp_bnn.laplace(classifier, X[:1], Y[:1], hessian="full", prior_precision=1.0)
    np.testing.assert_allclose(kron1.posterior_precision, full1.posterior_precision, atol=1e-12)


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_marglik_prior_precision_is_a_maximum(classifier, hessian):
    la = tfp_bnn.laplace(classifier, X, Y, hessian=hessian)
    best = la.log_marginal_likelihood()
    for factor in (0.8, 1.25):
        assert best >= la.log_marginal_likelihood(la.prior_precision * factor)


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_sampled_logits_match_linearised_variance_and_probit(classifier, hessian):
    la = tfp_bnn.laplace(classifier, X, Y, hessian=hessian, prior_precision=0.5)
    model = la.as_model()
    x = X[:4]
    pred = tfp_bnn.predict(model, x, num_samples=8000, seed=0, return_samples=True)
    f_map = classifier(x).numpy()
    np.testing.assert_allclose(pred.samples.mean(0), f_map, atol=0.1)
    np.testing.assert_allclose(pred.samples.var(0), la._function_variance(_features(classifier, x)),
                               rtol=0.08)
    np.testing.assert_allclose(sampling.mean_outputs(model, x).numpy(), f_map, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(la.predict_probit(x), pred.probabilities, atol=0.03)


def test_keras3_input_model():
    k3 = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                           keras.layers.Dense(3, activation="softmax")])
    la = tfp_bnn.laplace(k3, X, Y, hessian="kron")
    logits = np.log(np.asarray(k3(X[:4])))
    mean = sampling.mean_outputs(la.as_model(), X[:4]).numpy()
    np.testing.assert_allclose(mean - mean.mean(1, keepdims=True),
                               logits - logits.mean(1, keepdims=True), rtol=1e-4, atol=1e-5)


def test_last_layer_not_dense_is_refused():
    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(3),
                                 tf_keras.layers.Softmax(name="probs")], name="m")
    with pytest.raises(ValueError, match=r"output layer is Dense; model 'm' ends in layer "
                                         r"'probs' \(Softmax\)"):
        tfp_bnn.laplace(model, X, Y)


@pytest.mark.parametrize("kwargs,match", [
    ({"hessian": "block"}, r"Unknown hessian: hessian='block'"),
    ({"subset": "all"}, r"Unknown subset: subset='all'"),
    ({"likelihood": "poisson"}, r"Unknown likelihood: likelihood='poisson'"),
    ({"prior_precision": 0.0}, r"prior_precision must be a positive number"),
    ({"prior_precision": "evidence"}, r"prior_precision must be 'marglik' or a positive number"),
])
def test_bad_options(classifier, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfp_bnn.laplace(classifier, X, Y, **kwargs)


def test_bad_activation_labels_and_probit_on_regression():
    relu = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(3, activation="relu",
                                                                           name="out")])
    with pytest.raises(ValueError, match=r"activation in \('linear', 'softmax'\).*'relu'"):
        tfp_bnn.laplace(relu, X, Y)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        tfp_bnn.laplace(_net(3), X, Y + 5)
    la = tfp_bnn.laplace(_net(1), X, Y_REG, likelihood="regression", prior_precision=1.0)
    with pytest.raises(ValueError, match="predict_probit is for classification"):
        la.predict_probit(X)


# ---------------------------------------------------------------------------------------------
# prior_precision="val_nll": grid search on held-out data
# ---------------------------------------------------------------------------------------------
GRID = 10.0 ** np.linspace(-6.0, 6.0, 121)
X_FIT, Y_FIT, X_VAL, Y_VAL = X[:28], Y[:28], X[28:], Y[28:]


@pytest.fixture(scope="module")
def overconfident():
    """The tiny net fitted briefly, logits x8: confident and partly wrong (val accuracy
    11/12), so the validation NLL has an interior optimum in delta."""
    model = _net(3)
    model.compile(tf_keras.optimizers.Adam(0.05),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X_FIT, Y_FIT, epochs=50, batch_size=28, verbose=0)
    w, b = model.layers[1].get_weights()
    model.layers[1].set_weights([8 * w, 8 * b])
    return model


def _dense_ggn(model, x, y, hessian):
    """The Hessian approximation H as a dense [P, P] matrix (index i * C + c)."""
    return tfp_bnn.laplace(model, x, y, hessian=hessian, prior_precision=1.0) \
        .posterior_precision - np.eye(6 * 3) if hessian != "diag" else np.diag(
            tfp_bnn.laplace(model, x, y, hessian="diag", prior_precision=1.0)
            .posterior_precision.ravel() - 1.0)


def _probit_nll_by_hand(model, h, delta, x, y):
    phi = _features(model, x)
    mu = phi @ _theta(model)
    cov = np.linalg.inv(h + delta * np.eye(len(h))).reshape(6, 3, 6, 3)
    var = np.stack([np.einsum("bi,bj,ij->b", phi, phi, cov[:, c, :, c]) for c in range(3)], 1)
    z = mu / np.sqrt(1.0 + np.pi / 8.0 * var)
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(logp[np.arange(len(y)), y])


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_val_nll_precision_is_the_grid_argmin_of_the_probit_nll_by_hand(overconfident, hessian):
    la = tfp_bnn.laplace(overconfident, X_FIT, Y_FIT, hessian=hessian, prior_precision="val_nll",
                         x_val=X_VAL, y_val=Y_VAL)
    h = _dense_ggn(overconfident, X_FIT, Y_FIT, hessian)
    by_hand = np.array([_probit_nll_by_hand(overconfident, h, d, X_VAL, Y_VAL) for d in GRID])
    best = int(np.argmin(by_hand))
    assert 0 < best < len(GRID) - 1  # an interior optimum: the test is not decided by an edge
    assert la.prior_precision == pytest.approx(GRID[best], rel=1e-9)
    np.testing.assert_allclose(la.val_nll_grid[0], GRID, rtol=1e-12)
    np.testing.assert_allclose(la.val_nll_grid[1], by_hand, rtol=1e-6)
    assert la.validation_nll(X_VAL, Y_VAL) == pytest.approx(by_hand[best], rel=1e-6)
    # The probit predictive at the chosen precision is the one scored.
    p = la.predict_probit(X_VAL)
    assert -np.mean(np.log(p[np.arange(len(Y_VAL)), Y_VAL])) == pytest.approx(by_hand[best],
                                                                              rel=1e-5)


def test_val_nll_regression_uses_the_gaussian_linearised_predictive():
    model = _net(1)
    x_val, y_val = X[28:], Y_REG[28:]
    la = tfp_bnn.laplace(model, X[:28], Y_REG[:28], hessian="full", likelihood="regression",
                         prior_precision="val_nll", x_val=x_val, y_val=y_val)
    phi = _features(model, x_val)
    mu = phi @ _theta(model)
    h = la.posterior_precision - la.prior_precision * np.eye(6)
    by_hand = []
    for d in GRID:
        v = np.einsum("bi,ij,bj->b", phi, np.linalg.inv(h + d * np.eye(6)), phi)[:, None] \
            + la.sigma_noise ** 2
        by_hand.append(np.mean(np.sum(0.5 * np.log(2 * np.pi * v) + (y_val - mu) ** 2 / (2 * v),
                                      -1)))
    assert la.prior_precision == pytest.approx(GRID[int(np.argmin(by_hand))], rel=1e-9)
    np.testing.assert_allclose(la.val_nll_grid[1], by_hand, rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"prior_precision": "val_nll"},
     r"prior_precision='val_nll' needs validation data: pass x_val and y_val\. "
     r"Received: x_val=None"),
    ({"prior_precision": "val_nll", "x_val": X_VAL},
     r"needs validation data.*Received: y_val=None"),
    ({"x_val": X_VAL, "y_val": Y_VAL},
     r"x_val and y_val are only used with prior_precision='val_nll'\. "
     r"Received: prior_precision='marglik'"),
    ({"prior_precision": 1.0, "y_val": Y_VAL}, r"only used with prior_precision='val_nll'"),
    ({"prior_precision": "val_nll", "x_val": X_VAL, "y_val": Y_VAL[:5]},
     r"x_val and y_val differ in length: 12 vs 5"),
    ({"prior_precision": "val_nll", "x_val": X_VAL, "y_val": Y_VAL + 3},
     r"y_val must hold class indices in \[0, 3\)"),
    ({"prior_precision": "val_nll", "x_val": X_VAL[:0], "y_val": Y_VAL[:0]},
     r"at least one validation example"),
    ({"prior_precision": "gridsearch"},
     r"prior_precision must be 'marglik' or a positive number, or 'val_nll'"),
])
def test_val_nll_bad_inputs(classifier, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfp_bnn.laplace(classifier, X_FIT, Y_FIT, **kwargs)


@pytest.mark.parametrize("hessian", ["diag", "kron", "full"])
def test_binary_one_logit_ggn_is_sigmoid_curvature_by_hand(hessian):
    """One logit: Lambda_n = sigmoid(f)(1 - sigmoid(f)) (a softmax over one column would be 0),
    the probit predictive is [1 - p, p] and predict/export see a binary task."""
    model = _net(1)
    y = (X[:, 0] > 0.5).astype(np.int64)
    la = tfp_bnn.laplace(model, X, y, hessian=hessian, prior_precision=1.0)
    phi = _features(model, X)
    f = phi @ _theta(model)
    p = 1.0 / (1.0 + np.exp(-f[:, 0]))
    ggn = (phi * (p * (1 - p))[:, None]).T @ phi  # [rows, rows]: H for C = 1
    if hessian == "kron":  # KFAC: A (x) G with A = sum phi phi^T and G the mean curvature
        ggn = phi.T @ phi * np.mean(p * (1 - p))
    np.testing.assert_allclose(la.posterior_precision if hessian != "diag"
                               else np.diag(la.posterior_precision[:, 0]),
                               ggn + np.eye(len(ggn)) if hessian != "diag"
                               else np.diag(np.diag(ggn) + 1.0), rtol=1e-6)
    expected_ll = np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert la.log_likelihood == pytest.approx(expected_ll, rel=1e-9)
    # The probit predictive: sigmoid(mu / sqrt(1 + pi/8 var)), as [p(y=0), p(y=1)].
    var = la._function_variance(phi)[:, 0]
    q = 1.0 / (1.0 + np.exp(-f[:, 0] / np.sqrt(1 + np.pi / 8 * var)))
    probs = la.predict_probit(X)
    np.testing.assert_allclose(probs, np.stack([1 - q, q], 1), rtol=1e-5, atol=1e-6)
    pred = tfp_bnn.predict(la, X, num_samples=400, seed=0)
    assert pred.task == "binary" and pred.probabilities.shape == (40, 2)
    np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, atol=1e-6)
    # MC over the weight posterior vs the closed-form variance of the one logit.
    assert pred.logit_variance[:, 0] == pytest.approx(var, rel=0.25, abs=1e-3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        tfp_bnn.laplace(model, X, y + 1, hessian=hessian)
