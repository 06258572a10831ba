"""Bayesian recurrent layers: LSTM, GRU and SimpleRNN with mean-field kernels (Fortunato et al.).

The input kernel W [F, k*U], the recurrent kernel R [U, k*U] (k = 4 LSTM, 3 GRU, 1 SimpleRNN)
and optionally the bias get mean-field Normal posteriors. One weight sample is drawn per forward
call, i.e. per sequence, and reused at every time step:

    W ~ q(W), R ~ q(R)                                 (once per call)
    z_t = x_t W + h_{t-1} R + b;  (h_t, c_t) = gates(z_t, c_{t-1})   as Keras LSTM/GRU/SimpleRNN
    add_loss(kl_weight * KL(q || prior))               (once per pass and weight tensor)

The prior, posterior, kl_weight, KL bookkeeping (a shared layer's KL enters once per forward
pass of the outermost model), config and init from trained weights are `tfp_bnn.bayesian`'s;
this module adds only the recurrence and its draws.

Flipout variants draw one perturbation dW = sigma * eps per call and give each sequence its own
signs, fixed across its time steps: x_t W = x_t mu + ((x_t * s) dW) * r, s and r in {-1, 1}.

Inside `tfp_bnn.sampling.mc_sampling(S)` the input is S sample-major copies [S*B, T, F]: both
variants draw S weight sets [S, F, k*U] and [S, U, k*U] and every step is a batched matmul of
the rows reshaped to [S, B, .], so the S sequences of copy s all use weight set s (the path
`tfp_bnn.predict` and `tfp_bnn.export_savedmodel` take; core TF ops only).

The recurrence itself is tf_keras's `RNN` (masking, go_backwards, return_sequences/state,
unroll, time_major, Bidirectional wrapping), driving a weightless cell that reads the draws of
the current call. The weights use Keras' layouts (gates i, f, c, o and z, r, h; a GRU with
``reset_after=True`` has a [2, 3U] bias), so `bayesify` copies trained weights as they are.

Example:
    >>> layer = LSTMFlipout(32, return_sequences=True, kl_weight=1 / 5000)
    >>> layer(tf.ones((2, 7, 3))).shape                     # [batch, time, units]
    TensorShape([2, 7, 32])

References:
    Fortunato, Blundell & Vinyals, "Bayesian Recurrent Neural Networks", arXiv:1704.02798, 2017.
    Wen et al., "Flipout", ICLR 2018.
"""
import threading

from tfp_bnn import bayesian, options
from tfp_bnn import posteriors as posteriors_lib
from tfp_bnn._keras import tf, tf_keras
from tfp_bnn.bayesian import BayesianLayer
from tfp_bnn.bayesian import register as _register

__all__ = ["BayesianRNN", "LSTMFlipout", "LSTMReparameterization", "GRUFlipout",
           "GRUReparameterization", "SimpleRNNFlipout", "SimpleRNNReparameterization",
           "unsupported_option", "KERAS_KINDS"]

KERAS_KINDS = ("LSTM", "GRU", "SimpleRNN")

# {id(cell): _Draw} of the calls in progress, per thread: a layer called from two threads at
# once (e.g. two tf.function traces) gives each its own draw.
_DRAWS = threading.local()


def _draws():
    if not hasattr(_DRAWS, "by_cell"):
        _DRAWS.by_cell = {}
    return _DRAWS.by_cell


