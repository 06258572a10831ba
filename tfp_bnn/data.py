"""Tabular data for the examples and the command line: Iris, any CSV (the UCI regression
splits of the benchmarks are `tfp_bnn.uci`).

Sources and what they return:

    load_iris / load_csv / load_hub -> TabularData(features [N, F] float32, labels [N], names)
    load_features(path, names)      -> the named feature columns of a CSV (for prediction)

CSV files go through the Hugging Face ``datasets`` csv builder, which needs no network; it
builds in a temporary cache that is deleted afterwards, so nothing is written under the
user's home or the working tree. ``datasets`` is imported only when a CSV is loaded.

Preprocessing helpers: ``train_val_test_split`` (seeded, stratified by class) and
``MinMaxScaler`` (fit on the training split only, serialisable with get_config).

"""
import contextlib
import csv
import dataclasses
import importlib.resources
import os
import re
import tempfile

import numpy as np

__all__ = ["TabularData", "iris_csv_path", "load_iris", "load_csv", "load_hub", "load_features",
           "Split", "train_val_test_split", "MinMaxScaler"]

IRIS_FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_CLASSES = ("setosa", "versicolor", "virginica")
_LABEL_NAMES = ("species", "label", "target", "class", "variety")
_ID_NAMES = ("id", "index", "unnamed: 0", "__index_level_0__")
_TASKS = ("auto", "classification", "regression")


@dataclasses.dataclass(frozen=True)
class TabularData:
    """A table as arrays: float32 features and integer class ids (or float32 targets).

    Args:
      features: float32 array [N, F].
      labels: int64 class ids [N] for classification, float32 targets [N] for regression.
      feature_names: the F column names, in column order.
      class_names: name of each class id (``class_names[labels[i]]``); empty for regression.
    """
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple
    class_names: tuple = ()

    @property
    def task(self):
        """``"classification"`` when there are class names, else ``"regression"``."""
        return "classification" if self.class_names else "regression"


def iris_csv_path():
    """Path of the Iris CSV shipped with the package (150 rows, same values as scikit-learn).

    Example:
      >>> open(iris_csv_path()).readline().strip()
      'sepal_length,sepal_width,petal_length,petal_width,species'
    """
    return str(importlib.resources.files("tfp_bnn") / "_resources" / "iris.csv")


def load_iris(hub_id=None, data_files=None, split="train"):
    """Load Iris as 4 float32 features and class ids 0..2 (setosa, versicolor, virginica).

    Reads the shipped CSV by default (offline), ``data_files`` when given, or a Hugging Face
    Hub dataset ``hub_id`` (needs network, cached as ``datasets`` usually caches). Common hub
    layouts are accepted: an ``Id``-like column is dropped; the label is the column named one
    of species/label/target/class/variety, else the last non-numeric column; it may be a
    string ("setosa" or "Iris-setosa") or an integer ``ClassLabel``. Feature columns whose
    names match the four Iris measurements ("SepalLengthCm", "sepal length (cm)", ...) are
    renamed and reordered to ``IRIS_FEATURES``.

    Args:
      hub_id: Hugging Face dataset id, e.g. ``"scikit-learn/iris"``; None for a local CSV.
      data_files: a local Iris CSV (or list of them) instead of the shipped one.
      split: the split to read from the hub dataset or the CSV builder.

    Returns:
      TabularData with ``class_names`` the sorted unique label strings, or the ClassLabel
      names.

    Example:
      >>> table = load_iris()
      >>> table.features.shape, table.class_names
      ((150, 4), ('setosa', 'versicolor', 'virginica'))
    """
    if hub_id is not None and data_files is not None:
        raise ValueError(f"Pass hub_id or data_files, not both. Received: hub_id={hub_id!r}, "
                         f"data_files={data_files!r}")
    if hub_id is not None:
        import datasets  # pylint: disable=import-outside-toplevel
        with _quiet_datasets(datasets):
            ds = datasets.load_dataset(hub_id, split=split)
        source = hub_id
    else:
        data_files = iris_csv_path() if data_files is None else data_files
        ds = _read_csv(data_files, split)
        source = str(data_files)
    return _iris_table(ds, source)


