"""Binary classification end to end: one logit + binary cross-entropy, from tf_keras and Keras 3,
trained on scikit-learn's breast-cancer data; predict, the SavedModel in a process without TFP,
and the `tfp-bnn train` / `predict` commands on a two-class CSV."""
import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import tfp_bnn
from tfp_bnn import cli, sampling, tasks
from tfp_bnn.distill import soft_target_cross_entropy
from tfp_bnn._keras import tf_keras

EXPORT_SAMPLES = 10


@pytest.fixture(scope="module")
def cancer():
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target)
    mean, std = x_train.mean(0), x_train.std(0)
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return scale(x_train), y_train.astype(np.int64), scale(x_test), y_test.astype(np.int64)


def _source(flavour):
    if flavour == "tf_keras":
        model = tf_keras.Sequential([tf_keras.Input((30,), name="features"),
                                     tf_keras.layers.Dense(16, activation="relu"),
                                     tf_keras.layers.Dense(1)])
        model.compile("adam", tf_keras.losses.BinaryCrossentropy(from_logits=True))
        return model
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((30,), name="features"),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module", params=["tf_keras", "keras3"])
def trained(request, cancer):
    x_train, y_train, _, _ = cancer
    tf_keras.utils.set_random_seed(0)
    source = _source(request.param)
    # No task= here: it is read from the source's compiled loss.
    bnn = tfp_bnn.bayesify(source, num_train_examples=len(x_train))
    assert tasks.declared(bnn) == "binary"
    bnn.compile(tf_keras.optimizers.Adam(1e-2),
                tf_keras.losses.BinaryCrossentropy(from_logits=True))
    bnn.fit(x_train, y_train, epochs=30, batch_size=64, verbose=0)
    return bnn


def test_predict_gives_two_class_probabilities_and_the_decomposition(trained, cancer):
    _, _, x_test, y_test = cancer
    pred = tfp_bnn.predict(trained, x_test, num_samples=200, seed=0, return_samples=True)
    assert pred.task == "binary" and pred.is_classification
    n = len(x_test)
    assert pred.probabilities.shape == (n, 2) and pred.mean_logits.shape == (n, 1)
    assert pred.logit_variance.shape == (n, 1) and pred.variance is None
    np.testing.assert_allclose(pred.probabilities.sum(1), 1.0, atol=1e-6)
    # Column 1 is p(y=1): the mean of sigmoid over the logit samples.
    sigmoid = 1.0 / (1.0 + np.exp(-pred.samples[..., 0].astype(np.float64)))
    np.testing.assert_allclose(pred.probabilities[:, 1], sigmoid.mean(0), rtol=1e-4, atol=1e-6)
    accuracy = float(np.mean(pred.predicted_class == y_test))
    assert accuracy >= 0.93, accuracy
    assert (pred.logit_variance > 0).all()
    assert (pred.predictive_entropy >= pred.mutual_information - 1e-7).all()
    assert (pred.mutual_information >= 0).all() and pred.mutual_information.max() > 0
    np.testing.assert_allclose(pred.predictive_entropy,
                               pred.expected_entropy + pred.mutual_information, atol=1e-5)
    # The entropies of two-class probabilities, by hand.
    p = pred.probabilities.astype(np.float64)
    np.testing.assert_allclose(pred.predictive_entropy,
                               -np.sum(p * np.log(np.maximum(p, 1e-300)), 1), atol=1e-5)
    # The validation callback scores the same predictive with the binary likelihood.
    scores = tfp_bnn.callbacks.MCValidation(x_test, y_test, num_samples=200, seed=0).evaluate(
        trained)
    assert scores["accuracy"] == pytest.approx(accuracy)
    assert scores["nll"] == pytest.approx(
        -np.mean(np.log(pred.probabilities[np.arange(n), y_test])), rel=1e-5)


