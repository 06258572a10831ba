"""Latency of exported signatures, loaded as TF Serving loads them: MC vs deterministic vs a loop.

For an MLP (4-64-64-3, the Iris net), a small CNN (8x8x1 -> Conv 8 -> Conv 16 -> Dense 10), a
Functional CNN with a skip connection, a MobileNet-style depthwise CNN and a small Transformer
encoder (`MODELS`), each Flipout-converted and exported with `tfp_bnn.export_savedmodel`, every SavedModel is loaded
into its own ``tf.compat.v1.Session`` with ``tf.compat.v1.saved_model.loader.load`` (what TF
Serving's C++ loader does) and called by the signature's tensor names, fetching every output:

* ``deterministic``: one pass with the posterior means;
* ``mc``: ``serving_default`` (S = 10) or ``predict_with_samples`` (any other S, e.g. 100), S
  posterior draws in one graph;
* ``mc_shared``: the same signatures of an export with ``noise="shared"`` (one weight
  perturbation per request, Flipout signs per copy);
* ``naive_loop``: a SavedModel whose signature calls the Keras model S times, unrolled (S
  sequential single-sample Flipout passes on the [B, ...] batch), then the same summary.

The variants of one (model, batch, S) are called round-robin, one call each per round, so a load
spike from other processes hits them alike; p50/p95 come from ``calls`` rounds after warm-up
(rows with S > 10 stop early after ``budget`` seconds; the table gives each row's n). `report`
renders a markdown table in ms and the ratios the export and performance issues set as targets.

Used by ``tfp-bnn benchmark`` (small defaults) and ``python scripts/benchmark_serving.py`` (the
full run of BENCHMARKS.md).

Example:
    >>> result = run(models=("mlp",), calls=5, batch_sizes=(1,), samples=(10,),
    ...              log=lambda *args, **kwargs: None)
    >>> sorted({row["variant"] for row in result["rows"]})
    ['deterministic', 'mc', 'mc_shared', 'naive_loop']
    >>> text = report(result)                   # the BENCHMARKS.md table (timings vary)
"""
import datetime
import os
import platform
import tempfile
import time

import numpy as np

from tfp_bnn import options
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.convert import bayesify
from tfp_bnn.export import export_savedmodel, served_summary

__all__ = ["MODELS", "run", "report", "naive_loop_export", "Signature", "time_round_robin"]

EXPORT_SAMPLES = 10  # S of the exported serving_default signature


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


def cnn_skip():
    """The performance issue's small Functional CNN: Conv 16 -> BN -> Conv 16 + skip -> pool ->
    Dense 32 -> Dense 10."""
    inp = tf_keras.Input((16, 16, 3), name="image")
    h = tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = tf_keras.layers.BatchNormalization()(h)
    r = tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = tf_keras.layers.MaxPooling2D()(tf_keras.layers.Add()([h, r]))
    h = tf_keras.layers.Dense(32, activation="relu")(tf_keras.layers.Flatten()(h))
    return tf_keras.Model(inp, tf_keras.layers.Dense(10)(h), name="cnn_skip")


def mobilenet():
    """A MobileNet-style CNN: a strided stem, two depthwise-separable blocks (depthwise 3x3 ->
    BN -> ReLU6 -> pointwise 1x1), global pooling, Dense 10."""
    inp = tf_keras.Input((32, 32, 3), name="image")
    h = tf_keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu6")(inp)
    for filters, stride in ((32, 1), (64, 2)):
        h = tf_keras.layers.DepthwiseConv2D(3, strides=stride, padding="same")(h)
        h = tf_keras.layers.ReLU(6.0)(tf_keras.layers.BatchNormalization()(h))
        h = tf_keras.layers.Conv2D(filters, 1, activation="relu6")(h)
    h = tf_keras.layers.GlobalAveragePooling2D()(h)
    return tf_keras.Model(inp, tf_keras.layers.Dense(10)(h), name="mobilenet")


