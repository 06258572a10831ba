"""KL-weight experiment: does scaling the KL term change the calibration of the Iris BNN?

For each KL multiplier m (the KL weight is m / N, N = training examples) and each seed, the
Iris recipe (`tfp_bnn.iris`: bayesified 4-64-64-3 MLP, flipout, normal prior) is trained and
its test set predicted with S Monte Carlo samples. The test predictions of all seeds are pooled
per multiplier for one reliability curve with a 95 % bootstrap band:

    acc_b(m) = accuracy of the pooled examples whose confidence falls in bin b
    band_b(m) = [2.5 %, 97.5 %] bootstrap quantiles of acc_b(m)
    gap_b(m, m') = max(lo_b(m), lo_b(m')) - min(hi_b(m), hi_b(m'))   (> 0: the bands are apart)

Decision rule (`decide`): the null hypothesis "the KL weight does not change calibration" is
kept when gap_b <= tolerance (0.02) for every pair of multipliers in every bin populated by both;
otherwise the multiplier with the lowest pooled ECE is named as the better calibrated one,
together with the bins where the bands separate.

Seed i splits the data with ``data_seed + i`` and initialises with ``i`` for every multiplier, so
the multipliers are compared on the same test examples.

    python scripts/kl_temperature.py                       # Iris, m = 0.25 1 4, 5 seeds
    python scripts/kl_temperature.py --csv data.csv --target label --out runs/kl_mydata

Writes into ``--out`` (default runs/kl_temperature): reliability_kl.png, results.md (the table
and the decision) and results.json (everything, including the pooled predictions). Existing
result files are never replaced without ``--overwrite`` (exit code 2 otherwise).

References:
    Wenzel et al., "How Good is the Bayes Posterior in Deep Neural Networks Really?", ICML 2020
    (tempered / cold posteriors); Guo et al., "On Calibration of Modern Neural Networks", 2017.
"""
import argparse
import dataclasses
import datetime
import itertools
import math
import os
import shlex
import sys
import time

import numpy as np

from tfp_bnn import data as data_lib
from tfp_bnn import iris, metrics, plots
from tfp_bnn._keras import tf_keras
from tfp_bnn.results import Staging

DEFAULT_MULTIPLIERS = (0.25, 1.0, 4.0)
RESULT_FILES = ("reliability_kl.png", "results.json", "results.md")
NUM_BINS = 15
N_BOOT = 1000
TOLERANCE = 0.02


def curve_name(multiplier):
    """The label of one multiplier's curve, e.g. ``"KL x0.25"``."""
    return f"KL x{multiplier:g}"


@dataclasses.dataclass(frozen=True)
class Separation:
    """One bin where the bootstrap bands of two curves are further apart than the tolerance."""
    bin: int
    center: float
    curves: tuple  # (name_a, name_b)
    gap: float
    higher: str  # the curve whose band lies above (more accurate at this confidence)
    counts: tuple = None  # examples of each curve in this bin, when the curves carry "counts"


@dataclasses.dataclass(frozen=True)
class Decision:
    """Result of `decide`: whether the null hypothesis is kept, and why."""
    null_kept: bool
    better: str  # lowest pooled ECE; None when the null hypothesis is kept
    lowest_ece: str  # lowest pooled ECE, whatever the decision
    tolerance: float
    min_count: int  # fewest examples per bin for a comparison (1: every populated bin)
    bins_compared: int  # (pair, bin) comparisons made
    max_gap: float  # largest gap between bands over all comparisons (<= 0: all overlap)
    separations: tuple  # of Separation

    @property
    def message(self):
        if self.null_kept:
            note = ("" if self.bins_compared else
                    " (no bin is populated by two curves, so nothing could be compared)")
            populated = ("populated by two curves" if self.min_count == 1 else
                         f"with >= {self.min_count} examples in both curves")
            return (f"Null hypothesis KEPT: the KL weight does not change calibration detectably; "
                    f"in every bin {populated} the 95 % bootstrap bands overlap "
                    f"within +-{self.tolerance:g} ({self.bins_compared} bin comparisons, largest "
                    f"gap {self.max_gap:+.3f}){note}. Lowest pooled ECE, for information: "
                    f"{self.lowest_ece}.")
        where = "; ".join(f"bin {s.bin} (confidence ~{s.center:.2f}): {s.curves[0]} vs "
                          f"{s.curves[1]} apart by {s.gap:.3f}, {s.higher} higher"
                          + ("" if s.counts is None else f", n = {s.counts[0]} vs {s.counts[1]}")
                          for s in self.separations)
        populated = "" if self.min_count == 1 else f" (bins with >= {self.min_count} examples)"
        return (f"Null hypothesis REJECTED: {self.better} calibrates better (lowest pooled ECE). "
                f"The 95 % bootstrap bands separate by more than {self.tolerance:g} in "
                f"{len(self.separations)} of {self.bins_compared} bin comparisons{populated}: "
                f"{where}.")

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["message"] = self.message
        return d


