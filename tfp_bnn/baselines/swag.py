"""SWAG: a Gaussian over the weights from the iterates of ordinary SGD/Adam training.

From epoch ``start_epoch`` on, every ``update_freq`` epochs the callback takes a snapshot
``theta_i`` of the model's trainable weights (flattened) and updates

    mean = (1/n) sum_i theta_i,   diag = (1/n) sum_i theta_i^2 - mean^2,
    D    = [theta_i - mean_i] for the last K snapshots   (P x K, K <= max_rank)

A sample is ``theta = mean + scale * (sqrt(diag)/sqrt(2) * z1 + D z2 / sqrt(2 (K - 1)))`` with
``z1 ~ N(0, I_P)``, ``z2 ~ N(0, I_K)``; with K < 2 the low-rank term is dropped and the
diagonal term has weight 1 (SWAG-Diagonal).

Two ways to predict:

* `SWAG.sample_model` returns one deterministic tf_keras model with sampled weights; batch-norm
  statistics are recomputed on ``bn_x`` (one pass over it, layer by layer).
* `SWAG.as_model` returns one tf_keras model for `tfp_bnn.predict` / `export_savedmodel`:
  - for models whose weights all sit in Dense layers on 2-D inputs, every call draws fresh
    weights: a `SWAGNoise` layer draws one ``z2`` per MC sample, shared by all layers, and each
    `SWAGDense` draws its diagonal term per sample (in weight space, or by local
    reparameterisation when that needs fewer normals). Inside `tfp_bnn.sampling.mc_sampling` the
    draws come from the context's seeded stream;
  - for any other model (batch norm, convolutions, nested models, ...) it is a bank of
    ``num_draws`` pre-drawn `sample_model` networks, BN statistics recomputed for each draw,
    cycled as the members of a deep ensemble (`tfp_bnn.baselines.ensemble`): use
    ``num_samples = num_draws``.

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
    >>> model = build_fn()
    >>> swag = tfp_bnn.callbacks.SWAG(start_epoch=2, max_rank=3)
    >>> history = model.fit(x, y, epochs=6, batch_size=8, callbacks=[swag], verbose=0)
    >>> pred = tfp_bnn.predict(swag.as_model(scale=0.5), x[:5], num_samples=30)
    >>> pred.probabilities.shape
    (5, 2)

References:
    Maddox, Garipov, Izmailov, Vetrov & Wilson, "A Simple Baseline for Bayesian Uncertainty in
    Deep Learning", NeurIPS 2019.
"""
import collections
import math

import numpy as np

from tfp_bnn import matmuls, options, replay, sampling, tasks
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.baselines.ensemble import ensemble_model

__all__ = ["SWAG", "SWAGDense", "SWAGNoise", "recompute_batchnorm"]

_register = tf_keras.saving.register_keras_serializable(package="tfp_bnn")


def _coefficients(scale, rank):
    """(c1, c2): theta = mean + c1 * sqrt(diag) * z1 + c2 * D z2."""
    if rank < 2:
        return scale, 0.0
    return scale / math.sqrt(2.0), scale / math.sqrt(2.0 * (rank - 1))


