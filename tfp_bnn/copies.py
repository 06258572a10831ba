"""S Monte Carlo copies of a Functional model's pass, from its first random layer on.

`tfp_bnn.sampling.sample_outputs` runs a model on S sample-major copies of its inputs
(``[S*B, ...]``). Every layer before the first stochastic one then computes S identical copies:
a Bayesian head on a deterministic trunk (``bayesify(..., layers="last")``, last-layer VI, MC
dropout before the classifier, a last-layer Laplace or SWAG) pays for S trunks. `call` walks
the model's graph as tf_keras's Functional does (nodes by depth, ``node.map_arguments``) with
each tensor held once (``[B, ...]``) or as S copies (``[S*B, ...]``):

    copied(node) = needs_copies(node.layer)  or  copied(t) for some input t of node

A copied node gets its single inputs tiled (each tensor once, its Keras mask with it); any
other node runs on B rows, once. Exact: a layer without randomness maps equal rows to equal
rows, so every output equals the tiled pass's (up to float rounding: a matmul of B rows and one
of S*B rows may sum in a different order).

It applies to graph networks (Functional, Sequential with an Input) whose tensors all have an
unknown batch dimension, and only where some layer before the randomness has work to skip;
`plan` returns None otherwise and the caller tiles the inputs, as before. The walk uses
tf_keras's Functional internals (``_nodes_by_depth``, ``_flatten_to_reference_inputs``,
``_conform_to_reference_input``), as `tfp_bnn.replay` does; tf_keras is pinned.

Example:
    >>> from tfp_bnn import copies
    >>> model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(8),
    ...                              tf_keras.layers.Dense(3)])
    >>> last = model.layers[-1]
    >>> plan = copies.plan(model, lambda layer: layer is last)
    >>> [layer.name for layer in plan.once]                      # run on B rows
    ['dense']
    >>> tile = lambda t, s: tf.tile(t, [s, 1])
    >>> plan.call(tf.ones([2, 4]), 5, tile).shape                # S*B rows from `last` on
    TensorShape([10, 3])
"""
from tfp_bnn._keras import tf, tf_keras

__all__ = ["plan", "Plan"]


class Plan:
    """Which nodes of ``model`` run once and which on S copies (`plan`)."""

    def __init__(self, model, nodes, copied):
        self.model = model
        self._nodes = nodes          # computable order (deepest first, as Functional runs them)
        self._copied = copied        # {id(node): bool}
        self.once = [n.layer for n in nodes if not copied[id(n)]]

    def call(self, inputs, num_samples, tile):
        """The model on ``inputs`` [B, ...] as S sample-major copies: outputs ``[S*B, ...]``,
        in the model's output structure. ``tile(t, S)``: ``[B, ...] -> [S*B, ...]``."""
        model = self.model
        flat = model._flatten_to_reference_inputs(inputs)
        single, tiled = {}, {}
        for ref, value in zip(model.inputs, flat):
            single[str(id(ref))] = model._conform_to_reference_input(value, ref_input=ref)

        def copies_of(t_id):
            if t_id not in tiled:
                t = single[t_id]
                out = tile(t, num_samples)
                mask = getattr(t, "_keras_mask", None)
                if mask is not None:
                    out._keras_mask = tile(mask, num_samples)
                tiled[t_id] = out
            return tiled[t_id]

        with tf.name_scope(model.name):
            for node in self._nodes:
                copied = self._copied[id(node)]
                local = {}
                for t_id in node.flat_input_ids:
                    local.setdefault(t_id, []).append(copies_of(t_id) if copied else single[t_id])
                args, kwargs = node.map_arguments(local)
                # What model(x, training=False) tells every layer it calls.
                kwargs.setdefault("training", False)
                outputs = node.layer(*args, **kwargs)
                target = tiled if copied else single
                for t_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                    target[t_id] = y
        outs = [tiled[t_id] if t_id in tiled else copies_of(t_id)
                for t_id in (str(id(x)) for x in model.outputs)]
        return tf.nest.pack_sequence_as(model._nested_outputs, outs)


def plan(model, needs_copies):
    """A `Plan` for ``model`` when some layer before its randomness can run once, else None.

    Args:
        model: a built tf_keras model.
        needs_copies: ``layer -> bool``, whether a layer's output may differ per copy (a
            stochastic layer, a nested model holding one, a layer of unknown code); a node
            called with ``training=True`` is treated as random too.
    """
    if not getattr(model, "_is_graph_network", False) or not isinstance(model, tf_keras.Model):
        return None
    order, copied = [], {}
    produced = {str(id(x)): False for x in model.inputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            for t in tf.nest.flatten(node.outputs):
                shape = getattr(t, "shape", None)
                if shape is None or shape.rank in (None, 0) or shape[0] is not None:
                    return None  # a tensor without a free batch axis: rows may not be examples
            if any(t_id not in produced for t_id in node.flat_input_ids):
                continue  # not computable: Functional skips it too
            # An explicit training=True (a hand-made MC dropout) keeps a layer random.
            c = (needs_copies(node.layer) or node.call_kwargs.get("training") is True
                 or any(produced[t] for t in node.flat_input_ids))
            copied[id(node)] = c
            order.append(node)
            for t_id in node.flat_output_ids:
                produced[t_id] = c
    if any(str(id(x)) not in produced for x in model.outputs):
        return None
    if all(copied.values()):
        return None  # the randomness starts at the inputs: nothing to save
    return Plan(model, order, copied)
