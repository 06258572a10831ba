"""What a model's output means (its task), and the one Monte Carlo summary of each task.

A task is one of `tfp_bnn.options.Task`. Each has a small strategy object, chosen by `get`,
that knows its likelihood (the NLL of held-out labels), its summary of ``[S, B, ...]`` output
samples, and the names of the outputs a SavedModel serves. For a classifier with per-sample
logits ``z_s`` and class logits ``c(z_s)`` (``z`` itself for ``"multiclass"``, ``[0, z]`` for
``"binary"``, so ``softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]``):

    p_s = softmax(c(z_s)),   probabilities = (1/S) sum_s p_s               [B, C]  (C = 2 binary)
    predictive_entropy = H[probabilities],  expected_entropy = (1/S) sum_s H[p_s]
    mutual_information = predictive_entropy - expected_entropy >= 0
    mean_logits, logit_variance = mean and variance of z_s over samples

For ``"regression"`` (the output is a mean ``mu``) and ``"gaussian"`` (a Gaussian head:
``[mu, sigma]``):

    mean = (1/S) sum_s mu_s,  epistemic_variance = Var_s[mu_s],
    aleatoric_variance = (1/S) sum_s sigma_s^2 (0 for "regression"),
    variance = epistemic_variance + aleatoric_variance

A model's task is, in this order: the one declared on it (`declare`; `tfp_bnn.bayesify`
saves it in the model's config), read from its compiled loss (sparse/categorical
cross-entropy, binary cross-entropy, `tfp_bnn.losses.GaussianNLL`, mean squared/absolute error;
tf_keras or Keras 3, as objects, functions or strings), or read from its output layer (a
registered head such as `tfp_bnn.heads.GaussianHead`; a softmax, or a one-unit sigmoid; several
linear units are logits). A one-unit linear output of an uncompiled model could be a logit or a
regression mean: `resolve` refuses to guess.

A classifier whose output layer applies the softmax (or the sigmoid) outputs probabilities, not
logits (`outputs_probabilities`); its strategy (``get(task, probabilities=True)``) takes
``log p`` (``log p - log(1 - p)`` for binary) as the logits, so ``softmax`` of them gives back
``p`` and every formula above holds.

Example:
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(1)])
    >>> model.compile("adam", tf_keras.losses.BinaryCrossentropy(from_logits=True))
    >>> resolve(model) == Task.BINARY == "binary"
    True
    >>> get("binary").summary(tf.zeros([10, 32, 1]))["probabilities"].shape
    TensorShape([32, 2])
"""
import weakref

import numpy as np

from tfp_bnn import metrics
from tfp_bnn._keras import keras3, tf, tf_keras
from tfp_bnn.losses import GaussianNLL
from tfp_bnn.options import Task, choice

__all__ = ["Task", "entropy", "get", "resolve", "infer", "declare", "declared", "from_loss",
           "register_output_layer", "outputs_probabilities", "output_names"]


# ---------------------------------------------------------------------------------------------
# The per-task strategies
# ---------------------------------------------------------------------------------------------
def entropy(p):
    """H[p] over the last axis; 0 log 0 = 0."""
    # xlogy(p, p) = p log p, and 0 where p == 0.
    return -tf.reduce_sum(tf.math.xlogy(p, p), axis=-1)


def _mean(t, exact):
    # exact: shifted by the first sample, so S equal samples (a deterministic model) give that
    # sample back exactly and their variance and mutual information are exactly 0. The served
    # graph takes plain means (fewer ops per request; it evaluates a deterministic model with
    # S = 1, where plain means are exact too).
    if exact:
        return t[0] + tf.reduce_mean(t - t[0], axis=0)
    return tf.reduce_mean(t, axis=0)


def _moments(t, exact):
    """Mean and (biased) variance over the sample axis 0."""
    if exact:
        d = t - t[0]
        mean_d = tf.reduce_mean(d, axis=0)
        return t[0] + mean_d, tf.reduce_mean(tf.square(d - mean_d), axis=0)
    mean = tf.reduce_mean(t, axis=0)
    return mean, tf.reduce_mean(tf.math.squared_difference(t, mean), axis=0)


