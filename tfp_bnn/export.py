"""SavedModel export for TensorFlow Serving, with Monte Carlo sampling inside the signature.

    <export_dir>/<version>/saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests

Signatures (inputs named after the model's inputs, batch dimension None, float32):

* ``serving_default``: S = ``num_samples`` posterior draws in one graph; classifiers
  ("multiclass", and "binary" with one logit) return ``mean_logits``, ``variance`` (of the
  logits), ``probabilities`` ([B, C]; [B, 2] for binary: p(y=0), p(y=1)),
  ``predictive_entropy``, ``mutual_information``; regression models ``mean``, ``variance``
  (total), ``epistemic_variance``, ``aleatoric_variance``.
* ``predict_with_samples``: the same plus a scalar int32 input ``num_samples``.
* ``deterministic``: one pass with the posterior means (``logits`` and ``probabilities``, or
  ``mean`` [and ``aleatoric_variance``]).

A `tfp_bnn.calibrate` result serves calibrated ``probabilities`` (or variances) in the two
sampling signatures; a `tfp_bnn.conformal` result adds ``prediction_set`` (bool [B, C]) or
``interval_lower`` / ``interval_upper`` ([B, D]) at the level alpha it was fitted with, and a
fourth signature ``predict_with_alpha`` (a scalar float64 input ``alpha`` in (0, 1); an alpha
too small for the calibration set gives every class, or infinite intervals). The fitted values
are graph constants, also readable as JSON: ``tf.saved_model.load(path).post_hoc.numpy()``.
The ``deterministic`` signature stays the uncalibrated posterior-mean pass.

The outputs are `tfp_bnn.predict.summarize` of the samples (its plain-mean fast path), so the
served numbers are predict's. The model's task (`tfp_bnn.tasks`) is saved with the export: a
string variable ``task`` (``tf.saved_model.load(path).task.numpy()``; also a variable named
``task`` in the graph that TF Serving's loader restores).

``noise="shared"`` (opt-in) exports sampling signatures that draw one weight perturbation per
request and decorrelate the S copies by Flipout sign flips (`tfp_bnn.matmuls.shared_matmul`,
`tfp_bnn.stacking.shared_stages`): S x fewer random numbers in the convolutions and
weight-space matmuls, at the price of pseudo-independent copies (their effective sample size is
measured in BENCHMARKS.md); the default draws S independent weight sets. The mode is saved as
the string variable ``noise``.

The graph is traced from the posterior means and variances with core TF ops only, so it loads
in a process that never imports TensorFlow Probability or tfp_bnn, through
``tf.saved_model.load`` or TF Serving's C++ loader (a v1 Session on the signature's tensors).
The MC body (`tfp_bnn.sampling.sample_outputs`) is traced once and shared by the two sampling
signatures; its random ops are seeded per process (`sampling.FRESH`), so server replicas never
replay one stream even when a global seed was set at export.

Size: only the variables the graphs read are saved, not the Keras objects: posterior means,
sigma^2 (computed once at export; it replaces the softplus parameter rho, so no softplus runs per
request), deterministic biases and the other layers' weights; no priors or KL weights. The
variables are thus about 2x those of the deterministic model, which for this comparison is the
source Keras model with the posterior means as weights saved by ``tf.saved_model.save``. For a
small model the graph dominates: the Iris 4-64-64-3 MLP exports to about 2x that model in all
(``tests/test_export.py`` asserts <= 2.2x on a smaller one).

Example:
    >>> tf_keras.utils.set_random_seed(0)
    >>> model = tf_keras.Sequential([tf_keras.Input((4,), name="features"),
    ...                              tf_keras.layers.Dense(3)])
    >>> bnn = tfp_bnn.bayesify(model, num_train_examples=100)
    >>> path = tfp_bnn.export_savedmodel(bnn, "savedmodels/iris_bnn", num_samples=10)
    >>> path
    'savedmodels/iris_bnn/1'
    >>> tf.saved_model.load(path).task.numpy()
    b'multiclass'

References:
    TF Serving SavedModel warmup: https://www.tensorflow.org/tfx/serving/saved_model_warmup
"""
import json
import os
import re
import warnings

import numpy as np

from tfp_bnn import methods, options, results, sampling, tasks
from tfp_bnn import predict as predict_lib
from tfp_bnn._keras import tf

__all__ = ["export_savedmodel", "SIGNATURES", "WARMUP_FILE", "next_version", "output_names",
           "served_summary"]

SIGNATURES = ("serving_default", "predict_with_samples", "deterministic")
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CLASSIFICATION_OUTPUTS = tasks.output_names("multiclass")
REGRESSION_OUTPUTS = tasks.output_names("regression")


