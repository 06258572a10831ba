"""tfp_bnn.ops: Keras 3 operations in Functional graphs rebuilt as TensorFlow in tf_keras.

Each operation of the table gives Keras 3's numbers in the rebuilt model; the rebuilt model
saves and loads (`.keras`, no custom objects: the Operation layer's config is JSON); an
operation outside the table and a Keras 3 activation tf_keras lacks behave as documented.
"""
import json

import keras
import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import ops, replay, sampling
from tfp_bnn._keras import tf, tf_keras

kops = keras.ops
X = np.random.default_rng(0).normal(size=(3, 4, 5)).astype("float32")

# name -> f(x) on a Keras 3 symbolic tensor of shape (None, 4, 5)
CASES = {
    "arithmetic": lambda x: (x + 1.0) * 0.5 - x / 3.0 + 2.0 * x - (-x) ** 2,
    "compare_where": lambda x: kops.where(x > 0.1, x, kops.zeros_like(x)) + kops.cast(
        kops.logical_and(x < 1.0, x >= -1.0), "float32"),
    "floordiv_mod": lambda x: kops.floor_divide(x, 0.3) + kops.mod(x, 0.7),
    "unary": lambda x: kops.abs(x) + kops.sqrt(kops.square(x) + 1.0) + kops.exp(-kops.abs(x))
    + kops.log1p(kops.abs(x)) + kops.tanh(x) + kops.sign(x) + kops.floor(x) + kops.round(x),
    "reductions": lambda x: kops.concatenate([
        kops.mean(x, axis=1), kops.sum(x, axis=1), kops.max(x, axis=1), kops.min(x, axis=1),
        kops.std(x, axis=1), kops.var(x, axis=1), kops.logsumexp(x, axis=1),
        kops.prod(x, axis=1)], axis=-1),
    "keepdims": lambda x: x - kops.mean(x, axis=-1, keepdims=True),
    "shape": lambda x: kops.reshape(kops.transpose(kops.expand_dims(x, 1), (0, 1, 3, 2)),
                                    (-1, 20)),
    "squeeze_stack": lambda x: kops.squeeze(kops.stack([x[:, :1], x[:, 1:2]], axis=1), axis=2),
    "getitem": lambda x: x[:, 0] + kops.sum(x[..., 1:3]) + kops.sum(x[:, None, 2, ::2]),
    "matmul_einsum": lambda x: kops.matmul(x, kops.transpose(x, (0, 2, 1)))
    + kops.einsum("bij,bkj->bik", x, x),
    "clip_min_max": lambda x: kops.clip(x, -0.5, 0.5) + kops.maximum(x, 0.2)
    + kops.minimum(x, -0.2),
    "moveaxis_swapaxes_flip": lambda x: kops.moveaxis(x, 1, 2) + kops.swapaxes(
        kops.flip(x, axis=1), 1, 2),
    "tile_repeat_pad": lambda x: kops.concatenate([kops.tile(x, (1, 2, 1)),
                                                   kops.repeat(x, 2, axis=1)], axis=-1)[:, :, :7]
    + kops.pad(x, ((0, 0), (4, 0), (1, 1)))[:, :8, :7],
    "activations": lambda x: kops.relu(x) + kops.relu6(x) + kops.sigmoid(x) + kops.gelu(x)
    + kops.gelu(x, approximate=False) + kops.silu(x) + kops.hard_sigmoid(x) + kops.hard_silu(x)
    + kops.leaky_relu(x) + kops.elu(x) + kops.selu(x) + kops.softplus(x) + kops.softsign(x)
    + kops.softmax(x) + kops.log_softmax(x, axis=1) + kops.log_sigmoid(x) + kops.celu(x)
    + kops.hard_tanh(x) + kops.soft_shrink(x) + kops.hard_shrink(x) + kops.tanh_shrink(x)
    + kops.squareplus(x) + kops.sparse_plus(x),
    "normalize_rsqrt_erf": lambda x: kops.normalize(x) + kops.rsqrt(kops.square(x) + 1.0)
    + kops.erf(x),
    "cumsum_tril": lambda x: kops.cumsum(x, axis=1)[:, :, :4] + kops.tril(x[:, :, :4])
    + kops.triu(x[:, :, :4], k=1) + kops.tril(x[:, :, :4], k=-1),
    "moments": lambda x: kops.concatenate(list(keras.ops.moments(x, axes=[1])), axis=-1),
    "broadcast_onehot": lambda x: kops.broadcast_to(x[:, :1], (3, 4, 5)) + kops.one_hot(
        kops.argmax(x, axis=-1), 5),
}


