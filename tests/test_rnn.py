"""Bayesian LSTM/GRU/SimpleRNN: one draw per sequence, closed-form KL, Keras RNN behaviour,
serialisation, bayesify, the vectorised MC path and the TFP-free export."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import layers as bl
from tfp_bnn import rnn, sampling
from tfp_bnn._keras import tf, tf_keras

from layer_contract import assert_same_variables, run_layer_test

X = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
TRAINABLE = ["kernel_posterior_loc", "kernel_posterior_untransformed_scale",
             "recurrent_kernel_posterior_loc", "recurrent_kernel_posterior_untransformed_scale",
             "bias_posterior_loc"]
CLASSES = {("LSTM", "flipout"): bl.LSTMFlipout, ("LSTM", "reparameterization"):
           bl.LSTMReparameterization, ("GRU", "flipout"): bl.GRUFlipout,
           ("GRU", "reparameterization"): bl.GRUReparameterization,
           ("SimpleRNN", "flipout"): bl.SimpleRNNFlipout,
           ("SimpleRNN", "reparameterization"): bl.SimpleRNNReparameterization}


# ---------------------------------------------------------------------------------------------
# A NumPy reference recurrence (Keras' gate layouts)
# ---------------------------------------------------------------------------------------------
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _reference(kind, x, kernels, recurrents, bias, units, reset_after=True):
    """Outputs [B, T, U] with example b using kernels[b], recurrents[b] at every step."""
    batch, steps, _ = x.shape
    h, c = np.zeros((batch, units)), np.zeros((batch, units))
    outs = []
    for t in range(steps):
        new_h = np.empty_like(h)
        for b in range(batch):
            xw, hr = x[b, t] @ kernels[b], h[b] @ recurrents[b]
            if kind == "SimpleRNN":
                new_h[b] = np.tanh(xw + hr + bias)
            elif kind == "LSTM":
                i, f, g, o = np.split(xw + hr + bias, 4)
                c[b] = _sigmoid(f) * c[b] + _sigmoid(i) * np.tanh(g)
                new_h[b] = _sigmoid(o) * np.tanh(c[b])
            else:
                u = units
                bx, bh = (bias[0], bias[1]) if reset_after else (bias, np.zeros_like(bias))
                x_z, x_r, x_h = np.split(xw + bx, 3)
                h_z, h_r, h_h = np.split(hr + bh, 3)
                z, r = _sigmoid(x_z + h_z), _sigmoid(x_r + h_r)
                rec_h = r * h_h if reset_after else (r * h[b]) @ recurrents[b][:, 2 * u:]
                new_h[b] = z * h[b] + (1 - z) * np.tanh(x_h + rec_h)
        h = new_h
        outs.append(h.copy())
    return np.stack(outs, axis=1)


def _params(layer):
    loc = lambda q: q.distribution.loc.numpy().astype(np.float64)  # noqa: E731
    sd = lambda q: q.distribution.scale.numpy().astype(np.float64)  # noqa: E731
    return (loc(layer.kernel_posterior), sd(layer.kernel_posterior),
            loc(layer.recurrent_kernel_posterior), sd(layer.recurrent_kernel_posterior),
            loc(layer.bias_posterior))


KINDS = [("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False}), ("SimpleRNN", {})]


@pytest.mark.parametrize("estimator", ["flipout", "reparameterization"])
@pytest.mark.parametrize("kind,extra", KINDS)
def test_one_draw_per_call_reused_at_every_step(kind, extra, estimator, monkeypatch):
    """Injected noise: the output equals a NumPy recurrence with ONE kernel per sequence
    (Flipout: mu + dW * outer(s_b, r_b), signs fixed across steps); noise is drawn per call."""
    layer = CLASSES[kind, estimator](5, return_sequences=True, kl_weight=1.0,
                                     posterior={"init_scale": 0.3}, **extra)
    layer(X)  # build
    # A non-zero bias: the bias layout is checked too.
    layer.bias_posterior.distribution.loc.assign(
        np.random.default_rng(1).normal(size=layer.bias_posterior.distribution.loc.shape))
    rng = np.random.default_rng(2)
    calls = {"normal": [], "signs": []}

    def normal(shape, dtype):
        value = rng.normal(size=tuple(np.asarray(shape))).astype(np.float32)
        calls["normal"].append(value)
        return tf.constant(value)

    def signs(shape, dtype):
        value = rng.choice([-1.0, 1.0], size=tuple(np.asarray(shape))).astype(np.float32)
        calls["signs"].append(value)
        return tf.constant(value)

    monkeypatch.setattr(layer, "_normal", normal)
    monkeypatch.setattr(layer, "_signs", signs)
    y = layer(X).numpy()
    assert len(calls["normal"]) == 2  # kernel and recurrent kernel, not once per step
    assert len(calls["signs"]) == (4 if estimator == "flipout" else 0)
    w, w_sd, r, r_sd, b = _params(layer)
    dw, dr = w_sd * calls["normal"][0], r_sd * calls["normal"][1]
    batch = X.shape[0]
    if estimator == "flipout":
        s_in, s_out, r_in, r_out = calls["signs"]
        kernels = [w + dw * np.outer(s_in[i], s_out[i]) for i in range(batch)]
        recurrents = [r + dr * np.outer(r_in[i], r_out[i]) for i in range(batch)]
    else:
        kernels, recurrents = [w + dw] * batch, [r + dr] * batch
    expected = _reference(kind, X, kernels, recurrents, b, 5, extra.get("reset_after", True))
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_vectorised_path_uses_one_draw_per_sample_for_the_whole_sequence(kind):
    """In mc_sampling(S) copy s of every sequence runs with weight set s: [S, F, kU] draws."""
    layer = CLASSES[kind, "flipout"](4, return_sequences=True, kl_weight=1.0,
                                     posterior={"init_scale": 0.3})
    layer(X)
    s, seed = 3, tf.constant([5, 6], tf.int64)
    with sampling.mc_sampling(s, seed=seed):
        y = layer(np.tile(X, (s, 1, 1))).numpy()
    w, w_sd, r, r_sd, b = _params(layer)

    def eps(index, shape):
        return sampling.standard_normal(
            [s] + list(shape), tf.float32,
            tf.random.experimental.stateless_fold_in(seed, index)).numpy()

    ew, er = eps(1, w.shape), eps(2, r.shape)  # the layer's draw indices 1 and 2
    batch = X.shape[0]
    for i in range(s):
        expected = _reference(kind, X, [w + w_sd * ew[i]] * batch, [r + r_sd * er[i]] * batch,
                              b, 4)
        np.testing.assert_allclose(y[i * batch:(i + 1) * batch], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(y[:batch], y[batch:2 * batch])


@pytest.mark.parametrize("estimator", ["flipout", "reparameterization"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layer_contract(kind, estimator, tmp_path):
    run_layer_test(CLASSES[kind, estimator], {"units": 5, "kl_weight": 0.1},
                   input_shape=(4, 3, 2), expected_output_shape=(4, 5),
                   expected_trainable_weights=TRAINABLE, expected_num_losses=2,
                   tmp_path=tmp_path)


@pytest.mark.parametrize("prior", ["scale_mixture", "laplace", "learned_normal"])
def test_layer_contract_other_priors_and_bayesian_bias(prior, tmp_path):
    names = TRAINABLE + ["bias_posterior_untransformed_scale"]
    if prior == "learned_normal":
        names += [f"{w}_prior_untransformed_scale" for w in ("kernel", "recurrent_kernel", "bias")]
    run_layer_test(bl.GRUFlipout, {"units": 3, "prior": prior, "kl_weight": 0.2,
                                   "posterior": {"bayesian_bias": True}},
                   input_shape=(2, 3, 2), expected_output_shape=(2, 3),
                   expected_trainable_weights=names, expected_num_losses=3, tmp_path=tmp_path)


def test_simple_rnn_contract(tmp_path):
    run_layer_test(bl.SimpleRNNReparameterization, {"units": 3, "kl_weight": 0.5},
                   input_shape=(2, 3, 2), expected_output_shape=(2, 3),
                   expected_trainable_weights=TRAINABLE, expected_num_losses=2,
                   tmp_path=tmp_path)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_kl_is_closed_form_times_kl_weight_once_per_call(kind):
    prior_scale, kl_weight = 0.5, 0.25
    layer = CLASSES[kind, "flipout"](
        4, kl_weight=kl_weight, prior={"class_name": "Normal", "config": {"scale": prior_scale}},
        posterior={"init_scale": 0.2, "bayesian_bias": True})
    layer(X)
    layer(X)  # a second call replaces the terms: one per weight tensor, none per time step
    assert len(layer.losses) == 3

    def kl(q):
        m, s = q.distribution.loc.numpy(), q.distribution.scale.numpy()
        return np.sum(np.log(prior_scale / s) + (s ** 2 + m ** 2) / (2 * prior_scale ** 2) - 0.5)

    def closed_form(l):
        return kl_weight * sum(kl(q) for q in (l.kernel_posterior, l.recurrent_kernel_posterior,
                                                l.bias_posterior))

    np.testing.assert_allclose(float(tf.add_n(layer.losses)), closed_form(layer), rtol=1e-5)
    inputs = tf_keras.Input((None, 3))
    model = tfp_bnn.BayesianModel(inputs, tf_keras.layers.Bidirectional(layer)(inputs))
    model(X)
    found = tfp_bnn.layers.bayesian_layers(model)
    assert len(found) == 2  # the forward and backward copies, each adding its own KL
    np.testing.assert_allclose(float(tfp_bnn.elbo.kl_loss(model)),
                               sum(closed_form(l) for l in found), rtol=1e-5)


def _masked_bidirectional_model():
    inputs = tf_keras.Input((None, 3), name="sequence")
    h = tf_keras.layers.Masking(0.0)(inputs)
    h = tf_keras.layers.Bidirectional(bl.LSTMFlipout(4, return_sequences=True, kl_weight=0.1))(h)
    h = tf_keras.layers.Bidirectional(bl.GRUReparameterization(3, kl_weight=0.1),
                                      merge_mode="sum")(h)
    return tfp_bnn.BayesianModel(inputs, bl.DenseFlipout(2, kl_weight=0.1)(h))


def test_bidirectional_masking_save_load_round_trip(tmp_path):
    model = _masked_bidirectional_model()
    x = X.copy()
    x[1, 3:] = 0.0  # padded: example 1 is 3 steps long
    model(x)
    path = str(tmp_path / "rnn.keras")
    model.save(path)
    loaded = tf_keras.models.load_model(path)
    assert_same_variables(model, loaded)
    seed = tf.constant([1, 2], tf.int64)
    for mode in ("sample", "mean"):
        with sampling.mc_sampling(1, seed=seed, mode=mode):
            y = model(x).numpy()
        with sampling.mc_sampling(1, seed=seed, mode=mode):
            np.testing.assert_array_equal(loaded(x).numpy(), y)
    tf.random.set_seed(3)
    y = model(x).numpy()
    tf.random.set_seed(3)
    np.testing.assert_array_equal(loaded(x).numpy(), y)
    # Masking as in Keras: the padded example equals its unpadded 3-step version.
    with sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(model(x).numpy()[1], model(x[1:2, :3]).numpy()[0], atol=1e-6)


def test_return_state_and_go_backwards_as_in_keras():
    layer = bl.LSTMReparameterization(4, return_sequences=True, return_state=True,
                                      go_backwards=True, kl_weight=1.0)
    seq, h, c = layer(X)
    assert seq.shape == (4, 5, 4) and h.shape == c.shape == (4, 4)
    keras = tf_keras.layers.LSTM(4, return_sequences=True, return_state=True, go_backwards=True)
    keras(X)
    keras.set_weights([q.distribution.loc.numpy() for q in (
        layer.kernel_posterior, layer.recurrent_kernel_posterior, layer.bias_posterior)])
    with sampling.mc_sampling(1, mode="mean"):
        ours = layer(X, initial_state=[tf.ones((4, 4)), tf.zeros((4, 4))])
    theirs = keras(X, initial_state=[tf.ones((4, 4)), tf.zeros((4, 4))])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_time_major_unroll_and_float64_as_in_keras():
    x = X.transpose(1, 0, 2).astype(np.float64)  # [T, B, F]
    layer = bl.GRUFlipout(3, time_major=True, unroll=True, return_sequences=True,
                          dtype="float64", kl_weight=1.0)
    y = layer(x)
    assert y.dtype == tf.float64 and y.shape == (5, 4, 3)
    keras = tf_keras.layers.GRU(3, time_major=True, unroll=True, return_sequences=True,
                                dtype="float64")
    keras(x)
    keras.set_weights([q.distribution.loc.numpy() for q in (
        layer.kernel_posterior, layer.recurrent_kernel_posterior, layer.bias_posterior)])
    with sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(layer(x).numpy(), keras(x).numpy(), atol=1e-12)
    with sampling.mc_sampling(2, seed=tf.constant([0, 1], tf.int64)):
        y = layer(np.concatenate([x, x], axis=1)).numpy()  # sample-major on the batch axis
    assert y.shape == (5, 8, 3) and not np.allclose(y[:, :4], y[:, 4:])


# ---------------------------------------------------------------------------------------------
# bayesify
# ---------------------------------------------------------------------------------------------
def _check_bayesified(source, x):
    bnn = tfp_bnn.bayesify(source, kl_weight=0.01,
                           posterior=tfp_bnn.posteriors.MeanField(from_weights=True))
    kinds = [type(l).__name__ for l in tfp_bnn.layers.bayesian_layers(bnn)]
    assert "LSTMFlipout" in kinds and "GRUFlipout" in kinds
    with sampling.mc_sampling(1, mode="mean"):
        np.testing.assert_allclose(bnn(x).numpy(), np.asarray(source(x)), atol=1e-5)
    return bnn


def test_bayesify_tf_keras_lstm_copies_weights():
    source = tf_keras.Sequential([tf_keras.Input((5, 3)),
                                  tf_keras.layers.LSTM(6, return_sequences=True),
                                  tf_keras.layers.GRU(4, reset_after=False),
                                  tf_keras.layers.Dense(2)])
    bnn = _check_bayesified(source, X)
    lstm = bnn.get_layer(source.layers[0].name)
    np.testing.assert_array_equal(lstm.recurrent_kernel_posterior.distribution.loc.numpy(),
                                  source.layers[0].get_weights()[1])
    np.testing.assert_allclose(lstm.kernel_posterior.distribution.scale.numpy(), 0.05, rtol=1e-5)


def test_bayesify_keras3_bidirectional_lstm_with_masking():
    keras = pytest.importorskip("keras")
    source = keras.Sequential([
        keras.Input((5, 3)), keras.layers.Masking(0.0),
        keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True)),
        keras.layers.GRU(4), keras.layers.Dense(1)])
    x = X.copy()
    x[0, 2:] = 0.0
    bnn = _check_bayesified(source, x)
    wrapper = bnn.get_layer(source.layers[1].name)
    assert isinstance(wrapper, tf_keras.layers.Bidirectional)
    assert (type(wrapper.forward_layer), type(wrapper.backward_layer)) == (bl.LSTMFlipout,) * 2
    assert wrapper.backward_layer.go_backwards
    np.testing.assert_array_equal(
        wrapper.backward_layer.kernel_posterior.distribution.loc.numpy(),
        np.asarray(source.layers[1].backward_layer.get_weights()[0]))


@pytest.mark.parametrize("option,value", [("dropout", 0.2), ("recurrent_dropout", 0.1),
                                          ("stateful", True),
                                          ("recurrent_regularizer", "l2")])
def test_bayesify_refuses_what_it_cannot_reproduce(option, value):
    batch = 4 if option == "stateful" else None
    source = tf_keras.Sequential([tf_keras.Input((5, 3), batch_size=batch),
                                  tf_keras.layers.LSTM(3, name="rec", **{option: value}),
                                  tf_keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=rf"'rec'.*{option}="):
        tfp_bnn.bayesify(source, kl_weight=1.0)
    assert rnn.unsupported_option({"units": 3}) is None


# ---------------------------------------------------------------------------------------------
# predict and export
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sequence_bnn():
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([tf_keras.Input((5, 3), name="sequence"),
                                  tf_keras.layers.LSTM(6), tf_keras.layers.Dense(1)])
    return tfp_bnn.bayesify(source, kl_weight=1.0, task="regression",
                            posterior=tfp_bnn.posteriors.MeanField(init_scale=0.3))


def test_vectorised_predict_matches_a_loop_of_calls(sequence_bnn):
    s = 200
    pred = tfp_bnn.predict(sequence_bnn, X, num_samples=s, seed=0)
    call = tf.function(lambda x: sequence_bnn(x, training=False))
    loop = np.stack([call(X).numpy()[:, 0] for _ in range(s)])
    se = np.sqrt(loop.var(0) / s + pred.epistemic_variance[:, 0] / s)
    assert np.all(np.abs(pred.mean[:, 0] - loop.mean(0)) < 5 * se)
    ratio = pred.epistemic_variance[:, 0] / loop.var(0)
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    loaded = tf.saved_model.load(sys.argv[1])
    x = tf.constant(np.asarray(json.loads(sys.argv[2]), np.float32))
    out = {name: {k: v.numpy().tolist() for k, v in loaded.signatures[name](sequence=x).items()}
           for name in ("serving_default", "deterministic")}
    out["predict_with_samples"] = {k: v.numpy().tolist() for k, v in loaded.signatures[
        "predict_with_samples"](sequence=x, num_samples=tf.constant(7)).items()}
    out["modules"] = sorted(m for m in sys.modules
                            if m.startswith(("tensorflow_probability", "tfp_bnn")))
    print(json.dumps(out))
""")


