"""tfp_bnn.options: str-enum options and the argument checks every module shares.

Bools, NaN and infinities are refused alike by every check; messages name the argument and the
value received; a member compares equal to its string and keys the registries by it.
"""
import importlib
import math

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import callbacks, elbo, losses, options, priors
from tfp_bnn.convert import ESTIMATORS
from tfp_bnn.options import Estimator, Hessian, Likelihood, Placement, Subset

# the package exports functions of the same names as these modules
laplace_lib = importlib.import_module("tfp_bnn.baselines.laplace")
mc_dropout_lib = importlib.import_module("tfp_bnn.baselines.mc_dropout")


# --- choice ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("enum", [Estimator, Hessian, Likelihood, Placement, Subset,
                                  options.Task, options.Mode])
def test_choice_returns_the_member_for_its_string_and_for_itself(enum):
    for member in enum:
        got = options.choice("x", member.value, enum)
        assert got is member and options.choice("x", member, enum) is member
        assert got == member.value and str(got) == member.value and f"{got}" == member.value
        assert repr(got) == repr(member.value)  # messages and argparse show what was typed


@pytest.mark.parametrize("value", ["Flipout", "flip", "", None, 1, True, Hessian.DIAG])
def test_choice_refuses_anything_else_naming_argument_value_and_valid_ones(value):
    with pytest.raises(ValueError) as e:
        options.choice("estimator", value, Estimator)
    assert str(e.value) == (f"Unknown estimator: estimator={value!r}. "
                            "Valid: ['flipout', 'reparameterization', 'local_reparameterization']")


def test_choice_what_names_the_option_when_the_argument_does_not():
    with pytest.raises(ValueError, match=r"^Unknown placement: where='everywhere'\. Valid: "):
        options.choice("where", "everywhere", Placement, what="placement")


def test_registries_are_keyed_by_the_enums_and_found_by_string():
    assert set(ESTIMATORS) == set(Estimator)
    assert ESTIMATORS["flipout"] is ESTIMATORS[Estimator.FLIPOUT]
    assert sorted(ESTIMATORS["local_reparameterization"]) == ["Dense"]
    assert set(mc_dropout_lib.PLACEMENTS) == set(Placement)
    assert mc_dropout_lib.PLACEMENTS["all"] is mc_dropout_lib.PLACEMENTS[Placement.ALL]
    assert list(laplace_lib.HESSIANS) == [Hessian.DIAG, Hessian.KRON, Hessian.FULL]
    assert laplace_lib.LIKELIHOODS is Likelihood and laplace_lib.SUBSETS is Subset


# --- integer --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_integer_accepts_python_and_numpy_integers(value):
    got = options.integer("n", value, minimum=1, maximum=3)
    assert got == 3 and type(got) is int


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, 2.5, "2", None, math.nan,
                                   math.inf])
def test_integer_refuses_bools_floats_strings_nan_and_inf(value):
    with pytest.raises(ValueError, match=r"^n must be an integer\. Received: n="):
        options.integer("n", value)


@pytest.mark.parametrize("kwargs, value, message", [
    ({"minimum": 1}, 0, "n must be a positive integer. Received: n=0"),
    ({"minimum": 0}, -1, "n must be an integer >= 0. Received: n=-1"),
    ({"minimum": 2}, 1, "n must be an integer >= 2. Received: n=1"),
    ({"minimum": 0, "maximum": 5}, 6, "n must be an integer in [0, 5]. Received: n=6"),
    ({"maximum": 5}, 6, "n must be an integer <= 5. Received: n=6"),
])
def test_integer_bounds_are_inclusive_and_named(kwargs, value, message):
    with pytest.raises(ValueError) as e:
        options.integer("n", value, **kwargs)
    assert str(e.value) == message
    bound = kwargs.get("minimum", kwargs.get("maximum"))
    assert options.integer("n", bound, **kwargs) == bound


# --- number ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, np.bool_(False), math.nan, np.float32("nan"), math.inf,
                                   -math.inf, "1.0", None, [1.0]])
def test_number_refuses_bools_nan_inf_and_non_numbers(value):
    with pytest.raises(ValueError) as e:
        options.number("x", value)
    assert str(e.value) == f"x must be a finite number. Received: x={value!r}"


def test_number_infinity_only_when_allowed():
    assert options.number("x", math.inf, 0, allow_inf=True) == math.inf
    with pytest.raises(ValueError, match=r"^x must be a number\. Received: x=nan"):
        options.number("x", math.nan, allow_inf=True)


@pytest.mark.parametrize("kwargs, good, bad, message", [
    ({"minimum": 0, "strict": True}, 1e-300, 0.0, "x must be a positive number. Received: x=0.0"),
    ({"minimum": 0}, 0.0, -1e-9, "x must be a non-negative number. Received: x=-1e-09"),
    ({"minimum": 2}, 2, 1.5, "x must be a number >= 2. Received: x=1.5"),
    ({"minimum": 0, "maximum": 1}, 1, 1.5, "x must be in [0, 1]. Received: x=1.5"),
    ({"minimum": 0, "maximum": 1, "strict": True}, 0.5, 1.0,
     "x must be a number strictly between 0 and 1. Received: x=1.0"),
    ({"maximum": 3, "strict": True}, 2.9, 3, "x must be a number < 3. Received: x=3"),
])
def test_number_bounds(kwargs, good, bad, message):
    got = options.number("x", np.float64(good), **kwargs)
    assert got == float(good) and type(got) is float
    with pytest.raises(ValueError) as e:
        options.number("x", bad, **kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, -0.1, 1.1, math.nan, True])
def test_probability_is_the_open_unit_interval(value):
    with pytest.raises(ValueError, match=r"strictly between 0 and 1\. Received: alpha="):
        options.probability("alpha", value)


def test_seed_is_none_or_an_int64():
    assert options.seed("seed", None) is None
    assert options.seed("seed", np.int64(2 ** 63 - 1)) == 2 ** 63 - 1
    for bad in (-1, 2 ** 63, 1.0, "0", True):
        with pytest.raises(ValueError, match=r"^seed must be an integer in \[0, "):
            options.seed("seed", bad)


# --- the same rules at the public entry points ------------------------------------------------------
@pytest.mark.parametrize("call, message", [
    (lambda: callbacks.SWAG(start_epoch=True), "start_epoch must be an integer >= 0"),
    (lambda: tfp_bnn.DeepEnsemble(lambda: None, num_members=np.float64(3)),
     "num_members must be an integer >= 2"),
    (lambda: priors.Normal(scale=True), "scale must be a positive number"),
    (lambda: priors.Normal(loc=math.inf), "loc must be a finite number"),
    (lambda: callbacks.KLTemperature(math.nan), "temperature must be a non-negative"),
    (lambda: callbacks.KLAnnealing(start=True), "start must be in [0, 1]"),
    (lambda: elbo.kl_weight_from(kl_weight=math.inf), "kl_weight must be a positive"),
    (lambda: elbo.kl_weight_from(num_train_examples=np.bool_(True)),
     "num_train_examples must be a positive integer"),
    (lambda: losses.MultiTaskUncertaintyWeighting(num_tasks=True), "num_tasks must be a positive integer"),
])
def test_entry_points_refuse_bools_nan_and_inf_alike(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value).startswith(message) and "Received: " in str(e.value)
