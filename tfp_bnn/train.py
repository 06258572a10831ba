"""Train a Bayesian MLP on any table, save it with its preprocessing, predict from the saved folder.

`run` is the job behind ``tfp-bnn train`` and `predict_csv` the one behind ``tfp-bnn predict``;
`build_model` and `fit` are also the Iris build's (`tfp_bnn.iris`), so both follow one recipe:

    data    -> a CSV or Hugging Face dataset; train / val (20 % of the rest) / test (20 %) split,
               stratified by class; features min-max scaled with training statistics; a
               regression target standardised with the training mean and std
    model   -> Dense(h, relu) per hidden width -> Dense(C) logits (classification), or
               Dense(2) -> GaussianHead (regression: mean and aleatoric std);
               bayesify(estimator, prior, N = training examples)
    fit     -> Adam, sparse cross-entropy from logits or GaussianNLL, early stopping on the
               Monte Carlo validation NLL (best weights restored)
    out     -> model.keras, preprocessing.json (columns, classes, scaling), metrics.json,
               history.csv; existing files are kept unless overwrite
    predict -> the saved scaling applied to a CSV's feature columns, S posterior samples, one
               row per example with the uncertainty decomposition in the target's units

Example:
    >>> from tfp_bnn import train
    >>> metrics = train.run("runs/iris", target="species", csv=data.iris_csv_path())
    >>> train.predict_csv("runs/iris", "new_flowers.csv", "predictions.csv", num_samples=100)
"""
import dataclasses
import json
import os
import time

import numpy as np

from tfp_bnn import callbacks as callbacks_lib
from tfp_bnn import data as data_lib
from tfp_bnn import metrics as metrics_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import reports
from tfp_bnn._keras import tf_keras
from tfp_bnn.convert import ESTIMATORS, bayesify
from tfp_bnn.elbo import set_kl_weight
from tfp_bnn.heads import GaussianHead
from tfp_bnn.losses import GaussianNLL
from tfp_bnn.predict import output_kind, predict

__all__ = ["TrainConfig", "OUTPUT_FILES", "PREPROCESSING_FILE", "build_model", "fit", "run",
           "load", "predict_csv"]

PREPROCESSING_FILE = "preprocessing.json"
# Files `run` writes into its output folder; an existing one is never replaced without overwrite.
OUTPUT_FILES = ("model.keras", PREPROCESSING_FILE, "metrics.json", "history.csv")
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

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}. Received: task={self.task!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator={self.estimator!r}. Valid: {sorted(ESTIMATORS)}")
        priors_lib.get(self.prior)  # an unknown prior fails here, before any data is read
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if not self.hidden or not all(_is_int(h, 1) for h in self.hidden):
            raise ValueError(f"hidden must be one or more positive integers (layer widths). "
                             f"Received: hidden={self.hidden!r}")
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("num_samples", 1),
                              ("val_samples", 1), ("patience", 0), ("seed", 0)):
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

    Classification: ``num_outputs`` logits, sparse cross-entropy, accuracy. Regression:
    ``num_outputs`` means and stds through `GaussianHead`, `GaussianNLL`.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression'. Received: task={task!r}")
    layers = [tf_keras.Input((int(num_features),), name="features")]
    layers += [tf_keras.layers.Dense(int(h), activation="relu") for h in hidden]
    if task == "classification":
        layers.append(tf_keras.layers.Dense(int(num_outputs), name="logits"))
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        layers += [tf_keras.layers.Dense(2 * int(num_outputs), name="loc_and_scale"),
                   GaussianHead(int(num_outputs), name="gaussian")]
        loss, metrics = GaussianNLL(), None
    model = bayesify(tf_keras.Sequential(layers, name=name), estimator=estimator, prior=prior,
                     num_train_examples=int(num_train_examples))
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