# ---------------------------------------------------------------------------------------------
# Layers of the per-call sampling model
# ---------------------------------------------------------------------------------------------
@_register
class SWAGNoise(sampling.StochasticLayer, tf_keras.layers.Layer):
    """The low-rank noise ``z2`` of one SWAG sample, one row per input row: ``[N, rank]``.

    Rows of one MC sample (sample-major tiling) share a draw; outside a sampling context the
    whole batch shares one draw (one call = one sample); in "mean" mode it is zero.
    """

    def __init__(self, rank, **kwargs):
        super().__init__(**kwargs)
        self.rank = options.integer("rank", rank, minimum=0)

    def mean_call(self, inputs, **kwargs):
        return tf.zeros([tf.shape(inputs)[0], self.rank], self.dtype)

    def sample_call(self, inputs, ctx, **kwargs):
        rows = tf.shape(inputs)[0]
        s = tf.cast(ctx.num_samples, tf.int32)
        return tf.repeat(ctx.normal(tf.stack([s, self.rank]), self.dtype), rows // s, axis=0)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.rank])

    def get_config(self):
        return {**super().get_config(), "rank": self.rank}


@_register
class SWAGDense(sampling.StochasticLayer, tf_keras.layers.Layer):
    """Dense layer whose kernel and bias are one SWAG sample per MC sample; called on ``[h, z2]``.

        W_s = W_mean + c1 * sqrt(diag_W) * Z1_s + c2 * sum_k z2_sk D_k^W     (b_s likewise)
        out = h W_s + b_s

    ``z2`` comes from `SWAGNoise` (shared by all layers of one sample). Given ``z2`` the weights
    are a mean-field Gaussian around a per-sample mean, sampled by `matmuls.gaussian_matmul`
    as the tfp_bnn Bayesian layers are: in weight space, or in output space by local
    reparameterisation (exact per-example samples), whichever is cheaper. All weights are
    non-trainable statistics set by `SWAG.as_model`.
    """

    def __init__(self, units, rank, scale=0.5, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.units = options.integer("units", units, minimum=1)
        self.rank = options.integer("rank", rank, minimum=0)
        self.scale = options.number("scale", scale, minimum=0.0)
        self.activation = tf_keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.c1, self.c2 = _coefficients(self.scale, self.rank)

    def build(self, input_shape):
        in_dim = int(input_shape[0][-1])
        add = lambda name, shape: self.add_weight(  # noqa: E731
            name=name, shape=shape, initializer="zeros", trainable=False)
        self.kernel_mean = add("kernel_mean", (in_dim, self.units))
        self.kernel_std = add("kernel_std", (in_dim, self.units))
        self.kernel_dev = add("kernel_dev", (self.rank, in_dim, self.units))
        if self.use_bias:
            self.bias_mean = add("bias_mean", (self.units,))
            self.bias_std = add("bias_std", (self.units,))
            self.bias_dev = add("bias_dev", (self.rank, self.units))
        self.built = True

    def _activate(self, out):
        return self.activation(out) if self.activation is not None else out

    def mean_call(self, inputs, **kwargs):
        out = tf.matmul(inputs[0], self.kernel_mean)
        return self._activate(out + self.bias_mean if self.use_bias else out)

    def sample_call(self, inputs, ctx, **kwargs):
        h, z = inputs
        kernel_shift = bias_shift = None
        if self.c2:  # K >= 2 deviations: the low-rank term, one z2 per sample
            z_s = tf.reshape(z, tf.stack([ctx.num_samples, -1, self.rank]))[:, 0, :]  # [S, K]
            kernel_shift = self.c2 * tf.einsum("sk,kio->sio", z_s, self.kernel_dev)
            if self.use_bias:
                bias_shift = self.c2 * tf.einsum("sk,ko->so", z_s, self.bias_dev)
        c1 = self.c1
        kernel = matmuls.Gaussian(tf.convert_to_tensor(self.kernel_mean),
                                   lambda: c1 * tf.convert_to_tensor(self.kernel_std),
                                   shift=kernel_shift)
        bias = None
        if self.use_bias:
            bias = matmuls.Gaussian(tf.convert_to_tensor(self.bias_mean),
                                     lambda: c1 * tf.convert_to_tensor(self.bias_std),
                                     shift=bias_shift)
        return self._activate(matmuls.gaussian_matmul(h, ctx, kernel, bias))

    def mc_rows_threshold(self):
        return matmuls.output_space_threshold(*self.kernel_mean.shape)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[0][:-1]).concatenate([self.units])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rank": self.rank,
                "scale": self.scale, "activation": tf_keras.activations.serialize(self.activation),
                "use_bias": self.use_bias}


class _WithNoise:
    """Calls a `SWAGDense` on ``[h, z2]``; ``z2`` is made once, from the first layer's input."""

    def __init__(self, dense, shared):
        self.dense, self.shared = dense, shared

    def __call__(self, inputs, *args, **kwargs):
        if "z" not in self.shared:
            self.shared["z"] = SWAGNoise(self.shared["rank"], name="swag_noise")(inputs)
        return self.dense([inputs, self.shared["z"]])


# ---------------------------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------------------------
def _batchnorm_layers(model):
    return [l for l in model._flatten_layers(include_self=False)
            if isinstance(l, tf_keras.layers.BatchNormalization)]