def test_distillation_of_a_binary_teacher(trained, cancer):
    x_train, _, x_test, _ = cancer
    student = tf_keras.Sequential([tf_keras.Input((30,)), tf_keras.layers.Dense(16, "relu"),
                                   tf_keras.layers.Dense(1)])
    result = tfp_bnn.distill(trained, student, x_train, num_samples=50, epochs=40,
                             learning_rate=1e-2, seed=0)
    assert result.task == "binary" and result.teacher_probabilities.shape == (len(x_train), 2)
    # The soft-target loss is the binary cross-entropy against p(y=1), by hand.
    p1 = result.teacher_probabilities[:10, 1].astype(np.float64)
    z = student(x_train[:10]).numpy()[:, 0].astype(np.float64)
    ce = soft_target_cross_entropy(result.teacher_probabilities[:10], z[:, None],
                                    "binary").numpy()
    np.testing.assert_allclose(ce, -(p1 * -np.logaddexp(0, -z) + (1 - p1) * -np.logaddexp(0, z)),
                               rtol=1e-5, atol=1e-6)
    assert result.history["kl"][-1] < 0.05 < result.history["kl"][0]
    # One forward pass of the student, as a binary Prediction, and predict(result) agrees.
    pred = result.predict(x_test)
    assert pred.task == "binary" and pred.probabilities.shape == (len(x_test), 2)
    teacher = tfp_bnn.predict(trained, x_test, num_samples=200, seed=0)
    assert np.abs(pred.probabilities - teacher.probabilities).mean() < 0.05
    with pytest.warns(UserWarning, match="no stochastic layer"):
        direct = tfp_bnn.predict(result, x_test, num_samples=1)
    np.testing.assert_allclose(direct.probabilities, pred.probabilities, atol=1e-6)


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    path, x, calls = sys.argv[1], np.asarray(json.loads(sys.argv[2]), np.float32), int(sys.argv[3])
    loaded = tf.saved_model.load(path)
    out = {"task": loaded.task.numpy().decode()}
    det = loaded.signatures["deterministic"](features=tf.constant(x))
    out["deterministic"] = {k: v.numpy().tolist() for k, v in det.items()}
    serve = loaded.signatures["serving_default"]
    out["served"] = [{k: v.numpy().tolist() for k, v in serve(features=tf.constant(x)).items()}
                     for _ in range(calls)]
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta.signature_def["serving_default"]
        fetches = {k: v.name for k, v in sig.outputs.items()}
        v1 = sess.run(fetches, {sig.inputs["features"].name: x})
        out["v1_shapes"] = {k: list(np.shape(v)) for k, v in v1.items()}
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m == "tfp_bnn" or m.startswith("tfp_bnn.") for m in sys.modules), "tfp_bnn"
    print(json.dumps(out))
