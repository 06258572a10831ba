"""tfp_bnn.bayesify: which layers become Bayesian, what is kept, Keras 3 inputs, bad inputs."""
import collections
import warnings

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import layers as bl
from tfp_bnn import posteriors
from tfp_bnn._keras import tf, tf_keras

L = tf_keras.layers
FROM_WEIGHTS = posteriors.MeanField(from_weights=True)


def _randomize(model, seed=0):
    """Non-trivial weights everywhere (BN statistics positive), so copies can be told apart.

    tf_keras and Keras 3 models alike (a Keras 3 variable's ``name`` lacks its layer's path).
    """
    rng = np.random.default_rng(seed)
    names = [getattr(v, "path", None) or v.name for v in model.weights]
    model.set_weights([np.abs(rng.normal(size=w.shape)).astype(w.dtype) + 0.1
                       if "variance" in name or "gamma" in name
                       else rng.normal(scale=0.5, size=w.shape).astype(w.dtype)
                       for w, name in zip(model.get_weights(), names)])
    return model


def _classes(model, recursive=True):
    layers = model._flatten_layers(include_self=False, recursive=recursive)
    return collections.Counter(type(l).__name__ for l in layers)


def _mean(model, x):
    out = tfp_bnn.sampling.mean_outputs(model, x)
    return [np.asarray(o) for o in tf.nest.flatten(out)]


def _source(model, x):
    return [np.asarray(o) for o in tf.nest.flatten(model(x, training=False))]


