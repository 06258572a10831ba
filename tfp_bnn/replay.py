"""Graph replay: rebuild a tf_keras or Keras 3 model as a new tf_keras model, layer call by call.

A built model is a graph of layer calls (Sequential, Functional, nested models). `replay` walks
it from the outputs back to the inputs and calls new tf_keras layers on new tensors in the same
pattern; a per-layer ``hook`` decides what stands in for each source layer:

    hook(layer) -> None                       copy it (`copy`: same config, weights copied)
                -> Replacement(call, ...)     replace it (a new layer) or wrap it (a callable
                                              that calls the copy and new layers around it)

`tfp_bnn.bayesify` replaces Dense/Conv/RNN layers by Bayesian ones; the baselines swap Dropout
(`mc_dropout`), Dense (`SWAG`) or nothing (`laplace`, `ensemble_model` of Keras 3 models).
The source model is never modified: new layers get copies of its weights once the new graph is
built. A layer shared by several calls is replaced once and the replacement is called at each
of them; masks propagate as Keras propagates them. Keras 3 layer configs are translated to
tf_keras (`to_tf_keras_config`, activation names through `tfp_bnn.ops.activation`); a custom
layer class is rebuilt by its builder in `tfp_bnn.registry` (Keras's application layers are
registered there; `tfp_bnn.register_layer` adds a user's). A recorded node that is not a layer
(a Keras 3 operation such as ``x + y`` or ``keras.ops.mean``) goes through `_operation_call`:
a `tfp_bnn.ops.Operation` layer running the operation's entry of `tfp_bnn.ops.TABLE`. A tf_keras
subclassed model has no graph: its ``call`` is traced on symbolic inputs (`_Replayer.graph`).

`kind` is the one classification of convertible layer kinds, by built-in class (never by a
substring of a user class's name); a new kind is one more name in `KINDS`.

Example:
    >>> from tfp_bnn import replay
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3)])
    >>> copy = replay.replay(model)                    # a faithful tf_keras copy (of Keras 3 too)
    >>> def hook(layer):                               # Dense -> a wider Dense, fresh weights
    ...     if replay.kind(layer) == "Dense":
    ...         new = tf_keras.layers.Dense(2 * layer.get_config()["units"], name=layer.name)
    ...         return replay.Replacement(new)
    >>> new_model = replay.replay(model, hook, name="swapped")
    >>> new_model.output_shape
    (None, 6)
"""
import functools
import inspect
import sys
from typing import Callable, NamedTuple, Optional

from tfp_bnn import ops, registry
from tfp_bnn._keras import is_keras3_model, is_tf_keras_model, keras3, tf, tf_keras

__all__ = ["KINDS", "RNN_KINDS", "KERNEL_KINDS", "Replacement", "replay", "copy", "kind",
           "builtin", "subclasses_a_kind", "is_model", "has_graph", "is_sequential", "all_layers",
           "output_layers", "is_input_tensor", "to_tf_keras_config", "tf_keras_config"]

RNN_KINDS = ("LSTM", "GRU", "SimpleRNN")
# The kinds TFP has no layer for (tfp_bnn.conv_kinds, tfp_bnn.attention); a Conv1D/2D/3D with
# groups > 1 is its own Bayesian kind too, told apart by its config (`tfp_bnn.convert`).
KERNEL_KINDS = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
                "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "EinsumDense",
                "MultiHeadAttention")
KINDS = ("Dense", "Conv1D", "Conv2D", "Conv3D") + RNN_KINDS + KERNEL_KINDS
# Graphs of a few thousand layers recurse deeper than Python's default limit of 1000.
_RECURSION_LIMIT = 20000