def load_csv(path, target, task="auto"):
    """Load a CSV of numeric feature columns and one target column.

    The task is inferred with ``task="auto"``: a string, integer or boolean target is a
    classification (class ids index the sorted unique values), a float target a regression.

    Args:
      path: path of the CSV file (header row required).
      target: name of the target column; every other column is a feature and must be
        numeric with no missing values.
      task: ``"auto"``, ``"classification"`` or ``"regression"``.

    Example:
      >>> table = load_csv(iris_csv_path(), target="species")
      >>> table.task, table.feature_names[0]
      ('classification', 'sepal_length')
    """
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}. Received: task={task!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No CSV file at path={str(path)!r}")
    return _table(_read_csv(str(path), "train"), target, task, str(path))


def load_hub(hub_id, target, task="auto", split="train"):
    """Like `load_csv`, for a Hugging Face Hub dataset (needs network, cached as usual).

    Args:
      hub_id: dataset id (``"scikit-learn/iris"``) or a local dataset folder/script.
      target: name of the target column; every other column is a numeric feature.
      task: ``"auto"``, ``"classification"`` or ``"regression"``.
      split: which split of the dataset to read.

    Example:
      >>> table = load_hub("scikit-learn/iris", target="Species")  # doctest: +SKIP
    """
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}. Received: task={task!r}")
    import datasets  # pylint: disable=import-outside-toplevel
    with _quiet_datasets(datasets):
        ds = datasets.load_dataset(hub_id, split=split)
    return _table(ds, target, task, hub_id)


