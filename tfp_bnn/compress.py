"""Bayesian compression: remove the weights and units the posterior calls noise.

    weight w_i pruned     when log alpha_i = log sigma_i^2 - log theta_i^2 > threshold
                          (layers with a `tfp_bnn.priors.LogUniform` prior: sparse VD)
    unit / filter j off   when log alpha of its scale z_j > threshold
                          (`tfp_bnn.sparse.UnitScale`, the group normal-Jeffreys prior)

An off unit leaves its layer (kernel column, bias) and the next Dense/Conv layer's inputs (the
kernel rows it fed; through a Flatten, every position's row of that channel): the layer shapes
shrink, and `tfp_bnn.replay` rebuilds the graph on them. A kept unit's posterior mean scale
E[z_j] is folded into those rows. Pruned weights elsewhere are zeros. The result is the
posterior-mean network as tf_keras Dense/Conv layers (no TFP at serving time), or with
``bayesian=True`` the same Bayesian layers restricted to what is kept.

Bits per weight follow Louizos et al. section 5 ("Bit precision"): the posterior says how
finely a layer's weights need to be told apart, so a fixed-point grid over the layer's range
needs a unit round-off no coarser than the posterior standard deviation. Per layer,
``bits = ceil(log2(range / sqrt(mean sigma^2)))`` over the kept weights (the mean marginal
variance, the choice of the paper), clipped to [1, 32]; the compression ratio is
``32 * weights / sum_l kept_l * bits_l`` (float32 dense storage over the kept weights at their
bits; index storage of a sparse format is not counted).

Example:
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
    ...                              tf_keras.layers.Dense(16, activation="relu"),
    ...                              tf_keras.layers.Dense(2)])
    >>> bnn = tfp_bnn.bayesify(model, prior="log_uniform", num_train_examples=len(x))
    >>> bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = bnn.fit(x, y, epochs=2, verbose=0)
    >>> result = tfp_bnn.compress(bnn, threshold=3.0)
    >>> 0 < result.report["nonzero_fraction"] <= 1, result.report["compression_ratio"] >= 1
    (True, True)
    >>> path = tfp_bnn.export_savedmodel(result.model, "served")

References:
    Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep Neural Networks",
    ICML 2017.
    Louizos, Ullrich & Welling, "Bayesian Compression for Deep Learning", NeurIPS 2017.
"""
import math
from typing import NamedTuple

import numpy as np

from tfp_bnn import layers as bl
from tfp_bnn import options, replay, tasks
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn._keras import tf, tf_keras, tfd
from tfp_bnn.bayesian import BayesianLayer, bayesian_layers
from tfp_bnn.elbo import BayesianModel
from tfp_bnn.kernel_layer import KernelLayer
from tfp_bnn.sparse import UnitScale

__all__ = ["Compressed", "compress"]

_DENSE = (bl.DenseFlipout, bl.DenseReparameterization, bl.DenseLocalReparameterization)
_CONV = (bl.Conv1DFlipout, bl.Conv2DFlipout, bl.Conv3DFlipout, bl.Conv1DReparameterization,
         bl.Conv2DReparameterization, bl.Conv3DReparameterization)
# Layers between a unit scale and the next kernel that keep channels apart and map 0 to 0, so
# an off channel is 0 all the way to the kernel rows it meets.
_PASS_THROUGH = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                 "GaussianDropout", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
                 "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
                 "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
                 "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
                 "ReLU", "LeakyReLU", "ELU", "Activation")
_BAYES_KEYS = ("prior", "posterior", "kl_weight", "seed")


class Compressed(NamedTuple):
    """What `compress` returns.

    Attributes:
        model: the smaller tf_keras model (deterministic, or Bayesian on request).
        report: ``nonzero_fraction``, ``bits_per_weight``, ``compression_ratio``, ``threshold``,
            ``weights`` / ``weights_kept`` (totals) and ``layers``: per layer ``name``,
            ``weights``, ``weights_kept``, ``units``, ``units_kept``, ``bits``.
    """
    model: object
    report: dict


