"""Options and argument checks: the one place every public argument is validated.

Options are ``str`` enums (laplace-torch's ``utils/enums.py``): a member compares equal to its
string, so ``estimator="flipout"`` and ``estimator=Estimator.FLIPOUT`` are the same argument,
and a saved config holds the plain string. `choice` turns user input into the member.

Every check names the argument and the value it received, and treats bools, NaN and
infinities alike everywhere: ``True`` is not an integer here, and no numeric argument is NaN or
infinite unless the check says so (``allow_inf``).

Example:
    >>> choice("estimator", "flipout", Estimator) is Estimator.FLIPOUT
    True
    >>> integer("num_samples", 10, minimum=1)
    10
"""
import enum
import math
import numbers

import numpy as np

__all__ = ["Estimator", "Task", "Hessian", "Subset", "Likelihood", "Placement", "Mode", "Noise",
           "Calibration", "CalibrationTarget", "ConformalScore", "choice", "integer", "number",
           "probability", "seed"]


class _Option(str, enum.Enum):
    """A ``str`` enum that prints as its value: ``str()`` (f-strings, configs) and ``repr()``.

    The repr is the string's, so a message's ``{value!r}`` and argparse's list of choices
    read ``'flipout'``, what the user typed, not ``<Estimator.FLIPOUT: 'flipout'>``.
    """

    def __str__(self):
        return self.value

    def __repr__(self):
        return repr(self.value)

    @classmethod
    def values(cls):
        return [m.value for m in cls]


class Estimator(_Option):
    """Gradient estimator of a Bayesian layer (`tfp_bnn.bayesify`)."""
    FLIPOUT = "flipout"
    REPARAMETERIZATION = "reparameterization"
    LOCAL_REPARAMETERIZATION = "local_reparameterization"


class Task(_Option):
    """What a model's output means, hence its likelihood and its predictive summary."""
    MULTICLASS = "multiclass"  # C >= 2 logits, softmax likelihood
    BINARY = "binary"  # one logit, sigmoid likelihood
    REGRESSION = "regression"  # D means, the noise is not modelled by the network
    GAUSSIAN = "gaussian"  # D means and D standard deviations (a Gaussian head)

    @property
    def is_classification(self):
        return self in (Task.MULTICLASS, Task.BINARY)


class Hessian(_Option):
    """Structure of a Laplace approximation's generalised Gauss-Newton matrix."""
    DIAG = "diag"
    KRON = "kron"
    FULL = "full"


class Subset(_Option):
    """Which weights a Laplace approximation treats as random."""
    LAST_LAYER = "last_layer"


class Likelihood(_Option):
    """Likelihood of a Laplace approximation's GGN: softmax or Gaussian."""
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class Placement(_Option):
    """Where `tfp_bnn.mc_dropout` inserts new dropout layers."""
    BEFORE_DENSE = "before_dense"
    AFTER_DENSE = "after_dense"
    ALL = "all"
    NONE = "none"


class Mode(_Option):
    """What a stochastic layer computes in a call (`tfp_bnn.sampling`)."""
    PLAIN = "plain"  # an ordinary Keras call: one posterior draw (training)
    MEAN = "mean"  # the posterior mean: deterministic
    SAMPLE = "sample"  # S draws over S sample-major copies of the batch


class Noise(_Option):
    """How the S copies of a Monte Carlo pass draw their weights (`tfp_bnn.sampling`)."""
    EXACT = "exact"  # S independent weight draws: the copies are i.i.d. posterior samples
    # One weight perturbation per pass, decorrelated per copy by Flipout sign flips: K normals
    # instead of S x K, the copies pseudo-independent (opt-in, for the export)
    SHARED = "shared"


class Calibration(_Option):
    """Post-hoc recalibration fitted on validation data (`tfp_bnn.calibrate`)."""
    TEMPERATURE = "temperature"  # one scalar T on the logits (classification)
    VECTOR = "vector"  # one scale and one offset per class (classification)
    VARIANCE = "variance"  # one scale on the predictive variance (regression)


