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
# # Quickstart: a Bayesian neural network on Iris
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/01_quickstart_iris.ipynb)
#
# From an ordinary Keras classifier to a Bayesian one that says how sure it is, and on to a
# TensorFlow Serving export, in seven steps:
#
# 1. load the Iris table shipped with `tfp_bnn`;
# 2. build a Keras MLP and make it Bayesian with `tfp_bnn.bayesify`;
# 3. train it with plain `compile`/`fit` on the ELBO and plot the NLL and KL curves;
# 4. predict with Monte Carlo samples and split the uncertainty into aleatoric and epistemic;
# 5. check calibration with a reliability diagram;
# 6. export a SavedModel whose serving signature samples inside the graph;
# 7. send it a TF Serving REST request, without a server.

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
import tempfile

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
EPOCHS = 60 if FAST else 300
NUM_SAMPLES = 20 if FAST else 100
tf_keras.utils.set_random_seed(0)
WORKDIR = tempfile.mkdtemp(prefix="tfp_bnn_tutorial_")  # exports go here, not the repo
print("fast mode" if FAST else "full run", "| work folder:", WORKDIR)

# %% [markdown]
# ## 1. Data
#
# 150 flowers, 4 measurements, 3 species. The CSV ships with the package, so nothing is
# downloaded. The split is stratified by class; the min-max scaler sees the training
# split only.

# %%
from tfp_bnn import data

table = data.load_iris()
split = data.train_val_test_split(table.features, table.labels, test_fraction=0.2,
                                  val_fraction=0.2, seed=0)
scaler = data.MinMaxScaler().fit(split.x_train)
x_train, x_val, x_test = (scaler.transform(x).astype("float32")
                          for x in (split.x_train, split.x_val, split.x_test))
y_train, y_val, y_test = split.y_train, split.y_val, split.y_test
print("features:", table.feature_names)
print("classes: ", table.class_names)
print("train / val / test:", len(x_train), len(x_val), len(x_test))

# %% [markdown]
# ## 2. A Keras model, made Bayesian
#
# `bayesify` rebuilds the model with every `Dense` layer replaced by a TFP Flipout layer:
# each weight gets a Normal posterior `q(w) = N(mu, sigma^2)` and a `N(0, 1)` prior. The
# source model is not modified. `num_train_examples` sets the KL weight to `1/N`, so the
# training loss is the negative ELBO per example:
#
#     loss = NLL + KL(q || p) / N

# %%
model = tf_keras.Sequential([
    tf_keras.Input((4,), name="features"),
    tf_keras.layers.Dense(32, activation="relu"),
    tf_keras.layers.Dense(32, activation="relu"),
    tf_keras.layers.Dense(3, name="logits"),
])
bnn = tfp_bnn.bayesify(model, estimator="flipout", prior="normal",
                       num_train_examples=len(x_train))
print([type(layer).__name__ for layer in bnn.layers])
bnn.summary()

# %% [markdown]
# ## 3. Train with `fit`
#
# The model logs the two parts of the loss, `nll` and `kl`, next to `loss`, for the training
# data and for the validation data.

# %%
bnn.compile(tf_keras.optimizers.Adam(0.01),
            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
history = bnn.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=EPOCHS,
                  batch_size=16, verbose=0)

fig, (ax_nll, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.5))
ax_nll.plot(history.history["nll"], label="train")
ax_nll.plot(history.history["val_nll"], label="validation")
ax_nll.set(title="NLL (one weight sample per step)", xlabel="epoch")
ax_nll.legend()
ax_kl.plot(history.history["kl"], color="tab:red")
ax_kl.set(title="KL(q || p) / N", xlabel="epoch")
plt.show()

# %% [markdown]
# The NLL falls as the network fits. The KL term starts high, because the posterior starts
# narrow (sigma = 0.05) next to the `N(0, 1)` prior, and falls as training widens it
# wherever the data allow: that width is the weight uncertainty the predictions sample.
#
# ## 4. Predict with uncertainty
#
# `tfp_bnn.predict` draws S weight samples inside one compiled graph and returns a fixed
# `Prediction`:
#
# * `probabilities`: the mean of the S softmax outputs;
# * `predictive_entropy`, the **total** uncertainty, `H[mean_s p_s]`;
# * `expected_entropy`, the **aleatoric** part, `mean_s H[p_s]` (noise in the data: classes
#   that overlap);
# * `mutual_information`, the **epistemic** part, total - aleatoric (disagreement between
#   weight samples: lack of data).

# %%
from tfp_bnn import metrics

pred = tfp_bnn.predict(bnn, x_test, num_samples=NUM_SAMPLES, seed=0)
probs = pred.probabilities
print(f"test accuracy {metrics.accuracy(probs, y_test):.3f}, "
      f"NLL {metrics.nll(probs, y_test):.3f}, "
      f"ECE {metrics.expected_calibration_error(probs, y_test, num_bins=10):.3f}")

# total = aleatoric + epistemic, example by example
assert np.allclose(pred.predictive_entropy,
                   pred.expected_entropy + pred.mutual_information, atol=1e-5)
