"""Other uncertainty methods behind the same predict/export interface as a VI model.

Each returns (or builds) a tf_keras model whose forward pass is one posterior sample, through
`tfp_bnn.sampling.StochasticLayer` layers (plain call, posterior mean, S samples); so
`tfp_bnn.predict` and `tfp_bnn.export_savedmodel` treat every method like a `bayesify` model.

    mc_dropout(model, rate, where)          Gal & Ghahramani 2016                (mc_dropout.py)
    DeepEnsemble(build_fn, num_members)     Lakshminarayanan et al. 2017         (ensemble.py)
    SWAG(start_epoch, max_rank)             Maddox et al. 2019; a callback       (swag.py)
    laplace(model, x, y, ...)               MacKay 1992; Daxberger et al. 2021   (laplace.py)

Last-layer VI is ``bayesify(model, layers="last", posterior=MeanField(from_weights=True))``.
"""
from tfp_bnn.baselines.ensemble import DeepEnsemble, EnsembleMembers, ensemble_model
from tfp_bnn.baselines.laplace import Laplace, LaplaceDense, laplace
from tfp_bnn.baselines.mc_dropout import MCDropout, mc_dropout
from tfp_bnn.baselines.swag import SWAG, SWAGDense, SWAGNoise, recompute_batchnorm

__all__ = ["mc_dropout", "MCDropout", "DeepEnsemble", "EnsembleMembers", "ensemble_model",
           "SWAG", "SWAGDense", "SWAGNoise", "recompute_batchnorm", "laplace", "Laplace",
           "LaplaceDense"]
