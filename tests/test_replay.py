"""tfp_bnn.replay: the one graph replay behind bayesify and the baselines.

The hook contract (copy / replace / wrap), shared layers replaced once, nested models, weights
copied once the graph is built, the source untouched, Keras 3 translation, the layer kinds.
"""
import keras
import numpy as np
import pytest

from tfp_bnn import replay
from tfp_bnn._keras import tf, tf_keras

L = tf_keras.layers
X = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


@pytest.fixture()
def shared_model():
    """A Dense layer called on two branches, a nested Sequential, two outputs."""
    inp = tf_keras.Input((3,), name="x")
    shared = L.Dense(3, activation="tanh", name="shared")
    inner = tf_keras.Sequential([tf_keras.Input((3,)), L.Dense(2, name="inner_dense")],
                                name="inner")
    a = shared(inp)
    b = shared(L.Lambda(lambda t: 2.0 * t, name="twice")(inp))
    out = L.Dense(2, name="head")(L.Add(name="add")([a, b]))
    return _randomize(tf_keras.Model(inp, [out, inner(a)], name="src"))


def _by_hand(model, x, head_scale=1.0):
    w, b = model.get_layer("shared").get_weights()
    hw, hb = model.get_layer("head").get_weights()
    iw, ib = model.get_layer("inner").get_layer("inner_dense").get_weights()
    a, b2 = np.tanh(x @ w + b), np.tanh(2 * x @ w + b)
    return (a + b2) @ (head_scale * hw) + hb, a @ iw + ib


def test_copy_is_a_new_faithful_model_and_the_source_is_untouched(shared_model):
    before = [w.copy() for w in shared_model.get_weights()]
    copy = replay.replay(shared_model, name="copied")
    assert copy.name == "copied" and isinstance(copy, tf_keras.Model)
    for got, want in zip(copy(X), _by_hand(shared_model, X)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # one new layer per source layer: the shared one is replaced once and called twice
    assert len(copy.get_layer("shared")._inbound_nodes) == 2
    assert isinstance(copy.get_layer("inner"), tf_keras.Model)
    new_vars = {id(v) for v in copy.weights}
    assert not new_vars & {id(v) for v in shared_model.weights}
    copy.get_layer("shared").kernel.assign_add(tf.ones((3, 3)))
    for w, b in zip(shared_model.get_weights(), before):
        np.testing.assert_array_equal(w, b)


def test_hook_replaces_and_wraps_and_weights_are_copied_after_the_build(shared_model):
    asked = []

    def hook(layer):
        asked.append(layer.name)
        if layer.name == "head":  # replace: a new layer whose weights the hook sets itself
            new = L.Dense(2, name="head")

            def copy_weights():
                kernel, bias = layer.get_weights()
                new.set_weights([3.0 * kernel, bias])  # needs the built layer
            return replay.Replacement(new, copy_weights)
        if layer.name == "inner_dense":  # wrap: the copy, then a new layer after it
            copied = replay.copy(layer)
            negate = L.Lambda(lambda t: -t, name="negate")
            return replay.Replacement(lambda t: negate(copied.call(t)), copied.copy_weights)
        return None

    new = replay.replay(shared_model, hook)
    head, inner = _by_hand(shared_model, X, head_scale=3.0)
    got_head, got_inner = new(X)
    np.testing.assert_allclose(got_head.numpy(), head, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_inner.numpy(), -inner, rtol=1e-5, atol=1e-6)
    # every layer asked once (the shared one too), nested models never (their layers are)
    assert sorted(asked) == ["add", "head", "inner_dense", "shared", "twice"]


def test_keras3_model_is_translated_and_its_operations_too():
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, activation="relu", kernel_initializer="he_normal")(inp)
    k3 = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dropout(0.3)(h)))
    copy = replay.replay(k3)
    assert isinstance(copy, tf_keras.Model)
    assert [type(l).__module__.split(".")[0] for l in copy.layers] == ["tf_keras"] * 4
    np.testing.assert_allclose(copy(X).numpy(), np.asarray(k3(X)), rtol=1e-5, atol=1e-6)
    with_op = keras.Model(inp, keras.layers.Dense(2)(h + 1.0))
    copy = replay.replay(with_op)
    assert [type(l).__name__ for l in copy.layers] == ["InputLayer", "Dense", "Operation", "Dense"]
    np.testing.assert_allclose(copy(X).numpy(), np.asarray(with_op(X)), rtol=1e-5, atol=1e-6)
    # (an operation outside tfp_bnn.ops.TABLE: tests/test_keras3_ops.py)


def test_kind_is_the_builtin_class_never_a_name():
    class Dense(L.Dense):  # a user subclass that happens to be called Dense
        pass

    assert replay.kind(L.Dense(2)) == "Dense" and replay.kind(keras.layers.LSTM(2)) == "LSTM"
    assert replay.kind(L.Conv2DTranspose(2, 3)) == "Conv2DTranspose"  # not "Conv2D"
    assert replay.kind(L.LocallyConnected2D(2, 3)) is None
    assert replay.kind(Dense(2)) is None and replay.subclasses_a_kind(Dense(2))
    assert not replay.subclasses_a_kind(L.Flatten())
    assert replay.builtin(L.Bidirectional(L.LSTM(2)), "Bidirectional")


def test_not_a_model_and_no_inputs():
    with pytest.raises(ValueError, match=r"model must be a tf_keras or Keras 3 Model\. "
                                         r"Received: model='m'"):
        replay.replay("m")
    with pytest.raises(ValueError, match=r"has no defined inputs: build it first"):
        replay.replay(tf_keras.Sequential([L.Dense(2)], name="unbuilt"))
