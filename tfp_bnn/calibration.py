"""Post-hoc calibration fitted on validation data: `calibrate` returns a model every consumer takes.

A BNN's Monte Carlo predictive can be mis-calibrated (mean-field VI with the honest 1/N KL is
underconfident on small data). Instead of re-training under a grid of KL multipliers, one or a
few numbers are fitted on a validation set and applied after the model, in `tfp_bnn.predict`
and inside the exported SavedModel (core TF ops, so the served graph still loads without TFP).
With ``pbar = (1/S) sum_s softmax(z_s)`` the MC predictive and ``l = log pbar``:

    "temperature", target "predictive":  p = softmax(l / T)                  (T > 0, a scalar)
    "temperature", target "samples":     p = (1/S) sum_s softmax(z_s / T)
    "vector":                            p = softmax(w * l + b)              (w, b in R^C)
    "variance" (regression):             variance = s * variance             (s > 0, a scalar)

T, w and b are MAP fits to the validation NLL of the MC predictive, under ``log T ~ N(0, 1)``
and a standard-normal prior on the step of w, b from the temperature (``w = 1/T, b = 0``): the
priors keep them finite on a validation set the model classifies all right, where the NLL
alone falls without end as T -> 0; ``s = mean_id (y - m)^2 / v`` is the closed-form
minimiser of the validation Gaussian NLL.

A temperature after the average ("predictive", the default) is the one that works: on the
digits VI recipe of ``scripts/calibration_digits.py`` (two seeds) it took the test NLL from
0.139 / 0.128 to 0.069 / 0.043 and the ECE from 0.083 / 0.088 to 0.019 / 0.012, while the same
fit inside every sample ("samples") reached only 0.122 / 0.112 and 0.072 / 0.075: the
underconfidence is the samples' disagreement, which sharpening each sample leaves in the mean.

What changes: for classification ``probabilities`` and ``predictive_entropy`` are those of the
calibrated predictive; with target "predictive" ``expected_entropy`` and ``mutual_information``
stay the model's (the temperature acts after the average, on no single sample), with target
"samples" every field is that of the scaled logits. For "variance" the total, epistemic and
aleatoric variances are all scaled by s.

Example (a model that outputs its input as logits; a BNN is calibrated the same way):
    >>> model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(
    ...     2, use_bias=False, kernel_initializer="identity")])
    >>> z = np.array([[3., 0.], [0., 3.], [3., 0.], [0., 3.]], np.float32)
    >>> cal = tfp_bnn.calibrate(model, z, [0, 1, 1, 1], num_samples=1)  # one of four wrong
    >>> round(cal.temperature, 2)                                      # softer than T = 1
    1.81
    >>> tfp_bnn.predict(cal, z[:2], num_samples=1).probabilities.round(3)
    array([[0.84, 0.16],
           [0.16, 0.84]], dtype=float32)

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (temperature and vector
    scaling). Kuleshov et al., "Accurate Uncertainties for Deep Learning Using Calibrated
    Regression", ICML 2018; Levi et al., "Evaluating and Calibrating Uncertainty Prediction in
    Regression Tasks", 2019 (scaling the predictive variance).
"""
import math
import warnings

import numpy as np

from tfp_bnn import methods, metrics, options, search, tasks
from tfp_bnn._keras import tf, tfp
from tfp_bnn.options import Calibration, CalibrationTarget, Task
from tfp_bnn.predict import predict as mc_predict

__all__ = ["Calibrated", "calibrate", "temperature_scale", "vector_scale", "saved_task",
           "TEMPERATURE_RANGE"]

# T is searched on a log scale in this range: wider than any calibrated digits/Iris model needs
# (T = 0.3 .. 3), and a fitted T on its edge says the validation set cannot pin it down.
TEMPERATURE_RANGE = (1e-2, 1e2)
# log(0) of a class whose MC-averaged probability underflowed float32: a finite floor keeps
# w * l + b finite for every w (0 * -inf would be NaN).
_LOG_FLOOR = -70.0


