"""`tfp_bnn.copies`: the layers before a model's randomness run once, and nothing else changes.

Each model is sampled two ways with the same seed: `sampling.sample_outputs` (the walk) and the
tiled call it replaced (``model(tile(x))`` inside the same `mc_sampling` context). The stochastic
layers draw in the same order either way, so the samples agree to float rounding.
"""
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import copies, sampling
from tfp_bnn._keras import tf, tf_keras

S, B = 4, 3
L = tf_keras.layers


def _tiled_samples(model, x, seed):
    """The reference: every layer on S tiled copies (sample_outputs before `copies`)."""
    tiled = tf.nest.map_structure(lambda t: sampling._tile(tf.convert_to_tensor(t), S), x)
    with sampling.mc_sampling(S, seed):
        out = model(tiled, training=False)
    return tf.nest.map_structure(lambda t: sampling.split_copies(t, S), out)


def _both(model, x, seed=(1, 2)):
    seed = tf.constant(seed, tf.int64)
    walked = tf.function(lambda: sampling.sample_outputs(model, x, S, seed))()
    tiled = tf.function(lambda: _tiled_samples(model, x, seed))()
    return walked, tiled


def _last_layer_cnn(seed=0):
    tf_keras.utils.set_random_seed(seed)
    inp = tf_keras.Input((8, 8, 2))
    h = L.Conv2D(4, 3, padding="same", activation="relu")(inp)
    h = L.BatchNormalization()(h)
    h = L.Add()([h, L.Conv2D(4, 1)(inp)])
    h = L.GlobalAveragePooling2D()(h)
    out = L.Dense(3)(L.Dense(6, activation="relu")(h))
    return tfp_bnn.bayesify(tf_keras.Model(inp, out), layers="last", num_train_examples=10)


def _x(shape=(8, 8, 2), n=B, seed=0):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


def test_trunk_runs_once_and_samples_equal_the_tiled_pass():
    model = _last_layer_cnn()
    walk = copies.plan(model, sampling._needs_copies)
    assert [type(layer).__name__ for layer in walk.once] == [
        "Conv2D", "BatchNormalization", "Conv2D", "Add", "GlobalAveragePooling2D", "Dense"]
    walked, tiled = _both(model, _x())
    assert walked.shape == (S, B, 3)
    np.testing.assert_allclose(walked, tiled, rtol=1e-5, atol=1e-6)
    assert np.std(walked.numpy(), axis=0).min() > 0  # the head still draws per copy

    graph = tf.function(lambda x: sampling.sample_outputs(model, x, S, None)).get_concrete_function(
        tf.TensorSpec([B, 8, 8, 2])).graph
    convs = [op for op in graph.get_operations() if op.type == "Conv2D"]
    assert len(convs) == 2 and all(op.outputs[0].shape[0] == B for op in convs)


def test_fully_bayesian_model_keeps_the_tiled_call():
    tf_keras.utils.set_random_seed(0)
    model = tfp_bnn.bayesify(tf_keras.Sequential([tf_keras.Input((4,)), L.Dense(5), L.Dense(2)]),
                             num_train_examples=10)
    assert copies.plan(model, sampling._needs_copies) is None


def test_training_true_dropout_and_unknown_layers_stay_random_per_copy():
    class Jitter(tf_keras.layers.Layer):  # a user's layer: its call may draw, as this one does
        def call(self, x):
            return x + tf.random.normal(tf.shape(x))

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((5,))
    dropped = L.Dropout(0.5)(L.Dense(40)(inp), training=True)   # a hand-made MC dropout
    jittered = Jitter()(L.Dense(40)(inp))
    model = tf_keras.Model(inp, [dropped, jittered])             # no tfp_bnn layer at all
    walk = copies.plan(model, sampling._needs_copies)
    assert sorted(type(layer).__name__ for layer in walk.once) == ["Dense", "Dense"]
    outs = walk.call(tf.constant(_x((5,))), S, sampling._tile)
    dropped, jittered = (sampling.split_copies(t, S).numpy() for t in outs)
    # Run once, every copy would be equal; per copy, the masks differ (each unit kept with
    # probability 1/2 per copy) and so does the jitter.
    kept = dropped != 0
    assert 0.3 < np.mean(kept[0] != kept[1]) < 0.7
    assert np.std(jittered, axis=0).min() > 0.01


