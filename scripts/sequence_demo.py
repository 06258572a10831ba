"""Bayesian LSTM on a regime-switching series: epistemic variance rises in an unseen regime.

A synthetic series (generated here, no download) follows regime A, a noisy sine wave, and
then switches to regime B, a faster, larger and shifted oscillation never seen in training:

    A: y_t = sin(2 pi t / 25) + 0.1 e_t            B: y_t = 1.5 + 2.5 sin(2 pi t / 9) + 0.1 e_t

A tf_keras LSTM(units) -> Dense(1) one-step forecaster (a window of the last T values -> the
next value) is made Bayesian with `tfp_bnn.bayesify` (Flipout, Normal prior, KL weight 1/N) and
trained on regime-A windows only. On a test series that starts in A and switches to B,
`tfp_bnn.predict` draws S posterior samples per window in one graph and returns the mean and
the epistemic variance Var_s[mu_s]; the script prints per-regime RMSE and mean variance, the
ratio B/A, and saves a plot (series, predictive mean +- 2 std, variance over time).

    python scripts/sequence_demo.py                 # full run (about a minute on 2 CPU cores)
    python scripts/sequence_demo.py --quick         # seconds: tiny model, for the tests

References:
    Fortunato, Blundell & Vinyals, "Bayesian Recurrent Neural Networks", 2017.
"""
import argparse
import os
import sys
import time

import numpy as np

import tfp_bnn
from tfp_bnn._keras import tf_keras

REGIMES = {"A": dict(offset=0.0, amplitude=1.0, period=25.0),
           "B": dict(offset=1.5, amplitude=2.5, period=9.0)}
NOISE = 0.1


def series(regimes, rng):
    """Concatenated segments ``[(regime, length), ...]``; returns values and regime labels."""
    values, labels = [], []
    t0 = 0
    for name, length in regimes:
        p = REGIMES[name]
        t = np.arange(t0, t0 + length)
        values.append(p["offset"] + p["amplitude"] * np.sin(2 * np.pi * t / p["period"])
                      + NOISE * rng.standard_normal(length))
        labels += [name] * length
        t0 += length
    return np.concatenate(values).astype(np.float32), np.array(labels)


def windows(values, labels, length):
    """(x [N, T, 1], y [N, 1], regime of the target [N]) for one-step forecasting."""
    idx = np.arange(len(values) - length)
    x = np.stack([values[i:i + length] for i in idx])[..., None]
    return x, values[idx + length][:, None], labels[idx + length]


def run(quick=False, seed=0, out="runs/sequence_demo/sequence_demo.png", epochs=None,
        num_samples=None, verbose=True):
    """Train, predict and plot; returns {regime: {"rmse", "variance", "windows"}} and ratio."""
    cfg = dict(window=12, units=8, train_len=300, epochs=epochs or 4, samples=num_samples or 20,
               test=(("A", 60), ("B", 60))) if quick else dict(
        window=24, units=32, train_len=2000, epochs=epochs or 40, samples=num_samples or 200,
        test=(("A", 300), ("B", 300)))
    tf_keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    train_values, train_labels = series([("A", cfg["train_len"])], rng)
    x_train, y_train, _ = windows(train_values, train_labels, cfg["window"])
    test_values, test_labels = series(cfg["test"], rng)
    x_test, y_test, regime = windows(test_values, test_labels, cfg["window"])

    source = tf_keras.Sequential([tf_keras.Input((cfg["window"], 1)),
                                  tf_keras.layers.LSTM(cfg["units"]),
                                  tf_keras.layers.Dense(1)], name="forecaster")
    bnn = tfp_bnn.bayesify(source, estimator="flipout", num_train_examples=len(x_train),
                           posterior=tfp_bnn.posteriors.MeanField(init_scale=0.02))
    bnn.compile(tf_keras.optimizers.Adam(0.01), "mse")
    start = time.time()
    bnn.fit(x_train, y_train, epochs=cfg["epochs"], batch_size=64, verbose=0)
    train_s = time.time() - start
    pred = tfp_bnn.predict(bnn, x_test, num_samples=cfg["samples"], seed=seed, verbose=0)

    mean, var = pred.mean[:, 0], pred.epistemic_variance[:, 0]
    results = {}
    for name in ("A", "B"):
        sel = regime == name
        results[name] = {"windows": int(sel.sum()),
                         "rmse": float(np.sqrt(np.mean((mean[sel] - y_test[sel, 0]) ** 2))),
                         "variance": float(var[sel].mean())}
    ratio = results["B"]["variance"] / results["A"]["variance"]
    if verbose:
        print(f"Bayesian LSTM({cfg['units']}), window {cfg['window']}, {len(x_train)} regime-A "
              f"training windows, {cfg['epochs']} epochs ({train_s:.1f} s), S={cfg['samples']}")
        print(f"{'regime':<16}{'windows':>8}{'RMSE':>10}{'mean epistemic var':>22}")
        for name, label in (("A", "A (trained)"), ("B", "B (unseen)")):
            r = results[name]
            print(f"{label:<16}{r['windows']:>8}{r['rmse']:>10.3f}{r['variance']:>22.5f}")
        print(f"variance ratio B/A: {ratio:.1f}")
    if out:
        _plot(out, test_values, cfg["window"], mean, var, regime)
        if verbose:
            print(f"plot: {out}")
    return results, ratio


def _plot(path, values, window, mean, var, regime):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t = np.arange(window, window + len(mean))
    switch = window + int(np.argmax(regime == "B"))
    std = np.sqrt(var)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(np.arange(len(values)), values, color="0.4", lw=1, label="series")
    ax1.plot(t, mean, color="C0", lw=1, label="predictive mean")
    ax1.fill_between(t, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.3,
                     label="mean +- 2 epistemic std")
    ax2.semilogy(t, var, color="C3", lw=1)
    ax2.set_ylabel("epistemic variance")
    ax2.set_xlabel("time step")
    for ax in (ax1, ax2):
        ax.axvline(switch, color="k", ls="--", lw=1)
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title("Bayesian LSTM trained on regime A; regime B starts at the dashed line")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and data (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None, help="MC samples S")
    parser.add_argument("--out", default="runs/sequence_demo/sequence_demo.png",
                        help="plot path ('' for none)")
    args = parser.parse_args(argv)
    run(args.quick, args.seed, args.out, args.epochs, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
