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
# # A Bayesian CNN on handwritten digits
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/02_bayesian_cnn_digits.ipynb)
#
# A convolutional network whose `Conv2D` and `Dense` layers become Flipout layers, trained
# on scikit-learn's 8x8 digits (they ship with scikit-learn, no download). The network sees
# the digits 0-7 only; then we ask it about the digits 8 and 9, which it has never seen,
# and about noise images, and check that its epistemic uncertainty tells them apart.
#
# Last, two ways to start the posterior: from scratch, or from a trained deterministic
# network with MOPED (sigma = 0.1 |w|).

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
DET_EPOCHS = 3 if FAST else 30      # deterministic CNN
VI_EPOCHS = 3 if FAST else 60       # Bayesian CNN from scratch
MOPED_EPOCHS = 2 if FAST else 15    # Bayesian CNN from the deterministic weights
NUM_SAMPLES = 10 if FAST else 100
tf_keras.utils.set_random_seed(0)
print("fast mode" if FAST else "full run")

# %% [markdown]
# ## 1. Data: digits 0-7 in distribution, 8 and 9 and noise out of it
#
# 1,797 grey 8x8 images with values 0-16, scaled to [0, 1].

# %%
from sklearn.datasets import load_digits

from tfp_bnn import data

images, labels = load_digits(return_X_y=True)
images = (images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
known = labels < 8
split = data.train_val_test_split(images[known], labels[known], test_fraction=0.3,
                                  val_fraction=0.1, seed=0)
x_train, y_train = split.x_train, split.y_train
x_val, y_val = split.x_val, split.y_val
x_test, y_test = split.x_test, split.y_test
x_unseen = images[~known]                     # the digits 8 and 9
rng = np.random.default_rng(0)
x_noise = np.clip(x_train.mean(0) + x_train.std(0) * rng.standard_normal((300, 8, 8, 1)),
                  0, 1).astype("float32")   # noise with the pixels' mean and spread
print("train / val / test:", len(x_train), len(x_val), len(x_test),
      "| unseen 8/9:", len(x_unseen), "| noise:", len(x_noise))

fig, axes = plt.subplots(1, 8, figsize=(9, 1.4))
for ax, img, title in zip(axes, [x_train[0], x_train[1], x_train[2], x_unseen[0],
                                 x_unseen[1], x_noise[0], x_noise[1], x_noise[2]],
                          ["train", "train", "train", "unseen", "unseen", "noise",
                           "noise", "noise"]):
    ax.imshow(img[..., 0], cmap="gray_r")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
plt.show()


# %% [markdown]
# ## 2. The CNN, deterministic and Bayesian
#
# `bayesify` swaps `Conv2D` for `Conv2DFlipout` and `Dense` for `DenseFlipout`; pooling and
# flattening are copied unchanged.

# %%
def cnn():
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="image"),
        tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        tf_keras.layers.MaxPooling2D(2),
        tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(64, activation="relu"),
        tf_keras.layers.Dense(8, name="logits"),
    ], name="cnn")


