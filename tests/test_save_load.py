"""Save/load (.keras, SavedModel) over estimator x prior: same posterior, prior, kl_weight, outputs.

And no marshalled Python bytecode in what is written (TFP's own layers marshal lambdas).
"""
import json
import re
import zipfile

import numpy as np
import pytest

import tfp_bnn
from layer_contract import assert_same_variables
from tfp_bnn import layers as bl
from tfp_bnn import posteriors, priors
from tfp_bnn._keras import tf, tf_keras, tfp

L = tf_keras.layers
ESTIMATORS = ["flipout", "reparameterization", "local_reparameterization"]
PRIORS = {"normal": priors.Normal(loc=0.1, scale=0.5), "laplace": priors.Laplace(scale=0.3),
          "scale_mixture": priors.ScaleMixture(pi=0.4, scale1=1.5, scale2=0.01),
          "learned_normal": priors.LearnedNormal(init_scale=0.6)}
SEED = tf.constant([7, 8], tf.int64)
X = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype("float32")

_BASE64_BLOB = re.compile(r"^[A-Za-z0-9+/=\n]{64,}$")


def assert_no_bytecode(config):
    """No serialised Python function anywhere in a (JSON) config."""
    def walk(obj, path):
        if isinstance(obj, dict):
            assert obj.get("class_name") != "__lambda__", path
            for key, value in obj.items():
                assert key not in ("function_type", "function", "module_lambda"), f"{path}/{key}"
                assert not key.endswith("_fn"), f"{path}/{key}"
                walk(value, f"{path}/{key}")
        elif isinstance(obj, (list, tuple)):
            assert "lambda" not in obj and "function" not in obj, path
            for i, value in enumerate(obj):
                walk(value, f"{path}[{i}]")
        elif isinstance(obj, str):
            assert not _BASE64_BLOB.match(obj), f"{path}: {obj[:40]}..."
    walk(config, "")


def test_bytecode_check_catches_tfp_lambdas():
    """The check above is not vacuous: a plain TFP layer's config fails it, key names aside."""
    config = json.loads(json.dumps(tf_keras.layers.serialize(tfp.layers.DenseFlipout(3)),
                                   default=str))
    with pytest.raises(AssertionError, match="_fn"):
        assert_no_bytecode(config)
    inner = config["config"]
    for key in [k for k in inner if k.endswith("_fn")]:
        inner[key.replace("_fn", "_renamed")] = inner.pop(key)
    with pytest.raises(AssertionError, match=r"posterior_renamed"):
        assert_no_bytecode(config)


def _source():
    rng = np.random.default_rng(1)
    model = tf_keras.Sequential([tf_keras.Input((6, 6, 1)), L.Flatten(name="flat"),
                                 L.Dense(4, activation="relu", name="hidden"),
                                 L.Dense(2, name="out")], name="src")
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    return model


def _bnn(estimator, prior):
    bnn = tfp_bnn.bayesify(_source(), estimator=estimator, prior=PRIORS[prior],
                           num_train_examples=40,
                           posterior=posteriors.MeanField(from_weights=True, bayesian_bias=True))
    # move every posterior (and learned prior) off its init, and the KL weight off its base
    for layer in bl.bayesian_layers(bnn):
        for w in layer.trainable_weights:
            w.assign_add(tf.random.normal(w.shape, stddev=0.1))
    tfp_bnn.set_kl_weight(bnn, 0.37)
    return bnn


def _assert_round_trip(bnn, loaded, x=None):
    x = X if x is None else x
    assert type(loaded) is tfp_bnn.BayesianModel
    assert_same_variables(bnn, loaded)
    pairs = list(zip(bl.bayesian_layers(bnn), bl.bayesian_layers(loaded)))
    assert pairs
    for layer, other in pairs:
        assert type(other) is type(layer)
        assert other.prior == layer.prior and type(other.prior) is type(layer.prior)
        assert other.posterior == layer.posterior
        assert other.get_config() == layer.get_config()
        assert other.base_kl_weight == layer.base_kl_weight == 1 / 40
        np.testing.assert_allclose(other.kl_weight.numpy(), 0.37 / 40, rtol=1e-6)
    # identical outputs and losses under a fixed seed: TFP's own path ...
    tf.random.set_seed(3)
    want = bnn(x)
    want_losses = [l.numpy() for l in bnn.losses]
    tf.random.set_seed(3)
    np.testing.assert_array_equal(loaded(x), want)
    np.testing.assert_array_equal([l.numpy() for l in loaded.losses], want_losses)
    # ... stateless Monte Carlo and the posterior mean
    with tfp_bnn.sampling.mc_sampling(1, seed=SEED):
        want = bnn(x)
    with tfp_bnn.sampling.mc_sampling(1, seed=SEED):
        np.testing.assert_array_equal(loaded(x), want)
    np.testing.assert_array_equal(tfp_bnn.sampling.mean_outputs(loaded, x),
                                  tfp_bnn.sampling.mean_outputs(bnn, x))


@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_keras_file_round_trip(estimator, prior, tmp_path):
    bnn = _bnn(estimator, prior)
    path = tmp_path / "bnn.keras"
    bnn.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    assert_no_bytecode(config)
    loaded = tf_keras.models.load_model(path)
    _assert_round_trip(bnn, loaded)


# SavedModel tracing costs about a second per Bayesian layer on 2 cores, so these cover every
# estimator and every prior (and a conv layer), not every pair; the .keras tests cover every pair.
@pytest.mark.parametrize("prior, layer_cls, input_shape", [
    ("normal", bl.DenseFlipout, (3, 5)),
    ("laplace", bl.DenseReparameterization, (3, 5)),
    ("scale_mixture", bl.DenseLocalReparameterization, (3, 5)),
    ("learned_normal", bl.Conv2DFlipout, (3, 6, 6, 1)),
])
def test_savedmodel_round_trip(prior, layer_cls, input_shape, tmp_path):
    layer = layer_cls(2, *([3] if "Conv" in layer_cls.__name__ else []), prior=PRIORS[prior],
                      kl_weight=1 / 40, posterior=posteriors.MeanField(bayesian_bias=True))
    inp = tf_keras.Input(input_shape[1:])
    bnn = tfp_bnn.BayesianModel(inp, layer(inp))
    for w in layer.trainable_weights:
        w.assign_add(tf.random.normal(w.shape, stddev=0.1))
    tfp_bnn.set_kl_weight(bnn, 0.37)
    path = str(tmp_path / "bnn_savedmodel")
    bnn.save(path)  # a directory: the TF SavedModel format
    with open(f"{path}/keras_metadata.pb", "rb") as f:
        metadata = f.read()
    assert b"__lambda__" not in metadata and b"function_type" not in metadata
    assert f"tfp_bnn>{layer_cls.__name__}".encode() in metadata
    loaded = tf_keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=input_shape).astype("float32")
    _assert_round_trip(bnn, loaded, x)