def _model(name):
    inp = keras.Input((4, 5), batch_size=3)
    return keras.Model(inp, CASES[name](inp))


@pytest.mark.parametrize("name", list(CASES))
def test_operation_gives_keras3_numbers(name):
    source = _model(name)
    copy = replay.replay(source)
    assert any(type(l) is ops.Operation for l in copy.layers)
    np.testing.assert_allclose(copy(X).numpy(), np.asarray(source(X)), rtol=1e-5, atol=1e-5)


def test_rebuilt_operations_save_and_load_as_json(tmp_path):
    copy = replay.replay(_model("getitem"))
    for layer in copy.layers:
        json.dumps(layer.get_config())  # slices, Ellipsis and None as plain JSON
    copy.save(tmp_path / "ops.keras")
    loaded = tf_keras.models.load_model(tmp_path / "ops.keras")
    np.testing.assert_allclose(loaded(X).numpy(), copy(X).numpy(), rtol=1e-6)


def test_bayesify_a_keras3_ops_model_saves_loads_and_trains(tmp_path):
    inp = keras.Input((4, 5))
    h = keras.layers.Dense(6, activation="hard_silu", name="d")(inp * 0.5 + 1.0)
    h = kops.concatenate([kops.mean(h, axis=1), kops.max(h, axis=1)], axis=-1)
    source = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(h))
    bnn = tfp_bnn.bayesify(source, kl_weight=0.1,
                           posterior=tfp_bnn.posteriors.MeanField(from_weights=True))
    np.testing.assert_allclose(np.asarray(sampling.mean_outputs(bnn, X)), np.asarray(source(X)),
                               rtol=1e-5, atol=1e-6)
    bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy())
    assert np.isfinite(bnn.train_on_batch(X, np.array([0, 1, 2]))[0])
    bnn.save(tmp_path / "bnn.keras")
    loaded = tf_keras.models.load_model(tmp_path / "bnn.keras")
    np.testing.assert_allclose(np.asarray(sampling.mean_outputs(loaded, X)),
                               np.asarray(sampling.mean_outputs(bnn, X)), rtol=1e-6)


def test_an_operation_outside_the_table_names_it_and_what_to_do():
    inp = keras.Input((4, 5))
    source = keras.Model(inp, keras.layers.Dense(2)(kops.cumprod(inp, axis=1)))
    with pytest.raises(ValueError, match=r"Keras 3 operation numpy.Cumprod \(node 'cumprod"
                                         r".*not translate.*tfp_bnn.register_layer"):
        tfp_bnn.bayesify(source, kl_weight=0.1, task="regression")


def test_keras3_activations_keep_their_keras3_meaning():
    x = np.linspace(-4, 4, 17).astype("float32")
    for name in ("hard_sigmoid", "hard_silu", "hard_swish", "leaky_relu", "relu6", "silu",
                 "gelu", "celu", "squareplus", "sparse_plus", "log_sigmoid"):
        inp = keras.Input((17,))
        source = keras.Model(inp, keras.layers.Activation(name)(inp))
        copy = replay.replay(source)
        np.testing.assert_allclose(copy(x[None]).numpy(), np.asarray(source(x[None])),
                                   rtol=1e-5, atol=1e-6, err_msg=name)
    # tf_keras's own hard_sigmoid is another function: a tf_keras model keeps it
    assert ops.activation("hard_sigmoid") == "hard_sigmoid"
    assert ops.activation("hard_sigmoid", keras3=True) == "tfp_bnn>hard_sigmoid"
    with pytest.raises(ValueError, match=r"Unknown activation 'no_such_act'"):
        ops.activation("no_such_act", keras3=True)


def test_table_keys_are_real_keras3_operations():
    import keras.src.ops as kops_src
    for key in ops.TABLE:
        module, cls = key.split(".")
        assert hasattr(getattr(kops_src, module), cls), key
