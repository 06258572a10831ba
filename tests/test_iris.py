"""The Iris main job end to end (`tfp-bnn iris`), its files and its refusal to overwrite."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import main_exit
from tfp_bnn import iris

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tfp_bnn.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("iris")
    out, export = root / "out", root / "savedmodels" / "iris_bnn"
    proc = _cli("iris", "--epochs", "5", "--seeds", "2", "--num-samples", "20",
                "--out", str(out), "--export-dir", str(export))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, export, proc


def test_iris_writes_every_file(iris_run):
    out, export, proc = iris_run
    for name in iris.OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("reliability.png", "entropy_vs_accuracy.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert (export / "1" / "saved_model.pb").is_file()
    assert (export / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert "Test accuracy" in proc.stdout and "mutual information" in proc.stdout


def test_iris_metrics_are_consistent(iris_run):
    out, _, _ = iris_run
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "test_accuracy_per_seed", "test_nll", "test_ece",
                "mean_mutual_information"):
        assert key in metrics
    per_seed = metrics["test_accuracy_per_seed"]
    assert len(per_seed) == 2
    assert metrics["test_accuracy"] == pytest.approx(np.mean(per_seed))
    # 30 test examples: each accuracy is a multiple of 1/30.
    assert all(abs(a * 30 - round(a * 30)) < 1e-6 for a in per_seed)
    assert 0 <= metrics["test_ece"] <= 1 and metrics["test_nll"] > 0
    assert metrics["mean_mutual_information"] >= 0
    assert metrics["epochs_trained_per_seed"] == [5, 5]


def test_iris_history_loss_is_nll_plus_kl(iris_run):
    out, _, _ = iris_run
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and {r["seed"] for r in rows} == {"0", "1"}
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["nll"]) + float(r["kl"]), rel=1e-4)
        assert float(r["kl"]) > 0
        assert 0 <= float(r["val_predictive_entropy"]) <= np.log(3) + 1e-6


def test_iris_uncertainty_csv_rows(iris_run):
    out, _, _ = iris_run
    with open(out / "uncertainty.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    for r in rows:
        total = float(r["predictive_entropy"])
        assert total == pytest.approx(float(r["aleatoric"]) + float(r["epistemic"]), abs=1e-5)


def test_iris_never_overwrites_results(iris_run, capsys):
    out, export, _ = iris_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, lines = main_exit(["iris", "--epochs", "1", "--seeds", "1", "--out", str(out),
                             "--export-dir", str(export)], capsys)
    assert code == 2 and len(lines) == 1
    assert "--overwrite" in lines[-1] and str(out) in lines[-1]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(export)) == ["1"]


def test_iris_rejects_bad_arguments(capsys):
    code, lines = main_exit(["iris", "--seeds", "0"], capsys)
    assert code == 2 and "--seeds" in lines[-1] and "'0'" in lines[-1]


def test_iris_config_validates():
    with pytest.raises(ValueError, match="epochs"):
        iris.IrisConfig(epochs=0)
    with pytest.raises(ValueError, match="kl_multiplier"):
        iris.IrisConfig(kl_multiplier=-1.0)


def test_train_iris_script_is_the_cli():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "train_iris.py"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--seeds" in proc.stdout and "--overwrite" in proc.stdout
