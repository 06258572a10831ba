"""`tfp-bnn train --calibrate`, `tfp-bnn predict --alpha` and `tfp-bnn export` (in-process) on
generated tables; the saved post-hoc values rebuild the fitted calibration and conformal predictor
exactly, and the export serves them."""
import csv
import json
import shutil

import numpy as np
import pytest

import tfp_bnn
from cli_helpers import main_exit
from tfp_bnn import cli, data, results, train
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.calibration import Calibrated, temperature_scale
from tfp_bnn.conformal import Conformal, conformal_quantile
from tfp_bnn.heads import GaussianHead

FAST = ["--epochs", "3", "--hidden", "8", "--num-samples", "10", "--quiet"]
CLASSES = ("east", "north", "west")  # sorted: the class ids


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-class and a regression table (150 rows: 24 validation rows each), trained once."""
    root = tmp_path_factory.mktemp("calibrate")
    rng = np.random.default_rng(0)
    k = np.repeat(np.arange(3), 50)
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])[k] + rng.normal(scale=0.8, size=(150, 2))
    (root / "cls.csv").write_text("u,v,kind\n" + "".join(
        f"{a:.17g},{b:.17g},{CLASSES[c]}\n" for (a, b), c in zip(x, k)))
    y = 10.0 + 3.0 * x[:, 0] - x[:, 1] + 0.3 * rng.normal(size=150)
    (root / "reg.csv").write_text("u,v,y\n" + "".join(
        f"{a:.17g},{b:.17g},{t:.17g}\n" for (a, b), t in zip(x, y)))
    for name, target in (("cls", "kind"), ("reg", "y")):
        assert cli.main(["train", str(root / f"{name}.csv"), "--target", target, "--calibrate",
                         "--out", str(root / name), *FAST]) == 0
    return root


def _split(root, name, target):
    """The run's test split, rebuilt as `train.run` made it (seed 0), scaled with its scaler."""
    table = data.load_csv(str(root / f"{name}.csv"), target)
    parts = data.train_val_test_split(table.features, table.labels, seed=0,
                                      stratify=name == "cls")
    meta = json.loads((root / name / train.PREPROCESSING_FILE).read_text())
    scaler = data.MinMaxScaler.from_config(meta["feature_scaler"])
    return parts, scaler, meta


