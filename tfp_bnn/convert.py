"""bayesify(): rebuild a Keras model as a tf_keras model whose Dense/Conv/RNN layers are Bayesian.

The source model (tf_keras or Keras 3; Sequential, Functional, nested) is read as a graph of
layer calls and replayed with new tf_keras layers: selected Dense, Conv1D/2D/3D, LSTM, GRU and
SimpleRNN layers (Bidirectional-wrapped ones too) become the registered Bayesian subclasses of
`tfp_bnn.layers`, every other layer is recreated from its config with its weights copied.
The source model is never modified.

Example:
    >>> bnn = tfp_bnn.bayesify(model, estimator="flipout", prior="normal",
    ...                        num_train_examples=len(x_train))
    >>> bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> bnn.fit(x_train, y_train, epochs=100)      # logs loss = nll + kl
"""
import inspect
import sys
import warnings

import numpy as np

from tfp_bnn import layers as bl
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn import priors as priors_lib
from tfp_bnn import rnn
from tfp_bnn._keras import is_keras3_model, is_tf_keras_model, keras3, tf, tf_keras
from tfp_bnn.elbo import BayesianModel, kl_weight_from

__all__ = ["bayesify", "ESTIMATORS"]

ESTIMATORS = {
    "flipout": {"Dense": bl.DenseFlipout, "Conv1D": bl.Conv1DFlipout,
                "Conv2D": bl.Conv2DFlipout, "Conv3D": bl.Conv3DFlipout},
    "reparameterization": {"Dense": bl.DenseReparameterization,
                           "Conv1D": bl.Conv1DReparameterization,
                           "Conv2D": bl.Conv2DReparameterization,
                           "Conv3D": bl.Conv3DReparameterization},
    "local_reparameterization": {"Dense": bl.DenseLocalReparameterization},
}
ESTIMATORS["flipout"].update(LSTM=bl.LSTMFlipout, GRU=bl.GRUFlipout,
                             SimpleRNN=bl.SimpleRNNFlipout)
ESTIMATORS["reparameterization"].update(LSTM=bl.LSTMReparameterization,
                                        GRU=bl.GRUReparameterization,
                                        SimpleRNN=bl.SimpleRNNReparameterization)
_CONVERTIBLE = ("Dense", "Conv1D", "Conv2D", "Conv3D") + rnn.KERAS_KINDS
# Subclasses of Conv that a mean-field TFP layer cannot express (checked before Conv itself).
_UNSUPPORTED = {
    "Conv1DTranspose": "TFP has no Bayesian transposed convolution",
    "Conv2DTranspose": "TFP has no Bayesian transposed convolution",
    "Conv3DTranspose": "TFP has no Bayesian transposed convolution",
    "DepthwiseConv1D": "TFP has no Bayesian depthwise convolution",
    "DepthwiseConv2D": "TFP has no Bayesian depthwise convolution",
    "SeparableConv1D": "TFP has no Bayesian separable convolution",
    "SeparableConv2D": "TFP has no Bayesian separable convolution",
}
# Config keys whose non-default values a TFP layer cannot reproduce.
_UNFAITHFUL = {
    "kernel_regularizer": "a weight regularizer has no meaning on a distribution; use the prior",
    "bias_regularizer": "a weight regularizer has no meaning on a distribution; use the prior",
    "kernel_constraint": "TFP variational layers do not support kernel constraints",
    "bias_constraint": "TFP variational layers do not support bias constraints",
    "lora_rank": "LoRA-adapted layers cannot be converted",
}


def _kind(layer):
    """'Dense'/'Conv2D'/... for exactly those built-in classes, else None (never a substring)."""
    name = type(layer).__name__
    module = type(layer).__module__
    builtin = module.startswith(("tf_keras.", "keras.", "keras.src."))
    if builtin and name in _CONVERTIBLE:
        return name
    return None


