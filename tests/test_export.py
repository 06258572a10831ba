"""`tfp_bnn.export_savedmodel`: what TF Serving loads, what the signatures compute, bad input.

One small Bayesian classifier with a wide posterior is exported once (module fixture) and reused.
"""
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import export as export_lib
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.serving import load_session

X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
NUM_SAMPLES = 10


def _source():
    return tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                tf_keras.layers.Dense(16, activation="tanh"),
                                tf_keras.layers.Dense(3)], name="small")


@pytest.fixture(scope="module")
def bnn():
    tf_keras.utils.set_random_seed(0)
    # A wide posterior: the MC spread is large next to float error, so MC tests can fail.
    return tfp_bnn.bayesify(_source(), kl_weight=1.0,
                            posterior=tfp_bnn.posteriors.MeanField(init_scale=0.3))


@pytest.fixture(scope="module")
def exported(bnn, tmp_path_factory):
    return tfp_bnn.export_savedmodel(bnn, tmp_path_factory.mktemp("export") / "small",
                                     num_samples=NUM_SAMPLES)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


# ---------------------------------------------------------------------------------------------
# A fresh process without TFP or tfp_bnn: tf.saved_model.load and the v1 Session (TF Serving)
# ---------------------------------------------------------------------------------------------
FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import op_def_registry

    path, x = sys.argv[1], np.asarray(json.loads(sys.argv[2]), np.float32)
    out = {"tf2": {}, "v1": {}}
    feeds = {"serving_default": {"features": x},
             "predict_with_samples": {"features": x, "num_samples": np.int32(7)},
             "deterministic": {"features": x}}

    loaded = tf.saved_model.load(path)
    for name, kwargs in feeds.items():
        result = loaded.signatures[name](**{k: tf.constant(v) for k, v in kwargs.items()})
        out["tf2"][name] = {k: v.numpy().tolist() for k, v in result.items()}

    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        out["signatures"] = {}
        for name, kwargs in feeds.items():
            sig = meta.signature_def[name]
            out["signatures"][name] = {"inputs": sorted(sig.inputs), "outputs": sorted(sig.outputs)}
            fetches = {k: v.name for k, v in sig.outputs.items()}
            result = sess.run(fetches, {sig.inputs[k].name: v for k, v in kwargs.items()})
            out["v1"][name] = {k: np.asarray(v).tolist() for k, v in result.items()}

    # Every op of the graph and of every library function must be registered in this process,
    # which has loaded neither TFP nor tfp_bnn: core TensorFlow ops only.
    sm = saved_model_pb2.SavedModel()
    with open(path + "/saved_model.pb", "rb") as f:
        sm.ParseFromString(f.read())
    graph_def = sm.meta_graphs[0].graph_def
    functions = {f.signature.name for f in graph_def.library.function}
    ops = {n.op for n in graph_def.node}
    for f in graph_def.library.function:
        ops |= {n.op for n in f.node_def}
    ops -= functions  # a node may call a library function by name
    out["ops"] = sorted(ops)
    out["unregistered"] = sorted(op for op in ops if op_def_registry.get(op) is None)

    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m == "tfp_bnn" or m.startswith("tfp_bnn.") for m in sys.modules), "tfp_bnn"
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def fresh(exported):
    proc = subprocess.run([sys.executable, "-c", FRESH, exported, json.dumps(X.tolist())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_layout_and_signatures(exported, fresh):
    assert os.path.basename(exported) == "1"
    for f in ("saved_model.pb", "variables", export_lib.WARMUP_FILE):
        assert os.path.exists(os.path.join(exported, f)), f
    outputs = sorted(export_lib.CLASSIFICATION_OUTPUTS)
    assert fresh["signatures"] == {
        "serving_default": {"inputs": ["features"], "outputs": outputs},
        "predict_with_samples": {"inputs": ["features", "num_samples"], "outputs": outputs},
        "deterministic": {"inputs": ["features"], "outputs": ["logits", "probabilities"]},
    }


def test_fresh_process_runs_every_signature_both_ways(bnn, fresh):
    det = sampling.mean_outputs(bnn, X).numpy()
    for path in ("tf2", "v1"):
        np.testing.assert_allclose(fresh[path]["deterministic"]["logits"], det, rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(fresh[path]["deterministic"]["probabilities"],
                                   tf.nn.softmax(det).numpy(), rtol=1e-5, atol=1e-6)
        for name in ("serving_default", "predict_with_samples"):
            out = {k: np.asarray(v) for k, v in fresh[path][name].items()}
            assert out["mean_logits"].shape == out["variance"].shape == (len(X), 3)
            np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
            assert (out["variance"] > 0).all() and (out["mutual_information"] > 0).all()
            assert (out["predictive_entropy"] >= out["mutual_information"]).all()
    # Fresh draws on every call: the two loaders' MC answers differ, the deterministic ones not.
    assert not np.allclose(fresh["tf2"]["serving_default"]["mean_logits"],
                           fresh["v1"]["serving_default"]["mean_logits"])


def test_graph_holds_only_registered_core_ops(fresh):
    assert fresh["unregistered"] == []
    assert not {"PyFunc", "PyFuncStateless", "EagerPyFunc"} & set(fresh["ops"])
    assert {"RandomUniform", "RandomStandardNormal", "BatchMatMulV2", "MatMul"} <= set(fresh["ops"])


# ---------------------------------------------------------------------------------------------
# What the signatures compute
# ---------------------------------------------------------------------------------------------
def _call(loaded, name, **kwargs):
    out = loaded.signatures[name](**{k: tf.constant(v) for k, v in kwargs.items()})
    return {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("batch", [1, 6, 64])  # output space, mixed, weight space
def test_serving_default_agrees_with_predict_within_mc_error(bnn, loaded, batch):
    x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    ref = tfp_bnn.predict(bnn, x, num_samples=4000, seed=1)
    # Many served calls of S = 10: their average estimates the same posterior mean.
    calls = [_call(loaded, "serving_default", features=x) for _ in range(40)]
    n = 40 * NUM_SAMPLES
    mean = np.mean([c["mean_logits"] for c in calls], axis=0)
    var = np.mean([c["variance"] for c in calls], axis=0) * NUM_SAMPLES / (NUM_SAMPLES - 1)
    # The posterior spread is wide: the test could fail (the spread dwarfs float error).
    assert (np.sqrt(ref.logit_variance) > 0.1).all()
    z = (mean - ref.mean_logits) / np.sqrt(var / n + ref.logit_variance / 4000)
    assert np.abs(z).max() < 5, np.abs(z).max()
    np.testing.assert_allclose(var, ref.logit_variance, rtol=0.35)
    probs = np.stack([c["probabilities"] for c in calls])  # each an unbiased estimate
    z = (probs.mean(0) - ref.probabilities) / np.sqrt(probs.var(0) / len(calls) + 1e-8)
    assert np.abs(z).max() < 5, np.abs(z).max()


@pytest.mark.parametrize("batch", [1, 40])  # output space, weight space
def test_bayesian_bias_matches_the_plain_tfp_loop(tmp_path, batch):
    # The served graph against TFP's own layers called S times (not against tfp_bnn.predict,
    # which shares the sampling code): the bias variance must reach the outputs either way.
    tf_keras.utils.set_random_seed(1)
    model = tfp_bnn.bayesify(_source(), estimator="reparameterization", kl_weight=1.0,
                             posterior=tfp_bnn.posteriors.MeanField(init_scale=0.3,
                                                                    bayesian_bias=True))
    served = tf.saved_model.load(tfp_bnn.export_savedmodel(model, tmp_path / "m", num_samples=2))
    x = np.random.default_rng(batch).normal(size=(batch, 4)).astype(np.float32)
    n = 1000
    out = _call(served, "predict_with_samples", features=x, num_samples=np.int32(n))
    call = tf.function(lambda t: model(t))
    loop = np.stack([call(x).numpy() for _ in range(n)])
    z_mean = (out["mean_logits"] - loop.mean(0)) / np.sqrt((out["variance"] + loop.var(0)) / n)
    # Var of a variance estimate ~ 2 var^2 / n for near-Gaussian samples; allow heavier tails.
    z_var = (out["variance"] - loop.var(0)) / (loop.var(0) * np.sqrt(2 * 2 / n))
    assert np.abs(z_mean).max() < 5 and np.abs(z_var).max() < 5, (z_mean, z_var)


def test_predict_with_samples_honours_num_samples(loaded):
    x = X[:3]
    spread = {}
    for s in (4, 64):
        means = np.stack([_call(loaded, "predict_with_samples", features=x,
                                num_samples=np.int32(s))["mean_logits"] for _ in range(150)])
        spread[s] = means.var(axis=0)
    ratio = (spread[4] / spread[64]).mean()  # 1/S scaling: 16
    assert 10 < ratio < 26, ratio
    one = _call(loaded, "predict_with_samples", features=x, num_samples=np.int32(1))
    np.testing.assert_array_equal(one["variance"], 0.0)
    np.testing.assert_array_equal(one["mutual_information"], 0.0)


def test_warmup_records_parse_as_prediction_logs(exported, fresh):
    from tensorflow_serving.apis import prediction_log_pb2

    session = load_session(exported)

    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(os.path.join(exported, export_lib.WARMUP_FILE))]
    assert records
    seen = set()
    for log in records:
        request = log.predict_log.request
        name = request.model_spec.signature_name
        seen.add(name)
        assert sorted(request.inputs) == fresh["signatures"][name]["inputs"]
        proto = request.inputs["features"]
        features = tf.make_ndarray(proto)
        assert features.dtype == np.float32 and features.shape[1:] == (4,)
        # One value broadcast by the parser; TF's C++ parser (as TF Serving's) agrees.
        assert list(proto.float_val) == [0.0] and not proto.tensor_content
        parsed = tf.io.parse_tensor(proto.SerializeToString(), tf.float32).numpy()
        np.testing.assert_array_equal(parsed, features)
        np.testing.assert_array_equal(parsed, 0.0)
        if name == "predict_with_samples":
            assert tf.make_ndarray(request.inputs["num_samples"]) >= 1
        # TF Serving runs every warmup request at load: each runs in the loaded graph.
        out = session.run(name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        assert all(np.all(np.isfinite(v)) for v in out.values())
    assert seen == set(export_lib.SIGNATURES)


def test_two_threads_call_the_signature_1000_times_each(exported):
    session = load_session(exported)
    results, errors = [[], []], []

    def work(i):
        try:
            for _ in range(1000):
                results[i].append(session.run("serving_default", {"features": X})["variance"])
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()
    assert not errors, errors
    assert len(results[0]) == len(results[1]) == 1000
    assert all(np.isfinite(v).all() and (v > 0).all() for r in results for v in r)


# ---------------------------------------------------------------------------------------------
# Size: means + variances, not means + rho + priors
# ---------------------------------------------------------------------------------------------
def _size(path):
    total = os.path.getsize(os.path.join(path, "saved_model.pb"))
    for folder, _, files in os.walk(os.path.join(path, "variables")):
        total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def _variables_size(path):
    return _size(path) - os.path.getsize(os.path.join(path, "saved_model.pb"))


def test_size_against_the_deterministic_model(bnn, exported, tmp_path):
    # The deterministic model (export.py, "Size"): the source Keras model with the posterior
    # means as weights, saved with tf.saved_model.save.
    det = _source()
    det.set_weights([w for layer in tfp_bnn.layers.bayesian_layers(bnn)
                     for w in (layer.kernel_posterior.distribution.loc.numpy(),
                               layer.bias_posterior.distribution.loc.numpy())])
    np.testing.assert_allclose(det(X), sampling.mean_outputs(bnn, X), rtol=1e-6)
    keras_path = str(tmp_path / "keras")
    tf.saved_model.save(det, keras_path)
    # A leaner baseline, reported: one signature over the same weights, nothing Keras.
    module = tf.Module()
    module.v = det.variables
    fn = tf.function(lambda x: {"logits": det(x)},
                     input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    lean_path = str(tmp_path / "lean")
    tf.saved_model.save(module, lean_path, signatures=fn.get_concrete_function())
    ratio = _size(exported) / _size(keras_path)
    print(f"export {_size(exported)} B, Keras deterministic {_size(keras_path)} B "
          f"({ratio:.2f}x), lean deterministic {_size(lean_path)} B "
          f"({_size(exported) / _size(lean_path):.2f}x)")
    assert ratio <= 2.2
    # The weights themselves: means and sigma^2 of the kernels, the biases, nothing else (no rho,
    # no priors, no KL weights); besides them only the task and the noise mode, two strings.
    prefix = os.path.join(exported, "variables", "variables")
    dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    saved = tf.train.list_variables(prefix)
    strings = [name for name, _ in saved if dtypes[name] == tf.string
               and not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")]
    assert sorted(strings) == ["noise/.ATTRIBUTES/VARIABLE_VALUE",
                               "task/.ATTRIBUTES/VARIABLE_VALUE"]
    saved_params = sum(int(np.prod(shape)) for name, shape in saved if "OPTIMIZER" not in name
                       and not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
                       and name not in strings)
    kernels = sum(int(np.prod(w.shape)) for w in det.weights if "kernel" in w.name)
    biases = sum(int(np.prod(w.shape)) for w in det.weights if "bias" in w.name)
    assert saved_params == 2 * kernels + biases
    assert _variables_size(exported) <= 2.2 * _variables_size(keras_path)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_samples", [0, -3, 2.5, True, "10"])
def test_num_samples_at_export_must_be_a_positive_integer(bnn, tmp_path, num_samples):
    with pytest.raises(ValueError, match=f"num_samples.*{num_samples!r}"):
        tfp_bnn.export_savedmodel(bnn, tmp_path / "m", num_samples=num_samples)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("num_samples", [0, -1])
def test_num_samples_below_one_in_a_request_is_invalid_argument(exported, loaded, num_samples):
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be >= 1"):
        _call(loaded, "predict_with_samples", features=X, num_samples=np.int32(num_samples))
    session = load_session(exported)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be >= 1"):
        session.run("predict_with_samples", {"features": X, "num_samples": np.int32(num_samples)})


def test_wrong_feature_count_or_dtype_in_a_request(exported, loaded):
    serve = loaded.signatures["serving_default"]
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(features=tf.constant(np.ones((2, 5), np.float32)))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(features=tf.constant(np.ones((2, 4), np.float64)))
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        serve(features=tf.constant(np.ones((2, 4), np.int32)))
    session = load_session(exported)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        session.run("serving_default", {"features": np.ones((2, 5), np.float32)})
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        session.run("serving_default", {"features": np.array([["a"] * 4], dtype=object)})


def test_model_without_bayesian_layer_exports_with_zero_variance_and_warns(tmp_path):
    model = _source()
    with pytest.warns(UserWarning, match="no stochastic layer"):
        path = tfp_bnn.export_savedmodel(model, tmp_path / "det", num_samples=5)
    served = tf.saved_model.load(path)
    for name, extra in (("serving_default", {}), ("predict_with_samples", {"num_samples": 9})):
        out = _call(served, name, features=X, **{k: np.int32(v) for k, v in extra.items()})
        np.testing.assert_array_equal(out["variance"], 0.0)
        np.testing.assert_array_equal(out["mutual_information"], 0.0)
        np.testing.assert_allclose(out["mean_logits"], model(X), rtol=1e-5, atol=1e-6)


def test_export_dir_that_is_a_file(bnn, tmp_path):
    target = tmp_path / "not_a_dir"
    target.write_text("x")
    with pytest.raises(ValueError, match="not_a_dir"):
        tfp_bnn.export_savedmodel(bnn, target)
    assert target.read_text() == "x"


def _digest(path):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(folder, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_versions_never_overwritten_unless_asked(bnn, exported):
    base = os.path.dirname(exported)
    before = _digest(exported)
    with pytest.raises(ValueError, match="overwrite=True"):
        tfp_bnn.export_savedmodel(bnn, base, num_samples=3, version=1)
    assert _digest(exported) == before
    assert sorted(os.listdir(base)) == ["1"]  # no staging folder left behind
    os.makedirs(os.path.join(base, "7"))
    os.makedirs(os.path.join(base, "notes"))  # not a version
    assert export_lib.next_version(base) == 8
    path = tfp_bnn.export_savedmodel(bnn, base, num_samples=3, version=None)
    assert path == os.path.join(base, "8")
    again = tfp_bnn.export_savedmodel(bnn, base, num_samples=4, version=8, overwrite=True)
    assert again == path and os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert _digest(exported) == before
