"""Train a Bayesian MLP on any table, save it with its preprocessing, predict from the saved folder.

`run` is the job behind ``tfp-bnn train`` and `predict_csv` the one behind ``tfp-bnn predict``;
`build_model` and `fit` are also the Iris build's (`tfp_bnn.iris`), so both follow one recipe:

    data    -> a CSV or Hugging Face dataset; train / val (20 % of the rest) / test (20 %) split,
               stratified by class; features min-max scaled with training statistics; a
               regression target standardised with the training mean and std
    model   -> Dense(h, relu) per hidden width -> Dense(C) logits (classification; one logit
               for a two-class target: task "binary"), or Dense(2) -> GaussianHead
               (regression: mean and aleatoric std);
               bayesify(estimator, prior, N = training examples)
    fit     -> Adam, sparse (two classes: binary) cross-entropy from logits or GaussianNLL,
               early stopping on the
               Monte Carlo validation NLL (best weights restored)
    posthoc -> (``calibrate=True``) on the validation split: `tfp_bnn.calibrate` (temperature
               for classes, variance scaling for regression), then `tfp_bnn.conformal` of the
               calibrated model (deterministic APS sets / normalised-residual intervals)
    out     -> model.keras, preprocessing.json (columns, classes, scaling), metrics.json,
               history.csv, posthoc.json (``calibrate=True``) and, written last, manifest.json
               (sizes, sha256); staged beside ``out`` and swapped in complete
               (`tfp_bnn.results`); kept unless overwrite
    predict -> the saved scaling applied to a CSV's feature columns, S posterior samples, one
               row per example with the uncertainty decomposition in the target's units
               (calibrated when posthoc.json exists; ``alpha`` adds the conformal sets or
               intervals)

Example:
    >>> import shutil
    >>> from tfp_bnn import data, train
    >>> metrics = train.run("runs/train", target="species", csv=data.iris_csv_path(),
    ...                     config=train.TrainConfig(epochs=2), log=lambda *args, **kwargs: None)
    >>> new_flowers = shutil.copy(data.iris_csv_path(), "new_flowers.csv")
    >>> pred = train.predict_csv("runs/train", "new_flowers.csv", "predictions.csv", num_samples=10)
    >>> pred.probabilities.shape, open("predictions.csv").readline().split(",")[0]
    ((150, 3), 'index')
"""
import dataclasses
import json
import math
import os
import time

import numpy as np

from tfp_bnn import callbacks as callbacks_lib
from tfp_bnn import data as data_lib
from tfp_bnn import metrics as metrics_lib
from tfp_bnn import options
from tfp_bnn import priors as priors_lib
from tfp_bnn import reports, results, safety
from tfp_bnn._keras import tf_keras
from tfp_bnn.calibration import calibrate
from tfp_bnn.conformal import Conformal, conformal, minimum_calibration_size
from tfp_bnn.convert import ESTIMATORS, bayesify
from tfp_bnn.elbo import set_kl_weight
from tfp_bnn.heads import GaussianHead
from tfp_bnn.losses import GaussianNLL
from tfp_bnn.options import Task
from tfp_bnn.predict import DEFAULT_BATCH_SIZE, NonFiniteOutputError, predict
from tfp_bnn.tasks import resolve as resolve_task

__all__ = ["TrainConfig", "OUTPUT_FILES", "OWNED_FILES", "PREPROCESSING_FILE", "POSTHOC_FILE",
           "CALIBRATION_ALPHA", "build_model", "fit", "run", "load", "load_run", "predict_csv"]