def _why_not(layer, estimator):
    """Reason a selected layer cannot become faithfully Bayesian, or None when it can."""
    name = type(layer).__name__
    if name in _UNSUPPORTED:
        return _UNSUPPORTED[name]
    kind = _kind(layer)
    if kind is None:
        return "it is not a built-in Dense/Conv1D/Conv2D/Conv3D/LSTM/GRU/SimpleRNN layer"
    if kind not in ESTIMATORS[estimator]:
        return (f"estimator={estimator!r}: TFP has no local-reparameterization {kind} layer "
                "(local reparameterization "
                "exists only for Dense); use estimator='flipout' or 'reparameterization', or "
                "exclude the layer with layers=")
    config = layer.get_config()
    if kind in rnn.KERAS_KINDS:
        return rnn.unsupported_option(config)
    for key, why in _UNFAITHFUL.items():
        if config.get(key) not in (None, 0):
            return f"{key}={config.get(key)!r}: {why}"
    if config.get("groups", 1) != 1:
        return f"groups={config['groups']}: TFP convolutions have no grouped form"
    if str(config.get("padding", "valid")).lower() not in ("valid", "same"):
        return f"padding={config['padding']!r}: TFP convolutions support only 'valid' and 'same'"
    return None


def _is_convertible_class(layer):
    if _wrapped_rnn(layer) is not None:
        return _is_convertible_class(_wrapped_rnn(layer))
    if _wrapped_dense(layer) is not None:
        return True
    return type(layer).__name__ in _UNSUPPORTED or _kind(layer) is not None or (
        isinstance(layer, _dense_conv_bases()) and not _is_model(layer))


def _wrapped_dense(layer):
    """The Dense inside a built-in TimeDistributed wrapper, else None.

    TimeDistributed(Dense) is Dense on the last axis: the wrapper is replaced by the Bayesian
    Dense itself (same outputs; a rank > 2 input keeps one kernel draw per example in
    `tfp_bnn.predict`), which also keeps the model loadable (tf_keras's wrapper deserialiser
    does not resolve registered layer names).
    """
    if type(layer).__name__ == "TimeDistributed" and type(layer).__module__.startswith(
            ("tf_keras.", "keras.")) and _kind(layer.layer) == "Dense":
        return layer.layer
    return None


def _wrapped_rnn(layer):
    """The forward layer of a built-in Bidirectional wrapper (converted with it), else None."""
    if type(layer).__name__ == "Bidirectional" and type(layer).__module__.startswith(
            ("tf_keras.", "keras.")):
        return layer.forward_layer
    return None


def _dense_conv_bases():
    bases = [tf_keras.layers.Dense, tf_keras.layers.Conv1D, tf_keras.layers.Conv2D,
             tf_keras.layers.Conv3D]
    k3 = keras3()
    if k3 is not None:
        bases += [k3.layers.Dense, k3.layers.Conv1D, k3.layers.Conv2D, k3.layers.Conv3D]
        bases += [getattr(k3.layers, kind) for kind in rnn.KERAS_KINDS]
    bases += [getattr(tf_keras.layers, kind) for kind in rnn.KERAS_KINDS]
    return tuple(bases)


def _is_model(obj):
    return is_tf_keras_model(obj) or is_keras3_model(obj)


def _is_sequential(model):
    k3 = keras3()
    return isinstance(model, tf_keras.Sequential) or (k3 is not None and
                                                       isinstance(model, k3.Sequential))


def _all_layers(model):
    """Layers in graph order, nested models expanded (the models themselves excluded)."""
    out = []
    for layer in model.layers:
        if _is_model(layer):
            out.extend(_all_layers(layer))
        elif type(layer).__name__ != "InputLayer":
            out.append(layer)
    return out


# ---------------------------------------------------------------------------------------------
# Keras 3 -> tf_keras configs
# ---------------------------------------------------------------------------------------------
_BASE_KWARGS = {"name", "trainable", "dtype", "dynamic", "autocast", "input_dim", "input_shape",
                "batch_input_shape", "batch_size", "activity_regularizer"}


_TF_KERAS_MODULES = {"keras.initializers": tf_keras.initializers,
                     "keras.regularizers": tf_keras.regularizers,
                     "keras.constraints": tf_keras.constraints}


def _to_tf_keras_config(obj):
    """Rewrite a Keras 3 serialised object into the form tf_keras deserialises."""
    if isinstance(obj, dict):
        if "class_name" in obj and "config" in obj and ("module" in obj or "registered_name" in obj):
            if obj["class_name"] in ("DTypePolicy", "FloatDTypePolicy"):
                return obj["config"]["name"]
            config = _to_tf_keras_config(obj["config"])
            target = _TF_KERAS_MODULES.get(obj.get("module"))
            cls = getattr(target, obj["class_name"], None) if target is not None else None
            if cls is not None and isinstance(config, dict):
                accepted = _accepted_kwargs(cls, base=False)
                for key in [k for k in config if k not in accepted]:
                    if config.pop(key) is not None:
                        raise ValueError(f"Keras 3 {obj['class_name']} has {key}=... which "
                                         f"tf_keras {obj['class_name']} does not support.")
            return {"class_name": obj["class_name"], "config": config}
        return {k: _to_tf_keras_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_tf_keras_config(v) for v in obj]
    return obj