class Replacement(NamedTuple):
    """What a hook puts in place of a source layer.

    Attributes:
        call: called at each of the source layer's calls in the graph with the replayed
            arguments (a new tf_keras layer, or a function that calls new layers).
        copy_weights: called with no argument once the whole new graph is built (every new
            layer has its variables), to give the new layers the source layer's weights;
            None when the replacement keeps its own initial weights.
    """
    call: Callable
    copy_weights: Optional[Callable[[], None]] = None


# ---------------------------------------------------------------------------------------------
# What a layer is
# ---------------------------------------------------------------------------------------------
def builtin(layer, *names):
    """Whether ``layer`` is exactly one of the named built-in tf_keras / Keras 3 classes."""
    cls = type(layer)
    return cls.__name__ in names and cls.__module__.startswith(("tf_keras.", "keras."))


def kind(layer):
    """'Dense', 'Conv2D', 'LSTM', ... (`KINDS`) for exactly those built-in classes, else None."""
    return type(layer).__name__ if builtin(layer, *KINDS) else None


def subclasses_a_kind(layer):
    """Whether ``layer`` is an instance (a user subclass included) of a built-in `KINDS` class."""
    if is_model(layer):
        return False
    bases = [getattr(tf_keras.layers, k) for k in KINDS]
    k3 = keras3()
    if k3 is not None:
        bases += [getattr(k3.layers, k) for k in KINDS]
    return isinstance(layer, tuple(bases))


def is_model(obj):
    return is_tf_keras_model(obj) or is_keras3_model(obj)


def has_graph(model):
    """Whether ``model`` is a graph of layer calls (Sequential, Functional), not subclassed."""
    k3 = keras3()
    if k3 is not None and isinstance(model, k3.Model):
        return _is_keras3_graph(model)
    return getattr(model, "_is_graph_network", False) or is_sequential(model)


def is_sequential(model):
    k3 = keras3()
    return isinstance(model, tf_keras.Sequential) or (k3 is not None and
                                                       isinstance(model, k3.Sequential))


def all_layers(model):
    """Layers in graph order, nested models expanded (the models themselves excluded)."""
    out = []
    for layer in model.layers:
        if is_model(layer):
            out.extend(all_layers(layer))
        elif type(layer).__name__ != "InputLayer":
            out.append(layer)
    return out


def output_layers(model):
    """The layers whose outputs are ``model``'s outputs, looking through nested models."""
    found = []
    for t in model.outputs:
        layer = t._keras_history[0]
        if is_model(layer):
            found.extend(output_layers(layer))
        else:
            found.append(layer)
    return found


def is_input_tensor(tensor):
    """Whether a symbolic tf_keras tensor comes straight from an Input layer."""
    history = getattr(tensor, "_keras_history", None)
    return history is not None and isinstance(history[0], tf_keras.layers.InputLayer)


def _keras3_layer_class():
    k3 = keras3()
    return (k3.layers.Layer,) if k3 is not None else ()


# ---------------------------------------------------------------------------------------------
# Keras 3 -> tf_keras
# ---------------------------------------------------------------------------------------------
_BASE_KWARGS = {"name", "trainable", "dtype", "dynamic", "autocast", "input_dim", "input_shape",
                "batch_input_shape", "batch_size", "activity_regularizer"}
_TF_KERAS_MODULES = {"keras.initializers": tf_keras.initializers,
                     "keras.regularizers": tf_keras.regularizers,
                     "keras.constraints": tf_keras.constraints}


def to_tf_keras_config(obj):
    """Rewrite a Keras 3 serialised object (a layer config, nested) into what tf_keras reads."""
    if isinstance(obj, dict):
        serialised = "class_name" in obj and "config" in obj and (
            "module" in obj or "registered_name" in obj)
        if serialised:
            if obj["class_name"] in ("DTypePolicy", "FloatDTypePolicy"):
                return obj["config"]["name"]
            config = to_tf_keras_config(obj["config"])
            target = _TF_KERAS_MODULES.get(obj.get("module"))
            cls = getattr(target, obj["class_name"], None) if target is not None else None
            if cls is not None and isinstance(config, dict):
                accepted = _accepted_kwargs(cls, base=False)
                for key in [k for k in config if k not in accepted]:
                    if config.pop(key) is not None:
                        raise ValueError(f"Keras 3 {obj['class_name']} has {key}=... which "
                                         f"tf_keras {obj['class_name']} does not support.")
            return {"class_name": obj["class_name"], "config": config}
        return {k: to_tf_keras_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_tf_keras_config(v) for v in obj]
    return obj


