"""tfp_bnn.compress: what is kept, the smaller graph, the report, serving, bad input."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.sparse import UnitScale

X = np.random.default_rng(0).normal(size=(16, 6, 6, 1)).astype("float32")


def _cnn():
    layers = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((6, 6, 1)), layers.Conv2D(4, 3, activation="relu", name="conv2d"),
        layers.MaxPooling2D(), layers.Flatten(), layers.Dense(8, activation="tanh", name="dense"),
        layers.Dropout(0.1), layers.Dense(3, name="dense_1")])


@pytest.fixture(scope="module", params=["log_uniform", "group_normal_jeffreys"])
def bnn(request):
    tf_keras.utils.set_random_seed(1)
    return tfp_bnn.bayesify(_cnn(), prior=request.param, kl_weight=0.01)


def _kernel_loc(layer):
    return layer.weight_posteriors()[0][1].distribution


@pytest.mark.parametrize("bayesian", [False, True])
def test_infinite_threshold_keeps_everything_and_equals_the_posterior_mean(bnn, bayesian):
    result = tfp_bnn.compress(bnn, threshold=float("inf"), bayesian=bayesian)
    report = result.report
    assert report["nonzero_fraction"] == 1.0
    assert report["weights"] == report["weights_kept"] == (36 + 4) + (16 * 8 + 8) + (8 * 3 + 3)
    assert [(r["units"], r["units_kept"]) for r in report["layers"]] == [(4, 4), (8, 8), (3, 3)]
    np.testing.assert_allclose(sampling.mean_outputs(result.model, X),
                               sampling.mean_outputs(bnn, X), rtol=1e-5, atol=1e-6)
    assert tfp_bnn.sampling.is_stochastic(result.model) is bayesian
    if not bayesian:
        assert {type(l).__module__.split(".")[0] for l in result.model.layers} == {"tf_keras"}


def test_pruned_weights_are_zeros_and_counted():
    tf_keras.utils.set_random_seed(2)
    bnn = tfp_bnn.bayesify(_cnn(), prior="log_uniform", kl_weight=0.01)
    dense = [l for l in tfp_bnn.layers.bayesian_layers(bnn) if l.name == "dense"][0]
    q = _kernel_loc(dense)
    off = np.zeros(q.loc.shape, bool)
    off[::3] = True  # every third input row: log alpha = 2 log(0.05 / 1e-4) = 12.4 > 3
    q.loc.assign(np.where(off, 1e-4, q.loc.numpy()))
    # Besides those, an initial mean below 0.05 e^-1.5 has log alpha > 3 too: count by numpy.
    loc, scale = q.loc.numpy(), tf.convert_to_tensor(q.scale).numpy()
    pruned = 2 * np.log(scale) - 2 * np.log(np.abs(loc)) > 3.0
    assert np.all(pruned[off])
    result = tfp_bnn.compress(bnn, threshold=3.0)
    kernel = result.model.get_layer("dense").get_weights()[0]
    assert np.all(kernel[pruned] == 0)
    np.testing.assert_array_equal(kernel[~pruned], loc[~pruned])
    row = [r for r in result.report["layers"] if r["name"] == "dense"][0]
    assert row["weights_kept"] == int((~pruned).sum()) + 8
    others = [r for r in result.report["layers"] if r["name"] != "dense"]
    kept = row["weights_kept"] + sum(r["weights_kept"] for r in others)
    assert result.report["nonzero_fraction"] == pytest.approx(kept / result.report["weights"])
    # A more lenient threshold (log alpha 12.4 is below 20) keeps them.
    assert tfp_bnn.compress(bnn, threshold=20.0).report["nonzero_fraction"] == 1.0


@pytest.fixture(scope="module")
def grouped():
    """A group-prior model with units forced off: conv filters 0 and 2, dense units 1, 4, 5."""
    tf_keras.utils.set_random_seed(3)
    bnn = tfp_bnn.bayesify(_cnn(), prior="group_normal_jeffreys", kl_weight=0.01)
    scales = [l for l in bnn.layers if isinstance(l, UnitScale)]
    conv_off, dense_off = np.isin(np.arange(4), [0, 2]), np.isin(np.arange(8), [1, 4, 5])
    for layer, off in zip(scales, (conv_off, dense_off)):
        q = _kernel_loc(layer)
        kept = np.random.default_rng(0).uniform(0.5, 1.5, off.shape)
        q.loc.assign(np.where(off, 1e-5, kept))  # log alpha_z = 2 log(0.1 / 1e-5) = 18 > 3
    return bnn, scales, (conv_off, dense_off)


def test_unit_removal_gives_the_outputs_of_zeroing_those_units(grouped):
    bnn, scales, offs = grouped
    result = tfp_bnn.compress(bnn, threshold=3.0)
    model = result.model
    # Physically smaller: 2 filters, the Flatten's 2x2 positions x 2 rows, 5 units.
    assert model.get_layer("conv2d").get_weights()[0].shape == (3, 3, 1, 2)
    assert model.get_layer("dense").get_weights()[0].shape == (2 * 2 * 2, 5)
    assert model.get_layer("dense_1").get_weights()[0].shape == (5, 3)
    assert not any(isinstance(l, UnitScale) for l in model.layers)
    assert [(r["units"], r["units_kept"]) for r in result.report["layers"]] == [
        (4, 2), (8, 5), (3, 3)]
    # The reference: the Bayesian model's posterior mean with those scales exactly 0.
    saved = [_kernel_loc(l).loc.numpy() for l in scales]
    try:
        for layer, off, loc in zip(scales, offs, saved):
            _kernel_loc(layer).loc.assign(np.where(off, 0.0, loc))
        expected = sampling.mean_outputs(bnn, X).numpy()
    finally:
        for layer, loc in zip(scales, saved):
            _kernel_loc(layer).loc.assign(loc)
    np.testing.assert_allclose(model(X).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="no stochastic layer"):
        probabilities = tfp_bnn.predict(model, X, num_samples=2, verbose=0).probabilities
    np.testing.assert_allclose(probabilities, tf.nn.softmax(expected).numpy(), atol=1e-5)


def test_bayesian_compression_keeps_the_posterior_of_what_is_kept(grouped):
    bnn, scales, offs = grouped
    result = tfp_bnn.compress(bnn, threshold=3.0, bayesian=True)
    small = tfp_bnn.layers.bayesian_layers(result.model)
    big = tfp_bnn.layers.bayesian_layers(bnn)
    assert [type(l) for l in small] == [type(l) for l in big]
    conv_keep = ~offs[0]
    np.testing.assert_array_equal(_kernel_loc(small[0]).loc.numpy(),
                                  _kernel_loc(big[0]).loc.numpy()[..., conv_keep])
    # small[1] / big[1]: the conv's unit scales, restricted to the kept filters
    np.testing.assert_allclose(tf.convert_to_tensor(_kernel_loc(small[1]).scale).numpy(),
                               tf.convert_to_tensor(_kernel_loc(big[1]).scale).numpy()[conv_keep])
    result.model(X)
    assert len(result.model.losses) == len(big)  # one KL per kept kernel and unit scale


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, x = sys.argv[1], np.asarray(json.loads(sys.argv[2]), np.float32)
    fn = tf.saved_model.load(path).signatures["deterministic"]
    name = list(fn.structured_input_signature[1])[0]
    out = fn(**{name: tf.constant(x)})
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m == "tfp_bnn" or m.startswith("tfp_bnn.") for m in sys.modules), "tfp_bnn"
    print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
""")