def test_masks_travel_with_the_tiled_tensor():
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((6,))
    h = L.Embedding(10, 4, mask_zero=True)(inp)
    h = L.LSTM(5)(h)                             # deterministic, uses the mask
    model = tfp_bnn.bayesify(tf_keras.Model(inp, L.Dense(3)(h)), layers="last",
                             num_train_examples=10)
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 0, 0, 0, 0], [7, 8, 9, 1, 2, 0]], np.float32)
    walked, tiled = _both(model, x)
    np.testing.assert_allclose(walked, tiled, rtol=1e-5, atol=1e-6)


def test_masked_bayesian_rnn_gets_the_tiled_mask():
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((6,))
    h = L.Embedding(10, 4, mask_zero=True)(inp)
    h = L.LSTM(5)(h)
    model = tfp_bnn.bayesify(tf_keras.Model(inp, L.Dense(3)(h)),
                             layers=lambda layer: isinstance(layer, L.LSTM),
                             num_train_examples=10)
    assert [type(layer).__name__ for layer in copies.plan(model, sampling._needs_copies).once] \
        == ["Embedding"]
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 0, 0, 0, 0], [7, 8, 9, 1, 2, 0]], np.float32)
    walked, tiled = _both(model, x)
    # (Without the tiled mask the LSTM would run over the padding: other numbers.)
    np.testing.assert_allclose(walked, tiled, rtol=1e-5, atol=1e-6)


def test_two_inputs_a_deterministic_output_and_a_nested_trunk():
    tf_keras.utils.set_random_seed(0)
    a_in, b_in = tf_keras.Input((4,)), tf_keras.Input((3,))
    trunk_in = tf_keras.Input((4,))
    trunk = tf_keras.Model(trunk_in, L.Dense(5, activation="tanh")(trunk_in), name="trunk")
    h = L.Concatenate()([trunk(a_in), b_in])
    head = L.Dense(2, name="head")(h)
    aux = L.Dense(1, name="aux")(h)               # no randomness: tiled at the end
    model = tfp_bnn.bayesify(tf_keras.Model([a_in, b_in], [head, aux]),
                             layers=["head"], num_train_examples=10)
    walk = copies.plan(model, sampling._needs_copies)
    assert sorted(layer.name for layer in walk.once) == ["aux", "concatenate", "trunk"]
    x = [_x((4,)), _x((3,), seed=1)]
    walked, tiled = _both(model, x)
    for w, t, shape in zip(walked, tiled, [(S, B, 2), (S, B, 1)]):
        assert w.shape == shape
        np.testing.assert_allclose(w, t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(walked[1], np.broadcast_to(walked[1][:1], (S, B, 1)), rtol=1e-6)


def test_static_batch_models_and_subclassed_models_are_left_to_keras():
    inp = tf_keras.Input((4,), batch_size=3)
    static = tf_keras.Model(inp, L.Dense(2)(L.Dense(3)(inp)))
    assert copies.plan(static, lambda layer: layer is static.layers[-1]) is None

    class Net(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    assert copies.plan(net, lambda layer: True) is None


@pytest.mark.parametrize("method", ["mc_dropout", "last_layer_vi"])
def test_predict_and_export_agree_for_methods_with_a_deterministic_trunk(method, tmp_path):
    tf_keras.utils.set_random_seed(0)
    det = tf_keras.Sequential([tf_keras.Input((4,)), L.Dense(16, activation="relu"),
                               L.Dropout(0.3), L.Dense(3)])
    if method == "mc_dropout":
        model = tfp_bnn.mc_dropout(det)
    else:
        model = tfp_bnn.bayesify(det, layers="last", num_train_examples=10)
    assert copies.plan(model, sampling._needs_copies).once[0].name == det.layers[0].name
    x = _x((4,), n=5)
    p = tfp_bnn.predict(model, x, num_samples=2000, seed=0)
    assert p.mutual_information.min() >= 0 and p.mutual_information.max() > 0
    path = tfp_bnn.export_savedmodel(model, str(tmp_path / "m"), num_samples=2000)
    served = tf.saved_model.load(path).signatures["serving_default"]
    (name,) = served.structured_input_signature[1]
    probs = served(**{name: tf.constant(x)})["probabilities"].numpy()
    np.testing.assert_allclose(probs, p.probabilities, atol=0.03)
