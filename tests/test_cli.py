"""Every `tfp-bnn` subcommand on shipped or generated data, mostly through `cli.main` in this
process, as a subprocess where the entry point itself is under test; bad input gives exit 2 and
one line on stderr."""
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tfp_bnn
from cli_helpers import main_exit, own_stderr
from tfp_bnn import cli, data, train
from tfp_bnn._keras import tf, tf_keras


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfp_bnn.cli", *args], capture_output=True,
                          text=True, timeout=600)


def _main_out(argv):
    """cli.main in this process (one TensorFlow start-up fewer than `_cli`): (code, stdout),
    for module fixtures, which cannot take capsys."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(argv)
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def saved_model_file(tmp_path_factory):
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                  tf_keras.layers.Dense(8, activation="relu"),
                                  tf_keras.layers.Dense(3)])
    bnn = tfp_bnn.bayesify(source, num_train_examples=100)
    path = tmp_path_factory.mktemp("cli") / "m.keras"
    bnn.save(path)
    return path


@pytest.fixture(scope="module")
def exported(saved_model_file, tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("cli_export") / "iris_bnn"
    code, stdout = _main_out(["export", str(saved_model_file), str(export_dir),
                              "--num-samples", "4"])
    assert code == 0, stdout[-3000:]
    return export_dir, stdout


def test_export_writes_a_version(exported):
    export_dir, stdout = exported
    assert stdout.strip().splitlines()[-1] == str(export_dir / "1")
    assert (export_dir / "1" / "saved_model.pb").is_file()


def test_export_refuses_an_existing_version(exported, saved_model_file, capsys):
    export_dir, _ = exported
    before = (export_dir / "1" / "saved_model.pb").read_bytes()
    code, err = main_exit(["export", str(saved_model_file), str(export_dir), "--version", "1"],
                          capsys)
    assert code == 2 and len(err) == 1
    line = err[0]
    assert line.startswith("tfp-bnn export: error:") and "overwrite" in line
    assert (export_dir / "1" / "saved_model.pb").read_bytes() == before


def test_export_with_shared_noise(saved_model_file, tmp_path, capsys):
    code, err = main_exit(["export", str(saved_model_file), str(tmp_path / "m"), "--noise",
                           "shared", "--quiet"], capsys)
    assert code == 0, err
    assert tf.saved_model.load(str(tmp_path / "m" / "1")).noise.numpy() == b"shared"
    code, err = main_exit(["export", str(saved_model_file), str(tmp_path / "bad"), "--noise",
                           "fast"], capsys)
    assert code == 2 and "--noise" in err[-1] and "'fast'" in err[-1]
    assert not (tmp_path / "bad").exists()


def test_serve_check_answers_a_rest_body(exported, tmp_path, capsys):
    export_dir, _ = exported
    body = {"signature_name": "serving_default", "instances": [[0.1, 0.2, 0.3, 0.4]] * 2}
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    assert cli.main(["serve-check", str(export_dir / "1"), "--body", str(request),
                     "--quiet"]) == 0
    response = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = response["predictions"]
    assert len(rows) == 2
    assert set(rows[0]) == {"mean_logits", "variance", "probabilities", "predictive_entropy",
                            "mutual_information"}
    assert sum(rows[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["mutual_information"] >= 0


def test_serve_check_default_request_and_bad_inputs(exported, tmp_path, capsys):
    export_dir, _ = exported
    assert cli.main(["serve-check", str(export_dir / "1"), "--signature", "deterministic"]) == 0
    stdout = capsys.readouterr().out
    assert '"predictions"' in stdout and "request:" in stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, err = main_exit(["serve-check", str(export_dir / "1"), "--body", str(bad)], capsys)
    assert code == 2 and len(err) == 1 and "is not valid JSON" in err[0]


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.keras")
    assert cli.main(["export", missing, str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model file not found" in err[0] and missing in err[0]
    assert not (tmp_path / "exp").exists()

    assert cli.main(["serve-check", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EXPORT_PATH" in err[0]

    with pytest.raises(SystemExit) as stop:
        cli.main(["export", missing, str(tmp_path), "--num-samples", "0"])
    assert stop.value.code == 2
    assert "--num-samples" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    for command in ("train", "predict", "iris", "export", "serve-check", "benchmark"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--help"])
        assert stop.value.code == 0
        assert command in capsys.readouterr().out


def test_default_body_matches_the_signature(exported):
    from tfp_bnn import serving

    export_dir, _ = exported
    session = serving.load_session(str(export_dir / "1"))
    body = cli._default_body(session, "serving_default")
    assert np.asarray(body["instances"]).shape == (1, 4)
    assert len(serving.rest_predict(session, body)["predictions"]) == 1


# --- train / predict / benchmark -------------------------------------------------------------



def _read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory):
    """One small classifier trained by `tfp-bnn train` on the shipped Iris CSV, reused below."""
    out = tmp_path_factory.mktemp("train") / "iris"
    code, stdout = _main_out(["train", data.iris_csv_path(), "--target", "species", "--epochs",
                              "3", "--hidden", "16", "--num-samples", "10", "--seed", "1",
                              "--out", str(out)])
    assert code == 0, stdout[-3000:]
    return out, stdout


@pytest.fixture(scope="module")
def regression_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(120, 2))
    y = 10.0 + 3.0 * x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=120)
    path = tmp_path_factory.mktemp("reg") / "reg.csv"
    path.write_text("a,b,y\n" + "".join(f"{p:.17g},{q:.17g},{t:.17g}\n"
                                         for (p, q), t in zip(x, y)))
    return path, x, y


def test_train_writes_model_preprocessing_metrics_history(iris_model):
    out, stdout = iris_model
    for name in train.OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert "3/3" in stdout and "/epoch" in stdout  # the Keras bar over the epochs
    meta = json.loads((out / train.PREPROCESSING_FILE).read_text())
    table = data.load_iris()
    assert meta["task"] == "classification" and meta["target"] == "species"
    assert meta["feature_names"] == list(table.feature_names)
    assert meta["class_names"] == ["setosa", "versicolor", "virginica"]
    # The scaler holds the training split's statistics (split seed = --seed), not all rows'.
    split = data.train_val_test_split(table.features, table.labels, seed=1)
    np.testing.assert_allclose(meta["feature_scaler"]["min"], split.x_train.min(axis=0))
    np.testing.assert_allclose(meta["feature_scaler"]["max"], split.x_train.max(axis=0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3 and metrics["num_test"] == 30
    assert abs(metrics["test_accuracy"] * 30 - round(metrics["test_accuracy"] * 30)) < 1e-6
    assert metrics["mean_predictive_entropy"] == pytest.approx(
        metrics["mean_aleatoric"] + metrics["mean_epistemic"], abs=1e-5)
    assert metrics["config"]["hidden"] == [16] and metrics["config"]["seed"] == 1
    rows = _read_rows(out / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for r in rows:
        assert float(r["loss"]) == pytest.approx(float(r["nll"]) + float(r["kl"]), rel=1e-4)
        assert float(r["val_nll"]) > 0


def test_train_refuses_to_overwrite(iris_model, capsys):
    out, _ = iris_model
    before = (out / "model.keras").read_bytes()
    code, err = main_exit(["train", data.iris_csv_path(), "--target", "species",
                            "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0] and "model.keras" in err[0]
    assert (out / "model.keras").read_bytes() == before


def test_predict_writes_probabilities_and_uncertainty(iris_model, tmp_path, capsys):
    out, _ = iris_model
    table = data.load_iris()
    rows = table.features[::10]  # 15 flowers, columns shuffled, an extra column, no label
    source = tmp_path / "new.csv"
    source.write_text("petal_width,note,sepal_length,petal_length,sepal_width\n" + "".join(
        f"{r[3]},n{i},{r[0]},{r[2]},{r[1]}\n" for i, r in enumerate(rows)))
    result = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out), str(source), "--out", str(result),
                     "--num-samples", "8"]) == 0
    stdout = capsys.readouterr().out
    assert "1/1" in stdout and "batch" in stdout  # the Keras bar over the batches
    got = _read_rows(result)
    assert len(got) == 15
    assert list(got[0]) == ["index", "predicted", "prob_setosa", "prob_versicolor",
                            "prob_virginica", "predictive_entropy", "aleatoric", "epistemic"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in table.class_names] for r in got])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [r["predicted"] for r in got] == [table.class_names[k] for k in probs.argmax(axis=1)]
    for r in got:
        assert float(r["predictive_entropy"]) == pytest.approx(
            float(r["aleatoric"]) + float(r["epistemic"]), abs=1e-5)
        assert float(r["epistemic"]) >= 0

    # The same rows through the .keras file in-process: same scaling, same seed, same numbers.
    again = tmp_path / "again.csv"
    assert cli.main(["predict", str(out / "model.keras"), str(source), "--out", str(again),
                     "--num-samples", "8", "--quiet"]) == 0
    assert again.read_text() == result.read_text()


def test_predict_adds_the_label_column_and_refuses_to_overwrite(iris_model, tmp_path, capsys):
    out, _ = iris_model
    result = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out), data.iris_csv_path(), "--out", str(result),
                     "--num-samples", "4", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    got = _read_rows(result)
    assert len(got) == 150 and got[0]["label"] == "setosa" and got[-1]["label"] == "virginica"
    before = result.read_bytes()
    code, err = main_exit(["predict", str(out), data.iris_csv_path(), "--out", str(result)],
                           capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert result.read_bytes() == before


def test_predict_with_a_bare_keras_file_takes_every_column(saved_model_file, tmp_path, capsys):
    # No preprocessing.json beside the file: no scaling, every column a feature, classes 0..C-1.
    source = tmp_path / "x.csv"
    source.write_text("f1,f2,f3,f4\n0.1,0.2,0.3,0.4\n0.5,0.6,0.7,0.8\n")
    result = tmp_path / "pred.csv"
    assert cli.main(["predict", str(saved_model_file), str(source), "--out", str(result),
                     "--num-samples", "4", "--quiet"]) == 0
    got = _read_rows(result)
    assert len(got) == 2 and list(got[0])[:5] == ["index", "predicted", "prob_0", "prob_1",
                                                  "prob_2"]
    source.write_text("f1,f2,f3\n0.1,0.2,0.3\n")
    code, err = main_exit(["predict", str(saved_model_file), str(source), "--out",
                            str(tmp_path / "p2.csv")], capsys)
    assert code == 2 and len(err) == 1 and "takes 4 features" in err[0]


def test_train_and_predict_regression(regression_csv, tmp_path, capsys):
    path, x, y = regression_csv
    out = tmp_path / "reg"
    assert cli.main(["train", str(path), "--target", "y", "--epochs", "3", "--hidden", "8",
                     "--num-samples", "10", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet: no bars, no summary
    meta = json.loads((out / train.PREPROCESSING_FILE).read_text())
    assert meta["task"] == "regression" and meta["class_names"] == []
    split = data.train_val_test_split(x.astype(np.float32), y.astype(np.float32), seed=0,
                                      stratify=False)
    assert meta["target_scaling"]["mean"] == pytest.approx(split.y_train.mean(), rel=1e-5)
    assert meta["target_scaling"]["std"] == pytest.approx(split.y_train.std(), rel=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_rmse"] > 0 and metrics["mean_aleatoric_variance"] > 0

    result = tmp_path / "pred.csv"
    assert cli.main(["predict", str(out), str(path), "--out", str(result), "--num-samples", "10",
                     "--quiet"]) == 0
    got = _read_rows(result)
    assert list(got[0]) == ["index", "label", "mean", "std", "variance", "aleatoric_variance",
                            "epistemic_variance"]
    assert len(got) == 120
    np.testing.assert_allclose([float(r["label"]) for r in got], y)
    for r in got:
        var = float(r["variance"])
        assert var == pytest.approx(float(r["aleatoric_variance"]) + float(r["epistemic_variance"]))
        assert float(r["std"]) == pytest.approx(np.sqrt(var))
        assert float(r["epistemic_variance"]) >= 0
    # Means come back in the target's units (y is about 10 +- 3), not the standardised ones.
    means = np.array([float(r["mean"]) for r in got])
    assert abs(means.mean() - y.mean()) < 2.0


def test_train_reads_a_hub_style_dataset_folder(regression_csv, tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "train.csv").write_text(regression_csv[0].read_text())
    out = tmp_path / "out"
    assert cli.main(["train", "--hub-id", str(folder), "--target", "y", "--task", "regression",
                     "--epochs", "1", "--hidden", "4", "--num-samples", "2", "--out", str(out),
                     "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["source"] == str(folder)


@pytest.fixture(scope="module")
def bad_csvs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "text.csv").write_text("a,b,y\n1,x,0.5\n2,z,0.7\n")
    (root / "strings.csv").write_text("a,b,y\n1,2,cat\n2,3,dog\n")
    return root


@pytest.mark.parametrize("argv, fragments", [
    (["train", "{root}/missing.csv", "--target", "y"], ["No CSV file", "missing.csv"]),
    (["train", "{root}/text.csv", "--target", "nope"],
     ["Unknown target='nope'", "['a', 'b', 'y']"]),
    (["train", "{root}/text.csv", "--target", "y"], ["Feature column 'b'", "not numeric"]),
    (["train", "{root}/strings.csv", "--target", "y", "--task", "regression"],
     ["numeric target", "'y'"]),
    (["train", "{root}/strings.csv", "--target", "y", "--hidden", "64,x"], ["--hidden", "'64,x'"]),
    (["train", "{root}/strings.csv", "--target", "y", "--epochs", "0"], ["--epochs", "'0'"]),
    (["train", "{root}/strings.csv", "--target", "y", "--learning-rate", "-1"],
     ["--learning-rate", "'-1'"]),
    (["train", "{root}/strings.csv", "--target", "y", "--prior", "wat"], ["Unknown prior"]),
    (["train", "{root}/strings.csv"], ["required", "--target"]),
    (["train", "--target", "y"], ["--hub-id"]),
    (["predict", "{root}/missing_model", "{root}/text.csv", "--out", "{root}/p.csv"],
     ["model not found", "missing_model"]),
    (["predict", "{model}", "{root}/text.csv", "--out", "{root}/p.csv"],
     ["lacks the feature column", "sepal_length", "['a', 'b', 'y']"]),
    (["predict", "{model}", "{root}/missing.csv", "--out", "{root}/p.csv"], ["No CSV file"]),
    (["predict", "{model}", "{root}/text.csv", "--out", "{root}/p.csv", "--num-samples", "many"],
     ["--num-samples", "'many'"]),
    (["benchmark", "--models", "mlp,rnn"], ["models", "'rnn'"]),
    (["benchmark", "--batch-sizes", "0"], ["--batch-sizes"]),
])
def test_bad_input_exits_2_with_one_line(argv, fragments, bad_csvs, iris_model, capsys):
    argv = [a.format(root=bad_csvs, model=iris_model[0]) for a in argv]
    code, err = main_exit(argv, capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"tfp-bnn {argv[0]}: error: ")
    for fragment in fragments:
        assert fragment in err[0]
    assert not (bad_csvs / "p.csv").exists()


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    proc = _cli("train", str(tmp_path / "missing.csv"), "--target", "y", "--out",
                str(tmp_path / "out"))
    assert proc.returncode == 2
    assert own_stderr(proc.stderr) == [
        f"tfp-bnn train: error: No CSV file at path={str(tmp_path / 'missing.csv')!r}"]
    assert proc.stdout == "" and not (tmp_path / "out").exists()


def test_benchmark_prints_tables_and_writes_json(tmp_path, capsys):
    result = tmp_path / "bench.json"
    assert cli.main(["benchmark", "--models", "mlp", "--calls", "3", "--batch-sizes", "1",
                     "--samples", "10", "--out", str(result)]) == 0
    stdout = capsys.readouterr().out
    assert "| model | batch | S | variant |" in stdout and "1/1" in stdout
    rows = json.loads(result.read_text())["rows"]
    assert {r["variant"] for r in rows} == {"deterministic", "mc", "mc_shared", "naive_loop"}
    assert all(r["n"] == 3 and 0 < r["p50"] <= r["p95"] for r in rows)
    before = result.read_bytes()
    code, err = main_exit(["benchmark", "--models", "mlp", "--out", str(result)], capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert result.read_bytes() == before


def test_benchmark_script_keeps_its_options(capsys):
    import benchmark_serving as script  # scripts/ is on the test run's path (setup.cfg)
    with pytest.raises(SystemExit) as stop:
        script.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in ("--calls", "--budget", "--models", "--out"):
        assert option in text


def test_console_script_prints_exactly_one_line_on_bad_input(tmp_path):
    # The installed `tfp-bnn` (not `python -m tfp_bnn.cli`): TensorFlow's start-up INFO lines
    # are held back, so stderr is the one error line and nothing else.
    script = os.path.join(os.path.dirname(sys.executable), "tfp-bnn")
    if not os.path.exists(script):
        script = shutil.which("tfp-bnn")
    if script is None:
        pytest.skip("the tfp-bnn console script is not installed (pip install -e .)")
    missing = str(tmp_path / "missing.keras")
    proc = subprocess.run([script, "predict", missing, "x.csv", "--out", str(tmp_path / "p.csv")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"tfp-bnn predict: error: model not found: MODEL={missing!r}"]
    assert proc.stdout == ""
    proc = subprocess.run([script, "train", "--epochs", "0", "data.csv", "--target", "y"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "--epochs" in proc.stderr