def load_features(path, feature_names=None, target=None):
    """Read the named numeric columns of a CSV (for prediction), and the target if present.

    Columns may come in any order and extra columns are ignored.

    Args:
      path: path of the CSV file (header row required).
      feature_names: the columns to stack, in this order, as float32 ``[N, F]``; None takes
        every column but ``target``, in file order.
      target: a column returned as-is when the file has it (e.g. labels to compare with).

    Returns:
      ``(features, target_values)``; ``target_values`` is None when the file has no ``target``.

    Example:
      >>> x, y = load_features(iris_csv_path(), IRIS_FEATURES, target="species")
      >>> x.shape, y[0]
      ((150, 4), 'setosa')
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No CSV file at path={str(path)!r}")
    ds = _read_csv(str(path), "train")
    if feature_names is None:
        feature_names = [c for c in ds.column_names if c != target]
    missing = [c for c in feature_names if c not in ds.column_names]
    if missing:
        raise ValueError(f"{str(path)!r} lacks the feature column(s) {missing}; its columns are "
                         f"{ds.column_names}")
    features = _feature_matrix(ds, list(feature_names), path)
    labels = _column(ds, target) if target is not None and target in ds.column_names else None
    return features, labels


@dataclasses.dataclass(frozen=True)
class Split:
    """Train / validation / test arrays from ``train_val_test_split``."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def train_val_test_split(features, labels, test_fraction=0.2, val_fraction=0.2, seed=0,
                         stratify=True):
    """Shuffle and split into train / validation / test, stratified by class.

    The test set takes ``round(N * test_fraction)`` rows; the validation set takes
    ``round(M * val_fraction)`` of the M rows left, the rest is training data. With integer
    labels and ``stratify=True`` each class is split in proportion to its size (largest
    remainders decide the rounding); within each part the rows are shuffled.

    Args:
      features: array [N, ...].
      labels: array [N]; integer labels are treated as classes for stratification.
      test_fraction: share of all rows for the test set, in (0, 1).
      val_fraction: share of the non-test rows for the validation set, in (0, 1).
      seed: seed of ``np.random.default_rng``; the same seed gives the same split.
      stratify: keep class proportions in every part (integer labels only).

    Example:
      >>> t = load_iris()
      >>> s = train_val_test_split(t.features, t.labels, seed=0)
      >>> len(s.y_train), len(s.y_val), len(s.y_test)
      (96, 24, 30)
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if features.shape[:1] != labels.shape[:1]:
        raise ValueError(f"features and labels need the same number of rows. Received: "
                         f"features.shape={features.shape}, labels.shape={labels.shape}")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1). Received: {name}={value!r}")
    rng = np.random.default_rng(seed)
    if stratify and np.issubdtype(labels.dtype, np.integer):
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    else:
        groups = [np.arange(len(labels))]
    groups = [rng.permutation(g) for g in groups]

    n_test = _round(len(labels) * test_fraction)
    test_counts = _allocate([len(g) for g in groups], n_test)
    rest = [g[k:] for g, k in zip(groups, test_counts)]
    n_val = _round(sum(len(g) for g in rest) * val_fraction)
    val_counts = _allocate([len(g) for g in rest], n_val)

    test = np.concatenate([g[:k] for g, k in zip(groups, test_counts)])
    val = np.concatenate([g[:k] for g, k in zip(rest, val_counts)])
    train = np.concatenate([g[k:] for g, k in zip(rest, val_counts)])
    for name, idx in (("training", train), ("validation", val), ("test", test)):
        if len(idx) == 0:
            raise ValueError(f"The {name} split is empty: N={len(labels)} rows with "
                             f"test_fraction={test_fraction}, val_fraction={val_fraction}")
    train, val, test = (rng.permutation(idx) for idx in (train, val, test))
    return Split(features[train], labels[train], features[val], labels[val],
                 features[test], labels[test])


class MinMaxScaler:
    """Scale each feature to [0, 1] with the minimum and maximum seen by ``fit``.

        x_scaled = (x - min) / (max - min)     (max - min := 1 for constant features)

    A constant feature maps to 0 instead of dividing by zero. Serialisable:
    ``MinMaxScaler.from_config(scaler.get_config())`` rebuilds a fitted scaler.

    Example:
      >>> scaler = MinMaxScaler().fit([[0.0, 5.0], [2.0, 5.0]])
      >>> scaler.transform([[1.0, 5.0]]).tolist()
      [[0.5, 0.0]]
    """

    def __init__(self):
        self.min_ = None
        self.max_ = None

    def fit(self, x):
        """Record the per-feature minimum and maximum of ``x`` [N, F]; returns self."""
        x = _as_2d_float(x, "x")
        if len(x) == 0:
            raise ValueError(f"Cannot fit on an empty array. Received: x.shape={x.shape}")
        self.min_, self.max_ = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
        return self

    def transform(self, x):
        """Scale ``x`` [N, F] with the fitted statistics (values outside the fit leave [0, 1])."""
        # In float64: in float32, x - min and max - min overflow to inf for values near
        # float32's limit, and inf / inf is NaN.
        x = self._check(x)
        return ((x.astype(np.float64) - self.min_) / self._range()).astype(x.dtype)

    def fit_transform(self, x):
        """``fit(x)`` then ``transform(x)``."""
        return self.fit(x).transform(x)

    def inverse_transform(self, x):
        """Map scaled values back to the original units (constant features go back to min)."""
        x = self._check(x)
        return (x.astype(np.float64) * self._range() + self.min_).astype(x.dtype)

    def get_config(self):
        """The fitted minima and maxima as lists (None before ``fit``)."""
        if self.min_ is None:
            return {"min": None, "max": None}
        return {"min": self.min_.tolist(), "max": self.max_.tolist()}

    @classmethod
    def from_config(cls, config):
        """Rebuild a scaler from ``get_config()``."""
        scaler = cls()
        if config.get("min") is not None:
            scaler.min_ = np.asarray(config["min"], dtype=np.float64)
            scaler.max_ = np.asarray(config["max"], dtype=np.float64)
            if scaler.min_.shape != scaler.max_.shape:
                raise ValueError(f"config['min'] and config['max'] differ in length. "
                                 f"Received: config={config!r}")
        return scaler

    def _range(self):
        span = np.asarray(self.max_, np.float64) - self.min_
        return np.where(span == 0, np.ones_like(span), span)

    def _check(self, x):
        if self.min_ is None:
            raise RuntimeError("MinMaxScaler is not fitted; call fit(x) before transform.")
        x = _as_2d_float(x, "x")
        if x.shape[1] != self.min_.shape[0]:
            raise ValueError(f"Expected {self.min_.shape[0]} features, as seen by fit. "
                             f"Received: x.shape={x.shape}")
        return x


# --- CSV via the datasets csv builder -------------------------------------------------------

@contextlib.contextmanager
def _quiet_datasets(datasets):
    """Silence progress bars and info logs of ``datasets`` for one call, then restore them."""
    bars, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(level)


def _check_csv_file(path):
    """Refuse, in one line naming the file, a CSV the builder would fail on with a traceback.

    Empty, header-only, not UTF-8 (e.g. latin-1), or ragged (a row whose field count differs
    from the header's). Blank lines are skipped, as the builder skips them.
    """
    rows = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(field.strip() for field in header):
                raise ValueError(f"{str(path)!r} is empty: a CSV needs a header row and data "
                                 "rows.")
            for row in reader:
                if not row:
                    continue
                rows += 1
                if len(row) != len(header):
                    raise ValueError(f"{str(path)!r} is ragged: data row {rows} (line "
                                     f"{reader.line_num}) has {len(row)} fields, the header "
                                     f"has {len(header)}.")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                         f"offset {e.start}); save it as UTF-8.") from None
    except csv.Error as e:
        raise ValueError(f"{str(path)!r} is not a readable CSV: {e}") from None
    if rows == 0:
        raise ValueError(f"{str(path)!r} has a header but no data rows.")


def _read_csv(data_files, split):
    """Read local CSV file(s) with the (offline) csv builder, held in memory."""
    import datasets  # pylint: disable=import-outside-toplevel
    files = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"No CSV file at data_files={str(f)!r}")
        _check_csv_file(f)
    # The builder writes Arrow files and locks into cache_dir even with keep_in_memory;
    # a throwaway directory keeps them out of ~/.cache and the working tree.
    with tempfile.TemporaryDirectory(prefix="tfp_bnn_csv_") as cache_dir, \
            _quiet_datasets(datasets):
        try:
            return datasets.load_dataset("csv", data_files=[str(f) for f in files], split=split,
                                         cache_dir=cache_dir, keep_in_memory=True)
        except Exception as e:  # pylint: disable=broad-except  (the builder's, in one line)
            cause = e.__cause__ or e
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            raise ValueError(f"could not read {', '.join(repr(str(f)) for f in files)} as CSV: "
                             f"{type(cause).__name__}: {first}") from None


def _is_numeric(ds, name):
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    t = ds.data.schema.field(name).type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _column(ds, name):
    return ds.data.column(name).to_numpy(zero_copy_only=False)


def _feature_matrix(ds, names, source):
    """Stack numeric columns into float32 [N, F]; non-numeric or NaN columns are errors."""
    if len(ds) == 0:
        raise ValueError(f"No rows in {str(source)!r}")
    if not names:
        raise ValueError(f"No feature columns in {str(source)!r}; columns: {ds.column_names}")
    columns = []
    for name in names:
        if not _is_numeric(ds, name):
            raise ValueError(f"Feature column {name!r} in {str(source)!r} is not numeric "
                             f"(type {ds.features[name]}); features must be numbers.")
        values = _column(ds, name).astype(np.float64)
        if np.isnan(values).any():
            raise ValueError(f"Feature column {name!r} in {str(source)!r} has "
                             f"{int(np.isnan(values).sum())} missing (NaN) values (first at "
                             f"data row {int(np.argmax(np.isnan(values))) + 1}).")
        _check_float32_range(values, f"Feature column {name!r}", source)
        columns.append(values)
    return np.stack(columns, axis=1).astype(np.float32)


def _check_float32_range(values, what, source):
    """Refuse infinities and values beyond float32's largest finite number (they become inf)."""
    bad = ~(np.abs(values) <= np.finfo(np.float32).max)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{what} in {str(source)!r} has {int(bad.sum())} value(s) that are "
                         f"infinite or beyond float32's range (+-3.4e38); the first, "
                         f"{float(values[row])!r}, at data row {row + 1}.")


