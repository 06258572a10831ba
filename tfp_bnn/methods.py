"""One interface for every uncertainty method: whatever a method returns, `predict` takes it.

`bayesify` and `mc_dropout` return tf_keras models. `DeepEnsemble` (after fit), `laplace`'s
result, the `SWAG` callback (after fit) and `distill`'s result are objects with an
``as_model()`` method (the `Method` protocol) that builds the tf_keras predictive model.
`predictive_model` turns any of them into that model, once: the model is cached per object and
rebuilt only when the object's state changed (a refit ensemble, more SWAG snapshots, another
Laplace prior precision). `tfp_bnn.predict`, `tfp_bnn.export_savedmodel` and
`tfp_bnn.callbacks.MCValidation.evaluate` call it on their model argument.

Example:
    >>> def build():
    ...     model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3)])
    ...     model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ...     return model
    >>> x, y = np.zeros((8, 2), np.float32), np.zeros(8)
    >>> ens = tfp_bnn.DeepEnsemble(build, num_members=2)
    >>> _ = ens.fit(x, y, epochs=1, verbose=0)
    >>> tfp_bnn.predict(ens, x, num_samples=2).probabilities.shape   # no as_model() needed
    (8, 3)
    >>> predictive_model(ens) is predictive_model(ens)                # built once
    True
"""
import typing
import weakref

from tfp_bnn._keras import tf_keras

__all__ = ["Method", "PostHoc", "predictive_model", "post_hoc"]


@typing.runtime_checkable
class Method(typing.Protocol):
    """A fitted uncertainty method: ``as_model()`` returns its tf_keras predictive model."""

    def as_model(self):
        ...


@typing.runtime_checkable
class PostHoc(typing.Protocol):
    """A method fitted after training on held-out data (`tfp_bnn.calibrate`, `tfp_bnn.conformal`).

    It wraps a model (``as_model()`` is that model's predictive model) and replaces the task's
    summary of the ``[S, B, ...]`` output samples by its own, in TF ops: `tfp_bnn.predict` runs
    it in its compiled graph, `tfp_bnn.export_savedmodel` in the served one. Both pass it
    ``summarize(samples, exact)``, their summary of the model's samples, to build on.

    Attributes:
        task: the wrapped model's `tfp_bnn.Task`.
        alpha: the miscoverage level of a conformal method (its summary takes another one as
            ``alpha``, checked by its ``checked_alpha(alpha)``), None for a calibration.
        served: ``{served output name: summary key}``.
    """

    task: typing.Any
    alpha: typing.Any
    served: dict

    def as_model(self):
        ...

    def summary(self, samples, summarize, exact=True, alpha=None, seed=None):
        ...


def post_hoc(obj):
    """``obj`` if it is a `PostHoc` method (calibrated or conformal), else None."""
    return obj if isinstance(obj, PostHoc) else None


_CACHE = weakref.WeakKeyDictionary()


def _same_state(a, b):
    # Identity, not equality: arrays compare elementwise, and a method that refits replaces its
    # state objects (members, moments, precision) rather than mutating them in place.
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def predictive_model(obj, name="model"):
    """The tf_keras model that predicts for ``obj`` (a tf_keras model, or a `Method`).

    Args:
        obj: a tf_keras model (returned as it is) or an object with ``as_model()``.
        name: the argument name used in the error message.

    Returns:
        A tf_keras model.
    """
    if isinstance(obj, tf_keras.Model):
        return obj
    if not isinstance(obj, Method):
        raise ValueError(
            f"{name} must be a tf_keras Model or a fitted method (bayesify, mc_dropout, "
            "DeepEnsemble after fit, laplace, SWAG after fit, distill). Received: "
            f"{name} of type {type(obj).__name__}")
    state = dict(vars(obj))
    cached = _CACHE.get(obj)
    if cached is not None and _same_state(cached[0], state):
        return cached[1]
    model = obj.as_model()
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"{name}.as_model() must return a tf_keras Model. Received: "
                         f"{type(model).__name__} from {type(obj).__name__}")
    _CACHE[obj] = (state, model)
    return model
