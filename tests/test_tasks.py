"""`tfp_bnn.tasks`: the task read from each kind of compiled loss (tf_keras and Keras 3, objects,
functions and strings) and from the output layer, the ambiguous model refused, and the task kept
through `.keras` save/load and recorded in the SavedModel."""
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import tasks
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.losses import GaussianNLL

LOSSES = [  # (loss for tf_keras, for Keras 3, output width, task)
    (lambda k: k.losses.SparseCategoricalCrossentropy(from_logits=True), 3, "multiclass"),
    (lambda k: "sparse_categorical_crossentropy", 3, "multiclass"),
    (lambda k: k.losses.CategoricalCrossentropy(from_logits=True), 3, "multiclass"),
    (lambda k: k.losses.categorical_crossentropy, 3, "multiclass"),
    (lambda k: k.losses.BinaryCrossentropy(from_logits=True), 1, "binary"),
    (lambda k: "binary_crossentropy", 1, "binary"),
    (lambda k: k.losses.MeanSquaredError(), 1, "regression"),
    (lambda k: "mse", 1, "regression"),
    (lambda k: k.losses.MeanAbsoluteError(), 2, "regression"),
    (lambda k: "mean_absolute_error", 1, "regression"),
]


def _keras(flavour):
    if flavour == "tf_keras":
        return tf_keras
    import keras
    return keras


def _model(k, units, activation=None):
    return k.Sequential([k.Input((4,)), k.layers.Dense(5, activation="relu"),
                         k.layers.Dense(units, activation=activation)])


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
@pytest.mark.parametrize("loss,units,task", LOSSES)
def test_task_from_the_compiled_loss(flavour, loss, units, task):
    k = _keras(flavour)
    model = _model(k, units)
    assert tasks.infer(model) == (None if units == 1 else "multiclass")  # before compile
    model.compile("adam", loss(k))
    assert tasks.resolve(model) == task
    # bayesify reads it from the source and declares it on the new model.
    bnn = tfp_bnn.bayesify(model, kl_weight=1.0)
    assert tasks.declared(bnn) == task


def test_task_from_gaussian_nll_and_from_the_output_layer():
    model = _model(tf_keras, 2)
    model.compile("adam", GaussianNLL())
    assert tasks.resolve(model) == "gaussian"
    assert tasks.resolve(_model(tf_keras, 3, "softmax")) == "multiclass"
    assert tasks.resolve(_model(tf_keras, 1, "sigmoid")) == "binary"
    assert tasks.resolve(_model(tf_keras, 4)) == "multiclass"  # several linear units: logits
    head = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2),
                                tfp_bnn.heads.GaussianHead()])
    assert tasks.resolve(head) == "gaussian"
    # A nested model as the output layer: its own task.
    inp = tf_keras.Input((4,))
    nested = tf_keras.Model(inp, head(inp))
    assert tasks.resolve(nested) == "gaussian"
    import keras
    k3 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    assert tasks.resolve(k3) == "binary"


def test_an_ambiguous_model_is_an_error_that_says_how_to_pass_task():
    model = _model(tf_keras, 1)
    with pytest.raises(ValueError, match=r"task='binary' or task='regression'.*bayesify, predict"):
        tasks.resolve(model)
    bnn = tfp_bnn.bayesify(model, kl_weight=1.0)  # undecided until compiled or told
    assert tasks.declared(bnn) is None
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="Cannot tell the task of model"):
        tfp_bnn.predict(bnn, x, num_samples=2)
    assert tfp_bnn.predict(bnn, x, num_samples=2, task="binary").probabilities.shape == (3, 2)
    bnn.compile("adam", "mse")
    assert tfp_bnn.predict(bnn, x, num_samples=2).task == "regression"


def test_an_explicit_task_is_checked_against_the_output():
    with pytest.raises(ValueError, match=r"task='binary' needs an output of one logit.*\(None, 3\)"):
        tfp_bnn.bayesify(_model(tf_keras, 3), kl_weight=1.0, task="binary")
    with pytest.raises(ValueError, match=r"task='multiclass' needs an output of C >= 2 logits"):
        tfp_bnn.predict(_model(tf_keras, 1), np.zeros((2, 4), np.float32), task="multiclass")
    with pytest.raises(ValueError, match=r"Unknown task: task='ordinal'"):
        tfp_bnn.bayesify(_model(tf_keras, 3), kl_weight=1.0, task="ordinal")
    # The explicit task wins over the compiled loss.
    model = _model(tf_keras, 1)
    model.compile("adam", "mse")
    assert tasks.declared(tfp_bnn.bayesify(model, kl_weight=1.0, task="binary")) == "binary"


