"""Every docstring example in the package runs, and its printed results are what it shows.

doctest over each module of tfp_bnn (found by walking the package, so a new module is checked
too), with ``np``, ``tf``, ``tf_keras`` and ``tfp_bnn`` imported, ELLIPSIS and
NORMALIZE_WHITESPACE on. An example builds its own tiny model and data; ``# doctest: +SKIP``
only where the value is random or a download.
"""
import doctest
import importlib
import pkgutil

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn._keras import tf, tf_keras

MODULES = sorted(m.name for m in pkgutil.walk_packages(tfp_bnn.__path__, "tfp_bnn."))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_modules_are_found():
    assert {"tfp_bnn.predict", "tfp_bnn.baselines.ensemble", "tfp_bnn.multifit"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []  # doctest swaps sys.stdout while it runs: collect its report here instead
    for test in tests:
        test.globs.update({"np": np, "tf": tf, "tf_keras": tf_keras, "tfp_bnn": tfp_bnn})
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (f"{result.failed} of {result.attempted} examples failed in "
                                f"{name}:\n" + "".join(report))