def output_names(task):
    """The ``serving_default`` output names of a model of ``task`` (`tfp_bnn.tasks`)."""
    return tasks.output_names(task)


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


def served_summary(samples, task, post=None, alpha=None, probabilities=False):
    """The ``serving_default`` outputs of ``[S, B, ...]`` samples: `predict.summarize`'s fast path
    (plain means), under the served names; with ``post`` (a `tfp_bnn.methods.PostHoc`), its
    summary at ``alpha`` (None: its own), its randomised scores drawn fresh per process.
    ``probabilities``: as for `predict.summarize`."""
    if post is None:
        summary = predict_lib.summarize(samples, task, exact=False, probabilities=probabilities)
        served = tasks.get(task).served
    else:
        summary = post.summary(
            samples, lambda s, exact: predict_lib.summarize(s, task, exact, probabilities),
            False, alpha, sampling.FRESH)
        served = post.served
    return {name: summary[key] for name, key in served.items()}


def _variance_snapshot(model):
    """{layer: (kernel sigma^2, bias sigma^2 or None)} as new variables, for every Bayesian layer.

    The served graph reads sigma^2 directly: no softplus per request. The variables replace the
    softplus parameters rho in the export, so the size stays that of means + variances.
    """
    from tfp_bnn.layers import bayesian_layers

    snapshot = {}
    for layer in bayesian_layers(model):
        kernel, bias = layer.posterior_variances()
        snapshot[layer] = tuple(
            None if v is None else tf.Variable(v, trainable=False,
                                               name=f"{layer.name}_{part}_posterior_variance")
            for part, v in (("kernel", kernel), ("bias", bias)))
    return snapshot


def _build_module(model, num_samples, task, stochastic, post=None, noise=options.Noise.EXACT):
    """A tf.Module holding exactly the variables the signature functions read, and the task."""
    specs = _input_specs(model)
    probabilities = tasks.outputs_probabilities(model)
    strategy = tasks.get(task, probabilities)
    variances = _variance_snapshot(model)
    s_spec = tf.TensorSpec([], tf.int32, name="num_samples")
    # A conformal model's level is an input of the MC body; the fixed-level signatures pass
    # the fitted one.
    leveled = post is not None and post.alpha is not None
    a_spec = [tf.TensorSpec([], tf.float64, name="alpha")] if leveled else []
    fixed = [tf.constant(post.alpha, tf.float64)] if leveled else []

    # One traced MC body that every sampling signature calls: the graph holds it once.
    @tf.function(input_signature=specs + [s_spec] + a_spec)
    def mc(*args):
        inputs, s, alpha = (args[:len(specs)], args[len(specs)],
                            args[len(specs) + 1] if leveled else None)
        if not stochastic:
            s = tf.constant(1, tf.int32)  # equal samples: one pass, variance exactly 0
        samples = _first(sampling.sample_outputs(model, _as_model_inputs(model, inputs), s,
                                                 seed=sampling.FRESH, variances=variances,
                                                 noise=noise))
        summary = served_summary(samples, task, post, alpha, probabilities)
        return {k: tf.identity(v, name=k) for k, v in summary.items()}

    @tf.function(input_signature=specs)
    def serve(*args):
        return mc(*args, tf.constant(num_samples, tf.int32), *fixed)

    @tf.function(input_signature=specs + [s_spec])
    def serve_with_samples(*args):
        *inputs, s = args
        check = tf.debugging.assert_greater_equal(s, 1, message="num_samples must be >= 1")
        with tf.control_dependencies([check]):
            s = tf.identity(s)
        return mc(*inputs, s, *fixed)

    @tf.function(input_signature=specs + a_spec)
    def serve_with_alpha(*args):
        *inputs, alpha = args
        checks = [tf.debugging.assert_greater(alpha, tf.constant(0.0, tf.float64),
                                              message="alpha must be in (0, 1)"),
                  tf.debugging.assert_less(alpha, tf.constant(1.0, tf.float64),
                                           message="alpha must be in (0, 1)")]
        with tf.control_dependencies(checks):
            alpha = tf.identity(alpha)
        return mc(*inputs, tf.constant(num_samples, tf.int32), alpha)

    @tf.function(input_signature=specs)
    def deterministic(*args):
        out = _first(sampling.mean_outputs(model, _as_model_inputs(model, args)))
        return strategy.deterministic(out)

    signatures = {
        "serving_default": serve.get_concrete_function(),
        "predict_with_samples": serve_with_samples.get_concrete_function(),
        "deterministic": deterministic.get_concrete_function(),
    }
    if leveled:
        signatures["predict_with_alpha"] = serve_with_alpha.get_concrete_function()
    # Track only what the graphs read (posterior means, sigma^2, other layers' weights): not rho,
    # priors or KL weights. The functions themselves are not attributes of the module, so each
    # is saved once, as its signature.
    module = tf.Module()
    seen = {}
    for fn in signatures.values():
        for v in fn.variables:
            seen.setdefault(id(v), v)
    module.served_variables = list(seen.values())
    # A client reads what the outputs mean without tfp_bnn: loaded.task.numpy() == b"binary".
    module.task = tf.Variable(tasks.Task(task).value, trainable=False, name="task")
    module.noise = tf.Variable(noise.value, trainable=False, name="noise")
    if post is not None:
        # The fitted calibration / conformal values, for a client without tfp_bnn.
        module.post_hoc = tf.Variable(json.dumps(post.get_config()), trainable=False,
                                      name="post_hoc")
    return module, signatures, specs


