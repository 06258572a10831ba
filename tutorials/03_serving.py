# ---
# jupyter:
#   colab:
#     provenance: []
#     toc_visible: true
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: colab,kernelspec,language_info,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # Serving a Bayesian neural network with TensorFlow Serving
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/03_serving.ipynb)
#
# The export of a `tfp_bnn` model runs the Monte Carlo sampling inside the TensorFlow
# graph, so TF Serving answers each request with the predictive probabilities *and* their
# uncertainty. This tutorial opens an export: its warmup records, its signatures, the
# server command, REST and gRPC requests (run against the loaded model, no network), and
# what 10 vs 100 samples per request cost.

# %%
# Install tfp_bnn when it is missing (on Colab); where it is installed this does nothing.
try:
    import tfp_bnn
except ImportError:
    # %pip install -q "tfp_bnn @ git+https://github.com/tfp-bnn/tfp_bnn.git"
    import tfp_bnn

# %%
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import tfp_bnn  # before tensorflow and tf_keras: it sets TensorFlow Probability up for tf_keras

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import tf_keras

# %matplotlib inline
tf.get_logger().setLevel("ERROR")  # keep TensorFlow's INFO and deprecation lines out of the way

# CI runs every tutorial with TFP_BNN_TUTORIAL_FAST=1: a few epochs and samples, so the
# numbers and plots are rough. Leave it unset for the real run (a few minutes on a CPU).
FAST = os.environ.get("TFP_BNN_TUTORIAL_FAST", "") not in ("", "0")
EPOCHS = 20 if FAST else 300
LATENCY_REPEATS = 20 if FAST else 200
tf_keras.utils.set_random_seed(0)
WORKDIR = tempfile.mkdtemp(prefix="tfp_bnn_tutorial_")  # exports go here, not the repo
print("fast mode" if FAST else "full run", "| work folder:", WORKDIR)

# %% [markdown]
# ## 1. A model to serve
#
# A small Bayesian MLP on the shipped Iris table (see
# [01_quickstart_iris](01_quickstart_iris.ipynb) for the details).

# %%
from tfp_bnn import data

table = data.load_iris()
scaler = data.MinMaxScaler().fit(table.features)
x = scaler.transform(table.features).astype("float32")
model = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                             tf_keras.layers.Dense(32, activation="relu"),
                             tf_keras.layers.Dense(3, name="logits")])
