"""Last-layer Laplace approximation of a trained deterministic network.

The output Dense layer's weights ``theta = vec([W; b])`` (bias as the last row, flattened row by
row: index ``i * C + c``) get a Gaussian posterior around the trained values ``theta*``, with
the features ``phi(x)`` of the layers below held fixed (``phi~ = [phi, 1]``):

    H = sum_n (phi~_n phi~_n^T) (x) Lambda_n              (generalised Gauss-Newton)
        Lambda_n = diag(p_n) - p_n p_n^T                   classification, p_n = softmax(f_n)
        Lambda_n = p_n (1 - p_n)                           one logit, p_n = sigmoid(f_n)
        Lambda_n = I / sigma^2                             regression (Gaussian noise sigma)
    posterior:  theta ~ N(theta*, (H + delta I)^-1)

``hessian`` chooses the structure of H: ``"full"``; ``"diag"`` (its diagonal); ``"kron"`` (KFAC,
``H ~ A (x) G`` with ``A = sum_n phi~ phi~^T`` and ``G = (1/N) sum_n Lambda_n``, exact for
regression). With ``prior_precision="marglik"`` the prior precision delta maximises the
Laplace evidence

    log p(D | delta) ~= log p(D | theta*)
                        - 1/2 [delta |theta*|^2 + log det(H + delta I) - P log delta]

over a log-spaced grid refined by golden-section search (H's eigenvalues are computed once).
With ``prior_precision="val_nll"`` (laplace-torch's "gridsearch") delta is instead the point of
the log grid ``10^{-6}, 10^{-5.9}, ..., 10^6`` that minimises the NLL of held-out data
``(x_val, y_val)`` under the closed-form linearised predictive:

    classification:  -mean_i log softmax(mu_i / sqrt(1 + pi/8 var_i))[y_i]      (probit)
    regression:      mean_i sum_d -log N(y_id | mu_id, var_id + sigma^2)
    mu = phi~^T theta*,  var = diag of the linearised output variance under (H + delta I)^-1

It corrects the evidence where the network was not trained as the MAP of the prior (no weight
decay: the evidence then picks a small delta and an underconfident predictive). The validation
data must not be data the network was trained on; carve it from the training split.

Predictive: `Laplace.as_model` is a tf_keras model whose output layer draws fresh last-layer
weights per MC sample (`tfp_bnn.predict`, `export_savedmodel`); `Laplace.predict_probit` is the
probit approximation ``softmax(mu / sqrt(1 + pi/8 * var))`` of the linearised predictive.
For regression the model outputs ``[mean, sigma]`` (a Gaussian head), so predict reports the
noise as aleatoric variance.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")                        # two classes
    >>> def build_fn():
    ...     net = tf_keras.Sequential([tf_keras.Input((4,)),
    ...                                tf_keras.layers.Dense(8, activation="relu"),
    ...                                tf_keras.layers.Dense(2)])
    ...     net.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ...     return net
    >>> model = build_fn()
    >>> history = model.fit(x, y, epochs=5, verbose=0)
    >>> la = tfp_bnn.laplace(model, x, y, hessian="kron")
    >>> la.predict_probit(x[:5]).shape, bool(la.prior_precision > 0)
    ((5, 2), True)
    >>> pred = tfp_bnn.predict(la.as_model(), x[:5], num_samples=100)

References:
    MacKay, "A Practical Bayesian Framework for Backpropagation Networks", Neural Comput. 1992;
    Ritter, Botev & Barber, "A Scalable Laplace Approximation for Neural Networks", ICLR 2018;
    Daxberger et al., "Laplace Redux - Effortless Bayesian Deep Learning", NeurIPS 2021.
"""
import math

import numpy as np

from tfp_bnn import matmuls, metrics, options, replay, sampling, search, tasks
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.baselines.hessians import STRUCTURES
from tfp_bnn.options import Hessian, Likelihood, Subset, Task

__all__ = ["laplace", "Laplace", "LaplaceDense", "SUBSETS", "HESSIANS", "LIKELIHOODS"]

# The options of `laplace` (str enums of `tfp_bnn.options`), under their old names.
SUBSETS, HESSIANS, LIKELIHOODS = Subset, Hessian, Likelihood
_LOG10_GRID = np.linspace(-6.0, 6.0, 121)