class _Projection:
    """``x -> x K`` for this call's kernel: one draw, a Flipout draw, S draws or the mean."""

    def __init__(self, kernel, delta=None, sign_in=None, sign_out=None, num_samples=None):
        self.kernel, self.delta = kernel, delta
        self.sign_in, self.sign_out = sign_in, sign_out
        self.num_samples = num_samples  # set: kernel is [S, in, out], rows are sample-major

    def columns(self, lo, hi):
        return _Projection(self.kernel[..., lo:hi],
                           None if self.delta is None else self.delta[:, lo:hi], self.sign_in,
                           None if self.sign_out is None else self.sign_out[:, lo:hi],
                           self.num_samples)

    def __call__(self, x):
        """``x``: one step [B, in] or a batch-major sequence [B, T, in]."""
        if self.num_samples is not None:
            in_dim, out_dim = self.kernel.shape[-2], self.kernel.shape[-1]
            y = tf.matmul(tf.reshape(x, tf.stack([self.num_samples, -1, in_dim])), self.kernel)
            return tf.reshape(y, _shape(x, out_dim))
        y = tf.matmul(x, self.kernel)
        if self.delta is not None:
            s_in, s_out = self.sign_in, self.sign_out
            if x.shape.rank == 3:  # a sequence: the same signs at every step
                s_in, s_out = s_in[:, tf.newaxis, :], s_out[:, tf.newaxis, :]
            y += tf.matmul(x * s_in, self.delta) * s_out
        return y


def _shape(x, last):
    """x's shape with the last dimension replaced, static where x's is."""
    lead = [d if d is not None else tf.shape(x)[i] for i, d in enumerate(x.shape[:-1])]
    return tf.stack(lead + [last])


class _Draw:
    """The weights of one forward call: ``x`` projects the whole input sequence before the
    loop (one large matmul instead of T small ones), ``h`` the state at every step."""

    def __init__(self, x, h, bias, num_samples=None):
        self.x, self.h, self.bias, self.num_samples = x, h, bias, num_samples

    def add_bias(self, y, row=None):
        if self.bias is None:
            return y
        b = self.bias if row is None else self.bias[..., row, :]
        if self.num_samples is None or b.shape.rank == 1:
            return tf.nn.bias_add(y, b)
        n = b.shape[-1]
        out = tf.reshape(y, tf.stack([self.num_samples, -1, n])) + b[:, tf.newaxis, :]
        return tf.reshape(out, _shape(y, n))

    def project_inputs(self, x, kind, reset_after):
        """x W (+ the input bias) for every step of a batch-major sequence [B, T, F]."""
        xw = self.x(x)
        if kind == "GRU" and reset_after:
            return self.add_bias(xw, 0)
        return self.add_bias(xw)