def decide(curves, tolerance=TOLERANCE, min_count=1):
    """Apply the decision rule to reliability curves with bootstrap bands.

        gap_b(a, c) = max(lo_b(a), lo_b(c)) - min(hi_b(a), hi_b(c))
        null kept  <=>  gap_b(a, c) <= tolerance for all pairs (a, c), all bins populated by both

    A bin is populated for a curve when its band is finite (an empty bin has NaN bounds) and, if
    the curve carries ``"counts"``, it holds at least ``min_count`` examples. The default, 1, is the
    rule as stated; note that a bin of one or two examples has a degenerate band ([0, 0] or
    [1, 1]), so a larger ``min_count`` asks for separations that rest on more data.

    Args:
        curves: ``{name: {"lo": [num_bins], "hi": [num_bins], "ece": pooled ECE}}`` with at least
            two entries of the same length; optional ``"centers"`` [num_bins] (bin centres for
            the message; default: equal-width bins on [0, 1]) and ``"counts"`` [num_bins]
            (examples per bin, reported with each separation).
        tolerance: the largest gap between two bands, in accuracy units, still read as overlap.
        min_count: fewest examples a bin needs (in both curves) to be compared; needs "counts".

    Returns:
        A `Decision`; ``better`` is the curve with the lowest pooled ECE when the null hypothesis
        is rejected, else None.

    Example:
        >>> decide({"a": {"lo": [0.8], "hi": [0.9], "ece": 0.05},
        ...         "b": {"lo": [0.91], "hi": [0.95], "ece": 0.02}}).null_kept
        True
    """
    if not isinstance(curves, dict) or len(curves) < 2:
        size = len(curves) if hasattr(curves, "__len__") else curves
        raise ValueError("curves must be a dict of at least two curves {name: {'lo', 'hi', "
                         f"'ece'}}}}. Received: {size!r} entries")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and math.isfinite(tolerance)):
        raise ValueError("tolerance must be a non-negative number. "
                         f"Received: tolerance={tolerance!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ValueError("min_count must be a positive integer. "
                         f"Received: min_count={min_count!r}")
    bands = {}
    for name, c in curves.items():
        lo, hi = np.asarray(c["lo"], dtype=np.float64), np.asarray(c["hi"], dtype=np.float64)
        if lo.ndim != 1 or lo.shape != hi.shape:
            raise ValueError(f"curves[{name!r}] needs 1-D 'lo' and 'hi' of equal length. "
                             f"Received: lo.shape={lo.shape}, hi.shape={hi.shape}")
        if "counts" in c:
            counts = np.asarray(c["counts"])
            if counts.shape != lo.shape:
                raise ValueError(f"curves[{name!r}]['counts'] needs one entry per bin. "
                                 f"Received: counts.shape={counts.shape}, lo.shape={lo.shape}")
            lo, hi = (np.where(counts >= min_count, v, np.nan) for v in (lo, hi))
        elif min_count > 1:
            raise ValueError(f"min_count={min_count} needs per-bin 'counts' in every curve; "
                             f"curves[{name!r}] has none.")
        bands[name] = (lo, hi)
    num_bins = {lo.shape[0] for lo, _ in bands.values()}
    if len(num_bins) != 1:
        raise ValueError(f"All curves need the same number of bins. Received: {sorted(num_bins)}")
    n = num_bins.pop()
    first = next(iter(curves.values()))
    centers = np.asarray(first.get("centers", (np.arange(n) + 0.5) / n), dtype=np.float64)

    separations, compared, max_gap = [], 0, -np.inf
    for a, c in itertools.combinations(bands, 2):
        (lo_a, hi_a), (lo_c, hi_c) = bands[a], bands[c]
        both = np.isfinite(lo_a) & np.isfinite(hi_a) & np.isfinite(lo_c) & np.isfinite(hi_c)
        for b in np.flatnonzero(both):
            gap = max(lo_a[b], lo_c[b]) - min(hi_a[b], hi_c[b])
            compared += 1
            max_gap = max(max_gap, gap)
            # The epsilon keeps a gap of exactly `tolerance` (0.80 - 0.78 in floats) an overlap.
            if gap > tolerance + 1e-9:
                counts = (None if "counts" not in curves[a] or "counts" not in curves[c] else
                          (int(curves[a]["counts"][b]), int(curves[c]["counts"][b])))
                separations.append(Separation(int(b), float(centers[b]), (a, c), float(gap),
                                              a if lo_a[b] > lo_c[b] else c, counts))
    lowest = min(curves, key=lambda k: float(curves[k]["ece"]))
    kept = not separations
    return Decision(null_kept=kept, better=None if kept else lowest, lowest_ece=lowest,
                    tolerance=float(tolerance), min_count=int(min_count), bins_compared=compared,
                    max_gap=float(max_gap) if compared else float("nan"),
                    separations=tuple(separations))


