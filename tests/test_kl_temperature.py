"""scripts/kl_temperature.py: the decision rule on hand-made bands, one tiny run, no overwrite."""
import json

import kl_temperature as kl  # scripts/ is on the test run's path (setup.cfg)
import numpy as np
import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = float("nan")


def _curve(lo, hi, ece, counts=None):
    c = {"lo": lo, "hi": hi, "ece": ece}
    if counts is not None:
        c["counts"] = counts
    return c


# ----------------------------------------------------------------------------- decide
def test_overlapping_bands_keep_the_null():
    curves = {"KL x0.25": _curve([NAN, 0.50, 0.80], [NAN, 0.70, 0.95], ece=0.03),
              "KL x1": _curve([NAN, 0.60, 0.85], [NAN, 0.80, 1.00], ece=0.05),
              "KL x4": _curve([0.0, 0.65, 0.90], [0.5, 0.75, 1.00], ece=0.08)}
    d = kl.decide(curves)
    assert d.null_kept and d.better is None and d.separations == ()
    assert d.lowest_ece == "KL x0.25"
    # Bins 1 and 2 for each of the 3 pairs; bin 0 is populated by one curve only.
    assert d.bins_compared == 6
    assert "KEPT" in d.message


def test_gap_within_tolerance_is_still_overlap():
    # Bands [0.60, 0.78] and [0.80, 0.90]: apart by 0.02 exactly (0.020000000000000018 in floats).
    d = kl.decide({"a": _curve([0.60], [0.78], 0.1), "b": _curve([0.80], [0.90], 0.2)})
    assert d.null_kept
    assert d.max_gap == pytest.approx(0.02)
    # The same bands with a stricter tolerance separate.
    assert not kl.decide({"a": _curve([0.60], [0.78], 0.1), "b": _curve([0.80], [0.90], 0.2)},
                         tolerance=0.01).null_kept


def test_separated_bands_name_the_lowest_ece_and_the_bins():
    curves = {"KL x0.25": _curve([0.50, 0.60, 0.90], [0.70, 0.70, 1.00], ece=0.09,
                                 counts=[4, 10, 50]),
              "KL x1": _curve([0.55, 0.75, 0.92], [0.75, 0.85, 1.00], ece=0.02,
                              counts=[5, 12, 48]),
              "KL x4": _curve([NAN, 0.65, 0.91], [NAN, 0.80, 0.99], ece=0.04,
                              counts=[0, 9, 51])}
    d = kl.decide(curves, tolerance=0.02)
    assert not d.null_kept
    assert d.better == "KL x1"
    # Only bin 1, only the 0.25-vs-1 pair: 0.75 - 0.70 = 0.05 > 0.02; 0.25 vs 4 is 0 apart.
    assert len(d.separations) == 1
    s = d.separations[0]
    assert (s.bin, s.curves, s.higher, s.counts) == (1, ("KL x0.25", "KL x1"), "KL x1", (10, 12))
    assert s.gap == pytest.approx(0.05)
    assert s.center == pytest.approx(1.5 / 3)
    assert "REJECTED" in d.message and "KL x1 calibrates better" in d.message
    assert "bin 1" in d.message
    assert json.dumps(d.to_dict())  # serialisable for results.json


def test_min_count_leaves_out_thin_bins():
    # Bin 0: one wrong example vs ten right ones, degenerate bands [0, 0] and [1, 1].
    curves = {"a": _curve([0.0, 0.9], [0.0, 1.0], 0.02, counts=[1, 40]),
              "b": _curve([1.0, 0.9], [1.0, 1.0], 0.20, counts=[10, 30])}
    d = kl.decide(curves)
    assert not d.null_kept and d.better == "a"
    assert [(s.bin, s.counts, s.higher) for s in d.separations] == [(0, (1, 10), "b")]
    assert "n = 1 vs 10" in d.message
    d = kl.decide(curves, min_count=2)
    assert d.null_kept and d.bins_compared == 1 and d.min_count == 2
    assert ">= 2 examples" in d.message
    with pytest.raises(ValueError, match="counts"):
        kl.decide({"a": _curve([0.5], [0.6], 0.1), "b": _curve([0.5], [0.6], 0.1)}, min_count=2)