def _assert_outputs_equal(bnn, source, x):
    got, want = _mean(bnn, x), _source(source, x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def _assert_same_weights(new_layer, source_layer):
    got, want = new_layer.get_weights(), source_layer.get_weights()
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _mlp(name="mlp"):
    return _randomize(tf_keras.Sequential([
        tf_keras.Input((4,)), L.Dense(5, activation="relu", name="d1"),
        L.Dense(5, activation="tanh", name="d2"), L.Dense(3, name="d3")], name=name))


@pytest.fixture(scope="module")
def zoo():
    """Two inputs, two outputs, a skip connection, a nested Sequential and every kept layer kind."""
    img = tf_keras.Input((8, 8, 3), name="img")
    tok = tf_keras.Input((5,), dtype="int32", name="tok")
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(img)
    x = L.BatchNormalization(name="bn")(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flat")(x)
    e = L.Flatten(name="flat_e")(L.Embedding(10, 3, name="emb")(tok))
    h = L.Dropout(0.5, name="drop")(L.Concatenate(name="cat")([x, e]))
    inner = tf_keras.Sequential([tf_keras.Input((h.shape[-1],)),
                                 L.Dense(6, activation="tanh", name="inner_dense"),
                                 L.LayerNormalization(name="ln")], name="inner")
    h = L.Add(name="add")([inner(h), L.Dense(6, use_bias=False, name="proj")(h)])
    out_a = L.Dense(3, name="head_a")(h)
    out_b = L.Dense(1, activation="sigmoid", name="head_b")(h)
    return _randomize(tf_keras.Model([img, tok], [out_a, out_b], name="zoo"))


@pytest.fixture(scope="module")
def zoo_x():
    rng = np.random.default_rng(1)
    return [rng.normal(size=(4, 8, 8, 3)).astype("float32"),
            rng.integers(0, 10, size=(4, 5)).astype("int32")]


@pytest.fixture(scope="module")
def zoo_bnn(zoo):
    return tfp_bnn.bayesify(zoo, kl_weight=0.1, posterior=FROM_WEIGHTS)


KEPT = {"BatchNormalization": 1, "MaxPooling2D": 1, "Flatten": 2, "Embedding": 1,
        "Concatenate": 1, "Dropout": 1, "LayerNormalization": 1, "Add": 1, "InputLayer": 3}
WITH_WEIGHTS = ["bn", "emb"]


# --- what becomes Bayesian ------------------------------------------------------------------------
@pytest.mark.parametrize("estimator, conv_cls, dense_cls", [
    ("flipout", "Conv2DFlipout", "DenseFlipout"),
    ("reparameterization", "Conv2DReparameterization", "DenseReparameterization"),
])
def test_converted_layer_classes_and_counts(zoo, zoo_x, estimator, conv_cls, dense_cls):
    bnn = tfp_bnn.bayesify(zoo, estimator=estimator, num_train_examples=50)
    assert isinstance(bnn, tfp_bnn.BayesianModel) and isinstance(bnn, tf_keras.Model)
    assert _classes(bnn) == collections.Counter(
        {conv_cls: 1, dense_cls: 4, "Functional": 1, **KEPT})
    assert [l.name for l in bl.bayesian_layers(bnn)] == [
        "conv", "inner_dense", "proj", "head_a", "head_b"]
    for layer in bl.bayesian_layers(bnn):
        np.testing.assert_allclose(layer.kl_weight.numpy(), 1 / 50, rtol=1e-7)
    bnn(zoo_x)
    assert len(bnn.losses) == 5
    # kept layers have the source's weights even without from_weights
    for name in WITH_WEIGHTS:
        _assert_same_weights(bnn.get_layer(name), zoo.get_layer(name))
    _assert_same_weights(bnn.get_layer("inner").get_layer("ln"),
                         zoo.get_layer("inner").get_layer("ln"))


def test_local_reparameterization_converts_dense_layers():
    bnn = tfp_bnn.bayesify(_mlp(), estimator="local_reparameterization", kl_weight=1.0)
    assert _classes(bnn) == {"DenseLocalReparameterization": 3, "InputLayer": 1}


def test_local_reparameterization_with_conv_excluded(zoo, zoo_x):
    bnn = tfp_bnn.bayesify(zoo, estimator="local_reparameterization", kl_weight=1.0,
                           layers=lambda layer: not isinstance(layer, L.Conv2D),
                           posterior=FROM_WEIGHTS)
    classes = _classes(bnn)
    assert classes["Conv2D"] == 1 and classes["DenseLocalReparameterization"] == 4
    np.testing.assert_array_equal(bnn.get_layer("conv").get_weights()[0],
                                  zoo.get_layer("conv").get_weights()[0])
    _assert_outputs_equal(bnn, zoo, zoo_x)


@pytest.mark.parametrize("layers, bayesian", [
    (None, ["d1", "d2", "d3"]),
    ("last", ["d3"]),
    ("d2", ["d2"]),
    (["d1", "d3"], ["d1", "d3"]),
    (lambda layer: layer.units == 5, ["d1", "d2"]),
])
def test_layers_selects_what_is_converted(layers, bayesian):
    source = _mlp()
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, layers=layers, posterior=FROM_WEIGHTS)
    assert [l.name for l in bl.bayesian_layers(bnn)] == bayesian
    for name in {"d1", "d2", "d3"} - set(bayesian):
        layer = bnn.get_layer(name)
        assert type(layer) is L.Dense
        _assert_same_weights(layer, source.get_layer(name))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    _assert_outputs_equal(bnn, source, x)


def test_layers_last_in_a_nested_functional(zoo):
    bnn = tfp_bnn.bayesify(zoo, kl_weight=1.0, layers="last")
    assert [l.name for l in bl.bayesian_layers(bnn)] == ["head_b"]


# --- what is preserved ----------------------------------------------------------------------------
def test_layer_arguments_are_preserved():
    inp = tf_keras.Input((9, 9, 2))
    a = L.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="strided")(inp)
    b = L.Conv2D(2, (3, 2), dilation_rate=2, padding="valid", use_bias=False,
                 activation="tanh", name="dilated")(inp)
    flat = L.Concatenate()([L.Flatten()(a), L.Flatten()(b)])
    out = L.Dense(2, activation="selu", use_bias=False, name="dense")(flat)
    chw = tf_keras.Input((2, 6, 6))
    cf = L.Conv2D(3, 2, data_format="channels_first", strides=(1, 2), name="chfirst")(chw)
    source = _randomize(tf_keras.Model([inp, chw], [out, cf]))

    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, posterior=FROM_WEIGHTS)
    keys = {"Conv2D": ["filters", "kernel_size", "strides", "padding", "data_format",
                       "dilation_rate", "activation", "use_bias"],
            "Dense": ["units", "activation", "use_bias"]}
    for name in ["strided", "dilated", "dense", "chfirst"]:
        src = source.get_layer(name)
        new = bnn.get_layer(name)
        assert isinstance(new, bl.BayesianLayer)
        src_config, new_config = src.get_config(), new.get_config()
        for key in keys[type(src).__name__]:
            assert new_config[key] == src_config[key], (name, key)
        assert new.activation is src.activation or (
            new.activation.__name__ == src.activation.__name__)
    assert bnn.get_layer("chfirst").data_format == "channels_first"
    assert bnn.get_layer("dilated").bias_posterior is None
    assert tuple(bnn.outputs[1].shape) == tuple(source.outputs[1].shape) == (None, 3, 5, 3)
    # the channels_last branch computes exactly the source function at the posterior mean
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 2)).astype("float32")
    # (TF's CPU kernels have no NCHW convolution, so the channels_first branch is not run)
    _assert_outputs_equal(tf_keras.Model(bnn.inputs[0], bnn.outputs[0]),
                          tf_keras.Model(source.inputs[0], source.outputs[0]), x)