class _Cell(tf_keras.layers.Layer):
    """One time step of LSTM / GRU / SimpleRNN; holds no weights (its layer's draw does)."""

    def __init__(self, kind, units, activation, recurrent_activation, reset_after, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.units, self.reset_after = kind, units, reset_after
        self.activation, self.recurrent_activation = activation, recurrent_activation
        self.state_size = [units, units] if kind == "LSTM" else units
        self.output_size = units

    def call(self, inputs, states):
        """``inputs``: this step's x_t W + b_input, projected by the layer before the loop."""
        d, act, rec = _draws()[id(self)], self.activation, self.recurrent_activation
        h_prev = states[0]
        if self.kind == "SimpleRNN":
            h = act(inputs + d.h(h_prev))
            return h, [h]
        if self.kind == "LSTM":
            i, f, g, o = tf.split(inputs + d.h(h_prev), 4, axis=-1)
            c = rec(f) * states[1] + rec(i) * act(g)
            h = rec(o) * act(c)
            return h, [h, c]
        u = self.units
        x_z, x_r, x_h = tf.split(inputs, 3, axis=-1)
        if self.reset_after:
            h_z, h_r, h_h = tf.split(d.add_bias(d.h(h_prev), 1), 3, axis=-1)
            z, r = rec(x_z + h_z), rec(x_r + h_r)
            candidate = act(x_h + r * h_h)
        else:
            h_z, h_r = tf.split(d.h.columns(0, 2 * u)(h_prev), 2, axis=-1)
            z, r = rec(x_z + h_z), rec(x_r + h_r)
            candidate = act(x_h + d.h.columns(2 * u, 3 * u)(r * h_prev))
        h = z * h_prev + (1.0 - z) * candidate
        return h, [h]


def unsupported_option(config):
    """Why a Keras LSTM/GRU/SimpleRNN config cannot become one of these layers, or None."""
    for key in ("dropout", "recurrent_dropout"):
        if config.get(key, 0) not in (None, 0):
            return (f"{key}={config[key]!r}: the Bayesian RNN has no dropout (its weight noise "
                    "replaces it); set it to 0")
    for key in ("kernel_regularizer", "recurrent_regularizer", "bias_regularizer"):
        if config.get(key) is not None:
            return f"{key}={config[key]!r}: a weight regularizer has no meaning on a " \
                   "distribution; use the prior"
    for key in ("kernel_constraint", "recurrent_constraint", "bias_constraint"):
        if config.get(key) is not None:
            return f"{key}={config[key]!r}: a posterior cannot be constrained"
    if config.get("stateful"):
        return "stateful=True: MC sampling tiles the batch, which a stateful RNN cannot follow"
    if config.get("num_constants"):
        return f"num_constants={config['num_constants']!r}: RNN constants are not supported"
    return None


class BayesianRNN(BayesianLayer, tf_keras.layers.RNN):
    """Shared machinery of the Bayesian recurrent layers (see the module docstring).

    Args (beyond Keras LSTM/GRU/SimpleRNN's units, activation, recurrent_activation, use_bias,
    kernel/recurrent/bias_initializer, unit_forget_bias, reset_after, return_sequences,
    return_state, go_backwards, unroll, time_major, activity_regularizer):
        prior: a `tfp_bnn.priors` name, dict or instance, for the kernel, the recurrent kernel
            and (with ``posterior.bayesian_bias``) the bias.
        posterior: `tfp_bnn.posteriors.MeanField`, its config dict, or None.
        kl_weight: the KL multiplier (1/N for -ELBO/N), a non-trainable variable.
        seed: op seed of the training path's draws.

    ``dropout``, ``recurrent_dropout`` (other than 0) and ``stateful=True`` raise ValueError: the
    weight noise replaces dropout, and MC sampling tiles the batch, which state cannot follow.
    """

    _kind = None  # "LSTM", "GRU" or "SimpleRNN"
    _flipout = False
    mc_single_trace = True  # see `sampling.sample_outputs`: one trace of the while loop

    def _rnn_init(self, units, activation, recurrent_activation, use_bias, kernel_initializer,
                  recurrent_initializer, bias_initializer, unit_forget_bias, reset_after,
                  activity_regularizer, dropout, recurrent_dropout, return_sequences,
                  return_state, go_backwards, stateful, unroll, time_major, prior, posterior,
                  kl_weight, seed, kwargs):
        units = options.integer("units", units, minimum=1)
        for key, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if value not in (None, 0):
                raise ValueError(f"{type(self).__name__} has no dropout (the weight noise replaces "
                                 f"it): {key} must be 0. Received: {key}={value!r}")
        if stateful:
            raise ValueError(f"{type(self).__name__} cannot be stateful (MC sampling tiles the "
                             f"batch). Received: stateful={stateful!r}")
        kwargs.pop("implementation", None)  # Keras' kernel-fusion choice; one implementation here
        cell = _Cell(self._kind, units, tf_keras.activations.get(activation),
                     tf_keras.activations.get(recurrent_activation), bool(reset_after),
                     dtype=kwargs.get("dtype"), trainable=kwargs.get("trainable", True),
                     name="cell")
        super().__init__(cell, return_sequences=return_sequences, return_state=return_state,
                         go_backwards=go_backwards, stateful=False, unroll=unroll,
                         time_major=time_major, activity_regularizer=activity_regularizer,
                         **kwargs)
        self._bayes_init(prior, posterior, kl_weight, use_bias, kernel_initializer,
                         bias_initializer)
        self.units = units
        self.activation = cell.activation
        self.recurrent_activation = cell.recurrent_activation
        self.recurrent_initializer = tf_keras.initializers.get(recurrent_initializer)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.reset_after = bool(reset_after)
        self.seed = seed

    @property
    def _gates(self):
        return {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[self._kind]

    def _bias_shape(self):
        n = self._gates * self.units
        return [2, n] if self._kind == "GRU" and self.reset_after else [n]

    def _lstm_bias_init(self, shape, dtype=None, **kwargs):
        # Keras' unit_forget_bias: the forget gate's bias starts at 1 (Jozefowicz et al. 2015).
        u = self.units
        return tf.concat([self.bias_initializer((u,), dtype), tf.ones((u,), dtype),
                          self.bias_initializer((2 * u,), dtype)], 0)

    def build(self, input_shape):
        shape = input_shape
        if isinstance(shape, list) and shape and not isinstance(shape[0], (int, type(None))):
            shape = shape[0]  # [inputs, *initial_state]
        features = tf.TensorShape(shape)[-1]
        if features is None:
            raise ValueError(f"{type(self).__name__} needs a known feature dimension. "
                             f"Received: input_shape={input_shape}")
        n, dtype, post = self._gates * self.units, self.dtype, self.posterior
        self.kernel_posterior = posteriors_lib.normal_posterior(
            dtype, [features, n], "kernel_posterior", self.trainable, self.add_weight,
            self.kernel_initializer, post.init_scale)
        self.recurrent_kernel_posterior = posteriors_lib.normal_posterior(
            dtype, [self.units, n], "recurrent_kernel_posterior", self.trainable,
            self.add_weight, self.recurrent_initializer, post.init_scale)
        self.bias_posterior = self.bias_prior = None
        if self.use_bias:
            init = (self._lstm_bias_init if self._kind == "LSTM" and self.unit_forget_bias
                    else self.bias_initializer)
            if post.bayesian_bias:
                self.bias_posterior = posteriors_lib.normal_posterior(
                    dtype, self._bias_shape(), "bias_posterior", self.trainable,
                    self.add_weight, init, post.init_scale)
            else:
                self.bias_posterior = posteriors_lib.deterministic_posterior(
                    dtype, self._bias_shape(), "bias_posterior", self.trainable,
                    self.add_weight, init)
        self.kernel_prior = self.prior(dtype, [features, n], "kernel_prior", self.trainable,
                                       self.add_weight)
        self.recurrent_kernel_prior = self.prior(dtype, [self.units, n],
                                                 "recurrent_kernel_prior", self.trainable,
                                                 self.add_weight)
        if self.use_bias and post.bayesian_bias:
            self.bias_prior = self.prior(dtype, self._bias_shape(), "bias_prior",
                                         self.trainable, self.add_weight)
        tf_keras.layers.RNN.build(self, input_shape)
        self._build_kl_weight()
        self.built = True

    def weight_posteriors(self):
        parts = [("kernel", self.kernel_posterior, self.kernel_prior),
                 ("recurrent_kernel", self.recurrent_kernel_posterior,
                  self.recurrent_kernel_prior)]
        if self.bias_posterior is not None:
            parts.append(("bias", self.bias_posterior, self.bias_prior))
        return parts

    # --- the draws of one call: the three calls of the sampling protocol --------------------
    def plain_call(self, inputs, **kwargs):
        """One draw for the whole call (per sequence, reused at every step), the KL added."""
        x = tf.nest.flatten(inputs)[0]
        w_loc, r_loc, b_loc = self._locs()
        dtype = w_loc.dtype
        # sigma = softplus(rho) once per tensor: the KL reads the same tensor (see _add_kl).
        scales = {name: self._scale(name) for name in ("kernel", "recurrent_kernel")}
        dw = scales["kernel"] * self._normal(tf.shape(w_loc), dtype)
        dr = scales["recurrent_kernel"] * self._normal(tf.shape(r_loc), dtype)
        b = b_loc
        if self._has_bias_noise():
            scales["bias"] = self._scale("bias")
            b = b_loc + scales["bias"] * self._normal(tf.shape(b_loc), dtype)
        samples = {"kernel": w_loc + dw, "recurrent_kernel": r_loc + dr, "bias": b}
        for name, q, p in self.weight_posteriors():
            self._add_kl(f"{name}_kl_loss", q, p, samples[name], scales.get(name))
        if not self._flipout:
            draw = _Draw(_Projection(samples["kernel"]),
                         _Projection(samples["recurrent_kernel"]), b)
            return self._recur(draw, inputs, **kwargs)
        batch = tf.shape(x)[1 if self.time_major else 0]
        n = w_loc.shape[-1]

        def signs(width):
            return self._signs(tf.stack([batch, width]), dtype)

        draw = _Draw(_Projection(w_loc, dw, signs(w_loc.shape[0]), signs(n)),
                     _Projection(r_loc, dr, signs(self.units), signs(n)), b)
        return self._recur(draw, inputs, **kwargs)

    def mean_call(self, inputs, **kwargs):
        w_loc, r_loc, b_loc = self._locs()
        return self._recur(_Draw(_Projection(w_loc), _Projection(r_loc), b_loc), inputs,
                           **kwargs)

    def sample_call(self, inputs, ctx, **kwargs):
        """S weight sets [S, F, kU], [S, U, kU]: copy s of every sequence uses set s."""
        w_loc, r_loc, b_loc = self._locs()
        dtype, s = w_loc.dtype, ctx.num_samples
        index = ctx.next_index(), ctx.next_index(), ctx.next_index()
        w = self._draws("kernel", ctx, dtype, index[0])
        r = self._draws("recurrent_kernel", ctx, dtype, index[1])
        b = self._draws("bias", ctx, dtype, index[2]) if self._has_bias_noise() else b_loc
        return self._recur(_Draw(_Projection(w, num_samples=s), _Projection(r, num_samples=s),
                                 b, num_samples=s), inputs, **kwargs)

    def _locs(self):
        b = self._loc("bias") if self.bias_posterior is not None else None
        return self._loc("kernel"), self._loc("recurrent_kernel"), b

    def _normal(self, shape, dtype):
        """eps ~ N(0, 1) for one weight tensor of the plain (training) path."""
        return bayesian.normal(shape, dtype, self.seed)

    def _signs(self, shape, dtype):
        """Rademacher signs of the Flipout path, one row per sequence."""
        return bayesian.rademacher(shape, dtype, self.seed)

    # --- forward ----------------------------------------------------------------------------
    def call(self, inputs, mask=None, training=None, initial_state=None, constants=None):
        if constants is not None:
            raise ValueError(f"{type(self).__name__} does not take RNN constants. "
                             f"Received: constants={constants!r}")
        x = tf.nest.flatten(inputs)[0]
        if isinstance(x, tf.RaggedTensor):
            raise ValueError(f"{type(self).__name__} needs dense, padded input (use a mask for "
                             f"ragged sequences). Received: a RaggedTensor {x!r}")
        # The protocol's dispatch: plain_call, mean_call or sample_call, each a draw + _recur.
        return super().call(inputs, mask=mask, training=training, initial_state=initial_state)

    def _recur(self, draw, inputs, mask=None, training=None, initial_state=None):
        """tf_keras's RNN loop over the inputs projected once by ``draw``'s input kernel."""
        x = tf.cast(tf.nest.flatten(inputs)[0], draw.h.kernel.dtype)
        if self.time_major:
            projected = tf.transpose(draw.project_inputs(
                tf.transpose(x, [1, 0, 2]), self._kind, self.reset_after), [1, 0, 2])
        else:
            projected = draw.project_inputs(x, self._kind, self.reset_after)
        if isinstance(inputs, (list, tuple)):  # [x, *initial_state]
            inputs = [projected] + list(inputs[1:])
        else:
            inputs = projected
        _draws()[id(self.cell)] = draw
        try:
            return tf_keras.layers.RNN.call(self, inputs, mask=mask, training=training,
                                            initial_state=initial_state)
        finally:
            del _draws()[id(self.cell)]

    def get_config(self):
        config = self._config_base()
        config.update({
            "units": self.units,
            "recurrent_activation": tf_keras.activations.serialize(self.recurrent_activation),
            "recurrent_initializer": tf_keras.initializers.serialize(self.recurrent_initializer),
            "return_sequences": self.return_sequences, "return_state": self.return_state,
            "go_backwards": self.go_backwards, "unroll": self.unroll,
            "time_major": self.time_major, "seed": self.seed,
        })
        if self.zero_output_for_mask:
            config["zero_output_for_mask"] = True
        if self._kind == "LSTM":
            config["unit_forget_bias"] = self.unit_forget_bias
        if self._kind == "GRU":
            config["reset_after"] = self.reset_after
        if self._kind == "SimpleRNN":
            del config["recurrent_activation"]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return super().from_config(config)


class _LSTM(BayesianRNN):
    _kind = "LSTM"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, activity_regularizer=None,
                 dropout=0.0, recurrent_dropout=0.0, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False,
                 time_major=False, prior="normal", posterior=None, kl_weight=1.0, seed=None,
                 **kwargs):
        self._rnn_init(units, activation, recurrent_activation, use_bias, kernel_initializer,
                       recurrent_initializer, bias_initializer, unit_forget_bias, False,
                       activity_regularizer, dropout, recurrent_dropout, return_sequences,
                       return_state, go_backwards, stateful, unroll, time_major, prior,
                       posterior, kl_weight, seed, kwargs)


class _GRU(BayesianRNN):
    _kind = "GRU"

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", activity_regularizer=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, time_major=False,
                 reset_after=True, prior="normal", posterior=None, kl_weight=1.0, seed=None,
                 **kwargs):
        self._rnn_init(units, activation, recurrent_activation, use_bias, kernel_initializer,
                       recurrent_initializer, bias_initializer, False, reset_after,
                       activity_regularizer, dropout, recurrent_dropout, return_sequences,
                       return_state, go_backwards, stateful, unroll, time_major, prior,
                       posterior, kl_weight, seed, kwargs)