def mean_std(values):
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarise(multiplier, runs, num_bins=NUM_BINS, n_boot=N_BOOT, seed=0):
    """Per-seed statistics and the pooled reliability curve of one multiplier.

    Args:
        multiplier: the KL multiplier.
        runs: list of per-seed dicts with ``probabilities`` [B, C], ``labels`` [B],
            ``accuracy``, ``nll``, ``ece`` (and any other per-seed entries, kept as they are).
        num_bins, n_boot, seed: of the bootstrap (`metrics.reliability_curve_bootstrap`).
    """
    probs = np.concatenate([np.asarray(r["probabilities"], dtype=np.float64) for r in runs])
    labels = np.concatenate([np.asarray(r["labels"]).reshape(-1) for r in runs])
    centers, acc, lo, hi = metrics.reliability_curve_bootstrap(probs, labels, num_bins=num_bins,
                                                               n_boot=n_boot, seed=seed)
    bins = metrics.calibration_bins(probs, labels, num_bins=num_bins)
    out = {"multiplier": float(multiplier), "name": curve_name(multiplier), "seeds": len(runs)}
    for key in ("accuracy", "nll", "ece"):
        values = [float(r[key]) for r in runs]
        out[f"{key}_per_seed"] = values
        out[f"{key}_mean"], out[f"{key}_std"] = mean_std(values)
    out.update(
        pooled_ece=metrics.expected_calibration_error(probs, labels, num_bins=num_bins),
        pooled_accuracy=metrics.accuracy(probs, labels),
        pooled_nll=metrics.nll(probs, labels),
        num_pooled=int(len(labels)),
        curve={"centers": centers, "accuracy": acc, "confidence": np.asarray(bins.confidence),
               "lo": lo, "hi": hi, "counts": np.asarray(bins.counts)},
    )
    return out


def results_table(summaries):
    """The markdown results table, one row per multiplier."""
    lines = ["| KL multiplier | accuracy | NLL | ECE (per seed) | pooled ECE | seeds |",
             "|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s['multiplier']:g} | {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} "
                     f"| {s['nll_mean']:.3f} ± {s['nll_std']:.3f} "
                     f"| {s['ece_mean']:.3f} ± {s['ece_std']:.3f} | {s['pooled_ece']:.3f} "
                     f"| {s['seeds']} |")
    return "\n".join(lines)