def test_decide_rejects_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        kl.decide({"a": _curve([0.5], [0.6], 0.1)})
    with pytest.raises(ValueError, match="same number of bins"):
        kl.decide({"a": _curve([0.5], [0.6], 0.1), "b": _curve([0.5, 0.5], [0.6, 0.6], 0.1)})
    with pytest.raises(ValueError, match="tolerance"):
        kl.decide({"a": _curve([0.5], [0.6], 0.1), "b": _curve([0.5], [0.6], 0.1)}, tolerance=-1)


def test_summarise_pools_seeds_and_keeps_per_seed_metrics():
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(3):
        p = rng.dirichlet([1, 1, 1], size=20)
        y = rng.integers(0, 3, size=20)
        runs.append({"probabilities": p, "labels": y, "accuracy": float(np.mean(p.argmax(1) == y)),
                     "nll": 1.0, "ece": 0.1})
    s = kl.summarise(0.25, runs, n_boot=50)
    assert s["num_pooled"] == 60 and s["name"] == "KL x0.25"
    assert s["accuracy_mean"] == pytest.approx(np.mean([r["accuracy"] for r in runs]))
    assert s["accuracy_std"] == pytest.approx(np.std([r["accuracy"] for r in runs], ddof=1))
    assert s["curve"]["counts"].sum() == 60
    table = kl.results_table([s])
    assert table.splitlines()[2].startswith("| 0.25 | ")


# ----------------------------------------------------------------------------- the script
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("kl") / "out"
    argv = ["--epochs", "2", "--seeds", "1", "--multipliers", "0.5", "2.0", "--num-samples", "5",
            "--n-boot", "200", "--quiet", "--out", str(out)]
    return out, argv, kl.main(argv)


def test_main_writes_figure_json_and_table(tiny_run):
    out, _, code = tiny_run
    assert code == 0
    png = (out / "reliability_kl.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    results = json.loads((out / "results.json").read_text())
    for key in ("multipliers", "seeds", "per_multiplier", "decision", "table", "command", "date",
                "seconds"):
        assert key in results
    assert results["multipliers"] == [0.5, 2.0]
    assert [s["multiplier"] for s in results["per_multiplier"]] == [0.5, 2.0]
    for s in results["per_multiplier"]:
        for key in ("accuracy_mean", "accuracy_std", "nll_mean", "nll_std", "ece_mean", "ece_std",
                    "pooled_ece", "accuracy_per_seed", "ece_per_seed", "nll_per_seed", "curve"):
            assert key in s
        assert len(s["ece_per_seed"]) == 1 and 0 <= s["pooled_ece"] <= 1
        assert len(s["predictions"][0]["probabilities"]) == s["num_pooled"] == 30
    assert isinstance(results["decision"]["null_kept"], bool)
    md = (out / "results.md").read_text()
    assert "| KL multiplier |" in md and "| 0.5 |" in md and "| 2 |" in md
    assert "Decision:" in md and results["decision"]["message"] in md


def test_main_refuses_to_overwrite(tiny_run, capsys):
    out, argv, _ = tiny_run
    before = {f: (out / f).read_bytes() for f in kl.RESULT_FILES}
    capsys.readouterr()
    assert kl.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and "results.json" in err
    assert {f: (out / f).read_bytes() for f in kl.RESULT_FILES} == before


def test_main_rejects_csv_without_target(tmp_path):
    with pytest.raises(SystemExit) as e:
        kl.main(["--csv", str(tmp_path / "x.csv"), "--out", str(tmp_path)])
    assert e.value.code == 2
