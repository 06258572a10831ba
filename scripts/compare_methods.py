"""Compare uncertainty methods on one backbone: Iris and scikit-learn's 8x8 digits.

Methods (same MLP backbone, input -> Dense(64, relu) -> Dense(64, relu) -> Dense(C) logits):

    deterministic          plain training (Adam, cross-entropy), one pass
    vi_flipout             bayesify(estimator="flipout"), KL weight 1/N, trained from scratch
    vi_reparameterization  bayesify(estimator="reparameterization")
    vi_flipout_tempered    vi_flipout with the KL multiplier m (KL weight m / N) chosen from
                           KL_GRID by the validation NLL of a carve of the training split
                           (tfp_bnn.tempering.select_kl_multiplier), then refit on the whole
                           training split with KL weight m / N
    mc_dropout             mc_dropout(backbone, rate, "before_dense"), trained with dropout on
    ensemble               DeepEnsemble(5 members), S = 5
    swag                   the deterministic net trained on with the SWAG callback, scale 0.5
    laplace_kron           laplace(deterministic net, last layer, kron, marglik prior), MC
    laplace_kron_probit    the same posterior, probit approximation (no samples: no MI)
    laplace_kron_val       laplace(..., prior_precision="val_nll"): delta chosen by the probit
                           NLL of the validation carve on a net trained without it, then used
                           for the Laplace of the deterministic net; probit predictive
    laplace_kron_val_mc    the same posterior, MC
    last_layer_vi          bayesify(det net, layers="last", MeanField(from_weights=True)),
                           last layer fine-tuned with the features frozen

Hyper-parameters are never chosen on the test set: the validation carve is VAL_FRACTION of the
training split (stratified, seed 2000 + seed), and the chosen values are reported per seed.

Data:
* Iris: the shipped CSV, min-max scaled, stratified 80/20 split per seed; OOD = 300 Gaussian
  noise points N(0.5, 1) in the scaled feature space.
* Digits: classes 0-7 in distribution (stratified 70/30 split per seed); OOD = all images of
  digits 8 and 9, and 300 Gaussian-noise images with the training pixels' mean and std
  (clipped to [0, 1]).

Metrics on the test set (mean +- std over seeds): accuracy, NLL, ECE (15 bins), OOD AUROC by
mutual information (MI) and by predictive entropy (H), training seconds (deterministic net
included for the post-hoc methods) and predict milliseconds per 1,000 examples (after warm-up).
Writes ``results.json``, ``table.md`` and ``reliability_grid.png`` (rows: datasets; columns:
methods; test predictions pooled over seeds) to ``--out``, all at once when the run ends; an
existing ``--out`` is replaced only with ``--overwrite``.

``--calibrate``: every method, the deterministic net included, is trained on the training split
minus the validation carve, and a ``<method> +T`` row is added after each MC method:
``tfp_bnn.calibrate(model, x_val, y_val, method="temperature")`` with the method's own S,
fitted on the carve (which no method was fitted on; never the test split), then the same test
metrics and the fitted T (``results.json``: ``calibrated_rows``). Tempered VI and Laplace
"val_nll" then choose their value on a carve of the remaining 80 %. The probit Laplace rows have
no +T row (the temperature scales the MC predictive). The targets add, per method, ECE(+T) <=
ECE(deterministic +T) and <= ECE(deterministic).

Usage:
    python scripts/compare_methods.py --seeds 3 --out runs/compare_methods
    python scripts/compare_methods.py --quick        # smoke run: 1 seed, few epochs
    python scripts/compare_methods.py --calibrate --seeds 3 --out runs/compare_methods_cal
"""
import argparse
import dataclasses
import os
import time
import warnings

import numpy as np

import tfp_bnn
from tfp_bnn import data as data_lib
from tfp_bnn import metrics
from tfp_bnn.tempering import DEFAULT_MULTIPLIERS, select_kl_multiplier
from tfp_bnn._keras import tf_keras
from tfp_bnn.posteriors import MeanField
from tfp_bnn.results import Staging

