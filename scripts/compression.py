"""Bayesian compression on scikit-learn digits: dense vs sparse VD vs the group prior.

Two nets on the 8x8 digits (1,797 images, a stratified 70/30 train/test split per seed):

    MLP   64-300-100-10 (LeNet-300-100 style, ReLU)
    CNN   conv 6@3x3 - pool - conv 16@3x3 - pool - 120 - 84 - 10 (LeNet-5 style, 'same' padding)

For each: the dense deterministic net (Adam 1e-3, ``--dense-epochs``); sparse variational
dropout (``bayesify(prior="log_uniform")``) and the group normal-Jeffreys prior
(``prior="group_normal_jeffreys"``), both with posterior means from the trained dense net,
sigma 0.01, KL weight 1/N warmed up linearly to a temperature, Adam on the per-net schedule
of `SCHEDULES`, local reparameterisation for the MLP, Flipout for the CNN. Each Bayesian net
is compressed with ``tfp_bnn.compress(threshold=3.0)`` and the compressed net is exported with
`tfp_bnn.export_savedmodel`: test accuracy of the compressed (posterior-mean) net and of the
uncompressed posterior mean, weights kept, hidden units kept, bits per weight, compression
ratio, served latency (one example, the loaded SavedModel's signature, median of 200 calls),
SavedModel size (and its variables/ part), and the factor the removed units imply: the dense
net's parameters over the float32 parameters the compressed net still stores (pruned weights
are stored as zeros). Mean over seeds. Every draw is seeded (the seed of the run), so a run
repeats its figures.

The schedules were set on 20 % validation carves of the training split (``--validate``
reports on a carve instead of the test split, ``--carve`` picks which); the test split is only
read for the reported figures.

    python scripts/compression.py                     # seeds 0 1 2, writes runs/compression
    python scripts/compression.py --seeds 0 --validate --carve 1 --nets mlp --methods group

Writes ``results.json`` and ``results.md`` (and their manifest) into ``--out``, atomically;
existing results are kept unless ``--overwrite``.
"""
import argparse
import os
import tempfile
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tfp_bnn
from tfp_bnn import results
from tfp_bnn._keras import tf, tf_keras

METHODS = ("dense", "sparse VD", "group prior")


def data(seed, validate, carve=0):
    """(x_train, y_train, x_eval, y_eval): the seed's test split, or with ``validate`` a 20 %
    carve of its training split (carve c > 0: another random carve of the same split)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    if validate:
        x_tr, x_te, y_tr, y_te = train_test_split(x_tr, y_tr, test_size=0.2, stratify=y_tr,
                                                  random_state=seed + 1000 * carve)
    return x_tr, y_tr, x_te, y_te


def mlp():
    return tf_keras.Sequential([
        tf_keras.Input((64,)), tf_keras.layers.Dense(300, activation="relu"),
        tf_keras.layers.Dense(100, activation="relu"), tf_keras.layers.Dense(10)])


def cnn():
    layers = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((64,)), layers.Reshape((8, 8, 1)),
        layers.Conv2D(6, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
        layers.Flatten(), layers.Dense(120, activation="relu"),
        layers.Dense(84, activation="relu"), layers.Dense(10)])


ARCHS = {"MLP 64-300-100-10": (mlp, "local_reparameterization"),
         "CNN LeNet-5 style": (cnn, "flipout")}
# The training schedule per (net, method), set on validation carves of the training split
# (BENCHMARKS.md says which): Adam's rate, the epochs of linear KL warm-up, the epochs in all,
# the epochs at the full rate after the warm-up, the rate's geometric decay after those (the
# rate at the last epoch over ``lr``) and the KL temperature the warm-up ends at (1: the
# ELBO). ``--sparse-lr`` and the like override a field for both nets.
SCHEDULE_FIELDS = ("lr", "warmup", "epochs", "hold", "decay", "temperature")
SCHEDULES = {
    ("mlp", "sparse"): dict(lr=1e-3, warmup=100, epochs=100, hold=0, decay=1.0, temperature=0.2),
    ("mlp", "group"): dict(lr=3e-3, warmup=20, epochs=170, hold=120, decay=0.1, temperature=0.3),
    ("cnn", "sparse"): dict(lr=1e-3, warmup=100, epochs=100, hold=0, decay=1.0, temperature=1.0),
    ("cnn", "group"): dict(lr=3e-3, warmup=20, epochs=100, hold=0, decay=1.0, temperature=1.0),
}
LOSS = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=512, verbose=0), -1) == y))


def _bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def served(model, tmp):
    """(median latency in ms of one example through the loaded signature, SavedModel bytes,
    bytes of its variables/ folder)."""
    path = tfp_bnn.export_savedmodel(model, os.path.join(tmp, model.name), num_samples=1)
    size, variables = _bytes(path), _bytes(os.path.join(path, "variables"))
    fn = tf.saved_model.load(path).signatures["serving_default"]
    name = list(fn.structured_input_signature[1])[0]
    x = tf.zeros([1] + list(model.input_shape[1:]))
    for _ in range(10):
        fn(**{name: x})
    times = []
    for _ in range(200):
        start = time.perf_counter()
        fn(**{name: x})
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times)), size, variables


def stored(model):
    """Parameters the model's float32 arrays hold (zeros included)."""
    return int(sum(np.prod(w.shape) for w in model.get_weights()))


