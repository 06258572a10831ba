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
# # Regression: aleatoric vs epistemic uncertainty
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/04_regression_uncertainty.ipynb)
#
# A Bayesian network with a heteroscedastic Gaussian head predicts, for each input, a mean
# and a noise level. Sampling its weights then separates two kinds of uncertainty:
#
# * **aleatoric**, the noise in the data, which no amount of data removes: the predicted
#   noise variance, averaged over weight samples;
# * **epistemic**, the model's ignorance, which more data would remove: the variance of the
#   predicted mean across weight samples.
#
# The toy data are generated here: a sine with noise that grows from left to right, and a
# gap without data in the middle.

# %%
# Install tfp_bnn when it is missing (on Colab); where it is installed this does nothing.
try:
    import tfp_bnn
except ImportError:
    # %pip install -q "tfp_bnn @ git+https://github.com/tfp-bnn/tfp_bnn.git"
    import tfp_bnn

# %%
import os

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
EPOCHS = 150 if FAST else 1500
NUM_SAMPLES = 20 if FAST else 200
tf_keras.utils.set_random_seed(0)
print("fast mode" if FAST else "full run")


# %% [markdown]
# ## 1. Toy data with a gap
#
# `y = sin(x) + noise`, the noise standard deviation growing from 0.05 at `x = -4` to 0.45
# at `x = 4`, and no data for `-1 < x < 1`.

# %%
def noise_std(x):
    return 0.05 + 0.05 * (x + 4.0)


rng = np.random.default_rng(0)
x_train = np.concatenate([rng.uniform(-4, -1, 200), rng.uniform(1, 4, 200)])
y_train = np.sin(x_train) + noise_std(x_train) * rng.standard_normal(x_train.shape)
x_train, y_train = x_train[:, None].astype("float32"), y_train[:, None].astype("float32")
grid = np.linspace(-6, 6, 400, dtype="float32")[:, None]

plt.figure(figsize=(8, 3))
plt.scatter(x_train, y_train, s=5, color="black", label="training data")
plt.plot(grid, np.sin(grid), color="gray", linestyle="--", label="sin(x)")
plt.axvspan(-1, 1, color="gray", alpha=0.1, label="gap")
plt.legend()
plt.show()

# %% [markdown]
# ## 2. A Gaussian head, made Bayesian
#
# `tfp_bnn.heads.GaussianHead` turns the `Dense(2)` output into `(mean, std)` with
# `std = softplus(raw) + min_scale`; `tfp_bnn.losses.GaussianNLL` is the matching
# likelihood. `bayesify` makes the `Dense` layers Bayesian and copies the head unchanged.
#
# With 400 points and some 4,400 weights, the full KL term (weight 1/N) pulls the
# posterior back to the prior so hard that the network underfits (set `temperature=1.0`
# below to see it). `tfp_bnn.callbacks.KLTemperature(0.1)` trains on a tempered ELBO,
# `NLL + 0.1 KL / N`, a common remedy on small data sets.

# %%
model = tf_keras.Sequential([
    tf_keras.Input((1,), name="x"),
    tf_keras.layers.Dense(64, activation="tanh"),
    tf_keras.layers.Dense(64, activation="tanh"),
    tf_keras.layers.Dense(2),
    tfp_bnn.heads.GaussianHead(),
])
bnn = tfp_bnn.bayesify(model, num_train_examples=len(x_train))
bnn.compile(tf_keras.optimizers.Adam(0.01), tfp_bnn.losses.GaussianNLL())
history = bnn.fit(x_train, y_train, epochs=EPOCHS, batch_size=50, verbose=0,
                  callbacks=[tfp_bnn.callbacks.KLTemperature(temperature=0.1)])

plt.figure(figsize=(5, 3))
plt.plot(history.history["nll"], label="Gaussian NLL")
plt.plot(history.history["kl"], label="0.1 KL / N")
plt.xlabel("epoch")
plt.legend()
plt.show()

# %% [markdown]
# ## 3. The two bands
#
# `tfp_bnn.predict` recognises the Gaussian head and returns `mean`, `aleatoric_variance`
# (mean of the predicted variances over the S weight samples), `epistemic_variance`
# (variance of the predicted means) and their sum `variance`.

# %%
pred = tfp_bnn.predict(bnn, grid, num_samples=NUM_SAMPLES, seed=0, verbose=0)
mean = pred.mean[:, 0]
aleatoric = np.sqrt(pred.aleatoric_variance[:, 0])
epistemic = np.sqrt(pred.epistemic_variance[:, 0])
total = np.sqrt(pred.variance[:, 0])
g = grid[:, 0]

fig, (ax, ax_std) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
ax.fill_between(g, mean - 2 * total, mean + 2 * total, color="tab:orange", alpha=0.25,
                label="±2 total std (aleatoric + epistemic)")
ax.fill_between(g, mean - 2 * epistemic, mean + 2 * epistemic, color="tab:blue",
                alpha=0.45, label="±2 epistemic std")
ax.scatter(x_train, y_train, s=4, color="black", label="training data")
ax.plot(g, mean, color="tab:blue", label="predictive mean")
ax.plot(g, np.sin(g), color="gray", linestyle="--", label="sin(x)")
ax.axvspan(-1, 1, color="gray", alpha=0.1)
ax.set(ylim=(-3, 3), ylabel="y")
ax.legend(loc="lower right", fontsize=8)

ax_std.plot(g, aleatoric, color="tab:orange", label="aleatoric std (predicted noise)")
ax_std.plot(g, epistemic, color="tab:blue", label="epistemic std")
inside = np.abs(g) <= 4
ax_std.plot(g[inside], noise_std(g[inside]), color="black", linestyle=":",
            label="true noise std")
ax_std.axvspan(-1, 1, color="gray", alpha=0.1)
ax_std.set(xlabel="x", ylabel="standard deviation", ylim=(0, None))
ax_std.legend(loc="upper left", fontsize=8)
plt.show()


# %%
def where(lo, hi):
    return (g > lo) & (g < hi)


for name, mask in (("with data (1 < |x| < 4)", where(-4, -1) | where(1, 4)),
                   ("in the gap (|x| < 1)", where(-1, 1)),
                   ("outside (|x| > 4)", ~where(-4, 4))):
    print(f"{name:24} mean aleatoric std {aleatoric[mask].mean():.3f}, "
          f"mean epistemic std {epistemic[mask].mean():.3f}")

# %% [markdown]
# The aleatoric band follows the noise in the data, small on the left and wide on the
# right; in the gap it only interpolates between the two sides. The epistemic band is
# narrow where there are data and widens in the gap, where the weight samples disagree
# because no data constrained them. Beyond the data the tanh units saturate, so this
# network extrapolates flat curves with only a little more epistemic uncertainty: what
# "unknown" looks like depends on the architecture and the prior. (In fast mode the
# network is barely trained and the bands are rough.)

# %% [markdown]
# ## What you learned
#
# * A `Dense(2)` + `tfp_bnn.heads.GaussianHead()` output with `tfp_bnn.losses.GaussianNLL()`
#   lets the network predict its own noise level (heteroscedastic regression).
# * `bayesify` + `tfp_bnn.predict` then split the predictive variance into aleatoric (the
#   predicted noise) and epistemic (disagreement between weight samples) parts.
# * Aleatoric uncertainty tracks the data noise; epistemic uncertainty grows where data are
#   missing, here in the gap.
# * On small data sets the full KL term can make a BNN underfit;
#   `tfp_bnn.callbacks.KLTemperature` tempers it.
#
# Next: other uncertainty methods on one table in
# [05_methods_compared](05_methods_compared.ipynb).