def test_the_task_survives_keras_save_and_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    bnn = tfp_bnn.bayesify(_model(tf_keras, 1), kl_weight=1.0, task="binary")  # uncompiled
    bnn.save(tmp_path / "binary.keras")
    loaded = tf_keras.models.load_model(tmp_path / "binary.keras")
    assert isinstance(loaded, tfp_bnn.BayesianModel) and tasks.declared(loaded) == "binary"
    pred = tfp_bnn.predict(loaded, x, num_samples=3, seed=0)
    assert pred.task == "binary" and pred.probabilities.shape == (5, 2)
    # Undecided at bayesify, decided by the loss it is compiled with: saved all the same.
    later = tfp_bnn.bayesify(_model(tf_keras, 1), kl_weight=1.0)
    later.compile("adam", "mse")
    assert later.get_config()["task"] == "regression"
    later.save(tmp_path / "regression.keras")
    assert tasks.declared(tf_keras.models.load_model(tmp_path / "regression.keras")) == "regression"


@pytest.mark.parametrize("task,units", [("binary", 1), ("regression", 1), ("multiclass", 3)])
def test_the_task_is_recorded_in_the_savedmodel(task, units, tmp_path):
    bnn = tfp_bnn.bayesify(_model(tf_keras, units), kl_weight=1.0, task=task)
    path = tfp_bnn.export_savedmodel(bnn, tmp_path / task, num_samples=2)
    loaded = tf.saved_model.load(path)
    assert loaded.task.numpy().decode() == task
    outputs = set(loaded.signatures["serving_default"].structured_outputs)
    assert outputs == set(tfp_bnn.export.output_names(task))


@pytest.mark.parametrize("units,activation", [(3, "softmax"), (1, "sigmoid")])
def test_a_probability_output_is_not_squashed_twice(units, activation, tmp_path):
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    tf_keras.utils.set_random_seed(0)
    model = _model(tf_keras, units, activation)
    assert tasks.outputs_probabilities(model)
    p = model(x).numpy().astype(np.float64)
    want = p if units > 1 else np.concatenate([1 - p, p], axis=1)
    with pytest.warns(UserWarning, match="no stochastic layer"):
        pred = tfp_bnn.predict(model, x, num_samples=2)
    np.testing.assert_allclose(pred.probabilities, want, rtol=1e-5, atol=1e-6)
    # Sampled: the predictive is the mean of the sampled probabilities.
    bnn = tfp_bnn.bayesify(model, kl_weight=1.0,
                           posterior=tfp_bnn.posteriors.MeanField(init_scale=0.3))
    pred = tfp_bnn.predict(bnn, x, num_samples=50, seed=0, return_samples=True)
    mean = pred.samples.astype(np.float64).mean(0)
    want = mean if units > 1 else np.concatenate([1 - mean, mean], axis=1)
    np.testing.assert_allclose(pred.probabilities, want, rtol=1e-4, atol=1e-6)
    assert pred.mutual_information.max() > 0
    # The served graph reads them the same way.
    loaded = tf.saved_model.load(tfp_bnn.export_savedmodel(bnn, tmp_path / "p", num_samples=2))
    det = loaded.signatures["deterministic"](**{
        bnn.inputs[0]._keras_history[0].name: tf.constant(x)})
    p = tfp_bnn.sampling.mean_outputs(bnn, x).numpy().astype(np.float64)
    want = p if units > 1 else np.concatenate([1 - p, p], axis=1)
    np.testing.assert_allclose(det["probabilities"], want, rtol=1e-5, atol=1e-6)
    # An ensemble of such members outputs probabilities too.
    members = [_model(tf_keras, units, activation) for _ in range(2)]
    assert tasks.outputs_probabilities(tfp_bnn.baselines.ensemble.ensemble_model(members))
    assert not tasks.outputs_probabilities(_model(tf_keras, units))