def _softmax(z):
    # exp(log_softmax), not tf.nn.softmax: on CPU the oneDNN Softmax kernel costs ~30 us per
    # call on a [10, 1, 3] tensor, a fifth of a whole served request at batch 1 (measured, TF
    # 2.21); LogSoftmax + Exp cost ~3 us. Same values to float rounding.
    return tf.exp(tf.nn.log_softmax(z, axis=-1))


def _width(model):
    shape = tuple(model.outputs[0].shape)  # a TensorShape (tf_keras) or a tuple (Keras 3)
    return shape[-1] if shape else None


# Probabilities are clipped to [_TINY, 1 - _EPS] before the log: float32 rounds p near 1 to 1.
_TINY = 1e-30
_EPS = 6e-8


class _Classifier:
    """Logits (or probabilities) in, class probabilities and the entropy decomposition out."""

    is_classification = True

    def __init__(self, probabilities=False):
        self.probabilities = probabilities

    def logits(self, outputs):
        """The model's outputs as logits (the identity unless it outputs probabilities)."""
        z = tf.cast(tf.convert_to_tensor(outputs), tf.float32)
        return self.from_probabilities(z) if self.probabilities else z
    # served name -> summary key (the README documents the served names)
    served = {"mean_logits": "mean_logits", "variance": "logit_variance",
              "probabilities": "probabilities", "predictive_entropy": "predictive_entropy",
              "mutual_information": "mutual_information"}

    def class_logits(self, z):
        raise NotImplementedError

    def log_probabilities(self, logits):
        """``log p(y = c)`` per class, ``[..., C]``, from the model's logits."""
        return tf.nn.log_softmax(self.class_logits(tf.cast(logits, tf.float32)), axis=-1)

    def summary(self, samples, exact=True):
        z = self.logits(samples)
        probs_s = _softmax(self.class_logits(z))
        probs = _mean(probs_s, exact)
        total = entropy(probs)
        aleatoric = _mean(entropy(probs_s), exact)
        mean_logits, var = _moments(z, exact)
        return {"mean_logits": mean_logits, "logit_variance": var, "probabilities": probs,
                "predictive_entropy": total, "expected_entropy": aleatoric,
                # Jensen: total >= aleatoric; clip the float round-off below zero.
                "mutual_information": tf.maximum(total - aleatoric, 0.0)}

    def deterministic(self, outputs):
        logits = self.logits(outputs)
        return {"logits": tf.identity(logits, name="logits"),
                "probabilities": _softmax(self.class_logits(logits))}

    def labels(self, y):
        return np.asarray(y).reshape(-1).astype(np.int64)

    def scores(self, pred, y=None):
        """Mean uncertainty terms of a `tfp_bnn.Prediction`, and its NLL/accuracy on ``y``."""
        values = {"predictive_entropy": float(pred.predictive_entropy.mean()),
                  "mutual_information": float(pred.mutual_information.mean())}
        if y is not None:
            y = self.labels(y)
            values["nll"] = metrics.nll(pred.probabilities, y)
            values["accuracy"] = metrics.accuracy(pred.probabilities, y)
        return values


class _Multiclass(_Classifier):
    task = Task.MULTICLASS

    def class_logits(self, z):
        return z

    def from_probabilities(self, p):
        return tf.math.log(tf.maximum(p, _TINY))

    def check(self, width):
        return width is None or width >= 2, "C >= 2 logits"


class _Binary(_Classifier):
    task = Task.BINARY

    def class_logits(self, z):
        # [0, z]: softmax gives [1 - sigmoid(z), sigmoid(z)], through the multiclass formulas.
        return tf.concat([tf.zeros_like(z), z], axis=-1)

    def from_probabilities(self, p):
        p = tf.clip_by_value(p, _TINY, 1.0 - _EPS)
        return tf.math.log(p) - tf.math.log1p(-p)

    def check(self, width):
        return width is None or width == 1, "one logit"


