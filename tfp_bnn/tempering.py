"""Choose a BNN's KL-weight multiplier (a tempered posterior) on validation data.

For each multiplier m of a small fixed grid a fresh model (same seed, hence same initialisation)
is trained on ``(x, y)`` with the KL weight m / N, N = len(x), i.e. on the loss

    L_m(q) = mean_i -E_q log p(y_i | x_i, w) + (m / N) KL(q || prior)      (m = 1: the ELBO / N)

and its Monte Carlo predictive is scored on held-out ``(x_val, y_val)``:

    m* = argmin_m NLL_val(m)    (ties: the first multiplier in grid order)

m < 1 tempers the posterior (Wenzel et al. 2020): the likelihood counts 1/m times, the
posterior is narrower. A mean-field BNN trained on the ELBO with a Normal(0, 1) prior on a small
data set is typically underconfident; the validation NLL says how much tempering the data
support. ``(x_val, y_val)`` must not be in ``(x, y)``: carve it from the training split, never
use the test set.

Example:
    >>> x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    >>> y = (x[:, 0] > 0).astype("int32")
    >>> def build():
    ...     net = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)])
    ...     bnn = tfp_bnn.bayesify(net, num_train_examples=30)
    ...     bnn.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ...     return bnn
    >>> sel = select_kl_multiplier(build, x[:30], y[:30], x[30:], y[30:], epochs=2,
    ...                            batch_size=16)
    >>> sel.multiplier in sel.val_nll        # the grid point with the lowest validation NLL
    True
    >>> pred = tfp_bnn.predict(sel.model, x[30:], num_samples=20)

References:
    Wenzel et al., "How Good is the Bayes Posterior in Deep Neural Networks Really?", ICML 2020.
"""
import dataclasses

from tfp_bnn import options, tasks
from tfp_bnn._keras import tf_keras
from tfp_bnn.elbo import kl_weights, set_kl_weight

__all__ = ["select_kl_multiplier", "KLSelection", "DEFAULT_MULTIPLIERS"]

# Half-decade steps from the ELBO down; on Iris / digits with Normal(0, 1) the validation NLL
# still fell at 0.03 on 5 of 6 splits, hence the two smaller values.
DEFAULT_MULTIPLIERS = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003)


@dataclasses.dataclass
class KLSelection:
    """Result of `select_kl_multiplier`.

    Attributes:
        multiplier: the chosen m (KL weight m / len(x)).
        val_nll: {m: validation NLL} for every multiplier of the grid, in grid order.
        model: the model trained on (x, y) with the chosen multiplier.
    """

    multiplier: float
    val_nll: dict
    model: object


def _multipliers(values):
    try:
        values = list(values)
        checked = [options.number("multipliers", v) for v in values]
    except (TypeError, ValueError):
        raise ValueError("multipliers must be a sequence of positive numbers. "
                         f"Received: multipliers={values!r}") from None
    if not checked or min(checked) <= 0:
        raise ValueError("multipliers must be a non-empty sequence of positive numbers. "
                         f"Received: multipliers={values!r}")
    return checked


def validation_nll(model, x_val, y_val, num_samples=100, seed=0):
    """NLL of (x_val, y_val) under the model's S-sample MC predictive (classification:
    -mean log p_bar[y]; regression: the moment-matched Gaussian, `metrics.gaussian_nll`)."""
    from tfp_bnn.predict import predict
    pred = predict(model, x_val, num_samples=num_samples, seed=seed, verbose=0)
    return tasks.get(pred.task).scores(pred, y_val)["nll"]


def select_kl_multiplier(build, x, y, x_val, y_val, multipliers=DEFAULT_MULTIPLIERS,
                         num_samples=100, seed=0, **fit_kwargs):
    """Train one model per KL multiplier on (x, y); keep the lowest validation NLL (module doc).

    Args:
        build: callable with no arguments returning a fresh *compiled* Bayesian model (e.g.
            from `tfp_bnn.bayesify`). Its KL weight is overwritten with m / len(x).
        x, y: training data of the candidates.
        x_val, y_val: held-out validation data (not in x; never the test set).
        multipliers: the grid of m, positive; listed first wins ties.
        num_samples: MC samples S of the validation predictive.
        seed: `tf_keras.utils.set_random_seed(seed)` before each build (same init for every m)
            and the seed of the validation predictive.
        **fit_kwargs: passed to ``model.fit`` (epochs, batch_size, callbacks, ...; verbose
            defaults to 0).

    Returns:
        `KLSelection` (multiplier, val_nll per multiplier, the chosen trained model).
    """
    multipliers = _multipliers(multipliers)
    if x_val is None or y_val is None:
        raise ValueError("select_kl_multiplier needs validation data. Received: "
                         f"{'x_val' if x_val is None else 'y_val'}=None")
    if len(x_val) == 0 or len(x_val) != len(y_val):
        raise ValueError("x_val and y_val must be non-empty and of equal length. Received: "
                         f"len(x_val)={len(x_val)}, len(y_val)={len(y_val)}")
    fit_kwargs.setdefault("verbose", 0)
    n = len(x)
    scores, best, best_model = {}, None, None
    for m in multipliers:
        tf_keras.utils.set_random_seed(seed)
        model = build()
        if not kl_weights(model):
            raise ValueError("build() must return a model with Bayesian layers (KL weights); "
                             f"it returned {getattr(model, 'name', model)!r} without any.")
        set_kl_weight(model, value=m / n)
        model.fit(x, y, **fit_kwargs)
        scores[m] = validation_nll(model, x_val, y_val, num_samples=num_samples, seed=seed)
        if best is None or scores[m] < scores[best]:
            best, best_model = m, model
    return KLSelection(best, scores, best_model)
