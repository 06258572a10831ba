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
# # Uncertainty methods compared: VI, MC dropout, ensembles, SWAG, Laplace
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/05_methods_compared.ipynb)
#
# `tfp_bnn` puts five ways of getting uncertainty from a Keras network behind one
# interface: each gives a tf_keras model that `tfp_bnn.predict` samples and
# `tfp_bnn.export_savedmodel` exports. Here they share one MLP backbone on scikit-learn's
# 8x8 digits (digits 0-7 for training; 8 and 9 as out-of-distribution inputs), one table
# and one figure.
#
# | Method | What is random at prediction | Cost |
# |---|---|---|
# | VI (Flipout), `bayesify` | weights drawn from the learned Gaussian posterior | 2x parameters, slower training |
# | MC dropout, `mc_dropout` | dropout masks, kept on at test time | one network |
# | Deep ensemble, `DeepEnsemble` | which of M independently trained networks | M trainings |
# | SWAG, `callbacks.SWAG` | weights from a Gaussian fitted to the SGD trajectory | a few extra epochs |
# | Laplace, `laplace` | last-layer weights from a Gaussian at the trained optimum | one pass over the data |
#
# For the full benchmark (more seeds, Iris as well) run `scripts/compare_methods.py` from
# the repository.

# %%
# Install tfp_bnn when it is missing (on Colab); where it is installed this does nothing.
try:
    import tfp_bnn
except ImportError:
    # %pip install -q "tfp_bnn @ git+https://github.com/tfp-bnn/tfp_bnn.git"
    import tfp_bnn

# %%
import os
import time
import warnings

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
EPOCHS = 3 if FAST else 40          # deterministic net, ensemble members, MC dropout
VI_EPOCHS = 3 if FAST else 120
SWAG_EPOCHS = 3 if FAST else 30     # extra epochs collecting SWAG moments
MEMBERS = 3 if FAST else 5
NUM_SAMPLES = 10 if FAST else 100
tf_keras.utils.set_random_seed(0)
print("fast mode" if FAST else "full run")

# %%
from sklearn.datasets import load_digits

from tfp_bnn import data, metrics

images, labels = load_digits(return_X_y=True)
images = (images / 16.0).astype("float32")
known = labels < 8
split = data.train_val_test_split(images[known], labels[known], test_fraction=0.3,
                                  val_fraction=0.1, seed=0)
x_train = np.concatenate([split.x_train, split.x_val])
y_train = np.concatenate([split.y_train, split.y_val])
x_test, y_test, x_ood = split.x_test, split.y_test, images[~known]
print("train / test / out of distribution:", len(x_train), len(x_test), len(x_ood))


def backbone():
    return tf_keras.Sequential([tf_keras.Input((64,), name="pixels"),
                                tf_keras.layers.Dense(64, activation="relu"),
                                tf_keras.layers.Dense(64, activation="relu"),
                                tf_keras.layers.Dense(8, name="logits")], name="mlp")


def compiled(model):
    model.compile(tf_keras.optimizers.Adam(1e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit(model, epochs, callbacks=()):
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
              callbacks=list(callbacks))
    return time.perf_counter() - start


# %% [markdown]
# ## 1. Train every method
#
# Each entry of `trained` is a tf_keras model ready for `tfp_bnn.predict`, and the seconds
# it took to train (the deterministic network's time included for the post-hoc methods,
# SWAG and Laplace).

# %%
trained = {}

tf_keras.utils.set_random_seed(0)
det = compiled(backbone())
det_seconds = fit(det, EPOCHS)
trained["Deterministic"] = (det, det_seconds)

tf_keras.utils.set_random_seed(0)
vi = compiled(tfp_bnn.bayesify(backbone(), estimator="flipout",
                               num_train_examples=len(x_train)))
trained["VI (Flipout)"] = (vi, fit(vi, VI_EPOCHS))

tf_keras.utils.set_random_seed(0)
mcd = compiled(tfp_bnn.mc_dropout(backbone(), rate=0.1, where="before_dense"))
trained["MC dropout"] = (mcd, fit(mcd, EPOCHS))

ensemble = tfp_bnn.DeepEnsemble(lambda: compiled(backbone()), num_members=MEMBERS, seed=0)
start = time.perf_counter()
ensemble.fit(x_train, y_train, epochs=EPOCHS, batch_size=32, verbose=0)
trained[f"Ensemble ({MEMBERS})"] = (ensemble.as_model(), time.perf_counter() - start)

# SWAG: continue training a copy of the deterministic net, collecting weight moments.
swag_net = compiled(tf_keras.models.clone_model(det))
swag_net.set_weights(det.get_weights())
swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=10)
swag_seconds = fit(swag_net, SWAG_EPOCHS, [swag])
trained["SWAG"] = (swag.as_model(scale=0.5), det_seconds + swag_seconds)

