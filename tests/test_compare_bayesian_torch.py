"""scripts/compare_bayesian_torch.py: the shared split and tfp_bnn's side (no torch needed)."""
import json
import os

import numpy as np

import compare_bayesian_torch as script  # scripts/ is on the test run's path (setup.cfg)


def _split(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    y_test = script.save_digits(str(data_dir))
    return data_dir, y_test


def test_split_is_stratified_and_scaled(tmp_path):
    data_dir, y_test = _split(tmp_path)
    x_train, x_test = np.load(data_dir / "x_train.npy"), np.load(data_dir / "x_test.npy")
    y_train = np.load(data_dir / "y_train.npy")
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0.0 <= x_train.min() and x_train.max() == 1.0  # pixels 0..16 divided by 16
    np.testing.assert_array_equal(np.load(data_dir / "y_test.npy"), y_test)
    # Stratified: every class holds 20 % of its examples in the test split, to one example.
    counts = np.bincount(y_test, minlength=10) / (np.bincount(y_test, minlength=10)
                                                  + np.bincount(y_train, minlength=10))
    np.testing.assert_allclose(counts, 0.2, atol=0.006)


def test_scores_are_accuracy_and_nll():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    scores = script._scores(probs, np.array([0, 0, 1]))
    assert scores["accuracy"] == 1 / 3
    np.testing.assert_allclose(scores["nll"], -np.mean(np.log([0.7, 0.4, 0.1])))
    # One example a bin: ECE = mean |correct - confidence| = (0.3 + 0.6 + 0.9) / 3.
    np.testing.assert_allclose(scores["ece"], 0.6)


def test_tfp_bnn_side_trains_from_the_initial_state(tmp_path):
    data_dir, y_test = _split(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = script.tfp_bnn_side(str(data_dir), str(out_dir), epochs=2, batch_size=64, lr=1e-3,
                                 num_samples=30, seed=0, threads=None, predict_calls=2)
    # The warm-up's two steps were undone: the optimiser counted only the timed fit's
    # 2 epochs x ceil(1437 / 64) = 23 steps.
    assert result["optimizer_steps"] == 46
    assert len(result["predict_seconds"]) == 2 and result["train_seconds"] > 0
    with open(out_dir / "tfp_bnn.json") as f:
        assert json.load(f)["optimizer_steps"] == 46
    probs = np.load(os.path.join(out_dir, "tfp_bnn_probs.npy"))
    assert probs.shape == (360, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Chance is 0.1; two epochs of the recipe reach about 0.8.
    assert script._scores(probs, y_test)["accuracy"] > 0.6


def test_tfp_bnn_side_calibrates_on_a_carve_it_did_not_train_on(tmp_path):
    data_dir, _ = _split(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = script.tfp_bnn_side(str(data_dir), str(out_dir), epochs=2, batch_size=64, lr=1e-3,
                                 num_samples=10, seed=0, threads=None, predict_calls=1,
                                 val_fraction=0.2)
    # 288 of the 1437 training examples are carved off (stratified): 2 x ceil(1149 / 64) steps.
    assert result["trained_on"] == 1149 and result["optimizer_steps"] == 36
    # A MAP temperature cannot raise the validation NLL above that of T = 1.
    before, after = result["validation_nll"]
    assert after <= before and result["temperature"] > 0
    probs = np.load(out_dir / "tfp_bnn_cal_probs.npy")
    assert probs.shape == (360, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # The same seeded draws before and after: T on the log predictive keeps every argmax.
    seeded = np.load(out_dir / "tfp_bnn_seeded_probs.npy")
    np.testing.assert_array_equal(probs.argmax(1), seeded.argmax(1))
    assert not np.allclose(probs, seeded)