class _Regression:
    is_classification = False

    def __init__(self, probabilities=False):
        del probabilities  # a regression output is never a probability
    served = {"mean": "mean", "variance": "variance", "epistemic_variance": "epistemic_variance",
              "aleatoric_variance": "aleatoric_variance"}
    task = Task.REGRESSION

    def split(self, z):
        return z, None

    def check(self, width):
        return True, "D means"

    def summary(self, samples, exact=True):
        mu, scale = self.split(tf.cast(tf.convert_to_tensor(samples), tf.float32))
        mean, epistemic = _moments(mu, exact)
        aleatoric = (tf.zeros_like(mean) if scale is None
                     else _mean(tf.square(scale), exact))
        return {"mean": mean, "epistemic_variance": epistemic, "aleatoric_variance": aleatoric,
                "variance": epistemic + aleatoric}

    def deterministic(self, outputs):
        mean, scale = self.split(tf.cast(outputs, tf.float32))
        if scale is None:
            return {"mean": tf.identity(mean, name="mean")}
        return {"mean": mean, "aleatoric_variance": tf.square(scale)}

    def scores(self, pred, y=None):
        """Mean variances of a `tfp_bnn.Prediction`, and its Gaussian NLL/RMSE on ``y``."""
        values = {"aleatoric_variance": float(pred.aleatoric_variance.mean()),
                  "epistemic_variance": float(pred.epistemic_variance.mean())}
        if y is not None:
            values["nll"] = metrics.gaussian_nll(pred.mean, pred.variance, y)
            values["rmse"] = metrics.rmse(pred.mean, y)
        return values


class _Gaussian(_Regression):
    task = Task.GAUSSIAN

    def split(self, z):
        return tf.split(z, 2, axis=-1)

    def check(self, width):
        return width is None or width % 2 == 0, "D means and D standard deviations"


_STRATEGIES = {(cls.task, probabilities): cls(probabilities)
               for cls in (_Multiclass, _Binary, _Regression, _Gaussian)
               for probabilities in (False, True)}


def get(task, probabilities=False):
    """The strategy of ``task`` (a `Task` or its string).

    ``probabilities``: the model's outputs are class probabilities (`outputs_probabilities`),
    not logits; ignored for the regression tasks.
    """
    return _STRATEGIES[choice("task", task, Task), bool(probabilities)]


def output_names(task):
    """The output names of the served ``serving_default`` signature for ``task``."""
    return tuple(get(task).served)


# ---------------------------------------------------------------------------------------------
# Declared tasks
# ---------------------------------------------------------------------------------------------
_DECLARED = weakref.WeakKeyDictionary()


def declare(model, task):
    """Record ``task`` as the task of ``model`` (checked against its output width)."""
    task = _checked(model, choice("task", task, Task))
    _DECLARED[model] = task
    return task


def declared(model):
    """The task declared on ``model``, or None."""
    try:
        return _DECLARED.get(model)
    except TypeError:  # not weak-referenceable: nothing was declared on it
        return None


def _checked(model, task):
    width = _width(model) if getattr(model, "outputs", None) else None
    ok, needs = get(task).check(width)
    if not ok:
        raise ValueError(f"task={task.value!r} needs an output of {needs}; model "
                         f"{model.name!r} outputs {tuple(model.outputs[0].shape)}.")
    return task


# ---------------------------------------------------------------------------------------------
# The task from a compiled loss
# ---------------------------------------------------------------------------------------------
_LOSS_NAMES = {
    Task.MULTICLASS: ("SparseCategoricalCrossentropy", "CategoricalCrossentropy",
                      "CategoricalFocalCrossentropy", "sparse_categorical_crossentropy",
                      "categorical_crossentropy", "categorical_focal_crossentropy"),
    Task.BINARY: ("BinaryCrossentropy", "BinaryFocalCrossentropy", "binary_crossentropy",
                  "binary_focal_crossentropy"),
    Task.REGRESSION: ("MeanSquaredError", "MeanAbsoluteError", "Huber", "LogCosh",
                      "mean_squared_error", "mean_absolute_error", "huber", "log_cosh"),
}


def _loss_modules():
    # Keras 3 only once imported: a Keras 3 loss can only exist then (see `_keras.keras3`).
    return [tf_keras.losses] + ([keras3().losses] if keras3() is not None else [])


def _loss_table():
    """{loss class or function: task} for tf_keras and, once imported, Keras 3."""
    table = {GaussianNLL: Task.GAUSSIAN}
    for module in _loss_modules():
        for task, names in _LOSS_NAMES.items():
            for name in names:
                obj = getattr(module, name, None)
                if obj is not None:
                    table[obj] = task
    return table