def _off(layer, threshold):
    """Boolean mask per weight tensor name: True where log alpha > threshold (prunable only)."""
    masks = {}
    for name, q, _ in layer.weight_posteriors():
        dist = q.distribution
        if layer.prior.prunable and isinstance(dist, tfd.Normal):
            la = priors_lib.log_alpha(dist.loc, dist.scale).numpy()
            masks[name] = la > threshold
        else:
            masks[name] = np.zeros(tuple(dist.loc.shape), bool)
    return masks


def _node_layers(node):
    found = node.inbound_layers
    return found if isinstance(found, (list, tuple)) else [found]


def _zero_preserving(layer):
    if replay.builtin(layer, "Activation"):
        return float(layer.activation(tf.zeros([1]))[0]) == 0.0
    return replay.builtin(layer, *_PASS_THROUGH)


def _consumer(scale):
    """(the one kernel layer fed by `UnitScale` ``scale``, positions per channel on its input)."""
    layer, positions = scale, 1
    while True:
        nodes = layer._outbound_nodes
        if len(nodes) != 1:
            break
        layer = nodes[0].layer
        if replay.builtin(layer, "Flatten"):
            shape = layer.input_shape
            positions *= int(np.prod(shape[1:-1]))
            continue
        if not _zero_preserving(layer):
            break
    kernel = isinstance(layer, _DENSE + _CONV) or replay.kind(layer) in (
        "Dense", "Conv1D", "Conv2D", "Conv3D")
    # A Flatten orders a channels_first map channel-major: the rows of a channel are not the
    # every-C-th ones tiled below.
    if kernel and getattr(layer, "groups", 1) == 1 and (positions == 1 or scale.axis == -1):
        return layer, positions
    raise ValueError(
        f"compress: the unit scales {scale.name!r} must feed one Dense or Conv layer through "
        f"channel-wise layers ({', '.join(_PASS_THROUGH[:3])}, pooling, Flatten, ReLU, ...); "
        f"they feed {type(layer).__name__} {layer.name!r}.")


class _Plan:
    """What to keep in each layer: masks of pruned weights, kept units and kept input rows."""

    def __init__(self, bnn, threshold):
        self.masks, self.out_keep, self.in_keep, self.in_scale = {}, {}, {}, {}
        for layer in bayesian_layers(bnn):
            self.masks[id(layer)] = _off(layer, threshold)
        for scale in (l for l in bayesian_layers(bnn) if isinstance(l, UnitScale)):
            producer = _node_layers(scale._inbound_nodes[0])[0]
            if not isinstance(producer, _DENSE + _CONV):
                raise ValueError(f"compress: the unit scales {scale.name!r} must follow a "
                                 f"Bayesian Dense or Conv layer; they follow "
                                 f"{type(producer).__name__} {producer.name!r}.")
            dist = scale.weight_posteriors()[0][1].distribution
            la = priors_lib.log_alpha(dist.loc, dist.scale).numpy()
            keep = la <= threshold
            consumer, positions = _consumer(scale)
            self.out_keep[id(producer)] = self.out_keep[id(scale)] = keep
            self.in_keep[id(consumer)] = np.tile(keep, positions)
            self.in_scale[id(consumer)] = np.tile(dist.loc.numpy(), positions)

    def slice(self, layer, array, kernel_shape):
        """``array`` of ``layer`` restricted to the kept units (last axis) and input rows."""
        out = self.out_keep.get(id(layer))
        rows = self.in_keep.get(id(layer))
        if array.ndim >= 2 and tuple(array.shape) == tuple(kernel_shape):
            if rows is not None:
                array = np.compress(rows, array, axis=-2)
            return np.compress(out, array, axis=-1) if out is not None else array
        if array.ndim == 1 and out is not None and array.shape[0] == out.shape[0]:
            return array[out]
        return array


def _kernel_shape(layer):
    if isinstance(layer, BayesianLayer):
        return tuple(layer.weight_posteriors()[0][1].distribution.loc.shape)
    return tuple(layer.kernel.shape)


