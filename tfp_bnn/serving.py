"""Load an export the way TensorFlow Serving does and answer REST-format requests.

TF Serving's C++ loader imports the MetaGraph into a Session and runs the signature's tensor
names; `load_session` does the same with ``tf.compat.v1.saved_model.loader.load``. `rest_predict`
takes the JSON body of TF Serving's REST predict API, in either format:

* row ("instances"): ``{"signature_name": "serving_default", "instances": [[5.1, 3.5, 1.4, 0.2]]}``
  gives ``{"predictions": [{"mean_logits": [...], "variance": [...], ...}, ...]}``, one dict of
  named outputs per instance. An instance is a list for a single-input model, or a dict of
  named inputs.
* columnar ("inputs"): ``{"signature_name": "predict_with_samples", "inputs": {"features":
  [[5.1, 3.5, 1.4, 0.2]], "num_samples": 100}}`` gives ``{"outputs": {"mean_logits": [[...]],
  ...}}``; ``"inputs"`` may also be the bare value of a single-input signature.

The scalar ``num_samples`` of ``predict_with_samples`` has no batch dimension, so TF Serving takes
it only in the columnar format; `rest_predict` also accepts it at the top level of a row-format
body or in every instance (all equal), as a convenience.

Nothing here needs TensorFlow Probability: this is the client/serving side.
"""
import json
import os

import numpy as np

__all__ = ["ServingSession", "load_session", "rest_predict"]


class ServingSession:
    """A v1 Session holding one SavedModel version, called by signature name."""

    def __init__(self, export_path, tags=("serve",)):
        import tensorflow as tf

        if not os.path.isfile(os.path.join(export_path, "saved_model.pb")):
            raise ValueError(f"No saved_model.pb in export_path={export_path!r}; pass a version "
                             "folder such as savedmodels/iris_bnn/1.")
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        with self._graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(self._session, list(tags), export_path)
        self.signatures = dict(meta.signature_def)

    def run(self, signature_name, feeds):
        """Run ``signature_name`` on ``{input_name: array}``; returns ``{output_name: array}``."""
        if signature_name not in self.signatures:
            raise ValueError(f"Unknown signature_name={signature_name!r}. "
                             f"Available: {sorted(self.signatures)}")
        sig = self.signatures[signature_name]
        missing = set(sig.inputs) - set(feeds)
        if missing:
            raise ValueError(f"Missing inputs {sorted(missing)} for signature {signature_name!r}")
        feed_dict = {sig.inputs[k].name: v for k, v in feeds.items() if k in sig.inputs}
        fetches = {k: v.name for k, v in sig.outputs.items()}
        return self._session.run(fetches, feed_dict=feed_dict)

    def close(self):
        self._session.close()


def load_session(export_path):
    return ServingSession(export_path)


def _dtype_of(tensor_info):
    import tensorflow as tf
    return tf.dtypes.as_dtype(tensor_info.dtype).as_numpy_dtype


def _as_array(name, value, tensor_info, batched):
    """``value`` as the dtype and shape the signature declares for input ``name``."""
    try:
        arr = np.asarray(value, dtype=_dtype_of(tensor_info))
    except (TypeError, ValueError) as e:
        raise ValueError(f"input {name!r} must be numeric with a regular shape: {e}") from None
    expected = [d.size for d in tensor_info.tensor_shape.dim]
    if not batched:
        if arr.ndim != 0:
            raise ValueError(f"input {name!r} must be a scalar, received shape {list(arr.shape)}.")
        return arr
    if arr.ndim != len(expected) or any(e >= 0 and e != a
                                        for e, a in zip(expected[1:], arr.shape[1:])):
        raise ValueError(f"input {name!r}: each instance must have shape {expected[1:]}, "
                         f"received {list(arr.shape[1:]) if arr.ndim else 'a scalar'}.")
    return arr


def _signature(session, body):
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as e:
            raise ValueError(f"The request body is not valid JSON: {e}") from None
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise ValueError('The request body must be a JSON object with exactly one of "instances" '
                         f'(row format) or "inputs" (columnar format). Received: {str(body)[:200]}')
    name = body.get("signature_name", "serving_default")
    if name not in session.signatures:
        raise ValueError(f"Unknown signature_name={name!r}. "
                         f"Available: {sorted(session.signatures)}")
    return body, name, session.signatures[name]


def rest_predict(session, body):
    """Answer a TF Serving REST predict body (dict or JSON string), row or columnar format."""
    body, name, sig = _signature(session, body)
    batch_inputs = [k for k in sig.inputs if sig.inputs[k].tensor_shape.dim]
    scalar_inputs = [k for k in sig.inputs if not sig.inputs[k].tensor_shape.dim]
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict):
            if len(sig.inputs) != 1:
                raise ValueError(f"Signature {name!r} has inputs {sorted(sig.inputs)}: send "
                                 '"inputs" as an object keyed by input name.')
            inputs = {next(iter(sig.inputs)): inputs}
        unknown, missing = set(inputs) - set(sig.inputs), set(sig.inputs) - set(inputs)
        if unknown or missing:
            raise ValueError(f"Signature {name!r} takes inputs {sorted(sig.inputs)}; "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}.")
        feeds = {k: _as_array(k, v, sig.inputs[k], k in batch_inputs) for k, v in inputs.items()}
        outputs = session.run(name, feeds)
        return {"outputs": {k: np.asarray(v).tolist() for k, v in sorted(outputs.items())}}

    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError('"instances" must be a non-empty list.')
    columns = {k: [] for k in batch_inputs}
    scalars = {k: body[k] for k in scalar_inputs if k in body}
    for inst in instances:
        if isinstance(inst, dict):
            unknown = set(inst) - set(sig.inputs)
            if unknown:
                raise ValueError(f"instance has unknown inputs {sorted(unknown)}; "
                                 f"signature {name!r} takes {sorted(sig.inputs)}.")
            for k in batch_inputs:
                if k not in inst:
                    raise ValueError(f"instance misses input {k!r}; inputs: {batch_inputs}")
                columns[k].append(inst[k])
            for k in scalar_inputs:
                if k in inst:
                    if k in scalars and scalars[k] != inst[k]:
                        raise ValueError(f"{k!r} differs between instances: it is one scalar "
                                         "per request.")
                    scalars[k] = inst[k]
        else:
            if len(batch_inputs) != 1:
                raise ValueError(f"This signature has inputs {batch_inputs}: send each instance "
                                 "as an object keyed by input name.")
            columns[batch_inputs[0]].append(inst)
    for k in scalar_inputs:
        if k not in scalars:
            raise ValueError(f"Signature {name!r} needs the scalar input {k!r}.")
    feeds = {k: _as_array(k, rows, sig.inputs[k], True) for k, rows in columns.items()}
    feeds.update({k: _as_array(k, v, sig.inputs[k], False) for k, v in scalars.items()})
    outputs = session.run(name, feeds)
    predictions = [{k: np.asarray(v[i]).tolist() for k, v in sorted(outputs.items())}
                   for i in range(len(instances))]
    return {"predictions": predictions}
