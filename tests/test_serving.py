"""`tfp_bnn.serving`: the v1-Session loader and TF Serving's REST predict bodies."""
import json

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.export import CLASSIFICATION_OUTPUTS
from tfp_bnn.serving import load_session, rest_predict

ROWS = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


@pytest.fixture(scope="module")
def model():
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                  tf_keras.layers.Dense(8, activation="relu"),
                                  tf_keras.layers.Dense(3)])
    return tfp_bnn.bayesify(source, kl_weight=1.0,
                            posterior=tfp_bnn.posteriors.MeanField(init_scale=0.2))


@pytest.fixture(scope="module")
def session(model, tmp_path_factory):
    path = tfp_bnn.export_savedmodel(model, tmp_path_factory.mktemp("serving") / "m",
                                     num_samples=10)
    session = load_session(path)
    yield session
    session.close()


def test_row_format_gives_one_dict_of_named_outputs_per_instance(session):
    body = {"signature_name": "serving_default", "instances": ROWS}
    for request in (body, json.dumps(body)):
        rows = rest_predict(session, request)["predictions"]
        assert len(rows) == 2
        for row in rows:
            assert set(row) == set(CLASSIFICATION_OUTPUTS)
            assert len(row["mean_logits"]) == len(row["variance"]) == 3
            assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)
            assert row["mutual_information"] >= 0 and min(row["variance"]) > 0
        json.dumps(rows)  # plain JSON types


def test_row_format_named_instances_and_default_signature(session):
    rows = rest_predict(session, {"instances": [{"features": r} for r in ROWS]})["predictions"]
    assert len(rows) == 2 and set(rows[0]) == set(CLASSIFICATION_OUTPUTS)


def test_deterministic_signature_matches_the_posterior_mean(session, model):
    rows = rest_predict(session, {"signature_name": "deterministic",
                                  "instances": ROWS})["predictions"]
    np.testing.assert_allclose([r["logits"] for r in rows],
                               sampling.mean_outputs(model, np.array(ROWS, np.float32)),
                               rtol=1e-5, atol=1e-6)


def test_columnar_format(session):
    out = rest_predict(session, {"signature_name": "predict_with_samples",
                                 "inputs": {"features": ROWS, "num_samples": 50}})["outputs"]
    assert set(out) == set(CLASSIFICATION_OUTPUTS)
    assert np.asarray(out["mean_logits"]).shape == (2, 3)
    assert np.asarray(out["predictive_entropy"]).shape == (2,)
    bare = rest_predict(session, {"inputs": ROWS})["outputs"]  # single-input signature
    assert np.asarray(bare["probabilities"]).shape == (2, 3)


def test_num_samples_in_the_row_format(session):
    one = rest_predict(session, {"signature_name": "predict_with_samples", "instances": ROWS,
                                 "num_samples": 1})["predictions"]
    assert all(r["variance"] == [0.0, 0.0, 0.0] for r in one)  # one sample: no spread
    rows = rest_predict(session, {"signature_name": "predict_with_samples",
                                  "instances": [{"features": r, "num_samples": 20}
                                                for r in ROWS]})["predictions"]
    assert len(rows) == 2
    with pytest.raises(ValueError, match="num_samples.*differs"):
        rest_predict(session, {"signature_name": "predict_with_samples",
                               "instances": [{"features": r, "num_samples": n}
                                             for r, n in zip(ROWS, (5, 6))]})
    with pytest.raises(ValueError, match="needs the scalar input 'num_samples'"):
        rest_predict(session, {"signature_name": "predict_with_samples", "instances": ROWS})
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be >= 1"):
        rest_predict(session, {"signature_name": "predict_with_samples",
                               "inputs": {"features": ROWS, "num_samples": 0}})


@pytest.mark.parametrize("body,match", [
    ("{not json", "not valid JSON"),
    ([[0.1, 0.2, 0.3, 0.4]], "JSON object"),
    ({"signature_name": "serving_default"}, '"instances".*"inputs"'),
    ({"instances": ROWS, "inputs": ROWS}, "exactly one of"),
    ({"instances": []}, "non-empty list"),
    ({"signature_name": "nope", "instances": ROWS}, "Unknown signature_name='nope'.*deterministic"),
    ({"instances": [[0.1, 0.2, 0.3]]}, r"'features'.*shape \[4\].*\[3\]"),
    ({"instances": [[0.1, 0.2, 0.3, 0.4], [0.1]]}, "'features'"),
    ({"instances": [["a", "b", "c", "d"]]}, "'features' must be numeric"),
    ({"instances": [{"features": ROWS[0], "extra": 1}]}, "unknown inputs.*extra"),
    ({"inputs": {"features": ROWS, "extra": 1}}, "unknown.*extra"),
    ({"signature_name": "predict_with_samples", "inputs": {"features": ROWS,
                                                           "num_samples": [1, 2]}},
     "'num_samples' must be a scalar"),
])
def test_bad_bodies_are_clear_errors(session, body, match):
    with pytest.raises(ValueError, match=match):
        rest_predict(session, body)


def test_load_session_needs_a_version_folder(tmp_path):
    with pytest.raises(ValueError, match="saved_model.pb"):
        load_session(str(tmp_path))
