"""`tfp_bnn.conformal` side by side with MAPIE on the same scores: quantiles, sets, intervals.

MAPIE is never a dependency of tfp_bnn: it runs in its own virtual environment, this script
calling itself there with ``--mapie`` (that branch imports only numpy, scipy, scikit-learn and
MAPIE; written against MAPIE 1.6.0).

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
* RAPS: MAPIE takes no ``k_reg``/``lam``. It carves rows off the calibration set (10 %: MAPIE
  1.6.0 resets ``size_raps`` to None, StratifiedShuffleSplit's default), sets ``k_star`` to the
  ``ceil((m + 1)(1 - alpha))``-th smallest true-label rank there and searches ``lambda_star`` in
  {0.001, 0.01, 0.1, 0.2, 0.5} for the smallest mean set (its search regularises with
  ``k = lambda``; it picked 0.5 at every alpha here). Ours is given MAPIE's ``k_star``,
  ``lambda_star``, kept rows and calibration u (as ``1 - u``); compared: the sorted regularised
  calibration scores, the quantile and the sets, for ``include_last_label="randomized"``, for
  ``False`` (our deterministic sets: every label with u = 1 score <= q, else the top one) and
  for "pinned", lambda fixed to ``PINNED_LAM`` by overriding MAPIE's search (so that sets reach
  past rank ``k_reg + 1``). The randomised sets differ by definition there: with L the last
  label of the u = 1 set, MAPIE keeps it when ``u >= (score_L - q) / (p_L - lam (L - k - 1))``,
  ours (``above + u p + lam max(0, rank - k)``, the paper's score) when
  ``u >= (score_L - q) / p_L``. Checked: the sets agree on every row with ``L <= k + 1``, and
  the rows that differ are exactly those where MAPIE's u falls between the two thresholds.
  ``include_last_label=True`` (always keep L) has no counterpart in ours.
* CQR (Gaussian head): MAPIE's ConformalizedQuantileRegressor, prefit with the lower, upper and
  median estimators ``mean - z std``, ``mean + z std``, ``mean`` (``z = Phi^-1(1 - alpha/2)``,
  scipy), ``symmetric_correction=True``: its score ``max(lower - y, y - upper)`` is ours
  ``|y - mean| - z std``, its interval ``[lower - q, upper + q]`` ours
  ``mean -+ max(z std + q, 0)``; compared: the quantile and the intervals, except rows where
  MAPIE's is inverted (``z std + q < 0``, ours returns ``[mean, mean]``; the row count is
  printed). Ours has no asymmetric correction (MAPIE's default, a quantile of each side's
  score at ``1 - alpha/2``), so that one is not compared.

Prints one line per comparison and exits 1 if any differs beyond float tolerance (1e-6).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ALPHAS = (0.05, 0.1, 0.2)
PINNED_LAM = 0.01
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
def _mapie_raps(fixed, asked, index, y, n_cal, alpha, tag, score, last):
    """MAPIE's RAPS: its kept calibration rows and u, k_star, lambda_star, regularised
    calibration scores, quantile and test sets (``include_last_label=last``)."""
    from mapie.classification import SplitConformalClassifier

    raps = SplitConformalClassifier(fixed, confidence_level=1 - alpha, conformity_score=score,
                                    prefit=True, random_state=SEED)
    del asked[:]
    raps.conformalize(index[:n_cal], y[:n_cal])
    _, sets = raps.predict_set(index[n_cal:], conformity_score_params={"include_last_label":
                                                                      last})
    inner = raps._mapie_classifier.conformity_score_function_
    kept = len(raps.conformity_scores)
    key = f"raps_{alpha}_{tag}"
    return {
        # The calibration rows left after MAPIE's k_star/lambda_star carve, in the order of
        # its calibration u (a fresh RandomState(SEED) per call, as at prediction).
        f"{key}_rows": next(rows for rows in asked if len(rows) == kept),
        f"{key}_u": np.random.RandomState(SEED).uniform(size=kept),
        f"{key}_k": np.asarray(inner.k_star).ravel(),
        f"{key}_lam": np.asarray(inner.lambda_star, np.float64).ravel(),
        f"{key}_quantile": np.asarray(inner.quantiles_),
        f"{key}_scores": inner._regularize_conformity_score(
            inner.k_star, inner.lambda_star, np.asarray(raps.conformity_scores),
            inner.cutoff).ravel(),
        f"{key}_sets": sets[:, :, 0]}


def mapie_side(inputs, output):
    from scipy.stats import norm
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from mapie.classification import SplitConformalClassifier
    from mapie.conformity_scores import RAPSConformityScore
    from mapie.regression import ConformalizedQuantileRegressor, SplitConformalRegressor

    d = dict(np.load(inputs))
    n_cal, p = int(d["n_cal"]), d["p"].astype(np.float64)
    index = np.arange(len(p), dtype=np.float64)[:, None]  # X: the row of the fixed table
    asked = []  # the rows of every predict_proba call, in MAPIE's order

    class Fixed(ClassifierMixin, BaseEstimator):
        def fit(self, x, y):
            return self

        def predict_proba(self, x):
            asked.append(x[:, 0].astype(int))
            return p[x[:, 0].astype(int)]

        def predict(self, x):
            return self.predict_proba(x).argmax(1)

    class Zero(RegressorMixin, BaseEstimator):
        def fit(self, x, y):
            return self

        def predict(self, x):
            return np.zeros(len(x))

    class Pinned(RAPSConformityScore):
        """RAPS at lambda = PINNED_LAM: MAPIE takes no lambda, it searches one."""

        def _find_lambda_star(self, *args, **kwargs):
            return PINNED_LAM

    class Line(RegressorMixin, BaseEstimator):
        """The fixed ``mean + z std``: one of CQR's prefit lower/upper/median estimators."""

        def __init__(self, z=0.0):
            self.z = z

        def fit(self, x, y):
            return self

        def predict(self, x):
            rows = x[:, 0].astype(int)
            return d["mean"][rows].astype(np.float64) + self.z * d["std"][rows]

    def line(z):
        est = Line(z)
        est.n_features_in_ = 1
        return est

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
        for tag, score, last in (("randomized", "raps", "randomized"),
                                 ("deterministic", "raps", False),
                                 ("pinned", Pinned(), "randomized")):
            out.update(_mapie_raps(fixed, asked, index, d["y"], n_cal, alpha, tag, score,
                                   last))
        half = norm.ppf(1 - alpha / 2)
        cqr = ConformalizedQuantileRegressor([line(-half), line(half), line(0.0)],
                                             confidence_level=1 - alpha, prefit=True)
        cqr.conformalize(index[:n_cal], d["t"][:n_cal])
        _, bounds = cqr.predict_interval(index[n_cal:], symmetric_correction=True)
        out[f"cqr_{alpha}_lower"], out[f"cqr_{alpha}_upper"] = bounds[:, 0, 0], bounds[:, 1, 0]
        out[f"cqr_{alpha}_quantile"] = line(-half).predict(index[n_cal:]) - bounds[:, 0, 0]
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
        _compare_raps(check, p, y, n, m, alpha)
        _compare_cqr(check, d, n, m, alpha)
    # The APS score itself: ours at the true label with u' = 1 - u equals MAPIE's formula.
    every = class_scores(p[:5], "aps", u=np.full(5, 0.25, np.float32)).numpy()
    order = np.argsort(-p[:5], axis=1, kind="stable")
    cums = np.cumsum(np.take_along_axis(p[:5], order, 1), 1)
    rank = np.argsort(order, 1)
    mapie_formula = np.take_along_axis(cums, rank, 1) - 0.75 * p[:5]
    check("aps score formula", every, mapie_formula)
    return lines, ok