def _log_probabilities(probabilities):
    return tf.maximum(tf.math.log(tf.cast(probabilities, tf.float32)), _LOG_FLOOR)


def temperature_scale(probabilities, temperature):
    """``softmax(log(probabilities) / T)`` over the last axis (TF ops; [..., C] in and out)."""
    return tf.exp(tf.nn.log_softmax(_log_probabilities(probabilities) / temperature, axis=-1))


def vector_scale(probabilities, weights, bias):
    """``softmax(w * log(probabilities) + b)`` over the last axis (TF ops; w, b of shape [C])."""
    logits = tf.cast(weights, tf.float32) * _log_probabilities(probabilities)
    return tf.exp(tf.nn.log_softmax(logits + tf.cast(bias, tf.float32), axis=-1))


class Calibrated:
    """A model with post-hoc calibration fitted on validation data; built by `calibrate`.

    `tfp_bnn.predict`, `tfp_bnn.export_savedmodel` and `tfp_bnn.conformal` take it wherever they
    take the model (the `tfp_bnn.methods.PostHoc` protocol).

    Attributes:
        model: the wrapped model or method (not copied, not changed).
        task: the model's `Task`.
        method: `Calibration` ("temperature", "vector" or "variance").
        target: `CalibrationTarget` of a temperature ("predictive" or "samples"), else None.
        temperature: the fitted T ("temperature"), else None.
        weights, bias: the fitted [C] arrays ("vector"), else None.
        variance_scale: the fitted s ("variance"), else None.
        validation_nll: ``(before, after)``: the validation NLL the fit started from and reached.
        num_samples: S of the validation predictions the values were fitted on.
    """

    alpha = None  # no conformal level: a `tfp_bnn.conformal` result has one

    def __init__(self, model, task, method, target=None, temperature=None, weights=None,
                 bias=None, variance_scale=None, validation_nll=None, num_samples=None):
        self.model = model
        self.task = task
        self.method = method
        self.target = target
        self.temperature = temperature
        self.weights = weights
        self.bias = bias
        self.variance_scale = variance_scale
        self.validation_nll = validation_nll
        self.num_samples = num_samples

    def as_model(self):
        return methods.predictive_model(self.model, "model")

    @property
    def served(self):
        """Served output name -> summary key: the task's outputs (calibrated in place)."""
        return dict(tasks.get(self.task).served)

    def summary(self, samples, summarize, exact=True, alpha=None, seed=None):
        """The task's summary of ``[S, B, ...]`` samples, calibrated (TF ops; see module doc).

        Args:
            samples: the model's output samples.
            summarize: ``summarize(samples, exact)``, the caller's summary of the model's
                samples (`tfp_bnn.predict.summarize` for its task).
            exact: as in `tfp_bnn.predict.summarize`.
            alpha, seed: unused: calibration has no level and draws nothing.
        """
        del alpha, seed
        if self.target is CalibrationTarget.SAMPLES:
            samples = tf.cast(samples, tf.float32) / self.temperature
        out = dict(summarize(samples, exact))
        if self.method is Calibration.VARIANCE:
            for key in ("variance", "epistemic_variance", "aleatoric_variance"):
                out[key] = out[key] * self.variance_scale
        elif self.target is CalibrationTarget.PREDICTIVE or self.method is Calibration.VECTOR:
            out["probabilities"] = self._scale(out["probabilities"])
            out["predictive_entropy"] = tasks.entropy(out["probabilities"])
        return out

    def _scale(self, probabilities):
        if self.method is Calibration.VECTOR:
            return vector_scale(probabilities, self.weights, self.bias)
        return temperature_scale(probabilities, self.temperature)

    def get_config(self):
        """The fitted values as a JSON-clean dict (saved with an export)."""
        return {"calibration": self.method.value, "task": self.task.value,
                "target": None if self.target is None else self.target.value,
                "temperature": self.temperature,
                "weights": None if self.weights is None else [float(v) for v in self.weights],
                "bias": None if self.bias is None else [float(v) for v in self.bias],
                "variance_scale": self.variance_scale}

    @classmethod
    def from_config(cls, model, config):
        """The `Calibrated` of ``model`` with the values of a `get_config` dict (no refit).

        ``config`` may also hold ``num_samples`` and ``validation_nll`` (informational).

        Example:
            >>> model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(
            ...     2, use_bias=False, kernel_initializer="identity")])
            >>> z = np.array([[3., 0.], [0., 3.], [3., 0.], [0., 3.]], np.float32)
            >>> cal = calibrate(model, z, [0, 1, 1, 1], num_samples=1)
            >>> Calibrated.from_config(model, cal.get_config()).temperature == cal.temperature
            True
        """
        _check_wrappable(model)
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict from Calibrated.get_config. Received: "
                             f"config of type {type(config).__name__}")
        method = options.choice("calibration", config.get("calibration"), Calibration,
                                what="calibration method")
        resolved = saved_task(model, options.choice("task", config.get("task"), Task))
        needed = {Calibration.TEMPERATURE: ("temperature",),
                  Calibration.VECTOR: ("weights", "bias"),
                  Calibration.VARIANCE: ("variance_scale",)}[method]
        missing = [k for k in needed if config.get(k) is None]
        if missing:
            raise ValueError(f"config of method={method.value!r} lacks {missing}. Received: "
                             f"config={config!r}")
        target = config.get("target")
        values = {k: None for k in ("temperature", "weights", "bias", "variance_scale")}
        if method is Calibration.VECTOR:
            values.update(weights=np.asarray(config["weights"], np.float64),
                          bias=np.asarray(config["bias"], np.float64))
        else:
            key = needed[0]
            values[key] = options.number(key, config[key], 0.0, strict=True)
        nll = config.get("validation_nll")
        return cls(model=model, task=resolved, method=method,
                   target=None if target is None else options.choice(
                       "target", target, CalibrationTarget, what="calibration target"),
                   validation_nll=None if nll is None else tuple(float(v) for v in nll),
                   num_samples=config.get("num_samples"), **values)

    def __repr__(self):
        fitted = {k: v for k, v in self.get_config().items() if v is not None}
        return f"Calibrated({fitted})"


