"""The contract every tfp_bnn Bayesian layer keeps (cf. Keras testing/test_case.py run_layer_test).

`run_layer_test` checks, for one layer class and constructor arguments:

1. the output shape of a forward pass, and of a symbolic (Functional) call;
2. the trainable weights (count and names, in order) and the single non-trainable `kl_weight`;
3. the number of losses after a forward pass (one KL per Bayesian weight tensor, not one per
   call), each ``kl_weight * KL(q || p)``;
4. ``get_config`` is plain JSON and ``from_config`` rebuilds an identical config;
5. a ``.keras`` save/load under ``tmp_path`` restores identical variables and identical outputs
   under a fixed seed, on the plain TFP path and under `tfp_bnn.sampling.mc_sampling`;
6. the layer shared by two branches of one model adds its KL terms once per pass;
7. one gradient step on ``mse + sum(losses)`` changes every trainable weight and leaves
   ``kl_weight`` alone.
"""
import json

import numpy as np

import tfp_bnn
from tfp_bnn._keras import tf, tf_keras


def _short(variable):
    """'dense_flipout/kernel_posterior_loc:0' -> 'kernel_posterior_loc'."""
    return variable.name.split("/")[-1].split(":")[0]


def assert_same_variables(model, loaded):
    """Layer by layer, the same weights (by short name, in order) with identical values.

    Compared per layer because tf_keras's .keras loader builds layers outside their name scope
    ('kernel_posterior_loc:0' instead of 'dense/kernel_posterior_loc:0').
    """
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    for layer, other in zip(model.layers, loaded.layers):
        assert type(other) is type(layer)
        assert [_short(w) for w in other.weights] == [_short(w) for w in layer.weights], layer.name
        for w, v in zip(layer.weights, other.weights):
            np.testing.assert_array_equal(v.numpy(), w.numpy(), err_msg=f"{layer.name}/{w.name}")


def run_layer_test(layer_cls, init_kwargs, input_shape, expected_output_shape,
                   expected_trainable_weights, expected_num_losses, tmp_path, seed=(3, 4)):
    """Run the layer contract; returns the built layer for further checks.

    Args:
        layer_cls: a tfp_bnn Bayesian layer class.
        init_kwargs: constructor arguments; must include ``kl_weight``.
        input_shape: full input shape, batch included.
        expected_output_shape: full output shape.
        expected_trainable_weights: short names of the trainable weights, in order.
        expected_num_losses: KL terms the layer adds per forward pass.
        tmp_path: pytest's tmp_path, for the saved file.
        seed: stateless seed for the `mc_sampling` comparison.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=input_shape).astype("float32")
    kl_weight = init_kwargs["kl_weight"]

    # 1. forward pass
    layer = layer_cls(**init_kwargs)
    y = layer(x)
    assert tuple(y.shape) == tuple(expected_output_shape)
    assert np.all(np.isfinite(y.numpy()))

    # 2. weights
    assert [_short(w) for w in layer.trainable_weights] == list(expected_trainable_weights)
    assert [_short(w) for w in layer.non_trainable_weights] == ["kl_weight"]
    np.testing.assert_allclose(layer.kl_weight.numpy(), kl_weight, rtol=1e-7)

    # 3. losses: one per Bayesian tensor, replaced (not accumulated) by the next call
    assert len(layer.losses) == expected_num_losses
    layer(x)
    assert len(layer.losses) == expected_num_losses
    for loss in layer.losses:
        assert loss.shape == () and np.isfinite(loss.numpy())
    if layer.prior.analytic_kl:
        np.testing.assert_allclose(float(tf.add_n(layer.losses)),
                                   kl_weight * float(layer.kl_divergence()), rtol=1e-6)

    # 4. config round trip, JSON-clean
    config = layer.get_config()
    json.dumps(config)  # plain values only: no functions, no marshalled bytecode
    clone = layer_cls.from_config(config)
    assert type(clone) is layer_cls
    assert clone.get_config() == config
    assert tuple(clone(x).shape) == tuple(expected_output_shape)
    revived = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
    assert type(revived) is layer_cls and revived.get_config() == config

    # 5. .keras save/load: same variables, same outputs under a fixed seed
    inputs = tf_keras.Input(batch_shape=input_shape)
    model = tfp_bnn.BayesianModel(inputs, layer(inputs))
    # The symbolic call infers shapes through mean_call: it must agree with the real pass.
    assert tuple(model.output_shape) == tuple(expected_output_shape)
    path = str(tmp_path / f"{layer.name}.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert_same_variables(model, loaded)
    loaded_layer = loaded.layers[-1]
    assert type(loaded_layer) is layer_cls
    assert loaded_layer.get_config() == config
    tf.random.set_seed(11)
    y_plain = model(x)
    tf.random.set_seed(11)
    np.testing.assert_array_equal(loaded(x), y_plain)
    stateless = tf.constant(seed, tf.int64)
    with tfp_bnn.sampling.mc_sampling(1, seed=stateless):
        y_mc = model(x)
    with tfp_bnn.sampling.mc_sampling(1, seed=stateless):
        np.testing.assert_array_equal(loaded(x), y_mc)
    with tfp_bnn.sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_array_equal(loaded(x), model(x))

    # 6. shared by two branches: one posterior, so its KL enters the pass once
    a, b = tf_keras.Input(batch_shape=input_shape), tf_keras.Input(batch_shape=input_shape)
    shared = tf_keras.Model([a, b], [layer(a), layer(b)])
    shared([x, x])
    assert len(shared.losses) == expected_num_losses
    if layer.prior.analytic_kl:
        np.testing.assert_allclose(float(tf.add_n(shared.losses)),
                                   kl_weight * float(layer.kl_divergence()), rtol=1e-6)

    # 7. one training step moves every trainable weight, never kl_weight
    before = [w.numpy() for w in layer.trainable_weights]
    target = tf.zeros_like(y)
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_mean(tf.square(out - target)) + tf.add_n(layer.losses)
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None for g in grads)
    tf_keras.optimizers.SGD(0.1).apply_gradients(zip(grads, layer.trainable_weights))
    for w, old in zip(layer.trainable_weights, before):
        assert not np.allclose(w.numpy(), old), f"{w.name} did not change"
    np.testing.assert_allclose(layer.kl_weight.numpy(), kl_weight, rtol=1e-7)
    return layer
