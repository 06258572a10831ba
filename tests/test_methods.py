"""One interface for every method: `predict`, `export_savedmodel` and `MCValidation` take each
method's own result directly (`tfp_bnn.methods`)."""
import warnings

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import methods, metrics
from tfp_bnn._keras import tf, tf_keras

NUM_SAMPLES = 4  # a multiple of the ensemble's 2 members
RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)  # 3 classes


def _build():
    model = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                 tf_keras.layers.Dense(8, activation="relu"),
                                 tf_keras.layers.Dense(3)])
    model.compile(tf_keras.optimizers.Adam(1e-2),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def trained():
    """A trained deterministic network and the SWAG callback that watched its training."""
    tf_keras.utils.set_random_seed(0)
    model = _build()
    swag = tfp_bnn.callbacks.SWAG(start_epoch=1, max_rank=2)
    model.fit(X, Y, epochs=4, batch_size=20, verbose=0, callbacks=[swag])
    return model, swag


def _bayesify(model, swag):
    bnn = tfp_bnn.bayesify(model, num_train_examples=len(X))
    bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bnn.fit(X, Y, epochs=2, batch_size=20, verbose=0)
    return bnn


def _ensemble(model, swag):
    ens = tfp_bnn.DeepEnsemble(_build, num_members=2)
    ens.fit(X, Y, epochs=2, batch_size=20, verbose=0)
    return ens


def _distill(model, swag):
    teacher = tfp_bnn.mc_dropout(model, rate=0.2)
    student = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                   tf_keras.layers.Dense(8, activation="relu"),
                                   tf_keras.layers.Dense(3)])
    return tfp_bnn.distill(teacher, student, X, num_samples=8, epochs=2, seed=0)


METHODS = {
    "bayesify": _bayesify,
    "mc_dropout": lambda model, swag: tfp_bnn.mc_dropout(model, rate=0.2),
    "deep_ensemble": _ensemble,
    "laplace": lambda model, swag: tfp_bnn.laplace(model, X, Y, hessian="diag"),
    "swag": lambda model, swag: swag,
    "distill": _distill,
}


@pytest.mark.parametrize("name", list(METHODS))
def test_predict_export_and_validation_take_the_method_directly(name, trained, tmp_path):
    model, swag = trained
    obj = METHODS[name](model, swag)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no stochastic layer")  # the student
        pred = tfp_bnn.predict(obj, X, num_samples=NUM_SAMPLES, seed=0)
        assert pred.task == "multiclass" and pred.probabilities.shape == (len(X), 3)
        np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, atol=1e-6)
        if name != "distill":  # the student is deterministic; every other method samples
            assert pred.mutual_information.max() > 0, name
        # Built once: the same predictive model on every call while the method is unchanged.
        assert methods.predictive_model(obj) is methods.predictive_model(obj)

        scores = tfp_bnn.callbacks.MCValidation(X, Y, num_samples=NUM_SAMPLES, seed=0).evaluate(obj)
        assert scores["nll"] == pytest.approx(metrics.nll(pred.probabilities, Y), rel=1e-6)
        assert scores["accuracy"] == pytest.approx(metrics.accuracy(pred.probabilities, Y))
        assert scores["mutual_information"] == pytest.approx(
            float(pred.mutual_information.mean()), rel=1e-5, abs=1e-9)

        path = tfp_bnn.export_savedmodel(obj, tmp_path / name, num_samples=NUM_SAMPLES)
    loaded = tf.saved_model.load(path)
    assert loaded.task.numpy() == b"multiclass"
    det = loaded.signatures["deterministic"](features=tf.constant(X[:5]))
    served = loaded.signatures["serving_default"](features=tf.constant(X[:5]))
    assert served["probabilities"].shape == (5, 3) and det["logits"].shape == (5, 3)
    np.testing.assert_allclose(served["probabilities"].numpy().sum(1), 1.0, atol=1e-6)


def test_a_refit_method_gets_a_new_predictive_model():
    ens = tfp_bnn.DeepEnsemble(_build, num_members=2)
    ens.fit(X, Y, epochs=1, verbose=0)
    first = methods.predictive_model(ens)
    ens.fit(X, Y, epochs=1, verbose=0)
    assert methods.predictive_model(ens) is not first


def test_anything_else_is_an_error_naming_the_argument():
    with pytest.raises(ValueError, match=r"model must be a tf_keras Model or a fitted method.*"
                                         r"Received: model of type ndarray"):
        tfp_bnn.predict(X, X)
    with pytest.raises(ValueError, match=r"model must be a tf_keras Model.*type str"):
        tfp_bnn.export_savedmodel("model.keras", "/tmp/unused")
    with pytest.raises(ValueError, match="no trained members"):  # as_model's own message
        tfp_bnn.predict(tfp_bnn.DeepEnsemble(_build, num_members=2), X)
