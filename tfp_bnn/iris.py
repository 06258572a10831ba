"""The Iris build: load, scale, split, bayesify a 4-64-64-3 MLP, train, evaluate, export.

One entry point, `run`, used by ``tfp-bnn iris`` and ``python scripts/train_iris.py``; the model
and the training loop are `tfp_bnn.train`'s (``tfp-bnn train`` on the Iris CSV with the default
settings and ``--seed i`` trains seed ``i`` of this build):

    data  -> shuffle, min-max scale with training statistics, train / val (20 % of train) / test
    model -> Dense(64, relu) -> Dense(64, relu) -> Dense(3), bayesify(flipout, normal prior, N)
    fit   -> Adam(1e-3), sparse CE from logits, early stopping on validation NLL
    eval  -> 100 MC samples: accuracy, NLL, ECE, mutual information (epistemic); the ECE and
             NLL again after temperature scaling fitted on the validation split
             (`tfp_bnn.calibrate`), and the test coverage and mean size of 90 % APS sets
             conformalised on the validation split (`tfp_bnn.conformal`)

Run ``i`` of ``seeds`` shuffles and splits with ``data_seed + i`` and initialises the network with
seed ``i``: Iris's 30-example test sets differ in difficulty (a linear model scores 0.90 on one
split and 1.00 on another), so the spread over seeds covers the split as well as the training.

Example:
    >>> from tfp_bnn import iris
    >>> quick = iris.IrisConfig(seeds=2, epochs=2)        # the defaults are the full recipe
    >>> metrics = iris.run(out="runs/iris", config=quick, export_dir="savedmodels/iris_bnn",
    ...                    log=lambda *args, **kwargs: None)
    >>> 0.0 <= metrics["test_accuracy"] <= 1.0          # mean over the seeds
    True
"""
import dataclasses
import os
import time

import numpy as np

from tfp_bnn import data as data_lib
from tfp_bnn.calibration import calibrate
from tfp_bnn.conformal import conformal
from tfp_bnn import metrics as metrics_lib
from tfp_bnn import plots, reports, results
from tfp_bnn import train as train_lib
from tfp_bnn._keras import tf_keras
from tfp_bnn.export import export_savedmodel
from tfp_bnn.predict import predict

__all__ = ["IrisConfig", "OUTPUT_FILES", "build_model", "prepare_data", "train", "evaluate", "run"]

# Files `run` writes into the output folder; an existing one is never replaced without overwrite.
OUTPUT_FILES = ("metrics.json", "history.csv", "uncertainty.csv", "reliability.png",
                "entropy_vs_accuracy.png", "model.keras")
CONFUSABLE = ("versicolor", "virginica")


