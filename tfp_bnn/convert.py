"""bayesify(): rebuild a Keras model in tf_keras with Bayesian Dense/Conv/attention/RNN layers.

The source model (tf_keras or Keras 3; Sequential, Functional, nested) is replayed as new
tf_keras layers by `tfp_bnn.replay`; this module only says which layers become Bayesian and
how: selected Dense, Conv1D/2D/3D (grouped too), depthwise, separable and transposed
convolutions, EinsumDense, MultiHeadAttention, LSTM, GRU and SimpleRNN layers (Bidirectional-
and TimeDistributed-wrapped ones too) become the registered Bayesian classes of
`tfp_bnn.layers` (`ESTIMATORS`); every other layer is copied with its weights. The source
model is never modified.

Example:
    >>> x_train = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    >>> y_train = (x_train[:, 0] > 0).astype("int32")
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)),
    ...                              tf_keras.layers.Dense(16, activation="relu"),
    ...                              tf_keras.layers.Dense(2)])
    >>> bnn = tfp_bnn.bayesify(model, estimator="flipout", prior="normal",
    ...                        num_train_examples=len(x_train))
    >>> [type(l).__name__ for l in bnn.layers[1:]]
    ['DenseFlipout', 'DenseFlipout']
    >>> bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = bnn.fit(x_train, y_train, epochs=2, verbose=0)      # logs loss = nll + kl
    >>> sorted(history.history)
    ['kl', 'loss', 'nll']
"""
import re
import warnings

import numpy as np

from tfp_bnn import layers as bl
from tfp_bnn import options
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import kernel_layer, ops, replay, rnn, sparse, tasks
from tfp_bnn._keras import tf_keras
from tfp_bnn.elbo import BayesianModel, kl_weight_from
from tfp_bnn.options import Estimator

__all__ = ["bayesify", "ESTIMATORS"]

# The kinds whose Bayesian classes (`tfp_bnn.conv_kinds`, `tfp_bnn.attention`) take the tf_keras
# constructor as it is: built from the source layer's own (translated) config.
_KERNEL_KINDS = replay.KERNEL_KINDS + ("GroupedConv1D", "GroupedConv2D", "GroupedConv3D")
_TFP_CONV_KINDS = ("Conv1D", "Conv2D", "Conv3D")

# The registry bayesify dispatches on: estimator -> source layer kind (`_kind`) -> the
# Bayesian class. A kind missing under an estimator is a clear error naming both.
ESTIMATORS = {
    Estimator.FLIPOUT: {
        "Dense": bl.DenseFlipout, "Conv1D": bl.Conv1DFlipout, "Conv2D": bl.Conv2DFlipout,
        "Conv3D": bl.Conv3DFlipout, "LSTM": bl.LSTMFlipout, "GRU": bl.GRUFlipout,
        "SimpleRNN": bl.SimpleRNNFlipout,
        **{kind: getattr(bl, kind + "Flipout") for kind in _KERNEL_KINDS}},
    Estimator.REPARAMETERIZATION: {
        "Dense": bl.DenseReparameterization, "Conv1D": bl.Conv1DReparameterization,
        "Conv2D": bl.Conv2DReparameterization, "Conv3D": bl.Conv3DReparameterization,
        "LSTM": bl.LSTMReparameterization, "GRU": bl.GRUReparameterization,
        "SimpleRNN": bl.SimpleRNNReparameterization,
        **{kind: getattr(bl, kind + "Reparameterization") for kind in _KERNEL_KINDS}},
    Estimator.LOCAL_REPARAMETERIZATION: {"Dense": bl.DenseLocalReparameterization},
}
# Config keys whose non-default values a TFP layer cannot reproduce.
_UNFAITHFUL = {
    "kernel_regularizer": "a weight regularizer has no meaning on a distribution; use the prior",
    "bias_regularizer": "a weight regularizer has no meaning on a distribution; use the prior",
    "kernel_constraint": "TFP variational layers do not support kernel constraints",
    "bias_constraint": "TFP variational layers do not support bias constraints",
    "lora_rank": "LoRA-adapted layers cannot be converted",
    **{key: "a weight regularizer or constraint has no meaning on a distribution; use the prior"
       for key in kernel_layer.UNSUPPORTED_OPTIONS if key.startswith(("depthwise", "pointwise"))},
}