bnn = tfp_bnn.bayesify(model, num_train_examples=len(x))
bnn.compile(tf_keras.optimizers.Adam(0.01),
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
bnn.fit(x, table.labels, epochs=EPOCHS, batch_size=16, verbose=0)
print("trained")

# %% [markdown]
# ## 2. Export, with warmup records
#
# TF Serving reads `<model_base_path>/<version>/` and serves the highest version. At load
# it replays the requests in `assets.extra/tf_serving_warmup_requests`, so the first real
# request does not pay for graph optimisation. `export_savedmodel` writes five: batches
# 1, 8 and 64 to `serving_default`, one each to `predict_with_samples` and `deterministic`.

# %%
from tensorflow_serving.apis import prediction_log_pb2

base_path = os.path.join(WORKDIR, "iris_bnn")
export_path = tfp_bnn.export_savedmodel(bnn, base_path, num_samples=10)
for root, _, files in sorted(os.walk(export_path)):
    for name in sorted(files):
        print(os.path.relpath(os.path.join(root, name), base_path))

warmup_file = os.path.join(export_path, "assets.extra", "tf_serving_warmup_requests")
print("\nwarmup records:")
for record in tf.data.TFRecordDataset(warmup_file):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    shapes = {k: [d.size for d in v.tensor_shape.dim] for k, v in request.inputs.items()}
    print(f"  {request.model_spec.signature_name:22} {shapes}")

# %% [markdown]
# ## 3. The signatures
#
# `saved_model_cli show --dir EXPORT_PATH --all` lists every signature with its inputs and
# outputs (dtype and shape; -1 is the batch dimension):

# %%
cli = shutil.which("saved_model_cli") or os.path.join(os.path.dirname(sys.executable),
                                                      "saved_model_cli")
shown = subprocess.run([cli, "show", "--dir", export_path, "--all"], capture_output=True,
                       text=True, check=True)
# The MetaGraph's SignatureDefs; the Python function listing that follows is left out.
print(shown.stdout.split("\nConcrete Functions:")[0])

# %% [markdown]
# The same from Python: the SignatureDefs of the MetaGraph as TF Serving's loader reads it
# (`tfp_bnn.serving.load_session` imports the MetaGraph into a v1 Session, as the C++
# server does).

# %%
from tfp_bnn import serving

session = serving.load_session(export_path)
def fmt(infos):
    return ", ".join(f"{k} {tf.dtypes.as_dtype(v.dtype).name}"
                     f"{[d.size for d in v.tensor_shape.dim]}"
                     for k, v in sorted(infos.items()))


for name, sig in sorted(session.signatures.items()):
    if not name.startswith("__"):  # __saved_model_init_op restores variables at load
        print(f"{name}\n  inputs:  {fmt(sig.inputs)}\n  outputs: {fmt(sig.outputs)}")

# %% [markdown]
# ## 4. The server (not run here)
#
# The official container serves the base path; REST on port 8501, gRPC on 8500. Warmup
# records are replayed by default.
#
# ```bash
# docker run --rm -p 8500:8500 -p 8501:8501 \
#   --mount type=bind,source=/path/to/iris_bnn,target=/models/iris_bnn \
#   -e MODEL_NAME=iris_bnn -t tensorflow/serving
# ```
#
# or, with the binary: `tensorflow_model_server --port=8500 --rest_api_port=8501
# --model_name=iris_bnn --model_base_path=/path/to/iris_bnn`.
#
# ## 5. REST requests
#
# Row format (`instances`, one object per example in the response) and columnar format
# (`inputs`, which also carries the scalar `num_samples` of `predict_with_samples`). With a
# server you would `POST` the body to `http://localhost:8501/v1/models/iris_bnn:predict`;
# here `serving.rest_predict` answers it from the loaded session.

# %%
row_body = {"signature_name": "serving_default", "instances": x[:2].tolist()}
print("POST /v1/models/iris_bnn:predict", json.dumps(row_body))
print(json.dumps(serving.rest_predict(session, row_body), indent=1))

columnar_body = {"signature_name": "predict_with_samples",
                 "inputs": {"features": x[:2].tolist(), "num_samples": 100}}
print("\nPOST /v1/models/iris_bnn:predict", json.dumps(columnar_body))
print(json.dumps(serving.rest_predict(session, columnar_body), indent=1))

# %% [markdown]
# ## 6. gRPC requests
#
# A gRPC client sends a `PredictRequest` protocol buffer (from `tensorflow-serving-api`)
# and gets a `PredictResponse`. Against a server:
#
# ```python
# import grpc
# from tensorflow_serving.apis import prediction_service_pb2_grpc
#
# channel = grpc.insecure_channel("localhost:8500")
# stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
# response = stub.Predict(request, timeout=5.0)
# ```
#
# Here the request goes through its wire bytes and is answered by the loaded session, the
# way the server maps a request onto the signature's tensors.

# %%
from tensorflow_serving.apis import predict_pb2


def answer(session, request):
    """A PredictResponse for a PredictRequest, computed by the loaded session."""
    signature = request.model_spec.signature_name or "serving_default"
    feeds = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for k, v in session.run(signature, feeds).items():
        response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
    return response


request = predict_pb2.PredictRequest()
request.model_spec.name = "iris_bnn"
request.model_spec.signature_name = "predict_with_samples"
request.inputs["features"].CopyFrom(tf.make_tensor_proto(x[:3], dtype=tf.float32))
request.inputs["num_samples"].CopyFrom(tf.make_tensor_proto(50, dtype=tf.int32))
wire = request.SerializeToString()
print(f"request: {len(wire)} bytes on the wire")

response = answer(session, predict_pb2.PredictRequest.FromString(wire))
for name in ("probabilities", "predictive_entropy", "mutual_information"):
    print(name, np.round(tf.make_ndarray(response.outputs[name]), 4).tolist())

# %% [markdown]
# The warmup records are `PredictRequest`s too; answering them is what the server does at
# load:

# %%
for record in tf.data.TFRecordDataset(warmup_file):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    response = answer(session, request)
    print(f"{request.model_spec.signature_name:22} -> "
          f"{ {k: tf.make_ndarray(v).shape for k, v in sorted(response.outputs.items())} }")


# %% [markdown]
# ## 7. Latency: 10 vs 100 samples
#
# Every sample is one pass through the network, batched inside the graph. `serving_default`
# fixes S at export (10 here); `predict_with_samples` lets each request choose. Median and
# 90th percentile over repeated calls of the session, after one warm-up call:

# %%
def latency_ms(batch, num_samples, repeats=LATENCY_REPEATS):
    feeds = {"features": np.resize(x, (batch, 4)), "num_samples": np.int32(num_samples)}
    session.run("predict_with_samples", feeds)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run("predict_with_samples", feeds)
        times.append(1000 * (time.perf_counter() - start))
    return np.percentile(times, [50, 90])


batches, samples = (1, 64), (10, 100)
results = {(b, s): latency_ms(b, s) for b in batches for s in samples}
for (b, s), (p50, p90) in results.items():
    print(f"batch {b:3}, S = {s:3}: median {p50:6.2f} ms, p90 {p90:6.2f} ms")

fig, ax = plt.subplots(figsize=(6, 3.5))
width = 0.35
for i, s in enumerate(samples):
    ax.bar(np.arange(len(batches)) + (i - 0.5) * width,
           [results[(b, s)][0] for b in batches], width, label=f"S = {s}")
ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
ax.set(ylabel="median latency (ms)", title="predict_with_samples latency")
ax.legend()
plt.show()
session.close()

# %% [markdown]
# At batch 1 the fixed cost of a call dominates and 100 samples cost little more than 10;
# with larger batches the cost grows with S x batch. The Monte Carlo error of the
# probabilities falls as 1/sqrt(S): choose S per request with `predict_with_samples` when
# some requests need more precision.

# %%
import shutil

shutil.rmtree(WORKDIR, ignore_errors=True)  # the exports were only for this tutorial

# %% [markdown]
# ## What you learned
#
# * An export holds three signatures (`serving_default`, `predict_with_samples`,
#   `deterministic`) and warmup records; `saved_model_cli show --all` or the SignatureDefs
#   from Python list their inputs and outputs.
# * TF Serving serves it with the stock container; no TFP or `tfp_bnn` on the server.
# * REST bodies (row or columnar format) and gRPC `PredictRequest`s can be built and checked
#   offline against the loaded export with `tfp_bnn.serving`.
# * The latency of S samples: nearly flat in S at batch 1, growing with S x batch.
#
# Next: regression with aleatoric and epistemic bands in
# [04_regression_uncertainty](04_regression_uncertainty.ipynb).