@functools.lru_cache(maxsize=None)
def _accepted_kwargs(cls, base=True):
    # Cached per class: the signature walk ran for every initializer of every layer rebuilt.
    names = set()
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__:
            params = inspect.signature(klass.__dict__["__init__"]).parameters
            names |= {p for p in params if p not in ("self", "args", "kwargs")}
    return frozenset(names | _BASE_KWARGS if base else names)


def _new_layer(layer):
    """A fresh tf_keras layer with ``layer``'s config (no weights yet)."""
    builder = registry.builder_for(layer)
    if builder is not None:
        return builder(layer)
    if isinstance(layer, tf_keras.layers.Layer):
        return type(layer).from_config(layer.get_config())
    config = tf_keras_config(layer)
    cls = getattr(tf_keras.layers, type(layer).__name__)
    if cls is tf_keras.layers.MultiHeadAttention:
        # tf_keras's from_config wants the shapes the layer was built with (Keras 3 configs
        # have none); the replay's call builds it.
        return cls(**config)
    return cls.from_config(config)


def tf_keras_config(layer):
    """``layer``'s config as its tf_keras class reads it (a Keras 3 config translated)."""
    if isinstance(layer, tf_keras.layers.Layer):
        return layer.get_config()
    name = type(layer).__name__
    cls = getattr(tf_keras.layers, name, None)
    if cls is None or not type(layer).__module__.startswith("keras.src.layers."):
        raise ValueError(
            f"Cannot rebuild Keras 3 layer {layer.name!r} ({type(layer).__module__}.{name}) as a "
            "tf_keras layer: only built-in Keras layers and registered custom layers are "
            f"translated. Register an equivalent with tfp_bnn.register_layer({name}, "
            "lambda layer: <a tf_keras layer>), or build the model with tf_keras.")
    config = to_tf_keras_config(layer.get_config())
    accepted = _accepted_kwargs(cls)
    for key in list(config):
        if key not in accepted:
            value = config.pop(key)
            if value not in (None, False, 0, {}, [], "") and key not in ("build_config",):
                raise ValueError(
                    f"Keras 3 layer {layer.name!r} ({name}) has {key}={value!r}, which tf_keras "
                    f"{name} does not support.")
    if "activation" in config:
        config["activation"] = ops.activation(config["activation"], keras3=True)
    return config


def copy(layer):
    """`Replacement` by a fresh tf_keras layer with ``layer``'s config and, once built, weights.

    What `replay` does with a layer its hook leaves alone; a hook that wraps a layer calls this
    for the copy it wraps (``copy(layer).call`` is the new layer).
    """
    new = _new_layer(layer)

    def copy_weights():
        src_w = layer.get_weights()
        new_w = new.get_weights()
        if [w.shape for w in src_w] != [w.shape for w in new_w]:
            raise ValueError(
                f"Weights of layer {layer.name!r} ({type(layer).__name__}) do not match its "
                f"tf_keras rebuild: {[w.shape for w in src_w]} vs {[w.shape for w in new_w]}.")
        new.set_weights(src_w)

    return Replacement(new, copy_weights)