def transformer():
    """A small Transformer encoder block: 16 tokens of width 32, MultiHeadAttention (4 heads of
    8) + residual + LayerNorm, FFN 64 + residual + LayerNorm, mean pooling, Dense 10."""
    inp = tf_keras.Input((16, 32), name="tokens")
    a = tf_keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)(inp, inp)
    h = tf_keras.layers.LayerNormalization()(tf_keras.layers.Add()([inp, a]))
    f = tf_keras.layers.Dense(64, activation="relu")(h)
    f = tf_keras.layers.Dense(32)(f)
    h = tf_keras.layers.LayerNormalization()(tf_keras.layers.Add()([h, f]))
    h = tf_keras.layers.GlobalAveragePooling1D()(h)
    return tf_keras.Model(inp, tf_keras.layers.Dense(10)(h), name="transformer")


MODELS = {"mlp": mlp, "cnn": cnn, "cnn_skip": cnn_skip, "mobilenet": mobilenet,
          "transformer": transformer}


def naive_loop_export(model, num_samples, path):
    """A SavedModel whose signature calls the model S times (the baseline to beat)."""
    name = model.inputs[0]._keras_history[0].name
    spec = tf.TensorSpec([None] + list(model.inputs[0].shape[1:]), tf.float32, name=name)
    module = tf.Module()
    module.vars = list(model.variables)

    @tf.function(input_signature=[spec])
    def loop(x):
        samples = tf.stack([model(x, training=False) for _ in range(num_samples)])
        return served_summary(samples, "multiclass")

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


def run(models=("mlp", "cnn"), calls=500, budget=240.0, batch_sizes=(1, 256), samples=(10, 100),
        log=print):
    """Export, load and time every (model, batch, S); returns rows, target checks, environment.

    Args:
        models: names from `MODELS`.
        calls: round-robin rounds per (model, batch, S).
        budget: seconds after which rows with S other than 10 stop (0: no limit).
        batch_sizes, samples: the batch sizes B and sample counts S to time.
        log: a print-like function for one progress line per (model, batch, S).

    Returns:
        ``{"rows": [...], "checks": [...], "environment": {...}}``; a row holds model, batch, S,
        variant, n, p50, p95 (ms); a check what, value, target, met, other.
    """
    models, batch_sizes, samples = tuple(models), tuple(batch_sizes), tuple(samples)
    if not models or any(m not in MODELS for m in models):
        raise ValueError(f"models must name some of {sorted(MODELS)}. "
                         f"Received: models={list(models)!r}")
    for name, values in (("batch_sizes", batch_sizes), ("samples", samples)):
        if not values:
            raise ValueError(f"{name} must name at least one size. Received: {name}={values!r}")
        for v in values:
            options.integer(name, v, minimum=1)
    options.integer("calls", calls, minimum=1)
    options.number("budget", budget, 0)  # seconds
    tf_keras.utils.set_random_seed(0)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as root:
        for name in models:
            bnn = bayesify(MODELS[name](), estimator="flipout", num_train_examples=1000)
            export = export_savedmodel(bnn, os.path.join(root, name), num_samples=EXPORT_SAMPLES)
            shared = export_savedmodel(bnn, os.path.join(root, f"{name}_shared"),
                                       num_samples=EXPORT_SAMPLES, noise="shared")
            in_name = bnn.inputs[0]._keras_history[0].name
            loops = {s: naive_loop_export(bnn, s, os.path.join(root, f"{name}_loop{s}"))
                     for s in samples}
            for batch in batch_sizes:
                x = np.random.default_rng(batch).random((batch, *bnn.inputs[0].shape[1:]),
                                                         dtype=np.float32)
                det = Signature(export, "deterministic", {in_name: x})
                for s in samples:
                    mc, mc_shared = (
                        Signature(path, "serving_default", {in_name: x})
                        if s == EXPORT_SAMPLES else
                        Signature(path, "predict_with_samples",
                                  {in_name: x, "num_samples": np.int32(s)})
                        for path in (export, shared))
                    loop = Signature(loops[s], "serving_default", {in_name: x})
                    times = time_round_robin({"deterministic": det, "mc": mc,
                                              "mc_shared": mc_shared, "naive_loop": loop},
                                             calls, budget if s != EXPORT_SAMPLES else 0)
                    for variant, t in times.items():
                        rows.append(dict(model=name, batch=batch, S=s, variant=variant, n=len(t),
                                         p50=float(np.percentile(t, 50)),
                                         p95=float(np.percentile(t, 95))))
                    log(f"done {name} batch={batch} S={s} n={len(times['mc'])}", flush=True)
    environment = {"date": str(datetime.date.today()), "cpus": os.cpu_count(),
                   "cpu": platform.processor() or platform.machine(), "tf": tf.__version__,
                   "load_start": load_start[0], "load_end": os.getloadavg()[0]}
    return {"rows": rows, "checks": _checks(rows), "environment": environment}


