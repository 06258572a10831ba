"""bayesify on what Keras users have: the new layer kinds, attention, applications, subclassed.

Every new kind (depthwise, separable, grouped, transposed convolutions; EinsumDense;
MultiHeadAttention) converts in tf_keras and Keras 3 models, MEAN outputs equal the source with
``MeanField(from_weights=True)`` (so every weight went where it belongs), the source is
unchanged, and the chain fit -> predict -> export -> fresh-process load works; MobileNetV3Small
and a Transformer convert with defaults so that every convertible layer is Bayesian; tf_keras
subclassed models convert, Keras 3 ones are refused with what to do; a custom Keras 3 layer is
refused naming `tfp_bnn.register_layer`, and converts once registered.
"""
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import convert, posteriors, replay, sampling
from tfp_bnn._keras import tf, tf_keras

FROM_WEIGHTS = posteriors.MeanField(from_weights=True)
KERASES = {"tf_keras": tf_keras, "keras3": keras}
BAYESIAN = {cls for kinds in convert.ESTIMATORS.values() for cls in kinds.values()}


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    names = [getattr(v, "path", None) or v.name for v in model.weights]
    model.set_weights([np.abs(rng.normal(size=w.shape)).astype(w.dtype) + 0.1
                       if "variance" in name or "gamma" in name
                       else rng.normal(scale=0.3, size=w.shape).astype(w.dtype)
                       for w, name in zip(model.get_weights(), names)])
    return model


def _assert_mean_equals_source(bnn, source, x, tol=2e-5):
    got = tf.nest.flatten(sampling.mean_outputs(bnn, x))
    want = tf.nest.flatten(source(x, training=False))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


def _kinds_model(K):
    """Every new convolution kind (2D, 1D and 3D) and an EinsumDense, 10 softmax classes."""
    L = K.layers
    img = K.Input((8, 8, 4), name="img")
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw2")(img)
    x = L.SeparableConv2D(8, 3, padding="same", activation="relu", name="sep2")(x)
    x = L.Conv2D(8, 3, groups=4, name="grp2")(x)
    x = L.Conv2DTranspose(4, 3, strides=2, name="tr2")(x)
    a = L.GlobalAveragePooling2D()(x)
    seq = L.Reshape((16, 4))(L.Conv2D(4, 1, name="c2")(img[:, :4, :4, :]) if K is keras else
                             L.Conv2D(4, 1, name="c2")(L.Cropping2D(((0, 4), (0, 4)))(img)))
    s = L.DepthwiseConv1D(3, name="dw1")(seq)
    s = L.SeparableConv1D(6, 3, name="sep1")(s)
    s = L.Conv1D(6, 3, groups=3, padding="causal", name="grp1")(s)
    s = L.Conv1DTranspose(4, 3, name="tr1")(s)
    b = L.GlobalAveragePooling1D()(s)
    vol = L.Reshape((2, 4, 4, 2))(L.Conv2D(4, 1, name="c3")(img[:, :4, :4, :]) if K is keras else
                                  L.Conv2D(4, 1, name="c3")(L.Cropping2D(((0, 4), (0, 4)))(img)))
    v = L.Conv3D(4, 1, groups=2, name="grp3")(vol)
    v = L.Conv3DTranspose(2, 2, name="tr3")(v)
    c = L.GlobalAveragePooling3D()(v)
    h = L.EinsumDense("ab,bc->ac", output_shape=12, bias_axes="c", name="ein")(
        L.Concatenate()([a, b, c]))
    return _randomize(K.Model(img, L.Dense(10, activation="softmax", name="head")(h)))


NEW_KINDS = {"dw2": "DepthwiseConv2D", "sep2": "SeparableConv2D", "grp2": "GroupedConv2D",
             "tr2": "Conv2DTranspose", "dw1": "DepthwiseConv1D", "sep1": "SeparableConv1D",
             "grp1": "GroupedConv1D", "tr1": "Conv1DTranspose", "grp3": "GroupedConv3D",
             "tr3": "Conv3DTranspose", "ein": "EinsumDense"}


@pytest.fixture(scope="module", params=list(KERASES))
def kinds(request):
    source = _kinds_model(KERASES[request.param])
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 4)).astype("float32")
    return source, x


