"""`tfp-bnn export` and `tfp-bnn serve-check` as subprocesses; bad input gives exit 2 and one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import cli
from tfp_bnn._keras import tf_keras


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfp_bnn.cli", *args], capture_output=True,
                          text=True, timeout=600)


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
    proc = _cli("export", str(saved_model_file), str(export_dir), "--num-samples", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return export_dir, proc


def test_export_writes_a_version(exported):
    export_dir, proc = exported
    assert proc.stdout.strip().splitlines()[-1] == str(export_dir / "1")
    assert (export_dir / "1" / "saved_model.pb").is_file()


def test_export_refuses_an_existing_version(exported, saved_model_file):
    export_dir, _ = exported
    before = (export_dir / "1" / "saved_model.pb").read_bytes()
    proc = _cli("export", str(saved_model_file), str(export_dir), "--version", "1")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("tfp-bnn export: error:") and "overwrite" in line
    assert (export_dir / "1" / "saved_model.pb").read_bytes() == before


def test_serve_check_answers_a_rest_body(exported, tmp_path):
    export_dir, _ = exported
    body = {"signature_name": "serving_default", "instances": [[0.1, 0.2, 0.3, 0.4]] * 2}
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    proc = _cli("serve-check", str(export_dir / "1"), "--body", str(request), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    response = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = response["predictions"]
    assert len(rows) == 2
    assert set(rows[0]) == {"mean_logits", "variance", "probabilities", "predictive_entropy",
                            "mutual_information"}
    assert sum(rows[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["mutual_information"] >= 0


def test_serve_check_default_request_and_bad_inputs(exported, tmp_path):
    export_dir, _ = exported
    proc = _cli("serve-check", str(export_dir / "1"), "--signature", "deterministic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"predictions"' in proc.stdout and "request:" in proc.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = _cli("serve-check", str(export_dir / "1"), "--body", str(bad))
    assert proc.returncode == 2 and "is not valid JSON" in proc.stderr.strip().splitlines()[-1]


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
    for command in ("iris", "export", "serve-check"):
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