def recompute_batchnorm(model, x, batch_size=256):
    """Set every BatchNormalization layer's moving mean/variance to its statistics on ``x``.

    Layer by layer in graph order, each on the features produced with the earlier layers'
    new statistics (the population mean and biased variance, as in inference mode).
    """
    layers = _batchnorm_layers(model)
    if any(l not in model.layers for l in layers):
        raise ValueError(f"model {model.name!r} has BatchNormalization inside a nested model; "
                         "recompute_batchnorm handles only top-level batch-norm layers.")
    for bn in layers:
        features = tf_keras.Model(model.inputs, bn.input)
        total, total_sq, count = 0.0, 0.0, 0
        axes = [a % len(bn.input.shape) for a in bn.axis]
        for start in range(0, len(x), batch_size):
            f = features(x[start:start + batch_size], training=False).numpy().astype(np.float64)
            reduce = tuple(i for i in range(f.ndim) if i not in axes)
            total = total + f.sum(axis=reduce)
            total_sq = total_sq + np.square(f).sum(axis=reduce)
            count += int(np.prod([f.shape[i] for i in reduce]))
        mean = total / count
        bn.moving_mean.assign(mean.astype(np.float32))
        bn.moving_variance.assign(np.maximum(total_sq / count - mean ** 2, 0.0).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------
class SWAG(tf_keras.callbacks.Callback):
    """Collect SWAG moments during ``model.fit`` (Maddox et al. 2019).

    Args:
        start_epoch: first epoch index (0-based, as Keras passes it to callbacks) at whose end a
            snapshot is taken: ``start_epoch=10`` collects from the end of "Epoch 11/..." on.
        max_rank: K, how many of the latest deviations form the low-rank term (>= 0).
        update_freq: take a snapshot every ``update_freq`` epochs (>= 1).

    Attributes (after at least one snapshot): ``mean``, ``variance`` (flat float64 vectors over
    ``model.trainable_weights`` in order), ``deviations`` ([K, P]), ``num_snapshots``.
    """

    def __init__(self, start_epoch, max_rank=20, update_freq=1):
        super().__init__()
        self.start_epoch = options.integer("start_epoch", start_epoch, minimum=0)
        self.max_rank = options.integer("max_rank", max_rank, minimum=0)
        self.update_freq = options.integer("update_freq", update_freq, minimum=1)
        self.num_snapshots = 0
        self._source = None
        self._mean = self._sq_mean = None
        self._deviations = collections.deque(maxlen=self.max_rank)

    # --- collection -------------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if epoch >= self.start_epoch and (epoch - self.start_epoch) % self.update_freq == 0:
            self.collect(self.model)

    def collect(self, model):
        """Take one snapshot of ``model``'s trainable weights (what on_epoch_end calls)."""
        theta = np.concatenate([np.asarray(w.numpy(), np.float64).ravel()
                                for w in model.trainable_weights])
        if self._source is not None and (model is not self._source
                                         or theta.shape != self._mean.shape):
            raise ValueError("SWAG collects from one model; this snapshot comes from "
                             f"model {model.name!r} with {theta.size} trainable parameters.")
        n = self.num_snapshots
        if n == 0:
            self._source = model
            self._mean, self._sq_mean = theta.copy(), np.square(theta)
        else:
            self._mean = (n * self._mean + theta) / (n + 1)
            self._sq_mean = (n * self._sq_mean + np.square(theta)) / (n + 1)
        self.num_snapshots = n + 1
        if self.max_rank:
            self._deviations.append(theta - self._mean)

    def _require(self):
        if self.num_snapshots == 0:
            raise ValueError(
                f"SWAG has no snapshot yet: collection starts at the end of epoch index "
                f"start_epoch={self.start_epoch} (0-based, i.e. after {self.start_epoch + 1} "
                f"epochs) and repeats every update_freq={self.update_freq} epochs. Train for "
                f"at least {self.start_epoch + 1} epochs with this callback before sampling.")

    @property
    def mean(self):
        self._require()
        return self._mean.copy()

    @property
    def variance(self):
        self._require()
        return np.maximum(self._sq_mean - np.square(self._mean), 0.0)

    @property
    def deviations(self):
        self._require()
        if not self._deviations:
            return np.zeros((0, self._mean.size))
        return np.stack(self._deviations)

    # --- sampling ---------------------------------------------------------------------------
    def sample_weights(self, scale=0.5, seed=None):
        """One flat weight vector theta ~ SWAG (see module doc); numpy float64."""
        self._require()
        scale = options.number("scale", scale, 0)
        rng = np.random.default_rng(seed)
        dev = self.deviations
        c1, c2 = _coefficients(scale, len(dev))
        theta = self._mean + c1 * np.sqrt(self.variance) * rng.standard_normal(self._mean.size)
        if c2:
            theta = theta + c2 * (dev.T @ rng.standard_normal(len(dev)))
        return theta

    def _assign(self, model, theta):
        offset = 0
        for w in model.trainable_weights:
            size = int(np.prod(w.shape))
            w.assign(theta[offset:offset + size].reshape(w.shape).astype(w.dtype.as_numpy_dtype))
            offset += size

    def sample_model(self, scale=0.5, seed=None, bn_x=None, batch_size=256):
        """One deterministic tf_keras model with SWAG-sampled weights.

        Args:
            scale: multiplier of the sampled deviation (0.5 in the paper; 0 gives SWA).
            seed: int for a reproducible sample.
            bn_x: training inputs on which batch-norm statistics are recomputed; required when
                the model has BatchNormalization.
            batch_size: batch size of that pass.
        """
        self._require()
        source = self._source
        has_bn = bool(_batchnorm_layers(source))
        if has_bn and bn_x is None:
            raise ValueError(f"model {source.name!r} has BatchNormalization: pass bn_x= (training "
                             "inputs) so its statistics are recomputed for the sampled weights.")
        model = tf_keras.models.clone_model(source)
        model.set_weights(source.get_weights())
        self._assign(model, self.sample_weights(scale, seed))
        if has_bn:
            recompute_batchnorm(model, np.asarray(bn_x), batch_size)
        return model

    def _per_call_supported(self):
        source = self._source
        for layer in source._flatten_layers(include_self=False):
            if isinstance(layer, tf_keras.Model):
                return False
            if not layer.weights:
                continue
            if replay.kind(layer) != "Dense" or not isinstance(layer, tf_keras.layers.Layer):
                return False
            for node in layer._inbound_nodes:
                if any(len(t.shape) != 2 for t in tf.nest.flatten(node.input_tensors)):
                    return False
        return True

    def as_model(self, scale=0.5, bn_x=None, num_draws=30, seed=0, name=None):
        """A tf_keras model whose forward pass is one SWAG sample (see module doc).

        Args:
            scale: multiplier of the sampled deviation.
            bn_x: training inputs for batch-norm statistics (models with BatchNormalization).
            num_draws: size of the pre-drawn bank, used only when per-call sampling is not
                supported (then predict with ``num_samples=num_draws``).
            seed: base seed of the bank.
            name: model name (default ``<model>_swag``).
        """
        self._require()
        scale = options.number("scale", scale, 0)
        name = name or f"{self._source.name}_swag"
        if not self._per_call_supported():
            num_draws = options.integer("num_draws", num_draws, minimum=2)
            bank = [self.sample_model(scale, seed=seed + i, bn_x=bn_x) for i in range(num_draws)]
            for i, m in enumerate(bank):
                m._name = f"swag_draw_{i}"
            model = ensemble_model(bank, name=name)
        else:
            model = self._per_call_model(scale, name)
        # The copies are uncompiled: the task is the source model's (its loss, while training).
        task = tasks.infer(self._source)
        if task is not None:
            tasks.declare(model, task)
        return model

    def _per_call_model(self, scale, name):
        source = self._source
        dev = self.deviations
        rank = len(dev)
        offsets, start = {}, 0
        for w in source.trainable_weights:
            offsets[id(w)] = start
            start += int(np.prod(w.shape))
        variance, mean = self.variance, self._mean
        made, shared = [], {"rank": rank}

        def hook(layer):
            if replay.kind(layer) != "Dense":
                return None
            config = layer.get_config()
            dense = SWAGDense(config["units"], rank, scale, activation=config["activation"],
                              use_bias=config["use_bias"], name=layer.name)
            made.append((layer, dense))
            return replay.Replacement(_WithNoise(dense, shared))

        model = replay.replay(source, hook, name=name)

        def stats(var):
            if id(var) not in offsets:  # a frozen weight: a point mass at its value
                value = var.numpy()
                return value, np.zeros_like(value), np.zeros((rank,) + value.shape, value.dtype)
            o, shape = offsets[id(var)], tuple(var.shape)
            size = int(np.prod(shape))
            return (mean[o:o + size].reshape(shape), np.sqrt(variance[o:o + size]).reshape(shape),
                    dev[:, o:o + size].reshape((rank,) + shape))

        for src, dense in made:
            weights = list(stats(src.kernel))
            if dense.use_bias:
                weights += list(stats(src.bias))
            dense.set_weights([w.astype(np.float32) for w in weights])
        return model
