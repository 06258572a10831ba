"""bayesify over the models Keras users have: every keras.applications family, both Kerases.

Each row is one model (the family's smallest member, ``weights=None``, a small input, 10
classes; plus Transformers written with ``layers.Add`` and with ``x + y``, a Keras 3 model
written with ``keras.ops``, and subclassed models), run in its own process:

    bayesify (defaults) -> one fit step (finite loss) -> predict S=10 (probabilities sum to 1)
    -> export_savedmodel -> load in a fresh process that never imports TFP (sums to 1 again)

and reports parameters, Bayesian / convertible layers, seconds to convert (and per million
parameters), train-step ms deterministic vs Bayesian, predict ms at S=10 and the SavedModel
size deterministic vs Bayesian. Rows are appended to a JSON-lines file as they finish, so an
interrupted run keeps what it measured; ``--table`` prints the Markdown table of such a file.

Usage:
    python scripts/corpus_benchmark.py --out /tmp/corpus.jsonl [--only MobileNetV3Small]
    python scripts/corpus_benchmark.py --table /tmp/corpus.jsonl [/tmp/rerun.jsonl]
    python scripts/corpus_benchmark.py --convert-only --out /tmp/convert.jsonl  # bayesify only,
        # and the time of a plain copy of the same model (the rebuild without Bayesian layers)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

FAMILIES = ["MobileNetV3Small", "MobileNetV2", "MobileNet", "EfficientNetB0", "RegNetX002",
            "EfficientNetV2B0", "DenseNet121", "NASNetMobile", "ConvNeXtTiny", "Xception",
            "InceptionV3", "ResNet50V2", "ResNet50", "VGG16", "InceptionResNetV2"]
EXTRA = ["Transformer(layers.Add)", "Transformer(x + y)", "keras.ops model", "Subclassed"]
KERASES = ["keras3", "tf_keras"]
BATCH = 4
CLASSES = 10

# Loads the export as TF Serving would, in a process that imports neither TFP nor tfp_bnn.
FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, shape = sys.argv[1], json.loads(sys.argv[2])
    x = np.random.default_rng(0).uniform(0, 255, size=shape).astype(np.float32)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    out = serve(**{name: tf.constant(x)})
    p = out["probabilities"].numpy()
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert not any(m.split(".")[0] == "tfp_bnn" for m in sys.modules), "tfp_bnn was imported"
    print(json.dumps({"max_sum_error": float(np.abs(p.sum(-1) - 1).max())}))
""")


def _size_of(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files) / 2 ** 20


def _input_size(family):
    return 75 if family.startswith(("Inception", "Xception")) else 32


def build(name, which):
    """The source model of one row (Keras 3 or tf_keras), and its input shape."""
    if which == "keras3":
        import keras as K
    else:
        import tf_keras as K
    if name in FAMILIES:
        size = _input_size(name)
        if not hasattr(K.applications, name):
            raise LookupError(f"{which} has no keras.applications.{name}")
        return getattr(K.applications, name)(weights=None, input_shape=(size, size, 3),
                                             classes=CLASSES), (size, size, 3)
    if name.startswith("Transformer"):
        return _transformer(K, plus=name.endswith("(x + y)")), (16, 3)
    if name == "keras.ops model":
        if which != "keras3":
            raise LookupError("keras.ops exists only in Keras 3")
        return _ops_model(K), (8, 8, 3)
    return _subclassed(K), (8, 8, 3)


def _transformer(K, plus):
    L = K.layers
    inp = K.Input((16, 3))
    x = L.Dense(32)(inp)
    for _ in range(2):
        a = L.MultiHeadAttention(4, 8)(x, x, use_causal_mask=True)
        x = L.LayerNormalization()(x + a if plus else L.Add()([x, a]))
        f = L.Dense(32)(L.Dense(64, activation="gelu")(x))
        x = L.LayerNormalization()(x + f if plus else L.Add()([x, f]))
    return K.Model(inp, L.Dense(CLASSES, activation="softmax")(L.GlobalAveragePooling1D()(x)))


