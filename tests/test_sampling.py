"""tfp_bnn.sampling, the stochastic-layer protocol of every method: each method's layers report
themselves through `stochastic_layers`; MEAN mode is deterministic and equals the posterior-mean
computation done another way; SAMPLE mode with a seed is reproducible and does not depend on the
code path a trace took; `gaussian_matmul`'s two paths have the closed-form moments."""
import importlib

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import matmuls, options, posteriors, sampling
from tfp_bnn._keras import tf, tf_keras

PREDICT = importlib.import_module("tfp_bnn.predict")  # the module (tfp_bnn.predict is the function)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(24, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0).astype(np.int64)
WIDE = posteriors.MeanField(init_scale=0.3, bayesian_bias=True)


def _mlp(seed=0, hidden=8):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(hidden, "tanh"),
                                tf_keras.layers.Dense(3)], name=f"mlp{seed}")


def _mean_copy(source, bnn):
    """The source architecture with every Bayesian layer's posterior means as its weights."""
    det = tf_keras.models.clone_model(source)
    det.set_weights(source.get_weights())
    for layer in tfp_bnn.layers.bayesian_layers(bnn):
        det.get_layer(layer.name).set_weights(
            [q.distribution.loc.numpy() for _, q, _ in layer.weight_posteriors()])
    return det


def _vi(source):
    bnn = tfp_bnn.bayesify(source, kl_weight=1.0, posterior=WIDE)
    return bnn, _mean_copy(source, bnn)


def _vi_dense():
    return _vi(_mlp()) + ({"DenseFlipout"},)


def _vi_conv():
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([
        tf_keras.Input((4,)), tf_keras.layers.Reshape((4, 1)),
        tf_keras.layers.Conv1D(2, 2, activation="tanh"), tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(3)], name="cnn")
    return _vi(source) + ({"Conv1DFlipout", "DenseFlipout"},)


def _vi_lstm():
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([
        tf_keras.Input((4,)), tf_keras.layers.Reshape((2, 2)), tf_keras.layers.LSTM(3),
        tf_keras.layers.Dense(3)], name="rnn")
    return _vi(source) + ({"LSTMFlipout", "DenseFlipout"},)


def _mc_dropout():
    source = _mlp()
    return tfp_bnn.mc_dropout(source, rate=0.3), source, {"MCDropout"}


def _ensemble():
    members = [_mlp(1), _mlp(2)]
    model = tfp_bnn.baselines.ensemble_model(members)

    def mean(x):
        return (members[0](x) + members[1](x)) / 2.0

    return model, mean, {"EnsembleMembers"}


def _swag():
    source = _mlp()
    swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=3)
    for _ in range(4):
        for w in source.trainable_weights:
            w.assign(w + 0.3 * tf.random.normal(w.shape))
        swag.collect(source)
    return swag.as_model(scale=1.0), swag.sample_model(scale=0.0), {"SWAGNoise", "SWAGDense"}


def _laplace(hessian):
    def build():
        source = _mlp()
        source.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        la = tfp_bnn.laplace(source, X, Y, hessian=hessian, prior_precision=0.5)
        return la.as_model(), source, {"LaplaceDense"}
    return build


METHODS = {"vi_dense": _vi_dense, "vi_conv": _vi_conv, "vi_lstm": _vi_lstm,
           "mc_dropout": _mc_dropout, "ensemble": _ensemble, "swag": _swag,
           "laplace_diag": _laplace("diag"), "laplace_kron": _laplace("kron")}


@pytest.fixture(scope="module", params=list(METHODS))
def method(request):
    model, mean, classes = METHODS[request.param]()
    return request.param, model, mean, classes


def test_every_method_reports_its_stochastic_layers(method):
    name, model, _, classes = method
    found = sampling.stochastic_layers(model)
    assert {type(l).__name__ for l in found} == classes, name
    assert all(isinstance(l, sampling.StochasticLayer) for l in found)
    assert sampling.is_stochastic(model) and PREDICT.is_stochastic(model)
    assert not sampling.is_stochastic(_mlp()) and sampling.stochastic_layers(_mlp()) == []


def test_mean_mode_is_deterministic_and_equals_the_posterior_mean(method):
    name, model, mean, _ = method
    a = sampling.mean_outputs(model, X).numpy()
    b = sampling.mean_outputs(model, X).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, np.asarray(mean(X)), rtol=1e-5, atol=1e-5, err_msg=name)


