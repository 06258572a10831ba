"""Every baseline exports with tfp_bnn.export_savedmodel and serves from a process that never
imports TensorFlow Probability or tfp_bnn (one subprocess loads all four exports)."""
import json
import subprocess
import sys
import textwrap

import numpy as np

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf_keras

X = np.random.default_rng(0).random((5, 4)).astype(np.float32)

LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    x = tf.constant(np.asarray(json.loads(sys.argv[1]), np.float32))
    out = {}
    for name, path in json.loads(sys.argv[2]).items():
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]
        det = loaded.signatures["deterministic"]
        key = list(serve.structured_input_signature[1])[0]
        out[name] = {"serve": {k: v.numpy().tolist() for k, v in serve(**{key: x}).items()},
                     "det": {k: v.numpy().tolist() for k, v in det(**{key: x}).items()}}
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m == "tfp_bnn" or m.startswith("tfp_bnn.") for m in sys.modules)
    print(json.dumps(out))
""")


def _mlp(seed):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                tf_keras.layers.Dense(8, activation="tanh"),
                                tf_keras.layers.Dense(3)], name=f"mlp{seed}")


def _models():
    swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=3)
    net = _mlp(3)
    for i in range(4):
        for w in net.trainable_weights:
            w.assign(w + 0.2 * np.random.default_rng(i).standard_normal(w.shape))
        swag.collect(net)
    y = np.arange(len(X)) % 3
    return {
        "mc_dropout": (tfp_bnn.mc_dropout(_mlp(0), rate=0.3), 10),
        "ensemble": (tfp_bnn.baselines.ensemble_model([_mlp(1), _mlp(2), _mlp(4)]), 3),
        "swag": (swag.as_model(scale=1.0), 10),
        "laplace": (tfp_bnn.laplace(_mlp(5), X, y, hessian="kron").as_model(), 10),
    }


def test_every_method_exports_and_serves_without_tfp(tmp_path):
    models = _models()
    paths = {name: tfp_bnn.export_savedmodel(model, tmp_path / name, num_samples=s)
             for name, (model, s) in models.items()}
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(X.tolist()),
                           json.dumps(paths)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (model, s) in models.items():
        out = {k: np.asarray(v) for k, v in served[name]["serve"].items()}
        np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
        assert (out["mutual_information"] > 0).all(), name
        np.testing.assert_allclose(np.asarray(served[name]["det"]["logits"]),
                                   sampling.mean_outputs(model, X).numpy(), rtol=1e-5, atol=1e-6)
    # The ensemble with S = M is exactly the members' average, in the served graph too.
    ensemble, s = models["ensemble"]
    np.testing.assert_allclose(served["ensemble"]["serve"]["probabilities"],
                               tfp_bnn.predict(ensemble, X, num_samples=s).probabilities,
                               rtol=1e-6, atol=1e-7)