def _warmup_records(specs, path, with_alpha=False):
    """TF Serving warmup: PredictionLog records of small requests to every signature."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Batches 1, 8 and 64 reach the sampling regimes of small and large batches.
    requests = [("serving_default", 1), ("serving_default", 8), ("serving_default", 64),
                ("predict_with_samples", 1), ("deterministic", 1)]
    if with_alpha:
        requests.append(("predict_with_alpha", 1))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, batch in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(signature_name=signature))
            for spec in specs:
                shape = [batch] + [d if d is not None else 1 for d in spec.shape[1:]]
                # One float_val that the parser broadcasts to the shape (TensorProto's rule):
                # 18 bytes, where 64 rows of zeros as raw bytes took 16 KiB of the export.
                request.inputs[spec.name].CopyFrom(
                    tf.make_tensor_proto(0.0, dtype=tf.float32, shape=shape))
            if signature == "predict_with_samples":
                request.inputs["num_samples"].CopyFrom(tf.make_tensor_proto(np.int32(10)))
            if signature == "predict_with_alpha":
                request.inputs["alpha"].CopyFrom(tf.make_tensor_proto(np.float64(0.1)))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def export_savedmodel(model, export_dir, num_samples=10, version=None, overwrite=False,
                      task=None, noise="exact"):
    """Export ``model`` as a TF Serving SavedModel whose signature runs S MC samples in-graph.

    Args:
        model: a tf_keras model (a `bayesify` result, or anything `tfp_bnn.predict` accepts:
            a `DeepEnsemble` after fit, a `laplace` result, a `SWAG` callback after fit, a
            `distill` result, a `calibrate` or `conformal` result).
        export_dir: the model's base path (TF Serving's ``model_base_path``).
        num_samples: S for ``serving_default`` (>= 1).
        version: integer version sub-folder; None takes the next free integer.
        overwrite: replace an existing version (otherwise an existing one is an error).
        task: None (the model's own task, `tfp_bnn.tasks.resolve`) or "multiclass", "binary",
            "regression", "gaussian"; it picks the outputs and is saved with the export.
        noise: "exact" (default: S independent posterior draws per request) or "shared"
            (opt-in: one weight perturbation per request, decorrelated per copy by Flipout
            sign flips; fewer random numbers, pseudo-independent copies: see
            `tfp_bnn.matmuls.shared_matmul` and BENCHMARKS.md for the effective sample size
            of its variance). Saved with the export as the string variable ``noise``.

    Returns:
        The path of the written version folder, as a string.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
    noise = options.choice("noise", noise, options.Noise)
    post = methods.post_hoc(model)
    model = methods.predictive_model(model, "model")
    task = tasks.resolve(model, task) if post is None else predict_lib._post_hoc_task(post, task)
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
    stochastic = predict_lib.is_stochastic(model)
    if not stochastic:
        warnings.warn(f"model {model.name!r} has no stochastic layer: the exported variance is 0.",
                      UserWarning, stacklevel=2)

    # Checked (free, writable) before the graphs are built; written beside the target as
    # `.<version>.tmp-*` (TF Serving ignores non-numeric folders) and swapped in when complete,
    # readable by a server running as another user (0755 / 0644). SIGTERM or Ctrl-C removes the
    # staging folder; one left by a killed process goes at the next export of that version.
    stage = results.Staging(target, overwrite, owned=None, argument="export_dir", manifest=False)
    module, signatures, specs = _build_module(model, int(num_samples), task, stochastic, post,
                                              noise)
    with stage:
        tf.saved_model.save(module, stage.path, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        _warmup_records(specs, os.path.join(stage.path, WARMUP_FILE),
                        with_alpha="predict_with_alpha" in signatures)
        stage.commit()
    return target