@tf_keras.saving.register_keras_serializable(package="tfp_bnn")
class LaplaceDense(sampling.StochasticLayer, tf_keras.layers.Layer):
    """Linear output layer with Gaussian weights ``[W; b] = mean + square-root-covariance * z``.

    One weight draw per MC sample (per call outside `tfp_bnn.sampling.mc_sampling`); "mean"
    mode uses the MAP weights. The square root depends on ``hessian``:

        diag:  delta_W = std * Z
        kron:  delta_W = Q_A (Z * inv_sqrt) Q_G^T       (eigenvectors of A and G)
        full:  vec(delta_W) = T z,  T = L^-T, L L^T = H + delta I

    A diagonal posterior is mean-field Gaussian: it samples through `matmuls.gaussian_matmul`
    (output space when that is cheaper, as the VI Dense layers do); the others in weight space.
    With ``sigma`` set (regression) the output is ``[f, sigma]``: a Gaussian head.
    All weights are non-trainable and set by `Laplace.as_model`.
    """

    def __init__(self, units, hessian, use_bias=True, sigma=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.hessian = options.choice("hessian", hessian, Hessian).value
        self.use_bias = bool(use_bias)
        self.sigma = None if sigma is None else float(sigma)

    def build(self, input_shape):
        rows = int(input_shape[-1]) + int(self.use_bias)
        add = lambda name, shape: self.add_weight(  # noqa: E731
            name=name, shape=shape, initializer="zeros", trainable=False)
        self.mean = add("mean", (rows, self.units))
        if self.hessian == "diag":
            self.std = add("std", (rows, self.units))
        elif self.hessian == "kron":
            self.q_a = add("q_a", (rows, rows))
            self.q_g = add("q_g", (self.units, self.units))
            self.inv_sqrt = add("inv_sqrt", (rows, self.units))
        else:
            self.sqrt_cov = add("sqrt_cov", (rows * self.units, rows * self.units))
        self.built = True

    def _delta(self, z):
        """[S, rows, units] weight perturbations from standard normals of the same shape."""
        if self.hessian == "diag":
            return self.std * z
        if self.hessian == "kron":
            return tf.einsum("ij,sjc,dc->sid", self.q_a, z * self.inv_sqrt, self.q_g)
        s = tf.shape(z)[0]
        flat = tf.matmul(tf.reshape(z, [s, -1]), self.sqrt_cov, transpose_b=True)
        return tf.reshape(flat, tf.shape(z))

    def _features(self, inputs):
        phi = tf.convert_to_tensor(inputs)
        if self.use_bias:
            phi = tf.concat([phi, tf.ones_like(phi[:, :1])], axis=-1)
        return phi

    def _head(self, out):
        if self.sigma is None:
            return out
        return tf.concat([out, tf.fill(tf.shape(out), tf.cast(self.sigma, out.dtype))], -1)

    def mean_call(self, inputs, **kwargs):
        return self._head(tf.matmul(self._features(inputs), self.mean))

    def sample_call(self, inputs, ctx, **kwargs):
        phi = self._features(inputs)
        if self.hessian == "diag":
            std = self.std
            return self._head(matmuls.gaussian_matmul(
                phi, ctx, matmuls.Gaussian(tf.convert_to_tensor(self.mean),
                                            lambda: tf.convert_to_tensor(std))))
        s = tf.cast(ctx.num_samples, tf.int32)
        shape = tf.concat([[s], tf.shape(self.mean)], 0)
        weights = self.mean + self._delta(ctx.normal(shape, phi.dtype))
        rows = tf.shape(phi)[0]
        per_sample = tf.reshape(phi, [s, rows // s, -1])
        return self._head(tf.reshape(tf.einsum("sbi,sic->sbc", per_sample, weights),
                                     [rows, self.units]))

    def mc_rows_threshold(self):
        if self.hessian != "diag":
            return None
        return matmuls.output_space_threshold(*self.mean.shape)

    def compute_output_shape(self, input_shape):
        width = self.units * (2 if self.sigma is not None else 1)
        return tf.TensorShape(input_shape[:-1]).concatenate([width])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "hessian": self.hessian,
                "use_bias": self.use_bias, "sigma": self.sigma}


class Laplace:
    """A fitted last-layer Laplace approximation; built by `laplace`.

    Attributes:
        prior_precision: delta (tuned or given).
        val_nll_grid: (precisions, validation NLLs) of the "val_nll" search (only then).
        hessian: the GGN in the chosen structure: [rows, C] (diag), (A, G) (kron) or [P, P].
        likelihood, hessian_structure, sigma_noise (regression), theta_map ([rows, C]).
    """

    def __init__(self, model, features, last, phi, targets, hessian, likelihood, sigma_noise):
        self._model, self._features, self._last = model, features, last
        # One traced feature pass for predict_probit (Model.predict costs a new trace per call).
        self._feature_fn = tf.function(lambda x: features(x, training=False),
                                       reduce_retracing=True)
        self.hessian_structure, self.likelihood = hessian, likelihood
        kernel = last.kernel.numpy().astype(np.float64)
        self.use_bias = bool(last.use_bias)
        self.theta_map = (np.vstack([kernel, last.bias.numpy()[None].astype(np.float64)])
                          if self.use_bias else kernel)
        self.num_classes = kernel.shape[1]
        phi = self._augment(phi)
        f = phi @ self.theta_map
        if likelihood == Likelihood.CLASSIFICATION:
            self.sigma_noise = None
            logp = _log_softmax(_class_logits(f))
            self.log_likelihood = float(logp[np.arange(len(targets)), targets].sum())
            p = np.exp(logp)
            # One logit (binary): Lambda_n = sigmoid(f_n)(1 - sigmoid(f_n)), which is what every
            # structure's "diag(p) - p p^T" gives for the one column p(y=1).
            self._structure = STRUCTURES[hessian].classification(
                phi, p if self.num_classes > 1 else p[:, 1:])
        else:
            resid = targets - f
            self.sigma_noise = (float(np.sqrt(np.mean(resid ** 2))) if sigma_noise is None
                                else options.number("sigma_noise", sigma_noise, 0, strict=True))
            s2 = self.sigma_noise ** 2
            self.log_likelihood = float(-0.5 * np.sum(resid ** 2 / s2 + np.log(2 * np.pi * s2)))
            self._structure = STRUCTURES[hessian].regression(phi, s2, self.num_classes)
        self.hessian = self._structure.hessian

    def _augment(self, phi):
        phi = np.asarray(phi, np.float64)
        return np.hstack([phi, np.ones((len(phi), 1))]) if self.use_bias else phi

    # --- prior precision --------------------------------------------------------------------
    def log_marginal_likelihood(self, prior_precision=None):
        """Laplace evidence log p(D | delta) (up to a constant in delta; see module doc)."""
        delta = self.prior_precision if prior_precision is None else float(prior_precision)
        eigenvalues = self._structure.eigenvalues
        scatter = delta * float(np.sum(np.square(self.theta_map)))
        log_det = float(np.sum(np.log(eigenvalues + delta))) - eigenvalues.size * math.log(delta)
        return self.log_likelihood - 0.5 * (scatter + log_det)

    def validation_nll(self, x_val, y_val, prior_precision=None, batch_size=256):
        """NLL of (x_val, y_val) under the linearised predictive (probit for classification;
        Gaussian with the noise for regression) at ``prior_precision`` (default: the fitted)."""
        phi = self._phi(x_val, batch_size)
        targets = self._targets(y_val, "y_val", len(phi))
        delta = self.prior_precision if prior_precision is None else float(prior_precision)
        return self._linearised_nll(phi, targets, delta)

    def _linearised_nll(self, phi, targets, delta):
        if self.likelihood == Likelihood.REGRESSION:
            var = self._function_variance(phi, delta) + self.sigma_noise ** 2
            return metrics.gaussian_nll(phi @ self.theta_map, var, targets)
        logp = self._probit_log_probs(phi, delta)
        return float(-np.mean(logp[np.arange(len(targets)), targets]))

    def _probit_log_probs(self, phi, prior_precision=None):
        """[B, C] log softmax(mu / sqrt(1 + pi/8 var)) of the linearised outputs ([B, 2] for
        one logit: class logits [0, z])."""
        var = self._function_variance(phi, prior_precision)
        return _log_softmax(_class_logits((phi @ self.theta_map) / np.sqrt(1.0 + np.pi / 8.0 * var)))

    def _tune_val_nll(self, phi, targets):
        values = np.array([self._linearised_nll(phi, targets, 10.0 ** g) for g in _LOG10_GRID])
        self.val_nll_grid = (10.0 ** _LOG10_GRID, values)
        return float(10.0 ** _LOG10_GRID[int(np.argmin(values))])

    def _phi(self, x, batch_size=256):
        x = np.asarray(x, np.float32)
        return self._augment(np.concatenate([self._feature_fn(x[i:i + batch_size]).numpy()
                                             for i in range(0, len(x), batch_size)]))

    def _targets(self, y, name, length):
        return _targets(y, self.likelihood, max(self.num_classes, 2), name, length)

    def _tune(self):
        best, _ = search.grid_golden_max(lambda g: self.log_marginal_likelihood(10.0 ** g),
                                         _LOG10_GRID)
        return 10.0 ** best

    @property
    def posterior_precision(self):
        """H + delta I in the chosen structure (kron: the dense Kronecker product)."""
        return self._structure.precision(self.prior_precision)

    # --- predictive -------------------------------------------------------------------------
    def _function_variance(self, phi, prior_precision=None):
        """[B, C] variance of the linearised outputs f = phi~^T theta."""
        d = self.prior_precision if prior_precision is None else prior_precision
        return self._structure.function_variance(phi, d)

    def predict_probit(self, x, batch_size=256):
        """Probit approximation of the predictive: softmax(mu / sqrt(1 + pi/8 var)) [B, C]."""
        if self.likelihood != Likelihood.CLASSIFICATION:
            raise ValueError("predict_probit is for classification; this Laplace has "
                             "likelihood='regression' (use as_model() with tfp_bnn.predict).")
        return np.exp(self._probit_log_probs(self._phi(x, batch_size))).astype(np.float32)

    def as_model(self, name=None):
        """A tf_keras model drawing last-layer weights per MC sample (predict / export)."""
        model = replay.replay(self._model, name=name or f"{self._model.name}_laplace")
        last = replay.output_layers(model)[0]
        layer = LaplaceDense(self.num_classes, self.hessian_structure, use_bias=self.use_bias,
                             sigma=self.sigma_noise, name=f"{last.name}_laplace")
        outputs = layer(last.input)
        square_root = self._structure.square_root(self.prior_precision)
        layer.set_weights([w.astype(np.float32) for w in [self.theta_map] + square_root])
        return tf_keras.Model(model.inputs, outputs, name=model.name)


def _class_logits(f):
    """[N, C] class logits of the outputs: ``f`` itself, or ``[0, f]`` for one logit (binary:
    softmax([0, f]) = [1 - sigmoid(f), sigmoid(f)])."""
    return f if f.shape[1] > 1 else np.hstack([np.zeros_like(f), f])


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _output_dense(model):
    if len(model.outputs) != 1:
        raise ValueError(f"laplace needs a model with one output; model {model.name!r} has "
                         f"{len(model.outputs)}.")
    last = replay.output_layers(model)[0]
    if replay.kind(last) != "Dense":
        raise ValueError(f"laplace(subset='last_layer') needs a model whose output layer is "
                         f"Dense; model {model.name!r} ends in layer {last.name!r} "
                         f"({type(last).__name__}).")
    return last


def _targets(y, likelihood, num_classes, name, length):
    """Integer labels [N] (classification) or float targets [N, C] (regression), checked."""
    y = np.asarray(y)
    if likelihood == Likelihood.CLASSIFICATION:
        targets = (y.argmax(-1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)).astype(int)
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"{name} must hold class indices in [0, {num_classes}). Received "
                             f"labels in [{targets.min()}, {targets.max()}].")
    else:
        targets = y.reshape(len(y), -1).astype(np.float64)
    if len(targets) != length:
        x_name = "x" if name == "y" else "x_val"
        raise ValueError(f"{x_name} and {name} differ in length: {length} vs {len(targets)}.")
    return targets


def laplace(model, x, y, subset="last_layer", hessian="kron", prior_precision="marglik",
            likelihood="classification", sigma_noise=None, batch_size=256, x_val=None,
            y_val=None):
    """Fit a Laplace approximation to a trained deterministic model (see module doc).

    Args:
        model: a trained tf_keras or Keras 3 model whose output layer is a Dense layer giving
            logits (linear or softmax activation) or a regression output (linear).
        x: training inputs (numpy).
        y: integer class labels [N] (or one-hot [N, C]) / regression targets [N, C].
        subset: which weights are Bayesian; only "last_layer".
        hessian: "diag", "kron" or "full".
        prior_precision: "marglik" (maximise the evidence), "val_nll" (minimise the NLL of
            ``(x_val, y_val)`` under the probit / Gaussian linearised predictive over a log
            grid; see module doc) or a positive number.
        likelihood: "classification" (softmax) or "regression" (Gaussian).
        sigma_noise: regression noise std; None estimates it from the residuals (MLE).
        batch_size: batch size of the feature pass.
        x_val, y_val: held-out data for ``prior_precision="val_nll"`` (only then), e.g. a
            validation carve of the training split the model was *not* trained on.

    Returns:
        `Laplace`, with ``as_model()`` and ``predict_probit(x)``; after "val_nll" also
        ``val_nll_grid = (precisions, validation NLLs)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(40, 4)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int32")                        # two classes
        >>> def build_fn():
        ...     net = tf_keras.Sequential([tf_keras.Input((4,)),
        ...                                tf_keras.layers.Dense(8, activation="relu"),
        ...                                tf_keras.layers.Dense(2)])
        ...     net.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ...     return net
        >>> model = build_fn()
        >>> history = model.fit(x[:30], y[:30], epochs=5, verbose=0)
        >>> la = tfp_bnn.laplace(model, x[:30], y[:30], prior_precision="val_nll",
        ...                      x_val=x[30:], y_val=y[30:])
    """
    options.choice("subset", subset, Subset)
    hessian = options.choice("hessian", hessian, Hessian)
    likelihood = options.choice("likelihood", likelihood, Likelihood)
    if not (isinstance(prior_precision, str) and prior_precision in ("marglik", "val_nll")):
        if isinstance(prior_precision, str):
            raise ValueError("prior_precision must be 'marglik' or a positive number, or 'val_nll' "
                             "with x_val and y_val. "
                             f"Received: prior_precision={prior_precision!r}")
        prior_precision = options.number("prior_precision", prior_precision, 0, strict=True)
    if prior_precision == "val_nll":
        for name, value in (("x_val", x_val), ("y_val", y_val)):
            if value is None:
                raise ValueError(f"prior_precision='val_nll' needs validation data: pass x_val "
                                 f"and y_val. Received: {name}=None")
    elif x_val is not None or y_val is not None:
        raise ValueError("x_val and y_val are only used with prior_precision='val_nll'. "
                         f"Received: prior_precision={prior_precision!r}")
    if not replay.is_model(model):
        raise ValueError("model must be a tf_keras or Keras 3 Model. "
                         f"Received: model={model!r} (type {type(model).__name__})")
    _output_dense(model)
    copy = replay.replay(model)
    last = _output_dense(copy)
    activation = last.get_config().get("activation")
    allowed = ((("linear", "sigmoid") if last.units == 1 else ("linear", "softmax"))
               if likelihood == Likelihood.CLASSIFICATION else ("linear",))
    if activation not in allowed:
        raise ValueError(f"laplace(likelihood={likelihood.value!r}) needs the output Dense layer "
                         f"{last.name!r} to have activation in {allowed} (logits); it has "
                         f"activation={activation!r}.")
    try:
        features = tf_keras.Model(copy.inputs, last.input)
    except ValueError as e:
        raise ValueError(f"laplace cannot read the features below layer {last.name!r} (an output "
                         f"layer inside a nested model?): {e}") from None
    phi = features.predict(x, batch_size=batch_size, verbose=0)
    if phi.ndim != 2:
        raise ValueError(f"laplace needs 2-D features below the output layer {last.name!r}; "
                         f"they have shape {phi.shape}.")
    targets = _targets(y, likelihood, max(last.units, 2), "y", len(phi))
    if prior_precision == "val_nll" and len(x_val) == 0:
        raise ValueError("prior_precision='val_nll' needs at least one validation example. "
                         f"Received: x_val of length {len(x_val)}")
    result = Laplace(copy, features, last, phi, targets, hessian, likelihood, sigma_noise)
    if prior_precision == "marglik":
        result.prior_precision = result._tune()
    elif prior_precision == "val_nll":
        phi_val = result._phi(x_val, batch_size)
        result.prior_precision = result._tune_val_nll(
            phi_val, result._targets(y_val, "y_val", len(phi_val)))
    else:
        result.prior_precision = prior_precision
    return result


# With sigma the output is [f, sigma], a Gaussian head; otherwise logits (one: binary).
tasks.register_output_layer(
    LaplaceDense, lambda layer: Task.GAUSSIAN if layer.sigma is not None
    else Task.BINARY if layer.units == 1 else Task.MULTICLASS)