METHODS = ("deterministic", "vi_flipout", "vi_reparameterization", "vi_flipout_tempered",
           "mc_dropout", "ensemble", "swag", "laplace_kron", "laplace_kron_probit",
           "laplace_kron_val", "laplace_kron_val_mc", "last_layer_vi")
LABELS = {"deterministic": "Deterministic", "vi_flipout": "VI Flipout",
          "vi_reparameterization": "VI Reparameterization",
          "vi_flipout_tempered": "VI Flipout (KL tempered on val)", "mc_dropout": "MC Dropout",
          "ensemble": "Deep ensemble (5)", "swag": "SWAG", "laplace_kron": "Laplace LL kron (MC)",
          "laplace_kron_probit": "Laplace LL kron (probit)",
          "laplace_kron_val": "Laplace LL kron (val_nll)",
          "laplace_kron_val_mc": "Laplace LL kron (val_nll, MC)", "last_layer_vi": "Last-layer VI"}
KL_GRID = DEFAULT_MULTIPLIERS  # KL multipliers tried by vi_flipout_tempered (1 wins ties)
VAL_FRACTION = 0.2  # share of the training split carved off for validation
OUTPUT_FILES = ("results.json", "table.md", "reliability_grid.png")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training settings of one dataset."""

    epochs: int  # deterministic net, each ensemble member, MC dropout
    vi_epochs: int
    swag_epochs: int  # extra epochs of SWAG collection after the deterministic training
    ll_epochs: int  # last-layer VI fine-tuning
    batch_size: int
    learning_rate: float
    hidden: int = 64
    dropout: float = 0.1
    num_samples: int = 100
    members: int = 5
    swag_rank: int = 20

    def quick(self):
        return dataclasses.replace(self, epochs=3, vi_epochs=3, swag_epochs=3, ll_epochs=2,
                                   num_samples=10, swag_rank=2)


RECIPES = {"iris": Recipe(epochs=100, vi_epochs=300, swag_epochs=40, ll_epochs=50, batch_size=16,
                          learning_rate=3e-3),
           "digits": Recipe(epochs=40, vi_epochs=120, swag_epochs=30, ll_epochs=20, batch_size=32,
                            learning_rate=1e-3)}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    ood: dict  # name -> inputs
    num_classes: int

    def carve(self, seed, fraction=VAL_FRACTION):
        """(x_fit, y_fit, x_val, y_val): a stratified validation carve of the training split."""
        rng = np.random.default_rng(2000 + seed)
        val = np.zeros(len(self.y_train), bool)
        for c in np.unique(self.y_train):
            idx = np.flatnonzero(self.y_train == c)
            val[rng.choice(idx, int(round(fraction * len(idx))), replace=False)] = True
        return (self.x_train[~val], self.y_train[~val], self.x_train[val], self.y_train[val])


def iris_data(seed):
    table = data_lib.load_iris()
    split = data_lib.train_val_test_split(table.features, table.labels, test_fraction=0.2,
                                          val_fraction=0.1, seed=seed)
    x_train = np.concatenate([split.x_train, split.x_val])
    y_train = np.concatenate([split.y_train, split.y_val])
    scaler = data_lib.MinMaxScaler().fit(x_train)
    rng = np.random.default_rng(1000 + seed)
    noise = rng.normal(0.5, 1.0, size=(300, x_train.shape[1])).astype(np.float32)
    return Data(scaler.transform(x_train).astype(np.float32), y_train.astype(np.int64),
                scaler.transform(split.x_test).astype(np.float32), split.y_test.astype(np.int64),
                {"noise": noise}, 3)


def digits_data(seed):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    inside = y < 8
    split = data_lib.train_val_test_split(x[inside], y[inside], test_fraction=0.3,
                                          val_fraction=0.1, seed=seed)
    x_train = np.concatenate([split.x_train, split.x_val])
    y_train = np.concatenate([split.y_train, split.y_val])
    rng = np.random.default_rng(1000 + seed)
    mean, std = x_train.mean(0), x_train.std(0)
    noise = np.clip(mean + std * rng.standard_normal((300, x.shape[1])), 0, 1).astype(np.float32)
    return Data(x_train, y_train.astype(np.int64), split.x_test, split.y_test.astype(np.int64),
                {"digits_8_9": x[~inside], "noise": noise}, 8)


DATASETS = {"iris": iris_data, "digits": digits_data}


# ---------------------------------------------------------------------------------------------
# Methods: each returns (predict(x) -> (probs, mi or None, entropy), training seconds)
# ---------------------------------------------------------------------------------------------
def backbone(data, recipe, name="mlp"):
    return tf_keras.Sequential([
        tf_keras.Input((data.x_train.shape[1],), name="features"),
        tf_keras.layers.Dense(recipe.hidden, activation="relu"),
        tf_keras.layers.Dense(recipe.hidden, activation="relu"),
        tf_keras.layers.Dense(data.num_classes, name="logits")], name=name)


def compiled(model, recipe):
    model.compile(tf_keras.optimizers.Adam(recipe.learning_rate),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def fit(model, data, recipe, epochs, callbacks=(), x=None, y=None):
    start = time.perf_counter()
    model.fit(data.x_train if x is None else x, data.y_train if y is None else y, epochs=epochs,
              batch_size=recipe.batch_size, shuffle=True, verbose=0, callbacks=list(callbacks))
    return time.perf_counter() - start


def tempered_vi(data, recipe, seed, estimator="flipout"):
    """VI with the KL multiplier chosen on the validation carve, refit on the whole split.

    Returns (model, chosen multiplier, {multiplier: validation NLL}, seconds).
    """
    x_fit, y_fit, x_val, y_val = data.carve(seed)

    def build(n):
        return lambda: compiled(tfp_bnn.bayesify(backbone(data, recipe), estimator=estimator,
                                                 num_train_examples=n), recipe)
    start = time.perf_counter()
    sel = select_kl_multiplier(build(len(x_fit)), x_fit, y_fit, x_val, y_val,
                               multipliers=KL_GRID, num_samples=recipe.num_samples, seed=seed,
                               epochs=recipe.vi_epochs, batch_size=recipe.batch_size,
                               shuffle=True)
    tf_keras.utils.set_random_seed(seed)
    model = build(len(data.x_train))()
    tfp_bnn.set_kl_weight(model, sel.multiplier)  # base weight 1 / N of the whole split
    fit(model, data, recipe, recipe.vi_epochs)
    return model, sel.multiplier, sel.val_nll, time.perf_counter() - start


def val_laplace(det, data, recipe, seed):
    """Laplace of ``det`` with the prior precision chosen by the validation NLL (probit).

    The precision is chosen on a net trained, like ``det``, on the training split minus the
    validation carve (``det`` has seen the carve); then used for ``det``'s own Laplace.
    Returns (Laplace, {"prior_precision": delta}, seconds).
    """
    x_fit, y_fit, x_val, y_val = data.carve(seed)
    tf_keras.utils.set_random_seed(seed)
    net = compiled(backbone(data, recipe), recipe)
    start = time.perf_counter()
    fit(net, data, recipe, recipe.epochs, x=x_fit, y=y_fit)
    chosen = tfp_bnn.laplace(net, x_fit, y_fit, hessian="kron", prior_precision="val_nll",
                             x_val=x_val, y_val=y_val).prior_precision
    la = tfp_bnn.laplace(det, data.x_train, data.y_train, hessian="kron", prior_precision=chosen)
    return la, {"prior_precision": chosen}, time.perf_counter() - start


class MCPredictor:
    """``predictor(x) -> (probs, mi, entropy)`` by `tfp_bnn.predict`; keeps what it predicts
    with, so that `calibrated` can hand the same model and S to `tfp_bnn.calibrate`."""

    def __init__(self, model, num_samples, seed):
        self.model, self.num_samples, self.seed = model, num_samples, seed

    def __call__(self, x):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a deterministic model's 0 variance
            p = tfp_bnn.predict(self.model, x, num_samples=self.num_samples, seed=self.seed,
                                verbose=0)
        return p.probabilities, p.mutual_information, p.predictive_entropy

    def calibrated(self, x_val, y_val):
        """The predictor of ``tfp_bnn.calibrate(model, x_val, y_val, "temperature")``, same S."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cal = tfp_bnn.calibrate(self.model, x_val, y_val, method="temperature",
                                    num_samples=self.num_samples, seed=self.seed)
        return MCPredictor(cal, self.num_samples, self.seed), cal.temperature