print("\n  true  predicted  p(predicted)  total  aleatoric  epistemic")
for i in range(8):
    c = pred.predicted_class[i]
    print(f"{table.class_names[y_test[i]]:>10} {table.class_names[c]:>10} "
          f"{pred.probabilities[i, c]:9.3f} {pred.predictive_entropy[i]:9.3f} "
          f"{pred.expected_entropy[i]:9.3f} {pred.mutual_information[i]:9.3f}")

# %% [markdown]
# Far from the training data the weight samples disagree, and the epistemic part grows.
# The scaled training features lie in [0, 1]; here are points well outside:

# %%
far = np.array([[3.0, 3.0, 3.0, 3.0], [-2.0, 0.5, 3.0, -2.0]], dtype="float32")
pred_far = tfp_bnn.predict(bnn, far, num_samples=NUM_SAMPLES, seed=0)
print("mean epistemic uncertainty (mutual information): "
      f"test {pred.mutual_information.mean():.4f}, "
      f"far away {pred_far.mutual_information.mean():.4f}")

# %% [markdown]
# ## 5. Calibration
#
# A calibrated model is right 80 % of the time when it says 80 %. The reliability diagram
# bins the test predictions by confidence and compares each bin's accuracy with the
# diagonal; the expected calibration error (ECE) is the average gap. With 30 test flowers
# the bins are coarse. `tfp_bnn.plots` returns matplotlib figures (pass `path=` to save
# a PNG).

# %%
from tfp_bnn import plots

plots.reliability_diagram(pred.probabilities, y_test, num_bins=10, title="Iris BNN")

# %% [markdown]
# ## 6. Export for TensorFlow Serving
#
# `export_savedmodel` writes `<export_dir>/<version>/` with three signatures:
# `serving_default` (S Monte Carlo samples inside the graph), `predict_with_samples` (S as
# an input) and `deterministic` (posterior means), plus TF Serving warmup records. The graph
# holds core TensorFlow ops only: the server needs neither TFP nor `tfp_bnn`.

# %%
export_path = tfp_bnn.export_savedmodel(bnn, os.path.join(WORKDIR, "iris_bnn"),
                                        num_samples=10)
print(export_path)
for root, _, files in sorted(os.walk(export_path)):
    for name in sorted(files):
        print("  ", os.path.relpath(os.path.join(root, name), export_path))

# %% [markdown]
# ## 7. Call it with a TF Serving REST request
#
# With the export behind TF Serving you would send
#
#     curl -X POST http://localhost:8501/v1/models/iris_bnn:predict \
#       -d '{"signature_name": "serving_default", "instances": [[0.22, 0.62, 0.07, 0.04]]}'
#
# Without a server, `tfp_bnn.serving` loads the export the way TF Serving's C++ loader does
# (the MetaGraph into a Session) and answers the same JSON body; this is what
# `tfp-bnn serve-check EXPORT_PATH --body request.json` runs.

# %%
from tfp_bnn import serving

session = serving.load_session(export_path)
body = json.dumps({"signature_name": "serving_default", "instances": x_test[:2].tolist()})
response = serving.rest_predict(session, body)
print(json.dumps(response, indent=1))

# %% [markdown]
# The row format ("instances") returns one object per example. The columnar format
# ("inputs") also takes the scalar `num_samples` of `predict_with_samples`: more samples,
# less Monte Carlo noise in the served probabilities.

# %%
body = {"signature_name": "predict_with_samples",
        "inputs": {"features": x_test.tolist(), "num_samples": 200}}
served = np.array(serving.rest_predict(session, body)["outputs"]["probabilities"])
print("largest |served - tfp_bnn.predict| probability:",
      f"{np.abs(served - pred.probabilities).max():.3f} (Monte Carlo noise: 200 vs "
      f"{NUM_SAMPLES} samples)")
agree = int((served.argmax(-1) == pred.predicted_class).sum())
print(f"same predicted class for {agree} of {len(served)} test flowers")
session.close()

# %%
import shutil

shutil.rmtree(WORKDIR, ignore_errors=True)  # the exports were only for this tutorial

# %% [markdown]
# ## What you learned
#
# * `tfp_bnn.bayesify(model, num_train_examples=N)` turns a Keras model into a Bayesian one
#   trained with the ordinary `compile`/`fit`; its History holds `nll` and `kl`.
# * `tfp_bnn.predict` returns the predictive probabilities and splits the total uncertainty
#   into aleatoric (expected entropy) and epistemic (mutual information) parts.
# * `tfp_bnn.plots.reliability_diagram` and `tfp_bnn.metrics` check calibration.
# * `tfp_bnn.export_savedmodel` writes a TF Serving model that samples inside the graph, and
#   `tfp_bnn.serving` answers REST requests against it without a server.
#
# Next: a Bayesian CNN and out-of-distribution inputs in
# [02_bayesian_cnn_digits](02_bayesian_cnn_digits.ipynb).
