"""MC dropout: a copy of a Keras model whose dropout stays on at inference.

Each forward pass drops units with probability ``rate`` (inverted dropout), so one call is one
sample from the approximate posterior of Gal & Ghahramani:

    mask_s ~ Bernoulli(1 - rate)^units,   h_s = h * mask_s / (1 - rate)
    p(y | x) ~= (1/S) sum_s p(y | x, mask_s)

Inside `tfp_bnn.sampling.mc_sampling` (what `tfp_bnn.predict` and the SavedModel export use) each
of the S*B tiled rows gets its own mask: ``keep = u >= rate`` with ``u`` stateless-uniform under a
seed taken from the context's normal stream, so ``predict(..., seed=0)`` is reproducible (and
uniform draws cost half as much as thresholding normals); in the context's "mean" mode (the
export's ``deterministic`` signature) dropout is the identity.

Example:
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
    ...                              tf_keras.layers.Dense(8, activation="relu"),
    ...                              tf_keras.layers.Dense(3)])
    >>> mcd = tfp_bnn.mc_dropout(model, rate=0.1, where="before_dense")
    >>> pred = tfp_bnn.predict(mcd, np.ones((2, 4), "float32"), num_samples=100, seed=0)
    >>> pred.probabilities.shape, bool((pred.mutual_information > 0).all())
    ((2, 3), True)

References:
    Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.
"""
import warnings

from tfp_bnn import options, replay, sampling, tasks
from tfp_bnn._keras import keras3, tf, tf_keras
from tfp_bnn.options import Placement

__all__ = ["mc_dropout", "MCDropout", "PLACEMENTS"]

# Where `mc_dropout` inserts new Dropout layers (existing ones are always kept, switched on):
PLACEMENTS = {
    Placement.BEFORE_DENSE: "before every Dense layer except one that reads an Input layer "
                            "directly (hidden features are dropped, raw inputs are not)",
    Placement.AFTER_DENSE: "after every Dense layer except the ones producing the model's "
                           "outputs",
    Placement.ALL: "before every Dense and Conv layer, the model's inputs included (Gal & "
                   "Ghahramani's dropout on the input of every weight layer)",
    Placement.NONE: "nowhere: only the model's existing Dropout layers, kept on at inference",
}
# Dropout-family layers that are not plain Dropout: copied unchanged (off at inference).
_OTHER_NOISE = ("SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
                "AlphaDropout", "GaussianNoise")