@pytest.mark.parametrize("estimator", ["flipout", "reparameterization"])
def test_every_new_kind_converts_from_its_weights(kinds, estimator):
    source, x = kinds
    before = [w.copy() for w in source.get_weights()]
    bnn = tfp_bnn.bayesify(source, estimator=estimator, num_train_examples=100,
                           posterior=FROM_WEIGHTS)
    suffix = "Flipout" if estimator == "flipout" else "Reparameterization"
    for name, kind in NEW_KINDS.items():
        assert type(bnn.get_layer(name)).__name__ == kind + suffix
    assert type(bnn.get_layer("c2")).__name__ == "Conv2D" + suffix  # groups=1: TFP's layer
    _assert_mean_equals_source(bnn, source, x)
    for got, want in zip(source.get_weights(), before):  # the source is never modified
        np.testing.assert_array_equal(got, want)
    draws = [np.asarray(bnn(x, training=True)) for _ in range(2)]
    assert np.abs(draws[0] - draws[1]).max() > 1e-4  # stochastic


def test_layers_selects_among_the_new_kinds(kinds):
    source, _ = kinds
    bnn = tfp_bnn.bayesify(source, kl_weight=0.1, layers=["sep2", "tr1"])
    assert sorted(l.name for l in replay.all_layers(bnn) if type(l) in BAYESIAN) == [
        "sep2", "tr1"]
    assert type(bnn.get_layer("dw2")).__name__ == "DepthwiseConv2D"
    last = tfp_bnn.bayesify(source, kl_weight=0.1, layers="last")
    assert [l.name for l in replay.all_layers(last) if type(l) in BAYESIAN] == ["head"]


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, x = sys.argv[1], np.asarray(json.loads(sys.argv[2]), np.float32)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    p = serve(**{name: tf.constant(x)})["probabilities"].numpy()
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m.split(".")[0] == "tfp_bnn" for m in sys.modules), "tfp_bnn was imported"
    print(json.dumps(p.tolist()))
