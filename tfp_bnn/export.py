"""SavedModel export for TensorFlow Serving, with Monte Carlo sampling inside the signature.

    <export_dir>/<version>/saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests

Signatures (inputs named after the model's inputs, batch dimension None, float32):

* ``serving_default``: S = ``num_samples`` posterior draws in one graph; classifiers return
  ``mean_logits``, ``variance``, ``probabilities``, ``predictive_entropy``,
  ``mutual_information``; regression models ``mean``, ``variance``, ``epistemic_variance``,
  ``aleatoric_variance``.
* ``predict_with_samples``: the same plus a scalar int32 input ``num_samples``.
* ``deterministic``: one pass with the posterior means.

The graph is traced from the posterior variables (loc and softplus scale) with core TF ops
only, so it loads in a process that never imports TensorFlow Probability or tfp_bnn, through
``tf.saved_model.load`` or TF Serving's C++ loader (a v1 Session on the signature's tensors).
Only the model's variables are saved, not the Keras objects.

Example:
    >>> path = tfp_bnn.export_savedmodel(bnn, "savedmodels/iris_bnn", num_samples=10)
    >>> path
    'savedmodels/iris_bnn/1'

References:
    TF Serving SavedModel warmup: https://www.tensorflow.org/tfx/serving/saved_model_warmup
"""
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

from tfp_bnn import predict as predict_lib
from tfp_bnn import sampling
from tfp_bnn._keras import tf, tf_keras

__all__ = ["export_savedmodel", "SIGNATURES", "WARMUP_FILE", "next_version", "output_names"]

SIGNATURES = ("serving_default", "predict_with_samples", "deterministic")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CLASSIFICATION_OUTPUTS = ("mean_logits", "variance", "probabilities", "predictive_entropy",
                          "mutual_information")
REGRESSION_OUTPUTS = ("mean", "variance", "epistemic_variance", "aleatoric_variance")


def output_names(kind):
    return CLASSIFICATION_OUTPUTS if kind == "classification" else REGRESSION_OUTPUTS


def next_version(export_dir):
    """The next free integer version under ``export_dir`` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if n.isdigit()]
    return max(versions, default=0) + 1


def _input_specs(model):
    specs = []
    for i, t in enumerate(model.inputs):
        name = re.sub(r"[^A-Za-z0-9_]", "_", t._keras_history[0].name) or f"input_{i}"
        specs.append(tf.TensorSpec([None] + list(t.shape[1:]), tf.float32, name=name))
    return specs


def _as_model_inputs(model, args):
    cast = [tf.cast(a, t.dtype) for a, t in zip(args, model.inputs)]
    return cast if len(cast) > 1 else cast[0]


def _first(outputs):
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _build_module(model, num_samples, kind):
    """A tf.Module tracking only the model's variables, with the three signature functions."""
    specs = _input_specs(model)
    names = output_names(kind)
    module = tf.Module()
    module.model_variables = list(model.variables)

    # One traced MC body that both sampling signatures call: the graph holds it once.
    @tf.function(input_signature=specs + [tf.TensorSpec([], tf.int32, name="num_samples")])
    def mc(*args):
        *inputs, s = args
        samples = _first(sampling.sample_outputs(model, _as_model_inputs(model, inputs), s))
        summary = predict_lib.summarize(samples, kind)
        return {k: tf.identity(summary[k], name=k) for k in names}

    @tf.function(input_signature=specs)
    def serve(*args):
        return mc(*args, tf.constant(num_samples, tf.int32))

    @tf.function(input_signature=specs + [tf.TensorSpec([], tf.int32, name="num_samples")])
    def serve_with_samples(*args):
        *inputs, s = args
        check = tf.debugging.assert_greater_equal(s, 1, message="num_samples must be >= 1")
        with tf.control_dependencies([check]):
            s = tf.identity(s)
        return mc(*inputs, s)

    @tf.function(input_signature=specs)
    def deterministic(*args):
        out = _first(sampling.mean_outputs(model, _as_model_inputs(model, args)))
        out = tf.cast(out, tf.float32)
        if kind == "classification":
            return {"logits": tf.identity(out, name="logits"),
                    "probabilities": tf.nn.softmax(out, axis=-1)}
        if kind == "gaussian":
            mean, scale = tf.split(out, 2, axis=-1)
            return {"mean": mean, "aleatoric_variance": tf.square(scale)}
        return {"mean": tf.identity(out, name="mean")}

    module.serve = serve
    module.serve_with_samples = serve_with_samples
    module.deterministic = deterministic
    signatures = {
        "serving_default": serve.get_concrete_function(),
        "predict_with_samples": serve_with_samples.get_concrete_function(),
        "deterministic": deterministic.get_concrete_function(),
    }
    return module, signatures, specs


def _warmup_records(specs, path):
    """TF Serving warmup: PredictionLog records of small requests to every signature."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, batch in (("serving_default", 1), ("serving_default", 8),
                                 ("predict_with_samples", 1), ("deterministic", 1)):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=signature))
            for spec in specs:
                shape = [batch] + [d if d is not None else 1 for d in spec.shape[1:]]
                request.inputs[spec.name].CopyFrom(
                    tf.make_tensor_proto(np.zeros(shape, np.float32)))
            if signature == "predict_with_samples":
                request.inputs["num_samples"].CopyFrom(tf.make_tensor_proto(np.int32(10)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_savedmodel(model, export_dir, num_samples=10, version=None, overwrite=False):
    """Export ``model`` as a TF Serving SavedModel whose signature runs S MC samples in-graph.

    Args:
        model: a tf_keras model (a `bayesify` result, or any model `tfp_bnn.predict` accepts).
        export_dir: the model's base path (TF Serving's ``model_base_path``).
        num_samples: S for ``serving_default`` (>= 1).
        version: integer version sub-folder; None takes the next free integer.
        overwrite: replace an existing version (otherwise an existing one is an error).

    Returns:
        The path of the written version folder, as a string.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
    if not isinstance(model, tf_keras.Model):
        raise ValueError(f"model must be a tf_keras Model. Received: model={model!r}")
    export_dir = os.fspath(export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"export_dir must be a directory; it is an existing file. "
                         f"Received: export_dir={export_dir!r}")
    if version is None:
        version = next_version(export_dir)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"version must be a non-negative integer or None. Received: version={version!r}")
    target = os.path.join(export_dir, str(int(version)))
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"Export version already exists: {target!r}. Pass overwrite=True to "
                         "replace it, or version=None for the next free version.")
    if not predict_lib.is_stochastic(model):
        warnings.warn(f"model {model.name!r} has no stochastic layer: the exported variance is 0.",
                      UserWarning, stacklevel=2)

    kind = predict_lib.output_kind(model)
    module, signatures, specs = _build_module(model, int(num_samples), kind)
    os.makedirs(export_dir, exist_ok=True)
    # Write beside the target and rename: a failed export never leaves a half-written version
    # (TF Serving ignores non-numeric folders), and an existing version is kept until the end.
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        tf.saved_model.save(module, staging, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        _warmup_records(specs, os.path.join(staging, WARMUP_FILE))
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
