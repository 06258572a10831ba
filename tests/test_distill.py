"""tfp_bnn.distill: the losses by hand, the logged losses against numpy on the teacher's soft
targets, the student reaching the teacher, the MI head, bad input, an untouched teacher, and the
report script's --quick run."""
import json
import re
import warnings

import numpy as np
import pytest

import tfp_bnn
from tfp_bnn import posteriors
from tfp_bnn._keras import tf_keras
from tfp_bnn.distill import Distillation, distill, mi_squared_error, soft_target_cross_entropy

# Posterior means at the (scaled-up) source weights, std 0.5: confident but clearly
# non-zero teacher MI.
POSTERIOR = posteriors.MeanField(init_scale=0.5, from_weights=True)


def _frozen():
    # learning rate 0: the weights stay at their initial values through the whole epoch, so the
    # logged epoch losses are exactly the losses of the initial student.
    return tf_keras.optimizers.SGD(learning_rate=0.0)


def _x(n=120, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


def _mlp(units=3, d=4, hidden=16, seed=0, name=None, activation=None):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.Input((d,)),
                                tf_keras.layers.Dense(hidden, activation="tanh"),
                                tf_keras.layers.Dense(units, activation=activation)], name=name)


def _teacher(seed=0, units=3):
    """A BNN with varied, confident-ish soft targets and clearly non-zero MI (no training)."""
    net = _mlp(units=units, seed=seed)
    w = net.get_weights()
    net.set_weights([3.0 * a for a in w])  # larger logits: far from uniform predictions
    return tfp_bnn.bayesify(net, estimator="flipout", kl_weight=1.0, posterior=POSTERIOR)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _entropy(p):
    return -np.sum(p * np.log(p), axis=-1)


def _kl(p, q):
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1)))


def _softplus(a):
    return np.log1p(np.exp(a))


@pytest.fixture(scope="module")
def teacher():
    return _teacher()


# ---------------------------------------------------------------------------------------------
# Closed forms
# ---------------------------------------------------------------------------------------------
def test_losses_by_hand():
    # p = [0.2, 0.8], z = [0, ln 4]: softmax(z) = [0.2, 0.8] -> CE = H(p) = 0.500402
    # p = [1, 0],     z = [0, 0]:    CE = ln 2
    p = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    z = np.array([[0.0, np.log(4.0)], [0.0, 0.0]], np.float32)
    ce = soft_target_cross_entropy(p, z).numpy()
    np.testing.assert_allclose(ce, [-(0.2 * np.log(0.2) + 0.8 * np.log(0.8)), np.log(2.0)],
                               rtol=1e-6)
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=30)
    z = rng.normal(size=(30, 5)) * 4
    expected = -np.sum(p * np.log(_softmax(z)), axis=-1)
    np.testing.assert_allclose(soft_target_cross_entropy(p, z).numpy(), expected, rtol=1e-5)
    mi, m = rng.uniform(0, 1, 30), rng.uniform(0, 1, (30, 1))
    np.testing.assert_allclose(mi_squared_error(mi, m).numpy(), (m[:, 0] - mi) ** 2, rtol=1e-5)


def test_logged_cross_entropy_equals_numpy_on_the_soft_targets(teacher):
    x = _x()
    student = _mlp(seed=1)
    logits0 = student(x).numpy().astype(np.float64)
    result = distill(teacher, student, x, num_samples=20, epochs=2, batch_size=32,
                     optimizer=_frozen(), seed=3)
    assert isinstance(result, Distillation) and result.student is student
    assert result.uncertainty_model is None and result.teacher_stochastic
    # The soft targets are the teacher's MC-averaged predict probabilities.
    pred = tfp_bnn.predict(teacher, x, num_samples=20, seed=3, verbose=0)
    np.testing.assert_array_equal(result.teacher_probabilities, pred.probabilities)
    np.testing.assert_array_equal(result.teacher_mutual_information, pred.mutual_information)
    p = result.teacher_probabilities.astype(np.float64)
    ce = float(np.mean(-np.sum(p * np.log(_softmax(logits0)), axis=-1)))
    assert set(result.history) == {"loss", "cross_entropy", "kl"}
    for key in ("loss", "cross_entropy"):
        np.testing.assert_allclose(result.history[key], [ce, ce], rtol=1e-5)
    np.testing.assert_allclose(result.history["kl"], ce - np.mean(_entropy(p)), rtol=1e-4)
    np.testing.assert_allclose(result.history["kl"][0], _kl(p, _softmax(logits0)), rtol=1e-4)
    np.testing.assert_array_equal(student(x).numpy(), logits0.astype(np.float32))