""")


def test_chain_fit_predict_export_and_load_without_tfp(tmp_path):
    # Keras 3, whose layers go through the most translation (a tf_keras source differs only
    # before bayesify, which the tests above cover for both).
    source = _kinds_model(keras)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 4)).astype("float32")
    bnn = tfp_bnn.bayesify(source, num_train_examples=100)
    bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy())
    loss = bnn.train_on_batch(x, np.arange(3))
    assert np.isfinite(np.asarray(loss)).all()
    pred = tfp_bnn.predict(bnn, x, num_samples=10, seed=0)
    np.testing.assert_allclose(pred.probabilities.sum(-1), 1.0, atol=1e-5)
    bnn.save(tmp_path / "bnn.keras")
    loaded = tf_keras.models.load_model(tmp_path / "bnn.keras")
    np.testing.assert_allclose(np.asarray(sampling.mean_outputs(loaded, x)),
                               np.asarray(sampling.mean_outputs(bnn, x)), rtol=1e-5, atol=1e-6)
    path = tfp_bnn.export_savedmodel(bnn, tmp_path / "export", num_samples=10)
    proc = subprocess.run([sys.executable, "-c", FRESH, path, json.dumps(x.tolist())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(served.sum(-1), 1.0, atol=1e-5)


# --- attention -----------------------------------------------------------------------------------
def _transformer(K, plus):
    L = K.layers
    inp = K.Input((6, 8))
    a, scores = L.MultiHeadAttention(2, 4, name="mha")(inp, inp, use_causal_mask=True,
                                                      return_attention_scores=True)
    h = L.LayerNormalization()(inp + a if plus else L.Add()([inp, a]))
    f = L.Dense(8, name="ffn_out")(L.Dense(16, activation="gelu", name="ffn_in")(h))
    h = h + f if plus else L.Add()([h, f])
    out = L.Dense(3, activation="softmax", name="head")(L.GlobalAveragePooling1D()(h))
    return _randomize(K.Model(inp, [out, scores]))


@pytest.mark.parametrize("which, plus", [("tf_keras", False), ("tf_keras", True),
                                         ("keras3", False), ("keras3", True)])
def test_transformer_attention_projections_become_bayesian(which, plus):
    source = _transformer(KERASES[which], plus)
    x = np.random.default_rng(2).normal(size=(2, 6, 8)).astype("float32")
    bnn = tfp_bnn.bayesify(source, num_train_examples=50, posterior=FROM_WEIGHTS,
                           task="multiclass")
    mha = bnn.get_layer("mha")
    assert type(mha).__name__ == "MultiHeadAttentionFlipout"
    assert [type(p).__name__ for p in mha.projections()] == ["EinsumDenseFlipout"] * 4
    assert sum(type(l) in BAYESIAN for l in replay.all_layers(bnn)) == 4  # mha + 3 Dense
    _assert_mean_equals_source(bnn, source, x)  # the causal scores too
    scores = np.asarray(tf.nest.flatten(sampling.mean_outputs(bnn, x))[1])
    assert np.abs(np.triu(scores, k=1)).max() == 0.0  # use_causal_mask kept
    only = tfp_bnn.bayesify(source, num_train_examples=50, layers=["ffn_in"], task="multiclass")
    assert type(only.get_layer("mha")).__name__ == "MultiHeadAttention"


def test_attention_mask_argument_is_kept():
    for K in KERASES.values():
        q, m = K.Input((4, 6)), K.Input((4, 4), dtype="bool")
        out = K.layers.MultiHeadAttention(2, 3, name="mha")(q, q, attention_mask=m)
        source = _randomize(K.Model([q, m], out))
        x = np.random.default_rng(3).normal(size=(2, 4, 6)).astype("float32")
        mask = np.tril(np.ones((2, 4, 4), bool))
        bnn = tfp_bnn.bayesify(source, kl_weight=0.1, posterior=FROM_WEIGHTS,
                               task="regression")
        got = np.asarray(sampling.mean_outputs(bnn, [x, mask]))
        np.testing.assert_allclose(got, np.asarray(source([x, mask])), rtol=2e-5, atol=2e-5)


# --- keras.applications --------------------------------------------------------------------------
def test_mobilenet_v3_small_every_convertible_layer_becomes_bayesian():
    # Keras 3's (hard_silu activations, operations between layers); tf_keras's converts the
    # same way (scripts/corpus_benchmark.py runs both).
    source = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10)
    bnn = tfp_bnn.bayesify(source, num_train_examples=1000)
    convertible = [l for l in replay.all_layers(source) if convert._is_convertible_class(l)]
    assert sum(type(l) in BAYESIAN for l in replay.all_layers(bnn)) == len(convertible) == 54
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(tfp_bnn.predict(bnn, x, num_samples=2, seed=0)
                               .probabilities.sum(-1), 1.0, atol=1e-5)


# --- subclassed models ---------------------------------------------------------------------------
def _subclassed(K):
    class Net(K.Model):
        def __init__(self):
            super().__init__(name="net")
            self.conv = K.layers.Conv2D(4, 3, activation="relu")
            self.pool = K.layers.GlobalAveragePooling2D()
            self.hidden = K.layers.Dense(8, activation="relu")
            self.head = K.layers.Dense(3, activation="softmax")

        def call(self, x):
            return self.head(self.hidden(self.pool(self.conv(x))) * 2.0)

    net = Net()
    net(np.zeros((1, 6, 6, 2), np.float32))
    return _randomize(net)


def test_tf_keras_subclassed_model_converts_on_a_copy():
    source = _subclassed(tf_keras)
    x = np.random.default_rng(4).normal(size=(2, 6, 6, 2)).astype("float32")
    nodes = [(len(l._inbound_nodes), len(l._outbound_nodes)) for l in source.layers]
    want = source(x).numpy()
    bnn = tfp_bnn.bayesify(source, kl_weight=0.1, posterior=FROM_WEIGHTS)
    assert [type(l).__name__ for l in bnn.layers if type(l) in BAYESIAN] == [
        "Conv2DFlipout", "DenseFlipout", "DenseFlipout"]
    assert tfp_bnn.tasks.resolve(bnn) == "multiclass"
    _assert_mean_equals_source(bnn, source, x)
    # the trace left no node on the user's layers, which compute what they did
    assert [(len(l._inbound_nodes), len(l._outbound_nodes)) for l in source.layers] == nodes
    np.testing.assert_array_equal(source(x).numpy(), want)
    last = tfp_bnn.bayesify(source, kl_weight=0.1, layers="last")
    assert [l.name for l in last.layers if type(l) in BAYESIAN] == ["dense_1"]


def test_keras3_subclassed_model_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"model 'net' is a subclassed Keras 3 model: .*Write it "
                                         r"as a Functional model"):
        tfp_bnn.bayesify(_subclassed(keras), kl_weight=0.1)


def test_unbuilt_tf_keras_subclassed_model_says_call_it_first():
    class Net(tf_keras.Model):
        def __init__(self):
            super().__init__(name="unbuilt")
            self.d = tf_keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(ValueError, match=r"'unbuilt' is a subclassed tf_keras model that was "
                                         r"never called: call it once"):
        tfp_bnn.bayesify(Net(), kl_weight=0.1, task="regression")


# --- custom layers -------------------------------------------------------------------------------
class Scale(keras.layers.Layer):
    """A user's own Keras 3 layer: x * factor."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor


