"""Train several small tf_keras models at once: every step of every model in one graph loop.

A hyper-parameter grid, the members of a deep ensemble or a benchmark's repeated runs train many
networks of a few thousand weights each; there Keras ``fit``'s Python work per step and per
epoch, not the arithmetic, is the cost. `MultiFit` traces one `tf.function` for a list of M
models that runs all optimizer steps of all of them inside a graph loop on in-memory arrays. In
each step every model draws its own mini-batch ``B_m`` of b rows (without replacement within the
step; stateless draws seeded by ``(seed, step)``, so the batches of a run are reproducible; the
models' own noise, dropout masks or weight perturbations, follows TensorFlow's global seed) and
takes one Adam step on

    L_m = loss(y[B_m], f_m(x[B_m])) + sum(f_m.losses) + decay_m * sum_k ||W_k^(m)||^2

``f_m.losses`` is what the model adds itself: the weighted KL term of a `tfp_bnn.bayesify` model
(so ``L_m`` is its per-example negative ELBO), Keras regularisers. ``W_k^(m)`` are the kernels of
model m's Dense and Conv layers and ``decay_m`` a per-model factor that may change from one `fit`
to the next without retracing (Gal & Ghahramani's weight decay depends on the dropout rate, the
noise precision and N). Adam updates each variable from its own gradient and moments, so M
models in one loop train exactly as M separate runs with the same hyper-parameters; the ops of
different models run in parallel on TensorFlow's inter-op threads.

One epoch is ``ceil(n / b)`` steps. The compiled loop is reused as long as the models are the
same objects: to restart a model, copy fresh initial weights into it (``model.set_weights``;
draw them without ``tf.random.set_seed``, which makes every `tf.function` retrace), and
`MultiFit.fit` restarts the optimizer unless told not to.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 3)).astype("float32")
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    >>> nets = [tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(1)])
    ...         for _ in range(4)]
    >>> trainer = MultiFit(nets, tf_keras.losses.MeanSquaredError(), learning_rate=0.05)
    >>> result = trainer.fit(x, y, epochs=100, batch_size=16, seed=0)
    >>> result.data_loss.shape, bool(result.data_loss.max() < 1e-3)
    ((4,), True)

References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.
"""
import dataclasses
import math

import numpy as np

from tfp_bnn import options
from tfp_bnn._keras import tf, tf_keras

__all__ = ["MultiFit", "MultiFitResult"]

# Layers whose `kernel` the weight decay acts on (Conv2DTranspose etc. subclass these).
_KERNEL_LAYERS = (tf_keras.layers.Dense, tf_keras.layers.Conv1D, tf_keras.layers.Conv2D,
                  tf_keras.layers.Conv3D)


@dataclasses.dataclass(frozen=True)
class MultiFitResult:
    """The two terms of each model's loss, averaged over the last tenth of the steps.

    Attributes:
        data_loss: ``[M]`` ``loss(y, f_m(x))`` on the mini-batches.
        model_loss: ``[M]`` ``sum(f_m.losses)`` plus the weight decay (the KL of a bayesified
            model, regularisers).
        steps: optimizer steps taken by each model.
    """

    data_loss: np.ndarray
    model_loss: np.ndarray
    steps: int


def _check_models(models):
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models:
        raise ValueError("models must hold at least one tf_keras model. Received: models=[]")
    for m in models:
        if not isinstance(m, tf_keras.Model):
            raise ValueError(f"models must be tf_keras models. Received: {m!r} "
                             f"(type {type(m).__name__})")
        if len(m.inputs) != 1 or len(m.outputs) != 1:
            raise ValueError(f"MultiFit trains models with one input and one output; model "
                             f"{m.name!r} has {len(m.inputs)} inputs and {len(m.outputs)} "
                             "outputs.")
    if len({id(m) for m in models}) != len(models):
        raise ValueError("models must be distinct objects (one model listed twice would take "
                         "two optimizer steps per step).")
    shapes = {tuple(m.inputs[0].shape[1:]) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"models must share one input shape. Received: {sorted(shapes)}")
    return models


def _kernels(model):
    return [layer.kernel for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, _KERNEL_LAYERS) and layer.trainable]


