"""Callbacks that schedule the KL weight: linear warm-up (annealing) and a temperature.

Both set each Bayesian layer's ``kl_weight`` variable to ``multiplier * base`` where ``base`` is
the weight the layer was built with (1/N from `bayesify`):

    KLAnnealing:   multiplier(t) = temperature * min(1, start + (1 - start) * t / warmup_steps)
    KLTemperature: multiplier    = temperature

The schedule is a function of the optimizer's iteration count, so a resumed run (restored
optimizer) continues the warm-up where it stopped.
"""
import numpy as np

from tfp_bnn import options, tasks
from tfp_bnn._keras import tf_keras
from tfp_bnn.elbo import set_kl_weight

__all__ = ["KLAnnealing", "KLTemperature", "MCValidation", "SWAG"]


class KLAnnealing(tf_keras.callbacks.Callback):
    """Linear KL warm-up over the first ``warmup_epochs`` epochs (per batch), then constant.

    Args:
        warmup_epochs: epochs to go from ``start`` to the full weight (> 0).
        start: multiplier at step 0, in [0, 1].
        temperature: final multiplier of the base KL weight (1 = the ELBO).
        steps_per_epoch: batches per epoch; taken from fit's params when None.

    References:
        Bowman et al. 2016; Sonderby et al. 2016 (KL warm-up).
    """

    def __init__(self, warmup_epochs=10, start=0.0, temperature=1.0, steps_per_epoch=None):
        super().__init__()
        self.warmup_epochs = options.number("warmup_epochs", warmup_epochs, 0)
        if self.warmup_epochs == 0:
            raise ValueError("warmup_epochs must be positive (use KLTemperature for a constant "
                             f"multiplier). Received: warmup_epochs={warmup_epochs!r}")
        self.start = options.number("start", start, 0, 1)
        self.temperature = options.number("temperature", temperature, 0)
        self.steps_per_epoch = steps_per_epoch

    def multiplier(self, step):
        steps = self.warmup_epochs * self._steps()
        frac = min(1.0, step / steps) if steps > 0 else 1.0
        return self.temperature * (self.start + (1.0 - self.start) * frac)

    def _steps(self):
        return self.steps_per_epoch or (self.params or {}).get("steps") or 1

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        set_kl_weight(self.model, self.multiplier(step))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["kl_multiplier"] = self.multiplier(int(self.model.optimizer.iterations.numpy()))


class KLTemperature(tf_keras.callbacks.Callback):
    """Constant multiplier of the KL weight during training (a tempered posterior).

    Args:
        temperature: multiplier of the base KL weight, >= 0.
    """

    def __init__(self, temperature=1.0):
        super().__init__()
        self.temperature = options.number("temperature", temperature, 0)

    def on_train_begin(self, logs=None):
        set_kl_weight(self.model, self.temperature)



class MCValidation(tf_keras.callbacks.Callback):
    """Monte Carlo validation at the end of every epoch, written into ``logs``.

    A classifier ("multiclass" or "binary", ``p_i = (1/S) sum_s p(. | z_s(x_i))``):

        {prefix}nll = -mean_i log p_i[y_i]     {prefix}accuracy = mean_i [argmax p_i == y_i]
        {prefix}predictive_entropy = mean_i H[p_i]   {prefix}mutual_information = mean_i MI_i

    A regression model (mean ``m_i``, total variance ``v_i = aleatoric + epistemic`` per output;
    the NLL is that of the moment-matched Gaussian, summed over outputs):

        {prefix}nll = mean_i sum_d [0.5 log(2 pi v_id) + (y_id - m_id)^2 / (2 v_id)]
        {prefix}rmse = sqrt(mean_id (y_id - m_id)^2)
        {prefix}aleatoric_variance, {prefix}epistemic_variance = their means

    The task is the model's (`tfp_bnn.tasks`). The NLL of the MC-averaged predictive is what a
    BNN should be early-stopped on (Keras's own validation scores one weight sample), and it
    costs one compiled call instead of a Keras ``evaluate`` per epoch. Put it before
    EarlyStopping/CSVLogger in the callback list. `evaluate` scores any method's result
    directly (a `DeepEnsemble`, a `laplace` result, a `SWAG` callback, ...).

    Args:
        x: held-out inputs.
        y: held-out integer labels (or regression targets [N] / [N, D]), or None to log
            only the uncertainty terms.
        num_samples: S per evaluation.
        seed: an int gives every epoch the same noise, so epochs differ only by the weights.
        prefix: prefix of the log keys.
        task: None (the model's task) or "multiclass", "binary", "regression", "gaussian".

    Example:
        >>> tf_keras.utils.set_random_seed(0)
        >>> model = tf_keras.Sequential([tf_keras.Input((2,)), tf_keras.layers.Dense(3)])
        >>> bnn = tfp_bnn.bayesify(model, num_train_examples=8)
        >>> x_val, y_val = np.zeros((4, 2), np.float32), np.array([0, 1, 2, 0])
        >>> sorted(MCValidation(x_val, y_val, num_samples=5, seed=0).evaluate(bnn))
        ['accuracy', 'mutual_information', 'nll', 'predictive_entropy']
    """

    def __init__(self, x, y=None, num_samples=20, seed=None, prefix="val_", task=None):
        super().__init__()
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1. Received: num_samples={num_samples!r}")
        self.x, self.num_samples, self.seed, self.prefix = x, num_samples, seed, prefix
        self.y = None if y is None else np.asarray(y)
        self.task = task

    def evaluate(self, model):
        """The scores (without prefix) of ``model``, a tf_keras model or a method's result."""
        from tfp_bnn.predict import predict
        pred = predict(model, self.x, num_samples=self.num_samples, seed=self.seed, verbose=0,
                       task=self.task)
        return tasks.get(pred.task).scores(pred, self.y)

    def on_epoch_end(self, epoch, logs=None):
        values = self.evaluate(self.model)
        if logs is not None:
            logs.update({self.prefix + k: v for k, v in values.items()})


# SWAG is a training callback too; its code lives with the other baselines.
from tfp_bnn.baselines.swag import SWAG  # noqa: E402
