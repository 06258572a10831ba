"""Time per training step of `fit`: Flipout and reparameterisation against the deterministic model.

    python scripts/benchmark_training.py [--quick] [--rounds 40] [--steps 10] [--jit]

Two models in tf_keras, each as the deterministic original and bayesified with
``estimator="flipout"`` and ``"reparameterization"`` (``num_train_examples=N``):

* MLP 64-256-256-10 (ReLU);
* CNN 28x28x1 -> Conv 32 (3x3, ReLU) -> Conv 64 (3x3, ReLU) -> max-pool 2 -> Dense 128 (ReLU)
  -> Dense 10.

Every variant is compiled as a user would (Adam, sparse categorical cross-entropy from logits;
``--jit`` adds ``jit_compile=True`` variants of the same models) and timed through the function
`fit` runs per step (``model.make_train_function()`` called on an iterator of a cached, repeated
dataset of random batches of 128). After a warm-up, the variants of one model alternate: each
round times ``--steps`` steps of each variant in turn, so a load spike from other processes hits
them alike. The table gives the median (p50) ms per step over the rounds and the ratio to the
deterministic model of the same run, with the load average before and after.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 128


def _models(tf_keras):
    L = tf_keras.layers

    def mlp():
        return tf_keras.Sequential([tf_keras.Input((64,)), L.Dense(256, activation="relu"),
                                    L.Dense(256, activation="relu"), L.Dense(10)], name="mlp")

    def cnn():
        return tf_keras.Sequential([
            tf_keras.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"),
            L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(), L.Flatten(),
            L.Dense(128, activation="relu"), L.Dense(10)], name="cnn")

    return {"MLP 64-256-256-10": (mlp, (64,)), "CNN conv32-conv64-dense128": (cnn, (28, 28, 1))}


def _step_fn(tf, tf_keras, model, shape, jit):
    """The per-step train function of `fit` for ``model`` on random batches of `BATCH`."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 8 * BATCH
    x = rng.normal(size=(n,) + shape).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache().repeat()
    model.compile(tf_keras.optimizers.Adam(1e-3),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # builds the optimizer and traces
    train_function = model.make_train_function()
    iterator = iter(data)

    def step():
        logs = train_function(iterator)
        return float(logs["loss"])  # waits for the step, as fit's callbacks do

    return step


def _variants(name, jit):
    import tfp_bnn
    from tfp_bnn._keras import tf, tf_keras

    build, shape = _models(tf_keras)[name]
    out = {}
    for jit_compile in ((False, True) if jit else (False,)):
        tag = " jit" if jit_compile else ""
        out["deterministic" + tag] = _step_fn(tf, tf_keras, build(), shape, jit_compile)
        for estimator in ("flipout", "reparameterization"):
            bnn = tfp_bnn.bayesify(build(), estimator=estimator, num_train_examples=60000)
            out[estimator + tag] = _step_fn(tf, tf_keras, bnn, shape, jit_compile)
    return out


def _time(variants, rounds, steps, warmup):
    for step in variants.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[k].append((time.perf_counter() - start) / steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 rounds of 5 steps (a smoke run)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant and round")
    parser.add_argument("--jit", action="store_true", help="add jit_compile=True variants")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    args = parser.parse_args(argv)
    rounds, steps, warmup = (8, 5, 5) if args.quick else (args.rounds, args.steps, 10)

    import tensorflow as tf

    wanted = [m.strip().lower() for m in args.models.split(",")]
    names = [n for n in _models(__import__("tfp_bnn")._keras.tf_keras)
             if n.split()[0].lower() in wanted]
    before = _loadavg()
    rows = []
    for name in names:
        p50 = _time(_variants(name, args.jit), rounds, steps, warmup)
        for variant, ms in p50.items():
            det = p50["deterministic jit" if variant.endswith(" jit") else "deterministic"]
            rows.append((name, variant, ms, ms / det, ms / p50["deterministic"]))
    print(f"TensorFlow {tf.__version__}, batch {BATCH}, {rounds} rounds x {steps} steps "
          f"(p50 ms per step), load average {before} before, {_loadavg()} after")
    print()
    print("| model | variant | ms / step (p50) | x deterministic (same jit) | x deterministic |")
    print("|---|---|---|---|---|")
    for name, variant, ms, ratio, plain in rows:
        print(f"| {name} | {variant} | {ms:.2f} | {ratio:.2f}x | {plain:.2f}x |")


if __name__ == "__main__":
    main()
