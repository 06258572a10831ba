"""tfp_bnn: Bayesian neural networks for Keras users, on TensorFlow Probability.

Convert a Keras model (`bayesify`), train it with plain compile/fit on the scaled-KL ELBO,
predict with Monte Carlo uncertainty (`predict`), export it for TensorFlow Serving
(`export_savedmodel`).
"""
from tfp_bnn import _keras  # noqa: F401  (sets up tf_keras before TFP is imported)
from tfp_bnn import callbacks, layers, posteriors, priors, sampling  # noqa: E402
from tfp_bnn import heads, losses, methods, multifit, tasks  # noqa: E402
from tfp_bnn.baselines import DeepEnsemble, laplace, mc_dropout  # noqa: E402
from tfp_bnn.convert import bayesify  # noqa: E402
from tfp_bnn.registry import register_layer  # noqa: E402
from tfp_bnn.compress import Compressed, compress  # noqa: E402
from tfp_bnn.distill import Distillation, distill  # noqa: E402
from tfp_bnn.elbo import BayesianModel, kl_weights, set_kl_weight  # noqa: E402
from tfp_bnn.export import export_savedmodel  # noqa: E402
from tfp_bnn.predict import Prediction, predict  # noqa: E402
from tfp_bnn import metrics  # noqa: E402
from tfp_bnn.calibration import Calibrated, calibrate  # noqa: E402
from tfp_bnn.conformal import Conformal, conformal  # noqa: E402
from tfp_bnn.options import Task  # noqa: E402

__version__ = "0.1.0"
__all__ = ["bayesify", "register_layer", "compress", "Compressed", "mc_dropout", "DeepEnsemble", "laplace", "distill", "Distillation", "predict", "Prediction", "export_savedmodel", "BayesianModel", "callbacks", "layers", "posteriors", "priors",
           "sampling", "set_kl_weight", "kl_weights", "tasks", "methods", "Task",
           "calibrate", "Calibrated", "conformal", "Conformal", "metrics", "heads", "losses",
           "multifit"]
