"""`tfp_bnn.conformal` side by side with MAPIE on the same scores: quantiles, sets, intervals.

MAPIE is never a dependency of tfp_bnn: it runs in its own virtual environment, this script
calling itself there with ``--mapie`` (that branch imports only numpy, scikit-learn and MAPIE).

    python -m venv /tmp/mapie_venv && /tmp/mapie_venv/bin/pip install mapie
    python scripts/conformal_vs_mapie.py --mapie-python /tmp/mapie_venv/bin/python

The same fixed predictions (Dirichlet class probabilities over 10 classes, Gaussian predictive
means and stds) go to both: MAPIE through a prefit estimator that returns them. Compared, for
alpha in 0.05, 0.1, 0.2:

* LAC: the calibration quantile and every prediction set.
* APS, randomised: the quantile of MAPIE's own calibration scores (its u), and the sets with
  MAPIE's prediction-time u (``include_last_label="randomized"``); MAPIE's score is
  ``above + (1 - u) p_y``, ours ``above + u p_y``, so ours is given ``1 - u``.
* normalized: MAPIE's "absolute" score on the standardised targets ``(y - mean) / std`` with an
  estimator predicting 0 is our score ``|y - mean| / std``: the quantile, hence the intervals
  ``mean -+ q std``.

Prints one line per comparison and exits 1 if any differs beyond float tolerance (1e-6).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ALPHAS = (0.05, 0.1, 0.2)
SEED = 0


def _data(n_cal=500, n_test=400, classes=10):
    rng = np.random.default_rng(SEED)
    p = rng.dirichlet(np.full(classes, 0.3), size=n_cal + n_test).astype(np.float32)
    y = np.array([rng.choice(classes, p=row / row.sum()) for row in p.astype(np.float64)])
    mean = rng.normal(size=n_cal + n_test)
    std = rng.uniform(0.5, 2.0, size=n_cal + n_test)
    t = mean + std * rng.standard_t(5, size=n_cal + n_test)
    return {"p": p, "y": y, "mean": mean.astype(np.float32), "std": std.astype(np.float32),
            "t": t.astype(np.float32), "n_cal": n_cal}


# ---------------------------------------------------------------------------------------------
# MAPIE's side (run in its own environment)
# ---------------------------------------------------------------------------------------------
def mapie_side(inputs, output):
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from mapie.classification import SplitConformalClassifier
    from mapie.regression import SplitConformalRegressor

    d = dict(np.load(inputs))
    n_cal, p = int(d["n_cal"]), d["p"].astype(np.float64)
    index = np.arange(len(p), dtype=np.float64)[:, None]  # X: the row of the fixed table

    class Fixed(ClassifierMixin, BaseEstimator):
        def fit(self, x, y):
            return self

        def predict_proba(self, x):
            return p[x[:, 0].astype(int)]

        def predict(self, x):
            return self.predict_proba(x).argmax(1)

    class Zero(RegressorMixin, BaseEstimator):
        def fit(self, x, y):
            return self

        def predict(self, x):
            return np.zeros(len(x))

    fixed = Fixed()
    fixed.classes_ = np.arange(p.shape[1])
    fixed.n_features_in_ = 1
    zero = Zero()
    zero.n_features_in_ = 1
    out = {}
    for alpha in ALPHAS:
        for score in ("lac", "aps"):
            mapie = SplitConformalClassifier(fixed, confidence_level=1 - alpha,
                                             conformity_score=score, prefit=True,
                                             random_state=SEED)
            mapie.conformalize(index[:n_cal], d["y"][:n_cal])
            params = {"include_last_label": "randomized"} if score == "aps" else None
            _, sets = mapie.predict_set(index[n_cal:], conformity_score_params=params)
            inner = mapie._mapie_classifier.conformity_score_function_
            out[f"{score}_{alpha}_quantile"] = np.asarray(inner.quantiles_)
            out[f"{score}_{alpha}_scores"] = np.asarray(mapie.conformity_scores).ravel()
            out[f"{score}_{alpha}_sets"] = sets[:, :, 0]
        z = (d["t"] - d["mean"]) / d["std"]
        reg = SplitConformalRegressor(zero, confidence_level=1 - alpha,
                                      conformity_score="absolute", prefit=True)
        reg.conformalize(index[:n_cal], z[:n_cal])
        _, bounds = reg.predict_interval(index[n_cal:])
        out[f"normalized_{alpha}_upper"] = bounds[:, 1, 0]
    # MAPIE's prediction-time u of the randomised APS: a fresh RandomState(SEED) per call.
    out["u_predict"] = np.random.RandomState(SEED).uniform(size=(len(p) - n_cal, 1))[:, 0]
    np.savez(output, **out)


# ---------------------------------------------------------------------------------------------
# Ours, and the comparison
# ---------------------------------------------------------------------------------------------
def compare(mapie_python):
    from tfp_bnn.conformal import (calibration_scores, class_scores, conformal_quantile,
                                   prediction_sets)

    d = _data()
    n = d["n_cal"]
    with tempfile.TemporaryDirectory() as tmp:
        inputs, output = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inputs, **d)
        proc = subprocess.run([mapie_python, os.path.abspath(__file__), "--mapie", inputs,
                               output], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"MAPIE side failed:\n{proc.stderr[-3000:]}")
        m = dict(np.load(output))
    p, y = d["p"], d["y"]
    lines, ok = [], True

    def check(name, ours, theirs, exact=False):
        nonlocal ok
        ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
        good = diff == 0 if exact else diff <= 1e-6
        ok &= good
        lines.append({"check": name, "max_abs_diff": diff, "equal": bool(good)})

    for alpha in ALPHAS:
        lac = calibration_scores("lac", y[:n], probabilities=p[:n])["scores"]
        q = float(conformal_quantile(lac, alpha))
        check(f"lac alpha={alpha} quantile", q, m[f"lac_{alpha}_quantile"])
        check(f"lac alpha={alpha} sets", prediction_sets(p[n:], q, "lac").numpy(),
              m[f"lac_{alpha}_sets"], exact=True)
        # APS: the quantile of MAPIE's own scores (its calibration u), then its test u.
        theirs = np.sort(m[f"aps_{alpha}_scores"].astype(np.float32))
        q = float(conformal_quantile(theirs, alpha))
        check(f"aps alpha={alpha} quantile (same scores)", q, m[f"aps_{alpha}_quantile"])
        u = (1.0 - m["u_predict"]).astype(np.float32)
        sets = prediction_sets(p[n:], q, "aps", u=u).numpy()
        check(f"aps alpha={alpha} randomised sets", sets, m[f"aps_{alpha}_sets"], exact=True)
        fitted = calibration_scores("normalized", d["t"][:n, None], mean=d["mean"][:n, None],
                                    variance=d["std"][:n, None] ** 2)
        q = float(conformal_quantile(fitted["scores"], alpha)[0])
        check(f"normalized alpha={alpha} quantile (interval half-width / std)", q,
              m[f"normalized_{alpha}_upper"][0])
    # The APS score itself: ours at the true label with u' = 1 - u equals MAPIE's formula.
    every = class_scores(p[:5], "aps", u=np.full(5, 0.25, np.float32)).numpy()
    order = np.argsort(-p[:5], axis=1, kind="stable")
    cums = np.cumsum(np.take_along_axis(p[:5], order, 1), 1)
    rank = np.argsort(order, 1)
    mapie_formula = np.take_along_axis(cums, rank, 1) - 0.75 * p[:5]
    check("aps score formula", every, mapie_formula)
    return lines, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapie", nargs=2, metavar=("INPUTS", "OUTPUT"),
                        help="internal: run MAPIE's side (in MAPIE's environment)")
    parser.add_argument("--mapie-python", default="/tmp/mapie_venv/bin/python")
    parser.add_argument("--out", default=None, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    if args.mapie:
        mapie_side(*args.mapie)
        return 0
    lines, ok = compare(args.mapie_python)
    for line in lines:
        print(f"{'same' if line['equal'] else 'DIFFERS'}  {line['check']}  "
              f"(max |diff| {line['max_abs_diff']:.2e})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(lines, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