PREPROCESSING_FILE = "preprocessing.json"
POSTHOC_FILE = "posthoc.json"
# Files every `run` writes into its output folder; an existing one is never replaced without
# overwrite.
OUTPUT_FILES = ("model.keras", PREPROCESSING_FILE, "metrics.json", "history.csv")
# ... and every file a run may write (posthoc.json with calibrate=True): a folder holding only
# these is ours to replace; a rerun without calibrate replaces it whole, leaving no stale one.
OWNED_FILES = OUTPUT_FILES + (POSTHOC_FILE,)
# The miscoverage level of the conformal sets `run` scores on its test split (90 % sets) and
# saves as the default; `predict_csv` takes any other alpha the calibration set allows.
CALIBRATION_ALPHA = 0.1
TASKS = ("auto", "classification", "regression")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of `run`; the defaults are the Iris recipe (`tfp_bnn.iris.IrisConfig`)."""

    task: str = "auto"
    hidden: tuple = (64, 64)
    estimator: str = "flipout"
    prior: str = "normal"
    kl_multiplier: float = 1.0
    epochs: int = 150
    patience: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    num_samples: int = 100
    val_samples: int = 20
    seed: int = 0
    calibrate: bool = False

    def __post_init__(self):
        if not isinstance(self.calibrate, (bool, np.bool_)):
            raise ValueError(f"calibrate must be True or False. Received: "
                             f"calibrate={self.calibrate!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}. Received: task={self.task!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator={self.estimator!r}. Valid: {sorted(ESTIMATORS)}")
        priors_lib.get(self.prior)  # an unknown prior fails here, before any data is read
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or not all(_is_int(h, 1) for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive integers (layer widths). "
                             f"Received: hidden={self.hidden!r}")
        object.__setattr__(self, "seed", options.seed("seed", self.seed))
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("num_samples", 1),
                              ("val_samples", 1), ("patience", 0)):
            if not _is_int(getattr(self, name), minimum):
                raise ValueError(f"{name} must be an integer >= {minimum}. "
                                 f"Received: {name}={getattr(self, name)!r}")
        if not float(self.learning_rate) > 0:
            raise ValueError("learning_rate must be positive. "
                             f"Received: learning_rate={self.learning_rate!r}")
        if not float(self.kl_multiplier) >= 0:
            raise ValueError("kl_multiplier must be >= 0. "
                             f"Received: kl_multiplier={self.kl_multiplier!r}")


def _is_int(value, minimum):
    return (not isinstance(value, bool) and isinstance(value, (int, np.integer))
            and value >= minimum)


# --- model and fit ---------------------------------------------------------------------------

def build_model(num_features, num_outputs, num_train_examples, task="classification",
                hidden=(64, 64), estimator="flipout", prior="normal", kl_multiplier=1.0,
                learning_rate=1e-3, name="mlp"):
    """A relu MLP converted by `bayesify` and compiled for its task.

    Classification: ``num_outputs`` logits, sparse cross-entropy, accuracy; two classes are
    one logit (task "binary"), binary cross-entropy. Regression: ``num_outputs`` means and stds
    through `GaussianHead`, `GaussianNLL`.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression'. Received: task={task!r}")
    layers = [tf_keras.Input((int(num_features),), name="features")]
    layers += [tf_keras.layers.Dense(int(h), activation="relu") for h in hidden]
    if task == "classification" and int(num_outputs) == 2:
        layers.append(tf_keras.layers.Dense(1, name="logit"))
        loss = tf_keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = [tf_keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)]
        model_task = Task.BINARY
    elif task == "classification":
        layers.append(tf_keras.layers.Dense(int(num_outputs), name="logits"))
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        model_task = Task.MULTICLASS
    else:
        layers += [tf_keras.layers.Dense(2 * int(num_outputs), name="loc_and_scale"),
                   GaussianHead(int(num_outputs), name="gaussian")]
        loss, metrics, model_task = GaussianNLL(), None, Task.GAUSSIAN
    model = bayesify(tf_keras.Sequential(layers, name=name), estimator=estimator, prior=prior,
                     num_train_examples=int(num_train_examples), task=model_task)
    set_kl_weight(model, multiplier=float(kl_multiplier))
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)
    return model