def _accepted_kwargs(cls, base=True):
    names = set()
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__:
            params = inspect.signature(klass.__dict__["__init__"]).parameters
            names |= {p for p in params if p not in ("self", "args", "kwargs")}
    return names | _BASE_KWARGS if base else names


def _copy_layer(layer):
    """A fresh tf_keras layer with ``layer``'s config (weights are copied after it is built)."""
    if isinstance(layer, tf_keras.layers.Layer):
        return type(layer).from_config(layer.get_config())
    name = type(layer).__name__
    module = type(layer).__module__
    cls = getattr(tf_keras.layers, name, None)
    if cls is None or not module.startswith("keras."):
        raise ValueError(
            f"Cannot rebuild Keras 3 layer {layer.name!r} ({type(layer).__module__}.{name}) as a "
            "tf_keras layer: only built-in Keras layers are translated. Build the model with "
            "tf_keras, or replace the layer.")
    config = _to_tf_keras_config(layer.get_config())
    accepted = _accepted_kwargs(cls)
    for key in list(config):
        if key not in accepted:
            value = config.pop(key)
            if value not in (None, False, 0, {}, [], "") and key not in ("build_config",):
                raise ValueError(
                    f"Keras 3 layer {layer.name!r} ({name}) has {key}={value!r}, which tf_keras "
                    f"{name} does not support.")
    if config.get("activation") is not None:
        config["activation"] = tf_keras.activations.serialize(
            tf_keras.activations.get(config["activation"]))
    return cls.from_config(config)