# ---------------------------------------------------------------------------------------------
# The replay
# ---------------------------------------------------------------------------------------------
def replay(model, hook=None, model_class=None, name=None):
    """A NEW tf_keras Functional model replaying ``model``'s graph, weights copied.

    Args:
        model: a built tf_keras or Keras 3 model with defined inputs (Sequential, Functional,
            nested models).
        hook: optional ``hook(source_layer) -> None | Replacement``, asked once per layer
            (never for a nested model, which is replayed as a nested tf_keras model).
        model_class: class of the returned top-level model (default ``tf_keras.Model``),
            constructed as ``model_class(inputs=..., outputs=..., name=...)``.
        name: name of the returned model (default: the source model's).

    Returns:
        The new model; the source model is unchanged.
    """
    if not is_model(model):
        raise ValueError("model must be a tf_keras or Keras 3 Model. "
                         f"Received: model={model!r} (type {type(model).__name__})")
    replayer = _Replayer(hook)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, _RECURSION_LIMIT))
    try:
        new = replayer.model(model, model_class or tf_keras.Model, name or model.name)
    finally:
        sys.setrecursionlimit(old_limit)
        replayer.untrace()
    for copy_weights in replayer.weight_copies:
        copy_weights()
    return new


class _Replayer:
    def __init__(self, hook):
        self.hook = hook
        self.calls = {}  # id(source layer) -> what is called in its place
        self.weight_copies = []
        self.traced = []  # (layer, inbound nodes, outbound nodes) before a subclassed trace

    def call_for(self, layer):
        key = id(layer)
        if key not in self.calls:
            if is_model(layer):
                self.calls[key] = self.model(layer, tf_keras.Model, layer.name)
            else:
                made = self.hook(layer) if self.hook is not None else None
                made = copy(layer) if made is None else made
                self.calls[key] = made.call
                if made.copy_weights is not None:
                    self.weight_copies.append(made.copy_weights)
        return self.calls[key]

    def model(self, model, model_class, name):
        inputs, outputs = self.graph(model)
        memo = {}
        new_inputs = []
        for t in inputs:
            new = tf_keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype,
                                 name=t._keras_history[0].name)
            memo[id(t)] = new
            new_inputs.append(new)
        new_outputs = [self.tensor(t, memo) for t in outputs]
        return model_class(inputs=new_inputs if len(new_inputs) > 1 else new_inputs[0],
                           outputs=new_outputs if len(new_outputs) > 1 else new_outputs[0],
                           name=name)

    def graph(self, model):
        """(inputs, outputs) symbolic tensors of ``model``'s graph of layer calls.

        A tf_keras subclassed model has none: its ``call`` is traced on symbolic inputs of
        the shapes it was called with, which records the calls of its attribute layers as
        graph nodes of those layers; `untrace` removes the nodes again once replayed.
        """
        if has_graph(model):
            try:
                inputs = model.inputs
            except (AttributeError, ValueError):
                inputs = None
            if inputs:
                return inputs, model.outputs
        if is_keras3_model(model):
            raise ValueError(
                f"model {model.name!r} is a subclassed Keras 3 model: its call() is Python code, "
                "not a graph of layers that tfp_bnn can rebuild. Write it as a Functional model "
                "(keras.Model(inputs, outputs)) or a Sequential, or as a tf_keras subclassed "
                "model.")
        if not is_sequential(model):
            return self.trace(model)
        raise ValueError(
            f"model {model.name!r} has no defined inputs: build it first (give the first "
            "layer an input shape, use keras.Input, or call model.build(input_shape)).")

    def trace(self, model):
        spec = model.save_spec(dynamic_batch=True)
        if spec is None:
            raise ValueError(
                f"model {model.name!r} is a subclassed tf_keras model that was never called: "
                "call it once on a batch (model(x)) so its input shapes are known.")
        args, kwargs = spec
        if kwargs or len(args) != 1:
            raise ValueError(
                f"model {model.name!r} is a subclassed tf_keras model whose call() takes "
                f"{len(args)} positional and {sorted(kwargs)} keyword tensors; only one input "
                "(a tensor or a nest of tensors) is traced. Write it as a Functional model.")
        inputs = tf.nest.map_structure(
            lambda s: tf_keras.Input(batch_shape=tuple(s.shape), dtype=s.dtype), args[0])
        for layer in model._flatten_layers(include_self=False):
            self.traced.append((layer, len(layer._inbound_nodes), len(layer._outbound_nodes)))
        try:
            outputs = model.call(inputs)
        except Exception as err:
            raise ValueError(
                f"Cannot trace the call() of subclassed tf_keras model {model.name!r} on "
                f"symbolic inputs ({err}). Write it as a Functional model "
                "(tf_keras.Model(inputs, outputs)) or a Sequential.") from err
        return tf.nest.flatten(inputs), tf.nest.flatten(outputs)

    def untrace(self):
        """Drop the nodes a subclassed trace added: the user's layers are as they were."""
        for layer, inbound, outbound in self.traced:
            del layer._inbound_nodes[inbound:]
            del layer._outbound_nodes[outbound:]
        self.traced = []

    def tensor(self, tensor, memo):
        """The new tensor standing for source ``tensor`` (replaying what produced it)."""
        if id(tensor) in memo:
            return memo[id(tensor)]
        layer, node_index, _ = tensor._keras_history
        node = layer._inbound_nodes[node_index]
        args, kwargs = _node_arguments(node)
        def replayed(x):
            return self.tensor(x, memo) if hasattr(x, "_keras_history") else x

        new_args = tf.nest.map_structure(replayed, args)
        new_kwargs = tf.nest.map_structure(replayed, kwargs)
        if isinstance(layer, (tf_keras.layers.Layer,) + _keras3_layer_class()):
            call = self.call_for(layer)
        else:
            call = _operation_call(layer, node_index)
        out = call(*new_args, **new_kwargs)
        for src, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
            memo[id(src)] = new
        return memo[id(tensor)]