def check_out(out, files, overwrite):
    """Refuse an ``out`` that is a file, or that holds any of ``files`` unless ``overwrite``."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"out must be a directory; it is an existing file. Received: out={out!r}")
    existing = [f for f in files if os.path.exists(os.path.join(out, f))]
    if existing and not overwrite:
        raise FileExistsError(
            f"Output folder {out!r} already holds {', '.join(existing)}; nothing was changed. "
            "Pass --overwrite (overwrite=True) to replace these files, or choose another --out.")


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

    Args:
        out: output folder for `OUTPUT_FILES`; existing ones are kept unless ``overwrite``.
        target: the column to predict; every other column is a numeric feature.
        csv: a local CSV file, or
        hub_id: a Hugging Face dataset id (needs network), read at ``split``.
        config: `TrainConfig` (task, network, prior, epochs, seed, ...).
        overwrite: replace result files already in ``out``.
        log: a print-like function for the summary (``lambda *a: None`` = quiet).
        verbose: 1 shows Keras progress bars for the epochs and the test prediction.

    Returns:
        The metrics dict also written to ``metrics.json``.
    """
    start = time.time()
    out = os.fspath(out)
    check_out(out, OUTPUT_FILES, overwrite)
    table, source = _load_table(csv, hub_id, target, config.task, split)
    task = table.task
    if task == "classification" and len(table.class_names) < 2:
        raise ValueError(f"Target column {target!r} has a single class "
                         f"{list(table.class_names)}; a classifier needs at least two.")
    parts = data_lib.train_val_test_split(table.features, table.labels, seed=config.seed,
                                          stratify=task == "classification")
    scaler = data_lib.MinMaxScaler().fit(parts.x_train)
    y_scaling = None
    if task == "regression":
        std = float(np.std(parts.y_train))
        y_scaling = {"mean": float(np.mean(parts.y_train)), "std": std if std > 0 else 1.0}
    parts = dataclasses.replace(
        parts, x_train=scaler.transform(parts.x_train), x_val=scaler.transform(parts.x_val),
        x_test=scaler.transform(parts.x_test),
        **({} if y_scaling is None else {
            k: ((getattr(parts, k) - y_scaling["mean"]) / y_scaling["std"]).astype(np.float32)
            for k in ("y_train", "y_val", "y_test")}))
    log(f"{source}: {task} of {target!r} from {len(table.feature_names)} features; "
        f"{len(parts.x_train)} train / {len(parts.x_val)} validation / {len(parts.x_test)} test "
        f"rows; up to {config.epochs} epochs")

    tf_keras.utils.set_random_seed(config.seed)
    num_outputs = len(table.class_names) if task == "classification" else 1
    model = build_model(len(table.feature_names), num_outputs, len(parts.x_train), task,
                        config.hidden, config.estimator, config.prior, config.kl_multiplier,
                        config.learning_rate)
    history = fit(model, parts, config.epochs, config.batch_size, config.patience,
                  config.val_samples, config.seed, verbose)
    pred = predict(model, parts.x_test, num_samples=config.num_samples, seed=config.seed,
                   verbose=1 if verbose else 0)
    metrics = _evaluate(pred, parts.y_test, y_scaling)
    metrics.update(task=task, target=target, source=source, epochs_trained=len(history),
                   num_train=len(parts.x_train), num_val=len(parts.x_val),
                   num_test=len(parts.x_test), config=dataclasses.asdict(config))

    preprocessing = {"task": task, "target": target, "feature_names": list(table.feature_names),
                     "class_names": list(table.class_names),
                     "feature_scaler": scaler.get_config(), "target_scaling": y_scaling}
    os.makedirs(out, exist_ok=True)
    model.save(os.path.join(out, "model.keras"))
    _write_json(os.path.join(out, PREPROCESSING_FILE), preprocessing)
    write_history(os.path.join(out, "history.csv"), history)
    metrics["seconds"] = round(time.time() - start, 1)
    _write_json(os.path.join(out, "metrics.json"), metrics)
    log(_summary(metrics, out))
    return metrics


def _evaluate(pred, y, y_scaling):
    if pred.task == "classification":
        p = pred.probabilities
        return {"test_accuracy": metrics_lib.accuracy(p, y), "test_nll": metrics_lib.nll(p, y),
                "test_ece": metrics_lib.expected_calibration_error(p, y),
                "mean_predictive_entropy": float(pred.predictive_entropy.mean()),
                "mean_aleatoric": float(pred.expected_entropy.mean()),
                "mean_epistemic": float(pred.mutual_information.mean())}
    mean, alea, epi = _unscale(pred, y_scaling)
    y = np.asarray(y, np.float64) * y_scaling["std"] + y_scaling["mean"]
    return {"test_rmse": metrics_lib.rmse(mean, y),
            "test_nll": metrics_lib.gaussian_nll(mean, alea + epi, y),
            "mean_aleatoric_variance": float(alea.mean()),
            "mean_epistemic_variance": float(epi.mean())}


