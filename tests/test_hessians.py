"""tfp_bnn.baselines.hessians: each GGN structure against the dense formulas on a tiny problem.

For every structure S the dense precision P = S.precision (kron: A (x) G + delta I; diag: the
diagonal matrix) defines Sigma = P^-1, and the strategy's own shortcuts must agree with it:

    function variance   var_bc = J_bc^T Sigma J_bc,  J_bc = phi_b (x) e_c  (index i * C + c)
    square root         T T^T = Sigma, T the linear map LaplaceDense applies to z ~ N(0, I)
    eigenvalues         log det(H + delta I) = sum log(eig + delta)
"""
import numpy as np
import pytest

from tfp_bnn.baselines import hessians
from tfp_bnn.options import Hessian

RNG = np.random.default_rng(3)
N, ROWS, C = 7, 4, 3
PHI = np.hstack([RNG.normal(size=(N, ROWS - 1)), np.ones((N, 1))])
LOGITS = RNG.normal(size=(N, C))
P = np.exp(LOGITS) / np.exp(LOGITS).sum(1, keepdims=True)
PHI_TEST = np.hstack([RNG.normal(size=(5, ROWS - 1)), np.ones((5, 1))])
DELTA = 0.7


def _ggn_by_hand(phi, p):
    """sum_n (phi_n phi_n^T) (x) (diag(p_n) - p_n p_n^T), [P, P] with index i * C + c."""
    return sum(np.kron(np.outer(f, f), np.diag(q) - np.outer(q, q)) for f, q in zip(phi, p))


def _dense_precision(structure):
    precision = structure.precision(DELTA)  # diag: [rows, C], the others [P, P]
    return np.diag(precision.ravel()) if isinstance(structure, hessians.Diag) else precision


def _jacobians(phi):
    """[B, C, P]: J_bc = phi_b (x) e_c."""
    return np.einsum("bi,cd->bcid", phi, np.eye(C)).reshape(len(phi), C, ROWS * C)


def _square_root_matrix(kind, parts):
    """The [P, P] map vec(delta_W) = T z of LaplaceDense for each structure's weights."""
    if kind == Hessian.DIAG:
        return np.diag(parts[0].ravel())
    if kind == Hessian.KRON:
        q_a, q_g, inv_sqrt = parts  # delta_W = Q_A (Z * inv_sqrt) Q_G^T
        return np.kron(q_a, q_g) @ np.diag(inv_sqrt.ravel())
    return parts[0]


def _structures(likelihood):
    for kind, cls in hessians.STRUCTURES.items():
        if likelihood == "classification":
            yield kind, cls.classification(PHI, P)
        else:
            yield kind, cls.regression(PHI, 0.3, C)


def test_lookup_has_one_strategy_per_structure():
    assert set(hessians.STRUCTURES) == set(Hessian)
    assert hessians.STRUCTURES["kron"] is hessians.Kron


def test_ggns_against_the_dense_sum():
    full = _ggn_by_hand(PHI, P)
    np.testing.assert_allclose(hessians.Full.classification(PHI, P).hessian, full, atol=1e-12)
    np.testing.assert_allclose(hessians.Diag.classification(PHI, P).hessian.ravel(),
                               np.diag(full), atol=1e-12)
    a, g = hessians.Kron.classification(PHI, P).hessian
    np.testing.assert_allclose(a, PHI.T @ PHI, atol=1e-12)
    np.testing.assert_allclose(g, np.mean([np.diag(q) - np.outer(q, q) for q in P], 0),
                               atol=1e-12)
    # regression: Lambda = I / s2, for which KFAC is exact and equals the full GGN
    exact = np.kron(PHI.T @ PHI / 0.3, np.eye(C))
    for kind, s in _structures("regression"):
        dense = np.kron(*s.hessian) if kind == Hessian.KRON else s.hessian
        if kind == Hessian.DIAG:
            np.testing.assert_allclose(dense.ravel(), np.diag(exact), rtol=1e-12)
        else:
            np.testing.assert_allclose(dense, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_strategies_equal_the_dense_formulas(likelihood):
    for kind, s in _structures(likelihood):
        precision = _dense_precision(s)
        assert precision.shape == (ROWS * C, ROWS * C), kind
        cov = np.linalg.inv(precision)
        jac = _jacobians(PHI_TEST)
        np.testing.assert_allclose(s.function_variance(PHI_TEST, DELTA),
                                   np.einsum("bcp,pq,bcq->bc", jac, cov, jac), rtol=1e-9,
                                   err_msg=str(kind))
        t = _square_root_matrix(kind, s.square_root(DELTA))
        np.testing.assert_allclose(t @ t.T, cov, rtol=1e-9, atol=1e-12, err_msg=str(kind))
        hessian = precision - DELTA * np.eye(ROWS * C)
        np.testing.assert_allclose(np.sum(np.log(s.eigenvalues + DELTA)),
                                   np.linalg.slogdet(hessian + DELTA * np.eye(ROWS * C))[1],
                                   rtol=1e-9, err_msg=str(kind))