class CalibrationTarget(_Option):
    """What a temperature divides: the log of the MC-averaged predictive, or every sample."""
    PREDICTIVE = "predictive"  # log of (1/S) sum_s p_s, after the Monte Carlo average
    SAMPLES = "samples"  # each sample's logits z_s, before the average


class ConformalScore(_Option):
    """Nonconformity score of split conformal prediction (`tfp_bnn.conformal`)."""
    LAC = "lac"  # 1 - p_y (classification)
    APS = "aps"  # mass of the classes ranked above y, plus u p_y (classification)
    RAPS = "raps"  # APS plus lam * (rank - k_reg)^+ (classification)
    NORMALIZED = "normalized"  # |y - mean| / std (regression)
    CQR = "cqr"  # distance outside the Gaussian quantiles (regression, Gaussian head)

    @property
    def is_classification(self):
        return self in (ConformalScore.LAC, ConformalScore.APS, ConformalScore.RAPS)


def choice(name, value, options, what=None):
    """``value`` as a member of the enum ``options``; a ValueError naming both otherwise.

    ``what`` names the option in the message when the argument's name does not (``where=``
    is a placement: "Unknown placement: where='x'").
    """
    if isinstance(value, options):
        return value
    if isinstance(value, str):
        try:
            return options(value)
        except ValueError:
            pass
    raise ValueError(f"Unknown {what or name}: {name}={value!r}. Valid: {options.values()}")


def _is_integer(value):
    return (isinstance(value, (numbers.Integral, np.integer))
            and not isinstance(value, (bool, np.bool_)))


def integer(name, value, minimum=None, maximum=None):
    """``value`` as a Python int, checked against ``minimum <= value <= maximum``.

    Integral numpy scalars pass; bools, floats (even ``2.0``) and strings do not.
    """
    ok = _is_integer(value)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        if minimum == 1 and maximum is None:
            what = "a positive integer"
        elif minimum is not None:
            what = (f"an integer >= {minimum}" if maximum is None
                    else f"an integer in [{minimum}, {maximum}]")
        else:
            what = "an integer" if maximum is None else f"an integer <= {maximum}"
        raise ValueError(f"{name} must be {what}. Received: {name}={value!r}")
    return int(value)


def number(name, value, minimum=None, maximum=None, strict=False, allow_inf=False):
    """``value`` as a float; NaN never passes, infinities only with ``allow_inf``.

    ``strict`` makes both bounds exclusive (``minimum < value < maximum``).
    """
    ok = isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value_f = float(value)
        ok = not math.isnan(value_f) and (allow_inf or math.isfinite(value_f))
        if ok and minimum is not None:
            ok = value_f > minimum if strict else value_f >= minimum
        if ok and maximum is not None:
            ok = value_f < maximum if strict else value_f <= maximum
    if not ok:
        if minimum is not None and maximum is not None:
            what = (f"a number strictly between {minimum:g} and {maximum:g}" if strict
                    else f"in [{minimum:g}, {maximum:g}]")
        elif minimum is not None:
            what = (f"a number > {minimum}" if strict else f"a number >= {minimum}")
            if minimum == 0:
                what = "a positive number" if strict else "a non-negative number"
        elif maximum is not None:
            what = f"a number < {maximum}" if strict else f"a number <= {maximum}"
        else:
            what = "a finite number" if not allow_inf else "a number"
        raise ValueError(f"{name} must be {what}. Received: {name}={value!r}")
    return float(value)


def probability(name, value):
    """A number strictly between 0 and 1 (a rate, a miscoverage level alpha)."""
    return number(name, value, 0.0, 1.0, strict=True)


_SEED_MAX = 2 ** 63 - 1


def seed(name, value):
    """None, or an int in [0, 2**63 - 1] (an int64 seed); floats and strings are refused."""
    if value is None:
        return None
    return integer(name, value, 0, _SEED_MAX)
