"""Callbacks that schedule the KL weight: linear warm-up (annealing) and a temperature.

Both set each Bayesian layer's ``kl_weight`` variable to ``multiplier * base`` where ``base`` is
the weight the layer was built with (1/N from `bayesify`):

    KLAnnealing:   multiplier(t) = temperature * min(1, start + (1 - start) * t / warmup_steps)
    KLTemperature: multiplier    = temperature

The schedule is a function of the optimizer's iteration count, so a resumed run (restored
optimizer) continues the warm-up where it stopped.
"""
import math

from tfp_bnn._keras import tf_keras
from tfp_bnn.elbo import set_kl_weight

__all__ = ["KLAnnealing", "KLTemperature"]


def _non_negative(name, value):
    try:
        ok = float(value) >= 0 and math.isfinite(float(value))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a non-negative number. Received: {name}={value!r}")
    return float(value)


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
        self.warmup_epochs = _non_negative("warmup_epochs", warmup_epochs)
        if self.warmup_epochs == 0:
            raise ValueError("warmup_epochs must be positive (use KLTemperature for a constant "
                             f"multiplier). Received: warmup_epochs={warmup_epochs!r}")
        self.start = _non_negative("start", start)
        if self.start > 1:
            raise ValueError(f"start must be in [0, 1]. Received: start={start!r}")
        self.temperature = _non_negative("temperature", temperature)
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
        self.temperature = _non_negative("temperature", temperature)

    def on_train_begin(self, logs=None):
        set_kl_weight(self.model, self.temperature)