@tf_keras.saving.register_keras_serializable(package="tfp_bnn")
class MCDropout(sampling.StochasticLayer, tf_keras.layers.Dropout):
    """Dropout that is on in every call, training or not (a `sampling.StochasticLayer`).

        keep ~ Bernoulli(1 - rate),   outputs = inputs * keep / (1 - rate)

    Same constructor as ``tf_keras.layers.Dropout``. In `sampling.Mode.MEAN` it is the
    identity (the expectation of the inverted-dropout mask).
    """

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(options.probability("rate", rate), noise_shape=noise_shape, seed=seed,
                         **kwargs)

    def plain_call(self, inputs, training=None, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        return self._drop(inputs, tf.random.uniform(self._mask_shape(inputs)) >= self.rate)

    def mean_call(self, inputs, **kwargs):
        return tf.identity(tf.convert_to_tensor(inputs))

    def sample_call(self, inputs, ctx, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        # The context only hands out normals: two of them, bit-cast, seed the uniform draws
        # (reproducible under a seeded context, fresh otherwise).
        seed = tf.cast(tf.bitcast(ctx.normal([2], tf.float32), tf.int32), tf.int64)
        return self._drop(inputs, tf.random.stateless_uniform(self._mask_shape(inputs), seed)
                          >= self.rate)

    def _mask_shape(self, inputs):
        shape = self._get_noise_shape(inputs)
        return tf.shape(inputs) if shape is None else shape

    def _drop(self, inputs, keep):
        return inputs * tf.cast(keep, inputs.dtype) / tf.cast(1.0 - self.rate, inputs.dtype)


def _is_plain_dropout(layer):
    if isinstance(layer, tf_keras.layers.Layer):  # no Keras 3 import for a tf_keras model
        return type(layer) is tf_keras.layers.Dropout
    k3 = keras3()
    return k3 is not None and type(layer) is k3.layers.Dropout


class _Before:
    """Calls ``dropout`` then ``layer``; skips the dropout on Input tensors unless told not to."""

    def __init__(self, dropout, layer, on_inputs):
        self.dropout, self.layer, self.on_inputs = dropout, layer, on_inputs

    def __call__(self, inputs, *args, **kwargs):
        if self.on_inputs or not replay.is_input_tensor(inputs):
            inputs = self.dropout(inputs)
        return self.layer(inputs, *args, **kwargs)


class _After:
    def __init__(self, layer, dropout):
        self.layer, self.dropout = layer, dropout

    def __call__(self, *args, **kwargs):
        return self.dropout(self.layer(*args, **kwargs))


def mc_dropout(model, rate=0.1, where="before_dense", task=None):
    """Return a NEW tf_keras model whose dropout stays on at inference (MC dropout).

    Existing ``Dropout`` layers are kept (with their own rate) and switched on; new ones with
    ``rate`` are inserted according to ``where`` (see `PLACEMENTS`):

    * ``"before_dense"``: before every Dense layer that does not read an Input layer directly;
    * ``"after_dense"``: after every Dense layer except those producing the model's outputs;
    * ``"all"``: before every Dense and Conv layer, inputs included;
    * ``"none"``: no new layer, only the existing Dropout layers.

    Other noise layers (SpatialDropout, GaussianDropout, AlphaDropout, GaussianNoise) are copied
    unchanged, i.e. still off at inference (a warning says so). Weights are copied; the source
    model is not modified.

    Args:
        model: a built tf_keras or Keras 3 model (Sequential or Functional).
        rate: dropout probability of the inserted layers, in (0, 1).
        where: one of `PLACEMENTS`.
        task: the model's task (`tfp_bnn.tasks`); None reads it from ``model`` (its compiled
            loss or output layer). The returned model carries it.

    Returns:
        A tf_keras Functional model (uncompiled) to pass to `tfp_bnn.predict` or
        `tfp_bnn.export_savedmodel`, or to fine-tune with dropout on.

    Example:
        >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
        ...                              tf_keras.layers.Dense(8, activation="relu"),
        ...                              tf_keras.layers.Dense(3)])
        >>> mcd = tfp_bnn.mc_dropout(model, rate=0.1)
        >>> [type(l).__name__ for l in mcd.layers[1:]]   # dropout before the second Dense
        ['Dense', 'MCDropout', 'Dense']
        >>> pred = tfp_bnn.predict(mcd, np.ones((2, 4), "float32"), num_samples=100)
        >>> pred.mutual_information.shape
        (2,)
    """
    rate = options.probability("rate", rate)
    where = options.choice("where", where, Placement, what="placement")
    skipped = []

    def hook(layer):
        if _is_plain_dropout(layer):
            config = layer.get_config()
            return replay.Replacement(MCDropout(
                config["rate"], noise_shape=config.get("noise_shape"), seed=config.get("seed"),
                name=layer.name))
        if replay.builtin(layer, *_OTHER_NOISE):
            skipped.append(layer.name)
            return None
        kind = replay.kind(layer)
        if kind is None or where == Placement.NONE or (
                kind != "Dense" and where != Placement.ALL):
            return None
        if where == Placement.AFTER_DENSE and any(layer is out for out in outputs):
            return None
        copy = replay.copy(layer)
        dropout = MCDropout(rate, name=f"{layer.name}_mc_dropout")
        if where == Placement.AFTER_DENSE:
            return replay.Replacement(_After(copy.call, dropout), copy.copy_weights)
        return replay.Replacement(_Before(dropout, copy.call, on_inputs=where == Placement.ALL),
                                  copy.copy_weights)

    if not replay.is_model(model):
        raise ValueError("model must be a tf_keras or Keras 3 Model. "
                         f"Received: model={model!r} (type {type(model).__name__})")
    outputs = replay.output_layers(model)
    new = replay.replay(model, hook, name=f"{model.name}_mc_dropout")
    if skipped:
        warnings.warn(f"mc_dropout: layers {skipped} are not plain Dropout; they were copied "
                      "unchanged and stay off at inference.", UserWarning, stacklevel=2)
    if not any(isinstance(l, MCDropout) for l in new._flatten_layers(include_self=False)):
        raise ValueError(f"mc_dropout(where={where.value!r}) left model {model.name!r} without any "
                         "dropout: it has no Dropout layer and no Dense layer where new dropout "
                         f"would go. Use another placement: {Placement.values()}")
    task = tasks.infer(model) if task is None else tasks.resolve(model, task)
    if task is not None:
        tasks.declare(new, task)
    return new