def _jsonable(x):
    """numpy arrays and scalars to lists and floats; NaN to None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def load_table(csv=None, target=None):
    """The shipped Iris table, or a classification CSV via `tfp_bnn.data.load_csv`."""
    if csv is None:
        return data_lib.load_iris()
    table = data_lib.load_csv(csv, target, task="classification")
    if len(table.class_names) < 2:
        raise ValueError(f"--target {target!r} in {csv!r} has {len(table.class_names)} class(es); "
                         "a classification needs at least 2.")
    return table


def run_seed(table, seed, config):
    """Train one network (the Iris recipe on ``table``) and MC-predict its test split."""
    split = iris.prepare_data(config, seed, table)[1]
    model, history = iris.train(split, seed, config)
    result, pred = iris.evaluate(model, split.x_test, split.y_test, table.class_names,
                                 config.num_samples, seed)
    tf_keras.backend.clear_session()  # keep graph/memory flat across the many runs
    return {"seed": int(seed), "epochs": len(history),
            "accuracy": result["test_accuracy"], "nll": result["test_nll"],
            "ece": result["test_ece"], "mean_mutual_information": result["mean_mutual_information"],
            "probabilities": pred.probabilities, "labels": np.asarray(split.y_test)}


def _multiplier(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, received {text!r}")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--multipliers", type=_multiplier, nargs="+", default=list(DEFAULT_MULTIPLIERS),
                   help="KL weight multipliers (the KL weight is multiplier / N)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="seeds per multiplier")
    p.add_argument("--epochs", type=_positive_int, default=150, help="max epochs (early stopping)")
    p.add_argument("--num-samples", type=_positive_int, default=100, help="MC samples at test time")
    p.add_argument("--csv", default=None, help="a classification CSV instead of Iris")
    p.add_argument("--target", default=None, help="the CSV's label column (with --csv)")
    p.add_argument("--out", default="runs/kl_temperature", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="largest gap between bootstrap bands still read as overlap")
    p.add_argument("--min-bin-count", type=_positive_int, default=1,
                   help="fewest examples a bin needs in both curves to be compared (1: the rule "
                        "as stated, every populated bin)")
    p.add_argument("--n-boot", type=_positive_int, default=N_BOOT, help="bootstrap resamples")
    p.add_argument("--quiet", action="store_true", help="print only the table and the decision")
    return p


def main(argv=None):
    """Run the experiment; returns the exit code (0, or 2 for bad input / existing results)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.csv is None) != (args.target is None):
        parser.error("--csv and --target go together: the CSV and the name of its label column")
    if len(set(args.multipliers)) != len(args.multipliers):
        parser.error(f"--multipliers must be distinct. Received: {args.multipliers}")
    if len(args.multipliers) < 2:
        parser.error("--multipliers needs at least two values to compare. "
                     f"Received: {args.multipliers}")
    if not (args.tolerance >= 0 and math.isfinite(args.tolerance)):
        parser.error(f"--tolerance must be a non-negative number. Received: {args.tolerance}")
    out = os.fspath(args.out)
    try:  # checked before any training; the folder appears whole, in one rename
        stage = Staging(out, args.overwrite, owned=RESULT_FILES, argument="--out")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    start = time.time()
    try:
        table = load_table(args.csv, args.target)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    dataset = "Iris" if args.csv is None else os.path.basename(args.csv)
    if args.seeds < 5:
        log(f"note: {args.seeds} seed(s); the benchmark protocol asks for >= 5.")
    log(f"{dataset}: {len(table.labels)} examples, {len(table.class_names)} classes; "
        f"KL multipliers {', '.join(f'{m:g}' for m in args.multipliers)} x {args.seeds} seed(s), "
        f"up to {args.epochs} epochs, {args.num_samples} MC samples")

    summaries, pooled = [], {}
    for m in args.multipliers:
        config = iris.IrisConfig(seeds=args.seeds, epochs=args.epochs, kl_multiplier=m,
                                 num_samples=args.num_samples)
        runs = []
        for seed in range(args.seeds):
            r = run_seed(table, seed, config)
            runs.append(r)
            log(f"  KL x{m:g} seed {seed}: {r['epochs']} epochs, accuracy {r['accuracy']:.3f}, "
                f"NLL {r['nll']:.3f}, ECE {r['ece']:.3f}  ({time.time() - start:.0f} s)")
        s = summarise(m, runs, n_boot=args.n_boot)
        s["epochs_per_seed"] = [r["epochs"] for r in runs]
        s["predictions"] = [{"seed": r["seed"], "labels": r["labels"],
                             "probabilities": r["probabilities"]} for r in runs]
        summaries.append(s)
        pooled[s["name"]] = [(r["probabilities"], r["labels"]) for r in runs]

    decision = decide({s["name"]: {"lo": s["curve"]["lo"], "hi": s["curve"]["hi"],
                                   "centers": s["curve"]["centers"], "counts": s["curve"]["counts"],
                                   "ece": s["pooled_ece"]}
                       for s in summaries}, tolerance=args.tolerance, min_count=args.min_bin_count)
    table_md = results_table(summaries)
    seconds = round(time.time() - start, 1)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + list(
        sys.argv[1:] if argv is None else argv))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    fig = plots.reliability_curves_with_bands(pooled, num_bins=NUM_BINS, n_boot=args.n_boot, seed=0)
    fig.axes[0].legend(loc="lower right", fontsize=8)  # upper left hides underconfident curves
    fig.axes[0].set_title(f"{dataset}: reliability by KL multiplier\n"
                          f"{args.seeds} seed(s) pooled, 95 % bootstrap bands", fontsize=10)
    fig.tight_layout()

    note = (f"{dataset}, {args.seeds} seed(s) per multiplier, up to {args.epochs} epochs, "
            f"{args.num_samples} MC samples; mean ± sample std over seeds; ECE with {NUM_BINS} "
            f"bins; pooled ECE over the {summaries[0]['num_pooled']} pooled test predictions.")
    md = (f"# KL-weight experiment ({dataset})\n\n{table_md}\n\n{note}\n\n"
          f"**Decision:** {decision.message}\n\n"
          f"Command: `{command}`  \nDate: {date}  \nRuntime: {seconds} s\n")
    results = {
        "dataset": dataset, "multipliers": list(args.multipliers), "seeds": args.seeds,
        "epochs": args.epochs, "num_samples": args.num_samples, "num_bins": NUM_BINS,
        "n_boot": args.n_boot, "tolerance": args.tolerance, "min_bin_count": args.min_bin_count,
        "per_multiplier": summaries, "decision": decision.to_dict(), "table": table_md,
        "command": command, "date": date, "seconds": seconds,
    }
    with stage:
        fig.savefig(os.path.join(stage.path, "reliability_kl.png"), dpi=120)
        stage.write("results.md", md)
        stage.write("results.json", _jsonable(results))
        stage.commit()

    print("\n" + table_md + "\n\n" + note + "\n\nDecision: " + decision.message)
    log(f"Results in {out}/ ({seconds} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