def _scope_name(name):
    """``name``, or the nearest valid TF name scope: a Bayesian layer's posteriors are tf.Modules
    named after it, and a module name must be an identifier (tf_keras's RegNet names its head
    "1head_dense")."""
    if name.isidentifier():
        return name
    name = re.sub(r"\W", "_", name)
    # (a root name scope may not start with "_")
    return name if name.isidentifier() else "layer_" + name


def _kind(layer):
    """The `ESTIMATORS` key of a source layer: its `replay.kind`, "GroupedConv2D" for a
    Conv2D with groups > 1 (and so on), None for a layer of no convertible kind."""
    kind = replay.kind(layer)
    if kind in _TFP_CONV_KINDS and layer.get_config().get("groups", 1) != 1:
        return "Grouped" + kind
    return kind


def _why_not(layer, estimator):
    """Reason a selected layer cannot become faithfully Bayesian, or None when it can."""
    kind = _kind(layer)
    if kind is None:
        return f"it is not a built-in layer of a convertible kind ({', '.join(replay.KINDS)})"
    if kind not in ESTIMATORS[estimator]:
        return (f"estimator={str(estimator)!r}: TFP has no local-reparameterization {kind} "
                "layer (local reparameterization "
                "exists only for Dense); use estimator='flipout' or 'reparameterization', or "
                "exclude the layer with layers=")
    config = layer.get_config()
    if kind in replay.RNN_KINDS:
        return rnn.unsupported_option(config)
    for key, why in _UNFAITHFUL.items():
        if config.get(key) not in (None, 0):
            return f"{key}={config.get(key)!r}: {why}"
    if kind in _TFP_CONV_KINDS and str(config.get("padding", "valid")).lower() not in (
            "valid", "same"):
        return f"padding={config['padding']!r}: TFP convolutions support only 'valid' and 'same'"
    return None


def _is_convertible_class(layer):
    if _wrapped_rnn(layer) is not None:
        return _is_convertible_class(_wrapped_rnn(layer))
    if _wrapped_dense(layer) is not None:
        return True
    return replay.kind(layer) is not None or replay.subclasses_a_kind(layer)


def _wrapped_dense(layer):
    """The Dense inside a built-in TimeDistributed wrapper, else None.

    TimeDistributed(Dense) is Dense on the last axis: the wrapper is replaced by the Bayesian
    Dense itself (same outputs; a rank > 2 input keeps one kernel draw per example in
    `tfp_bnn.predict`), which also keeps the model loadable (tf_keras's wrapper deserialiser
    does not resolve registered layer names).
    """
    if replay.builtin(layer, "TimeDistributed") and replay.kind(layer.layer) == "Dense":
        return layer.layer
    return None


def _wrapped_rnn(layer):
    """The forward layer of a built-in Bidirectional wrapper (converted with it), else None."""
    if replay.builtin(layer, "Bidirectional"):
        return layer.forward_layer
    return None