def mc_predictor(model, num_samples, seed):
    return MCPredictor(model, num_samples, seed)


def probit_predictor(la):
    def run(x):
        p = la.predict_probit(x)
        return p, None, -np.sum(p * np.log(np.maximum(p, 1e-30)), axis=-1)
    return run


def train_all(data, recipe, seed, methods):
    """Train every method on one split; returns ({method: (predictor, train seconds)},
    {method: hyper-parameters chosen on the validation carve})."""
    out, chosen = {}, {}
    n = len(data.x_train)
    tf_keras.utils.set_random_seed(seed)
    det = compiled(backbone(data, recipe), recipe)
    det_time = fit(det, data, recipe, recipe.epochs)
    out["deterministic"] = (mc_predictor(det, 1, seed), det_time)

    for estimator in ("flipout", "reparameterization"):
        key = f"vi_{estimator}"
        if key not in methods:
            continue
        tf_keras.utils.set_random_seed(seed)
        bnn = compiled(tfp_bnn.bayesify(backbone(data, recipe), estimator=estimator,
                                        num_train_examples=n), recipe)
        out[key] = (mc_predictor(bnn, recipe.num_samples, seed),
                    fit(bnn, data, recipe, recipe.vi_epochs))

    if "vi_flipout_tempered" in methods:
        model, m, scores, seconds = tempered_vi(data, recipe, seed)
        out["vi_flipout_tempered"] = (mc_predictor(model, recipe.num_samples, seed), seconds)
        chosen["vi_flipout_tempered"] = {"kl_multiplier": m,
                                         "val_nll": {str(k): v for k, v in scores.items()}}

    if "mc_dropout" in methods:
        tf_keras.utils.set_random_seed(seed)
        mcd = compiled(tfp_bnn.mc_dropout(backbone(data, recipe), rate=recipe.dropout), recipe)
        out["mc_dropout"] = (mc_predictor(mcd, recipe.num_samples, seed),
                             fit(mcd, data, recipe, recipe.epochs))

    if "ensemble" in methods:
        ens = tfp_bnn.DeepEnsemble(lambda: compiled(backbone(data, recipe), recipe),
                                   num_members=recipe.members, seed=100 * seed)
        start = time.perf_counter()
        ens.fit(data.x_train, data.y_train, epochs=recipe.epochs, batch_size=recipe.batch_size,
                verbose=0)
        out["ensemble"] = (mc_predictor(ens.as_model(), recipe.members, seed),
                           time.perf_counter() - start)

    if "swag" in methods:
        tf_keras.utils.set_random_seed(seed)
        net = compiled(tf_keras.models.clone_model(det), recipe)
        net.set_weights(det.get_weights())
        swag = tfp_bnn.callbacks.SWAG(start_epoch=0, max_rank=recipe.swag_rank)
        seconds = fit(net, data, recipe, recipe.swag_epochs, [swag])
        start = time.perf_counter()
        model = swag.as_model(scale=0.5)
        seconds += time.perf_counter() - start
        out["swag"] = (mc_predictor(model, recipe.num_samples, seed), det_time + seconds)

    if "laplace_kron" in methods or "laplace_kron_probit" in methods:
        start = time.perf_counter()
        la = tfp_bnn.laplace(det, data.x_train, data.y_train, hessian="kron")
        seconds = det_time + time.perf_counter() - start
        out["laplace_kron"] = (mc_predictor(la.as_model(), recipe.num_samples, seed), seconds)
        out["laplace_kron_probit"] = (probit_predictor(la), seconds)

    if "laplace_kron_val" in methods or "laplace_kron_val_mc" in methods:
        la, info, seconds = val_laplace(det, data, recipe, seed)
        out["laplace_kron_val"] = (probit_predictor(la), det_time + seconds)
        out["laplace_kron_val_mc"] = (mc_predictor(la.as_model(), recipe.num_samples, seed),
                                      det_time + seconds)
        chosen["laplace_kron_val"] = chosen["laplace_kron_val_mc"] = info

    if "last_layer_vi" in methods:
        tf_keras.utils.set_random_seed(seed)
        ll = tfp_bnn.bayesify(det, layers="last", posterior=MeanField(from_weights=True),
                              num_train_examples=n)
        for layer in ll.layers[:-1]:
            layer.trainable = False
        seconds = fit(compiled(ll, recipe), data, recipe, recipe.ll_epochs)
        out["last_layer_vi"] = (mc_predictor(ll, recipe.num_samples, seed), det_time + seconds)
    return ({k: v for k, v in out.items() if k in methods},
            {k: v for k, v in chosen.items() if k in methods})


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def predict_ms_per_1000(predictor, x, repeats=3):
    x1000 = np.resize(x, (1000,) + x.shape[1:]).astype(np.float32)
    predictor(x1000)  # warm-up: tracing is not prediction time
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor(x1000)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def evaluate(predictor, data):
    probs, mi, ent = predictor(data.x_test)
    row = {"accuracy": metrics.accuracy(probs, data.y_test), "nll": metrics.nll(probs, data.y_test),
           "ece": metrics.expected_calibration_error(probs, data.y_test, num_bins=15)}
    for name, x_ood in data.ood.items():
        _, mi_ood, ent_ood = predictor(x_ood)
        row[f"auroc_{name}_mi"] = (None if mi is None else
                                   metrics.ood_auroc(mi, mi_ood))
        row[f"auroc_{name}_entropy"] = metrics.ood_auroc(ent, ent_ood)
    return row, probs