def test_seeded_samples_are_reproducible_whatever_the_trace(method):
    name, model, _, _ = method
    s = 2 if name == "ensemble" else 6
    seed = tf.constant([3, 0], tf.int64)

    def draw(fn):
        return fn(tf.constant(X[:5]), seed).numpy()

    static = tf.function(lambda x, sd: sampling.sample_outputs(model, x, s, sd))
    # Unknown batch: a Dense layer's path is picked per regime of B (tf.switch_case) or by a
    # tf.cond; the draw indices are reserved before the choice, so the numbers are the same.
    dynamic = tf.function(lambda x, sd: sampling.sample_outputs(model, x, s, sd),
                          input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([2], tf.int64)])
    a, b, c = draw(static), draw(static), draw(dynamic)
    assert a.shape == (s, 5, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.ptp(a, axis=0).max() > 1e-3, name  # the S samples differ
    if name != "ensemble":  # an ensemble's sample s is member s mod M, whatever the seed
        other = static(tf.constant(X[:5]), tf.constant([4, 0], tf.int64)).numpy()
        assert not np.allclose(other, a)


def test_mode_accepts_the_enum_and_its_string():
    for mode in ("mean", options.Mode.MEAN):
        with sampling.mc_sampling(1, mode=mode) as ctx:
            assert ctx.mode is options.Mode.MEAN and sampling.current() is ctx
    assert sampling.current() is None
    with pytest.raises(ValueError, match=r"Unknown mode: mode='median'"):
        with sampling.mc_sampling(1, mode="median"):
            pass


def test_building_a_functional_model_infers_shapes_through_the_mean_path(monkeypatch):
    """Keras's shape-inference call takes mean_call (no draws, no KL); a real call still
    samples."""
    def refuse(self, inputs, **kwargs):
        raise AssertionError("plain_call during shape inference")

    layer = tfp_bnn.layers.DenseFlipout(3, kl_weight=0.1)
    monkeypatch.setattr(type(layer), "plain_call", refuse)
    inputs = tf_keras.Input((4,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(layer(inputs)))
    assert model.output_shape == (None, 2) and not layer.losses
    with pytest.raises(AssertionError, match="plain_call during shape inference"):
        model(X[:2])
    monkeypatch.undo()
    out = np.stack([model(X[:2]).numpy() for _ in range(2)])
    assert np.ptp(out, axis=0).max() > 0 and len(model.losses) == 1


# ---------------------------------------------------------------------------------------------
# gaussian_matmul: both paths have the closed-form moments; only weight space shares a kernel
# ---------------------------------------------------------------------------------------------
IN, OUT, S = 6, 2, 20000


def _gaussian_layer():
    rng = np.random.default_rng(1)
    loc, scale = rng.normal(size=(IN, OUT)), rng.uniform(0.2, 0.6, size=(IN, OUT))
    b_loc, b_scale = rng.normal(size=OUT), rng.uniform(0.2, 0.6, size=OUT)
    return [np.float32(v) for v in (loc, scale, b_loc, b_scale)]


@pytest.mark.parametrize("path", ["output", "weight"])
def test_gaussian_matmul_moments_in_both_spaces(path):
    loc, scale, b_loc, b_scale = _gaussian_layer()
    x = np.random.default_rng(2).normal(size=(3, IN)).astype(np.float32)
    threshold = matmuls.output_space_threshold(IN, OUT)
    rows = (0, threshold) if path == "output" else (threshold, None)

    @tf.function(input_signature=[tf.TensorSpec([None, IN])])
    def run(tiled):
        with sampling.mc_sampling(S, seed=tf.constant([5, 6], tf.int64), rows=rows) as ctx:
            kernel = matmuls.Gaussian(tf.constant(loc), lambda: tf.constant(scale))
            bias = matmuls.Gaussian(tf.constant(b_loc), lambda: tf.constant(b_scale))
            return matmuls.gaussian_matmul(tiled, ctx, kernel, bias)

    graph_ops = {op.type for op in run.get_concrete_function().graph.get_operations()}
    assert ("BatchMatMulV2" in graph_ops) == (path == "weight")
    y = run(tf.constant(np.tile(x, (S, 1)))).numpy().reshape(S, 3, OUT)
    mean = x @ loc + b_loc
    var = (x ** 2) @ scale ** 2 + b_scale ** 2
    z = (y.mean(0) - mean) / np.sqrt(var / S)
    assert np.abs(z).max() < 4.5, z
    np.testing.assert_allclose(y.var(0), var, rtol=0.05)
    # Covariance of two examples in one sample: weight space shares W_s and b_s,
    # output space draws every row on its own.
    cov = np.mean((y[:, 0] - y[:, 0].mean(0)) * (y[:, 1] - y[:, 1].mean(0)), axis=0)
    shared = (x[0] * x[1]) @ scale ** 2 + b_scale ** 2
    expected = shared if path == "weight" else np.zeros(OUT)
    np.testing.assert_allclose(cov, expected, atol=4 * np.sqrt(var[0] * var[1] / S).max())


def test_output_space_threshold_cost_model():
    # Narrow layers switch near their input width, wide ones far below it.
    assert matmuls.output_space_threshold(4, 64) == 5
    assert matmuls.output_space_threshold(64, 64) == 38
    assert matmuls.output_space_threshold(784, 128) < 784 / 4
    assert matmuls.output_space_threshold(1, 1) >= 1


@pytest.mark.parametrize("seed", [sampling.FRESH, None])
def test_unseeded_draws_leave_every_random_op_to_a_fresh_seed(seed):
    # Served graphs draw with seed=FRESH; TF seeds an op freshly per kernel instance only when
    # both op seeds are 0. A non-zero seed2 alone (the sign stream's offset, once) fixed a stream
    # that every process and every sign op replayed.
    tf.random.set_seed(None)  # no global seed (an earlier test may have set one)

    def draws():
        with sampling.mc_sampling(4, seed=seed) as ctx:
            return ctx.normal([3, 2], tf.float32), ctx.normal([3], tf.float32, large=False), \
                ctx.rademacher([3, 5], tf.float32, ctx.next_index())

    graph = tf.function(draws).get_concrete_function().graph
    ops = [op for op in graph.get_operations() if op.type.startswith("Random")]
    assert {op.type for op in ops} == {"RandomUniform", "RandomStandardNormal",
                                       "RandomUniformInt"}
    assert [(op.get_attr("seed"), op.get_attr("seed2")) for op in ops] == [(0, 0)] * len(ops)