def hidden_units(report):
    rows = report["layers"][:-1]  # the output layer keeps its units
    return sum(r["units_kept"] for r in rows), sum(r["units"] for r in rows)


def schedule_of(arch, key, args):
    """`SCHEDULES` of net ``arch`` and method ``key``, with the command line's overrides."""
    chosen = dict(SCHEDULES[(arch.split()[0].lower(), key)])
    for field in SCHEDULE_FIELDS:
        if getattr(args, f"{key}_{field}") is not None:
            chosen[field] = getattr(args, f"{key}_{field}")
    return chosen


def rate_schedule(lr, warmup, epochs, decay, hold=0):
    """Adam's learning rate per epoch: ``lr`` through the KL warm-up and ``hold`` epochs more,
    then geometric down to ``lr * decay`` at the last epoch (``decay=1``: constant)."""
    start = warmup + hold

    def rate(epoch, _):
        if epoch < start or epochs - start <= 1:
            return lr
        return lr * decay ** ((epoch - start) / (epochs - start - 1))
    return tf_keras.callbacks.LearningRateScheduler(rate)


def run(seed, args, tmp):
    x_tr, y_tr, x_te, y_te = data(seed, args.validate, args.carve)
    out = {}
    for arch, (build, estimator) in ARCHS.items():
        if arch.split()[0].lower() not in args.nets:
            continue
        tf_keras.utils.set_random_seed(seed)
        dense = build()
        dense.compile(tf_keras.optimizers.Adam(1e-3), LOSS)
        dense.fit(x_tr, y_tr, epochs=args.dense_epochs, batch_size=64, verbose=0)
        n_weights = int(sum(np.prod(w.shape) for w in dense.get_weights()))
        latency, size, variables = served(dense, tmp)
        rows = {"dense": {"accuracy": accuracy(dense, x_te, y_te), "nonzero_fraction": 1.0,
                          "weights_kept": n_weights, "units": "-", "bits": 32,
                          "compression_ratio": 1.0, "latency_ms": latency, "savedmodel_bytes": size,
                          "variables_bytes": variables, "stored_params": stored(dense)}}
        for method, key, prior in (("sparse VD", "sparse", "log_uniform"),
                                   ("group prior", "group", "group_normal_jeffreys")):
            if key not in args.methods:
                continue
            plan = schedule_of(arch, key, args)
            lr, warmup, epochs, hold, decay, temperature = (plan[k] for k in SCHEDULE_FIELDS)
            tf_keras.utils.set_random_seed(seed)
            bnn = tfp_bnn.bayesify(dense, estimator=estimator, prior=prior,
                                   posterior=tfp_bnn.posteriors.MeanField(init_scale=0.01,
                                                                          from_weights=True),
                                   num_train_examples=len(x_tr))
            bnn.compile(tf_keras.optimizers.Adam(lr), LOSS)
            callbacks = [tfp_bnn.callbacks.KLAnnealing(warmup_epochs=warmup,
                                                       temperature=temperature),
                         rate_schedule(lr, warmup, epochs, decay, hold)]
            bnn.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)
            result = tfp_bnn.compress(bnn, threshold=args.threshold)
            report = result.report
            kept, total = hidden_units(report)
            latency, size, variables = served(result.model, tmp)
            # The uncompressed posterior mean: what pruning at the threshold costs on top.
            mean_acc = float(np.mean(np.argmax(tfp_bnn.sampling.mean_outputs(bnn, x_te), -1)
                                     == y_te))
            rows[method] = {
                "accuracy": accuracy(result.model, x_te, y_te), "posterior_mean_accuracy": mean_acc,
                "nonzero_fraction": report["nonzero_fraction"],
                "weights_kept": report["weights_kept"], "units": f"{kept}/{total}",
                "units_kept": kept, "units_total": total,
                "bits": report["bits_per_weight"], "compression_ratio": report["compression_ratio"],
                "latency_ms": latency, "savedmodel_bytes": size, "variables_bytes": variables,
                "stored_params": stored(result.model), "layers": report["layers"]}
            print(f"seed {seed} {arch} {method}: acc {rows[method]['accuracy']:.4f} "
                  f"(posterior mean {mean_acc:.4f}, dense {rows['dense']['accuracy']:.4f}) "
                  f"kept {report['nonzero_fraction']:.4f} units {kept}/{total}", flush=True)
        out[arch] = rows
    return out