# ---------------------------------------------------------------------------------------------
# The hook `tfp_bnn.replay` asks about each layer
# ---------------------------------------------------------------------------------------------
class _Bayesify:
    """``hook(layer)``: a Bayesian replacement for each selected layer, None (copy) otherwise."""

    def __init__(self, estimator, prior, posterior, kl_weight, select, outputs=()):
        self.estimator, self.prior, self.posterior = estimator, prior, posterior
        self.kl_weight, self.select = kl_weight, select
        self.outputs = {id(layer) for layer in outputs}  # layers whose units stay (groups)
        self.converted = []

    def __call__(self, layer):
        if not (_is_convertible_class(layer) and self.select(layer)):
            return None
        inner, dense = _wrapped_rnn(layer), _wrapped_dense(layer)
        reason = _why_not(inner or dense or layer, self.estimator)
        if reason is not None:
            raise ValueError(
                f"Cannot convert layer {layer.name!r} ({type(layer).__name__}): {reason}. "
                "Leave it deterministic by excluding it with layers=.")
        if inner is not None:
            new = self._bidirectional(layer)
            pairs = [(layer.forward_layer, new.forward_layer),
                     (layer.backward_layer, new.backward_layer)]
        else:
            new = self._bayesian(dense or layer, name=layer.name)
            pairs = [(dense or layer, new)]
        self.converted.append(new)

        def copy_weights():
            for src, bayes in pairs:
                bayes.init_from_weights([np.asarray(w) for w in src.get_weights()],
                                        self.posterior)

        # Without from_weights the posterior keeps its own initialisation (no weight copy).
        copy_weights = copy_weights if self.posterior.from_weights else None
        if (self.prior.unit_prior is not None and id(layer) not in self.outputs
                and _kind(dense or layer) in ("Dense",) + _TFP_CONV_KINDS):
            return replay.Replacement(sparse.unit_scale_after(
                layer, new, self.prior, self.kl_weight), copy_weights)
        return replay.Replacement(new, copy_weights)

    def _bayesian(self, layer, name=None):
        kind = _kind(layer)
        cls = ESTIMATORS[self.estimator][kind]
        if kind in _KERNEL_KINDS:
            return self._kernel_layer(cls, layer, name)
        config = replay.to_tf_keras_config(layer.get_config())
        common = dict(
            name=_scope_name(name or config["name"]), trainable=config.get("trainable", True),
            # The variable dtype: float64 stays float64. Under a mixed policy ("mixed_float16",
            # "mixed_bfloat16") the Bayesian layer runs in plain float32, like the float32
            # output layer Keras recommends: softplus(rho), the weight draw and the KL, whose
            # log(sigma_prior / sigma) terms and sums over every weight lose too much in
            # 16 bits (sigma < 6e-8 is 0 in float16). Keras casts its inputs up and the next
            # layer's inputs back down; the other layers keep the mixed policy.
            dtype=str(layer.dtype),
            activation=ops.activation(config.get("activation"),
                                      keras3=not isinstance(layer, tf_keras.layers.Layer)),
            use_bias=config.get("use_bias", True),
            kernel_initializer=config.get("kernel_initializer", "glorot_uniform"),
            bias_initializer=config.get("bias_initializer", "zeros"),
            activity_regularizer=tf_keras.regularizers.get(config.get("activity_regularizer")),
            prior=self.prior, posterior=self.posterior, kl_weight=self.kl_weight)
        if kind in replay.RNN_KINDS:
            return cls(**rnn.keras_options(kind, config), **common)
        if kind == "Dense":
            return cls(units=config["units"], **common)
        return cls(filters=config["filters"], kernel_size=config["kernel_size"],
                   strides=config.get("strides", 1), padding=config.get("padding", "valid"),
                   data_format=config.get("data_format") or "channels_last",
                   dilation_rate=config.get("dilation_rate", 1), **common)

    def _kernel_layer(self, cls, layer, name):
        """A `tfp_bnn.kernel_layer` kind: the tf_keras constructor from the source's config."""
        config = replay.tf_keras_config(layer)
        # Regularizers and constraints are None here (`_why_not`); tf_keras MultiHeadAttention
        # configs carry the shapes it was built with, which its constructor does not take (the
        # replay's call builds it).
        for key in kernel_layer.UNSUPPORTED_OPTIONS + ("query_shape", "key_shape",
                                                       "value_shape"):
            config.pop(key, None)
        # float32 under a mixed policy, as `_bayesian` explains.
        config.update(name=_scope_name(name or config["name"]), dtype=str(layer.dtype))
        return cls(**config, prior=self.prior, posterior=self.posterior,
                   kl_weight=self.kl_weight)

    def _bidirectional(self, layer):
        """Bidirectional(Bayesian RNN) with both directions converted (weights copied later)."""
        fwd, bwd = self._bayesian(layer.forward_layer), self._bayesian(layer.backward_layer)
        for new, prefix in ((fwd, "forward_"), (bwd, "backward_")):
            if new.name.startswith(prefix):  # the wrapper prefixes the names again
                new._name = new.name[len(prefix):]
        return tf_keras.layers.Bidirectional(
            fwd, merge_mode=layer.get_config().get("merge_mode", "concat"), backward_layer=bwd,
            name=layer.name, trainable=layer.trainable)


