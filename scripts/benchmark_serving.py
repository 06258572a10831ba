"""Latency of exported signatures, loaded as TF Serving loads them: MC vs deterministic vs a loop.

For an MLP (4-64-64-3, the Iris net) and a small CNN (8x8x1 -> Conv 8 -> Conv 16 -> Dense 10),
each Flipout-converted and exported with `tfp_bnn.export_savedmodel`, every SavedModel is loaded
into its own ``tf.compat.v1.Session`` with ``tf.compat.v1.saved_model.loader.load`` (what TF
Serving's C++ loader does) and called by the signature's tensor names, fetching every output:

* ``deterministic``: one pass with the posterior means;
* ``mc``: ``serving_default`` (S = 10) and ``predict_with_samples`` (S = 100), S posterior draws
  in one graph;
* ``naive_loop``: a SavedModel whose signature calls the Keras model S times, unrolled (S
  sequential single-sample Flipout passes on the [B, ...] batch), then the same summary.

The variants of one (model, batch, S) are called round-robin, one call each per round, so a load
spike from other processes hits them alike; p50/p95 come from ``--calls`` rounds after warm-up
(rows with S = 100 stop early after ``--budget`` seconds; the table gives each row's n). It
prints a markdown table in ms and the ratios the export issue sets as targets. Usage:

    python scripts/benchmark_serving.py [--calls 500] [--budget 240] [--out results.json]
"""
import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import numpy as np

import tfp_bnn
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.export import _serving_summary


def mlp():
    inp = tf_keras.Input((4,), name="features")
    h = tf_keras.layers.Dense(64, activation="relu")(inp)
    h = tf_keras.layers.Dense(64, activation="relu")(h)
    return tf_keras.Model(inp, tf_keras.layers.Dense(3)(h), name="mlp")


def cnn():
    inp = tf_keras.Input((8, 8, 1), name="image")
    h = tf_keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = tf_keras.layers.Flatten()(h)
    return tf_keras.Model(inp, tf_keras.layers.Dense(10)(h), name="cnn")


def naive_loop_export(model, num_samples, path):
    """A SavedModel whose signature calls the model S times (the baseline to beat)."""
    name = model.inputs[0]._keras_history[0].name
    spec = tf.TensorSpec([None] + list(model.inputs[0].shape[1:]), tf.float32, name=name)
    module = tf.Module()
    module.vars = list(model.variables)

    @tf.function(input_signature=[spec])
    def loop(x):
        samples = tf.stack([model(x, training=False) for _ in range(num_samples)])
        return _serving_summary(samples, "classification")

    tf.saved_model.save(module, path, signatures={"serving_default": loop.get_concrete_function()})
    return path


class Signature:
    """One signature of a SavedModel in its own v1 Session, called by tensor names."""

    def __init__(self, path, name, feeds):
        graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
        sig = meta.signature_def[name]
        fetches = [sig.outputs[k].name for k in sorted(sig.outputs)]
        feed_names = [sig.inputs[k].name for k in feeds]
        self.call = self.session.make_callable(fetches, feed_list=feed_names)
        self.args = list(feeds.values())

    def __call__(self):
        return self.call(*self.args)


