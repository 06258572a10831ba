"""Load an export the way TensorFlow Serving does and answer REST-format requests.

TF Serving's C++ loader imports the MetaGraph into a Session and runs the signature's tensor
names; `load_session` does the same with ``tf.compat.v1.saved_model.loader.load``. `rest_predict`
takes the JSON body of TF Serving's REST predict API in the row format

    {"signature_name": "serving_default", "instances": [[5.1, 3.5, 1.4, 0.2], ...]}

(an instance is a list for a single-input model, or a dict of named inputs; a
``predict_with_samples`` instance may carry "num_samples") and returns ``{"predictions": ...}``:
one dict of named outputs per instance, as the server would.

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


def rest_predict(session, body):
    """Answer a TF Serving REST predict body (dict or JSON string) in the row format."""
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if not isinstance(body, dict) or "instances" not in body:
        raise ValueError('The request body must be a JSON object with "instances" '
                         f"(TF Serving row format). Received: {str(body)[:200]}")
    name = body.get("signature_name", "serving_default")
    if name not in session.signatures:
        raise ValueError(f"Unknown signature_name={name!r}. Available: {sorted(session.signatures)}")
    sig = session.signatures[name]
    batch_inputs = [k for k in sig.inputs if sig.inputs[k].tensor_shape.dim]
    scalar_inputs = [k for k in sig.inputs if not sig.inputs[k].tensor_shape.dim]
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError('"instances" must be a non-empty list.')
    columns = {k: [] for k in batch_inputs}
    scalars = {}
    for inst in instances:
        if isinstance(inst, dict):
            for k in batch_inputs:
                if k not in inst:
                    raise ValueError(f"instance misses input {k!r}; inputs: {batch_inputs}")
                columns[k].append(inst[k])
            for k in scalar_inputs:
                if k in inst:
                    scalars[k] = inst[k]
        else:
            if len(batch_inputs) != 1:
                raise ValueError(f"This signature has inputs {batch_inputs}: send each instance "
                                 "as an object keyed by input name.")
            columns[batch_inputs[0]].append(inst)
    for k in scalar_inputs:
        if k not in scalars and k not in body:
            raise ValueError(f"Signature {name!r} needs the scalar input {k!r}.")
        scalars.setdefault(k, body.get(k))
    feeds = {}
    for k, rows in columns.items():
        arr = np.asarray(rows, dtype=_dtype_of(sig.inputs[k]))
        expected = [d.size for d in sig.inputs[k].tensor_shape.dim][1:]
        if list(arr.shape[1:]) != [e if e >= 0 else a for e, a in zip(expected, arr.shape[1:])] \
                or arr.ndim != len(expected) + 1:
            raise ValueError(f"input {k!r}: each instance must have shape {expected}, "
                             f"received {list(arr.shape[1:])}.")
        feeds[k] = arr
    for k, v in scalars.items():
        feeds[k] = np.asarray(v, dtype=_dtype_of(sig.inputs[k]))
    outputs = session.run(name, feeds)
    n = len(instances)
    predictions = [{k: np.asarray(v[i]).tolist() for k, v in sorted(outputs.items())}
                   for i in range(n)]
    return {"predictions": predictions}
