"""The ``tfp-bnn`` command: train and predict on any table, the Iris main job, export, serving.

    tfp-bnn train DATA.csv --target COLUMN [--task auto] [--hidden 64,64] [--out runs/train]
            [--calibrate]
    tfp-bnn predict MODEL DATA.csv --out predictions.csv [--num-samples 100] [--seed 0]
            [--alpha 0.1] [--unsafe-load]
    tfp-bnn iris [--seeds 5] [--epochs 150] [--out runs/iris] [--overwrite] [--quiet]
    tfp-bnn export MODEL.keras EXPORT_DIR [--num-samples 10] [--noise exact] [--version N]
            [--no-posthoc] [--overwrite] [--unsafe-load]
    tfp-bnn serve-check EXPORT_DIR/VERSION [--signature serving_default] [--body request.json]
    tfp-bnn benchmark [--models mlp,cnn] [--calls 100] [--out results.json]

Each subcommand has --help. Long steps show a Keras progress bar (``--quiet`` hides it); results
are never overwritten without ``--overwrite``, and are written atomically (`tfp_bnn.results`).
Model files are loaded as `tfp_bnn.safety.load_model` allows (a ``.keras`` archive, safe mode;
``--unsafe-load`` for anything else). Bad input ends with exit code 2 and one line on stderr
naming what was wrong, before any training. The installed ``tfp-bnn`` script (`_tfp_bnn_cli`)
holds back TensorFlow's import-time INFO lines; ``python -m tfp_bnn.cli`` shows them first.
"""
import argparse
import json
import os
import sys

__all__ = ["main", "build_parser"]


