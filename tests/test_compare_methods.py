"""scripts/compare_methods.py --quick: every method of issue 5 trains, predicts and is tabled."""
import json
import os

import numpy as np

METHODS = ["deterministic", "vi_flipout", "vi_reparameterization", "vi_flipout_tempered",
           "mc_dropout", "ensemble", "swag", "laplace_kron", "laplace_kron_probit",
           "laplace_kron_val", "laplace_kron_val_mc", "last_layer_vi"]


def test_quick_run_tables_every_method(tmp_path):
    import compare_methods as script  # in this process: no second TensorFlow start-up

    out = tmp_path / "cmp"
    script.main(["--quick", "--datasets", "iris", "--out", str(out)])
    results = json.load(open(out / "results.json"))
    rows = results["iris"]["rows"]
    assert list(rows) == METHODS
    for method, seeds in rows.items():
        (row,) = seeds  # --quick: one seed
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["ece"] <= 1, (method, row)
        assert np.isfinite(row["nll"]) and row["nll"] > 0, (method, row)
        # A deterministic net has no epistemic part: its MI cannot rank OOD points (AUROC 0.5).
        if method == "deterministic":
            assert row["auroc_noise_mi"] == 0.5
    table = open(out / "table.md").read()
    assert table.count("\n| ") == 1 + len(METHODS)  # header + one row per method
    assert os.path.getsize(out / "reliability_grid.png") > 10_000


def test_calibrated_rows_scale_every_mc_method_on_the_carve():
    import compare_methods as script  # scripts/ is on the test run's path (setup.cfg)

    methods = ["deterministic", "laplace_kron", "laplace_kron_probit"]
    recipe = script.RECIPES["iris"].quick()
    rows, _, _, calibrated = script.run_dataset("iris", recipe, 1, methods, calibrate=True)
    # A temperature for each MC predictor; the probit Laplace has no MC predictive to scale.
    assert list(calibrated) == ["deterministic", "laplace_kron"]
    for method, (row,) in calibrated.items():
        assert 0 < row["temperature"] < 100, (method, row)
        # T acts on the log of the same seeded MC predictive: the argmax, so the accuracy,
        # cannot change, and the test NLL differs from the uncalibrated one unless T is 1.
        assert row["accuracy"] == rows[method][0]["accuracy"], method
        assert row["nll"] != rows[method][0]["nll"] or row["temperature"] == 1.0, method
    table = script.table("iris", rows, ["noise"], calibrated=calibrated)
    assert table.count("\n| ") == 1 + len(methods) + 2  # header, rows, two "+T" rows
    assert "| Laplace LL kron (MC) +T |" in table and "probit) +T" not in table
    lines = script.calibrated_targets("iris", rows, calibrated)
    assert len(lines) == 1 and lines[0].startswith("- iris: Laplace LL kron (MC) +T ECE")
