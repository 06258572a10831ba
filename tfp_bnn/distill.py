"""Bayesian dark knowledge: a deterministic student trained on a BNN's posterior predictive.

The teacher's Monte Carlo posterior predictive and mutual information are computed once with
`tfp_bnn.predict` (S samples) on the distillation inputs ``x_i``:

    p_i  = (1/S) sum_s softmax(f(x_i; w_s)),   w_s ~ q(w)             (soft targets)
    MI_i = H[p_i] - (1/S) sum_s H[softmax(f(x_i; w_s))]               (teacher's epistemic part)

and the student ``g`` (logits) is trained (Adam by default) on

    L = (1/N) sum_i [ -sum_c p_ic log softmax(g(x_i))_c ]             (soft-target cross-entropy)
      + mi_weight (1/N) sum_i (m(x_i) - MI_i)^2                       (only uncertainty_head=True)
      + sum(student.losses)                                           (its own regularisers)

with ``m(x) = softplus(v . phi(x) + b)`` one unit on the student's penultimate features
``phi(x)`` (the input of its last layer), started at the constant mean teacher MI (zero
kernel). ``history["kl"]`` is the cross-entropy minus the teacher's mean entropy, i.e.
``(1/N) sum_i KL(p_i || softmax(g(x_i)))``, which is 0 exactly when the student reproduces the
teacher.

A binary teacher (one logit, `tfp_bnn.tasks`) is distilled the same way into a one-logit
student: ``softmax`` over the class logits ``[0, z]`` is ``[1 - sigmoid(z), sigmoid(z)]``. The
teacher may be any model or method result `tfp_bnn.predict` accepts (an ensemble, Laplace, ...).

Distillation inputs, in this order: ``x``; ``unlabeled_x`` (any inputs without labels); then,
when ``noise_stddev > 0``, ``noise_copies`` copies of both with Gaussian noise
``N(0, noise_stddev^2)`` added to every feature (in the inputs' own units). Labels are never
needed: the teacher labels everything.

Unlike Balan et al., who train the student online on single SGLD samples of the teacher, this
distils a fixed (already trained) teacher offline from its S-sample average.

Example:
    >>> tf_keras.utils.set_random_seed(0)
    >>> x_train = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(8)])
    >>> bnn = tfp_bnn.bayesify(model, num_train_examples=len(x_train))   # (trained) teacher
    >>> student = tf_keras.Sequential([tf_keras.Input((4,)),
    ...                                tf_keras.layers.Dense(16, activation="relu"),
    ...                                tf_keras.layers.Dense(8)])         # logits, like the teacher
    >>> result = tfp_bnn.distill(bnn, student, x_train, num_samples=20, epochs=2,
    ...                          noise_stddev=0.1, uncertainty_head=True, seed=0)
    >>> pred = result.predict(x_train[:5])     # a tfp_bnn.Prediction from one forward pass
    >>> pred.probabilities.shape, pred.mutual_information.shape   # the head's MI estimate
    ((5, 8), (5,))
    >>> logits, mi = result.uncertainty_model(x_train[:5])   # the same as a plain Keras model
    >>> tuple(logits.shape), tuple(mi.shape)
    ((5, 8), (5, 1))

References:
    Balan, Rathod, Murphy & Welling, "Bayesian Dark Knowledge", NeurIPS 2015.
    Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""
import dataclasses
import math
import numbers
import warnings
import weakref
from typing import Optional

import numpy as np

from tfp_bnn import methods, tasks
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.options import Task
from tfp_bnn.posteriors import inverse_softplus
from tfp_bnn.predict import Prediction, is_stochastic, summarize
from tfp_bnn.predict import predict as mc_predict

__all__ = ["Distillation", "distill", "soft_target_cross_entropy", "mi_squared_error"]

_PREDICT_BATCH_SIZE = 256


# ---------------------------------------------------------------------------------------------
# Losses (per example; `distill` averages them over the batch)
# ---------------------------------------------------------------------------------------------
def soft_target_cross_entropy(target_probabilities, logits, task=Task.MULTICLASS):
    """``-sum_c p_c log p(c | z)`` per example: [B, C] targets and logits -> [B].

    ``p(c | z)`` is the task's likelihood (`tfp_bnn.tasks`): softmax of [B, C] logits
    ("multiclass"), or [1 - sigmoid(z), sigmoid(z)] of [B, 1] logits ("binary", C = 2).
    """
    p = tf.cast(tf.convert_to_tensor(target_probabilities), tf.float32)
    log_p = tasks.get(task).log_probabilities(tf.convert_to_tensor(logits))
    return -tf.reduce_sum(p * log_p, axis=-1)


def mi_squared_error(target_mi, predicted_mi):
    """``(m - MI)^2`` per example: [B] targets and [B] or [B, 1] predictions -> [B]."""
    t = tf.reshape(tf.cast(tf.convert_to_tensor(target_mi), tf.float32), [-1])
    m = tf.reshape(tf.cast(tf.convert_to_tensor(predicted_mi), tf.float32), [-1])
    return tf.square(m - t)


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
_FORWARD = weakref.WeakKeyDictionary()


def _forward(model):
    if model not in _FORWARD:
        model_ref = weakref.ref(model)
        _FORWARD[model] = tf.function(lambda x: model_ref()(x, training=False),
                                      reduce_retracing=True)
    return _FORWARD[model]


@dataclasses.dataclass(frozen=True, eq=False)
class Distillation:
    """The fixed result of `distill`.

    Attributes:
        student: the trained student (the model passed in, trained in place): ``x -> logits
            [B, C]`` (``[B, 1]`` for a binary teacher); also what `as_model` returns. A plain deterministic tf_keras model; `tfp_bnn.predict` accepts it
            (variance 0, mutual information 0) and it saves and exports like any model.
        uncertainty_model: None unless ``uncertainty_head=True``; then a two-output tf_keras
            model sharing the student's layers, ``x -> [logits [B, C], mutual_information
            [B, 1]]`` (the MI head is a softplus unit, so the estimate is >= 0).
        history: per-epoch lists, example-weighted means over the epoch: ``"loss"`` (the
            optimised total), ``"cross_entropy"``, ``"kl"`` (cross-entropy minus the teacher's
            mean entropy) and, with the head, ``"mi_mse"``.
        teacher_probabilities: [N, C] soft targets on the N distillation inputs (see `distill`).
        teacher_mutual_information: [N] the teacher's MI on the same inputs.
        teacher_stochastic: False when the teacher had no stochastic layer (then every MI is 0).
        task: the teacher's task, "multiclass" or "binary", which the student inherits.
    """

    student: tf_keras.Model
    uncertainty_model: Optional[tf_keras.Model]
    history: dict
    teacher_probabilities: np.ndarray
    teacher_mutual_information: np.ndarray
    teacher_stochastic: bool
    task: Task = Task.MULTICLASS

    def as_model(self):
        """The student: what `tfp_bnn.predict` and `export_savedmodel` use for this result."""
        return self.student

    def predict(self, x, batch_size=_PREDICT_BATCH_SIZE):
        """One forward pass per batch, returned as a `tfp_bnn.Prediction` (``num_samples=1``).

            probabilities = p(c | logits) (the task's),  predictive_entropy = H[probabilities]
            mutual_information = min(m(x), H)  with the head (MI <= H holds for any teacher),
                                 0 without it
            expected_entropy = predictive_entropy - mutual_information

        ``logit_variance`` is None: a student has no logit samples to take a variance of.
        """
        batch_size = _check_int("batch_size", batch_size, 1)
        x = np.asarray(x)
        if x.ndim < 1 or len(x) == 0:
            raise ValueError("x must be a non-empty array [batch, ...]. "
                             f"Received: x.shape={x.shape}")
        model = self.student if self.uncertainty_model is None else self.uncertainty_model
        fn = _forward(model)
        logits, heads = [], []
        for start in range(0, len(x), batch_size):
            out = fn(tf.convert_to_tensor(x[start:start + batch_size], tf.float32))
            if self.uncertainty_model is not None:
                logits.append(out[0].numpy())
                heads.append(out[1].numpy()[:, 0])
            else:
                logits.append(out.numpy())
        z = np.concatenate(logits).astype(np.float32)
        summary = summarize(z[np.newaxis], self.task)
        p = summary["probabilities"].numpy()
        total = summary["predictive_entropy"].numpy()
        mi = (np.minimum(np.concatenate(heads), total) if heads
              else np.zeros_like(total)).astype(np.float32)
        return Prediction(task=self.task, num_samples=1, mean_logits=z, logit_variance=None,
                          probabilities=p, predictive_entropy=total,
                          expected_entropy=np.maximum(total - mi, 0.0).astype(np.float32),
                          mutual_information=mi)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _check_number(name, value, allow_zero=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}. Received: {name}={value!r}")
    return float(value)


def _check_model(name, model):
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"{name} must be a tf_keras Model. Received: {name}={model!r}")
    if not model.inputs or not model.outputs:
        raise ValueError(f"{name} must be a built graph model (Sequential with an Input, or "
                         f"Functional). Received: {name}={model.name!r} with no inputs/outputs")
    if len(model.inputs) != 1:
        raise ValueError(f"{name} must have exactly one input. Received: {name} with "
                         f"{len(model.inputs)} inputs")


def _check_inputs(name, x, model):
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array. Received: {name} of type "
                         f"{type(x).__name__}") from None
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a numeric array. Received: {name} of dtype {arr.dtype}")
    expected = tuple(model.inputs[0].shape[1:])
    if arr.ndim != len(expected) + 1 or any(
            e is not None and e != r for e, r in zip(expected, arr.shape[1:])):
        raise ValueError(f"{name} must have shape (batch,) + {expected} (the student's input). "
                         f"Received: {name}.shape={arr.shape}")
    if len(arr) == 0:
        raise ValueError(f"{name} must hold at least one example. "
                         f"Received: {name}.shape={arr.shape}")
    if not np.isfinite(arr.astype(np.float64)).all():
        raise ValueError(f"{name} must be finite. Received: {name} with "
                         f"{int((~np.isfinite(arr.astype(np.float64))).sum())} NaN/inf values")
    return arr.astype(np.float32)


def _check_pair(teacher, student):
    """The teacher's task, once teacher and student are checked to fit together."""
    _check_model("teacher", teacher)
    _check_model("student", student)
    if student is teacher:
        raise ValueError("student must be a different model from teacher: distill trains the "
                         "student and never changes the teacher.")
    teacher_vars = {id(v) for v in teacher.variables}
    shared = [v.name for v in student.trainable_variables if id(v) in teacher_vars]
    if shared:
        raise ValueError("student must not share variables with teacher (training would change "
                         f"the teacher). Received: shared variables {shared[:3]}")
    t_in, s_in = tuple(teacher.inputs[0].shape[1:]), tuple(student.inputs[0].shape[1:])
    if len(t_in) != len(s_in) or any(a is not None and b is not None and a != b
                                     for a, b in zip(t_in, s_in)):
        raise ValueError("student must take the teacher's inputs. Received: teacher input shape "
                         f"{(None,) + t_in}, student input shape {(None,) + s_in}")
    task = tasks.resolve(teacher, name="teacher")
    if not task.is_classification:
        raise ValueError("teacher must be a classifier with [batch, classes] logits (or one "
                         f"binary logit). Received: teacher with task {task.value!r} "
                         f"({teacher.outputs[0].shape})")
    if len(student.outputs) != 1:
        raise ValueError(f"student must have exactly one output (logits). Received: student "
                         f"with {len(student.outputs)} outputs")
    t_shape, s_shape = teacher.outputs[0].shape, student.outputs[0].shape
    if t_shape.rank != 2 or s_shape.rank != 2 or t_shape[-1] != s_shape[-1]:
        raise ValueError("student must output one logit per teacher class. Received: teacher "
                         f"output shape {tuple(t_shape)}, student output shape {tuple(s_shape)}")
    if getattr(student.layers[-1], "activation", None) in (tf_keras.activations.softmax,
                                                           tf_keras.activations.sigmoid):
        raise ValueError(f"student must output logits, not probabilities. Received: student "
                         f"whose last layer {student.layers[-1].name!r} has a "
                         f"{student.layers[-1].activation.__name__} activation")
    if is_stochastic(student):
        raise ValueError(f"student must be deterministic (the point is one forward pass). "
                         f"Received: student {student.name!r} with a stochastic layer")
    return task


# ---------------------------------------------------------------------------------------------
# Building and training
# ---------------------------------------------------------------------------------------------
def _with_mi_head(student, mean_mi):
    """``x -> [logits, softplus(Dense(1)(penultimate features))]`` sharing the student's layers.

    The head starts at the constant ``mean_mi`` (zero kernel, bias = softplus^-1(mean_mi)): its
    first loss is then Var(MI), not the error of a random unit that may start far off.
    """
    last = student.layers[-1]
    try:
        features = last.input
    except (AttributeError, ValueError) as err:
        raise ValueError("uncertainty_head=True needs the student's penultimate features (the "
                         f"input of its last layer). Received: student whose last layer "
                         f"{last.name!r} has no single input ({err})") from None
    if isinstance(features, (list, tuple, dict)):
        raise ValueError("uncertainty_head=True needs a last layer with one input. Received: "
                         f"student whose last layer {last.name!r} has {len(features)} inputs")
    if features.shape.rank != 2:
        raise ValueError("uncertainty_head=True needs flat [batch, features] penultimate "
                         f"features. Received: shape {tuple(features.shape)}")
    head = tf_keras.layers.Dense(
        1, activation="softplus", name=f"{student.name}_mi_head", kernel_initializer="zeros",
        bias_initializer=tf_keras.initializers.Constant(
            float(inverse_softplus(max(mean_mi, 1e-4)))))
    return tf_keras.Model(student.inputs, [student.outputs[0], head(features)],
                          name=f"{student.name}_with_mi")


def _distillation_inputs(x, unlabeled_x, noise_stddev, noise_copies, rng):
    base = x if unlabeled_x is None else np.concatenate([x, unlabeled_x])
    parts = [base]
    if noise_stddev > 0:
        for _ in range(noise_copies):
            parts.append(base + rng.normal(0.0, noise_stddev, size=base.shape).astype(np.float32))
    return np.concatenate(parts).astype(np.float32)


def _make_step(model, has_head, optimizer, mi_weight, input_shape, num_classes, task):
    # One trace for every batch size, the last partial batch included.
    @tf.function(input_signature=[tf.TensorSpec((None,) + input_shape, tf.float32),
                                  tf.TensorSpec((None, num_classes), tf.float32),
                                  tf.TensorSpec((None,), tf.float32)])
    def step(xb, pb, mb):
        with tf.GradientTape() as tape:
            out = model(xb, training=True)
            logits = out[0] if has_head else out
            ce = soft_target_cross_entropy(pb, logits, task)
            se = mi_squared_error(mb, out[1]) if has_head else tf.zeros_like(ce)
            loss = tf.reduce_mean(ce + mi_weight * se)
            if model.losses:
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, model.trainable_variables) if g is not None])
        return loss, tf.reduce_sum(ce), tf.reduce_sum(se)
    return step


