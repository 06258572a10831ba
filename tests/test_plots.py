"""tfp_bnn.plots: PNGs are written, figures hold the expected artists and numbers."""
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from tfp_bnn import metrics, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _random(n=500, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(c, 0.5), size=n), rng.integers(0, c, size=n)


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before  # nothing left in pyplot's registry


def test_reliability_diagram(tmp_path):
    p, y = _random()
    fig = plots.reliability_diagram(p, y, num_bins=10, path=tmp_path / "rel.png", title="BNN")
    _check_png(tmp_path / "rel.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax, ax_counts = fig.axes
    bins = metrics.calibration_bins(p, y, num_bins=10)
    acc_bars, gap_bars = ax.containers
    assert len(acc_bars) == 10
    np.testing.assert_allclose([b.get_height() for b in acc_bars], np.nan_to_num(bins.accuracy))
    filled = bins.counts > 0
    assert len(gap_bars) == filled.sum() < 10  # max prob >= 1/3: the lowest bins are empty
    np.testing.assert_allclose([b.get_y() + b.get_height() for b in gap_bars], bins.confidence[filled])
    (count_bars,) = ax_counts.containers
    np.testing.assert_array_equal([b.get_height() for b in count_bars], bins.counts)
    assert sorted(int(t.get_text()) for t in ax_counts.texts) == sorted(bins.counts[filled])
    ece = metrics.expected_calibration_error(p, y, num_bins=10)
    assert ax.get_title() == f"BNN\nECE = {ece:.4f}"


def test_reliability_diagram_without_path_returns_figure():
    fig = plots.reliability_diagram([[0.9, 0.1], [0.2, 0.8]], [0, 0], num_bins=5)
    assert len(fig.axes[0].containers[0]) == 5
    # .9 and .8 (an edge, so the upper bin) share [.8, 1]: |acc 1/2 - conf .85| = .35
    assert fig.axes[0].get_title() == "ECE = 0.3500"


def test_entropy_vs_accuracy(tmp_path):
    p, y = _random(seed=1)
    entropy = -np.sum(p * np.log(p + 1e-12), axis=1)
    fig = plots.entropy_vs_accuracy(p, y, entropy, path=tmp_path / "retain.png")
    _check_png(tmp_path / "retain.png")
    assert len(fig.axes) == 1
    curve = fig.axes[0].lines[0]
    f, acc = metrics.accuracy_vs_retained(p, y, entropy)
    np.testing.assert_allclose(curve.get_xdata(), 100 * f)
    np.testing.assert_allclose(curve.get_ydata(), acc)
    assert acc[0] > acc[-1]  # entropy carries information about errors here


def test_uncertainty_histogram(tmp_path):
    rng = np.random.default_rng(2)
    s_in, s_out = rng.gamma(2.0, 0.2, 300), rng.gamma(4.0, 0.2, 200)
    fig = plots.uncertainty_histogram(s_in, s_out, path=tmp_path / "ood.png", label="entropy")
    _check_png(tmp_path / "ood.png")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.containers) == 2
    left_edges = [[bar.get_x() for bar in c] for c in ax.containers]
    assert len(left_edges[0]) == 30 and left_edges[0] == left_edges[1]  # shared bins
    auroc = metrics.ood_auroc(s_in, s_out)
    assert ax.get_legend().get_title().get_text() == f"AUROC = {auroc:.3f}"
    assert ax.get_xlabel() == "entropy"


def test_reliability_curves_with_bands(tmp_path):
    curves = {"BNN": [_random(300, seed=s) for s in (3, 4)], "MC dropout": [_random(300, seed=5)]}
    fig = plots.reliability_curves_with_bands(curves, num_bins=8, path=tmp_path / "bands.png",
                                              n_boot=200)
    _check_png(tmp_path / "bands.png")
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    assert len(ax.lines) == 3 and len(ax.collections) == 2  # diagonal + 2 curves, 2 bands
    pooled_p = np.concatenate([p for p, _ in curves["BNN"]])
    pooled_y = np.concatenate([y for _, y in curves["BNN"]])
    _, acc, _, _ = metrics.reliability_curve_bootstrap(pooled_p, pooled_y, num_bins=8, n_boot=200)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), acc)
    assert ax.lines[1].get_label().startswith("BNN (ECE ")


@pytest.mark.parametrize("curves, match", [
    ({}, "curves must be a non-empty dict"),
    ([([[0.5, 0.5]], [0])], "curves must be a non-empty dict"),
    ({"a": []}, r"curves\['a'\]"),
    ({"a": [([[0.5, 0.5]], [0]), ([[0.2, 0.3, 0.5]], [0])]}, r"curves\['a'\]"),
])
def test_reliability_curves_bad_input(curves, match):
    with pytest.raises(ValueError, match=match):
        plots.reliability_curves_with_bands(curves, n_boot=10)


def test_plots_validate_inputs():
    with pytest.raises(ValueError, match="num_bins=0"):
        plots.reliability_diagram([[0.5, 0.5]], [0], num_bins=0)
    with pytest.raises(ValueError, match=r"len\(uncertainty\)=1"):
        plots.entropy_vs_accuracy([[0.5, 0.5], [0.5, 0.5]], [0, 1], [0.1])
    with pytest.raises(ValueError, match="scores_out must not contain NaN"):
        plots.uncertainty_histogram([0.1], [np.nan])