def test_compressed_model_exports_and_serves_in_a_fresh_process_without_tfp(grouped, tmp_path):
    bnn, _, _ = grouped
    model = tfp_bnn.compress(bnn, threshold=3.0).model
    with pytest.warns(UserWarning, match="variance is 0"):
        path = tfp_bnn.export_savedmodel(model, tmp_path / "small", num_samples=1)
    x = X[:4]
    proc = subprocess.run([sys.executable, "-c", FRESH, str(path), json.dumps(x.tolist())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = tf.nn.softmax(model(x)).numpy()
    probs = [np.asarray(v) for v in served.values() if np.shape(v) == expected.shape]
    assert any(np.allclose(p, expected, atol=1e-5) for p in probs), served.keys()


def test_report_bits_and_ratio_follow_the_posterior_variance():
    tf_keras.utils.set_random_seed(4)
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, use_bias=False)])
    bnn = tfp_bnn.bayesify(model, prior="log_uniform", kl_weight=0.01)
    q = _kernel_loc(tfp_bnn.layers.bayesian_layers(bnn)[0])
    q.loc.assign(np.array([[1.0, -1.0], [0.5, 0.2], [0.3, -0.6], [1e-6, 0.7]]))
    result = tfp_bnn.compress(bnn, threshold=3.0)
    row = result.report["layers"][0]
    assert row["weights_kept"] == 7
    # range 2.0 over the kept means, sigma = 0.05 everywhere: ceil(log2(2 / 0.05)) = 6 bits
    assert row["bits"] == 6 and result.report["bits_per_weight"] == 6.0
    assert result.report["compression_ratio"] == pytest.approx(32 * 8 / (7 * 6))


