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
from tfp_bnn import options, tasks
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
        >>> x, y = np.zeros((150, 4), "float32"), np.zeros(150, "int32")
        >>> kl_weight_from(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(100).batch(32))
        0.006666666666666667
    """
    if kl_weight is not None:
        return options.number("kl_weight", kl_weight, 0, strict=True)
    if num_train_examples is None:
        raise ValueError(
            "The KL term needs the training-set size: pass num_train_examples=N (the number of "
            "training examples, so the KL is weighted 1/N), or an explicit kl_weight=... "
            "Received: num_train_examples=None, kl_weight=None")
    n = num_train_examples
    if isinstance(n, tf.data.Dataset):
        n = num_examples(n)
    return 1.0 / options.integer("num_train_examples", n, minimum=1)


def _leading_dims(spec):
    """The leading dimension of each component of an element spec (None: unknown; () scalar)."""
    return [() if t.shape.rank == 0 else None if t.shape.rank is None else t.shape[0]
            for t in tf.nest.flatten(spec)]


def _shares_a_leading_dim(dims):
    """Whether every component has the same leading dimension: the components of one batch."""
    return bool(dims) and () not in dims and len(set(dims)) == 1


def _count(dataset, batches):
    """One pass: the number of elements, or the sum of their batch sizes when ``batches``."""
    def add(count, *element):
        if not batches:
            return count + 1
        return count + tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.int64)
    return int(dataset.reduce(tf.constant(0, tf.int64), add))


def num_examples(dataset):
    """Number of training examples in a finite `tf.data.Dataset`, batched or not.

        elements are examples:   N = cardinality            (counted once if unknown)
        elements are batches:    N = sum_batches batch size  (b * cardinality for a static b)

    Elements are batches when every component has the same leading dimension (Keras's own
    requirement for a batch: ``(x, y)`` rows line up), as after ``.batch(b)`` or
    ``.padded_batch(b)``, followed by any map/shuffle/take/filter/cache/prefetch; elements
    with a scalar component, or components of different leading sizes, are examples.
    Only public tf.data API is read: ``cardinality`` and ``element_spec``, and one pass over
    the dataset when the count is not known without it. A repeated (infinite) dataset, and
    one whose batches are themselves batched (their rows are batches again: ``.batch(b)``
    twice), raise a ValueError: pass ``num_train_examples=N`` explicitly.

    Example:
        >>> x, y = np.zeros((150, 4), "float32"), np.zeros(150, "int32")
        >>> num_examples(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(100).batch(32))
        150
    """
    def fail(why):
        return ValueError(
            f"num_train_examples: cannot count the training examples of this dataset: {why}. "
            "Pass the number of training examples explicitly: num_train_examples=N. "
            f"Received: num_train_examples={dataset!r}")

    card = int(dataset.cardinality())
    if card == tf.data.INFINITE_CARDINALITY:
        raise fail("its cardinality is infinite (a repeat()ed dataset)")
    dims = _leading_dims(dataset.element_spec)
    if not _shares_a_leading_dim(dims):  # elements are examples
        return card if card >= 0 else _count(dataset, batches=False)
    rows = _leading_dims(dataset.unbatch().element_spec)
    if _shares_a_leading_dim(rows) and None in rows:
        # A row that is itself of unknown length in every component is a batch again.
        raise fail("its elements are batches of batches (batch() applied twice?)")
    if dims[0] is not None and card >= 0:  # drop_remainder: every batch holds b rows
        return dims[0] * card
    return _count(dataset, batches=True)


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
    if value is None:
        multiplier = options.number("multiplier", multiplier, 0)
    for layer in _bayesian_layers(model):
        layer.kl_weight.assign(float(value) if value is not None
                               else float(multiplier) * layer.base_kl_weight)


@tf_keras.saving.register_keras_serializable(package="tfp_bnn")
class BayesianModel(Functional):
    """A tf_keras Functional model whose fit/evaluate logs also carry `nll` and `kl`.

    Built by `tfp_bnn.bayesify`; construct it like ``tf_keras.Model(inputs, outputs)`` to wrap a
    hand-built graph of tfp_bnn layers. Its task (`tfp_bnn.tasks`: declared by bayesify, or read
    from the compiled loss) is saved in its config, so a ``.keras`` file loads back with it.
    """

    def __init__(self, inputs, outputs, name=None, trainable=True, **kwargs):
        # The Functional signature, so tf_keras saves and revives the graph config as for Model.
        super().__init__(inputs, outputs, name=name, trainable=trainable, **kwargs)
        self._add_trackers()

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _add_trackers(self):
        # Registered as metrics by hand, not as checkpoint dependencies: tracking an attribute
        # of a Functional model looks its name up among every layer's dependencies, which took
        # a tenth of bayesify's time on a deep network; the running means need no checkpoint.
        self.nll_tracker = tf_keras.metrics.Mean(name="nll")
        self.kl_tracker = tf_keras.metrics.Mean(name="kl")
        self._metrics.extend([self.nll_tracker, self.kl_tracker])

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

    def get_config(self):
        config = super().get_config()
        task = tasks.infer(self)
        if task is not None:
            config["task"] = task.value
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        task = config.pop("task", None)
        model = super().from_config(config, custom_objects)
        if task is not None:
            tasks.declare(model, task)
        return model