def saved_task(model, task):
    """``task``, the one saved post-hoc values were fitted for, checked against ``model``'s own
    task (`Calibrated.from_config`, `tfp_bnn.conformal.Conformal.from_config`); a ValueError
    naming both when they differ."""
    predictive = methods.predictive_model(model, "model")
    own = tasks.infer(predictive)
    if own is not None and own is not task:
        raise ValueError(f"the saved values are for task {task.value!r}; model "
                         f"{predictive.name!r} has task {own.value!r}.")
    return tasks.resolve(predictive, task)


def _nll(probabilities, y):
    return metrics.nll(np.asarray(probabilities, np.float64), y)


def _search_temperature(nll_of, n):
    """The MAP temperature in `TEMPERATURE_RANGE` under ``log T ~ N(0, 1)``:

        T = argmin_T NLL_val(T) + (log T)^2 / (2 n)

    by a log grid, then golden section inside the best grid cell. Without the prior a
    validation set the model classifies all right sends T to 0: on Iris (24 validation
    examples, all right) T reached the range's floor 0.01 and the test NLL went from 0.20 to
    2.33; on the digits recipe the prior also lowered the test NLL (0.069 against 0.077).
    """
    def objective(log_t):
        return nll_of(math.exp(log_t)) + log_t ** 2 / (2 * n)

    lo, hi = (math.log(v) for v in TEMPERATURE_RANGE)
    grid = np.linspace(lo, hi, 41)
    log_t, best = search.grid_golden_max(lambda g: -objective(g), grid, iters=30)
    if best in (0, len(grid) - 1):
        warnings.warn(
            f"the fitted temperature is at the edge of its range {TEMPERATURE_RANGE} (T = "
            f"{math.exp(grid[best]):g}): the validation NLL keeps falling that way, as it does "
            "when the model classifies every validation example right with a margin. Use a "
            "larger or harder validation set.", UserWarning, stacklevel=3)
        return math.exp(grid[best])
    return math.exp(log_t)