@dataclasses.dataclass(frozen=True)
class IrisConfig:
    """Settings of the Iris build; the defaults are the recipe of the README's main job."""

    seeds: int = 5
    data_seed: int = 0
    epochs: int = 150
    patience: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    hidden: int = 64
    estimator: str = "flipout"
    prior: str = "normal"
    kl_multiplier: float = 1.0
    num_samples: int = 100
    entropy_samples: int = 20
    hub_id: str = None

    def __post_init__(self):
        for name in ("seeds", "epochs", "batch_size", "hidden", "num_samples", "entropy_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, (int, np.integer)) \
                or self.patience < 0:
            raise ValueError(f"patience must be a non-negative integer. Received: patience={self.patience!r}")
        if not (float(self.learning_rate) > 0):
            raise ValueError(f"learning_rate must be positive. Received: learning_rate={self.learning_rate!r}")
        if not (float(self.kl_multiplier) >= 0):
            raise ValueError(f"kl_multiplier must be >= 0. Received: kl_multiplier={self.kl_multiplier!r}")


def prepare_data(config=IrisConfig(), seed=0, table=None):
    """Load Iris (shipped CSV, or ``config.hub_id``), split with ``data_seed + seed``, scale."""
    table = table if table is not None else data_lib.load_iris(hub_id=config.hub_id)
    split = data_lib.train_val_test_split(table.features, table.labels, test_fraction=0.2,
                                          val_fraction=0.2, seed=config.data_seed + int(seed))
    scaler = data_lib.MinMaxScaler().fit(split.x_train)
    split = dataclasses.replace(split, x_train=scaler.transform(split.x_train),
                                x_val=scaler.transform(split.x_val),
                                x_test=scaler.transform(split.x_test))
    return table, split


def build_model(num_features, num_classes, num_train_examples, config=IrisConfig()):
    """The 4-64-64-3 net, converted by `bayesify` and compiled (`train.build_model`)."""
    return train_lib.build_model(num_features, num_classes, num_train_examples, "classification",
                                 hidden=(config.hidden, config.hidden), estimator=config.estimator,
                                 prior=config.prior, kl_multiplier=config.kl_multiplier,
                                 learning_rate=config.learning_rate, name="iris_mlp")


def train(split, seed, config=IrisConfig(), verbose=0):
    """Train one network with seed ``seed`` (`train.fit`); returns (model, history rows)."""
    tf_keras.utils.set_random_seed(int(seed))
    model = build_model(split.x_train.shape[1], int(np.max(split.y_train)) + 1, len(split.x_train),
                        config)
    rows = train_lib.fit(model, split, epochs=config.epochs, batch_size=config.batch_size,
                         patience=config.patience, val_samples=config.entropy_samples,
                         seed=int(seed), verbose=verbose)
    return model, [{"seed": int(seed), **r} for r in rows]


def evaluate(model, x, y, class_names, num_samples=100, seed=0):
    """MC evaluation: accuracy, NLL, ECE, mean MI, and MI by class (confusable pair vs setosa)."""
    pred = predict(model, x, num_samples=num_samples, seed=seed, verbose=0)
    mi = pred.mutual_information
    by_class = {name: float(mi[y == k].mean()) for k, name in enumerate(class_names)
                if np.any(y == k)}
    pair = [k for k, name in enumerate(class_names) if name in CONFUSABLE]
    rest = [k for k in range(len(class_names)) if k not in pair]
    result = {
        "test_accuracy": metrics_lib.accuracy(pred.probabilities, y),
        "test_nll": metrics_lib.nll(pred.probabilities, y),
        "test_ece": metrics_lib.expected_calibration_error(pred.probabilities, y),
        "mean_mutual_information": float(mi.mean()),
        "mean_predictive_entropy": float(pred.predictive_entropy.mean()),
        "mutual_information_by_class": by_class,
    }
    if pair and rest:
        result["mi_confusable_pair"] = float(mi[np.isin(y, pair)].mean())
        result["mi_other"] = float(mi[np.isin(y, rest)].mean())
    return result, pred


def evaluate_post_hoc(model, split, num_samples=100, seed=0, alpha=0.1):
    """Temperature scaling and conformal sets, both fitted on the validation split.

    The conformal sets are built on the uncalibrated model: a temperature fitted on the same
    validation examples would make them not exchangeable with the test split any more.
    """
    cal = calibrate(model, split.x_val, split.y_val, num_samples=num_samples, seed=seed)
    p = predict(cal, split.x_test, num_samples=num_samples, seed=seed, verbose=0).probabilities
    conf = conformal(model, split.x_val, split.y_val, alpha=alpha, num_samples=num_samples,
                     seed=seed)
    sets = predict(conf, split.x_test, num_samples=num_samples, seed=seed,
                   verbose=0).prediction_sets
    return {"temperature": cal.temperature,
            "test_nll_calibrated": metrics_lib.nll(p, split.y_test),
            "test_ece_calibrated": metrics_lib.expected_calibration_error(p, split.y_test),
            "coverage_90": metrics_lib.empirical_coverage(sets, split.y_test),
            "set_size_90": metrics_lib.set_size(sets)}


def _mean(values):
    return float(np.mean(values))


def run(out="runs/iris", config=IrisConfig(), export_dir="savedmodels/iris_bnn", overwrite=False,
        log=print, verbose=0):
    """The whole Iris build; writes `OUTPUT_FILES` into ``out`` and returns the metrics dict.

    Args:
        out: output folder; existing result files are kept unless ``overwrite``.
        config: `IrisConfig`.
        export_dir: TF Serving model base path for the first seed's model (next free version);
            None skips the export.
        overwrite: replace result files already in ``out``.
        log: a print-like function for progress and the summary (``lambda *a: None`` = quiet).
        verbose: 1 shows a Keras progress bar over each seed's epochs.
    """
    start = time.time()
    out = os.fspath(out)
    # Every output place is checked before the first epoch, and the results are staged beside
    # ``out`` and swapped in complete (`tfp_bnn.results`): a failure never leaves half of them.
    stage = results.Staging(out, overwrite, owned=OUTPUT_FILES, argument="--out")
    if export_dir is not None:
        export_dir = os.fspath(export_dir)
        if os.path.exists(export_dir) and not os.path.isdir(export_dir):
            raise ValueError("--export-dir must be a folder; it is an existing file. Received: "
                             f"--export-dir={export_dir!r}")
        results.check_writable(export_dir, "--export-dir", inside=True)
    table, split = prepare_data(config)
    names = table.class_names
    log(f"Iris: {len(split.x_train)} train / {len(split.x_val)} validation / "
        f"{len(split.x_test)} test examples; {config.seeds} seed(s), up to {config.epochs} epochs")

    with stage:
        metrics = _train_and_write(stage, table, config, export_dir, log, verbose)
        metrics["seconds"] = round(time.time() - start, 1)
        stage.write("metrics.json", metrics)
        stage.commit()
    log(summary(metrics, names, out))
    return metrics


def _train_and_write(stage, table, config, export_dir, log, verbose):
    """Train every seed, write all results but metrics.json into ``stage``; the metrics."""
    names = table.class_names
    per_seed, history, first = [], [], None
    for seed in range(config.seeds):
        split = prepare_data(config, seed, table)[1]
        model, rows = train(split, seed, config, verbose)
        history += rows
        result, pred = evaluate(model, split.x_test, split.y_test, names, config.num_samples, seed)
        result.update(evaluate_post_hoc(model, split, config.num_samples, seed))
        per_seed.append(result)
        log(f"  seed {seed}: {len(rows)} epochs, test accuracy {result['test_accuracy']:.3f}, "
            f"NLL {result['test_nll']:.3f}, ECE {result['test_ece']:.3f}; temperature "
            f"{result['temperature']:.3f}: NLL {result['test_nll_calibrated']:.3f}, ECE "
            f"{result['test_ece_calibrated']:.3f}; 90 % sets cover {result['coverage_90']:.3f}")
        if first is None:
            first = (model, pred, split)

    model, pred, split = first
    out = stage.path
    accuracies = [r["test_accuracy"] for r in per_seed]
    metrics = {
        "test_accuracy": _mean(accuracies),
        "test_accuracy_per_seed": accuracies,
        "test_accuracy_std": float(np.std(accuracies)),
        "test_accuracy_min": float(np.min(accuracies)),
        "test_nll": _mean([r["test_nll"] for r in per_seed]),
        "test_nll_per_seed": [r["test_nll"] for r in per_seed],
        "test_ece": _mean([r["test_ece"] for r in per_seed]),
        "test_ece_per_seed": [r["test_ece"] for r in per_seed],
        "mean_mutual_information": _mean([r["mean_mutual_information"] for r in per_seed]),
        "mutual_information_by_class": {
            n: _mean([r["mutual_information_by_class"][n] for r in per_seed])
            for n in per_seed[0]["mutual_information_by_class"]},
        "mi_confusable_pair": _mean([r.get("mi_confusable_pair", np.nan) for r in per_seed]),
        "mi_other": _mean([r.get("mi_other", np.nan) for r in per_seed]),
        "epochs_trained_per_seed": [sum(1 for r in history if r["seed"] == s)
                                    for s in range(config.seeds)],
        "config": dataclasses.asdict(config),
        "num_train": len(split.x_train), "num_val": len(split.x_val), "num_test": len(split.x_test),
    }
    for key in ("temperature", "test_nll_calibrated", "test_ece_calibrated", "coverage_90",
                "set_size_90"):
        metrics[f"{key}_per_seed"] = [r[key] for r in per_seed]
        metrics[key] = _mean(metrics[f"{key}_per_seed"])

    train_lib.write_history(os.path.join(out, "history.csv"), history)
    reports.write_uncertainty_csv(
        os.path.join(out, "uncertainty.csv"), split.y_test, pred.probabilities,
        pred.predictive_entropy, pred.expected_entropy, pred.mutual_information,
        class_names=names, overwrite=True)
    plots.reliability_diagram(pred.probabilities, split.y_test,
                              path=os.path.join(out, "reliability.png"),
                              title="Iris BNN reliability (seed 0, 100 MC samples)")
    plots.entropy_vs_accuracy(pred.probabilities, split.y_test, pred.predictive_entropy,
                              path=os.path.join(out, "entropy_vs_accuracy.png"),
                              title="Iris BNN: accuracy of the most certain examples")
    model.save(os.path.join(out, "model.keras"))
    if export_dir is not None:
        metrics["savedmodel"] = export_savedmodel(model, export_dir, num_samples=10)
    return metrics


def summary(metrics, class_names, out):
    """A short human-readable summary of `run`'s metrics."""
    accs = metrics["test_accuracy_per_seed"]
    lines = [
        "",
        f"Test accuracy {metrics['test_accuracy']:.3f} (mean over {len(accs)} seed(s); "
        f"min {min(accs):.3f}, max {max(accs):.3f}, std {metrics['test_accuracy_std']:.3f})",
        f"Test NLL {metrics['test_nll']:.3f}   ECE (15 bins) {metrics['test_ece']:.3f}   "
        f"mean mutual information {metrics['mean_mutual_information']:.4f} nats",
    ]
    if "test_ece_calibrated" in metrics:
        lines.append(f"Temperature-scaled on the validation split (mean T "
                     f"{metrics['temperature']:.3f}): test NLL "
                     f"{metrics['test_nll_calibrated']:.3f}   ECE "
                     f"{metrics['test_ece_calibrated']:.3f}; 90 % APS sets: test coverage "
                     f"{metrics['coverage_90']:.3f}, mean size {metrics['set_size_90']:.2f}")
    if np.isfinite(metrics["mi_confusable_pair"]):
        pair, other = metrics["mi_confusable_pair"], metrics["mi_other"]
        verdict = "more" if pair > other else "NOT more"
        lines.append(f"Epistemic uncertainty: versicolor/virginica carry {verdict} mutual information "
                     f"({pair:.4f}) than setosa ({other:.4f}).")
    if "savedmodel" in metrics:
        lines.append(f"SavedModel (TF Serving): {metrics['savedmodel']}")
    lines.append(f"Results in {out}/ ({metrics['seconds']} s)")
    return "\n".join(lines)
