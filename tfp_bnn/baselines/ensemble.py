"""Deep ensembles: M independently trained networks, used as M posterior samples.

Members differ by initialisation seed and by the order of the training data. As one tf_keras
model (`DeepEnsemble.as_model`) the members are the samples of `tfp_bnn.predict` and of the
SavedModel export: inside `tfp_bnn.sampling.mc_sampling(S)` sample ``s`` is member ``s mod M``,
so with ``num_samples = M`` every member is used exactly once and

    probabilities = (1/M) sum_m softmax(z_m(x))       (the ensemble's predictive)

Each member runs only on its own rows (the S*B tiled batch is partitioned, not broadcast), so
S = M samples cost M single-model passes. Use ``num_samples = num_members`` (or a multiple);
another S weights the members unequally. Outside a sampling context a call returns one
uniformly drawn member's output; in the context's "mean" mode (the export's ``deterministic``
signature) it returns the members' mean output.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")                        # two classes
    >>> def build_fn():
    ...     net = tf_keras.Sequential([tf_keras.Input((4,)),
    ...                                tf_keras.layers.Dense(8, activation="relu"),
    ...                                tf_keras.layers.Dense(2)])
    ...     net.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ...     return net
    >>> ens = tfp_bnn.DeepEnsemble(build_fn, num_members=3)
    >>> histories = ens.fit(x, y, epochs=2, batch_size=16, verbose=0)
    >>> pred = tfp_bnn.predict(ens.as_model(), x[:5], num_samples=3)   # each member once
    >>> pred.probabilities.shape
    (5, 2)

References:
    Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
    Estimation using Deep Ensembles", NeurIPS 2017.
"""
import warnings

import numpy as np

from tfp_bnn import options, replay, sampling, tasks
from tfp_bnn._keras import is_keras3_model, keras3, tf, tf_keras
from tfp_bnn.layers import bayesian_layers

__all__ = ["DeepEnsemble", "EnsembleMembers", "ensemble_model"]