def _fit_vector(probabilities, y, temperature):
    """w, b of the MAP fit of softmax(w * log p + b): convex, so L-BFGS finds the optimum.

        min_{w,b} NLL_val(w, b) + (|w - 1/T|^2 + |b|^2) / (2 n)

    The standard-normal prior on the step from temperature scaling (T fitted first) keeps w
    finite when the model separates the validation set: without it, on the digits recipe
    (201 validation examples, 99 % accuracy) w reached ~1000 and the test NLL 0.64, against
    0.08 with it and 0.077 with the temperature alone (``scripts/calibration_digits.py``).
    """
    log_p = _log_probabilities(probabilities)
    labels = tf.constant(y)
    num_classes = int(log_p.shape[-1])
    start = tf.concat([tf.fill([num_classes], 1.0 / temperature), tf.zeros([num_classes])], 0)
    prior_weight = 0.5 / len(y)

    def loss_and_gradient(params):
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits = params[:num_classes] * log_p + params[num_classes:]
            loss = (tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
                    + prior_weight * tf.reduce_sum(tf.square(params - start)))
        return loss, tape.gradient(loss, params)

    result = tfp.optimizer.lbfgs_minimize(loss_and_gradient, start, max_iterations=200,
                                          tolerance=1e-8)
    params = result.position.numpy().astype(np.float64)
    return params[:num_classes], params[num_classes:]


def _check_wrappable(model, name="model"):
    if isinstance(model, methods.PostHoc):
        kind = "conformal" if model.alpha is not None else "calibrated"
        raise ValueError(
            f"{name} is already {kind} ({model!r}): calibrate the uncalibrated model once, "
            f"then pass the result to tfp_bnn.conformal. Received: {name} of type "
            f"{type(model).__name__}")


def _targets(y, pred, name):
    """Validation targets checked against the predictions: class indices or [N, D] values."""
    if pred.is_classification:
        return metrics.check_labels(y, len(pred.probabilities), pred.probabilities.shape[1],
                                    name=name)
    t = np.asarray(y, dtype=np.float64)
    if t.size != pred.mean.size:
        raise ValueError(f"{name} must hold one target per output: {pred.mean.shape} for these "
                         f"inputs. Received: {name}.shape={t.shape}")
    if not np.isfinite(t).all():
        raise ValueError(f"{name} must be finite. Received: {name} with "
                         f"{int((~np.isfinite(t)).sum())} NaN or infinite value(s)")
    return t.reshape(pred.mean.shape)


