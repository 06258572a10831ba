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
# # Bayesian compression: prune a network with its posterior
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/06_compression.ipynb)
#
# A weight whose posterior is mostly noise can go. Sparse variational dropout (Molchanov et
# al. 2017) gives every weight a log-uniform prior and learns its own noise level
# `log alpha = log sigma^2 - log theta^2`; weights with `log alpha > 3` (a dropout rate
# above 0.95) are removed. The group normal-Jeffreys prior (Louizos et al. 2017) learns one
# scale per hidden unit, so whole neurons switch off and leave the layer.
#
# This notebook trains the LeNet-300-100-style MLP (64-300-100-10) on scikit-learn's 8x8
# digits with both priors, compresses it with `tfp_bnn.compress` and shows what is left:
# weights kept per layer, the histogram of log alpha and the hidden units kept.
# `scripts/compression.py` runs the full benchmark (an MLP and a CNN, three seeds).

# %%
# Install tfp_bnn when it is missing (on Colab); where it is installed this does nothing.
try:
    import tfp_bnn
except ImportError:
    # %pip install -q "tfp_bnn @ git+https://github.com/tfp-bnn/tfp_bnn.git"
    import tfp_bnn

# %%
import os
import tempfile

import tfp_bnn  # before tensorflow and tf_keras: it sets TensorFlow Probability up for tf_keras

import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
import tf_keras

# %matplotlib inline
tf.get_logger().setLevel("ERROR")  # keep TensorFlow's INFO and deprecation lines out of the way

# CI runs every tutorial with TFP_BNN_TUTORIAL_FAST=1: a few epochs, so little is pruned and
# the numbers mean little. Leave it unset for the real run (about a minute on a CPU).
FAST = os.environ.get("TFP_BNN_TUTORIAL_FAST", "") not in ("", "0")
DENSE_EPOCHS = 3 if FAST else 60
SPARSE_EPOCHS = 3 if FAST else 100
tf_keras.utils.set_random_seed(0)
print("fast mode" if FAST else "full run")

# %%
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y,
                                                    random_state=0)
loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

dense = tf_keras.Sequential([
    tf_keras.Input((64,)), tf_keras.layers.Dense(300, activation="relu"),
    tf_keras.layers.Dense(100, activation="relu"), tf_keras.layers.Dense(10)])
dense.compile(tf_keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
dense.fit(x_train, y_train, epochs=DENSE_EPOCHS, batch_size=64, verbose=0)
print("dense test accuracy:", dense.evaluate(x_test, y_test, verbose=0)[1])

# %% [markdown]
# ## Sparse variational dropout
#
# `prior="log_uniform"` is all it takes; the posterior starts at the trained dense weights
# with a small sigma, and the KL weight warms up from 0 to 1/N.

# %%
def train(prior, lr, warmup):
    bnn = tfp_bnn.bayesify(
        dense, estimator="local_reparameterization", prior=prior,
        posterior=tfp_bnn.posteriors.MeanField(init_scale=0.01, from_weights=True),
        num_train_examples=len(x_train))
    bnn.compile(tf_keras.optimizers.Adam(lr), loss)
    bnn.fit(x_train, y_train, epochs=SPARSE_EPOCHS, batch_size=64, verbose=0,
            callbacks=[tfp_bnn.callbacks.KLAnnealing(warmup_epochs=warmup)])
    return bnn


def accuracy(model):
    return float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))


sparse_vd = train("log_uniform", 1e-3, 100)
result = tfp_bnn.compress(sparse_vd, threshold=3.0)
print(f"compressed test accuracy {accuracy(result.model):.3f}, "
      f"weights kept {100 * result.report['nonzero_fraction']:.2f} %, "
      f"{result.report['bits_per_weight']:.1f} bits per weight, "
      f"compression {result.report['compression_ratio']:.0f}x")
for row in result.report["layers"]:
    print(f"  {row['name']:8s} {row['weights_kept']:6d} / {row['weights']:6d} weights, "
          f"{row['bits']} bits")

# %% [markdown]
# The picture: the weights kept per layer, and log alpha of every weight. The mass at the
# right end (log alpha is clipped at 8) is what the threshold removes.

# %%
layers = tfp_bnn.layers.bayesian_layers(sparse_vd)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
rows = result.report["layers"]
axes[0].bar([r["name"] for r in rows], [100 * r["weights_kept"] / r["weights"] for r in rows])
axes[0].set_ylabel("weights kept (%)")
axes[0].set_title("weights kept per layer")
for layer in layers:
    q = layer.kernel_posterior.distribution
    log_alpha = tfp_bnn.priors.log_alpha(q.loc, q.scale).numpy().ravel()
    axes[1].hist(log_alpha, bins=60, range=(-8, 8), histtype="step", label=layer.name)
axes[1].axvline(3.0, color="k", linestyle="--", label="threshold")
axes[1].set_xlabel("log alpha")
axes[1].set_yscale("log")
axes[1].legend()
axes[1].set_title("log alpha of every weight")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Group sparsity: whole units switch off
#
# `prior="group_normal_jeffreys"` adds one Bayesian scale after every hidden layer. Units
# whose scale is noise are removed from their layer and from the next layer's inputs: the
# compressed model has smaller layers, not just zeros.

# %%
grouped = train("group_normal_jeffreys", 3e-3, 20)
small = tfp_bnn.compress(grouped, threshold=3.0)
print(f"compressed test accuracy {accuracy(small.model):.3f}")
print("layer shapes:", [l.get_weights()[0].shape for l in small.model.layers if l.weights])

fig, ax = plt.subplots(figsize=(5, 3))
rows = small.report["layers"][:-1]
ax.bar([r["name"] for r in rows], [r["units"] for r in rows], label="units", color="0.8")
ax.bar([r["name"] for r in rows], [r["units_kept"] for r in rows], label="kept")
ax.set_ylabel("hidden units")
ax.legend()
plt.show()

# %% [markdown]
# The compressed model is a plain tf_keras model: it exports and serves like any other,
# without TensorFlow Probability at serving time.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = tfp_bnn.export_savedmodel(small.model, os.path.join(tmp, "digits"), num_samples=1)
    served = tf.saved_model.load(path).signatures["deterministic"]
    name = list(served.structured_input_signature[1])[0]
    print(sorted(served(**{name: tf.constant(x_test[:2])}).keys()))

# %% [markdown]
# ## What you learned
#
# * `bayesify(model, prior="log_uniform")` trains sparse variational dropout; weights with
#   `log alpha > 3` are noise.
# * `prior="group_normal_jeffreys"` learns a scale per hidden unit, so whole units switch off.
# * `tfp_bnn.compress(bnn)` returns the smaller model (`result.model`, plain tf_keras) and a
#   report: weights and units kept per layer, the bits per weight the posterior variance
#   implies, and the compression ratio against float32.
