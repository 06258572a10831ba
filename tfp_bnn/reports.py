"""Per-example uncertainty reports written as CSV (one row per example).

Columns, in order, of a classification report (`write_uncertainty_csv`):

    index, [label,] predicted, prob_<class_0>, ..., prob_<class_C-1>,
    predictive_entropy, aleatoric, epistemic

``predicted = argmax_c p_c`` (first class on ties); ``predictive_entropy = aleatoric + epistemic``
when the three come from `tfp_bnn.predict`'s decomposition of an uncalibrated model. Conformal
sets (`tfp_bnn.conformal`) add ``prediction_set`` (the names of the classes in the set, in
class order, joined by ``|``; empty for an empty set) and ``set_size``. A regression report
(`write_regression_csv`, one group per output, suffixed ``_<d>`` when there are several):

    index, [label,] mean, std, variance, aleatoric_variance, epistemic_variance,
    [interval_lower, interval_upper]

with ``variance = aleatoric_variance + epistemic_variance`` and ``std = sqrt(variance)``; the
interval columns are those of conformal intervals. Floats are written with ``repr`` so they
read back bit-exactly as float64.

Example:
    >>> tf_keras.utils.set_random_seed(0)
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    >>> bnn = tfp_bnn.bayesify(model, num_train_examples=100)
    >>> pred = tfp_bnn.predict(bnn, np.zeros((2, 4), np.float32), num_samples=10, seed=0)
    >>> write_uncertainty_csv("test_uncertainty.csv", np.array([0, 2]), pred.probabilities,
    ...                       pred.predictive_entropy, pred.aleatoric, pred.epistemic,
    ...                       class_names=["setosa", "versicolor", "virginica"])
    'test_uncertainty.csv'
    >>> open("test_uncertainty.csv").readline().strip()
    'index,label,predicted,prob_setosa,prob_versicolor,prob_virginica,predictive_entropy,...'

References:
    Depeweg et al., "Decomposition of Uncertainty in Bayesian Deep Learning for Efficient and
    Risk-sensitive Learning", ICML 2018 (aleatoric / epistemic split of the entropy).
"""
import csv

import numpy as np

from tfp_bnn.metrics import check_labels, check_probabilities

__all__ = ["write_uncertainty_csv", "write_regression_csv"]


def _column(values, name, n):
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have one value per row of probabilities. "
                         f"Received: len({name})={a.shape[0] if a.ndim else 0} "
                         f"(shape {a.shape}), len(probabilities)={n}")
    return a