def run_dataset(name, recipe, seeds, methods, calibrate=False):
    """Rows of every method per seed; with ``calibrate`` also the temperature-scaled rows.

    With ``calibrate`` every method is trained on the training split minus the validation carve
    (`Data.carve`, seed 2000 + seed) and each MC method's temperature is fitted by
    ``tfp_bnn.calibrate(model, x_val, y_val, method="temperature")`` on that carve, which no
    method has been fitted on; the methods that choose a hyper-parameter on a validation carve
    (tempered VI, Laplace "val_nll") then carve it from the remaining 80 %. The probit Laplace
    rows get no temperature: `tfp_bnn.calibrate` scales the MC predictive.

    Returns (rows, pooled test predictions, chosen values, calibrated rows: {method: [row with
    "temperature"]}).
    """
    rows = {m: [] for m in methods}
    pooled = {m: ([], []) for m in methods}
    chosen, calibrated = {}, {}
    for seed in range(seeds):
        data = DATASETS[name](seed)
        if calibrate:
            x_fit, y_fit, x_val, y_val = data.carve(seed)
            data = dataclasses.replace(data, x_train=x_fit, y_train=y_fit)
        trained, picked = train_all(data, recipe, seed, methods)
        for method, info in picked.items():
            chosen.setdefault(method, []).append(info)
        for method, (predictor, seconds) in trained.items():
            row, probs = evaluate(predictor, data)
            row["train_s"] = seconds
            row["predict_ms_per_1000"] = predict_ms_per_1000(predictor, data.x_test)
            rows[method].append(row)
            pooled[method][0].append(probs)
            pooled[method][1].append(data.y_test)
            print(f"{name} seed {seed} {method}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in row.items() if v is not None), flush=True)
            if calibrate and isinstance(predictor, MCPredictor):
                start = time.perf_counter()
                scaled, temperature = predictor.calibrated(x_val, y_val)
                cal_row, _ = evaluate(scaled, data)
                cal_row.update(temperature=temperature, predict_ms_per_1000=None,
                               train_s=seconds + time.perf_counter() - start)
                calibrated.setdefault(method, []).append(cal_row)
                print(f"{name} seed {seed} {method} +T: T={temperature:.3f}, "
                      f"nll={cal_row['nll']:.4f}, ece={cal_row['ece']:.4f}", flush=True)
    return (rows, {m: (np.concatenate(p), np.concatenate(y)) for m, (p, y) in pooled.items()},
            chosen, calibrated)


def chosen_lines(name, chosen):
    """One line per validation-tuned method: the value chosen on each seed."""
    lines = []
    if "vi_flipout_tempered" in chosen:
        lines.append(f"- {name}: {LABELS['vi_flipout_tempered']}: KL multiplier per seed "
                     + ", ".join(f"{c['kl_multiplier']:g}" for c in chosen["vi_flipout_tempered"])
                     + f" (grid {', '.join(f'{m:g}' for m in KL_GRID)})")
    if "laplace_kron_val" in chosen:
        lines.append(f"- {name}: {LABELS['laplace_kron_val']}: prior precision per seed "
                     + ", ".join(f"{c['prior_precision']:.3g}" for c in chosen["laplace_kron_val"]))
    return lines


def _cell(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def table(name, rows, ood_names, labels=None, first_column="Method", calibrated=None):
    """A markdown table of mean ± std over seeds per method (row names from ``labels``).

    ``calibrated`` ({method: rows}) adds a ``<label> +T`` row after each of its methods and a
    column of the fitted temperature.
    """
    labels = LABELS if labels is None else labels
    calibrated = calibrated or {}
    cols = [("Acc ↑", "accuracy"), ("NLL ↓", "nll"), ("ECE ↓", "ece")]
    if calibrated:
        cols.append(("T", "temperature"))
    for o in ood_names:
        label = {"digits_8_9": "8/9", "noise": "noise"}[o]
        cols += [(f"AUROC {label} MI ↑", f"auroc_{o}_mi"),
                 (f"AUROC {label} H ↑", f"auroc_{o}_entropy")]
    lines = [f"| {first_column} | " + " | ".join(c for c, _ in cols)
             + " | Train s | Predict ms/1k |",
             "|---" * (len(cols) + 3) + "|"]
    named = []
    for method, r in rows.items():
        named.append((labels[method], r))
        if method in calibrated:
            named.append((f"{labels[method]} +T", calibrated[method]))
    for label, r in named:
        cells = [_cell([x.get(k) for x in r]) for _, k in cols]
        cells += [_cell([x["train_s"] for x in r], 1),
                  _cell([x["predict_ms_per_1000"] for x in r], 1)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return f"**{name}**\n\n" + "\n".join(lines)


def targets(name, rows, ood_names):
    """The issue's targets, checked on the seed means."""
    mean = {m: {k: np.mean([x[k] for x in r if x[k] is not None]) if any(
        x[k] is not None for x in r) else None for k in r[0]} for m, r in rows.items()}
    det = mean.get("deterministic")
    if det is None:
        return []
    lines = []
    worse = [m for m in mean if m != "deterministic" and mean[m]["ece"] > det["ece"]]
    lines.append(f"- {name}: ECE <= deterministic ({det['ece']:.3f}) for every method: "
                 + ("yes" if not worse else "no — higher: " + ", ".join(
                     f"{LABELS[m]} {mean[m]['ece']:.3f}" for m in worse)))
    for o in ood_names:
        key = f"auroc_{o}_entropy"
        for m in ("ensemble", "vi_flipout", "vi_reparameterization", "vi_flipout_tempered"):
            if m not in mean:
                continue
            best = max(v for v in (mean[m][f"auroc_{o}_mi"], mean[m][key]) if v is not None)
            lines.append(f"- {name} {o}: {LABELS[m]} AUROC (MI {mean[m][f'auroc_{o}_mi']:.3f}, "
                         f"H {mean[m][key]:.3f}) > deterministic (H {det[key]:.3f}): "
                         + ("yes" if best > det[key] else "no"))
    return lines


def calibrated_targets(name, rows, calibrated):
    """ECE(method +T) against the deterministic net's ECE, temperature-scaled and not (seed
    means)."""
    if "deterministic" not in calibrated:
        return []
    ece = {m: np.mean([x["ece"] for x in r]) for m, r in calibrated.items()}
    det, det_t = np.mean([x["ece"] for x in rows["deterministic"]]), ece["deterministic"]
    lines = []
    for m in calibrated:
        if m == "deterministic":
            continue
        # Four digits: at three, 0.010 <= 0.010 could read "missed".
        lines.append(f"- {name}: {LABELS[m]} +T ECE {ece[m]:.4f} <= deterministic +T "
                     f"({det_t:.4f}): {'met' if ece[m] <= det_t else 'missed'}; <= "
                     f"deterministic ({det:.4f}): {'met' if ece[m] <= det else 'missed'}")
    return lines


def reliability_grid(pooled, path, num_bins=15):
    from matplotlib.figure import Figure
    names = list(pooled)
    methods = list(pooled[names[0]])
    fig = Figure(figsize=(2.4 * len(methods), 2.6 * len(names)))
    axes = fig.subplots(len(names), len(methods), squeeze=False, sharex=True, sharey=True)
    for i, dataset in enumerate(names):
        for j, method in enumerate(methods):
            probs, labels = pooled[dataset][method]
            bins = metrics.calibration_bins(probs, labels, num_bins=num_bins)
            ece = metrics.expected_calibration_error(probs, labels, num_bins=num_bins)
            ax = axes[i, j]
            left = bins.edges[:-1]
            ax.bar(left, np.nan_to_num(bins.accuracy), width=np.diff(bins.edges), align="edge",
                   color="tab:blue", edgecolor="black", linewidth=0.5)
            ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{LABELS[method]}\n{dataset}, ECE={ece:.3f}", fontsize=8)
            if i == len(names) - 1:
                ax.set_xlabel("confidence", fontsize=8)
            if j == 0:
                ax.set_ylabel("accuracy", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default="runs/compare_methods")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few epochs")
    parser.add_argument("--calibrate", action="store_true",
                        help="train on the training split minus the validation carve and add "
                             "the temperature-scaled rows (T fitted on the carve)")
    args = parser.parse_args(argv)
    methods = [m for m in METHODS if m in args.methods]
    if "deterministic" not in methods:
        methods.insert(0, "deterministic")  # the reference row of every target
    seeds = 1 if args.quick else args.seeds
    # Checked before any training; the folder appears whole, in one rename, when all is done.
    stage = Staging(args.out, args.overwrite, owned=OUTPUT_FILES, argument="--out")

    results, pooled, sections, checks, picks = {}, {}, [], [], []
    start = time.perf_counter()
    for name in args.datasets:
        recipe = RECIPES[name].quick() if args.quick else RECIPES[name]
        rows, pooled[name], chosen, calibrated = run_dataset(name, recipe, seeds, methods,
                                                             args.calibrate)
        results[name] = {"recipe": dataclasses.asdict(recipe), "rows": rows, "chosen": chosen}
        if args.calibrate:
            results[name]["calibrated_rows"] = calibrated
        ood_names = list(DATASETS[name](0).ood)
        sections.append(table(name, rows, ood_names, calibrated=calibrated))
        checks += targets(name, rows, ood_names) + calibrated_targets(name, rows, calibrated)
        picks += chosen_lines(name, chosen)
    results["total_s"] = time.perf_counter() - start
    text = "\n\n".join(sections) + "\n\nTargets (seed means):\n\n" + "\n".join(checks) + "\n"
    if picks:
        text += ("\nChosen on the validation carve (VAL_FRACTION of the training split, never the "
                 "test set):\n\n" + "\n".join(picks) + "\n")
    text += f"\nWall time: {results['total_s']:.0f} s\n"
    with stage:
        stage.write("results.json", results)
        stage.write("table.md", text)
        reliability_grid(pooled, os.path.join(stage.path, "reliability_grid.png"))
        stage.commit()
    print(text)
    print(f"wrote {args.out}/results.json, table.md and reliability_grid.png")


if __name__ == "__main__":
    main()