# ---------------------------------------------------------------------------------------------
# Graph replay
# ---------------------------------------------------------------------------------------------
class _Rebuilder:
    def __init__(self, estimator, prior, posterior, kl_weight, select):
        self.estimator = estimator
        self.prior = prior
        self.posterior = posterior
        self.kl_weight = kl_weight
        self.select = select  # source layer -> bool
        self.new_layers = {}  # id(source layer) -> new layer
        self.pairs = []  # (source layer, new layer) for weight copying
        self.converted = []

    def layer_for(self, layer):
        key = id(layer)
        if key in self.new_layers:
            return self.new_layers[key]
        if _is_model(layer):
            new = self.rebuild(layer, top=False)
        elif _is_convertible_class(layer) and self.select(layer):
            inner, dense = _wrapped_rnn(layer), _wrapped_dense(layer)
            reason = _why_not(inner or dense or layer, self.estimator)
            if reason is not None:
                raise ValueError(
                    f"Cannot convert layer {layer.name!r} ({type(layer).__name__}): {reason}. "
                    "Leave it deterministic by excluding it with layers=.")
            if inner is not None:
                new = self._bidirectional(layer)
            else:
                new = self._bayesian(dense or layer, name=layer.name)
            self.converted.append(new)
        else:
            new = _copy_layer(layer)
        self.new_layers[key] = new
        self.pairs.append((layer, new))
        return new

    def _bayesian(self, layer, name=None):
        config = _to_tf_keras_config(layer.get_config())
        kind = _kind(layer)
        cls = ESTIMATORS[self.estimator][kind]
        common = dict(
            name=name or config["name"], trainable=config.get("trainable", True),
            # The variable dtype: float64 stays float64. Under a mixed policy ("mixed_float16",
            # "mixed_bfloat16") the Bayesian layer runs in plain float32, like the float32
            # output layer Keras recommends: softplus(rho), the weight draw and the KL, whose
            # log(sigma_prior / sigma) terms and sums over every weight lose too much in
            # 16 bits (sigma < 6e-8 is 0 in float16). Keras casts its inputs up and the next
            # layer's inputs back down; the other layers keep the mixed policy.
            dtype=str(layer.dtype),
            activation=tf_keras.activations.serialize(
                tf_keras.activations.get(config.get("activation"))),
            use_bias=config.get("use_bias", True),
            kernel_initializer=config.get("kernel_initializer", "glorot_uniform"),
            bias_initializer=config.get("bias_initializer", "zeros"),
            activity_regularizer=tf_keras.regularizers.get(config.get("activity_regularizer")),
            prior=self.prior, posterior=self.posterior, kl_weight=self.kl_weight)
        if kind in rnn.KERAS_KINDS:
            return cls(**rnn.keras_options(kind, config), **common)
        if kind == "Dense":
            return cls(units=config["units"], **common)
        return cls(filters=config["filters"], kernel_size=config["kernel_size"],
                   strides=config.get("strides", 1), padding=config.get("padding", "valid"),
                   data_format=config.get("data_format") or "channels_last",
                   dilation_rate=config.get("dilation_rate", 1), **common)

    def _bidirectional(self, layer):
        """Bidirectional(Bayesian RNN) with both directions converted (weights copied later)."""
        fwd, bwd = self._bayesian(layer.forward_layer), self._bayesian(layer.backward_layer)
        for new, prefix in ((fwd, "forward_"), (bwd, "backward_")):
            if new.name.startswith(prefix):  # the wrapper prefixes the names again
                new._name = new.name[len(prefix):]
        return tf_keras.layers.Bidirectional(
            fwd, merge_mode=layer.get_config().get("merge_mode", "concat"), backward_layer=bwd,
            name=layer.name, trainable=layer.trainable)

    def rebuild(self, model, top):
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError(
                f"model {model.name!r} has no defined inputs: build it first (give the first "
                "layer an input shape, use keras.Input, or call model.build(input_shape)).")
        memo = {}
        new_inputs = []
        for t in inputs:
            layer = t._keras_history[0]
            new = tf_keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype, name=layer.name)
            memo[id(t)] = new
            new_inputs.append(new)
        new_outputs = [self._replay(t, memo) for t in model.outputs]
        cls = BayesianModel if top else tf_keras.Model
        return cls(inputs=new_inputs if len(new_inputs) > 1 else new_inputs[0],
                   outputs=new_outputs if len(new_outputs) > 1 else new_outputs[0],
                   name=model.name)

    def _replay(self, tensor, memo):
        if id(tensor) in memo:
            return memo[id(tensor)]
        layer, node_index, _ = tensor._keras_history
        if not isinstance(layer, (tf_keras.layers.Layer,) + _keras3_layer_class()):
            raise ValueError(
                f"The model calls {type(layer).__name__} {getattr(layer, 'name', layer)!r}, a "
                "Keras 3 operation that is not a layer; use the equivalent layer (e.g. "
                "layers.Add instead of x + y) so it can be rebuilt in tf_keras.")
        node = layer._inbound_nodes[node_index]
        if hasattr(node, "arguments"):  # Keras 3
            args, kwargs = node.arguments.args, node.arguments.kwargs
            # Keras 3 records the mask as an explicit argument: None, or computed by an op
            # rather than a layer (Masking -> LSTM). tf_keras propagates masks by itself through
            # the rebuilt layers, and a layer that replaces a wrapper (TimeDistributed(Dense) ->
            # DenseFlipout) takes no mask argument at all.
            kwargs = {k: v for k, v in kwargs.items() if not (k == "mask" and (
                v is None or hasattr(v, "_keras_history") and not isinstance(
                    v._keras_history[0], _keras3_layer_class())))}
        else:
            args, kwargs = node.call_args, node.call_kwargs
        symbolic = lambda x: hasattr(x, "_keras_history")  # noqa: E731
        new_args = tf.nest.map_structure(
            lambda x: self._replay(x, memo) if symbolic(x) else x, args)
        new_kwargs = tf.nest.map_structure(
            lambda x: self._replay(x, memo) if symbolic(x) else x, kwargs)
        new_layer = self.layer_for(layer)
        out = new_layer(*new_args, **new_kwargs)
        src_flat = tf.nest.flatten(node.outputs)
        for src, new in zip(src_flat, tf.nest.flatten(out)):
            memo[id(src)] = new
        return memo[id(tensor)]


def _keras3_layer_class():
    k3 = keras3()
    return (k3.layers.Layer,) if k3 is not None else ()