class _EpochBar(tf_keras.callbacks.Callback):
    """One Keras progress bar over the epochs (not one per epoch), with the latest scores."""

    _SHOWN = ("loss", "val_nll", "val_accuracy", "val_rmse")

    def on_train_begin(self, logs=None):
        self.bar = tf_keras.utils.Progbar(self.params["epochs"], unit_name="epoch",
                                          stateful_metrics=self._SHOWN)
        self.seen = 0

    def on_epoch_end(self, epoch, logs=None):
        self.seen = epoch + 1
        values = [(k, logs[k]) for k in self._SHOWN if k in (logs or {})]
        self.bar.update(self.seen, values, finalize=self.seen >= self.params["epochs"])

    def on_train_end(self, logs=None):
        if self.seen < self.params["epochs"]:  # early stopping: close the bar where it stopped
            self.bar.target = self.seen
            self.bar.update(self.seen, finalize=True)


def fit(model, split, epochs=150, batch_size=16, patience=30, val_samples=20, seed=0,
        verbose=0):
    """Train on ``split.x_train``; early-stop on the MC NLL of ``split.x_val``.

    Returns:
        One dict per epoch: ``epoch`` and every value Keras logged (loss, nll, kl, val_nll, ...).
    """
    # MC validation (one compiled call per epoch) instead of Keras's validation_data, which
    # would score a single weight sample.
    callbacks = [callbacks_lib.MCValidation(split.x_val, split.y_val, num_samples=val_samples,
                                            seed=int(seed)),
                 tf_keras.callbacks.EarlyStopping(monitor="val_nll", mode="min",
                                                  patience=patience, restore_best_weights=True)]
    if verbose:
        callbacks.append(_EpochBar())
    history = model.fit(split.x_train, split.y_train, epochs=epochs, batch_size=batch_size,
                        shuffle=True, callbacks=callbacks, verbose=0)
    keys = list(history.history)
    return [{"epoch": i + 1, **{k: float(history.history[k][i]) for k in keys}}
            for i in range(len(history.history["loss"]))]