def distill(teacher, student, x, num_samples=100, epochs=100, batch_size=32,
            uncertainty_head=False, unlabeled_x=None, noise_stddev=0.0, noise_copies=1,
            mi_weight=1.0, optimizer="adam", learning_rate=1e-3, seed=None, verbose=0):
    """Train ``student`` on ``teacher``'s Monte Carlo posterior predictive (see module doc).

    Args:
        teacher: a trained classifier with logits output, as a tf_keras model (e.g. from
            `bayesify`) or a method's result (`DeepEnsemble`, `laplace`, ...). Only read: its weights and state are never changed. A teacher with no stochastic layer
            works but warns: its soft targets carry no epistemic part (every MI is 0).
        student: a deterministic, built tf_keras model (Sequential with an Input, or
            Functional) with one input and one output of logits, one per teacher class. It is
            trained in place; `Distillation.student` is this same object.
        x: [N, ...] training inputs (labels are not used).
        num_samples: S, teacher posterior samples per input for the soft targets (>= 1).
        epochs: passes over the distillation inputs (>= 1).
        batch_size: examples per gradient step (>= 1).
        uncertainty_head: also regress the teacher's mutual information with a softplus unit
            on the student's penultimate features (see `Distillation.uncertainty_model`).
        unlabeled_x: optional [M, ...] extra inputs the teacher labels (e.g. unlabeled data).
        noise_stddev: standard deviation of Gaussian input noise for augmented copies (>= 0;
            0 adds none), in the units of ``x``.
        noise_copies: noisy copies of ``x`` (and ``unlabeled_x``) when ``noise_stddev > 0``.
        mi_weight: weight of the MI squared error in the loss (>= 0; with the head only).
        optimizer: a tf_keras optimizer instance, or a name for `tf_keras.optimizers.get`.
        learning_rate: the learning rate of an optimizer given by name (> 0).
        seed: an int makes the soft targets, the noise and the shuffling reproducible.
        verbose: 0 silent, 1 one line per epoch.

    Returns:
        `Distillation` (student, uncertainty_model, history, teacher targets).
    """
    num_samples = _check_int("num_samples", num_samples, 1)
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    noise_copies = _check_int("noise_copies", noise_copies, 1)
    noise_stddev = _check_number("noise_stddev", noise_stddev)
    mi_weight = _check_number("mi_weight", mi_weight)
    learning_rate = _check_number("learning_rate", learning_rate, allow_zero=False)
    if not isinstance(uncertainty_head, bool):
        raise ValueError(f"uncertainty_head must be True or False. Received: "
                         f"uncertainty_head={uncertainty_head!r}")
    if seed is not None:
        seed = _check_int("seed", seed, 0)
    if verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 or 1. Received: verbose={verbose!r}")
    # predict takes the teacher as given: a calibrated one (tfp_bnn.calibrate) gives calibrated
    # soft targets, which its predictive model alone would not.
    source, teacher = teacher, methods.predictive_model(teacher, "teacher")
    task = _check_pair(teacher, student)
    x = _check_inputs("x", x, student)
    if unlabeled_x is not None:
        unlabeled_x = _check_inputs("unlabeled_x", unlabeled_x, student)
    if isinstance(optimizer, str):
        optimizer = tf_keras.optimizers.get({"class_name": optimizer,
                                             "config": {"learning_rate": learning_rate}})
    elif not isinstance(optimizer, tf_keras.optimizers.Optimizer):
        raise ValueError("optimizer must be a tf_keras optimizer or its name. Received: "
                         f"optimizer={optimizer!r}")

    stochastic = is_stochastic(teacher)
    if not stochastic:
        warnings.warn(f"teacher {teacher.name!r} has no stochastic layer: the soft targets are "
                      "one deterministic prediction and carry no epistemic part (mutual "
                      "information 0).", UserWarning, stacklevel=2)

    rng = np.random.default_rng(seed)
    inputs = _distillation_inputs(x, unlabeled_x, noise_stddev, noise_copies, rng)
    with warnings.catch_warnings():
        # predict's own "no stochastic layer" warning would repeat the one above.
        warnings.filterwarnings("ignore", message=".*has no stochastic layer", category=UserWarning)
        pred = mc_predict(source, inputs, num_samples=num_samples, batch_size=_PREDICT_BATCH_SIZE,
                          seed=seed, verbose=0)
    targets = pred.probabilities.astype(np.float32)
    target_mi = pred.mutual_information.astype(np.float32)
    teacher_entropy = float(np.mean(tasks.entropy(targets.astype(np.float64))))

    model = _with_mi_head(student, float(target_mi.mean())) if uncertainty_head else student
    step = _make_step(model, uncertainty_head, optimizer, mi_weight, inputs.shape[1:],
                      targets.shape[1], task)
    history = {"loss": [], "cross_entropy": [], "kl": []}
    if uncertainty_head:
        history["mi_mse"] = []
    n = len(inputs)
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss_sum, ce_sum, se_sum = 0.0, 0.0, 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss, ce, se = step(tf.constant(inputs[idx]), tf.constant(targets[idx]),
                                tf.constant(target_mi[idx]))
            loss_sum += float(loss) * len(idx)
            ce_sum += float(ce)
            se_sum += float(se)
        history["loss"].append(loss_sum / n)
        history["cross_entropy"].append(ce_sum / n)
        history["kl"].append(ce_sum / n - teacher_entropy)
        if uncertainty_head:
            history["mi_mse"].append(se_sum / n)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
                f"{k}={v[-1]:.5f}" for k, v in history.items()))
    tasks.declare(student, task)  # a one-logit student is the teacher's binary classifier
    return Distillation(student=student, uncertainty_model=model if uncertainty_head else None,
                        history=history, teacher_probabilities=targets,
                        teacher_mutual_information=target_mi, teacher_stochastic=stochastic,
                        task=task)