def _deterministic(layer, plan):
    """The posterior-mean tf_keras layer standing for Bayesian ``layer``."""
    config = {k: v for k, v in layer.get_config().items() if k not in _BAYES_KEYS}
    if isinstance(layer, _DENSE):
        cls = tf_keras.layers.Dense
    elif isinstance(layer, _CONV):
        cls = getattr(tf_keras.layers, f"Conv{layer.rank}D")
    elif isinstance(layer, KernelLayer):
        cls = next(c for c in type(layer).__mro__ if c.__module__.startswith("tf_keras."))
    else:
        raise ValueError(f"compress: layer {layer.name!r} ({type(layer).__name__}) has no "
                         "deterministic counterpart here (Dense, Conv and the kernel-layer kinds "
                         "do); leave it out of bayesify with layers=.")
    keep = plan.out_keep.get(id(layer))
    if keep is not None:
        config["units" if cls is tf_keras.layers.Dense else "filters"] = int(keep.sum())
    new = cls.from_config(config)
    masks, shape = plan.masks[id(layer)], _kernel_shape(layer)
    rows_scale = plan.in_scale.get(id(layer))

    def copy_weights():
        arrays = []
        for name, q, _ in layer.weight_posteriors():
            w = np.where(masks[name], 0.0, q.distribution.loc.numpy())
            if name != "bias" and rows_scale is not None:
                w = w * rows_scale[:, None]
            arrays.append(plan.slice(layer, w, shape))
        new.set_weights(arrays)

    return replay.Replacement(new, copy_weights)


def _bayesian(layer, plan):
    """The same Bayesian layer restricted to what is kept (pruned weights: mean 0, sigma ~ 0)."""
    config = layer.get_config()
    keep = plan.out_keep.get(id(layer))
    if keep is not None and not isinstance(layer, UnitScale):
        config["units" if isinstance(layer, _DENSE) else "filters"] = int(keep.sum())
    new = type(layer).from_config(config)
    masks, shape = plan.masks[id(layer)], _kernel_shape(layer)
    pruned = {}
    for name, q, _ in layer.weight_posteriors():
        dist = q.distribution
        pruned[dist.loc.ref()] = (masks[name], 0.0)
        if isinstance(dist, tfd.Normal):
            pruned[dist.scale.pretransformed_input.ref()] = (
                masks[name], float(posteriors_lib.inverse_softplus(posteriors_lib.MIN_SCALE)))

    def copy_weights():
        arrays = []
        for var in layer.weights:
            w = var.numpy()
            if var.ref() in pruned:
                mask, value = pruned[var.ref()]
                w = np.where(mask, value, w)
            arrays.append(plan.slice(layer, w, shape))
        new.set_weights(arrays)

    return replay.Replacement(new, copy_weights)


def _plain_kernel(layer, plan, scale_rows):
    """A deterministic Dense/Conv fed by unit scales: its kept input rows, scaled by E[z]
    where the scales leave the model (``scale_rows``)."""
    new = type(layer).from_config(layer.get_config())
    shape, rows_scale = _kernel_shape(layer), plan.in_scale[id(layer)]

    def copy_weights():
        arrays = [w * rows_scale[:, None] if scale_rows and w.ndim >= 2 and w.shape == shape
                  else w for w in layer.get_weights()]
        new.set_weights([plan.slice(layer, w, shape) for w in arrays])

    return replay.Replacement(new, copy_weights)


def _bits(loc, variance):
    if loc.size == 0:
        return 0
    spread = float(loc.max() - loc.min())
    std = math.sqrt(float(np.mean(variance)))
    if spread <= 0.0 or std <= 0.0:
        return 1
    return int(min(32, max(1, math.ceil(math.log2(spread / std)))))


def _layer_report(layer, plan):
    masks, shape = plan.masks[id(layer)], _kernel_shape(layer)
    total = kept = 0
    kernels_loc, kernels_var = [], []
    for name, q, _ in layer.weight_posteriors():
        dist = q.distribution
        size = int(np.prod(dist.loc.shape))
        alive = plan.slice(layer, ~masks[name], shape)
        total, kept = total + size, kept + int(alive.sum())
        if name != "bias" and isinstance(dist, tfd.Normal):
            kernels_loc.append(plan.slice(layer, dist.loc.numpy(), shape)[alive])
            kernels_var.append(plan.slice(layer, np.square(tf.convert_to_tensor(
                dist.scale).numpy()), shape)[alive])
    keep = plan.out_keep.get(id(layer))
    units = shape[-1]
    bits = _bits(np.concatenate(kernels_loc), np.concatenate(kernels_var)) if kernels_loc else 32
    return {"name": layer.name, "kind": type(layer).__name__, "weights": total,
            "weights_kept": kept, "units": int(units),
            "units_kept": int(keep.sum()) if keep is not None else int(units), "bits": bits}


