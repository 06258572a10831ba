"""Gaussian heads and losses: closed forms, the predict/export decomposition for a head model,
bayesify keeping the heads (and their weights), configs and .keras save/load."""
import json
import math

import numpy as np
import pytest
from scipy import stats

import tfp_bnn
from tfp_bnn import heads, losses, posteriors
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.export import REGRESSION_OUTPUTS

WIDE = posteriors.MeanField(init_scale=0.3)  # visible epistemic variance


def _head_model(kind="gaussian", units=1, in_dim=3):
    layers = [tf_keras.Input((in_dim,)), tf_keras.layers.Dense(8, activation="tanh")]
    if kind == "gaussian":
        layers += [tf_keras.layers.Dense(2 * units), heads.GaussianHead(units, min_scale=1e-3)]
    else:
        layers += [tf_keras.layers.Dense(units), heads.HomoscedasticGaussian(units,
                                                                             init_scale=0.7)]
    return tf_keras.Sequential(layers)


def _x(n=6, in_dim=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, in_dim)).astype("float32")


# --- GaussianNLL --------------------------------------------------------------------------------
@pytest.mark.parametrize("units", [1, 3])
def test_gaussian_nll_matches_scipy(units):
    rng = np.random.default_rng(1)
    y = rng.normal(size=(5, units))
    mean, std = rng.normal(size=(5, units)), rng.uniform(0.1, 2.0, size=(5, units))
    y_pred = np.concatenate([mean, std], -1).astype("float32")
    expected = -stats.norm.logpdf(y, mean, std).sum(-1)  # summed over outputs, per example
    loss = losses.GaussianNLL()
    np.testing.assert_allclose(float(loss(y.astype("float32"), y_pred)), expected.mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(losses.gaussian_nll(y.astype("float32"), y_pred).numpy(),
                               expected, rtol=1e-5)
    # Without the constant: exactly (y-mu)^2/(2 sigma^2) + log sigma.
    no_const = losses.GaussianNLL(include_constant=False)
    closed = ((y - mean) ** 2 / (2 * std ** 2) + np.log(std)).sum(-1).mean()
    np.testing.assert_allclose(float(no_const(y.astype("float32"), y_pred)), closed, rtol=1e-5)
    assert math.isclose(float(loss(y.astype("float32"), y_pred))
                        - float(no_const(y.astype("float32"), y_pred)),
                        units * 0.5 * math.log(2 * math.pi), rel_tol=1e-5)


def test_gaussian_nll_accepts_flat_targets_and_refuses_odd_columns():
    y_pred = np.array([[0.0, 1.0], [1.0, 2.0]], "float32")
    a = losses.GaussianNLL()(np.array([0.5, 0.5], "float32"), y_pred)
    b = losses.GaussianNLL()(np.array([[0.5], [0.5]], "float32"), y_pred)
    assert float(a) == pytest.approx(float(b))
    with pytest.raises(ValueError, match=r"even number of columns.*\(2, 3\)"):
        losses.gaussian_nll(np.zeros((2, 1), "float32"), np.ones((2, 3), "float32"))


def test_gaussian_nll_config_round_trip():
    loss = losses.GaussianNLL(include_constant=False, name="nll")
    config = loss.get_config()
    json.dumps(config)
    revived = tf_keras.losses.deserialize(tf_keras.losses.serialize(loss))
    assert type(revived) is losses.GaussianNLL and revived.get_config() == config


# --- heads ----------------------------------------------------------------------------------------
def test_gaussian_head_closed_form_and_bad_input():
    raw = np.array([[0.5, -1.0, 2.0, 0.0]], "float32")  # units=2: loc (0.5, -1), raw (2, 0)
    out = heads.GaussianHead(2, min_scale=0.01)(raw).numpy()
    softplus = np.log1p(np.exp(raw[:, 2:]))
    np.testing.assert_allclose(out, np.concatenate([raw[:, :2], softplus + 0.01], -1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"needs 4 input features.*\(None, 3\)"):
        heads.GaussianHead(2)(tf_keras.Input((3,)))
    with pytest.raises(ValueError, match="units must be a positive integer"):
        heads.GaussianHead(0)
    with pytest.raises(ValueError, match="min_scale"):
        heads.GaussianHead(1, min_scale=-1.0)


def test_homoscedastic_head_one_learned_scale():
    head = heads.HomoscedasticGaussian(2, init_scale=0.7, min_scale=0.0)
    out = head(np.array([[1.0, 2.0], [3.0, 4.0]], "float32")).numpy()
    np.testing.assert_allclose(out[:, :2], [[1, 2], [3, 4]])
    np.testing.assert_allclose(out[:, 2:], 0.7, rtol=1e-5)
    assert [w.name.split("/")[-1] for w in head.trainable_weights] == ["untransformed_scale:0"]
    # the scale learns: one step on the NLL of data with spread 2 increases it
    y = np.array([[3.0, 4.0], [-1.0, 0.0]], "float32")
    with tf.GradientTape() as tape:
        loss = losses.GaussianNLL()(y, head(np.array([[1.0, 2.0], [1.0, 2.0]], "float32")))
    grad = tape.gradient(loss, head.trainable_weights)[0]
    assert np.all(grad.numpy() < 0)


@pytest.mark.parametrize("kind", ["gaussian", "homoscedastic"])
def test_head_config_and_keras_save_load(kind, tmp_path):
    model = _head_model(kind, units=2)
    head = model.layers[-1]
    config = head.get_config()
    json.dumps(config)
    revived = tf_keras.layers.deserialize(tf_keras.layers.serialize(head))
    assert type(revived) is type(head) and revived.get_config() == config
    path = str(tmp_path / "head.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert type(loaded.layers[-1]) is type(head)
    assert tfp_bnn.tasks.infer(loaded) == "gaussian"
    np.testing.assert_allclose(loaded(_x()).numpy(), model(_x()).numpy(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["gaussian", "homoscedastic"])
def test_bayesify_keeps_head_and_its_weights(kind, tmp_path):
    model = _head_model(kind)
    if kind == "homoscedastic":
        model.layers[-1].untransformed_scale.assign([0.123])
    bnn = tfp_bnn.bayesify(model, num_train_examples=10)
    names = [type(l).__name__ for l in bnn.layers[1:]]
    expected_head = "GaussianHead" if kind == "gaussian" else "HomoscedasticGaussian"
    assert names == ["DenseFlipout", "DenseFlipout", expected_head]
    assert bnn.layers[-1] is not model.layers[-1]
    assert bnn.layers[-1].get_config() == model.layers[-1].get_config()
    np.testing.assert_array_equal(
        [w.numpy() for w in bnn.layers[-1].weights], [w.numpy() for w in model.layers[-1].weights])
    # the bayesified head model saves and loads too
    path = str(tmp_path / "bnn.keras")
    bnn.save(path)
    loaded = tf_keras.models.load_model(path)
    assert type(loaded.layers[-1]).__name__ == expected_head
    with tfp_bnn.sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(loaded(_x()).numpy(), bnn(_x()).numpy(), rtol=1e-6)


# --- predict / export decomposition ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gaussian", "homoscedastic"])
def test_predict_decomposition_on_head_model(kind):
    tf_keras.utils.set_random_seed(0)
    bnn = tfp_bnn.bayesify(_head_model(kind, units=2), num_train_examples=10, posterior=WIDE)
    pred = tfp_bnn.predict(bnn, _x(), num_samples=64, seed=3, return_samples=True)
    assert pred.task == "gaussian" and not pred.is_classification
    mu, sigma = np.split(pred.samples, 2, axis=-1)  # [S, B, 2] each
    np.testing.assert_allclose(pred.mean, mu.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.epistemic_variance, mu.var(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(pred.aleatoric_variance, (sigma ** 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(pred.variance, pred.epistemic_variance + pred.aleatoric_variance,
                               rtol=1e-6)
    assert pred.epistemic_variance.min() > 0
    if kind == "homoscedastic":
        np.testing.assert_allclose(pred.aleatoric_variance, 0.7 ** 2, rtol=1e-4)


def test_export_head_model_gives_regression_outputs(tmp_path):
    tf_keras.utils.set_random_seed(0)
    bnn = tfp_bnn.bayesify(_head_model("homoscedastic"), num_train_examples=10, posterior=WIDE)
    path = tfp_bnn.export_savedmodel(bnn, str(tmp_path / "head"), num_samples=32)
    loaded = tf.saved_model.load(path)
    out = {k: v.numpy() for k, v in loaded.signatures["serving_default"](
        tf.constant(_x())).items()}
    assert set(out) == set(REGRESSION_OUTPUTS)
    np.testing.assert_allclose(out["aleatoric_variance"], 0.7 ** 2, rtol=1e-4)
    np.testing.assert_allclose(out["variance"], out["epistemic_variance"]
                               + out["aleatoric_variance"], rtol=1e-6)
    assert out["mean"].shape == (6, 1) and out["epistemic_variance"].min() > 0
    det = loaded.signatures["deterministic"](tf.constant(_x()))
    np.testing.assert_allclose(det["aleatoric_variance"].numpy(), 0.7 ** 2, rtol=1e-4)


def test_fit_head_model_logs_nll_plus_kl():
    tf_keras.utils.set_random_seed(0)
    x = _x(32)
    y = (x[:, :1] * 2.0).astype("float32")
    bnn = tfp_bnn.bayesify(_head_model("gaussian"), num_train_examples=32)
    bnn.compile(tf_keras.optimizers.Adam(1e-2), losses.GaussianNLL())
    hist = bnn.fit(x, y, epochs=2, batch_size=32, verbose=0).history
    np.testing.assert_allclose(hist["loss"], np.add(hist["nll"], hist["kl"]), rtol=1e-5)


# --- multi-task weighting ---------------------------------------------------------------------------
def test_multitask_weighting_closed_form():
    mtw = losses.MultiTaskUncertaintyWeighting(
        task_types=["regression", "classification", "simple"], init_log_variance=0.0)
    mtw.build(None)
    s = np.array([0.3, -0.5, 1.2], "float32")
    mtw.log_variances.assign(s)
    task = np.array([2.0, 0.7, 1.5], "float32")
    expected = (0.5 * np.exp(-s[0]) * task[0] + 0.5 * s[0]      # L/(2 sigma^2) + log sigma
                + np.exp(-s[1]) * task[1] + 0.5 * s[1]          # L/sigma^2 + log sigma
                + np.exp(-s[2]) * task[2] + s[2])
    assert float(mtw([tf.constant(v) for v in task])) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(mtw.task_weights.numpy(),
                               [0.5 * np.exp(-s[0]), np.exp(-s[1]), np.exp(-s[2])], rtol=1e-6)


def test_multitask_weighting_learns_the_optimal_log_variance():
    task = tf.constant([4.0, 0.25])  # fixed task losses: optimum s = log L and log(2 L)
    mtw = losses.MultiTaskUncertaintyWeighting(task_types=["regression", "classification"])
    opt = tf_keras.optimizers.Adam(0.05)
    for _ in range(600):
        with tf.GradientTape() as tape:
            total = mtw(task)
        opt.apply_gradients(zip(tape.gradient(total, mtw.trainable_weights),
                                mtw.trainable_weights))
    np.testing.assert_allclose(mtw.log_variances.numpy(), [math.log(4.0), math.log(0.5)],
                               atol=1e-2)


def test_multitask_weighting_config_and_errors():
    mtw = losses.MultiTaskUncertaintyWeighting(num_tasks=2, init_log_variance=0.5, name="mtw")
    config = mtw.get_config()
    json.dumps(config)
    revived = tf_keras.layers.deserialize(tf_keras.layers.serialize(mtw))
    assert type(revived) is losses.MultiTaskUncertaintyWeighting
    assert revived.get_config() == config and revived.task_types == ["regression"] * 2
    with pytest.raises(ValueError, match="Unknown task type 'ranking'"):
        losses.MultiTaskUncertaintyWeighting(task_types=["regression", "ranking"])
    with pytest.raises(ValueError, match="Pass num_tasks"):
        losses.MultiTaskUncertaintyWeighting()
    with pytest.raises(ValueError, match="Expected 2 task losses, received 3"):
        mtw([1.0, 2.0, 3.0])