def calibrate(model, x_val, y_val, method="temperature", target="predictive", num_samples=100,
              seed=0, batch_size=None, task=None):
    """Fit a post-hoc calibration of ``model`` on validation data (see module doc).

        temperature: T = argmin_T NLL_val(softmax(log pbar / T)) + (log T)^2 / (2 n)
                     (or the NLL of the scaled samples)
        vector:      w, b = argmin NLL_val(softmax(w * log pbar + b))
                            + (|w - 1/T|^2 + |b|^2) / (2 n)
        variance:    s = mean_id (y_id - m_id)^2 / v_id

    Args:
        model: anything `tfp_bnn.predict` takes (a tf_keras model, a `DeepEnsemble` after fit,
            a `laplace` result, a `SWAG` callback after fit, a `distill` result); not changed.
        x_val, y_val: a validation set held out from training (never the training data: on it
            the model looks better calibrated than it is). Labels are class indices in [0, C).
        method: "temperature" or "vector" (classification), "variance" (regression).
        target: where a temperature acts: "predictive" (the log of the MC-averaged predictive;
            the default, it calibrates better) or "samples" (each sample's logits).
        num_samples: S of the validation predictions; predict the calibrated model with the same
            S (the fitted values are for that predictive).
        seed: seed of the validation predictions (None: unseeded).
        batch_size: as in `tfp_bnn.predict`.
        task: None (the model's own task) or a `tfp_bnn.Task`, as in `tfp_bnn.predict`.

    Returns:
        A `Calibrated`, accepted by `tfp_bnn.predict`, `tfp_bnn.export_savedmodel` and
        `tfp_bnn.conformal`.

    Example:
        >>> model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(
        ...     2, use_bias=False, kernel_initializer="identity")])     # logits in, logits out
        >>> z = np.array([[3., 0.], [0., 3.], [3., 0.], [0., 3.]], np.float32)
        >>> cal = calibrate(model, z, [0, 1, 1, 1], num_samples=1)
        >>> [round(v, 3) for v in cal.validation_nll]                   # NLL before, after
        [0.799, 0.589]

    References:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.
    """
    _check_wrappable(model)
    method = options.choice("method", method, Calibration, what="calibration method")
    target = options.choice("target", target, CalibrationTarget, what="calibration target")
    if method is not Calibration.TEMPERATURE and target is not CalibrationTarget.PREDICTIVE:
        raise ValueError(f"target applies to method='temperature' only. Received: "
                         f"target={target.value!r} with method={method.value!r}")
    predictive = methods.predictive_model(model, "model")
    resolved = tasks.resolve(predictive, task)
    if target is CalibrationTarget.SAMPLES and tasks.outputs_probabilities(predictive):
        raise ValueError(f"target='samples' divides each sample's logits by T; model "
                         f"{predictive.name!r} outputs probabilities (a softmax or sigmoid "
                         "output layer). Use target='predictive'.")
    classifies = Task(resolved).is_classification
    if classifies != (method is not Calibration.VARIANCE):
        valid = ["temperature", "vector"] if classifies else ["variance"]
        raise ValueError(f"method={method.value!r} does not calibrate a {resolved.value} model "
                         f"(task {resolved.value!r}). Valid: {valid}")
    samples_needed = method is Calibration.TEMPERATURE and target is CalibrationTarget.SAMPLES
    pred = mc_predict(model, x_val, num_samples=num_samples, seed=seed,
                               batch_size=batch_size, return_samples=samples_needed,
                               verbose=0, task=resolved)
    y = _targets(y_val, pred, "y_val")
    fitted = dict(model=model, task=resolved, method=method, num_samples=int(num_samples))

    if method is Calibration.VARIANCE:
        if not (pred.variance > 0).all():
            raise ValueError(
                f"method='variance' scales the predictive variance, which is 0 for "
                f"{int((pred.variance <= 0).sum())} validation value(s): the model has no "
                "stochastic layer and no Gaussian head, so there is nothing to scale.")
        ratio = (y - pred.mean) ** 2 / pred.variance
        scale = float(np.mean(ratio))
        before = metrics.gaussian_nll(pred.mean, pred.variance, y)
        after = metrics.gaussian_nll(pred.mean, scale * pred.variance, y)
        return Calibrated(variance_scale=scale, validation_nll=(before, after), **fitted)

    before = _nll(pred.probabilities, y)
    if samples_needed:
        samples = tf.constant(pred.samples, tf.float32)
        strategy = tasks.get(resolved)
        temperature = _search_temperature(
            lambda t: _nll(strategy.summary(samples / t)["probabilities"], y), len(y))
        after = _nll(strategy.summary(samples / temperature)["probabilities"], y)
        return Calibrated(target=target, temperature=temperature,
                          validation_nll=(before, after), **fitted)
    probs = tf.constant(pred.probabilities, tf.float32)
    temperature = _search_temperature(lambda t: _nll(temperature_scale(probs, t), y), len(y))
    if method is Calibration.TEMPERATURE:
        after = _nll(temperature_scale(probs, temperature), y)
        return Calibrated(target=target, temperature=temperature,
                          validation_nll=(before, after), **fitted)
    weights, bias = _fit_vector(probs, y, temperature)
    after = _nll(vector_scale(probs, weights, bias), y)
    return Calibrated(weights=weights, bias=bias, validation_nll=(before, after), **fitted)