def test_logged_mi_loss_equals_numpy_mse(teacher):
    x = _x()
    student = _mlp(seed=1)
    result = distill(teacher, student, x, num_samples=20, epochs=1, batch_size=50,
                     uncertainty_head=True, mi_weight=0.5, optimizer=_frozen(), seed=3)
    logits, m = (t.numpy().astype(np.float64) for t in result.uncertainty_model(x))
    assert m.shape == (len(x), 1)
    mi = result.teacher_mutual_information.astype(np.float64)
    assert mi.max() > 0.05  # a test with MI all ~0 would prove nothing
    # The head starts at the constant mean MI (zero kernel): its MSE is the variance of MI.
    np.testing.assert_allclose(m[:, 0], mi.mean(), rtol=1e-5)
    mse = float(np.mean((m[:, 0] - mi) ** 2))
    np.testing.assert_allclose(mse, np.var(mi), rtol=1e-3)
    p = result.teacher_probabilities.astype(np.float64)
    ce = float(np.mean(-np.sum(p * np.log(_softmax(logits)), axis=-1)))
    np.testing.assert_allclose(result.history["mi_mse"], [mse], rtol=1e-4)
    np.testing.assert_allclose(result.history["cross_entropy"], [ce], rtol=1e-5)
    np.testing.assert_allclose(result.history["loss"], [ce + 0.5 * mse], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training does what it is for
# ---------------------------------------------------------------------------------------------
def test_student_approaches_teacher(teacher):
    x = _x(200)
    student = _mlp(seed=1, hidden=32)
    result = distill(teacher, student, x, num_samples=50, epochs=150, batch_size=32,
                     learning_rate=1e-2, seed=0)
    p = result.teacher_probabilities.astype(np.float64)
    untrained = _kl(p, _softmax(_mlp(seed=1, hidden=32)(x).numpy().astype(np.float64)))
    trained = _kl(p, _softmax(student(x).numpy().astype(np.float64)))
    assert untrained > 0.3  # the threshold below would fail for an untrained student
    assert trained < 0.03, (untrained, trained)
    assert result.history["kl"][-1] < 0.03 and result.history["kl"][0] > result.history["kl"][-1]
    # The plain student is an ordinary deterministic model for tfp_bnn.predict.
    with pytest.warns(UserWarning, match="no stochastic layer"):
        pred = tfp_bnn.predict(student, x, num_samples=4, verbose=0)
    np.testing.assert_array_equal(pred.logit_variance, 0.0)
    np.testing.assert_array_equal(pred.mutual_information, 0.0)
    np.testing.assert_allclose(pred.probabilities, result.predict(x).probabilities, atol=1e-6)


def test_uncertainty_head_regresses_teacher_mi(teacher):
    x = _x(200)
    result = distill(teacher, _mlp(seed=1, hidden=32), x, num_samples=50, epochs=150,
                     batch_size=32, learning_rate=1e-2, uncertainty_head=True, seed=0)
    mi = result.teacher_mutual_information
    _, m = result.uncertainty_model(x)
    m = m.numpy()[:, 0]
    assert np.corrcoef(m, mi)[0, 1] > 0.8
    assert result.history["mi_mse"][-1] < 0.3 * np.var(mi)  # far better than a constant
    # predict: one pass, MI = min(head, H), H = expected + MI; the student alone has no head.
    pred = result.predict(x, batch_size=64)
    assert pred.num_samples == 1 and pred.logit_variance is None
    np.testing.assert_allclose(pred.mutual_information,
                               np.minimum(m, pred.predictive_entropy), rtol=1e-6)
    np.testing.assert_allclose(pred.predictive_entropy,
                               pred.expected_entropy + pred.mutual_information, atol=1e-6)
    np.testing.assert_allclose(pred.probabilities, _softmax(result.student(x).numpy()), atol=1e-6)
    assert len(result.student.outputs) == 1


def test_uncertainty_model_saves_and_loads(teacher, tmp_path):
    x = _x(40)
    result = distill(teacher, _mlp(seed=1), x, num_samples=5, epochs=1, uncertainty_head=True,
                     seed=0)
    path = tmp_path / "student_mi.keras"
    result.uncertainty_model.save(path)
    loaded = tf_keras.models.load_model(path)
    for a, b in zip(result.uncertainty_model(x), loaded(x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_seeded_runs_repeat_and_extra_inputs_count(teacher):
    x, u = _x(30), _x(10, seed=1)
    runs = [distill(teacher, _mlp(seed=1), x, num_samples=5, epochs=2, batch_size=8,
                    unlabeled_x=u, noise_stddev=0.2, noise_copies=2, seed=7) for _ in range(2)]
    assert len(runs[0].teacher_probabilities) == (30 + 10) * 3
    assert runs[0].history == runs[1].history
    for a, b in zip(runs[0].student.get_weights(), runs[1].student.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_deterministic_teacher_warns_once_and_still_distils():
    det = _mlp(seed=2, name="det_teacher")
    x = _x(50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = distill(det, _mlp(seed=1), x, num_samples=3, epochs=1, seed=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and "no epistemic part" in messages[0], messages
    assert not result.teacher_stochastic
    np.testing.assert_array_equal(result.teacher_mutual_information, 0.0)
    np.testing.assert_allclose(result.teacher_probabilities, _softmax(det(x).numpy()), atol=1e-6)


def test_teacher_is_not_changed():
    teacher = _teacher(seed=4)
    teacher.compile(tf_keras.optimizers.Adam(1e-3),
                    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = _x(60)
    before = [w.copy() for w in teacher.get_weights()]
    before_pred = tfp_bnn.predict(teacher, x, num_samples=10, seed=1, verbose=0).probabilities
    optimizer, layers = teacher.optimizer, [(l, l.trainable) for l in teacher.layers]
    distill(teacher, _mlp(seed=1), x, num_samples=10, epochs=3, uncertainty_head=True,
            noise_stddev=0.1, seed=0)
    assert len(teacher.get_weights()) == len(before)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert teacher.optimizer is optimizer and [(l, l.trainable) for l in teacher.layers] == layers
    assert len(teacher.outputs) == 1
    np.testing.assert_array_equal(
        tfp_bnn.predict(teacher, x, num_samples=10, seed=1, verbose=0).probabilities, before_pred)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [
    ("num_samples", 0), ("num_samples", 2.5), ("num_samples", True), ("epochs", 0),
    ("batch_size", 0), ("noise_copies", 0), ("noise_stddev", -0.1), ("noise_stddev", "big"),
    ("mi_weight", float("nan")), ("learning_rate", 0.0), ("uncertainty_head", "yes"),
    ("seed", -1), ("verbose", 2), ("optimizer", 42)])
def test_bad_arguments_name_argument_and_value(teacher, name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}")):
        distill(teacher, _mlp(seed=1), _x(10), **{name: value})


def test_mismatched_output_sizes_name_both_shapes(teacher):
    with pytest.raises(ValueError, match=r"teacher output shape \(None, 3\), student output "
                                         r"shape \(None, 4\)"):
        distill(teacher, _mlp(units=4, seed=1), _x(10))


def test_bad_models_and_inputs(teacher):
    x = _x(10)
    with pytest.raises(ValueError, match="student must be a different model"):
        distill(teacher, teacher, x)
    det = _mlp(seed=2)
    sharing = tf_keras.Sequential([tf_keras.Input((4,))] + det.layers)
    with pytest.raises(ValueError, match="must not share variables with teacher"):
        distill(det, sharing, x)
    regression = _mlp(units=1, seed=2)
    regression.compile(loss="mse")
    with pytest.raises(ValueError, match="teacher must be a classifier.*'regression'"):
        distill(regression, _mlp(units=1, seed=1), x)
    with pytest.raises(ValueError, match="student must output logits"):
        distill(teacher, _mlp(seed=1, activation="softmax"), x)
    with pytest.raises(ValueError, match="student must be deterministic"):
        distill(teacher, tfp_bnn.mc_dropout(_mlp(seed=1), rate=0.2), x)
    with pytest.raises(ValueError, match=r"student must be a tf_keras Model. Received: student='m"):
        distill(teacher, "m", x)
    with pytest.raises(ValueError, match=r"teacher input shape \(None, 4\), student input "
                                         r"shape \(None, 5\)"):
        distill(teacher, _mlp(d=5, seed=1), x)
    with pytest.raises(ValueError, match=r"x must have shape \(batch,\) \+ \(4,\).*\(10, 5\)"):
        distill(teacher, _mlp(seed=1), _x(10, d=5))
    with pytest.raises(ValueError, match=r"unlabeled_x must be finite.*1 NaN"):
        distill(teacher, _mlp(seed=1), x, unlabeled_x=np.where(np.eye(10, 4) > 0.5, np.nan, x)[:1])
    inp = tf_keras.Input((4,))
    added = tf_keras.layers.Add()([tf_keras.layers.Dense(3)(inp), tf_keras.layers.Dense(3)(inp)])
    with pytest.raises(ValueError, match="uncertainty_head=True needs a last layer with one input"):
        distill(teacher, tf_keras.Model(inp, added), x, uncertainty_head=True)


# ---------------------------------------------------------------------------------------------
# The report script
# ---------------------------------------------------------------------------------------------
def _load_report():
    import distill_report  # scripts/ is on the test run's path (setup.cfg)
    return distill_report


def test_report_quick_run(tmp_path):
    report = _load_report()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = report.main(["--quick", "--datasets", "iris", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = saved["iris"]["rows"]
    assert set(rows) == set(report.METHODS) and all(len(r) == 1 for r in rows.values())
    assert rows["distilled_mi"][0]["auroc_noise_mi"] is not None
    assert rows["distilled"][0]["auroc_noise_mi"] is None
    assert set(results["targets_met"]) == {f"iris_{m}_{k}" for m in ("distilled", "distilled_mi")
                                          for k in ("nll", "ece")}
    table = (tmp_path / "table.md").read_text()
    assert "| Distilled student + MI head |" in table and "Predict ms/1k" in table


def test_report_quick_run_with_the_validation_tempered_teacher(tmp_path):
    report = _load_report()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.main(["--quick", "--datasets", "iris", "--teacher", "val_tempered",
                     "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["iris"]["teacher"] == "val_tempered"
    (m,) = saved["iris"]["kl_multiplier"]
    assert m in report.cm.KL_GRID
    assert "chosen on the validation carve" in (tmp_path / "table.md").read_text()