def table(runs):
    lines = ["| net | method | test accuracy | posterior mean, uncompressed | non-zero weights "
             "| hidden units kept | bits/weight | compression ratio | served latency (ms) "
             "| SavedModel (KiB) | of it variables (KiB) | dense / stored parameters |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch in runs[0]:
        for method in (m for m in METHODS if m in runs[0][arch]):
            rs = [r[arch][method] for r in runs]
            mean = {k: float(np.mean([r[k] for r in rs])) for k in (
                "accuracy", "nonzero_fraction", "weights_kept", "bits", "compression_ratio",
                "latency_ms", "savedmodel_bytes", "variables_bytes", "stored_params")}
            dense_params = float(np.mean([r[arch]["dense"]["stored_params"] for r in runs]))
            uncompressed = ("-" if method == "dense" else
                            f"{100 * np.mean([r['posterior_mean_accuracy'] for r in rs]):.2f} %")
            units = ("all" if method == "dense" else
                     f"{np.mean([r['units_kept'] for r in rs]):.0f} / {rs[0]['units_total']}")
            lines.append(
                f"| {arch} | {method} | {100 * mean['accuracy']:.2f} % | {uncompressed} | "
                f"{100 * mean['nonzero_fraction']:.2f} % ({mean['weights_kept']:.0f}) | {units} | "
                f"{mean['bits']:.1f} | {mean['compression_ratio']:.0f}x | "
                f"{mean['latency_ms']:.3f} | {mean['savedmodel_bytes'] / 1024:.0f} | "
                f"{mean['variables_bytes'] / 1024:.0f} | "
                f"{dense_params / mean['stored_params']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nets", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    parser.add_argument("--dense-epochs", type=int, default=60)
    parser.add_argument("--methods", nargs="+", choices=["sparse", "group"],
                        default=["sparse", "group"])
    for key in ("sparse", "group"):
        for field, kind, text in (
                ("lr", float, "Adam's learning rate"),
                ("warmup", float, "epochs of linear KL warm-up"),
                ("epochs", int, "epochs in all"),
                ("hold", float, "epochs at the full rate after the warm-up"),
                ("decay", float, "learning rate at the last epoch over the full rate "
                                 "(geometric after the hold; 1: constant)"),
                ("temperature", float, "KL multiplier the warm-up ends at (1: the ELBO)")):
            parser.add_argument(f"--{key}-{field}", type=kind, default=None,
                                help=f"{text}; default: SCHEDULES")
    parser.add_argument("--threshold", type=float, default=3.0)
    parser.add_argument("--validate", action="store_true",
                        help="report on a validation carve of the training split")
    parser.add_argument("--carve", type=int, default=0,
                        help="which random 20 %% carve --validate holds out (0: the first)")
    parser.add_argument("--out", default="runs/compression")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    # Checked before any training (and before any process-wide setting below); written into a
    # staging folder that replaces --out in one rename, so a killed run never leaves a
    # results.json without its results.md.
    stage = results.Staging(args.out, overwrite=args.overwrite, argument="--out",
                            owned=("results.json", "results.md"))
    # Same seed, same table: the training draws take their op seeds from set_random_seed, and
    # determinism fixes the order-dependent CPU kernels (reductions over threads) too.
    tf.config.experimental.enable_op_determinism()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(seed, args, tmp) for seed in args.seeds]
    md = table(runs)
    schedules = {f"{arch} {key}": schedule_of(arch, key, args)
                 for arch in ARCHS if arch.split()[0].lower() in args.nets for key in args.methods}
    with stage:
        stage.write("results.json", {"args": vars(args), "schedules": schedules, "runs": runs},
                    default=str)
        stage.write("results.md", md + "\n")
        stage.commit()
    print(md)


if __name__ == "__main__":
    main()