def _unscale(pred, y_scaling):
    """Mean and variances of a regression `Prediction` in the target's original units."""
    mean = pred.mean.astype(np.float64)
    alea = pred.aleatoric_variance.astype(np.float64)
    epi = pred.epistemic_variance.astype(np.float64)
    if y_scaling is None:
        return mean, alea, epi
    s2 = y_scaling["std"] ** 2
    return mean * y_scaling["std"] + y_scaling["mean"], alea * s2, epi * s2


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _summary(m, out):
    if m["task"] == "classification":
        scores = (f"test accuracy {m['test_accuracy']:.3f}, NLL {m['test_nll']:.3f}, "
                  f"ECE {m['test_ece']:.3f}, mean epistemic (MI) {m['mean_epistemic']:.4f} nats")
    else:
        scores = (f"test RMSE {m['test_rmse']:.4g}, NLL {m['test_nll']:.3f}, mean variance "
                  f"aleatoric {m['mean_aleatoric_variance']:.4g} / "
                  f"epistemic {m['mean_epistemic_variance']:.4g}")
    return (f"{m['epochs_trained']} epochs; {scores}\n"
            f"Results in {out}/ ({m['seconds']} s)")


# --- loading and predicting ------------------------------------------------------------------

def load(path):
    """Load a saved model and its preprocessing: a `run` output folder or a ``.keras`` file.

    A ``.keras`` file uses the ``preprocessing.json`` beside it when there is one; otherwise
    its inputs are taken unscaled, every CSV column is a feature and classes are numbered.

    Returns:
        ``(model, preprocessing)``; ``preprocessing`` is None for a bare ``.keras`` file.
    """
    path = os.fspath(path)
    folder, file = (path, os.path.join(path, "model.keras")) if os.path.isdir(path) else (
        os.path.dirname(path), path)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"No model at MODEL={path!r} (expected a .keras file or a "
                                "`tfp-bnn train` output folder holding model.keras)")
    import tfp_bnn  # noqa: F401  (registers the Bayesian layers for deserialisation)
    try:
        model = tf_keras.models.load_model(file)
    except Exception as e:  # a Keras load error: say which file and why in one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"could not load a tf_keras model from {file!r}: {first}") from None
    meta_path = os.path.join(folder, PREPROCESSING_FILE)
    if not os.path.isfile(meta_path):
        return model, None
    with open(meta_path) as f:
        try:
            preprocessing = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path!r} is not valid JSON: {e}") from None
    return model, preprocessing


def predict_csv(model_path, csv, out, num_samples=100, seed=None, overwrite=False, verbose=0,
                batch_size=None):
    """Predict every row of ``csv`` with a saved model; write one report row per example.

    Classification rows (`tfp_bnn.reports.write_uncertainty_csv`): predicted class, class
    probabilities, predictive entropy = aleatoric (expected entropy) + epistemic (mutual
    information). Regression rows (`write_regression_csv`): mean, std, variance = aleatoric +
    epistemic, in the target's units. When ``csv`` has the training target column, its value
    is written as ``label``.

    Args:
        model_path: a `run` output folder or a ``.keras`` file (see `load`).
        csv: the input CSV; the feature columns are found by name, extra columns are ignored.
        out: the report CSV to write; an existing file is kept unless ``overwrite``.
        num_samples: S posterior samples per row.
        seed: an int makes the report reproducible.
        verbose: 1 shows a Keras progress bar over the batches.

    Returns:
        The `tfp_bnn.Prediction` (in the model's units: before undoing a target scaling).
    """
    out = os.fspath(out)
    if os.path.isdir(out):
        raise ValueError(f"out must be a file path; it is a directory. Received: out={out!r}")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out!r} already exists; nothing was changed. Pass --overwrite "
                              "(overwrite=True) to replace it, or choose another --out.")
    if not os.path.isfile(csv):
        raise FileNotFoundError(f"No CSV file at path={os.fspath(csv)!r}")
    model, meta = load(model_path)
    kind = output_kind(model)
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
    pred = predict(model, x, num_samples=num_samples, seed=seed, batch_size=batch_size,
                   verbose=1 if verbose else 0)
    if kind == "classification":
        labels = None if raw_y is None else _class_ids(raw_y, class_names, target, csv)
        reports.write_uncertainty_csv(out, labels, pred.probabilities, pred.predictive_entropy,
                                      pred.expected_entropy, pred.mutual_information,
                                      class_names=class_names, overwrite=overwrite)
    else:
        labels = None
        if raw_y is not None:
            try:
                labels = np.asarray(raw_y, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"Target column {target!r} in {os.fspath(csv)!r} is not "
                                 "numeric") from None
        mean, alea, epi = _unscale(pred, y_scaling)
        reports.write_regression_csv(out, labels, mean, alea, epi, overwrite=overwrite)
    return pred


def _class_ids(raw, class_names, target, source):
    index = {name: k for k, name in enumerate(class_names)}
    text = [str(v) for v in raw]
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"Target column {target!r} in {os.fspath(source)!r} holds classes not "
                         f"seen in training: {unknown[:5]}; known: {list(class_names)}")
    return np.array([index[t] for t in text], dtype=np.int64)