def time_round_robin(variants, calls, budget, warmup=20):
    """{name: [ms per call]}: one call of each variant per round."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    start = time.perf_counter()
    for _ in range(calls):
        for k, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1000.0)
        if budget and time.perf_counter() - start > budget:
            break
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="rounds per (model, batch, S)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which rows with S = 100 stop (0: no limit)")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    tf_keras.utils.set_random_seed(0)
    root = tempfile.mkdtemp(prefix="bench_serving_")
    load_start = os.getloadavg()
    rows = []
    for name in args.models.split(","):
        bnn = tfp_bnn.bayesify({"mlp": mlp, "cnn": cnn}[name](), estimator="flipout",
                               num_train_examples=1000)
        export = tfp_bnn.export_savedmodel(bnn, os.path.join(root, name), num_samples=10)
        in_name = bnn.inputs[0]._keras_history[0].name
        loops = {s: naive_loop_export(bnn, s, os.path.join(root, f"{name}_loop{s}"))
                 for s in (10, 100)}
        for batch in (1, 256):
            x = np.random.default_rng(batch).random((batch, *bnn.inputs[0].shape[1:]),
                                                     dtype=np.float32)
            det = Signature(export, "deterministic", {in_name: x})
            for s in (10, 100):
                mc = (Signature(export, "serving_default", {in_name: x}) if s == 10 else
                      Signature(export, "predict_with_samples",
                                {in_name: x, "num_samples": np.int32(s)}))
                loop = Signature(loops[s], "serving_default", {in_name: x})
                times = time_round_robin({"deterministic": det, "mc": mc, "naive_loop": loop},
                                         args.calls, args.budget if s == 100 else 0)
                for variant, t in times.items():
                    rows.append(dict(model=name, batch=batch, S=s, variant=variant, n=len(t),
                                     p50=float(np.percentile(t, 50)),
                                     p95=float(np.percentile(t, 95))))
                print(f"done {name} batch={batch} S={s} n={len(times['mc'])}", flush=True)

    def get(model, batch, s, variant):
        return next(r for r in rows if (r["model"], r["batch"], r["S"], r["variant"]) ==
                    (model, batch, s, variant))

    cpu = platform.processor() or platform.machine()
    print(f"\n{datetime.date.today()}, {os.cpu_count()} CPUs ({cpu}), TF {tf.__version__}, "
          f"load average {load_start[0]:.1f} at start and {os.getloadavg()[0]:.1f} at end\n")
    print("| model | batch | S | variant | n | p50 ms | p95 ms | p50 / det | p95 / det |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        d = get(r["model"], r["batch"], r["S"], "deterministic")
        print(f"| {r['model']} | {r['batch']} | {r['S']} | {r['variant']} | {r['n']} | "
              f"{r['p50']:.3f} | {r['p95']:.3f} | {r['p50'] / d['p50']:.2f} | "
              f"{r['p95'] / d['p95']:.2f} |")

    checks = []
    if "mlp" in args.models:
        for batch, limit in ((1, 1.5), (256, 3.0)):
            mc, det = get("mlp", batch, 10, "mc"), get("mlp", batch, 10, "deterministic")
            value = mc["p95"] / det["p95"]
            checks.append((f"MLP batch {batch}, S=10: MC p95 / deterministic p95", value,
                           f"<= {limit}", value <= limit, f"p50: {mc['p50'] / det['p50']:.2f}"))
    for name in ("mlp", "cnn"):
        if name in args.models:
            mc, loop = get(name, 256, 10, "mc"), get(name, 256, 10, "naive_loop")
            checks.append((f"{name.upper()} batch 256, S=10: naive loop p50 / MC p50",
                           loop["p50"] / mc["p50"], ">= 5", loop["p50"] / mc["p50"] >= 5,
                           f"p95: {loop['p95'] / mc['p95']:.2f}"))
    if "cnn" in args.models:
        mc, det = get("cnn", 256, 10, "mc"), get("cnn", 256, 10, "deterministic")
        value = mc["p50"] / (10 * det["p50"])
        checks.append(("CNN batch 256, S=10: MC p50 / (10 x deterministic p50)", value,
                       "<= 1.3", value <= 1.3, f"p95: {mc['p95'] / (10 * det['p95']):.2f}"))
    print("\n| target | value | target | met | other percentile |")
    print("|---|---:|---|---|---|")
    for what, value, target, met, other in checks:
        print(f"| {what} | {value:.2f} | {target} | {'yes' if met else 'no'} | {other} |")
    if args.out:
        with open(args.out, "w") as f:
            keys = ("what", "value", "target", "met", "other")
            json.dump({"rows": rows, "checks": [dict(zip(keys, c)) for c in checks]}, f, indent=2)


if __name__ == "__main__":
    main()