def _get(rows, model, batch, s, variant):
    return next((r for r in rows if (r["model"], r["batch"], r["S"], r["variant"]) ==
                 (model, batch, s, variant)), None)


def _checks(rows):
    """The latency targets of the export and performance issues, for the rows that were timed."""
    checks = []

    def ratio(what, value, target, limit, other, at_most=True):
        checks.append(dict(what=what, value=value, target=target, other=other,
                           met=value <= limit if at_most else value >= limit))

    for name in MODELS:
        det = _get(rows, name, 1, 10, "deterministic")
        for variant, limit in (("mc", 1.5), ("mc_shared", 1.2)):
            mc = _get(rows, name, 1, 10, variant)
            if mc and det:
                ratio(f"{name} batch 1, S=10: {variant} p95 / deterministic p95",
                      mc["p95"] / det["p95"], f"<= {limit}", limit,
                      f"p50: {mc['p50'] / det['p50']:.2f}")
    mc, det = _get(rows, "mlp", 256, 10, "mc"), _get(rows, "mlp", 256, 10, "deterministic")
    if mc and det:
        ratio("mlp batch 256, S=10: mc p95 / deterministic p95", mc["p95"] / det["p95"],
              "<= 3", 3.0, f"p50: {mc['p50'] / det['p50']:.2f}")
    for name in ("mlp", "cnn"):
        mc, loop = _get(rows, name, 256, 10, "mc"), _get(rows, name, 256, 10, "naive_loop")
        if mc and loop:
            ratio(f"{name} batch 256, S=10: naive loop p50 / mc p50", loop["p50"] / mc["p50"],
                  ">= 5", 5.0, f"p95: {loop['p95'] / mc['p95']:.2f}", at_most=False)
    for name in ("cnn", "cnn_skip", "mobilenet"):
        mc, det = _get(rows, name, 256, 10, "mc"), _get(rows, name, 256, 10, "deterministic")
        if mc and det:
            ratio(f"{name} batch 256, S=10: mc p50 / (10 x deterministic p50)",
                  mc["p50"] / (10 * det["p50"]), "<= 0.4", 0.4,
                  f"p95: {mc['p95'] / (10 * det['p95']):.2f}")
    return checks


def report(result):
    """The environment line and two markdown tables (latencies, targets) of a `run` result."""
    env, rows = result["environment"], result["rows"]
    lines = ["", f"{env['date']}, {env['cpus']} CPUs ({env['cpu']}), TF {env['tf']}, "
             f"load average {env['load_start']:.1f} at start and {env['load_end']:.1f} at end", "",
             "| model | batch | S | variant | n | p50 ms | p95 ms | p50 / det | p95 / det |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = _get(rows, r["model"], r["batch"], r["S"], "deterministic")
        lines.append(f"| {r['model']} | {r['batch']} | {r['S']} | {r['variant']} | {r['n']} | "
                     f"{r['p50']:.3f} | {r['p95']:.3f} | {r['p50'] / d['p50']:.2f} | "
                     f"{r['p95'] / d['p95']:.2f} |")
    lines += ["", "| target | value | target | met | other percentile |", "|---|---:|---|---|---|"]
    for c in result["checks"]:
        lines.append(f"| {c['what']} | {c['value']:.2f} | {c['target']} | "
                     f"{'yes' if c['met'] else 'no'} | {c['other']} |")
    return "\n".join(lines)