@tf_keras.saving.register_keras_serializable(package="tfp_bnn")
class EnsembleMembers(sampling.StochasticLayer, tf_keras.layers.Layer):
    """Runs one of several same-shaped tf_keras models per MC sample (sample s -> member s mod M).

    Plain call: one uniformly drawn member; `sampling.Mode.MEAN`: the members' mean output.

    Args:
        members: a list of >= 2 tf_keras models with identical input and output shapes.
    """

    def __init__(self, members, **kwargs):
        super().__init__(**kwargs)
        members = list(members)
        _check_members(members)
        self.members = members

    def plain_call(self, inputs, training=None, **kwargs):
        which = tf.random.uniform([], 0, len(self.members), dtype=tf.int32)
        return tf.switch_case(which, [lambda m=m: m(inputs, training=False)
                                      for m in self.members])

    def mean_call(self, inputs, **kwargs):
        return (tf.add_n([m(inputs, training=False) for m in self.members])
                / float(len(self.members)))

    def sample_call(self, inputs, ctx, **kwargs):
        num = len(self.members)
        if isinstance(ctx.num_samples, int) and ctx.num_samples % num:
            warnings.warn(f"num_samples={ctx.num_samples} is not a multiple of the {num} "
                          "ensemble members: they are weighted unequally. Use num_samples="
                          f"{num}.", UserWarning, stacklevel=2)
        rows = tf.shape(tf.nest.flatten(inputs)[0])[0]
        per_sample = tf.maximum(rows // tf.cast(ctx.num_samples, tf.int32), 1)
        member_of_row = (tf.range(rows) // per_sample) % num  # rows are sample-major
        parts = [tf.dynamic_partition(t, member_of_row, num) for t in tf.nest.flatten(inputs)]
        index = tf.dynamic_partition(tf.range(rows), member_of_row, num)
        outputs = []
        for m, member in enumerate(self.members):
            member_inputs = tf.nest.pack_sequence_as(inputs, [p[m] for p in parts])
            outputs.append(member(member_inputs, training=False))
        return tf.dynamic_stitch(index, outputs)

    def compute_output_shape(self, input_shape):
        return self.members[0].compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["members"] = [tf_keras.saving.serialize_keras_object(m) for m in self.members]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["members"] = [tf_keras.saving.deserialize_keras_object(m)
                             for m in config["members"]]
        return cls(**config)


def _check_members(members):
    if len(members) < 2:
        raise ValueError("An ensemble needs at least 2 members (one model has no spread). "
                         f"Received: {len(members)} member(s)")
    for m in members:
        if not isinstance(m, tf_keras.Model):
            raise ValueError(f"Ensemble members must be tf_keras models. Received: {m!r}")
        if bayesian_layers(m):
            raise ValueError(f"Ensemble members must be deterministic networks; member "
                             f"{m.name!r} has Bayesian layers (their weight samples would not "
                             "line up with the member cycling).")
        if len(m.outputs) != 1:
            raise ValueError(f"Ensemble members must have one output; member {m.name!r} has "
                             f"{len(m.outputs)}.")
    shapes = {(tuple(tuple(t.shape[1:]) for t in m.inputs), tuple(m.outputs[0].shape[1:]))
              for m in members}
    if len(shapes) != 1:
        raise ValueError(f"Ensemble members must share input and output shapes. Received: {shapes}")


def ensemble_model(models, name="ensemble"):
    """One tf_keras model whose MC samples cycle through ``models`` (see module doc).

    Args:
        models: >= 2 trained tf_keras or Keras 3 models with the same input/output shapes
            (Keras 3 models are rebuilt as tf_keras copies, weights copied).
        name: name of the returned model.
    """
    members = [replay.replay(m, name=f"{m.name}_{i}") if is_keras3_model(m) else m
               for i, m in enumerate(models)]
    _check_members(members)
    first = members[0]
    inputs = [tf_keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype,
                             name=t._keras_history[0].name) for t in first.inputs]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    outputs = EnsembleMembers(members, name="ensemble_members")(inputs)
    return tf_keras.Model(inputs, outputs, name=name)


def _set_seed(seed):
    tf_keras.utils.set_random_seed(seed)
    k3 = keras3()
    if k3 is not None:
        k3.utils.set_random_seed(seed)


def _is_array_like(x):
    return isinstance(x, np.ndarray) or (isinstance(x, (list, tuple)) and x
                                         and all(isinstance(a, np.ndarray) for a in x))


def _take(x, order):
    if isinstance(x, (list, tuple)):
        return type(x)(a[order] for a in x)
    return x[order]


class DeepEnsemble:
    """``num_members`` networks from ``build_fn``, trained independently (Deep Ensembles).

    Member ``m`` is built and trained after setting the global random seed to ``seed + m``
    (initialisation, dropout, ``fit``'s shuffling), on the training data in its own random
    order. ``build_fn`` is called with no argument and returns a *compiled* tf_keras or Keras 3
    model whose output is logits (classification) or the regression output.

    Args:
        build_fn: callable returning a new compiled model.
        num_members: M >= 2.
        seed: base seed of the members.

    Attributes:
        members: the trained models (after `fit`).
    """

    def __init__(self, build_fn, num_members=5, seed=0):
        if not callable(build_fn):
            raise ValueError("build_fn must be a callable returning a compiled model. "
                             f"Received: build_fn={build_fn!r}")
        self.num_members = options.integer("num_members", num_members, minimum=2)
        self.build_fn = build_fn
        self.seed = options.integer("seed", seed)
        self.members = []

    def fit(self, x, y=None, **fit_kwargs):
        """Train every member with ``model.fit(x, y, **fit_kwargs)``; returns their Histories.

        Array data (a numpy array or a list of arrays) is permuted per member; other data (a
        tf.data.Dataset, a generator) is passed as it is and differs only by fit's shuffling.
        """
        members, histories = [], []
        for m in range(self.num_members):
            _set_seed(self.seed + m)
            model = self.build_fn()
            if not replay.is_model(model):
                raise ValueError("build_fn must return a tf_keras or Keras 3 model. "
                                 f"Received: {model!r}")
            if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", True):
                raise ValueError(f"build_fn returned model {model.name!r} uncompiled; compile it "
                                 "inside build_fn (optimizer, loss from logits).")
            xm, ym = x, y
            if _is_array_like(x):
                n = len(x[0]) if isinstance(x, (list, tuple)) else len(x)
                order = np.random.default_rng(self.seed + m).permutation(n)
                xm = _take(x, order)
                ym = None if y is None else _take(y, order) if _is_array_like(y) else y
            histories.append(model.fit(xm, ym, **fit_kwargs))
            members.append(model)
        self.members = members
        return histories

    def as_model(self, name="deep_ensemble"):
        """One tf_keras model for `tfp_bnn.predict` / `export_savedmodel` (num_samples = M)."""
        if not self.members:
            raise ValueError("DeepEnsemble has no trained members: call fit(x, y, ...) first.")
        return ensemble_model(self.members, name=name)


# The ensemble's output means what its members' does (their compiled loss, or output layer).
tasks.register_output_layer(EnsembleMembers, lambda layer: layer.members[0])
