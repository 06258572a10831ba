"""Nothing lost, nothing run that should not run: safe model loading, fail-fast input checks,
atomic results with a manifest, exports a server can read, never silent NaN."""
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import tfp_bnn
from cli_helpers import main_exit, own_stderr
from tfp_bnn import cli, data, results, safety, train
from tfp_bnn._keras import tf_keras
from tfp_bnn.predict import NonFiniteOutputError

IRIS = data.iris_csv_path()


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "tfp_bnn.cli", *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def _snapshot(root):
    """Every path under ``root`` with its mode and content digest: "no file changed"."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[os.path.relpath(path, root)] = (stat.S_IMODE(os.stat(path).st_mode), digest)
    return state


def _train_args(out, *extra, seed=0, csv=IRIS, target="species"):
    return ["train", str(csv), "--target", target, "--epochs", "1", "--hidden", "4",
            "--num-samples", "4", "--seed", str(seed), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A complete `tfp-bnn train` folder (Iris, 1 epoch), trained in-process."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(_train_args(out)) == 0
    return out


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(60, 2))
    y = 2.0 * x[:, 0] - x[:, 1]
    csv = root / "reg.csv"
    csv.write_text("a,b,y\n" + "".join(f"{p:.17g},{q:.17g},{t:.17g}\n" for (p, q), t in zip(x, y)))
    out = root / "run"
    assert cli.main(_train_args(out, csv=csv, target="y")) == 0
    return out, csv


# --- 1. code execution on load ---------------------------------------------------------------

@pytest.fixture()
def lambda_h5(tmp_path):
    """A Lambda model saved as HDF5 under a .keras name; its function writes a marker file."""
    marker = tmp_path / "MARKER"
    fn = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")  # noqa: S307
    model = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                 tf_keras.layers.Lambda(fn), tf_keras.layers.Dense(3)])
    with pytest.warns(UserWarning, match="HDF5"):
        model.save(tmp_path / "m.h5")
    marker.unlink(missing_ok=True)  # saving traced the function once
    path = tmp_path / "model.keras"
    os.replace(tmp_path / "m.h5", path)
    (tmp_path / "x.csv").write_text("a,b,c,d\n0.1,0.2,0.3,0.4\n")
    return path, marker


def test_hdf5_lambda_under_a_keras_name_is_refused_and_never_runs(lambda_h5, tmp_path):
    path, marker = lambda_h5
    before = _snapshot(tmp_path)
    commands = (["predict", str(path), str(tmp_path / "x.csv"), "--out", str(tmp_path / "p.csv")],
                ["export", str(path), str(tmp_path / "exported")])
    procs = [subprocess.Popen([sys.executable, "-m", "tfp_bnn.cli", *argv], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in commands]
    for argv, proc in zip(commands, procs):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, stderr[-2000:]
        lines = own_stderr(stderr)
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"tfp-bnn {argv[0]}: error: MODEL={str(path)!r} is HDF5")
        assert "--unsafe-load" in lines[0]
        assert not marker.exists()
    assert _snapshot(tmp_path) == before


def test_unsafe_load_is_explicit_and_then_the_code_runs(lambda_h5, tmp_path, capsys):
    # The marker is what the refusal above prevents: with --unsafe-load the Lambda runs.
    path, marker = lambda_h5
    with pytest.warns(UserWarning, match="no stochastic layer"):
        assert cli.main(["predict", str(path), str(tmp_path / "x.csv"), "--out",
                         str(tmp_path / "p.csv"), "--unsafe-load", "--quiet"]) == 0
    assert marker.exists() and (tmp_path / "p.csv").is_file()


def test_only_keras_archives_naming_keras_and_tfp_bnn_objects_load(trained, tmp_path):
    source = trained / "model.keras"
    assert safety.describe_file(source) == "keras"
    model = safety.load_model(source)
    assert isinstance(model, tf_keras.Model)

    not_keras = tmp_path / "zipped.keras"
    with zipfile.ZipFile(not_keras, "w") as z:
        z.writestr("weights.bin", b"\0")
    text = tmp_path / "text.keras"
    text.write_text("hello")
    for path, what in ((not_keras, "a zip without config.json"), (text, "not a Keras archive")):
        with pytest.raises(ValueError, match=f"is {what}, not a .keras archive"):
            safety.load_model(path)

    # A real archive whose config asks for a class of module "os": refused before Keras
    # imports the module (tf_keras would import any module a config names).
    hostile = tmp_path / "hostile.keras"
    with zipfile.ZipFile(source) as z_in, zipfile.ZipFile(hostile, "w") as z_out:
        for item in z_in.namelist():
            payload = z_in.read(item)
            if item == "config.json":
                payload = payload.replace(b'"module": "tfp_bnn.layers"', b'"module": "os"', 1)
                payload = payload.replace(b'"class_name": "DenseFlipout"',
                                          b'"class_name": "system"', 1)
                assert b'"os"' in payload and b'"system"' in payload
            z_out.writestr(item, payload)
    with pytest.raises(ValueError, match="'system' from module 'os'"):
        safety.load_model(hostile)
    renamed = tmp_path / "model.bin"
    shutil.copy(source, renamed)
    with pytest.raises(ValueError, match="without the .keras extension"):
        safety.load_model(renamed)


# --- 2 and 5. input checks before any training -----------------------------------------------

@pytest.mark.parametrize("name, content, fragments", [
    ("empty.csv", b"", ["is empty"]),
    ("header.csv", b"a,b,y\n", ["has a header but no data rows"]),
    ("ragged.csv", b"a,b,y\n1,2,0.5\n3,4\n", ["ragged", "data row 2", "2 fields", "header has 3"]),
    ("latin1.csv", "a,b,y\n1,2,caf\xe9\n".encode("latin-1"), ["not UTF-8", "0xe9"]),
    ("inf_target.csv", b"a,b,y\n1,2,0.5\n3,4,inf\n5,6,1.5\n",
     ["Target column 'y'", "inf", "data row 2"]),
    ("overflow_feature.csv", b"a,b,y\n1,2,0.5\n3,4,1.5\n5,1e39,2.5\n",
     ["Feature column 'b'", "1e+39", "data row 3"]),
    ("inf_feature.csv", b"a,b,y\n-inf,2,0.5\n3,4,1.5\n", ["Feature column 'a'", "data row 1"]),
])
def test_bad_tables_exit_2_naming_file_column_row(name, content, fragments, tmp_path, capsys):
    csv = tmp_path / name
    csv.write_bytes(content)
    before = _snapshot(tmp_path)
    code, err = main_exit(_train_args(tmp_path / "out", csv=csv, target="y"), capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("tfp-bnn train: error: ") and repr(str(csv)) in err[0]
    for fragment in fragments:
        assert fragment in err[0]
    assert _snapshot(tmp_path) == before


def test_huge_num_samples_fails_fast_with_a_memory_estimate(trained, tmp_path, capsys):
    for argv in (_train_args(tmp_path / "out", "--num-samples", "1000000000"),
                 ["predict", str(trained), IRIS, "--out", str(tmp_path / "p.csv"),
                  "--num-samples", "1000000000"]):
        start = time.time()
        code, err = main_exit(argv, capsys)
        assert time.time() - start < 20  # refused by estimate, not after an allocation attempt
        assert code == 2 and len(err) == 1, err
        assert "num_samples=1000000000" in err[0] and "GiB" in err[0]
    assert os.listdir(tmp_path) == []


def test_sample_memory_estimate_is_s_times_batch_times_widest_layer(monkeypatch):
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(50),
                                 tf_keras.layers.Dense(3)])
    assert safety._widest(model) == 50
    monkeypatch.setattr(safety, "available_memory", lambda: 4 * 50 * 10 * 20)
    safety.check_sample_memory(model, 10, 20)  # exactly fits
    with pytest.raises(ValueError, match=r"num_samples=11 .*\(11 x 20 x 50"):
        safety.check_sample_memory(model, 11, 20)


def test_output_places_are_checked_before_training(trained, tmp_path, capsys):
    read_only = tmp_path / "ro"
    shutil.copytree(trained, read_only)
    os.chmod(read_only, 0o555)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    try:
        before = _snapshot(tmp_path)
        start = time.time()
        for argv, fragment in (
                (_train_args(read_only, "--overwrite"), f"--out={str(read_only)!r} is read-only"),
                (_train_args(read_only / "sub"), "is read-only"),
                (_train_args(blocker / "sub"), "which is a file"),
                (["iris", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path / "iris"),
                  "--export-dir", str(blocker), "--quiet"], "--export-dir must be a folder"),
                (["iris", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path / "iris"),
                  "--export-dir", str(read_only / "exp"), "--quiet"], "is read-only")):
            code, err = main_exit(argv, capsys)
            assert code == 2 and len(err) == 1 and fragment in err[0], (argv, err)
        assert time.time() - start < 20  # no training ran
        assert _snapshot(tmp_path) == before
    finally:
        os.chmod(read_only, 0o755)


def test_iris_export_dir_that_is_a_file_in_a_subprocess(tmp_path):
    blocker = tmp_path / "export"
    blocker.write_text("x")
    proc = _cli("iris", "--out", str(tmp_path / "out"), "--export-dir", str(blocker))
    assert proc.returncode == 2
    assert own_stderr(proc.stderr) == [
        f"tfp-bnn iris: error: --export-dir must be a folder; it is an existing file. "
        f"Received: --export-dir={str(blocker)!r}"]
    assert sorted(os.listdir(tmp_path)) == ["export"] and blocker.read_text() == "x"


# --- 3. atomic results and the manifest ------------------------------------------------------

def test_manifest_lists_every_file_with_size_and_sha256(trained):
    manifest = json.loads((trained / results.MANIFEST).read_text())
    assert set(manifest["files"]) == set(train.OUTPUT_FILES)
    for name, entry in manifest["files"].items():
        payload = (trained / name).read_bytes()
        assert entry == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    assert results.verify(str(trained)) == frozenset(train.OUTPUT_FILES)


@pytest.mark.parametrize("damage, fragment", [
    ("drop_preprocessing", "preprocessing.json is listed in manifest.json but missing"),
    ("truncate_model", "model.keras does not match its size and sha256"),
    ("edit_metrics", "metrics.json does not match"),
    ("drop_manifest", "has no manifest.json"),
])
def test_predict_and_export_refuse_a_folder_that_is_not_as_written(damage, fragment, trained,
                                                                   tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    if damage == "drop_preprocessing":
        (folder / "preprocessing.json").unlink()
    elif damage == "truncate_model":
        payload = (folder / "model.keras").read_bytes()
        (folder / "model.keras").write_bytes(payload[:len(payload) // 2])
    elif damage == "edit_metrics":
        (folder / "metrics.json").write_text("{}")
    else:
        (folder / results.MANIFEST).unlink()
    before = _snapshot(tmp_path)
    for argv in (["predict", str(folder), IRIS, "--out", str(tmp_path / "p.csv")],
                 ["predict", str(folder / "model.keras"), IRIS, "--out", str(tmp_path / "p.csv")],
                 ["export", str(folder), str(tmp_path / "exp")]):
        code, err = main_exit(argv, capsys)
        assert code == 2 and len(err) == 1, (argv, err)
        assert fragment in err[0] or (damage == "drop_manifest" and "without a manifest.json"
                                      in err[0]), (argv, err)
    assert _snapshot(tmp_path) == before


def test_a_complete_folder_without_preprocessing_is_never_predicted_unscaled(trained, tmp_path,
                                                                             capsys):
    # Like a `tfp-bnn iris` folder: a valid manifest, a model trained on scaled inputs, no
    # preprocessing.json. Export needs no scaling; predicting raw CSV values would be wrong.
    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    (folder / "preprocessing.json").unlink()
    results.write_manifest(str(folder))
    for model in (folder, folder / "model.keras"):
        code, err = main_exit(["predict", str(model), IRIS, "--out", str(tmp_path / "p.csv")],
                               capsys)
        assert code == 2 and len(err) == 1 and "holds no preprocessing.json" in err[0], err
    assert not (tmp_path / "p.csv").exists()
    assert cli.main(["export", str(folder), str(tmp_path / "exp"), "--quiet"]) == 0
    assert (tmp_path / "exp" / "1" / "saved_model.pb").is_file()


def test_sigterm_at_a_random_moment_of_train_overwrite_leaves_old_or_new(tmp_path):
    # Four `train --overwrite` processes over four copies of the old results, started together
    # (their TensorFlow start-up overlaps); each gets SIGTERM at a random moment in the 2 s
    # after its staging folder appears: in training, writing, the swap, or after the end.
    csv = tmp_path / "tiny.csv"
    rows = data.load_iris().features[::5]
    csv.write_text("a,b,c,d,y\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]},{k % 2}\n"
                                           for k, r in enumerate(rows)))
    epochs = ["--epochs", "20"]
    # The old results: any complete folder of train's files (overwrite replaces it whole).
    old_run = tmp_path / "run0"
    old_run.mkdir()
    for name in train.OUTPUT_FILES:
        (old_run / name).write_text(json.dumps({"config": {"seed": 1}}))
    results.write_manifest(str(old_run))
    old = _snapshot(old_run)
    rng = random.Random(0)
    runs = []
    for i in range(4):
        out = tmp_path / f"run{i}"
        if i:
            shutil.copytree(tmp_path / "run0", out)
        argv = [sys.executable, "-m", "tfp_bnn.cli"] + _train_args(
            out, "--overwrite", *epochs, csv=csv, target="y", seed=2)
        runs.append({"out": out, "kill_at": None, "delay": rng.uniform(0.0, 2.0),
                     "proc": subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)})
    deadline = time.time() + 120
    while any(r["proc"].poll() is None for r in runs) and time.time() < deadline:
        names = os.listdir(tmp_path)
        for r in runs:
            if r["kill_at"] is None and any(n.startswith(f".{r['out'].name}.tmp-") for n in names):
                r["kill_at"] = time.time() + r["delay"]
            if r["kill_at"] is not None and time.time() >= r["kill_at"] \
                    and r["proc"].poll() is None:
                r["proc"].send_signal(signal.SIGTERM)
        time.sleep(0.005)
    outcomes = []
    for r in runs:
        code = r["proc"].wait(timeout=30)
        assert code in (0, -signal.SIGTERM), code
        results.verify(str(r["out"]))  # complete, whichever it is
        seed = json.loads((r["out"] / "metrics.json").read_text())["config"]["seed"]
        assert seed in (1, 2)
        if seed == 1:
            assert _snapshot(r["out"]) == old
        else:
            assert code == 0 or r["kill_at"] is not None
        outcomes.append((code, seed))
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no staging left
    assert any(seed == 1 and code == -signal.SIGTERM for code, seed in outcomes), outcomes
    # A killed run never blocks the next one.
    assert cli.main(_train_args(runs[0]["out"], "--overwrite", csv=csv, target="y")) == 0


def test_a_killed_runs_staging_is_removed_and_never_blocks_a_rerun(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.tmp-{dead.pid}-abcdef12"
    stale.mkdir()
    (stale / "model.keras").write_bytes(b"half")
    alive = tmp_path / f".run.tmp-{os.getpid()}-abcdef12"  # a live process's: kept
    alive.mkdir()
    with results.Staging(tmp_path / "run", owned=("a.txt",)) as stage:
        (open(os.path.join(stage.path, "a.txt"), "w")).write("new")
        assert not stale.exists() and alive.exists()
        stage.commit()
    assert (tmp_path / "run" / "a.txt").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == [alive.name, "run"]
    # Killed between the two renames of a swap without atomic exchange: old results restored.
    moved = tmp_path / f".other.tmp-{dead.pid}-abcdef12-old"
    moved.mkdir()
    (moved / "a.txt").write_text("old")
    with results.Staging(tmp_path / "other", owned=("a.txt",)):
        pass
    assert (tmp_path / "other" / "a.txt").read_text() == "old" and not moved.exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic_exchange", "two_renames"])
def test_overwrite_replaces_only_our_own_results(exchange, tmp_path, monkeypatch):
    if not exchange:
        monkeypatch.setattr(results, "_exchange", lambda a, b: False)
    elif sys.platform.startswith("linux"):  # the exchange really swaps two names here
        (tmp_path / "x").mkdir()
        (tmp_path / "y").mkdir()
        (tmp_path / "x" / "1").touch()
        assert results._exchange(str(tmp_path / "x"), str(tmp_path / "y"))
        assert os.listdir(tmp_path / "y") == ["1"] and os.listdir(tmp_path / "x") == []
        shutil.rmtree(tmp_path / "x")
        shutil.rmtree(tmp_path / "y")
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("old")
    (out / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files this job did not write \(notes.md\)"):
        results.Staging(out, overwrite=True, owned=("a.txt",))
    (out / "notes.md").unlink()
    with pytest.raises(FileExistsError, match="already holds a.txt.*--overwrite"):
        results.Staging(out, overwrite=False, owned=("a.txt",))
    with results.Staging(out, overwrite=True, owned=("a.txt",)) as stage:
        with open(os.path.join(stage.path, "a.txt"), "w") as f:
            f.write("new")
        assert (out / "a.txt").read_text() == "old"  # untouched until the swap
        stage.commit()
    assert (out / "a.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["run"]


def test_an_interrupted_job_leaves_the_old_results_and_no_staging(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with results.Staging(out, overwrite=True, owned=("a.txt",)) as stage:
            with open(os.path.join(stage.path, "a.txt"), "w") as f:
                f.write("half")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["run"]



def test_a_benchmark_json_is_written_whole_and_never_replaced_unasked(tmp_path):
    out = tmp_path / "bench.json"
    results.Staging(out, kind="file").write_json({"rows": [1, 2]})
    assert json.loads(out.read_text()) == {"rows": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]  # no staging file left
    with pytest.raises(FileExistsError, match="--overwrite"):
        results.Staging(out, kind="file")
    results.Staging(out, overwrite=True, kind="file").write_json([3])
    assert json.loads(out.read_text()) == [3] and sorted(os.listdir(tmp_path)) == ["bench.json"]


def test_a_results_folder_is_written_whole(tmp_path):
    out = tmp_path / "runs"
    stage = results.Staging(out, owned=("results.json", "table.md"))
    with pytest.raises(RuntimeError, match="entered"):
        stage.write("table.md", "too early")
    with stage:
        stage.write("results.json", {"nll": np.float32(0.25)}, default=float)
        stage.write("table.md", "| a |\n")
        assert not out.exists()  # nothing in place before the commit
        stage.commit()
    assert json.loads((out / "results.json").read_text()) == {"nll": 0.25}
    assert (out / "table.md").read_text() == "| a |\n"
    assert results.verify(out) == {"results.json", "table.md"}  # manifest matches


# Every result-writing script checks --out before any training, and keeps what it holds.
_SCRIPT_REFUSALS = [
    ("calibration_digits", ["--out", "{dir}"], 2),
    ("conformal_uci", ["{dir}", "--out", "{dir}"], 2),
    ("kl_temperature", ["--out", "{dir}"], 2),
    ("compare_methods", ["--quick", "--out", "{dir}"], FileExistsError),
    ("distill_report", ["--quick", "--out", "{dir}"], FileExistsError),
    ("compression", ["--out", "{dir}"], FileExistsError),
    ("uci_benchmark", ["--data-dir", "{dir}", "--method", "vi", "--out", "{file}"], SystemExit),
    ("compare_bayesian_torch", ["--out", "{file}"], SystemExit),
]


@pytest.mark.parametrize("script, argv, outcome", _SCRIPT_REFUSALS,
                         ids=[s for s, _, _ in _SCRIPT_REFUSALS])
def test_result_scripts_refuse_to_replace_results_unasked(script, argv, outcome, tmp_path,
                                                          capsys, monkeypatch):
    import importlib
    module = importlib.import_module(script)  # scripts/ is on the test run's path
    folder, file = tmp_path / "old", tmp_path / "old.json"
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    file.write_text("{}")
    # Anything past the check would train: make that fail loudly instead.
    monkeypatch.setattr(tfp_bnn, "bayesify", lambda *a, **k: pytest.fail("trained"))
    argv = [a.format(dir=folder, file=file) for a in argv]
    if isinstance(outcome, int):
        assert module.main(argv) == outcome
        message = capsys.readouterr().err
    else:
        with pytest.raises(outcome) as e:
            module.main(argv)
        message = str(e.value)
    assert "--overwrite" in message and "nothing was changed" in message, message
    assert (folder / "results.json").read_text() == "{}" and file.read_text() == "{}"
    assert sorted(os.listdir(folder)) == ["results.json"]
    assert sorted(os.listdir(tmp_path)) == ["old", "old.json"]

# --- 4. exports a server can read ------------------------------------------------------------

@pytest.fixture(scope="module")
def bnn():
    tf_keras.utils.set_random_seed(0)
    source = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
                                  tf_keras.layers.Dense(4, activation="relu"),
                                  tf_keras.layers.Dense(3)])
    return tfp_bnn.bayesify(source, num_train_examples=100)


def test_export_is_readable_by_another_user_whatever_the_umask(bnn, tmp_path):
    previous = os.umask(0o077)
    try:
        path = tfp_bnn.export_savedmodel(bnn, tmp_path / "m", num_samples=2)
    finally:
        os.umask(previous)
    modes = {os.path.relpath(p, path): stat.S_IMODE(os.stat(p).st_mode)
             for p in [path] + [os.path.join(r, n) for r, ds, fs in os.walk(path) for n in ds + fs]}
    assert modes["."] == 0o755 and modes["saved_model.pb"] == 0o644
    assert modes[os.path.join("assets.extra", "tf_serving_warmup_requests")] == 0o644
    for rel, mode in modes.items():
        expected = 0o755 if os.path.isdir(os.path.join(path, rel)) else 0o644
        assert mode == expected, (rel, oct(mode))


def test_an_interrupted_export_leaves_no_staging_folder(bnn, tmp_path, monkeypatch):
    from tfp_bnn._keras import tf

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tfp_bnn.export_savedmodel(bnn, tmp_path / "m", num_samples=2)
    assert os.listdir(tmp_path / "m") == []


# --- 7 and 8. predict: never silent NaN; lists, tables and seeds -----------------------------

def test_predict_raises_instead_of_returning_nan_for_huge_inputs(bnn):
    x = np.full((5, 4), 0.5, np.float32)
    x[3] = 1e30
    with pytest.raises(NonFiniteOutputError, match="example 3 of x") as caught:
        tfp_bnn.predict(bnn, x, num_samples=4, seed=0, batch_size=2)
    assert caught.value.index == 3
    pred = tfp_bnn.predict(bnn, x[:3], num_samples=4, seed=0)
    assert np.isfinite(pred.probabilities).all() and np.isfinite(pred.mutual_information).all()


def test_regression_csv_row_of_3e38_exits_2_naming_the_row(regression_run, tmp_path, capsys):
    out, csv = regression_run
    lines = csv.read_text().splitlines()
    lines[5] = "3e38,0.5,0.0"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    code, err = main_exit(["predict", str(out), str(bad), "--out", str(tmp_path / "p.csv")],
                           capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{str(bad)!r} data row 5" in err[0]
    assert not (tmp_path / "p.csv").exists()
    # The good rows predict finite means and variances in the written CSV.
    assert cli.main(["predict", str(out), str(csv), "--out", str(tmp_path / "ok.csv"),
                     "--quiet"]) == 0
    text = (tmp_path / "ok.csv").read_text().lower()
    assert "nan" not in text and "inf" not in text


def test_lists_and_dataframes_predict_like_arrays(bnn):
    import pandas as pd

    x = np.random.default_rng(0).uniform(size=(6, 4)).astype(np.float32)
    expected = tfp_bnn.predict(bnn, x, num_samples=3, seed=1).probabilities
    for given in (x.tolist(), pd.DataFrame(x, columns=list("abcd"))):
        got = tfp_bnn.predict(bnn, given, num_samples=3, seed=1).probabilities
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="rows differ in length"):
        tfp_bnn.predict(bnn, [[0.1, 0.2, 0.3, 0.4], [0.1]], num_samples=2)


@pytest.mark.parametrize("seed", ["abc", 2 ** 70, 1.5, -1, True])
def test_bad_seeds_are_errors_naming_seed(bnn, seed):
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"seed must be an integer.*Received: seed="):
        tfp_bnn.predict(bnn, x, num_samples=2, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        train.TrainConfig(seed=seed)


def test_cli_seed_out_of_range_is_one_line(tmp_path, capsys):
    code, err = main_exit(_train_args(tmp_path / "out", seed=2 ** 70), capsys)
    assert code == 2 and len(err) == 1 and "--seed" in err[0] and str(2 ** 70) in err[0]
    assert os.listdir(tmp_path) == []


def test_a_fixed_seed_depends_on_the_batch_size_as_documented(bnn):
    x = np.random.default_rng(0).uniform(size=(8, 4)).astype(np.float32)
    a = tfp_bnn.predict(bnn, x, num_samples=5, seed=3, batch_size=8).probabilities
    b = tfp_bnn.predict(bnn, x, num_samples=5, seed=3, batch_size=8).probabilities
    c = tfp_bnn.predict(bnn, x, num_samples=5, seed=3, batch_size=4).probabilities
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # other batches, other (seed, batch index) streams