def test_export_loads_and_runs_without_tfp(sequence_bnn, tmp_path):
    path = tfp_bnn.export_savedmodel(sequence_bnn, str(tmp_path / "rnn"), num_samples=20)
    proc = subprocess.run([sys.executable, "-c", FRESH, path, json.dumps(X.tolist())],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modules"] == []
    mean = sampling.mean_outputs(sequence_bnn, X).numpy()
    np.testing.assert_allclose(out["deterministic"]["mean"], mean, rtol=1e-5, atol=1e-6)
    assert np.asarray(out["predict_with_samples"]["mean"]).shape == (len(X), 1)
    var = np.asarray(out["serving_default"]["epistemic_variance"])
    assert np.all(var > 0)
    pred = tfp_bnn.predict(sequence_bnn, X, num_samples=400, seed=1)
    sd = np.sqrt(pred.epistemic_variance)
    served = np.asarray(out["serving_default"]["mean"])  # a mean of 20 draws
    assert np.all(np.abs(served - pred.mean) < 5 * sd / np.sqrt(20))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"units": 0}, "units=0"), ({"units": 2.5}, "units=2.5"),
    ({"units": 3, "dropout": 0.5}, "dropout=0.5"),
    ({"units": 3, "recurrent_dropout": 0.1}, "recurrent_dropout=0.1"),
    ({"units": 3, "stateful": True}, "stateful=True"),
    ({"units": 3, "kl_weight": -1.0}, "kl_weight=-1.0"),
    ({"units": 3, "posterior": "wide"}, "posterior='wide'"),
])
@pytest.mark.parametrize("cls", [bl.LSTMFlipout, bl.GRUReparameterization])
def test_bad_arguments_name_argument_and_value(cls, kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        cls(**kwargs)


def test_unknown_feature_dimension_and_ragged_input():
    with pytest.raises(ValueError, match="feature dimension"):
        bl.LSTMFlipout(3)(tf_keras.Input((5, None)))
    ragged = tf.ragged.constant([[[1.0], [2.0]], [[3.0]]], ragged_rank=1)
    with pytest.raises(ValueError, match="RaggedTensor"):
        bl.GRUFlipout(3)(ragged)


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------
def test_sequence_demo_quick(tmp_path, capsys):
    import sequence_demo as demo  # scripts/ is on the test run's path (setup.cfg)
    out = tmp_path / "demo.png"
    assert demo.main(["--quick", "--epochs", "1", "--samples", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "A (trained)" in text and "B (unseen)" in text and "variance ratio B/A" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