def _loss_object(loss, table):
    """A loss class or function of ``table`` for a compiled ``loss``, or None."""
    if isinstance(loss, (list, tuple)):
        loss = loss[0] if loss else None
    elif isinstance(loss, dict):
        loss = next(iter(loss.values()), None)
    if isinstance(loss, str):
        for module in _loss_modules():
            try:
                fn = module.get(loss)
            except (ValueError, TypeError):
                continue
            if fn in table:
                return fn
        return None
    try:
        if loss in table:  # a loss function (or class) itself
            return loss
    except TypeError:  # unhashable: not one of ours
        return None
    for cls in type(loss).__mro__:
        if cls in table:
            return cls
    # A function wrapped by tf_keras (LossFunctionWrapper) names its function.
    fn = getattr(loss, "fn", None)
    return fn if fn in table else None


def from_loss(loss):
    """The task a compiled loss implies, or None (no loss, or one that does not say)."""
    if loss is None:
        return None
    table = _loss_table()
    found = _loss_object(loss, table)
    return None if found is None else table[found]


# ---------------------------------------------------------------------------------------------
# The task from the output layer
# ---------------------------------------------------------------------------------------------
_OUTPUT_LAYERS = {}


def register_output_layer(cls, task_of):
    """Declare that an output layer of class ``cls`` sets the task: ``task_of(layer)``.

    ``task_of`` returns a `Task`, None (the layer does not say), or a model whose output means
    what this layer's does (an ensemble's member). `tfp_bnn.heads` registers its Gaussian heads
    this way; a method whose predictive layer knows its task does too.
    """
    _OUTPUT_LAYERS[cls] = task_of
    return cls


def _output_layer(model):
    outputs = getattr(model, "outputs", None)
    if outputs:
        history = getattr(outputs[0], "_keras_history", None)
        if history is not None:
            return history[0]
    layers = getattr(model, "layers", None)
    return layers[-1] if layers else None


def _output(model):
    """``(output layer, its registered answer or None, the model it delegates to or None)``."""
    layer = _output_layer(model)
    if layer is None:
        return None, None, None
    for cls in type(layer).__mro__:
        if cls in _OUTPUT_LAYERS:
            found = _OUTPUT_LAYERS[cls](layer)
            if isinstance(found, Task):
                return layer, found, None
            return layer, None, found
    if getattr(layer, "outputs", None) and layer is not model:  # a nested model
        return layer, None, layer
    return layer, None, None


def _activation(layer):
    return layer.get_config().get("activation") if hasattr(layer, "get_config") else None


def outputs_probabilities(model):
    """Whether ``model`` outputs class probabilities: its output layer applies the softmax or
    the sigmoid (seen through nested models and ensemble members)."""
    layer, found, inner = _output(model)
    if inner is not None:
        return outputs_probabilities(inner)
    return found is None and layer is not None and _activation(layer) in ("softmax", "sigmoid")


def _from_output(model):
    layer, found, inner = _output(model)
    if found is not None or layer is None:
        return found
    if inner is not None:
        return infer(inner)
    activation = _activation(layer)
    width = _width(model)
    if activation == "softmax":
        return Task.MULTICLASS
    if activation == "sigmoid" and width == 1:
        return Task.BINARY
    if activation in (None, "linear") and width is not None and width >= 2:
        return Task.MULTICLASS  # several linear units: logits (tfp_bnn's convention)
    return None


def infer(model):
    """The task of ``model`` when it says (declared, compiled loss, output layer), else None."""
    task = declared(model)
    if task is None:
        task = from_loss(getattr(model, "loss", None))
    if task is None:
        task = _from_output(model)
    return task


def resolve(model, task=None, name="model"):
    """The task of ``model``: ``task`` if given (checked), else `infer`; a ValueError if unknown.

    Args:
        model: a tf_keras or Keras 3 model.
        task: None or a `Task` (or its string).
        name: the argument name used in messages.
    """
    if task is not None:
        return _checked(model, choice("task", task, Task))
    found = infer(model)
    if found is None:
        shape = tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else None
        raise ValueError(
            f"Cannot tell the task of {name} {getattr(model, 'name', model)!r} (output shape "
            f"{shape}): a one-unit linear output of an uncompiled model may be a logit or a "
            "regression mean. Pass task='binary' or task='regression' (or 'multiclass', "
            "'gaussian') to bayesify, predict or export_savedmodel, or compile the model with "
            "its loss first.")
    return found
