"""tfp_bnn against IntelLabs bayesian-torch: the same Flipout MLP trained and predicted by both.

The recipe: scikit-learn digits (8x8 pixels / 16, 10 classes; a stratified 80/20 split saved
once as .npy and read by both sides), a 64-128-128-10 Flipout MLP, Adam (same lr), batch 64,
30 epochs, loss = cross-entropy + KL / N (N training examples, the KL summed over weights),
S = 30 Monte Carlo samples at prediction on the whole test set in one batch.

Both sides start from the same init where the libraries allow: posterior means ~ N(0, 0.1)
(tfp_bnn: the Keras layers' ``RandomNormal(stddev=0.1)`` kernel and bias initialisers),
posterior sigma = softplus(-3) (bayesian-torch draws rho ~ N(-3, 0.1), tfp_bnn sets rho = -3
exactly), Bayesian biases with the N(0, 1) prior on both (``MeanField(bayesian_bias=True)``).

bayesian-torch is never a dependency of tfp_bnn: it runs in its own virtual environment,
created on first use at ``--venv`` (pinned torch CPU wheel, numpy, bayesian-torch with
``--no-deps``: its layers import only torch; the torchvision/tensorboard/scikit-learn it declares
are for its examples). Each side runs in a fresh subprocess per repeat, alternating tfp_bnn,
torch, tfp_bnn, torch, ..., with the same intra-op thread count (``--threads``) and one
inter-op thread on both.

What is timed:
* train seconds: tfp_bnn, the one ``model.fit(..., epochs, batch_size)`` call (its tf.data
  pipeline from the arrays, per-epoch shuffle, the loss/nll/kl metrics, callbacks); torch, the
  epoch loop (per-epoch ``randperm``, index slicing, forward, KL, backward, Adam step). Not
  timed on either side: imports, model building, and a warm-up step on one full and one partial
  batch (tfp_bnn's graph trace) after which the initial weights and a fresh optimiser state
  are restored.
* predict seconds: the median of ``--predict-calls`` calls after one warm-up call
  (tfp_bnn: ``tfp_bnn.predict(model, x_test, num_samples=S, batch_size=len(x_test))``, its
  compiled graph cached from the warm-up; torch: S forward passes under ``no_grad`` and the
  mean of their softmax, as bayesian-torch's README predicts).
* accuracy and NLL of the mean predictive probabilities (first timed call), computed here by
  the same numpy code for both.

    python scripts/compare_bayesian_torch.py --out benchmarks/bayesian_torch.json
    python scripts/compare_bayesian_torch.py --quick          # smoke run: 3 epochs, 1 repeat
    python scripts/compare_bayesian_torch.py --calibrate 0.2  # tfp_bnn +T, no torch run

Prints a markdown table of medians over repeats and the ratios tfp_bnn / bayesian-torch.

``--calibrate FRACTION`` runs tfp_bnn's side only: each repeat trains on the training split
minus a stratified FRACTION carve (a temperature fitted on examples the net was trained on would
look better than it is on new ones) and fits ``tfp_bnn.calibrate(..., method="temperature")``
on the carve, then reports test accuracy, NLL and ECE (15 bins) before and after against
bayesian-torch's scores read from ``--reference`` (a full run's JSON; it trained on the whole
training split, so the calibrated side is handicapped by the carve, not helped).
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SIDE = os.path.join(HERE, "_bayesian_torch_side.py")
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "tfp_bnn", "bayesian-torch")
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PINS = {"torch": "torch==2.13.0+cpu", "numpy": "numpy==2.4.6",
        "bayesian_torch": "bayesian-torch==0.5.0"}
HIDDEN = (128, 128)
RHO_INIT = -3.0  # bayesian-torch's posterior_rho_init


# ---------------------------------------------------------------------------------------------
# The peer's environment and the shared data
# ---------------------------------------------------------------------------------------------
def ensure_venv(venv):
    """The peer's python, creating the venv with the pinned packages if it is missing."""
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        print(f"creating the bayesian-torch environment at {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run(pip + ["--index-url", TORCH_INDEX, PINS["torch"]], check=True)
        subprocess.run(pip + [PINS["numpy"]], check=True)
        subprocess.run(pip + ["--no-deps", PINS["bayesian_torch"]], check=True)
    check = subprocess.run([python, "-c", "import torch, numpy, bayesian_torch.layers"],
                           capture_output=True, text=True, env=_env(1, peer=True))
    if check.returncode != 0:
        sys.exit(f"--venv {venv!r} has no working torch/bayesian_torch:\n{check.stderr[-2000:]}")
    return python


def save_digits(data_dir, seed=0, test_fraction=0.2):
    """The split both sides read: x as float32 pixels / 16, y as int32 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y.astype(np.int32), test_size=test_fraction,
        stratify=y, random_state=seed)
    for name, a in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test),
                    ("y_test", y_test)):
        np.save(os.path.join(data_dir, name + ".npy"), a)
    return y_test


def _env(threads, peer=False, omp_wait_policy="PASSIVE"):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2")
    # torch's OpenMP threads spin at barriers by default: on 2 shared cores with other load a
    # descheduled spinner made a batch-64 step 348 ms instead of 7 ms. PASSIVE makes them sleep.
    if omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    if peer:  # the peer's python must not see this project's packages
        env.pop("PYTHONPATH", None)
    return env


# ---------------------------------------------------------------------------------------------
# tfp_bnn's side (run in its own subprocess by `compare`)
# ---------------------------------------------------------------------------------------------
def tfp_bnn_side(data_dir, out_dir, epochs, batch_size, lr, num_samples, seed, threads,
                 predict_calls, val_fraction=None):
    """Train and predict with tfp_bnn; writes ``tfp_bnn.json`` and ``tfp_bnn_probs.npy``.

    ``val_fraction``: train on the training split minus a stratified carve of this share
    (seed 2000 + seed; KL weight 1 / the examples trained on), fit
    ``tfp_bnn.calibrate(model, x_val, y_val, method="temperature")`` on the carve with the same
    S, and also write the test probabilities of one seeded prediction before and after
    (``tfp_bnn_seeded_probs.npy``, ``tfp_bnn_cal_probs.npy``) and ``temperature`` in the
    JSON. Trained on the carve too, the temperature would be fitted on examples the net has
    fitted, where it looks better calibrated than on new ones.
    """
    from tfp_bnn._keras import tf, tf_keras

    if threads is not None:  # None: TensorFlow already started in this process (a test)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    import tfp_bnn
    from tfp_bnn.posteriors import MeanField

    load = lambda name: np.load(os.path.join(data_dir, name + ".npy"))  # noqa: E731
    x_train, y_train, x_test = load("x_train"), load("y_train"), load("x_test")
    if val_fraction:
        from sklearn.model_selection import train_test_split
        x_train, x_val, y_train, y_val = train_test_split(
            x_train, y_train, test_size=val_fraction, stratify=y_train, random_state=2000 + seed)
    tf_keras.utils.set_random_seed(seed)
    init = lambda: tf_keras.initializers.RandomNormal(stddev=0.1)  # noqa: E731
    layers = [tf_keras.Input((x_train.shape[1],))]
    for units in HIDDEN:
        layers.append(tf_keras.layers.Dense(units, activation="relu", kernel_initializer=init(),
                                            bias_initializer=init()))
    layers.append(tf_keras.layers.Dense(int(y_train.max()) + 1, kernel_initializer=init(),
                                        bias_initializer=init()))
    posterior = MeanField(init_scale=float(np.log1p(np.exp(RHO_INIT))), bayesian_bias=True)
    bnn = tfp_bnn.bayesify(tf_keras.Sequential(layers), estimator="flipout", posterior=posterior,
                           num_train_examples=len(x_train))
    bnn.compile(tf_keras.optimizers.Adam(lr),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    # Warm-up: trace the train function for a full and a partial batch, then restore the
    # initial weights and zero the optimiser's step counter and moments.
    initial = bnn.get_weights()
    rest = len(x_train) % batch_size or batch_size
    bnn.fit(x_train[:batch_size + rest], y_train[:batch_size + rest], epochs=1,
            batch_size=batch_size, shuffle=False, verbose=0)
    bnn.set_weights(initial)
    for v in bnn.optimizer.variables:
        v.assign(tf.zeros_like(v))

    start = time.perf_counter()
    history = bnn.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    train_seconds = time.perf_counter() - start

    run = lambda: tfp_bnn.predict(bnn, x_test, num_samples=num_samples,  # noqa: E731
                                  batch_size=len(x_test), verbose=0).probabilities
    run()  # warm-up: traces and caches the MC graph
    times, probs = [], None
    for _ in range(predict_calls):
        start = time.perf_counter()
        p = run()
        times.append(time.perf_counter() - start)
        probs = p if probs is None else probs
    np.save(os.path.join(out_dir, "tfp_bnn_probs.npy"), probs)
    calibration = {}
    if val_fraction:
        cal = tfp_bnn.calibrate(bnn, x_val, y_val, method="temperature",
                                num_samples=num_samples, seed=seed)
        # Both seeded alike: the same MC draws before and after, so only T differs.
        for name, model in (("tfp_bnn_seeded_probs", bnn), ("tfp_bnn_cal_probs", cal)):
            np.save(os.path.join(out_dir, name + ".npy"), tfp_bnn.predict(
                model, x_test, num_samples=num_samples, seed=seed, batch_size=len(x_test),
                verbose=0).probabilities)
        calibration = {"temperature": cal.temperature, "val_fraction": val_fraction,
                       "trained_on": len(x_train), "validation_nll": list(cal.validation_nll)}
    from importlib.metadata import version
    result = {**calibration, "train_seconds": train_seconds, "predict_seconds": times,
              "final_epoch_loss": float(history.history["loss"][-1]), "threads": threads,
              "optimizer_steps": int(bnn.optimizer.iterations.numpy()),
              "tensorflow": tf.__version__, "tf_keras": version("tf-keras"),
              "tensorflow_probability": version("tensorflow-probability")}
    with open(os.path.join(out_dir, "tfp_bnn.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


# ---------------------------------------------------------------------------------------------
# The alternating run
# ---------------------------------------------------------------------------------------------
def _scores(probs, y):
    from tfp_bnn import metrics  # the ECE of both sides by the same code

    p = np.clip(probs[np.arange(len(y)), y], 1e-12, None)
    return {"accuracy": float(np.mean(probs.argmax(1) == y)), "nll": float(-np.mean(np.log(p))),
            "ece": metrics.expected_calibration_error(probs, y, num_bins=15)}


def _side_command(side, peer_python, data_dir, out_dir, args, seed):
    common = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--lr", args.lr,
              "--num-samples", args.num_samples, "--seed", seed, "--threads", args.threads,
              "--predict-calls", args.predict_calls]
    common = [str(c) for c in common]
    if side == "torch":
        return [peer_python, TORCH_SIDE, data_dir, out_dir, "--kl", args.kl] + common
    if args.calibrate:
        common += ["--calibrate", str(args.calibrate)]
    return [sys.executable, os.path.abspath(__file__), "--side", "tfp_bnn", data_dir,
            out_dir] + common


@contextlib.contextmanager
def _digits_dir():
    """A temporary folder holding the saved digits split: (folder, data folder, y_test)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        os.makedirs(data_dir)
        yield tmp, data_dir, save_digits(data_dir)


def calibrated(args):
    """tfp_bnn's side only, temperature-scaled (``--calibrate``), against the stored peer run.

    Per repeat (seed + r, a fresh process each): train on the training split minus a stratified
    ``args.calibrate`` carve, calibrate on the carve, score the test split before and after.
    bayesian-torch is not rerun: its NLL and accuracy are read from ``args.reference`` (the
    JSON a full run wrote; it trained on the whole training split).
    """
    with open(args.reference) as f:
        reference = json.load(f)
    runs = []
    load_start = open("/proc/loadavg").read().split()[:3]
    with _digits_dir() as (tmp, data_dir, y_test):
        for r in range(args.repeats):
            out_dir = os.path.join(tmp, f"tfp_bnn_{r}")
            os.makedirs(out_dir)
            proc = subprocess.run(_side_command("tfp_bnn", None, data_dir, out_dir, args,
                                                args.seed + r),
                                  capture_output=True, text=True,
                                  env=_env(args.threads, omp_wait_policy=args.omp_wait_policy))
            if proc.returncode != 0:
                sys.exit(f"tfp_bnn side failed (repeat {r}):\n{proc.stderr[-3000:]}")
            with open(os.path.join(out_dir, "tfp_bnn.json")) as f:
                result = json.load(f)
            result["uncalibrated"] = _scores(
                np.load(os.path.join(out_dir, "tfp_bnn_seeded_probs.npy")), y_test)
            result["calibrated"] = _scores(
                np.load(os.path.join(out_dir, "tfp_bnn_cal_probs.npy")), y_test)
            runs.append(result)
            print(f"repeat {r}: T {result['temperature']:.3f}, nll "
                  f"{result['uncalibrated']['nll']:.4f} -> {result['calibrated']['nll']:.4f}, "
                  f"ece {result['uncalibrated']['ece']:.4f} -> {result['calibrated']['ece']:.4f}",
                  file=sys.stderr)
    summary = {kind: {key: statistics.median(r[kind][key] for r in runs)
                      for key in ("accuracy", "nll", "ece")}
               for kind in ("uncalibrated", "calibrated")}
    summary["temperature"] = statistics.median(r["temperature"] for r in runs)
    summary["torch"] = reference["summary"]["torch"]
    config = _config(args, ("epochs", "batch_size", "lr", "num_samples", "threads", "repeats",
                            "seed", "calibrate", "reference"), load_start)
    return {"config": config, "summary": summary, "runs": runs}


def calibrated_table(result):
    s, c = result["summary"], result["config"]
    torch = s["torch"]
    lines = [f"digits 64-128-128-10 Flipout, {c['epochs']} epochs, S = {c['num_samples']}, "
             f"tfp_bnn trained on {1 - c['calibrate']:.0%} of the training split and "
             f"temperature-scaled on the other {c['calibrate']:.0%}; medians of "
             f"{c['repeats']} repeats; bayesian-torch from {c['reference']}", "",
             "| side | accuracy | NLL | ECE |", "|---|---:|---:|---:|",
             f"| bayesian-torch (all of the training split) | {torch['accuracy']:.4f} | "
             f"{torch['nll']:.4f} | " + (f"{torch['ece']:.4f}" if "ece" in torch else "—")
             + " |"]
    for kind, name in (("uncalibrated", "tfp_bnn"),
                       ("calibrated", f"tfp_bnn +T (T = {s['temperature']:.3f})")):
        r = s[kind]
        lines.append(f"| {name} | {r['accuracy']:.4f} | {r['nll']:.4f} | {r['ece']:.4f} |")
    cal = s["calibrated"]
    lines += ["", f"calibrated NLL < bayesian-torch's ({torch['nll']:.4f}): "
              + ("met" if cal["nll"] < torch["nll"] else "missed")
              + f"; calibrated ECE <= 0.03: {'met' if cal['ece'] <= 0.03 else 'missed'}"]
    return "\n".join(lines)


def compare(args):
    peer_python = ensure_venv(args.venv)
    runs = {"tfp_bnn": [], "torch": []}
    load_start = open("/proc/loadavg").read().split()[:3]
    with _digits_dir() as (tmp, data_dir, y_test):
        for r in range(args.repeats):
            for side in ("tfp_bnn", "torch"):
                out_dir = os.path.join(tmp, f"{side}_{r}")
                os.makedirs(out_dir)
                cmd = _side_command(side, peer_python, data_dir, out_dir, args, args.seed + r)
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env=_env(args.threads, side == "torch",
                                               args.omp_wait_policy))
                if proc.returncode != 0:
                    sys.exit(f"{side} side failed (repeat {r}):\n{proc.stderr[-3000:]}")
                with open(os.path.join(out_dir, f"{side}.json")) as f:
                    result = json.load(f)
                result.update(_scores(np.load(os.path.join(out_dir, f"{side}_probs.npy")),
                                      y_test))
                result["predict_median_seconds"] = statistics.median(result["predict_seconds"])
                runs[side].append(result)
                print(f"repeat {r} {side}: train {result['train_seconds']:.2f} s, predict "
                      f"{result['predict_median_seconds'] * 1e3:.1f} ms, accuracy "
                      f"{result['accuracy']:.4f}, nll {result['nll']:.4f}", file=sys.stderr)
    summary = {side: {key: statistics.median(r[key] for r in rs)
                      for key in ("train_seconds", "predict_median_seconds", "accuracy", "nll")}
               for side, rs in runs.items()}
    summary["ratio"] = {key: summary["tfp_bnn"][key] / summary["torch"][key]
                        for key in ("train_seconds", "predict_median_seconds")}
    config = _config(args, ("epochs", "batch_size", "lr", "num_samples", "threads", "repeats",
                            "predict_calls", "seed", "kl", "omp_wait_policy"), load_start)
    return {"config": config, "summary": summary, "runs": runs}