@pytest.mark.parametrize("name, target", [("cls", "kind"), ("reg", "y")])
def test_train_calibrate_saves_posthoc_that_reproduces_its_metrics(runs, name, target):
    folder = runs / name
    assert train.POSTHOC_FILE in results.verify(str(folder))
    posthoc = json.loads((folder / train.POSTHOC_FILE).read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["config"]["calibrate"] is True and metrics["conformal_alpha"] == 0.1
    assert len(posthoc["scores"]) == posthoc["calibration_size"] == metrics["num_val"] == 24
    assert posthoc["alpha"] == 0.1 and posthoc["randomized"] is False
    assert posthoc["conformal"] == ("aps" if name == "cls" else "normalized")
    assert np.all(np.diff(np.asarray(posthoc["scores"]), axis=0) >= 0)  # sorted
    keys = (["test_ece", "test_ece_calibrated", "test_nll_calibrated", "test_mean_set_size"]
            if name == "cls" else ["test_nll_calibrated", "test_mean_interval_width"])
    for key in keys + ["test_coverage"]:
        assert np.isfinite(metrics[key]), key
    print(f"{name}: test coverage of the 90 % sets {metrics['test_coverage']:.3f}")

    # The fitted values come from the validation split: the same fit repeated gives them.
    parts, scaler, meta = _split(runs, name, target)
    model, _ = train.load(folder)
    x_val, y_val = scaler.transform(parts.x_val), parts.y_val
    if name == "reg":
        scaling = meta["target_scaling"]
        y_val = ((y_val - scaling["mean"]) / scaling["std"]).astype(np.float32)
    method = "temperature" if name == "cls" else "variance"
    cal = tfp_bnn.calibrate(model, x_val, y_val, method=method, num_samples=10, seed=0)
    assert cal.get_config() == posthoc["calibrated"]

    # Rebuilt from posthoc.json and predicted on the test split, the sets give the metrics.
    conf = Conformal.from_config(model, posthoc)
    pred = tfp_bnn.predict(conf, scaler.transform(parts.x_test), num_samples=10, seed=0)
    if name == "cls":
        sets = pred.prediction_sets
        assert metrics["test_coverage"] == tfp_bnn.metrics.empirical_coverage(sets, parts.y_test)
        assert metrics["test_mean_set_size"] == tfp_bnn.metrics.set_size(sets)
        assert metrics["test_ece_calibrated"] == pytest.approx(
            tfp_bnn.metrics.expected_calibration_error(pred.probabilities, parts.y_test),
            abs=1e-6)
    else:
        width = (pred.interval_upper - pred.interval_lower) * meta["target_scaling"]["std"]
        assert metrics["test_mean_interval_width"] == pytest.approx(float(width.mean()),
                                                                    rel=1e-5)


def test_predict_alpha_writes_calibrated_probabilities_and_sets(runs, tmp_path, capsys):
    folder = runs / "cls"
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(folder), str(runs / "cls.csv"), "--out", str(out),
                     "--alpha", "0.2", "--num-samples", "10"]) == 0
    stdout = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0])[-2:] == ["prediction_set", "set_size"] and len(rows) == 150
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    sets = np.array([[c in r["prediction_set"].split("|") for c in CLASSES] for r in rows])
    sizes = np.array([int(r["set_size"]) for r in rows])
    np.testing.assert_array_equal(sizes, sets.sum(axis=1))
    assert sizes.min() >= 1  # an undertrained model: no probability above the quantile
    # The written sets are APS (u = 1) sets of the written probabilities at q(0.2).
    posthoc = json.loads((folder / train.POSTHOC_FILE).read_text())
    q = float(conformal_quantile(np.float32(posthoc["scores"]), 0.2))
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.take_along_axis(np.cumsum(np.take_along_axis(probs, order, 1), 1),
                                    np.argsort(order, axis=1), 1)
    # (Away from q itself: there float32 sums decide, q = 1.0 for this undertrained model.)
    clear = np.abs(cumulative - q) > 1e-5
    assert clear.sum() >= 300
    np.testing.assert_array_equal(sets[clear], (cumulative <= q)[clear])
    # The coverage on the labelled rows is reported (not a guarantee here: training rows).
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    coverage = sets[np.arange(150), labels].mean()
    assert f"80% sets: coverage {coverage:.3f}" in stdout, stdout
    print(f"coverage of the 80 % sets on the 150 training-CSV rows: {coverage:.3f}")

    # The probabilities are the calibrated ones, with --alpha or without.
    plain = tmp_path / "plain.csv"
    assert cli.main(["predict", str(folder), str(runs / "cls.csv"), "--out", str(plain),
                     "--num-samples", "10", "--quiet"]) == 0
    plain_rows = _rows(plain)
    assert "prediction_set" not in plain_rows[0]
    np.testing.assert_array_equal(
        probs, [[float(r[f"prob_{c}"]) for c in CLASSES] for r in plain_rows])
    model, _ = train.load(folder)
    _, scaler, _ = _split(runs, "cls", "kind")
    x = scaler.transform(np.array([[float(r["u"]), float(r["v"])] for r in _rows(runs /
                                                                               "cls.csv")]))
    raw = tfp_bnn.predict(model, x, num_samples=10, seed=0).probabilities
    temperature = posthoc["calibrated"]["temperature"]
    assert abs(temperature - 1.0) > 0.05
    np.testing.assert_allclose(probs, temperature_scale(raw, temperature), atol=1e-6)
    assert np.abs(probs - raw).max() > 1e-3


