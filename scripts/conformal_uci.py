"""Conformal intervals on the UCI regression sets: coverage over random calibration/test splits.

Per dataset, split 0 of the standard layout (inputs and targets normalised with its training
statistics): a Gaussian-head BNN (``bayesify(Dense(n_hidden, relu) -> Dense(2) ->
GaussianHead)``, Flipout, KL 1/N) is trained once on a fixed 40 % of the rows; its MC
predictions on the other 60 % (the pool) are reused across ``num_splits`` random halvings of
the pool into a conformal calibration set and a test set. For each score ("normalized", "cqr")
and alpha it reports the mean, min and sd of the test coverage, the mean interval width, and the
exact sd of one split's coverage under the guarantee (beta-binomial).

    python scripts/conformal_uci.py ../shared/data/uci/concrete ../shared/data/uci/energy
    python scripts/conformal_uci.py ../shared/data/uci/* --splits 50 --out runs/conformal_uci

The UCI sets are not shipped with the project (``../shared/data/uci``); the default tests use a
synthetic heteroscedastic set, and ``tests/test_conformal.py`` runs `run` on one shared set
when it is there.
"""
import argparse
import math
import sys

import numpy as np

import tfp_bnn
from tfp_bnn import metrics, uci
from tfp_bnn._keras import tf_keras
from tfp_bnn.conformal import Conformal, calibration_scores, intervals
from tfp_bnn.results import Staging
from tfp_bnn.options import ConformalScore, Task

SCORES = ("normalized", "cqr")


def _split_sd(n_cal, n_test, alpha):
    l = math.floor((n_cal + 1) * alpha)
    a, b = n_cal + 1 - l, l
    return math.sqrt(a * b * (a + b + n_test) / (n_test * (a + b) ** 2 * (a + b + 1)))


def run(path, num_splits=50, epochs=100, alphas=(0.1, 0.2), num_samples=50, seed=0,
        scores=SCORES):
    """Train once on 40 % of the rows, then ``num_splits`` random conformal splits of the rest.

    Returns:
        ``{"name", "pool", "coverages": {alpha: [...]} (the "normalized" score), "table": rows}``.
    """
    d = uci.load_uci(path, split=0)
    x = np.concatenate([d.x_train, d.x_test])
    y = np.concatenate([d.y_train, d.y_test])
    order = np.random.default_rng(seed).permutation(len(x))
    n_train = int(0.4 * len(x))
    train, pool = order[:n_train], order[n_train:]
    tf_keras.utils.set_random_seed(seed)
    source = tf_keras.Sequential([tf_keras.Input((x.shape[1],)),
                                  tf_keras.layers.Dense(d.n_hidden, activation="relu"),
                                  tf_keras.layers.Dense(2), tfp_bnn.heads.GaussianHead()])
    bnn = tfp_bnn.bayesify(source, num_train_examples=n_train)
    bnn.compile(tf_keras.optimizers.Adam(1e-2), tfp_bnn.losses.GaussianNLL())
    bnn.fit(x[train], y[train], epochs=epochs, batch_size=32, verbose=0)
    pred = tfp_bnn.predict(bnn, x[pool], num_samples=num_samples, seed=seed, verbose=0)
    mean, var, target = pred.mean, pred.variance, y[pool]
    n = len(pool)
    n_cal = n // 2
    rng = np.random.default_rng(seed + 1)
    splits = [rng.permutation(n) for _ in range(num_splits)]
    table, coverages = [], {}
    for score in scores:
        for alpha in alphas:
            cov, width = [], []
            for perm in splits:
                cal, test = perm[:n_cal], perm[n_cal:]
                fitted = calibration_scores(score, target[cal], mean=mean[cal],
                                            variance=var[cal])
                q = Conformal(None, Task.GAUSSIAN, ConformalScore(score), alpha,
                              **fitted).quantile
                lo, hi = intervals(mean[test], var[test], q, score, alpha)
                cov.append(metrics.picp(lo.numpy(), hi.numpy(), target[test]))
                width.append(metrics.mean_interval_width(lo.numpy(), hi.numpy()) * d.y_std)
            if score == "normalized":
                coverages[alpha] = cov
            table.append({"score": score, "alpha": alpha, "mean": float(np.mean(cov)),
                          "min": float(np.min(cov)), "sd": float(np.std(cov)),
                          "split_sd": _split_sd(n_cal, n - n_cal, alpha),
                          "width": float(np.mean(width))})
    return {"name": d.name, "pool": n, "n_cal": n_cal, "coverages": coverages, "table": table}


def markdown(results):
    lines = ["| Dataset | Score | alpha | Mean coverage | Min | SD (exact SD) | Mean width |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["table"]:
            lines.append(f"| {r['name']} (n_cal {r['n_cal']}) | {row['score']} | {row['alpha']} "
                         f"| {row['mean']:.4f} | {row['min']:.4f} | {row['sd']:.4f} "
                         f"({row['split_sd']:.4f}) | {row['width']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="UCI dataset folders")
    parser.add_argument("--splits", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", default=None, help="write results.json / results.md here")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:  # checked before training; the folder appears whole, in one rename
        stage = args.out and Staging(args.out, args.overwrite,
                                     owned=("results.json", "results.md"), argument="--out")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = [run(p, args.splits, args.epochs) for p in args.paths]
    text = markdown(results)
    print(text)
    if stage:
        with stage:
            stage.write("results.json", results, default=float)
            stage.write("results.md", text)
            stage.commit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
