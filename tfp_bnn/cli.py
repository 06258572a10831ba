"""The ``tfp-bnn`` command: the Iris main job, export, and a TF-Serving-style check.

    tfp-bnn iris [--seeds 5] [--epochs 150] [--out runs/iris] [--overwrite] [--quiet]
    tfp-bnn export MODEL.keras EXPORT_DIR [--num-samples 10] [--version N] [--overwrite]
    tfp-bnn serve-check EXPORT_DIR/VERSION [--signature serving_default] [--body request.json]

Bad input ends with exit code 2 and one line on stderr naming what was wrong.
"""
import argparse
import json
import os
import sys

__all__ = ["main", "build_parser"]


class _InputError(Exception):
    """A user error the CLI reports as one line (exit code 2)."""


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
             log=_log(args))


def _load_keras_model(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: MODEL={path!r}")
    import tfp_bnn  # noqa: F401  (registers the Bayesian layers for deserialisation)
    from tfp_bnn._keras import tf_keras
    try:
        return tf_keras.models.load_model(path)
    except Exception as e:  # a Keras load error: say which file and why in one line
        raise _InputError(f"could not load a tf_keras model from MODEL={path!r}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _cmd_export(args):
    from tfp_bnn.export import export_savedmodel

    model = _load_keras_model(args.model)
    path = export_savedmodel(model, args.export_dir, num_samples=args.num_samples,
                             version=args.version, overwrite=args.overwrite)
    _log(args)(path)


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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfp-bnn", description="Bayesian neural networks for Keras on TensorFlow Probability.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("iris", help="train, evaluate and export the Iris BNN (the main job)",
                       description="Bayesify a 4-64-64-3 MLP, train it on the shipped Iris CSV, "
                       "evaluate with 100 MC samples, write metrics/plots/CSV and a SavedModel.")
    p.add_argument("--out", default="runs/iris", help="output folder (default runs/iris)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="training seeds (default 5)")
    p.add_argument("--epochs", type=_positive_int, default=150, help="max epochs (default 150)")
    p.add_argument("--data-seed", type=_non_negative_int, default=0, help="shuffle/split seed")
    p.add_argument("--estimator", default="flipout",
                   choices=["flipout", "reparameterization", "local_reparameterization"])
    p.add_argument("--prior", default="normal", help="prior name (default normal)")
    p.add_argument("--kl-multiplier", type=float, default=1.0, help="KL weight multiplier")
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
                       "predict_with_samples and deterministic signatures.")
    p.add_argument("model", metavar="MODEL", help="a .keras file saved from a tfp_bnn model")
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="TF Serving model base path")
    p.add_argument("--num-samples", type=_positive_int, default=10, help="S for serving_default")
    p.add_argument("--version", type=_non_negative_int, default=None,
                   help="version folder (default: next free integer)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version")
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
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, _InputError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"tfp-bnn {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