def _is_keras3_graph(model):
    k3 = keras3()
    from keras.src.models.functional import Functional  # noqa: E402  (public only as Model)
    return isinstance(model, (k3.Sequential, Functional))


def _node_arguments(node):
    """(args, kwargs) a recorded call was made with (tf_keras and Keras 3 nodes)."""
    if not hasattr(node, "arguments"):  # tf_keras
        return node.call_args, node.call_kwargs
    # Keras 3 records the mask as an explicit argument: None, or computed by an op rather than
    # a layer (Masking -> LSTM). tf_keras propagates masks by itself through the new layers,
    # and a layer that replaces a wrapper (TimeDistributed(Dense) -> DenseFlipout) takes no
    # mask argument at all.
    kwargs = {k: v for k, v in node.arguments.kwargs.items() if not (k == "mask" and (
        v is None or hasattr(v, "_keras_history") and not isinstance(
            v._keras_history[0], _keras3_layer_class())))}
    return node.arguments.args, kwargs


def _operation_call(operation, node_index):
    """What stands in for a recorded Keras 3 operation that is not a layer (``x + y``, ops.*).

    The operation becomes an `tfp_bnn.ops.Operation` layer (`tfp_bnn.ops.TABLE` holds its
    TensorFlow translation); an operation not in the table is an error naming it.
    """
    key = ops.operation_key(operation)
    name = operation.name if node_index == 0 else f"{operation.name}_{node_index}"
    if key not in ops.TABLE:
        raise ValueError(
            f"The model calls the Keras 3 operation {key} (node {name!r}), which "
            "tfp_bnn.ops.TABLE does not translate to TensorFlow. Replace it by a built-in layer, "
            "or wrap it in a custom Keras 3 layer and register a tf_keras equivalent with "
            "tfp_bnn.register_layer, or build the model with tf_keras.")
    attributes = {k: v for k, v in operation.get_config().items() if k != "name"}

    def call(*args, **kwargs):
        layer, tensors = ops.Operation.of(key, args, kwargs, attributes, name)
        return layer(tensors)

    return call