def write_uncertainty_csv(path, labels, probabilities, predictive_entropy, aleatoric, epistemic,
                          class_names=None, overwrite=False, prediction_sets=None):
    """Write one CSV row per example with its prediction, class probabilities and uncertainties.

        row_i = (i, y_i, argmax_c p_ic, p_i0, ..., p_i(C-1), H_i, aleatoric_i, epistemic_i)

    Args:
        path: file to write (str or path-like).
        labels: [B] integer labels, or None for unlabelled data (the label column is omitted).
        probabilities: [B, C] predictive probabilities.
        predictive_entropy, aleatoric, epistemic: [B] uncertainty scores.
        class_names: optional C distinct names, used in the ``prob_<name>`` headers and, instead
            of integers, in the label and predicted columns.
        overwrite: replace an existing file; by default an existing ``path`` is an error.
        prediction_sets: None, or bool [B, C] conformal sets (``tfp_bnn.predict(conformal)``'s
            ``prediction_sets``): adds the ``prediction_set`` and ``set_size`` columns.

    Returns:
        ``path``, as given.

    Example:
        >>> probs = np.array([[0.9, 0.1], [0.5, 0.5]])                    # unlabelled data
        >>> h = -np.sum(probs * np.log(probs), axis=1)
        >>> write_uncertainty_csv("out.csv", None, probs, h, h, np.zeros(2))
        'out.csv'
    """
    p = check_probabilities(probabilities)
    n, num_classes = p.shape
    y = None if labels is None else check_labels(labels, n, num_classes)
    columns = [_column(v, name, n) for v, name in ((predictive_entropy, "predictive_entropy"),
                                                   (aleatoric, "aleatoric"), (epistemic, "epistemic"))]
    if class_names is None:
        names = [str(c) for c in range(num_classes)]
        as_name = int
    else:
        names = [str(c) for c in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(f"class_names must hold {num_classes} distinct names (one per column of "
                             f"probabilities). Received: class_names={list(class_names)!r}")
        as_name = names.__getitem__
    header = ["index"] + (["label"] if y is not None else []) + ["predicted"]
    header += [f"prob_{c}" for c in names] + ["predictive_entropy", "aleatoric", "epistemic"]
    sets = None
    if prediction_sets is not None:
        sets = np.asarray(prediction_sets)
        if sets.dtype.kind != "b" or sets.shape != p.shape:
            raise ValueError(f"prediction_sets must be a bool array of the shape of "
                             f"probabilities {p.shape}. Received: prediction_sets of dtype "
                             f"{sets.dtype} and shape {sets.shape}")
        header += ["prediction_set", "set_size"]
    predicted = p.argmax(axis=1)
    with _open(path, overwrite) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(n):
            row = [i] + ([as_name(int(y[i]))] if y is not None else []) + [as_name(int(predicted[i]))]
            row += [repr(float(v)) for v in p[i]] + [repr(float(c[i])) for c in columns]
            if sets is not None:
                members = np.flatnonzero(sets[i])
                row += ["|".join(str(as_name(int(k))) for k in members), len(members)]
            writer.writerow(row)
    return path


def write_regression_csv(path, labels, mean, aleatoric_variance, epistemic_variance,
                         overwrite=False, interval_lower=None, interval_upper=None):
    """Write one CSV row per example with its predictive mean and variance decomposition.

        row_i = (i, y_i, m_i, sqrt(a_i + e_i), a_i + e_i, a_i, e_i)     (per output d)

    Args:
        path: file to write (str or path-like).
        labels: [B] or [B, D] targets, or None for unlabelled data (no label column).
        mean, aleatoric_variance, epistemic_variance: [B] or [B, D], e.g. `tfp_bnn.predict`'s
            ``mean``, ``aleatoric_variance`` and ``epistemic_variance``.
        overwrite: replace an existing file; by default an existing ``path`` is an error.
        interval_lower, interval_upper: None, or [B] / [B, D] conformal interval ends (in the
            units of ``mean``): adds the ``interval_lower`` and ``interval_upper`` columns.

    Returns:
        ``path``, as given.
    """
    m, a, e = (_matrix(v, name) for v, name in ((mean, "mean"), (aleatoric_variance,
                                                "aleatoric_variance"),
                                               (epistemic_variance, "epistemic_variance")))
    if not m.shape == a.shape == e.shape:
        raise ValueError(f"mean, aleatoric_variance and epistemic_variance must have one shape. "
                         f"Received: {m.shape}, {a.shape}, {e.shape}")
    n, d = m.shape
    y = None if labels is None else _matrix(labels, "labels")
    if y is not None and y.shape != m.shape:
        raise ValueError(f"labels must match mean's shape {m.shape}. Received: {y.shape}")
    if (interval_lower is None) != (interval_upper is None):
        raise ValueError("interval_lower and interval_upper go together. Received: "
                         f"interval_lower={'None' if interval_lower is None else 'an array'}, "
                         f"interval_upper={'None' if interval_upper is None else 'an array'}")
    names = ("label", "mean", "std", "variance", "aleatoric_variance", "epistemic_variance")
    bounds = []
    if interval_lower is not None:
        bounds = [_matrix(interval_lower, "interval_lower"),
                  _matrix(interval_upper, "interval_upper")]
        if any(b.shape != m.shape for b in bounds):
            raise ValueError(f"interval_lower and interval_upper must match mean's shape "
                             f"{m.shape}. Received: {bounds[0].shape}, {bounds[1].shape}")
        names += ("interval_lower", "interval_upper")
    suffixes = [""] if d == 1 else [f"_{k}" for k in range(d)]
    header = ["index"] + [f"{name}{sfx}" for name in names if y is not None or name != "label"
                          for sfx in suffixes]
    var = a + e
    columns = ([y] if y is not None else []) + [m, np.sqrt(var), var, a, e] + bounds
    with _open(path, overwrite) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(n):
            writer.writerow([i] + [repr(float(c[i, k])) for c in columns for k in range(d)])
    return path


def _matrix(values, name):
    a = np.asarray(values, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2:
        raise ValueError(f"{name} must be [B] or [B, D]. Received: {name}.shape={a.shape}")
    return a


def _open(path, overwrite):
    try:
        return open(path, "w" if overwrite else "x", newline="", encoding="utf-8")
    except FileExistsError:
        raise ValueError(f"path already exists; pass overwrite=True to replace it. "
                         f"Received: path={str(path)!r}") from None