start = time.perf_counter()
la = tfp_bnn.laplace(det, x_train, y_train, subset="last_layer", hessian="kron",
                     prior_precision="marglik")
trained["Laplace (last layer)"] = (la.as_model(), det_seconds + time.perf_counter() - start)
print({name: f"{seconds:.1f} s" for name, (_, seconds) in trained.items()})

# %% [markdown]
# ## 2. One table
#
# Accuracy, NLL and expected calibration error (ECE) on the test digits; AUROC of telling
# the unseen digits 8/9 from the test digits by the predictive entropy (total uncertainty)
# and by the mutual information (epistemic; zero for the deterministic network);
# milliseconds to predict 1,000 examples with S samples (the ensemble uses its M members).

# %%
import pandas as pd

predictions, rows = {}, []
for name, (model, seconds) in trained.items():
    s = {"Deterministic": 1, f"Ensemble ({MEMBERS})": MEMBERS}.get(name, NUM_SAMPLES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deterministic net: variance 0
        p_in = tfp_bnn.predict(model, x_test, num_samples=s, seed=0, verbose=0)
        p_out = tfp_bnn.predict(model, x_ood, num_samples=s, seed=0, verbose=0)
        x1000 = np.resize(x_test, (1000, 64))
        tfp_bnn.predict(model, x1000, num_samples=s, seed=0, verbose=0)  # trace once
        start = time.perf_counter()
        tfp_bnn.predict(model, x1000, num_samples=s, seed=0, verbose=0)
        predict_ms = 1000 * (time.perf_counter() - start)
    predictions[name] = (p_in, p_out)
    rows.append({
        "method": name,
        "accuracy": metrics.accuracy(p_in.probabilities, y_test),
        "NLL": metrics.nll(p_in.probabilities, y_test),
        "ECE": metrics.expected_calibration_error(p_in.probabilities, y_test),
        "AUROC 8/9 (entropy)": metrics.ood_auroc(p_in.predictive_entropy,
                                                 p_out.predictive_entropy),
        "AUROC 8/9 (MI)": (metrics.ood_auroc(p_in.mutual_information,
                                              p_out.mutual_information)
                           if name != "Deterministic" else float("nan")),
        "train s": seconds,
        "predict ms / 1k": predict_ms,
    })
table = pd.DataFrame(rows).set_index("method").round(3)
table

# %% [markdown]
# ## 3. One figure
#
# Top: reliability of each method (bars on the diagonal = calibrated). Bottom: predictive
# entropy on test digits vs unseen 8/9 (separated = useful for out-of-distribution
# detection).

# %%
fig, axes = plt.subplots(2, len(predictions), figsize=(2.6 * len(predictions), 5.2))
for j, (name, (p_in, p_out)) in enumerate(predictions.items()):
    bins = metrics.calibration_bins(p_in.probabilities, y_test, num_bins=10)
    ax = axes[0, j]
    ax.bar(bins.edges[:-1], np.nan_to_num(bins.accuracy), width=np.diff(bins.edges),
           align="edge", edgecolor="black", linewidth=0.5)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}\nECE {table.loc[name, 'ECE']:.3f}",
           xlabel="confidence")
    ax.title.set_fontsize(9)
    ax = axes[1, j]
    edges = np.histogram_bin_edges(np.concatenate([p_in.predictive_entropy,
                                                   p_out.predictive_entropy]), bins=20)
    ax.hist(p_in.predictive_entropy, bins=edges, alpha=0.5, density=True, label="test 0-7")
    ax.hist(p_out.predictive_entropy, bins=edges, alpha=0.5, density=True,
            label="unseen 8/9")
    ax.set(xlabel="predictive entropy",
           title=f"AUROC {table.loc[name, 'AUROC 8/9 (entropy)']:.3f}")
    ax.title.set_fontsize(9)
axes[0, 0].set_ylabel("accuracy")
axes[1, 0].set_ylabel("density")
axes[1, 0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the table with the seeds in mind: this is one training run of a small network, and
# the differences between the Bayesian methods are often within the spread between seeds
# (`scripts/compare_methods.py --seeds 3` reports means and standard deviations). In fast
# mode the networks are barely trained and the numbers mean little.

# %% [markdown]
# ## What you learned
#
# * VI (`bayesify`), MC dropout (`mc_dropout`), deep ensembles (`DeepEnsemble`), SWAG
#   (`callbacks.SWAG`) and last-layer Laplace (`laplace`) all produce tf_keras models that
#   `tfp_bnn.predict` samples and `tfp_bnn.export_savedmodel` exports.
# * `tfp_bnn.metrics` scores them the same way: accuracy, NLL, ECE and out-of-distribution
#   AUROC by predictive entropy or mutual information.
# * The methods differ mostly in cost: training time (VI, ensembles), extra epochs (SWAG), a
#   pass over the data (Laplace) or nothing but dropout (MC dropout), and in prediction
#   time, which grows with the number of samples or members.