""")


def test_export_serves_the_same_numbers_without_tfp(trained, cancer, tmp_path):
    _, _, x_test, _ = cancer
    x = x_test[:16]
    path = tfp_bnn.export_savedmodel(trained, tmp_path / "binary", num_samples=EXPORT_SAMPLES)
    calls = 300
    proc = subprocess.run([sys.executable, "-c", FRESH, path, json.dumps(x.tolist()),
                           str(calls)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["task"] == "binary"
    assert out["v1_shapes"] == {"mean_logits": [16, 1], "variance": [16, 1],
                                "probabilities": [16, 2], "predictive_entropy": [16],
                                "mutual_information": [16]}

    # Deterministic: predict's posterior-mean path, the same numbers.
    mean_logits = sampling.mean_outputs(trained, x).numpy()
    det = {k: np.asarray(v, np.float32) for k, v in out["deterministic"].items()}
    np.testing.assert_allclose(det["logits"], mean_logits, rtol=1e-6, atol=1e-6)
    p1 = 1.0 / (1.0 + np.exp(-mean_logits[:, 0].astype(np.float64)))
    np.testing.assert_allclose(det["probabilities"], np.stack([1 - p1, p1], 1), atol=1e-6)

    # Sampled: each served call is an S = 10 estimate; their average over 300 calls against a
    # 20000-sample predict (seeds cannot match across graphs). The entropy of a 10-sample mean
    # is biased low (entropy is concave), so its reference is the same estimator averaged over
    # predict's samples in groups of 10, not the entropy of the 20000-sample mean. MC
    # tolerance: 5 standard errors of the difference (the served average's and predict's,
    # estimated from the served spread), plus 1e-3 for the heavy tails of probabilities near 0
    # or 1, where a rare sample far from the rest makes the spread a poor estimate of the error.
    num_ref = 20000
    ref = tfp_bnn.predict(trained, x, num_samples=num_ref, seed=1, return_samples=True)
    groups = 1.0 / (1.0 + np.exp(-ref.samples[..., 0].astype(np.float64)))  # p(y=1), [S, B]
    groups = groups.reshape(num_ref // EXPORT_SAMPLES, EXPORT_SAMPLES, -1).mean(1)
    entropy_of_ten = -(groups * np.log(np.maximum(groups, 1e-300)) + (1 - groups) * np.log(
        np.maximum(1 - groups, 1e-300))).mean(0)
    assert (entropy_of_ten < ref.predictive_entropy).all()  # the bias the comparison needs
    served = {k: np.array([c[k] for c in out["served"]], np.float64) for k in out["served"][0]}
    for key, want in (("probabilities", ref.probabilities), ("mean_logits", ref.mean_logits),
                      ("predictive_entropy", entropy_of_ten)):
        got = served[key].mean(0)
        spread = served[key].var(0)
        se = np.sqrt(spread / calls + spread * EXPORT_SAMPLES / num_ref)
        excess = np.abs(got - want) - (5 * se + 1e-3)
        assert excess.max() <= 0, (key, excess.max())
    np.testing.assert_allclose(served["probabilities"].sum(-1), 1.0, atol=1e-6)
    assert (served["predictive_entropy"] >= served["mutual_information"] - 1e-7).all()
    assert (served["mutual_information"] >= 0).all()
    var = served["variance"].mean(0) * EXPORT_SAMPLES / (EXPORT_SAMPLES - 1)
    np.testing.assert_allclose(var, ref.logit_variance, rtol=0.35)


# ---------------------------------------------------------------------------------------------
# The command line on a two-class CSV
# ---------------------------------------------------------------------------------------------
def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_train_and_predict_a_two_class_target(tmp_path):
    data = load_breast_cancer()
    names = ["f%d" % i for i in range(data.data.shape[1])]
    labels = np.array(data.target_names)[data.target]  # "malignant" / "benign"
    source = tmp_path / "cancer.csv"
    source.write_text(",".join(names + ["diagnosis"]) + "\n" + "".join(
        ",".join(f"{v:.17g}" for v in row) + f",{label}\n" for row, label in zip(data.data, labels)))
    out = tmp_path / "run"
    assert cli.main(["train", str(source), "--target", "diagnosis", "--epochs", "15",
                     "--hidden", "16", "--batch-size", "32", "--learning-rate", "1e-2",
                     "--num-samples", "20", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "classification" and metrics["test_accuracy"] >= 0.9, metrics
    model = tf_keras.models.load_model(out / "model.keras")
    assert tuple(model.outputs[0].shape) == (None, 1)  # one logit, not two
    assert tasks.declared(model) == "binary"  # from the .keras config

    result = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out), str(source), "--out", str(result),
                     "--num-samples", "20", "--seed", "0", "--quiet"]) == 0
    got = _rows(result)
    classes = json.loads((out / "preprocessing.json").read_text())["class_names"]
    assert sorted(classes) == ["benign", "malignant"]
    assert list(got[0]) == ["index", "label", "predicted"] + [f"prob_{c}" for c in classes] + [
        "predictive_entropy", "aleatoric", "epistemic"]
    assert len(got) == len(labels)
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in got])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [r["predicted"] for r in got] == [classes[k] for k in probs.argmax(1)]
    accuracy = np.mean([r["predicted"] == r["label"] for r in got])
    assert accuracy >= 0.9, accuracy
    for r in got:
        assert float(r["predictive_entropy"]) == pytest.approx(
            float(r["aleatoric"]) + float(r["epistemic"]), abs=1e-5)
        assert float(r["epistemic"]) >= 0