def _table(ds, target, task, source):
    """TabularData from a dataset: ``target`` is the label, every other column a feature."""
    if target not in ds.column_names:
        raise ValueError(f"Unknown target={target!r}; the columns of {str(source)!r} are "
                         f"{ds.column_names}")
    names = [c for c in ds.column_names if c != target]
    features = _feature_matrix(ds, names, source)
    labels, class_names = _encode_target(ds, target, task, source)
    return TabularData(features, labels, tuple(names), class_names)


def _encode_target(ds, target, task, source, rename=None):
    """Class ids + names (classification) or float32 values (regression) of one column."""
    import datasets  # pylint: disable=import-outside-toplevel
    feature = ds.features[target]
    values = _column(ds, target)
    numeric = _is_numeric(ds, target)
    missing = (np.isnan(values.astype(np.float64)) if numeric
               else np.array([v is None for v in values]))
    if missing.any():
        raise ValueError(f"Target column {target!r} in {str(source)!r} has "
                         f"{int(missing.sum())} missing values.")
    if task == "auto":
        floating = numeric and np.issubdtype(values.dtype, np.floating)
        task = "regression" if floating else "classification"
    if task == "regression":
        if not numeric:
            raise ValueError(f"task='regression' needs a numeric target; column {target!r} "
                             f"in {str(source)!r} has type {feature}.")
        _check_float32_range(values.astype(np.float64), f"Target column {target!r}", source)
        return values.astype(np.float32), ()
    if isinstance(feature, datasets.ClassLabel):
        return values.astype(np.int64), tuple(feature.names)
    if rename is not None:
        values = np.array([rename(v) for v in values], dtype=object)
    classes, ids = np.unique(values, return_inverse=True)
    return ids.astype(np.int64).reshape(-1), tuple(str(c) for c in classes)


