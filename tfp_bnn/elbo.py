"""ELBO bookkeeping: the KL weight, and a Functional model that logs `nll` and `kl` apart.

Every Bayesian layer adds ``kl_weight * KL(q || p)`` through ``add_loss``; Keras adds the model's
losses to the compiled loss, so with ``kl_weight = 1/N``

    loss = mean_i NLL_i + (1/N) sum_layers KL(q || p) = -ELBO / N

`BayesianModel` is a plain tf_keras Functional model that also reports the two terms:
``nll`` (the compiled loss) and ``kl`` (the weighted KL), so ``loss == nll + kl`` (plus any
non-Bayesian regularisation losses) in History, CSVLogger and TensorBoard, for training and
validation.
Under tf.distribute Keras scales each replica's losses by 1/replicas, so the KL enters once per
global step and the NLL is the global-batch mean.
"""
import math

import numpy as np

from tfp_bnn._keras import Functional, tf, tf_keras

__all__ = ["BayesianModel", "kl_weight_from", "kl_loss", "set_kl_weight", "kl_weights"]


def kl_weight_from(num_train_examples=None, kl_weight=None):
    """The KL weight: ``kl_weight`` if given, else ``1 / num_train_examples``."""
    if kl_weight is not None:
        try:
            ok = float(kl_weight) > 0 and math.isfinite(float(kl_weight))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"kl_weight must be a positive number. Received: kl_weight={kl_weight!r}")
        return float(kl_weight)
    if num_train_examples is None:
        raise ValueError(
            "The KL term needs the training-set size: pass num_train_examples=N (the number of "
            "training examples, so the KL is weighted 1/N), or an explicit kl_weight=... "
            "Received: num_train_examples=None, kl_weight=None")
    n = num_train_examples
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError("num_train_examples must be a positive integer. "
                         f"Received: num_train_examples={num_train_examples!r}")
    return 1.0 / int(num_train_examples)


def _bayesian_layers(model):
    from tfp_bnn.layers import bayesian_layers
    return bayesian_layers(model)


def kl_loss(model):
    """Sum of the weighted KL terms the model's Bayesian layers added in their last call."""
    terms = [l for layer in _bayesian_layers(model) for l in layer.losses]
    return tf.add_n(terms) if terms else tf.constant(0.0)


def kl_weights(model):
    """Current KL weight of each Bayesian layer, by layer name."""
    return {l.name: float(l.kl_weight.numpy()) for l in _bayesian_layers(model)}


def set_kl_weight(model, multiplier=1.0, value=None):
    """Set every Bayesian layer's KL weight to ``multiplier * base`` (or to ``value``).

    ``base`` is the weight the layer was built with (1/N from `bayesify`); a multiplier below 1
    is a 'cold'/tempered posterior, above 1 a stronger pull to the prior.
    """
    if value is None and not (float(multiplier) >= 0 and math.isfinite(float(multiplier))):
        raise ValueError(f"multiplier must be a non-negative number. Received: multiplier={multiplier!r}")
    for layer in _bayesian_layers(model):
        layer.kl_weight.assign(float(value) if value is not None
                               else float(multiplier) * layer.base_kl_weight)


@tf_keras.saving.register_keras_serializable(package="tfp_bnn")
class BayesianModel(Functional):
    """A tf_keras Functional model whose fit/evaluate logs also carry `nll` and `kl`.

    Built by `tfp_bnn.bayesify`; construct it like ``tf_keras.Model(inputs, outputs)`` to wrap a
    hand-built graph of tfp_bnn layers.
    """

    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
        # The Functional signature, so tf_keras saves and revives the graph config as for Model.
        super().__init__(inputs, outputs, name=name, trainable=trainable, **kwargs)
        self.nll_tracker = tf_keras.metrics.Mean(name="nll")
        self.kl_tracker = tf_keras.metrics.Mean(name="kl")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        total = super().compute_loss(x, y, y_pred, sample_weight)
        if total is None:
            return total
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        all_losses = self.losses
        kl = tf.cast(kl_loss(self), total.dtype)
        reg = tf.cast(tf.add_n(all_losses), total.dtype) if all_losses else tf.zeros((), total.dtype)
        # The compiled loss is (nll + reg) / replicas per replica; undo that to log the mean NLL.
        nll = (total - reg / replicas) * replicas
        batch = tf.shape(tf.nest.flatten(y_pred)[0])[0]
        self.nll_tracker.update_state(nll, sample_weight=batch)
        self.kl_tracker.update_state(kl, sample_weight=batch)
        return total
