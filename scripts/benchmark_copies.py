"""Served MC latency of last-layer-Bayesian models: the trunk once (`tfp_bnn.copies`) vs S times.

`tfp_bnn.sampling.sample_outputs` runs the layers before a model's first random layer once, on
the B rows, and only the rest on S copies. This script measures what that buys where it applies:
`tfp_bnn.benchmark`'s models converted with ``bayesify(..., layers="last")`` (a deterministic
trunk, one Bayesian Dense head), exported twice from the same weights - once as the library
exports now, once with the walk disabled (every layer on S tiled copies, the export before
`tfp_bnn.copies`) - and timed round-robin with the deterministic signature, loaded as TF Serving
loads them (`tfp_bnn.benchmark.Signature`). Prints p50 / p95 in ms and the ratios to the
deterministic signature.

    python scripts/benchmark_copies.py [--models cnn_skip,mobilenet] [--batch-sizes 1,32]
"""
import argparse
import os
import tempfile

import numpy as np

import tfp_bnn
from tfp_bnn import benchmark, copies, results
from tfp_bnn._keras import tf_keras

S = benchmark.EXPORT_SAMPLES


def _export_tiled(bnn, path):
    """The export with every layer on S copies: `copies.plan` answering "nothing to save"."""
    plan = copies.plan
    copies.plan = lambda *args, **kwargs: None
    try:
        return tfp_bnn.export_savedmodel(bnn, path, num_samples=S)
    finally:
        copies.plan = plan


def run(models, batch_sizes, calls, budget):
    rows = []
    tf_keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_copies_") as root:
        for name in models:
            bnn = tfp_bnn.bayesify(benchmark.MODELS[name](), layers="last",
                                   num_train_examples=1000)
            walked = tfp_bnn.export_savedmodel(bnn, os.path.join(root, name), num_samples=S)
            tiled = _export_tiled(bnn, os.path.join(root, name + "_tiled"))
            in_name = bnn.inputs[0]._keras_history[0].name
            for batch in batch_sizes:
                x = np.random.default_rng(batch).random((batch, *bnn.inputs[0].shape[1:]),
                                                         dtype=np.float32)
                times = benchmark.time_round_robin({
                    "deterministic": benchmark.Signature(walked, "deterministic", {in_name: x}),
                    "mc, trunk once": benchmark.Signature(walked, "serving_default",
                                                          {in_name: x}),
                    "mc, trunk S times": benchmark.Signature(tiled, "serving_default",
                                                             {in_name: x}),
                }, calls, budget)
                for variant, t in times.items():
                    rows.append(dict(model=name, batch=batch, S=S, variant=variant, n=len(t),
                                     p50=float(np.percentile(t, 50)),
                                     p95=float(np.percentile(t, 95))))
    return rows


def table(rows):
    lines = ["| model | B | variant | p50 ms | p95 ms | p95 / deterministic |",
             "|---|---|---|---|---|---|"]
    det = {(r["model"], r["batch"]): r["p95"] for r in rows if r["variant"] == "deterministic"}
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['p50']:.3f} | "
                     f"{r['p95']:.3f} | {r['p95'] / det[r['model'], r['batch']]:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn_skip,mobilenet")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--calls", type=int, default=300, help="round-robin rounds per row")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per row at most")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    # Checked before any timing: an existing --out is kept unless --overwrite.
    stage = None if args.out is None else results.Staging(args.out, args.overwrite,
                                                          argument="--out", kind="file")
    rows = run(args.models.split(","), [int(b) for b in args.batch_sizes.split(",")],
               args.calls, args.budget)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(table(rows))
    if stage is not None:
        stage.write_json(rows)


if __name__ == "__main__":
    main()
