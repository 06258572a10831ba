"""tfp_bnn.reports.write_uncertainty_csv: columns, exact round trip, refusals."""
import csv

import numpy as np
import pytest

from tfp_bnn.reports import write_uncertainty_csv


def _data(n=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    h = -np.sum(p * np.log(p), axis=1)
    alea = 0.8 * h
    return rng.integers(0, c, n), p, h, alea, h - alea


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_round_trip_with_integer_classes(tmp_path):
    y, p, h, alea, epi = _data()
    out = write_uncertainty_csv(tmp_path / "u.csv", y, p, h, alea, epi)
    assert out == tmp_path / "u.csv"
    rows = _read(out)
    assert list(rows[0]) == ["index", "label", "predicted", "prob_0", "prob_1", "prob_2",
                             "predictive_entropy", "aleatoric", "epistemic"]
    assert len(rows) == 5
    for i, row in enumerate(rows):
        assert int(row["index"]) == i
        assert int(row["label"]) == y[i]
        assert int(row["predicted"]) == p[i].argmax()
        # bit-exact: float32 inputs are written as their float64 values
        assert [float(row[f"prob_{c}"]) for c in range(3)] == p[i].astype(np.float64).tolist()
        assert float(row["predictive_entropy"]) == float(h[i])
        assert float(row["aleatoric"]) == float(alea[i])
        assert float(row["epistemic"]) == float(epi[i])


def test_class_names_and_unlabelled(tmp_path):
    p = [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]
    names = ["setosa", "versicolor", "virginica"]
    write_uncertainty_csv(tmp_path / "named.csv", [2, 0], p, [1.0, 2.0], [0.5, 1.5], [0.5, 0.5],
                          class_names=names)
    rows = _read(tmp_path / "named.csv")
    assert [(r["label"], r["predicted"]) for r in rows] == [("virginica", "versicolor"),
                                                           ("setosa", "setosa")]
    assert float(rows[0]["prob_versicolor"]) == 0.7
    write_uncertainty_csv(tmp_path / "unlabelled.csv", None, p, [1.0, 2.0], [0.5, 1.5], [0.5, 0.5])
    rows = _read(tmp_path / "unlabelled.csv")
    assert "label" not in rows[0] and list(rows[0])[:2] == ["index", "predicted"]
    assert [r["predicted"] for r in rows] == ["1", "0"]


def test_refuses_to_overwrite(tmp_path):
    y, p, h, alea, epi = _data()
    path = tmp_path / "u.csv"
    path.write_text("keep me")
    with pytest.raises(ValueError, match=r"overwrite=True.*path=.*u\.csv"):
        write_uncertainty_csv(path, y, p, h, alea, epi)
    assert path.read_text() == "keep me"
    write_uncertainty_csv(str(path), y, p, h, alea, epi, overwrite=True)
    assert len(_read(path)) == 5


@pytest.mark.parametrize("arg, match", [
    ("labels", r"len\(labels\)=4, len\(probabilities\)=5"),
    ("predictive_entropy", r"len\(predictive_entropy\)=4.*len\(probabilities\)=5"),
    ("aleatoric", r"len\(aleatoric\)=4.*len\(probabilities\)=5"),
    ("epistemic", r"len\(epistemic\)=4.*len\(probabilities\)=5"),
])
def test_length_mismatch_names_argument_and_lengths(tmp_path, arg, match):
    y, p, h, alea, epi = _data()
    kwargs = dict(labels=y, probabilities=p, predictive_entropy=h, aleatoric=alea, epistemic=epi)
    kwargs[arg] = kwargs[arg][:4]
    with pytest.raises(ValueError, match=match):
        write_uncertainty_csv(tmp_path / "u.csv", **kwargs)
    assert not (tmp_path / "u.csv").exists()  # validated before anything is written


def test_other_bad_input(tmp_path):
    y, p, h, alea, epi = _data()
    with pytest.raises(ValueError, match=r"class_names.*Received: class_names=\['a', 'b'\]"):
        write_uncertainty_csv(tmp_path / "u.csv", y, p, h, alea, epi, class_names=["a", "b"])
    with pytest.raises(ValueError, match="class_names.*distinct"):
        write_uncertainty_csv(tmp_path / "u.csv", y, p, h, alea, epi, class_names=["a", "a", "b"])
    with pytest.raises(ValueError, match=r"probabilities.shape=\(15,\)"):
        write_uncertainty_csv(tmp_path / "u.csv", y, p.ravel(), h, alea, epi)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        write_uncertainty_csv(tmp_path / "u.csv", y + 3, p, h, alea, epi)
    assert not (tmp_path / "u.csv").exists()