class MultiFit:
    """Train M tf_keras models together in one compiled graph loop (see the module doc).

    Args:
        models: a list of M built tf_keras models with one input of the same shape and one
            output (e.g. `tfp_bnn.bayesify` or `tfp_bnn.mc_dropout` models, ensemble members).
        loss: a tf_keras loss (object, name or ``callable(y_true, y_pred)``; per-example values
            are averaged), e.g. `tfp_bnn.losses.GaussianNLL` for a Gaussian head.
        learning_rate: Adam's step size (> 0), the same for every model.
    """

    def __init__(self, models, loss, learning_rate=1e-3):
        self.models = _check_models(models)
        self.loss = tf_keras.losses.get(loss)
        self.learning_rate = options.number("learning_rate", learning_rate, 0.0, strict=True)
        self._variables = [v for m in self.models for v in m.trainable_variables]
        if not self._variables:
            raise ValueError("models have no trainable variable: nothing to fit.")
        self._kernels = [_kernels(m) for m in self.models]
        self._decay = tf.Variable(tf.zeros([len(self.models)]), trainable=False,
                                  name="multifit_weight_decay")
        self._optimizer = tf_keras.optimizers.Adam(self.learning_rate)
        self._optimizer.build(self._variables)
        self._loop = None
        self._shapes = None

    @classmethod
    def for_ensemble(cls, ensemble, learning_rate=None):
        """Build a `tfp_bnn.DeepEnsemble`'s members untrained; a MultiFit that trains them.

        Member m is ``ensemble.build_fn()`` called under the global seed ``ensemble.seed + m``,
        as `DeepEnsemble.fit` builds it, and is stored in ``ensemble.members`` (so
        ``ensemble.as_model()`` is the trained ensemble after `fit`). The members are trained
        with their compiled loss and, unless ``learning_rate`` is given, the learning rate of
        their compiled optimizer; each draws its own mini-batches, as each member of
        `DeepEnsemble.fit` sees the data in its own order.

        Example:
            >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
            >>> y = x.sum(axis=1, keepdims=True)
            >>> def build():
            ...     net = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(1)])
            ...     net.compile(tf_keras.optimizers.Adam(0.05), "mse")
            ...     return net
            >>> ensemble = tfp_bnn.DeepEnsemble(build, num_members=3, seed=0)
            >>> trainer = MultiFit.for_ensemble(ensemble)
            >>> result = trainer.fit(x, y, epochs=100, batch_size=16)
            >>> len(ensemble.members), ensemble.as_model().name
            (3, 'deep_ensemble')
        """
        from tfp_bnn.baselines.ensemble import DeepEnsemble
        if not isinstance(ensemble, DeepEnsemble):
            raise ValueError("ensemble must be a tfp_bnn.DeepEnsemble. Received: "
                             f"ensemble={ensemble!r}")
        members = []
        for m in range(ensemble.num_members):
            tf_keras.utils.set_random_seed(ensemble.seed + m)
            model = ensemble.build_fn()
            if not isinstance(model, tf_keras.Model) or getattr(model, "optimizer", None) is None:
                raise ValueError("build_fn must return a compiled tf_keras model (optimizer and "
                                 f"loss). Received: {model!r}")
            members.append(model)
        ensemble.members = members
        if learning_rate is None:
            learning_rate = float(tf_keras.backend.get_value(members[0].optimizer.learning_rate))
        return cls(members, members[0].loss, learning_rate)

    def _compile(self, x_shape, y_shape):
        models, loss, decay = self.models, self.loss, self._decay
        kernels, variables, optimizer = self._kernels, self._variables, self._optimizer
        num = len(models)
        specs = [tf.TensorSpec((None,) + x_shape, tf.float32),
                 tf.TensorSpec((None,) + y_shape, tf.float32),
                 tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
                 tf.TensorSpec([], tf.int64)]

        @tf.function(input_signature=specs)
        def run(x, y, steps, batch_size, seed):
            n = tf.shape(x)[0]
            tail_start = steps - tf.maximum(steps // 10, 1)
            acc = tf.zeros([2, num])
            for step in tf.range(steps):
                # Seeded by the optimizer's step count: a fit continued with reset_optimizer=False
                # draws the batches one longer fit would have drawn.
                u = tf.random.stateless_uniform([num, n], tf.stack([seed, optimizer.iterations]))
                rows = tf.argsort(u, axis=1)[:, :batch_size]
                with tf.GradientTape() as tape:
                    data_terms, model_terms = [], []
                    for m, model in enumerate(models):
                        out = model(tf.gather(x, rows[m]), training=True)
                        data_terms.append(tf.reduce_mean(loss(tf.gather(y, rows[m]), out)))
                        extra = [tf.reshape(t, []) for t in model.losses]
                        extra += [decay[m] * tf.add_n([tf.reduce_sum(tf.square(k))
                                                       for k in kernels[m]])] if kernels[m] else []
                        model_terms.append(tf.add_n(extra) if extra else tf.zeros([]))
                    terms = tf.stack([tf.stack(data_terms), tf.stack(model_terms)])
                    objective = tf.reduce_sum(terms)
                grads = tape.gradient(objective, variables)
                optimizer.apply_gradients(zip(grads, variables))
                acc += tf.where(step >= tail_start, terms, tf.zeros_like(terms))
            return acc / tf.cast(steps - tail_start, tf.float32)

        self._loop, self._shapes = run, (x_shape, y_shape)

    def reset_optimizer(self):
        """Restart Adam (zero moments and step count): the next step is a first step."""
        for v in self._optimizer.variables():
            v.assign(tf.zeros_like(v))
        self._optimizer.learning_rate.assign(self.learning_rate)

    def fit(self, x, y, epochs, batch_size=32, weight_decay=0.0, seed=0, reset_optimizer=True):
        """Train every model for ``epochs * ceil(n / batch_size)`` steps on ``(x, y)``.

        Args:
            x: ``[n, ...]`` inputs (numpy or tensor), the models' input shape.
            y: ``[n, ...]`` targets; a ``[n]`` vector is taken as ``[n, 1]``.
            epochs: passes over the data (>= 1), counted in steps of ``batch_size`` rows.
            batch_size: rows per step and model (capped at n).
            weight_decay: ``decay_m`` of the module doc: one number for all models or one per
                model (>= 0).
            seed: seeds the mini-batch draws (an int >= 0).
            reset_optimizer: restart Adam first (False continues the previous fit).

        Returns:
            `MultiFitResult`.
        """
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.float32)
        if y.ndim == 1:
            y = y[:, None]
        n = len(x)
        if n == 0 or len(y) != n:
            raise ValueError(f"x and y must hold the same number (>= 1) of rows. Received: "
                             f"x.shape={x.shape}, y.shape={y.shape}")
        if tuple(x.shape[1:]) != tuple(self.models[0].inputs[0].shape[1:]):
            raise ValueError(f"x has the wrong shape: the models expect (batch,) + "
                             f"{tuple(self.models[0].inputs[0].shape[1:])}, received {x.shape}.")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("x and y must be finite: NaN or infinite values would turn every "
                             "weight into NaN.")
        epochs = options.integer("epochs", epochs, 1)
        batch_size = min(options.integer("batch_size", batch_size, 1), n)
        seed = options.integer("seed", seed, 0)
        decay = np.broadcast_to(np.asarray(weight_decay, np.float64), [len(self.models)]) \
            if np.ndim(weight_decay) == 0 else np.asarray(weight_decay, np.float64)
        if decay.shape != (len(self.models),) or not (np.isfinite(decay).all()
                                                       and (decay >= 0).all()):
            raise ValueError(f"weight_decay must be one number >= 0 or one per model "
                             f"({len(self.models)}). Received: weight_decay={weight_decay!r}")
        shapes = (tuple(x.shape[1:]), tuple(y.shape[1:]))
        if self._loop is None or self._shapes != shapes:
            self._compile(*shapes)
        self._decay.assign(decay.astype(np.float32))
        if reset_optimizer:
            self.reset_optimizer()
        steps = epochs * math.ceil(n / batch_size)
        out = self._loop(x, y, tf.constant(steps, tf.int32), tf.constant(batch_size, tf.int32),
                         tf.constant(seed, tf.int64)).numpy()
        return MultiFitResult(data_loss=out[0], model_loss=out[1], steps=steps)