def test_multi_input_multi_output_and_skip_connections_survive(zoo, zoo_bnn, zoo_x):
    assert zoo_bnn.input_names == ["img", "tok"]
    assert zoo_bnn.output_names == zoo.output_names
    assert [tuple(t.shape) for t in zoo_bnn.outputs] == [(None, 3), (None, 1)]
    # the Add node still has both branches: the nested block and the projection
    add = zoo_bnn.get_layer("add")
    inbound = [t._keras_history[0].name for t in tf.nest.flatten(add._inbound_nodes[0].call_args)]
    assert inbound == ["inner", "proj"]
    # with means at the source weights the BNN's mean is the source function, exactly
    _assert_outputs_equal(zoo_bnn, zoo, zoo_x)


def test_kept_layers_keep_their_config(zoo, zoo_bnn):
    for name in ["bn", "pool", "flat", "emb", "cat", "drop", "add"]:
        src, new = zoo.get_layer(name), zoo_bnn.get_layer(name)
        assert type(new) is type(src)
        assert new is not src
        assert new.get_config() == src.get_config()


def test_source_model_is_unchanged(zoo, zoo_x):
    def layers_of(model):  # identity, class, name, calls (a replayed source layer gains a node)
        return [(id(l), type(l), l.name, len(l._inbound_nodes))
                for l in model._flatten_layers(include_self=False)]

    layers_before = layers_of(zoo)
    weights_before = [w.copy() for w in zoo.get_weights()]
    config_before = zoo.get_config()
    outputs_before = _source(zoo, zoo_x)

    bnn = tfp_bnn.bayesify(zoo, kl_weight=0.5, posterior=posteriors.MeanField(moped_delta=0.1))
    for w in bnn.weights:  # writing to the copy must not reach the source
        w.assign_add(tf.ones_like(w))

    assert layers_of(zoo) == layers_before
    assert zoo.get_config() == config_before
    for got, want in zip(zoo.get_weights(), weights_before):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_source(zoo, zoo_x), outputs_before):
        np.testing.assert_array_equal(got, want)
    assert not zoo.losses


@pytest.fixture(scope="module")
def shared_bnn():
    inp_a, inp_b = tf_keras.Input((3,)), tf_keras.Input((3,))
    shared = L.Dense(2, name="shared")
    out = L.Add()([shared(inp_a), shared(inp_b)])
    return tfp_bnn.bayesify(tf_keras.Model([inp_a, inp_b], out), kl_weight=1.0)


def test_shared_layer_stays_shared(shared_bnn):
    assert _classes(shared_bnn)["DenseFlipout"] == 1
    assert len(shared_bnn.trainable_weights) == 3
    assert len(shared_bnn.get_layer("shared")._inbound_nodes) == 2


def test_shared_layer_counts_its_kl_once(shared_bnn):
    shared_bnn([np.ones((2, 3), np.float32)] * 2)
    layer = shared_bnn.get_layer("shared")
    np.testing.assert_allclose(float(tf.add_n(shared_bnn.losses)), float(layer.kl_divergence()),
                               rtol=1e-6)