def _selector(model, layers):
    """Turn ``layers=`` into a predicate over source layers, validating names."""
    every = replay.all_layers(model)
    if layers is None:
        return lambda layer: True
    if isinstance(layers, str):
        if layers != "last":
            layers = [layers]
        else:
            candidates = [l for l in every if _is_convertible_class(l)]
            if not candidates:
                return lambda layer: False
            last = candidates[-1]
            return lambda layer: layer is last
    if callable(layers):
        return lambda layer: bool(layers(layer))
    if isinstance(layers, (list, tuple, set)):
        names = {l.name for l in every}
        wanted = set()
        for name in layers:
            if not isinstance(name, str) or name not in names:
                raise ValueError(f"layers= names a layer that does not exist: {name!r}. "
                                 f"Layers of the model: {sorted(names)}")
            wanted.add(name)
        return lambda layer: layer.name in wanted
    raise ValueError("layers must be None, 'last', a list of layer names or a predicate "
                     f"callable(layer) -> bool. Received: layers={layers!r}")


def bayesify(model, estimator="flipout", prior="normal", posterior=None, num_train_examples=None,
             kl_weight=None, layers=None, task=None):
    """Return a NEW tf_keras model with Bayesian versions of the model's Dense/Conv/RNN layers.

        loss = NLL_mean + kl_weight * sum_layers KL(q || p),   kl_weight = 1/N by default
             = -ELBO / N

    Args:
        model: a tf_keras or Keras 3 model, Sequential or Functional, with defined inputs, or a
            tf_keras subclassed model that has been called (its ``call`` is traced).
        estimator: "flipout", "reparameterization" or "local_reparameterization" (Dense only).
        prior: a prior name (see `tfp_bnn.priors.PRIORS`), dict, or `tfp_bnn.priors` instance.
            "log_uniform": sparse variational dropout; "group_normal_jeffreys": a Bayesian
            scale per hidden unit/filter (`tfp_bnn.sparse.UnitScale`); both for
            `tfp_bnn.compress`.
        posterior: `tfp_bnn.posteriors.MeanField(...)`, its config dict, or None for defaults.
        num_train_examples: N, the training-set size (the KL weight defaults to 1/N), or the
            training `tf.data.Dataset`, whose examples are counted (`tfp_bnn.elbo.num_examples`).
        kl_weight: explicit KL weight (overrides 1/N). One of the two is required.
        layers: which layers to convert: None (every Dense/Conv/RNN), "last", a list of layer names,
            or a predicate ``callable(layer) -> bool`` over the source model's layers.
        task: "multiclass", "binary" (one logit), "regression" or "gaussian" (a Gaussian head);
            None reads it from the model's compiled loss or its output layer (`tfp_bnn.tasks`),
            or, when neither says (a one-unit linear output, uncompiled), later from the loss
            the returned model is compiled with. Saved with the model; `predict`, the metrics
            and the export follow it.

    Returns:
        A `tfp_bnn.BayesianModel` (a tf_keras Functional model) that logs `nll` and `kl`.

    References:
        Blundell et al. 2015 (Bayes by Backprop); Wen et al. 2018 (Flipout).
    """
    if not replay.is_model(model):
        raise ValueError("model must be a tf_keras or Keras 3 Model. "
                         f"Received: model={model!r} (type {type(model).__name__})")
    estimator = options.choice("estimator", estimator, Estimator)
    prior = priors_lib.get(prior)
    posterior = posteriors_lib.get(posterior)
    weight = kl_weight_from(num_train_examples, kl_weight)
    select = _selector(model, layers)
    graph = replay.has_graph(model)
    if graph:
        task = tasks.infer(model) if task is None else tasks.resolve(model, task)

    if not any(_is_convertible_class(l) for l in replay.all_layers(model)):
        raise ValueError(f"model {model.name!r} has no Dense, Conv or RNN layer to make "
                         f"Bayesian (the kinds converted: {', '.join(replay.KINDS)}).")

    hook = _Bayesify(estimator, prior, posterior, weight, select,
                     replay.output_layers(model) if graph else ())
    new_model = replay.replay(model, hook, model_class=BayesianModel)
    if not graph:  # a subclassed model's output is seen on its rebuilt graph
        task = (tasks.from_loss(getattr(model, "loss", None)) or tasks.infer(new_model)
                if task is None else tasks.resolve(new_model, task))
    if task is not None:
        tasks.declare(new_model, task)
    if not hook.converted:
        warnings.warn(f"bayesify: layers={layers!r} matched no Dense/Conv/RNN layer; the returned "
                      "model is a deterministic copy.", UserWarning, stacklevel=2)
    return new_model