def _compare_raps(check, p, y, n, m, alpha):
    """RAPS at MAPIE's k_star, lambda_star and calibration rows (see module doc)."""
    from tfp_bnn.conformal import (calibration_scores, class_scores, conformal_quantile,
                                   prediction_sets)

    u_test = (1.0 - m["u_predict"]).astype(np.float32)
    for tag, u in (("randomized", u_test), ("deterministic", None), ("pinned", u_test)):
        key = f"raps_{alpha}_{tag}"
        rows, k, lam = m[f"{key}_rows"], int(m[f"{key}_k"][0]), float(m[f"{key}_lam"][0])
        name = f"raps alpha={alpha} {tag} (k_reg={k}, lam={lam}, {len(rows)} of {n} rows)"
        # MAPIE has no deterministic calibration score: every variant uses its randomised u.
        u_cal = (1.0 - m[f"{key}_u"]).astype(np.float32)
        ours = calibration_scores("raps", y[rows], probabilities=p[rows], u=u_cal, k_reg=k,
                                  lam=lam)["scores"]
        check(f"{name} sorted calibration scores", ours, np.sort(m[f"{key}_scores"]))
        q = float(conformal_quantile(ours, alpha))
        check(f"{name} quantile", q, m[f"{key}_quantile"])
        sets = prediction_sets(p[n:], q, "raps", u=u, k_reg=k, lam=lam).numpy()
        theirs = m[f"{key}_sets"]
        if u is None:
            check(f"{name} sets vs include_last_label=False", sets, theirs, exact=True)
            continue
        # The last label L: the first rank whose u = 1 score reaches q (MAPIE's EPSILON).
        order = np.argsort(-p[n:], axis=1, kind="stable")
        full = np.take_along_axis(class_scores(p[n:], "raps", None, k, lam).numpy(), order, 1)
        last = np.minimum((full < q - 1e-8).sum(1) + 1, p.shape[1])
        near = last <= k + 1
        check(f"{name} randomised sets, {int(near.sum())} rows with L <= k_reg + 1", sets[near],
              theirs[near], exact=True)
        # Past rank k_reg + 1 MAPIE keeps L when u >= (score_L - q) / (p_L - lam (L - k_reg - 1));
        # ours (and the paper) when u >= (score_L - q) / p_L: the rows where u falls between.
        p_last = np.take_along_axis(np.take_along_axis(p[n:], order, 1), last[:, None] - 1, 1)
        gap = np.take_along_axis(full, last[:, None] - 1, 1)[:, 0] - q
        mapie_keeps = m["u_predict"] - gap / (p_last[:, 0] - lam * np.maximum(0, last - k - 1)) \
            >= -1e-8
        ours_keeps = m["u_predict"] * p_last[:, 0] >= gap
        differ = (sets != theirs).any(1)
        check(f"{name} the {int(differ.sum())} of {int((~near).sum())} rows with L > k_reg + 1 "
              "that differ are those u falls between the two thresholds", differ,
              ~near & (mapie_keeps != ours_keeps), exact=True)