def _config(args, keys, load_start):
    """The run's settings and the load averages at its start and end (for the JSON)."""
    config = {k: getattr(args, k) for k in keys}
    config["load_average_start"] = load_start
    config["load_average_end"] = open("/proc/loadavg").read().split()[:3]
    return config


def table(result):
    s, c = result["summary"], result["config"]
    lines = [f"digits 64-128-128-10 Flipout, batch {c['batch_size']}, {c['epochs']} epochs, "
             f"S = {c['num_samples']}, {c['threads']} threads, medians of {c['repeats']} "
             f"alternating repeats (load average {' '.join(c['load_average_start'])} -> "
             f"{' '.join(c['load_average_end'])})", "",
             "| side | train s | predict ms | accuracy | NLL |", "|---|---:|---:|---:|---:|"]
    for side, name in (("tfp_bnn", "tfp_bnn"), ("torch", "bayesian-torch")):
        r = s[side]
        lines.append(f"| {name} | {r['train_seconds']:.2f} | "
                     f"{r['predict_median_seconds'] * 1e3:.1f} | {r['accuracy']:.4f} | "
                     f"{r['nll']:.4f} |")
    lines.append(f"| tfp_bnn / bayesian-torch | {s['ratio']['train_seconds']:.2f}x | "
                 f"{s['ratio']['predict_median_seconds']:.2f}x | | |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("tfp_bnn",), help="internal: run one side")
    parser.add_argument("dirs", nargs="*", help="internal: DATA_DIR OUT_DIR of --side")
    parser.add_argument("--venv", default=DEFAULT_VENV,
                        help="bayesian-torch's virtual environment (created if missing)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds (3)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (30)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, both sides")
    parser.add_argument("--predict-calls", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kl", choices=("sum", "library"), default="sum",
                        help="bayesian-torch's KL: the summed ELBO KL, or get_kl_loss as is")
    parser.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "default"),
                        default="PASSIVE", help="OMP_WAIT_POLICY of both sides ('default': unset)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 epochs, 1 repeat")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--calibrate", type=float, default=None, metavar="FRACTION",
                        help="tfp_bnn side only: train on the training split minus a "
                             "stratified FRACTION carve, temperature-scale on the carve, and "
                             "compare with the peer's scores in --reference (no torch run)")
    parser.add_argument("--reference", default=os.path.join(
        os.path.dirname(HERE), "benchmarks", "bayesian_torch.json"),
        help="a full run's JSON, read by --calibrate")
    args = parser.parse_args(argv)
    if args.calibrate is not None and not 0 < args.calibrate < 1:
        parser.error(f"--calibrate must be a fraction in (0, 1). Received: {args.calibrate}")
    if args.side:
        tfp_bnn_side(*args.dirs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     num_samples=args.num_samples, seed=args.seed, threads=args.threads,
                     predict_calls=args.predict_calls, val_fraction=args.calibrate)
        return 0
    if args.epochs is None:
        args.epochs = 3 if args.quick else 30
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    try:  # checked before any run; written whole, in one rename
        if args.out:  # tfp_bnn (TensorFlow) is imported here only when a result is kept
            from tfp_bnn.results import Staging
        stage = args.out and Staging(args.out, args.overwrite, argument="--out", kind="file")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    if args.calibrate:
        result = calibrated(args)
        print(calibrated_table(result))
    else:
        result = compare(args)
        print(table(result))
    if stage:
        stage.write_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