def test_float64_model_stays_float64():
    inp = tf_keras.Input((3,), dtype="float64")
    h = L.Dense(4, activation="relu", dtype="float64", name="a")(inp)
    source = _randomize(tf_keras.Model(inp, L.Dense(2, dtype="float64", name="b")(h)))
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, posterior=FROM_WEIGHTS)
    assert [l.dtype for l in bl.bayesian_layers(bnn)] == ["float64", "float64"]
    x = np.random.default_rng(0).normal(size=(3, 3))
    assert bnn(x).dtype == tf.float64
    assert [l.dtype for l in bnn.losses] == [tf.float64, tf.float64]
    np.testing.assert_array_equal(tfp_bnn.sampling.mean_outputs(bnn, x), source(x))


# --- Keras 3 inputs -------------------------------------------------------------------------------
def _keras3():
    import keras
    assert keras.__version__.startswith("3")
    return keras


def test_keras3_sequential_is_converted_with_weights():
    keras = _keras3()
    source = _randomize(keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5, activation="relu", name="a"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.Dropout(0.3, name="drop"),
        keras.layers.Dense(2, activation="softmax", name="b")], name="k3seq"))
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, posterior=FROM_WEIGHTS)
    assert isinstance(bnn, tf_keras.Model)
    assert _classes(bnn) == {"InputLayer": 1, "DenseFlipout": 2, "BatchNormalization": 1,
                             "Dropout": 1}
    _assert_same_weights(bnn.get_layer("bn"), source.get_layer("bn"))
    np.testing.assert_array_equal(bnn.get_layer("a").kernel_posterior.distribution.loc,
                                  source.get_layer("a").get_weights()[0])
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    _assert_outputs_equal(bnn, source, x)


def test_keras3_functional_is_converted_with_weights():
    keras = _keras3()
    kl = keras.layers
    img = keras.Input((8, 8, 2), name="img")
    vec = keras.Input((3,), name="vec")
    a = kl.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="strided")(img)
    b = kl.Conv2D(3, 3, dilation_rate=2, activation="elu", name="dilated")(img)
    a = kl.Flatten()(kl.MaxPooling2D()(a))
    b = kl.Flatten()(kl.BatchNormalization(name="bn")(b))
    h = kl.Concatenate()([a, b, vec])
    h = kl.Add()([kl.Dense(4, activation="tanh", name="d")(h), kl.Dense(4, name="skip")(h)])
    source = _randomize(keras.Model([img, vec], [kl.Dense(2, name="out")(h), h], name="k3f"))
    bnn = tfp_bnn.bayesify(source, num_train_examples=10, posterior=FROM_WEIGHTS)
    classes = _classes(bnn)
    assert classes["Conv2DFlipout"] == 2 and classes["DenseFlipout"] == 3
    assert classes["BatchNormalization"] == 1 and classes["Add"] == 1
    for name in ["strided", "dilated"]:
        new, src = bnn.get_layer(name).get_config(), source.get_layer(name).get_config()
        for key in ["strides", "padding", "dilation_rate", "activation", "kernel_size"]:
            assert new[key] == src[key], (name, key)
    rng = np.random.default_rng(2)
    x = [rng.normal(size=(3, 8, 8, 2)).astype("float32"), rng.normal(size=(3, 3)).astype("float32")]
    _assert_outputs_equal(bnn, source, x)


# --- bad input: each message names the argument and the value -------------------------------------
@pytest.mark.parametrize("model", ["model.keras", L.Dense(3), None])
def test_not_a_keras_model(model):
    with pytest.raises(ValueError,
                       match=r"model must be a tf_keras or Keras 3 Model\. Received: model="):
        tfp_bnn.bayesify(model, kl_weight=1.0)


def test_model_with_nothing_to_convert():
    model = tf_keras.Sequential([tf_keras.Input((4, 4)), L.Flatten(), L.Dropout(0.1)], name="plain")
    with pytest.raises(ValueError, match=r"model 'plain' has no Dense, Conv or RNN"):
        tfp_bnn.bayesify(model, kl_weight=1.0)


