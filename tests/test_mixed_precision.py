"""Mixed precision: a bayesified model trains, predicts and exports under "mixed_float16" and
"mixed_bfloat16", with its posterior scales, weight draws and KL in float32.

The Bayesian layers run in float32 (`convert._Rebuilder._bayesian`); the deterministic layers
around them keep the mixed policy, so a deterministic output layer returns 16-bit outputs.
"""
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import layers as bl
from tfp_bnn._keras import tf, tf_keras

L = tf_keras.layers
N = 64


@pytest.fixture(params=["mixed_float16", "mixed_bfloat16"])
def policy(request):
    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


def test_mixed_precision_trains_predicts_and_exports(policy, tmp_path):
    compute = {"mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}[policy]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 6, 6, 1)).astype("float32")
    y = (x[:, :, :3].mean(axis=(1, 2, 3)) > x[:, :, 3:].mean(axis=(1, 2, 3))).astype("int32")
    source = tf_keras.Sequential([
        tf_keras.Input((6, 6, 1)), L.Conv2D(4, 3, activation="relu", name="conv"),
        L.Flatten(), L.Dense(8, activation="relu", name="hidden"), L.Dense(2, name="out")])
    # "out" stays deterministic: the model's output is in the 16-bit compute dtype
    bnn = tfp_bnn.bayesify(source, num_train_examples=N, layers=["conv", "hidden"])
    assert bnn.dtype_policy.name == policy
    assert bnn.get_layer("out").compute_dtype == compute.name
    for layer in bl.bayesian_layers(bnn):
        assert layer.compute_dtype == "float32" and layer.dtype == "float32"
        assert all(w.dtype == tf.float32 for w in layer.weights)
        scale = tf.convert_to_tensor(layer.kernel_posterior.distribution.scale)
        assert scale.dtype == tf.float32
    bnn.compile(tf_keras.optimizers.Adam(0.02),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if policy == "mixed_float16":  # Keras wraps the optimizer for dynamic loss scaling
        assert isinstance(bnn.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    history = bnn.fit(x, y, batch_size=32, epochs=4, verbose=0).history
    for key in ("loss", "nll", "kl"):
        assert np.all(np.isfinite(history[key])), history
    assert history["loss"][-1] < history["loss"][0], history
    assert history["kl"][-1] < history["kl"][0], history

    out = bnn(x[:4])
    assert out.dtype == compute
    assert [loss.dtype for loss in bnn.losses] == [tf.float32, tf.float32]

    pred = tfp_bnn.predict(bnn, x[:8], num_samples=4, seed=0)
    assert pred.probabilities.shape == (8, 2)
    assert np.all(np.isfinite(pred.probabilities))
    np.testing.assert_allclose(pred.probabilities.sum(-1), 1.0, atol=1e-2)

    path = tfp_bnn.export_savedmodel(bnn, tmp_path / "served", num_samples=4)
    served = tf.saved_model.load(path).signatures["serving_default"]
    result = served(**{bnn.input_names[0]: tf.constant(x[:8])})
    probabilities = [v for k, v in result.items() if "prob" in k][0].numpy()
    assert probabilities.shape == (8, 2) and np.all(np.isfinite(probabilities))


def test_the_global_policy_is_reset():
    assert tf_keras.mixed_precision.global_policy().name == "float32"