def _copy_weights(pairs, posterior):
    for src, new in pairs:
        if _is_model(src):
            continue
        if isinstance(getattr(new, "forward_layer", None), bl.BayesianLayer):  # Bidirectional
            for s, n in ((src.forward_layer, new.forward_layer),
                         (src.backward_layer, new.backward_layer)):
                _init_posterior(s, n, [np.asarray(w) for w in s.get_weights()], posterior)
            continue
        src_w = [np.asarray(w) for w in src.get_weights()]
        if isinstance(new, bl.BayesianLayer):
            _init_posterior(src, new, src_w, posterior)
            continue
        new_w = new.get_weights()
        if [w.shape for w in src_w] != [w.shape for w in new_w]:
            raise ValueError(
                f"Weights of layer {src.name!r} ({type(src).__name__}) do not match its tf_keras "
                f"rebuild: {[w.shape for w in src_w]} vs {[w.shape for w in new_w]}.")
        new.set_weights(src_w)


def _init_posterior(src, new, src_w, posterior):
    if not posterior.from_weights:
        return
    if isinstance(new, rnn.BayesianRNN):
        return rnn.init_from_weights(new, src_w, posterior)
    kernel = src_w[0]
    dist = new.kernel_posterior.distribution
    dist.loc.assign(kernel)
    new_rho = posteriors_lib.inverse_softplus(posterior.scale_for(kernel))
    dist.scale.pretransformed_input.assign(new_rho.astype(kernel.dtype))
    if new.use_bias and len(src_w) > 1:
        bias_dist = new.bias_posterior.distribution
        bias_dist.loc.assign(src_w[1])
        if posterior.bayesian_bias:
            bias_dist.scale.pretransformed_input.assign(
                posteriors_lib.inverse_softplus(posterior.scale_for(src_w[1])).astype(kernel.dtype))


def _selector(model, layers, estimator):
    """Turn ``layers=`` into a predicate over source layers, validating names."""
    every = _all_layers(model)
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
             kl_weight=None, layers=None):
    """Return a NEW tf_keras model with Bayesian versions of the model's Dense/Conv/RNN layers.

        loss = NLL_mean + kl_weight * sum_layers KL(q || p),   kl_weight = 1/N by default
             = -ELBO / N

    Args:
        model: a tf_keras or Keras 3 model, Sequential or Functional, with defined inputs.
        estimator: "flipout", "reparameterization" or "local_reparameterization" (Dense only).
        prior: a prior name (see `tfp_bnn.priors.PRIORS`), dict, or `tfp_bnn.priors` instance.
        posterior: `tfp_bnn.posteriors.MeanField(...)`, its config dict, or None for defaults.
        num_train_examples: N, the training-set size (the KL weight defaults to 1/N), or the
            training `tf.data.Dataset`, whose examples are counted (`tfp_bnn.elbo.num_examples`).
        kl_weight: explicit KL weight (overrides 1/N). One of the two is required.
        layers: which layers to convert: None (every Dense/Conv/RNN), "last", a list of layer names,
            or a predicate ``callable(layer) -> bool`` over the source model's layers.

    Returns:
        A `tfp_bnn.BayesianModel` (a tf_keras Functional model) that logs `nll` and `kl`.

    References:
        Blundell et al. 2015 (Bayes by Backprop); Wen et al. 2018 (Flipout).
    """
    if not _is_model(model):
        raise ValueError("model must be a tf_keras or Keras 3 Model. "
                         f"Received: model={model!r} (type {type(model).__name__})")
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator: estimator={estimator!r}. "
                         f"Valid: {sorted(ESTIMATORS)}")
    prior = priors_lib.get(prior)
    posterior = posteriors_lib.get(posterior)
    weight = kl_weight_from(num_train_examples, kl_weight)
    select = _selector(model, layers, estimator)

    if not any(_is_convertible_class(l) for l in _all_layers(model)):
        raise ValueError(f"model {model.name!r} has no Dense, Conv or RNN (LSTM/GRU/SimpleRNN) layer to make Bayesian.")

    rebuilder = _Rebuilder(estimator, prior, posterior, weight, select)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20000))
    try:
        new_model = rebuilder.rebuild(model, top=True)
    finally:
        sys.setrecursionlimit(old_limit)
    _copy_weights(rebuilder.pairs, posterior)
    if not rebuilder.converted:
        warnings.warn(f"bayesify: layers={layers!r} matched no Dense/Conv/RNN layer; the returned "
                      "model is a deterministic copy.", UserWarning, stacklevel=2)
    return new_model