def _compare_cqr(check, d, n, m, alpha):
    """CQR of a Gaussian head against MAPIE's symmetric correction (see module doc)."""
    from tfp_bnn.conformal import Conformal, calibration_scores, intervals
    from tfp_bnn.options import ConformalScore, Task

    variance = d["std"][:, None] ** 2
    fitted = calibration_scores("cqr", d["t"][:n, None], mean=d["mean"][:n, None],
                                variance=variance[:n])
    conf = Conformal(model=None, task=Task.GAUSSIAN, score=ConformalScore.CQR, alpha=alpha,
                     **fitted)
    lower, upper = intervals(d["mean"][n:, None], variance[n:], conf.quantile, "cqr", alpha)
    theirs_q = m[f"cqr_{alpha}_quantile"]
    check(f"cqr alpha={alpha} quantile (MAPIE's: lower quantile - interval lower)",
          np.full(len(theirs_q), conf.quantile[0]), theirs_q)
    # Ours returns [mean, mean] where z std + q < 0; MAPIE an inverted interval there.
    proper = m[f"cqr_{alpha}_lower"] <= m[f"cqr_{alpha}_upper"]
    check(f"cqr alpha={alpha} intervals ({int((~proper).sum())} inverted in MAPIE)",
          np.stack([lower.numpy()[proper, 0], upper.numpy()[proper, 0]]),
          np.stack([m[f"cqr_{alpha}_lower"][proper], m[f"cqr_{alpha}_upper"][proper]]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mapie", nargs=2, metavar=("INPUTS", "OUTPUT"),
                        help="internal: run MAPIE's side (in MAPIE's environment)")
    parser.add_argument("--mapie-python", default="/tmp/mapie_venv/bin/python")
    parser.add_argument("--out", default=None, help="write the comparison as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.mapie:
        mapie_side(*args.mapie)
        return 0
    from tfp_bnn import results  # our side only: MAPIE's environment has no tfp_bnn

    # Checked before any work: an existing --out is kept unless --overwrite.
    stage = None if args.out is None else results.Staging(args.out, args.overwrite,
                                                          argument="--out", kind="file")
    lines, ok = compare(args.mapie_python)
    for line in lines:
        print(f"{'same' if line['equal'] else 'DIFFERS'}  {line['check']}  "
              f"(max |diff| {line['max_abs_diff']:.2e})")
    if stage is not None:
        stage.write_json(lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
