"""scripts/uci_benchmark.py on the tiny fixture: the --quick run and its results.json, the
original-units scores against scipy, several datasets, the methods being the package's own, and
bad input."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import uci_benchmark as bench  # scripts/ is on the test run's path (setup.cfg)
from scipy import stats

import tfp_bnn
from tfp_bnn.baselines import EnsembleMembers, MCDropout

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "tests" / "fixtures" / "uci_tiny"
KEYS = {"dataset", "method", "splits", "test_ll_mean", "test_ll_se", "test_rmse_mean",
        "test_rmse_se", "test_ll", "test_rmse", "per_split", "command", "date", "machine"}




def _copy_tiny(tmp_path, name="tiny"):
    return Path(shutil.copytree(TINY, tmp_path / name))


def test_scores_in_original_units_match_scipy():
    rng = np.random.default_rng(0)
    y_mean, y_std = 3.0, 2.5
    y = rng.normal(size=7)
    mu, sigma = rng.normal(size=(4, 7)), rng.uniform(0.2, 1.5, size=(4, 7))
    got = bench.scores(y, mu, sigma, y_std)
    # the mixture density of the original-unit target, computed directly
    y_o, mu_o, sigma_o = y * y_std + y_mean, mu * y_std + y_mean, sigma * y_std
    density = stats.norm.pdf(y_o[None], mu_o, sigma_o).mean(axis=0)
    assert got["test_ll"] == pytest.approx(np.log(density).mean(), rel=1e-10)
    rmse = np.sqrt(np.mean((mu_o.mean(0) - y_o) ** 2))
    assert got["test_rmse"] == pytest.approx(rmse, rel=1e-10)


def test_parse_splits():
    assert bench.parse_splits("0-2,5", 20, "d") == [0, 1, 2, 5]
    assert bench.parse_splits("all", 3, "d") == [0, 1, 2]
    with pytest.raises(ValueError, match=r"split\(s\) \[3, 4\] out of range.*has 3 splits"):
        bench.parse_splits("0-4", 3, "uci_tiny")
    with pytest.raises(ValueError, match="must look like"):
        bench.parse_splits("zero", 3, "uci_tiny")


def test_quick_vi_run_writes_results(tmp_path, capsys):
    out = tmp_path / "results.json"
    bench.main(["--data-dir", str(TINY), "--method", "vi", "--quick", "--epochs", "3",
                "--num-samples", "20", "--out", str(out)])
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    # one line for the epoch selection (on the training splits' hold-outs), one per split
    assert lines[0]["selection_splits"] == [0, 1, 2] and "test_ll" not in lines[0]
    assert [l["split"] for l in lines[1:]] == [0, 1, 2]
    result = json.loads(out.read_text())
    assert KEYS <= set(result) and {"kl_mean", "nll_mean"} <= set(result)
    assert result["dataset"] == "uci_tiny" and result["method"] == "vi"
    assert result["splits"] == [0, 1, 2] and len(result["test_ll"]) == 3
    for key in ("test_ll_mean", "test_ll_se", "test_rmse_mean", "test_rmse_se", "kl_mean"):
        assert math.isfinite(result[key]), key
    assert result["test_ll_mean"] == pytest.approx(np.mean(result["test_ll"]))
    assert result["test_ll_se"] == pytest.approx(np.std(result["test_ll"], ddof=1) / math.sqrt(3))
    assert result["kl_mean"] > 0
    assert result["epoch_selection"]["epochs"] in result["epoch_selection"]["epochs_checked"]


@pytest.mark.parametrize("method", ["mc_dropout", "ensemble", "deterministic"])
def test_other_methods_run(method, tmp_path):
    # A folder of two datasets: each is run, results.json holds a list.
    root = tmp_path / "uci"
    root.mkdir()
    _copy_tiny(root, "a")
    _copy_tiny(root, "b")
    out = tmp_path / "r.json"
    bench.main(["--data-dir", str(root), "--method", method, "--splits", "1", "--epochs", "2",
                "--num-samples", "10", "--tau-values", "1", "10", "--dropout-rates", "0.05",
                "--out", str(out)])
    results = json.loads(out.read_text())
    assert [r["dataset"] for r in results] == ["a", "b"]
    for r in results:
        assert KEYS <= set(r) and r["splits"] == [1] and math.isfinite(r["test_ll_mean"])
        assert r["test_ll_se"] is None  # one split: no standard error
    if method == "mc_dropout":
        row = results[0]["per_split"][0]
        assert row["dropout"] == 0.05 and row["tau"] in (1.0, 10.0)


def test_missing_file_is_named(tmp_path):
    folder = _copy_tiny(tmp_path)
    (folder / "index_features.txt").unlink()
    with pytest.raises(FileNotFoundError, match="index_features.txt"):
        bench.main(["--data-dir", str(folder), "--method", "deterministic", "--epochs", "1"])
    # mc_dropout's grid files (the fixture has none)
    with pytest.raises(FileNotFoundError, match="dropout_rates.txt"):
        bench.main(["--data-dir", str(TINY), "--method", "mc_dropout", "--epochs", "1"])


def test_split_out_of_range(tmp_path):
    with pytest.raises(ValueError, match=r"\[7\] out of range for dataset 'uci_tiny'"):
        bench.main(["--data-dir", str(TINY), "--method", "vi", "--splits", "7"])


def test_nan_target_is_refused(tmp_path):
    folder = _copy_tiny(tmp_path)
    rows = (folder / "data.txt").read_text().splitlines()
    rows[4] = " ".join(rows[4].split()[:-1] + ["nan"])
    (folder / "data.txt").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"1 row\(s\) have a NaN or infinite target.*\[4\]"):
        bench.main(["--data-dir", str(folder), "--method", "vi", "--epochs", "1"])


def test_one_test_row_is_handled_and_empty_test_refused(tmp_path):
    folder = _copy_tiny(tmp_path)
    first = (folder / "index_test_0.txt").read_text().split()[0]
    (folder / "index_test_0.txt").write_text(first + "\n")
    out = tmp_path / "r.json"
    with pytest.warns(UserWarning, match="one test row"):
        bench.main(["--data-dir", str(folder), "--method", "deterministic", "--splits", "0",
                    "--epochs", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["per_split"][0]["n_test"] == 1 and math.isfinite(result["test_ll_mean"])
    (folder / "index_test_0.txt").write_text("")
    with pytest.raises(ValueError, match="index_test_0.txt is empty"):
        bench.main(["--data-dir", str(folder), "--method", "deterministic", "--splits", "0"])


def test_the_methods_are_the_packages_own():
    # Each runner's predictive model comes from the public API, not from a copy of it.
    d = bench.load_split(str(TINY), 0)
    f, h = d.x_train.shape[1], 8
    settings = bench.Settings(batch_size=16, num_samples=7)
    vi = bench.VI(f, h, settings)
    vi.reset(len(d.y_train), seed=0)
    assert [type(l).__name__ for l in vi.model.layers][-3:] == ["DenseFlipout", "DenseFlipout",
                                                               "GaussianHead"]
    weights = tfp_bnn.kl_weights(vi.model)
    assert len(weights) == 2 and all(w == pytest.approx(1 / len(d.y_train))
                                     for w in weights.values())
    grid = bench.DropoutGrid(f, h, settings, rates=[0.05, 0.1], taus=[1.0])
    rates = [sorted(l.rate for l in m.layers if isinstance(l, MCDropout)) for m in grid.search]
    assert rates == [[0.05, 0.05], [0.1, 0.1]]  # before both Dense layers, inputs included
    ens = bench.Ensemble(3, f, h, settings)
    ens.reset(len(d.y_train), seed=0)
    ens.train(d.x_train, d.y_train, epochs=2)
    (members,) = [l.members for l in ens.model.layers if isinstance(l, EnsembleMembers)]
    mu, sigma = ens.predict(d.x_test, settings.num_samples)
    # the mixture components are the members, each once
    for m, member in enumerate(members):
        out = member(d.x_test).numpy()
        np.testing.assert_allclose(mu[m], out[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sigma[m], out[:, 1], rtol=1e-5, atol=1e-6)
