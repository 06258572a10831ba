"""ELBO bookkeeping: the KL weight, and a Functional model that logs `nll` and `kl` apart.

Every Bayesian layer adds ``kl_weight * KL(q || p)`` through ``add_loss``; Keras adds the model's
losses to the compiled loss, so with ``kl_weight = 1/N``

    loss = mean_i NLL_i + (1/N) sum_layers KL(q || p) = -ELBO / N

`BayesianModel` is a plain tf_keras Functional model that also reports the two terms:
``nll`` (the compiled loss) and ``kl`` (the weighted KL), so ``loss == nll + kl`` (plus any
non-Bayesian regularisation losses) in History, CSVLogger and TensorBoard, for training and
validation.
Under tf.distribute (MirroredStrategy, MultiWorkerMirroredStrategy) every replica runs the
model on its slice of the global batch and adds the same closed-form KL; Keras divides each
replica's loss by the number of replicas R before the gradients are summed, so

    sum_r [NLL_mean(slice_r) + kl_weight KL] / R = NLL_mean(global batch) + kl_weight KL

(the KL enters once per global step, weighted by the global 1/N; slices of equal size, as for
every full batch). Each replica draws its own weight noise (its own Flipout signs and
perturbations, or its own reparameterised kernel): an unbiased estimate of the same expected
NLL, with R independent draws per step instead of one.
"""
import math

import numpy as np

from tfp_bnn._keras import Functional, tf, tf_keras

__all__ = ["BayesianModel", "kl_weight_from", "num_examples", "kl_loss", "set_kl_weight",
           "kl_weights"]


def kl_weight_from(num_train_examples=None, kl_weight=None):
    """The KL weight: ``kl_weight`` if given, else ``1 / N``.

    Args:
        num_train_examples: N, a positive integer, or the training `tf.data.Dataset` (N is then
            counted by `num_examples`: examples, not batches).
        kl_weight: an explicit positive weight; overrides N.

    Example:
        >>> kl_weight_from(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(100).batch(32))
    """
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
    if isinstance(n, tf.data.Dataset):
        n = num_examples(n)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError("num_train_examples must be a positive integer. "
                         f"Received: num_train_examples={num_train_examples!r}")
    return 1.0 / int(n)


def _dataset_classes(*module_names):
    """The tf.data Dataset classes defined in the named ``tensorflow.python.data.ops`` modules."""
    import importlib
    found = []
    for name in module_names:
        module = importlib.import_module("tensorflow.python.data.ops." + name)
        found += [c for c in vars(module).values()
                  if isinstance(c, type) and issubclass(c, tf.data.Dataset)]
    return tuple(found)


def _pipeline_kinds():
    """(batch ops with batch_size/drop_remainder, ops that regroup elements, 1:1 ops), or None."""
    try:
        batch = _dataset_classes("batch_op", "padded_batch_op")
        regroup = batch + _dataset_classes(
            "ragged_batch_op", "sparse_batch_op", "rebatch_op", "unbatch_op", "window_op",
            "group_by_window_op", "flat_map_op", "interleave_op", "scan_op")
        one_to_one = _dataset_classes("prefetch_op", "map_op", "shuffle_op", "cache_op")
        one_to_one += (tf.data.Dataset.with_options(tf.data.Dataset.range(1),
                                                    tf.data.Options()).__class__,)
    except (ImportError, AttributeError):  # another TF layout: no exact count
        return None
    return batch, regroup, one_to_one


def _regroups(dataset, regroup):
    return isinstance(dataset, regroup) or any(_regroups(d, regroup) for d in dataset._inputs())


def num_examples(dataset):
    """Number of training examples in a finite `tf.data.Dataset`, batched or not.

        unbatched:                        N = cardinality (one example per element)
        ... .batch(b) [.map/.shuffle/.cache/.prefetch ...]:
                                          N = n                (drop_remainder=False)
                                          N = n - n mod b      (drop_remainder=True)

    where n is the cardinality of the dataset that was batched. A pipeline whose example count
    cannot be known exactly this way (batched twice, filtered or taken after batching, unbatched,
    windowed, or of unknown/infinite cardinality: `repeat()`, `filter`, file readers) raises a
    ValueError: pass ``num_train_examples=N`` explicitly.
    """
    def fail(why):
        return ValueError(
            f"num_train_examples: cannot count the training examples of this dataset: {why}. "
            "Pass the number of training examples explicitly: num_train_examples=N. "
            f"Received: num_train_examples={dataset!r}")

    card = int(dataset.cardinality())
    if card == tf.data.INFINITE_CARDINALITY:
        raise fail("its cardinality is infinite (a repeat()ed dataset)")
    if card < 0:
        raise fail("its cardinality is unknown (e.g. after filter(), or a file reader)")
    kinds = _pipeline_kinds()
    if kinds is None:
        raise fail("this TensorFlow version's tf.data pipeline cannot be inspected")
    batch, regroup, one_to_one = kinds
    top = dataset
    while isinstance(top, one_to_one):
        top = top._input_dataset
    if isinstance(top, batch) and not _regroups(top._input_dataset, regroup):
        n = int(top._input_dataset.cardinality())
        if n < 0:
            raise fail("the cardinality of the dataset before batching is unknown or infinite")
        size = int(top._batch_size)
        return n - n % size if bool(top._drop_remainder) else n
    if not _regroups(dataset, regroup):
        return card
    raise fail("its elements are batches, and the pipeline after batching is not a plain "
               "map/shuffle/cache/prefetch chain over a single batch()")


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