def _ops_model(K):
    ops, L = K.ops, K.layers
    inp = K.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same")(inp / 255.0)
    x = ops.relu(x) * 0.5 + ops.square(x) * 0.01
    x = ops.concatenate([ops.mean(x, axis=(1, 2)), ops.max(x, axis=(1, 2))], axis=-1)
    x = ops.reshape(L.Dense(16, activation="hard_silu")(x), (-1, 4, 4))
    x = ops.sum(ops.transpose(x, (0, 2, 1)), axis=-1)
    return K.Model(inp, L.Dense(CLASSES, activation="softmax")(x))


def _subclassed(K):
    L = K.layers

    class Net(K.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.conv = L.Conv2D(8, 3, activation="relu")
            self.pool = L.GlobalAveragePooling2D()
            self.hidden = L.Dense(16, activation="relu")
            self.head = L.Dense(CLASSES, activation="softmax")

        def call(self, x):
            return self.head(self.hidden(self.pool(self.conv(x / 255.0))))

    net = Net()
    net(np.zeros((1, 8, 8, 3), np.float32))  # built: its input shape is known
    return net


def _step_ms(model, x, y, steps=2):
    model.train_on_batch(x, y)  # compiles
    start = time.perf_counter()
    losses = [model.train_on_batch(x, y) for _ in range(steps)]
    ms = (time.perf_counter() - start) / steps * 1e3
    loss = losses[-1][0] if isinstance(losses[-1], (list, tuple)) else losses[-1]
    return ms, float(loss)


def run_one(name, which, convert_only=False):
    """Measure one row (in this process); a dict of the measures and the chain's outcome
    (``convert_only``: stop after timing bayesify)."""
    import tensorflow as tf
    import tf_keras
    import tfp_bnn
    from tfp_bnn import convert, replay

    row = {"model": name, "keras": which}
    model, shape = build(name, which)
    row["params"] = int(model.count_params())
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(BATCH,) + shape).astype("float32")
    y = np.arange(BATCH) % CLASSES
    row["convertible"] = sum(convert._is_convertible_class(l) for l in replay.all_layers(model))

    start = time.perf_counter()
    try:
        bnn = tfp_bnn.bayesify(model, num_train_examples=1000)
    except ValueError as err:
        row.update(stage="bayesify", error=str(err)[:300])
        return row
    row["convert_s"] = time.perf_counter() - start
    row["convert_s_per_mparam"] = row["convert_s"] / (row["params"] / 1e6)
    bayesian_classes = {cls for kinds in convert.ESTIMATORS.values() for cls in kinds.values()}
    row["bayesian"] = sum(type(l) in bayesian_classes for l in replay.all_layers(bnn))
    if convert_only:
        # The floor of any conversion that rebuilds the graph: the same walk copying every
        # layer (a faithful tf_keras copy, as tf_keras.models.clone_model of a tf_keras model).
        start = time.perf_counter()
        replay.replay(model)
        row["copy_s"] = time.perf_counter() - start
        row["stage"] = "converted"
        return row

    row["stage"] = "train"
    if which == "keras3":
        import keras
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy())
    else:
        model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy())
    row["train_ms_det"], _ = _step_ms(model, x, y)
    bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy())
    row["train_ms_bayes"], loss = _step_ms(bnn, x, y)
    row["loss_finite"] = bool(np.isfinite(loss))

    row["stage"] = "predict"
    tfp_bnn.predict(bnn, x, num_samples=10, seed=0)
    start = time.perf_counter()
    pred = tfp_bnn.predict(bnn, x, num_samples=10, seed=1)
    row["predict_ms_s10"] = (time.perf_counter() - start) * 1e3
    row["sum_error"] = float(np.abs(pred.probabilities.sum(-1) - 1).max())

    row["stage"] = "export"
    with tempfile.TemporaryDirectory() as tmp:
        det_dir = os.path.join(tmp, "det")
        if which == "keras3":
            model.export(det_dir, verbose=False)
        else:
            tf.saved_model.save(model, det_dir)
        row["savedmodel_mb_det"] = _size_of(det_dir)
        path = tfp_bnn.export_savedmodel(bnn, os.path.join(tmp, "bnn"), num_samples=10)
        row["savedmodel_mb_bayes"] = _size_of(path)
        row["stage"] = "fresh load"
        proc = subprocess.run([sys.executable, "-c", FRESH, path, json.dumps([2] + list(shape))],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            row["error"] = proc.stderr.strip().splitlines()[-1][:300]
            return row
        row["fresh_sum_error"] = json.loads(proc.stdout.strip().splitlines()[-1])["max_sum_error"]
    row["stage"] = "done"
    row["passed"] = (row["loss_finite"] and row["sum_error"] < 1e-4
                     and row["fresh_sum_error"] < 1e-4)
    return row


def _rows(only):
    names = only or EXTRA + FAMILIES  # small and fast first
    return [(n, k) for n in names for k in KERASES]


def _refused_by_design(row):
    """A Keras 3 subclassed model: its call() is not a graph, bayesify says what to do."""
    return (row["model"], row["keras"], row.get("stage")) == ("Subclassed", "keras3", "bayesify")


def table(*paths):
    """The Markdown table of JSON-lines result files (a later file's row of the same model and
    Keras replaces the earlier one, marked "rerun")."""
    head = ("| model | Keras | params | Bayesian / convertible | convert s (s per M) | "
            "train step ms det / Bayes | predict ms S=10 | SavedModel MB det / Bayes | chain |")
    lines = [head, "|" + "---|" * 9]
    rows = {}
    for i, path in enumerate(paths):
        with open(path) as f:
            for line in filter(str.strip, f):
                r = json.loads(line)
                r["rerun"] = i > 0
                rows[r["model"], r["keras"]] = r
    for r in rows.values():
        if r.get("stage") == "absent":
            continue

        def num(key, fmt):
            return format(r[key], fmt) if key in r else "-"

        chain = ("pass" if r.get("passed") else
                 f"converted (conversion only; a plain copy {r['copy_s']:.1f} s, "
                 f"{r['copy_s'] / (r['params'] / 1e6):.2f} s per M)"
                 if r.get("stage") == "converted" else
                 f"refused, as documented: {r['error'][:60]}..." if _refused_by_design(r) else
                 f"FAIL at {r.get('stage')}: {r.get('error', '')}")
        chain += " (rerun)" if r["rerun"] else ""
        lines.append(
            f"| {r['model']} | {r['keras']} | {num('params', ',')} | "
            f"{num('bayesian', 'd')} / {num('convertible', 'd')} | "
            f"{num('convert_s', '.1f')} ({num('convert_s_per_mparam', '.2f')}) | "
            f"{num('train_ms_det', '.0f')} / {num('train_ms_bayes', '.0f')} | "
            f"{num('predict_ms_s10', '.0f')} | "
            f"{num('savedmodel_mb_det', '.1f')} / {num('savedmodel_mb_bayes', '.1f')} | "
            f"{chain} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="append one JSON line per model here")
    parser.add_argument("--only", nargs="*", help="model names (default: the whole corpus)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    parser.add_argument("--table", nargs="+",
                        help="print the Markdown table of result files (later ones: reruns)")
    parser.add_argument("--convert-only", action="store_true",
                        help="time bayesify only (no fit/predict/export): the conversion table")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "KERAS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        print(table(*args.table))
        return
    if args.one:
        try:
            row = run_one(*args.one, convert_only=args.convert_only)
        except LookupError as err:
            row = {"model": args.one[0], "keras": args.one[1], "stage": "absent",
                   "error": str(err)}
        print("ROW " + json.dumps(row))
        return
    if not args.out:
        parser.error("--out is required (or --table)")
    for name, which in _rows(args.only):
        start = time.perf_counter()
        try:
            extra = ["--convert-only"] if args.convert_only else []
            proc = subprocess.run([sys.executable, __file__, "--one", name, which] + extra,
                                  capture_output=True, text=True, timeout=args.timeout)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("ROW ")]
            row = (json.loads(lines[-1][4:]) if lines else
                   {"model": name, "keras": which, "stage": "crashed",
                    "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]})
        except subprocess.TimeoutExpired:
            row = {"model": name, "keras": which, "stage": "timeout",
                   "error": f"over {args.timeout:.0f} s"}
        row["wall_s"] = time.perf_counter() - start
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