def compress(bnn, threshold=3.0, bayesian=False):
    """Remove what the posterior calls noise; return the smaller model and a report.

        keep w_i  iff  log alpha_i <= threshold;   keep unit j  iff  log alpha_{z_j} <= threshold
        deterministic:  w = E_q[w] (kept), 0 (pruned);   E[z_j] folded into the next kernel

    Args:
        bnn: a model from `tfp_bnn.bayesify` with ``prior="log_uniform"`` (sparse variational
            dropout) or ``prior="group_normal_jeffreys"`` (unit scales), trained. The model is
            not modified.
        threshold: log alpha above which a weight or a unit is removed (3.0: a dropout rate
            alpha / (1 + alpha) above 0.95, the paper's choice); ``float("inf")`` keeps all.
        bayesian: False: the posterior-mean network (tf_keras Dense/Conv, serves without TFP).
            True: the Bayesian layers restricted to the kept weights and units.

    Returns:
        `Compressed` ``(model, report)``; see `Compressed` for the report's keys.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int32")
        >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
        ...                              tf_keras.layers.Dense(16, activation="relu"),
        ...                              tf_keras.layers.Dense(2)])
        >>> bnn = tfp_bnn.bayesify(model, prior="log_uniform", num_train_examples=len(x))
        >>> result = tfp_bnn.compress(bnn, threshold=float("inf"))  # keeps all (kernels + biases)
        >>> [(l["weights_kept"], l["units_kept"]) for l in result.report["layers"]]
        [(80, 16), (34, 2)]

    References:
        Molchanov et al., ICML 2017; Louizos et al., NeurIPS 2017 (section 5: bit precision).
    """
    if not replay.is_model(bnn):
        raise ValueError("bnn must be a model from tfp_bnn.bayesify. "
                         f"Received: bnn={bnn!r} (type {type(bnn).__name__})")
    threshold = options.number("threshold", threshold, allow_inf=True)
    layers = bayesian_layers(bnn)
    if not any(isinstance(l, UnitScale) or l.prior.prunable for l in layers):
        raise ValueError(
            f"compress needs a model with sparse layers (bayesify with prior='log_uniform' or "
            f"'group_normal_jeffreys'). Received: bnn={bnn.name!r} with priors "
            f"{sorted({type(l.prior).__name__ for l in layers}) or 'none (no Bayesian layer)'}")
    plan = _Plan(bnn, threshold)

    def hook(layer):
        if isinstance(layer, BayesianLayer):
            if bayesian:
                return _bayesian(layer, plan)
            if isinstance(layer, UnitScale):
                return replay.Replacement(lambda x, *args, **kwargs: x)
            return _deterministic(layer, plan)
        if id(layer) in plan.in_keep:
            return _plain_kernel(layer, plan, scale_rows=not bayesian)
        return None

    model = replay.replay(bnn, hook, model_class=BayesianModel if bayesian else tf_keras.Model,
                          name=f"{bnn.name}_compressed")
    task = tasks.declared(bnn)
    if task is not None:
        tasks.declare(model, task)
    rows = [_layer_report(l, plan) for l in layers if not isinstance(l, UnitScale)]
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["weights_kept"] for r in rows)
    stored_bits = sum(r["weights_kept"] * r["bits"] for r in rows)
    report = {
        "threshold": threshold, "weights": weights, "weights_kept": kept,
        "nonzero_fraction": kept / weights,
        "bits_per_weight": stored_bits / kept if kept else 0.0,
        "compression_ratio": 32.0 * weights / stored_bits if stored_bits else math.inf,
        "layers": rows,
    }
    return Compressed(model, report)