@pytest.mark.parametrize("layers", [lambda layer: False, ["d2_dropout"]])
def test_layers_matching_nothing_warns_and_copies(layers):
    source = tf_keras.Sequential([tf_keras.Input((4,)), L.Dense(3, name="d1"),
                                  L.Dropout(0.2, name="d2_dropout")])
    with pytest.warns(UserWarning, match=r"bayesify: layers=.* matched no Dense/Conv/RNN layer"):
        bnn = tfp_bnn.bayesify(source, kl_weight=1.0, layers=layers)
    assert bl.bayesian_layers(bnn) == []
    np.testing.assert_array_equal(bnn.get_layer("d1").get_weights()[0],
                                  source.get_layer("d1").get_weights()[0])


def test_no_warning_when_something_is_converted():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tfp_bnn.bayesify(_mlp(), kl_weight=1.0, layers="last")


def test_unknown_estimator_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        tfp_bnn.bayesify(_mlp(), estimator="bbb", kl_weight=1.0)
    msg = str(e.value)
    assert "estimator='bbb'" in msg
    for name in ("flipout", "reparameterization", "local_reparameterization"):
        assert repr(name) in msg


def test_unknown_prior_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        tfp_bnn.bayesify(_mlp(), prior="student_t", kl_weight=1.0)
    msg = str(e.value)
    assert "prior='student_t'" in msg
    for name in ("normal", "laplace", "scale_mixture", "learned_normal"):
        assert repr(name) in msg


@pytest.mark.parametrize("prior, arg", [
    ({"class_name": "Normal", "config": {"scale": 0.0}}, "scale=0.0"),
    ({"class_name": "Laplace", "config": {"scale": -1.0}}, "scale=-1.0"),
    ({"class_name": "ScaleMixture", "config": {"scale2": -0.1}}, "scale2=-0.1"),
])
def test_prior_scale_must_be_positive(prior, arg):
    with pytest.raises(ValueError, match=rf"must be a positive number\. Received: {arg}"):
        tfp_bnn.bayesify(_mlp(), prior=prior, kl_weight=1.0)


@pytest.mark.parametrize("value", [0, -0.5, float("nan"), "big"])
def test_kl_weight_must_be_positive(value):
    with pytest.raises(ValueError, match=rf"kl_weight must be a positive number\. "
                                         rf"Received: kl_weight={value!r}"):
        tfp_bnn.bayesify(_mlp(), kl_weight=value)


@pytest.mark.parametrize("value", [0, -10, 2.5, True])
def test_num_train_examples_must_be_positive(value):
    with pytest.raises(ValueError, match=rf"num_train_examples must be a positive integer\. "
                                         rf"Received: num_train_examples={value!r}"):
        tfp_bnn.bayesify(_mlp(), num_train_examples=value)


def test_neither_num_train_examples_nor_kl_weight_says_how_to_pass_n():
    with pytest.raises(ValueError, match=r"pass num_train_examples=N .*kl_weight="):
        tfp_bnn.bayesify(_mlp())


def test_explicit_kl_weight_overrides_num_train_examples():
    bnn = tfp_bnn.bayesify(_mlp(), num_train_examples=100, kl_weight=0.3)
    np.testing.assert_allclose(list(tfp_bnn.kl_weights(bnn).values()), [0.3] * 3, rtol=1e-7)


def test_local_reparameterization_on_a_conv_layer():
    model = tf_keras.Sequential([tf_keras.Input((6, 6, 1)), L.Conv2D(2, 3, name="c"), L.Flatten(),
                                 L.Dense(2)])
    with pytest.raises(ValueError) as e:
        tfp_bnn.bayesify(model, estimator="local_reparameterization", kl_weight=1.0)
    msg = str(e.value)
    assert "'c' (Conv2D)" in msg
    assert "estimator='local_reparameterization'" in msg
    assert "TFP has no local-reparameterization Conv2D layer" in msg


@pytest.mark.parametrize("layers", [["d1", "nope"], "nope"])
def test_layers_names_a_missing_layer(layers):
    with pytest.raises(ValueError,
                       match=r"layers= names a layer that does not exist: 'nope'.*'d1'"):
        tfp_bnn.bayesify(_mlp(), kl_weight=1.0, layers=layers)


def test_layers_of_a_wrong_type():
    with pytest.raises(ValueError, match=r"Received: layers=3"):
        tfp_bnn.bayesify(_mlp(), kl_weight=1.0, layers=3)