class _InputError(Exception):
    """A user error the CLI reports as one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block), like every other CLI error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(minimum, what):
    """An argparse type: an integer >= minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, received {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _seed(text):
    """An argparse type: a seed, an integer in [0, 2**63 - 1] (`tfp_bnn.options.seed`)."""
    from tfp_bnn import options

    try:
        return options.seed("seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, 2**63 - 1], received {text!r}") from None


def _float_at_least(minimum, what, strict):
    """An argparse type: a finite float > minimum (strict) or >= minimum."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = value > minimum if strict else value >= minimum
        if not (ok and value != float("inf")):
            raise argparse.ArgumentTypeError(f"expected a {what} number, received {text!r}")
        return value
    return parse


_positive_float = _float_at_least(0.0, "positive", strict=True)
_non_negative_float = _float_at_least(0.0, "non-negative", strict=False)


def _probability(text):
    """An argparse type: a number strictly between 0 and 1 (a miscoverage level alpha)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a number strictly between 0 and 1, received {text!r}")
    return value


def _int_list(text):
    """An argparse type: comma-separated positive integers, e.g. ``64,64``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 64,64, received {text!r}")
    return values


def _log(args):
    return (lambda *a, **k: None) if args.quiet else print


def _cmd_iris(args):
    from tfp_bnn import iris

    config = iris.IrisConfig(seeds=args.seeds, epochs=args.epochs, data_seed=args.data_seed,
                             estimator=args.estimator, prior=args.prior,
                             kl_multiplier=args.kl_multiplier, num_samples=args.num_samples,
                             hub_id=args.hub_id)
    export_dir = None if args.no_export else args.export_dir
    iris.run(out=args.out, config=config, export_dir=export_dir, overwrite=args.overwrite,
             log=_log(args), verbose=0 if args.quiet else 1)


def _cmd_train(args):
    from tfp_bnn import train

    if (args.data is None) == (args.hub_id is None):
        raise _InputError("give a CSV file or --hub-id (exactly one). Received: "
                          f"DATA={args.data!r}, --hub-id={args.hub_id!r}")
    config = train.TrainConfig(task=args.task, hidden=args.hidden, estimator=args.estimator,
                               prior=args.prior, kl_multiplier=args.kl_multiplier,
                               epochs=args.epochs, patience=args.patience,
                               batch_size=args.batch_size, learning_rate=args.learning_rate,
                               num_samples=args.num_samples, seed=args.seed,
                               calibrate=args.calibrate)
    train.run(args.out, args.target, csv=args.data, hub_id=args.hub_id, split=args.split,
              config=config, overwrite=args.overwrite, log=_log(args),
              verbose=0 if args.quiet else 1)


def _cmd_predict(args):
    from tfp_bnn import train

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"model not found: MODEL={args.model!r}")
    pred = train.predict_csv(args.model, args.data, args.out, num_samples=args.num_samples,
                             seed=args.seed, overwrite=args.overwrite,
                             verbose=0 if args.quiet else 1, batch_size=args.batch_size,
                             unsafe_load=args.unsafe_load, alpha=args.alpha, log=_log(args))
    rows = len(pred.mean if pred.probabilities is None else pred.probabilities)
    _log(args)(f"{rows} {pred.task} predictions ({args.num_samples} samples each) in {args.out}")


def _cmd_benchmark(args):
    from tfp_bnn import benchmark, results
    from tfp_bnn._keras import tf_keras

    stage = None if args.out is None else results.Staging(args.out, args.overwrite,
                                                          argument="--out", kind="file")
    models = args.models.split(",")
    if args.quiet:
        log = _log(args)
    else:
        bar = tf_keras.utils.Progbar(len(models) * len(args.batch_sizes) * len(args.samples),
                                     unit_name="setting")
        log = lambda *a, **k: bar.add(1)  # noqa: E731  (one call per timed setting)
    result = benchmark.run(models=models, calls=args.calls, budget=args.budget,
                           batch_sizes=args.batch_sizes, samples=args.samples, log=log)
    print(benchmark.report(result))
    if stage is not None:
        stage.write_json(result)


def _cmd_export(args):
    from tfp_bnn import train
    from tfp_bnn.conformal import Conformal
    from tfp_bnn.export import export_savedmodel

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"model file not found: MODEL={args.model!r}")
    model, meta, posthoc = train.load_run(args.model, args.unsafe_load)
    log = _log(args)
    scaling = None if meta is None else meta.get("target_scaling")
    if scaling:
        # The graph holds the model alone: a client undoes the scaling `tfp-bnn predict` does.
        log(f"served outputs are standardised {meta['target']!r} (tfp-bnn predict undoes it, "
            f"the served graph does not): value * {scaling['std']:.6g} + {scaling['mean']:.6g}, "
            f"variances * {scaling['std'] ** 2:.6g}")
    if posthoc is None:
        log(f"post-hoc: none (no {train.POSTHOC_FILE} beside MODEL)")
    elif args.no_posthoc:
        log(f"post-hoc: none (--no-posthoc; {train.POSTHOC_FILE} not applied)")
    else:
        # The predictor `tfp-bnn predict` uses: its probabilities (variances) without --alpha,
        # its sets (intervals) with it.
        model = Conformal.from_config(model, posthoc)
        log(_describe_posthoc(model, train.POSTHOC_FILE))
    path = export_savedmodel(model, args.export_dir, num_samples=args.num_samples,
                             version=args.version, overwrite=args.overwrite, noise=args.noise)
    log(path)


def _describe_posthoc(conf, source):
    """One line: the calibration and conformal step a `Conformal` adds to the served outputs."""
    from tfp_bnn import methods
    from tfp_bnn.conformal import SERVED_CLASSIFICATION, SERVED_REGRESSION
    from tfp_bnn.options import ConformalScore

    inner = methods.post_hoc(conf.model)
    steps = ([] if inner is None else [repr(inner)]) + [repr(conf)]
    extra = SERVED_CLASSIFICATION if conf.score.is_classification else SERVED_REGRESSION
    kind = ("" if conf.score not in (ConformalScore.APS, ConformalScore.RAPS)
            else "randomised " if conf.randomized else "deterministic ")
    return (f"post-hoc from {source}: {', then '.join(steps)}; served: calibrated outputs, "
            f"{kind}{', '.join(extra)} at alpha={conf.alpha} and the predict_with_alpha "
            "signature")


def _default_body(session, signature):
    import numpy as np

    sig = session.signatures[signature]
    rng = np.random.default_rng(0)
    inst = {}
    for name, info in sig.inputs.items():
        dims = [d.size for d in info.tensor_shape.dim]
        if not dims:
            inst[name] = 10
            continue
        shape = [max(d, 1) for d in dims[1:]]
        inst[name] = rng.uniform(0, 1, size=shape).round(3).tolist()
    batch = [k for k in sig.inputs if sig.inputs[k].tensor_shape.dim]
    if len(batch) == 1 and len(inst) == 1:
        return {"signature_name": signature, "instances": [inst[batch[0]]]}
    return {"signature_name": signature, "instances": [inst]}


def _cmd_serve_check(args):
    from tfp_bnn import serving

    path = args.export_path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"export folder not found: EXPORT_PATH={path!r}")
    session = serving.load_session(path)
    if args.body is not None:
        if not os.path.isfile(args.body):
            raise FileNotFoundError(f"request body file not found: --body={args.body!r}")
        with open(args.body) as f:
            try:
                body = json.load(f)
            except json.JSONDecodeError as e:
                raise _InputError(f"--body={args.body!r} is not valid JSON: {e}")
    else:
        body = _default_body(session, args.signature)
    log = _log(args)
    log("request:  " + json.dumps(body))
    response = serving.rest_predict(session, body)
    print(json.dumps(response) if args.quiet else "response: " + json.dumps(response, indent=1))


_UNSAFE_HELP = ("also load model files that are not a .keras archive (HDF5), without Keras's "
                "safe_mode: code stored in the file (a Lambda layer) may run. Only for files "
                "from a trusted source")


def build_parser():
    parser = _Parser(
        prog="tfp-bnn", description="Bayesian neural networks for Keras on TensorFlow Probability.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from tfp_bnn.convert import ESTIMATORS  # the registry bayesify dispatches on
    estimators = list(ESTIMATORS)

    p = sub.add_parser("train", help="train a Bayesian MLP on a CSV (or hub dataset) column",
                       description="Split (train / validation / test), min-max scale, bayesify an "
                       "MLP, train with early stopping on the MC validation NLL, evaluate on the "
                       "test split; write model.keras, preprocessing.json, metrics.json and "
                       "history.csv into --out. Regression uses a Gaussian head (aleatoric std). "
                       "--calibrate also fits calibration and conformal sets on the validation "
                       "split (posthoc.json).")
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="a CSV file with a header row (or use --hub-id)")
    p.add_argument("--hub-id", default=None,
                   help="a Hugging Face dataset id instead of DATA (needs network)")
    p.add_argument("--split", default="train", help="split of the --hub-id dataset (default train)")
    p.add_argument("--target", required=True, help="the column to predict; all other columns "
                   "are numeric features")
    p.add_argument("--task", default="auto", choices=["auto", "classification", "regression"],
                   help="auto: a float target is a regression, anything else classes")
    p.add_argument("--estimator", default="flipout", choices=estimators)
    p.add_argument("--prior", default="normal", help="prior name (default normal)")
    p.add_argument("--hidden", type=_int_list, default=(64, 64),
                   help="hidden layer widths (default 64,64)")
    p.add_argument("--epochs", type=_positive_int, default=150, help="max epochs (default 150)")
    p.add_argument("--patience", type=_non_negative_int, default=30,
                   help="early-stopping patience in epochs (default 30)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="default 16")
    p.add_argument("--learning-rate", type=_positive_float, default=1e-3, help="Adam's, 1e-3")
    p.add_argument("--kl-multiplier", type=_non_negative_float, default=1.0,
                   help="KL weight multiplier (default 1: the ELBO)")
    p.add_argument("--num-samples", type=_positive_int, default=100,
                   help="MC samples for the test evaluation (default 100)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the split, the initialisation and the MC samples (default 0)")
    p.add_argument("--calibrate", action="store_true",
                   help="after training, on the validation split: temperature scaling "
                   "(classification) or variance scaling (regression), then split-conformal "
                   "sets / intervals of the calibrated model (posthoc.json); metrics.json gains "
                   "the test ECE after calibration and the coverage of 90%% sets. The split also "
                   "chose the epoch, so the coverage guarantee is approximate")
    p.add_argument("--out", default=os.path.join("runs", "train"),
                   help="output folder (default runs/train)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result files already in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="predict a CSV with uncertainty from a trained model",
                       description="Apply the saved scaling to DATA's feature columns, draw "
                       "--num-samples posterior samples and write one row per example: "
                       "predicted class, probabilities, predictive entropy = aleatoric + "
                       "epistemic (classification), or mean, std, variance = aleatoric + "
                       "epistemic in the target's units (regression). A model trained with "
                       "--calibrate predicts calibrated; --alpha adds its conformal sets or "
                       "intervals.")
    p.add_argument("model", metavar="MODEL",
                   help="a `tfp-bnn train` output folder, or a .keras file (its folder's "
                   "preprocessing.json is used when present)")
    p.add_argument("data", metavar="DATA", help="a CSV holding the feature columns")
    p.add_argument("--out", required=True, help="the CSV file to write")
    p.add_argument("--num-samples", type=_positive_int, default=100,
                   help="MC samples per row (default 100)")
    p.add_argument("--seed", type=_seed, default=0, help="MC seed (default 0); results also "
                   "depend on --batch-size (batch i draws with the seed folded with i)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="rows per compiled call (default 256)")
    p.add_argument("--alpha", type=_probability, default=None,
                   help="miscoverage level in (0, 1) of conformal 1 - alpha sets (columns "
                   "prediction_set, class names joined by |, and set_size) or intervals "
                   "(interval_lower, interval_upper); needs a model trained with --calibrate")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--unsafe-load", action="store_true", help=_UNSAFE_HELP)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("iris", help="train, evaluate and export the Iris BNN (the main job)",
                       description="Bayesify a 4-64-64-3 MLP, train it on the shipped Iris CSV, "
                       "evaluate with 100 MC samples, write metrics/plots/CSV and a SavedModel.")
    p.add_argument("--out", default="runs/iris", help="output folder (default runs/iris)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="training seeds (default 5)")
    p.add_argument("--epochs", type=_positive_int, default=150, help="max epochs (default 150)")
    p.add_argument("--data-seed", type=_non_negative_int, default=0, help="shuffle/split seed")
    p.add_argument("--estimator", default="flipout", choices=estimators)
    p.add_argument("--prior", default="normal", help="prior name (default normal)")
    p.add_argument("--kl-multiplier", type=_non_negative_float, default=1.0,
                   help="KL weight multiplier")
    p.add_argument("--num-samples", type=_positive_int, default=100, help="MC samples at test")
    p.add_argument("--hub-id", default=None, help="a Hugging Face hub dataset instead of the "
                   "shipped CSV (needs network)")
    p.add_argument("--export-dir", default=os.path.join("savedmodels", "iris_bnn"),
                   help="TF Serving model base path (default savedmodels/iris_bnn)")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result files already in --out")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_iris)

    p = sub.add_parser("export", help="export a saved .keras model for TF Serving",
                       description="Write EXPORT_DIR/<version>/ with serving_default, "
                       "predict_with_samples and deterministic signatures. A model trained "
                       "with --calibrate is exported as `tfp-bnn predict` uses it: calibrated "
                       "probabilities (or variances), plus its conformal prediction_set (or "
                       "interval_lower / interval_upper) at the fitted alpha and a "
                       "predict_with_alpha signature. Inputs are the scaled features and "
                       "regression outputs are in the standardised target's units "
                       "(preprocessing.json holds both scalings).")
    p.add_argument("model", metavar="MODEL", help="a .keras file saved from a tfp_bnn model, "
                   "or a `tfp-bnn train` output folder")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="TF Serving model base path")
    p.add_argument("--num-samples", type=_positive_int, default=10, help="S for serving_default")
    p.add_argument("--noise", choices=("exact", "shared"), default="exact",
                   help="exact: S independent weight draws per request (default); shared: one "
                   "weight perturbation per request, Flipout sign flips per copy (cheaper, "
                   "pseudo-independent copies)")
    p.add_argument("--version", type=_non_negative_int, default=None,
                   help="version folder (default: next free integer)")
    p.add_argument("--no-posthoc", action="store_true",
                   help="export the uncalibrated model, without the posthoc.json of a model "
                   "trained with --calibrate")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
    p.add_argument("--unsafe-load", action="store_true", help=_UNSAFE_HELP)
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("serve-check", help="load an export as TF Serving does and send a request",
                       description="Load EXPORT_PATH into a v1 Session (TF Serving's path), "
                       "send a REST-format body through a signature, print the response.")
    p.add_argument("export_path", metavar="EXPORT_PATH", help="a version folder, e.g. "
                   "savedmodels/iris_bnn/1")
    p.add_argument("--signature", default="serving_default", help="signature_name")
    p.add_argument("--body", default=None, help='a JSON file {"signature_name": ..., '
                   '"instances": [...]}; default: one random instance')
    p.add_argument("--quiet", action="store_true", help="print only the response JSON")
    p.set_defaults(func=_cmd_serve_check)

    p = sub.add_parser("benchmark", help="time exported signatures as TF Serving runs them",
                       description="Export Flipout models, load them into v1 Sessions "
                       "and time the deterministic, MC (one graph; exact and shared-noise "
                       "exports) and naive-loop signatures; "
                       "print p50/p95 tables and the latency targets. The defaults are small; "
                       "scripts/benchmark_serving.py runs the full benchmark.")
    p.add_argument("--models", default="mlp,cnn",
                   help="comma-separated: mlp, cnn, cnn_skip, mobilenet, transformer "
                   "(default mlp,cnn)")
    p.add_argument("--calls", type=_positive_int, default=100,
                   help="timed rounds per setting (default 100)")
    p.add_argument("--budget", type=_non_negative_float, default=30.0,
                   help="seconds after which settings with S != 10 stop (0: none; default 30)")
    p.add_argument("--batch-sizes", type=_int_list, default=(1, 256), help="default 1,256")
    p.add_argument("--samples", type=_int_list, default=(10,),
                   help="sample counts S (default 10; the full benchmark uses 10,100)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the tables")
    p.set_defaults(func=_cmd_benchmark)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, KeyError, _InputError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"tfp-bnn {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