def _iris_table(ds, source):
    """Find the label and the four measurement columns in an Iris table of any common layout."""
    columns = [c for c in ds.column_names if c.strip().lower() not in _ID_NAMES]
    named = [c for c in columns if c.strip().lower() in _LABEL_NAMES]
    text = [c for c in columns if not _is_numeric(ds, c)]
    if named:
        label = named[0]
    elif text:
        label = text[-1]
    else:
        raise ValueError(f"No label column in Iris data {source!r}: expected one named "
                         f"{_LABEL_NAMES} or a non-numeric column. Columns: {ds.column_names}")
    names = [c for c in columns if c != label and _is_numeric(ds, c)]
    if len(names) != 4:
        raise ValueError(f"Iris data {source!r} should have 4 numeric feature columns besides "
                         f"label {label!r}; found {names} in {ds.column_names}")
    canonical = {re.sub(r"[^a-z]|cm", "", n.lower()): n for n in names}
    wanted = [f.replace("_", "") for f in IRIS_FEATURES]
    if sorted(canonical) == sorted(wanted):  # reorder to the canonical feature order
        names = [canonical[w] for w in wanted]
        feature_names = IRIS_FEATURES
    else:
        feature_names = tuple(names)
    features = _feature_matrix(ds, names, source)
    if _is_numeric(ds, label):
        labels, class_names = _encode_target(ds, label, "classification", source)
        if not _is_class_label(ds, label) and class_names == ("0", "1", "2"):
            class_names = IRIS_CLASSES  # scikit-learn's target coding
    else:  # "Iris-setosa" (the UCI spelling) -> "setosa"
        labels, class_names = _encode_target(
            ds, label, "classification", source,
            rename=lambda v: re.sub(r"(?i)^iris[-_ ]", "", str(v)))
    return TabularData(features, labels, feature_names, class_names)


def _is_class_label(ds, name):
    import datasets  # pylint: disable=import-outside-toplevel
    return isinstance(ds.features[name], datasets.ClassLabel)


# --- helpers -------------------------------------------------------------------------------

def _round(x):
    """Round half up (Python's round() rounds half to even)."""
    return int(np.floor(x + 0.5))


def _allocate(sizes, total):
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder method)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    exact = sizes * total / sizes.sum()
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts.tolist()


def _as_2d_float(x, name):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, F]. Received: {name}.shape={x.shape}")
    return x.astype(x.dtype if x.dtype in (np.float32, np.float64) else np.float32)
