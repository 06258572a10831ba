"""Where a temperature acts, measured: digits VI before and after `tfp_bnn.calibrate`.

The digits recipe of ``scripts/compare_methods.py`` (digits 0-7, Flipout VI of the 64-64 MLP,
KL weight 1/N, 120 epochs, batch 32, Adam 1e-3), trained on the training split minus a
stratified validation carve (20 %) that `tfp_bnn.calibrate` fits on. Test NLL / ECE / ACE for

    uncalibrated;  temperature on the log of the MC-averaged predictive ("predictive");
    temperature on every sample's logits ("samples");  vector scaling

and, with the test split halved into a conformal calibration half and an evaluation half, the
coverage and mean size of 90 % APS sets on top of the "predictive" temperature.

    python scripts/calibration_digits.py                 # seeds 0 1, writes runs/calibration_digits
    python scripts/calibration_digits.py --seeds 0 --epochs 20

Writes ``results.json`` and ``results.md`` into ``--out``; existing files are kept unless
``--overwrite``.
"""
import argparse
import sys

import numpy as np

import tfp_bnn
from tfp_bnn import metrics
from tfp_bnn.results import Staging
from tfp_bnn._keras import tf_keras

import compare_methods as cm

VARIANTS = ("uncalibrated", "temperature (predictive)", "temperature (samples)", "vector")


def run(seed, epochs=None, num_samples=100, val_fraction=0.2):
    recipe = cm.RECIPES["digits"]
    data = cm.digits_data(seed)
    x_fit, y_fit, x_val, y_val = data.carve(seed, fraction=val_fraction)
    tf_keras.utils.set_random_seed(seed)
    bnn = cm.compiled(tfp_bnn.bayesify(cm.backbone(data, recipe), num_train_examples=len(x_fit)),
                      recipe)
    cm.fit(bnn, data, recipe, epochs or recipe.vi_epochs, x=x_fit, y=y_fit)
    models = {"uncalibrated": bnn,
              "temperature (predictive)": tfp_bnn.calibrate(bnn, x_val, y_val,
                                                            num_samples=num_samples, seed=seed),
              "temperature (samples)": tfp_bnn.calibrate(bnn, x_val, y_val, target="samples",
                                                         num_samples=num_samples, seed=seed),
              "vector": tfp_bnn.calibrate(bnn, x_val, y_val, method="vector",
                                          num_samples=num_samples, seed=seed)}
    rows = {}
    for name, model in models.items():
        p = tfp_bnn.predict(model, data.x_test, num_samples=num_samples, seed=100 + seed,
                            verbose=0).probabilities
        rows[name] = {"nll": metrics.nll(p, data.y_test),
                      "ece": metrics.expected_calibration_error(p, data.y_test),
                      "ace": metrics.adaptive_calibration_error(p, data.y_test),
                      "accuracy": metrics.accuracy(p, data.y_test),
                      "temperature": getattr(model, "temperature", None)}
    half = len(data.y_test) // 2
    order = np.random.default_rng(seed).permutation(len(data.y_test))
    cal, test = order[:half], order[half:]
    conf = tfp_bnn.conformal(models["temperature (predictive)"], data.x_test[cal],
                             data.y_test[cal], alpha=0.1, num_samples=num_samples, seed=seed)
    sets = tfp_bnn.predict(conf, data.x_test[test], num_samples=num_samples, seed=200 + seed,
                           verbose=0).prediction_sets
    return {"seed": seed, "rows": rows,
            "aps_90": {"coverage": metrics.empirical_coverage(sets, data.y_test[test]),
                       "mean_size": metrics.set_size(sets), "n_cal": len(cal)}}


def markdown(results):
    lines = ["| Variant | " + " | ".join(f"seed {r['seed']} NLL / ECE / ACE (T)" for r in results)
             + " |", "|---|" + "---|" * len(results)]
    for name in VARIANTS:
        cells = []
        for r in results:
            row = r["rows"][name]
            t = "" if row["temperature"] is None else f" (T {row['temperature']:.3f})"
            cells.append(f"{row['nll']:.3f} / {row['ece']:.3f} / {row['ace']:.3f}{t}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in results:
        a = r["aps_90"]
        lines.append(f"seed {r['seed']}: 90 % APS sets on the calibrated model: coverage "
                     f"{a['coverage']:.3f}, mean size {a['mean_size']:.2f} (n_cal {a['n_cal']})")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's 120")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--out", default="runs/calibration_digits")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:  # checked before training; the folder appears whole, in one rename
        stage = Staging(args.out, args.overwrite, owned=("results.json", "results.md"),
                        argument="--out")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = [run(s, args.epochs, args.num_samples) for s in args.seeds]
    with stage:
        stage.write("results.json", results)
        stage.write("results.md", markdown(results))
        stage.commit()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
