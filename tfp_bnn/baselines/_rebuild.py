"""Graph replay shared by the baselines: `bayesify`'s rebuilder with a per-layer hook.

`tfp_bnn.convert` reads a tf_keras or Keras 3 model as a graph of layer calls and replays it with
new tf_keras layers, weights copied. The baselines need the same replay with a different choice
per layer: MC dropout swaps Dropout layers and wraps Dense calls, SWAG swaps Dense layers,
the ensemble and Laplace only need a faithful tf_keras copy.
"""
import sys

from tfp_bnn import convert
from tfp_bnn._keras import tf_keras

__all__ = ["clone", "output_layers"]


class _Replayer(convert._Rebuilder):
    """`convert._Rebuilder` that converts nothing to Bayes and asks ``make`` about each layer.

    ``make(source_layer)`` returns None (copy the layer as bayesify would) or a pair
    ``(callable, weight_layer)``: the callable replaces the layer at each of its calls in the
    graph (a new layer, or a function that calls new layers) and ``weight_layer`` (or None)
    receives the source layer's weights.
    """

    def __init__(self, make=None):
        super().__init__(estimator=None, prior=None, posterior=None, kl_weight=None,
                         select=lambda layer: False)
        self.make = make

    def layer_for(self, layer):
        key = id(layer)
        if key in self.new_layers:
            return self.new_layers[key]
        made = None if (self.make is None or convert._is_model(layer)) else self.make(layer)
        if made is None:
            return super().layer_for(layer)
        new, weight_layer = made
        self.new_layers[key] = new
        if weight_layer is not None:
            self.pairs.append((layer, weight_layer))
        return new


def clone(model, make=None, name=None):
    """A new tf_keras Functional model replaying ``model`` (tf_keras or Keras 3), weights copied.

    Args:
        model: a built tf_keras or Keras 3 model with defined inputs.
        make: optional hook ``make(source_layer) -> None | (callable, weight_layer)``.
        name: name of the new model (default: the source model's).
    """
    if not convert._is_model(model):
        raise ValueError("model must be a tf_keras or Keras 3 Model. "
                         f"Received: model={model!r} (type {type(model).__name__})")
    replayer = _Replayer(make)
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 20000))
    try:
        new = replayer.rebuild(model, top=False)
    finally:
        sys.setrecursionlimit(old_limit)
    convert._copy_weights(replayer.pairs, None)
    if name is not None:
        new._name = name
    return new


def output_layers(model):
    """The layers whose outputs are ``model``'s outputs, looking through nested models."""
    found = []
    for t in model.outputs:
        layer = t._keras_history[0]
        if convert._is_model(layer):
            found.extend(output_layers(layer))
        else:
            found.append(layer)
    return found


def is_input_tensor(tensor):
    """Whether a symbolic tf_keras tensor comes straight from an Input layer."""
    history = getattr(tensor, "_keras_history", None)
    return history is not None and isinstance(history[0], tf_keras.layers.InputLayer)
