"""Latency of exported signatures, loaded as TF Serving loads them: MC vs deterministic vs a loop.

The full run behind BENCHMARKS.md; the code is `tfp_bnn.benchmark` (also ``tfp-bnn benchmark``,
with small defaults). Usage:

    python scripts/benchmark_serving.py [--calls 500] [--budget 240] [--out results.json] [--overwrite]
"""
import argparse

from tfp_bnn import benchmark, results


def _ints(text):
    return tuple(int(v) for v in text.split(","))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="rounds per (model, batch, S)")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which rows with S other than 10 stop (0: no limit)")
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--batch-sizes", type=_ints, default=(1, 256), help="default 1,256")
    parser.add_argument("--samples", type=_ints, default=(10, 100), help="S values, default 10,100")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    # Checked before any timing: an existing --out is kept unless --overwrite.
    stage = None if args.out is None else results.Staging(args.out, args.overwrite,
                                                          argument="--out", kind="file")
    result = benchmark.run(models=args.models.split(","), calls=args.calls, budget=args.budget,
                           batch_sizes=args.batch_sizes, samples=args.samples)
    print(benchmark.report(result))
    if stage is not None:
        stage.write_json(result)


if __name__ == "__main__":
    main()