class _SimpleRNN(BayesianRNN):
    _kind = "SimpleRNN"

    def __init__(self, units, activation="tanh", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", activity_regularizer=None, dropout=0.0,
                 recurrent_dropout=0.0, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, time_major=False,
                 prior="normal", posterior=None, kl_weight=1.0, seed=None, **kwargs):
        self._rnn_init(units, activation, None, use_bias, kernel_initializer,
                       recurrent_initializer, bias_initializer, False, False,
                       activity_regularizer, dropout, recurrent_dropout, return_sequences,
                       return_state, go_backwards, stateful, unroll, time_major, prior,
                       posterior, kl_weight, seed, kwargs)


@_register
class LSTMReparameterization(_LSTM):
    """LSTM with mean-field kernels; one weight draw per call, shared by the batch."""


@_register
class LSTMFlipout(_LSTM):
    """LSTM with mean-field kernels; one Flipout draw per call, signs per sequence."""

    _flipout = True


@_register
class GRUReparameterization(_GRU):
    """GRU with mean-field kernels; one weight draw per call, shared by the batch."""


@_register
class GRUFlipout(_GRU):
    """GRU with mean-field kernels; one Flipout draw per call, signs per sequence."""

    _flipout = True


@_register
class SimpleRNNReparameterization(_SimpleRNN):
    """SimpleRNN with mean-field kernels; one weight draw per call, shared by the batch."""


@_register
class SimpleRNNFlipout(_SimpleRNN):
    """SimpleRNN with mean-field kernels; one Flipout draw per call, signs per sequence."""

    _flipout = True


# --- bayesify support (tfp_bnn.convert) --------------------------------------------------------
def keras_options(kind, config):
    """Constructor arguments, beyond the Dense-like common ones, from a Keras RNN config."""
    options = {key: config[key] for key in (
        "units", "return_sequences", "return_state", "go_backwards", "unroll", "time_major",
        "zero_output_for_mask") if config.get(key) is not None}
    options["recurrent_initializer"] = config.get("recurrent_initializer", "orthogonal")
    if kind != "SimpleRNN":
        options["recurrent_activation"] = tf_keras.activations.serialize(
            tf_keras.activations.get(config.get("recurrent_activation", "sigmoid")))
    if kind == "LSTM":
        options["unit_forget_bias"] = config.get("unit_forget_bias", True)
    if kind == "GRU":
        options["reset_after"] = config.get("reset_after", True)
    return options
