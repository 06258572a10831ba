"""The Colab tutorials: each tutorials/NN_name.py (jupytext percent format) is the source of
tutorials/NN_name.ipynb, the committed notebook is exactly what it generates (outputs stripped),
and every cell runs in fast mode.

Each notebook is executed headless with nbclient in the "python3" kernel (this interpreter's
ipykernel), with ``TFP_BNN_TUTORIAL_FAST=1``, from an empty temporary working directory that
must stay empty (exports go to a temporary folder, never a relative path). Together they take about two and a half
minutes on two shared CPU cores (fast mode), each notebook 20-45 s.
"""
import glob
import json
import os
import time

import jupytext
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "tutorials")
EXPECTED = ("01_quickstart_iris.ipynb", "02_bayesian_cnn_digits.ipynb", "03_serving.ipynb",
            "04_regression_uncertainty.ipynb", "05_methods_compared.ipynb",
            "06_compression.ipynb")
COLAB = "https://colab.research.google.com/github/tfp-bnn/tfp_bnn/blob/main/tutorials/{}"
FAST_VAR = "TFP_BNN_TUTORIAL_FAST"
CELL_TIMEOUT_S = 300


def _read(name):
    return nbformat.read(os.path.join(TUTORIALS, name), as_version=4)


def test_every_tutorial_is_listed():
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TUTORIALS, "*.ipynb")))
    assert found == sorted(EXPECTED)
    sources = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TUTORIALS, "*.py")))
    assert sources == sorted(n.replace(".ipynb", ".py") for n in EXPECTED)


def _without_ids(text):
    nb = json.loads(text)
    for cell in nb["cells"]:
        cell.pop("id", None)  # new cells get random ids; everything else must match
    return nb


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_generated_from_its_source(name):
    """The .py is the source: regenerating the notebook from it gives the committed .ipynb."""
    source = jupytext.read(os.path.join(TUTORIALS, name.replace(".ipynb", ".py")))
    assert source.metadata["jupytext"]["formats"] == "ipynb,py:percent"  # a pair
    with open(os.path.join(TUTORIALS, name), encoding="utf-8") as f:
        committed = f.read()
    assert _without_ids(jupytext.writes(source, fmt="ipynb")) == _without_ids(committed), (
        f"tutorials/{name} is out of date: run jupytext --sync tutorials/*.py")


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_is_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_structure(name):
    nb = _read(name)
    first, last = nb.cells[0], nb.cells[-1]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert f"]({COLAB.format(name)})" in first.source, "the Colab badge links to the notebook"
    assert "colab-badge.svg" in first.source

    code = [c.source for c in nb.cells if c.cell_type == "code"]
    install = code[0]
    assert "try:\n    import tfp_bnn\nexcept ImportError:\n    %pip install" in install
    assert FAST_VAR in code[1], "the setup cell reads the fast switch"
    assert last.cell_type == "markdown" and last.source.startswith("## What you learned")
    # Exports go to a temporary folder: no code cell names the repository's savedmodels/ folder.
    assert not any("savedmodels" in c for c in code)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(name, tmp_path, monkeypatch):
    """Execute every cell (fast mode) in a fresh kernel; any error fails the test."""
    monkeypatch.setenv(FAST_VAR, "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONWARNINGS", "ignore::DeprecationWarning")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows plots
    nb = _read(name)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the cell and traceback on any error
    seconds = time.perf_counter() - start

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} shows no inline plot"
    assert "fast mode" in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert os.listdir(tmp_path) == [], f"{name} wrote into its working directory"
    print(json.dumps({"notebook": name, "seconds": round(seconds, 1)}))
