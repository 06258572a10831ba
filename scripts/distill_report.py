"""Bayesian dark knowledge report: a VI teacher, its distilled students and a hard-label student.

Per dataset and seed (data, splits, OOD sets and backbone exactly as scripts/compare_methods.py,
whose helpers this imports):

    teacher              bayesify(backbone, "flipout"), trained as compare_methods' vi_flipout
                         (KL weight --kl-multiplier / N, default 1 / N); or, with
                         --teacher val_tempered, compare_methods' vi_flipout_tempered (KL
                         multiplier chosen from cm.KL_GRID on a validation carve of the
                         training split, refit on the whole split); predicted with
                         S = num_samples MC samples
    hard-label student   the same backbone trained on the labels (compare_methods'
                         deterministic); one forward pass
    distilled student    a fresh backbone, tfp_bnn.distill(teacher, ...) on the training inputs
                         plus noisy copies; one forward pass
    distilled + MI head  the same with uncertainty_head=True: OOD scored by the head's MI too

Metrics on the test set (mean +- std over seeds): accuracy, NLL, ECE (15 bins), OOD AUROC by
mutual information (MI: teacher MC, or the student's head) and by predictive entropy (H),
training seconds (a student's includes only its own training, not the teacher's) and predict
milliseconds per 1,000 examples (after warm-up). The distillation settings are fixed in
`DISTILL` below, chosen before looking at test results and never tuned on them.

Targets (seed means): a distilled student's NLL and ECE within 10 % of the teacher's (at most
1.1 x) and below the hard-label student's.

Usage:
    python scripts/distill_report.py --seeds 3 --out runs/distill_report
    python scripts/distill_report.py --seeds 3 --teacher val_tempered --out runs/distill_tempered
    python scripts/distill_report.py --quick        # smoke run: 1 seed, few epochs

Writes ``results.json`` and ``table.md`` to ``--out`` at once when the run ends; an existing
``--out`` is replaced only with ``--overwrite``.
"""
import argparse
import dataclasses
import sys
import time
import warnings

import numpy as np

# A script's own folder is on the import path (and setup.cfg puts scripts/ there for the tests)
import compare_methods as cm
import tfp_bnn
from tfp_bnn.distill import distill
from tfp_bnn.results import Staging
from tfp_bnn._keras import tf_keras

METHODS = ("teacher", "hard_label", "distilled", "distilled_mi")
LABELS = {"teacher": "Teacher (VI Flipout, MC)", "hard_label": "Hard-label student",
          "distilled": "Distilled student", "distilled_mi": "Distilled student + MI head"}


@dataclasses.dataclass(frozen=True)
class DistillRecipe:
    """Distillation settings of one dataset (inputs are in [0, 1] for both data sets)."""

    epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    noise_stddev: float = 0.1
    noise_copies: int = 4

    def quick(self):
        return dataclasses.replace(self, epochs=2, noise_copies=1)


DISTILL = {"iris": DistillRecipe(epochs=300), "digits": DistillRecipe(epochs=60)}


def _one_pass(model):
    """(probs, None, entropy) from one forward pass of a deterministic logits model."""
    run = cm.mc_predictor(model, 1, 0)
    return lambda x: (lambda p, _, h: (p, None, h))(*run(x))


def _with_head(result):
    def run(x):
        p = result.predict(x)
        return p.probabilities, p.mutual_information, p.predictive_entropy
    return run


def _distill(teacher, data, recipe, drecipe, seed, head):
    tf_keras.utils.set_random_seed(seed)
    student = cm.backbone(data, recipe, name="student")
    start = time.perf_counter()
    result = distill(teacher, student, data.x_train, num_samples=recipe.num_samples,
                     epochs=drecipe.epochs, batch_size=drecipe.batch_size,
                     learning_rate=drecipe.learning_rate, noise_stddev=drecipe.noise_stddev,
                     noise_copies=drecipe.noise_copies, uncertainty_head=head, seed=seed)
    return result, time.perf_counter() - start


def train_all(data, recipe, drecipe, seed, kl_multiplier=1.0):
    """({method: (predictor, train seconds)}, teacher's KL multiplier) for one split.

    ``kl_multiplier="val_tempered"``: the multiplier is chosen on the validation carve
    (`compare_methods.tempered_vi`).
    """
    out = {}
    n = len(data.x_train)
    if kl_multiplier == "val_tempered":
        teacher, kl_multiplier, _, seconds = cm.tempered_vi(data, recipe, seed)
    else:
        tf_keras.utils.set_random_seed(seed)
        teacher = cm.compiled(tfp_bnn.bayesify(cm.backbone(data, recipe), estimator="flipout",
                                               kl_weight=kl_multiplier / n), recipe)
        seconds = cm.fit(teacher, data, recipe, recipe.vi_epochs)
    out["teacher"] = (cm.mc_predictor(teacher, recipe.num_samples, seed), seconds)
    weights = [w.copy() for w in teacher.get_weights()]

    tf_keras.utils.set_random_seed(seed)
    hard = cm.compiled(cm.backbone(data, recipe, name="hard"), recipe)
    out["hard_label"] = (_one_pass(hard), cm.fit(hard, data, recipe, recipe.epochs))

    plain, seconds = _distill(teacher, data, recipe, drecipe, seed, head=False)
    out["distilled"] = (_one_pass(plain.student), seconds)
    headed, seconds = _distill(teacher, data, recipe, drecipe, seed, head=True)
    out["distilled_mi"] = (_with_head(headed), seconds)
    assert all(np.array_equal(a, b) for a, b in zip(weights, teacher.get_weights())), \
        "distill changed the teacher"
    return out, kl_multiplier