# (Transposed, depthwise, separable and grouped convolutions convert: tests/test_applications.py.)
@pytest.mark.parametrize("make, cls, reason, shape", [
    (lambda: L.Conv2D(2, 3, kernel_constraint="max_norm", name="bad"), "Conv2D",
     "kernel_constraint=.*do not support kernel constraints", (6, 6, 4)),
    (lambda: L.Conv2D(2, 3, kernel_regularizer="l2", name="bad"), "Conv2D",
     "kernel_regularizer=.*use the prior", (6, 6, 4)),
    (lambda: L.Conv1D(2, 3, padding="causal", name="bad"), "Conv1D",
     "padding='causal': TFP convolutions support only 'valid' and 'same'", (6, 4)),
    (lambda: L.DepthwiseConv2D(3, depthwise_regularizer="l2", name="bad"), "DepthwiseConv2D",
     "depthwise_regularizer=.*use the prior", (6, 6, 4)),
], ids=["constraint", "regularizer", "causal", "depthwise_regularizer"])
def test_layers_tfp_cannot_express(make, cls, reason, shape):
    inp = tf_keras.Input(shape)
    x = make()(inp)
    out = L.Dense(2, name="head")(L.Flatten()(x))
    source = _randomize(tf_keras.Model(inp, out))
    with pytest.raises(ValueError, match=rf"Cannot convert layer 'bad' \({cls}\): .*{reason}"):
        tfp_bnn.bayesify(source, kl_weight=1.0)
    # excluded by layers= it stays deterministic, with its weights
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, layers=["head"], posterior=FROM_WEIGHTS)
    assert type(bnn.get_layer("bad")) is type(source.get_layer("bad"))
    assert [l.name for l in bl.bayesian_layers(bnn)] == ["head"]
    x_in = np.random.default_rng(0).normal(size=(2,) + shape).astype("float32")
    _assert_outputs_equal(bnn, source, x_in)


def test_time_distributed_dense_becomes_a_bayesian_dense(tmp_path):
    # TimeDistributed(Dense) is Dense on the last axis: it becomes the Bayesian Dense itself,
    # under the wrapper's name, with the wrapped weights; masked sequences keep working.
    inp = tf_keras.Input((5, 3))
    h = L.Masking(0.0)(inp)
    h = L.LSTM(4, return_sequences=True, name="lstm")(h)
    out = L.TimeDistributed(L.Dense(2), name="td")(h)
    source = _randomize(tf_keras.Model(inp, out))
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, posterior=FROM_WEIGHTS, layers=["td"])
    assert type(bnn.get_layer("td")).__name__ == "DenseFlipout"
    assert type(bnn.get_layer("lstm")).__name__ == "LSTM"
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    x[1, 3:] = 0.0  # padded steps
    np.testing.assert_allclose(tfp_bnn.sampling.mean_outputs(bnn, x), source(x), rtol=1e-5,
                               atol=1e-6)
    bnn.save(tmp_path / "m.keras")
    loaded = tf_keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(tfp_bnn.sampling.mean_outputs(loaded, x),
                               tfp_bnn.sampling.mean_outputs(bnn, x), rtol=1e-6)
    pred = tfp_bnn.predict(bnn, x, num_samples=20, seed=0)
    assert pred.mean_logits.shape == (2, 5, 2) and np.all(pred.logit_variance > 0)


def test_keras3_time_distributed_dense_after_a_masked_lstm():
    k3 = _keras3()
    inp = k3.Input((5, 3))
    h = k3.layers.LSTM(4, return_sequences=True)(k3.layers.Masking(0.0)(inp))
    source = k3.Model(inp, k3.layers.TimeDistributed(k3.layers.Dense(2), name="td")(h))
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, posterior=FROM_WEIGHTS)
    assert [type(l).__name__ for l in bnn.layers[1:]] == ["Masking", "LSTMFlipout",
                                                          "DenseFlipout"]
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
    x[1, 3:] = 0.0
    np.testing.assert_allclose(tfp_bnn.sampling.mean_outputs(bnn, x), np.asarray(source(x)),
                               rtol=1e-5, atol=1e-6)