@pytest.mark.parametrize("threshold", ["3", None, float("nan"), True])
def test_threshold_must_be_a_number(bnn, threshold):
    with pytest.raises(ValueError, match="threshold"):
        tfp_bnn.compress(bnn, threshold=threshold)


def test_a_model_without_sparse_layers_is_refused():
    bnn = tfp_bnn.bayesify(_cnn(), prior="normal", kl_weight=0.01)
    with pytest.raises(ValueError, match="sparse layers.*'Normal'"):
        tfp_bnn.compress(bnn)
    with pytest.raises(ValueError, match="none \\(no Bayesian layer\\)"):
        tfp_bnn.compress(_cnn())
    with pytest.raises(ValueError, match="bnn must be a model"):
        tfp_bnn.compress("model.keras")


def test_compress_leaves_the_model_alone(bnn):
    before = [w.numpy().copy() for w in bnn.weights]
    tfp_bnn.compress(bnn, threshold=0.0)
    for w, b in zip(bnn.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_script_rate_holds_through_the_warm_up_then_decays_geometrically():
    import compression as script  # scripts/compression.py
    rate = script.rate_schedule(1e-3, warmup=4, epochs=10, decay=0.01).schedule
    # epochs 4..9 after the warm-up: 1e-3 * 0.01 ** (k / 5), k = 0..5
    assert [rate(e, None) for e in range(4)] == [1e-3] * 4
    np.testing.assert_allclose([rate(e, None) for e in range(4, 10)],
                               1e-3 * 0.01 ** (np.arange(6) / 5), rtol=1e-12)
    assert script.rate_schedule(2e-3, warmup=4, epochs=10, decay=1.0).schedule(9, None) == 2e-3


def test_script_validation_carves_come_from_the_training_split_only():
    import compression as script
    x_tr, _, x_te, _ = script.data(1, validate=False)
    carves = [script.data(1, validate=True, carve=c) for c in (0, 1)]
    key = lambda a: {r.tobytes() for r in np.round(a, 6)}
    test, train = key(x_te), key(x_tr)
    for fit_x, _, val_x, _ in carves:
        # scikit-learn rounds the held-out part up: ceil(0.2 * 1257) = 252
        assert len(val_x) == 252 and len(fit_x) + len(val_x) == len(x_tr) == 1257
        assert key(val_x) <= train and not key(val_x) & test and not key(fit_x) & test
    assert key(carves[0][2]) != key(carves[1][2])


@pytest.mark.slow  # two script processes: about a minute on two shared cores
def test_script_runs_are_reproducible(tmp_path):
    """Two processes, the same seed: the same accuracies and the same weights kept."""
    outs = []
    for run in ("a", "b"):
        args = [sys.executable, "scripts/compression.py", "--seeds", "0", "--nets", "mlp",
                "--dense-epochs", "2", "--sparse-epochs", "3", "--sparse-warmup", "2",
                "--group-epochs", "3", "--group-warmup", "2", "--validate",
                "--out", str(tmp_path / run)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = json.loads((tmp_path / run / "results.json").read_text())["runs"][0]
        outs.append({m: (r["accuracy"], r["weights_kept"], r.get("units_kept"))
                     for m, r in rows["MLP 64-300-100-10"].items()})
    assert outs[0] == outs[1]
    assert set(outs[0]) == {"dense", "sparse VD", "group prior"}
