"""Evaluation metrics of predictive distributions; every name is importable from here.

* `tfp_bnn.metrics.core`: accuracy, NLL, Brier, Gaussian NLL, RMSE, ECE and its bins, OOD
  AUROC, accuracy vs retained, the bootstrap reliability curve, the streaming
  `ExpectedCalibrationError`, and the input checks;
* `tfp_bnn.metrics.uncertainty`: ACE, classwise ECE, risk-coverage and AURC, OOD AUPR and
  FPR@95TPR, prediction-set coverage and size, PICP and interval width, CRPS, the regression
  calibration curve and its miscalibration area.

Example:
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> round(tfp_bnn.metrics.expected_calibration_error(probs, [0, 1, 1], num_bins=15), 4)
    0.3
    >>> tfp_bnn.metrics.empirical_coverage([[True, False], [True, True]], [0, 1])
    1.0
"""
from tfp_bnn.metrics import core, uncertainty
from tfp_bnn.metrics.core import *  # noqa: F401,F403
from tfp_bnn.metrics.uncertainty import *  # noqa: F401,F403

__all__ = core.__all__ + uncertainty.__all__