def compiled(model, learning_rate=3e-3):
    model.compile(tf_keras.optimizers.Adam(learning_rate),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


bnn = compiled(tfp_bnn.bayesify(cnn(), num_train_examples=len(x_train)))
print([type(layer).__name__ for layer in bnn.layers])

# %% [markdown]
# ## 3. Train from scratch
#
# `tfp_bnn.callbacks.MCValidation` scores the Monte Carlo predictive on held-out data at the
# end of every epoch (Keras's own validation uses a single weight sample).

# %%
start = time.perf_counter()
scratch_history = bnn.fit(
    x_train, y_train, epochs=VI_EPOCHS, batch_size=32, verbose=0,
    callbacks=[tfp_bnn.callbacks.MCValidation(x_val, y_val, num_samples=10, seed=0,
                                              prefix="mc_val_")])
scratch_seconds = time.perf_counter() - start
print(f"{VI_EPOCHS} epochs in {scratch_seconds:.1f} s; MC validation accuracy "
      f"{scratch_history.history['mc_val_accuracy'][-1]:.3f}")

# %% [markdown]
# ## 4. Uncertainty in and out of distribution
#
# On the test digits the network should be sure; on unseen digits and noise its weight
# samples should disagree (epistemic uncertainty, the mutual information) and its
# predictive distribution should spread out (total uncertainty, the predictive entropy).
# The AUROC measures how well a score separates in from out (1 = perfectly, 0.5 = not at
# all).

# %%
from tfp_bnn import metrics, plots

pred_test = tfp_bnn.predict(bnn, x_test, num_samples=NUM_SAMPLES, seed=0, verbose=0)
pred_unseen = tfp_bnn.predict(bnn, x_unseen, num_samples=NUM_SAMPLES, seed=0, verbose=0)
pred_noise = tfp_bnn.predict(bnn, x_noise, num_samples=NUM_SAMPLES, seed=0, verbose=0)
print(f"test accuracy {metrics.accuracy(pred_test.probabilities, y_test):.3f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, field, label in zip(axes, ["mutual_information", "predictive_entropy"],
                            ["epistemic: mutual information",
                             "total: predictive entropy"]):
    values = [getattr(p, field) for p in (pred_test, pred_unseen, pred_noise)]
    edges = np.histogram_bin_edges(np.concatenate(values), bins=30)
    for v, name in zip(values, ["test digits 0-7", "unseen digits 8/9", "noise"]):
        ax.hist(v, bins=edges, density=True, alpha=0.5, label=name)
    ax.set(xlabel=label, ylabel="density")
    ax.legend()
plt.show()

for name, p in (("unseen 8/9", pred_unseen), ("noise", pred_noise)):
    print(f"AUROC test vs {name:10}: by mutual information "
          f"{metrics.ood_auroc(pred_test.mutual_information, p.mutual_information):.3f}, "
          f"by predictive entropy "
          f"{metrics.ood_auroc(pred_test.predictive_entropy, p.predictive_entropy):.3f}")

# %% [markdown]
# The same comparison for one pair with `tfp_bnn.plots.uncertainty_histogram`, which puts
# the AUROC in the legend:

# %%
plots.uncertainty_histogram(pred_test.mutual_information, pred_unseen.mutual_information,
                            label="mutual information", title="test 0-7 vs unseen 8/9")

# %% [markdown]
# The unseen images the network is least sure about, with its guess (it can only answer
# 0-7):

# %%
order = np.argsort(-pred_unseen.mutual_information)[:8]
fig, axes = plt.subplots(1, 8, figsize=(9, 1.6))
for ax, i in zip(axes, order):
    ax.imshow(x_unseen[i, ..., 0], cmap="gray_r")
    ax.set_title(f"guess {pred_unseen.predicted_class[i]}\n"
                 f"MI {pred_unseen.mutual_information[i]:.2f}", fontsize=7)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## 5. MOPED: start the posterior at a trained deterministic network
#
# Training a BNN from a random start is slow: the posterior means must first learn what a
# deterministic network learns, under the noise of the weight samples. MOPED (Krishnan et
# al. 2020) trains the deterministic network first, then starts each posterior at its
# weights `w` with `sigma = delta |w|` (here `delta = 0.1`) and fine-tunes a few epochs.

# %%
from tfp_bnn.posteriors import MeanField

start = time.perf_counter()
tf_keras.utils.set_random_seed(0)
det = compiled(cnn())
det.fit(x_train, y_train, epochs=DET_EPOCHS, batch_size=32, verbose=0)
moped = tfp_bnn.bayesify(det, posterior=MeanField(from_weights=True, moped_delta=0.1),
                         num_train_examples=len(x_train))
moped = compiled(moped, learning_rate=1e-3)
at_start = tfp_bnn.predict(moped, x_val, num_samples=10, seed=0)
print(f"MOPED before fine-tuning: validation accuracy "
      f"{metrics.accuracy(at_start.probabilities, y_val):.3f}")
moped_history = moped.fit(
    x_train, y_train, epochs=MOPED_EPOCHS, batch_size=32, verbose=0,
    callbacks=[tfp_bnn.callbacks.MCValidation(x_val, y_val, num_samples=10, seed=0,
                                              prefix="mc_val_")])
moped_seconds = time.perf_counter() - start

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(np.arange(1, VI_EPOCHS + 1), scratch_history.history["mc_val_nll"],
        marker=".", label="from scratch")
ax.plot(DET_EPOCHS + np.arange(1, MOPED_EPOCHS + 1), moped_history.history["mc_val_nll"],
        marker=".", label=f"MOPED (after {DET_EPOCHS} deterministic epochs)")
ax.set(xlabel="epochs of training (deterministic + Bayesian)",
       ylabel="MC validation NLL", title="Validation NLL")
ax.legend()
plt.show()

print(f"{'':12} {'accuracy':>9} {'NLL':>7} {'ECE':>7} {'AUROC 8/9':>10} "
      f"{'AUROC noise':>12} {'train s':>8}")
for name, model, seconds in (("scratch", bnn, scratch_seconds),
                             ("MOPED", moped, moped_seconds)):
    p = tfp_bnn.predict(model, x_test, num_samples=NUM_SAMPLES, seed=0, verbose=0)
    mi = {k: tfp_bnn.predict(model, x, num_samples=NUM_SAMPLES, seed=0,
                             verbose=0).mutual_information
          for k, x in (("unseen", x_unseen), ("noise", x_noise))}
    print(f"{name:12} {metrics.accuracy(p.probabilities, y_test):9.3f} "
          f"{metrics.nll(p.probabilities, y_test):7.3f} "
          f"{metrics.expected_calibration_error(p.probabilities, y_test):7.3f} "
          f"{metrics.ood_auroc(p.mutual_information, mi['unseen']):10.3f} "
          f"{metrics.ood_auroc(p.mutual_information, mi['noise']):12.3f} {seconds:8.1f}")

# %% [markdown]
# MOPED starts near the deterministic network's accuracy and needs a fraction of the
# Bayesian epochs. Its posterior scales come from the weights rather than from the data, so
# compare the out-of-distribution AUROCs too before choosing it: a small `moped_delta`
# gives a network that is nearly deterministic.

# %% [markdown]
# ## What you learned
#
# * `bayesify` makes convolutional layers Bayesian too (`Conv2D` -> `Conv2DFlipout`) and
#   copies the other layers unchanged.
# * The mutual information (epistemic) separates inputs unlike the training data, such as
#   unseen classes and noise, from the test data; `metrics.ood_auroc` and
#   `plots.uncertainty_histogram` measure and show it.
# * `tfp_bnn.callbacks.MCValidation` logs the Monte Carlo validation NLL and accuracy per
#   epoch.
# * `MeanField(from_weights=True, moped_delta=0.1)` starts the posterior at a trained
#   deterministic network (MOPED), which cuts the Bayesian training to a few epochs.
#
# Next: serving the model in [03_serving](03_serving.ipynb).