def write_history(path, rows):
    """Rows of dicts as a CSV (the union of keys as header; floats with ``repr``)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join("" if r.get(k) is None else repr(r[k]) for k in keys) + "\n")


# --- the training job ------------------------------------------------------------------------

def _load_table(csv, hub_id, target, task, split):
    if (csv is None) == (hub_id is None):
        raise ValueError(f"Pass a CSV path or a hub_id, exactly one. Received: csv={csv!r}, "
                         f"hub_id={hub_id!r}")
    if csv is not None:
        return data_lib.load_csv(os.fspath(csv), target, task), os.fspath(csv)
    return data_lib.load_hub(hub_id, target, task, split), hub_id


def run(out, target, csv=None, hub_id=None, split="train", config=TrainConfig(), overwrite=False,
        log=print, verbose=0):
    """Train, evaluate on the held-out test split, and save everything `predict_csv` needs.

    Every input is checked before training: the output folder is free (or ``overwrite``) and
    writable, the table readable with finite float32 values, the sample counts within memory.
    The files are written into a staging folder beside ``out`` that replaces ``out`` in one
    step once complete, with a manifest written last (`tfp_bnn.results`): an interrupted run
    leaves the previous results as they were.

    Args:
        out: output folder for `OUTPUT_FILES`; an existing one is kept unless ``overwrite``.
        target: the column to predict; every other column is a numeric feature.
        csv: a local CSV file, or
        hub_id: a Hugging Face dataset id (needs network), read at ``split``.
        config: `TrainConfig` (task, network, prior, epochs, seed, calibrate, ...). With
            ``calibrate``, the validation split fits a temperature (classification) or a
            variance scale (regression) and then split-conformal sets / intervals of the
            calibrated model (deterministic APS; normalised residuals), saved in
            ``posthoc.json``; metrics.json gains the test ECE (or NLL) after calibration and
            the test coverage and mean set size / interval width at `CALIBRATION_ALPHA`. The
            same split also chose the epoch (early stopping) and the temperature, so the
            conformal guarantee, which needs calibration data untouched by any fit, is
            approximate in that respect (one chosen epoch and one or two fitted scalars).
        overwrite: replace the results already in ``out`` (only a folder holding nothing but
            `OWNED_FILES` and the manifest is ever replaced).
        log: a print-like function for the summary (``lambda *a: None`` = quiet).
        verbose: 1 shows Keras progress bars for the epochs and the test prediction.

    Returns:
        The metrics dict also written to ``metrics.json``.
    """
    start = time.time()
    out = os.fspath(out)
    stage = results.Staging(out, overwrite, owned=OWNED_FILES, argument="--out")
    table, source = _load_table(csv, hub_id, target, config.task, split)
    task = table.task
    if task == "classification" and len(table.class_names) < 2:
        raise ValueError(f"Target column {target!r} has a single class "
                         f"{list(table.class_names)}; a classifier needs at least two.")
    parts = data_lib.train_val_test_split(table.features, table.labels, seed=config.seed,
                                          stratify=task == "classification")
    scaler = data_lib.MinMaxScaler().fit(parts.x_train)
    y_scaling = None
    if task == "regression":  # float64 statistics: float32 ones overflow near 3.4e38
        y_train = parts.y_train.astype(np.float64)
        std = float(np.std(y_train))
        y_scaling = {"mean": float(np.mean(y_train)), "std": std if std > 0 else 1.0}
    parts = dataclasses.replace(
        parts, x_train=scaler.transform(parts.x_train), x_val=scaler.transform(parts.x_val),
        x_test=scaler.transform(parts.x_test),
        **({} if y_scaling is None else {
            k: ((getattr(parts, k) - y_scaling["mean"]) / y_scaling["std"]).astype(np.float32)
            for k in ("y_train", "y_val", "y_test")}))

    tf_keras.utils.set_random_seed(config.seed)
    num_outputs = len(table.class_names) if task == "classification" else 1
    model = build_model(len(table.feature_names), num_outputs, len(parts.x_train), task,
                        config.hidden, config.estimator, config.prior, config.kl_multiplier,
                        config.learning_rate)
    needed = minimum_calibration_size(CALIBRATION_ALPHA)
    if config.calibrate and len(parts.x_val) < needed:
        raise ValueError(f"--calibrate (calibrate=True) needs at least {needed} validation rows "
                         f"for {1 - CALIBRATION_ALPHA:.0%} conformal sets; the validation split "
                         f"of {source!r} has {len(parts.x_val)} (20 % of the non-test rows).")
    for name, samples, rows in (("num_samples", config.num_samples, len(parts.x_test)),
                                ("val_samples", config.val_samples, len(parts.x_val))):
        safety.check_sample_memory(model, samples, min(rows, DEFAULT_BATCH_SIZE), name)
    log(f"{source}: {task} of {target!r} from {len(table.feature_names)} features; "
        f"{len(parts.x_train)} train / {len(parts.x_val)} validation / {len(parts.x_test)} test "
        f"rows; up to {config.epochs} epochs")

    with stage:
        history = fit(model, parts, config.epochs, config.batch_size, config.patience,
                      config.val_samples, config.seed, verbose)
        pred = predict(model, parts.x_test, num_samples=config.num_samples, seed=config.seed,
                       verbose=1 if verbose else 0)
        metrics = _evaluate(pred, parts.y_test, y_scaling)
        if config.calibrate:
            posthoc, posthoc_metrics = _fit_posthoc(model, parts, config, y_scaling)
            metrics.update(posthoc_metrics)
            stage.write(POSTHOC_FILE, posthoc.get_config(with_scores=True))
        metrics.update(task=task, target=target, source=source, epochs_trained=len(history),
                       num_train=len(parts.x_train), num_val=len(parts.x_val),
                       num_test=len(parts.x_test), config=dataclasses.asdict(config))
        preprocessing = {"task": task, "target": target,
                         "feature_names": list(table.feature_names),
                         "class_names": list(table.class_names),
                         "feature_scaler": scaler.get_config(), "target_scaling": y_scaling}
        model.save(os.path.join(stage.path, "model.keras"))
        stage.write(PREPROCESSING_FILE, preprocessing)
        write_history(os.path.join(stage.path, "history.csv"), history)
        metrics["seconds"] = round(time.time() - start, 1)
        stage.write("metrics.json", metrics)
        stage.commit()
    log(_summary(metrics, out))
    return metrics


def _evaluate(pred, y, y_scaling):
    if pred.is_classification:
        p = pred.probabilities
        return {"test_accuracy": metrics_lib.accuracy(p, y), "test_nll": metrics_lib.nll(p, y),
                "test_ece": metrics_lib.expected_calibration_error(p, y),
                "mean_predictive_entropy": float(pred.predictive_entropy.mean()),
                "mean_aleatoric": float(pred.expected_entropy.mean()),
                "mean_epistemic": float(pred.mutual_information.mean())}
    mean, alea, epi, _, _ = _unscale(pred, y_scaling)
    y = np.asarray(y, np.float64) * y_scaling["std"] + y_scaling["mean"]
    return {"test_rmse": metrics_lib.rmse(mean, y),
            "test_nll": metrics_lib.gaussian_nll(mean, alea + epi, y),
            "mean_aleatoric_variance": float(alea.mean()),
            "mean_epistemic_variance": float(epi.mean())}


def _fit_posthoc(model, parts, config, y_scaling):
    """The conformal (of the calibrated) model fitted on the validation split, its test metrics.

    APS sets are deterministic (u = 1): the same whatever the seed and batch size of a
    `predict_csv` call, at the price of over-covering slightly. A set is empty where the top
    probability at x exceeds the quantile q (randomised sets can be empty more often).
    """
    classifies = resolve_task(model).is_classification
    fit_args = dict(num_samples=config.num_samples, seed=config.seed)
    cal = calibrate(model, parts.x_val, parts.y_val,
                    method="temperature" if classifies else "variance", **fit_args)
    conf = conformal(cal, parts.x_val, parts.y_val, alpha=CALIBRATION_ALPHA, randomized=False,
                     **fit_args)
    pred = predict(conf, parts.x_test, **fit_args, verbose=0)
    out = {"calibration": {k: v for k, v in cal.get_config().items() if v is not None},
           "conformal_alpha": CALIBRATION_ALPHA, "num_calibration": len(parts.y_val)}
    if classifies:
        p = pred.probabilities
        out.update(test_ece_calibrated=metrics_lib.expected_calibration_error(p, parts.y_test),
                   test_nll_calibrated=metrics_lib.nll(p, parts.y_test),
                   test_coverage=metrics_lib.empirical_coverage(pred.prediction_sets,
                                                                parts.y_test),
                   test_mean_set_size=metrics_lib.set_size(pred.prediction_sets))
        return conf, out
    mean, alea, epi, lower, upper = _unscale(pred, y_scaling)
    y = np.asarray(parts.y_test, np.float64) * y_scaling["std"] + y_scaling["mean"]
    out.update(test_nll_calibrated=metrics_lib.gaussian_nll(mean, alea + epi, y),
               test_coverage=metrics_lib.picp(lower, upper, y),
               test_mean_interval_width=metrics_lib.mean_interval_width(lower, upper))
    return conf, out


def _unscale_values(values, y_scaling):
    """Values in the model's target units (a mean, an interval end) in the target's own."""
    values = np.asarray(values, np.float64)
    return values if y_scaling is None else values * y_scaling["std"] + y_scaling["mean"]


def _unscale(pred, y_scaling):
    """(mean, aleatoric variance, epistemic variance, interval lower, interval upper) of a
    regression `Prediction` in the target's original units; the interval ends are None
    without conformal intervals."""
    mean = _unscale_values(pred.mean, y_scaling)
    ends = [None if v is None else _unscale_values(v, y_scaling)
            for v in (pred.interval_lower, pred.interval_upper)]
    s2 = 1.0 if y_scaling is None else y_scaling["std"] ** 2
    return (mean, pred.aleatoric_variance.astype(np.float64) * s2,
            pred.epistemic_variance.astype(np.float64) * s2, *ends)


def _summary(m, out):
    if m["task"] == "classification":
        scores = (f"test accuracy {m['test_accuracy']:.3f}, NLL {m['test_nll']:.3f}, "
                  f"ECE {m['test_ece']:.3f}, mean epistemic (MI) {m['mean_epistemic']:.4f} nats")
    else:
        scores = (f"test RMSE {m['test_rmse']:.4g}, NLL {m['test_nll']:.3f}, mean variance "
                  f"aleatoric {m['mean_aleatoric_variance']:.4g} / "
                  f"epistemic {m['mean_epistemic_variance']:.4g}")
    if "test_coverage" in m:
        level = f"{1 - m['conformal_alpha']:.0%}"
        if m["task"] == "classification":
            scores += (f"\ncalibrated (T = {m['calibration']['temperature']:.3g}): ECE "
                       f"{m['test_ece']:.3f} -> {m['test_ece_calibrated']:.3f}, NLL "
                       f"{m['test_nll']:.3f} -> {m['test_nll_calibrated']:.3f}; {level} sets: "
                       f"test coverage {m['test_coverage']:.3f}, mean size "
                       f"{m['test_mean_set_size']:.2f}")
        else:
            scores += (f"\ncalibrated (variance x {m['calibration']['variance_scale']:.3g}): "
                       f"NLL {m['test_nll']:.3f} -> {m['test_nll_calibrated']:.3f}; {level} "
                       f"intervals: test coverage {m['test_coverage']:.3f}, mean width "
                       f"{m['test_mean_interval_width']:.4g}")
    return (f"{m['epochs_trained']} epochs; {scores}\n"
            f"Results in {out}/ ({m['seconds']} s)")


# --- loading and predicting ------------------------------------------------------------------

def load(path, unsafe_load=False, require_preprocessing=False):
    """Load a saved model and its preprocessing: a `run` output folder or a ``.keras`` file.

    A folder is trusted only when its manifest (`tfp_bnn.results.verify`) matches every file:
    an interrupted, truncated or edited result is refused. A ``.keras`` file inside such a
    folder is checked the same way and uses the folder's ``preprocessing.json``; a file in a
    folder without a manifest (a bare model) takes its inputs unscaled, every CSV column is a
    feature and classes are numbered, and result files (``preprocessing.json``, ...) beside
    it without a manifest are refused rather than guessed at. The model itself is read by
    `tfp_bnn.safety.load_model`: a ``.keras`` archive with ``safe_mode=True`` only, unless
    ``unsafe_load``.

    Args:
        path: a `run` output folder or a ``.keras`` file.
        unsafe_load: also load other formats (HDF5), with ``safe_mode=False``: code stored in
            the file may run. Trusted files only.
        require_preprocessing: refuse a results folder whose manifest lists no
            ``preprocessing.json`` (its model takes scaled inputs).

    Returns:
        ``(model, preprocessing)``; ``preprocessing`` is None for a bare ``.keras`` file.
    """
    model, preprocessing, _ = load_run(path, unsafe_load, require_preprocessing)
    return model, preprocessing


def load_run(path, unsafe_load=False, require_preprocessing=False):
    """`load`, plus the folder's posthoc.json contents (None when its manifest lists none):
    ``(model, preprocessing, posthoc)``, what `predict_csv` and ``tfp-bnn export`` apply."""
    path = os.fspath(path)
    folder, file = (path, os.path.join(path, "model.keras")) if os.path.isdir(path) else (
        os.path.dirname(path) or ".", path)
    if not os.path.exists(file):
        raise FileNotFoundError(f"No model at MODEL={path!r} (expected a .keras file or a "
                                "`tfp-bnn train` output folder holding model.keras)")
    meta_path = os.path.join(folder, PREPROCESSING_FILE)
    if os.path.isdir(path) or os.path.exists(os.path.join(folder, results.MANIFEST)):
        listed = results.verify(folder)
        if os.path.relpath(file, folder).replace(os.sep, "/") not in listed:
            raise ValueError(f"MODEL={path!r} is not listed in the manifest of {folder!r}.")
        use_meta = PREPROCESSING_FILE in listed
        use_posthoc = POSTHOC_FILE in listed
        if require_preprocessing and not use_meta:
            raise ValueError(f"{folder!r} holds no {PREPROCESSING_FILE} (a `tfp-bnn iris` "
                             "folder, say): its model expects scaled inputs, and raw CSV values "
                             "would be predicted wrongly. Use a `tfp-bnn train` folder.")
    else:
        beside = [n for n in OWNED_FILES if n != os.path.basename(file)
                  and os.path.exists(os.path.join(folder, n))]
        if beside:
            raise ValueError(f"{', '.join(beside)} lie beside MODEL={path!r} without a "
                             f"{results.MANIFEST}: an incomplete or hand-assembled result is "
                             "not trusted; rerun `tfp-bnn train`, or move the .keras file out.")
        use_meta = use_posthoc = False
    model = safety.load_model(file, unsafe_load=unsafe_load)
    return (model, _read_json(meta_path) if use_meta else None,
            _read_json(os.path.join(folder, POSTHOC_FILE)) if use_posthoc else None)


def _read_json(path):
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} is not valid JSON: {e}") from None


def predict_csv(model_path, csv, out, num_samples=100, seed=None, overwrite=False, verbose=0,
                batch_size=None, unsafe_load=False, alpha=None, log=None):
    """Predict every row of ``csv`` with a saved model; write one report row per example.

    Classification rows (`tfp_bnn.reports.write_uncertainty_csv`): predicted class, class
    probabilities, predictive entropy = aleatoric (expected entropy) + epistemic (mutual
    information). Regression rows (`write_regression_csv`): mean, std, variance = aleatoric +
    epistemic, in the target's units. When ``csv`` has the training target column, its value
    is written as ``label``.

    A model trained with ``calibrate=True`` (a ``posthoc.json`` in its folder) is always
    predicted calibrated: temperature-scaled probabilities and predictive entropy (aleatoric
    and epistemic stay the model's, so they no longer sum to it), or scaled variances.
    ``alpha`` adds its split-conformal ``1 - alpha`` sets (``prediction_set``, the class names
    joined by ``|``, and ``set_size``) or intervals (``interval_lower``, ``interval_upper``
    in the target's units).

    Args:
        model_path: a `run` output folder or a ``.keras`` file (see `load`).
        csv: the input CSV; the feature columns are found by name, extra columns are ignored.
        out: the report CSV to write; an existing file is kept unless ``overwrite``.
        num_samples: S posterior samples per row.
        seed: an int makes the report reproducible.
        verbose: 1 shows a Keras progress bar over the batches.
        batch_size: rows per compiled call (`tfp_bnn.predict`'s default when None).
        unsafe_load: see `load`.
        alpha: None, or the miscoverage level in (0, 1) of the conformal sets / intervals (a
            model trained with ``calibrate=True``; at least ``1 / (n + 1)`` for its n
            calibration examples).
        log: a print-like function told the empirical coverage when ``alpha`` is given and
            ``csv`` holds the target (None: silent).

    Raises:
        ValueError naming the CSV's data row whose features or outputs are not finite in
        float32, or naming ``--alpha`` and its value when the model has no conformal
        calibration or too few calibration examples for it; nothing is written then.

    Returns:
        The `tfp_bnn.Prediction` (in the model's units: before undoing a target scaling).
    """
    out = os.fspath(out)
    alpha = None if alpha is None else options.probability("alpha", alpha)
    stage = results.Staging(out, overwrite, argument="--out", kind="file")
    if not os.path.isfile(csv):
        raise FileNotFoundError(f"No CSV file at path={os.fspath(csv)!r}")
    model, meta, posthoc = load_run(model_path, unsafe_load, require_preprocessing=True)
    task = resolve_task(model)
    conf = None if posthoc is None else Conformal.from_config(model, posthoc)
    if alpha is not None:
        _check_alpha(alpha, conf, model_path)
    if meta is None:
        x, raw_y = data_lib.load_features(csv)
        scaler, target, class_names, y_scaling = None, None, None, None
    else:
        target, class_names = meta["target"], meta["class_names"] or None
        x, raw_y = data_lib.load_features(csv, meta["feature_names"], target=target)
        scaler = data_lib.MinMaxScaler.from_config(meta["feature_scaler"])
        y_scaling = meta.get("target_scaling")
    width = model.inputs[0].shape[-1]
    if x.shape[1] != width:
        raise ValueError(f"The model takes {width} features; {os.fspath(csv)!r} has {x.shape[1]} "
                         "columns (without a preprocessing.json beside the model, every column "
                         "is a feature)")
    if scaler is not None:
        x = scaler.transform(x)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{os.fspath(csv)!r} data row {row + 1}: a feature is beyond "
                             "float32's range once scaled with the training statistics, far "
                             "outside the training data; nothing was predicted.")
    safety.check_sample_memory(model, num_samples, min(len(x), batch_size or DEFAULT_BATCH_SIZE))
    # Without alpha the calibration alone: no sets computed, none written.
    predicted = model if conf is None else conf if alpha is not None else conf.model
    try:
        pred = predict(predicted, x, num_samples=num_samples, seed=seed, batch_size=batch_size,
                       verbose=1 if verbose else 0, alpha=alpha)
    except NonFiniteOutputError as e:
        raise ValueError(f"{os.fspath(csv)!r} data row {e.index + 1}: the model's output is "
                         "not finite (inputs too far outside the training range for float32 "
                         "arithmetic); nothing was written.") from None
    with stage:
        if task.is_classification:
            labels = None if raw_y is None else _class_ids(raw_y, class_names, target, csv)
            reports.write_uncertainty_csv(stage.path, labels, pred.probabilities,
                                          pred.predictive_entropy, pred.expected_entropy,
                                          pred.mutual_information, class_names=class_names,
                                          prediction_sets=pred.prediction_sets)
            if log is not None and alpha is not None and labels is not None:
                log(f"{1 - alpha:.0%} sets: coverage "
                    f"{metrics_lib.empirical_coverage(pred.prediction_sets, labels):.3f}, mean "
                    f"size {metrics_lib.set_size(pred.prediction_sets):.2f} on the {len(labels)} "
                    f"labelled rows of {os.fspath(csv)!r}")
        else:
            labels = None
            if raw_y is not None:
                try:
                    labels = np.asarray(raw_y, dtype=np.float64)
                except (TypeError, ValueError):
                    raise ValueError(f"Target column {target!r} in {os.fspath(csv)!r} is not "
                                     "numeric") from None
            mean, alea, epi, lower, upper = _unscale(pred, y_scaling)
            bounds = {} if alpha is None else {"interval_lower": lower, "interval_upper": upper}
            reports.write_regression_csv(stage.path, labels, mean, alea, epi, **bounds)
            if log is not None and bounds and labels is not None:
                log(f"{1 - alpha:.0%} intervals: coverage "
                    f"{metrics_lib.picp(*bounds.values(), labels):.3f}, mean width "
                    f"{metrics_lib.mean_interval_width(*bounds.values()):.4g} on the "
                    f"{len(labels)} labelled rows of {os.fspath(csv)!r}")
        stage.commit()
    return pred


def _check_alpha(alpha, conf, model_path):
    """Refuse an ``alpha`` the saved model has no conformal sets for, naming --alpha."""
    if conf is None:
        raise ValueError(f"--alpha={alpha} needs a model trained with --calibrate (calibrate="
                         f"True): MODEL={os.fspath(model_path)!r} has no {POSTHOC_FILE} with "
                         "conformal calibration scores.")
    n = len(conf.scores)
    if n < minimum_calibration_size(alpha):
        raise ValueError(f"--alpha={alpha} needs at least {minimum_calibration_size(alpha)} "
                         f"calibration examples; MODEL={os.fspath(model_path)!r} was calibrated "
                         f"on {n} (its validation split): use --alpha >= 1/(n + 1), "
                         f"{math.ceil(1e4 / (n + 1)) / 1e4:g} or more.")


def _class_ids(raw, class_names, target, source):
    index = {name: k for k, name in enumerate(class_names)}
    text = [str(v) for v in raw]
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"Target column {target!r} in {os.fspath(source)!r} holds classes not "
                         f"seen in training: {unknown[:5]}; known: {list(class_names)}")
    return np.array([index[t] for t in text], dtype=np.int64)