def test_predict_alpha_writes_intervals_in_the_target_units(runs, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(runs / "reg"), str(runs / "reg.csv"), "--out", str(out),
                     "--alpha", "0.1", "--num-samples", "10"]) == 0
    stdout = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0])[-2:] == ["interval_lower", "interval_upper"]
    lower, upper, mean, std, y = (np.array([float(r[k]) for r in rows]) for k in (
        "interval_lower", "interval_upper", "mean", "std", "label"))
    assert np.all(lower < upper)
    # mean -+ q std, with the (calibrated) std of the report, in the target's units.
    posthoc = json.loads((runs / "reg" / train.POSTHOC_FILE).read_text())
    q = float(conformal_quantile(np.float32(posthoc["scores"]), 0.1)[0])
    np.testing.assert_allclose((lower + upper) / 2, mean, rtol=1e-5)
    np.testing.assert_allclose((upper - lower) / 2, q * std, rtol=1e-4)
    coverage = np.mean((lower <= y) & (y <= upper))
    assert f"90% intervals: coverage {coverage:.3f}" in stdout, stdout
    print(f"coverage of the 90 % intervals on the 150 training-CSV rows: {coverage:.3f}")


def _served(path, x, signature="serving_default", **extra):
    fn = tf.saved_model.load(str(path)).signatures[signature]
    (name,) = set(fn.structured_input_signature[1]) - set(extra)
    return {k: v.numpy() for k, v in fn(**{name: tf.constant(x, tf.float32)}, **extra).items()}