def test_custom_keras3_layer_is_refused_then_registered():
    inp = keras.Input((4,))
    out = keras.layers.Dense(3, activation="softmax")(Scale(3.0, name="scale")(inp))
    source = _randomize(keras.Model(inp, out))
    with pytest.raises(ValueError, match=r"Cannot rebuild Keras 3 layer 'scale' .*Scale.*"
                                         r"tfp_bnn.register_layer\(Scale, "):
        tfp_bnn.bayesify(source, kl_weight=0.1)
    tfp_bnn.register_layer(Scale, lambda layer: tf_keras.layers.Rescaling(
        layer.factor, name=layer.name))
    try:
        bnn = tfp_bnn.bayesify(source, kl_weight=0.1, posterior=FROM_WEIGHTS)
        assert type(bnn.get_layer("scale")).__name__ == "Rescaling"
        x = np.random.default_rng(5).normal(size=(2, 4)).astype("float32")
        _assert_mean_equals_source(bnn, source, x)
    finally:
        tfp_bnn.registry._BUILDERS.pop(tfp_bnn.registry._key(Scale))


def test_register_layer_checks_its_arguments():
    with pytest.raises(ValueError, match=r"layer_class must be a layer class. Received: "
                                         r"layer_class='Scale'"):
        tfp_bnn.register_layer("Scale", lambda layer: None)
    with pytest.raises(ValueError, match=r"builder must be callable.*Received: builder=3"):
        tfp_bnn.register_layer(Scale, 3)


@pytest.mark.parametrize("which", list(KERASES))
def test_application_layers_are_rebuilt_with_their_weights(which, tmp_path):
    """ConvNeXt's LayerScale and InceptionResNetV2's CustomScaleLayer, as Keras ships them."""
    K = KERASES[which]
    if which == "keras3":
        from keras.src.applications.convnext import LayerScale
        from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    else:
        from tf_keras.src.applications.convnext import LayerScale
        from tf_keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    inp = K.Input((5,))
    h = K.layers.Dense(5, name="d")(inp)
    h = LayerScale(0.3, 5, name="ls")(h)
    h = CustomScaleLayer(0.17, name="cs")([inp, h])
    source = _randomize(K.Model(inp, K.layers.Dense(2, name="out")(h)))
    bnn = tfp_bnn.bayesify(source, kl_weight=0.1, posterior=FROM_WEIGHTS, task="regression")
    assert type(bnn.get_layer("ls")) is tfp_bnn.registry.LayerScale
    assert type(bnn.get_layer("cs")) is tfp_bnn.registry.CustomScale
    x = np.random.default_rng(6).normal(size=(3, 5)).astype("float32")
    _assert_mean_equals_source(bnn, source, x)
    bnn.save(tmp_path / "m.keras")  # loads without custom objects
    loaded = tf_keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(sampling.mean_outputs(loaded, x)),
                               np.asarray(sampling.mean_outputs(bnn, x)), rtol=1e-6)


def test_a_layer_name_that_is_no_scope_name_converts():
    # tf_keras's RegNet names its head "1head_dense"; posteriors are modules named after it
    inp = tf_keras.Input((3,))
    source = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="1head_dense")(inp))
    bnn = tfp_bnn.bayesify(source, kl_weight=0.1, task="regression")
    assert [l.name for l in bnn.layers if type(l) in BAYESIAN] == ["layer_1head_dense"]