def run_dataset(name, recipe, drecipe, seeds, kl_multiplier=1.0):
    """(rows, the teacher's KL multiplier per seed)."""
    rows = {m: [] for m in METHODS}
    multipliers = []
    for seed in range(seeds):
        data = cm.DATASETS[name](seed)
        trained, m = train_all(data, recipe, drecipe, seed, kl_multiplier)
        multipliers.append(m)
        for method, (predictor, seconds) in trained.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                row, _ = cm.evaluate(predictor, data)
                row["train_s"] = seconds
                row["predict_ms_per_1000"] = cm.predict_ms_per_1000(predictor, data.x_test)
            rows[method].append(row)
            print(f"{name} seed {seed} {method}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in row.items() if v is not None), flush=True)
    return rows, multipliers


def table(name, rows, ood_names):
    return cm.table(name, rows, ood_names, labels=LABELS, first_column="Model")


def targets(name, rows):
    """Each distilled student against the teacher (<= 1.1 x) and the hard-label student (<)."""
    mean = {m: {k: float(np.mean([x[k] for x in r])) for k in ("nll", "ece")}
            for m, r in rows.items()}
    t, h = mean["teacher"], mean["hard_label"]
    lines, met = [], {}
    for m in ("distilled", "distilled_mi"):
        for k in ("nll", "ece"):
            s = mean[m][k]
            ok_t, ok_h = s <= 1.1 * t[k], s < h[k]
            met[f"{m}_{k}"] = bool(ok_t and ok_h)
            lines.append(f"- {name} {LABELS[m]} {k.upper()} {s:.4f}: within 10 % of the teacher "
                         f"({t[k]:.4f}, limit {1.1 * t[k]:.4f}) {'yes' if ok_t else 'NO'}; "
                         f"below the hard-label student ({h[k]:.4f}) {'yes' if ok_h else 'NO'}")
    return lines, met


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", default=list(cm.DATASETS),
                        choices=list(cm.DATASETS))
    parser.add_argument("--out", default="runs/distill_report")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    parser.add_argument("--kl-multiplier", type=float, default=1.0,
                        help="teacher KL weight = this / N (1: compare_methods' vi_flipout)")
    parser.add_argument("--teacher", choices=("elbo", "val_tempered"), default="elbo",
                        help="elbo: KL weight --kl-multiplier / N; val_tempered: multiplier "
                             "chosen on a validation carve of the training split "
                             "(compare_methods' vi_flipout_tempered)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few epochs")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1. Received: --seeds={args.seeds}")
    if not args.kl_multiplier > 0:
        parser.error("--kl-multiplier must be > 0. "
                     f"Received: --kl-multiplier={args.kl_multiplier}")
    seeds = 1 if args.quick else args.seeds
    # Checked before any training; the folder appears whole, in one rename, when all is done.
    stage = Staging(args.out, args.overwrite, owned=("results.json", "table.md"),
                    argument="--out")
    start = time.perf_counter()

    results, sections, checks, met, teacher_lines = {}, [], [], {}, []
    for name in args.datasets:
        recipe = cm.RECIPES[name].quick() if args.quick else cm.RECIPES[name]
        drecipe = DISTILL[name].quick() if args.quick else DISTILL[name]
        teacher_kl = "val_tempered" if args.teacher == "val_tempered" else args.kl_multiplier
        rows, multipliers = run_dataset(name, recipe, drecipe, seeds, teacher_kl)
        teacher_lines.append(f"- {name}: teacher KL multiplier per seed "
                             + ", ".join(f"{m:g}" for m in multipliers)
                             + (f" (chosen on the validation carve from "
                                f"{', '.join(f'{m:g}' for m in cm.KL_GRID)})"
                                if args.teacher == "val_tempered" else ""))
        results[name] = {"recipe": dataclasses.asdict(recipe), "teacher": args.teacher,
                         "kl_multiplier": multipliers,
                         "distill_recipe": dataclasses.asdict(drecipe), "rows": rows}
        sections.append(table(name, rows, list(cm.DATASETS[name](0).ood)))
        lines, ok = targets(name, rows)
        checks += lines
        met.update({f"{name}_{k}": v for k, v in ok.items()})
    results["targets_met"] = met
    results["command"] = "python scripts/distill_report.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    results["total_s"] = time.perf_counter() - start
    text = ("\n\n".join(sections) + "\n\nTargets (seed means):\n\n" + "\n".join(checks)
            + "\n\nTeacher:\n\n" + "\n".join(teacher_lines)
            + f"\n\nCommand: `{results['command']}` ({results['total_s']:.0f} s)\n")
    with stage:
        stage.write("results.json", results)
        stage.write("table.md", text)
        stage.commit()
    print(text)
    print(f"wrote {args.out}/results.json and table.md")
    return results


if __name__ == "__main__":
    main()