def test_export_serves_the_calibrated_probabilities_and_sets_of_predict(runs, tmp_path,
                                                                        capsys):
    # The served graph draws fresh noise per process (no seed input: replicas must not replay
    # one stream), so served and predicted means agree to Monte Carlo error only: with S =
    # 2000 draws each, 5e-4 here, where the temperature moves them by 0.03.
    folder, s = runs / "cls", "2000"
    assert cli.main(["export", str(folder), str(tmp_path / "exp"), "--num-samples", s]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(tmp_path / "exp" / "1")
    assert lines[-2].startswith("post-hoc from posthoc.json: Calibrated(") and \
        "'temperature'" in lines[-2] and "Conformal(score='aps', alpha=0.1, n=24" in lines[-2] \
        and "deterministic prediction_set" in lines[-2], lines
    assert cli.main(["export", str(folder), str(tmp_path / "exp"), "--num-samples", s,
                     "--no-posthoc"]) == 0
    assert "post-hoc: none (--no-posthoc" in capsys.readouterr().out
    assert cli.main(["predict", str(folder), str(runs / "cls.csv"), "--out",
                     str(tmp_path / "p.csv"), "--num-samples", s, "--quiet"]) == 0
    predicted = np.array([[float(r[f"prob_{c}"]) for c in CLASSES]
                          for r in _rows(tmp_path / "p.csv")])
    _, scaler, _ = _split(runs, "cls", "kind")
    x = scaler.transform(np.array([[float(r["u"]), float(r["v"])]
                                   for r in _rows(runs / "cls.csv")]))
    served, raw = _served(tmp_path / "exp" / "1", x), _served(tmp_path / "exp" / "2", x)
    gap = np.abs(served["probabilities"] - predicted).max()
    shift = np.abs(raw["probabilities"] - predicted).max()
    print(f"served vs predict (S = {s}): max |diff| {gap:.4f}; uncalibrated export {shift:.4f}")
    assert gap < 0.005 and shift > 0.02
    # The fitted values are posthoc.json's, and the served sets the APS (u = 1) sets of the
    # served probabilities at its quantile: at alpha = 0.1 (q = 1.0 for this undertrained
    # model) and, through predict_with_alpha, at 0.5.
    posthoc = json.loads((folder / train.POSTHOC_FILE).read_text())
    saved = json.loads(tf.saved_model.load(str(tmp_path / "exp" / "1")).post_hoc.numpy())
    assert saved["calibrated"] == posthoc["calibrated"]
    assert saved["quantile"] == posthoc["quantile"] and saved["alpha"] == 0.1
    half = _served(tmp_path / "exp" / "1", x, "predict_with_alpha",
                   alpha=tf.constant(0.5, tf.float64))
    for out, alpha in ((served, 0.1), (half, 0.5)):
        probs = out["probabilities"]
        q = float(conformal_quantile(np.float32(posthoc["scores"]), alpha))
        order = np.argsort(-probs, axis=1, kind="stable")
        cumulative = np.take_along_axis(np.cumsum(np.take_along_axis(probs, order, 1), 1),
                                        np.argsort(order, axis=1), 1)
        clear = np.abs(cumulative - q) > 1e-5
        assert clear.sum() >= 300, alpha
        top = np.eye(3, dtype=bool)[probs.argmax(1)]
        np.testing.assert_array_equal(out["prediction_set"][clear],
                                      ((cumulative <= q) | top)[clear])
    sizes = half["prediction_set"].sum(1)
    assert sizes.min() == 1 and sizes.max() >= 2, np.bincount(sizes)


def test_export_without_posthoc_is_the_plain_export(runs, tmp_path, capsys):
    plain = tmp_path / "plain"
    shutil.copytree(runs / "cls", plain)
    (plain / train.POSTHOC_FILE).unlink()
    results.write_manifest(str(plain))
    assert cli.main(["export", str(plain), str(tmp_path / "exp"), "--num-samples", "4"]) == 0
    assert "post-hoc: none (no posthoc.json beside MODEL)" in capsys.readouterr().out
    model, _ = train.load(runs / "cls")
    direct = tfp_bnn.export_savedmodel(model, tmp_path / "direct", num_samples=4)
    exports = [tf.saved_model.load(str(p)) for p in (tmp_path / "exp" / "1", direct)]
    assert [sorted(e.signatures) for e in exports] == [sorted(tfp_bnn.export.SIGNATURES)] * 2
    assert not any(hasattr(e, "post_hoc") for e in exports)
    x = np.random.default_rng(0).uniform(size=(5, 2))
    a, b = (_served(p, x) for p in (tmp_path / "exp" / "1", direct))
    assert sorted(a) == sorted(b) == sorted(tfp_bnn.export.output_names("multiclass"))
    a, b = (_served(p, x, "deterministic") for p in (tmp_path / "exp" / "1", direct))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_alpha_errors_name_the_option_and_write_nothing(runs, tmp_path, capsys):
    base = ["predict", str(runs / "cls"), str(runs / "cls.csv"), "--out", str(tmp_path / "p.csv")]
    for text in ("0", "1", "1.5", "-0.1", "x", "nan"):
        code, err = main_exit(base + ["--alpha", text], capsys)
        assert code == 2 and len(err) == 1 and "--alpha" in err[0] and repr(text) in err[0], err
    # 24 calibration examples: alpha = 1/25 = 0.04 is the smallest level they allow.
    code, err = main_exit(base + ["--alpha", "0.03"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "--alpha=0.03" in err[0] and "at least 33" in err[0] and "on 24" in err[0], err
    assert main_exit(base + ["--alpha", "0.04", "--quiet"], capsys)[0] == 0
    (tmp_path / "p.csv").unlink()
    # A complete folder without posthoc.json: no calibration to build sets from.
    plain = tmp_path / "plain"
    shutil.copytree(runs / "cls", plain)
    (plain / train.POSTHOC_FILE).unlink()
    results.write_manifest(str(plain))
    code, err = main_exit(["predict", str(plain), str(runs / "cls.csv"), "--out",
                           str(tmp_path / "p.csv"), "--alpha", "0.1"], capsys)
    assert code == 2 and len(err) == 1 and "--alpha=0.1" in err[0] and "--calibrate" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_train_calibrate_refuses_a_small_validation_split_before_training(runs, tmp_path,
                                                                          capsys):
    lines = (runs / "cls.csv").read_text().splitlines(True)
    small = tmp_path / "small.csv"  # 10 rows of each class
    small.write_text("".join(lines[:11] + lines[51:61] + lines[101:111]))
    table = data.load_csv(str(small), "kind")
    num_val = len(data.train_val_test_split(table.features, table.labels, seed=0).x_val)
    code, err = main_exit(["train", str(small), "--target", "kind", "--calibrate", "--out",
                           str(tmp_path / "out"), *FAST], capsys)
    assert code == 2 and len(err) == 1, err
    assert "--calibrate" in err[0] and "at least 9 validation rows" in err[0]
    assert f"has {num_val}" in err[0] and num_val < 9
    assert not (tmp_path / "out").exists()


def test_a_rerun_without_calibrate_leaves_no_posthoc(runs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(runs / "cls", folder)
    assert cli.main(["train", str(runs / "cls.csv"), "--target", "kind", "--out", str(folder),
                     "--overwrite", "--epochs", "1", "--hidden", "4", "--num-samples", "2",
                     "--quiet"]) == 0
    assert not (folder / train.POSTHOC_FILE).exists()
    assert results.verify(str(folder)) == frozenset(train.OUTPUT_FILES)


# --- from_config: the saved values rebuild the same predictor --------------------------------

def _model(task):
    tf_keras.utils.set_random_seed(3)
    if task == "multiclass":
        layers = [tf_keras.layers.Dense(8, activation="relu"), tf_keras.layers.Dense(3)]
    else:
        layers = [tf_keras.layers.Dense(8, activation="relu"), tf_keras.layers.Dense(2),
                  GaussianHead(1)]
    source = tf_keras.Sequential([tf_keras.Input((2,))] + layers)
    return tfp_bnn.bayesify(source, num_train_examples=100, task=task)


@pytest.mark.parametrize("task, method, score, randomized", [
    ("multiclass", "temperature", "aps", True), ("multiclass", "vector", "raps", False),
    ("multiclass", "temperature", "lac", True), ("gaussian", "variance", "normalized", True),
    ("gaussian", "variance", "cqr", True)])
def test_from_config_rebuilds_the_same_predictions(task, method, score, randomized):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 2)).astype(np.float32)
    y = (rng.integers(0, 3, size=60) if task == "multiclass"
         else (x[:, :1] + 0.5 * rng.normal(size=(60, 1))).astype(np.float32))
    model = _model(task)
    cal = tfp_bnn.calibrate(model, x[:30], y[:30], method=method, num_samples=8, seed=0)
    conf = tfp_bnn.conformal(cal, x[:30], y[:30], alpha=0.1, score=score,
                             randomized=randomized, num_samples=8, seed=0)
    saved = json.loads(json.dumps(conf.get_config(with_scores=True)))
    again = Conformal.from_config(model, saved)
    assert isinstance(again.model, Calibrated) and again.model.get_config() == cal.get_config()
    np.testing.assert_array_equal(again.quantile, conf.quantile)
    for alpha in (None, 0.2):
        a = tfp_bnn.predict(conf, x[30:], num_samples=8, seed=5, alpha=alpha)
        b = tfp_bnn.predict(again, x[30:], num_samples=8, seed=5, alpha=alpha)
        fields = (["probabilities", "prediction_sets"] if task == "multiclass"
                  else ["variance", "interval_lower", "interval_upper"])
        for field in fields:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), field)
    # Calibrated alone, and the already-calibrated model passed in.
    c = Calibrated.from_config(model, json.loads(json.dumps(cal.get_config())))
    key = "probabilities" if task == "multiclass" else "variance"
    np.testing.assert_array_equal(getattr(tfp_bnn.predict(cal, x, num_samples=8, seed=2), key),
                                  getattr(tfp_bnn.predict(c, x, num_samples=8, seed=2), key))
    assert Conformal.from_config(cal, saved).model is cal


def test_from_config_refuses_a_mismatched_model_or_config():
    model = _model("multiclass")
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    conf = tfp_bnn.conformal(model, x, np.arange(20) % 3, num_samples=4)
    saved = conf.get_config(with_scores=True)
    with pytest.raises(ValueError, match="with_scores=True"):
        Conformal.from_config(model, conf.get_config())
    with pytest.raises(ValueError, match="task"):
        Conformal.from_config(_model("gaussian"), saved)
    with pytest.raises(ValueError, match="already conformal"):
        Conformal.from_config(conf, saved)
    with pytest.raises(ValueError, match="lacks \\['temperature'\\]"):
        Calibrated.from_config(model, {"calibration": "temperature", "task": "multiclass"})
